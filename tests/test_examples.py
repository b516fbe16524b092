"""The scripts in examples/ run (with small sizes)."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_gym_rollout_example():
    reward = load("gym_rollout.py")["main"]()
    assert reward > 1.0  # the label solves the puzzle: score gain + solve bonus - a small cost


def test_torchrl_collector_example():
    assert load("torchrl_collector.py")["main"](num_envs=8, frames=8 * 10) > 0


def test_train_and_diagnose_example(tmp_path):
    reports = load("train_and_diagnose.py")["main"](out=str(tmp_path), steps=20)
    assert set(reports) == {"trm", "dis"}
    assert len(reports["dis"]["steps"]) == 6 and len(reports["trm"]["steps"]) == 4
