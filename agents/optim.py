"""The official TRM optimizers, in plain PyTorch: Adam-atan2 for the network and sign-SGD for the per-identifier
(puzzle) embedding.

``AdamATan2`` follows the update of the package the official ``pretrain.py`` imports (``adam-atan2`` 0.0.3, a
CUDA-only fused kernel): decoupled weight decay, then ``p -= lr / (1 - beta1^t) * atan2(m, sqrt(v) /
sqrt(1 - beta2^t))``, no epsilon. The pure-PyTorch ``adam-atan2-pytorch`` on PyPI computes a different rule (a
factor a = 1.27 and the first bias correction inside the atan2), so it is not used. ``SignSGD`` is the official
``CastedSparseEmbeddingSignSGD_Distributed`` on one process: ``p <- p (1 - lr wd) - lr sign(grad)`` on the rows
the batch used.
"""

from __future__ import annotations

import math

import torch


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.95), weight_decay: float = 0.1):
        if lr < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam-atan2 settings: lr={lr}, betas={betas}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - beta1)
                v.lerp_(p.grad.square(), 1 - beta2)
                p.add_(torch.atan2(m, v.sqrt() / math.sqrt(1 - beta2**t)), alpha=-lr / (1 - beta1**t))
        return loss


class SignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on embedding tables; only rows with a non-zero gradient (the
    identifiers in the batch) move or decay, as the official sparse update does."""

    def __init__(self, params, lr: float = 1e-2, weight_decay: float = 0.1):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"invalid sign-SGD settings: lr={lr}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                used = p.grad.reshape(p.shape[0], -1).ne(0).any(-1).reshape(-1, *([1] * (p.ndim - 1)))
                update = p * (1 - lr * wd) - lr * p.grad.sign()
                p.copy_(torch.where(used, update, p))
        return loss


OPTIMIZERS = {"adam_atan2": AdamATan2, "adamw": torch.optim.AdamW}
