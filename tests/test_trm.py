"""The TRM network, the deep-supervision trainer, checkpoints, and the TRM as an agent in the MDP."""

import dataclasses
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import recursion_env  # noqa: F401
from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.cli import main as cli
from agents.eval.evaluation import evaluate_run, load_trained, rollout_metrics
from agents.model.rollout import RecursionRunner, TRMPolicy
from agents.model.trm import TRM, TRMConfig
from agents.trainers import TrainConfig, config_from_dict, train
from recursion_env import RecursionTorchRLEnv, make_task

SUDOKU4 = make_task("sudoku", size=4)


def tiny(**kw) -> TrainConfig:
    base = dict(task_kwargs={"size": 4}, hidden=32, T=2, n=2, N_sup=4, batch_size=32, n_train=64, augment=False,
                eval_n=64, progress=False, warmup_steps=10, ema_decay=0.99, checkpoint_every=1000)
    return config_from_dict(dict(**{**base, **kw}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    train(tiny(steps=150, out=str(out)))
    return out


# -- network ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {"mixer": "mlp"}, {"mixer": "attention"}, {"mixer": "attention", "pos": "learned"}, {"mixer": "mlp", "pos": "none"},
    {"mixer": "mlp", "puzzle_emb_len": 2, "num_puzzle_ids": 5, "puzzle_emb_ndim": 40},
    {"mixer": "attention", "step_embedding": 6}, {"mixer": "mlp", "puzzle_emb_len": 0, "puzzle_emb_ndim": 0},
])
def test_shapes_for_each_variant(kw):
    cfg = TRMConfig(seq_len=16, vocab_size=5, hidden=32, heads=4, T=2, n=3, N_sup=4, **kw)
    model = TRM(cfg)
    puzzle = torch.randint(0, 5, (3, 16))
    x = model.embed(puzzle, torch.tensor([0, 1, 5]), torch.tensor([0, 1, 4]) if cfg.num_puzzle_ids > 1 else None)
    assert x.shape == (3, cfg.latent_len, 32)
    y, z = model.initial_state(3)
    out = model.supervision_step(x, y, z)
    assert out.y.shape == out.z.shape == (3, cfg.latent_len, 32)
    assert out.logits.shape == out.reference_logits.shape == (3, 16, 5)
    assert out.halt_logit.shape == out.value.shape == (3,)
    assert out.nfe == 2 * 4
    assert torch.allclose(out.halt_logit, torch.full((3,), -5.0))  # zero weights, bias -5 at init


def test_nfe_is_counted_exactly_and_defaults_give_336():
    cfg = TRMConfig(seq_len=16, vocab_size=5, hidden=16)
    assert cfg.N_sup * cfg.nfe_per_supervision_step == 336
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=3, n=4))
    calls = []
    original = model.f
    model.f = lambda h, inj: calls.append(1) or original(h, inj)
    x = model.embed(torch.zeros(2, 16, dtype=torch.int64))
    out = model.supervision_step(x, *model.initial_state(2))
    assert len(calls) == out.nfe == 3 * 5


def test_no_grad_recursions_build_no_graph():
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=3, n=2))
    grad_calls = []
    model.layers[0].register_forward_hook(lambda m, i, o: grad_calls.append(o.requires_grad))
    x = model.embed(torch.zeros(2, 16, dtype=torch.int64))
    out = model.supervision_step(x, *model.initial_state(2))
    # 2 layers per f call; only the last recursion's n + 1 = 3 calls are recorded for autograd
    assert grad_calls == [False] * 6 + [True] * 3
    out.logits.sum().backward()
    assert model.token_embedding.weight.grad is not None


def test_reference_logits_are_the_readout_before_the_step():
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=1, n=1))
    x = model.embed(torch.zeros(2, 16, dtype=torch.int64))
    y, z = model.initial_state(2)
    out = model.supervision_step(x, y, z)
    assert torch.allclose(out.reference_logits, model.readout(y)[0])
    again = model.supervision_step(x, out.y, out.z)
    assert torch.allclose(again.reference_logits, out.logits)


# -- training ----------------------------------------------------------------------------------------------------


