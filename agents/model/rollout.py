"""A TRM acting in the recursion MDP. Every caller acts through the one step :meth:`TRM.forward` (the MDP state in,
the next latent, logits and halting logit out):

* :class:`RecursionRunner` drives B puzzles through the batched core, one transition per supervision step: the
  trainers and evaluation use it, and none keeps a private copy of the recursion loop. The core holds the carry
  (puzzle, label, y and z, step count, NFE), so TRM's detach of (y, z) between supervision steps is exactly the
  MDP state boundary, and TRM's "replace halted examples by fresh ones" is a partial reset of the core.
* :class:`TRMPolicy` is the policy for the environments' observations (Gymnasium, TorchRL, the halting env), a
  supervision step or one call of f per transition.

(PPO's actor, ``agents.trainers.ppo.TRMActor``, is the same call inside a TorchRL module.)
"""

from __future__ import annotations

import numpy as np
import torch

from recursion_env import RecursionCore, StepResult
from recursion_env.halting_env import RecursionOutput
from recursion_env.tasks import Task

from .precision import autocast, resolve_precision
from .trm import TRM, SupervisionOutput


def guided_logits(out: SupervisionOutput, w: float = 1.0) -> torch.Tensor:
    """Classifier-free-guidance decoding: l_w = l_u + w (l_c - l_u); w = 1 is plain decoding."""
    if w == 1.0:
        return out.logits
    return out.reference_logits + w * (out.logits - out.reference_logits)


class RecursionRunner:
    """B puzzles, one TRM, one :class:`~recursion_env.RecursionCore` with ``nfe_per_step = T (n + 1)``.

    ``forward()`` runs one supervision step from the core's current state (with gradients through the last
    recursion, as TRM trains); ``commit(out, halt)`` hands its detached (y, z) and decoded answer to the core as
    the action and returns the core's transition (reward, termination, ``info`` with ``solved`` and
    ``cell_accuracy``). ``target_fn(step_index)``, when given, supplies a per-step training target (DIS).
    """

    def __init__(self, model: TRM, task: Task, batch_size: int, device: str | torch.device = "cpu",
                 max_steps: int | None = None, **core_kwargs):
        cfg = model.cfg
        self.model, self.task = model, task
        self.core = RecursionCore(
            task, batch_size, latent_dim=cfg.hidden, latent_len=cfg.latent_len,
            nfe_per_step=cfg.nfe_per_supervision_step, max_steps=max_steps or cfg.N_sup, device=device,
            **core_kwargs)

    @property
    def device(self) -> torch.device:
        return self.core.device

    def start(self, puzzles, labels=None, mask=None, puzzle_ids=None) -> None:
        """Begin episodes: all envs, or those in ``mask`` (with one puzzle, and identifier, per masked env)."""
        puzzles = torch.as_tensor(np.asarray(puzzles) if not isinstance(puzzles, torch.Tensor) else puzzles,
                                  device=self.device)
        with torch.no_grad():
            latent = self.model.initial_latent(puzzles)
        self.core.reset(mask, puzzles=puzzles, labels=labels, latent=latent, owned=True,  # a fresh stack
                        puzzle_ids=puzzle_ids)

    def restart(self, mask: torch.Tensor | None, puzzles: torch.Tensor, labels: torch.Tensor,
                puzzle_ids: torch.Tensor) -> None:
        """Begin episodes in the rows of ``mask`` (all when None) from full-batch tensors on the device, the other
        rows ignored: the training loop's in-place replacement of finished rows (``RecursionCore.restart``: no
        checks, no host synchronisation, fixed shapes)."""
        with torch.no_grad():
            latent = torch.stack(self.model.initial_state(1), 1)
        self.core.restart(mask, puzzles, labels, latent, puzzle_ids)

    def forward(self) -> SupervisionOutput:
        core = self.core
        return self.model(core.puzzle, core.latent, core.step_count, core.answer, core.puzzle_id)

    def commit(self, out: SupervisionOutput, halt: torch.Tensor | None = None, w: float = 1.0,
               mask=None) -> StepResult:
        if halt is None:
            halt = torch.zeros(self.core.batch_size, dtype=torch.bool, device=self.device)
        latent = torch.stack([out.y.detach(), out.z.detach()], 1).float()
        answer = guided_logits(out, w).detach().argmax(-1)
        # fresh tensors of the core's shapes and dtypes, from the network: the trusted path, no checks or copies
        return self.core.transition(latent, answer, halt.bool(), mask)


