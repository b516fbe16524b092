"""Cost of one optimizer step of each supervised method, per precision and compilation: seconds per step, puzzles per
second, achieved FLOP/s (counted with ``torch.utils.flop_counter``) and that as a fraction of this machine's own
matmul peak, measured in the same run (a large fp32 and bf16 matmul on the same threads; on CUDA, the card's).

TRM runs T=3, n=6 (21 calls of f a step, 7 with gradient), DIS T=1, n=2 (3 calls). Each figure is ``train`` run
for ``--steps`` more steps than a 3-step run, their difference per step (set-up, the first steps and the compile,
which is off the training clock, cancel out), best of ``--rounds``. Today's fp32 eager path is ``fp32:off``.

    python benchmarks/step_cost.py --out runs/bench/step_cost.json                       # 6x6, width 64, batch 64
    python benchmarks/step_cost.py --settings 9:512:64 --steps 2 --rounds 1              # the official width
    python benchmarks/step_cost.py --settings 9:512:768 --device cuda                    # the official recipe's batch
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from agents.model.precision import machine, native_bf16, resolve_precision
from agents.model.rollout import RecursionRunner
from agents.model.trm import TRM
from agents.trainers import config_from_dict, get_method, train
from recursion_env import make_task

SETTINGS = {"trm": {"T": 3, "n": 6, "N_sup": 16}, "dis": {"T": 1, "n": 2, "N_sup": 6}}
VARIANTS = "fp32:off,bf16:off,bf16:on"


def run_config(method: str, size: int, hidden: int, batch: int, steps: int, device: str, precision: str,
               compile_mode: str, out: str):
    return config_from_dict(dict(method=method, task_kwargs={"size": size}, hidden=hidden, batch_size=batch,
                                 steps=steps, out=out, progress=False, final_eval=False, eval_n=8,
                                 checkpoint_every=10**9, device=device, precision=precision, compile=compile_mode,
                                 **SETTINGS[method]))


def time_steps(method, size, hidden, batch, steps, device, precision, compile_mode,
               warmup: int = 3) -> tuple[float, float]:
    """(seconds per optimizer step, compile seconds): a run of ``warmup + steps`` minus a run of ``warmup``."""
    torch._dynamo.reset()  # (each variant compiles afresh, as a run in its own process does)
    elapsed, compile_s = {}, 0.0
    for k in (warmup, warmup + steps):
        with tempfile.TemporaryDirectory() as tmp:
            result = train(run_config(method, size, hidden, batch, k, device, precision, compile_mode, tmp))
            elapsed[k] = result["wall_clock_s"]
            compile_s = max(compile_s, result["compile_s"])
    return (elapsed[warmup + steps] - elapsed[warmup]) / steps, compile_s


def step_flops(method: str, size: int, hidden: int, batch: int, device: str) -> int:
    """Floating-point operations of one training step (the supervision step forward, its loss, backward)."""
    cfg = run_config(method, size, hidden, batch, 1, device, "fp32", "off", "unused")
    task = make_task("sudoku", size=size)
    model = TRM(cfg.model_config(task)).to(device).train()
    objective = get_method(method)(cfg, device=device)
    runner = RecursionRunner(model, task, batch, device)
    b = task.generate(batch, seed=0)
    runner.start(b.inputs, b.labels)
    objective.on_start(runner, None, objective.prepare(runner, runner.core.puzzle, runner.core.label))
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective.loss(runner.forward(), runner)
        loss.backward()
    return counter.get_total_flops()


def eval_seconds(method: str, size: int, hidden: int, n: int, device: str, precision: str,
                 compile_mode: str) -> float:
    """Seconds to evaluate ``n`` held-out puzzles for every supervision step (TRM: 16 x 21 = 336 forward passes
    each), after a warm-up batch (which compiles f, with ``compile_mode`` on)."""
    from agents.eval.evaluation import rollout_metrics

    torch._dynamo.reset()
    cfg = run_config(method, size, hidden, 64, 1, device, precision, compile_mode, "unused")
    task = make_task("sudoku", size=size)
    model = TRM(cfg.model_config(task)).to(device).compile_f(compile_mode == "on")
    batch = task.generate(n, seed=0)
    resolved = resolve_precision(precision, device)
    rollout_metrics(model, task, batch.inputs[:256], batch.labels[:256], device=device, precision=resolved)
    t0 = time.perf_counter()
    rollout_metrics(model, task, batch.inputs, batch.labels, device=device, precision=resolved)
    return time.perf_counter() - t0


def breakdown(size: int, hidden: int, batch: int, repeats: int = 5) -> dict:
    """Seconds for one TRM supervision step (T=3, n=6), forward and backward, of the official network and of the
    same network without its 16 puzzle slots or without rounding SwiGLU widths up to 256: where the time goes."""
    import agents.model.trm as trm

    rounded = trm.swiglu_width
    variants = {"official": ({}, rounded), "no puzzle slots": ({"puzzle_emb_len": 0, "puzzle_emb_ndim": 0}, rounded),
                "unrounded SwiGLU widths": ({}, lambda dim, e: round(e * dim * 2 / 3))}
    out = {}
    for name, (kw, width) in variants.items():
        trm.swiglu_width = width
        try:
            torch.manual_seed(0)
            model = trm.TRM(trm.TRMConfig(seq_len=size * size, vocab_size=size + 1, hidden=hidden, **kw))
        finally:
            trm.swiglu_width = rounded
        puzzle = torch.randint(0, size + 1, (batch, size * size))
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            out_step = model.supervision_step(model.embed(puzzle), *model.initial_state(batch))
            out_step.logits.float().square().mean().backward()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(best, 4)
    return out


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls: what this machine's matrix units do at best."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="6:64:64",
                   help="comma-separated SIZE:HIDDEN:BATCH (the bench's CPU setting 6:64:64; official width 9:512:768)")
    p.add_argument("--methods", default="trm,dis")
    p.add_argument("--variants", default=VARIANTS,
                   help="comma-separated PRECISION:COMPILE (today's path fp32:off; auto:auto is what a run picks)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3, help="steps of the run whose time is subtracted")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: as the headline bench runs each method)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval", type=int, default=0, help="also time the evaluation of this many held-out puzzles "
                                                         "(a multiple of 256: one batch shape, one compiled graph)")
    p.add_argument("--out", default=None)
    p.add_argument("--breakdown", action="store_true",
                   help="also time one TRM supervision step without the puzzle slots / without SwiGLU rounding")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    where = machine(device)
    peak = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    print(f"{where}, {args.threads} thread(s), torch {torch.__version__}: native bf16 {native_bf16(device)}; "
          f"matmul peak fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for setting in args.settings.split(","):
        size, hidden, batch = (int(v) for v in setting.split(":"))
        for method in args.methods.split(","):
            flops = step_flops(method, size, hidden, batch, device)
            base = base_eval = None
            for variant in args.variants.split(","):
                precision, compile_mode = variant.split(":")
                timed = [time_steps(method, size, hidden, batch, args.steps, device, precision, compile_mode,
                                    args.warmup_steps) for _ in range(args.rounds)]
                seconds, compile_s = min(t[0] for t in timed), max(t[1] for t in timed)
                resolved = resolve_precision(precision, device)
                base = seconds if base is None else base
                row = {"method": method, "sudoku_size": size, "hidden": hidden, "batch": batch,
                       "precision": precision, "compile": compile_mode, "seconds_per_step": round(seconds, 4),
                       "puzzles_per_second": round(batch / seconds, 1), "compile_s": round(compile_s, 1),
                       "flop_per_step": flops, "achieved_gflops": round(flops / seconds / 1e9, 2),
                       "fraction_of_matmul_peak": round(flops / seconds / peak[resolved], 4),
                       f"speedup_vs_{args.variants.split(',')[0].replace(':', '_')}": round(base / seconds, 2)}
                if args.eval:
                    row["eval_puzzles"] = args.eval
                    row["eval_s"] = round(eval_seconds(method, size, hidden, args.eval, device, precision,
                                                       compile_mode), 2)
                    base_eval = row["eval_s"] if base_eval is None else base_eval
                    row["eval_speedup"] = round(base_eval / row["eval_s"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"machine": where, "native_bf16": native_bf16(device), "torch": torch.__version__,
              "threads": args.threads, "device": device, "measured": time.strftime("%Y-%m-%d %H:%M"),
              "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()}, "rows": rows}
    if args.breakdown:
        result["trm_supervision_step_s"] = {f"sudoku{s_}": breakdown(int(s_.split(":")[0]), int(s_.split(":")[1]),
                                                                      int(s_.split(":")[2]))
                                            for s_ in args.settings.split(",")}
        print(json.dumps(result["trm_supervision_step_s"]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
