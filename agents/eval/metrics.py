"""What a rollout of a trained network measures: accuracy after every supervision-step prefix, halting, and the
held-out puzzles of a run. :mod:`agents.eval.evaluation` (a run's ``eval`` JSON) and :mod:`agents.eval.diagnostics` (its
dead-compute report) both build on it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recursion_env.tasks import PuzzleBatch, Task, load_puzzles

from ..model.precision import autocast, resolve_compile, resolve_precision
from ..model.rollout import RecursionRunner
from ..model.trm import TRM
from ..runs import load_trained


@torch.no_grad()
def rollout_metrics(model: TRM, task: Task, inputs: np.ndarray, labels: np.ndarray | None = None,
                    batch_size: int = 256, device="cpu", guidance: float = 1.0,
                    on_step: Callable | None = None, puzzle_ids: np.ndarray | None = None,
                    precision: str = "fp32") -> dict:
    """Run every puzzle for ``N_sup`` supervision steps through the core (no halting) and record, per step,
    ``solved`` (the rule verifier), blank-cell accuracy, and whether the halting head says stop.

    Returns arrays ``solved [N_sup, N]``, ``cell_accuracy [N_sup, N]``, ``halt_logit [N_sup, N]`` and
    ``nfe_per_step``; with labels also ``label_match [N_sup, N]``: the answer equals the stored solution (the
    official metric; it differs from ``solved`` where a puzzle has several valid completions, as N-Queens).
    Halting at evaluation is read off these (see :func:`summarize`): an example halts at the first step its
    halting policy says stop (or the last), with that step's answer, and spends
    (step + 1) * nfe_per_step forward passes; later steps cannot change an earlier step's answer.
    The network runs in ``precision`` (``bf16`` or ``fp32``); each batch's records are read back once, at its end.
    """
    model.eval()
    N_sup = model.cfg.N_sup
    n = len(inputs)
    records = {"solved": [], "cell_accuracy": [], "halt_logit": [], "label_match": []}
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        k = sl.stop - sl.start
        # without labels the verifier scores (a task like N-Queens has no single label to derive)
        runner = RecursionRunner(model, task, k, device, **({"reward_mode": "verifier"} if labels is None else {}))
        runner.start(inputs[sl], None if labels is None else labels[sl],
                     puzzle_ids=None if puzzle_ids is None else puzzle_ids[sl])
        batch = {key: [] for key in records}
        for s in range(N_sup):
            with autocast(precision, device):
                out = runner.forward()
            res = runner.commit(out, w=guidance)
            batch["solved"].append(res.info["solved"])
            batch["cell_accuracy"].append(res.info["cell_accuracy"])
            batch["halt_logit"].append(out.halt_logit.float())
            if labels is not None:
                batch["label_match"].append((runner.core.answer == runner.core.label).all(1))
            if on_step is not None:
                on_step(s, sl, out, runner)
        for key, rows in batch.items():
            if rows:
                records[key].append(torch.stack(rows).cpu().numpy())
    dtypes = {"solved": bool, "cell_accuracy": np.float32, "halt_logit": np.float32, "label_match": bool}
    result = {key: (np.concatenate(parts, 1) if parts else np.zeros((N_sup, 0), dtypes[key])).astype(dtypes[key])
              for key, parts in records.items()}
    if labels is None:
        result["label_match"] = None
    return result | {"nfe_per_step": model.cfg.nfe_per_supervision_step}


def run_precision(train_config: dict, precision: str | None, device) -> str:
    """The precision to evaluate a run in: ``precision`` (``auto``: the machine's choice), or by default the one
    the run was trained in (``load_trained`` puts it in the train config)."""
    return resolve_precision(precision or train_config.get("precision") or "fp32", device)


def _halting(solved, cell, halt, k, match=None) -> dict:
    N_sup, n = solved.shape
    stop = np.where(halt.any(0), halt.argmax(0), N_sup - 1)  # the first step the policy says stop
    cols = np.arange(n)
    row = {"mean_nfe": float(((stop + 1) * k).mean()), "mean_steps": float((stop + 1).mean()),
           "exact_accuracy": float(solved[stop, cols].mean()), "cell_accuracy": float(cell[stop, cols].mean())}
    if match is not None:
        row["label_match"] = float(match[stop, cols].mean())
    return row


def summarize(metrics: dict, steps: list[int] | None = None, halting_seed: int = 0) -> dict:
    """``by_step`` (accuracy after each supervision-step prefix) and halting from :func:`rollout_metrics`.

    ``halting``: the greedy policy, stop where p(halt) > 1/2 (the halting head's logit > 0), as TRM evaluates.
    ``halting_sampled``: the stochastic policy a PPO controller learns, p(halt) = sigmoid(logit) drawn at each
    step (seeded), which can stop early even when no single step's p(halt) exceeds 1/2."""
    solved, cell, logit, k = metrics["solved"], metrics["cell_accuracy"], metrics["halt_logit"], metrics["nfe_per_step"]
    N_sup, n = solved.shape
    steps = steps or list(range(1, N_sup + 1))
    match = metrics.get("label_match")
    by_step = [{"supervision_step": s, "nfe": s * k, "exact_accuracy": float(solved[s - 1].mean()),
                "cell_accuracy": float(cell[s - 1].mean()),
                **({} if match is None else {"label_match": float(match[s - 1].mean())})} for s in steps]
    draws = np.random.default_rng(halting_seed).random(logit.shape)
    return {"n_puzzles": int(n), "by_step": by_step, "halting": _halting(solved, cell, logit > 0, k, match),
            "halting_sampled": _halting(solved, cell, draws < 1 / (1 + np.exp(-logit.astype(np.float64))), k,
                                        match)}


def evaluation_batch(task: Task, train_config: dict, n: int, puzzles=None) -> PuzzleBatch:
    """The held-out puzzles a run was trained without: the first ``n`` of those ``task.generate(eval_n,
    eval_seed)`` gives for the run's task (training excluded exactly these; for ARC, of the held-out split), or a
    user's file. Labels of a user file: solved for Sudoku, canonical for Maze, none for N-Queens (the verifier
    judges: ``meta["labels_known"]`` False)."""
    if puzzles is not None:
        _, batch = load_puzzles(puzzles, task)
        labels_known = batch.meta.get("labels_known", True) is not False
        # (a converted folder's rows are uint8 on disk: read the first n, as tokens)
        return PuzzleBatch(task.name, np.asarray(batch.inputs[:n], dtype=np.int64),
                           np.asarray(batch.labels[:n], dtype=np.int64), {"labels_known": labels_known})
    held_out = train_config.get("eval_n")
    if held_out is not None and n > held_out:  # the generator is prefix-stable: the first eval_n were held out
        raise ValueError(f"this run held out {held_out} puzzles (--eval-n when it was trained); evaluate at most "
                         f"that many (--n {held_out}) or pass your own --puzzles")
    return task.held_out().generate(n, seed=train_config.get("eval_seed", 1_000_003))


def evaluation_set(task: Task, train_config: dict, n: int, puzzles=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, labels or None) of :func:`evaluation_batch`."""
    batch = evaluation_batch(task, train_config, n, puzzles)
    return batch.inputs, (batch.labels if batch.meta.get("labels_known", True) is not False else None)


def prepare_run(run, n: int, puzzles=None, device="cpu", precision: str | None = None, compile: str = "off"):
    """(model, task, train config, precision, inputs, labels) to evaluate ``run`` on its first ``n`` held-out
    puzzles (or ``puzzles``): the network loaded (and compiled where ``compile`` says so), in ``precision``
    (None: the run's own)."""
    model, task, train_config = load_trained(run, device)
    precision = run_precision(train_config, precision, device)
    inputs, labels = evaluation_set(task, train_config, n, puzzles)
    passes = len(inputs) * model.cfg.N_sup * model.cfg.nfe_per_supervision_step
    if resolve_compile(compile, device, forward_passes=passes, precision=precision):
        torch._dynamo.reset()  # (this network's graphs afresh: a process that evaluates many runs stays in the limit)
        model.compile_f()
    return model, task, train_config, precision, inputs, labels
