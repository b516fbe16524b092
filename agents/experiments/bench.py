"""The headline benchmark: accuracy against forward passes. TRM (21 ... 336 NFE, and its halting head), DIS at
18 NFE (both schedules read from the method configs' defaults: `schedule`) in both recipes and with each target
generator, and a learned halting policy (PPO) on the TRM and on an anytime DIS, all on the same data, the same
held-out puzzles, the same width and the same wall-clock. Run as
``recursion-env bench nfe-vs-accuracy`` or ``python benchmarks/nfe_vs_accuracy.py``.

How it is fair: every method trains in its own process (``recursion-env train``) on one pre-generated training
set (with the task's augmentations), from which the held-out puzzles are excluded. The trained methods run at the
same time, one thread each (``parallel``), so each gets an equal share of the machine for the same wall-clock,
and anything else running on the machine slows them all alike; ``--sequential`` trains them one after another
with every thread instead. The PPO runs follow, as a pair, from their finished inits. Then every run is
evaluated on the same held-out puzzles. Training forward passes and examples seen are reported beside accuracy
(the equal-compute view), and each run saves its weights every ``eval_every_minutes`` of training, evaluated on
the held-out puzzles after its training ends, for the time to reach the TRM's best accuracy. (Looking during
training would be unfair: a TRM look costs about 19x a DIS look, so the TRM would train its last minutes alone.)

The benchmark resumes: run the same command again on the same ``--out`` and finished runs are kept, stopped runs
continue from their last checkpoint, and the rest start. ``--overwrite`` starts over.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from recursion_env.atomic import locks_folder
from recursion_env.tasks import build_dataset, make_task, save_dataset

from ..model.precision import cpu_bf16_units, cpu_model
from ..trainers import DeepSupervisionConfig, DISConfig


def schedule(config_class) -> dict[str, int]:
    """A method's recursion schedule (T, n, N_sup) and its forward passes, from its config's defaults: per
    supervision step T (n + 1), in all N_sup T (n + 1)."""
    m = config_class().model
    per_step = m.nfe_per_supervision_step
    return {"T": m.T, "n": m.n, "N_sup": m.N_sup, "nfe_per_step": per_step, "nfe": m.N_sup * per_step}


#: the schedules the bench compares (TRM: 21 NFE a step, 336 in all; DIS: 18), read from the method configs
TRM_SCHEDULE, DIS_SCHEDULE = schedule(DeepSupervisionConfig), schedule(DISConfig)
TRM_FIRST, TRM_FULL, DIS_FULL = TRM_SCHEDULE["nfe_per_step"], TRM_SCHEDULE["nfe"], DIS_SCHEDULE["nfe"]


def _schedule_flags(sched: dict) -> list[str]:
    return ["--T", str(sched["T"]), "--n", str(sched["n"]), "--n-sup", str(sched["N_sup"])]

TRM_PREFIXES = (1, 2, 4, 8, 16)
DEPTH_POINTS = 0.05  # a task needs depth when TRM@336 >= TRM@21 + 5 points
WITHIN = 0.01  # "matches": within 1 point
METRICS = {"exact_accuracy": "any valid completion (rule verifier)",
           "label_match": "exact match to the stored solution (the paper's metric)"}
#: the bench's task settings when only --task is given. N-Queens is the paper's: 8x8, 1-7 queens given,
#: a fixed training set of 7,200 puzzles and 200 test puzzles.
TASK_DEFAULTS = {
    "sudoku": ({"size": 9, "min_givens": 28, "max_givens": 34}, {"pool": 20000, "eval_n": 1000}),
    "nqueens": ({"board": 8, "min_given": 1, "max_given": 7}, {"pool": 7200, "eval_n": 200}),
    "maze": ({"size": 9}, {"pool": 10000, "eval_n": 500}),
}


@dataclass
class BenchConfig:
    out: str = "runs/bench/nfe_vs_accuracy"
    task: str = "sudoku"
    task_kwargs: dict = field(default_factory=lambda: dict(TASK_DEFAULTS["sudoku"][0]))
    minutes: float = 20.0  # training wall-clock per method
    hidden: int = 64
    batch_size: int = 64
    pool: int = 20000  # the fixed training set (augmented by the task's symmetries)
    eval_n: int = 1000  # held-out puzzles, excluded from training
    seed: int = 0  # the training set's, and the seed of the runs that train once
    seeds: list | None = None  # run seeds of the TRM, the main DIS and the anytime DIS (None: [seed])
    recipes: list = field(default_factory=lambda: ["official-code", "paper"])
    targets: list | None = None  # DIS target generators; None = diffusion, plus the solver trace where one exists
    anytime_weight: float = 0.5  # the anytime DIS run that PPO learns to halt; 0 = no such run
    ppo_minutes: float = 3.0  # each PPO halting run (on the TRM and on the anytime DIS); 0 = none
    ppo_nfe_cost: float | None = None  # PPO's reward cost per forward pass (None: PPO's default for the network)
    guidance: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    eval_every_minutes: float | None = None  # held-out looks during training; None = every tenth of the budget
    parallel: bool = True
    device: str = "cpu"
    precision: str = "auto"  # every trm/dis run's --precision (and their evaluation's: the run's own)
    compile: str = "auto"  # every trm/dis run's --compile (the gpu preset: on; compiling is off the training clock)
    preset: str = "cpu"

    def __post_init__(self) -> None:
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"--task {self.task!r}: the bench knows {', '.join(TASK_DEFAULTS)}")
        if self.targets is None:
            self.targets = ["diffusion", "solver"] if self.task == "sudoku" else ["diffusion"]
        if self.seeds is None:
            self.seeds = [self.seed]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds {','.join(map(str, self.seeds))}: give distinct seeds, e.g. 0,1,2")
        if "solver" in self.targets and self.task != "sudoku":
            raise ValueError("--targets solver: solver traces exist for Sudoku only")
        for name in ("minutes", "ppo_minutes"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def for_task(cls, task: str = "sudoku", preset: str = "cpu", **kw) -> BenchConfig:
        """A preset for a task; ``kw`` overrides any field (``task_kwargs`` merges into the task's defaults).

        * ``cpu``: 20 minutes per method, width 64: the comparison in about half an hour.
        * ``long``: the long CPU mode: 90 minutes per method, PPO 8 minutes: about 1 h 50 min in all on 2 cores.
        * ``quick``: a smoke run of a few minutes at width 32 (on Sudoku an easy 6x6): not evidence about depth.
        * ``gpu``: 9x9 Sudoku with 28-34 givens on one GPU (bf16 autocast, width 256, batch 512), the runs
          sharing the card: 437 s end to end on an H200 (BENCHMARKS.md).
        """
        if task not in TASK_DEFAULTS:
            raise ValueError(f"--task {task!r}: the bench knows {', '.join(TASK_DEFAULTS)}")
        task_kwargs, sizes = TASK_DEFAULTS[task]
        values = {"task": task, "task_kwargs": dict(task_kwargs), **sizes, "preset": preset}
        if preset == "long":
            values |= {"minutes": 90.0, "ppo_minutes": 8.0}
        elif preset == "quick":
            values |= {"minutes": 2.0, "hidden": 32, "ppo_minutes": 0.5, "guidance": [0.0, 1.0, 2.0],
                       "pool": min(values["pool"], 3000), "eval_n": min(values["eval_n"], 300)}
            if task == "sudoku":
                values["task_kwargs"] = {"size": 6, "min_givens": 14, "max_givens": 18}
        elif preset == "gpu":
            values |= {"minutes": 4.0, "ppo_minutes": 0.75, "hidden": 256, "batch_size": 512, "pool": 10000,
                       "device": "cuda", "guidance": [0.0, 1.0, 2.0], "compile": "on"}
        elif preset != "cpu":
            raise ValueError(f"--preset {preset!r}: choose cpu, long, quick or gpu")
        values["task_kwargs"] |= kw.pop("task_kwargs", {})
        return cls(**(values | kw))

    @classmethod
    def quick(cls, **kw) -> BenchConfig:
        return cls.for_task(kw.pop("task", "sudoku"), "quick", **kw)


# -- the runs -----------------------------------------------------------------------------------------------------
def _task_flags(cfg: BenchConfig) -> list[str]:
    return ["--task", cfg.task, *[a for k, v in cfg.task_kwargs.items() for a in (f"--{k.replace('_', '-')}", str(v))]]


def seeded(cfg: BenchConfig) -> list[str]:
    """The runs trained once per seed of ``cfg.seeds``: the TRM, the main DIS recipe (the first recipe with the
    first targets) and the anytime DIS. The other recipes train once, with ``cfg.seed``."""
    return ["trm", f"dis-{cfg.recipes[0]}-{cfg.targets[0]}"] + (["dis-anytime"] if cfg.anytime_weight else [])


def seed_run(name: str, seed_index: int, cfg: BenchConfig) -> str:
    """A seeded run's folder name: the first seed keeps the plain name, the others add ``-seedS``."""
    return name if seed_index == 0 else f"{name}-seed{cfg.seeds[seed_index]}"


def base_of(name: str) -> str:
    """The method a run belongs to (``trm-seed2`` -> ``trm``)."""
    return re.sub(r"-seed\d+$", "", name)


def training_runs(cfg: BenchConfig) -> dict[str, list[str]]:
    """name -> the ``train`` flags of each trained method (the PPO runs come after, from these); the seeded
    methods once per seed (:func:`seeded`), seed after seed in that order."""
    common = [*_task_flags(cfg), "--hidden", str(cfg.hidden), "--batch-size", str(cfg.batch_size),
              "--eval-n", str(cfg.eval_n), "--device", cfg.device, "--precision", cfg.precision,
              "--compile", cfg.compile, "--no-final-eval",
              "--eval-every-minutes", str(cfg.eval_every_minutes or max(cfg.minutes / 10, 0.01))]
    methods = {"trm": ["--method", "trm", *_schedule_flags(TRM_SCHEDULE), *common]}
    dis = ["--method", "dis", *_schedule_flags(DIS_SCHEDULE), *common]
    for recipe in cfg.recipes:
        for t in cfg.targets:
            methods[f"dis-{recipe}-{t}"] = [*dis, "--recipe", recipe, "--targets", t]
    if cfg.anytime_weight:
        methods["dis-anytime"] = [*dis, "--recipe", cfg.recipes[0], "--targets", "diffusion", "--anytime-weight",
                                  str(cfg.anytime_weight)]
    runs = {name: [*flags, "--seed", str(cfg.seeds[0] if name in seeded(cfg) else cfg.seed)]
            for name, flags in methods.items()}
    for i, seed in enumerate(cfg.seeds[1:], 1):
        runs |= {seed_run(name, i, cfg): [*methods[name], "--seed", str(seed)] for name in seeded(cfg)}
    return runs


def ppo_runs(cfg: BenchConfig) -> dict[str, tuple[str, list[str]]]:
    """name -> (init run, ``train`` flags) of the learned-halting runs."""
    if not cfg.ppo_minutes:
        return {}
    flags = ["--method", "ppo", "--mode", "halting", "--seed", str(cfg.seeds[0]), "--device", cfg.device]
    if cfg.ppo_nfe_cost is not None:
        flags += ["--nfe-cost", str(cfg.ppo_nfe_cost)]
    if cfg.task == "nqueens":  # many valid completions: reward any of them, not only the stored one
        flags += ["--reward-mode", "verifier"]
    inits = ["trm"] + (["dis-anytime"] if cfg.anytime_weight else [])
    return {f"ppo-{init}": (init, flags) for init in inits}


def run_elapsed_s(run: Path) -> float | None:
    """Training seconds a run folder holds already (None: no checkpoint there)."""
    if not (run / "checkpoint.pt").exists():
        return None
    from ..checkpoint import load_newest_valid

    state, _ = load_newest_valid(run / "checkpoint.pt")
    return float(state["ppo_state"]["elapsed"] if "ppo_state" in state else state["elapsed"])


def train_command(run: Path, flags: list[str], minutes: float) -> list[str] | None:
    """The command that brings ``run`` to ``minutes`` of training: fresh, resumed, or None when it is done."""
    base = [sys.executable, "-m", "agents.cli", "train"]
    done_s = run_elapsed_s(run)
    if done_s is None:
        return [*base, *flags, "--minutes", str(minutes), "--out", str(run), "--overwrite"]  # no checkpoint yet
    left = minutes - done_s / 60
    if left <= 0.01 and (run / ("ppo_metrics.json" if "ppo" in flags else "train_metrics.json")).exists():
        return None
    return [*base, "--resume", "--out", str(run), "--minutes", f"{max(left, 0.001):.4f}"]


def run_jobs(jobs: list[tuple[str, list[str] | None]], out: Path, parallel: bool, progress=print) -> None:
    """Run ``train`` commands, all at once with one thread each or one by one with every thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1" if parallel else str(os.cpu_count()), "PYTHONUNBUFFERED": "1"}
    procs = []
    for name, cmd in jobs:
        if cmd is None:
            progress(f"{name}: trained already")
            continue
        log = open(out / f"{name}.log", "a")  # noqa: SIM115 - closed below
        progress(f"{name}: {' '.join(cmd[2:])}")
        procs.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        if not parallel:
            procs[-1][1].wait()
    for name, p, log in procs:
        code = p.wait()
        log.close()
        if code != 0:
            raise RuntimeError(f"training {name} failed (exit {code}); see {out / (name + '.log')}")
    for name, _, _ in procs:  # a run stopped by a signal exits 0 with its checkpoint but no metrics
        if not any((out / name / f).exists() for f in ("train_metrics.json", "ppo_metrics.json")):
            raise RuntimeError(f"training {name} stopped before its budget (checkpoint kept): run the same command "
                               "again to continue")


REPORT_FILES = ("bench_config.json", "train_pool.npz", "results.json", "results.md", "accuracy_vs_nfe.png")


def bench_files(cfg: BenchConfig, out: Path) -> list[Path]:
    """What a bench wrote in ``out`` (what ``--overwrite`` removes): its report files, and the run folders and logs
    of this configuration's runs and of the one saved there. Anything else in the folder stays."""
    names = set(training_runs(cfg)) | set(ppo_runs(cfg))
    saved = out / "bench_config.json"
    try:
        old = json.loads(saved.read_text())
        old = BenchConfig(**{k: v for k, v in old.items() if k in BenchConfig.__dataclass_fields__})
        names |= set(training_runs(old)) | set(ppo_runs(old))
    except (OSError, ValueError, TypeError):  # no saved configuration, or one this version cannot read
        pass
    found = [out / n for n in REPORT_FILES] + [out / n for n in sorted(names)] + [out / f"{n}.log" for n in names]
    return [p for p in found if p.exists()]


def _check_folder(cfg: BenchConfig, out: Path, overwrite: bool) -> None:
    """A rerun on the same folder resumes the same comparison; another config there is refused, not mixed in."""
    saved = out / "bench_config.json"
    mine = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "compile", "guidance", "preset")}
    if saved.exists() and not overwrite:
        theirs = json.loads(saved.read_text())
        theirs = {k: v for k, v in theirs.items() if k in mine}
        if theirs != mine:
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(f"{out} holds a benchmark with another configuration ({', '.join(diff)} differ): give "
                             "another --out, the same options to resume it, or --overwrite to start over")
    elif overwrite and out.exists():
        for child in bench_files(cfg, out):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(asdict(cfg), indent=2))