def test_training_is_deterministic_given_a_seed(tmp_path):
    a = train(tiny(steps=8, out=str(tmp_path / "a"), eval_n=8))
    b = train(tiny(steps=8, out=str(tmp_path / "b"), eval_n=8))
    assert a["last_loss"] == b["last_loss"]
    sa, sb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    c = train(tiny(steps=8, out=str(tmp_path / "c"), eval_n=8, seed=1))
    assert c["last_loss"] != a["last_loss"]


def test_resume_continues_the_run_exactly(tmp_path):
    straight = train(tiny(steps=12, out=str(tmp_path / "straight"), eval_n=8))
    train(tiny(steps=7, out=str(tmp_path / "split"), eval_n=8))
    resumed = train(tiny(steps=5, out=str(tmp_path / "split"), eval_n=8), resume=True)  # 5 more
    assert resumed["optimizer_steps"] == 12
    assert resumed["last_loss"] == pytest.approx(straight["last_loss"], rel=1e-5, abs=1e-6)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert torch.equal(a["ranks"][0]["core"]["puzzle"], b["ranks"][0]["core"]["puzzle"])


def test_checkpoint_round_trip_is_atomic_and_safe(tmp_path, trained):
    state = load_checkpoint(trained)
    path = save_checkpoint(tmp_path / "copy.pt", state)
    again = load_checkpoint(path)
    for k in state["model"]:
        assert torch.equal(state["model"][k], again["model"][k])
    assert state["train_config"] == again["train_config"]
    assert state["ranks"][0]["stream"]["rng"] == again["ranks"][0]["stream"]["rng"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.pt"]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_training_never_sees_held_out_puzzles(tmp_path):
    cfg = tiny(steps=3, out=str(tmp_path), n_train=None, eval_n=200, augment=True)
    result = train(cfg)
    held_out = {row.tobytes() for row in SUDOKU4.generate(200, seed=cfg.eval_seed).inputs}
    state = load_checkpoint(tmp_path)
    assert not any(row.numpy().tobytes() in held_out for row in state["ranks"][0]["core"]["puzzle"])
    assert result["examples_seen"] >= 32


@pytest.mark.slow
def test_trm_overfits_64_sudoku4_puzzles(tmp_path):
    cfg = tiny(steps=400, hidden=64, batch_size=64, lr=1e-3, warmup_steps=20, out=str(tmp_path))
    train(cfg)
    model, task, _ = load_trained(cfg.out)
    batch = task.generate(64, seed=cfg.seed)  # the training set
    metrics = rollout_metrics(model, task, batch.inputs, batch.labels)
    assert metrics["solved"].mean(1).max() >= 0.95


# -- the TRM as an agent in the MDP --------------------------------------------------------------------------------


def direct_predictions(model, puzzles):
    """The model called directly, no env: answers after each supervision step and total NFE."""
    x = model.embed(puzzles)
    y, z = model.initial_state(len(puzzles))
    answers, nfe = [], 0
    with torch.no_grad():
        for _ in range(model.cfg.N_sup):
            out = model.supervision_step(x, y, z)
            y, z, nfe = out.y, out.z, nfe + out.nfe
            answers.append(out.logits.argmax(-1))
    return answers, nfe


@pytest.mark.parametrize("granularity", ["supervision_step", "call"])
def test_trm_through_gym_env_reproduces_direct_calls(trained, granularity):
    model, task, _ = load_trained(trained)
    policy = TRMPolicy(model, granularity=granularity, use_halting=False)
    per_sup = model.cfg.nfe_per_supervision_step
    k = per_sup if granularity == "supervision_step" else 1
    env = gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=model.cfg.hidden, latent_len=model.cfg.latent_len,
                   nfe_per_step=k, max_steps=model.cfg.N_sup * per_sup // k)
    obs, info = env.reset(seed=3, options={"latent": policy.initial_latent(torch.zeros(1, 16)).numpy()[0]})
    answers, nfe = direct_predictions(model, torch.as_tensor(obs["puzzle"])[None])
    seen = []
    done = False
    while not done:
        batched = {key: torch.as_tensor(v)[None] for key, v in obs.items()}
        action = {key: v[0].numpy() for key, v in policy.act(batched).items()}
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if info["nfe"] % per_sup == 0:
            seen.append(obs["answer"].copy())
    givens = obs["puzzle"] != 0
    for s, a in enumerate(answers):
        expected = np.where(givens, obs["puzzle"], a[0].numpy())
        assert np.array_equal(seen[s], expected), s
    assert info["nfe"] == nfe == model.cfg.N_sup * per_sup


def test_trm_through_torchrl_env_and_runner_agree(trained):
    model, task, _ = load_trained(trained)
    policy = TRMPolicy(model, use_halting=False, precision="fp32")  # (as the runner below and direct_predictions)
    env = RecursionTorchRLEnv(task, num_envs=8, latent_dim=model.cfg.hidden, latent_len=model.cfg.latent_len,
                              nfe_per_step=model.cfg.nfe_per_supervision_step, max_steps=model.cfg.N_sup, seed=0)
    td = env.reset()
    td.set("latent", policy.initial_latent(td["puzzle"]))
    env.core.latent = td["latent"].clone()
    answers, nfe = direct_predictions(model, td["puzzle"])
    for s in range(model.cfg.N_sup):
        td["action"] = policy.act({k: td[k] for k in ("puzzle", "latent", "step", "answer")})
        td = env.step(td)["next"]
        givens = td["puzzle"] != 0
        assert torch.equal(td["answer"], torch.where(givens, td["puzzle"], answers[s]))
    assert (td["nfe"] == nfe).all()
    # the trainer's and evaluator's runner gives the same answers
    runner = RecursionRunner(model, task, 8)
    runner.start(td["puzzle"])
    with torch.no_grad():
        for _ in range(model.cfg.N_sup):
            runner.commit(runner.forward())
    assert torch.equal(runner.core.answer, td["answer"])


def test_trm_plugs_into_the_halting_env(trained):
    from gymnasium.utils.env_checker import check_env

    model, _, _ = load_trained(trained)
    env = gym.make("TRMHalting-Sudoku-v0", size=4, policy=TRMPolicy(model), max_steps=model.cfg.N_sup)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(0)
    assert info["nfe"] == model.cfg.nfe_per_supervision_step


@pytest.mark.parametrize("input_from_answer", [False, True])
def test_every_role_acts_through_the_one_trm_step(monkeypatch, input_from_answer):
    """The runner (trainers, evaluation), the env policy and PPO's actor each make one call of ``TRM.forward`` per
    supervision step, and give the same next latent and logits from the same state."""
    from agents.trainers.ppo import TRMActor

    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=2, n=2, N_sup=3, step_embedding=3 if
                          input_from_answer else 0, input_from_answer=input_from_answer)).eval()
    calls = []
    forward = TRM.forward

    def counted(self, *a, **kw):
        calls.append(1)
        return forward(self, *a, **kw)

    monkeypatch.setattr(TRM, "forward", counted)
    runner = RecursionRunner(model, SUDOKU4, 4)
    runner.start(SUDOKU4.generate(4, seed=1).inputs)
    with torch.no_grad():
        runner.commit(runner.forward())  # a state after one step: a real answer and a step count of 1
        core = runner.core
        state = (core.puzzle, core.latent.clone(), core.step_count.clone(), core.answer.clone())
        calls.clear()
        outputs = [runner.forward(), TRMPolicy(model, precision="fp32").step(*state),
                   TRMActor(model, "halting")(*state)]
    assert len(calls) == 3
    (ref, pol, act) = outputs
    assert torch.equal(pol.latent, torch.stack([ref.y, ref.z], 1)) and torch.equal(pol.logits, ref.logits)
    assert torch.equal(act[0], torch.stack([ref.y, ref.z], 1)) and torch.equal(act[1], ref.logits)
    # the halting env keeps no answer: the model decodes it from y, the answer the core holds
    no_answer = TRMPolicy(model, precision="fp32").step(*state[:3])
    assert torch.equal(no_answer.logits, ref.logits)


