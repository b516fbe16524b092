"""Sudoku with r x c boxes (4x4: 2x2, 6x6: 2x3, 9x9: 3x3; any r x c works).

Tokens: 0 = blank, 1..size = digits. The line form is size² characters, ``1..size`` for a digit and ``.`` or
``0`` for a blank (for sizes above 9, digits are written 1-9 then A, B, ...). :meth:`SudokuTask.format` emits a
boxed grid that :meth:`SudokuTask.parse` also reads.

The solver is constraint propagation (naked and hidden singles on bitmasks) plus depth-first search on the
cell with the fewest candidates. It counts solutions up to a limit, which is how the generator keeps every
puzzle uniquely solvable.
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from .base import PuzzleBatch, Task, integer_option

_DIGITS = "123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEFAULT_BOX = {4: (2, 2), 6: (2, 3), 8: (2, 4), 9: (3, 3), 12: (3, 4), 16: (4, 4)}
#: (min_givens, max_givens) defaults: easy enough to generate fast, hard enough to need a few steps
_DEFAULT_GIVENS = {4: (6, 8), 6: (14, 18), 9: (28, 34)}


class _Unsolvable(Exception):
    pass


class SudokuTask(Task):
    name = "sudoku"
    options = ("size", "box", "min_givens", "max_givens")

    def __init__(self, size: int = 9, box: tuple[int, int] | None = None, min_givens: int | None = None,
                 max_givens: int | None = None):
        size = integer_option("sudoku", "size", size)
        min_givens = integer_option("sudoku", "min_givens", min_givens, optional=True)
        max_givens = integer_option("sudoku", "max_givens", max_givens, optional=True)
        if box is not None:
            box = tuple(integer_option("sudoku", "box", v) for v in box)
        if box is None:
            if size not in _DEFAULT_BOX:
                raise ValueError(f"sudoku: no default box shape for size {size}; pass box=(rows, cols)")
            box = _DEFAULT_BOX[size]
        r, c = int(box[0]), int(box[1])
        if r * c != size or r < 1 or c < 1:
            raise ValueError(f"sudoku: box {r}x{c} does not tile a {size}x{size} grid (need rows*cols == size)")
        if size > len(_DIGITS):
            raise ValueError(f"sudoku: size {size} is larger than the largest supported ({len(_DIGITS)})")
        self.size, self.box = size, (r, c)
        self._rule_cache: dict = {}  # see _rule_tensors
        lo, hi = _DEFAULT_GIVENS.get(size, (int(0.45 * size * size), int(0.55 * size * size)))
        self.min_givens = lo if min_givens is None else int(min_givens)
        self.max_givens = hi if max_givens is None else int(max_givens)
        if not 0 <= self.min_givens <= self.max_givens <= size * size:
            raise ValueError(
                f"sudoku: need 0 <= min_givens <= max_givens <= {size * size}; "
                f"got {self.min_givens}, {self.max_givens}"
            )
        self.seq_len = size * size
        self.vocab_size = size + 1
        self.grid_shape = (size, size)
        self._full = (1 << size) - 1
        n = size
        rows = [[i * n + j for j in range(n)] for i in range(n)]
        cols = [[i * n + j for i in range(n)] for j in range(n)]
        boxes = [
            [(br * r + i) * n + bc * c + j for i in range(r) for j in range(c)]
            for br in range(n // r) for bc in range(n // c)
        ]
        self.units = rows + cols + boxes
        self._cell_units = [[u for u, unit in enumerate(self.units) if cell in unit] for cell in range(n * n)]
        self._peers = [
            tuple(sorted({p for u in self._cell_units[cell] for p in self.units[u]} - {cell}))
            for cell in range(n * n)
        ]
        self._row_of = [cell // n for cell in range(n * n)]
        self._col_of = [cell % n for cell in range(n * n)]
        self._box_of = [(cell // n) // r * (n // c) + (cell % n) // c for cell in range(n * n)]

    @property
    def kwargs(self):
        return {"size": self.size, "box": self.box, "min_givens": self.min_givens, "max_givens": self.max_givens}

    # -- solver -----------------------------------------------------------------------------------------
    def _propagate(self, cand: list[int], queue: list[int]) -> None:
        """Naked and hidden singles to a fixed point; raises _Unsolvable on a contradiction."""
        peers, units, full = self._peers, self.units, self._full
        while True:
            while queue:
                cell = queue.pop()
                m = cand[cell]
                for p in peers[cell]:
                    pm = cand[p]
                    if pm & m:
                        pm &= ~m
                        if not pm:
                            raise _Unsolvable
                        cand[p] = pm
                        if not pm & (pm - 1):
                            queue.append(p)
            for unit in units:
                once = twice = 0
                for cell in unit:
                    m = cand[cell]
                    twice |= once & m
                    once |= m
                if once != full:
                    raise _Unsolvable
                hidden = once & ~twice
                if hidden:
                    for cell in unit:
                        m = cand[cell] & hidden
                        if m and cand[cell] != m:
                            if m & (m - 1):
                                raise _Unsolvable
                            cand[cell] = m
                            queue.append(cell)
            if not queue:
                return

    def _search(self, cand: list[int], queue: list[int], limit: int, out: list, rng) -> None:
        try:
            self._propagate(cand, queue)
        except _Unsolvable:
            return
        best, best_count = -1, 1 << 30
        for cell, m in enumerate(cand):
            if m & (m - 1):
                k = m.bit_count()
                if k < best_count:
                    best, best_count = cell, k
                    if k == 2:
                        break
        if best < 0:
            out.append(cand)
            return
        m = cand[best]
        bits = []
        while m:
            b = m & -m
            bits.append(b)
            m ^= b
        if rng is not None:
            rng.shuffle(bits)
        for b in bits:
            child = cand.copy()
            child[best] = b
            self._search(child, [best], limit, out, rng)
            if len(out) >= limit:
                return

    def _initial(self, puzzle) -> tuple[list[int], list[int]]:
        cand = [self._full] * self.seq_len
        queue = []
        for cell, v in enumerate(puzzle):
            if v:
                cand[cell] = 1 << (int(v) - 1)
                queue.append(cell)
        return cand, queue

    def _solutions(self, puzzle, limit: int, rng=None) -> list[list[int]]:
        cand, queue = self._initial(puzzle)
        out: list = []
        self._search(cand, queue, limit, out, rng)
        return [[m.bit_length() for m in sol] for sol in out]

    def count_solutions(self, puzzle, limit: int = 2) -> int:
        """Number of solutions of one puzzle, counted up to ``limit``."""
        puzzle = self._as_puzzle(puzzle)
        return len(self._solutions(puzzle, limit))

    def solve(self, puzzle) -> np.ndarray:
        """Solve one puzzle (``[seq_len]`` tokens or a text line); ``ValueError`` when it has no solution."""
        puzzle = self._as_puzzle(puzzle)
        sols = self._solutions(puzzle, 1)
        if not sols:
            raise ValueError(f"sudoku: puzzle has no solution: {self.to_line(puzzle)}")
        return np.asarray(sols[0], dtype=np.int64)

    def derive_labels(self, inputs: np.ndarray) -> np.ndarray:
        return np.stack([self.solve(x) for x in np.asarray(inputs).reshape(-1, self.seq_len)])

    def _as_puzzle(self, puzzle) -> np.ndarray:
        if isinstance(puzzle, str):
            return self.parse(puzzle)
        puzzle = np.asarray(puzzle, dtype=np.int64)
        self.check_tokens(puzzle, "puzzle")
        if puzzle.ndim != 1:
            raise ValueError(f"sudoku: expected one puzzle of shape [{self.seq_len}], got {puzzle.shape}")
        return puzzle

    # -- generator --------------------------------------------------------------------------------------
    def _random_grid(self, rng: np.random.Generator) -> list[int]:
        sols = self._solutions([0] * self.seq_len, 1, rng)
        return sols[0]

    def _carve(self, solution: list[int], target: int, rng: np.random.Generator) -> list[int]:
        """Blank cells in random order while the solution stays unique, down to ``target`` givens."""
        n = self.size
        puzzle = list(solution)
        row_used = [self._full] * n
        col_used = [self._full] * n
        box_used = [self._full] * n
        givens = self.seq_len
        for cell in rng.permutation(self.seq_len).tolist():
            if givens <= target:
                break
            bit = 1 << (solution[cell] - 1)
            r, c, b = self._row_of[cell], self._col_of[cell], self._box_of[cell]
            # Blanking a cell whose other digits all appear among its givens' peers cannot break
            # uniqueness: it is a naked single. Only the other cells need a search.
            others = self._full & ~bit
            seen = (row_used[r] | col_used[c] | box_used[b]) & others
            puzzle[cell] = 0
            if seen != others:
                cand, queue = self._initial(puzzle)
                cand[cell] &= ~bit
                out: list = []
                self._search(cand, queue, 1, out, None)
                if out:  # another solution exists once this cell is blank
                    puzzle[cell] = solution[cell]
                    continue
            givens -= 1
            row_used[r] &= ~bit
            col_used[c] &= ~bit
            box_used[b] &= ~bit
        return puzzle

    def generate(self, n: int, seed) -> PuzzleBatch:
        """``n`` uniquely solvable puzzles with ``min_givens..max_givens`` givens, reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        inputs = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.zeros((n, self.seq_len), dtype=np.int64)
        for i in range(n):
            for _attempt in range(1000):
                solution = self._random_grid(rng)
                target = int(rng.integers(self.min_givens, self.max_givens + 1))
                puzzle = self._carve(solution, target, rng)
                if sum(1 for v in puzzle if v) <= self.max_givens:
                    break
            else:
                raise ValueError(
                    f"sudoku: could not reach {self.max_givens} givens with a unique solution in 1000 tries; "
                    "raise max_givens"
                )
            inputs[i], labels[i] = puzzle, solution
        return PuzzleBatch(self.name, inputs, labels, {"size": self.size, "box": self.box})

    # -- rules ------------------------------------------------------------------------------------------
    def _rule_tensors(self, device, batch_shape) -> tuple[torch.Tensor, ...]:
        """What :meth:`rule_counts` needs besides the answers, made once per (device, batch shape): at one puzzle a
        step, making a tensor costs as much as using it. (each unit's cells, the ones added up at the digits
        found, 1 for a digit's column and 0 for the blanks' column of each unit, the number of rules)"""
        cache, key = self._rule_cache, (device, batch_shape)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= 16:  # a few batch shapes are in use at a time
                cache.clear()
            units, size = len(self.units), self.size
            digit_columns = torch.ones(units, size + 1, device=device)
            digit_columns[:, 0] = 0
            hit = cache[key] = (
                torch.tensor(self.units, dtype=torch.int64, device=device).reshape(-1).expand(*batch_shape, -1),
                torch.ones(*batch_shape, units, size, device=device),
                digit_columns.reshape(-1),
                torch.tensor(float(units * size), device=device))
        return hit

    def rule_counts(self, inputs: torch.Tensor, answers: torch.Tensor, context=None):
        """Rule credit of an answer, of ``size`` per row, column and box: one for each digit present exactly once
        in the unit, minus one for each digit present more than once (never below 0 in all). Blanks count as
        absent. All the credit is earned iff every unit holds every digit once (the answer solves the grid);
        writing one digit on every blank loses the rules of the givens it repeats, and the units where it lands
        twice, instead of gaining the units that lacked it."""
        lead = answers.shape[:-1]
        cells, marks, digit_columns, n_rules = self._rule_tensors(answers.device, lead)
        # gather, scatter from a tensor and a 0/1-weighted product: each several times faster at large batches
        # than advanced indexing, scattering a scalar and a slice-and-sum (and exact: sums of a few hundred ones)
        vals = torch.gather(answers, -1, cells).view(marks.shape)
        count = torch.zeros((*lead, len(self.units), self.size + 1), device=answers.device)
        count.scatter_add_(-1, vals, marks)
        credit = (count == 1).to(torch.float32) - (count > 1).to(torch.float32)
        return (credit.flatten(-2) @ digit_columns).clamp(min=0), n_rules

    def deductions(self, grids: torch.Tensor) -> torch.Tensor:
        """Which blank cells one round of naked and hidden singles fills in from each grid (``[..., seq_len]``
        tokens, 0 = blank, assumed consistent with a solution): a bool tensor of the same shape, computed batched
        on the grids' device. A naked single is a blank with one candidate left by its peers; a hidden single is
        the one place in a row, column or box that a digit can still go."""
        units, peers = self._deduction_tensors(grids.device)
        blank = grids == 0
        placed = torch.nn.functional.one_hot(grids, self.size + 1)[..., 1:].float()  # [..., L, size]
        seen = (peers @ placed) > 0  # digits already in a cell's row, column or box
        candidates = torch.where(blank[..., None], ~seen, placed > 0)
        naked = blank & (candidates.sum(-1) == 1)
        places = units @ candidates.float()  # [..., U, size]: where each digit can go in each unit
        only = ((units.T @ (places == 1).float()) * candidates).sum(-1) > 0  # the one place of a digit in a unit
        return naked | (blank & only)

    def _deduction_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`deductions` needs, made once per device (in the cache :meth:`_rule_tensors` keeps): each
        unit's cells as a 0/1 ``[U, L]`` matrix, and which cells share a unit (each cell with itself too)."""
        key = ("deductions", device)
        hit = self._rule_cache.get(key)
        if hit is None:
            units = torch.zeros(len(self.units), self.seq_len)
            for u, unit in enumerate(self.units):
                units[u, unit] = 1.0
            hit = self._rule_cache[key] = (units.to(device), ((units.T @ units) > 0).float().to(device))
        return hit

    # -- text -------------------------------------------------------------------------------------------
    def parse(self, text: str) -> np.ndarray:
        """Read the line form (size² characters) or the boxed grid :meth:`format` writes."""
        if not isinstance(text, str):
            raise ValueError(f"sudoku: expected a string, got {type(text).__name__}")
        chars = [ch for ch in text if ch not in " \t\r\n|+-"]
        if len(chars) != self.seq_len:
            raise ValueError(
                f"sudoku {self.size}x{self.size}: expected {self.seq_len} cells, got {len(chars)} "
                f"in {text.strip()[:100]!r}"
            )
        out = np.zeros(self.seq_len, dtype=np.int64)
        for pos, ch in enumerate(chars):
            if ch in ".0":
                continue
            v = _DIGITS.find(ch.upper()) + 1
            if not 1 <= v <= self.size:
                raise ValueError(
                    f"sudoku {self.size}x{self.size}: bad character {ch!r} at position {pos} "
                    f"(row {pos // self.size + 1}, column {pos % self.size + 1}); expected 1..{_DIGITS[self.size - 1]}"
                    " or '.'/'0' for a blank"
                )
            out[pos] = v
        self._check_givens(out)
        return out

    def _check_givens(self, puzzle: np.ndarray) -> None:
        for u, unit in enumerate(self.units):
            seen: dict[int, int] = {}
            for cell in unit:
                v = int(puzzle[cell])
                if v:
                    if v in seen:
                        kind = ("row", "column", "box")[u // self.size]
                        a, b = seen[v], cell
                        raise ValueError(
                            f"sudoku: digit {v} appears twice in {kind} {u % self.size + 1} at positions {a} "
                            f"(row {a // self.size + 1}, col {a % self.size + 1}) and {b} "
                            f"(row {b // self.size + 1}, col {b % self.size + 1})"
                        )
                    seen[v] = cell

    def to_line(self, tokens) -> str:
        return "".join("." if v == 0 else _DIGITS[v - 1] for v in np.asarray(tokens).tolist())

    def format(self, tokens) -> str:
        """A boxed grid, e.g. for 4x4 ``1 . | 3 4`` rows with ``------+----`` between bands."""
        t = np.asarray(tokens).reshape(self.size, self.size)
        r, c = self.box
        lines = []
        for i in range(self.size):
            cells = ["." if v == 0 else _DIGITS[v - 1] for v in t[i].tolist()]
            row = " | ".join(" ".join(cells[k:k + c]) for k in range(0, self.size, c))
            if i and i % r == 0:
                lines.append("".join("+" if ch == "|" else "-" for ch in row))
            lines.append(row)
        return "\n".join(lines)

    # -- augmentation -----------------------------------------------------------------------------------
    def random_symmetry(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A validity-preserving symmetry as (cell permutation [L], digit map [size+1], with 0 -> 0)."""
        n, (r, c) = self.size, self.box
        # rows come in n//r bands of r rows; columns in n//c stacks of c columns
        bands = rng.permutation(n // r)
        rows = np.concatenate([b * r + rng.permutation(r) for b in bands])
        stacks = rng.permutation(n // c)
        cols = np.concatenate([s * c + rng.permutation(c) for s in stacks])
        grid = (rows[:, None] * n + cols[None, :])
        if r == c and rng.random() < 0.5:  # transposing swaps the box shape, so only square boxes allow it
            grid = grid.T
        digits = np.concatenate([[0], rng.permutation(n) + 1])
        return grid.reshape(-1), digits

    def augment(self, inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Digit relabelling, rows within bands, bands, columns within stacks, stacks, transpose (square
        boxes only); an independent symmetry for each puzzle."""
        inputs = np.asarray(inputs, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        single = inputs.ndim == 1
        inputs, labels = np.atleast_2d(inputs), np.atleast_2d(labels)
        out_x, out_y = np.empty_like(inputs), np.empty_like(labels)
        for i in range(inputs.shape[0]):
            perm, digits = self.random_symmetry(rng)
            out_x[i] = digits[inputs[i, perm]]
            out_y[i] = digits[labels[i, perm]]
        return (out_x[0], out_y[0]) if single else (out_x, out_y)

    # -- files ------------------------------------------------------------------------------------------
    def read_csv(self, path, strict: bool = True, unique: bool = True) -> PuzzleBatch:
        """Read the public Sudoku-Extreme layout: ``source,question,answer,rating`` with a header row (UTF-8,
        with or without a byte-order mark).

        ``strict=True`` raises ``ValueError`` naming every row it could not read; ``strict=False`` returns the
        good rows and lists the others in ``meta["skipped"]`` as ``(line, reason)``. ``unique=True`` refuses a
        question with several solutions (its answer would be one label among equals); the check runs the solver
        on every row (about 0.1 ms for a generated 9x9, up to ~15 ms for the hardest).
        """
        required = ("source", "question", "answer", "rating")
        inputs, labels, sources, ratings, skipped = [], [], [], [], []
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = [k for k in required if k not in (reader.fieldnames or [])]
                if missing:
                    raise ValueError(f"{path}: CSV is missing column(s) {missing}; header is {reader.fieldnames}")
                for row in reader:
                    line = reader.line_num
                    try:
                        q = self.parse(row["question"] or "")
                        a = self.parse(row["answer"] or "")
                        if (a == 0).any():
                            raise ValueError("answer has blanks")
                        if not self.verify(q, a)[0]:
                            raise ValueError("answer does not solve the question")
                        if unique and self.count_solutions(q, 2) > 1:
                            raise ValueError("the question has several solutions")
                        rating = float(row["rating"]) if row["rating"] not in (None, "") else float("nan")
                    except ValueError as e:
                        skipped.append((line, str(e)))
                        continue
                    inputs.append(q)
                    labels.append(a)
                    sources.append(row["source"] or "")
                    ratings.append(rating)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except csv.Error as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from None
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
        if skipped and strict:
            shown = "; ".join(f"line {ln}: {msg}" for ln, msg in skipped[:10])
            more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
            raise ValueError(f"{path}: {len(skipped)} row(s) could not be read: {shown}{more}")
        empty = np.zeros((0, self.seq_len), dtype=np.int64)
        return PuzzleBatch(
            self.name,
            np.stack(inputs) if inputs else empty,
            np.stack(labels) if labels else empty,
            {"source": np.asarray(sources, dtype=str), "rating": np.asarray(ratings, dtype=np.float64),
             "skipped": skipped, "size": self.size, "box": self.box},
        )

    def read_puzzles(self, path, solve: bool = True, unique: bool = True) -> PuzzleBatch:
        """A text file of puzzles, one a line; labels come from the solver (``ValueError`` on unsolvable, and with
        ``unique=True`` on a puzzle with several solutions, whose label would be an arbitrary pick)."""
        inputs = self.read_lines(path)
        labels = np.zeros_like(inputs)
        if solve:
            for i, p in enumerate(inputs):
                try:
                    if unique and self.count_solutions(p, 2) > 1:
                        raise ValueError("several solutions (its label would be an arbitrary pick; unique=False "
                                         "takes one)")
                    labels[i] = self.solve(p)
                except ValueError as e:
                    raise ValueError(f"{path}: puzzle {i + 1}: {e}") from None
        return PuzzleBatch(self.name, inputs, labels, {"size": self.size, "box": self.box})
