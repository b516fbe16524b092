"""The ``recursion-env`` command line: ``demo`` (the main job), ``data``, ``train``, ``sweep``, ``eval``, ``diagnose``,
``bench``, ``import-official``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import typing
import warnings
from dataclasses import MISSING, fields
from pathlib import Path
from typing import NamedTuple


def add_precision_argument(p: argparse.ArgumentParser, what: str, default: str | None = "auto") -> None:
    from .model.precision import PRECISION_HELP, PRECISIONS

    p.add_argument("--precision", choices=list(PRECISIONS), default=default,
                   help=f"{what}: {PRECISION_HELP}" + (f" (default {default})" if default
                                                       else " (default: the precision the run trained in)"))


def add_eval_compile_argument(p: argparse.ArgumentParser) -> None:
    from .model.precision import COMPILE_MODES

    p.add_argument("--compile", choices=list(COMPILE_MODES), default="auto",
                   help="torch.compile f for the rollout: on, off, or auto (bf16 rollouts of at least 100,000 "
                        "forward passes, e.g. TRM's 336 on 512 puzzles: 26 s instead of 36 s on one CPU thread, "
                        "after a ~6 s compile; fp32 gains nothing); default auto")


def _task_kwargs(args) -> dict:
    """Task options from the command line: those the chosen task declares (``Task.options``) that were given."""
    from recursion_env.tasks import TASKS

    return {k: getattr(args, k) for k in TASKS[args.task].options if getattr(args, k, None) is not None}


def _number_or_keep(text: str):
    return text if text == "keep" else float(text)


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=["sudoku", "maze", "nqueens", "arc"], default="sudoku", help="the puzzle")
    p.add_argument("--size", type=int, default=None, help="sudoku side (4, 6, 9) or maze side (default 9)")
    p.add_argument("--min-givens", type=int, default=None, help="sudoku: fewest givens")
    p.add_argument("--max-givens", type=int, default=None, help="sudoku: most givens")
    p.add_argument("--loop-fraction", type=float, default=None, help="maze: fraction of walls opened into loops")
    p.add_argument("--board", type=int, default=8, help="nqueens: board side")
    p.add_argument("--min-given", type=int, default=None, help="nqueens: fewest given queens")
    p.add_argument("--max-given", type=int, default=None, help="nqueens: most given queens")
    p.add_argument("--version", choices=["arc1", "arc2"], default=None, help="arc: ARC-AGI-1 (default) or -2")
    p.add_argument("--num-aug", type=int, default=None,
                   help="arc: augmented variants per task besides the original (default 8; official 1000)")


def cmd_data_build(args) -> int:
    from recursion_env.tasks import build_dataset, make_task, save_dataset

    from .checkpoint import guard_output

    task = make_task(args.task, **_task_kwargs(args))
    guard_output(args.out if str(args.out).endswith(".npz") else f"{args.out}.npz", args.overwrite)
    t0 = time.perf_counter()
    batch = build_dataset(task, args.n, args.seed, progress=True)
    dt = time.perf_counter() - t0
    out = save_dataset(args.out, task, batch, seed=args.seed)
    print(f"wrote {len(batch)} {task!r} puzzles to {out} in {dt:.1f}s ({len(batch) / max(dt, 1e-9):.0f}/s)")
    return 0


def cmd_data_convert(args) -> int:
    from recursion_env.tasks import SudokuTask
    from recursion_env.tasks.store import convert_csv

    meta = convert_csv(args.file, args.out, SudokuTask(size=args.size or 9), unique=args.unique,
                       overwrite=args.overwrite)
    rate = meta["rows"] / max(meta["seconds"], 1e-9)
    print(f"converted {meta['rows']} rows of {args.file} to {args.out} in {meta['seconds']:.1f}s ({rate:,.0f} rows/s); "
          f"{meta['rejected']} rejected (reasons in {Path(args.out) / meta['rejected_file']})")
    print(f"train from it with: recursion-env train --dataset {args.out} ...")
    return 0


def cmd_sweep(args) -> int:
    from .experiments.sweep import sweep

    report = sweep(args.config, args.out, cpus=args.cpus, address=args.address, overwrite=args.overwrite)
    for t in report["trials"]:
        shown = {k: t[k] for k in ("best_exact_accuracy", "best_at_nfe") if k in t}
        print(f"{t['trial']}: {t['status']} {json.dumps(t['options'])} {json.dumps(shown)}")
    failed = sum(t["status"] != "done" for t in report["trials"])
    print(f"{len(report['trials'])} trials ({failed} failed): {args.out}/results.csv, {args.out}/sweep.json, "
          f"{args.out}/accuracy_vs_nfe.png; each trial's run in {args.out}/trials/")
    return 1 if failed else 0


def cmd_data_show(args) -> int:
    from recursion_env.tasks import load_puzzles, make_task

    path = Path(args.file)
    task = None if path.suffix == ".npz" or path.is_dir() else make_task(args.task, **_task_kwargs(args))
    task, batch = load_puzzles(args.file, task)
    for i in range(min(args.count, len(batch))):
        print(f"# puzzle {i}\n{task.format(batch.inputs[i])}\n")
    print(f"{len(batch)} puzzles of {task!r}")
    return 0


def cmd_demo(args) -> int:
    """The main job: train DIS on generated 6x6 Sudoku for a few minutes, evaluate it on held-out puzzles, and
    show one puzzle being solved step by step."""
    from recursion_env.render import board_text

    from .checkpoint import run_files
    from .eval.diagnostics import diagnose, save_plots
    from .eval.evaluation import load_trained, rollout_metrics
    from .trainers import DISConfig, train

    out = Path(args.out)
    print(f"Training DIS (policy improvement: {6} supervision steps x 1 recursion x 3 calls = 18 forward passes) on "
          f"generated 6x6 Sudoku for {args.minutes} min on {args.device}.")
    cfg = DISConfig(task_kwargs={"size": 6}, model={"hidden": args.hidden}, minutes=args.minutes, seed=args.seed,
                    out=str(out), eval_n=args.eval_n, device=args.device, final_eval=False, precision=args.precision)
    marker = out / "demo.json"
    held = [p.name for p in run_files(out)]
    if held and not marker.exists():
        raise ValueError(f"{out} holds a run that is not a demo run's ({', '.join(held)}; no demo.json): the demo "
                         "replaces only its own run; give another --out")
    if held:
        print(f"(replacing the previous demo run in {out})")
    result = train(cfg, overwrite=True)
    marker.write_text(json.dumps({"command": "recursion-env demo", "minutes": args.minutes, "seed": args.seed,
                                  "hidden": args.hidden}, indent=2))
    print(f"\n{result['optimizer_steps']} optimizer steps in {result['wall_clock_s']:.0f}s, "
          f"{result['examples_seen']:,} generated training puzzles (none of them in the held-out set)")
    report = diagnose(out, n=args.eval_n, device=args.device)
    print(f"\nHeld-out accuracy after each supervision step ({args.eval_n} puzzles never seen in training):")
    print(f"{'step':>5}{'NFE':>6}{'exact':>9}{'cells':>9}")
    for r in report["steps"]:
        print(f"{r['supervision_step']:>5}{r['nfe']:>6}{r['exact_accuracy']:>9.3f}{r['cell_accuracy']:>9.3f}")

    model, task, trained = load_trained(out, args.device)
    puzzle = task.generate(1, seed=args.seed + 77).inputs  # a fresh puzzle, not from training
    label = task.solve(puzzle[0])
    print("\nOne puzzle, step by step ([d] given, d* changed by this step, d! wrong):")
    print(board_text(task, puzzle[0], puzzle[0], label) + "\n")  # (the answer starts as the puzzle)
    previous = puzzle[0]

    def show(s: int, _rows, _out, runner) -> None:  # after each supervision step of the evaluation's own rollout
        nonlocal previous
        core = runner.core
        answer = core.answer[0].cpu().numpy()
        status = "solved" if bool(core.solved[0]) else f"{float(core.cell_accuracy[0]):.0%} of blanks right"
        print(f"after step {s + 1} (NFE {int(core.nfe[0])}): {status}")
        print(board_text(task, puzzle[0], answer, label, changed=answer != previous) + "\n")
        previous = answer

    rollout_metrics(model, task, puzzle, label[None], device=args.device, on_step=show,
                    precision=trained["precision"])
    plots = save_plots(report, out / "plots")
    print(f"checkpoint: {out / 'checkpoint.pt'}\nplots: {', '.join(map(str, plots))}\n"
          f"TensorBoard logs: {out / 'tb'}\nnext: recursion-env eval {out} --guidance 0,1,2 --json {out}/eval.json")
    return 0


def cmd_train(args) -> int:
    from .eval.evaluation import torch_device
    from .trainers import ARC_PRESET, PAPER_PRESET, TrainConfig, method, train
    from .trainers.distributed import launched_rank, launched_world
    from .trainers.loop import ARC_CPU, ARC_PRESET_TASK

    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: choose one")
        if args.method != "ppo":  # a PPO run resumes as PPO whatever --method says
            from .checkpoint import load_newest_valid

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the resume itself warns about a fallback, once
                state, _ = load_newest_valid(Path(args.out) / "checkpoint.pt")
            if state.get("train_config", {}).get("method") == "ppo":
                args.method = "ppo"
    if args.method == "ppo":
        if launched_world() > 1:
            raise ValueError("train --method ppo runs in one process (its collectors spread the environments over "
                             "workers: --collector); torchrun is for --method trm/dis")
        return cmd_train_ppo(args)
    if args.iterations is not None:  # (a resume is checked here, once the run's method is known)
        raise ValueError(f"--iterations is a ppo option; {args.out} is a {args.method} run: give --steps")
    device = str(torch_device(args.device or "cpu"))
    if args.resume:
        result = train(TrainConfig(out=args.out, steps=args.steps, minutes=args.minutes, device=device), resume=True)
    else:
        values = {"paper": PAPER_PRESET, "arc": ARC_PRESET}.get(args.preset, ARC_CPU if args.task == "arc" else {})
        if args.preset == "arc" and args.task != "arc":
            raise ValueError("--preset arc is the paper's ARC recipe: give --task arc")
        values |= given_options(args, args.method)
        task_kwargs = ({**ARC_PRESET_TASK, **_task_kwargs(args)} if args.preset == "arc" else _task_kwargs(args))
        values |= {"task": args.task, "task_kwargs": task_kwargs, "out": args.out, "device": device}
        trainer = method(args.method)
        cfg = trainer.config.from_dict(values)
        if cfg.steps is None and cfg.minutes is None:
            raise ValueError("train needs a budget: --steps N and/or --minutes M")
        result = trainer.train(cfg, overwrite=args.overwrite)
    if launched_rank() != 0:  # under torchrun, rank 0 reports
        return 0
    if "by_step" in result:
        _print_table(result)
    print(json.dumps({k: result[k] for k in ("optimizer_steps", "train_forward_passes", "wall_clock_s")}))
    print(f"checkpoint, config, TensorBoard logs and train_metrics.json are in {args.out}")
    return 0


def cmd_train_ppo(args) -> int:
    from .eval.evaluation import torch_device
    from .trainers.ppo import PPOConfig, train_ppo

    values = given_options(args, "ppo") | {"iterations": args.iterations, "task": args.task,
                                           "task_kwargs": _task_kwargs(args), "out": args.out,
                                           "device": str(torch_device(args.device or "cpu"))}
    if values["iterations"] is None and values.get("minutes") is None:
        raise ValueError("train needs a budget: --iterations N and/or --minutes M")
    result = train_ppo(PPOConfig.from_dict(values), overwrite=args.overwrite, resume=args.resume)
    if result["history"]:
        last = result["history"][-1]
        keys = ("iteration", "return", "mean_nfe", "exact_accuracy", "halting_rate")
        print(json.dumps({k: last.get(k) for k in keys}))
    print(f"checkpoint, TensorBoard logs and ppo_metrics.json are in {args.out}; "
          f"evaluate with: recursion-env eval {args.out} --halting")
    return 0


def _print_table(result: dict) -> None:
    print(f"\n{'N_sup':>6}{'NFE':>7}{'exact':>9}{'cell':>9}")
    for row in result["by_step"]:
        cell = "-" if row["cell_accuracy"] is None else f"{row['cell_accuracy']:.3f}"
        print(f"{row['supervision_step']:>6}{row['nfe']:>7}{row['exact_accuracy']:>9.3f}{cell:>9}")
    if "halting" in result:
        h = result["halting"]
        print(f"halting (greedy, p(halt) > 1/2): mean NFE {h['mean_nfe']:.1f}, exact {h['exact_accuracy']:.3f}")
    if "halting_sampled" in result:
        h = result["halting_sampled"]
        print(f"halting (sampled, the stochastic policy): mean NFE {h['mean_nfe']:.1f}, "
              f"exact {h['exact_accuracy']:.3f}")


def cmd_eval(args) -> int:

    from .eval.evaluation import evaluate_run, torch_device

    if args.json:
        from .checkpoint import guard_output

        guard_output(args.json, args.overwrite)
    if args.task == "arc":
        return cmd_eval_arc(args)
    guidance = [float(w) for w in args.guidance.split(",")] if args.guidance else None
    result = evaluate_run(args.run, n=args.n, puzzles=args.puzzles, halting=args.halting, guidance=guidance,
                          device=torch_device(args.device), precision=args.precision, compile=args.compile)
    _print_table(result)
    for row in result.get("guidance", []):
        print(f"guidance w={row['w']:<5} exact {row['exact_accuracy']:.3f}  cell {row['cell_accuracy']:.3f}")
    _write_json(args.json, result)
    return 0


def _write_json(path, result: dict) -> None:
    """``eval --json PATH``: the result, its folder made; nothing without a path."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