def test_evaluation_with_diagnostics_is_one_rollout_for_both(trained, monkeypatch):
    import agents.eval.diagnostics as diagnostics
    import agents.eval.evaluation as evaluation

    plain, report = evaluate_run(trained, n=32, halting=True), diagnostics.diagnose(trained, n=32)
    rollouts = []
    rollout = evaluation.rollout_metrics
    for module in (evaluation, diagnostics):
        monkeypatch.setattr(module, "rollout_metrics", lambda *a, **kw: rollouts.append(1) or rollout(*a, **kw))
    both = evaluate_run(trained, n=32, halting=True, diagnostics=True)
    assert len(rollouts) == 1
    assert both["by_step"] == plain["by_step"] and both["halting"] == plain["halting"]
    assert both["diagnostics"] == report


# -- command line ----------------------------------------------------------------------------------------------------


def test_cli_train_eval_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--method", "trm", "--task", "sudoku", "--size", "4", "--steps", "6", "--hidden", "16",
            "--T", "1", "--n", "2", "--n-sup", "3", "--eval-n", "30", "--out", str(run)]
    assert cli(args) == 0
    assert cli(["train", "--resume", "--out", str(run), "--steps", "3"]) == 0  # 3 more
    assert load_checkpoint(run)["step"] == 9
    assert cli(["eval", str(run), "--n", "30", "--halting", "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == "trm" and m["task"] == "sudoku" and m["n_puzzles"] == 30
    assert cli(["eval", str(run), "--n", "31"]) == 2  # only 30 were held out of training
    assert "held out 30 puzzles" in capsys.readouterr().err
    assert [r["supervision_step"] for r in m["by_step"]] == [1, 2, 3]
    assert [r["nfe"] for r in m["by_step"]] == [3, 6, 9]
    assert set(m["by_step"][0]) >= {"supervision_step", "nfe", "exact_accuracy", "cell_accuracy"}
    assert set(m["halting"]) >= {"mean_nfe", "exact_accuracy", "cell_accuracy"}
    assert set(m["halting_sampled"]) >= {"mean_nfe", "exact_accuracy", "cell_accuracy"}
    puzzles = tmp_path / "p.txt"
    puzzles.write_text("\n".join(SUDOKU4.to_line(x) for x in SUDOKU4.generate(5, 7).inputs))
    assert cli(["eval", str(run), "--puzzles", str(puzzles), "--json", str(tmp_path / "u.json")]) == 0
    assert json.loads((tmp_path / "u.json").read_text())["n_puzzles"] == 5
    assert cli(["train", "--out", str(tmp_path / "x")]) == 2  # no budget: a clear error
    assert "needs a budget" in capsys.readouterr().err


def test_halt_readout_position_zero_or_mean():
    for readout in ("first", "mean"):
        model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=1, n=1, halt_readout=readout))
        torch.nn.init.normal_(model.halt_head.weight)
        y = torch.randn(3, 16, 16)
        expected = model.halt_head(y[:, 0] if readout == "first" else y.mean(1)).squeeze(-1)
        assert torch.allclose(model.readout(y)[1], expected)
    with pytest.raises(ValueError, match="halt_readout"):
        TRMConfig(seq_len=16, vocab_size=5, halt_readout="last")


