"""Deep Improvement Supervision: target generators, the policy-improvement trainer, guidance."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.eval.evaluation import evaluate_run, load_trained, rollout_metrics
from agents.model.rollout import RecursionRunner, guided_logits
from agents.trainers import DeepSupervisionConfig, DISConfig, train
from agents.trainers.targets import GENERATORS, make_targets
from recursion_env import make_task

TASKS = {"sudoku4": make_task("sudoku", size=4), "sudoku6": make_task("sudoku", size=6),
         "sudoku9": make_task("sudoku", size=9), "maze": make_task("maze", size=7),
         "nqueens": make_task("nqueens", board=6)}


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(GENERATORS), task=st.sampled_from(sorted(TASKS)), N_sup=st.integers(1, 16),
       seed=st.integers(0, 2**31 - 1))
def test_target_generator_invariants(kind, task, N_sup, seed):
    t = TASKS[task]
    if kind == "solver" and not task.startswith("sudoku"):
        b = t.generate(1, seed)
        with pytest.raises(ValueError, match="defined for sudoku"):
            make_targets(kind, t, b.inputs, b.labels, N_sup, torch.Generator().manual_seed(seed))
        return
    b = t.generate(3, seed)
    targets = make_targets(kind, t, b.inputs, b.labels, N_sup, torch.Generator().manual_seed(seed)).numpy()
    assert targets.shape == (3, N_sup, t.seq_len)
    for x, y, path in zip(b.inputs, b.labels, targets):
        assert np.array_equal(path[-1], y)  # the last target is the solution
        givens = x != 0
        assert (path[:, givens] == x[givens]).all()  # givens kept
        assert ((path == x) | (path == y)).all()  # every token is the puzzle's or the solution's
        hamming = (path != y).sum(1)
        assert (np.diff(hamming) <= 0).all()  # never further from the solution
        start = int((x != y).sum())
        if N_sup > 1 and start > 1:
            assert hamming.mean() < start  # falls on average


@pytest.mark.parametrize("kind", GENERATORS)
def test_targets_are_fresh_each_call(kind):
    t = TASKS["sudoku9"]
    b = t.generate(1, 0)
    rng = torch.Generator().manual_seed(0)
    a = make_targets(kind, t, b.inputs, b.labels, 6, rng).numpy()
    c = make_targets(kind, t, b.inputs, b.labels, 6, rng).numpy()
    if kind == "solver":  # deduction is deterministic; only the top-ups are random, so paths may agree
        assert np.array_equal(a[0, -1], c[0, -1])
    else:
        assert not np.array_equal(a, c)


def test_diffusion_reveals_floor_s_over_n_of_the_differing_cells():
    t = TASKS["sudoku9"]
    b = t.generate(1, 4)
    x, y = b.inputs[0], b.labels[0]
    d = int((x != y).sum())
    path = make_targets("diffusion", t, b.inputs, b.labels, 6, torch.Generator().manual_seed(0))[0].numpy()
    assert [(p != x).sum() for p in path] == [s * d // 6 for s in range(1, 7)]


def test_solver_trace_steps_are_deductions_or_top_ups():
    t = TASKS["sudoku9"]
    b = t.generate(1, 5)
    path = make_targets("solver", t, b.inputs, b.labels, 6, torch.Generator().manual_seed(0))[0].numpy()
    previous = b.inputs[0]
    for target in path[:-1]:
        # every target stays uniquely solvable and extends the previous one
        assert ((target == previous) | (previous == 0)).all()
        assert t.count_solutions(target) == 1
        previous = target


def test_guidance_w1_equals_plain_decoding(tmp_path):
    out_dir = tmp_path / "dis"
    train(DISConfig(task_kwargs={"size": 4}, model={"hidden": 32, "N_sup": 4}, batch_size=16, steps=8, eval_n=16,
                    out=str(out_dir), progress=False))
    model, task, _ = load_trained(out_dir)
    b = task.generate(16, 3)
    plain = rollout_metrics(model, task, b.inputs, b.labels)
    guided = rollout_metrics(model, task, b.inputs, b.labels, guidance=1.0)
    assert np.array_equal(plain["cell_accuracy"], guided["cell_accuracy"])
    runner = RecursionRunner(model, task, 16)
    runner.start(b.inputs, b.labels)
    with torch.no_grad():
        out = runner.forward()
    assert torch.equal(guided_logits(out, 1.0), out.logits)
    assert torch.equal(guided_logits(out, 0.0), out.reference_logits)
    w2 = guided_logits(out, 2.0)
    assert torch.allclose(w2, 2 * out.logits - out.reference_logits, atol=1e-5)
    result = evaluate_run(out_dir, n=16, guidance=[0.0, 1.0, 2.0])
    assert [g["w"] for g in result["guidance"]] == [0.0, 1.0, 2.0]
    w1 = next(g for g in result["guidance"] if g["w"] == 1.0)
    assert w1["exact_accuracy"] == result["by_step"][-1]["exact_accuracy"]


def test_dis_uses_its_schedule_and_step_embedding(tmp_path):
    result = train(DISConfig(task_kwargs={"size": 4}, model={"hidden": 16}, batch_size=8, steps=12, eval_n=8,
                             out=str(tmp_path), progress=False, targets="mask", autoregressive=True))
    assert [r["nfe"] for r in result["by_step"]] == [3, 6, 9, 12, 15, 18]
    assert result["train_forward_passes"] == 12 * 8 * 3
    model, _, _ = load_trained(tmp_path)
    assert model.cfg.step_embedding == 6 and model.cfg.input_from_answer
    assert model.step_embedding.weight.shape[0] == 8  # steps 1..6 and two spare rows, as official


@pytest.mark.parametrize("recipe,weights,from_answer", [("paper", [1, 2, 3, 4, 5, 6], False),
                                                        ("official-code", [1] * 6, True)])
def test_dis_recipes(recipe, weights, from_answer):
    from agents.trainers.policy_improvement import PolicyImprovement

    cfg = DISConfig(task_kwargs={"size": 4}, recipe=recipe)
    method = PolicyImprovement(cfg)
    expected = torch.tensor(weights, dtype=torch.float32)
    assert torch.allclose(method.step_weights, expected / expected.mean())
    model = cfg.model_config(make_task("sudoku", size=4))
    assert model.input_from_answer is from_answer and model.step_embedding == 6
    overridden = DISConfig(recipe=recipe, autoregressive=not from_answer)
    assert overridden.dis_autoregressive is not from_answer
    trm = DeepSupervisionConfig().model_config(make_task("sudoku", size=4))
    assert not trm.input_from_answer and not trm.step_embedding  # TRM never reads the answer or the step
    with pytest.raises(ValueError, match="recipe"):
        DISConfig(recipe="arxiv")


@pytest.mark.slow
def test_dis_overfits_64_sudoku4_puzzles(tmp_path):
    cfg = DISConfig(task_kwargs={"size": 4}, model={"hidden": 64}, batch_size=64, n_train=64, augment=False, steps=300,
                    eval_n=64, lr=1e-3, warmup_steps=20, ema_decay=0.99, out=str(tmp_path), progress=False)
    train(cfg)
    model, task, _ = load_trained(tmp_path)
    batch = task.generate(64, seed=cfg.seed)
    metrics = rollout_metrics(model, task, batch.inputs, batch.labels)
    assert metrics["solved"][-1].mean() >= 0.95


# -- dead-compute diagnostics ---------------------------------------------------------------------------------------

from agents.eval.diagnostics import (  # noqa: E402
    advantage_margin,
    diagnose_model,
    guided_cross_entropy,
    summary_text,
    write_report,
)


def margin_variance(reference: torch.Tensor, conditional: torch.Tensor, w: float = 1.0):
    """Var_{pi_w}[delta l] per cell: what the second derivative of the guided cross-entropy must equal (so the
    cross-entropy is convex in w, which is why the margin at w = 1 alone can call a helpful step dead)."""
    reference, conditional = reference.double(), conditional.double()
    delta = conditional - reference
    pi = torch.softmax(reference + w * delta, -1)
    mean = (pi * delta).sum(-1, keepdim=True)
    return (pi * (delta - mean) ** 2).sum(-1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), w=st.floats(-1, 3))
def test_margin_is_minus_the_slope_and_variance_the_curvature(seed, w):
    g = torch.Generator().manual_seed(seed)
    ref, cond = torch.randn(4, 9, 7, generator=g), torch.randn(4, 9, 7, generator=g)
    target = torch.randint(0, 7, (4, 9), generator=g)
    h = 1e-4
    ce = lambda v: guided_cross_entropy(ref, cond, target, v)  # noqa: E731
    slope = (ce(w + h) - ce(w - h)) / (2 * h)
    curvature = (ce(w + h) - 2 * ce(w) + ce(w - h)) / h**2
    assert torch.allclose(slope, -advantage_margin(ref, cond, target, w), atol=1e-5)
    assert torch.allclose(curvature, margin_variance(ref, cond, w), atol=1e-3)


def test_diagnostics_flag_a_step_that_changes_nothing(tmp_path):
    out_dir = tmp_path / "trm"
    train(DeepSupervisionConfig(task_kwargs={"size": 4}, model={"hidden": 32, "T": 1, "n": 2, "N_sup": 4},
                                batch_size=32, n_train=64, steps=60, eval_n=32, out=str(out_dir), progress=False,
                                augment=False, warmup_steps=5))
    model, task, _ = load_trained(out_dir)
    original = model.supervision_step
    calls = {"n": 0}

    def frozen_third_step(x, y, z, T=None, n=None, **kw):
        calls["n"] += 1
        out = original(x, y, z, T, n, **kw)
        if calls["n"] % 4 == 3:  # the third supervision step returns its input unchanged
            ref = out.reference_logits
            return out._replace(y=y, z=z, logits=ref, halt_logit=out.halt_logit)
        return out

    model.supervision_step = frozen_third_step
    b = task.generate(32, 11)
    report = diagnose_model(model, task, b.inputs, b.labels)
    assert report["steps"][2]["dead"] and report["steps"][2]["changed_fraction"] == 0
    assert report["steps"][2]["advantage_margin"] == pytest.approx(0.0, abs=1e-9)
    assert 3 in report["dead_steps"] and report["dead_nfe"] >= 3
    assert "DEAD" in summary_text(report)
    paths = write_report(report, tmp_path / "r.json", tmp_path / "plots")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths) and len(paths) == 3


def test_summarize_greedy_and_sampled_halting():
    from agents.eval.evaluation import summarize

    solved = np.array([[False, True], [True, True], [True, True]])  # [N_sup=3, n=2]
    cell = solved.astype(np.float32)
    logit = np.array([[-50.0, 50.0], [-50.0, -50.0], [-50.0, -50.0]])  # puzzle 1 stops at once, 0 never
    s = summarize({"solved": solved, "cell_accuracy": cell, "halt_logit": logit, "nfe_per_step": 3})
    assert s["halting"] == s["halting_sampled"]  # probabilities of 0 and 1: sampling is deterministic
    assert s["halting"]["mean_nfe"] == (9 + 3) / 2 and s["halting"]["exact_accuracy"] == 1.0
    half = np.zeros((3, 2000))  # p(halt) = 1/2 at every step
    many = summarize({"solved": np.ones((3, 2000), bool), "cell_accuracy": np.ones((3, 2000)), "halt_logit": half,
                      "nfe_per_step": 1})
    assert many["halting"]["mean_steps"] == 3.0  # greedy never halts at p = 1/2
    assert abs(many["halting_sampled"]["mean_steps"] - 1.75) < 0.1  # 1/2*1 + 1/4*2 + 1/4*3


def test_cli_train_dis_then_diagnose_and_eval_guidance(tmp_path):
    import json

    from agents.cli import main as cli

    run = tmp_path / "dis"
    assert cli(["train", "--method", "dis", "--targets", "solver", "--task", "sudoku", "--size", "4", "--steps", "4",
                "--hidden", "16", "--eval-n", "16", "--out", str(run)]) == 0
    assert cli(["diagnose", str(run), "--n", "16", "--json", str(tmp_path / "d.json"), "--plots",
                str(tmp_path / "plots")]) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["method"] == "dis" and len(report["steps"]) == 6
    assert set(report["steps"][0]) >= {"supervision_step", "nfe", "exact_accuracy", "cell_accuracy",
                                       "advantage_margin", "improvement", "cell_accuracy_gain", "changed_fraction",
                                       "dead"}
    assert (tmp_path / "plots" / "margin_per_step.png").exists()
    assert cli(["eval", str(run), "--n", "16", "--guidance", "0,1,2", "--json", str(tmp_path / "e.json")]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["guidance"]
    assert [r["w"] for r in rows] == [0.0, 1.0, 2.0]
    assert all({"exact_accuracy", "cell_accuracy"} <= set(r) for r in rows)


def test_a_step_that_overshoots_is_not_dead():
    """Margin at w = 1 below zero (it overshoots: a smaller step would be better still) while the cross-entropy
    of the solution fell a lot: alive. TRM's first step, from the readout of a constant state, reads like this."""
    from agents.eval.diagnostics import step_diagnostics
    from agents.model.trm import SupervisionOutput

    reference = torch.zeros(1, 2, 3)  # the same uniform prediction on both cells
    conditional = torch.tensor([[[12.0, 0.0, 0.0], [0.0, 1.5, 0.0]]])  # cell 0 right and sure, cell 1 wrong
    label = torch.tensor([[0, 0]])
    out = SupervisionOutput(None, None, conditional, reference, None, None, 1)
    margin, changed, blanks, improvement = step_diagnostics(out, torch.ones(1, 2, dtype=torch.bool), label)
    assert margin / blanks < 0 < improvement / blanks and changed == 1  # argmax of a uniform row is token 0


def test_targets_are_drawn_on_the_trainers_generator_and_a_numpy_state_is_refused():
    """The method draws its paths from its own torch generator: the same seed gives the same paths, its state
    round-trips, and a state saved when the paths were drawn by NumPy is refused in one line."""
    from agents.trainers.policy_improvement import PolicyImprovement

    cfg = DISConfig(task_kwargs={"size": 4})
    t = TASKS["sudoku4"]
    b = t.generate(8, 0)
    a, c = PolicyImprovement(cfg), PolicyImprovement(cfg)
    paths = [make_targets("diffusion", t, b.inputs, b.labels, 6, m.generator) for m in (a, c)]
    assert torch.equal(*paths)
    saved = a.state_dict()
    first = make_targets("diffusion", t, b.inputs, b.labels, 6, a.generator)
    c.load_state_dict(saved)
    assert torch.equal(first, make_targets("diffusion", t, b.inputs, b.labels, 6, c.generator))
    old = {"rng": np.random.default_rng(7).bit_generator.state, "targets": paths[0]}
    with pytest.raises(ValueError, match="older recursion-env .* retrain it"):
        a.load_state_dict(old)
