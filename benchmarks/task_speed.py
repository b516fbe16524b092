"""Puzzle generation and solver speed on one core.

    python benchmarks/task_speed.py --out runs/bench/task_speed.json

Goals (foundation issue): 6x6 Sudoku generation >= 300 unique-solution puzzles/s, 9x9 >= 10/s; the solver
finishes the well-known hardest 9x9 puzzles at <= 20 ms per puzzle on average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from recursion_env.tasks import make_task

HERE = Path(__file__).resolve().parent


def generation_rate(name: str, kw: dict, n: int, seed: int = 0) -> float:
    task = make_task(name, **kw)
    t0 = time.perf_counter()
    task.generate(n, seed)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/task_speed.json")
    p.add_argument("--repeat", type=int, default=3, help="solver timing repeats (best of)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    gen = {
        "sudoku4": generation_rate("sudoku", {"size": 4}, 2000),
        "sudoku6": generation_rate("sudoku", {"size": 6}, 1000),
        "sudoku9": generation_rate("sudoku", {"size": 9}, 100),
        "sudoku9_22_27_givens": generation_rate("sudoku", {"size": 9, "min_givens": 22, "max_givens": 27}, 30),
        "maze9": generation_rate("maze", {"size": 9}, 1000),
        "maze30": generation_rate("maze", {"size": 30}, 100),
        "nqueens8": generation_rate("nqueens", {"board": 8}, 1000),
    }
    task = make_task("sudoku", size=9)
    puzzles = task.read_lines(HERE / "data" / "hardest_9x9.txt")
    solve_ms, count_ms = [], []
    for x in puzzles:
        best_solve = best_count = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sol = task.solve(x)
            best_solve = min(best_solve, time.perf_counter() - t0)
            t0 = time.perf_counter()
            task.count_solutions(x, 2)
            best_count = min(best_count, time.perf_counter() - t0)
        assert task.verify(x, sol)[0]
        solve_ms.append(1000 * best_solve)
        count_ms.append(1000 * best_count)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "generation_per_s": gen,
        "solver": {"n_puzzles": len(puzzles), "mean_solve_ms": statistics.mean(solve_ms),
                   "max_solve_ms": max(solve_ms), "mean_count_to_2_ms": statistics.mean(count_ms),
                   "solve_ms": solve_ms},
        "goals": {"sudoku6_per_s>=300": gen["sudoku6"] >= 300, "sudoku9_per_s>=10": gen["sudoku9"] >= 10,
                  "hardest_mean_solve_ms<=20": statistics.mean(solve_ms) <= 20},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'generation':<24}{'puzzles/s':>12}")
    for k, v in gen.items():
        print(f"{k:<24}{v:>12.1f}")
    s = result["solver"]
    print(f"\nsolver on {s['n_puzzles']} hardest 9x9: mean {s['mean_solve_ms']:.2f} ms, max {s['max_solve_ms']:.2f} ms "
          f"(count to 2: mean {s['mean_count_to_2_ms']:.2f} ms)")
    print(f"goals: {result['goals']}\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
