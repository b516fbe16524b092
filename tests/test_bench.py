"""The headline benchmark: presets, verdicts, the report, and a whole (tiny) run that resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.cli import main
from agents.eval.evaluation import summarize
from agents.experiments.bench import BenchConfig, markdown, ppo_runs, training_runs, verdict

ROOT = Path(__file__).resolve().parents[1]


def methods(trm_first, trm_full, dis, match_scale=1.0, looks=None):
    """TRM rows at 21..336 NFE (rising linearly from first to full), one DIS run at 18 NFE; label_match is the
    verifier's accuracy times ``match_scale`` (fewer stored-solution matches than valid completions)."""
    def row(s, nfe, a):
        return {"supervision_step": s, "nfe": nfe, "exact_accuracy": a, "label_match": a * match_scale,
                "cell_accuracy": a}
    trm = [row(s, 21 * s, trm_first + (trm_full - trm_first) * i / 4) for i, s in enumerate((1, 2, 4, 8, 16))]
    # the TRM's held-out looks: learning, then flat over the last third of its 180 s (converged)
    history = [{"elapsed_s": 60.0 * i, "optimizer_step": i, "best_exact_accuracy": a}
               for i, a in zip((1, 2, 3), looks or (trm_full / 2, trm_full, trm_full))]
    return {"trm": {"by_step": trm, "history": history,
                    "halting": {"mean_nfe": 42.0, "exact_accuracy": trm_full, "label_match": trm_full,
                                "mean_steps": 2.0, "cell_accuracy": trm_full}},
            "dis-official-code-diffusion": {"by_step": [row(6, 18, dis)],
                                            "history": [{"elapsed_s": t, "optimizer_step": 9,
                                                         "best_exact_accuracy": dis} for t in (30.0, 180.0)]},
            "ppo-trm": {"init": "trm", "halting": {"mean_nfe": 28.0, "exact_accuracy": trm_full - 0.005,
                                                   "mean_steps": 1.3, "cell_accuracy": 0.9},
                        "iterations": 3, "frames": 99, "wall_clock_s": 5.0}}


@pytest.mark.parametrize("first, full, dis, expected, reason", [
    (0.0, 0.05, 0.02, "inconclusive", "too hard"),
    (0.0, 0.02, 0.40, "inconclusive", "did not learn"),
    (0.90, 0.93, 0.93, "inconclusive", "does not need depth"),  # +3 points from depth: not enough
    (0.60, 0.80, 0.795, "reproduced", "within"),
    (0.60, 0.80, 0.70, "not reproduced", "below"),
])
def test_verdicts_follow_the_issue_definitions(first, full, dis, expected, reason):
    report = verdict(methods(first, full, dis))
    v = report["verdicts"]["exact_accuracy"]
    assert report["verdict"] == v["verdict"] == expected and reason in v["reason"]
    assert report["depth_check"]["exact_accuracy"]["needs_depth"] == (full - first >= 0.05)
    assert v["dis_18_within_1pt_of_trm_336"]["dis-official-code-diffusion"] == (dis >= full - 0.01)


def test_each_metric_gets_its_own_verdict_and_the_halting_claims_are_counted():
    # the stored-solution match halves everything: TRM gains 0.10 there, DIS trails by 0.05
    report = verdict(methods(0.60, 0.80, 0.70, match_scale=0.5))
    assert report["verdicts"]["exact_accuracy"]["verdict"] == "not reproduced"
    assert report["verdicts"]["label_match"]["verdict"] == "not reproduced"
    assert report["depth_check"]["label_match"]["gain"] == pytest.approx(0.10)
    ppo = report["halting"]["ppo-trm"]
    assert ppo["times_fewer_than_336"] == pytest.approx(12.0) and ppo["at_trm_336_accuracy"]
    # TRM's best during training was 0.80 (from 120 s on); DIS never got there
    assert report["time_to_trm_best"]["seconds"] == {"trm": 120.0, "dis-official-code-diffusion": None}