def zoo_policy(task, name: str | None = None, device="cpu") -> TRMPolicy | None:
    """The halting env's policy provider ``zoo`` (entry point ``recursion_env.policies``): zoo entry ``name`` as a
    :class:`TRMPolicy`, or with ``name=None`` the entry that is the halting env's default for ``task``
    (:func:`agents.zoo.halting_env_default`), None when there is none."""
    from .. import zoo

    name = name or zoo.halting_env_default(task)
    if name is None:
        return None
    policy = TRMPolicy.pretrained(name, device)
    cfg = policy.model.cfg
    if (cfg.seq_len, cfg.vocab_size) != (task.seq_len, task.vocab_size):
        raise ValueError(f"policy='zoo:{name}': the entry's network reads {cfg.seq_len} cells of {cfg.vocab_size} "
                         f"tokens, the env's {task.name} has {task.seq_len} of {task.vocab_size}: give the env the "
                         f"entry's task options ({zoo.manifest(name)['task_kwargs']})")
    return policy


class TRMPolicy:
    """A TRM as an agent in the recursion MDP and as the recursion policy of the halting env.

    ``granularity="supervision_step"``: one transition = one supervision step (env ``nfe_per_step`` = T (n+1)).
    ``granularity="call"``: one transition = one call of f (env ``nfe_per_step`` = 1); the position in the
    schedule comes from the observation's ``step`` count, the answer is decoded after the last y update of
    each supervision step, and halting is decided there.
    """

    def __init__(self, model: TRM, granularity: str = "supervision_step", use_halting: bool = True,
                 precision: str = "auto"):
        if granularity not in ("supervision_step", "call"):
            raise ValueError(f"granularity must be 'supervision_step' or 'call', got {granularity!r}")
        self.model, self.granularity, self.use_halting = model.eval(), granularity, use_halting
        #: bf16 autocast or fp32 (``auto``: bf16 where the model's device has native bf16 units)
        self.precision = resolve_precision(precision, model.output_head.weight.device)
        cfg = model.cfg
        self.latent_shape = (2, cfg.latent_len, cfg.hidden)
        self.nfe_per_step = cfg.nfe_per_supervision_step if granularity == "supervision_step" else 1
        #: the episode length it was trained for (the halting env's default ``max_steps``)
        self.max_steps = cfg.N_sup if granularity == "supervision_step" else cfg.N_sup * cfg.nfe_per_supervision_step

    @classmethod
    def pretrained(cls, name: str, device="cpu", **kwargs) -> TRMPolicy:
        """The policy of zoo entry ``name`` (``recursion-env zoo list``), e.g. for the halting env:
        ``gym.make("TRMHalting-Sudoku-v0", size=4, policy=TRMPolicy.pretrained("trm-sudoku4"))``."""
        from ..zoo import load

        model, _ = load(name, device)
        return cls(model, **kwargs)

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.initial_latent(puzzle)

    @torch.no_grad()
    def step(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor | None = None,
             answer: torch.Tensor | None = None, puzzle_id: torch.Tensor | None = None) -> RecursionOutput:
        """One supervision step (the halting env's interface)."""
        with autocast(self.precision, puzzle.device):
            out = self.model(puzzle, latent, step_index, answer, puzzle_id)
        return RecursionOutput(torch.stack([out.y, out.z], 1).float(), out.logits.float(), out.halt_logit.float())

    @torch.no_grad()
    def act(self, obs: dict) -> dict:
        """Action for a batched observation (tensors with a leading batch dimension)."""
        model, cfg = self.model, self.model.cfg
        puzzle, latent, step = obs["puzzle"], obs["latent"], obs["step"].reshape(-1)
        puzzle_id = obs["puzzle_id"].reshape(-1) if "puzzle_id" in obs else None  # (ARC's variants)
        B = puzzle.shape[0]
        if self.granularity == "supervision_step":
            out = self.step(puzzle, latent, step, obs.get("answer"), puzzle_id)
            halt = (out.halt_logit > 0) if self.use_halting else torch.zeros(B, dtype=torch.bool)
            return {"latent": out.latent, "answer": out.logits.argmax(-1), "halt": halt.long()}
        # one call of f, chosen by the position in the T x (n + 1) schedule
        per_sup = cfg.nfe_per_supervision_step
        c = int(step[0]) % per_sup
        if not bool((step % per_sup == c).all()):
            raise ValueError("call granularity needs every env of the batch at the same position in the schedule")
        sup_index = step // per_sup
        y, z = latent[:, 0], latent[:, 1]
        answer = obs["answer"]
        halt = torch.zeros(B, dtype=torch.long, device=puzzle.device)
        with autocast(self.precision, puzzle.device):
            x = model.step_input(puzzle, obs.get("answer"), sup_index, y, puzzle_id)
            y, z = model.recursion_call(c % (cfg.n + 1), x, y, z)
            if c == per_sup - 1:  # the supervision step is complete: read out
                logits, halt_logit, _ = model.readout(y, puzzle)
                answer = logits.argmax(-1)
                if self.use_halting:
                    halt = (halt_logit > 0).long()
        return {"latent": torch.stack([y, z], 1).float(), "answer": answer, "halt": halt}
