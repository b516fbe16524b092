"""CPU (or GPU) cost of one optimizer step of each supervised method at the CLI's defaults: TRM (T=3, n=6: 21
forward calls a step, 7 with gradient) and DIS (T=1, n=2: 3 calls). Runs ``train`` for a few warm-up steps, then
times ``--steps`` more, best of ``--rounds``; the same script runs on an older checkout for a before/after.

    python benchmarks/step_cost.py --out runs/bench/step_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from agents.trainers import config_from_dict, train

SETTINGS = {"trm": {"T": 3, "n": 6, "N_sup": 16}, "dis": {"T": 1, "n": 2, "N_sup": 6}}


def time_steps(method: str, size: int, hidden: int, batch: int, steps: int, device: str) -> float:
    """Seconds per optimizer step: a run of ``steps`` minus a run of 3 (setup and first steps cancel out)."""
    elapsed = {}
    for k in (3, 3 + steps):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_from_dict(dict(method=method, task_kwargs={"size": size}, hidden=hidden,
                    batch_size=batch, steps=k,
                              out=tmp, progress=False, final_eval=False, eval_n=8, checkpoint_every=10**9,
                              device=device, **SETTINGS[method]))
            elapsed[k] = train(cfg)["wall_clock_s"]
    return (elapsed[3 + steps] - elapsed[3]) / steps


def breakdown(size: int, hidden: int, batch: int, repeats: int = 5) -> dict:
    """Seconds for one TRM supervision step (T=3, n=6), forward and backward, of the official network and of the
    same network without its 16 puzzle slots or without rounding SwiGLU widths up to 256: where the time goes."""
    import agents.trm as trm

    rounded = trm.swiglu_width
    variants = {"official": ({}, rounded), "no puzzle slots": ({"puzzle_emb_len": 0, "puzzle_emb_ndim": 0}, rounded),
                "unrounded SwiGLU widths": ({}, lambda dim, e: round(e * dim * 2 / 3))}
    out = {}
    for name, (kw, width) in variants.items():
        trm.swiglu_width = width
        try:
            torch.manual_seed(0)
            model = trm.TRM(trm.TRMConfig(seq_len=size * size, vocab_size=size + 1, hidden=hidden, **kw))
        finally:
            trm.swiglu_width = rounded
        puzzle = torch.randint(0, size + 1, (batch, size * size))
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            out_step = model.supervision_step(model.embed(puzzle), *model.initial_state(batch))
            out_step.logits.float().square().mean().backward()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 4)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="6,9")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: as the headline bench runs each method)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--breakdown", action="store_true",
                   help="also time one TRM supervision step without the puzzle slots / without SwiGLU rounding")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for method in SETTINGS:
            best = min(time_steps(method, size, args.hidden, args.batch, args.steps, args.device)
                       for _ in range(args.rounds))
            rows.append({"method": method, "sudoku_size": size, "hidden": args.hidden, "batch": args.batch,
                         "seconds_per_step": round(best, 4), "steps_per_second": round(1 / best, 2)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": args.threads, "device": args.device, "measured": time.strftime("%Y-%m-%d %H:%M"),
              "rows": rows}
    if args.breakdown:
        result["trm_supervision_step_s"] = {f"sudoku{size}": breakdown(int(size), args.hidden, args.batch)
                                            for size in args.sizes.split(",")}
        print(json.dumps(result["trm_supervision_step_s"]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
