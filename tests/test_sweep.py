"""``recursion-env sweep``: Ray Tune (the [ray] extra) in local mode on this machine, each trial an ordinary run."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.eval.evaluation import evaluate_run
from agents.experiments.sweep import need_ray, read_sweep

SWEEP = """\
method: dis
base:
  size: 4
  hidden: 16
  batch_size: 16
  steps: 15
  eval_n: 24
grid:
  seed: [0, 1]
resources: {cpu: 1, gpu: 0}
"""


def test_a_two_trial_sweep_trains_ordinary_runs_and_gathers_them_into_one_table_and_plot(tmp_path):
    try:
        need_ray()
    except ValueError as e:
        pytest.fail(f"the sweep test needs the [ray] extra, as CI installs it: {e}")
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    cli = Path(sys.executable).parent / "recursion-env"
    cmd = [cli, "sweep", "sweep.yaml", "--out", "out", "--cpus", "2"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "sweep.json").read_text())
    assert [t["options"]["seed"] for t in report["trials"]] == [0, 1]
    assert all(t["status"] == "done" and t["optimizer_steps"] == 15 for t in report["trials"])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 and {r["seed"] for r in rows} == {"0", "1"}
    for t in report["trials"]:
        run = Path(t["run"])
        assert run.parent == out / "trials" and (run / "checkpoint.pt").exists()
        metrics = json.loads((run / "train_metrics.json").read_text())
        assert metrics["optimizer_steps"] == 15 and metrics["n_puzzles"] == 24
        assert t["best_exact_accuracy"] == max(r["exact_accuracy"] for r in metrics["by_step"])
        assert evaluate_run(run, n=8)["n_puzzles"] == 8  # an ordinary run folder
    weights = [json.loads((Path(t["run"]) / "config.json").read_text())["train"]["seed"] for t in report["trials"]]
    assert weights == [0, 1]
    assert (out / "accuracy_vs_nfe.png").stat().st_size > 10_000

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds a sweep" in again.stderr


def test_a_sweep_file_is_checked_before_anything_runs(tmp_path):
    path = tmp_path / "s.yaml"
    for text, message in [
        ("method: dis\nbase: {hiddn: 16}\n", r"base.hiddn: not a train option of --method dis"),
        ("method: dis\ngrid: {lr: 0.1}\n", r"grid.lr: expected a non-empty list"),
        ("method: dis\nrandom: {lr: {normal: [0, 1]}}\n", r"random.lr: expected one of"),
        ("method: ppo\n", r"method 'ppo': sweeps run the supervised trainers"),
        ("method: dis\nsamples: 3\n", r"unknown key\(s\) samples"),
        ("method: trm\nbase: {out: x}\n", r"base.out: not a train option"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            read_sweep(path)
    path.write_text("method: trm\nbase: {size: 6, halt_loss_weight: 0.3}\n"
                    "random: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n")
    assert read_sweep(path)["random"] == {"lr": {"loguniform": [1e-4, 1e-2]}}


def test_without_ray_the_sweep_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as in a core install
    with pytest.raises(ValueError, match=r"pip install -e '\.\[ray\]'"):
        need_ray()
