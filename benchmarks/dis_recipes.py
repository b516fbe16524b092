"""DIS recipes side by side: "paper" (the puzzle as every step's input, linearly increasing step weights) against
"official-code" (the official DIS code: the previous decoded answer as input, uniform weights), on the same
data, seed and wall-clock budget, trained concurrently with one thread each, then evaluated on the same held-out
puzzles (exact = the rule verifier; for N-Queens also exact match to the stored solution, the paper's metric).

    python benchmarks/dis_recipes.py --minutes 12 --out runs/bench/dis_recipes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

SETTINGS = {
    "sudoku6": ["--task", "sudoku", "--size", "6"],
    "nqueens8": ["--task", "nqueens", "--board", "8", "--n-train", "7200"],
}
RECIPES = ("paper", "official-code")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/dis_recipes")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    jobs = []
    for setting in args.settings.split(","):
        for recipe in RECIPES:
            name = f"{setting}-{recipe}"
            cmd = [sys.executable, "-m", "agents.cli", "train", "--method", "dis", "--recipe", recipe,
                   *SETTINGS[setting], "--minutes", str(args.minutes), "--hidden", str(args.hidden), "--seed",
                   str(args.seed), "--no-final-eval", "--out", str(out / name), "--overwrite"]
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed below
            print(" ".join(cmd[2:]), flush=True)
            jobs.append((setting, recipe, name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                         log))
    for *_, name, proc, log in jobs:
        if proc.wait() != 0:
            raise RuntimeError(f"training {name} failed; see {out / (name + '.log')}")
        log.close()
    from agents.eval.evaluation import evaluate_run

    rows = []
    for setting, recipe, name, *_ in jobs:
        result = evaluate_run(out / name, n=args.eval_n)
        train = json.loads((out / name / "train_metrics.json").read_text())
        row = {"setting": setting, "recipe": recipe, "optimizer_steps": train["optimizer_steps"],
               "exact_by_step": [r["exact_accuracy"] for r in result["by_step"]]}
        if setting.startswith("nqueens"):
            row["stored_match_by_step"] = [r["label_match"] for r in result["by_step"]]  # the official metric
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes, "hidden": args.hidden,
              "eval_n": args.eval_n, "torch": torch.__version__, "cores": os.cpu_count(), "rows": rows}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    lines = ["| setting | recipe | optimizer steps | exact after each step | stored-solution match @18 NFE |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        stored = f"{r['stored_match_by_step'][-1]:.3f}" if "stored_match_by_step" in r else "-"
        lines.append(f"| {r['setting']} | {r['recipe']} | {r['optimizer_steps']} | "
                     f"{' '.join(f'{x:.3f}' for x in r['exact_by_step'])} | {stored} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
