"""PPO over the recursion MDP (TorchRL): the TRM is the agent; reward = correctness gain - nfe_cost * NFE.

One transition is one supervision step of the TRM (the env's ``nfe_per_step`` is T (n + 1): 3 for DIS, 21 for
the TRM baseline). Per transition the actor computes the next latent (deterministic), and samples

* ``halt`` from a Bernoulli on the halting head (both modes);
* ``mode="full"``: every blank cell's token from its own categorical (givens are kept by the env); in
  ``mode="halting"`` the answer is the argmax, and only the halting decision is learned.

How the factorised answer enters the PPO ratio: *per token*. The log-prob is a vector, one entry per cell plus
one for halt, and TorchRL's ``ClipPPOLoss`` clips each token's ratio against the shared advantage. A joint
log-prob (a sum over dozens of cells) makes the ratio exp(sum of differences), which explodes or vanishes after
one update, so clipping then rejects nearly every sample; per-token ratios keep each update small per cell.
Given cells carry log-prob 0 (ratio 1), so they add no gradient.

Credit for the answer in ``full`` mode: the sampled answer does not feed back into the latent (the next step
reads the puzzle and the latent), so by telescoping an intermediate answer's only effect on the return is
+S(answer_{t+1}) in r_t, cancelled by -S(answer_{t+1}) in r_{t+1}. GAE(lambda) weighs it by 1 - gamma * lambda:
at 0.95 a 4x4 run from scratch stayed at chance (cell accuracy 0.25) for 340 iterations. Full mode therefore
defaults to lambda = 0 (one-step TD): each step's answer is credited with its own correctness gain; the halting
decision still sees the future through the critic's V(s_{t+1}).

``mode="halting"`` freezes the recursion network: only the halting head (the actor) and the value head (the
critic) train. The critic reads the current answer embedding y: V(s) = value_head(mean y), or with
``halt_readout="confidence"`` the readout's confidence like the halting head; no extra NFE. A frozen network
whose y was never trained to say how sure it is (DIS) needs the confidence readout: linear heads on y left the
policy diffuse (greedy never halted; sampled 10.8 NFE at 94.1% on an anytime DIS model that is 99.0% after 9),
while confidence heads learn in 30 iterations (6.1 NFE at 99.3%, the fixed 18-NFE accuracy; lr 1e-2 for the
3-input heads).
Training logs to TensorBoard: return, mean NFE per episode, exact accuracy at episode end, halting rate, KL,
clip fraction. The result is saved as a run that ``recursion-env eval --halting`` reads: halting at
evaluation stops where the halting head's probability exceeds one half, the learned policy's mode.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from recursion_env.atomic import locks_folder, remove_stale_temporaries
from recursion_env.tasks import PuzzleBatch, load_puzzles, make_task

from ..checkpoint import StopRequest, save_checkpoint
from ..eval.evaluation import evaluation_set, load_trained
from ..model.trm import HALT_READOUTS, TRM, TRMConfig
from ..options import option
from .data import outside, puzzle_keys
from .loop import RunConfig
from .registry import Method, register

#: what running the whole schedule costs when ``nfe_cost`` is not given: just under the solve bonus (1), so a step
#: is worth taking while it solves more than 1 / N_sup * 0.9 of the puzzles still open
BUDGET_COST = 0.9

#: the collectors PPO can use (``--collector``)
COLLECTORS = ("sync", "multisync", "ray")


@dataclass
class PPOConfig(RunConfig):
    """``train --method ppo``: :class:`RunConfig` (the fields every method shares, four with PPO's defaults) and the
    environments, the reward and the PPO update. TorchRL is imported when training starts, not with this config.
    The training puzzles (``dataset``) are held in memory: a .npz, .csv or text file."""

    #: a fresh network (no ``init``): DIS's schedule, 18 NFE
    MODEL_DEFAULTS: ClassVar[dict] = {"hidden": 64, "T": 1, "n": 2, "N_sup": 6}

    method: str = field(default="ppo", init=False)
    mode: str = option(
        "halting",
        "ppo: train only the halting decision (network frozen) or the whole TRM",
        choices=("halting", "full"))
    init: str | None = option(None, "ppo: start from this TRM/DIS run (default: a fresh network)")
    task_kwargs: dict = field(default_factory=lambda: {"size": 4})
    #: the reward's cost per forward pass; None = BUDGET_COST / the network's NFE budget (N_sup steps): DIS's 18
    #: NFE 0.05 each, the TRM's 336 0.0027. At 0.01 a DIS step (3 NFE) cost 0.03, and the advantage of halting a
    #: solved answer was too small beside the solve bonus's +-1 for PPO to learn it in 40 iterations
    nfe_cost: float | None = option(
        None,
        "ppo: reward cost per forward pass (default 0.9 / the network's NFE budget: 0.05 for DIS's 18)")
    #: reset the halting head's bias before training ("keep" = keep). Its init of -5 (p(halt) ~ 0.7%) leaves PPO
    #: almost no halting to learn from; DIS checkpoints never trained it. 0 starts at p(halt) = 1/2.
    #: None = 0 for halting, keep for full.
    halt_bias: float | str | None = option(
        None,
        "ppo: reset the halting head's bias first (halting default 0 = p(halt) 1/2; 'keep' keeps it, the full "
        "default)")
    #: what the halting head reads (TRMConfig.halt_readout): "keep" keeps the model's; "mean" (a whole-board
    #: summary), "confidence" (how sure the readout is) or "rules" (that, and how far the decoded answer is from
    #: obeying the puzzle's rules) for a frozen model whose halting head was never trained (DIS), whose position 0
    #: is just the first cell's embedding. None = rules for halting, keep for full.
    halt_readout: str | None = option(
        None,
        "ppo: the halting head reads the readout's confidence and whether the decoded answer obeys the puzzle's "
        "rules (rules: the halting default; no label, no forward pass), the confidence alone (least sure cell, mean "
        "doubt, mean entropy), y at position 0 (TRM), the mean of y, or what the model has (keep; the full default)",
        choices=("keep", *HALT_READOUTS))
    reward_mode: str = option("label", "ppo: label or label-free (the task's verifier)", choices=("label", "verifier"))
    solve_bonus: float = option(1.0, "ppo: reward for an answer that becomes solved (and its negative when it breaks)")
    train_pool: int = option(4096, "ppo: generated training puzzles when no --dataset is given")
    num_envs: int = option(64, "ppo: environments per batch")
    rollout_len: int = option(8, "ppo: env steps collected per environment per iteration")
    #: "sync" (one process: SyncDataCollector, named Collector in torchrl >= 0.14), "multisync" (``workers``
    #: processes, each stepping num_envs / workers envs: MultiSyncDataCollector / MultiSyncCollector) or "ray"
    #: (``workers`` Ray actors, on this machine or a cluster: TorchRL's RayCollector; the [ray] extra)
    collector: str = option(
        "sync",
        "ppo: one process, --workers processes (multisync) or --workers Ray actors (ray: the [ray] extra)",
        choices=COLLECTORS)
    workers: int = option(2, "ppo --collector multisync/ray: worker processes or Ray actors")
    iterations: int | None = option(50, "ppo: iterations of collect + update (with --resume: more iterations)")
    epochs: int = option(4, "ppo: passes over each iteration's frames")
    minibatch_size: int = option(256, "ppo: frames per gradient step")
    lr: float | None = None  # 1e-2 for halting (a head on a few features), 3e-4 for full
    gamma: float = option(1.0, "ppo: discount")
    #: GAE's lambda; None = 0.95 for halting, 0 (one-step TD) for full: see the module docstring
    gae_lambda: float | None = option(
        None,
        "ppo: GAE lambda (default 0.95 halting, 0 full: each step's answer gets its own credit)")
    clip_epsilon: float = option(0.2, "ppo: clipping of the probability ratio")
    #: None = 0.01 for halting, 0 for full: a per-cell entropy bonus held a from-scratch 4x4 run near uniform
    #: answers (return 0.56 vs 0.77 without it after 115 iterations)
    entropy_coeff: float | None = option(None, "ppo: entropy bonus (default 0.01 halting, 0 full)")
    critic_coeff: float = option(0.5, "ppo: weight of the critic's loss")
    checkpoint_every: int = 10  # iterations
    out: str = "runs/ppo"

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("halting", "full"):
            raise ValueError(f"mode must be 'halting' or 'full', got {self.mode!r}")
        if self.collector not in COLLECTORS:
            raise ValueError(f"collector must be one of {', '.join(COLLECTORS)}, got {self.collector!r}")
        if self.collector != "sync" and (self.workers < 1 or self.num_envs % self.workers):
            raise ValueError(f"{self.collector}: num_envs ({self.num_envs}) must split evenly over workers "
                             f"({self.workers})")
        if self.gae_lambda is None:
            self.gae_lambda = 0.95 if self.mode == "halting" else 0.0
        if self.entropy_coeff is None:
            self.entropy_coeff = 0.01 if self.mode == "halting" else 0.0
        # the halting recipe that works on an anytime DIS run (BENCHMARKS.md) is the default; the position-0
        # readout and the head's -5 bias left the policy never halting
        halting = self.mode == "halting"
        if self.halt_readout is None:
            self.halt_readout = "rules" if halting else "keep"
        if self.halt_bias is None:
            self.halt_bias = 0.0 if halting else "keep"
        if self.lr is None:
            self.lr = 1e-2 if halting else 3e-4
        if self.halt_readout not in ("keep", *HALT_READOUTS):
            raise ValueError(f"halt_readout must be keep, {', '.join(HALT_READOUTS)}, got {self.halt_readout!r}")
        if self.halt_bias != "keep" and not isinstance(self.halt_bias, (int, float)):
            raise ValueError(f"halt_bias must be a number or 'keep', got {self.halt_bias!r}")



class AnswerAndHalt(torch.distributions.Distribution):
    """Independent categoricals over the blank cells (``full``) and a Bernoulli halt, as one ``[B, L + 1]``
    integer sample: L answer tokens, then the halt bit. ``log_prob`` and ``entropy`` are per token: ``[B, L + 1]``,
    or only the halt token ``[B, 1]`` when the answer is the greedy argmax (halting mode), since the loss averages
    over tokens and L constant tokens would divide the halting gradient by L + 1."""

    arg_constraints: dict = {}

    def __init__(self, answer_logits, halt_logit, blank, greedy_answer: bool):
        self.answer = torch.distributions.Categorical(logits=answer_logits.float())
        self.halt = torch.distributions.Bernoulli(logits=halt_logit.float())
        self.blank, self.greedy_answer = blank.bool(), greedy_answer
        self.argmax = answer_logits.argmax(-1)
        super().__init__(batch_shape=halt_logit.shape, validate_args=False)

    def sample(self, sample_shape=()):
        answer = self.argmax if self.greedy_answer else self.answer.sample(sample_shape)
        return torch.cat([answer, self.halt.sample(sample_shape).long().unsqueeze(-1)], -1)

    @property
    def mode(self):
        return torch.cat([self.argmax, (self.halt.logits > 0).long().unsqueeze(-1)], -1)

    @property
    def deterministic_sample(self):
        return self.mode

    def log_prob(self, value):
        halt = self.halt.log_prob(value[..., -1].float()).unsqueeze(-1)
        if self.greedy_answer:
            return halt
        return torch.cat([torch.where(self.blank, self.answer.log_prob(value[..., :-1]), 0.0), halt], -1)

    def entropy(self):
        halt = self.halt.entropy().unsqueeze(-1)
        if self.greedy_answer:
            return halt
        return torch.cat([torch.where(self.blank, self.answer.entropy(), 0.0), halt], -1)


class TRMActor(nn.Module):
    """One supervision step from the observation: the next latent, the answer logits, the halting logit."""

    def __init__(self, model: TRM, mode: str):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, puzzle, latent, step, answer):
        model = self.model
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.mode == "full"):
            out = model(puzzle, latent, step, answer)
        # the halting head trains in both modes: in halting mode the step ran without gradient, so its head is
        # applied again, outside, on the (frozen) y; in full mode the step's own halting logit carries it
        halt_logit = out.halt_logit if self.mode == "full" else model.halt_logit(out.y.detach(), out.logits, puzzle)
        return torch.stack([out.y, out.z], 1).detach().float(), out.logits, halt_logit, puzzle == 0


class TRMCritic(nn.Module):
    def __init__(self, model: TRM):
        super().__init__()
        self.model = model

    def forward(self, latent, puzzle):  # [..., 2, P, D], [..., L]: any batch dims (GAE passes [envs, time])
        return self.model.value(latent[..., 0, :, :], puzzle=puzzle).unsqueeze(-1)


def _split(sample):
    return sample[..., :-1], sample[..., -1]


def _ppo_task(task):
    if not task.keeps_givens:  # its action distribution samples the blank cells (token 0) only
        raise ValueError(f"PPO runs on tasks whose answer fills the puzzle's blanks, not {task.name} (train it with "
                         "--method trm or dis)")
    return task


def build_model(cfg: PPOConfig):
    """(model, task, the init run's train config, or {} for a fresh network)."""
    if cfg.init:
        model, task, train_config = load_trained(cfg.init, cfg.device)
        return model.train(), _ppo_task(task), train_config
    task = _ppo_task(make_task(cfg.task, **cfg.task_kwargs))
    torch.manual_seed(cfg.seed)
    model = TRM(cfg.model.for_task(task, step_embedding=cfg.model.N_sup)).to(cfg.device)
    model.set_rules(task)
    return model, task, {}


def make_env(task, dataset, num_envs: int, seed: int, device: str, **config):
    """The TorchRL env PPO collects from, with the episode return summed ("episode_reward"). Module-level, so a
    ``functools.partial`` of it can be sent to collector worker processes."""
    from torchrl.envs import RewardSum, TransformedEnv

    from recursion_env import RecursionTorchRLEnv

    env = RecursionTorchRLEnv(task, num_envs=num_envs, dataset=dataset, device=device, seed=seed, **config)
    return TransformedEnv(env, RewardSum())


def nfe_cost(cfg: PPOConfig, mcfg: TRMConfig) -> float:
    """The reward's cost per forward pass: ``cfg.nfe_cost``, or BUDGET_COST spread over the network's schedule."""
    return cfg.nfe_cost if cfg.nfe_cost is not None else BUDGET_COST / (mcfg.N_sup * mcfg.nfe_per_supervision_step)


def env_factory(cfg: PPOConfig, model: TRM, task, dataset):
    """``env_fn(num_envs=, seed=)``: PPO's environments over ``dataset`` with the network's schedule (NFE per
    step, N_sup) and its own initial (y_init, z_init): episodes start where training and evaluation start them,
    not from the env's zero latent (a network whose recursion never saw zeros answers them differently)."""
    mcfg = model.cfg
    initial_latent = torch.stack(model.initial_state(1), 1)[0].detach().float().cpu()
    return partial(make_env, task, dataset, device=cfg.device, initial_latent=initial_latent,
                   latent_dim=mcfg.hidden, latent_len=mcfg.latent_len, nfe_per_step=mcfg.nfe_per_supervision_step,
                   max_steps=mcfg.N_sup, nfe_cost=nfe_cost(cfg, mcfg), reward_mode=cfg.reward_mode,
                   solve_bonus=cfg.solve_bonus)


def make_collector(cfg: PPOConfig, env_fn, policy, frames: int):
    """One process (SyncDataCollector) or ``cfg.workers`` processes (MultiSyncDataCollector), each with its own
    env seed; the names changed in torchrl 0.14 (Collector, MultiSyncCollector)."""
    import torchrl.collectors as collectors

    if cfg.collector == "ray":
        return make_ray_collector(cfg, env_fn, policy, frames)
    if cfg.collector == "sync":
        cls = getattr(collectors, "SyncDataCollector", None) or collectors.Collector
        create = env_fn(num_envs=cfg.num_envs, seed=cfg.seed)
    else:
        cls = getattr(collectors, "MultiSyncDataCollector", None) or collectors.MultiSyncCollector
        create = [partial(env_fn, num_envs=cfg.num_envs // cfg.workers, seed=cfg.seed + i) for i in range(cfg.workers)]
    # the policy needs no "is_init" flag (nothing recurrent); torchrl >= 0.14 warns unless told so
    quiet = ({"auto_register_policy_transforms": False}
             if "auto_register_policy_transforms" in inspect.signature(cls.__init__).parameters else {})
    return cls(create, policy, frames_per_batch=frames, total_frames=-1, **quiet)


def make_ray_collector(cfg: PPOConfig, env_fn, policy, frames: int):
    """TorchRL's ``RayCollector``: ``cfg.workers`` Ray actors (one CPU each), each stepping num_envs / workers
    envs with its own seed, their batches concatenated each iteration (``sync``); the policy's weights are sent
    to them after every update. Ray starts on this machine unless a cluster is running (``RAY_ADDRESS``)."""
    try:
        import ray  # noqa: F401
        from torchrl.collectors.distributed import RayCollector
    except ImportError as e:
        raise ValueError(f"--collector ray needs Ray, an optional extra: pip install -e '.[ray]' ({e})") from None
    create = [partial(env_fn, num_envs=cfg.num_envs // cfg.workers, seed=cfg.seed + i) for i in range(cfg.workers)]
    init = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not os.environ.get("RAY_ADDRESS"):
        init["num_cpus"] = cfg.workers
    # (it reads total_frames=-1 as "none": the loop below decides when to stop)
    return RayCollector(create, policy, frames_per_batch=frames // cfg.workers, total_frames=2**62, sync=True,
                        num_collectors=cfg.workers, ray_init_config=init,
                        remote_configs={"num_cpus": 1, "num_gpus": 0, "memory": 2 * 1024**3})


def ppo_resume_config(cfg: PPOConfig, state: dict) -> PPOConfig:
    """The run's own config, with ``cfg.iterations`` / ``cfg.minutes`` as *more* iterations / minutes."""
    if cfg.iterations is None and cfg.minutes is None:
        raise ValueError("train --resume needs a budget: --iterations N (more PPO iterations) and/or --minutes M")
    method = state.get("train_config", {}).get("method")
    if method != "ppo":
        raise ValueError(f"{cfg.out} is a {method!r} run, not a PPO one: resume it without --method ppo")
    ps = state.get("ppo_state")
    if ps is None:
        raise ValueError("this PPO run has no resumable state (written by an older recursion-env)")
    saved = state["train_config"]
    if saved.get("collector") != "sync":
        raise ValueError("only PPO runs with the one-process collector (--collector sync) resume")
    budget = {"iterations": None if cfg.iterations is None else ps["iteration"] + cfg.iterations,
              "minutes": None if cfg.minutes is None else ps["elapsed"] / 60 + cfg.minutes}
    return PPOConfig.from_dict({**saved, **budget, "progress": cfg.progress, "device": cfg.device}, strict=False)


@dataclass
class PPORun:
    """What a PPO checkpoint holds besides the loop's history: the network, the optimizer, the environments and
    the collector's carried step (one-process collector: an exact resume), the clock's start."""

    cfg: PPOConfig
    out: Path
    model: TRM
    mcfg: TRMConfig
    task: object
    optimizer: torch.optim.Optimizer
    collector: object
    base_env: object
    init_method: str
    t0: float

    def checkpoint(self, iterations: int, history: list) -> int:
        """Write the run as it stands after ``iterations`` iterations; returns ``iterations``."""
        cfg = self.cfg
        weights = copy.deepcopy(self.model.state_dict())
        ppo_state = {"iteration": iterations, "elapsed": time.perf_counter() - self.t0, "history": history,
                     "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        if cfg.collector == "sync":  # the environments and the collector's carried step: an exact resume
            ppo_state |= {"env": self.base_env.env_state(), "carrier": self.collector._carrier.to_dict()}
        save_checkpoint(self.out / "checkpoint.pt", keep=3, state={
            "train_config": {**asdict(cfg), "init_method": self.init_method},
            "model_config": self.mcfg.to_dict(), "model": weights, "ema": weights, "task": self.task.name,
            "task_kwargs": self.task.kwargs, "step": iterations, "ppo_state": ppo_state})
        return iterations


@locks_folder(lambda a: a["cfg"].out)
def train_ppo(cfg: PPOConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Train with PPO into ``cfg.out``, which must not hold a run (``overwrite`` replaces one); ``resume``
    continues the run there exactly (model, optimizer, environments, the collector's carried step, RNG) for
    ``cfg.iterations`` more iterations and/or ``cfg.minutes`` more minutes."""
    from tensordict import TensorDict
    from tensordict.nn import (
        ProbabilisticTensorDictModule,
        ProbabilisticTensorDictSequential,
        TensorDictModule,
        TensorDictSequential,
    )
    from torch.utils.tensorboard import SummaryWriter
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    from ..checkpoint import load_newest_valid
    from .loop import prepare_run_folder

    ps = None
    if resume:
        state, _ = load_newest_valid(Path(cfg.out) / "checkpoint.pt", set_aside=True)
        cfg = ppo_resume_config(cfg, state)
        ps = state["ppo_state"]
    else:
        prepare_run_folder(Path(cfg.out), overwrite)
    remove_stale_temporaries(Path(cfg.out) / "checkpoint.pt")

    # -- set up: model, env, actor, critic, loss ---------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model, task, init_config = build_model(cfg)
    init_method = init_config.get("method", "trm") if cfg.init else "scratch"
    if cfg.init:  # one held-out set: the init run's, which its network never trained on
        if cfg.mode == "halting" and init_config.get("method") == "dis" and not init_config.get("anytime_weight"):
            warnings.warn(f"{cfg.init} is a plain DIS run: its early answers are partial by design (each step's "
                          "target reveals only part of the solution), so stopping it early cannot be right; learn "
                          "to halt an anytime DIS run (train --method dis --anytime-weight 0.5)", stacklevel=2)
        cfg = replace(cfg, eval_seed=init_config.get("eval_seed", cfg.eval_seed),
                      eval_n=min(cfg.eval_n, init_config.get("eval_n", cfg.eval_n)))
    held_out = puzzle_keys(evaluation_set(task, {"eval_seed": cfg.eval_seed}, cfg.eval_n)[0])
    if cfg.dataset:
        pool = load_puzzles(cfg.dataset, task)[1]
        if not isinstance(pool, PuzzleBatch):
            raise ValueError(f"--dataset {cfg.dataset}: a converted folder is streamed by --method trm/dis; PPO's "
                             "environments hold their puzzles in memory: give it a .npz, .csv or text file")
    else:  # a generated pool
        pool = task.generate(cfg.train_pool, seed=[cfg.seed, 7])
    keep = outside(pool.inputs, held_out)  # the held-out puzzles taken out, as the supervised trainers do
    if not keep.any():
        raise ValueError("every training puzzle is also a held-out puzzle")
    dataset = pool[np.flatnonzero(keep)]
    cfg = replace(cfg, nfe_cost=nfe_cost(cfg, model.cfg))  # (the run saves the cost it trained with)
    if cfg.halt_readout != "keep":
        model.set_halt_readout(cfg.halt_readout)  # saved with the run, so evaluation halts the same way
    mcfg = model.cfg  # (after the switch: the model's config now says what its heads read)
    if cfg.halt_bias != "keep":
        with torch.no_grad():
            model.halt_head.bias.fill_(cfg.halt_bias)
    env_fn = env_factory(cfg, model, task, dataset)
    if cfg.mode == "halting":
        for p in model.parameters():
            p.requires_grad_(False)
        for head in (model.halt_head, model.value_head):
            for p in head.parameters():
                p.requires_grad_(True)
    actor = ProbabilisticTensorDictSequential(
        TensorDictModule(TRMActor(model, cfg.mode), in_keys=["puzzle", "latent", "step", "answer"],
                         out_keys=[("action", "latent"), "answer_logits", "halt_logit", "blank"]),
        ProbabilisticTensorDictModule(
            in_keys=["answer_logits", "halt_logit", "blank"], out_keys=["sample"],
            distribution_class=AnswerAndHalt, distribution_kwargs={"greedy_answer": cfg.mode == "halting"},
            return_log_prob=True, log_prob_key="sample_log_prob"),
    )
    policy = TensorDictSequential(actor, TensorDictModule(_split, in_keys=["sample"],
                                                          out_keys=[("action", "answer"), ("action", "halt")]))
    critic = TensorDictModule(TRMCritic(model), in_keys=["latent", "puzzle"], out_keys=["state_value"])
    # (no vmap over the critic: the "rules" readout runs the task's verifier, whose in-place scatters and
    # breadth-first searches vmap cannot batch)
    advantage = GAE(gamma=cfg.gamma, lmbda=cfg.gae_lambda, value_network=critic, average_gae=False,
                    deactivate_vmap=True)
    loss_module = ClipPPOLoss(actor, critic, clip_epsilon=cfg.clip_epsilon, entropy_coeff=cfg.entropy_coeff,
                              critic_coeff=cfg.critic_coeff, normalize_advantage=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    frames = cfg.num_envs * cfg.rollout_len
    collector = make_collector(cfg, env_fn, policy, frames)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "tb"))
    history, done_iterations, elapsed = [], 0, 0.0
    base_env = None  # the one-process collector's env: its state is saved for an exact resume
    if cfg.collector == "sync":
        base_env = collector.env.base_env if hasattr(collector.env, "base_env") else collector.env
    if ps is not None:  # continue exactly where the run stopped
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(ps["optimizer"])
        base_env.load_env_state(ps["env"])
        collector._carrier = TensorDict.from_dict(ps["carrier"], batch_size=[cfg.num_envs])  # torchrl 0.14.x
        torch.set_rng_state(ps["torch_rng"])
        history, done_iterations, elapsed = list(ps["history"]), ps["iteration"], ps["elapsed"]
    t0 = time.perf_counter() - elapsed

    saved_iteration = done_iterations  # the iteration last written to the checkpoint
    run = PPORun(cfg, out, model, mcfg, task, optimizer, collector, base_env, init_method, t0)
    bar = tqdm(total=cfg.iterations, disable=not cfg.progress, desc=f"ppo {cfg.mode}", unit="iter")

    # -- the loop: collect, estimate advantages, several epochs of clipped updates ---------------------------------
    batches = iter(collector) if cfg.iterations != 0 else iter(())  # 0 iterations: save the initial weights
    with StopRequest() as stop:  # SIGTERM / SIGINT: finish the iteration, checkpoint, return
        for it, batch in enumerate(batches, start=done_iterations):
            done = batch["next", "done"].squeeze(-1)
            stats = {"episodes": int(done.sum())}
            if done.any():
                nxt = batch["next"]
                stats |= {"return": float(nxt["episode_reward"].squeeze(-1)[done].mean()),
                          "mean_nfe": float(nxt["nfe"][done].float().mean()),
                          "exact_accuracy": float(nxt["solved"][done].float().mean()),
                          "halting_rate": float(nxt["terminated"].squeeze(-1)[done].float().mean())}
            # halting: the schedule's last step (N_sup) ends the recursion for good, so value it as an end, not as
            # a time limit to bootstrap past. The halting critic does not see the step count: a bootstrap there
            # reads a later state's value off an earlier one's features and makes running to the end look better
            # than halting (PPO then never halted, or drifted into halting at once). Full mode keeps the bootstrap
            # its measured learning rests on (tests/test_ppo.py)
            if cfg.mode == "halting":
                batch["next", "terminated"] = batch["next", "done"].clone()
            with torch.no_grad():
                advantage(batch)
            data = batch.reshape(-1)
            kl, clip_fraction = [], []
            for _ in range(cfg.epochs):
                for idx in torch.randperm(len(data)).split(cfg.minibatch_size):
                    losses = loss_module(data[idx])
                    loss = losses["loss_objective"] + losses["loss_critic"] + losses.get("loss_entropy", 0.0)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                    optimizer.step()
                    kl.append(float(losses.get("kl_approx", torch.tensor(0.0))))
                    clip_fraction.append(float(losses.get("clip_fraction", torch.tensor(0.0))))
            # first_kl: the first minibatch's, before this iteration's updates; 0 when the collector acted with
            # the learner's weights (a lagging worker shows here)
            stats |= {"kl": sum(kl) / len(kl), "first_kl": kl[0],
                      "clip_fraction": sum(clip_fraction) / len(clip_fraction),
                      "loss": loss.item(), "elapsed_s": time.perf_counter() - t0}
            for k, v in stats.items():
                writer.add_scalar(f"ppo/{k}", v, it)
            history.append({"iteration": it + 1, **stats})
            bar.update(1)
            bar.set_postfix({k: f"{stats[k]:.3f}" for k in ("return", "mean_nfe", "exact_accuracy") if k in stats})
            collector.update_policy_weights_()
            finished = (cfg.iterations is not None and it + 1 >= cfg.iterations) or (
                cfg.minutes is not None and stats["elapsed_s"] >= 60 * cfg.minutes) or bool(stop.requested)
            if finished or (it + 1) % cfg.checkpoint_every == 0:
                saved_iteration = run.checkpoint(it + 1, history)
            if finished:
                break
    bar.close()
    if not history or history[-1]["iteration"] != saved_iteration:  # not saved at this iteration yet (0 iterations)
        run.checkpoint(len(history), history)
    collector.shutdown()
    writer.close()
    if stop.requested:
        stop.report(f"iteration {len(history)}", out)
        return {"method": "ppo", "iterations": len(history), "history": history, "stopped_by": stop.requested}

    # -- save as a run that `recursion-env eval` reads ------------------------------------------------------------
    result = {"method": "ppo", "mode": cfg.mode, "init": cfg.init, "nfe_cost": cfg.nfe_cost,
              "reward_mode": cfg.reward_mode, "iterations": len(history), "frames": len(history) * frames,
              "wall_clock_s": time.perf_counter() - t0, "history": history}
    (out / "ppo_metrics.json").write_text(json.dumps(result, indent=2))
    return result


METHOD = register(Method("ppo", PPOConfig, train_ppo))
