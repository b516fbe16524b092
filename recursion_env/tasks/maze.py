"""Maze: find the shortest path from S to G on an N x N grid.

Tokens: 0 = open ``.``, 1 = wall ``#``, 2 = start ``S``, 3 = goal ``G``, 4 = path ``o``. Inputs hold no path;
the label marks the interior cells of a shortest S→G path. Open cells are the ones the answer decides.

Generation carves a perfect maze (a spanning tree over the cells at even coordinates, by randomised
depth-first search), so the S→G path is unique; ``loop_fraction > 0`` knocks out extra walls, and then the
label is the *canonical* shortest path: breadth-first search from G, and from S each move goes to the first
neighbour, in the order up, left, right, down, that is one step closer to G. ``verify`` accepts every shortest
path, canonical or not.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

from .base import PuzzleBatch, Task, integer_option, square_symmetries

OPEN, WALL, START, GOAL, PATH = 0, 1, 2, 3, 4
_CHARS = ".#SGo"
_MOVES = ((-1, 0), (0, -1), (0, 1), (1, 0))  # up, left, right, down: the canonical tie-break order


class MazeTask(Task):
    name = "maze"
    options = ("size", "loop_fraction")
    vocab_size = 5
    costly_rule_context = True  # two breadth-first searches per puzzle

    def __init__(self, size: int = 9, loop_fraction: float = 0.0, min_path: int | None = None):
        size = integer_option("maze", "size", size)
        min_path = integer_option("maze", "min_path", min_path, optional=True)
        if isinstance(loop_fraction, (bool, str)) or loop_fraction is None:
            raise ValueError(f"maze: loop_fraction must be a number in [0, 1], got {loop_fraction!r}")
        if not 3 <= size <= 64:
            raise ValueError(f"maze: size must be in [3, 64], got {size}")
        if not 0.0 <= loop_fraction <= 1.0:
            raise ValueError(f"maze: loop_fraction must be in [0, 1], got {loop_fraction}")
        self.size = int(size)
        self.loop_fraction = float(loop_fraction)
        self.min_path = size if min_path is None else int(min_path)
        self.seq_len = size * size
        self.grid_shape = (size, size)

    @property
    def kwargs(self):
        return {"size": self.size, "loop_fraction": self.loop_fraction, "min_path": self.min_path}

    # -- generator --------------------------------------------------------------------------------------
    def _carve(self, rng: np.random.Generator) -> np.ndarray:
        n = self.size
        grid = np.full((n, n), WALL, dtype=np.int64)
        nodes = [(i, j) for i in range(0, n, 2) for j in range(0, n, 2)]
        start = nodes[int(rng.integers(len(nodes)))]
        grid[start] = OPEN
        stack = [start]
        while stack:
            i, j = stack[-1]
            nxt = [(i + 2 * di, j + 2 * dj, di, dj) for di, dj in _MOVES
                   if 0 <= i + 2 * di < n and 0 <= j + 2 * dj < n and grid[i + 2 * di, j + 2 * dj] == WALL]
            if not nxt:
                stack.pop()
                continue
            a, b, di, dj = nxt[int(rng.integers(len(nxt)))]
            grid[i + di, j + dj] = OPEN
            grid[a, b] = OPEN
            stack.append((a, b))
        if self.loop_fraction > 0:
            # walls between two open cells in a line; removing one opens a loop
            cand = [(i, j) for i in range(n) for j in range(n) if grid[i, j] == WALL and (
                (0 < i < n - 1 and grid[i - 1, j] == OPEN and grid[i + 1, j] == OPEN)
                or (0 < j < n - 1 and grid[i, j - 1] == OPEN and grid[i, j + 1] == OPEN))]
            k = int(round(self.loop_fraction * len(cand)))
            for idx in rng.permutation(len(cand))[:k]:
                grid[cand[idx]] = OPEN
        return grid

    @staticmethod
    def _distances(grid: np.ndarray, source: tuple[int, int]) -> np.ndarray:
        n = grid.shape[0]
        dist = np.full(grid.shape, -1, dtype=np.int64)
        dist[source] = 0
        q = deque([source])
        while q:
            i, j = q.popleft()
            for di, dj in _MOVES:
                a, b = i + di, j + dj
                if 0 <= a < n and 0 <= b < n and grid[a, b] != WALL and dist[a, b] < 0:
                    dist[a, b] = dist[i, j] + 1
                    q.append((a, b))
        return dist

    def canonical_path(self, grid: np.ndarray) -> np.ndarray:
        """The label for a maze grid ``[N, N]`` with S and G: the canonical shortest path marked with ``o``."""
        grid = np.asarray(grid).reshape(self.size, self.size)
        s = tuple(np.argwhere(grid == START)[0])
        g = tuple(np.argwhere(grid == GOAL)[0])
        dist = self._distances(grid, g)
        if dist[s] < 0:
            raise ValueError("maze: the goal cannot be reached from the start")
        out = grid.copy()
        i, j = s
        while dist[i, j] > 1:
            for di, dj in _MOVES:
                a, b = i + di, j + dj
                if 0 <= a < self.size and 0 <= b < self.size and dist[a, b] == dist[i, j] - 1:
                    i, j = a, b
                    break
            out[i, j] = PATH
        return out.reshape(-1)

    def derive_labels(self, inputs: np.ndarray) -> np.ndarray:
        return np.stack([self.canonical_path(x) for x in np.asarray(inputs).reshape(-1, self.seq_len)])

    def generate(self, n: int, seed) -> PuzzleBatch:
        rng = np.random.default_rng(seed)
        inputs = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.zeros((n, self.seq_len), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        for k in range(n):
            grid = self._carve(rng)
            open_cells = np.argwhere(grid == OPEN)
            s = tuple(open_cells[int(rng.integers(len(open_cells)))])
            dist = self._distances(grid, s)
            # goal: a random cell among the far ones, so paths are long enough to need reasoning
            need = min(self.min_path, int(dist.max()))
            far = np.argwhere(dist >= max(need, 2))
            g = tuple(far[int(rng.integers(len(far)))])
            grid[s], grid[g] = START, GOAL
            inputs[k] = grid.reshape(-1)
            labels[k] = self.canonical_path(grid)
            lengths[k] = dist[g]
        return PuzzleBatch(self.name, inputs, labels, {"size": self.size, "path_length": lengths})

    # -- rules ------------------------------------------------------------------------------------------
    def distances(self, inputs: torch.Tensor, source: int) -> torch.Tensor:
        """Steps from the cell holding ``source`` (``START`` or ``GOAL``) to every cell through non-wall cells,
        ``int64 [n, L]``, -1 where unreachable: a batched wavefront expansion."""
        n = self.size
        flat = inputs.reshape(-1, n * n)
        walls = (flat == WALL).reshape(-1, 1, n, n)
        reach = (flat == source).reshape(-1, 1, n, n).to(torch.float32)
        dist = torch.where(flat == source, 0, -1)
        kernel = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32, device=inputs.device)
        for step in range(1, n * n):
            grown = (F.conv2d(reach, kernel[None, None], padding=1) > 0) & ~walls
            new = grown.reshape(-1, n * n) & (dist < 0)
            if not bool(new.any()):
                break
            dist = torch.where(new, step, dist)
            reach = grown.to(torch.float32)
        return dist

    def shortest_length(self, inputs: torch.Tensor, from_start: torch.Tensor | None = None) -> torch.Tensor:
        """S→G distance of each maze (``int64 [n]``, -1 when unreachable); ``from_start``: :meth:`distances` from
        S, when at hand."""
        if from_start is None:
            from_start = self.distances(inputs, START)
        return torch.where(inputs.reshape(-1, self.seq_len) == GOAL, from_start, -1).amax(-1)

    def rule_context(self, inputs: torch.Tensor) -> torch.Tensor:
        """``int64 [n, 1 + L]``: the S→G distance, then 1 for each cell on some shortest S→G path (the cells whose
        distances from S and from G add up to it), 0 elsewhere."""
        from_start, from_goal = self.distances(inputs, START), self.distances(inputs, GOAL)
        length = self.shortest_length(inputs, from_start)[:, None]
        on_shortest = (from_start >= 0) & (from_goal >= 0) & (from_start + from_goal == length)
        return torch.cat([length, on_shortest.to(torch.int64)], -1)

    def rule_counts(self, inputs: torch.Tensor, answers: torch.Tensor, context=None):
        """Rule credit of an answer, of ``L + 2`` for a maze whose shortest S→G path has ``L`` steps: one for each
        path cell on a shortest path with exactly two path/S/G neighbours (at most ``L - 1``), for S
        and G with exactly one, and for a path of the shortest length; less ``(L + 2) * wrong / W``, where
        ``wrong`` counts the path cells on no shortest path, the path cells beyond ``L - 1`` and the wall/S/G
        tokens written on open cells, and ``W`` is the number of open cells a solution leaves open (never below
        0). All the credit is earned iff the answer marks a shortest S→G path (the degree rules leave one S-G
        path plus cycles; the length rules out cycles). Marking part of a solution only gains; marking every open
        cell as path (``wrong >= W``) or as wall earns nothing."""
        n = self.size
        if context is None:
            context = self.rule_context(inputs)
        length, on_shortest = context[..., 0], context[..., 1:].to(torch.bool)
        a = answers.reshape(-1, 1, n, n)
        on = ((a == PATH) | (a == START) | (a == GOAL)).to(torch.float32)
        kernel = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float32, device=answers.device)
        degree = F.conv2d(on, kernel[None, None], padding=1).reshape(-1, n * n)
        flat = answers.reshape(-1, n * n)
        is_path = flat == PATH
        ends = (flat == START) | (flat == GOAL)
        n_path = is_path.sum(-1)
        credit = ((is_path & on_shortest & (degree == 2)).sum(-1).minimum(length - 1).clamp(min=0)
                  + (ends & (degree == 1)).sum(-1)
                  + (n_path == length - 1).to(torch.int64))
        open_in = inputs.reshape(-1, n * n) == OPEN
        wrong = ((is_path & ~on_shortest).sum(-1) + (n_path - (length - 1)).clamp(min=0)
                 + (open_in & (flat != OPEN) & (flat != PATH)).sum(-1))
        total = (length + 2).clamp(min=1)
        room = (open_in.sum(-1) - (length - 1)).clamp(min=1)  # W
        # (an exact integer where nothing is wrong: a solution's credit equals the total on every device)
        return (credit - total * wrong / room).clamp(min=0), total

    # -- text -------------------------------------------------------------------------------------------
    def parse(self, text: str) -> np.ndarray:
        """N lines of N characters (``.#SGo``), or one line of N² characters."""
        if not isinstance(text, str):
            raise ValueError(f"maze: expected a string, got {type(text).__name__}")
        chars = [ch for ch in text if ch not in " \t\r\n"]
        if len(chars) != self.seq_len:
            raise ValueError(f"maze {self.size}x{self.size}: expected {self.seq_len} cells, got {len(chars)}")
        out = np.zeros(self.seq_len, dtype=np.int64)
        for pos, ch in enumerate(chars):
            v = _CHARS.find(ch)
            if v < 0:
                raise ValueError(
                    f"maze: bad character {ch!r} at position {pos} (row {pos // self.size + 1}, "
                    f"column {pos % self.size + 1}); expected one of {_CHARS!r}"
                )
            out[pos] = v
        for tok, what in ((START, "start 'S'"), (GOAL, "goal 'G'")):
            count = int((out == tok).sum())
            if count != 1:
                raise ValueError(f"maze: expected exactly one {what}, found {count}")
        return out

    def to_line(self, tokens) -> str:
        return "".join(_CHARS[v] for v in np.asarray(tokens).tolist())

    def format(self, tokens) -> str:
        line = self.to_line(tokens)
        return "\n".join(line[i:i + self.size] for i in range(0, self.seq_len, self.size))

    def augment(self, inputs, labels, rng: np.random.Generator):
        """The 8 symmetries of the square. The canonical tie-break is not symmetric, so with loops the
        label stays *a* shortest path (valid, maybe not canonical); in perfect mazes it is unique."""
        return square_symmetries(inputs, labels, rng, self.size)
