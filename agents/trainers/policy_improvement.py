"""Policy improvement, Deep Improvement Supervision (DIS): every supervision step is trained toward its own,
strictly better intermediate target, so each step is a policy-improvement step. Defaults T=1, n=2, N_sup=6:
6 x 1 x 3 = 18 forward passes per puzzle instead of TRM's 336, and no halting head.

The loop itself is :func:`agents.trainers.loop.train`; this file is what is specific to DIS: the targets
(sampled afresh, per puzzle, when an episode starts in the core), the step index embedded into the input, and
the per-step loss. Two recipes (``DISConfig.recipe``): "official-code" (the default; the official DIS code: the
previous step's decoded answer is the next step's input, the steps weigh the same) and "paper" (the paper's
pseudocode and text: the puzzle is every step's input, step weights increase linearly). In both the step index
is embedded into x (the official code's ``timestep_embed``) and step s is trained toward target s of the path,
the last one being the solution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..model.rollout import RecursionRunner
from ..model.trm import SupervisionOutput, TRMConfig
from ..options import option
from .loop import TrainConfig, counted_cells, exactly_right, token_loss, train
from .registry import Method, register
from .targets import GENERATORS, make_targets

#: the two DIS recipes (see DISConfig.recipe)
DIS_RECIPES = {"paper": {"step_weight": "linear", "autoregressive": False},
               "official-code": {"step_weight": "uniform", "autoregressive": True}}


@dataclass
class DISConfig(TrainConfig):
    """``train --method dis``: the shared fields, the paper's schedule (T=1, n=2, N_sup=6: 18 NFE) and DIS's own.

    ``recipe`` "official-code" (the default): the previous step's decoded answer as input, uniform step weights
    (the official DIS code); "paper": the puzzle as every step's input, linearly increasing weights (the paper's
    pseudocode and text). Measured on the same budget (benchmarks/dis_recipes.py, BENCHMARKS.md), official-code was
    as good on 6x6 Sudoku and 8.6 points better on N-Queens. ``step_weight`` / ``autoregressive``, when set,
    override the recipe's choice."""

    MODEL_DEFAULTS: ClassVar[dict] = {"hidden": 64, "T": 1, "n": 2, "N_sup": 6}

    method: str = field(default="dis", init=False)
    #: the intermediate-target generator: diffusion, mask or solver (Sudoku)
    targets: str = option("diffusion", "dis: intermediate-target generator", choices=GENERATORS)
    recipe: str = option(
        "official-code",
        "dis: 'official-code' (the official DIS code: the previous decoded answer as input, uniform step weights) or"
        " 'paper' (the puzzle as every step's input, linearly increasing weights)",
        choices=tuple(DIS_RECIPES))
    step_weight: str | None = option(
        None,
        "dis: per-step loss weights, linear (the paper) or uniform (the official code); default the recipe's",
        choices=("linear", "uniform"))
    autoregressive: bool | None = option(
        None,
        "dis: feed the previous decoded answer as the next step's input (whatever the recipe)")
    anytime_weight: float = option(0.0, "dis: weight of an extra loss toward the final solution at every step")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recipe not in DIS_RECIPES:
            raise ValueError(f"recipe must be one of {sorted(DIS_RECIPES)}, got {self.recipe!r}")
        if self.step_weight is not None and self.step_weight not in ("linear", "uniform"):
            raise ValueError(f"step_weight must be 'linear' or 'uniform', got {self.step_weight!r}")
        if self.targets not in GENERATORS:
            raise ValueError(f"targets must be one of {', '.join(GENERATORS)}, got {self.targets!r}")

    @property
    def dis_step_weight(self) -> str:
        return self.step_weight or DIS_RECIPES[self.recipe]["step_weight"]

    @property
    def dis_autoregressive(self) -> bool:
        return DIS_RECIPES[self.recipe]["autoregressive"] if self.autoregressive is None else self.autoregressive

    def model_config(self, task) -> TRMConfig:
        """The step index embedded into x (the official ``timestep_embed``), and with the autoregressive recipe
        the previous decoded answer as the input."""
        return self.model.for_task(task, step_embedding=self.model.N_sup, input_from_answer=self.dis_autoregressive)


class PolicyImprovement:

    def __init__(self, cfg: DISConfig, device: str | torch.device = "cpu", rank: int = 0):
        self.cfg = cfg
        N_sup = cfg.model.N_sup
        # draws the target paths; each data-parallel rank its own
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + 2 + 1_000_003 * rank)
        self.targets: torch.Tensor | None = None  # [B, N_sup, L]
        s = torch.arange(1, N_sup + 1, dtype=torch.float32)
        self.step_weights = (s / s.mean() if cfg.dis_step_weight == "linear" else torch.ones_like(s)).to(device)

    def prepare(self, runner: RecursionRunner, puzzles: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target paths ``[n, N_sup, L]`` for puzzles entering the loop's feed, drawn then, in stream order (so
        the loop hands them out with their puzzles without drawing on the way)."""
        labels = torch.where(runner.core.givens_of(puzzles), puzzles, labels)  # (as the core keeps them)
        return make_targets(self.cfg.targets, runner.task, puzzles, labels, self.cfg.model.N_sup, self.generator)

    def on_start(self, runner: RecursionRunner, mask: torch.Tensor | None, extra: torch.Tensor) -> None:
        """The started rows' target paths (``extra``, from :meth:`prepare`; all rows when ``mask`` is None)."""
        self.targets = extra if mask is None or self.targets is None else torch.where(
            mask[:, None, None], extra, self.targets)

    def loss(self, out: SupervisionOutput, runner: RecursionRunner):
        core = runner.core
        s = core.step_count.clamp(max=self.cfg.model.N_sup - 1)
        target = self.targets.gather(1, s.view(-1, 1, 1).expand(-1, 1, self.targets.shape[-1])).squeeze(1)
        weights = self.step_weights[s]
        counted = counted_cells(runner)
        per_example = token_loss(self.cfg, out.logits, target, counted)
        loss = (weights * per_example).mean()
        if self.cfg.anytime_weight:  # anytime variant: every readout also leans toward the final solution
            loss = loss + self.cfg.anytime_weight * token_loss(self.cfg, out.logits, core.label, counted).mean()
        hit = exactly_right(out.logits, target, counted).float().mean()
        return loss, {"dis_loss": per_example.detach().mean(), "target_exact": hit}

    def halt(self, out: SupervisionOutput, runner: RecursionRunner, rng: torch.Generator) -> torch.Tensor:
        """No halting head: every puzzle runs its N_sup steps (the core truncates there)."""
        return torch.zeros(runner.core.batch_size, dtype=torch.bool, device=runner.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "targets": self.targets}

    def load_state_dict(self, state: dict) -> None:
        if "generator" not in state:
            raise ValueError("this DIS run was saved by an older recursion-env (its target paths drawn by NumPy): "
                             "it cannot be resumed exactly; retrain it")
        self.generator.set_state(state["generator"].cpu())
        self.targets = state["targets"]


METHOD = register(Method("dis", DISConfig, train, PolicyImprovement))
