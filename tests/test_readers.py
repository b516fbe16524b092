"""File readers fail with one clear ValueError naming the file, whatever the bytes: damaged and hand-made .npz
datasets, CSVs and text files (fuzzed with hypothesis and with byte flips of real files)."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recursion_env import RecursionCore
from recursion_env.tasks import load_dataset, load_puzzles, make_task, save_dataset

SUDOKU4 = make_task("sudoku", size=4)


@pytest.fixture(scope="module")
def real_npz(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("d") / "s4.npz", SUDOKU4, SUDOKU4.generate(20, seed=0), seed=0)


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_damaged_npz_files_are_one_clear_error(tmp_path, real_npz):
    data = real_npz.read_bytes()
    outcomes = {"rejected": 0, "intact": 0}
    rng = np.random.default_rng(0)
    for cut in (0, 10, len(data) // 2, len(data) - 1):  # empty and truncated
        (tmp_path / "t.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="t.npz"):
            load_dataset(tmp_path / "t.npz")
    for pos in rng.choice(len(data), size=200, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        (tmp_path / "f.npz").write_bytes(flipped)
        try:
            _, batch, _ = load_dataset(tmp_path / "f.npz")
        except ValueError as e:
            assert "f.npz" in str(e)
            outcomes["rejected"] += 1
        else:  # a flip that NumPy's reader does not notice must leave a valid dataset
            assert SUDOKU4.verify(batch.inputs, batch.labels).all()
            outcomes["intact"] += 1
    assert outcomes["rejected"] > 0, outcomes


@pytest.mark.parametrize("case,match", [
    ("not_json", "header is not JSON"), ("list_header", "header must be a JSON object"),
    ("no_task", "header needs 'task'"), ("bad_kwargs", "kwargs do not fit"), ("float_tokens", "integer array"),
    ("string_tokens", "integer array"), ("wrong_label", "do not solve"), ("broken_givens", "do not solve"),
    ("no_labels", "missing 'labels'"),
])
def test_hand_made_datasets_are_refused_by_field(tmp_path, case, match):
    b = SUDOKU4.generate(4, seed=1)
    header = {"task": "sudoku", "kwargs": SUDOKU4.kwargs, "version": 1}
    x, y = b.inputs.copy(), b.labels.copy()
    arrays = {"header": np.asarray(json.dumps(header)), "inputs": x, "labels": y}
    if case == "not_json":
        arrays["header"] = np.asarray("{task: sudoku")
    elif case == "list_header":
        arrays["header"] = np.asarray("[1, 2]")
    elif case == "no_task":
        arrays["header"] = np.asarray(json.dumps({"version": 1}))
    elif case == "bad_kwargs":
        arrays["header"] = np.asarray(json.dumps({**header, "kwargs": {"colour": 3}}))
    elif case == "float_tokens":
        arrays["inputs"] = x.astype(np.float32)
    elif case == "string_tokens":
        arrays["inputs"] = x.astype(str)
    elif case == "wrong_label":
        blank = np.flatnonzero(x[0] == 0)[0]
        y[0, blank] = y[0, blank] % 4 + 1
    elif case == "broken_givens":
        x[0, :2] = 1  # two equal givens in one row
    elif case == "no_labels":
        del arrays["labels"]
    path = write_npz(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset(path)


def test_text_and_csv_readers(tmp_path):
    b = SUDOKU4.generate(3, seed=2)
    lines = [SUDOKU4.to_line(x) for x in b.inputs]
    bom = tmp_path / "bom.txt"
    bom.write_text("\ufeff" + "\n".join(lines), encoding="utf-8")
    assert len(load_puzzles(bom, SUDOKU4)[1]) == 3  # a byte-order mark is accepted
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt: not UTF-8"):
        load_puzzles(latin, SUDOKU4)
    empty_grid = tmp_path / "empty.txt"
    empty_grid.write_text("." * 16)
    with pytest.raises(ValueError, match="several solutions"):
        load_puzzles(empty_grid, SUDOKU4)
    assert len(SUDOKU4.read_puzzles(empty_grid, unique=False)) == 1  # only when asked
    with pytest.raises(ValueError, match="is a folder"):
        load_puzzles(tmp_path, SUDOKU4)
    rows = [f"s,{SUDOKU4.to_line(x)},{SUDOKU4.to_line(y)},1" for x, y in zip(b.inputs, b.labels)]
    csv_bom = tmp_path / "ok.csv"
    csv_bom.write_text("\ufeffsource,question,answer,rating\n" + "\n".join(rows), encoding="utf-8")
    assert len(load_puzzles(csv_bom, SUDOKU4)[1]) == 3
    solution = SUDOKU4.to_line(b.labels[0])
    multi = tmp_path / "multi.csv"
    multi.write_text(f"source,question,answer,rating\ns,{'.' * 16},{solution},1\n")
    with pytest.raises(ValueError, match="several solutions"):
        load_puzzles(multi, SUDOKU4)
    huge = tmp_path / "huge.csv"
    huge.write_text("source,question,answer,rating\n" + "x" * 140_000 + ",a,b,1\n")
    with pytest.raises(ValueError, match="huge.csv: not a readable CSV"):
        load_puzzles(huge, SUDOKU4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".npz", ".csv", ".txt"]))
def test_fuzzed_files_give_a_value_error_or_puzzles(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        task, batch = load_puzzles(path, SUDOKU4)
    except ValueError:
        return
    assert batch.inputs.shape[1] == task.seq_len


@pytest.mark.parametrize("make,match", [
    (lambda: make_task("sudoku", size=4.0), "size must be an integer"),
    (lambda: make_task("maze", size="9"), "size must be an integer"),
    (lambda: make_task("nqueens", board=8, min_given=1.5), "min_given must be an integer"),
    (lambda: RecursionCore(SUDOKU4, 1, latent_dim="8"), "latent_dim must be an integer"),
    (lambda: RecursionCore(SUDOKU4, 1, nfe_cost=None), "nfe_cost must be a finite number"),
    (lambda: RecursionCore(SUDOKU4, 1, max_steps=float("inf")), "max_steps must be an integer"),
    (lambda: RecursionCore(SUDOKU4, 1, terminate_on_solve="no"), "terminate_on_solve must be True"),
])
def test_option_types_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_string_halt_is_refused():
    core = RecursionCore(SUDOKU4, 1, latent_dim=4)
    core.reset(seed=0)
    action = {"latent": core.latent[0].numpy(), "answer": core.answer[0].numpy(), "halt": "1"}
    with pytest.raises(ValueError, match="'halt' is not a numeric array"):
        core.step(action)
