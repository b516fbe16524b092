"""Compare a trained TRM with a trained DIS model and find their dead steps: the zoo's on 6x6 Sudoku, or small
ones it trains on 4x4 Sudoku first.

    python examples/train_and_diagnose.py            # zoo:trm-sudoku6 and zoo:dis-sudoku6: 28 s on 2 CPU cores
    python examples/train_and_diagnose.py --train    # trains a small TRM and a small DIS model first
"""

import argparse

from agents.eval.diagnostics import diagnose, summary_text
from agents.trainers import DeepSupervisionConfig, DISConfig, train


def compare_zoo(n: int = 200) -> dict:
    reports = {}
    for method, name in (("trm", "trm-sudoku6"), ("dis", "dis-sudoku6")):
        reports[method] = diagnose(f"zoo:{name}", n=n)
        print(summary_text(reports[method]), "\n")
    return reports


def main(out: str = "runs/example", steps: int = 300) -> dict:
    """Train a small TRM and a small DIS model on 4x4 Sudoku into ``out``, then diagnose both."""
    common = dict(task_kwargs={"size": 4}, batch_size=64, steps=steps, eval_n=200, warmup_steps=20,
                  final_eval=False, progress=False)
    reports = {}
    for method, config, schedule in (("trm", DeepSupervisionConfig, dict(T=2, n=2, N_sup=4)),
                                     ("dis", DISConfig, dict(T=1, n=2, N_sup=6))):
        # the example's own folders, replaced on every run of it
        train(config(model={"hidden": 32, **schedule}, out=f"{out}/{method}", **common), overwrite=True)
        reports[method] = diagnose(f"{out}/{method}", n=200)
        print(summary_text(reports[method]), "\n")
    return reports


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="train small models first instead of the zoo's")
    p.add_argument("--out", default="runs/example", help="where --train writes its two runs (replaced)")
    p.add_argument("--steps", type=int, default=300, help="--train: optimizer steps per model")
    a = p.parse_args()
    if a.train:
        main(a.out, a.steps)
    else:
        compare_zoo()
