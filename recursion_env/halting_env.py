"""Model-in-the-loop halting: the env runs a recursion policy; the agent only decides when to stop.

A *recursion policy* is anything with this small interface (a trained TRM plugs in through an adapter in
``agents``; :class:`TinyRecursionPolicy` is the untrained default)::

    latent_shape: tuple[int, int, int]             # (2, latent_len, D)
    nfe_per_step: int                              # forward passes one step costs
    initial_latent(puzzle [B, L] int64) -> [B, 2, latent_len, D]
    step(puzzle, latent, step_index [B] int64) -> RecursionOutput(latent, logits [B, L, V], halt_logit [B] or None)

``step_index`` counts the steps already taken (policies that embed it, like DIS, need it; others ignore it).
A policy may also say how many steps it was trained for (``max_steps``: the env's default episode length).

**The default policy.** ``policy=None`` asks the installed *policy providers* for a trained network for the task:
packages register a callable ``provider(task, name=None, device="cpu") -> RecursionPolicy | None`` under the
entry-point group ``recursion_env.policies`` (``agents`` registers ``zoo``: its model zoo, whose
``dis-anytime-sudoku6`` is the default on 6x6 Sudoku). Where none has one, the env runs an untrained
:class:`TinyRecursionPolicy`. ``policy="tiny"`` asks for that one; ``policy="zoo:NAME"`` for provider ``zoo``'s
entry ``NAME``.
"""

from __future__ import annotations

import math
from importlib.metadata import entry_points
from typing import NamedTuple, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .core import RecursionConfig, RecursionCore, resolve_task, single_thread_in_workers
from .render import RENDER_MODES, checked_render_mode, render_env
from .tasks import Task


class RecursionOutput(NamedTuple):
    latent: torch.Tensor
    logits: torch.Tensor
    halt_logit: torch.Tensor | None


@runtime_checkable
class RecursionPolicy(Protocol):
    latent_shape: tuple[int, int, int]
    nfe_per_step: int

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor: ...

    def step(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor) -> RecursionOutput: ...


