"""Sweeps and many seeds with Ray Tune (the optional extra: ``pip install -e '.[ray]'``).

``recursion-env sweep CONFIG --out DIR`` reads a YAML (or JSON) file::

    method: dis                 # trm | dis (the supervised trainers)
    base:                       # what every trial shares: train options by field name (flat, as --preset paper)
      size: 6                   #   task options (size, min_givens, ...) go into task_kwargs
      hidden: 32
      minutes: 2
    grid:                       # every combination (Ray Tune's grid_search)
      seed: [0, 1, 2]
    random:                     # drawn num_samples times per grid point
      lr: {loguniform: [1.0e-4, 3.0e-3]}     # or uniform / randint: [low, high], choice: [a, b, ...]
    num_samples: 1
    resources: {cpu: 1, gpu: 0}              # per trial; fractional GPUs share a card (gpu: 0.25)

and runs one ordinary training run per trial in ``DIR/trials/<trial>`` (checkpoint, TensorBoard logs,
``train_metrics.json``: ``recursion-env eval`` reads it like any run). When all trials have ended it gathers them:
``DIR/sweep.json`` and ``DIR/results.csv`` (one row per trial: its options, status, best exact accuracy and the
NFE where it was reached) and ``DIR/accuracy_vs_nfe.png`` (held-out exact accuracy after each supervision step,
one line per trial). On this machine Ray runs locally (``ray.init`` with ``--cpus``); ``--address`` joins a
running cluster.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import fields
from pathlib import Path

from recursion_env.atomic import locks_folder
from recursion_env.tasks import TASKS

#: task options a sweep config may give at the top level of ``base``/``grid``/``random`` (into ``task_kwargs``)
#: the task options a sweep file may give beside the method's (each task declares its own: ``Task.options``)
TASK_KEYS = tuple(dict.fromkeys(k for cls in TASKS.values() for k in cls.options))
SAMPLERS = ("uniform", "loguniform", "randint", "choice")


def need_ray():
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ValueError(f"recursion-env sweep needs Ray Tune, an optional extra: pip install -e '.[ray]' ({e})") \
            from None
    return ray, tune


def read_sweep(path) -> dict:
    """The sweep file, checked: every key a train option of ``method`` (or a task option), every search a list
    or a known sampler. One ``ValueError`` naming the file and the key otherwise."""
    from ..checkpoint import read_yaml
    from ..trainers import method as get_method

    path = Path(path)
    spec = read_yaml(path, "sweep file")
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with method, base, grid, random, num_samples, resources")
    unknown = sorted(set(spec) - {"method", "base", "grid", "random", "num_samples", "resources", "metric"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    name = spec.get("method", "trm")
    if name not in ("trm", "dis"):
        raise ValueError(f"{path}: method {name!r}: sweeps run the supervised trainers (trm, dis)")
    config = get_method(name).config
    from ..trainers.loop import MODEL_FIELDS

    options = {f.name for f in fields(config) if f.init} | MODEL_FIELDS | set(TASK_KEYS)
    for part in ("base", "grid", "random"):
        block = spec.get(part) or {}
        if not isinstance(block, dict):
            raise ValueError(f"{path}: {part} must be a mapping of option: value")
        for key, value in block.items():
            if key not in options or key in ("out", "method"):
                raise ValueError(f"{path}: {part}.{key}: not a train option of --method {name}")
            if part == "grid" and not (isinstance(value, list) and value):
                raise ValueError(f"{path}: grid.{key}: expected a non-empty list of values")
            if part == "random" and not (isinstance(value, dict) and len(value) == 1 and set(value) <= set(SAMPLERS)):
                raise ValueError(f"{path}: random.{key}: expected one of {{{', '.join(SAMPLERS)}: [...]}}")
    resources = {"cpu": 1, "gpu": 0, **(spec.get("resources") or {})}
    if set(resources) - {"cpu", "gpu"} or resources["cpu"] <= 0 or resources["gpu"] < 0:
        raise ValueError(f"{path}: resources: expected {{cpu: > 0, gpu: >= 0}}, got {resources}")
    num_samples = spec.get("num_samples", 1)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{path}: num_samples must be an integer >= 1, got {num_samples!r}")
    return {"method": name, "base": dict(spec.get("base") or {}), "grid": dict(spec.get("grid") or {}),
            "random": dict(spec.get("random") or {}), "num_samples": num_samples, "resources": resources}


def run_config(method: str, options: dict, out: str, device: str):
    """One trial's training config, built as the command line builds it (flat, then nested by ``from_dict``)."""
    from ..trainers import method as get_method

    values = dict(options)
    task_kwargs = dict(values.pop("task_kwargs", None) or {})
    task_kwargs |= {k: values.pop(k) for k in TASK_KEYS if k in values}
    config = get_method(method).config
    if task_kwargs:
        values["task_kwargs"] = task_kwargs
    return config.from_dict(values | {"out": out, "device": device, "progress": False})


def trial(params: dict) -> None:
    """A Ray Tune trial: an ordinary training run in the sweep's ``trials/`` folder; reports its summary."""
    import torch
    from ray import tune

    from ..trainers import method as get_method

    options = {k: v for k, v in params.items() if not k.startswith("_")}
    context = tune.get_context()
    out = Path(params["_trials"]) / context.get_trial_name()
    torch.set_num_threads(max(1, int(params["_cpu"])))
    device = "cuda" if params["_gpu"] > 0 and torch.cuda.is_available() else "cpu"
    cfg = run_config(params["_method"], options, str(out), device)
    result = get_method(params["_method"]).train(cfg)
    tune.report(summary(result) | {"run": str(out)})


