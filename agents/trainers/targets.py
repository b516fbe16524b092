"""Intermediate targets for Deep Improvement Supervision: Φ(x, y*, N_sup, rng) -> ``[N_sup, L]`` per puzzle.

Every generator keeps these invariants: the last target is y*; the Hamming distance to y* never increases
from step to step and falls on average; givens are kept; every token is valid (a target cell holds either the
puzzle's token or the solution's); each call draws fresh paths (same puzzle, different paths).

* ``diffusion``: the paper's linear discrete-diffusion path. The cells where the puzzle and the solution differ
  are revealed in a random order, floor(s / N_sup * #diff) of them by step s.
* ``mask``: a masking schedule. Each differing cell stays hidden at step s with rate beta_s = 1 - s / N_sup
  (beta_{N_sup} = 0), drawn once per cell so the revealed sets are nested.
* ``solver``: a solver trace ("programmable edits"), Sudoku only. Step s reveals the cells that naked and
  hidden singles deduce from target s - 1 (the task's :meth:`~recursion_env.tasks.SudokuTask.deductions`); when
  deduction stalls it tops up with random solution cells, at the diffusion path's pace, so every revealed cell
  is either a logical consequence or a fresh hint.

All three are built batched in torch on the puzzles' device (the trainer's), drawing from a ``torch.Generator``
on that device.
"""

from __future__ import annotations

import torch

from recursion_env.tasks import SudokuTask, Task

GENERATORS = ("diffusion", "mask", "solver")


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def _random_rank(cells: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each marked cell's place (0, 1, ...) in a random order of its row's marked cells; unmarked cells rank after
    them all."""
    keys = torch.where(cells, _uniform(cells.shape, cells, generator), 2.0)
    order = keys.argsort(-1)
    return torch.empty_like(order).scatter_(-1, order, torch.arange(cells.shape[-1], device=cells.device)
                                            .expand_as(order))


def _reveal(puzzles, solutions, revealed_at, N_sup: int) -> torch.Tensor:
    """Targets ``[n, N_sup, L]`` from the step at which each cell is revealed (``[n, L]`` in 1..N_sup; 0 =
    always)."""
    steps = torch.arange(1, N_sup + 1, device=puzzles.device)[:, None]
    return torch.where(revealed_at[:, None] <= steps, solutions[:, None], puzzles[:, None])


def diffusion_targets(puzzles, solutions, N_sup: int, generator=None) -> torch.Tensor:
    diff = puzzles != solutions
    count = diff.sum(-1, keepdim=True).clamp(min=1)
    # the k-th differing cell of a random order is revealed at the first step s with floor(s / N_sup * #diff) > k
    k = _random_rank(diff, generator)
    revealed_at = torch.where(diff, ((k + 1) * N_sup + count - 1) // count, 0)
    return _reveal(puzzles, solutions, revealed_at, N_sup)


def mask_targets(puzzles, solutions, N_sup: int, generator=None) -> torch.Tensor:
    diff = puzzles != solutions
    u = _uniform(diff.shape, diff, generator).double()
    # hidden at step s iff u < beta_s = 1 - s / N_sup, so revealed from the first s >= (1 - u) N_sup
    revealed_at = torch.where(diff, torch.ceil((1 - u) * N_sup).clamp(1, N_sup).long(), 0)
    return _reveal(puzzles, solutions, revealed_at, N_sup)


def solver_targets(task: SudokuTask, puzzles, solutions, N_sup: int, generator=None) -> torch.Tensor:
    pace = -(-(puzzles != solutions).sum(-1, keepdim=True) // N_sup)  # cells per step of the linear path, rounded up
    grid = puzzles
    out = torch.empty((*puzzles.shape[:1], N_sup, puzzles.shape[-1]), dtype=puzzles.dtype, device=puzzles.device)
    for s in range(N_sup - 1):
        found = task.deductions(grid)
        stalled = ~found.any(-1, keepdim=True)
        if stalled.any():  # deduction stalls: reveal fresh solution cells at the linear pace
            hidden = grid != solutions
            found = found | (stalled & hidden & (_random_rank(hidden, generator) < pace))
        grid = torch.where(found, solutions, grid)
        out[:, s] = grid
    out[:, -1] = solutions
    return out


def make_targets(kind: str, task: Task, puzzles, solutions, N_sup: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Targets ``[n, N_sup, L]`` for a batch of puzzles (tensors or arrays ``[n, L]``), on the puzzles' device,
    drawn from ``generator`` (on that device; None: torch's global generator)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown target generator {kind!r}; known: {GENERATORS}")
    if kind == "solver" and not isinstance(task, SudokuTask):
        raise ValueError(f"solver-trace targets are defined for sudoku, not {task.name}")
    puzzles = torch.atleast_2d(torch.as_tensor(puzzles)).long()
    solutions = torch.atleast_2d(torch.as_tensor(solutions, device=puzzles.device)).long()
    if puzzles.shape != solutions.shape or puzzles.shape[1] != task.seq_len:
        raise ValueError(f"puzzles {tuple(puzzles.shape)} and solutions {tuple(solutions.shape)} must both be "
                         f"[n, {task.seq_len}]")
    if kind == "diffusion":
        return diffusion_targets(puzzles, solutions, N_sup, generator)
    if kind == "mask":
        return mask_targets(puzzles, solutions, N_sup, generator)
    return solver_targets(task, puzzles, solutions, N_sup, generator)
