"""Steps per second of the recursion MDP with a trivial agent: raw core vs its adapters.

    python benchmarks/env_throughput.py --out runs/bench/env_throughput.json

Sudoku 9x9 (L=81), D=64. The trivial agent hands back the current latent and answer and never halts, so the
figures are the environment's own cost. Puzzles come from a pre-generated pool, so resets measure the env,
not the generator. Goals (MDP issue): adapters add <= 10% over the raw core at B=256; a single Gymnasium
``step`` <= 100 us.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import recursion_env  # noqa: F401  (registers the ids)
from recursion_env import RecursionCore, make_task, save_dataset
from recursion_env.torchrl_env import RecursionTorchRLEnv


def _timed(fn, n: int, warmup: int, rounds: int = 5) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``n`` calls (the machine is shared and noisy)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # queued GPU work belongs to the timed steps
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def bench_core(task, pool, B, D, n, device="cpu"):
    core = RecursionCore(task, B, dataset=pool, latent_dim=D, max_steps=10**9, seed=0, device=device)
    core.reset()
    halt = torch.zeros(B, dtype=torch.int64, device=device)
    return B / _timed(lambda: core.step({"latent": core.latent, "answer": core.answer, "halt": halt}), n, 20)


def bench_core_recorded(task, pool, B, D, n, device="cpu", frames_per_step=50):
    """The raw core plus what a collector must store: each frame's observation and next observation written into
    a preallocated [B, T] batch (the latent twice per frame). The reference the collector can be held to."""
    core = RecursionCore(task, B, dataset=pool, latent_dim=D, max_steps=10**9, seed=0, device=device)
    core.reset()
    halt = torch.zeros(B, dtype=torch.int64, device=device)
    T = frames_per_step
    buf = {k: torch.empty(B, T, *v.shape[1:], dtype=v.dtype, device=device) for k, v in core.observation().items()}
    nxt = {k: torch.empty_like(v) for k, v in buf.items()}

    def batch():
        for t in range(T):
            for k, v in core.observation().items():
                buf[k][:, t] = v
            core.step({"latent": core.latent, "answer": core.answer, "halt": halt})
            for k, v in core.observation().items():
                nxt[k][:, t] = v

    return B * T / _timed(batch, max(1, n // T), 1)


def bench_torchrl_step(task, pool, B, D, n, device="cpu"):
    """The adapter alone: ``env.step`` in a loop, no policy module, nothing stored."""
    env = RecursionTorchRLEnv(task, num_envs=B, dataset=pool, latent_dim=D, max_steps=10**9, seed=0, device=device)
    td = env.reset()
    td["action"] = {"latent": td["latent"], "answer": td["answer"],
                    "halt": torch.zeros(B, dtype=torch.int64, device=device)}
    return B / _timed(lambda: env.step(td), n, 20)


def bench_torchrl(task, pool, B, D, n, device="cpu"):
    """A collector: policy module, step_mdp, and every frame (latent included) written to the batch."""
    from tensordict.nn import TensorDictModule

    try:
        from torchrl.collectors import SyncDataCollector as Collector
    except ImportError:  # torchrl >= 0.14
        from torchrl.collectors import Collector

    env = RecursionTorchRLEnv(task, num_envs=B, dataset=pool, latent_dim=D, max_steps=10**9, seed=0, device=device)

    class Trivial(torch.nn.Module):
        def forward(self, latent, answer):
            return latent, answer, torch.zeros(answer.shape[:-1], dtype=torch.int64, device=answer.device)

    policy = TensorDictModule(Trivial(), in_keys=["latent", "answer"],
                              out_keys=[("action", "latent"), ("action", "answer"), ("action", "halt")])
    frames = B * 50
    # return_same_td: hand back the rollout buffer instead of a ~1 GB clone of it each batch
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=frames * 8,
                          return_same_td=True)
    it = iter(collector)
    next(it)  # warm-up batch
    best = 0.0
    for batch in it:  # best batch, as for the other paths
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        best = max(best, batch.numel() / (time.perf_counter() - t0))
    collector.shutdown()
    return best


def bench_make_vec(pool_path, B, D, n, copy=True):
    env = gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=B, dataset=pool_path, latent_dim=D, max_steps=10**9,
                       copy=copy)
    obs, _ = env.reset(seed=0)
    action = {"latent": obs["latent"], "answer": obs["answer"], "halt": np.zeros(B, dtype=np.int64)}
    return B / _timed(lambda: env.step(action), n, 20)


def bench_single(pool_path, D, n):
    env = gym.make("TRMRecursion-Sudoku-v0", dataset=pool_path, latent_dim=D, max_steps=10**9)
    obs, _ = env.reset(seed=0)
    action = {"latent": obs["latent"], "answer": obs["answer"], "halt": 0}
    return _timed(lambda: env.step(action), n, 200)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/env_throughput.json")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="batched steps timed per measurement")
    p.add_argument("--single-steps", type=int, default=5000)
    p.add_argument("--device", default="cpu", help="cpu or cuda: the core and the TorchRL paths (Gymnasium is CPU)")
    args = p.parse_args(argv)
    task = make_task("sudoku", size=9)
    pool = task.generate(512, seed=0)
    B, D = args.batch, args.latent_dim
    with tempfile.TemporaryDirectory() as tmp:
        pool_path = str(save_dataset(Path(tmp) / "pool.npz", task, pool))
        core = bench_core(task, pool, B, D, args.steps, args.device)
        core_recorded = bench_core_recorded(task, pool, B, D, args.steps, args.device)
        torchrl_step = bench_torchrl_step(task, pool, B, D, args.steps, args.device)
        torchrl = bench_torchrl(task, pool, B, D, args.steps, args.device)
        vec = bench_make_vec(pool_path, B, D, args.steps)
        vec_nocopy = bench_make_vec(pool_path, B, D, args.steps, copy=False)
        single_s = bench_single(pool_path, D, args.single_steps)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "gymnasium": gym.__version__},
        "config": {"task": "sudoku9", "L": 81, "latent_dim": D, "batch": B, "device": args.device},
        "steps_per_s": {"core": core, "core_recorded": core_recorded, "torchrl_env_step": torchrl_step,
                        "torchrl_collector": torchrl,
                        "make_vec": vec, "make_vec_copy_false": vec_nocopy, "single_gym": 1 / single_s},
        "overhead_vs_core": {"torchrl_env_step": core / torchrl_step - 1, "torchrl_collector": core / torchrl - 1,
                             "make_vec": core / vec - 1, "make_vec_copy_false": core / vec_nocopy - 1,
                             "core_recorded": core / core_recorded - 1},
        # the collector against the core doing the same storing: the collector's own cost beyond its frame buffer
        "collector_overhead_vs_core_recorded": core_recorded / torchrl - 1,
        "latent_bytes_per_step": B * 2 * 81 * D * 4,
        "single_gym_step_us": single_s * 1e6,
    }
    result["goals"] = {f"{k}_overhead<=10%": v <= 0.10 for k, v in result["overhead_vs_core"].items()
                       if k != "core_recorded"}
    result["goals"] |= {
                       "single_gym_step<=100us": result["single_gym_step_us"] <= 100}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'path':<28}{'steps/s':>12}{'overhead vs core':>20}")
    for k, v in result["steps_per_s"].items():
        ov = result["overhead_vs_core"].get(k)
        print(f"{k:<28}{v:>12.0f}{'' if ov is None else f'{100 * ov:+19.1f}%'}")
    print(f"collector vs core + the same storing: {100 * result['collector_overhead_vs_core_recorded']:+.1f}%")
    print(f"single Gymnasium step: {result['single_gym_step_us']:.1f} us\ngoals: {result['goals']}\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
