"""N-Queens completion: some queens are given; place the rest so that ``board`` queens attack none.

Tokens: 0 = undecided ``.`` (inputs only), 1 = no queen ``x``, 2 = queen ``Q``. Inputs hold the given queens and
undecided squares; an answer decides every undecided square. Several completions can be valid: ``verify``
accepts any, ``labels`` holds the one the generator started from.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from .base import PuzzleBatch, Task, integer_option, square_symmetries

UNDECIDED, EMPTY, QUEEN = 0, 1, 2
_CHARS = ".xQ"


class NQueensTask(Task):
    name = "nqueens"
    options = ("board", "min_given", "max_given")
    vocab_size = 3

    def __init__(self, board: int = 8, min_given: int = 1, max_given: int | None = None):
        board = integer_option("nqueens", "board", board)
        min_given = integer_option("nqueens", "min_given", min_given)
        max_given = integer_option("nqueens", "max_given", max_given, optional=True)
        if not 4 <= board <= 32:
            raise ValueError(f"nqueens: board must be in [4, 32], got {board}")
        max_given = board - 1 if max_given is None else max_given
        if not 0 <= min_given <= max_given <= board:
            raise ValueError(f"nqueens: need 0 <= min_given <= max_given <= board; got {min_given}, {max_given}")
        self.board, self.min_given, self.max_given = int(board), int(min_given), int(max_given)
        self.seq_len = board * board
        self.grid_shape = (board, board)

    @property
    def kwargs(self):
        return {"board": self.board, "min_given": self.min_given, "max_given": self.max_given}

    def _random_solution(self, rng: np.random.Generator) -> list[int]:
        """Column of the queen in each row, by randomised backtracking."""
        n = self.board
        cols: list[int] = []
        orders = [rng.permutation(n).tolist()]
        while True:
            row = len(cols)
            if row == n:
                return cols
            while orders[-1]:
                c = orders[-1].pop()
                if all(c != pc and abs(c - pc) != row - pr for pr, pc in enumerate(cols)):
                    cols.append(c)
                    orders.append(rng.permutation(n).tolist())
                    break
            else:
                orders.pop()
                if not cols:
                    raise RuntimeError("nqueens: no solution")  # cannot happen for board >= 4
                cols.pop()

    def generate(self, n: int, seed) -> PuzzleBatch:
        rng = np.random.default_rng(seed)
        b = self.board
        inputs = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.full((n, self.seq_len), EMPTY, dtype=np.int64)
        for k in range(n):
            cols = self._random_solution(rng)
            queens = [r * b + c for r, c in enumerate(cols)]
            labels[k, queens] = QUEEN
            given = int(rng.integers(self.min_given, self.max_given + 1))
            inputs[k, rng.choice(queens, size=given, replace=False)] = QUEEN
        return PuzzleBatch(self.name, inputs, labels, {"board": b})

    @cached_property
    def _lines(self) -> torch.Tensor:
        """Every row, column, diagonal and anti-diagonal as a padded index list (pad = seq_len)."""
        b = self.board
        lines = [[r * b + c for c in range(b)] for r in range(b)]
        lines += [[r * b + c for r in range(b)] for c in range(b)]
        for d in range(-(b - 1), b):
            lines.append([r * b + r + d for r in range(b) if 0 <= r + d < b])
            lines.append([r * b + (b - 1 - r - d) for r in range(b) if 0 <= b - 1 - r - d < b])
        return torch.tensor([ln + [self.seq_len] * (b - len(ln)) for ln in lines], dtype=torch.int64)

    def rule_counts(self, inputs: torch.Tensor, answers: torch.Tensor, context=None):
        """Rules satisfied of: every row and column holds exactly one queen, every diagonal at most one (an
        undecided square holds no queen), and the board is complete: no square undecided, which counts only once
        every other rule holds. So writing "no queen" on undecided squares earns nothing by itself: such a board is
        no closer to a solution than the puzzle as given (each queen of a solution is; the completion is the last
        rule)."""
        b = self.board
        lines = self._lines.to(answers.device)
        padded = torch.cat([answers, torch.full_like(answers[..., :1], EMPTY)], dim=-1)
        queens = (padded[..., lines] == QUEEN).sum(-1)  # [n, n_lines]
        placed = (queens[..., : 2 * b] == 1).sum(-1) + (queens[..., 2 * b:] <= 1).sum(-1)
        n_lines = lines.shape[0]
        complete = (placed == n_lines) & (answers != UNDECIDED).all(-1)
        return placed + complete, n_lines + 1

    def parse(self, text: str) -> np.ndarray:
        """``board`` lines of ``board`` characters (``.xQ``), or one line of board² characters."""
        if not isinstance(text, str):
            raise ValueError(f"nqueens: expected a string, got {type(text).__name__}")
        chars = [ch for ch in text if ch not in " \t\r\n"]
        if len(chars) != self.seq_len:
            raise ValueError(f"nqueens {self.board}x{self.board}: expected {self.seq_len} cells, got {len(chars)}")
        out = np.zeros(self.seq_len, dtype=np.int64)
        for pos, ch in enumerate(chars):
            v = _CHARS.find(ch)
            if v < 0:
                raise ValueError(
                    f"nqueens: bad character {ch!r} at position {pos} (row {pos // self.board + 1}, "
                    f"column {pos % self.board + 1}); expected one of {_CHARS!r}"
                )
            out[pos] = v
        q = np.argwhere(out.reshape(self.board, self.board) == QUEEN)
        for i in range(len(q)):
            for j in range(i + 1, len(q)):
                (r1, c1), (r2, c2) = q[i], q[j]
                if r1 == r2 or c1 == c2 or abs(r1 - r2) == abs(c1 - c2):
                    raise ValueError(
                        f"nqueens: queens at (row {r1 + 1}, col {c1 + 1}) and (row {r2 + 1}, col {c2 + 1}) attack "
                        "each other"
                    )
        return out

    def to_line(self, tokens) -> str:
        return "".join(_CHARS[v] for v in np.asarray(tokens).tolist())

    def format(self, tokens) -> str:
        line = self.to_line(tokens)
        return "\n".join(line[i:i + self.board] for i in range(0, self.seq_len, self.board))

    def augment(self, inputs, labels, rng: np.random.Generator):
        """The 8 symmetries of the square map non-attacking placements to non-attacking placements."""
        return square_symmetries(inputs, labels, rng, self.board)
