"""A dataset larger than we want in memory: a Sudoku-Extreme style CSV of ``--rows`` rows (generated 9x9 puzzles,
each relabelled ``rows / --base`` times), converted once with ``recursion-env data convert`` and trained from.

Reports the conversion's speed and peak resident memory, and the peak resident memory of a short DIS run that
streams from the converted folder against the same run on generated puzzles (the difference is what the dataset
costs in memory), each split into anonymous memory and mapped file pages (which the OS can drop), and what the
folder's row checks (checksums, tokens, labels solving their puzzles) cost the stream: batches drawn from the folder
with and without them, in turns.

    python benchmarks/big_dataset.py --rows 1000000 --out runs/bench/big_dataset.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recursion_env.tasks import make_task
from recursion_env.tasks.store import write_csv

SCRIPT = str(Path(sys.executable).parent / "recursion-env")


def status_mib() -> dict:
    """This process's resident memory now (``/proc/self/status``): all of it, anonymous, and file pages mapped."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def measured(argv: list[str]) -> None:
    """(In a child process) run ``recursion-env ARGV`` and print the peaks of :func:`status_mib`, sampled every
    50 ms, as JSON on the last line."""
    import threading

    from agents.cli import main as cli

    peaks, done = {}, threading.Event()

    def sample():
        while not done.wait(0.05):
            for k, v in status_mib().items():
                peaks[k] = max(peaks.get(k, 0.0), v)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    code = cli(argv)
    done.set()
    thread.join()
    print(json.dumps({"exit": code, "seconds": time.perf_counter() - t0,
                      **{f"peak_{k}_mib": v for k, v in peaks.items()}}))


def child(argv: list[str]) -> dict:
    """``recursion-env ARGV`` in a fresh process, measured by :func:`measured`."""
    done = subprocess.run([sys.executable, __file__, "--measure", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def stream_cost(folder: Path, batches: int, batch: int = 64, rounds: int = 5) -> dict:
    """Milliseconds per training batch drawn from ``folder`` (``PuzzleStream``: chunks of 256 rows read from the
    memory maps, augmented) with the row checks and without (``PuzzleStore(verify=False)``), best of ``rounds``
    taken in turns."""
    from agents.trainers.data import PuzzleStream
    from recursion_env.tasks.store import PuzzleStore

    best = {}
    for r in range(rounds):
        for verify in (True, False):
            store = PuzzleStore(folder, verify=verify)
            stream = PuzzleStream(store.task, seed=r, dataset=store)
            t0 = time.perf_counter()
            for _ in range(batches):
                stream.take(batch)
            ms = (time.perf_counter() - t0) / batches * 1e3
            key = "checked" if verify else "unchecked"
            best[key] = min(best.get(key, float("inf")), ms)
    return {"batch": batch, "batches": batches, "ms_per_batch_checked": best["checked"],
            "ms_per_batch_unchecked": best["unchecked"], "check_ms_per_batch": best["checked"] - best["unchecked"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--base", type=int, default=1000, help="generated puzzles, each relabelled rows/base times")
    p.add_argument("--steps", type=int, default=200, help="DIS optimizer steps from the converted folder")
    p.add_argument("--stream-batches", type=int, default=400, help="batches of 64 timed from the folder")
    p.add_argument("--dir", default=None, help="where to write the CSV and the folder (default: a temporary one)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(args.dir or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    task = make_task("sudoku", size=9)

    t0 = time.perf_counter()
    base = task.generate(args.base, seed=0)
    rng = np.random.default_rng(0)
    csv_path = work / "puzzles.csv"
    for i in range(args.rows // args.base):
        perm = np.concatenate([[0], rng.permutation(9) + 1])
        write_csv(csv_path, task, perm[base.inputs], perm[base.labels], mode="w" if i == 0 else "a")
    made = time.perf_counter() - t0
    print(f"wrote {args.rows:,} rows ({csv_path.stat().st_size / 2**20:.0f} MiB) in {made:.1f}s", flush=True)

    train = ["train", "--method", "dis", "--size", "9", "--steps", str(args.steps), "--no-final-eval",
             "--eval-n", "64", "--overwrite"]
    generated = child([*train, "--out", str(work / "run_generated")])
    convert = child(["data", "convert", str(csv_path), "--out", str(work / "store"), "--overwrite"])
    meta = json.loads((work / "store" / "meta.json").read_text())
    streamed = child([*train, "--dataset", str(work / "store"), "--out", str(work / "run_store")])
    folder_mib = sum(f.stat().st_size for f in (work / "store").iterdir()) / 2**20
    stream = stream_cost(work / "store", args.stream_batches)
    from agents.model.precision import cpu_model

    result = {
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_cores": os.cpu_count()},
        "rows": meta["rows"], "rejected": meta["rejected"], "csv_mib": csv_path.stat().st_size / 2**20,
        "folder_mib": folder_mib,
        "convert": {"rows_per_s": meta["rows"] / meta["seconds"], **convert},
        "train_generated": {"steps": args.steps, **generated},
        "train_streamed": {"steps": args.steps, **streamed},
        "stream": stream,
        "note": "peak_RssFile: pages of mapped files (the .npy arrays, libraries) resident; the OS can drop them",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measured(sys.argv[2:])
    else:
        main()
