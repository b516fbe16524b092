"""The command line: data build / show and the demo, run in-process."""

import pytest

from agents.cli import main
from agents.cli import main as cli
from recursion_env.tasks import load_dataset


def test_data_build_and_show(tmp_path, capsys):
    out = tmp_path / "s6.npz"
    args = ["data", "build", "--task", "sudoku", "--size", "6", "--n", "40", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    task, batch, header = load_dataset(out)
    assert len(batch) == 40 and header["seed"] == 3 and task.seq_len == 36
    assert task.verify(batch.inputs, batch.labels).all()
    assert main(["data", "show", str(out), "--count", "1"]) == 0
    assert "40 puzzles" in capsys.readouterr().out


def test_data_build_other_tasks(tmp_path):
    for args in (["--task", "maze", "--size", "7"], ["--task", "nqueens", "--board", "6"]):
        out = tmp_path / f"{args[1]}.npz"
        assert main(["data", "build", *args, "--n", "10", "--out", str(out)]) == 0
        task, batch, _ = load_dataset(out)
        assert task.verify(batch.inputs, batch.labels).all()


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("12345\n")
    assert main(["data", "show", str(bad), "--task", "sudoku", "--size", "4"]) == 2
    assert "line 1" in capsys.readouterr().err


def test_demo_trains_evaluates_and_shows_a_puzzle(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.05", "--eval-n", "16", "--hidden", "16"]) == 0
    text = capsys.readouterr().out
    assert "Held-out accuracy after each supervision step" in text
    assert "after step 6 (NFE 18)" in text and "[" in text
    assert (tmp_path / "checkpoint.pt").exists()
    assert (tmp_path / "plots" / "accuracy_vs_nfe.png").stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["train", "--method", "trm", "--targets", "solver", "--steps", "1"], "--targets is a dis option"),
    (["train", "--method", "dis", "--nfe-cost", "5", "--steps", "1"], "--nfe-cost is a ppo option"),
    (["train", "--method", "ppo", "--optimizer", "adamw", "--iterations", "1"], "--optimizer is a trm/dis option"),
    (["train", "--method", "ppo", "--preset", "paper", "--iterations", "1"], "--preset is a trm/dis option"),
    (["train", "--method", "trm", "--steps", "-3"], "--steps must be >= 0"),
    (["train", "--method", "trm", "--minutes", "-1"], "--minutes must be >= 0"),
    (["train", "--method", "trm", "--steps", "1", "--device", "gpu"], "--device 'gpu'"),
    (["eval", "RUN", "--n", "0"], "--n must be >= 1"),
    (["bench", "nfe-vs-accuracy", "--report-only", "--out", "OUT"], "no results.json"),
])
def test_nonsense_flags_get_one_clear_line(tmp_path, capsys, args, message):
    args = [a.replace("RUN", str(tmp_path)).replace("OUT", str(tmp_path / "nothing")) for a in args]
    assert cli([*args, *([] if args[0] != "train" else ["--out", str(tmp_path / "run")])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recursion-env: error:") and message in err and "Traceback" not in err


def test_cuda_without_cuda_and_unwritable_outputs_are_clear(tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        assert cli(["train", "--steps", "1", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where --out wants a folder
    assert cli(["train", "--size", "4", "--hidden", "16", "--T", "1", "--n", "1", "--n-sup", "2", "--steps", "1",
                "--eval-n", "8", "--no-final-eval", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recursion-env: error:") and str(blocker) in err