class TinyRecursionPolicy(nn.Module):
    """A small untrained recursion policy so the halting env works out of the box: one shared per-cell MLP
    f, ``z = f(x + y + z)`` then ``y = f(y + z)`` (2 forward passes a step), logits read from y."""

    def __init__(self, seq_len: int, vocab_size: int, latent_dim: int = 32, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.latent_shape = (2, seq_len, latent_dim)
        self.nfe_per_step = 2
        self.embed = nn.Embedding(vocab_size, latent_dim)
        self.f = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU(), nn.Linear(latent_dim, latent_dim))
        self.head = nn.Linear(latent_dim, vocab_size)
        self.halt_head = nn.Linear(latent_dim, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        return torch.zeros(puzzle.shape[0], *self.latent_shape, device=puzzle.device)

    @torch.no_grad()
    def step(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor | None = None
             ) -> RecursionOutput:
        x = self.embed(puzzle)
        y, z = latent[:, 0], latent[:, 1]
        z = torch.tanh(self.f(x + y + z))
        y = torch.tanh(self.f(y + z))
        return RecursionOutput(torch.stack([y, z], 1), self.head(y), self.halt_head(y).mean((1, 2)))


POLICY_PROVIDERS = "recursion_env.policies"  # the entry-point group of the policy providers


def _providers() -> dict:
    return {ep.name: ep for ep in entry_points(group=POLICY_PROVIDERS)}


def resolve_policy(policy, task: Task, device="cpu", seed: int = 0) -> RecursionPolicy:
    """The halting env's recursion policy for ``policy``: a :class:`RecursionPolicy` as it is, ``None`` (the
    first provider's default for ``task``, else the untrained tiny one), ``"tiny"`` or ``"PROVIDER:NAME"``."""
    if policy is None:
        for ep in _providers().values():
            found = ep.load()(task, device=device)
            if found is not None:
                return found
        policy = "tiny"
    if policy == "tiny":
        return TinyRecursionPolicy(task.seq_len, task.vocab_size, seed=seed).to(device)
    if isinstance(policy, str):
        provider, _, name = policy.partition(":")
        providers = _providers()
        if not name or provider not in providers:
            known = ", ".join(f"'{p}:NAME'" for p in providers) or "none installed"
            raise ValueError(f"policy={policy!r}: give a RecursionPolicy, None, 'tiny' or a provider's network "
                             f"({known})")
        return providers[provider].load()(task, name=name, device=device)
    if not isinstance(policy, RecursionPolicy):
        raise ValueError("policy must offer latent_shape, nfe_per_step, initial_latent() and step()")
    return policy


FEATURES = ("step_fraction", "answer_entropy", "changed_fraction", "max_prob_gain", "halt_logit", "rules_held")


class RecursionHaltingEnv(gym.Env):
    """Registered as ``TRMHalting-Sudoku-v0``: learn *when to stop* a recursion policy.

    Spaces::

        observation  Box(float32, (6,)): step fraction [0, 1], mean answer entropy over blank cells / log V
                     [0, 1], fraction of blank cells changed by the last step [0, 1], mean max-probability
                     gain of the last step [-1, 1], the policy's halting logit clipped to [-20, 20] (0 if none),
                     and 1 when the current answer obeys every rule of the puzzle, else 0 (the task's label-free
                     verifier, no forward pass; always 0 for a task without one, ARC)
        action       Discrete(2): 0 = run one more recursion step, 1 = halt now

    Continuing runs one policy step through the recursion core (charged the policy's ``nfe_per_step``);
    halting ends the episode without compute (:meth:`RecursionCore.stop`). Rewards are the core's:
    score gain - nfe_cost * NFE + solve bonus. The episode is truncated after ``max_steps`` policy steps.
    ``info`` carries ``nfe``, ``cell_accuracy``, ``solved``, ``score``.

    ``reset(options={"puzzle": ..., "label": ...})`` starts from a given puzzle (e.g. a held-out set).

    Keyword args: ``task``, task options (registered: ``size=6``), ``policy`` (a :class:`RecursionPolicy`,
    ``"tiny"`` or ``"zoo:NAME"``; default a trained network where a provider has one for the task: on 6x6 Sudoku
    the zoo's ``dis-anytime-sudoku6``, 3 NFE a step; else an untrained :class:`TinyRecursionPolicy`, 2 NFE a step),
    ``max_steps`` (default the policy's own ``max_steps``, else 16), ``nfe_cost``, ``reward_mode``, ``solve_bonus``,
    ``dataset``, ``device``, ``render_mode`` (``"ansi"``/``"rgb_array"``).

    Sample rollout::

        >>> import gymnasium as gym, recursion_env
        >>> env = gym.make("TRMHalting-Sudoku-v0", size=4)  # no trained 4x4 default: the tiny policy
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(0)  # one recursion step
        >>> info["nfe"]
        2
        >>> env.step(1)[2]  # halt: terminated
        True
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4}

    def __init__(self, task: Task | str = "sudoku", policy: RecursionPolicy | str | None = None,
                 render_mode: str | None = None, dataset=None, device: str | torch.device = "cpu",
                 max_steps: int | None = None, policy_seed: int = 0, **kwargs):
        for k in ("latent_dim", "latent_len", "nfe_per_step"):
            if k in kwargs:
                raise ValueError(f"{k} is set by the policy in the halting env, not passed")
        self.render_mode = checked_render_mode(render_mode)
        single_thread_in_workers()
        config, task_kwargs = RecursionConfig.split(kwargs)
        task, dataset = resolve_task(task, dataset, **task_kwargs)
        self.policy = policy = resolve_policy(policy, task, device, policy_seed)
        if max_steps is None:
            max_steps = int(getattr(policy, "max_steps", 16))
        _, latent_len, latent_dim = policy.latent_shape
        self.core = RecursionCore(task, 1, config, dataset=dataset, device=device, max_steps=max_steps,
                                  nfe_per_step=policy.nfe_per_step, latent_len=latent_len, latent_dim=latent_dim)
        self.task = task
        self.max_steps = max_steps
        low = np.array([0, 0, 0, -1, -20, 0], dtype=np.float32)
        high = np.array([1, 1, 1, 1, 20, 1], dtype=np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._features = np.zeros(len(FEATURES), dtype=np.float32)
        self._probs: torch.Tensor | None = None
        self._changed: torch.Tensor | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.core.rng = self.np_random
        options = dict(options or {})
        unknown = set(options) - {"puzzle", "label"}
        if unknown:
            raise ValueError(f"reset options: unknown key(s) {sorted(unknown)}; expected puzzle, label")
        if "puzzle" in options:
            puzzle, label = options["puzzle"], options.get("label")
            x = (self.task.parse(puzzle) if isinstance(puzzle, str) else np.asarray(puzzle, dtype=np.int64))
            x = x.reshape(1, -1)
            if isinstance(label, str):
                label = self.task.parse(label)
            y = None if label is None else np.asarray(label, dtype=np.int64).reshape(1, -1)
            ids = None
        else:
            x, y, ids = self.core.source.draw(1, self.core.rng)
        puzzle = torch.from_numpy(x).to(self.core.device)
        self.core.reset(puzzles=puzzle, labels=y, latent=self.policy.initial_latent(puzzle), puzzle_ids=ids)
        V = self.task.vocab_size
        self._probs = torch.full((1, self.task.seq_len, V), 1.0 / V, device=self.core.device)
        self._changed = None
        self._features = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
        return self._features.copy(), self.core.env_info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (continue) or 1 (halt), got {action!r}")
        if int(action) == 1:
            self.core.stop()
            return self._features.copy(), 0.0, True, False, self.core.env_info()
        core = self.core
        before = core.answer
        out = self.policy.step(core.puzzle, core.latent, core.step_count)
        res = core.step({"latent": out.latent, "answer": out.logits.argmax(-1), "halt": 0})
        blank = core.scored.float()  # (the core's scored cells: for ARC, not the input's PAD cells)
        n_blank = blank.sum().clamp(min=1)
        probs = out.logits.float().softmax(-1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1) / math.log(self.task.vocab_size)
        self._changed = (core.answer != before)
        gain = probs.max(-1).values - self._probs.max(-1).values
        self._probs = probs
        halt_logit = 0.0 if out.halt_logit is None else float(out.halt_logit.reshape(-1)[0].clamp(-20, 20))
        self._features = np.array([
            int(core.step_count[0]) / self.max_steps,
            float((entropy * blank).sum() / n_blank),
            float((self._changed.float() * blank).sum() / n_blank),
            float((gain * blank).sum() / n_blank),
            halt_logit,
            float(self.task.has_rule_verifier and bool(core.solved[0])),  # (the core's rule verdict on the answer)
        ], dtype=np.float32).clip(self.observation_space.low, self.observation_space.high)
        return (self._features.copy(), float(res.reward[0]), bool(res.terminated[0]), bool(res.truncated[0]),
                self.core.env_info())

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        feats = "  ".join(f"{k} {v:.3f}" for k, v in zip(FEATURES, self._features))
        changed = None if self._changed is None else self._changed[0].cpu().numpy()
        return render_env(self.core, self.render_mode, f"nfe {int(self.core.nfe[0])}  {feats}", changed)
