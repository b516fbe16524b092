"""Drive the recursion MDP by hand through Gymnasium: a random agent, then the label as the answer.

    python examples/gym_rollout.py      # 2 s on 2 CPU cores (AMD EPYC, AVX512-BF16, 2026-12-04): mostly importing torch
"""

import gymnasium as gym
import numpy as np

import recursion_env  # noqa: F401  (registers TRMRecursion-*-v0)


def main(size: int = 4, latent_dim: int = 16, seed: int = 0) -> float:
    env = gym.make("TRMRecursion-Sudoku-v0", size=size, latent_dim=latent_dim, nfe_cost=0.01, max_steps=8,
                   render_mode="ansi")
    obs, info = env.reset(seed=seed)
    print(env.render())
    env.action_space.seed(seed)
    total, done = 0.0, False
    while not done:
        action = env.action_space.sample()
        action["halt"] = 0  # a random agent that never halts runs into the step budget
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    print(f"random agent: return {total:+.3f}, {info}")

    # the solution, submitted with halt=1: reward = S gain + solve bonus - nfe_cost * nfe_per_step
    obs, info = env.reset(seed=seed)
    label = env.unwrapped.core.label[0].numpy()
    obs, reward, terminated, truncated, info = env.step(
        {"latent": obs["latent"], "answer": label, "halt": np.int64(1)})
    print(env.render())
    print(f"submitting the label: reward {reward:+.3f}, solved {info['solved']}, terminated {terminated}")
    return reward


if __name__ == "__main__":
    main()
