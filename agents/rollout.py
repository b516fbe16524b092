"""The one rollout path: a TRM driven through the batched MDP core, one transition per supervision step.

Trainers, evaluation and the environment policy adapter all go through :class:`RecursionRunner`; none keeps
a private copy of the recursion loop. The core holds the carry (puzzle, label, y and z, step count, NFE), so
TRM's detach of (y, z) between supervision steps is exactly the MDP state boundary, and TRM's "replace halted
examples by fresh ones" is a partial reset of the core.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recursion_env import RecursionCore, StepResult
from recursion_env.halting_env import RecursionOutput
from recursion_env.tasks import Task

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

    def start(self, puzzles, labels=None, mask=None) -> None:
        """Begin episodes: all envs, or those in ``mask`` (with one puzzle per masked env)."""
        puzzles = torch.as_tensor(np.asarray(puzzles) if not isinstance(puzzles, torch.Tensor) else puzzles,
                                  device=self.device)
        with torch.no_grad():
            latent = self.model.initial_latent(puzzles)
        self.core.reset(mask, puzzles=puzzles, labels=labels, latent=latent, owned=True)  # a fresh stack

    def forward(self) -> SupervisionOutput:
        core = self.core
        x = self.model.step_input(core.puzzle, core.answer, core.step_count)
        return self.model.supervision_step(x, core.latent[:, 0], core.latent[:, 1])

    def commit(self, out: SupervisionOutput, halt: torch.Tensor | None = None, w: float = 1.0,
               mask=None) -> StepResult:
        if halt is None:
            halt = torch.zeros(self.core.batch_size, dtype=torch.bool, device=self.device)
        latent = torch.stack([out.y.detach(), out.z.detach()], 1).float()
        answer = guided_logits(out, w).detach().argmax(-1)
        # the stack above is fresh and nobody else holds it: the core may keep it without a copy
        return self.core.step({"latent": latent, "answer": answer, "halt": halt}, mask=mask, owned=True)


@torch.no_grad()
def rollout_metrics(model: TRM, task: Task, inputs: np.ndarray, labels: np.ndarray | None = None,
                    batch_size: int = 256, device="cpu", guidance: float = 1.0,
                    on_step: Callable | None = None) -> dict:
    """Run every puzzle for ``N_sup`` supervision steps through the core (no halting) and record, per step,
    ``solved`` (the rule verifier), blank-cell accuracy, and whether the halting head says stop.

    Returns arrays ``solved [N_sup, N]``, ``cell_accuracy [N_sup, N]``, ``halt_logit [N_sup, N]`` and
    ``nfe_per_step``; with labels also ``label_match [N_sup, N]``: the answer equals the stored solution (the
    official metric; it differs from ``solved`` where a puzzle has several valid completions, as N-Queens).
    Halting at evaluation is read off these (see :func:`summarize`): an example halts at the first step its
    halting policy says stop (or the last), with that step's answer, and spends
    (step + 1) * nfe_per_step forward passes; later steps cannot change an earlier step's answer.
    """
    model.eval()
    N_sup = model.cfg.N_sup
    n = len(inputs)
    solved = np.zeros((N_sup, n), dtype=bool)
    cell = np.zeros((N_sup, n), dtype=np.float32)
    halt_logit = np.zeros((N_sup, n), dtype=np.float32)
    label_match = None if labels is None else np.zeros((N_sup, n), dtype=bool)
    for start in range(0, n, batch_size):
        sl = slice(start, min(n, start + batch_size))
        k = sl.stop - sl.start
        # without labels the verifier scores (a task like N-Queens has no single label to derive)
        runner = RecursionRunner(model, task, k, device, **({"reward_mode": "verifier"} if labels is None else {}))
        runner.start(inputs[sl], None if labels is None else labels[sl])
        for s in range(N_sup):
            out = runner.forward()
            res = runner.commit(out, w=guidance)
            solved[s, sl] = res.info["solved"].cpu().numpy()
            cell[s, sl] = res.info["cell_accuracy"].cpu().numpy()
            halt_logit[s, sl] = out.halt_logit.float().cpu().numpy()
            if label_match is not None:
                label_match[s, sl] = (runner.core.answer == runner.core.label).all(1).cpu().numpy()
            if on_step is not None:
                on_step(s, sl, out, runner)
    return {"solved": solved, "cell_accuracy": cell, "halt_logit": halt_logit, "label_match": label_match,
            "nfe_per_step": model.cfg.nfe_per_supervision_step}


def _halting(solved, cell, halt, k, match=None) -> dict:
    N_sup, n = solved.shape
    stop = np.where(halt.any(0), halt.argmax(0), N_sup - 1)  # the first step the policy says stop
    cols = np.arange(n)
    row = {"mean_nfe": float(((stop + 1) * k).mean()), "mean_steps": float((stop + 1).mean()),
           "exact_accuracy": float(solved[stop, cols].mean()), "cell_accuracy": float(cell[stop, cols].mean())}
    if match is not None:
        row["label_match"] = float(match[stop, cols].mean())
    return row


def summarize(metrics: dict, steps: list[int] | None = None, halting_seed: int = 0) -> dict:
    """``by_step`` (accuracy after each supervision-step prefix) and halting from :func:`rollout_metrics`.

    ``halting``: the greedy policy, stop where p(halt) > 1/2 (the halting head's logit > 0), as TRM evaluates.
    ``halting_sampled``: the stochastic policy a PPO controller learns, p(halt) = sigmoid(logit) drawn at each
    step (seeded), which can stop early even when no single step's p(halt) exceeds 1/2."""
    solved, cell, logit, k = metrics["solved"], metrics["cell_accuracy"], metrics["halt_logit"], metrics["nfe_per_step"]
    N_sup, n = solved.shape
    steps = steps or list(range(1, N_sup + 1))
    match = metrics.get("label_match")
    by_step = [{"supervision_step": s, "nfe": s * k, "exact_accuracy": float(solved[s - 1].mean()),
                "cell_accuracy": float(cell[s - 1].mean()),
                **({} if match is None else {"label_match": float(match[s - 1].mean())})} for s in steps]
    draws = np.random.default_rng(halting_seed).random(logit.shape)
    return {"n_puzzles": int(n), "by_step": by_step, "halting": _halting(solved, cell, logit > 0, k, match),
            "halting_sampled": _halting(solved, cell, draws < 1 / (1 + np.exp(-logit.astype(np.float64))), k,
                                        match)}


class TRMPolicy:
    """A TRM as an agent in the recursion MDP and as the recursion policy of the halting env.

    ``granularity="supervision_step"``: one transition = one supervision step (env ``nfe_per_step`` = T (n+1)).
    ``granularity="call"``: one transition = one call of f (env ``nfe_per_step`` = 1); the position in the
    schedule comes from the observation's ``step`` count, the answer is decoded after the last y update of
    each supervision step, and halting is decided there.
    """

    def __init__(self, model: TRM, granularity: str = "supervision_step", use_halting: bool = True):
        if granularity not in ("supervision_step", "call"):
            raise ValueError(f"granularity must be 'supervision_step' or 'call', got {granularity!r}")
        self.model, self.granularity, self.use_halting = model.eval(), granularity, use_halting
        cfg = model.cfg
        self.latent_shape = (2, cfg.latent_len, cfg.hidden)
        self.nfe_per_step = cfg.nfe_per_supervision_step if granularity == "supervision_step" else 1

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.initial_latent(puzzle)

    def _step_input(self, puzzle, latent, step_index, answer=None):
        """x for this step. The halting env passes no answer; models that read it (``input_from_answer``) get the
        previous decoded answer back from y: its readout with the givens kept, and the puzzle before step one."""
        if answer is None and self.model.cfg.input_from_answer:
            decoded = self.model.readout(latent[:, 0])[0].argmax(-1)
            answer = torch.where(puzzle != 0, puzzle, decoded)
            if step_index is not None:
                answer = torch.where((step_index.reshape(-1, 1) == 0), puzzle, answer)
        return self.model.step_input(puzzle, answer, step_index)

    @torch.no_grad()
    def step(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor | None = None,
             answer: torch.Tensor | None = None) -> RecursionOutput:
        """One supervision step (the halting env's interface)."""
        x = self._step_input(puzzle, latent, step_index, answer)
        out = self.model.supervision_step(x, latent[:, 0], latent[:, 1])
        return RecursionOutput(torch.stack([out.y, out.z], 1), out.logits, out.halt_logit)

    @torch.no_grad()
    def act(self, obs: dict) -> dict:
        """Action for a batched observation (tensors with a leading batch dimension)."""
        model, cfg = self.model, self.model.cfg
        puzzle, latent, step = obs["puzzle"], obs["latent"], obs["step"].reshape(-1)
        B = puzzle.shape[0]
        if self.granularity == "supervision_step":
            out = self.step(puzzle, latent, step, obs.get("answer"))
            halt = (out.halt_logit > 0) if self.use_halting else torch.zeros(B, dtype=torch.bool)
            return {"latent": out.latent, "answer": out.logits.argmax(-1), "halt": halt.long()}
        # one call of f, chosen by the position in the T x (n + 1) schedule
        per_sup = cfg.nfe_per_supervision_step
        c = int(step[0]) % per_sup
        if not bool((step % per_sup == c).all()):
            raise ValueError("call granularity needs every env of the batch at the same position in the schedule")
        sup_index = step // per_sup
        x = self._step_input(puzzle, latent, sup_index, obs.get("answer"))
        y, z = latent[:, 0], latent[:, 1]
        answer = obs["answer"]
        halt = torch.zeros(B, dtype=torch.long, device=puzzle.device)
        if c % (cfg.n + 1) < cfg.n:
            z = model.f(z, y + x)
        else:
            y = model.f(y, z)
            if c == per_sup - 1:  # the supervision step is complete: read out
                logits, halt_logit, _ = model.readout(y)
                answer = logits.argmax(-1)
                if self.use_halting:
                    halt = (halt_logit > 0).long()
        return {"latent": torch.stack([y, z], 1), "answer": answer, "halt": halt}
