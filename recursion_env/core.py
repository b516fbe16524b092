"""The recursion MDP: one batched, device-agnostic torch core that owns every rule.

State of each of the B puzzles: the puzzle (givens, 0 = blank), the current decoded ``answer``, the
``latent`` ``[2, latent_len, D]`` (the answer embedding y and the reasoning latent z), the number of
transitions taken (``step``) and the forward passes charged (``nfe``).

One transition is one latent refinement: the agent hands in the next latent, its decoded answer and a halt
flag; the core keeps the givens (it writes them back into ``answer``), charges ``nfe_per_step`` forward
passes, and pays

    r_t = S(answer_{t+1}) - S(answer_t) - nfe_cost * nfe_per_step + solve_bonus * (solved_{t+1} - solved_t)

i.e. the change of the potential S + solve_bonus * [solved] minus the compute charged, so a return telescopes:
sum r = S(final) - S(initial) + solve_bonus * [final solved] - nfe_cost * NFE (the initial answer, givens and
blanks, is unsolved whenever the puzzle has a blank). ``S`` is the fraction of blank cells
equal to the label (``reward_mode="label"``) or the fraction of the task's rule credit earned
(``reward_mode="verifier"``, label-free: ``task.rule_counts``; a uniform fill of the undecided cells never scores
above the puzzle as given). ``solved`` is always the rule verifier, so a different valid
completion (N-Queens, mazes with loops) counts as solved.

An episode terminates when the agent halts (or, with ``terminate_on_solve``, when it is solved) and is
truncated after ``max_steps`` transitions. :meth:`RecursionCore.stop` ends episodes without a transition
(no compute, zero reward): the halting controller's "halt now".

The rules are :meth:`RecursionCore.transition`, one short function. :meth:`RecursionCore.step` is the checked
entry: it validates the action (a ``ValueError`` names the field), refuses a finished episode, and never keeps the
caller's memory, then calls ``transition``. The agents' runner, which hands over fresh tensors of the right
shapes from its network, calls ``transition`` directly: no validation, no copy, no read back to the host.

The Gymnasium and TorchRL environments are thin adapters over this class; neither re-implements a rule.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, NamedTuple

import numpy as np
import torch

from .tasks import PuzzleBatch, Task, load_dataset, load_puzzles, make_task
from .tasks.base import rule_fraction

REWARD_MODES = ("label", "verifier")
INFO_KEYS = ("nfe", "cell_accuracy", "solved", "score")
ACTION_KEYS = ("latent", "answer", "halt")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class RecursionConfig:
    """Options of the recursion MDP (the environment arguments of every adapter); fixed for a core's life."""

    latent_dim: int = 64
    #: positions of the latent; ``None`` means the puzzle length L (agents with extra slots ask for more)
    latent_len: int | None = None
    #: the reward's cost per forward pass
    nfe_cost: float = 0.0
    reward_mode: str = "label"
    #: TRM's budget: 16 supervision steps x 3 recursions x 7 calls
    max_steps: int = 336
    nfe_per_step: int = 1
    solve_bonus: float = 1.0
    terminate_on_solve: bool = False

    def __post_init__(self) -> None:
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}")
        for name in ("latent_dim", "max_steps", "nfe_per_step", "latent_len"):
            value = getattr(self, name)
            if value is None and name == "latent_len":
                continue
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("nfe_cost", "solve_bonus"):
            value = getattr(self, name)
            if not (_is_int(value) or isinstance(value, (float, np.floating))) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.terminate_on_solve, (bool, np.bool_)):
            raise ValueError(f"terminate_on_solve must be True or False, got {self.terminate_on_solve!r}")

    @classmethod
    def split(cls, kwargs: dict) -> tuple[RecursionConfig, dict]:
        """Separate config options from the rest (task options) in one keyword dict."""
        if "lam" in kwargs:  # (in RL code lambda means GAE's)
            raise ValueError("lam: the reward's cost per forward pass is called nfe_cost")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names}), {
            k: v for k, v in kwargs.items() if k not in names}


class StepResult(NamedTuple):
    obs: dict[str, torch.Tensor]
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    info: dict[str, torch.Tensor]


