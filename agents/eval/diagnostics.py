"""Dead-compute diagnostics: which supervision steps improve the answer, for TRM and DIS checkpoints alike.

Each supervision step is a policy-improvement operator. With l_u the logits before the step (reference) and l_c
after it (conditional), Δl = l_c - l_u, and the guided policy π_w = softmax(l_u + w Δl), the **advantage margin**
of a cell with solution token y* is

    margin_w = Δl[y*] - E_{a ~ π_w}[Δl[a]],

the negative slope in w of the cross-entropy CE(w) = -log π_w(y*): positive when moving further along the step's
direction would make the solution likelier. The **improvement** of a step is CE(0) - CE(1), the drop in
cross-entropy from the reference policy to the step's own (w = 1): the integral of the margin from w = 0 to 1.
A step is flagged **dead** (compute spent without improvement) when it changes no prediction, or when it neither
lowers the mean cross-entropy over blank cells nor raises their accuracy (a step can sharpen a few wrong cells
enough to raise the mean cross-entropy while it fixes others).

Why the verdict rests on the improvement and not on the margin at w = 1: CE(w) is convex in w (its curvature is
Var_{a ~ π_w}[Δl[a]] >= 0), so the margin at w = 1 is the smallest on [0, 1]. A step that helps a lot but
overshoots (confidently wrong on a few cells, so a smaller step would have been better still) has a margin <= 0
at w = 1 and a large improvement. TRM's first step is the typical case: its reference is the readout of the
constant initial state, the same near-uniform prediction on every cell, and the step makes every cell confident,
so the slope at w = 1 is set by the cells it gets confidently wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..model.rollout import RecursionRunner
from ..model.trm import SupervisionOutput
from .metrics import prepare_run, rollout_metrics, summarize


def guided_cross_entropy(reference: torch.Tensor, conditional: torch.Tensor, target: torch.Tensor, w: float):
    """-log softmax(l_u + w (l_c - l_u))[target], per cell."""
    reference, conditional = reference.double(), conditional.double()
    logits = reference + w * (conditional - reference)
    return -torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def advantage_margin(reference: torch.Tensor, conditional: torch.Tensor, target: torch.Tensor, w: float = 1.0):
    """Δl[y*] - E_{π_w}[Δl], per cell (= -d/dw of the guided cross-entropy)."""
    reference, conditional = reference.double(), conditional.double()
    delta = conditional - reference
    pi = torch.softmax(reference + w * delta, -1)
    return delta.gather(-1, target.unsqueeze(-1)).squeeze(-1) - (pi * delta).sum(-1)


def step_diagnostics(out: SupervisionOutput, scored: torch.Tensor, label: torch.Tensor, w: float = 1.0):
    """(sum of margins at ``w``, number of changed predictions, number of scored cells, sum of improvements
    CE(0) - CE(1)) of one step over a batch; ``scored`` is the core's scored cells (bool ``[B, L]``: the cells to
    decide; for ARC not the PAD cells of the input or of the label)."""
    blank = scored
    reference, conditional = out.reference_logits.float(), out.logits.float()
    margin = advantage_margin(reference, conditional, label, w)
    improvement = (guided_cross_entropy(reference, conditional, label, 0.0)
                   - guided_cross_entropy(reference, conditional, label, 1.0))
    changed = out.logits.argmax(-1) != out.reference_logits.argmax(-1)
    return (float(margin[blank].sum()), int((changed & blank).sum()), int(blank.sum()),
            float(improvement[blank].sum()))


def diagnose(run, n: int = 1000, w: float = 1.0, device="cpu", puzzles=None, precision: str | None = None,
             compile: str = "off") -> dict:
    """Per supervision step on held-out puzzles: accuracy, mean advantage margin, changed fraction, dead flag
    (what ``evaluate_run(..., diagnostics=True)["diagnostics"]`` holds)."""
    model, task, train_config, precision, inputs, labels = prepare_run(run, n, puzzles, device, precision, compile)
    report = diagnose_model(model, task, inputs, labels, w, device, precision=precision)
    del report["summary"]
    return report | {"run": str(run), "method": train_config.get("method", "trm")}


def diagnose_model(model, task, inputs, labels, w: float = 1.0, device="cpu", precision: str = "fp32") -> dict:
    """The dead-compute report of ``model`` on ``inputs`` (with their ``labels``: the margin is measured at the
    solution token), and under ``summary`` the rollout's :func:`~agents.eval.metrics.summarize`."""
    if labels is None:
        raise ValueError("diagnostics need labels (the margin is measured at the solution token)")
    N_sup = model.cfg.N_sup
    sums = np.zeros((N_sup, 4))

    def on_step(s: int, sl, out: SupervisionOutput, runner: RecursionRunner) -> None:
        sums[s] += step_diagnostics(out, runner.core.scored, runner.core.label, w)

    metrics = rollout_metrics(model, task, inputs, labels, device=device, on_step=on_step, precision=precision)
    k = metrics["nfe_per_step"]
    steps = []
    for s in range(N_sup):
        margin = sums[s, 0] / max(sums[s, 2], 1)
        changed = sums[s, 1] / max(sums[s, 2], 1)
        improvement = sums[s, 3] / max(sums[s, 2], 1)
        cell = float(metrics["cell_accuracy"][s].mean())
        cell_gain = cell - (float(metrics["cell_accuracy"][s - 1].mean()) if s else 0.0)  # blanks start wrong
        steps.append({"supervision_step": s + 1, "nfe": (s + 1) * k,
                      "exact_accuracy": float(metrics["solved"][s].mean()), "cell_accuracy": cell,
                      "advantage_margin": float(margin), "improvement": float(improvement),
                      "cell_accuracy_gain": cell_gain, "changed_fraction": float(changed),
                      "dead": bool(sums[s, 1] == 0 or (improvement <= 0 and cell_gain <= 0))})
    summary = summarize(metrics)
    return {"method": "model", "task": task.name, "task_kwargs": task.kwargs, "n_puzzles": len(inputs), "w": w,
            "steps": steps, "halting": summary["halting"], "summary": summary,
            "dead_steps": [r["supervision_step"] for r in steps if r["dead"]],
            "dead_nfe": sum(k for r in steps if r["dead"])}