@locks_folder(lambda a: a["cfg"].out)
def run(cfg: BenchConfig, progress=print, overwrite: bool = False) -> dict:
    from ..eval.diagnostics import save_plots
    from ..eval.evaluation import evaluate_run

    out = Path(cfg.out)
    _check_folder(cfg, out, overwrite)
    task = make_task(cfg.task, **cfg.task_kwargs)
    pool_path = out / "train_pool.npz"
    if not pool_path.exists():
        progress(f"generating a training set of {cfg.pool} puzzles ({task!r})")
        save_dataset(pool_path, task, build_dataset(task, cfg.pool, cfg.seed, progress=True,
                                                         workers=os.cpu_count() or 1), seed=cfg.seed)
    data = ["--dataset", str(pool_path)]

    t0 = time.time()
    trained = training_runs(cfg)
    run_jobs([(n, train_command(out / n, [*f, *data], cfg.minutes)) for n, f in trained.items()], out, cfg.parallel,
             progress)
    ppo = ppo_runs(cfg)
    run_jobs([(n, train_command(out / n, [*f, "--init", str(out / init)], cfg.ppo_minutes))
              for n, (init, f) in ppo.items()], out, cfg.parallel, progress)
    wall_s = time.time() - t0

    results = {}
    for name in trained:
        progress(f"evaluating {name} on {cfg.eval_n} held-out puzzles")
        train_metrics = json.loads((out / name / "train_metrics.json").read_text())
        trm = base_of(name) == "trm"
        guidance = cfg.guidance if name.startswith("dis") else None
        # one rollout for both: the TRM's whole schedule per puzzle once
        ev = evaluate_run(out / name, n=cfg.eval_n, halting=True, guidance=guidance, device=cfg.device,
                          diagnostics=True, compile=cfg.compile)
        diag = ev["diagnostics"]
        save_plots(diag, out / name / "plots")
        rows = [r for r in ev["by_step"] if not trm or r["supervision_step"] in TRM_PREFIXES]
        for g in ev.get("guidance") or []:
            g.pop("by_step")
        results[name] = {"by_step": rows, "halting": ev["halting"] if trm else None,
                         "guidance": ev.get("guidance"),
                         "optimizer_steps": train_metrics["optimizer_steps"],
                         "precision": train_metrics.get("precision"), "compiled": train_metrics.get("compiled"),
                         "train_forward_passes": train_metrics["train_forward_passes"],
                         "wall_clock_s": train_metrics["wall_clock_s"], "examples_seen": train_metrics["examples_seen"],
                         "held_out_dropped_from_training": train_metrics["held_out_dropped_from_training"],
                         "history": [{"elapsed_s": h["elapsed_s"], "optimizer_step": h["step"],
                                      "best_exact_accuracy": max(r["exact_accuracy"] for r in h["by_step"])}
                                     for h in train_metrics["history"]],
                         "dead_steps": diag["dead_steps"]}
    for name, (init, _) in ppo.items():
        progress(f"evaluating {name} (learned halting on {init}) on {cfg.eval_n} held-out puzzles")
        metrics = json.loads((out / name / "ppo_metrics.json").read_text())
        ev = evaluate_run(out / name, n=cfg.eval_n, halting=True, device=cfg.device)
        results[name] = {"init": init, "halting": ev["halting"], "halting_sampled": ev["halting_sampled"],
                         "iterations": metrics["iterations"], "frames": metrics["frames"],
                         "wall_clock_s": metrics["wall_clock_s"]}
    report = judged(results)
    report |= {"date": time.strftime("%Y-%m-%d %H:%M"), "config": asdict(cfg), "task_name": cfg.task,
               "task": task.kwargs, "wall_clock_training_s": wall_s,
               "schedules": {"trm": TRM_SCHEDULE, "dis": DIS_SCHEDULE},
               "machine_sharing": ("concurrent, one thread per run: equal shares of the machine for the same "
                                   "wall-clock" if cfg.parallel else "sequential, every thread per run"),
               "machine": {"cpu": cpu_model(), "cpu_native_bf16": cpu_bf16_units(), "cores": os.cpu_count(),
                           "python": platform.python_version(),
                           "torch": torch.__version__, "numpy": np.__version__,
                           "gpu": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else None},
               "command": " ".join(sys.argv), "methods": results}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    _plot(report, out / "accuracy_vs_nfe.png")
    return report