def test_markdown_lists_every_method_with_both_metrics():
    runs = methods(0.6, 0.8, 0.79, match_scale=0.5)
    runs["dis-official-code-diffusion"]["by_step"][0]["label_match"] = 0.2  # valid, but other completions
    for r in runs.values():
        if "by_step" in r:
            r |= {"optimizer_steps": 1, "train_forward_passes": 2, "examples_seen": 3, "wall_clock_s": 4.0,
                  "dead_steps": []}
    report = verdict(runs) | {"date": "today", "config": BenchConfig.for_task("nqueens").__dict__,
                              "task_name": "nqueens", "task": {"board": 8},
                              "machine": {"cores": 2, "cpu": "cpu"}, "methods": runs}
    text = markdown(report)
    assert "| trm | 16 | 336 | 0.800 | 0.400 |" in text
    assert "| dis-official-code-diffusion | 6 | 18 | 0.790 | 0.200 |" in text
    assert "trm + halting head" in text and "ppo-trm + learned halting (PPO on trm)" in text
    assert "**Verdict: reproduced.**" in text and "stored solution (the paper's metric): **not reproduced**" in text


def test_presets():
    nq = BenchConfig.for_task("nqueens")
    assert (nq.pool, nq.eval_n, nq.task_kwargs) == (7200, 200, {"board": 8, "min_given": 1, "max_given": 7})
    assert nq.targets == ["diffusion"]  # no solver trace for N-Queens
    names = set(training_runs(nq))
    assert names == {"trm", "dis-official-code-diffusion", "dis-paper-diffusion", "dis-anytime"}
    assert set(ppo_runs(nq)) == {"ppo-trm", "ppo-dis-anytime"}
    assert "verifier" in ppo_runs(nq)["ppo-trm"][1]  # N-Queens: any valid completion is rewarded
    sudoku = BenchConfig.for_task("sudoku")
    assert {"dis-official-code-solver", "dis-paper-solver"} <= set(training_runs(sudoku))
    long = BenchConfig.for_task("nqueens", "long")
    assert long.minutes + long.ppo_minutes <= 100  # with evaluation, the whole comparison within 2 hours
    gpu = BenchConfig.for_task("sudoku", "gpu")
    assert gpu.device == "cuda" and gpu.task_kwargs == {"size": 9, "min_givens": 28, "max_givens": 34}
    assert gpu.minutes + gpu.ppo_minutes <= 5  # leaves about 3 of the 8 minutes for set-up and evaluation
    assert BenchConfig.quick().task_kwargs["size"] == 6
    assert BenchConfig.for_task("sudoku", task_kwargs={"min_givens": 40}).task_kwargs["max_givens"] == 34
    with pytest.raises(ValueError, match="solver traces exist for Sudoku only"):
        BenchConfig.for_task("nqueens", targets=["solver"])
    with pytest.raises(ValueError, match="--preset 'huge'"):
        BenchConfig.for_task("sudoku", "huge")


