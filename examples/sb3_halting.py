"""A Stable-Baselines3 halting controller for a trained TRM or DIS run (default: the zoo's anytime DIS, the
halting env's own default network), against the fixed budget and the run's own halting head, on the run's
held-out puzzles.

    python examples/sb3_halting.py      # zoo:dis-anytime-sudoku6: 71 s, 2-core AMD EPYC (AVX512-BF16), shared
    python examples/sb3_halting.py runs/trm6 --timesteps 4096 --nfe-cost 0.01 --eval-n 1000

Stable-Baselines3's PPO runs with its own defaults (20,480 steps: ten of its rollouts); what it learns is in the
README ("Learned halting").

The controller sees the halting env's 6 features (step fraction, answer entropy, changed fraction, max-prob
gain, halting logit, whether the answer obeys the puzzle's rules) and chooses continue/halt; the reward is the
core's: score gain - nfe_cost * NFE + solve bonus. (The 71 s above was measured before the sixth feature.)
"""

import argparse
import json

import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3

import recursion_env  # noqa: F401  (registers TRMHalting-Sudoku-v0)
from agents.eval.evaluation import evaluate_run, evaluation_set, load_trained
from agents.model.rollout import TRMPolicy


def evaluate_controller(env, controller, puzzles, labels) -> dict:
    nfe, solved = [], []
    for x, y in zip(puzzles, labels):
        obs, info = env.reset(options={"puzzle": x, "label": y})
        done = False
        while not done:
            action, _ = controller.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(int(action))
            done = terminated or truncated
        nfe.append(info["nfe"])
        solved.append(info["solved"])
    return {"mean_nfe": float(np.mean(nfe)), "exact_accuracy": float(np.mean(solved))}


def main(run: str = "zoo:dis-anytime-sudoku6", timesteps: int = 20480, nfe_cost: float = 0.01, eval_n: int = 200,
         seed: int = 0) -> dict:
    model, task, train_config = load_trained(run)
    size = task.kwargs["size"]
    env = gym.make("TRMHalting-Sudoku-v0", size=size, policy=TRMPolicy(model), max_steps=model.cfg.N_sup,
                   nfe_cost=nfe_cost)
    controller = sb3.PPO("MlpPolicy", env, seed=seed, verbose=0)  # Stable-Baselines3's defaults
    controller.learn(total_timesteps=timesteps)
    puzzles, labels = evaluation_set(task, train_config, eval_n)
    learned = evaluate_controller(env.unwrapped, controller, puzzles, labels)
    reference = evaluate_run(run, n=eval_n, halting=True)
    fixed = reference["by_step"][-1]
    result = {"run": run, "nfe_cost": nfe_cost, "timesteps": timesteps, "n_puzzles": eval_n,
              "sb3_controller": learned,
              "fixed_budget": {"mean_nfe": fixed["nfe"], "exact_accuracy": fixed["exact_accuracy"]},
              "halting_head": {k: reference["halting"][k] for k in ("mean_nfe", "exact_accuracy")}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", default="zoo:dis-anytime-sudoku6",
                   help="a run folder or zoo:NAME (default: zoo:dis-anytime-sudoku6)")
    p.add_argument("--timesteps", type=int, default=20480, help="SB3 PPO's training steps (ten of its 2,048-step "
                   "rollouts)")
    p.add_argument("--nfe-cost", type=float, default=0.01)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    try:
        out = main(a.run, a.timesteps, a.nfe_cost, a.eval_n, a.seed)
    except ValueError as e:  # a missing or unreadable run, too many puzzles asked for: one line, not a traceback
        raise SystemExit(f"sb3_halting.py: error: {e}") from None
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