def cmd_zoo_list(args) -> int:
    from . import zoo

    print(zoo.table())
    return 0


def cmd_zoo_build(args) -> int:
    from .zoo.build import build

    m = build(args.name, overwrite=args.overwrite, from_recipe=args.from_recipe)
    last = m["held_out"]["by_step"][-1]
    print(f"wrote zoo:{m['name']} ({m['bytes'] / 2**20:.2f} MB, sha256 {m['sha256'][:12]}...): exact "
          f"{last['exact_accuracy']:.3f} at {last['nfe']} NFE on {m['held_out']['n']} held-out puzzles, built in "
          f"{m['build_seconds']:.0f} s")
    return 0


def cmd_eval_arc(args) -> int:
    from .eval.evaluation import load_trained, torch_device
    from .eval.voting import evaluate_arc

    device = torch_device(args.device)
    model, task, train_config = load_trained(args.run, device)
    if task.name != "arc":
        raise ValueError(f"{args.run} is a {task.name} run: eval --task arc evaluates ARC runs")
    result = evaluate_arc(model, task, n_tasks=args.n, device=device)
    result |= {"method": train_config.get("method", "trm"), "run": str(args.run)}
    print(f"ARC ({result['version']}), {result['tasks']} held-out tasks, {result['test_inputs']} test inputs, "
          f"{result['predictions']} predictions (every variant), voted:")
    print(f"{'N_sup':>6}{'NFE':>7}{'pass@1':>9}{'pass@2':>9}{'exact':>9}{'cell':>9}")
    for row in result["by_step"]:
        print(f"{row['supervision_step']:>6}{row['nfe']:>7}{row['pass@1']:>9.3f}{row['pass@2']:>9.3f}"
              f"{row['exact_accuracy']:>9.3f}{row['cell_accuracy']:>9.3f}")
    _write_json(args.json, result)
    return 0


