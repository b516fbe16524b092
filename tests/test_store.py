"""Datasets larger than memory: ``data convert`` to memory-mapped .npy, resumable, and training streamed from it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.data import PuzzleStream
from recursion_env.tasks import load_puzzles, make_task
from recursion_env.tasks.store import PuzzleStore, convert_csv, write_csv


def relabelled(inputs, labels, copies: int, seed: int = 0):
    """``copies`` digit relabellings of each puzzle (a symmetry: the results are valid, distinct puzzles)."""
    rng = np.random.default_rng(seed)
    for _ in range(copies):
        perm = np.concatenate([[0], rng.permutation(9) + 1])
        yield perm[inputs], perm[labels]


BAD_ROWS = ["bad-length,123,456,0\n",
            "bad-rule," + "1" * 81 + "," + "1" * 81 + ",0\n",
            "too-few-columns\n"]


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """A CSV of 1,000,000 good rows (500 generated 9x9 puzzles x 2,000 relabellings) with 3 bad rows after the
    first 500,000 and 3 at the end; returns (path, the good rows' inputs in file order, their labels)."""
    task = make_task("sudoku", size=9)
    base = task.generate(500, seed=0)
    path = tmp_path_factory.mktemp("big") / "puzzles.csv"
    inputs, labels = [], []
    for i, (x, y) in enumerate(relabelled(base.inputs, base.labels, 2000)):
        write_csv(path, task, x, y, mode="w" if i == 0 else "a")
        inputs.append(x[:, :3].astype(np.uint8))  # enough of each row to recognise it
        labels.append(y[:, :3].astype(np.uint8))
        if i in (999, 1999):
            with open(path, "a") as f:
                f.writelines(BAD_ROWS)
    return path, np.concatenate(inputs), np.concatenate(labels)


def test_a_million_row_csv_converts_resumably_and_reports_its_rejected_rows(million, tmp_path):
    path, inputs, labels = million
    out = tmp_path / "store"
    blocks = []

    def stop_after_three(progress):
        blocks.append(progress["rows"])
        if len(blocks) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_csv(path, out, block_bytes=4 << 20, on_block=stop_after_three, progress=False)
    assert (out / "progress.json").exists() and not (out / "meta.json").exists()
    with pytest.raises(ValueError, match="did not finish: run `recursion-env data convert` again"):
        PuzzleStore(out)
    done = json.loads((out / "progress.json").read_text())["rows"]
    assert 0 < done == blocks[-1] < 1_000_000

    again = []
    meta = convert_csv(path, out, block_bytes=4 << 20, on_block=again.append, progress=False)  # continues
    assert again[0]["rows"] > done  # its first block went on from where the first run stopped
    assert meta["rows"] == 1_000_000 and meta["rejected"] == 6
    assert not (out / "progress.json").exists()
    store = PuzzleStore(out)
    assert isinstance(store.inputs, np.memmap) and store.inputs.dtype == np.uint8
    assert np.array_equal(store.inputs[:, :3], inputs) and np.array_equal(store.labels[:, :3], labels)
    task = store.task
    sample = np.random.default_rng(1).integers(1_000_000, size=2000)
    assert task.verify(store.inputs[sample].astype(np.int64), store.labels[sample].astype(np.int64)).all()
    rejected = (out / "rejected.tsv").read_text().splitlines()
    assert rejected[0] == "line\treason" and len(rejected) == 7  # no duplicates from the interrupted block
    first = 1 + 500_000 + 1  # the header, 500,000 good rows: the first bad row's line
    assert rejected[1:4] == [f"{first}\tquestion: expected 81 cells of . 0 1-9",
                             f"{first + 1}\tanswer breaks a row, column or box rule",
                             f"{first + 2}\t1 column(s), the header has 4"]
    with pytest.raises(ValueError, match="already holds a converted dataset"):
        convert_csv(path, out, progress=False)


def test_training_streams_from_the_converted_folder_lazily_and_ranks_take_disjoint_chunks(tmp_path):
    task = make_task("sudoku", size=6)
    base = task.generate(50, seed=0)
    write_csv(tmp_path / "p.csv", task, base.inputs, base.labels)
    cli = Path(sys.executable).parent / "recursion-env"
    done = subprocess.run([cli, "data", "convert", tmp_path / "p.csv", "--out", tmp_path / "store", "--size", "6"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "converted 50 rows" in done.stdout, done.stderr
    loaded_task, store = load_puzzles(tmp_path / "store")
    assert isinstance(store, PuzzleStore) and loaded_task.seq_len == 36

    one = PuzzleStream(loaded_task, seed=3, dataset=store, augment=False, chunk=8)
    assert one.dataset is store  # not copied into memory
    x, y, ids = one.take(16)
    assert not ids.any()  # one puzzle family
    assert loaded_task.verify(x, y).all() and x.dtype == np.int64
    ranks = [PuzzleStream(loaded_task, seed=3, dataset=store, augment=False, chunk=8, shard=(r, 2)) for r in (0, 1)]
    halves = [s.take(8) for s in ranks]
    assert np.array_equal(np.concatenate([h[0] for h in halves]), x)  # together: the one-process stream

    held_out = store.inputs[:5].astype(np.int64)
    filtered = PuzzleStream(loaded_task, seed=3, dataset=store, augment=True, exclude=held_out, chunk=64)
    keys = {row.tobytes() for row in held_out}
    assert not any(row.tobytes() in keys for row in filtered.take(200)[0]) and filtered.dropped > 0

    from agents.trainers import DISConfig, train

    result = train(DISConfig(task_kwargs={"size": 6}, dataset=str(tmp_path / "store"), model={"hidden": 16},
                               batch_size=8, steps=3, eval_n=8, out=str(tmp_path / "run"), progress=False))
    assert result["optimizer_steps"] == 3
    from agents.evaluation import evaluate_run

    assert evaluate_run(tmp_path / "run", n=20, puzzles=str(tmp_path / "store"))["n_puzzles"] == 20  # eval from it
    from agents.trainers import PPOConfig, train_ppo

    with pytest.raises(ValueError, match="a converted folder is streamed by --method trm/dis"):
        train_ppo(PPOConfig(task_kwargs={"size": 6}, dataset=str(tmp_path / "store"), model={"hidden": 16},
                            iterations=1, out=str(tmp_path / "ppo"), progress=False))
