"""Loading trained runs and evaluating them: accuracy after every supervision-step prefix, with halting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recursion_env.tasks import Task, load_puzzles, make_task

from .checkpoint import load_checkpoint
from .rollout import rollout_metrics, summarize
from .trm import TRM, TRMConfig


def load_trained(run, device="cpu", weights: str = "ema") -> tuple[TRM, Task, dict]:
    """(model with the EMA weights, task, train config dict) from a run folder or checkpoint file."""
    state = load_checkpoint(run, map_location=device)
    missing = [k for k in ("model_config", weights, "task", "task_kwargs", "train_config") if k not in state]
    if missing or not isinstance(state["model_config"], dict):
        raise ValueError(f"{run}: not a recursion-env run (its checkpoint lacks {', '.join(missing) or 'a config'})")
    if "puzzle_emb_ndim" not in state["model_config"]:
        raise ValueError(f"{run}: written by an older recursion-env whose network was not the official TRM "
                         "(norm axis, SwiGLU widths, puzzle slots); it cannot be loaded into this one: retrain it")
    try:
        model = TRM(TRMConfig(**state["model_config"])).to(device)
        model.load_state_dict(state[weights])
        task = make_task(state["task"], **state["task_kwargs"])
    except (TypeError, RuntimeError) as e:  # unknown config fields; missing, unexpected or mis-shaped weights
        raise ValueError(f"{run}: checkpoint does not fit its own config ({str(e).strip()[:500]})") from None
    return model.eval(), task, state["train_config"]


def evaluation_set(task: Task, train_config: dict, n: int, puzzles=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out puzzles a run was trained without: the first ``n`` of those ``task.generate(eval_n,
    eval_seed)`` gives for the run's task (training excluded exactly these), or a user's file.
    Labels of a user file: solved for Sudoku, canonical for Maze, none for N-Queens (the verifier judges)."""
    if puzzles is not None:
        _, batch = load_puzzles(puzzles, task)
        labels_known = batch.meta.get("labels_known", True) is not False
        return batch.inputs[:n], (batch.labels[:n] if labels_known else None)
    held_out = train_config.get("eval_n")
    if held_out is not None and n > held_out:  # the generator is prefix-stable: the first eval_n were held out
        raise ValueError(f"this run held out {held_out} puzzles (--eval-n when it was trained); evaluate at most "
                         f"that many (--n {held_out}) or pass your own --puzzles")
    batch = task.generate(n, seed=train_config.get("eval_seed", 1_000_003))
    return batch.inputs, batch.labels


def evaluate_run(run, n: int = 1000, puzzles=None, halting: bool = False, guidance=None, device="cpu",
                 batch_size: int = 256) -> dict:
    """The ``recursion-env eval`` JSON: method, task, n_puzzles, by_step, and halting / guidance on request."""
    model, task, train_config = load_trained(run, device)
    inputs, labels = evaluation_set(task, train_config, n, puzzles)
    metrics = rollout_metrics(model, task, inputs, labels, batch_size=batch_size, device=device)
    summary = summarize(metrics)
    result = {"method": train_config.get("method", "trm"), "task": task.name, "task_kwargs": task.kwargs,
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
            g = summary if w == 1.0 else summarize(rollout_metrics(model, task, inputs, labels,
                                                                   batch_size=batch_size, device=device, guidance=w))
            if labels is None:  # no label, no cell accuracy (as for the plain rows above)
                for row in g["by_step"]:
                    row["cell_accuracy"] = None
            last = g["by_step"][-1]
            rows.append({"w": w, "exact_accuracy": last["exact_accuracy"], "cell_accuracy": last["cell_accuracy"],
                         "by_step": g["by_step"]})
        result["guidance"] = rows
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
