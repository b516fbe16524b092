"""Training data: a resumable stream of (puzzle, label) pairs, generated on the fly or drawn from a dataset,
with the task's augmentations, never emitting a held-out puzzle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recursion_env.tasks import PuzzleBatch, Task


def puzzle_keys(inputs) -> set[bytes]:
    """Puzzles (``inputs`` rows) as hashable keys, for :func:`outside`."""
    return {row.tobytes() for row in inputs}


def outside(inputs: np.ndarray, keys: set[bytes]) -> np.ndarray:
    """``bool [n]``: which rows of ``inputs`` are not among ``keys`` (e.g. not held out)."""
    return np.array([row.tobytes() not in keys for row in inputs], dtype=bool)


class PuzzleStream:
    """``take(k)`` returns ``k`` fresh (inputs, labels, puzzle identifiers; 0 where the data has none). The stream is a
    sequence of chunks of ``chunk`` puzzles, chunk ``c`` a pure function of (``seed``, ``c``): drawn uniformly with
    replacement from a dataset, or generated, then augmented. ``exclude`` holds puzzles (``inputs`` rows) that must
    never be emitted, e.g. the evaluation set: a training puzzle equal to one is dropped (before augmentation, and
    after it, since a symmetry can map a puzzle onto a held-out one). ``dataset`` is a :class:`PuzzleBatch` in
    memory or a memory-mapped :class:`~recursion_env.tasks.store.PuzzleStore`, whose rows are read (and filtered) a
    chunk at a time.

    ``shard=(rank, world)`` splits one stream among data-parallel ranks: rank ``r`` takes chunks ``r, r + world,
    ...`` (a shared seed, disjoint draws, and each rank generates only its own chunks), so ``world`` ranks taking
    ``chunk`` puzzles each see what one process taking ``world * chunk`` sees.

    The whole state is one numpy generator (the chunks' seeds), the chunk count and a buffer, saved by
    :meth:`state_dict`."""

    def __init__(self, task: Task, seed: int, dataset: PuzzleBatch | None = None, augment: bool = True,
                 exclude: np.ndarray | None = None, chunk: int = 256, shard: tuple[int, int] = (0, 1)):
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.task, self.dataset, self.augment, self.chunk = task, dataset, augment, chunk
        self.rank, self.world = shard
        self.rng = np.random.default_rng(seed)
        self.chunks = 0  # chunks of the shared stream passed (this rank's and the others')
        self.exclude = puzzle_keys(exclude if exclude is not None else [])
        self.emitted = 0
        self.dropped = 0
        self._x = np.zeros((0, task.seq_len), dtype=np.int64)
        self._y = np.zeros((0, task.seq_len), dtype=np.int64)
        self._ids = np.zeros(0, dtype=np.int64)
        # a memory-mapped store is filtered chunk by chunk as it is read (below), not read whole here
        self.lazy = dataset is not None and not isinstance(dataset, PuzzleBatch)
        if dataset is not None and not self.lazy:
            keep = outside(dataset.inputs, self.exclude)
            if not keep.any():
                raise ValueError("every training puzzle is also a held-out puzzle")
            self.dropped += int((~keep).sum())
            self.dataset = dataset[np.flatnonzero(keep)]

    def _next_seed(self) -> int:
        """The seed of this rank's next chunk (the chunks of the other ranks are passed over)."""
        while True:
            seed, c = int(self.rng.integers(2**62)), self.chunks
            self.chunks += 1
            if c % self.world == self.rank:
                return seed

    def _refill(self) -> None:
        seed = self._next_seed()
        rng = np.random.default_rng([seed, 1])  # the chunk's draws and augmentations (the generator has ``seed``)
        if self.dataset is not None:
            # read in file order (a memory-mapped dataset reads ahead), then shuffled
            idx = np.sort(rng.integers(len(self.dataset), size=self.chunk))
            order = rng.permutation(self.chunk)
            # (a store's rows are checked as they are read: checksums, tokens, labels solving their puzzles)
            x, y = self.dataset.read(idx) if self.lazy else (self.dataset.inputs[idx], self.dataset.labels[idx])
            x, y = np.asarray(x, dtype=np.int64)[order], np.asarray(y, dtype=np.int64)[order]
            ids = self.dataset.meta.get("puzzle_identifiers") if isinstance(self.dataset, PuzzleBatch) else None
            ids = np.zeros(len(x), np.int64) if ids is None else np.asarray(ids, np.int64)[idx][order]
            if self.lazy and self.exclude:
                keep = outside(x, self.exclude)
                self.dropped += int((~keep).sum())
                x, y, ids = x[keep], y[keep], ids[keep]
        else:
            b = self.task.generate(self.chunk, seed=seed)
            x, y = b.inputs, b.labels
            ids = np.asarray(b.meta.get("puzzle_identifiers", np.zeros(len(x))), dtype=np.int64)
        if self.augment:
            x, y = self.task.augment(x, y, rng)
        if self.exclude:
            keep = outside(x, self.exclude)
            self.dropped += int((~keep).sum())
            x, y, ids = x[keep], y[keep], ids[keep]
        self._x, self._y = np.concatenate([self._x, x]), np.concatenate([self._y, y])
        self._ids = np.concatenate([self._ids, ids])

    def take(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while len(self._x) < k:
            self._refill()
        x, y, ids = self._x[:k], self._y[:k], self._ids[:k]
        self._x, self._y, self._ids = self._x[k:], self._y[k:], self._ids[k:]
        self.emitted += k
        return x, y, ids

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "chunks": self.chunks, "x": self._x.copy(),
                "y": self._y.copy(), "ids": self._ids.copy(), "emitted": self.emitted, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._x, self._y = np.asarray(state["x"], dtype=np.int64), np.asarray(state["y"], dtype=np.int64)
        self._ids = np.asarray(state.get("ids", np.zeros(len(self._x))), dtype=np.int64)
        self.emitted, self.dropped = int(state["emitted"]), int(state["dropped"])
        self.chunks = int(state.get("chunks", 0))  # (streams saved before sharding were one rank's)


class DeviceFeed:
    """The stream's next puzzles, already on the training device, so a training loop replaces its finished rows
    without asking the host how many finished (the official carry's ``torch.where`` swap in a fixed-size batch).

    :meth:`take` hands the k-th finished row of the batch the k-th unused puzzle, in stream order (the order the
    stream gives them: the same puzzles in the same rows as taking ``finished.sum()`` puzzles would), as full-batch
    tensors, and advances a position kept on the device. :meth:`top_up` (the host's turn: at log points) drops what
    was used and holds ``reserve`` unused puzzles again; a loop that tops up every ``k`` steps of batch ``B`` needs
    ``reserve >= k * B``, and a feed that ran dry is an error there, never a repeated puzzle.

    ``prepare(puzzles, labels)`` (tensors on the device), when given, makes per-puzzle extras as puzzles enter the
    feed (DIS's target paths), handed out with them."""

    def __init__(self, stream: PuzzleStream, device: str | torch.device, reserve: int,
                 prepare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None):
        self.stream, self.device, self.reserve, self.prepare = stream, torch.device(device), int(reserve), prepare
        L = stream.task.seq_len
        self.x = torch.zeros(0, L, dtype=torch.int64, device=self.device)
        self.y = torch.zeros(0, L, dtype=torch.int64, device=self.device)
        self.ids = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.extra: torch.Tensor | None = None
        self.head = torch.zeros((), dtype=torch.int64, device=self.device)  # puzzles used since the last top-up

    def __len__(self) -> int:
        """Unused puzzles held (reads the device's position)."""
        return len(self.x) - int(self.head)

    def top_up(self) -> None:
        used = int(self.head)
        if used > len(self.x):
            raise RuntimeError(f"the device feed ran dry: {used} puzzles taken of {len(self.x)} held (top it up "
                               "more often, or hold a larger reserve)")
        keep = slice(used, None)
        self.x, self.y, self.ids = self.x[keep], self.y[keep], self.ids[keep]
        self.extra = None if self.extra is None else self.extra[keep]
        self.head = torch.zeros_like(self.head)
        missing = self.reserve - len(self.x)
        if missing > 0:
            x, y, ids = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
                         for a in self.stream.take(missing))
            extra = None if self.prepare is None else self.prepare(x, y)
            self.x, self.y, self.ids = torch.cat([self.x, x]), torch.cat([self.y, y]), torch.cat([self.ids, ids])
            if extra is not None:
                self.extra = extra if self.extra is None else torch.cat([self.extra, extra])

    def take(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(puzzles, labels, identifiers, extras) for a batch whose rows ``mask`` (bool ``[B]``) start anew: row
        ``i`` holds the next unused puzzle if ``mask[i]``, else a row to ignore."""
        index = (self.head + mask.cumsum(0) - 1).clamp(0, max(len(self.x) - 1, 0))
        self.head = self.head + mask.sum()
        return self.x[index], self.y[index], self.ids[index], None if self.extra is None else self.extra[index]

    def state_dict(self) -> dict:
        """The unused puzzles (and extras), on the CPU: with the stream's state, where the feed stands."""
        used = int(self.head)
        state = {"x": self.x[used:].cpu(), "y": self.y[used:].cpu(), "ids": self.ids[used:].cpu()}
        if self.extra is not None:
            state["extra"] = self.extra[used:].cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y, self.ids = (state[k].to(self.device) for k in ("x", "y", "ids"))
        self.extra = state["extra"].to(self.device) if "extra" in state else None
        self.head = torch.zeros_like(self.head)