# -- the verdict ----------------------------------------------------------------------------------------------
def _at(rows: list[dict], nfe: int, metric: str) -> float | None:
    return next((r[metric] for r in rows if r["nfe"] == nfe and metric in r), None)


def convergence(run: dict) -> dict:
    """Whether a trained run converged: its held-out looks (best exact accuracy over the supervision steps) over
    the last third of its budget rise by less than 1 point above the best look before that third. ``converged`` is
    False when the last third holds no look or the run has fewer than two. ``last_third_rise`` says by how much."""
    looks = [(e["elapsed_s"], e["best_exact_accuracy"]) for e in run.get("history") or []]
    budget = max(run.get("wall_clock_s") or 0.0, looks[-1][0] if looks else 0.0)
    start = 2 / 3 * budget
    before = [a for t, a in looks if t <= start]
    last_third = [a for t, a in looks if t > start]
    if len(looks) < 2 or not last_third:
        return {"converged": False, "last_third_rise": None}
    reference = max(before) if before else last_third[0]
    rise = max(last_third) - reference
    return {"converged": rise < WITHIN, "last_third_rise": rise}


ROW_METRICS = ("exact_accuracy", "label_match", "cell_accuracy")


def seed_groups(results: dict) -> dict[str, list[str]]:
    """method -> its runs, one per seed (``trm`` -> ``trm``, ``trm-seed1``, ...)."""
    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(base_of(name), []).append(name)
    return groups


