"""``recursion-env zoo build NAME``: train an entry with the commands of its manifest (or of its recipe, for an
entry not built yet), keep only what loading needs (the EMA weights, the configs, the task), measure it on the
held-out puzzles and write ``NAME.pt`` and ``NAME.json``."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from recursion_env.atomic import atomic_write

from .. import checkpoint, zoo
from ..checkpoint import load_checkpoint, save_checkpoint
from ..eval.evaluation import evaluate_run
from ..model.precision import cpu_model

#: what an entry keeps of a run's checkpoint (no optimizer, no training state)
KEPT = ("model_config", "ema", "task", "task_kwargs", "train_config")


def code_version() -> str:
    """The package version and, in a git checkout, the commit (with ``+changes`` when the tree differs)."""
    from recursion_env import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit[:12]}{'+changes' if dirty else ''}" if commit else __version__


def _entry_files(name: str, overwrite: bool) -> tuple[Path, Path]:
    """(weights, manifest) paths of entry ``name``; refused where they exist, unless ``overwrite``."""
    weights, manifest_path = checkpoint.ZOO_DIR / f"{name}.pt", checkpoint.ZOO_DIR / f"{name}.json"
    if (weights.exists() or manifest_path.exists()) and not overwrite:
        raise ValueError(f"zoo:{name} exists ({weights}); pass --overwrite to retrain and replace it")
    return weights, manifest_path


def build(name: str, overwrite: bool = False, progress=print, from_recipe: bool = False) -> dict:
    """Train, export and measure entry ``name`` with its manifest's commands (``from_recipe``, or no manifest yet:
    with its recipe in :data:`agents.zoo.RECIPES`); returns its manifest."""
    _, manifest_path = _entry_files(name, overwrite)  # (refused before any training)
    if from_recipe and name not in zoo.RECIPES:
        raise ValueError(f"zoo:{name}: no recipe for it (known: {', '.join(sorted(zoo.RECIPES))})")
    if manifest_path.exists() and not from_recipe:
        recipe = json.loads(manifest_path.read_text())
    elif name in zoo.RECIPES:
        recipe = zoo.RECIPES[name]
    else:
        raise ValueError(f"zoo:{name}: no recipe for it (known: {', '.join(sorted(zoo.RECIPES))})")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"zoo_{name}_") as work:
        for command in recipe["commands"]:
            argv = [a.replace("{work}", work) for a in command]
            progress("recursion-env " + " ".join(argv))
            done = subprocess.run([sys.executable, "-m", "agents.cli", *argv])
            if done.returncode != 0:
                raise RuntimeError(f"zoo build {name}: `recursion-env {' '.join(argv)}` failed (exit "
                                   f"{done.returncode})")
        return export(name, Path(work) / "run", recipe, overwrite=overwrite, build_seconds=time.time() - t0)


def export(name: str, run, recipe: dict, overwrite: bool = False, build_seconds: float | None = None) -> dict:
    """Entry ``name`` from a trained ``run`` (the last run of ``recipe["commands"]``): what loading needs, its
    held-out accuracy, its manifest."""
    weights, manifest_path = _entry_files(name, overwrite)
    state = load_checkpoint(run)
    entry = {k: state[k] for k in KEPT}
    entry["train_config"] = {**entry["train_config"], "out": f"zoo:{name}", "init": None}
    with tempfile.TemporaryDirectory(prefix=f"zoo_{name}_export_") as work:
        staged = Path(work) / f"{name}.pt"
        save_checkpoint(staged, entry)
        result = evaluate_run(staged, n=zoo.EVAL_N, halting=True)
        data = staged.read_bytes()
    train_config = entry["train_config"]
    manifest = {
        "name": name, "description": recipe["description"], "task": entry["task"], "task_kwargs": entry["task_kwargs"],
        "method": train_config.get("method"), "commands": recipe["commands"],
        "seed": train_config.get("seed"), "precision": result["precision"], "code_version": code_version(),
        "torch": torch.__version__, "machine": {"cpu": cpu_model(), "python": platform.python_version()},
        "built": time.strftime("%Y-%m-%d %H:%M"),
        "build_seconds": None if build_seconds is None else round(build_seconds, 1),
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        "held_out": {"n": result["n_puzzles"], "eval_seed": train_config.get("eval_seed"),
                     "by_step": result["by_step"], "halting": result.get("halting")},
    }
    atomic_write(weights, lambda f: f.write(data))
    atomic_write(manifest_path, lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    return manifest
