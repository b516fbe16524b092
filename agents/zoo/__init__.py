"""The model zoo: trained networks shipped inside the package (no download), each one line to load.

Each entry is two files in this folder: ``NAME.pt``, the network's weights as a run checkpoint (readable with
``torch.load(..., weights_only=True)``), and ``NAME.json``, its manifest: the commands that trained it, seed,
precision, code version, SHA-256, size, and its accuracy on the held-out puzzles after every supervision step.

    from agents import zoo
    model, task = zoo.load("trm-sudoku4")               # the network (EMA weights) and its task
    recursion-env eval zoo:trm-sudoku4                  # anywhere a run folder goes: eval, diagnose, --init
    recursion-env zoo list                              # the table of entries
    recursion-env zoo build trm-sudoku4 --overwrite     # retrain an entry from its manifest

:data:`RECIPES` holds the commands of the entries this version knows how to build; a manifest records the ones
that built its weights.
"""

from __future__ import annotations

import json

from recursion_env.tasks import make_task

from .. import checkpoint
from ..checkpoint import ZOO_PREFIX, zoo_file
from ..runs import load_trained

#: held-out puzzles each entry is measured on (its manifest's figures, and the zoo test's): the first of the 1,000
#: its training held out (``eval zoo:NAME`` takes up to those 1,000)
EVAL_N = 200
_SUDOKU6 = ["--task", "sudoku", "--size", "6", "--min-givens", "10", "--max-givens", "12"]
_PORTABLE = ["--precision", "fp32", "--compile", "off", "--eval-n", "1000", "--seed", "0"]

#: name -> what the entry is and the ``recursion-env`` commands that train it (``{work}``: a scratch folder; the
#: run exported is ``{work}/run``). Step budgets, fp32 and no compilation, so a rebuild on another CPU trains the
#: same steps.
RECIPES = {
    "trm-sudoku4": {
        "description": "TRM (deep supervision, T=3, n=6, N_sup=16: 336 NFE) on 4x4 Sudoku, width 64",
        "commands": [["train", "--method", "trm", "--task", "sudoku", "--size", "4", "--hidden", "64",
                      "--steps", "600", "--no-final-eval", *_PORTABLE, "--out", "{work}/run"]],
    },
    "trm-sudoku6": {
        "description": "TRM (deep supervision, T=3, n=6, N_sup=16: 336 NFE) on 6x6 Sudoku with 10-12 givens, "
                       "width 64",
        "commands": [["train", "--method", "trm", *_SUDOKU6, "--hidden", "64", "--steps", "2000", "--no-final-eval",
                      *_PORTABLE, "--out", "{work}/run"]],
    },
    "dis-sudoku6": {
        "description": "DIS (policy improvement, T=1, n=2, N_sup=6: 18 NFE, the official code's recipe) on 6x6 Sudoku "
                       "with 10-12 givens, width 64",
        "commands": [["train", "--method", "dis", *_SUDOKU6, "--hidden", "64", "--recipe", "official-code",
                      "--targets", "diffusion", "--steps", "2000", "--no-final-eval", *_PORTABLE, "--out",
                      "{work}/run"]],
    },
    "dis-anytime-sudoku6": {
        "description": "anytime DIS (every step's answer trained toward the solution too, weight 0.5; 18 NFE) on 6x6 "
                       "Sudoku with 10-12 givens, width 64, with a halting head learned by PPO (the halting "
                       "defaults: it reads the answer's confidence and rule check): the halting env's default network",
        "commands": [["train", "--method", "dis", *_SUDOKU6, "--hidden", "64", "--recipe", "official-code",
                      "--targets", "diffusion", "--anytime-weight", "0.5", "--steps", "5000", "--no-final-eval",
                      *_PORTABLE, "--out", "{work}/dis"],
                     ["train", "--method", "ppo", "--mode", "halting", "--init", "{work}/dis", "--iterations", "40",
                      "--seed", "0", "--out", "{work}/run"]],
        "halting_env_default": True,
    },
    "dis-maze9": {
        "description": "DIS (policy improvement, T=1, n=2, N_sup=6: 18 NFE, the official code's recipe) on 9x9 mazes "
                       "(a perfect maze: one shortest path), width 64",
        "commands": [["train", "--method", "dis", "--task", "maze", "--size", "9", "--hidden", "64", "--recipe",
                      "official-code", "--targets", "diffusion", "--steps", "3000", "--no-final-eval", *_PORTABLE,
                      "--out", "{work}/run"]],
    },
    "dis-nqueens8": {
        "description": "DIS (policy improvement, T=1, n=2, N_sup=6: 18 NFE, the official code's recipe) on 8x8 "
                       "N-Queens with 1-7 queens given (the paper's setting), width 64",
        "commands": [["train", "--method", "dis", "--task", "nqueens", "--board", "8", "--min-given", "1",
                      "--max-given", "7", "--hidden", "64", "--recipe", "official-code", "--targets", "diffusion",
                      "--steps", "2000", "--no-final-eval", *_PORTABLE, "--out", "{work}/run"]],
    },
}


def names() -> list[str]:
    """The entries shipped (those with a manifest)."""
    return sorted(p.stem for p in checkpoint.ZOO_DIR.glob("*.json"))


def manifest(name: str) -> dict:
    """Entry ``name``'s manifest (commands, seed, precision, code version, SHA-256, held-out accuracy)."""
    return checkpoint.zoo_manifest(name)


def load(name: str, device="cpu"):
    """(model, task) of entry ``name``: the network with its EMA weights, in eval mode, after its checksum."""
    model, task, _ = load_trained(ZOO_PREFIX + name, device)
    return model, task


def table() -> str:
    """What ``recursion-env zoo list`` prints: one line per entry, with its held-out accuracy at every step."""
    lines = [f"{'name':<24}{'task':<34}{'NFE':>5}{'exact':>7}  {'MB':>5}  description"]
    for name in names():
        m = manifest(name)
        last = m["held_out"]["by_step"][-1]
        task = f"{m['task']} {json.dumps(m['task_kwargs'], separators=(',', ':'))}"
        lines.append(f"{name:<24}{task:<34}{last['nfe']:>5}{last['exact_accuracy']:>7.3f}  {m['bytes'] / 2**20:>5.2f}  "
                     f"{m['description']}")
        steps = ", ".join(f"{r['nfe']}: {r['exact_accuracy']:.3f}" for r in m["held_out"]["by_step"])
        lines.append(f"{'':<24}exact by NFE on {m['held_out']['n']} held-out puzzles: {steps}")
    return "\n".join(lines)


def halting_env_default(task) -> str | None:
    """The shipped entry marked as the halting env's default for ``task`` (same task and board; other options,
    e.g. givens, may differ), or None."""
    for name in names():
        m = manifest(name)
        if RECIPES.get(name, {}).get("halting_env_default") and m["task"] == task.name and \
                make_task(m["task"], **m["task_kwargs"]).seq_len == task.seq_len:
            return name
    return None


__all__ = ["EVAL_N", "RECIPES", "names", "manifest", "load", "table", "zoo_file", "halting_env_default"]