def _pooled(rows: list[dict], keys) -> dict:
    """The mean over seeds of each metric that every seed has, with its min and max (``*_min``, ``*_max``)."""
    out = {}
    for m in keys:
        values = [r[m] for r in rows if r.get(m) is not None]
        if values and len(values) == len(rows):
            out |= {m: float(np.mean(values)), f"{m}_min": min(values), f"{m}_max": max(values)}
    return out


def seed_means(results: dict) -> dict:
    """Per method: its runs, and its ``by_step`` rows and halting as means over its seeds, with min and max."""
    means = {}
    for base, names in seed_groups(results).items():
        runs = [results[n] for n in names]
        entry: dict = {"runs": names}
        if runs[0].get("by_step"):
            entry["by_step"] = [{"supervision_step": rows[0]["supervision_step"], "nfe": rows[0]["nfe"],
                                 **_pooled(rows, ROW_METRICS)} for rows in zip(*(r["by_step"] for r in runs))]
        if runs[0].get("halting"):
            entry["halting"] = _pooled([r["halting"] for r in runs], ("mean_nfe", "mean_steps", *ROW_METRICS))
        means[base] = entry
    return means


def _rule(first: float, full: float, best_trm: float, best_dis: float) -> tuple[str, str]:
    """The verdict on accuracies alone (before convergence): the issue's definitions, with the reason."""
    if max(best_trm, best_dis) < 0.10:
        return "inconclusive", "too hard for this budget: every method stays below 10% exact"
    if best_trm < 0.10:
        return "inconclusive", "the TRM baseline did not learn within this budget"
    if full - first < DEPTH_POINTS:
        return "inconclusive", (f"the task does not need depth at this budget: TRM gains {full - first:+.3f} "
                                f"from {TRM_FIRST} to {TRM_FULL} NFE (< {DEPTH_POINTS:.2f})")
    if best_dis >= full - WITHIN:
        if best_dis > full + WITHIN:
            return "reproduced", (f"DIS@{DIS_FULL} is {best_dis - full:.3f} above TRM@{TRM_FULL} on a task that "
                                  "needs depth, in "
                                  "equal wall-clock")
        return "reproduced", f"DIS@{DIS_FULL} is within {WITHIN:.2f} of TRM@{TRM_FULL} on a task that needs depth"
    return "not reproduced", f"DIS@{DIS_FULL} is {full - best_dis:.3f} below TRM@{TRM_FULL} on a task that needs depth"


