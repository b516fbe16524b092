"""ARC's evaluation as the paper reports it (the official ``evaluators/arc.py``, in our own code): every variant
(augmentation) of a held-out test input is predicted, each prediction is read off its canvas and mapped back
through its variant's inverse augmentation, and the variants vote. Candidates rank by their number of votes,
ties by their mean halting confidence (sigmoid of the halting logit); pass@k counts a test input as solved when
its true output is among the k best. A task scores the fraction of its test inputs solved; the overall score is
the mean over tasks.
"""

from __future__ import annotations

import numpy as np
import torch

from recursion_env.tasks.arc import ARCTask, Pair, crop, grid_key


def vote(task: ARCTask, rows: list[tuple[Pair, int]], predictions: np.ndarray, confidence: np.ndarray,
         ks: tuple[int, ...] = (1, 2)) -> dict:
    """``rows`` and the batch come from :meth:`ARCTask.evaluation_examples`; ``predictions`` are the answers'
    tokens ``[n, 900]`` in that order, ``confidence`` their halting probabilities ``[n]``. Returns pass@k overall
    and per task, and each test input's ranked candidates (votes, mean confidence, correct)."""
    ballots: dict[tuple[str, int], dict[bytes, list]] = {}
    truth: dict[tuple[str, int], bytes] = {}
    for (pair, identifier), tokens, q in zip(rows, np.asarray(predictions), np.asarray(confidence, dtype=float)):
        _, augmentation = task.variants[identifier - 1]
        grid = augmentation.invert(crop(tokens))
        key = (pair.task_id, pair.index)
        truth[key] = grid_key(pair.output)
        entry = ballots.setdefault(key, {}).setdefault(grid_key(grid), [0, 0.0])
        entry[0] += 1
        entry[1] += float(q)
    per_task: dict[str, dict[int, list[float]]] = {}
    inputs = []
    for key, candidates in ballots.items():
        ranked = sorted(((votes, total / votes, g) for g, (votes, total) in candidates.items()),
                        key=lambda c: (c[0], c[1]), reverse=True)
        hits = {k: float(any(g == truth[key] for _, _, g in ranked[:k])) for k in ks}
        for k, hit in hits.items():
            per_task.setdefault(key[0], {}).setdefault(k, []).append(hit)
        top = [{"votes": v, "confidence": c, "correct": g == truth[key]} for v, c, g in ranked[:max(ks)]]
        inputs.append({"task": key[0], "test_index": key[1], "candidates": len(ranked), "top": top,
                       **{f"pass@{k}": hits[k] for k in ks}})
    tasks = {t: {f"pass@{k}": float(np.mean(v)) for k, v in scores.items()} for t, scores in per_task.items()}
    return {**{f"pass@{k}": float(np.mean([s[f"pass@{k}"] for s in tasks.values()])) if tasks else 0.0 for k in ks},
            "tasks": len(tasks), "test_inputs": len(inputs), "predictions": len(rows), "per_task": tasks,
            "per_input": inputs}


def self_check(task: ARCTask) -> dict:
    """The pipeline fed the true outputs of every variant as its predictions (all confidence 1): after inverting
    every augmentation each vote is the true output, so pass@1 must be 1."""
    batch, rows = task.evaluation_examples()
    return vote(task, rows, batch.labels, np.ones(len(rows)))


def evaluate_arc(model, task: ARCTask, n_tasks: int | None = None, device="cpu", batch_size: int = 64) -> dict:
    """The voting evaluation of a trained network on ``task``'s held-out split: every variant of every test input
    of the first ``n_tasks`` evaluation tasks (all by default), run for N_sup supervision steps; pass@1/pass@2
    after each step (accuracy vs NFE) and, at the last step, per task; ``exact_accuracy`` is the unvoted fraction
    of variants answered exactly."""
    from .evaluation import rollout_metrics

    test = task.held_out()
    batch, rows = test.evaluation_examples()
    if n_tasks is not None:
        kept = list(dict.fromkeys(p.task_id for p, _ in rows))[:n_tasks]
        keep = np.array([p.task_id in set(kept) for p, _ in rows], dtype=bool)
        batch, rows = batch[np.flatnonzero(keep)], [r for r, k in zip(rows, keep) if k]
    N_sup, n = model.cfg.N_sup, len(rows)
    answers = np.zeros((N_sup, n, test.seq_len), dtype=np.uint8)
    confidence = np.zeros((N_sup, n))

    def record(s, sl, out, runner):
        answers[s, sl] = runner.core.answer.cpu().numpy()
        confidence[s, sl] = torch.sigmoid(out.halt_logit.double()).cpu().numpy()

    metrics = rollout_metrics(model, test, batch.inputs, batch.labels, batch_size=batch_size, device=device,
                              on_step=record, puzzle_ids=batch.meta["puzzle_identifiers"])
    k = metrics["nfe_per_step"]
    by_step = []
    for s in range(N_sup):
        voted = vote(test, rows, answers[s], confidence[s])
        by_step.append({"supervision_step": s + 1, "nfe": (s + 1) * k, "pass@1": voted["pass@1"],
                        "pass@2": voted["pass@2"], "exact_accuracy": float(metrics["solved"][s].mean()),
                        "cell_accuracy": float(metrics["cell_accuracy"][s].mean())})
    final = vote(test, rows, answers[-1], confidence[-1])
    return {"task": "arc", "version": test.version, "num_aug": test.num_aug, "tasks": final["tasks"],
            "test_inputs": final["test_inputs"], "predictions": n, "pass@1": final["pass@1"],
            "pass@2": final["pass@2"], "by_step": by_step, "per_task": final["per_task"],
            "per_input": final["per_input"]}
