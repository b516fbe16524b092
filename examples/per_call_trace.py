"""The per-call MDP: a trained TRM acting one call of its shared network f per ``env.step``.

    python examples/per_call_trace.py                  # traces the zoo's trm-sudoku4 (336 calls): 2 s
    python examples/per_call_trace.py --run runs/trm6  # or a Sudoku run you trained
    python examples/per_call_trace.py --train          # or a small TRM it trains on 4x4 Sudoku first

Each transition is one forward pass (``nfe_per_step=1``): within a supervision step z is updated n times
(z = f(z, x + y)) and then y once (y = f(y, z)), T times over; the answer is decoded after the step's last y
update. So the compute cost ``nfe_cost`` is charged at every call, and the score gain arrives at the calls that
decode an answer: the trace shows where the forward passes pay off and where they are dead compute.
"""

import argparse

import gymnasium as gym
import numpy as np
import torch

import recursion_env  # noqa: F401  (registers TRMRecursion-*-v0)
from agents.eval.evaluation import load_trained
from agents.model.rollout import TRMPolicy
from agents.trainers import DeepSupervisionConfig, train


def main(run: str | None = None, out: str = "runs/per_call", seed: int = 0, nfe_cost: float = 0.001,
         steps: int = 200) -> list[dict]:
    if run is None:  # the example's own folder, replaced on every run of it
        cfg = DeepSupervisionConfig(task_kwargs={"size": 4}, model={"hidden": 32, "T": 2, "n": 2, "N_sup": 3},
                                    batch_size=64, steps=steps, warmup_steps=20, eval_n=64, final_eval=False,
                                    progress=False, out=out)
        train(cfg, overwrite=True)
        run = out
    model, task, _ = load_trained(run)
    if task.name != "sudoku":
        raise ValueError(f"{run}: a {task.name} run; this example traces Sudoku runs")
    cfg = model.cfg
    per_sup = cfg.nfe_per_supervision_step
    policy = TRMPolicy(model, granularity="call", use_halting=False)
    env = gym.make("TRMRecursion-Sudoku-v0", **task.kwargs, latent_dim=cfg.hidden, latent_len=cfg.latent_len,
                   nfe_per_step=1, max_steps=cfg.N_sup * per_sup, nfe_cost=nfe_cost, render_mode="ansi")
    obs, info = env.reset(seed=seed)
    # the network's own initial (y, z) instead of the env's zero latent
    obs, info = env.reset(seed=seed, options={"puzzle": obs["puzzle"], "label": env.unwrapped.core.label[0].numpy(),
                                              "latent": policy.initial_latent(torch.as_tensor(obs["puzzle"])[None])
                                              .numpy()[0]})
    print(env.render())
    print(f"{'call':>4}  {'update':<9} {'reward':>8}  {'cell acc':>8}  solved")
    trace, done = [], False
    while not done:
        call = int(obs["step"][0])
        c = call % per_sup
        update = "z" if c % (cfg.n + 1) < cfg.n else "y"
        decoded = c == per_sup - 1
        batched = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
        action = {k: v[0].numpy() for k, v in policy.act(batched).items()}
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        trace.append({"nfe": info["nfe"], "update": update, "decoded": decoded, "reward": float(reward),
                      "cell_accuracy": info["cell_accuracy"], "solved": info["solved"]})
        mark = f"{update} + read" if decoded else update
        print(f"{info['nfe']:>4}  {mark:<9} {reward:>+8.4f}  {info['cell_accuracy']:>8.3f}  {info['solved']}")
    print(env.render())
    gains = [t["reward"] + nfe_cost for t in trace]
    print(f"{len(trace)} calls, return {sum(t['reward'] for t in trace):+.3f}; the score moved at "
          f"{int(np.count_nonzero(np.abs(gains) > 1e-9))} of them (every one a decoding call)")
    return trace


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="zoo:trm-sudoku4", help="a trained Sudoku run or zoo entry (default: "
                   "zoo:trm-sudoku4)")
    p.add_argument("--train", action="store_true", help="train a small TRM first and trace it instead")
    p.add_argument("--nfe-cost", type=float, default=0.001, help="compute cost per forward pass")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    main(None if a.train else a.run, nfe_cost=a.nfe_cost, seed=a.seed)