def summary(result: dict) -> dict:
    """A run's result as the scalars a sweep's table holds."""
    row = {"optimizer_steps": result["optimizer_steps"], "wall_clock_s": result["wall_clock_s"]}
    if result.get("by_step"):
        best = max(result["by_step"], key=lambda r: (r["exact_accuracy"], -r["nfe"]))
        last = result["by_step"][-1]
        row |= {"best_exact_accuracy": best["exact_accuracy"], "best_at_nfe": best["nfe"],
                "exact_at_max_nfe": last["exact_accuracy"], "max_nfe": last["nfe"],
                "halting_exact_accuracy": result["halting"]["exact_accuracy"],
                "halting_mean_nfe": result["halting"]["mean_nfe"]}
    return row


@locks_folder(lambda a: a["out"])
def sweep(path, out, cpus: int | None = None, address: str | None = None, overwrite: bool = False) -> dict:
    """Run the sweep in ``path``; returns what ``DIR/sweep.json`` holds."""
    ray, tune = need_ray()
    spec = read_sweep(path)
    out = Path(out).resolve()
    if (out / "sweep.json").exists() and not overwrite:
        raise ValueError(f"{out} already holds a sweep (sweep.json): choose another --out or pass --overwrite")
    if (out / "trials").exists():
        import shutil

        if not overwrite:
            raise ValueError(f"{out}/trials holds runs of an unfinished sweep: choose another --out or pass "
                             "--overwrite to replace them")
        shutil.rmtree(out / "trials")
    (out / "trials").mkdir(parents=True, exist_ok=True)
    if spec["base"].get("dataset"):  # the user's path, relative to where they run the sweep, not to a trial's
        spec["base"]["dataset"] = str(Path(spec["base"]["dataset"]).resolve())
    samplers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint,
                "choice": tune.choice}
    space = dict(spec["base"])
    space |= {k: tune.grid_search(v) for k, v in spec["grid"].items()}
    for key, sampler in spec["random"].items():
        (kind, arg), = sampler.items()
        space[key] = samplers[kind](arg) if kind == "choice" else samplers[kind](*arg)
    res = spec["resources"]
    space |= {"_method": spec["method"], "_trials": str(out / "trials"), "_cpu": res["cpu"], "_gpu": res["gpu"]}

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else (cpus or os.cpu_count()), include_dashboard=False,
                 log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(res["cpu"])))}})
    try:
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": res["cpu"], "gpu": res["gpu"]}), param_space=space,
            tune_config=tune.TuneConfig(num_samples=spec["num_samples"]),
            run_config=tune.RunConfig(name="ray", storage_path=str(out), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    trials = []
    for r in grid:
        params = {k: v for k, v in (r.config or {}).items() if not k.startswith("_")}
        row = {"trial": Path(r.metrics.get("run", "")).name or None, "status": "error" if r.error else "done",
               "options": params, **{k: v for k, v in r.metrics.items() if k in SUMMARY_KEYS}}
        if r.error:
            row["error"] = str(r.error).strip().splitlines()[-1][:500]
        row["run"] = r.metrics.get("run")
        trials.append(row)
    trials.sort(key=lambda t: t["trial"] or "")
    report = {"sweep": str(Path(path).resolve()), "spec": spec, "trials": trials}
    (out / "sweep.json").write_text(json.dumps(report, indent=2, default=str))
    write_table(out / "results.csv", trials)
    plot_trials(out / "accuracy_vs_nfe.png", trials)
    return report


SUMMARY_KEYS = ("optimizer_steps", "wall_clock_s", "best_exact_accuracy", "best_at_nfe", "exact_at_max_nfe",
                "max_nfe", "halting_exact_accuracy", "halting_mean_nfe")


def write_table(path: Path, trials: list[dict]) -> None:
    searched = sorted({k for t in trials for k in t["options"]})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", *searched, *SUMMARY_KEYS, "run"])
        for t in trials:
            w.writerow([t["trial"], t["status"], *(json.dumps(t["options"].get(k)) for k in searched),
                        *(t.get(k) for k in SUMMARY_KEYS), t.get("run")])


def plot_trials(path: Path, trials: list[dict]) -> None:
    """Held-out exact accuracy against NFE (after each supervision step), one line per finished trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    varied = [k for k in sorted({k for t in trials for k in t["options"]})
              if len({json.dumps(t["options"].get(k)) for t in trials}) > 1]
    for t in trials:
        metrics = Path(t["run"] or "/nonexistent") / "train_metrics.json"
        if t["status"] != "done" or not metrics.exists():
            continue
        by_step = json.loads(metrics.read_text()).get("by_step") or []
        label = ", ".join(f"{k}={t['options'][k]}" for k in varied if k in t["options"]) or t["trial"]
        ax.plot([r["nfe"] for r in by_step], [r["exact_accuracy"] for r in by_step], marker="o", label=label)
    ax.set_xlabel("forward passes (NFE)")
    ax.set_ylabel("held-out exact accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
