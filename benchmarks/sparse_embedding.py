"""The identifier embedding's cost does not grow with its table: one DIS-sized training step (forward, backward,
Adam-atan2 and the sparse sign-SGD) of the same network with 1,000 and with 1,000,000 identifiers (ARC's official
data has ~800,000), each batch row a random identifier. Reports seconds per step (best of ``--steps``), the
largest gradient tensor and whether any gradient is table-sized (none should be: the table is a buffer, and only
the batch's rows carry a gradient).

    python benchmarks/sparse_embedding.py --out runs/bench/sparse_embedding.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from agents.model.precision import machine
from agents.model.trm import TRM, TRMConfig


def measure(num_ids: int, hidden: int, batch: int, steps: int, seq_len: int = 36, vocab: int = 7) -> dict:
    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=seq_len, vocab_size=vocab, hidden=hidden, T=1, n=2, num_puzzle_ids=num_ids)).train()
    optimizers = model.configure_optimizers(1e-3, 0.1, puzzle_emb_lr=1e-2)
    puzzle = torch.randint(0, vocab, (batch, seq_len))
    best, largest, table_sized = float("inf"), 0, False
    for _ in range(steps + 1):  # (the first is a warm-up)
        ids = torch.randint(0, num_ids, (batch,))
        t0 = time.perf_counter()
        out = model.supervision_step(model.embed(puzzle, puzzle_id=ids), *model.initial_state(batch))
        loss = out.logits.float().logsumexp(-1).mean()
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grads.append(model.puzzle_embedding.local[1].grad)
        largest = max(largest, *(g.numel() for g in grads))
        table_sized = table_sized or any(g.shape[0] == num_ids for g in grads if g.ndim)
        for o in optimizers:
            o.step()
        best = min(best, time.perf_counter() - t0)
    return {"identifiers": num_ids, "table_mib": round(model.puzzle_embedding.weight.numel() * 4 / 2**20, 1),
            "seconds_per_step": round(best, 4), "largest_gradient_elements": largest,
            "table_sized_gradient": table_sized}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identifiers", default="1000,1000000")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(int(n), args.hidden, args.batch, args.steps) for n in args.identifiers.split(",")]
    for row in rows:
        print(json.dumps(row), flush=True)
    ratio = rows[-1]["seconds_per_step"] / rows[0]["seconds_per_step"]
    result = {"machine": machine(),
              "torch": torch.__version__, "threads": args.threads, "measured": time.strftime("%Y-%m-%d %H:%M"),
              "hidden": args.hidden, "batch": args.batch, "rows": rows,
              "step_time_ratio_largest_to_smallest_table": round(ratio, 3)}
    print(f"step time, largest table / smallest: {ratio:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
