"""Puzzle tasks: generation, uniqueness, verification, text round trips, augmentation, files, bad input."""

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recursion_env.tasks import build_dataset, load_dataset, load_puzzles, make_task, save_dataset

# Famous hard 9x9 puzzles, each with a unique solution.
HARD_9X9 = {
    "inkala_2012": "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4..",
    "ai_escargot": "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
    "easter_monster": "1.......2.9.4...5...6...7...5.9.3.......7.......85..4.7.....6...3...9.8...2.....1",
    "norvig_top95_1": "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......",
    "hardest_list_1": "12.3....435....1....4........54..2..6...7.........8.9...31..5.......9.7.....6...8",
    "hardest_list_2": ".2.4.37.........32........4.4.2...7.8...5.........1...5.....9...3.9....7..1..86..",
}

ALL_TASKS = [
    ("sudoku", {"size": 4}),
    ("sudoku", {"size": 6}),
    ("sudoku", {"size": 9}),
    ("sudoku", {"size": 6, "box": (3, 2)}),
    ("maze", {"size": 9}),
    ("maze", {"size": 11, "loop_fraction": 0.2}),
    ("nqueens", {"board": 8}),
]


def _bfs_length(grid, n):
    s = divmod(int(np.argmax(grid == 2)), n)
    g = divmod(int(np.argmax(grid == 3)), n)
    dist = {s: 0}
    q = deque([s])
    while q:
        i, j = q.popleft()
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < n and 0 <= b < n and grid[a * n + b] != 1 and (a, b) not in dist:
                dist[(a, b)] = dist[(i, j)] + 1
                q.append((a, b))
    return dist[g]


# -- Sudoku -------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(size=st.sampled_from([4, 6, 9]), seed=st.integers(0, 2**31 - 1))
def test_generated_sudoku_unique_valid_and_keeps_givens(size, seed):
    task = make_task("sudoku", size=size)
    batch = task.generate(3, seed)
    assert batch.inputs.shape == (3, size * size) and batch.inputs.dtype == np.int64
    assert task.verify(batch.inputs, batch.labels).all()
    for x, y in zip(batch.inputs, batch.labels):
        assert task.count_solutions(x) == 1
        givens = x != 0
        assert np.array_equal(x[givens], y[givens])
        assert task.min_givens <= givens.sum() <= task.max_givens


def test_generation_is_reproducible_and_seed_dependent():
    task = make_task("sudoku", size=6)
    a, b, c = task.generate(5, 7), task.generate(5, 7), task.generate(5, 8)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.inputs, c.inputs)


def test_givens_range_is_respected():
    task = make_task("sudoku", size=9, min_givens=24, max_givens=26)
    batch = task.generate(3, 0)
    assert ((batch.inputs != 0).sum(1) <= 26).all() and ((batch.inputs != 0).sum(1) >= 24).all()


@settings(max_examples=10, deadline=None)
@given(size=st.sampled_from([4, 6, 9]), seed=st.integers(0, 2**31 - 1))
def test_sudoku_augmentations_keep_puzzles_valid_and_unique(size, seed):
    task = make_task("sudoku", size=size)
    batch = task.generate(2, seed)
    x, y = task.augment(batch.inputs, batch.labels, np.random.default_rng(seed))
    assert task.verify(x, y).all()
    for xi, yi in zip(x, y):
        assert task.count_solutions(xi) == 1
        assert np.array_equal(task.solve(xi), yi)  # the label maps to the new puzzle's solution
    assert ((x != 0).sum(1) == (batch.inputs != 0).sum(1)).all()


