"""Deep supervision, the TRM baseline: every supervision step is trained toward the final solution, and a
halting head (TRM's Q head) learns whether the current prediction is already exactly right.

The loop itself is :func:`agents.trainers.loop.train`; this file is what is specific to TRM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model.rollout import RecursionRunner
from ..model.trm import SupervisionOutput
from ..options import option
from .loop import TrainConfig, counted_cells, exactly_right, token_loss, train
from .registry import Method, register


@dataclass
class DeepSupervisionConfig(TrainConfig):
    """``train --method trm``: the shared fields, TRM's schedule (TRMConfig's defaults: T=3, n=6, N_sup=16, 336
    NFE) and the halting head's training."""

    method: str = field(default="trm", init=False)
    halt_loss_weight: float = option(0.5, "trm: weight of the halting head's loss")
    halt_exploration: float = option(
        0.1,
        "trm: probability of a random minimum number of supervision steps (official 0.1)")


class DeepSupervision:

    def __init__(self, cfg: DeepSupervisionConfig, device: str | torch.device = "cpu", rank: int = 0):
        self.cfg = cfg  # (the halting draws are the loop's ``halt_rng``, one per rank)

    def prepare(self, runner: RecursionRunner, puzzles: torch.Tensor, labels: torch.Tensor) -> None:
        """Nothing to prepare for puzzles entering the feed: the target of every step is the label."""

    def on_start(self, runner: RecursionRunner, mask: torch.Tensor | None, extra=None) -> None:
        """Nothing to set when episodes start."""

    def loss(self, out: SupervisionOutput, runner: RecursionRunner):
        """(loss, metrics as 0-d tensors on the device: the loop reads them at its log points)."""
        labels, counted = runner.core.label, counted_cells(runner)
        lm_loss = token_loss(self.cfg, out.logits, labels, counted).mean()
        correct = exactly_right(out.logits, labels, counted)
        halt_loss = F.binary_cross_entropy_with_logits(out.halt_logit.float(), correct.float())
        metrics = {"lm_loss": lm_loss.detach(), "halt_loss": halt_loss.detach(),
                   "train_exact": correct.float().mean(),
                   "halt_head_says_stop": (out.halt_logit.detach() > 0).float().mean()}
        return lm_loss + self.cfg.halt_loss_weight * halt_loss, metrics

    def halt(self, out: SupervisionOutput, runner: RecursionRunner, rng: torch.Generator) -> torch.Tensor:
        """TRM's ACT in training: halt when the halting logit is > 0, but with probability ``halt_exploration``
        not before a random minimum number of steps, so later steps keep being trained. The core truncates at
        N_sup. On the device, drawn from ``rng`` (on the device too)."""
        steps = runner.core.step_count + 1
        B, N = steps.shape[0], self.cfg.model.N_sup
        halted = out.halt_logit.detach() > 0
        if N > 1:
            explore = torch.rand(B, generator=rng, device=rng.device) < self.cfg.halt_exploration
            min_steps = explore * torch.randint(2, N + 1, (B,), generator=rng, device=rng.device)
            halted &= steps >= min_steps.to(steps.device)
        return halted

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


METHOD = register(Method("trm", DeepSupervisionConfig, train, DeepSupervision))
