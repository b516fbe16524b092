"""Can the verifier reward be gamed? For each task, the label-free potential S (``task.rule_score``, what
``reward_mode="verifier"`` pays the change of) of the puzzle as given, of a solution, and of every *uniform fill*
(each undecided cell written with one token: all "no queen", all one digit, all wall ...), and whether S ever
drops along the DIS diffusion path from the puzzle to its solution.

    python benchmarks/potential_gaming.py                 # the bench's settings, 500 puzzles each
    python benchmarks/potential_gaming.py --n 2000 --json potential.json

A potential that cannot be gamed has: solution = 1 (the maximum), no uniform fill above the puzzle as given, and
no drop along the path. The property tests (tests/test_potentials.py) assert the same on generated puzzles.
"""

from __future__ import annotations

import argparse
import json

import torch

from agents.trainers.targets import diffusion_targets
from recursion_env.tasks import make_task

SETTINGS = {
    "sudoku4": ("sudoku", {"size": 4}),
    "sudoku6-g10-12": ("sudoku", {"size": 6, "min_givens": 10, "max_givens": 12}),
    "sudoku6-g14-18": ("sudoku", {"size": 6, "min_givens": 14, "max_givens": 18}),
    "sudoku9-g28-34": ("sudoku", {"size": 9, "min_givens": 28, "max_givens": 34}),
    "nqueens8": ("nqueens", {"board": 8, "min_given": 1, "max_given": 7}),
    "maze9": ("maze", {"size": 9}),
    "maze9-loops": ("maze", {"size": 9, "loop_fraction": 0.3}),
}


def uniform_fills(task, puzzles: torch.Tensor) -> dict[int, torch.Tensor]:
    """token -> the puzzles with every undecided cell (0) written with that token."""
    return {t: torch.where(puzzles == 0, torch.full_like(puzzles, t), puzzles) for t in range(1, task.vocab_size)}


def measure(name: str, task, n: int, seed: int = 0) -> dict:
    batch = task.generate(n, seed)
    x, y = torch.as_tensor(batch.inputs), torch.as_tensor(batch.labels)
    context = task.rule_context(x)
    given, solution = task.rule_score(x, x, context), task.rule_score(x, y, context)
    fills = {}
    for token, answer in uniform_fills(task, x).items():
        gain = task.rule_score(x, answer, context) - given
        fills[task.to_line([token])] = {"mean_gain": float(gain.mean()), "max_gain": float(gain.max()),
                                        "puzzles_gaining": float((gain > 1e-6).float().mean())}
    path = diffusion_targets(x, y, 16, torch.Generator().manual_seed(seed))  # [n, 16, L]
    scores = torch.stack([given] + [task.rule_score(x, path[:, s], context) for s in range(16)], -1)
    drops = (scores.diff(dim=-1) < -1e-6).any(-1)
    return {"setting": name, "task": repr(task), "n": n, "given_mean": float(given.mean()),
            "solution_min": float(solution.min()), "uniform_fills": fills,
            "path_puzzles_with_a_drop": float(drops.float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for name in args.settings.split(","):
        if name not in SETTINGS:
            raise SystemExit(f"--settings: unknown {name!r}; known: {', '.join(SETTINGS)}")
        kind, kw = SETTINGS[name]
        r = measure(name, make_task(kind, **kw), args.n)
        rows.append(r)
        worst = max(r["uniform_fills"].items(), key=lambda kv: kv[1]["max_gain"])
        print(f"{name:16s} given {r['given_mean']:.3f}  solution min {r['solution_min']:.3f}  worst fill "
              f"{worst[0]!r}: max gain {worst[1]['max_gain']:+.3f}, mean {worst[1]['mean_gain']:+.3f}, "
              f"{worst[1]['puzzles_gaining']:.1%} of puzzles gain  path drops in {r['path_puzzles_with_a_drop']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
