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


def test_train_options_are_the_method_configs_fields():
    from dataclasses import fields

    from agents.cli import NOT_MODEL_OPTIONS, NOT_OPTIONS, build_parser, train_options
    from agents.model.trm import TRMConfig
    from agents.trainers import METHODS

    options = train_options()
    for name, method in METHODS.items():  # every field of every method's config is an option of that method
        names = {f.name for f in fields(method.config) if f.init}
        if "model" in names:
            names |= {f.name for f in fields(TRMConfig) if f.name not in NOT_MODEL_OPTIONS}
        for field_name in names - NOT_OPTIONS:
            assert name in options[field_name].owners, (name, field_name)
    # the flag names users know are kept
    flags = {flag for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
             for flag in action.option_strings}
    assert {"--n-sup", "--layers", "--T", "--n", "--hidden", "--nfe-cost", "--no-augment", "--no-final-eval",
            "--ema-warmup", "--no-ema-warmup", "--autoregressive", "--steps", "--iterations", "--halt-bias",
            "--halt-readout", "--eval-every-minutes", "--keep", "--compile", "--preset"} <= flags
    assert options["halt_loss_weight"].owners == ("trm",) and options["rollout_len"].owners == ("ppo",)
    assert options["N_sup"].model and "trm 16, dis 6" in options["N_sup"].help


@pytest.mark.parametrize("args,message", [
    (["--method", "dis", "--halt-loss-weight", "1", "--steps", "1"], "--halt-loss-weight is a trm option"),
    (["--method", "trm", "--rollout-len", "4", "--steps", "1"], "--rollout-len is a ppo option"),
    (["--method", "ppo", "--init", "RUN", "--hidden", "32", "--iterations", "1"], "--hidden with --init"),
])
def test_an_option_of_another_method_or_of_no_use_is_refused(tmp_path, capsys, args, message):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    assert cli(["train", *args, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_a_method_is_its_file_and_one_registry_line(monkeypatch, tmp_path):
    """A new method: a config subclass with its own field and a Method entry; its options follow from both."""
    from dataclasses import dataclass, field

    import agents.cli as cli_module
    from agents import trainers
    from agents.trainers.loop import Method, TrainConfig

    @dataclass
    class ToyConfig(TrainConfig):
        method: str = field(default="toy", init=False)
        toy_temperature: float = field(default=2.0, metadata={"help": "how warm the toy is"})

    calls = []
    monkeypatch.setitem(trainers.METHODS, "toy", Method("toy", ToyConfig, lambda cfg, **kw: calls.append(cfg) or {
        "optimizer_steps": 0, "train_forward_passes": 0, "wall_clock_s": 0.0}))
    cli_module.train_options.cache_clear()
    try:
        assert cli(["train", "--method", "toy", "--toy-temperature", "0.5", "--hidden", "8", "--steps", "1",
                    "--out", str(tmp_path)]) == 0
        assert calls[0].toy_temperature == 0.5 and calls[0].model.hidden == 8 and calls[0].method == "toy"
        assert "how warm the toy is; default 2.0" in cli_module.train_options()["toy_temperature"].help
        assert cli(["train", "--method", "trm", "--toy-temperature", "0.5", "--steps", "1",
                    "--out", str(tmp_path)]) == 2
    finally:
        cli_module.train_options.cache_clear()


def _all_actions(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_actions(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_help_and_shows_its_default():
    from agents.cli import build_parser

    missing = [(" ".join(path), a.option_strings or a.dest) for path, a in _all_actions(build_parser()) if not a.help]
    assert missing == []
    text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    assert "training time (default: 3.0)" in " ".join(text.split())


def test_train_help_is_grouped_by_method_and_one_method_shows_only_its_own(capsys):
    def help_of(*argv):
        with pytest.raises(SystemExit) as done:
            cli(["train", *argv, "--help"])
        assert done.value.code == 0
        return capsys.readouterr().out

    everything = help_of()
    for heading in ("options of every method:", "options of trm and dis only:", "options of dis only:",
                    "options of ppo only:", "options of the network (trm, dis, ppo):"):
        assert heading in everything
    assert "--rollout-len" in everything and "--recipe" in everything
    dis = help_of("--method", "dis")
    assert "--recipe" in dis and "--n-sup" in dis and "--rollout-len" not in dis and "options of ppo only" not in dis
    assert len(dis.splitlines()) < len(everything.splitlines())
    ppo = help_of("--method=ppo")
    assert "--rollout-len" in ppo and "--recipe" not in ppo and "--keeps-givens" not in everything
    # hidden from the help, an option of another method still parses, and is refused by name
    assert cli(["train", "--method", "dis", "--rollout-len", "3", "--steps", "1", "--out", "x"]) == 2
    assert "--rollout-len" in capsys.readouterr().err
