"""Runs are never lost or misused: checksummed checkpoints kept K deep, resume that falls back and adds budget,
fresh runs that refuse an occupied folder, no stale temporary files, files that honour the umask."""

import os

import numpy as np
import pytest
import torch

from agents.checkpoint import load_checkpoint, load_newest_valid, save_checkpoint
from agents.cli import main as cli
from agents.eval.evaluation import load_trained
from agents.trainers import TrainConfig, config_from_dict, train


def tiny(out, **kw) -> TrainConfig:
    base = dict(task_kwargs={"size": 4}, hidden=16, T=1, n=1, N_sup=2, batch_size=8, n_train=32, eval_n=8,
                progress=False, final_eval=False, checkpoint_every=2, out=str(out))
    return config_from_dict(dict(**{**base, **kw}))


def test_every_single_byte_flip_of_a_checkpoint_is_caught(tmp_path):
    state = {"model": {"w": torch.arange(2000, dtype=torch.float32)}, "step": 7, "train_config": {"method": "trm"}}
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    outcomes = {"rejected": 0, "intact": 0, "altered": 0}
    for pos in rng.choice(len(data), size=300, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        bad = tmp_path / "flipped.pt"
        bad.write_bytes(flipped)
        try:
            loaded = load_checkpoint(bad)
        except ValueError:
            outcomes["rejected"] += 1
            continue
        same = loaded.keys() == state.keys() and torch.equal(loaded["model"]["w"], state["model"]["w"]) and \
            loaded["step"] == 7 and loaded["train_config"] == state["train_config"]
        outcomes["intact" if same else "altered"] += 1
    assert outcomes["altered"] == 0, outcomes
    assert outcomes["rejected"] > 250, outcomes  # flips in zip padding may leave the content as it was


def test_checkpoints_are_kept_k_deep_and_resume_falls_back_to_the_newest_valid(tmp_path):
    train(tiny(tmp_path, steps=6, keep=3))  # saves at steps 2, 4, 6
    steps = {name: load_checkpoint(tmp_path / name)["step"] for name in
             ("checkpoint.pt", "checkpoint.pt.1", "checkpoint.pt.2")}
    assert steps == {"checkpoint.pt": 6, "checkpoint.pt.1": 4, "checkpoint.pt.2": 2}
    assert not (tmp_path / "checkpoint.pt.3").exists()
    data = bytearray((tmp_path / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "checkpoint.pt").write_bytes(data)
    with pytest.raises(ValueError, match="corrupted|not a valid"):
        load_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="checkpoint.pt.1, the newest valid"):
        state, used = load_newest_valid(tmp_path / "checkpoint.pt")
    assert used.name == "checkpoint.pt.1" and state["step"] == 4
    with pytest.warns(UserWarning, match="newest valid"):
        result = train(tiny(tmp_path, steps=1), resume=True)
    assert result["optimizer_steps"] == 5  # step 4 + 1 more
    for name in ("checkpoint.pt.1", "checkpoint.pt.2"):
        (tmp_path / name).write_bytes(b"garbage")
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no valid checkpoint to resume from"):
        train(tiny(tmp_path, steps=1), resume=True)


def test_resume_budget_is_more_steps_or_minutes_and_is_required(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(run, steps=3))
    with pytest.raises(ValueError, match="resume needs a budget"):
        train(TrainConfig(out=str(run), progress=False), resume=True)
    result = train(TrainConfig(out=str(run), minutes=0.0, progress=False), resume=True)
    assert result["optimizer_steps"] == 3  # zero more minutes: nothing more, and it stops
    assert cli(["train", "--resume", "--out", str(run), "--minutes", "0.001", "--steps", "2"]) == 0
    assert load_checkpoint(run)["step"] > 3
    assert cli(["train", "--resume", "--out", str(run)]) == 2
    assert "needs a budget" in capsys.readouterr().err
    # a resumed run keeps its configuration: an option it would ignore is refused, and the run is untouched
    step = load_checkpoint(run)["step"]
    assert cli(["train", "--resume", "--out", str(run), "--steps", "2", "--hidden", "128", "--lr", "0.1"]) == 2
    assert "--hidden, --lr with --resume: a resumed run keeps its own configuration" in capsys.readouterr().err
    assert load_checkpoint(run)["step"] == step


def test_a_fresh_run_refuses_an_occupied_folder_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(run, steps=2))
    before = load_checkpoint(run)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(tiny(run, steps=2, seed=1))
    assert torch.equal(load_checkpoint(run)["model"]["output_head.weight"], before["model"]["output_head.weight"])
    args = ["train", "--size", "4", "--hidden", "16", "--T", "1", "--n", "1", "--n-sup", "2", "--steps", "2",
            "--eval-n", "8", "--no-final-eval", "--out", str(run)]
    assert cli(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert cli([*args, "--overwrite"]) == 0
    assert len(list((run / "tb").iterdir())) == 1  # the old TensorBoard events are gone, not mixed in
    assert cli([*args, "--overwrite", "--resume"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert cli(["train", "--method", "ppo", "--resume", "--out", str(run), "--iterations", "1"]) == 2  # a trm run
    assert "not a PPO one" in capsys.readouterr().err
    assert cli(["train", "--resume", "--out", str(run), "--iterations", "1"]) == 2  # steps, for a trm run
    assert "--iterations is a ppo option" in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_and_files_honour_the_umask(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, steps=2))
    orphan = run / "checkpoint.pt.x1y2z3.tmp"
    orphan.write_bytes(b"\0" * 1000)  # what a SIGKILL mid-write leaves
    old = os.umask(0o027)
    try:
        train(tiny(run, steps=1), resume=True)
    finally:
        os.umask(old)
    assert not orphan.exists()
    assert (run / "checkpoint.pt").stat().st_mode & 0o777 == 0o640


def test_with_a_dataset_the_held_out_puzzles_are_the_evaluated_ones(tmp_path):
    """The dataset's own task (its header: here 11-12 givens, the command line's default differs) defines the
    held-out set: a file that contains those very puzzles has them dropped, and evaluation reads the same ones."""
    from agents.eval.evaluation import evaluation_set, load_trained
    from recursion_env import make_task
    from recursion_env.tasks import PuzzleBatch, save_dataset

    file_task = make_task("sudoku", size=4, min_givens=11, max_givens=12)
    held_out = file_task.generate(16, seed=1_000_003)  # what evaluation will read
    others = file_task.generate(48, seed=5)
    both = PuzzleBatch("sudoku", np.concatenate([held_out.inputs, others.inputs]),
                       np.concatenate([held_out.labels, others.labels]))
    path = save_dataset(tmp_path / "train.npz", file_task, both, seed=0)
    result = train(tiny(tmp_path / "run", steps=2, dataset=str(path), n_train=None, eval_n=16, augment=False))
    assert result["held_out_dropped_from_training"] == 16
    _, task, train_config = load_trained(tmp_path / "run")
    assert task.kwargs == file_task.kwargs
    evaluated, _ = evaluation_set(task, train_config, 16)
    assert np.array_equal(evaluated, held_out.inputs)


def test_a_checkpoint_with_wrong_keys_or_shapes_is_one_clear_error(tmp_path, capsys):
    from agents.eval.evaluation import load_trained

    run = tmp_path / "run"
    train(tiny(run, steps=1))
    state = load_checkpoint(run)
    bad = dict(state, ema={**state["ema"], "extra.weight": torch.zeros(2)})
    save_checkpoint(tmp_path / "keys" / "checkpoint.pt", bad)
    with pytest.raises(ValueError, match="does not fit its own config"):
        load_trained(tmp_path / "keys")
    shapes = dict(state, ema={**state["ema"], "output_head.weight": torch.zeros(3, 3)})
    save_checkpoint(tmp_path / "shapes" / "checkpoint.pt", shapes)
    assert cli(["eval", str(tmp_path / "shapes"), "--n", "4"]) == 2
    assert "does not fit its own config" in capsys.readouterr().err
    save_checkpoint(tmp_path / "foreign" / "checkpoint.pt", {"weights": torch.zeros(1)})
    assert cli(["eval", str(tmp_path / "foreign"), "--n", "4"]) == 2
    assert "not a recursion-env run" in capsys.readouterr().err


def test_timed_looks_are_saved_during_training_and_evaluated_after_it(tmp_path, monkeypatch):
    """A look every few training seconds saves the EMA weights; none is evaluated until the last optimizer step is
    done, so runs that share a machine train side by side whatever a look costs. The result equals evaluating the
    saved weights by hand, and a resume keeps the evaluated looks."""
    import agents.trainers.loop as common
    from agents.trainers.deep_supervision import DeepSupervision

    steps_at_evaluation, steps = [], [0]
    loss = DeepSupervision.loss

    def counting_loss(self, *a, **kw):
        steps[0] += 1
        return loss(self, *a, **kw)

    rollout = common.rollout_metrics

    def recording_rollout(*a, **kw):
        steps_at_evaluation.append(steps[0])
        return rollout(*a, **kw)

    monkeypatch.setattr(DeepSupervision, "loss", counting_loss)
    monkeypatch.setattr(common, "rollout_metrics", recording_rollout)
    cfg = tiny(tmp_path / "run", steps=None, minutes=0.06, eval_every_minutes=0.01, final_eval=False, eval_n=16)
    result = train(cfg)
    looks = result["history"]
    assert len(looks) >= 2 and steps_at_evaluation == [result["optimizer_steps"]] * len(looks)
    assert [h["step"] for h in looks] == sorted({h["step"] for h in looks})
    for h in looks:
        assert (tmp_path / "run" / h["snapshot"]).exists() and h["elapsed_s"] <= result["wall_clock_s"]
    model, task, trained = load_trained(tmp_path / "run")
    model.load_state_dict(load_checkpoint(tmp_path / "run" / looks[0]["snapshot"])["ema"])
    from agents.eval.evaluation import evaluation_set

    x, y = evaluation_set(task, {"eval_seed": cfg.eval_seed}, cfg.eval_n)
    by_hand = rollout(model, task, x, y, precision=trained["precision"])  # (looks run in the run's precision)
    assert common.summarize(by_hand)["by_step"] == looks[0]["by_step"]

    monkeypatch.setattr(common, "rollout_metrics", rollout)
    resumed = train(type(cfg).from_dict({**cfg.__dict__, "minutes": 0.02}), resume=True)
    assert resumed["history"][:len(looks)] == looks and len(resumed["history"]) > len(looks)


def test_the_network_config_is_nested_in_the_checkpoint_and_old_flat_configs_still_resume(tmp_path):
    """The run's config holds the frozen TRMConfig as ``model`` (one source: the checkpoint's ``model_config`` is
    it, sized for the task); a checkpoint written before the nesting (the network's fields flat, and a trm run
    carrying DIS's fields) still resumes, into the same network."""
    from dataclasses import asdict

    from agents.model.trm import TRMConfig
    from agents.trainers import config_from_dict

    run = tmp_path / "run"
    cfg = tiny(run, steps=2, method="dis")
    assert isinstance(cfg.model, TRMConfig) and (cfg.model.hidden, cfg.model.N_sup) == (16, 2)
    with pytest.raises(AttributeError):
        cfg.model.hidden = 32  # frozen
    train(cfg)
    state = load_newest_valid(run / "checkpoint.pt")[0]
    assert state["train_config"]["model"] == asdict(cfg.model)
    sized = TRMConfig(**state["model_config"])
    assert sized == cfg.model_config(load_trained(run)[1]) and sized.step_embedding == 2 and sized.seq_len == 16

    # the same run as an older version wrote it: flat network fields, fields of the other method, no "model"
    flat = {k: v for k, v in state["train_config"].items() if k != "model"} | {
        k: v for k, v in state["train_config"]["model"].items() if k in ("hidden", "T", "n", "N_sup", "L_layers")}
    flat |= {"halt_loss_weight": 0.5, "halt_exploration": 0.1}
    assert config_from_dict(flat, strict=False) == config_from_dict(state["train_config"], strict=False) == cfg
    with pytest.raises(ValueError, match="halt_exploration, halt_loss_weight"):
        config_from_dict(flat)  # from a user: a field the method does not have is an error
    state["train_config"] = flat
    save_checkpoint(run / "checkpoint.pt", state)
    resumed = train(TrainConfig(out=str(run), steps=1, progress=False), resume=True)
    assert resumed["optimizer_steps"] == 3
    assert load_newest_valid(run / "checkpoint.pt")[0]["train_config"]["model"] == asdict(cfg.model)


@pytest.mark.parametrize("method", ["trm", "ppo"])
def test_sigterm_finishes_the_step_writes_a_checkpoint_exits_0_and_the_run_resumes(tmp_path, method):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    flags = (["--T", "1", "--n", "1", "--n-sup", "2", "--batch-size", "8", "--checkpoint-every", "100000"]
             if method == "trm" else ["--num-envs", "8", "--rollout-len", "2", "--checkpoint-every", "100000"])
    cmd = [sys.executable, "-m", "agents.cli", "train", "--method", method, "--size", "4", "--hidden", "16",
           "--eval-n", "8", "--minutes", "10", "--out", str(run), *flags]
    if method == "trm":
        cmd += ["--compile", "off"]  # (a 10-minute budget would compile first)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (run / "tb").exists() and time.time() < deadline:  # the loop is about to start
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err and "train --resume" in err
    state = load_newest_valid(run / "checkpoint.pt")[0]
    done = state["step"]
    assert done >= 1 and not (run / ("train_metrics.json" if method == "trm" else "ppo_metrics.json")).exists()
    budget = ["--steps", "2"] if method == "trm" else ["--iterations", "2"]
    assert cli(["train", "--resume", "--out", str(run), *budget]) == 0
    assert load_newest_valid(run / "checkpoint.pt")[0]["step"] == done + 2
