"""Our training step against the official TinyRecursiveModels network on the same machine, widths and batch.

The official side is its ``ACTLossHead`` (the TRM with its ACT carry, stable-max loss and Q-halting loss) forward
and backward, in its shipped ``forward_dtype`` (bfloat16) or in float32, mlp_t as its Sudoku recipe
(``arch.mlp_t=True arch.pos_encodings=none``), eager, best of ``--rounds`` after a warm-up step; its optimizers
are CUDA-only and are not run, so its figure is a lower bound of its step. Our side is ``train``'s whole optimizer
step (forward, loss, backward, Adam-atan2, sign-SGD, EMA, halting and the MDP transition) from
``benchmarks/step_cost.py``, in the variants asked for (``auto:on``: what a long run picks).

The official code is not shipped with or downloaded by this project: pass a checkout you have (``--official
PATH``; it needs ``pydantic`` and ``einops``: ``pip install pydantic einops``).

    python benchmarks/official_step.py --official ../TinyRecursiveModels --settings 6:64:64
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch
from step_cost import time_steps  # (beside this file: python puts the script's folder on the path)

from agents.model.precision import machine


def official_step_seconds(official: Path, size: int, hidden: int, batch: int, dtype: str, rounds: int) -> float:
    """Seconds of one official ACTLossHead forward + backward (a TRM supervision step: T=3, n=6)."""
    sys.path.insert(0, str(official))
    try:
        trm = importlib.import_module("models.recursive_reasoning.trm")
        losses = importlib.import_module("models.losses")
    finally:
        sys.path.remove(str(official))
    seq_len = size * size
    model = trm.TinyRecursiveReasoningModel_ACTV1(dict(
        batch_size=batch, seq_len=seq_len, puzzle_emb_ndim=hidden, num_puzzle_identifiers=1, vocab_size=size + 1,
        H_cycles=3, L_cycles=6, H_layers=0, L_layers=2, hidden_size=hidden, expansion=4, num_heads=8,
        pos_encodings="none", halt_max_steps=16, halt_exploration_prob=0.1, forward_dtype=dtype, mlp_t=True,
        puzzle_emb_len=16, no_ACT_continue=True))
    head = losses.ACTLossHead(model, "stablemax_cross_entropy").train()
    g = torch.Generator().manual_seed(0)
    data = {"inputs": torch.randint(0, size + 1, (batch, seq_len), generator=g),
            "labels": torch.randint(1, size + 1, (batch, seq_len), generator=g),
            "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32)}
    carry = head.initial_carry(data)
    best = float("inf")
    for _ in range(rounds + 1):  # (the first is a warm-up)
        t0 = time.perf_counter()
        carry, loss, *_ = head(return_keys=[], carry=carry, batch=data)
        loss.backward()
        best = min(best, time.perf_counter() - t0)
        head.zero_grad(set_to_none=True)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="a checkout of SamsungSAILMontreal/TinyRecursiveModels")
    p.add_argument("--settings", default="6:64:64", help="comma-separated SIZE:HIDDEN:BATCH")
    p.add_argument("--variants", default="fp32:off,auto:off,auto:on", help="ours: PRECISION:COMPILE, comma-separated")
    p.add_argument("--steps", type=int, default=10, help="our steps timed (step_cost.py)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    official = Path(args.official)
    if not (official / "models" / "recursive_reasoning" / "trm.py").is_file():
        raise SystemExit(f"--official {official}: not a TinyRecursiveModels checkout (no models/recursive_reasoning/"
                         "trm.py)")
    where = machine()
    print(f"{where}, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    rows = []
    for setting in args.settings.split(","):
        size, hidden, batch = (int(v) for v in setting.split(":"))
        row = {"sudoku_size": size, "hidden": hidden, "batch": batch}
        for dtype in ("bfloat16", "float32"):
            row[f"official_{dtype}_s"] = round(official_step_seconds(official, size, hidden, batch, dtype,
                                                                     args.rounds), 4)
        for variant in args.variants.split(","):
            precision, compile_mode = variant.split(":")
            seconds = min(time_steps("trm", size, hidden, batch, args.steps, "cpu", precision, compile_mode)[0]
                          for _ in range(max(1, args.rounds - 1)))
            row[f"ours_{precision}_{compile_mode}_s"] = round(seconds, 4)
            row[f"ours_{precision}_{compile_mode}_vs_official_bfloat16"] = round(row["official_bfloat16_s"] / seconds,
                                                                                  2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": where, "torch": torch.__version__, "threads": args.threads,
              "measured": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
