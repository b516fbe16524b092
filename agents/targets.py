"""Intermediate targets for Deep Improvement Supervision: Φ(x, y*, N_sup, rng) -> ``[N_sup, L]`` per puzzle.

Every generator keeps these invariants: the last target is y*; the Hamming distance to y* never increases
from step to step and falls on average; givens are kept; every token is valid (a target cell holds either the
puzzle's token or the solution's); each call draws fresh paths (same puzzle, different paths).

* ``diffusion``: the paper's linear discrete-diffusion path. The cells where the puzzle and the solution differ
  are revealed in a random order, floor(s / N_sup * #diff) of them by step s.
* ``mask``: a masking schedule. Each differing cell stays hidden at step s with rate beta_s = 1 - s / N_sup
  (beta_{N_sup} = 0), drawn once per cell so the revealed sets are nested.
* ``solver``: a solver trace ("programmable edits"), Sudoku only. Step s reveals the cells that naked and
  hidden singles deduce from target s - 1; when deduction stalls it tops up with random solution cells, at
  the diffusion path's pace, so every revealed cell is either a logical consequence or a fresh hint.
"""

from __future__ import annotations

import numpy as np

from recursion_env.tasks import SudokuTask, Task

GENERATORS = ("diffusion", "mask", "solver")


def _reveal(puzzle: np.ndarray, solution: np.ndarray, revealed_at: np.ndarray, N_sup: int) -> np.ndarray:
    """Targets from the step at which each cell is revealed (``revealed_at [L]`` in 1..N_sup; 0 = always)."""
    steps = np.arange(1, N_sup + 1)[:, None]
    return np.where(revealed_at[None] <= steps, solution[None], puzzle[None])


def diffusion_targets(puzzle, solution, N_sup: int, rng: np.random.Generator) -> np.ndarray:
    diff = np.flatnonzero(puzzle != solution)
    order = rng.permutation(diff)
    revealed_at = np.zeros(len(puzzle), dtype=np.int64)
    # cell k of the order is revealed at the first step s with floor(s / N_sup * #diff) > k
    k = np.arange(len(order))
    revealed_at[order] = np.ceil((k + 1) * N_sup / max(len(order), 1)).astype(np.int64)
    return _reveal(puzzle, solution, revealed_at, N_sup)


def mask_targets(puzzle, solution, N_sup: int, rng: np.random.Generator) -> np.ndarray:
    diff = puzzle != solution
    u = rng.random(len(puzzle))
    # hidden at step s iff u < beta_s = 1 - s / N_sup, so revealed from the first s >= (1 - u) N_sup
    revealed_at = np.where(diff, np.clip(np.ceil((1 - u) * N_sup), 1, N_sup), 0).astype(np.int64)
    return _reveal(puzzle, solution, revealed_at, N_sup)


def _deducible(task: SudokuTask, grid: np.ndarray) -> np.ndarray:
    """Cells naked or hidden singles fill in one round from ``grid`` (assumed consistent with the solution)."""
    size, full = task.size, (1 << task.size) - 1
    cand = [full] * task.seq_len
    for cell, v in enumerate(grid.tolist()):
        if v:
            cand[cell] = 1 << (v - 1)
    for cell, v in enumerate(grid.tolist()):
        if v:
            for p in task._peers[cell]:
                if not grid[p]:
                    cand[p] &= ~(1 << (v - 1))
    found = np.zeros(task.seq_len, dtype=bool)
    for cell in range(task.seq_len):
        m = cand[cell]
        if not grid[cell] and m and not m & (m - 1):
            found[cell] = True
    for unit in task.units:
        for d in range(size):
            bit = 1 << d
            places = [c for c in unit if cand[c] & bit]
            if len(places) == 1 and not grid[places[0]]:
                found[places[0]] = True
    return found


def solver_targets(task: SudokuTask, puzzle, solution, N_sup: int, rng: np.random.Generator) -> np.ndarray:
    n_diff = int((puzzle != solution).sum())
    pace = -(-n_diff // N_sup)  # cells per step of the linear path, rounded up
    grid = puzzle.copy()
    out = np.empty((N_sup, len(puzzle)), dtype=np.int64)
    for s in range(N_sup):
        if s == N_sup - 1:
            grid = solution.copy()
        else:
            found = _deducible(task, grid)
            if not found.any():  # deduction stalls: reveal fresh solution cells at the linear pace
                hidden = np.flatnonzero(grid != solution)
                found[rng.choice(hidden, size=min(pace, len(hidden)), replace=False)] = True
            grid = np.where(found, solution, grid)
        out[s] = grid
    return out


def make_targets(kind: str, task: Task, puzzles: np.ndarray, solutions: np.ndarray, N_sup: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Targets ``[n, N_sup, L]`` for a batch of puzzles."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown target generator {kind!r}; known: {GENERATORS}")
    if kind == "solver" and not isinstance(task, SudokuTask):
        raise ValueError(f"solver-trace targets are defined for sudoku, not {task.name}")
    puzzles, solutions = np.atleast_2d(puzzles), np.atleast_2d(solutions)
    if puzzles.shape != solutions.shape or puzzles.shape[1] != task.seq_len:
        raise ValueError(f"puzzles {puzzles.shape} and solutions {solutions.shape} must both be [n, {task.seq_len}]")
    out = np.empty((len(puzzles), N_sup, puzzles.shape[1]), dtype=np.int64)
    for i, (x, y) in enumerate(zip(puzzles, solutions)):
        if kind == "diffusion":
            out[i] = diffusion_targets(x, y, N_sup, rng)
        elif kind == "mask":
            out[i] = mask_targets(x, y, N_sup, rng)
        else:
            out[i] = solver_targets(task, x, y, N_sup, rng)
    return out
