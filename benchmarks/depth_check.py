"""Does a task need depth? Train a TRM per setting and compare its exact accuracy after one supervision step
(21 NFE) with sixteen (336 NFE) on held-out puzzles.

    python benchmarks/depth_check.py --minutes 15 --out runs/bench/depth_check

A setting *needs depth* when TRM@336 >= TRM@21 + 5 points (the headline issue's definition). Settings train
concurrently, ``--parallel`` at a time with one thread each (equal shares of the machine); a stopped check
continues where it was when run again (finished settings are kept, unfinished runs resume). Every setting tried
is listed in ``depth_check.json`` / ``.md``, the failures with the winners.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agents.experiments.bench import train_command  # fresh, resumed, or done: the bench's own rule

#: name -> task flags; the candidates of the headline issue (6x6 with the fewest givens that keep one solution,
#: 9x9 with 36-45 givens) and two between them
SETTINGS = {
    "sudoku6-g8-10": ["--task", "sudoku", "--size", "6", "--min-givens", "8", "--max-givens", "10"],
    "sudoku6-g10-12": ["--task", "sudoku", "--size", "6", "--min-givens", "10", "--max-givens", "12"],
    "sudoku9-g36-45": ["--task", "sudoku", "--size", "9", "--min-givens", "36", "--max-givens", "45"],
    "sudoku9-g45-50": ["--task", "sudoku", "--size", "9", "--min-givens", "45", "--max-givens", "50"],
}
DEPTH_POINTS = 0.05


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    p.add_argument("--minutes", type=float, default=15.0, help="training minutes per setting")
    p.add_argument("--parallel", type=int, default=2, help="settings trained at once, one thread each")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/depth_check")
    args = p.parse_args(argv)
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--method", "trm", "--hidden", str(args.hidden), "--batch-size", str(args.batch_size), "--seed",
              str(args.seed), "--eval-n", str(args.eval_n), "--no-final-eval"]
    pending = [(n, train_command(out / n, [*SETTINGS[n], *common], args.minutes)) for n in names]
    running: list = []
    start = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            name, cmd = pending.pop(0)
            if cmd is None:
                print(f"{name}: trained already")
                continue
            print(f"{name}: {' '.join(cmd[2:])}", flush=True)
            log = open(out / f"{name}.log", "a")  # noqa: SIM115 - closed when the run ends
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        time.sleep(2)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode:
                    raise SystemExit(f"{name}: training failed (exit {proc.returncode}); see {out / name}.log")
                print(f"{name}: trained ({time.time() - start:.0f} s since start)", flush=True)

    from agents.eval.evaluation import evaluate_run

    rows = []
    for name in names:
        ev = evaluate_run(out / name, n=args.eval_n, halting=True)
        metrics = json.loads((out / name / "train_metrics.json").read_text())
        acc = {r["nfe"]: r["exact_accuracy"] for r in ev["by_step"]}
        first, full = acc[min(acc)], acc[max(acc)]
        rows.append({"setting": name, "flags": " ".join(SETTINGS[name]), "trm_21": first, "trm_42": acc[sorted(acc)[1]],
                     "trm_336": full, "best": max(acc.values()), "halting": ev["halting"],
                     "needs_depth": full >= first + DEPTH_POINTS, "optimizer_steps": metrics["optimizer_steps"],
                     "wall_clock_s": metrics["wall_clock_s"]})
        print(f"{name}: TRM@21 {first:.3f}  @336 {full:.3f}  needs depth: {rows[-1]['needs_depth']}")
    report = {"minutes": args.minutes, "hidden": args.hidden, "batch_size": args.batch_size, "eval_n": args.eval_n,
              "threads_per_setting": 1, "parallel": args.parallel, "rows": rows,
              "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "depth_check.json").write_text(json.dumps(report, indent=2))
    lines = ["| setting | task flags | optimizer steps | TRM@21 | TRM@42 | TRM@336 | halting head (mean NFE) | "
             "needs depth (+5 pts) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['setting']} | `{r['flags']}` | {r['optimizer_steps']:,} | {r['trm_21']:.3f} | {r['trm_42']:.3f} | "
              f"{r['trm_336']:.3f} | {r['halting']['exact_accuracy']:.3f} ({r['halting']['mean_nfe']:.1f}) | "
              f"{'yes' if r['needs_depth'] else 'no'} |" for r in rows]
    (out / "depth_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
