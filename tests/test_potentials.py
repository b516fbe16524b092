"""The verifier reward's potential cannot be gamed (property tests over generated puzzles).

``reward_mode="verifier"`` pays the change of the label-free potential S (``task.rule_score``). For every task with
a rule verifier, on puzzles the task generates at the settings we train on:
- a solution scores the maximum, 1, and no answer scores more;
- the puzzle as given scores no less than any *uniform fill* (every undecided cell written with one token: all
  "no queen", all one digit, all wall, all path) that does not solve it;
- along the DIS diffusion path from the puzzle to a solution the potential never decreases.
``benchmarks/potential_gaming.py`` measures the same over many puzzles.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.trainers.targets import diffusion_targets
from recursion_env.tasks import make_task

#: the settings the bench, the presets, the examples and the depth check train on (and the tasks' defaults)
SETTINGS = [
    ("sudoku", {"size": 4}),
    ("sudoku", {"size": 6}),
    ("sudoku", {"size": 6, "min_givens": 8, "max_givens": 10}),
    ("sudoku", {"size": 6, "min_givens": 10, "max_givens": 12}),
    ("sudoku", {"size": 9, "min_givens": 28, "max_givens": 34}),
    ("nqueens", {"board": 8, "min_given": 1, "max_given": 7}),
    ("nqueens", {"board": 6}),
    ("nqueens", {"board": 8, "min_given": 0, "max_given": 8}),  # every count of givens, all of them too
    ("maze", {"size": 9}),
    ("maze", {"size": 9, "loop_fraction": 0.3}),
    ("maze", {"size": 7, "loop_fraction": 1.0}),
]
TASKS = {i: make_task(name, **kw) for i, (name, kw) in enumerate(SETTINGS)}
EXAMPLES = settings(max_examples=15, deadline=None)


def _batch(setting: int, seed: int, n: int = 6):
    task = TASKS[setting]
    b = task.generate(n, seed)
    x, y = torch.as_tensor(b.inputs), torch.as_tensor(b.labels)
    return task, x, y, task.rule_context(x)


@EXAMPLES
@given(setting=st.sampled_from(sorted(TASKS)), seed=st.integers(0, 2**31 - 1))
def test_a_solution_scores_the_maximum(setting, seed):
    task, x, y, ctx = _batch(setting, seed)
    assert torch.equal(task.rule_score(x, y, ctx), torch.ones(len(x)))
    g = torch.Generator().manual_seed(seed)
    for _ in range(4):  # random answers on the undecided cells (and the solution's cells, half the time)
        noise = torch.randint(0, task.vocab_size, x.shape, generator=g)
        keep = torch.rand(x.shape, generator=g) < 0.5
        answer = torch.where(x != 0, x, torch.where(keep, y, noise))
        score = task.rule_score(x, answer, ctx)
        assert (score <= 1).all() and (score >= 0).all()
        assert torch.equal(score == 1, torch.as_tensor(task.verify(x, answer)))  # the maximum means solved


@EXAMPLES
@given(setting=st.sampled_from(sorted(TASKS)), seed=st.integers(0, 2**31 - 1))
def test_no_uniform_fill_scores_above_the_puzzle_as_given(setting, seed):
    task, x, _, ctx = _batch(setting, seed)
    as_given = task.rule_score(x, x, ctx)
    for token in range(1, task.vocab_size):
        fill = torch.where(x == 0, torch.full_like(x, token), x)
        solves = torch.as_tensor(task.verify(x, fill))
        score = task.rule_score(x, fill, ctx)
        assert (solves | (score <= as_given)).all(), (task, task.to_line([token]), (score - as_given).max())


@EXAMPLES
@given(setting=st.sampled_from(sorted(TASKS)), seed=st.integers(0, 2**31 - 1))
def test_the_potential_never_decreases_along_the_diffusion_path(setting, seed):
    task, x, y, ctx = _batch(setting, seed)
    path = diffusion_targets(x, y, 16, torch.Generator().manual_seed(seed))
    scores = torch.stack([task.rule_score(x, x, ctx)] + [task.rule_score(x, path[:, s], ctx) for s in range(16)], -1)
    assert (scores.diff(dim=-1) >= 0).all()
    assert torch.equal(scores[:, -1], torch.ones(len(x)))


def test_nqueens_no_queen_everywhere_is_worth_what_the_puzzle_is():
    """The case that stalled learned halting: with "no queen" on every undecided square the old potential rated a
    board at 0.924 of a solution (the puzzle as given: 0.378). Now one queen given in the corner is worth its row,
    its column and the 30 diagonals (32 of 47 rules), "no queen" everywhere exactly as much, "queen" everywhere
    less, and a solution all 47."""
    task = make_task("nqueens", board=8)
    x = torch.zeros(1, 64, dtype=torch.int64)
    x[0, 0] = 2  # a queen in the corner
    as_given = float(task.rule_score(x, x))
    assert as_given == pytest.approx(32 / 47)
    assert float(task.rule_score(x, torch.where(x == 0, 1, x))) == pytest.approx(as_given)
    assert float(task.rule_score(x, torch.where(x == 0, 2, x))) < as_given