def test_sudoku_augmentation_uses_transpose_only_for_square_boxes():
    task = make_task("sudoku", size=6)
    rng = np.random.default_rng(0)
    for _ in range(50):
        perm, digits = task.random_symmetry(rng)
        assert sorted(perm.tolist()) == list(range(36)) and digits[0] == 0
    sq = make_task("sudoku", size=4)
    transposed = 0
    for _ in range(200):
        perm, _ = sq.random_symmetry(rng)
        grid = perm.reshape(4, 4)
        transposed += len({int(v) // 4 for v in grid[0]}) > 1  # a row maps to cells of different rows
    assert transposed > 0


@pytest.mark.parametrize("name", sorted(HARD_9X9))
def test_solver_solves_famous_hard_puzzles(name):
    task = make_task("sudoku", size=9)
    puzzle = task.parse(HARD_9X9[name])
    solution = task.solve(puzzle)
    assert task.verify(puzzle, solution)[0]
    assert task.count_solutions(puzzle) == 1


def test_count_solutions_detects_multiple_and_none():
    task = make_task("sudoku", size=4)
    assert task.count_solutions(np.zeros(16, dtype=np.int64)) == 2
    assert task.count_solutions(np.zeros(16, dtype=np.int64), limit=10) == 10
    # row 1 needs a 4 at its last cell but column 4 already has one: no solution
    unsolvable = task.parse("123." "...4" "...." "....")
    assert task.count_solutions(unsolvable) == 0
    with pytest.raises(ValueError, match="no solution"):
        task.solve(unsolvable)


def test_verify_rejects_wrong_answers_and_changed_givens():
    task = make_task("sudoku", size=4)
    b = task.generate(1, 0)
    x, y = b.inputs[0], b.labels[0]
    bad = y.copy()
    blank = int(np.flatnonzero(x == 0)[0])
    bad[blank] = bad[blank] % 4 + 1
    assert not task.verify(x, bad)[0]
    # a valid grid that changes a given is rejected
    other = task.generate(1, 99).labels[0]
    if not np.array_equal(other[x != 0], x[x != 0]):
        assert not task.verify(x, other)[0]
    with_blank = y.copy()
    with_blank[blank] = 0
    assert not task.verify(x, with_blank)[0]


def test_rule_score_is_one_exactly_for_solutions():
    task = make_task("sudoku", size=6)
    b = task.generate(4, 3)
    score = task.rule_score(torch.tensor(b.inputs), torch.tensor(b.labels))
    assert torch.allclose(score, torch.ones(4))
    start = task.rule_score(torch.tensor(b.inputs), torch.tensor(b.inputs))
    assert (start < 1).all() and (start > 0).all()


@pytest.mark.parametrize("name,kw", ALL_TASKS)
def test_rule_counts_reach_their_total_exactly_for_solutions(name, kw):
    task = make_task(name, **kw)
    b = task.generate(3, 5)
    x, y = torch.tensor(b.inputs), torch.tensor(b.labels)
    satisfied, total = task.rule_counts(x, y)
    assert (satisfied == total).all()
    satisfied, total = task.rule_counts(x, x)  # the givens alone leave rules unmet
    assert (satisfied < total).all()
    assert torch.equal(task.rule_score(x, x), (satisfied / torch.as_tensor(total)).to(torch.float32))


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([4, 6, 9]), n=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_sudoku_rule_counts_match_counting_by_hand(size, n, seed):
    """The batched count (gather, scatter, weighted product) equals the credit counted in Python (per unit, +1 for
    each digit present once, -1 for each digit present more than once; never below 0 in all), for any tokens,
    blanks included, for batched and unbatched answers and batch sizes in any order."""
    task = make_task("sudoku", size=size)
    answers = np.random.default_rng(seed).integers(0, size + 1, size=(n, size * size))

    def credit(a):
        counts = [[sum(int(a[c]) == d for c in unit) for d in range(1, size + 1)] for unit in task.units]
        return max(0, sum((k == 1) - (k > 1) for unit in counts for k in unit))

    expected = [credit(a) for a in answers]
    satisfied, total = task.rule_counts(None, torch.tensor(answers))
    assert satisfied.tolist() == expected and float(total) == len(task.units) * size
    assert [float(task.rule_counts(None, torch.tensor(a))[0]) for a in answers] == expected


# -- text ---------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(case=st.sampled_from(ALL_TASKS), seed=st.integers(0, 2**31 - 1))
def test_parse_format_round_trip(case, seed):
    name, kw = case
    task = make_task(name, **kw)
    b = task.generate(1, seed)
    for tokens in (b.inputs[0], b.labels[0]):
        assert np.array_equal(task.parse(task.format(tokens)), tokens)
        assert np.array_equal(task.parse(task.to_line(tokens)), tokens)
        assert len(task.to_line(tokens)) == task.seq_len


def test_sudoku_line_form_accepts_dots_and_zeros():
    task = make_task("sudoku", size=9)
    line = HARD_9X9["inkala_2012"]
    assert np.array_equal(task.parse(line), task.parse(line.replace(".", "0")))
    assert task.to_line(task.parse(line)) == line


@pytest.mark.parametrize(
    "text, message",
    [
        ("1234", "expected 81 cells, got 4"),
        ("x" + "." * 80, "bad character 'x' at position 0"),
        ("11" + "." * 79, "digit 1 appears twice in row 1"),
        ("1" + "." * 8 + "1" + "." * 71, "digit 1 appears twice in column 1"),
    ],
)
def test_sudoku_parse_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        make_task("sudoku", size=9).parse(text)


def test_maze_and_nqueens_parse_errors():
    maze = make_task("maze", size=3)
    with pytest.raises(ValueError, match="exactly one start"):
        maze.parse("..." "..." "..G")
    with pytest.raises(ValueError, match="bad character '\\?' at position 4"):
        maze.parse("S..." "?" "...G")
    nq = make_task("nqueens", board=4)
    with pytest.raises(ValueError, match="attack each other"):
        nq.parse("Q..." ".Q.." "...." "....")
    with pytest.raises(ValueError, match="expected 16 cells"):
        nq.parse("Q..")


def test_parse_many_names_the_line():
    task = make_task("sudoku", size=4)
    with pytest.raises(ValueError, match="line 3: .*bad character"):
        task.parse_many(["1234341221434321", "", "12z4341221434321"])


# -- Maze and N-Queens ----------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(size=st.integers(5, 15), loops=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**31 - 1))
def test_maze_labels_are_shortest_paths(size, loops, seed):
    task = make_task("maze", size=size, loop_fraction=loops)
    b = task.generate(3, seed)
    assert task.verify(b.inputs, b.labels).all()
    for x, y in zip(b.inputs, b.labels):
        assert (y == 4).sum() == _bfs_length(x, size) - 1  # independent BFS
        assert np.array_equal(y[y != 4], x[y != 4]) and (x[y == 4] == 0).all()
    lengths = task.shortest_length(torch.tensor(b.inputs)).numpy()
    assert lengths.tolist() == [_bfs_length(x, size) for x in b.inputs]


def test_maze_verify_accepts_any_shortest_path_and_rejects_longer_ones():
    task = make_task("maze", size=3)
    maze = task.parse("S.." "..." "..G")
    a = task.parse("Soo" "..o" "..G")
    b = task.parse("S.." "o.." "ooG")
    longer = task.parse("Soo" "ooo" "ooG")
    broken = task.parse("So." "..o" "..G")
    assert task.verify(np.stack([maze] * 4), np.stack([a, b, longer, broken])).tolist() == [
        True, True, False, False]


@settings(max_examples=15, deadline=None)
@given(board=st.integers(4, 10), seed=st.integers(0, 2**31 - 1))
def test_nqueens_labels_non_attacking_and_keep_given_queens(board, seed):
    task = make_task("nqueens", board=board, min_given=1, max_given=board - 1)
    b = task.generate(3, seed)
    assert task.verify(b.inputs, b.labels).all()
    for x, y in zip(b.inputs, b.labels):
        q = np.argwhere(y.reshape(board, board) == 2)
        assert len(q) == board
        assert len({r for r, _ in q}) == board and len({c for _, c in q}) == board
        assert len({r - c for r, c in q}) == board and len({r + c for r, c in q}) == board
        assert (y[x == 2] == 2).all()
        assert 1 <= (x == 2).sum() <= board - 1


def test_nqueens_verify_accepts_another_completion():
    task = make_task("nqueens", board=4)
    empty = np.zeros(16, dtype=np.int64)
    sol_a = task.parse("xQxx" "xxxQ" "Qxxx" "xxQx")
    sol_b = task.parse("xxQx" "Qxxx" "xxxQ" "xQxx")
    attacking = np.where(np.eye(4, dtype=bool).reshape(-1), 2, 1)  # parse would refuse it
    assert task.verify(np.stack([empty] * 3), np.stack([sol_a, sol_b, attacking])).tolist() == [True, True, False]


@pytest.mark.parametrize("case", ALL_TASKS[4:], ids=lambda c: f"{c[0]}{c[1]}")
def test_square_augmentations_keep_labels_valid(case):
    name, kw = case
    task = make_task(name, **kw)
    b = task.generate(5, 1)
    x, y = task.augment(b.inputs, b.labels, np.random.default_rng(0))
    assert task.verify(x, y).all()


# -- files ----------------------------------------------------------------------------------------------


def test_dataset_round_trip(tmp_path):
    task = make_task("sudoku", size=6)
    batch = build_dataset(task, 30, seed=5, chunk=8)
    path = save_dataset(tmp_path / "d.npz", task, batch, seed=5)
    task2, batch2, header = load_dataset(path)
    assert header["task"] == "sudoku" and header["seed"] == 5 and header["n"] == 30 and header["version"] == 1
    assert task2.kwargs == task.kwargs
    assert np.array_equal(batch.inputs, batch2.inputs) and np.array_equal(batch.labels, batch2.labels)
    assert np.array_equal(build_dataset(task, 30, seed=5, chunk=8).inputs, batch.inputs)
    # chunks generated by several processes at once: the same dataset
    parallel = build_dataset(task, 30, seed=5, chunk=8, workers=2)
    assert np.array_equal(parallel.inputs, batch.inputs) and np.array_equal(parallel.labels, batch.labels)
    assert not list(tmp_path.glob("*.tmp"))


def test_load_dataset_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_dataset(bad)
    np.savez(tmp_path / "nohead.npz", inputs=np.zeros((1, 16)))
    with pytest.raises(ValueError, match="missing 'header'"):
        load_dataset(tmp_path / "nohead.npz")


def test_sudoku_extreme_csv_reader(tmp_path):
    task = make_task("sudoku", size=9)
    q = HARD_9X9["inkala_2012"]
    a = task.to_line(task.solve(task.parse(q)))
    good = tmp_path / "ok.csv"
    good.write_text(f"source,question,answer,rating\nhard,{q},{a},99\nhard,{q},{a},\n")
    batch = task.read_csv(good)
    assert len(batch) == 2 and batch.meta["rating"][0] == 99 and np.isnan(batch.meta["rating"][1])
    assert task.verify(batch.inputs, batch.labels).all()

    broken = tmp_path / "broken.csv"
    wrong = ("2" if a[0] != "2" else "3") + a[1:]
    broken.write_text(f"source,question,answer,rating\nx,{q},{a},1\nx,{q[:-1]},{a},1\nx,{q},{wrong},1\n")
    with pytest.raises(ValueError, match=r"2 row\(s\) could not be read: line 3: .*81 cells.*line 4: "):
        task.read_csv(broken)
    partial = task.read_csv(broken, strict=False)
    assert len(partial) == 1 and [ln for ln, _ in partial.meta["skipped"]] == [3, 4]

    missing = tmp_path / "missing.csv"
    missing.write_text(f"question,answer\n{q},{a}\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['source', 'rating'\]"):
        task.read_csv(missing)


def test_text_file_of_puzzles(tmp_path):
    task = make_task("sudoku", size=9)
    path = tmp_path / "p.txt"
    path.write_text("# hard ones\n" + "\n".join(list(HARD_9X9.values())[:3]) + "\n")
    task2, batch = load_puzzles(path, task)
    assert len(batch) == 3 and task.verify(batch.inputs, batch.labels).all()
    path.write_text(HARD_9X9["inkala_2012"] + "\n" + "8" * 81 + "\n")
    with pytest.raises(ValueError, match="line 2: .*digit 8 appears twice"):
        load_puzzles(path, task)


def test_make_task_rejects_unknown_names_and_bad_options():
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        make_task("chess")
    with pytest.raises(ValueError, match="does not tile"):
        make_task("sudoku", size=6, box=(2, 2))
    with pytest.raises(ValueError, match="min_givens"):
        make_task("sudoku", size=4, min_givens=10, max_givens=5)


def _singles_by_hand(task, grid) -> set[int]:
    """Naked and hidden singles of one grid, written out plainly: the reference for ``deductions``."""
    found = set()
    candidates = {}
    for cell in range(task.seq_len):
        if grid[cell] == 0:
            candidates[cell] = set(range(1, task.size + 1)) - {int(grid[p]) for p in task._peers[cell]}
            if len(candidates[cell]) == 1:
                found.add(cell)
    for unit in task.units:
        for digit in range(1, task.size + 1):
            if digit in {int(grid[c]) for c in unit}:
                continue
            places = [c for c in unit if grid[c] == 0 and digit in candidates[c]]
            if len(places) == 1:
                found.add(places[0])
    return found


@settings(max_examples=25, deadline=None)
@given(size=st.sampled_from([4, 6, 9]), seed=st.integers(0, 2**31 - 1))
def test_sudoku_deductions_are_the_naked_and_hidden_singles(size, seed):
    task = make_task("sudoku", size=size)
    batch = task.generate(4, seed)
    rng = np.random.default_rng(seed)
    grids = batch.inputs.copy()
    for g, y in zip(grids, batch.labels):  # part of the way to the solution: still consistent with it
        blank = np.flatnonzero(g == 0)
        chosen = rng.choice(blank, size=int(rng.integers(0, len(blank) + 1)), replace=False)
        g[chosen] = y[chosen]
    found = task.deductions(torch.from_numpy(grids)).numpy()
    assert found.shape == grids.shape and not (found & (grids != 0)).any()
    for g, f in zip(grids, found):
        assert set(np.flatnonzero(f).tolist()) == _singles_by_hand(task, g)


def test_each_task_declares_its_options_once_and_every_reader_takes_them_from_there():
    """``Task.options`` are constructor parameters; the command line, the bench and sweep files read them."""
    import inspect

    from agents.cli import _task_kwargs, build_parser
    from agents.experiments.sweep import TASK_KEYS
    from recursion_env.tasks import TASKS

    for name, cls in TASKS.items():
        assert cls.options and set(cls.options) <= set(inspect.signature(cls.__init__).parameters), name
        assert set(cls.options) <= set(TASK_KEYS)
    args = build_parser().parse_args(["data", "build", "--task", "maze", "--size", "7", "--loop-fraction", "0.2",
                                      "--min-givens", "3", "--n", "1", "--out", "x.npz"])
    assert _task_kwargs(args) == {"size": 7, "loop_fraction": 0.2}  # sudoku's --min-givens is not a maze option
