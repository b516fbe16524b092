"""The headline benchmark's verdict: too hard, inconclusive, too easy, or depth matters."""

import pytest

from agents.bench import BenchConfig, _verdict, markdown


def methods(trm_first, trm_best, dis):
    trm = [{"supervision_step": s, "nfe": 21 * s, "exact_accuracy": a, "cell_accuracy": a}
           for s, a in ((1, trm_first), (2, trm_best), (4, trm_best), (8, trm_best), (16, trm_best))]
    return {"trm": {"by_step": trm, "halting": {"mean_nfe": 30.0, "exact_accuracy": trm_best, "mean_steps": 1.4,
                                                "cell_accuracy": trm_best}},
            "dis-diffusion": {"by_step": [{"supervision_step": 6, "nfe": 18, "exact_accuracy": dis,
                                           "cell_accuracy": dis}]}}


@pytest.mark.parametrize("trm_first, trm_best, dis, verdict", [
    (0.0, 0.05, 0.02, "TOO HARD"), (0.0, 0.0, 0.21, "INCONCLUSIVE"), (0.90, 0.91, 0.9, "TOO EASY"),
    (0.40, 0.80, 0.79, "depth matters"),
])
def test_verdicts(trm_first, trm_best, dis, verdict):
    report = _verdict(BenchConfig(), methods(trm_first, trm_best, dis))
    assert report["depth_check"]["verdict"].startswith(verdict)
    within = report["claims"]["dis_18_within_1pt_of_trm_336"]["dis-diffusion"]
    assert within == (dis >= trm_best - 0.01)


def test_markdown_lists_every_method():
    report = _verdict(BenchConfig(), methods(0.4, 0.8, 0.79))
    report |= {"date": "today", "config": BenchConfig().__dict__, "task": {"size": 9},
               "machine": {"cores": 2, "cpu": "cpu"},
               "methods": {k: {**v, "optimizer_steps": 1, "train_forward_passes": 2, "examples_seen": 3,
                               "wall_clock_s": 4.0, "dead_steps": []} for k, v in methods(0.4, 0.8, 0.79).items()}}
    text = markdown(report)
    assert "| trm | 16 | 336 | 0.800 |" in text and "| dis-diffusion | 6 | 18 | 0.790 |" in text
    assert "trm + halting head" in text