def cmd_import_official(args) -> int:
    from .model.official import import_official

    task_kwargs = _task_kwargs(args) if args.task else None
    if args.identifiers:
        if args.task != "arc":
            raise ValueError("--identifiers is the identifier table of ARC data: give --task arc")
        task_kwargs["identifiers"] = str(Path(args.identifiers).resolve())
    out = import_official(args.checkpoint, args.out, config=args.config, task=args.task, task_kwargs=task_kwargs,
                          overwrite=args.overwrite)
    print(f"wrote {out / 'checkpoint.pt'}; evaluate with: recursion-env eval {out} --halting")
    return 0


def cmd_diagnose(args) -> int:
    from .checkpoint import guard_output
    from .eval.diagnostics import PLOT_FILES, diagnose, summary_text, write_report
    from .eval.evaluation import torch_device

    outputs = ([args.json] if args.json else []) + ([Path(args.plots) / f for f in PLOT_FILES] if args.plots else [])
    for path in outputs:
        guard_output(path, args.overwrite)
    report = diagnose(args.run, n=args.n, w=args.w, device=torch_device(args.device), puzzles=args.puzzles,
                      precision=args.precision, compile=args.compile)
    print(summary_text(report))
    for path in write_report(report, args.json, args.plots):
        print(f"wrote {path}")
    return 0


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from .model.precision import COMPILE_MODES

    add_task_arguments(p)
    p.add_argument("--preset", choices=["cpu", "long", "quick", "gpu"], default=None,
                   help="cpu (20 min per method, the default), long (the long CPU mode: about 1 h 50 min in all), "
                        "quick (a smoke run of a few minutes) or gpu (9x9 Sudoku on one GPU, 7.3 min on an H200)")
    p.add_argument("--quick", action="store_true", help="the same as --preset quick")
    p.add_argument("--hard", action="store_true", help="sudoku: 9x9 with 22-27 givens instead of 28-34")
    p.add_argument("--out", default="runs/bench/nfe_vs_accuracy", help="the bench folder (a rerun continues it)")
    p.add_argument("--minutes", type=float, default=None, help="training wall-clock per method")
    p.add_argument("--ppo-minutes", type=float, default=None, help="each learned-halting (PPO) run; 0 = none")
    p.add_argument("--recipes", default=None, help="DIS recipes, comma-separated (default official-code,paper)")
    p.add_argument("--targets", default=None,
                   help="DIS target generators, comma-separated (default diffusion, and solver for Sudoku)")
    p.add_argument("--anytime-weight", type=float, default=None,
                   help="the anytime DIS run that PPO learns to halt (default 0.5; 0 = none)")
    p.add_argument("--hidden", type=int, default=None, help="width of every network (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="puzzles per optimizer step (default: the preset's)")
    p.add_argument("--pool", type=int, default=None, help="size of the fixed training set")
    p.add_argument("--eval-n", type=int, default=None, help="held-out puzzles (excluded from training)")
    p.add_argument("--seed", type=int, default=0,
                   help="the training set's seed, and the run seed of the methods trained once")
    p.add_argument("--seeds", default=None,
                   help="run seeds, comma-separated (e.g. 0,1,2): the TRM, the main DIS (first recipe and targets) "
                        "and the anytime DIS train once per seed; the table reports means with their min-max "
                        "(default: --seed alone)")
    p.add_argument("--sequential", action="store_true", help="train methods one after another, all cores each")
    p.add_argument("--device", default=None, help="cpu (default) or cuda (the gpu preset's)")
    add_precision_argument(p, "every run of the bench")
    p.add_argument("--compile", choices=list(COMPILE_MODES), default=None,
                   help="torch.compile f in every trm/dis run (default auto; the gpu preset: on)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out (by default a rerun continues the benchmark there)")
    p.add_argument("--report-only", action="store_true",
                   help="re-derive results.md, the verdict and the plot from --out's results.json, no training")


#: the task options each task takes (the bench passes on only those given)
def cmd_bench(args) -> int:
    from .experiments.bench import BenchConfig, run

    preset = "quick" if args.quick else (args.preset or "cpu")
    if args.quick and args.preset not in (None, "quick"):
        raise ValueError(f"--quick and --preset {args.preset}: choose one")
    kw = {"out": args.out, "seed": args.seed, "parallel": not args.sequential}
    for name in ("minutes", "ppo_minutes", "hidden", "batch_size", "pool", "eval_n", "device", "anytime_weight",
                 "precision", "compile"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    for name in ("targets", "recipes"):
        if getattr(args, name):
            kw[name] = getattr(args, name).split(",")
    if args.seeds:
        try:
            kw["seeds"] = [int(x) for x in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    task_kwargs = _task_kwargs(args)
    if args.task == "nqueens" and task_kwargs.get("board") == 8:
        task_kwargs.pop("board")  # (--board defaults to 8)
    if args.hard:
        if args.task != "sudoku":
            raise ValueError("--hard is a sudoku option")
        task_kwargs |= {"min_givens": 22, "max_givens": 27}
    cfg = BenchConfig.for_task(args.task, preset, task_kwargs=task_kwargs, **kw)
    if cfg.device.startswith("cuda"):
        from .eval.evaluation import torch_device

        torch_device(cfg.device)  # a clear error where there is no CUDA
    if args.report_only:
        from .experiments.bench import rewrite_report

        if not (Path(cfg.out) / "results.json").is_file():
            raise ValueError(f"--report-only: no results.json in {cfg.out} (run the benchmark there first)")
        report = rewrite_report(cfg.out)
    else:
        report = run(cfg, overwrite=args.overwrite)
    print((Path(cfg.out) / "results.md").read_text())
    print(f"verdict: {report['verdict']}")
    print(f"wrote results.json, results.md and accuracy_vs_nfe.png to {cfg.out}")
    return 0


# -- train's options, derived from the methods' config dataclasses -----------------------------------------------
class TrainOption(NamedTuple):
    flags: tuple  # ("--n-sup",): the option's flag names
    dest: str  # the config field
    owners: tuple  # the methods whose config has the field
    model: bool  # a field of the network (TRMConfig), nested as cfg.model
    help: str
    kwargs: dict  # type / choices / action / nargs for argparse


#: config fields that are not options: set by ``train`` itself or by the task options
NOT_OPTIONS = {"method", "task", "task_kwargs", "model", "out", "progress"}
#: network (TRMConfig) fields that are not options: sized from the task, or set by the method (PPO's own
#: ``halt_readout`` field is an option)
NOT_MODEL_OPTIONS = {"seq_len", "vocab_size", "num_puzzle_ids", "step_embedding", "input_from_answer", "halt_readout",
                     "keeps_givens"}
#: A field documents its option beside it (``agents.options.option``: help, choices, flag spellings).


def _argparse_kwargs(name: str, annotation, default, choices=None) -> dict:
    """How argparse reads a field, from its type."""
    if choices:
        return {"choices": list(choices)}
    if name == "halt_bias":
        return {"type": _number_or_keep}
    if annotation in (bool, bool | None):
        if name == "ema_warmup":
            return {"action": argparse.BooleanOptionalAction}
        return {"action": "store_const", "const": not default if default is not None else True}
    if annotation is tuple:
        return {"type": float, "nargs": 2}
    for kind in (int, float, str):
        if annotation in (kind, kind | None):
            return {"type": kind}
    raise TypeError(f"train option {name}: no command-line form for {annotation}")


def _field_default(f) -> object:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


@functools.cache
def train_options() -> dict[str, TrainOption]:
    """dest -> option, over every registered method's config fields (the network's nested in ``model``)."""
    from .model.trm import TRMConfig
    from .trainers import METHODS, config_class

    found: dict[str, dict] = {}

    def add(f, hints, owner, model, default):
        name = f.name
        if name in (NOT_MODEL_OPTIONS if model else NOT_OPTIONS):
            return
        entry = found.setdefault(name, {"owners": [], "model": model, "defaults": {}, "help": f.metadata.get("help"),
                                        "flags": f.metadata.get("flags"),
                                        "kwargs": _argparse_kwargs(name, hints[name], default,
                                                                   f.metadata.get("choices"))})
        entry["help"] = entry["help"] or f.metadata.get("help")  # (a method that redeclares a field's default)
        entry["owners"].append(owner)
        if default is not None and not isinstance(default, bool) and name != "iterations":  # (a budget: given)
            entry["defaults"][owner] = default

    model_hints = typing.get_type_hints(TRMConfig)
    for owner in METHODS:
        cls = config_class(owner)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                add(f, hints, owner, False, _field_default(f))
        if "model" in hints:
            for f in fields(TRMConfig):
                add(f, model_hints, owner, True, cls.MODEL_DEFAULTS.get(f.name, _field_default(f)))
    options = {}
    for name, e in found.items():
        defaults = sorted(set(map(str, e["defaults"].values())))
        shown = ("default " + defaults[0] if len(defaults) == 1 else
                 "default " + ", ".join(f"{o} {v}" for o, v in e["defaults"].items())) if defaults else ""
        help_text = "; ".join(t for t in (e["help"], shown) if t) or None
        if help_text and "%" in help_text:
            help_text = help_text.replace("%", "%%")
        options[name] = TrainOption(e["flags"] or ("--" + name.replace("_", "-"),), name, tuple(e["owners"]),
                                    e["model"], help_text, e["kwargs"])
    return options


def given_options(args, method: str) -> dict:
    """The train options given on the command line that ``method``'s config has (flat: ``from_dict`` nests the
    network's)."""
    return {o.dest: getattr(args, o.dest) for o in train_options().values()
            if method in o.owners and getattr(args, o.dest) is not None}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, plus "(default: X)" after an option's help where it has a default its help does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
        if shown and "default" not in text and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def train_option_group(option: TrainOption) -> str:
    """The heading ``train --help`` lists an option under: the network, every method, or the methods that have it."""
    from .trainers import METHODS

    if option.model:
        return "the network (trm, dis, ppo)"
    if set(option.owners) == set(METHODS):
        return "every method"
    return " and ".join(option.owners) + " only"


def _method_asked_for_help(argv: list[str]) -> str | None:
    """``train --method M --help``: M (its help then lists only M's options); None otherwise."""
    if not argv or argv[0] != "train" or not {"-h", "--help"} & set(argv):
        return None
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return None


def add_rollout_arguments(parser, run_help: str, n_help: str, puzzles_help: str, writes: str, replaces: str) -> None:
    """What every command that rolls a trained run out takes (eval, diagnose): the run, the puzzles, where the
    result goes, the device, the precision and compilation."""
    parser.add_argument("run", help=run_help)
    parser.add_argument("--puzzles", default=None, help=puzzles_help)
    parser.add_argument("--n", type=int, default=1000, help=n_help)
    parser.add_argument("--json", default=None, help=f"write {writes} here (refused if the file exists)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace existing {replaces}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(parser, "the network's precision", default=None)
    add_eval_compile_argument(parser)


def build_parser(help_method: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``help_method`` hides the train options that method does not have from ``train --help``
    (they still parse, and are refused as another method's)."""
    parser = argparse.ArgumentParser(prog="recursion-env", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="build or show puzzle datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser("build", help="generate a dataset and save it as .npz")
    add_task_arguments(build)
    build.add_argument("--n", type=int, required=True, help="puzzles to generate")
    build.add_argument("--seed", type=int, default=0, help="the generator's seed")
    build.add_argument("--out", required=True, help="the .npz file to write (refused if it exists)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    build.set_defaults(func=cmd_data_build)
    convert = data_sub.add_parser(
        "convert", help="convert a Sudoku-Extreme style CSV once to memory-mapped .npy files (resumable)",
        description="Rows are checked (cells, no blanks in the answer, givens kept, the rules obeyed); rejected rows "
        "are listed with their reasons in OUT/rejected.tsv. Stopped or killed, the same command continues. Train "
        "from the folder with train --dataset OUT: rows are read lazily, each torchrun rank its own.")
    convert.add_argument("file", help="the CSV: source,question,answer,rating with a header row")
    convert.add_argument("--out", required=True, help="the folder to write (inputs.npy, labels.npy, meta.json)")
    convert.add_argument("--size", type=int, default=None, help="sudoku side (default 9)")
    convert.add_argument("--unique", action="store_true",
                         help="also reject questions with several solutions (runs the solver on every row: slow)")
    convert.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished conversion")
    convert.set_defaults(func=cmd_data_convert)
    show = data_sub.add_parser("show", help="print puzzles from a .npz, .csv or text file, or a converted folder")
    show.add_argument("file", help="a .npz, .csv or text file of puzzles, or a converted folder")
    add_task_arguments(show)
    show.add_argument("--count", type=int, default=3, help="puzzles to print")
    show.set_defaults(func=cmd_data_show)

    sw = sub.add_parser("sweep", help="a grid or random search over train options with Ray Tune (the [ray] extra)",
                        description="CONFIG (YAML): method, base, grid, random, num_samples, resources; see "
                        "agents/experiments/sweep.py. Each trial is an ordinary run folder in OUT/trials/.")
    sw.add_argument("config", help="the sweep file (YAML or JSON)")
    sw.add_argument("--out", required=True, help="the sweep's folder: trials/, results.csv, sweep.json, a plot")
    sw.add_argument("--cpus", type=int, default=None, help="CPUs Ray may use on this machine (default: all)")
    sw.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto) instead")
    sw.add_argument("--overwrite", action="store_true", help="replace a sweep already in --out")
    sw.set_defaults(func=cmd_sweep)

    tr = sub.add_parser("train", help="train a TRM: deep supervision (trm), policy improvement (dis) or PPO (ppo)",
                        description="Options come from the methods' config dataclasses (agents/trainers): an option "
                                    "of another method than --method's is an error.")
    from .trainers import METHODS

    tr.add_argument("--method", choices=list(METHODS), default="trm",
                    help="trm (deep supervision), dis (policy improvement) or ppo (RL: halting or the whole TRM); "
                         "train --method M --help lists only M's options")
    add_task_arguments(tr)
    tr.add_argument("--out", required=True, help="the run folder: checkpoints, config.json, metrics, tb/ (TensorBoard)")
    tr.add_argument("--preset", choices=["cpu", "paper", "arc"], default="cpu",
                    help="trm/dis: cpu (small sizes, clipping and EMA warm-up; with --task arc also attention, "
                         "batch 16 and 16 held-out examples), paper (the official Sudoku recipe, for a GPU) or arc "
                         "(the official ARC-AGI recipe, for GPUs: with --task arc); options given override the preset")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest valid checkpoint, for --steps more steps and/or "
                         "--minutes more minutes")
    tr.add_argument("--overwrite", action="store_true", help="replace a run already in --out (refused otherwise)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    # every method's options first, then those of fewer methods, the network's last
    for option in sorted(train_options().values(), key=lambda o: (o.model, -len(o.owners))):
        title = train_option_group(option)
        if title not in groups:
            groups[title] = tr.add_argument_group(f"options of {title}")
        group = groups[title]
        hidden = help_method is not None and help_method not in option.owners
        group.add_argument(*option.flags, dest=option.dest, default=None,
                           help=argparse.SUPPRESS if hidden else option.help, **option.kwargs)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a trained run")
    add_rollout_arguments(ev, "a run folder (train, demo or import-official wrote it)",
                          "held-out puzzles; with --task arc: held-out tasks",
                          "a file of puzzles (task's text form, .csv or .npz)", "the result", "--json file")
    ev.add_argument("--task", choices=["arc"], default=None,
                    help="arc: the voting evaluation (every variant of each test input, inverted, voted; pass@1/2)")
    ev.add_argument("--halting", action="store_true", help="also stop each puzzle when its halting head says so")
    ev.add_argument("--guidance", default=None, help="comma-separated guidance weights w, e.g. 0,0.5,1,2")
    ev.set_defaults(func=cmd_eval)

    imp = sub.add_parser("import-official", help="turn a checkpoint of the official TRM code into a run folder")
    imp.add_argument("checkpoint", help="a file the official pretrain.py saved (step_N)")
    imp.add_argument("--out", required=True, help="the run folder to write")
    imp.add_argument("--config", default=None, help="its all_config.yaml (default: the one beside the checkpoint)")
    add_task_arguments(imp)
    imp.add_argument("--identifiers", default=None,
                     help="arc: the identifiers.json of the official data the checkpoint was trained on")
    imp.set_defaults(task=None)
    imp.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    imp.set_defaults(func=cmd_import_official)

    dg = sub.add_parser("diagnose", help="dead-compute diagnostics per supervision step")
    add_rollout_arguments(dg, "a run folder", "held-out puzzles", "a file of puzzles instead of held-out ones",
                          "the report", "--json and --plots files")
    dg.add_argument("--w", type=float, default=1.0, help="guidance weight of the policy the margin is taken under")
    dg.add_argument("--plots", default=None, help="folder for accuracy_vs_nfe.png and margin_per_step.png")
    dg.set_defaults(func=cmd_diagnose)

    zoo = sub.add_parser("zoo", help="trained networks shipped in the package: zoo:NAME wherever a run goes")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_sub.add_parser("list", help="the entries, their tasks and held-out accuracy").set_defaults(func=cmd_zoo_list)
    zb = zoo_sub.add_parser("build", help="retrain an entry from its manifest (or its recipe) and replace it")
    zb.add_argument("name", help="the entry, e.g. trm-sudoku4")
    zb.add_argument("--overwrite", action="store_true", help="replace the entry's files in the package")
    zb.add_argument("--from-recipe", action="store_true",
                    help="train with this version's recipe (agents.zoo.RECIPES) even where a manifest exists, e.g. "
                         "after the recipe changed")
    zb.set_defaults(func=cmd_zoo_build)

    bench = sub.add_parser("bench", help="measured comparisons")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    nva = bench_sub.add_parser("nfe-vs-accuracy", help="TRM (336 NFE) vs DIS (18 NFE), same data and budget")
    add_bench_arguments(nva)
    nva.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="the main job: train DIS on generated 6x6 Sudoku for a few minutes, "
                                       "evaluate, and show a puzzle solved step by step")
    demo.add_argument("--out", default="runs/demo", help="the demo's run folder (refused if it holds another run)")
    demo.add_argument("--minutes", type=float, default=3.0, help="training time")
    demo.add_argument("--hidden", type=int, default=64, help="width of the network")
    demo.add_argument("--eval-n", type=int, default=500, help="held-out puzzles evaluated")
    demo.add_argument("--seed", type=int, default=0, help="seed of the network and the puzzles")
    demo.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(demo, "training and evaluation")
    demo.set_defaults(func=cmd_demo)
    return parser


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser: defaults shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(help_method=_method_asked_for_help(argv)).parse_args(argv)
    try:
        check_arguments(args)
        return args.func(args)
    except ValueError as e:
        print(f"recursion-env: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        # the user's file system said no (an unwritable --out or --json, a file where a folder should be)
        print(f"recursion-env: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


#: what ``train --resume`` takes: the budget and where to run; the run keeps the rest of its own configuration
RESUME_OPTIONS = ("command", "func", "method", "out", "steps", "minutes", "iterations", "device", "resume", "keep")


def check_arguments(args) -> None:
    """Flags that make no sense: another method's options, options a resumed run would ignore, non-positive
    counts, negative budgets."""
    if args.command == "train" and args.resume and not args.overwrite:  # (with --overwrite: "choose one", below)
        defaults = vars(build_parser().parse_args(["train", "--out", args.out]))
        options = train_options()
        ignored = sorted(options[k].flags[0] if k in options else "--" + k.replace("_", "-")
                         for k, v in vars(args).items() if k not in RESUME_OPTIONS and v != defaults.get(k))
        if ignored:
            raise ValueError(f"{', '.join(ignored)} with --resume: a resumed run keeps its own configuration; "
                             "--resume takes --steps/--iterations, --minutes and --device")
    if args.command == "train":
        method = args.method
        if method == "ppo" and args.preset != "cpu":
            raise ValueError("--preset is a trm/dis option; --method ppo does not use it")
        for option in train_options().values():
            if getattr(args, option.dest) is None or method in option.owners:
                continue
            if option.dest == "iterations" and args.resume:
                continue  # a resumed run's own method decides (cmd_train)
            raise ValueError(f"{option.flags[0]} is a {'/'.join(option.owners)} option; --method {method} does not "
                             "use it")
        model_given = [option.flags[0] for option in train_options().values()
                       if option.model and getattr(args, option.dest) is not None]
        if method == "ppo" and args.init and model_given:
            raise ValueError(f"{', '.join(model_given)} with --init: the network is the --init run's")
    for flag in ("steps", "iterations", "minutes"):
        value = getattr(args, flag, None)
        if value is not None and not value >= 0:
            raise ValueError(f"--{flag} must be >= 0, got {value}")
    for flag in ("n", "eval_n", "count"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


if __name__ == "__main__":
    sys.exit(main())
