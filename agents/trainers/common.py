"""The supervised training loop shared by deep supervision (TRM) and policy improvement (DIS).

Reads top to bottom: set up, then one optimizer step per supervision step of a persistent batch held in the
MDP core (TRM's carry). A method object says what differs: its loss for one supervision step and when an
example halts. Halted examples are replaced by fresh ones (a partial reset of the core), so optimizer steps
and supervision steps are the same count.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recursion_env.tasks import Task, load_puzzles, make_task

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import PuzzleStream
from ..evaluation import evaluation_set
from ..rollout import RecursionRunner, rollout_metrics, summarize
from ..trm import TRM, TRMConfig


@dataclass
class TrainConfig:
    method: str = "trm"
    task: str = "sudoku"
    task_kwargs: dict = field(default_factory=lambda: {"size": 6})
    # network
    hidden: int = 64
    L_layers: int = 2
    mixer: str = "mlp"
    heads: int = 4
    expansion: float = 4.0
    T: int = 3
    n: int = 6
    N_sup: int = 16
    # optimisation
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss: str = "stablemax"  # or "ce"
    halt_loss_weight: float = 0.5
    halt_exploration: float = 0.1
    # data
    dataset: str | None = None  # .npz / .csv / text file; None = generated on the fly
    n_train: int | None = None  # with no dataset: a fixed set of this many generated puzzles (None = endless)
    augment: bool = True
    eval_n: int = 1000
    eval_seed: int = 1_000_003
    final_eval: bool = True  # evaluate eval_n held-out puzzles at the end (the benchmark does its own)
    # method-specific (DIS)
    targets: str = "diffusion"
    step_weight: str = "linear"
    autoregressive: bool = False
    anytime_weight: float = 0.0
    # run
    steps: int | None = None
    minutes: float | None = None
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 200
    log_every: int = 10
    out: str = "runs/trm"
    progress: bool = True

    def model_config(self, task: Task, step_embedding: int = 0) -> TRMConfig:
        return TRMConfig(seq_len=task.seq_len, vocab_size=task.vocab_size, hidden=self.hidden,
                         L_layers=self.L_layers, mixer=self.mixer, heads=self.heads, expansion=self.expansion,
                         T=self.T, n=self.n, N_sup=self.N_sup, step_embedding=step_embedding,
                         input_from_answer=self.autoregressive)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


#: the paper's Sudoku settings (TRM: hidden 512, 2 layers, mlp_t, T=3, n=6, N_sup=16, batch 768, lr 1e-4,
#: weight decay 1.0, EMA 0.999, warm-up 2000); for a GPU, not the 2-core CPU
PAPER_PRESET = {"hidden": 512, "L_layers": 2, "mixer": "mlp", "T": 3, "n": 6, "N_sup": 16, "batch_size": 768,
                "lr": 1e-4, "weight_decay": 1.0, "ema_decay": 0.999, "warmup_steps": 2000}


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRM's stable-max cross-entropy, per position: s(x) = x + 1 for x >= 0, 1 / (1 - x) otherwise."""
    logits = logits.to(torch.float64)
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    return -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).to(torch.float32)


def token_loss(cfg: TrainConfig, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example mean over positions ``[B]``."""
    if cfg.loss == "stablemax":
        return stablemax_cross_entropy(logits, targets).mean(-1)
    return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none").mean(-1)


class EMA:
    """Exponential moving average of the weights, with the usual warm-up of its decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.shadow)
        return model


