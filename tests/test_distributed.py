"""Data-parallel training under torchrun, on this CPU machine (gloo): the same code uses NCCL on GPUs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.checkpoint import load_checkpoint, load_newest_valid
from agents.trainers import TrainConfig, train
from agents.trainers.distributed import Distributed

SCRIPT = str(Path(sys.executable).parent / "recursion-env")
# (compiling would cost each rank tens of seconds; compile and precision have tests of their own)
TINY = ["--hidden", "16", "--batch-size", "16", "--stream-chunk", "8", "--compile", "off", "--eval-n", "16",
        "--no-final-eval"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, launcher=(), **kw):
    """``torchrun [launcher] recursion-env train ARGS``, one thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, SCRIPT, "train", *args]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc, timeout=240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def two_processes():
    return ("--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()))


def test_two_processes_keep_identical_parameters_and_match_one_process_with_the_combined_batch(tmp_path):
    """2 ranks x 8 puzzles: the ranks' parameters are identical at every checkpoint (the trainer checks their
    fingerprints), the two shards together are the one-process batch of 16, and after 3 optimizer steps the
    network equals the one-process run's within float tolerance (the all-reduce sums in another order; in fp32,
    as bf16 rounds the two batches' products differently)."""
    common = ["--method", "trm", "--steps", "3", "--checkpoint-every", "1", "--precision", "fp32", *TINY]
    out = finish(torchrun(*common, "--out", str(tmp_path / "two"), launcher=two_processes()))
    assert out.count("optimizer_steps") == 1  # rank 0 reports
    subprocess.run([SCRIPT, "train", *common, "--out", str(tmp_path / "one")], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    two, one = load_checkpoint(tmp_path / "two"), load_checkpoint(tmp_path / "one")
    assert two["step"] == one["step"] == 3 and len(two["ranks"]) == 2 and len(one["ranks"]) == 1
    assert two["ranks"][0]["parameters_sha256"] == two["ranks"][1]["parameters_sha256"]
    assert torch.equal(torch.cat([r["core"]["puzzle"] for r in two["ranks"]]), one["ranks"][0]["core"]["puzzle"])
    assert not torch.equal(two["ranks"][0]["core"]["puzzle"], two["ranks"][1]["core"]["puzzle"])  # disjoint draws
    for k in one["model"]:
        assert torch.allclose(two["model"][k], one["model"][k], atol=1e-5), k
    assert two["train_nfe"] == one["train_nfe"]  # forward passes of the global batch


def test_two_nodes_on_localhost_complete_a_run(tmp_path):
    """``--nnodes 2`` with a c10d rendezvous on 127.0.0.1: two launchers, one process each, one run (DIS, with
    its held-out evaluation split across the nodes)."""
    endpoint = f"127.0.0.1:{free_port()}"
    args = ["--method", "dis", "--steps", "4", "--out", str(tmp_path / "run"), *TINY[:-1]]
    nodes = [torchrun(*args, launcher=("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                       "--rdzv-endpoint", endpoint, "--rdzv-id", "test")) for _ in range(2)]
    outs = [finish(p) for p in nodes]
    assert sum(o.count("optimizer_steps") for o in outs) == 1
    state = load_checkpoint(tmp_path / "run")
    assert state["step"] == 4 and len(state["ranks"]) == 2
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["n_puzzles"] == 16 and len(metrics["by_step"]) == 6


def test_a_hard_killed_two_process_run_resumes_exactly(tmp_path):
    """SIGKILL to torchrun and both ranks mid-training; ``--resume`` under torchrun continues from the newest
    valid checkpoint, and the run ends where an unbroken run of the same length ends: step count, network,
    optimizer state, every rank's data stream, carried batch and RNG."""
    run = tmp_path / "killed"
    common = ["--method", "trm", "--checkpoint-every", "3", *TINY]
    proc = torchrun(*common, "--steps", "100000", "--out", str(run), launcher=two_processes())
    deadline = time.time() + 120
    while not (run / "checkpoint.pt.1").exists():  # a second checkpoint: training is well under way
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    for pid in [proc.pid, *descendants(proc.pid)]:  # the launcher and both ranks at once, as a lost machine
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed_at, _ = load_newest_valid(run / "checkpoint.pt")
    k = killed_at["step"]
    assert k >= 3 and k % 3 == 0

    with pytest.raises(ValueError, match="trained by 2 process"):  # its streams are per process
        train(TrainConfig(out=str(run), steps=1, progress=False), resume=True)

    finish(torchrun("--resume", "--steps", "4", "--out", str(run), launcher=two_processes()))
    finish(torchrun(*common, "--steps", str(k + 4), "--out", str(tmp_path / "straight"), launcher=two_processes()))
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "straight")
    assert a["step"] == b["step"] == k + 4 and a["ema_updates"] == b["ema_updates"] == k + 4
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], atol=1e-6), name
    for oa, ob in zip(a["optimizer"], b["optimizer"]):
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert sa["step"] == sb["step"] == k + 4
            assert torch.allclose(sa["exp_avg"], sb["exp_avg"], atol=1e-6)
    for ra, rb in zip(a["ranks"], b["ranks"]):
        assert ra["stream"]["rng"] == rb["stream"]["rng"] and ra["stream"]["chunks"] == rb["stream"]["chunks"]
        assert torch.equal(ra["halt_rng"], rb["halt_rng"]) and torch.equal(ra["torch_rng"], rb["torch_rng"])
        assert torch.equal(ra["core"]["puzzle"], rb["core"]["puzzle"])
        assert torch.equal(ra["core"]["step_count"], rb["core"]["step_count"])


def test_the_global_batch_must_divide_by_the_processes():
    assert Distributed(0, 2).shard(16) == 8 and Distributed(0, 1).shard(15) == 15
    with pytest.raises(ValueError, match="--batch-size 15 is the global batch: it must divide by the 2 processes"):
        Distributed(1, 2).shard(15)


def test_sigterm_to_torchrun_stops_both_ranks_after_the_same_step_with_a_checkpoint(tmp_path):
    """torchrun forwards SIGTERM to its ranks; they agree on the step to stop after (one may see the signal a
    step later), write one checkpoint, exit 0, and the run resumes from it."""
    run = tmp_path / "run"
    proc = torchrun("--method", "dis", "--steps", "100000", "--out", str(run), *TINY, launcher=two_processes())
    deadline = time.time() + 120
    while not (run / "config.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    state = load_checkpoint(run)
    assert f"stopped by SIGTERM after step {state['step']}: checkpoint written" in out, out[-3000:]
    assert "exitcode" not in out  # no rank failed (torchrun itself reports the signal it got)
    assert state["step"] > 0 and len(state["ranks"]) == 2
    finish(torchrun("--resume", "--steps", "2", "--out", str(run), launcher=two_processes()))
    assert load_checkpoint(run)["step"] == state["step"] + 2