def summary_text(report: dict) -> str:
    lines = [f"{report['method']} on {report['task']} {report['task_kwargs']}, {report['n_puzzles']} held-out puzzles",
             f"{'step':>5}{'NFE':>6}{'exact':>8}{'cell':>8}{'improve':>10}{'margin':>10}{'changed':>9}  dead"]
    for r in report["steps"]:
        lines.append(f"{r['supervision_step']:>5}{r['nfe']:>6}{r['exact_accuracy']:>8.3f}{r['cell_accuracy']:>8.3f}"
                     f"{r['improvement']:>10.4f}{r['advantage_margin']:>10.4f}{r['changed_fraction']:>9.3f}  "
                     f"{'DEAD' if r['dead'] else ''}")
    lines.append("improve: drop in cross-entropy from the step's reference to its prediction; margin: its slope "
                 "at w (<= 0 for a step that overshoots); dead: no change, or neither improve > 0 nor cells gained")
    total = report["steps"][-1]["nfe"]
    lines.append(f"dead steps: {report['dead_steps'] or 'none'} ({report['dead_nfe']} of {total} forward passes)")
    return "\n".join(lines)


#: the files :func:`save_plots` writes into its folder
PLOT_FILES = ("accuracy_vs_nfe.png", "margin_per_step.png")


def save_plots(report: dict, folder) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    steps = report["steps"]
    nfe = [r["nfe"] for r in steps]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(nfe, [r["exact_accuracy"] for r in steps], "o-", label="exact")
    ax.plot(nfe, [r["cell_accuracy"] for r in steps], "s--", label="blank cells")
    for r in steps:
        if r["dead"]:
            ax.axvline(r["nfe"], color="red", alpha=0.15)
    ax.set(xlabel="forward passes (NFE)", ylabel="accuracy", xscale="log", ylim=(0, 1.02),
           title=f"{report['method']}: accuracy vs NFE (red: dead steps)")
    ax.set_xticks(nfe, [str(v) for v in nfe])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    paths = [folder / PLOT_FILES[0]]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    s = [r["supervision_step"] for r in steps]
    ax.bar(s, [r["improvement"] for r in steps], color=["red" if r["dead"] else "tab:blue" for r in steps],
           label="improvement (CE drop)")
    ax.plot(s, [r["advantage_margin"] for r in steps], "k.", label="margin at w")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="supervision step", ylabel="per blank cell", title="improvement and margin per step (red: dead)")
    ax.legend()
    fig.tight_layout()
    paths.append(folder / PLOT_FILES[1])
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write_report(report: dict, json_path=None, plots=None) -> list[Path]:
    written = []
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2))
        written.append(Path(json_path))
    if plots:
        written += save_plots(report, plots)
    return written
