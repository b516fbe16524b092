"""The headline benchmark: accuracy against forward passes, TRM (336 NFE) vs DIS (18 NFE), same data, same
wall-clock budget, same network width. Run as ``recursion-env bench nfe-vs-accuracy`` or
``python benchmarks/nfe_vs_accuracy.py``.

Each method trains in its own process (``recursion-env train``) on one shared pre-generated pool of training
puzzles (with the task's augmentations, so a base puzzle seen twice is almost surely a different puzzle), from
which the held-out evaluation puzzles are excluded. Methods train concurrently by default, one thread each, so
they share the machine equally for the same wall-clock time. Then every method is evaluated on the same held-out
puzzles, with dead-compute diagnostics and, for DIS, a guidance sweep.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recursion_env.tasks import build_dataset, make_task, save_dataset

TRM_PREFIXES = (1, 2, 4, 8, 16)


@dataclass
class BenchConfig:
    out: str = "runs/bench/nfe_vs_accuracy"
    size: int = 9
    min_givens: int = 28
    max_givens: int = 34
    minutes: float = 20.0
    hidden: int = 64
    batch_size: int = 64
    pool: int = 20000
    eval_n: int = 1000
    seed: int = 0
    targets: list = field(default_factory=lambda: ["diffusion"])
    guidance: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    parallel: bool = True
    device: str = "cpu"

    @classmethod
    def quick(cls, **kw) -> BenchConfig:
        """A few minutes on an easy task: a smoke run, not evidence about depth."""
        return cls(**{"size": 6, "min_givens": 14, "max_givens": 18, "minutes": 2.0, "hidden": 32, "pool": 3000,
                      "eval_n": 300, "guidance": [0.0, 1.0, 2.0], **kw})


def _runs(cfg: BenchConfig) -> list[tuple[str, list[str]]]:
    common = ["--task", "sudoku", "--size", str(cfg.size), "--min-givens", str(cfg.min_givens), "--max-givens",
              str(cfg.max_givens), "--minutes", str(cfg.minutes), "--hidden", str(cfg.hidden), "--batch-size",
              str(cfg.batch_size), "--seed", str(cfg.seed), "--eval-n", str(cfg.eval_n), "--device", cfg.device,
              "--no-final-eval"]
    runs = [("trm", ["--method", "trm", "--T", "3", "--n", "6", "--n-sup", "16", *common])]
    for t in cfg.targets:
        runs.append((f"dis-{t}", ["--method", "dis", "--targets", t, "--T", "1", "--n", "2", "--n-sup", "6",
                                  *common]))
    return runs


def run(cfg: BenchConfig, progress=print) -> dict:
    from .diagnostics import diagnose, save_plots
    from .evaluation import evaluate_run

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task("sudoku", size=cfg.size, min_givens=cfg.min_givens, max_givens=cfg.max_givens)
    pool_path = out / "train_pool.npz"
    if not pool_path.exists():
        progress(f"generating a training pool of {cfg.pool} puzzles ({task!r})")
        save_dataset(pool_path, task, build_dataset(task, cfg.pool, cfg.seed, progress=True), seed=cfg.seed)

    runs = _runs(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1" if cfg.parallel else str(os.cpu_count()), "PYTHONUNBUFFERED": "1"}
    procs = []
    for name, args in runs:
        cmd = [sys.executable, "-m", "agents.cli", "train", *args, "--dataset", str(pool_path), "--out",
               str(out / name), "--overwrite"]  # the benchmark's own folder, rewritten by every run of it
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed below
        progress(f"training {name} for {cfg.minutes} min: {' '.join(cmd[2:])}")
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        if not cfg.parallel:
            procs[-1][1].wait()
    for name, p, log in procs:
        if p.wait() != 0:
            raise RuntimeError(f"training {name} failed; see {out / (name + '.log')}")
        log.close()

    results = {}
    for name, _ in runs:
        progress(f"evaluating {name} on {cfg.eval_n} held-out puzzles")
        train_metrics = json.loads((out / name / "train_metrics.json").read_text())
        diag = diagnose(out / name, n=cfg.eval_n, device=cfg.device)  # accuracy, halting and margins in one pass
        save_plots(diag, out / name / "plots")
        keys = ("supervision_step", "nfe", "exact_accuracy", "cell_accuracy")
        rows = [{k: r[k] for k in keys} for r in diag["steps"]
                if name != "trm" or r["supervision_step"] in TRM_PREFIXES]
        guidance = None
        if name.startswith("dis") and cfg.guidance:
            guidance = evaluate_run(out / name, n=cfg.eval_n, guidance=cfg.guidance, device=cfg.device)["guidance"]
            for g in guidance:
                g.pop("by_step")
        results[name] = {"by_step": rows, "halting": diag["halting"] if name == "trm" else None, "guidance": guidance,
                         "optimizer_steps": train_metrics["optimizer_steps"],
                         "train_forward_passes": train_metrics["train_forward_passes"],
                         "wall_clock_s": train_metrics["wall_clock_s"], "examples_seen": train_metrics["examples_seen"],
                         "diagnostics": diag["steps"], "dead_steps": diag["dead_steps"]}
    report = _verdict(cfg, results)
    report |= {"date": time.strftime("%Y-%m-%d %H:%M"), "config": cfg.__dict__, "task": task.kwargs,
               "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                           "torch": torch.__version__, "numpy": np.__version__},
               "command": " ".join(sys.argv), "methods": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    _plot(report, out / "accuracy_vs_nfe.png")
    return report


def _verdict(cfg: BenchConfig, results: dict) -> dict:
    trm = results["trm"]["by_step"]
    first, best = trm[0]["exact_accuracy"], max(r["exact_accuracy"] for r in trm)
    trm_full = next(r for r in trm if r["supervision_step"] == 16)["exact_accuracy"]
    dis = {k: v["by_step"][-1]["exact_accuracy"] for k, v in results.items() if k.startswith("dis")}
    best_dis = max(dis.values()) if dis else 0.0
    if max(best, best_dis) < 0.10:
        depth = f"TOO HARD for this budget: both methods stay below 10% exact (TRM best {best:.3f}, DIS {best_dis:.3f})"
    elif best < 0.10:
        depth = (f"INCONCLUSIVE: the TRM baseline did not learn within this budget (best {best:.3f} exact), so the "
                 f"depth check cannot be read; DIS reached {best_dis:.3f} at 18 NFE in the same wall-clock")
    elif best - first <= 0.02:
        depth = (f"TOO EASY for this budget: TRM is already at {first:.3f} after its first supervision step and "
                 f"at best {best:.3f}; this task does not show what depth buys")
    else:
        depth = f"depth matters: TRM goes from {first:.3f} after 1 step to {best:.3f} at best"
    claims = {
        "dis_18_within_1pt_of_trm_336": {k: v >= trm_full - 0.01 for k, v in dis.items()},
        "trm_336_exact": trm_full, "dis_18_exact": dis,
    }
    halting = results["trm"].get("halting") or {}
    if halting:
        best_fixed = max(best, best_dis)
        claims["trm_halting_head"] = {"mean_nfe": halting["mean_nfe"], "exact": halting["exact_accuracy"],
                                      "le_9_nfe_within_1pt_of_best_fixed": bool(
                                          halting["mean_nfe"] <= 9 and halting["exact_accuracy"] >= best_fixed - 0.01)}
    return {"depth_check": {"trm_first_step_exact": first, "trm_best_exact": best, "verdict": depth},
            "claims": claims}


def rewrite_report(out) -> dict:
    """Re-derive the verdict, results.md and the plot from a finished run's results.json (no training)."""
    out = Path(out)
    report = json.loads((out / "results.json").read_text())
    cfg = BenchConfig(**report["config"])
    report |= _verdict(cfg, report["methods"])
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    _plot(report, out / "accuracy_vs_nfe.png")
    return report


