"""Training throughput in one process and in several under torchrun (gloo on CPU, NCCL on GPUs): puzzles trained
per second (optimizer steps x the global batch / training seconds) for the same global batch.

Each setting runs ``train`` through the CLI for ``--warmup`` steps and again for ``--warmup + --steps`` and takes
the difference, so start-up, the first steps and the process group's set-up cancel out.

    python benchmarks/data_parallel.py --out runs/bench/data_parallel.json            # CPU: 1 vs 2 processes
    python benchmarks/data_parallel.py --device cuda --processes 1,2 --batch 768 --hidden 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "recursion-env")


def run(processes: int, threads: int, steps: int, args) -> float:
    """Training seconds of one run of ``steps`` optimizer steps."""
    with tempfile.TemporaryDirectory() as tmp:
        train = [SCRIPT, "train", "--method", args.method, "--size", str(args.size), "--hidden", str(args.hidden),
                 "--batch-size", str(args.batch), "--steps", str(steps), "--out", tmp, "--overwrite",
                 "--no-final-eval", "--eval-n", "8", "--checkpoint-every", str(10**9), "--device", args.device]
        launcher = [] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
            "--master-addr", "127.0.0.1", "--master-port", str(29400 + processes)]
        done = subprocess.run(launcher + train, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
        return json.loads((Path(tmp) / "train_metrics.json").read_text())["wall_clock_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="dis", choices=["trm", "dis"])
    p.add_argument("--size", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64, help="the global batch")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for n in (int(k) for k in args.processes.split(",")):
        threads = max(1, cores // n) if args.device == "cpu" else 1
        seconds = run(n, threads, args.warmup + args.steps, args) - run(n, threads, args.warmup, args)
        rows.append({"processes": n, "threads_per_process": threads, "seconds_per_step": seconds / args.steps,
                     "puzzles_per_s": args.steps * args.batch / seconds})
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": {"platform": platform.platform(), "cpu_cores": cores, "device": args.device,
                          "gpu": _gpu_name(args.device)},
              "config": vars(args), "runs": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    if not shutil.which(SCRIPT):
        sys.exit(f"{SCRIPT} not found: install the package (pip install -e .) first")
    main()
