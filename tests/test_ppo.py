"""PPO over the recursion MDP: keys and finite losses, learning on a toy setting, frozen network in halting mode."""

import json

import pytest
import torch

from agents.checkpoint import load_checkpoint
from agents.cli import main as cli
from agents.eval.evaluation import load_trained
from agents.trainers import DeepSupervisionConfig, DISConfig, train
from agents.trainers.ppo import AnswerAndHalt, PPOConfig, train_ppo


def tiny(**kw) -> PPOConfig:
    base = dict(task_kwargs={"size": 4}, hidden=16, T=1, n=1, N_sup=4, num_envs=16, rollout_len=4, iterations=2,
                epochs=2, minibatch_size=32, progress=False, train_pool=256, eval_n=64)
    return PPOConfig.from_dict({**base, **kw})


def test_distribution_is_per_token_and_keeps_givens_out():
    g = torch.Generator().manual_seed(0)
    logits, halt = torch.randn(3, 16, 5, generator=g), torch.randn(3, generator=g)
    blank = torch.zeros(3, 16, dtype=torch.bool)
    blank[:, :4] = True
    dist = AnswerAndHalt(logits, halt, blank, greedy_answer=False)
    sample = dist.sample()
    assert sample.shape == (3, 17) and sample.dtype == torch.int64
    lp = dist.log_prob(sample)
    assert lp.shape == (3, 17) and (lp[:, 4:16] == 0).all() and (lp[:, :4] < 0).all()
    assert torch.allclose(lp[:, -1], torch.distributions.Bernoulli(logits=halt).log_prob(sample[:, -1].float()))
    greedy = AnswerAndHalt(logits, halt, blank, greedy_answer=True)
    assert torch.equal(greedy.sample()[:, :16], logits.argmax(-1))
    assert torch.allclose(greedy.log_prob(sample), lp[:, -1:]) and greedy.entropy().shape == (3, 1)


def test_short_run_has_finite_losses_and_writes_a_run(tmp_path):
    result = train_ppo(tiny(mode="full", out=str(tmp_path)))
    assert result["iterations"] == 2 and result["frames"] == 2 * 16 * 4
    for row in result["history"]:
        assert torch.isfinite(torch.tensor([row["loss"], row["kl"], row["clip_fraction"]])).all()
    state = load_checkpoint(tmp_path)
    assert state["train_config"]["method"] == "ppo" and "model" in state
    assert (tmp_path / "ppo_metrics.json").exists() and any((tmp_path / "tb").iterdir())


def test_multisync_collector_splits_the_envs_over_worker_processes(tmp_path):
    result = train_ppo(tiny(mode="full", collector="multisync", workers=2, out=str(tmp_path)))
    assert result["iterations"] == 2 and result["frames"] == 2 * 16 * 4
    for row in result["history"]:
        assert torch.isfinite(torch.tensor([row["loss"], row["kl"], row["clip_fraction"]])).all()
    with pytest.raises(ValueError, match="workers"):
        PPOConfig(collector="multisync", num_envs=5, workers=2)
    with pytest.raises(ValueError, match="collector"):
        PPOConfig(collector="async")


def test_the_ray_collector_spreads_the_envs_over_two_ray_workers_and_sends_them_each_update(tmp_path):
    """TorchRL's RayCollector (the [ray] extra), Ray started on this machine with 2 actors: each iteration's batch
    is both workers' envs, and the weights the workers act with follow the trained ones (the second iteration is
    collected by the updated policy: its log-probabilities are the learner's own, so the first PPO epoch starts
    with a zero KL)."""
    result = train_ppo(tiny(mode="full", collector="ray", workers=2, iterations=3, out=str(tmp_path)))
    assert result["iterations"] == 3 and result["frames"] == 3 * 16 * 4
    for row in result["history"]:  # (without the updates, measured: 0.0008 and 0.010 at iterations 2 and 3)
        assert torch.isfinite(torch.tensor([row["loss"], row["kl"], row["clip_fraction"]])).all()
        assert row["first_kl"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="workers"):
        PPOConfig(collector="ray", num_envs=5, workers=2)


