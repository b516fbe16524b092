"""The command line: data build / show and the demo, run in-process."""

from agents.cli import main
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
