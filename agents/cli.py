"""The ``recursion-env`` command line: ``data``, ``demo`` (and, as they land, train / eval / bench)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _task_kwargs(args) -> dict:
    """Task options from the command line, keeping only those the chosen task takes."""
    if args.task == "sudoku":
        kw = {"size": args.size or 9, "min_givens": args.min_givens, "max_givens": args.max_givens}
    elif args.task == "maze":
        kw = {"size": args.size or 9, "loop_fraction": args.loop_fraction}
    else:
        kw = {"board": args.board, "min_given": args.min_given, "max_given": args.max_given}
    return {k: v for k, v in kw.items() if v is not None}


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["sudoku", "maze", "nqueens"], default="sudoku")
    p.add_argument("--size", type=int, default=None, help="sudoku side (4, 6, 9) or maze side (default 9)")
    p.add_argument("--min-givens", type=int, default=None, help="sudoku: fewest givens")
    p.add_argument("--max-givens", type=int, default=None, help="sudoku: most givens")
    p.add_argument("--loop-fraction", type=float, default=None, help="maze: fraction of walls opened into loops")
    p.add_argument("--board", type=int, default=8, help="nqueens: board side")
    p.add_argument("--min-given", type=int, default=None, help="nqueens: fewest given queens")
    p.add_argument("--max-given", type=int, default=None, help="nqueens: most given queens")


def cmd_data_build(args) -> int:
    from recursion_env.tasks import build_dataset, make_task, save_dataset

    task = make_task(args.task, **_task_kwargs(args))
    t0 = time.perf_counter()
    batch = build_dataset(task, args.n, args.seed, progress=True)
    dt = time.perf_counter() - t0
    out = save_dataset(args.out, task, batch, seed=args.seed)
    print(f"wrote {len(batch)} {task!r} puzzles to {out} in {dt:.1f}s ({len(batch) / max(dt, 1e-9):.0f}/s)")
    return 0


def cmd_data_show(args) -> int:
    from recursion_env.tasks import load_puzzles, make_task

    task = make_task(args.task, **_task_kwargs(args)) if not str(args.file).endswith(".npz") else None
    task, batch = load_puzzles(args.file, task)
    for i in range(min(args.count, len(batch))):
        print(f"# puzzle {i}\n{task.format(batch.inputs[i])}\n")
    print(f"{len(batch)} puzzles of {task!r}")
    return 0


def cmd_demo(args) -> int:
    """Build a small generated dataset, save it, and show a few puzzles with their verified solutions."""
    from recursion_env.tasks import build_dataset, make_task, save_dataset

    out = Path(args.out)
    task = make_task("sudoku", size=6)
    batch = build_dataset(task, args.n, args.seed, progress=True)
    path = save_dataset(out / "sudoku6.npz", task, batch, seed=args.seed)
    ok = task.verify(batch.inputs, batch.labels)
    print(f"\nbuilt {len(batch)} uniquely solvable 6x6 Sudoku puzzles -> {path}")
    print(f"every label passes the rule verifier: {bool(ok.all())}\n")
    for i in range(min(3, len(batch))):
        solved = task.solve(batch.inputs[i])
        assert np.array_equal(solved, batch.labels[i])
        givens = int((batch.inputs[i] != 0).sum())
        left = task.format(batch.inputs[i]).splitlines()
        right = task.format(solved).splitlines()
        width = max(len(left[0]), len(f"puzzle {i} ({givens} givens)")) + 4
        print(f"puzzle {i} ({givens} givens)".ljust(width) + "solution")
        for a, b in zip(left, right):
            print(a.ljust(width) + b)
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recursion-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build or show puzzle datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="generate a dataset and save it as .npz")
    add_task_arguments(build)
    build.add_argument("--n", type=int, required=True)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", required=True)
    build.set_defaults(func=cmd_data_build)
    show = data_sub.add_parser("show", help="print puzzles from a .npz, .csv or text file")
    show.add_argument("file")
    add_task_arguments(show)
    show.add_argument("--count", type=int, default=3)
    show.set_defaults(func=cmd_data_show)

    demo = sub.add_parser("demo", help="the main job: a short run on built-in generated data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--n", type=int, default=2000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"recursion-env: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
