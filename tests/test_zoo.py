"""The model zoo: every shipped entry is intact, loads in one line, and scores what its manifest says."""

import hashlib
import json
import shutil

import gymnasium as gym
import pytest
import torch

from agents import checkpoint, zoo
from agents.cli import main as cli
from agents.eval.evaluation import evaluate_run
from agents.model.rollout import TRMPolicy

ENTRIES = zoo.names()


def test_the_zoo_ships_entries_within_its_size_budget():
    assert ENTRIES, "no zoo entry shipped"
    sizes = {name: (checkpoint.ZOO_DIR / f"{name}.pt").stat().st_size for name in ENTRIES}
    assert all(size <= 2 * 2**20 for size in sizes.values()), sizes
    assert sum(sizes.values()) <= 10 * 2**20
    for name in ENTRIES:
        assert zoo.manifest(name)["bytes"] == sizes[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ENTRIES)
def test_an_entry_matches_its_checksum_loads_safely_and_scores_its_manifest(name):
    m = zoo.manifest(name)
    weights = checkpoint.ZOO_DIR / f"{name}.pt"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == m["sha256"] == hashlib.sha256(
        zoo.zoo_file(name).read_bytes()).hexdigest()
    assert isinstance(torch.load(weights, weights_only=True), dict)  # no pickled code
    for key in ("commands", "seed", "precision", "code_version", "description"):
        assert m[key] not in (None, "", []), key
    model, task = zoo.load(name)
    assert (task.name, json.loads(json.dumps(task.kwargs))) == (m["task"], m["task_kwargs"]) and not model.training
    result = evaluate_run(f"zoo:{name}", n=m["held_out"]["n"])
    assert result["n_puzzles"] == m["held_out"]["n"] == zoo.EVAL_N
    measured = [(r["nfe"], r["exact_accuracy"]) for r in result["by_step"]]
    recorded = [(r["nfe"], r["exact_accuracy"]) for r in m["held_out"]["by_step"]]
    assert [n for n, _ in measured] == [n for n, _ in recorded]
    assert all(abs(a - b) <= 0.01 for (_, a), (_, b) in zip(measured, recorded)), (measured, recorded)


def test_a_damaged_or_unknown_entry_is_one_line(tmp_path, monkeypatch, capsys):
    name = ENTRIES[0]
    for suffix in (".pt", ".json"):
        shutil.copy(checkpoint.ZOO_DIR / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    data = bytearray((tmp_path / f"{name}.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / f"{name}.pt").write_bytes(bytes(data))
    monkeypatch.setattr(checkpoint, "ZOO_DIR", tmp_path)
    assert cli(["eval", f"zoo:{name}", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "SHA-256 does not match" in err and f"zoo build {name} --overwrite" in err and len(err.splitlines()) == 1
    assert cli(["eval", "zoo:no-such-model", "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "no such zoo entry" in err and name in err and len(err.splitlines()) == 1


def test_zoo_names_work_wherever_a_run_goes(tmp_path, capsys):
    name = ENTRIES[0]
    assert cli(["zoo", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in ENTRIES)
    assert cli(["eval", f"zoo:{name}", "--n", "8", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_puzzles"] == 8
    task_kwargs = zoo.manifest(name)["task_kwargs"]
    policy = TRMPolicy.pretrained(name)
    env = gym.make("TRMHalting-Sudoku-v0", policy=policy, **task_kwargs)
    env.reset(seed=0)
    env.step(0)  # one supervision step of the zoo network
    _, _, terminated, _, info = env.step(1)  # then halt (no compute)
    assert terminated and info["nfe"] == policy.nfe_per_step == zoo.load(name)[0].cfg.nfe_per_supervision_step
    assert cli(["train", "--method", "ppo", "--init", f"zoo:{name}", "--iterations", "1", "--num-envs", "8",
                "--rollout-len", "2", "--eval-n", "8", "--out", str(tmp_path / "ppo")]) == 0
    assert cli(["zoo", "build", name]) == 2  # an entry is replaced only with --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_zoo_build_trains_exports_and_measures_an_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "ZOO_DIR", tmp_path)
    monkeypatch.setitem(zoo.RECIPES, "tiny", {"description": "a 2-step DIS on 4x4", "commands": [[
        "train", "--method", "dis", "--task", "sudoku", "--size", "4", "--hidden", "16", "--steps", "2",
        "--no-final-eval", "--precision", "fp32", "--compile", "off", "--eval-n", str(zoo.EVAL_N), "--out",
        "{work}/run"]]})
    from agents.zoo.build import build

    m = build("tiny", progress=lambda *_: None)
    assert (tmp_path / "tiny.pt").stat().st_size == m["bytes"] and zoo.names() == ["tiny"]
    assert m["sha256"] == hashlib.sha256((tmp_path / "tiny.pt").read_bytes()).hexdigest()
    assert m["held_out"]["n"] == zoo.EVAL_N and [r["nfe"] for r in m["held_out"]["by_step"]] == [3, 6, 9, 12, 15, 18]
    state = checkpoint.load_checkpoint("zoo:tiny")
    assert set(state) == {"model_config", "ema", "task", "task_kwargs", "train_config"}  # no optimizer state
    with pytest.raises(ValueError, match="--overwrite"):
        build("tiny")
    # a manifest's commands rebuild an entry; from_recipe takes the recipe's, which may have changed since
    zoo.RECIPES["tiny"]["commands"][0][zoo.RECIPES["tiny"]["commands"][0].index("2")] = "3"
    assert "3" not in build("tiny", overwrite=True, progress=lambda *_: None)["commands"][0]
    assert "3" in build("tiny", overwrite=True, progress=lambda *_: None, from_recipe=True)["commands"][0]


def test_the_halting_env_defaults_to_the_zoos_anytime_dis_on_its_board():
    from recursion_env import TinyRecursionPolicy

    env = gym.make("TRMHalting-Sudoku-v0").unwrapped  # registered 6x6: the zoo's dis-anytime-sudoku6
    model = zoo.load("dis-anytime-sudoku6")[0]
    assert isinstance(env.policy, TRMPolicy) and env.task.kwargs["size"] == 6
    assert all(torch.equal(a, b) for a, b in zip(env.policy.model.state_dict().values(), model.state_dict().values()))
    assert env.max_steps == model.cfg.N_sup == 6 and env.policy.nfe_per_step == 3
    assert zoo.halting_env_default(env.task) == "dis-anytime-sudoku6"
    for kwargs in ({"size": 4}, {"size": 6, "policy": "tiny"}):  # no trained default on 4x4; the tiny one asked for
        assert isinstance(gym.make("TRMHalting-Sudoku-v0", **kwargs).unwrapped.policy, TinyRecursionPolicy)
    named = gym.make("TRMHalting-Sudoku-v0", size=4, policy="zoo:trm-sudoku4").unwrapped
    assert named.policy.nfe_per_step == 21 and named.max_steps == 16
    with pytest.raises(ValueError, match="reads 16 cells .* has 36"):
        gym.make("TRMHalting-Sudoku-v0", policy="zoo:trm-sudoku4")  # a 4x4 network on the 6x6 board
    with pytest.raises(ValueError, match="'zoo:NAME'"):
        gym.make("TRMHalting-Sudoku-v0", policy="hub:model")
