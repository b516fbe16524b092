"""A trained run's network and task, from a run folder, a checkpoint file or a zoo entry (``zoo:NAME``)."""

from __future__ import annotations

from recursion_env.tasks import Task, make_task

from .checkpoint import load_checkpoint
from .model.precision import trained_precision
from .model.trm import TRM, TRMConfig


def load_trained(run, device="cpu", weights: str = "ema") -> tuple[TRM, Task, dict]:
    """(model with the EMA weights, task, train config dict) from a run folder, a checkpoint file or
    ``zoo:NAME``."""
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
    if task.has_rule_verifier:  # what halt_readout "rules" checks answers against
        model.set_rules(task)
    return model.eval(), task, {**state["train_config"], "precision": trained_precision(state)}