def build_task(cfg: TrainConfig) -> Task:
    return make_task(cfg.task, **cfg.task_kwargs)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    from . import get_method

    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        cfg = TrainConfig.from_dict({**state["train_config"], **{k: getattr(cfg, k) for k in
                                                                  ("steps", "minutes", "progress", "device")}})
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    method = get_method(cfg.method)(cfg)

    # -- set up: seeds, task, data, model, optimizer ---------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    eval_x, eval_y = evaluation_set(task, {"eval_seed": cfg.eval_seed}, cfg.eval_n)
    dataset = None
    if cfg.dataset:
        task, dataset = load_puzzles(cfg.dataset, task)
    elif cfg.n_train:
        dataset = task.generate(cfg.n_train, seed=cfg.seed)
    stream = PuzzleStream(task, seed=cfg.seed, dataset=dataset, augment=cfg.augment, exclude=eval_x)
    model_cfg = cfg.model_config(task, step_embedding=method.step_embedding)
    model = TRM(model_cfg).to(device)
    ema = EMA(model, cfg.ema_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    runner = RecursionRunner(model, task, cfg.batch_size, device)
    forward = torch.compile(runner.forward) if cfg.compile else runner.forward
    halt_rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    step, elapsed, train_nfe = 0, 0.0, 0
    if state is None:
        x, y = stream.take(cfg.batch_size)
        runner.start(x, y)
        method.on_start(runner, None)
    else:
        model.load_state_dict(state["model"])
        ema.shadow = {k: v.to(device) for k, v in state["ema"].items()}
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        stream.load_state_dict(state["stream"])
        runner.core.load_state_dict(state["core"])
        method.load_state_dict(state["method"])
        halt_rng.set_state(state["halt_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, train_nfe = state["step"], state["elapsed"], state["train_nfe"]

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "train_config": asdict(cfg), "model_config": model_cfg.to_dict(), "model": model.state_dict(),
            "ema": ema.shadow, "ema_updates": ema.updates, "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "stream": stream.state_dict(), "core": runner.core.state_dict(),
            "method": method.state_dict(), "halt_rng": halt_rng.get_state(), "torch_rng": torch.get_rng_state(),
            "step": step, "elapsed": elapsed, "train_nfe": train_nfe, "task": task.name,
            "task_kwargs": task.kwargs})

    (out / "config.json").write_text(json.dumps({"train": asdict(cfg), "model": model_cfg.to_dict()}, indent=2))
    writer = SummaryWriter(str(out / "tb"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    budget_s = None if cfg.minutes is None else 60 * cfg.minutes
    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc=f"train {cfg.method}", unit="step")
    history = []
    last_loss = None

    # -- the loop: one supervision step of the carried batch per optimizer step --------------------------------
    t_start = time.perf_counter() - elapsed
    while (cfg.steps is None or step < cfg.steps) and (budget_s is None or elapsed < budget_s):
        model.train()
        with autocast:
            out_step = forward()
            loss, metrics = method.loss(out_step, runner)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        ema.update(model)
        last_loss = float(loss)

        halt = method.halt(out_step, runner, halt_rng)
        res = runner.commit(out_step, halt)
        train_nfe += runner.core.batch_size * model_cfg.nfe_per_supervision_step
        finished = res.terminated | res.truncated
        if finished.any():
            metrics["episode_exact"] = float(res.info["solved"][finished].float().mean())
            metrics["episode_steps"] = float(runner.core.step_count[finished].float().mean())
            x, y = stream.take(int(finished.sum()))
            runner.start(x, y, mask=finished)
            method.on_start(runner, finished)
        step += 1
        elapsed = time.perf_counter() - t_start
        bar.update(1)

        if step % cfg.log_every == 0:
            metrics |= {"loss": last_loss, "grad_norm": float(grad_norm), "lr": schedule.get_last_lr()[0]}
            for k, v in metrics.items():
                writer.add_scalar(f"train/{k}", v, step)
            bar.set_postfix(loss=f"{last_loss:.3f}", **({"exact": f"{metrics['episode_exact']:.2f}"}
                                                      if "episode_exact" in metrics else {}))
        if cfg.eval_every and step % cfg.eval_every == 0:
            k = min(cfg.eval_n, 256)  # a quick look during training; the final evaluation uses all
            summary = evaluate_model(ema.copy_to(copy.deepcopy(model)), task, eval_x[:k], eval_y[:k], device)
            history.append({"step": step, "elapsed_s": elapsed, **summary})
            best = max(r["exact_accuracy"] for r in summary["by_step"])
            writer.add_scalar("eval/best_exact_accuracy", best, step)
            writer.add_scalar("eval/halting_exact_accuracy", summary["halting"]["exact_accuracy"], step)
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()

    # -- final evaluation with the EMA weights -------------------------------------------------------------------
    summary = {}
    if cfg.final_eval:
        summary = evaluate_model(ema.copy_to(copy.deepcopy(model)), task, eval_x, eval_y, device)
    result = {"method": cfg.method, "task": task.name, "task_kwargs": task.kwargs, "optimizer_steps": step,
              "train_forward_passes": train_nfe, "wall_clock_s": elapsed, "last_loss": last_loss,
              "examples_seen": stream.emitted, "held_out_dropped_from_training": stream.dropped,
              **summary, "history": history}
    (out / "train_metrics.json").write_text(json.dumps(result, indent=2))
    if summary:
        writer.add_scalar("eval/final_best_exact_accuracy", max(r["exact_accuracy"] for r in summary["by_step"]), step)
    writer.close()
    return result


def evaluate_model(model: TRM, task: Task, inputs: np.ndarray, labels: np.ndarray | None, device="cpu") -> dict:
    return summarize(rollout_metrics(model, task, inputs, labels, device=device))