class PuzzleSource:
    """Where the core draws puzzles from: a fixed batch (a loaded dataset), or fresh generated puzzles.

    Generated puzzle ``i`` is ``task.generate(1, seed=[seed, i])`` with ``i`` drawn from a 2^62 range, so every
    reset gets a fresh puzzle that is still reproducible from the reset seed; the last ``cache_size`` are kept.
    """

    def __init__(self, task: Task, batch: PuzzleBatch | None = None, seed: int = 0, cache_size: int = 4096):
        self.task, self.batch, self.seed, self.cache_size = task, batch, int(seed), cache_size
        self._cache: OrderedDict[int, tuple] = OrderedDict()
        if batch is not None and len(batch) == 0:
            raise ValueError("PuzzleSource: the dataset holds no puzzles")

    def _generated(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(i)
        if hit is None:
            b = self.task.generate(1, seed=[self.seed, i])
            hit = (b.inputs[0], b.labels[0], np.int64(b.meta.get("puzzle_identifiers", [0])[0]))
            self._cache[i] = hit
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return hit

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` (puzzles, labels, puzzle identifiers); the identifier is 0 where the data has none."""
        if self.batch is not None:
            idx = rng.integers(len(self.batch), size=n)
            ids = self.batch.meta.get("puzzle_identifiers")
            return self.batch.inputs[idx], self.batch.labels[idx], (np.zeros(n, np.int64) if ids is None
                                                                    else np.asarray(ids, np.int64)[idx])
        triples = [self._generated(int(i)) for i in rng.integers(2**62, size=n)]
        return tuple(np.stack([t[k] for t in triples]) for k in range(3))


_CPU = torch.device("cpu")


def _as_tensor(value, name: str, device: torch.device, copy: bool = True, unbatched=None) -> torch.Tensor:
    """A tensor on ``device`` from what a caller handed in. NumPy arrays are copied (the core keeps the result and
    never aliases a caller's array), or with ``copy=False`` viewed where possible (the value is only read during
    the call). Torch tensors are taken as they are. A value of shape ``unbatched`` (one env's field: one env may
    pass its action unbatched) gets the batch axis, as a view."""
    if isinstance(value, torch.Tensor):
        return (value[None] if value.shape == unbatched else value).to(device)
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything unconvertible is a bad field
        raise ValueError(f"action field {name!r} is not an array: {e}") from None
    if arr.dtype.kind not in "biufc":
        raise ValueError(f"action field {name!r} is not a numeric array (dtype {arr.dtype})")
    if arr.shape == unbatched:
        arr = arr[None]  # (on the NumPy side: cheaper than a tensor view)
    on_cpu = device == _CPU
    if arr.dtype.isnative:  # from_numpy is much cheaper than torch.tensor on small arrays
        if copy and on_cpu:
            arr = arr.copy()  # (and a NumPy copy cheaper than a torch clone)
        if arr.flags.writeable:  # torch cannot wrap a read-only array without a warning
            try:
                t = torch.from_numpy(arr)
            except (TypeError, ValueError):  # dtypes torch lacks: the general path below
                pass
            else:
                return t if on_cpu else t.to(device)
    return torch.tensor(arr, device=device)


def _rows(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new``'s rows where ``mask`` (bool ``[B]``), ``old``'s elsewhere: a masked update of batch-first state."""
    return torch.where(mask.view(-1, *[1] * (new.ndim - 1)), new, old)


@dataclass
class EpisodeState:
    """The batch's episodes, one row per env (every tensor batch-first): what a transition reads and writes, what a
    reset replaces row by row, and what a checkpoint saves. The fields that depend on the puzzle alone
    (``DERIVED``) are not saved; loading derives them again."""

    puzzle: torch.Tensor  # [B, L] int64, 0 = blank
    givens: torch.Tensor  # [B, L] bool: the cells the answer keeps
    puzzle_id: torch.Tensor  # [B] int64: ARC's augmented variants; 0 where the data has one puzzle family
    label: torch.Tensor  # [B, L] int64, the givens written in
    answer: torch.Tensor  # [B, L] int64: the current decoded answer
    latent: torch.Tensor  # [B, 2, latent_len, D] float32: (y, z)
    step_count: torch.Tensor  # [B] int64: transitions taken
    nfe: torch.Tensor  # [B] int64: forward passes charged
    score: torch.Tensor  # [B] float32: the potential S of the answer
    cell_accuracy: torch.Tensor  # [B] float32
    solved: torch.Tensor  # [B] bool: the rule verifier's judgement
    potential: torch.Tensor  # [B] float32: S + solve_bonus * [solved]; a reward is its change less the compute
    done: torch.Tensor  # [B] bool: an episode that ended (or never began) must be reset before it is stepped
    scored_label: torch.Tensor  # [B, L] int64: the label on the scored cells, -1 elsewhere
    n_scored: torch.Tensor  # [B] float32
    context: torch.Tensor | None  # the task's rule context (task.rule_context), or None

    DERIVED: ClassVar[tuple] = ("scored_label", "n_scored", "context")

    def update(self, new: dict, mask: torch.Tensor | None = None) -> None:
        """Replace fields with ``new``'s full-batch tensors, or only their rows in ``mask`` (bool ``[B]``)."""
        for k, v in new.items():
            if v is None or mask is None:
                setattr(self, k, v)
            else:
                setattr(self, k, _rows(mask, v, getattr(self, k)))

    def put_rows(self, idx: torch.Tensor, new: dict) -> None:
        """Write ``new``'s tensors (one row per index in ``idx``) into the rows ``idx``, the stored tensors left
        untouched (each field gets a copy): tensors a caller holds from an earlier observation keep their values."""
        for k, v in new.items():
            if v is not None:
                rows = getattr(self, k).clone()
                rows[idx] = v
                setattr(self, k, rows)

    def saved(self) -> dict:
        """The fields to save (clones), ``DERIVED`` left out."""
        return {f.name: getattr(self, f.name).clone() for f in fields(self) if f.name not in self.DERIVED}


#: the state's fields, readable (and writable) on the core by name: ``core.answer`` is ``core.state.answer``
EPISODE_FIELDS = tuple(f.name for f in fields(EpisodeState))


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class RecursionCore:
    """B puzzles stepped together; see the module docstring for the rules.

    Args:
        task: a :class:`~recursion_env.tasks.Task` or a task name.
        batch_size: B.
        config: a :class:`RecursionConfig` (or pass its fields as keywords).
        dataset: a saved ``.npz`` / Sudoku-Extreme ``.csv`` / text file, or a :class:`PuzzleBatch`, to draw from;
            by default puzzles are generated on the fly.
        device: where every tensor lives.
        seed: seeds the puzzle draws (``reset(seed=...)`` re-seeds).
    """

    def __init__(self, task: Task | str = "sudoku", batch_size: int = 1, config: RecursionConfig | None = None,
                 dataset=None, device: str | torch.device = "cpu", seed: int | None = None,
                 generator_seed: int = 0, initial_latent=None, **overrides):
        if isinstance(task, str):
            task = make_task(task)
        config = config or RecursionConfig()
        if overrides:
            config, unknown = RecursionConfig.split({**asdict(config), **overrides})  # (split refuses lam)
            if unknown:
                raise TypeError(f"RecursionCore got unknown option(s) {', '.join(sorted(unknown))}")
        self.task, self.config = task, config
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(dataset, PuzzleBatch):
            batch = dataset
        elif dataset is not None:
            _, batch = load_puzzles(dataset, task)
        else:
            batch = None
        if batch is not None:
            task.check_tokens(batch.inputs, "dataset inputs")
        self.source = PuzzleSource(task, batch, seed=generator_seed)
        self.seq_len = task.seq_len
        self.latent_shape = (2, config.latent_len or task.seq_len, config.latent_dim)
        self.rng = np.random.default_rng(seed)
        B, L, dev = self.batch_size, self.seq_len, self.device
        #: the (y, z) every episode starts from when reset() is given no latent: zeros, or the agent's own
        #: initial state (a TRM's y_init and z_init): a policy that acts on the env's observation sees the state
        #: its network was trained from
        self.initial_latent = torch.zeros(self.latent_shape, dtype=torch.float32, device=dev)
        if initial_latent is not None:
            self.initial_latent = self._check_latent(initial_latent, 1, "initial_latent")[0].clone()
        cells = torch.zeros(B, L, dtype=torch.int64, device=dev)
        ints, floats = torch.zeros(B, dtype=torch.int64, device=dev), torch.zeros(B, dtype=torch.float32, device=dev)
        no = torch.zeros(B, dtype=torch.bool, device=dev)
        givens = torch.zeros(B, L, dtype=torch.bool, device=dev)
        scored_label, n_scored = self._scored_cells(givens, cells)
        self.state = EpisodeState(
            puzzle=cells, givens=givens, puzzle_id=ints, label=cells.clone(), answer=cells.clone(),
            latent=torch.zeros(B, *self.latent_shape, dtype=torch.float32, device=dev), step_count=ints.clone(),
            nfe=ints.clone(), score=floats, cell_accuracy=floats.clone(), solved=no, potential=floats.clone(),
            done=torch.ones(B, dtype=torch.bool, device=dev), scored_label=scored_label, n_scored=n_scored,
            context=task.rule_context(cells))
        #: how many puzzle identifiers the task's data has (ARC's variants), or None: then the observation holds
        #: no ``puzzle_id``
        self.num_puzzle_ids = None if task.identifiers is None else len(task.identifiers)
        self._label_score = config.reward_mode == "label"
        if not task.has_rule_verifier and not self._label_score:
            raise ValueError(f"{task.name} has no rule verifier: reward_mode 'verifier' needs one; an answer is "
                             "scored against the stored output (reward_mode 'label')")
        # a single env's Python halt flag as a tensor, made once (a new tensor per step is a quarter of the
        # step's cost at B=1); the core never writes into its flags
        self._halt_flags = (torch.zeros(1, dtype=torch.bool, device=dev), torch.ones(1, dtype=torch.bool, device=dev))

    # -- scoring ----------------------------------------------------------------------------------------
    def _evaluate(self, puzzle, answer, context, scored_label, n_scored):
        """(score S, cell accuracy, solved) of answers; one place for the reward's ingredients.

        Cell accuracy is the fraction of scored cells (see :meth:`_scored_cells`) whose answer equals the label."""
        right = (answer == scored_label).sum(-1)
        cell_acc = right / n_scored
        if not self.task.has_rule_verifier:  # (ARC) solved: every scored cell shows the stored output
            return cell_acc, cell_acc, right >= n_scored
        satisfied, total = self.task.rule_counts(puzzle, answer, context)
        solved = satisfied >= total  # (in counts: exact on every device, and the label reward needs no fraction)
        return (cell_acc if self._label_score else rule_fraction(satisfied, total)), cell_acc, solved

    def givens_of(self, puzzle: torch.Tensor) -> torch.Tensor:
        """The cells the answer keeps: the puzzle's non-zero ones, or none where the input is not part of the
        answer (``task.keeps_givens`` False: ARC)."""
        return puzzle != 0 if self.task.keeps_givens else torch.zeros_like(puzzle, dtype=torch.bool)

    @property
    def scored(self) -> torch.Tensor:
        """bool ``[B, L]``: the cells each episode is scored on (the cells to decide, less the label's
        ``task.ignore_label`` cells; see :meth:`_scored_cells`); diagnostics and the halting env's features use
        the same cells."""
        return self.scored_label >= 0

    def _scored_cells(self, givens, label):
        """(scored label, count): the label on the cells that are scored and -1, which no token equals, elsewhere.
        The scored cells are the ones to decide (not ``givens``), without the label's ``task.ignore_label`` cells,
        or every cell of a puzzle without any (it scores 1)."""
        open_ = ~givens
        if self.task.ignore_label is not None:
            open_ &= label != self.task.ignore_label
        scored = open_ | (open_.sum(-1) == 0)[:, None]
        return torch.where(scored, label, -1), scored.sum(-1).to(torch.float32)

    # -- reset ------------------------------------------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def _mask(self, mask) -> torch.Tensor | None:
        """A validated bool mask ``[B]`` of the envs to act on; ``None`` means all of them."""
        if mask is None:
            return None
        mask = torch.as_tensor(mask, device=self.device).reshape(-1)
        if mask.dtype != torch.bool or mask.shape[0] != self.batch_size:
            raise ValueError(f"mask must be bool [{self.batch_size}], got {mask.dtype} {tuple(mask.shape)}")
        return mask

    def _refuse_finished(self, active: torch.Tensor | None, what: str) -> None:
        finished = self.done if active is None else self.done & active
        if bool(finished) if self.batch_size == 1 else bool(finished.any()):  # (one element: no reduction)
            raise RuntimeError(f"{what} on a finished episode (env {finished.nonzero().reshape(-1).tolist()}); "
                               "call reset() first")

    def reset(self, mask=None, *, seed: int | None = None, puzzles=None, labels=None, latent=None,
              owned: bool = False, puzzle_ids=None):
        """Start new episodes for the envs in ``mask`` (all by default) and return the observation of the whole
        batch. Puzzles are drawn from the source unless given (``puzzles``/``labels`` ``[n, L]``, ``n`` the
        number of envs reset); ``latent`` ``[n, 2, latent_len, D]`` replaces the initial state (:attr:`initial_latent`).
        ``owned=True``: the caller hands its latent over and never writes into it again (see :meth:`step`)."""
        if seed is not None:
            self.seed(seed)
        active = self._mask(mask)
        idx = None if active is None else active.nonzero().reshape(-1)
        n = self.batch_size if idx is None else int(idx.numel())
        if n == 0:
            return self.observation()
        if puzzles is None:
            if labels is not None:
                raise ValueError("reset: labels given without puzzles")
            x, y, ids = self.source.draw(n, self.rng)
            puzzles, labels = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
            puzzle_ids = ids if puzzle_ids is None else puzzle_ids
        else:
            # kept as state: never the caller's tensor itself (a NumPy array is copied by _as_tensor)
            copy = isinstance(puzzles, torch.Tensor)
            puzzles = _as_tensor(puzzles, "puzzles", self.device).to(torch.int64, copy=copy).reshape(n, self.seq_len)
            self.task.check_tokens(puzzles, "reset puzzles")
            if labels is None:
                labels = self._derive_labels(puzzles)
            labels = _as_tensor(labels, "labels", self.device).to(torch.int64).reshape(n, self.seq_len)
            self.task.check_tokens(labels, "reset labels")
        if latent is None:
            latent = self.initial_latent.expand(n, *self.latent_shape).clone()
        else:
            latent = self._kept(self._check_latent(latent, n, "reset latent"), latent, owned)
        puzzle_ids = (torch.zeros(n, dtype=torch.int64, device=self.device) if puzzle_ids is None
                      else _as_tensor(puzzle_ids, "puzzle_ids", self.device).to(torch.int64).reshape(n))
        updates = self._episode_start(puzzles, labels, latent, puzzle_ids)
        updates["answer"] = puzzles.clone()
        if idx is None:
            self.state.update(updates)
        else:
            self.state.put_rows(idx, updates)
        return self.observation()

    def _episode_start(self, puzzles, labels, latent, puzzle_ids) -> dict:
        """The state of episodes that start on ``puzzles``: the rules of a reset."""
        givens = self.givens_of(puzzles)
        labels = torch.where(givens, puzzles, labels)
        scored_label, n_scored = self._scored_cells(givens, labels)
        context = self.task.rule_context(puzzles)
        score, cell_acc, solved = self._evaluate(puzzles, puzzles, context, scored_label, n_scored)
        zeros = torch.zeros_like(puzzle_ids)
        return {"puzzle": puzzles, "givens": givens, "puzzle_id": puzzle_ids, "label": labels, "answer": puzzles,
                "latent": latent, "step_count": zeros, "nfe": zeros, "score": score, "cell_accuracy": cell_acc,
                "solved": solved, "potential": score + self.config.solve_bonus * solved,
                "scored_label": scored_label, "n_scored": n_scored, "context": context,
                "done": torch.zeros_like(puzzle_ids, dtype=torch.bool)}

    def restart(self, mask: torch.Tensor | None, puzzles: torch.Tensor, labels: torch.Tensor, latent: torch.Tensor,
                puzzle_ids: torch.Tensor) -> None:
        """Start new episodes in the envs of ``mask`` (all when None) from full-batch tensors, the other rows
        ignored: ``puzzles``/``labels [B, L]`` int64, ``latent [B, 2, latent_len, D]`` float32 (broadcastable),
        ``puzzle_ids [B]`` int64. The trusted counterpart of :meth:`reset`, as :meth:`transition` is of
        :meth:`step`: no validation, no copies, no host synchronisation, the shapes never change (a training loop
        that replaces its finished rows in place keeps one compiled graph)."""
        updates = self._episode_start(puzzles, labels, latent.expand(self.batch_size, *self.latent_shape), puzzle_ids)
        if mask is None:  # (the answer changes, the puzzle stays; the latent gets memory of its own, every row's)
            updates["answer"], updates["latent"] = puzzles.clone(), updates["latent"].contiguous()
        self.state.update(updates, mask)

    def _derive_labels(self, puzzles: torch.Tensor):
        """Labels for puzzles given without: the task's (solution, canonical path). Where the task has none, label
        rewards cannot be paid, so ``reward_mode="label"`` is refused; the verifier needs none (cell accuracy is
        then measured against nothing and reads 0)."""
        derived = self.task.derive_labels(puzzles.cpu().numpy())
        if derived is not None:
            return derived
        if self.config.reward_mode == "label":
            raise ValueError(f"reset: {self.task.name} puzzles given without labels, and {self.task.name} cannot "
                             "derive one (many completions): pass labels, or use reward_mode='verifier'")
        return torch.zeros_like(puzzles)

    # -- step -------------------------------------------------------------------------------------------
    def _check_latent(self, latent, n: int, name: str) -> torch.Tensor:
        latent = _as_tensor(latent, name, self.device, unbatched=self.latent_shape if n == 1 else None)
        if latent.shape != (n, *self.latent_shape):
            raise ValueError(f"{name}: expected shape {(n, *self.latent_shape)}, got {tuple(latent.shape)}")
        if latent.dtype != torch.float32:
            if not latent.is_floating_point():
                raise ValueError(f"{name}: expected a floating-point tensor, got dtype {latent.dtype}")
            latent = latent.to(torch.float32)
        if latent.requires_grad:
            latent = latent.detach()
        # a sum is finite only if every term is; only an overflowing sum needs the element-wise check
        if not math.isfinite(latent.sum().item()) and not bool(torch.isfinite(latent).all()):
            raise ValueError(f"{name}: contains NaN or inf")
        return latent

    def _kept(self, latent: torch.Tensor, given, owned: bool) -> torch.Tensor:
        """The latent as the core may keep it for its state: never the caller's memory, since a caller reusing its
        buffer must not move the state. No copy where it is already apart: a NumPy array (copied on the way in),
        a converted tensor, the core's own latent handed back, or a tensor the caller hands over (``owned``)."""
        if (owned or not isinstance(given, torch.Tensor) or not _shares_storage(latent, given)
                or _shares_storage(given, self.latent)):
            return latent
        return latent.clone()

    def check_action(self, action: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate an action ``{latent [B,2,latent_len,D] float, answer [B,L] int, halt [B] int/bool}``;
        raises ``ValueError`` naming the field. Never modifies the given arrays."""
        if not isinstance(action, (dict, Mapping)):  # (dict first: an ABC check costs a microsecond)
            raise ValueError(f"action must be a mapping with keys {ACTION_KEYS}, got {type(action).__name__}")
        try:
            latent, answer, halt = action["latent"], action["answer"], action["halt"]
        except KeyError:
            missing = [k for k in ACTION_KEYS if k not in action]
            raise ValueError(f"action is missing field(s) {missing}; expected {ACTION_KEYS}") from None
        if len(action) != len(ACTION_KEYS):
            unknown = [k for k in action if k not in ACTION_KEYS]
            raise ValueError(f"action has unknown field(s) {unknown}; expected exactly {ACTION_KEYS}")
        B = self.batch_size
        latent = self._check_latent(latent, B, "action 'latent'")
        # only read: step makes a new one
        answer = _as_tensor(answer, "answer", self.device, copy=False, unbatched=(self.seq_len,) if B == 1 else None)
        if answer.dtype != torch.int64:
            if answer.dtype.is_floating_point or answer.dtype.is_complex or answer.dtype == torch.bool:
                raise ValueError(f"action 'answer': expected integer tokens, got dtype {answer.dtype}")
            answer = answer.to(torch.int64)
        if answer.shape != (B, self.seq_len):
            raise ValueError(f"action 'answer': expected shape {(B, self.seq_len)}, got {tuple(answer.shape)}")
        lo, hi = torch.aminmax(answer)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= self.task.vocab_size:
            raise ValueError(f"action 'answer': token out of the vocabulary [0, {self.task.vocab_size}): "
                             f"min {lo}, max {hi}")
        if B == 1 and isinstance(halt, (bool, int, np.bool_, np.integer)):
            if int(halt) not in (0, 1):
                raise ValueError(f"action 'halt': values must be 0 or 1, got {halt}")
            return latent, answer, self._halt_flags[int(halt)]
        halt = _as_tensor(halt, "halt", self.device)
        if halt.dtype.is_floating_point or halt.dtype.is_complex:
            raise ValueError(f"action 'halt': expected 0/1 integers or bools, got dtype {halt.dtype}")
        if halt.numel() != B or halt.ndim > 2 or (halt.ndim == 2 and halt.shape[1] != 1):
            raise ValueError(f"action 'halt': expected shape ({B},), got {tuple(halt.shape)}")
        halt = halt.reshape(B)
        if halt.dtype != torch.bool:
            if any(int(v) not in (0, 1) for v in torch.aminmax(halt)):
                raise ValueError("action 'halt': values must be 0 or 1")
        # always a fresh tensor: ``terminated`` is made from it and must never alias the caller's array
        halt = halt.to(torch.bool, copy=True)
        return latent, answer, halt

    def step(self, action: Mapping, mask=None, *, owned: bool = False) -> StepResult:
        """One transition for the envs in ``mask`` (all by default); the others keep their state and get
        reward 0. The action is validated (a ``ValueError`` names the field), and a finished env is a
        ``RuntimeError`` (reset it first). Then the rules are :meth:`transition`'s.

        The core keeps the action's latent as its state, so a caller's tensor is copied unless the caller says
        ``owned=True``: it hands over a fresh tensor it never writes into again. That saves one copy of the
        largest field per step."""
        latent, answer, halt = self.check_action(action)
        active = self._mask(mask)
        self._refuse_finished(active, "step()")
        return self.transition(self._kept(latent, action["latent"], owned), answer, halt, active)

    def transition(self, latent: torch.Tensor, answer: torch.Tensor, halt: torch.Tensor,
                   mask: torch.Tensor | None = None) -> StepResult:
        """The MDP's rules: the new answer keeps the givens and is scored; the reward is the change of the
        potential (score + solve bonus) minus the compute spent; the episode terminates on halt (or on solving)
        and is truncated at ``max_steps``.

        This is the trusted path: no validation, no copies, no host synchronisation. The caller (the agents'
        runner) hands over a fresh ``latent [B, 2, latent_len, D]`` float32, ``answer [B, L]`` int64 tokens and
        ``halt [B]`` bool, for envs that are not finished; anyone else calls :meth:`step`."""
        cfg = self.config
        answer = torch.where(self.givens, self.puzzle, answer)
        score, cell_accuracy, solved = self._evaluate(self.puzzle, answer, self.context, self.scored_label,
                                                      self.n_scored)
        potential = torch.add(score, solved, alpha=cfg.solve_bonus)  # score + solve_bonus * [solved]
        reward = potential - self.potential
        if cfg.nfe_cost:
            reward = reward - cfg.nfe_cost * cfg.nfe_per_step
        step_count = self.step_count + 1
        terminated = halt | solved if cfg.terminate_on_solve else halt
        truncated = (step_count >= cfg.max_steps) & ~terminated
        new = {"answer": answer, "latent": latent, "score": score, "cell_accuracy": cell_accuracy,
               "solved": solved, "potential": potential, "step_count": step_count,
               "nfe": self.nfe + cfg.nfe_per_step, "done": terminated | truncated}
        self.state.update(new, mask)  # the envs outside the mask keep their state, get reward 0 and do not end
        if mask is not None:
            terminated, truncated = terminated & mask, truncated & mask
            reward = torch.where(mask, reward, 0.0)
        return StepResult(self.observation(), reward, terminated, truncated, self.info())

    def stop(self, mask=None) -> StepResult:
        """End the selected episodes now, without a transition: no compute is charged, the reward is 0."""
        active = self._mask(mask)
        if active is None:
            active = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        self._refuse_finished(active, "stop()")
        self.state.done = self.state.done | active
        zeros = torch.zeros(self.batch_size, dtype=torch.float32, device=self.device)
        return StepResult(self.observation(), zeros, active.clone(), torch.zeros_like(active), self.info())

    # -- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every per-env tensor of the state (:meth:`EpisodeState.saved`) plus the puzzle-draw generator: enough to
        continue exactly where it stood (what depends on the puzzle alone is derived again on loading)."""
        return self.state.saved() | {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        loaded = {}
        for k, now in self.state.saved().items():
            v = torch.as_tensor(state[k], device=self.device)
            if v.shape != now.shape:
                raise ValueError(f"core state {k!r}: expected shape {tuple(now.shape)}, got {tuple(v.shape)}")
            loaded[k] = v.to(now.dtype)
        loaded["scored_label"], loaded["n_scored"] = self._scored_cells(loaded["givens"], loaded["label"])
        loaded["context"] = self.task.rule_context(loaded["puzzle"])
        self.state.update(loaded)
        self.rng.bit_generator.state = state["rng"]

    # -- views ------------------------------------------------------------------------------------------
    def observation(self) -> dict[str, torch.Tensor]:
        obs = {"puzzle": self.puzzle, "answer": self.answer, "latent": self.latent,
               "step": self.step_count, "nfe": self.nfe}
        if self.num_puzzle_ids is not None:
            obs["puzzle_id"] = self.puzzle_id
        return obs

    def info(self) -> dict[str, torch.Tensor]:
        return {"nfe": self.nfe, "cell_accuracy": self.cell_accuracy, "solved": self.solved, "score": self.score}

    def env_info(self, i: int = 0) -> dict:
        """``info`` of env ``i`` as Python scalars: what a single Gymnasium env returns."""
        return {"nfe": self.nfe.tolist()[i], "cell_accuracy": self.cell_accuracy.tolist()[i],
                "solved": self.solved.tolist()[i], "score": self.score.tolist()[i]}

    def reward_bounds(self) -> tuple[float, float]:
        """Analytic bounds of one transition's reward: S moves by at most 1 either way, ``solved`` flips once."""
        cost = self.config.nfe_cost * self.config.nfe_per_step
        return -1.0 - self.config.solve_bonus - cost, 1.0 + self.config.solve_bonus - cost


def _state_field(name: str) -> property:
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, v),
                    doc=f"``state.{name}`` (see :class:`EpisodeState`)")


for _name in EPISODE_FIELDS:  # the state's fields by name on the core: core.answer is core.state.answer
    setattr(RecursionCore, _name, _state_field(_name))


def single_thread_in_workers() -> None:
    """Called by the Gymnasium adapters: in a worker process (Gymnasium's ``AsyncVectorEnv``, a collector's worker)
    torch runs one thread. A worker forked after the parent used torch's thread pool deadlocks at its first
    parallel op, and workers running side by side should not each take every core anyway."""
    import multiprocessing

    if multiprocessing.parent_process() is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def resolve_task(task: Task | str, dataset=None, **task_kwargs):
    """(task, dataset) from adapter arguments. A saved ``.npz`` dataset names its own task (and is loaded here);
    any other dataset is passed on for the core to read."""
    if not isinstance(task, str):
        if task_kwargs:
            raise ValueError(f"task options {sorted(task_kwargs)} given with a ready task object")
        return task, dataset
    if dataset is not None and str(dataset).endswith(".npz"):
        loaded, batch, _ = load_dataset(dataset)
        if loaded.name != make_task(task, **task_kwargs).name:
            raise ValueError(f"dataset {dataset} holds {loaded.name} puzzles, not {task}")
        return loaded, batch
    return make_task(task, **task_kwargs), dataset


def build_core(task: Task | str, num_envs: int, dataset=None, device="cpu", seed=None, initial_latent=None,
               **kwargs) -> RecursionCore:
    """Make the core from adapter arguments: task options and :class:`RecursionConfig` fields mixed
    (``initial_latent``: see :attr:`RecursionCore.initial_latent`)."""
    config, task_kwargs = RecursionConfig.split(kwargs)
    task, dataset = resolve_task(task, dataset, **task_kwargs)
    return RecursionCore(task, num_envs, config, dataset=dataset, device=device, seed=seed,
                         initial_latent=initial_latent)
