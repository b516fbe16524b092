"""Evaluating trained runs: the ``recursion-env eval`` JSON (accuracy after every supervision-step prefix, with
halting, guidance and the dead-compute report on request). The measurements themselves are :mod:`agents.eval.metrics`'
(re-exported here)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..runs import load_trained
from .diagnostics import diagnose_model
from .metrics import (
    evaluation_batch,
    evaluation_set,
    prepare_run,
    rollout_metrics,
    run_precision,
    summarize,
)


def evaluate_run(run, n: int = 1000, puzzles=None, halting: bool = False, guidance=None, device="cpu",
                 batch_size: int = 256, diagnostics: bool = False, w: float = 1.0,
                 precision: str | None = None, compile: str = "off") -> dict:
    """The ``recursion-env eval`` JSON: method, task, n_puzzles, by_step, and halting / guidance on request.
    ``diagnostics=True`` adds the dead-compute report (``agents.eval.diagnostics``, its margin taken under guidance
    weight ``w``) from the same rollout. ``precision``: bf16, fp32, auto (the machine's), or None: the run's;
    ``compile``: on, off, or auto (bf16 rollouts of at least ``COMPILE_AUTO_FORWARD_PASSES`` forward passes)."""
    model, task, train_config, precision, inputs, labels = prepare_run(run, n, puzzles, device, precision, compile)
    report = None
    if diagnostics:
        report = diagnose_model(model, task, inputs, labels, w, device, precision=precision)
        summary = report.pop("summary")
        report |= {"run": str(run), "method": train_config.get("method", "trm")}
    else:
        summary = summarize(rollout_metrics(model, task, inputs, labels, batch_size=batch_size, device=device,
                                            precision=precision))
    result = {"method": train_config.get("method", "trm"), "task": task.name, "task_kwargs": task.kwargs,
              "precision": precision,
              "run": str(Path(run)), "n_puzzles": summary["n_puzzles"], "by_step": summary["by_step"],
              "exact_accuracy_judged_by": "rule verifier", "labels_known": labels is not None}
    if labels is None:
        for row in result["by_step"]:
            row["cell_accuracy"] = None
    if halting:
        result["halting"] = summary["halting"]
        result["halting_sampled"] = summary["halting_sampled"]
    if guidance:
        rows = []
        for w in guidance:
            # w = 1 is plain decoding: the rollout above already is that
            g = summary if w == 1.0 else summarize(rollout_metrics(
                model, task, inputs, labels, batch_size=batch_size, device=device, guidance=w, precision=precision))
            if labels is None:  # no label, no cell accuracy (as for the plain rows above)
                for row in g["by_step"]:
                    row["cell_accuracy"] = None
            last = g["by_step"][-1]
            rows.append({"w": w, "exact_accuracy": last["exact_accuracy"], "cell_accuracy": last["cell_accuracy"],
                         "by_step": g["by_step"]})
        result["guidance"] = rows
    if report is not None:
        result["diagnostics"] = report
    return result


def torch_device(name: str | None) -> torch.device:
    """``--device``: cpu, cuda (cuda:N), or auto (cuda when present); anything else, or cuda without CUDA, is a
    ``ValueError`` saying so."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu, cuda and auto are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu "
                         "or auto")
    return device


__all__ = ["evaluate_run", "torch_device", "evaluation_batch", "evaluation_set", "load_trained", "rollout_metrics",
           "run_precision", "summarize"]
