"""The GPU paths end to end, for a machine with CUDA: every step below runs on the device and is checked.

    python benchmarks/cuda_check.py --out runs/bench/cuda_check

1. The MDP core, the TorchRL env (``check_env_specs``, a rollout) and the halting env on ``cuda``.
2. DIS training for ``--minutes`` on 6x6 Sudoku on ``cuda``, then held-out evaluation on ``cuda``.
3. PPO on ``cuda``: halting mode from that run, and full mode from scratch on 4x4, a few iterations each.
4. Env throughput on ``cuda`` (``benchmarks/env_throughput.py --device cuda``).
5. No host synchronisation in the training loop: TRM and DIS, 20 steps between two log points under
   ``torch.cuda.set_sync_debug_mode("error")`` (any call that waits for the device raises), bf16, compiled.

Writes ``cuda_check.json`` (figures and pass/fail of each step); exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench/cuda_check")
    p.add_argument("--minutes", type=float, default=1.0, help="DIS training budget")
    p.add_argument("--only", default=None, help="comma-separated checks to run (mdp, dis_train_eval, ppo, "
                                                 "env_throughput, no_sync); ppo needs dis_train_eval's run")
    p.add_argument("--device", default="cuda", help="cuda; cpu runs the same checks as a dry run of this script")
    args = p.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    report = {"torch": torch.__version__, "device": name, "checks": {}}

    def check(name, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
            report["checks"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "result": value}
        except Exception as e:  # noqa: BLE001 - every failure is reported, the next check still runs
            report["checks"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                      "traceback": traceback.format_exc()}
        print(name, json.dumps(report["checks"][name]), flush=True)

    def mdp():
        from torchrl.envs.utils import check_env_specs

        from recursion_env import RecursionCore, RecursionTorchRLEnv

        core = RecursionCore("sudoku", 32, latent_dim=16, device=dev, seed=0)
        obs = core.reset()
        res = core.step({"latent": obs["latent"], "answer": core.label, "halt": torch.ones(32, device=dev)
                         .long()})
        assert res.reward.device.type == torch.device(dev).type, res.reward.device
        assert bool(res.info["solved"].all()), (res.info, core.task.rule_score(core.puzzle, core.label))
        from recursion_env import make_task

        for task in (make_task("sudoku", size=9), make_task("maze", size=9), make_task("nqueens", board=8)):
            batch = task.generate(16, seed=0)
            score = task.rule_score(torch.from_numpy(batch.inputs).to(dev), torch.from_numpy(batch.labels).to(dev))
            assert bool((score == 1.0).all()), (task.name, score)  # exactly 1, not 0.99999994
        env = RecursionTorchRLEnv("sudoku", num_envs=8, size=4, latent_dim=16, device=dev, seed=0)
        check_env_specs(env)
        td = env.rollout(5, break_when_any_done=False)
        assert td["next", "reward"].device.type == torch.device(dev).type, td["next", "reward"].device
        return {"rollout_frames": td.numel()}

    def train_and_eval():
        from agents.cli import main as cli

        run = str(out / "dis6")
        rc = cli(["train", "--method", "dis", "--size", "6", "--minutes", str(args.minutes), "--device", dev,
                  "--out", run, "--no-final-eval"])
        assert rc == 0
        rc = cli(["eval", run, "--n", "1000", "--device", dev, "--json", str(out / "dis6_eval.json")])
        assert rc == 0
        return json.loads((out / "dis6_eval.json").read_text())

    def ppo():
        from agents.trainers.ppo import PPOConfig, train_ppo

        halting = train_ppo(PPOConfig(mode="halting", init=str(out / "dis6"), halt_readout="confidence",
                                      halt_bias=0.0, lr=1e-2, iterations=5, device=dev, progress=False,
                                      out=str(out / "ppo_halting")))
        full = train_ppo(PPOConfig(mode="full", iterations=5, device=dev, progress=False,
                                   out=str(out / "ppo_full")))
        return {m: {k: r["history"][-1].get(k) for k in ("return", "mean_nfe", "exact_accuracy", "loss")}
                for m, r in (("halting", halting), ("full", full))}

    def throughput():
        script = Path(__file__).with_name("env_throughput.py")
        subprocess.run([sys.executable, str(script), "--device", dev, "--out", str(out / "env_throughput.json"),
                        "--single-steps", "1000", "--steps", "100"], check=True)
        return json.loads((out / "env_throughput.json").read_text())["steps_per_s"]

    def no_sync():
        from agents.model.rollout import RecursionRunner
        from agents.trainers import config_from_dict, train
        from agents.trainers.data import DeviceFeed

        forward, top_up = RecursionRunner.forward, DeviceFeed.top_up
        calls = {"forward": 0}

        def watched_forward(self):  # from step 21 on, a sync raises, until the top-up of step 40
            calls["forward"] += 1
            if calls["forward"] == 21 and dev == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            return forward(self)

        def watched_top_up(self):
            if dev == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            return top_up(self)

        RecursionRunner.forward, DeviceFeed.top_up = watched_forward, watched_top_up
        try:
            results = {}
            for method, schedule in (("trm", {"T": 3, "n": 6, "N_sup": 16}), ("dis", {})):
                calls["forward"] = 0
                r = train(config_from_dict({"method": method, "task_kwargs": {"size": 6}, "steps": 40, "log_every": 20,
                                            "device": dev, "precision": "auto", "compile": "on", "progress": False,
                                            "final_eval": False, "eval_n": 16, "checkpoint_every": 10**6,
                                            "out": str(out / f"no_sync_{method}"), **schedule}), overwrite=True)
                results[method] = {"optimizer_steps": r["optimizer_steps"], "precision": r["precision"],
                                   "compile_s": r["compile_s"]}
            return results
        finally:
            RecursionRunner.forward, DeviceFeed.top_up = forward, top_up
            if dev == "cuda":
                torch.cuda.set_sync_debug_mode("default")

    checks = {"mdp": mdp, "dis_train_eval": train_and_eval, "ppo": ppo, "env_throughput": throughput,
              "no_sync": no_sync}
    for name in (args.only.split(",") if args.only else checks):
        check(name, checks[name])
    (out / "cuda_check.json").write_text(json.dumps(report, indent=2, default=str))
    ok = all(c["ok"] for c in report["checks"].values())
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
