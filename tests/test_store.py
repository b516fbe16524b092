"""Datasets larger than memory: ``data convert`` to memory-mapped .npy, resumable, and training streamed from it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.trainers.data import PuzzleStream
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
    assert isinstance(store.inputs.raw, np.memmap) and store.inputs.dtype == np.uint8
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
    from agents.eval.evaluation import evaluate_run

    assert evaluate_run(tmp_path / "run", n=20, puzzles=str(tmp_path / "store"))["n_puzzles"] == 20  # eval from it
    from agents.trainers import PPOConfig, train_ppo

    with pytest.raises(ValueError, match="a converted folder is streamed by --method trm/dis"):
        train_ppo(PPOConfig(task_kwargs={"size": 6}, dataset=str(tmp_path / "store"), model={"hidden": 16},
                            iterations=1, out=str(tmp_path / "ppo"), progress=False))


# -- a damaged converted folder is refused in one line, and nothing invalid is read from it ----------------------
@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    """A converted folder of 60 generated 6x6 puzzles (built once; each test damages a copy)."""
    task = make_task("sudoku", size=6)
    base = task.generate(60, seed=5)
    folder = tmp_path_factory.mktemp("good")
    write_csv(folder / "p.csv", task, base.inputs, base.labels)
    convert_csv(folder / "p.csv", folder / "store", task=task, progress=False)
    return folder / "store"


def damaged(good_store, tmp_path, file: str, edit) -> Path:
    import shutil

    out = tmp_path / "store"
    shutil.copytree(good_store, out)
    path = out / file
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(edit(data)))
    return out


def data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def set_byte(offset: int, value: int):
    def edit(data):
        data[offset] = value
        return data
    return edit


def read_all(store: PuzzleStore):
    return store.inputs[:], store.labels[:]


def test_a_converted_folder_has_a_checksum_per_row_and_reads_back_checked(good_store):
    store = PuzzleStore(good_store)
    meta = json.loads((good_store / "meta.json").read_text())
    assert meta["format"] == "recursion-env puzzle store v2" and meta["checksums_file"] == "checksums.npy"
    assert store.checksums.shape == (60,) and store.checksums.dtype == np.uint64
    x, y = read_all(store)
    assert store.task.verify(x.astype(np.int64), y.astype(np.int64)).all()
    assert np.array_equal(store.inputs[[3, 1]], x[[3, 1]]) and np.array_equal(store.labels[5], y[5])
    assert np.array_equal(np.asarray(store.inputs), x) and store.inputs[:, :3].shape == (60, 3)


@pytest.mark.parametrize("file, value", [("inputs.npy", 0x50), ("labels.npy", 0x01), ("checksums.npy", 0x00)])
def test_a_changed_byte_in_any_array_is_refused_naming_the_folder_and_its_row(good_store, tmp_path, file, value):
    start = data_offset(good_store / file)
    row_bytes = 8 if file == "checksums.npy" else 36
    offset = start + 7 * row_bytes + 5  # row 7
    out = damaged(good_store, tmp_path, file, set_byte(offset, value ^ 0xFF if
                                                            (good_store / file).read_bytes()[offset] == value
                                                            else value))
    store = PuzzleStore(out)
    with pytest.raises(ValueError, match=r"checksums.npy: row\(s\) 7 do not match their checksums.*convert it again"):
        read_all(store)
    assert np.array_equal(store.inputs[:7], PuzzleStore(good_store).inputs[:7])  # the rows around it still read


def test_cli_readers_refuse_a_damaged_folder_in_one_line(good_store, tmp_path, capsys):
    from agents.cli import main as cli

    out = damaged(good_store, tmp_path, "labels.npy", set_byte(data_offset(good_store / "labels.npy") + 3, 1))
    assert cli(["data", "show", str(out), "--count", "60"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row(s) 0 do not match their checksums" in err[0] and "Traceback" not in err[0]
    run = tmp_path / "run"
    assert cli(["train", "--method", "dis", "--size", "6", "--steps", "1", "--hidden", "16", "--batch-size", "8",
                "--eval-n", "8", "--compile", "off", "--dataset", str(out), "--out", str(run)]) == 2
    assert "do not match their checksums" in capsys.readouterr().err


def test_a_folder_converted_without_checksums_is_refused_in_one_line(good_store, tmp_path):
    out = damaged(good_store, tmp_path, "meta.json",
                  lambda d: d.replace(b"puzzle store v2", b"puzzle store v1"))
    (out / "checksums.npy").unlink()
    with pytest.raises(ValueError, match="without checksums by an older recursion-env: convert it again"):
        PuzzleStore(out)


def test_rows_whose_checksums_match_still_refuse_bad_tokens_and_wrong_labels(good_store, tmp_path):
    """A bad row written with its own checksum (as a faulty converter would): the token and rule checks refuse it."""
    from recursion_env.tasks.store import row_checksums

    out = damaged(good_store, tmp_path, "meta.json", lambda d: d)
    inputs, labels = out / "inputs.npy", out / "labels.npy"
    first = data_offset(inputs)
    keep_in, keep_lab = inputs.read_bytes(), labels.read_bytes()

    def rewrite(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        np.save(out / "checksums.npy", row_checksums(np.load(inputs), np.load(labels)))

    rewrite(labels, bytes(set_byte(first + 36 * 4 + 2, (keep_lab[first + 36 * 4 + 2] % 6) + 1)(bytearray(keep_lab))))
    with pytest.raises(ValueError, match=r"labels.npy: row\(s\) 4 hold a label that does not solve its puzzle"):
        read_all(PuzzleStore(out))
    labels.write_bytes(keep_lab)
    rewrite(inputs, bytes(set_byte(first + 36 * 2, 10)(bytearray(keep_in))))
    with pytest.raises(ValueError, match=r"inputs.npy: row\(s\) 2 hold a token outside 0-6"):
        read_all(PuzzleStore(out))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m | {"rows": "60"}, "field 'rows' is '60', expected an integer"),
    (lambda m: {k: v for k, v in m.items() if k != "task_kwargs"}, "field 'task_kwargs' is None"),
    (lambda m: m | {"task_kwargs": {"size": 5}}, "field 'task_kwargs'.*is not a Sudoku"),
    (lambda m: m | {"task_kwargs": {"colour": 6}}, "field 'task_kwargs'.*is not a Sudoku"),
    (lambda m: m | {"rows": 61}, r"inputs.npy: uint8 \(60, 36\), meta.json says uint8 \(61, 36\)"),
    (lambda m: m | {"task": "maze"}, "field 'task' is 'maze'"),
    (lambda m: [m], "expected a JSON object"),
])
def test_meta_json_is_validated_field_by_field(good_store, tmp_path, edit, message):
    out = damaged(good_store, tmp_path, "meta.json",
                  lambda d: json.dumps(edit(json.loads(bytes(d)))).encode())
    with pytest.raises(ValueError, match=message):
        PuzzleStore(out)


@pytest.mark.parametrize("edit", [lambda d: b"", lambda d: d[:100], lambda d: d[:9] + b"\xff" + d[10:],
                                  lambda d: d[:20] + b"(" + d[21:], lambda d: d[:-5]])
def test_an_emptied_truncated_or_garbled_array_file_is_refused(good_store, tmp_path, edit):
    out = damaged(good_store, tmp_path, "inputs.npy", edit)
    with pytest.raises(ValueError, match="inputs.npy: .*the folder is damaged"):
        PuzzleStore(out)
