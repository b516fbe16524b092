"""Nothing lost, nothing crashes: refusals in one line, corrupt checkpoints set aside, outputs that never replace a
file without --overwrite, one writer per folder, adapters that name what is wrong."""

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from agents.checkpoint import load_checkpoint, load_newest_valid, save_checkpoint
from agents.cli import main as cli
from agents.trainers import config_from_dict, train


def tiny(out, **kw):
    base = dict(task_kwargs={"size": 4}, hidden=16, T=1, n=1, N_sup=2, batch_size=8, n_train=32, eval_n=8,
                progress=False, final_eval=False, checkpoint_every=2, out=str(out), compile="off")
    return config_from_dict({**base, **kw})


class Payload:  # a pickle that would run code when loaded without weights_only
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("content", ["garbage", "code", "truncated"])
def test_a_bad_checkpoint_is_refused_in_one_line_without_unsafe_advice(tmp_path, content, capsys):
    path = tmp_path / "checkpoint.pt"
    if content == "garbage":
        path.write_bytes(b"\x00not a checkpoint at all")
    elif content == "code":
        buffer = io.BytesIO()
        torch.save({"model": Payload()}, buffer, pickle_module=pickle)
        path.write_bytes(buffer.getvalue())
    else:
        good = save_checkpoint(tmp_path / "good.pt", {"step": 1, "model": {"w": torch.ones(100)}})
        path.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text and "weights_only set to False" not in text
    assert text.startswith(str(path)) and "not a valid" in text
    assert "this ran" not in capsys.readouterr().out
    assert cli(["eval", str(path), "--n", "4"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and str(path) in errors[0], errors


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_valid_backups_kept(tmp_path):
    train(tiny(tmp_path, steps=6, keep=3))  # saves at steps 2, 4, 6
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    for _ in range(2):  # twice: the valid step-4 and step-2 backups must survive both
        with pytest.warns(UserWarning, match="moved checkpoint.pt to checkpoint.pt.corrupt"):
            train(tiny(tmp_path, steps=1), resume=True)
        (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes() == b"garbage"
    assert (tmp_path / "checkpoint.pt.corrupt.1").read_bytes() == b"garbage"
    # each resume went on from step 4 (its step 5 was the file spoiled next); step 4 and step 2 are still kept
    kept = {n: load_checkpoint(tmp_path / n)["step"] for n in ("checkpoint.pt.1", "checkpoint.pt.2")}
    assert kept == {"checkpoint.pt.1": 4, "checkpoint.pt.2": 2}
    (tmp_path / "checkpoint.pt").unlink()
    # a read-only look (the bench asking how far a run got) moves nothing
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="newest valid"):
        load_newest_valid(tmp_path / "checkpoint.pt")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage"


def test_a_run_stopped_before_its_first_checkpoint_says_so_and_offers_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "tb").mkdir()
    assert cli(["train", "--resume", "--out", str(run), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "--overwrite" in err
    args = ["train", "--size", "4", "--hidden", "16", "--T", "1", "--n", "1", "--n-sup", "2", "--steps", "1",
            "--eval-n", "8", "--no-final-eval", "--compile", "off", "--out", str(run)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "--overwrite" in err
    assert cli([*args, "--overwrite"]) == 0


def test_the_demo_refuses_a_folder_that_holds_another_run(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(run, steps=2, keep=3))
    before = sorted(p.name for p in run.iterdir())
    assert cli(["demo", "--out", str(run), "--minutes", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "not a demo run's" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before and load_checkpoint(run)["step"] == 2


def test_outputs_refuse_existing_files_and_never_write_over_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(run, steps=2))
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for args in (["eval", str(run), "--n", "4", "--json", str(run / "checkpoint.pt")],
                 ["eval", str(run), "--n", "4", "--json", str(run / "checkpoint.pt"), "--overwrite"],
                 ["diagnose", str(run), "--n", "4", "--json", str(run / "config.json"), "--overwrite"]):
        assert cli(args) == 2
        assert "is a file of the run" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    report = tmp_path / "eval.json"
    report.write_text("mine")
    assert cli(["eval", str(run), "--n", "4", "--json", str(report)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err and report.read_text() == "mine"
    assert cli(["eval", str(run), "--n", "4", "--json", str(report), "--overwrite"]) == 0
    assert report.read_text().startswith("{")
    data = tmp_path / "set.npz"
    build = ["data", "build", "--task", "sudoku", "--size", "4", "--n", "5", "--out"]
    assert cli([*build, str(data)]) == 0
    first = data.read_bytes()
    assert cli([*build, str(data), "--seed", "1"]) == 2 and data.read_bytes() == first
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert cli([*build, str(tmp_path / "set"), "--seed", "1"]) == 2  # the same file, named without .npz
    assert cli([*build, str(data), "--seed", "1", "--overwrite"]) == 0 and data.read_bytes() != first


def test_one_writer_per_folder_and_a_killed_holder_leaves_no_stale_lock(tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom recursion_env.atomic import folder_lock\n"
                               f"with folder_lock({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["train", "--size", "4", "--hidden", "16", "--T", "1", "--n", "1", "--n-sup", "2", "--steps", "1",
                "--eval-n", "8", "--no-final-eval", "--compile", "off", "--out", str(run)]
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert f"being written by another process (pid {holder.pid})" in err and len(err.strip().splitlines()) == 1
        assert not (run / "checkpoint.pt").exists()
        from agents.experiments.bench import BenchConfig
        from agents.experiments.bench import run as bench_run
        with pytest.raises(ValueError, match="another process"):
            bench_run(BenchConfig.quick(out=str(run)))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert cli(args) == 0  # the kernel dropped the dead holder's lock
    assert cli(["train", "--resume", "--out", str(run), "--steps", "1"]) == 0  # a lock is released on return


def test_bench_overwrite_removes_only_what_the_bench_wrote(tmp_path):
    from agents.experiments.bench import BenchConfig, _check_folder

    out = tmp_path / "bench"
    cfg = BenchConfig.quick(out=str(out))
    _check_folder(cfg, out, overwrite=False)
    for name in ("trm", "dis-anytime", "ppo-trm", "myrun"):
        (out / name).mkdir()
        (out / name / "checkpoint.pt").write_text("x")
    for name in ("trm.log", "results.md", "train_pool.npz", "notes.txt"):
        (out / name).write_text("x")
    _check_folder(cfg, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["bench_config.json", "myrun", "notes.txt"]
    assert (out / "myrun" / "checkpoint.pt").read_text() == "x"


def test_adapters_name_a_missing_or_unknown_action_field():
    import gymnasium as gym
    import numpy as np
    from tensordict import TensorDict

    import recursion_env  # noqa: F401 - registers the ids
    from recursion_env import RecursionTorchRLEnv

    env = RecursionTorchRLEnv(task="sudoku", batch_size=4, size=4, latent_dim=8)
    env.reset()
    for td in (TensorDict({}, batch_size=[4]), TensorDict({"latent": torch.zeros(4, 2, 16, 8)}, batch_size=[4]),
               TensorDict({"action": {"halt": torch.zeros(4, dtype=torch.int64)}}, batch_size=[4])):
        with pytest.raises(ValueError, match="lacks .*'action', 'latent'"):
            env.step(td)
    g = gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=8)
    obs, _ = g.reset(seed=0)
    before = {k: np.array(v) for k, v in obs.items()}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['foo'\]"):
        g.step({"latent": obs["latent"], "answer": obs["answer"], "halt": 0, "foo": 1})
    obs2, *_ = g.step({"latent": obs["latent"], "answer": obs["answer"], "halt": 1})  # the state was unchanged
    assert int(np.asarray(obs2["step"]).reshape(-1)[0]) == 1 and np.array_equal(before["puzzle"], obs2["puzzle"])


def test_data_convert_names_a_non_utf8_file_and_rejects_bad_rows_with_their_line(tmp_path, capsys):
    from recursion_env.tasks import make_task
    from recursion_env.tasks.store import write_csv

    task = make_task("sudoku", size=9)
    batch = task.generate(4, seed=0)
    good = tmp_path / "good.csv"
    write_csv(good, task, batch.inputs, batch.labels)
    lines = good.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"".join(lines[:2] + [lines[2][:10] + b"\xab" + lines[2][11:]] + lines[3:]))
    assert cli(["data", "convert", str(bad), "--out", str(tmp_path / "store")]) == 0
    rejected = (tmp_path / "store" / "rejected.tsv").read_text().splitlines()
    assert rejected[1].startswith("3\tnot UTF-8 text (byte 10"), rejected
    assert json.loads((tmp_path / "store" / "meta.json").read_text())["rows"] == 3
    header = tmp_path / "header.csv"
    header.write_bytes(b"sou\xabrce,question,answer,rating\n" + b"".join(lines[1:]))
    capsys.readouterr()  # (the first conversion's progress bar)
    assert cli(["data", "convert", str(header), "--out", str(tmp_path / "store2")]) == 2
    err = capsys.readouterr().err
    assert str(header) in err and "line 1" in err and "not UTF-8" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, message", [
    (b"method: dis\nbase: {size: 6\n", r"sweep.yaml: the sweep file is not valid YAML \(line 3, column 1: expected"),
    (b"method: d\xc5s\n", r"sweep.yaml: the sweep file is not UTF-8 text \(byte 9"),
])
def test_a_broken_sweep_or_official_config_is_one_line_naming_the_file_and_the_line(tmp_path, content, message):
    from agents.experiments.sweep import read_sweep
    from agents.model.official import read_official_arch

    (tmp_path / "sweep.yaml").write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        read_sweep(tmp_path / "sweep.yaml")
    assert "\n" not in str(caught.value)
    (tmp_path / "all_config.yaml").write_bytes(content)
    with pytest.raises(ValueError, match=message.replace("sweep.yaml", "all_config.yaml").replace("sweep file",
                                                                                                  "official config")):
        read_official_arch(tmp_path / "all_config.yaml")


def test_a_sweep_with_an_unknown_method_names_the_file(tmp_path):
    from agents.experiments.sweep import read_sweep

    (tmp_path / "sweep.yaml").write_text("method: d1s\n")
    with pytest.raises(ValueError, match=r"sweep.yaml: method 'd1s': sweeps run the supervised trainers"):
        read_sweep(tmp_path / "sweep.yaml")


def test_the_reader_fuzzing_benchmark_runs_and_finds_nothing_unclear_or_invalid(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, "benchmarks/fuzz_readers.py", "--flips", "12", "--truncations", "3",
                           "--readers", "npz,converted folder,sweep config", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["totals"] == {"traceback": 0, "unclear error": 0, "invalid accepted": 0}
    assert all(sum(r["counts"].values()) == 15 for r in result["readers"].values())
    assert result["readers"]["converted folder"]["counts"].get("one-line error", 0) > 0
