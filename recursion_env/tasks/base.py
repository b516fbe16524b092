"""The task protocol every puzzle implements, and the batch it produces.

Token convention shared by all tasks: token 0 in ``inputs`` marks a cell the answer must decide (a Sudoku
blank, an open maze cell, an undecided N-Queens square). Every other input token is a *given* that the answer
must keep. So the MDP core keeps givens (``inputs != 0``) without knowing the puzzle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class PuzzleBatch:
    """``n`` puzzles of one task: ``inputs`` and ``labels`` are ``np.int64 [n, seq_len]``.

    ``meta`` holds per-task metadata: scalars, or arrays whose first axis is ``n`` (those are sliced along
    with the batch).
    """

    task: str
    inputs: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = np.ascontiguousarray(self.inputs, dtype=np.int64)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if self.inputs.ndim != 2 or self.inputs.shape != self.labels.shape:
            raise ValueError(
                f"inputs and labels must both be [n, seq_len]; got {self.inputs.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index) -> PuzzleBatch:
        index = np.arange(len(self))[index]
        index = np.atleast_1d(index)
        meta = {
            k: (v[index] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == len(self) else v)
            for k, v in self.meta.items()
        }
        return PuzzleBatch(self.task, self.inputs[index], self.labels[index], meta)

    @staticmethod
    def concat(batches: list[PuzzleBatch]) -> PuzzleBatch:
        if not batches:
            raise ValueError("cannot concatenate an empty list of batches")
        meta: dict[str, Any] = {}
        for k, v in batches[0].meta.items():
            if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == len(batches[0]):
                meta[k] = np.concatenate([b.meta[k] for b in batches])
            else:
                meta[k] = v
        return PuzzleBatch(
            batches[0].task,
            np.concatenate([b.inputs for b in batches]),
            np.concatenate([b.labels for b in batches]),
            meta,
        )


class Task:
    """Base class of a puzzle task. Subclasses set ``name``, ``seq_len``, ``vocab_size`` and implement the
    abstract methods; ``verify`` and ``rule_score`` are derived from ``rule_counts`` so the label-free reward and
    the verifier are one mechanism.
    """

    name: str = ""
    seq_len: int = 0
    vocab_size: int = 0
    #: the answer keeps the input's non-zero cells (the givens); False where the input is not part of the answer
    #: (ARC: an output grid is drawn from the input, every cell the model's)
    keeps_givens: bool = True
    #: the task's options that the command line, the bench and sweep files pass by name (its constructor's)
    options: tuple = ()
    #: a label token the loss and the scores skip (ARC's PAD around the grid); None = every cell counts
    ignore_label: int | None = None
    #: rule_counts checks an answer without the label (False: ARC, where only the stored output says)
    has_rule_verifier: bool = True
    #: whether :meth:`rule_context` is worth computing once per puzzle and keeping (a maze's breadth-first
    #: search), rather than again for every answer checked
    costly_rule_context: bool = False
    #: the names of the data's puzzle identifiers (ARC's augmented variants; index 0 the blank one), or None: one
    #: puzzle family, identifier 0
    identifiers: list[str] | None = None
    #: how a board is laid out for rendering: (rows, cols) with rows * cols == seq_len
    grid_shape: tuple[int, int] = (0, 0)

    # -- protocol ---------------------------------------------------------------------------------------
    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this task with ``make_task(name, **kwargs)``."""
        raise NotImplementedError

    def generate(self, n: int, seed) -> PuzzleBatch:
        raise NotImplementedError

    def held_out(self) -> Task:
        """The task whose ``generate`` draws held-out evaluation puzzles: this one (fresh puzzles, which training
        then excludes), or for a fixed data set its held-out split (ARC's evaluation test pairs)."""
        return self

    def rule_context(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Per-puzzle facts :meth:`rule_counts` needs that depend on the puzzle alone (computed once per reset
        by the MDP core); ``None`` when there are none. A tensor whose first axis is the batch."""
        return None

    def rule_counts(self, inputs: torch.Tensor, answers: torch.Tensor, context=None):
        """(satisfied, total): the rule credit ``answers`` earns, of how much, per answer (tensors ``[n]``, or a
        number for a total that is the same for every puzzle). ``satisfied / total`` is the verifier reward's
        potential.

        Label-free; ``satisfied == total`` exactly when the answer solves the puzzle (givens kept are checked
        separately by :meth:`verify`, the MDP core keeps them by construction). The credit must not be gamed:
        no answer that writes one token on every undecided cell, and does not solve the puzzle, earns more than
        the puzzle as given, and revealing a solution's cells never lowers it (``tests/test_potentials.py``).
        ``context`` is :meth:`rule_context` of ``inputs``, recomputed when not given.
        """
        raise NotImplementedError

    def rule_score(self, inputs: torch.Tensor, answers: torch.Tensor, context=None) -> torch.Tensor:
        """Fraction of the task's rule constraints that ``answers`` satisfies, ``float32 [n]`` in [0, 1]; exactly 1
        when the answer solves the puzzle."""
        return rule_fraction(*self.rule_counts(inputs, answers, context))

    def parse(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def format(self, tokens) -> str:
        raise NotImplementedError

    def augment(self, inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        return inputs.copy(), labels.copy()

    def derive_labels(self, inputs: np.ndarray) -> np.ndarray | None:
        """Labels ``[n, seq_len]`` for puzzles given without one, where the task defines a single label (Sudoku:
        the solution; Maze: the canonical path); ``None`` where it does not (N-Queens has many completions).
        ``ValueError`` for a puzzle that has none."""
        return None

    # -- shared machinery -------------------------------------------------------------------------------
    def verify(self, inputs, answers) -> np.ndarray:
        """``bool[n]``: does each answer solve its puzzle and keep its givens? Rule-based, label-free."""
        inputs_t = torch.as_tensor(np.asarray(inputs), dtype=torch.int64)
        answers_t = torch.as_tensor(np.asarray(answers), dtype=torch.int64)
        if inputs_t.ndim == 1:
            inputs_t, answers_t = inputs_t[None], answers_t[None]
        self.check_tokens(answers_t, "answers")
        givens = inputs_t != 0
        kept = ((answers_t == inputs_t) | ~givens).all(dim=-1)
        satisfied, total = self.rule_counts(inputs_t, answers_t)
        ok = kept & (satisfied >= total)
        return ok.cpu().numpy()

    def check_tokens(self, tokens, what: str = "tokens") -> None:
        t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
        if t.shape[-1] != self.seq_len:
            raise ValueError(f"{what}: expected last dimension {self.seq_len} for {self.name}, got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
            bad = ((t < 0) | (t >= self.vocab_size)).nonzero()[0].tolist()
            raise ValueError(
                f"{what}: token out of the vocabulary [0, {self.vocab_size}) at index {bad}: "
                f"{int(t[tuple(bad)])}"
            )

    def parse_many(self, lines) -> np.ndarray:
        """Parse puzzle lines (one puzzle per non-empty line); errors name the line number."""
        rows = []
        for i, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                rows.append(self.parse(line))
            except ValueError as e:
                raise ValueError(f"line {i}: {e}") from None
        if not rows:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.stack(rows)

    def to_line(self, tokens) -> str:
        """The compact one-line form (``seq_len`` characters) that :meth:`parse` and the file readers take."""
        raise NotImplementedError

    def cell_chars(self, tokens) -> str:
        """One character per cell (``seq_len`` of them), as the renderers draw the board."""
        return self.to_line(tokens)

    def read_lines(self, path) -> np.ndarray:
        """Read a text file of puzzles, one a line in :meth:`to_line` form; ``#`` starts a comment line. UTF-8,
        with or without a byte-order mark."""
        try:
            with open(path, encoding="utf-8-sig") as f:
                return self.parse_many(f)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"make_task({self.name!r}, {args})"


def integer_option(task: str, name: str, value, optional: bool = False):
    """A task option that must be an integer (``size=4.0`` or ``"9"`` is a ``ValueError`` saying so)."""
    if optional and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{task}: {name} must be an integer, got {value!r}")
    return int(value)


def rule_fraction(satisfied: torch.Tensor, total) -> torch.Tensor:
    """``satisfied / total`` as float32, exactly 1 when every rule holds, on every device. CUDA divides by a Python
    number as a multiplication by its reciprocal (243 * (1/243) = 0.99999994 in float32, so a solved Sudoku would
    not count as solved); a tensor divisor gets a true division."""
    if satisfied.dtype != torch.float32:
        satisfied = satisfied.to(torch.float32)
    if not isinstance(total, torch.Tensor):
        key = (float(total), satisfied.device)
        total = _DIVISORS.get(key)
        if total is None:  # made once per (total, device): a tensor per call costs as much as the division
            total = _DIVISORS[key] = torch.tensor(key[0], device=satisfied.device)
    elif total.dtype != torch.float32:
        total = total.to(torch.float32)
    return satisfied / total


_DIVISORS: dict[tuple[float, torch.device], torch.Tensor] = {}


def square_symmetries(inputs, labels, rng: np.random.Generator, side: int):
    """Apply an independent random symmetry of the square (4 rotations x optional mirror) to each board."""
    inputs, labels = np.asarray(inputs, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    single = inputs.ndim == 1
    x = np.atleast_2d(inputs).reshape(-1, side, side)
    y = np.atleast_2d(labels).reshape(-1, side, side)
    ox, oy = np.empty_like(x), np.empty_like(y)
    for i in range(x.shape[0]):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        xi, yi = np.rot90(x[i], k), np.rot90(y[i], k)
        ox[i], oy[i] = (xi[:, ::-1], yi[:, ::-1]) if flip else (xi, yi)
    ox, oy = ox.reshape(-1, side * side), oy.reshape(-1, side * side)
    return (ox[0], oy[0]) if single else (ox, oy)
