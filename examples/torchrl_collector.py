"""Roll the batched TorchRL env out with a collector and a trivial policy (keeps its latent, never halts).

    python examples/torchrl_collector.py      # 4 s on 2 CPU cores (AMD EPYC, AVX512-BF16, 2026-12-04)
"""

import torch
from tensordict.nn import TensorDictModule

from recursion_env import RecursionTorchRLEnv

try:
    from torchrl.collectors import SyncDataCollector as Collector
except ImportError:  # torchrl >= 0.14 names it Collector
    from torchrl.collectors import Collector


class KeepLatent(torch.nn.Module):
    def forward(self, latent, answer):
        return latent, answer, torch.zeros(answer.shape[:-1], dtype=torch.int64, device=answer.device)


def main(num_envs: int = 32, frames: int = 32 * 20) -> int:
    env = RecursionTorchRLEnv(task="sudoku", size=6, num_envs=num_envs, latent_dim=16, max_steps=8, seed=0)
    policy = TensorDictModule(KeepLatent(), in_keys=["latent", "answer"],
                              out_keys=[("action", "latent"), ("action", "answer"), ("action", "halt")])
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=2 * frames)
    for batch in collector:
        print(batch.batch_size, "episodes ended:", int(batch["next", "done"].sum()),
              "max nfe:", int(batch["next", "nfe"].max()))
    collector.shutdown()
    return int(batch["next", "done"].sum())


if __name__ == "__main__":
    main()
