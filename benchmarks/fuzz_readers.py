"""Every reader of a user's file, fed damaged copies: single-byte changes and truncations.

For each reader (a run's checkpoint, a ``.npz`` dataset, a Sudoku-Extreme CSV, a text file of puzzles, a folder
converted by ``data convert``, an official ``all_config.yaml``, a sweep file) the script writes one good file, then
loads ``--flips`` copies with one byte changed (a random position, a random other value) and ``--truncations``
copies cut at a random length, through the same call the CLI makes. Each load is one of:

* ``one-line error``: a ``ValueError`` (what the CLI prints as one line) naming the file;
* ``unclear error``: a ``ValueError`` that does not name the file or spans several lines;
* ``unchanged``: the load succeeded and gave what the good file gives (the byte did not matter, e.g. YAML spacing);
* ``changed, valid``: it succeeded with other data that still passes every check (a config with another value, a
  puzzle whose given was blanked that still has one solution);
* ``invalid accepted``: it succeeded with puzzles or labels that are not valid, or a checkpoint that differs;
* ``traceback``: any other exception (the CLI would print a traceback).

The goal is 0 tracebacks, 0 unclear errors and 0 invalid accepted.

    python benchmarks/fuzz_readers.py --flips 300 --truncations 20 --out runs/bench/fuzz_readers.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def puzzles_valid(task, inputs, labels) -> bool:
    inputs, labels = np.asarray(inputs, np.int64), np.asarray(labels, np.int64)
    return bool(len(inputs)) and bool(task.verify(inputs, labels).all())


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    return a == b


# -- the readers: (make the good file in a folder, load a copy -> (data, valid)) -------------------------------
def sudoku_batch(size=6, n=12):
    from recursion_env.tasks import make_task

    task = make_task("sudoku", size=size)
    return task, task.generate(n, seed=11)


def make_checkpoint(folder: Path) -> Path:
    from agents.trainers import DISConfig, train

    train(DISConfig(task_kwargs={"size": 4}, model={"hidden": 16, "n": 1, "N_sup": 2}, batch_size=8, steps=2,
                    eval_n=8, out=str(folder / "run"), progress=False, final_eval=False, compile="off"))
    return folder / "run" / "checkpoint.pt"


def load_checkpoint_file(path: Path):
    from agents.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    return state, None  # validity: compared with the good file's state


def make_npz(folder: Path) -> Path:
    from recursion_env.tasks import save_dataset

    task, batch = sudoku_batch()
    return save_dataset(folder / "puzzles.npz", task, batch, seed=11)


def make_csv(folder: Path) -> Path:
    from recursion_env.tasks.store import write_csv

    task, batch = sudoku_batch()
    return write_csv(folder / "puzzles.csv", task, batch.inputs, batch.labels)


def make_text(folder: Path) -> Path:
    task, batch = sudoku_batch()
    chars = "." + "123456789"[:task.size]
    path = folder / "puzzles.txt"
    path.write_text("".join("".join(chars[t] for t in row) + "\n" for row in batch.inputs))
    return path


def load_puzzle_file(path: Path):
    from recursion_env.tasks import load_puzzles, make_task

    task, batch = load_puzzles(path, None if path.suffix == ".npz" else make_task("sudoku", size=6))
    return (batch.inputs, batch.labels), puzzles_valid(task, batch.inputs, batch.labels)


def make_folder(folder: Path) -> Path:
    from recursion_env.tasks.store import convert_csv

    convert_csv(make_csv(folder), folder / "store", progress=False, task=sudoku_batch()[0])
    return folder / "store"


def load_folder(path: Path):
    from recursion_env.tasks.store import PuzzleStore

    store = PuzzleStore(path)
    inputs, labels = store.inputs[:], store.labels[:]
    return (inputs, labels), puzzles_valid(store.task, inputs, labels)


ARCH = {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", "H_cycles": 3, "L_cycles": 6,
        "H_layers": 0, "L_layers": 2, "hidden_size": 64, "num_heads": 4, "expansion": 4, "puzzle_emb_ndim": 64,
        "pos_encodings": "rope", "forward_dtype": "bfloat16", "mlp_t": False, "puzzle_emb_len": 16,
        "halt_max_steps": 16, "halt_exploration_prob": 0.1, "no_ACT_continue": True,
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}}


def make_official_config(folder: Path) -> Path:
    import yaml

    path = folder / "all_config.yaml"
    path.write_text(yaml.dump({"arch": ARCH, "data_paths": ["data/sudoku-extreme-1k-aug-1000"],
                               "global_batch_size": 768, "lr": 1e-4}))
    return path


def load_official_config(path: Path):
    from agents.model.official import CheckpointMismatch, official_model_config, read_official_arch
    from recursion_env.tasks import make_task

    task = make_task("sudoku", size=4)
    arch = read_official_arch(path)
    vocab = 1 + task.vocab_size  # the official vocabulary: PAD, then ours
    state = {"embed_tokens.embedding_weight": torch.zeros(vocab, int(ARCH["hidden_size"]))}
    if arch.get("puzzle_emb_ndim"):
        state["puzzle_emb.weights"] = torch.zeros(1, int(arch["puzzle_emb_ndim"]))
    try:  # as import-official does
        cfg, _ = official_model_config(arch, state, task)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(f"checkpoint with {path}: {e}") from None
    return cfg.to_dict(), True  # a TRMConfig that constructs is valid


def make_sweep(folder: Path) -> Path:
    path = folder / "sweep.yaml"
    path.write_text("method: dis\nbase: {size: 6, hidden: 32, minutes: 2}\ngrid: {seed: [0, 1, 2]}\n"
                    "random: {lr: {loguniform: [1.0e-4, 3.0e-3]}}\nnum_samples: 1\nresources: {cpu: 1, gpu: 0}\n")
    return path


def load_sweep(path: Path):
    from agents.experiments.sweep import read_sweep

    return read_sweep(path), True  # what read_sweep accepts is its definition of valid


READERS = {
    "checkpoint": (make_checkpoint, load_checkpoint_file),
    "npz": (make_npz, load_puzzle_file),
    "csv": (make_csv, load_puzzle_file),
    "text": (make_text, load_puzzle_file),
    "converted folder": (make_folder, load_folder),
    "all_config.yaml": (make_official_config, load_official_config),
    "sweep config": (make_sweep, load_sweep),
}


# -- damage and classify ------------------------------------------------------------------------------------------
def files_of(good: Path) -> list[Path]:
    return sorted(p for p in good.iterdir() if p.is_file()) if good.is_dir() else [good]


def damaged_copy(good: Path, work: Path, rng: np.random.Generator, truncate: bool) -> tuple[Path, str]:
    """A copy of ``good`` (a file, or a folder: one of its files damaged) and what was done to it."""
    copy = work / good.name
    if copy.exists():
        shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
    (shutil.copytree if good.is_dir() else shutil.copy2)(good, copy)
    targets = files_of(copy)
    target = targets[rng.integers(len(targets))]
    data = bytearray(target.read_bytes())
    if truncate:
        cut = int(rng.integers(len(data)))
        target.write_bytes(bytes(data[:cut]))
        return copy, f"{target.name} cut to {cut} of {len(data)} bytes"
    pos = int(rng.integers(len(data)))
    old = data[pos]
    data[pos] = old ^ int(rng.integers(1, 256))
    target.write_bytes(bytes(data))
    return copy, f"{target.name} byte {pos}: {old:#04x} -> {data[pos]:#04x}"


def classify(load, path: Path, good_data) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, valid = load(path)
    except ValueError as e:
        text = str(e)
        one_line = "\n" not in text.strip()
        return ("one-line error" if one_line and path.name in text else "unclear error"), text[:300]
    except Exception as e:  # noqa: BLE001 (what the CLI would show as a traceback)
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}"
    if same(good_data, data):
        return "unchanged", ""
    if valid:
        return "changed, valid", ""
    return "invalid accepted", ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flips", type=int, default=300)
    p.add_argument("--truncations", type=int, default=20)
    p.add_argument("--readers", default=",".join(READERS), help="comma-separated names of READERS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from agents.model.precision import cpu_model

    result = {"cpu": cpu_model(), "flips": args.flips, "truncations": args.truncations, "readers": {}}
    root = Path(tempfile.mkdtemp(prefix="fuzz_readers_"))
    for name in args.readers.split(","):
        make, load = READERS[name]
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        good = make(folder)
        good_data, good_valid = load(good)
        assert good_valid is not False, f"{name}: the good file does not load as valid"
        work = folder / "work"
        work.mkdir()
        rng = np.random.default_rng([args.seed, len(name)])
        counts, examples = Counter(), {}
        t0 = time.perf_counter()
        for i in range(args.flips + args.truncations):
            copy, what = damaged_copy(good, work, rng, truncate=i >= args.flips)
            kind, detail = classify(load, copy, good_data)
            counts[kind] += 1
            if kind not in ("one-line error", "unchanged", "changed, valid"):
                examples.setdefault(kind, []).append(f"{what}: {detail}")
            elif kind not in examples:
                examples[kind] = [f"{what}: {detail}"]
        result["readers"][name] = {"counts": dict(counts), "seconds": round(time.perf_counter() - t0, 1),
                                   "examples": {k: v[:5] for k, v in examples.items()}}
        print(f"{name:18s} {dict(counts)}", flush=True)
    bad = {k: sum(r["counts"].get(k, 0) for r in result["readers"].values())
           for k in ("traceback", "unclear error", "invalid accepted")}
    result["totals"] = bad
    print(json.dumps(bad))
    shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
