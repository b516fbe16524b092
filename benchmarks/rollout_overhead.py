"""Cost of driving the TRM through the MDP core versus a direct training loop.

    python benchmarks/rollout_overhead.py --out runs/bench/rollout_overhead.json

Both loops do the same work per optimizer step: one supervision step (T-1 no-grad recursions + one with
gradients), the deep-supervision loss, backward, AdamW. The core path is the trainers' (``RecursionRunner``:
state, rewards, accounting and partial resets in the core); the direct path keeps (y, z) in local variables,
as a hand-written loop would. Goal (TRM issue): the core adds <= 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from agents.model.rollout import RecursionRunner
from agents.model.trm import TRM
from agents.trainers import config_from_dict
from agents.trainers.loop import token_loss
from recursion_env import make_task


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/rollout_overhead.json")
    p.add_argument("--size", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", type=int, default=3)
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    task = make_task("sudoku", size=args.size)
    cfg = config_from_dict(dict(hidden=args.hidden, T=args.T, n=args.n, N_sup=16, batch_size=args.batch))
    torch.manual_seed(0)
    model = TRM(cfg.model_config(task))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = task.generate(args.batch, seed=0)
    puzzles, labels = torch.from_numpy(batch.inputs), torch.from_numpy(batch.labels)

    def optimize(out, target):
        loss = token_loss(cfg, out.logits, target).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def through_core(n_steps):
        runner = RecursionRunner(model, task, args.batch, max_steps=10**9)
        runner.start(puzzles, labels)
        for _ in range(n_steps):
            out = runner.forward()
            optimize(out, runner.core.label)
            runner.commit(out)

    def direct(n_steps):
        x_tokens = puzzles
        y, z = model.initial_state(args.batch)
        for _ in range(n_steps):
            out = model.supervision_step(model.embed(x_tokens), y, z)
            optimize(out, labels)
            y, z = out.y.detach(), out.z.detach()

    times = {"core": [], "direct": []}
    direct(3)
    through_core(3)
    for _ in range(args.rounds):  # interleaved, best of rounds: the machine is shared
        for name, fn in (("direct", direct), ("core", through_core)):
            t0 = time.perf_counter()
            fn(args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "config": vars(args),
        "seconds_per_optimizer_step": best,
        "all_rounds": times,
        "core_overhead": best["core"] / best["direct"] - 1,
    }
    result["goal_core_overhead<=10%"] = result["core_overhead"] <= 0.10
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"direct loop: {1000 * best['direct']:.1f} ms/step   through the core: {1000 * best['core']:.1f} ms/step   "
          f"overhead {100 * result['core_overhead']:+.1f}%\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