def markdown(report: dict) -> str:
    lines = [f"# NFE vs accuracy ({report['date']})", "", f"Task: sudoku {report['task']}; "
             f"{report['config']['minutes']} min per method on {report['machine']['cores']} cores "
             f"({report['machine']['cpu']}), width {report['config']['hidden']}.", "",
             f"**Depth check:** {report['depth_check']['verdict']}.", "",
             "| method | supervision steps | NFE | exact | blank-cell |", "| --- | --- | --- | --- | --- |"]
    for name, r in report["methods"].items():
        for row in r["by_step"]:
            lines.append(f"| {name} | {row['supervision_step']} | {row['nfe']} | {row['exact_accuracy']:.3f} | "
                         f"{row['cell_accuracy']:.3f} |")
        if r.get("halting"):
            h = r["halting"]
            lines.append(f"| {name} + halting head | {h['mean_steps']:.2f} (mean) | {h['mean_nfe']:.1f} (mean) | "
                         f"{h['exact_accuracy']:.3f} | {h['cell_accuracy']:.3f} |")
    lines += ["", "| method | optimizer steps | training forward passes | examples seen | wall-clock s | dead steps |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, r in report["methods"].items():
        lines.append(f"| {name} | {r['optimizer_steps']} | {r['train_forward_passes']:,} | {r['examples_seen']:,} | "
                     f"{r['wall_clock_s']:.0f} | {r['dead_steps'] or 'none'} |")
    for name, r in report["methods"].items():
        if r.get("guidance"):
            lines += ["", f"Guidance sweep, {name} (all steps): " + ", ".join(
                f"w={g['w']}: {g['exact_accuracy']:.3f}" for g in r["guidance"])]
    lines += ["", "Claims: " + json.dumps(report["claims"])]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in report["methods"].items():
        ax.plot([x["nfe"] for x in r["by_step"]], [x["exact_accuracy"] for x in r["by_step"]], "o-", label=name)
        if r.get("halting"):
            ax.plot([r["halting"]["mean_nfe"]], [r["halting"]["exact_accuracy"]], "*", ms=12,
                    label=f"{name} + halting head")
    ax.set(xscale="log", xlabel="forward passes per puzzle (NFE)", ylabel="exact accuracy (held-out)",
           ylim=(0, 1.02), title="accuracy vs NFE")
    ticks = []
    for t in sorted({x["nfe"] for r in report["methods"].values() for x in r["by_step"]}):
        if not ticks or t >= 1.3 * ticks[-1]:  # labels closer than that overlap on a log axis
            ticks.append(t)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