def test_confidence_features_and_switching_the_halt_readout():
    from agents.model.trm import confidence_features

    sure = torch.full((1, 4, 5), -30.0)
    sure[..., 2] = 30.0  # every cell certain
    unsure = sure.clone()
    unsure[0, 1] = 0.0  # one cell uniform over 5 tokens
    f_sure, f_unsure = confidence_features(torch.cat([sure, unsure]))
    assert f_sure[0] == pytest.approx(math.log(1e-6), abs=1e-3) and f_sure[2] < 1e-3
    assert f_unsure[0] == pytest.approx(math.log(0.8), abs=1e-4)  # the least sure cell: 1 - 1/5
    assert f_unsure[2] == pytest.approx(0.25, abs=1e-4)  # one of 4 cells at maximal entropy
    logits = torch.randn(2, 4, 5, requires_grad=True)
    confidence_features(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()

    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=1, n=1))
    assert model.halt_head.in_features == 16
    before = model.cfg
    model.set_halt_readout("confidence")
    assert model.cfg.halt_readout == "confidence" and model.halt_head.in_features == model.value_head.in_features == 3
    assert before.halt_readout == "first"  # a new config: the one a caller (or a checkpoint's dict) holds is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.cfg.hidden = 32
    torch.nn.init.normal_(model.halt_head.weight)
    y = torch.randn(3, model.cfg.latent_len, 16)
    logits, halt, _ = model.readout(y)
    assert torch.allclose(halt, model.halt_head(confidence_features(logits)).squeeze(-1))
    reloaded = TRM(TRMConfig(**model.cfg.to_dict()))
    reloaded.load_state_dict(model.state_dict())  # a saved run rebuilds the same head
    assert torch.allclose(reloaded.readout(y)[1], halt)
    with pytest.raises(ValueError, match="halt_readout"):
        model.set_halt_readout("last")


