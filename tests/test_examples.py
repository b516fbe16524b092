"""The scripts in examples/ run (with small sizes)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_gym_rollout_example():
    reward = load("gym_rollout.py")["main"]()
    assert reward > 1.0  # the label solves the puzzle: score gain + solve bonus - a small cost


def test_own_network_example_acts_in_both_envs():
    result = load("own_network.py")["main"]()
    assert 2 <= result["recursion_nfe"] <= 12 and result["recursion_nfe"] % 2 == 0  # 2 passes a step, <= 6 steps
    assert result["halting_nfe"] == 2 * 2  # continued twice (2 passes each), then halted without compute


def test_torchrl_collector_example():
    assert load("torchrl_collector.py")["main"](num_envs=8, frames=8 * 10) > 0


def test_train_and_diagnose_example(tmp_path):
    reports = load("train_and_diagnose.py")["main"](out=str(tmp_path), steps=150)
    assert set(reports) == {"trm", "dis"}
    assert len(reports["dis"]["steps"]) == 6 and len(reports["trm"]["steps"]) == 4
    # no step that raises exact accuracy is called dead (TRM's first step was, by its margin at w = 1)
    for report in reports.values():
        exact = [0.0] + [r["exact_accuracy"] for r in report["steps"]]
        for r, before in zip(report["steps"], exact):
            assert not (r["dead"] and r["exact_accuracy"] > before + 0.05), (report["method"], r)


def test_sb3_halting_example(tmp_path):
    from agents.trainers import DeepSupervisionConfig, train

    run = tmp_path / "trm"
    train(DeepSupervisionConfig(task_kwargs={"size": 4}, model={"hidden": 16, "T": 1, "n": 1, "N_sup": 3},
                                batch_size=16, steps=5, eval_n=8, out=str(run), progress=False, final_eval=False))
    result = load("sb3_halting.py")["main"](str(run), timesteps=256, eval_n=8)
    assert 0 <= result["sb3_controller"]["mean_nfe"] <= 3 * 2
    assert result["fixed_budget"]["mean_nfe"] == 3 * 2


def test_sb3_halting_example_with_a_missing_run_says_so(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(EXAMPLES / "sb3_halting.py"), str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_per_call_trace_example(tmp_path):
    """One call of f per env.step: 3 supervision steps x T=2 x (n=2 + 1) = 18 transitions; every call pays the
    compute cost, and only the calls that decode an answer can move the score."""
    trace = load("per_call_trace.py")["main"](out=str(tmp_path / "trm"), steps=20, nfe_cost=0.001)
    assert [t["nfe"] for t in trace] == list(range(1, 19))
    assert [t["decoded"] for t in trace] == [(i + 1) % 6 == 0 for i in range(18)]
    assert [t["update"] for t in trace[:6]] == ["z", "z", "y", "z", "z", "y"]
    for t in trace:
        if not t["decoded"]:
            assert t["reward"] == pytest.approx(-0.001)


def test_per_call_trace_example_traces_the_zoos_trm_by_default():
    trace = load("per_call_trace.py")["main"]("zoo:trm-sudoku4", nfe_cost=0.001)
    assert len(trace) == 16 * 3 * 7 and sum(t["decoded"] for t in trace) == 16  # T=3, n=6: 21 calls a step
    assert trace[20]["solved"]  # the zoo's TRM solves this puzzle in its first supervision step


def test_train_and_diagnose_example_compares_the_zoos_trm_and_dis():
    reports = load("train_and_diagnose.py")["compare_zoo"](n=16)
    assert len(reports["trm"]["steps"]) == 16 and len(reports["dis"]["steps"]) == 6
    assert reports["trm"]["run"] == "zoo:trm-sudoku6" and reports["dis"]["n_puzzles"] == 16
