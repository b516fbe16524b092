"""The official TRM optimizers, in plain PyTorch: Adam-atan2 for the network and sign-SGD for the per-identifier
(puzzle) embedding.

``AdamATan2`` follows the update of the package the official ``pretrain.py`` imports (``adam-atan2`` 0.0.3, a
CUDA-only fused kernel): decoupled weight decay, then ``p -= lr / (1 - beta1^t) * atan2(m, sqrt(v) /
sqrt(1 - beta2^t))``, no epsilon. The pure-PyTorch ``adam-atan2-pytorch`` on PyPI computes a different rule (a
factor a = 1.27 and the first bias correction inside the atan2), so it is not used. ``SignSGD`` is the official
``CastedSparseEmbeddingSignSGD_Distributed``: ``p <- p (1 - lr wd) - lr sign(grad)`` on the rows the batch used,
each identifier's gradient summed over its rows (and over the data-parallel ranks).

Adam-atan2 updates every tensor with one ``torch._foreach_*`` call per operation (no per-parameter Python loop,
but the atan2, which torch has no foreach form of); neither optimizer reads anything back to the host.
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
            by_step: dict[int, list] = {}  # (parameters are stepped together; a step count is a Python int)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                by_step.setdefault(state["step"], []).append(p)
            for t, params in by_step.items():
                grads = [p.grad for p in params]
                m = [self.state[p]["exp_avg"] for p in params]
                v = [self.state[p]["exp_avg_sq"] for p in params]
                torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_lerp_(m, grads, 1 - beta1)
                torch._foreach_lerp_(v, torch._foreach_mul(grads, grads), 1 - beta2)
                denominators = torch._foreach_div(torch._foreach_sqrt(v), math.sqrt(1 - beta2**t))
                updates = [torch.atan2(a, b) for a, b in zip(m, denominators)]  # (torch has no foreach atan2)
                torch._foreach_add_(params, updates, alpha=-lr / (1 - beta1**t))
        return loss


class SignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on :class:`~agents.model.trm.SparseEmbedding` tables, as the official sparse
    optimizer: the rows the last batch gathered (their identifiers and gradients, concatenated over the ranks by
    ``gather`` under data parallelism) are summed per identifier, and each such row moves by ``-lr sign(sum)``
    after decaying by ``1 - lr wd``; no other row is touched. Time and memory scale with the batch, not the table.

    The parameters it holds are the tables (buffers), so its ``state_dict`` is the small one of any stateless
    optimizer."""

    def __init__(self, embeddings, lr: float = 1e-2, weight_decay: float = 0.1, gather=None):
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"invalid sign-SGD settings: lr={lr}, weight_decay={weight_decay}")
        self.embeddings = list(embeddings)
        self.gather = gather
        super().__init__([e.weight for e in self.embeddings], {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        group = self.param_groups[0]
        for embedding in self.embeddings:
            if embedding.local is None:
                continue
            ids, rows = embedding.local
            embedding.local = None
            grad = rows.grad if rows.grad is not None else torch.zeros_like(rows)
            if self.gather is not None:
                ids, grad = self.gather(ids), self.gather(grad)
            sparse_sign_sgd_(embedding.weight, ids, grad, group["lr"], group["weight_decay"])
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: each batch gathers fresh rows."""


def sparse_sign_sgd_(table: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, lr: float,
                     weight_decay: float) -> None:
    """``table[i] <- table[i] (1 - lr wd) - lr sign(sum of grad rows with id i)`` for every ``i`` in ``ids``. Sorted
    and summed in segments of equal ids, in shapes fixed by the batch (no ``unique``, whose size only the host
    can know). Row k of the sums belongs to the k-th distinct id; the rows past the distinct ids write the first
    id's new row again, so every write to a row is the same value."""
    ids = ids.reshape(-1)
    order = ids.argsort()
    sorted_ids = ids[order]
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    segment = first.cumsum(0) - 1  # each row's segment, 0 .. (distinct ids - 1)
    summed = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device).index_add_(0, segment,
                                                                                        grad[order].float())
    owner = torch.zeros_like(sorted_ids).scatter_(0, segment, sorted_ids)
    used = torch.zeros_like(first).scatter_(0, segment, torch.ones_like(first))
    owner = torch.where(used, owner, owner[0])
    rows = table[owner].mul_(1 - lr * weight_decay).add_(summed.sign().to(table.dtype), alpha=-lr)
    table.index_copy_(0, owner, torch.where(used[:, None], rows, rows[0]))


OPTIMIZERS = {"adam_atan2": AdamATan2, "adamw": torch.optim.AdamW}