def verdict(results: dict) -> dict:
    """Per metric: **reproduced** (the task needs depth: TRM@336 >= TRM@21 + 5 points, and the best DIS@18 is
    within 1 point of TRM@336, both converged by :func:`convergence`), **not reproduced**, or **inconclusive**
    (with the reason: "inconclusive (baseline not converged)" where it would read reproduced but a method it
    compares is still learning), plus the halting claims and the time each method took to reach the TRM's best
    held-out accuracy. With several seeds the verdict is on the means over seeds, and says how many seeds, each
    judged alone (TRM seed s against the best DIS's seed s), agree with it."""
    means = seed_means(results)
    converged = {k: convergence(v) for k, v in results.items() if v.get("by_step")}
    trm = means["trm"]["by_step"]
    dis = {k: v["by_step"][-1] for k, v in means.items() if k.startswith("dis")}

    def not_converged(names):
        return [n for n in names if n and not converged[n]["converged"]]

    verdicts, depth = {}, {}
    for metric in METRICS:
        first, full = _at(trm, TRM_FIRST, metric), _at(trm, TRM_FULL, metric)
        if first is None:
            continue
        dis18 = {k: r[metric] for k, r in dis.items()}
        best_name = max(dis18, key=dis18.get) if dis18 else None
        best_dis = dis18[best_name] if best_name else 0.0
        depth[metric] = {"trm_21": first, "trm_336": full, "gain": full - first,
                         "needs_depth": full - first >= DEPTH_POINTS}
        n_seeds = len(means["trm"]["runs"])
        numbers = (f"TRM {first:.3f} @{TRM_FIRST} NFE, {full:.3f} @{TRM_FULL}; best DIS @{DIS_FULL} {best_dis:.3f}"
                   + (f" ({best_name})" if best_name else "") + (f"; means of {n_seeds} seeds" if n_seeds > 1 else ""))
        v, why = _rule(first, full, max(r[metric] for r in trm), best_dis)
        learning = not_converged(means["trm"]["runs"] + (means[best_name]["runs"] if best_name else []))
        if v == "reproduced" and learning:
            v = "inconclusive (baseline not converged)"
            why += ("; but " + " and ".join(
                f"{k} was not converged (its looks rose {_rise(converged[k])} over the last third of its budget)"
                for k in learning) + ", so this is a faster start, not equal accuracy at convergence")
        entry = {"verdict": v, "reason": why, "numbers": numbers, "dis_18": dis18,
                 "dis_18_within_1pt_of_trm_336": {k: x >= full - WITHIN for k, x in dis18.items()}}
        if n_seeds > 1:
            per_seed = {}
            for run in means["trm"]["runs"]:
                rows = results[run]["by_step"]
                pair = best_name and best_name + run[len("trm"):]
                pair = pair if pair in results else None  # a DIS recipe trained once: its one run
                d18 = results[pair]["by_step"][-1][metric] if pair else best_dis
                sv, _ = _rule(_at(rows, TRM_FIRST, metric), _at(rows, TRM_FULL, metric), max(r[metric] for r in rows),
                              d18)
                if sv == "reproduced" and not_converged([run, pair]):
                    sv = "inconclusive (baseline not converged)"
                per_seed[run] = sv
            agree = sum(sv == v for sv in per_seed.values())
            entry |= {"per_seed": per_seed, "seeds_agree": agree, "seeds": n_seeds}
            entry["reason"] += f"; {agree} of {n_seeds} seeds, judged alone, agree"
        verdicts[metric] = entry
    metric = "exact_accuracy"
    trm_full = _at(trm, TRM_FULL, metric)
    halting = {}
    for name, m in means.items():
        h = m.get("halting")
        if not h or not name.startswith(("trm", "ppo")):
            continue
        halting[name] = {"mean_nfe": h["mean_nfe"], "exact_accuracy": h["exact_accuracy"],
                         "label_match": h.get("label_match"),
                         "times_fewer_than_336": TRM_FULL / max(h["mean_nfe"], 1e-9),
                         "at_trm_336_accuracy": h["exact_accuracy"] >= trm_full - WITHIN, "seeds": len(m["runs"])}
    target = max((e["best_exact_accuracy"] for e in results["trm"].get("history", [])), default=None)
    if target is not None and target < 0.10:
        target = None  # a TRM that never learned sets no mark worth racing to
    time_to = {}
    for name, r in results.items():
        hist = r.get("history")
        if hist is None or target is None:
            continue
        hit = next((e for e in hist if e["best_exact_accuracy"] >= target - WITHIN), None)
        time_to[name] = None if hit is None else hit["elapsed_s"]
    return {"verdict": verdicts.get(metric, {}).get("verdict", "inconclusive"), "verdicts": verdicts,
            "depth_check": depth, "halting": halting, "convergence": converged, "seed_means": means,
            "time_to_trm_best": {"trm_best_exact_during_training": target, "seconds": time_to}}


