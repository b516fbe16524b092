"""The README and the guide's pages stay true: their Python snippets run, every command in them parses (flags,
methods, files), and each page's training commands run end to end with small budgets, in order, as a reader would
type them."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import build_parser, check_arguments, main
from recursion_env.tasks import make_task
from recursion_env.tasks.store import write_csv

ROOT = Path(__file__).resolve().parents[1]
#: the pages whose commands and snippets a reader copies: the README, then the guide's
PAGES = ["README.md", *(f"docs/{p}.md" for p in ("tasks", "mdp", "methods", "zoo", "scaling", "official",
                                                  "benchmarks"))]
TEXT = {page: (ROOT / page).read_text() for page in PAGES}


def blocks(lang: str, pages=PAGES) -> list[str]:
    return [b for page in pages for b in re.findall(rf"```{lang}\n(.*?)```", TEXT[page], re.S)]


def commands(pages=PAGES) -> list[list[str]]:
    """Every ``.venv/bin/...`` command of the pages' bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash", pages):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" && "):
                part = part.strip()
                if part.startswith(".venv/bin/"):
                    out.append(shlex.split(part, comments=True))
    return out


CLI = [c for c in commands() if c[0] == ".venv/bin/recursion-env"]
#: ``.venv/bin/torchrun [launcher options] .venv/bin/recursion-env train ...``: the recursion-env part
TORCHRUN = [c[c.index(".venv/bin/recursion-env"):] for c in commands() if c[0] == ".venv/bin/torchrun"]
SCRIPTS = [c for c in commands() if c[0] == ".venv/bin/python" and c[1].endswith(".py")]


def test_the_readme_has_what_these_tests_read():
    assert len(blocks("python")) >= 2 and len(CLI) >= 15 and len(SCRIPTS) >= 6
    assert CLI[0] == [".venv/bin/recursion-env", "demo"]  # the main job, in the first command
    trains = [c for c in CLI if c[1] == "train"]
    assert len(trains) >= 6 and {"eval", "diagnose"} <= {c[1] for c in CLI}
    assert any("ppo" in c and "halting" in c for c in trains) and any("ppo" in c and "full" in c for c in trains)


@pytest.mark.parametrize("i", range(len(blocks("python"))))
def test_python_snippets_run(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks("python")[i], f"python block {i} of the README and the guide", "exec"), {})


def test_the_torchrun_commands_launch_recursion_env():
    assert len(TORCHRUN) >= 3 and all(c[1] == "train" for c in TORCHRUN)


@pytest.mark.parametrize("cmd", CLI + TORCHRUN, ids=lambda c: " ".join(c[1:4]))
def test_every_recursion_env_command_parses(cmd):
    try:
        args = build_parser().parse_args(cmd[1:])
    except SystemExit:
        pytest.fail(f"command does not parse: {' '.join(cmd)}")
    check_arguments(args)  # another method's flag, a negative budget: the errors main() would give


@pytest.mark.parametrize("cmd", SCRIPTS, ids=lambda c: c[1])
def test_every_script_exists_and_takes_its_flags(cmd):
    script = ROOT / cmd[1]
    assert script.is_file(), cmd[1]
    flags = [a.split("=")[0] for a in cmd[2:] if a.startswith("--")]
    if flags:
        text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120).stdout
        for flag in flags:
            assert flag in text, f"{cmd[1]} does not take {flag}"


#: the README's budgets, made small: (flag, value) replacements for the commands that train or evaluate
SMALL = {"--minutes": None, "--steps": "2", "--iterations": "1", "--n": "16", "--count": "1"}


def small(cmd: list[str]) -> list[str]:
    """A README command with a small budget: minutes become 2 steps, evaluation 16 puzzles, fresh runs tiny."""
    args, out = cmd[1:], []
    it = iter(range(len(args)))
    for i in it:
        if args[i] in SMALL and i + 1 < len(args):
            next(it)
            if SMALL[args[i]] is not None:
                out += [args[i], SMALL[args[i]]]
            elif "--steps" not in args and "--iterations" not in args:
                out += ["--steps", "2"]
        else:
            out.append(args[i])
    if out[0] == "train" and "--resume" not in out:
        if "ppo" in out:  # (from --init the network is the init run's: --hidden would be refused)
            out += ["--num-envs", "8", *([] if "--init" in out else ["--hidden", "16"])]
        else:
            out += ["--hidden", "16", "--eval-n", "16", "--batch-size", "16"]
    if out[0] in ("eval", "diagnose") and "--n" not in out:
        out += ["--n", "16"]
    if out[:2] == ["data", "build"]:
        out[out.index("--n") + 1] = "50"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(c[1] == "train" for c in commands([p])
                                                           if c[0] == ".venv/bin/recursion-env")])
def test_each_pages_training_commands_run_in_order(page, tmp_path, monkeypatch):
    """data, train (TRM, DIS, anytime DIS, PPO halting and full), eval, diagnose and resume, as written but for the
    budgets, in the page's order (later commands read the runs earlier ones wrote), each page in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    ran, trained = [], set()
    for cmd in (c for c in commands([page]) if c[0] == ".venv/bin/recursion-env"):
        if cmd[1] in ("data", "train", "eval", "diagnose"):
            if cmd[1] in ("eval", "diagnose") and cmd[2] not in trained:
                continue  # a run the page gets elsewhere (import-official needs an official checkpoint)
            if cmd[1] == "train":
                trained.add(cmd[cmd.index("--out") + 1])
            if cmd[1:3] == ["data", "convert"] and not Path(cmd[3]).exists():  # the page's CSV, made small
                task = make_task("sudoku", size=9)
                batch = task.generate(20, seed=0)
                write_csv(cmd[3], task, batch.inputs, batch.labels)
            argv = small(cmd)
            assert main(argv) == 0, f"{page}: command failed: {' '.join(cmd)} (run as {' '.join(argv)})"
            ran.append(argv[0])
    assert "train" in ran
    for cmd in ran_commands(page):
        assert (tmp_path / cmd[cmd.index("--out") + 1] / "checkpoint.pt").is_file()


def ran_commands(page: str) -> list[list[str]]:
    """The page's fresh ``train`` commands (each must leave a checkpoint behind)."""
    return [c for c in commands([page]) if c[0] == ".venv/bin/recursion-env" and c[1] == "train"
            and "--resume" not in c]
