"""Train a small TRM and a small DIS model on 4x4 Sudoku, then compare them and find their dead steps.

    python examples/train_and_diagnose.py            # about a minute on 2 CPU cores
"""

from agents.diagnostics import diagnose, summary_text
from agents.trainers import DeepSupervisionConfig, DISConfig, train


def main(out: str = "runs/example", steps: int = 300) -> dict:
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
    main()
