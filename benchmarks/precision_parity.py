"""Does bf16 change the science? DIS on 6x6 Sudoku (the demo's setting) trained for the same number of optimizer
steps in bf16 and in fp32 (same seed, same puzzles), each evaluated on the same 1,000 held-out puzzles in its own
precision: exact accuracy at every supervision step, and the difference at 18 NFE (the goal: within 1 point).

    python benchmarks/precision_parity.py --steps 1700 --out runs/bench/precision_parity
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from agents.eval.evaluation import evaluate_run
from agents.model.precision import COMPILE_MODES, machine
from agents.trainers import DISConfig, train


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1700, help="optimizer steps of each run (the demo's 3 minutes made "
                                                           "about 1,700 in fp32 on 2 cores)")
    p.add_argument("--eval-n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", default="off", choices=list(COMPILE_MODES))
    p.add_argument("--out", default="runs/bench/precision_parity")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = {}
    for precision in ("fp32", "bf16"):
        run = out / precision
        cfg = DISConfig(task_kwargs={"size": 6}, steps=args.steps, seed=args.seed, eval_n=args.eval_n,
                        final_eval=False, precision=precision, compile=args.compile, out=str(run), progress=False)
        trained = train(cfg, overwrite=args.overwrite)
        ev = evaluate_run(run, n=args.eval_n)
        rows[precision] = {"optimizer_steps": trained["optimizer_steps"],
                           "wall_clock_s": round(trained["wall_clock_s"], 1),
                           "exact_by_step": [r["exact_accuracy"] for r in ev["by_step"]],
                           "exact_at_18_nfe": ev["by_step"][-1]["exact_accuracy"], "evaluated_in": ev["precision"]}
        print(precision, json.dumps(rows[precision]), flush=True)
    gap = rows["bf16"]["exact_at_18_nfe"] - rows["fp32"]["exact_at_18_nfe"]
    result = {"machine": machine(),
              "torch": torch.__version__, "measured": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps,
              "eval_n": args.eval_n, "seed": args.seed, "runs": rows, "bf16_minus_fp32_at_18_nfe": round(gap, 4),
              "within_1_point": abs(gap) <= 0.01}
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision_parity.json").write_text(json.dumps(result, indent=2))
    print(f"bf16 - fp32 at 18 NFE: {gap:+.3f} ({'within' if abs(gap) <= 0.01 else 'NOT within'} 1 point)")
    return result


if __name__ == "__main__":
    main()