def test_the_rules_readout_reads_whether_the_decoded_answer_obeys_the_rules():
    """halt_readout "rules": five features in [0, 1], 1 meaning stop; the fourth is 1 exactly when the answer
    decoded from the logits (givens kept) solves the puzzle, checked by the task's label-free rules."""
    from agents.model.trm import rules_features
    from recursion_env.tasks import make_task

    task = make_task("sudoku", size=4)
    batch = task.generate(2, seed=0)
    puzzle, label = torch.as_tensor(batch.inputs), torch.as_tensor(batch.labels)
    wrong = label.clone()
    blank = (puzzle[1] == 0).nonzero()[0, 0]
    wrong[1, blank] = wrong[1, blank] % 4 + 1  # one blank cell changed: a rule broken
    logits = torch.nn.functional.one_hot(torch.stack([label[0], wrong[1]]), task.vocab_size).float() * 30
    model = TRM(TRMConfig(hidden=16, T=1, n=1).for_task(task))
    model.set_halt_readout("rules")
    assert model.halt_head.in_features == 5
    with pytest.raises(ValueError, match="set_rules"):
        model.answer_rule_score(puzzle, logits)
    model.set_rules(task)
    score = model.answer_rule_score(puzzle, logits)
    f = rules_features(logits, score)
    assert f.shape == (2, 5) and float(f.min()) >= 0 and float(f.max()) <= 1
    assert f[0, 3] == 1 and f[1, 3] == 0 and f[0, 4] == 1 and f[1, 4] < 1
    assert f[0, :3].min() > 0.99  # every cell certain
    y = torch.randn(2, model.cfg.latent_len, 16)
    logits_y, halt, value = model.readout(y, puzzle)
    h = rules_features(logits_y, model.answer_rule_score(puzzle, logits_y))
    assert torch.allclose(halt, model.halt_head(h).squeeze(-1))
    assert torch.allclose(value, model.value_head(h).squeeze(-1))


def test_the_rules_readout_keeps_a_costly_context_per_puzzle_and_scores_the_same():
    """A maze's rule context (two breadth-first searches) is computed once per puzzle and kept; the scores are the
    uncached ones, in any row order."""
    from recursion_env.tasks import make_task

    task = make_task("maze", size=7)
    assert task.costly_rule_context and not make_task("sudoku", size=4).costly_rule_context
    puzzle = torch.as_tensor(task.generate(6, seed=0).inputs)
    logits = torch.randn(6, task.seq_len, task.vocab_size, generator=torch.Generator().manual_seed(0))
    model = TRM(TRMConfig(hidden=16, T=1, n=1).for_task(task))
    model.set_rules(task)
    expected = task.rule_score(puzzle, torch.where(puzzle != 0, puzzle, logits.argmax(-1)))
    assert torch.equal(model.answer_rule_score(puzzle, logits), expected)
    assert len(model._rule_contexts) == len({tuple(r.tolist()) for r in puzzle})
    order = torch.tensor([5, 3, 1, 0, 2, 4])
    assert torch.equal(model.answer_rule_score(puzzle[order], logits[order]), expected[order])