@pytest.mark.parametrize("readout", [None, "confidence"])
def test_halting_mode_trains_only_the_halting_and_value_heads(tmp_path, readout):
    train(DeepSupervisionConfig(task_kwargs={"size": 4}, model={"hidden": 16, "T": 1, "n": 1, "N_sup": 4},
                                batch_size=16, steps=5, eval_n=8, out=str(tmp_path / "trm"), progress=False,
                                final_eval=False))
    before = load_checkpoint(tmp_path / "trm")["ema"]
    train_ppo(tiny(mode="halting", init=str(tmp_path / "trm"), out=str(tmp_path / "ppo"), nfe_cost=0.05,
                   halt_readout=readout))
    after = load_checkpoint(tmp_path / "ppo")["model"]
    heads = ("halt_head.", "value_head.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(heads) for k in changed), changed
    if readout == "confidence":  # new heads of 3 inputs, saved so that evaluation rebuilds and reads them
        assert after["halt_head.weight"].shape == after["value_head.weight"].shape == (1, 3)
        model = load_trained(str(tmp_path / "ppo"))[0]
        assert model.cfg.halt_readout == "confidence" and torch.equal(model.halt_head.weight,
                                                                      after["halt_head.weight"])


@pytest.mark.slow
def test_ppo_return_rises_when_compute_is_expensive(tmp_path):
    """Toy setting: an untrained network cannot improve the answer and every step costs nfe_cost * 2 NFE, so the best
    policy halts at once. Starting from p(halt) = 0.2 per step, PPO must raise the mean return."""
    result = train_ppo(tiny(mode="halting", nfe_cost=0.1, solve_bonus=0.0, iterations=12, num_envs=32, rollout_len=4,
                            lr=3e-3, halt_bias=-1.4, halt_readout="first", out=str(tmp_path)))
    returns = [h["return"] for h in result["history"] if "return" in h]
    assert sum(returns[-3:]) / 3 > sum(returns[:3]) / 3 + 0.1, returns


@pytest.mark.slow
def test_full_mode_learns_the_answer_from_scratch_on_one_blank(tmp_path):
    """4x4 puzzles with one blank, a fresh network, no compute cost: each step's answer is credited with its own
    correctness gain (GAE lambda 0, the full-mode default), so the mean return must rise within 120 iterations
    (the envs starting from the network's own initial state; first 10 -> last 10 iterations: 0.525 -> 0.985,
    0.556 -> 1.469, 0.550 -> 1.187 at seeds 0-2; 80 iterations gave +0.20 to +0.59, and +0.16 at seed 0 on
    another CPU, too close to call)."""
    result = train_ppo(tiny(mode="full", task_kwargs={"size": 4, "min_givens": 15, "max_givens": 15}, nfe_cost=0.0,
                            num_envs=32, iterations=120, minibatch_size=64, lr=3e-3, out=str(tmp_path)))
    returns = [h["return"] for h in result["history"] if "return" in h]
    assert sum(returns[-10:]) / 10 > sum(returns[:10]) / 10 + 0.2, returns


def test_full_mode_defaults_credit_each_step_and_skip_the_entropy_bonus():
    full, halting = PPOConfig(mode="full"), PPOConfig(mode="halting")
    assert (full.gae_lambda, full.entropy_coeff) == (0.0, 0.0)
    assert (halting.gae_lambda, halting.entropy_coeff) == (0.95, 0.01)
    assert PPOConfig(mode="full", gae_lambda=0.5).gae_lambda == 0.5


def test_cli_trains_ppo_and_eval_reads_it(tmp_path):
    run = tmp_path / "ppo"
    args = ["train", "--method", "ppo", "--mode", "full", "--task", "sudoku", "--size", "4", "--iterations", "1",
            "--hidden", "16", "--T", "1", "--n", "1", "--n-sup", "3", "--num-envs", "8", "--out", str(run)]
    assert cli(args) == 0
    assert cli(["eval", str(run), "--n", "10", "--halting", "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["method"] == "ppo" and "mean_nfe" in report["halting"]


def test_halting_defaults_are_the_working_recipe_and_a_plain_dis_init_is_warned_about(tmp_path):
    from agents.trainers import train

    halting, full = PPOConfig(mode="halting"), PPOConfig(mode="full")
    assert (halting.halt_readout, halting.halt_bias, halting.lr) == ("rules", 0.0, 1e-2)
    assert (full.halt_readout, full.halt_bias, full.lr) == ("keep", "keep", 3e-4)
    with pytest.raises(ValueError, match="halt_readout"):
        PPOConfig(halt_readout="last")
    run = tmp_path / "dis"
    train(DISConfig(task_kwargs={"size": 4}, model={"hidden": 16, "n": 1, "N_sup": 3}, batch_size=8, steps=2, eval_n=8,
                    out=str(run), progress=False, final_eval=False))
    with pytest.warns(UserWarning, match="plain DIS run.*anytime-weight"):
        train_ppo(tiny(mode="halting", init=str(run), iterations=1, out=str(tmp_path / "ppo")))


def test_ppo_resumes_exactly(tmp_path, capsys):
    from agents.checkpoint import load_checkpoint

    kw = dict(mode="full", task_kwargs={"size": 4, "min_givens": 10, "max_givens": 12}, num_envs=8, rollout_len=4,
              checkpoint_every=2)
    straight = train_ppo(tiny(iterations=4, out=str(tmp_path / "a"), **kw))
    train_ppo(tiny(iterations=2, out=str(tmp_path / "b"), **kw))
    resumed = train_ppo(tiny(iterations=2, out=str(tmp_path / "b"), **kw), resume=True)  # 2 more
    assert [h.get("return") for h in resumed["history"]] == [h.get("return") for h in straight["history"]]
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the CLI resumes a PPO run whatever --method says, and needs a budget
    assert cli(["train", "--resume", "--out", str(tmp_path / "b"), "--iterations", "1"]) == 0
    assert load_checkpoint(tmp_path / "b")["step"] == 5
    # --steps counts trm/dis optimizer steps: PPO counts --iterations, and says so
    assert cli(["train", "--method", "ppo", "--resume", "--out", str(tmp_path / "b"), "--steps", "1"]) == 2
    assert "--steps is a trm/dis option" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "b")["step"] == 5
    assert cli(["train", "--method", "ppo", "--resume", "--out", str(tmp_path / "b")]) == 2
    assert "needs a budget" in capsys.readouterr().err


def test_ppo_envs_start_from_the_networks_initial_state_and_answer_as_evaluation_does():
    """The env's own initial latent is zeros; a TRM starts from y_init / z_init. PPO's envs must start where
    training and evaluation start, or its policy learns to halt a network that answers differently."""
    from agents.model.rollout import RecursionRunner
    from agents.trainers.ppo import TRMActor, build_model, env_factory

    cfg = tiny()
    model, task, _ = build_model(cfg)
    model.eval()
    pool = task.generate(8, seed=3)
    env = env_factory(cfg, model, task, pool)(num_envs=8, seed=0)
    td = env.reset()
    expected = torch.stack(model.initial_state(8), 1)
    assert not torch.equal(expected, torch.zeros_like(expected))
    assert torch.equal(td["latent"], expected)
    runner = RecursionRunner(model, task, 8)
    runner.start(td["puzzle"])
    with torch.no_grad():
        _, logits, _, _ = TRMActor(model, "halting")(td["puzzle"], td["latent"], td["step"], td["answer"])
        assert torch.allclose(logits, runner.forward().logits)


def test_a_core_refuses_an_initial_latent_of_the_wrong_shape():
    from recursion_env.core import build_core

    with pytest.raises(ValueError, match="initial_latent: expected shape"):
        build_core("sudoku", 2, size=4, latent_dim=8, initial_latent=torch.ones(2, 16, 4))
    core = build_core("sudoku", 2, size=4, latent_dim=8, initial_latent=torch.ones(2, 16, 8))
    core.reset()
    assert bool((core.latent == 1).all())


def test_the_default_cost_prices_the_whole_schedule_at_0_9_and_the_run_saves_it(tmp_path):
    """nfe_cost None: 0.9 / (N_sup * NFE per step), here 4 steps of T (n + 1) = 2 NFE: 0.9 / 8."""
    result = train_ppo(tiny(mode="halting", iterations=1, out=str(tmp_path)))
    assert result["nfe_cost"] == pytest.approx(0.9 / 8)
    assert PPOConfig(nfe_cost=0.02).nfe_cost == 0.02


def test_halting_values_the_schedules_end_as_an_end(tmp_path, monkeypatch):
    """The last step of the schedule is terminal for the halting critic (no bootstrap past N_sup), so its value
    target is the reward alone; truncated episodes show as terminated in the batch GAE reads."""
    from torchrl.objectives.value import GAE

    seen = []
    real = GAE.forward

    def spy(self, tensordict, *args, **kwargs):
        seen.append((tensordict["next", "done"].clone(), tensordict["next", "terminated"].clone(),
                     tensordict["next", "truncated"].clone()))
        return real(self, tensordict, *args, **kwargs)

    monkeypatch.setattr(GAE, "forward", spy)
    train_ppo(tiny(mode="halting", iterations=2, halt_bias=-20.0, out=str(tmp_path)))  # never halts: N_sup ends
    done, terminated, truncated = (torch.cat(x) for x in zip(*seen))
    assert truncated.any() and torch.equal(done, terminated)