def test_label_match_is_the_stored_solution_metric():
    solved = np.array([[True, True, False], [True, True, True]])
    match = np.array([[True, False, False], [True, True, False]])
    metrics = {"solved": solved, "cell_accuracy": solved.astype(np.float32), "label_match": match,
               "halt_logit": np.array([[1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), "nfe_per_step": 3}
    s = summarize(metrics)
    assert [r["label_match"] for r in s["by_step"]] == pytest.approx([1 / 3, 2 / 3])
    assert s["halting"]["label_match"] == pytest.approx(2 / 3)  # stops at steps 1, 2, 2: True, True, False


def test_bench_refuses_nonsense(capsys):
    assert main(["bench", "nfe-vs-accuracy", "--task", "nqueens", "--targets", "solver", "--out", "x"]) == 2
    assert "Sudoku only" in capsys.readouterr().err
    assert main(["bench", "nfe-vs-accuracy", "--task", "maze", "--hard", "--out", "x"]) == 2
    assert main(["bench", "nfe-vs-accuracy", "--quick", "--preset", "gpu", "--out", "x"]) == 2


@pytest.mark.slow
def test_gpu_headline_script_runs_on_cpu_and_resumes(tmp_path):
    """The GPU script end to end with a tiny budget on CPU: every row, the verdict, results.json and the plot;
    run again, it keeps the finished runs; another configuration in the same folder is refused."""
    out = tmp_path / "headline"
    tiny = ["--device", "cpu", "--minutes", "0.03", "--ppo-minutes", "0.02", "--hidden", "16", "--batch-size", "16",
            "--pool", "60", "--eval-n", "16", "--compile", "off", "--recipes", "official-code", "--targets",
            "diffusion,solver"]  # (the preset compiles on its GPU; compiling each tiny CPU run would triple this test)
    env = {**os.environ, "PYTHON": sys.executable, "HEADLINE_TIMEOUT": "400"}
    script = str(ROOT / "benchmarks" / "gpu_headline.sh")
    run = subprocess.run(["bash", script, str(out), *tiny], capture_output=True, text=True, env=env, timeout=450)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["methods"]) == {"trm", "dis-official-code-diffusion", "dis-official-code-solver",
                                      "dis-anytime", "ppo-trm", "ppo-dis-anytime"}
    assert report["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert report["task"]["size"] == 9 and (out / "accuracy_vs_nfe.png").stat().st_size > 0
    assert all("label_match" in r for r in report["methods"]["trm"]["by_step"])
    again = subprocess.run(["bash", script, str(out), *tiny], capture_output=True, text=True, env=env, timeout=450)
    assert again.returncode == 0 and again.stdout.count("trained already") == 6, again.stdout[-2000:]
    other = subprocess.run(["bash", script, str(out), *tiny[:-1], "diffusion"], capture_output=True, text=True,
                           env=env, timeout=100)
    assert other.returncode == 2 and "another configuration" in other.stderr


def test_a_win_over_a_baseline_still_learning_is_inconclusive_and_says_why():
    runs = methods(0.30, 0.45, 0.80, looks=(0.15, 0.30, 0.45))  # still rising over the last third
    report = verdict(runs)
    v = report["verdicts"]["exact_accuracy"]
    assert v["verdict"] == report["verdict"] == "inconclusive (baseline not converged)"
    assert "0.350 above TRM@336" in v["reason"] and "trm was not converged (its looks rose +0.150" in v["reason"]
    assert report["convergence"]["trm"] == {"converged": False, "last_third_rise": pytest.approx(0.15)}
    assert report["convergence"]["dis-official-code-diffusion"]["converged"]


@pytest.mark.parametrize("looks, wall, converged", [
    ([(60, 0.5), (120, 0.8), (150, 0.805), (180, 0.807)], 180, True),  # +0.007 over the last third
    ([(60, 0.5), (120, 0.8), (180, 0.82)], 180, False),  # +0.02
    ([(60, 0.5), (100, 0.8)], 180, False),  # no look in the last third: not known to have converged
    ([(170, 0.8)], 180, False),  # one look
    ([(30, 0.2), (110, 0.9), (170, 0.85)], 180, True),  # a drop is no rise
])
def test_convergence_is_a_rise_under_a_point_over_the_last_third(looks, wall, converged):
    from agents.experiments.bench import convergence

    run = {"wall_clock_s": wall, "history": [{"elapsed_s": t, "best_exact_accuracy": a} for t, a in looks]}
    assert convergence(run)["converged"] is converged


def test_seeds_train_the_trm_and_the_main_dis_once_per_seed():
    cfg = BenchConfig.for_task("nqueens", seeds=[0, 1, 2])
    runs = training_runs(cfg)
    assert set(runs) == {"trm", "dis-official-code-diffusion", "dis-paper-diffusion", "dis-anytime",
                         "trm-seed1", "trm-seed2", "dis-official-code-diffusion-seed1",
                         "dis-official-code-diffusion-seed2", "dis-anytime-seed1", "dis-anytime-seed2"}
    seed = {name: flags[flags.index("--seed") + 1] for name, flags in runs.items()}
    assert seed["trm"] == seed["dis-paper-diffusion"] == "0" and seed["trm-seed2"] == "2"
    assert runs["trm-seed1"][:-1] == runs["trm"][:-1]  # the same flags but the seed
    assert BenchConfig.for_task("nqueens").seeds == [0]
    with pytest.raises(ValueError, match="distinct seeds"):
        BenchConfig.for_task("nqueens", seeds=[1, 1])


def test_the_verdict_over_seeds_uses_the_means_and_counts_the_seeds_that_agree():
    runs = methods(0.60, 0.80, 0.80)
    seed1 = methods(0.60, 0.90, 0.80)  # this seed alone: DIS 10 points below
    seed2 = methods(0.60, 0.70, 0.80)
    for suffix, other in (("-seed1", seed1), ("-seed2", seed2)):
        runs[f"trm{suffix}"] = other["trm"]
        runs[f"dis-official-code-diffusion{suffix}"] = other["dis-official-code-diffusion"]
    report = verdict(runs)
    v = report["verdicts"]["exact_accuracy"]
    assert report["seed_means"]["trm"]["by_step"][-1]["exact_accuracy"] == pytest.approx(0.80)
    assert report["seed_means"]["trm"]["by_step"][-1]["exact_accuracy_max"] == pytest.approx(0.90)
    assert v["verdict"] == "reproduced" and v["seeds_agree"] == 2 and v["seeds"] == 3
    assert v["per_seed"]["trm-seed1"] == "not reproduced" and "2 of 3 seeds" in v["reason"]
    assert "means of 3 seeds" in v["numbers"]
    for r in runs.values():
        if "by_step" in r:
            r |= {"optimizer_steps": 1, "train_forward_passes": 2, "examples_seen": 3, "wall_clock_s": 4.0,
                  "dead_steps": []}
    text = markdown(report | {"date": "today", "config": BenchConfig.for_task("nqueens").__dict__,
                              "task_name": "nqueens", "task": {"board": 8}, "machine": {"cores": 2, "cpu": "cpu"},
                              "methods": runs})
    assert "| trm (3 seeds) | 16 | 336 | 0.800 (0.700-0.900) |" in text
    assert "| trm-seed2 | 1 |" in text  # the per-run table keeps every seed


def test_a_seed_still_learning_makes_the_mean_verdict_inconclusive():
    runs = methods(0.60, 0.80, 0.80)
    runs["trm-seed1"] = methods(0.60, 0.80, 0.80, looks=(0.4, 0.6, 0.8))["trm"]
    v = verdict(runs)["verdicts"]["exact_accuracy"]
    assert v["verdict"] == "inconclusive (baseline not converged)" and "trm-seed1 was not converged" in v["reason"]


def test_the_bench_reads_its_schedules_off_the_method_configs():
    """The flags it trains with and the NFE it judges at come from the configs' defaults, not from constants."""
    from agents.experiments.bench import DIS_FULL, TRM_FIRST, TRM_FULL, BenchConfig, schedule, training_runs
    from agents.trainers import DeepSupervisionConfig, DISConfig

    trm, dis = schedule(DeepSupervisionConfig), schedule(DISConfig)
    m = DeepSupervisionConfig().model
    assert (TRM_FIRST, TRM_FULL, DIS_FULL) == (m.T * (m.n + 1), m.N_sup * m.T * (m.n + 1), dis["nfe"]) == (21, 336, 18)
    runs = training_runs(BenchConfig.for_task("sudoku", preset="quick"))
    for name, sched in (("trm", trm), ("dis-anytime", dis)):
        flags = runs[name]
        got = [int(flags[flags.index(f) + 1]) for f in ("--T", "--n", "--n-sup")]
        assert got == [sched["T"], sched["n"], sched["N_sup"]]
