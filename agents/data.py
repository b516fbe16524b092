"""Training data: a resumable stream of (puzzle, label) pairs, generated on the fly or drawn from a dataset,
with the task's augmentations, never emitting a held-out puzzle."""

from __future__ import annotations

import numpy as np

from recursion_env.tasks import PuzzleBatch, Task


def puzzle_keys(inputs) -> set[bytes]:
    """Puzzles (``inputs`` rows) as hashable keys, for :func:`outside`."""
    return {row.tobytes() for row in inputs}


def outside(inputs: np.ndarray, keys: set[bytes]) -> np.ndarray:
    """``bool [n]``: which rows of ``inputs`` are not among ``keys`` (e.g. not held out)."""
    return np.array([row.tobytes() not in keys for row in inputs], dtype=bool)


class PuzzleStream:
    """``take(k)`` returns ``k`` fresh (inputs, labels). With a dataset, puzzles are drawn uniformly with
    replacement; without, they are generated in chunks. ``exclude`` holds puzzles (``inputs`` rows) that
    must never be emitted, e.g. the evaluation set: a training puzzle equal to one is dropped (before
    augmentation, and after it, since a symmetry can map a puzzle onto a held-out one).

    The whole state is one numpy generator plus a buffer, both saved by :meth:`state_dict`."""

    def __init__(self, task: Task, seed: int, dataset: PuzzleBatch | None = None, augment: bool = True,
                 exclude: np.ndarray | None = None, chunk: int = 256):
        self.task, self.dataset, self.augment, self.chunk = task, dataset, augment, chunk
        self.rng = np.random.default_rng(seed)
        self.exclude = puzzle_keys(exclude if exclude is not None else [])
        self.emitted = 0
        self.dropped = 0
        self._x = np.zeros((0, task.seq_len), dtype=np.int64)
        self._y = np.zeros((0, task.seq_len), dtype=np.int64)
        if dataset is not None:
            keep = outside(dataset.inputs, self.exclude)
            if not keep.any():
                raise ValueError("every training puzzle is also a held-out puzzle")
            self.dropped += int((~keep).sum())
            self.dataset = dataset[np.flatnonzero(keep)]

    def _refill(self) -> None:
        if self.dataset is not None:
            idx = self.rng.integers(len(self.dataset), size=self.chunk)
            x, y = self.dataset.inputs[idx], self.dataset.labels[idx]
        else:
            b = self.task.generate(self.chunk, seed=int(self.rng.integers(2**62)))
            x, y = b.inputs, b.labels
        if self.augment:
            x, y = self.task.augment(x, y, self.rng)
        if self.exclude:
            keep = outside(x, self.exclude)
            self.dropped += int((~keep).sum())
            x, y = x[keep], y[keep]
        self._x, self._y = np.concatenate([self._x, x]), np.concatenate([self._y, y])

    def take(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._x) < k:
            self._refill()
        x, y = self._x[:k], self._y[:k]
        self._x, self._y = self._x[k:], self._y[k:]
        self.emitted += k
        return x, y

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "x": self._x.copy(), "y": self._y.copy(),
                "emitted": self.emitted, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._x, self._y = np.asarray(state["x"], dtype=np.int64), np.asarray(state["y"], dtype=np.int64)
        self.emitted, self.dropped = int(state["emitted"]), int(state["dropped"])