def judged(results: dict) -> dict:
    """:func:`verdict`, with each trained run's ``converged`` and ``last_third_rise`` written into its results."""
    report = verdict(results)
    for name, c in report["convergence"].items():
        results[name] |= c
    return report


def _rise(c: dict) -> str:
    return "-" if c["last_third_rise"] is None else f"{c['last_third_rise']:+.3f}"


def rewrite_report(out) -> dict:
    """Re-derive the verdict, results.md and the plot from a finished run's results.json (no training)."""
    out = Path(out)
    report = json.loads((out / "results.json").read_text())
    report |= judged(report["methods"])
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
    _plot(report, out / "accuracy_vs_nfe.png")
    return report


def markdown(report: dict) -> str:
    cfg = report["config"]
    task = f"{report.get('task_name', 'sudoku')} {report['task']}"
    gpu = report["machine"].get("gpu")
    lines = [f"# NFE vs accuracy: {task} ({report['date']})", "",
             f"{cfg['minutes']} min of training per method, width {cfg['hidden']}, batch {cfg['batch_size']}, "
             f"{cfg['pool']} training puzzles, {cfg['eval_n']} held-out; "
             f"{gpu or str(report['machine']['cores']) + ' cores (' + report['machine']['cpu'] + ')'}; "
             f"{report.get('machine_sharing', '')}.", "",
             f"**Verdict: {report['verdict']}.**", ""]
    for metric, v in report["verdicts"].items():
        lines.append(f"- {METRICS[metric]}: **{v['verdict']}**: {v['reason']} ({v['numbers']}).")
    lines += ["", "| method | supervision steps | NFE | exact (any valid) | stored-solution match | blank-cell |",
              "| --- | --- | --- | --- | --- | --- |"]

    def fmt(row, m, digits=3):  # a mean over seeds carries its range
        x = row.get(m)
        if x is None:
            return "-"
        lo, hi = row.get(f"{m}_min", x), row.get(f"{m}_max", x)
        return f"{x:.{digits}f}" + ("" if lo == hi else f" ({lo:.{digits}f}-{hi:.{digits}f})")

    for name, m in report["seed_means"].items():
        label = name + (f" ({len(m['runs'])} seeds)" if len(m["runs"]) > 1 else "")
        for row in m.get("by_step") or []:
            lines.append(f"| {label} | {row['supervision_step']} | {row['nfe']} | {fmt(row, 'exact_accuracy')} | "
                         f"{fmt(row, 'label_match')} | {fmt(row, 'cell_accuracy')} |")
        h = m.get("halting")
        if h:
            what = ("halting head" if name == "trm"
                    else f"learned halting (PPO on {report['methods'][m['runs'][0]].get('init')})")
            lines.append(f"| {label} + {what} | {fmt(h, 'mean_steps', 2)} (mean) | "
                         f"{fmt(h, 'mean_nfe', 1)} (mean) | {fmt(h, 'exact_accuracy')} | {fmt(h, 'label_match')} | "
                         f"{fmt(h, 'cell_accuracy')} |")
    lines += ["", "| method | optimizer steps / PPO iterations | training forward passes | examples seen | "
              "wall-clock s | time to TRM's best (s) | dead steps |", "| --- | --- | --- | --- | --- | --- | --- |"]
    seconds = report.get("time_to_trm_best", {}).get("seconds", {})
    for name, r in report["methods"].items():
        if "init" in r:
            lines.append(f"| {name} | {r['iterations']} | - | {r['frames']:,} frames | {r['wall_clock_s']:.0f} | "
                         "- | - |")
            continue
        t = seconds.get(name)
        lines.append(f"| {name} | {r['optimizer_steps']} | {r['train_forward_passes']:,} | {r['examples_seen']:,} | "
                     f"{r['wall_clock_s']:.0f} | {'not reached' if t is None else f'{t:.0f}'} | "
                     f"{r['dead_steps'] or 'none'} |")
    if report.get("convergence"):
        lines += ["", "Converged (held-out looks over the last third of the budget rise < 1 point): " + "; ".join(
            f"{k} {'yes' if c['converged'] else 'no'} ({_rise(c)})" for k, c in report["convergence"].items())]
    if report.get("halting"):
        lines += ["", "Halting: " + "; ".join(
            f"{k}: {h['mean_nfe']:.1f} NFE mean ({h['times_fewer_than_336']:.1f}x fewer than {TRM_FULL}) at "
            f"{h['exact_accuracy']:.3f} exact{' (matches TRM@336)' if h['at_trm_336_accuracy'] else ''}"
            for k, h in report["halting"].items())]
    for name, r in report["methods"].items():
        if r.get("guidance"):
            lines += ["", f"Guidance sweep, {name} (all steps): " + ", ".join(
                f"w={g['w']}: {g['exact_accuracy']:.3f}" for g in r["guidance"])]
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, curves) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.5, 1]})
    for name, r in report["methods"].items():
        if r.get("history"):
            curves.plot([e["elapsed_s"] / 60 for e in r["history"]], [e["best_exact_accuracy"] for e in r["history"]],
                        ".-", label=name + ("" if r.get("converged", True) else " (not converged)"))
    curves.set(xlabel="training minutes", ylabel="held-out exact accuracy (best step)", ylim=(0, 1.02),
               title="held-out looks during training")
    curves.legend(fontsize=7)
    for name, m in report["seed_means"].items():  # means over seeds, their range as error bars
        label = name + (f" ({len(m['runs'])} seeds)" if len(m["runs"]) > 1 else "")
        if m.get("by_step"):
            rows = m["by_step"]
            acc = np.array([x["exact_accuracy"] for x in rows])
            spread = [acc - [x.get("exact_accuracy_min", a) for x, a in zip(rows, acc)],
                      [x.get("exact_accuracy_max", a) for x, a in zip(rows, acc)] - acc]
            ax.errorbar([x["nfe"] for x in rows], acc, yerr=spread, fmt="o-", capsize=3, label=label)
        if m.get("halting"):
            ax.plot([m["halting"]["mean_nfe"]], [m["halting"]["exact_accuracy"]], "*", ms=12,
                    label=f"{label} + halting head" if name == "trm" else label)
    ax.set(xscale="log", xlabel="forward passes per puzzle (NFE)", ylabel="exact accuracy (held-out)",
           ylim=(0, 1.02), title=f"accuracy vs NFE: {report.get('task_name', 'sudoku')}")
    ticks = []
    for t in sorted({x["nfe"] for r in report["methods"].values() for x in r.get("by_step") or []}):
        if not ticks or t >= 1.3 * ticks[-1]:  # labels closer than that overlap on a log axis
            ticks.append(t)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

