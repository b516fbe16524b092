"""Data-parallel training under ``torchrun``: what the official ``pretrain.py`` does by hand, in one place.

``torchrun --nproc-per-node N $(which recursion-env) train ...`` (and ``--nnodes``) starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :meth:`Distributed.start` joins them (NCCL on CUDA, gloo on CPU).
Without those variables it is one process and every method is a no-op, so the training loop has one code path.
The supervised loop uses it for:

* identical initialisation: every rank seeds the same and builds the same network; :meth:`broadcast_` checks it
  by copying rank 0's parameters over the others;
* the data: each rank its own shard of the puzzle stream (the shared seed, rank ``r`` takes chunks
  ``r, r + W, ...``: see ``agents.trainers.data.PuzzleStream``) and ``batch_size / W`` examples of the global batch;
* gradients averaged over the global batch (:meth:`average_gradients`, one all-reduce of every gradient);
  each rank's loss is a mean over its equal share, so the average is the global batch's mean; the optimizer
  step and the EMA are then identical on every rank;
* one clock and one stop: rank 0's training seconds and any rank's SIGTERM (:meth:`agree`, at the log points),
  so every rank stops, looks and checkpoints at the same step;
* the identifier embedding's rows: each rank's identifiers and row gradients gathered (:meth:`all_gather`), so
  the sparse sign-SGD applies every rank's rows, as the official optimizer;
* metrics as sums, not means of means (:meth:`sum`), and evaluation split across ranks and gathered
  (:meth:`gather`) before it is summarised;
* checkpoints written by rank 0 behind a barrier, holding every rank's stream, carried batch and RNG, so
  ``--resume`` under torchrun continues each rank exactly.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from ..checkpoint import map_leaves


def launched_world() -> int:
    """How many processes torchrun started (``WORLD_SIZE``; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among them (``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


class Distributed:
    """This process's place among ``world`` training processes (``rank`` 0 writes files and logs)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: str = "cpu"):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = torch.device(device)  # where the small collectives' tensors live (NCCL takes CUDA ones only)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> tuple[Distributed, str]:
        """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1); returns this process's place
        and its device (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
        world = launched_world()
        if world <= 1:
            return cls(), device
        rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.device(device).type == "cuda":
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                    timeout=datetime.timedelta(minutes=30))
        return cls(rank, world, local_rank, device), device

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, global_batch: int, what: str = "--batch-size") -> int:
        """This rank's share of the global batch; it must divide evenly."""
        if global_batch % self.world:
            raise ValueError(f"{what} {global_batch} is the global batch: it must divide by the {self.world} "
                             f"processes torchrun started (e.g. {what} {global_batch // self.world * self.world} "
                             f"or {(global_batch // self.world + 1) * self.world})")
        return global_batch // self.world

    @torch.no_grad()
    def broadcast_(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if self.active:
            for t in module.state_dict().values():
                dist.broadcast(t, 0)

    @torch.no_grad()
    def average_gradients(self, parameters) -> None:
        """Every gradient replaced by its mean over the ranks: one all-reduce of them all, flattened. The
        parameters with a gradient are the same on every rank (the method's loss decides which)."""
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (the same shape on all), concatenated along the first axis in rank order: the
        identifier embedding's rows and their gradients, exchanged instead of an all-reduce of the whole table."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def agree(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """Rank 0's clock, and whether any rank was asked to stop: the same answer on every rank."""
        if not self.active:
            return elapsed, stop
        t = torch.tensor([elapsed if self.is_main else 0.0, float(stop)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        elapsed, stop = t.tolist()
        return elapsed, stop > 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (metrics are reduced as sums and counts, then divided)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank (picklable objects, moved to the CPU first)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, to_cpu(obj))
        return out


def to_cpu(obj):
    """Tensors in nested dicts/lists/tuples moved to the CPU."""
    return map_leaves(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, obj)
