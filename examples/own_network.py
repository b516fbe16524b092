"""Your own network in the MDP: a user-written ``nn.Module`` that refines a latent, acting in
``TRMRecursion-Sudoku-v0``, then as the recursion policy of the halting env ``TRMHalting-Sudoku-v0``.

The env runs no network: the agent hands in the next latent and its decoded answer, and the env keeps the givens,
scores the answer, charges the forward passes and ends the episode. The halting env runs the policy it is given
(any object with ``latent_shape``, ``nfe_per_step``, ``initial_latent`` and ``step``: ``RecursionPolicy``) and
leaves the agent only the choice to stop. The network here is untrained (the interface is the point): train it
with your own loop, or start from a trained TRM (``TRMPolicy.pretrained``, the model zoo).

    python examples/own_network.py     # 2 s on 2 CPU cores (AMD EPYC, AVX512-BF16, 2026-12-04): mostly importing torch
"""

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import recursion_env  # noqa: F401  (registers the ids)
from recursion_env import RecursionOutput, RecursionPolicy


class CellRecurrence(nn.Module):
    """A GRU cell per puzzle cell: z <- GRU(x + y, z), then y <- GRU(z, y); logits read from y (2 forward passes)."""

    def __init__(self, seq_len: int, vocab_size: int, width: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.latent_shape = (2, seq_len, width)  # (y, z) per cell: the MDP's latent
        self.nfe_per_step = 2
        self.embed = nn.Embedding(vocab_size, width)
        self.cell = nn.GRUCell(width, width)
        self.head = nn.Linear(width, vocab_size)
        self.halt = nn.Linear(width, 1)

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        return torch.zeros(puzzle.shape[0], *self.latent_shape)

    @torch.no_grad()
    def step(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor | None = None
             ) -> RecursionOutput:
        B, L = puzzle.shape
        x, y, z = self.embed(puzzle), latent[:, 0], latent[:, 1]
        z = self.cell((x + y).reshape(B * L, -1), z.reshape(B * L, -1)).reshape(B, L, -1)
        y = self.cell(z.reshape(B * L, -1), y.reshape(B * L, -1)).reshape(B, L, -1)
        return RecursionOutput(torch.stack([y, z], 1), self.head(y), self.halt(y).mean((1, 2)))


def main(size: int = 4, seed: int = 0) -> dict:
    task_tokens = {4: 5, 6: 7, 9: 10}[size]
    net = CellRecurrence(size * size, task_tokens, seed=seed)
    assert isinstance(net, RecursionPolicy)  # the protocol the halting env takes

    # 1. the network as the agent of the recursion MDP: it computes the latent and the answer, the env scores them
    env = gym.make("TRMRecursion-Sudoku-v0", size=size, latent_dim=net.latent_shape[2], nfe_per_step=net.nfe_per_step,
                   max_steps=6)
    obs, info = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        puzzle = torch.as_tensor(obs["puzzle"])[None]
        out = net.step(puzzle, torch.as_tensor(obs["latent"])[None], torch.as_tensor(obs["step"]))
        answer = out.logits[0].argmax(-1).numpy()
        # stop once the decoded answer no longer changes (the env would truncate at max_steps anyway)
        settled = obs["step"][0] > 0 and np.array_equal(np.where(obs["puzzle"] > 0, obs["puzzle"], answer),
                                                        obs["answer"])
        action = {"latent": out.latent[0].numpy(), "answer": answer, "halt": np.int64(settled)}
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    recursion_nfe = int(info["nfe"])
    print(f"recursion MDP: return {total:+.3f} after {recursion_nfe} forward passes, cell accuracy "
          f"{info['cell_accuracy']:.3f}, solved {info['solved']}")

    # 2. the same network inside the halting env: the agent only says when to stop (here: after two steps)
    halting = gym.make("TRMHalting-Sudoku-v0", size=size, policy=net, max_steps=4)
    obs, info = halting.reset(seed=seed)
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = halting.step(int(steps >= 2))
        steps += 1
        done = terminated or truncated
    print(f"halting env: stopped after {steps} actions, {info['nfe']} forward passes, cell accuracy "
          f"{info['cell_accuracy']:.3f}")
    return {"recursion_return": total, "recursion_nfe": recursion_nfe, "halting_nfe": int(info["nfe"])}


if __name__ == "__main__":
    main()
