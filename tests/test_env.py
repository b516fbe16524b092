"""The recursion MDP: core rules (property tests), Gymnasium / vector / TorchRL adapters, halting env."""

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recursion_env  # noqa: F401  (registers the env ids)
from recursion_env import RecursionCore, RecursionGymEnv, make_task
from recursion_env.torchrl_env import RecursionTorchRLEnv

SUDOKU4 = make_task("sudoku", size=4)
D = 8


def random_action(core: RecursionCore, rng: np.random.Generator, halt_p: float = 0.1, label_p: float = 0.2):
    B, V = core.batch_size, core.task.vocab_size
    answer = rng.integers(0, V, size=(B, core.seq_len))
    use_label = rng.random(B) < label_p  # sometimes solve, sometimes break it again
    answer[use_label] = core.label.numpy()[use_label]
    return {
        "latent": torch.tensor(rng.normal(size=(B, *core.latent_shape)), dtype=torch.float32),
        "answer": torch.tensor(answer),
        "halt": torch.tensor(rng.random(B) < halt_p, dtype=torch.int64),
    }


def snapshot(core: RecursionCore):
    return {k: getattr(core, k).clone() for k in
            ("puzzle", "answer", "latent", "step_count", "nfe", "score", "solved", "done", "potential")}


# -- property tests of the core ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["label", "verifier"]),
       nfe_cost=st.floats(0, 0.1), bonus=st.floats(0, 2), nfe_per_step=st.integers(1, 21),
       task=st.sampled_from([("sudoku", {"size": 4}), ("maze", {"size": 5}), ("nqueens", {"board": 5})]))
def test_return_telescopes(seed, mode, nfe_cost, bonus, nfe_per_step, task):
    """1: sum r = S(final) - S(initial) + bonus * ([solved final] - [solved initial]) - nfe_cost * NFE."""
    core = RecursionCore(make_task(task[0], **task[1]), batch_size=4, latent_dim=D, reward_mode=mode, nfe_cost=nfe_cost,
                         solve_bonus=bonus, nfe_per_step=nfe_per_step, max_steps=12, seed=seed)
    rng = np.random.default_rng(seed)
    core.reset()
    s0, solved0 = core.score.clone(), core.solved.clone().float()
    total = torch.zeros(4, dtype=torch.float64)
    alive = torch.ones(4, dtype=torch.bool)
    while alive.any():
        res = core.step(random_action(core, rng), mask=alive)
        total += res.reward.double()
        alive &= ~(res.terminated | res.truncated)
    expected = ((core.score - s0).double() + bonus * (core.solved.float() - solved0).double()
                - nfe_cost * core.nfe.double())
    assert torch.allclose(total, expected, atol=1e-4)
    assert (core.nfe == core.step_count * nfe_per_step).all()  # 4
    assert (core.step_count <= 12).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_steps=st.integers(1, 8), k=st.integers(1, 5))
def test_nfe_accounting_and_truncation_exactly_at_max_steps(seed, max_steps, k):
    """4: nfe == step * nfe_per_step; truncation exactly at max_steps, never beyond."""
    core = RecursionCore(SUDOKU4, batch_size=3, latent_dim=D, max_steps=max_steps, nfe_per_step=k, seed=seed)
    core.reset()
    rng = np.random.default_rng(seed)
    for t in range(1, max_steps + 1):
        res = core.step(random_action(core, rng, halt_p=0.0, label_p=0.0))
        assert (res.obs["step"] == t).all() and (res.obs["nfe"] == t * k).all()
        assert res.truncated.tolist() == [t == max_steps] * 3
        assert not res.terminated.any()
    with pytest.raises(RuntimeError, match="finished episode"):
        core.step(random_action(core, rng))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["label", "verifier"]), nfe_cost=st.floats(0, 1),
       bonus=st.floats(0, 5), k=st.integers(1, 10))
def test_reward_within_analytic_bounds(seed, mode, nfe_cost, bonus, k):
    """5."""
    core = RecursionCore(SUDOKU4, batch_size=8, latent_dim=D, reward_mode=mode, nfe_cost=nfe_cost, solve_bonus=bonus,
                         nfe_per_step=k, seed=seed)
    core.reset()
    low, high = core.reward_bounds()
    rng = np.random.default_rng(seed)
    for _ in range(6):
        res = core.step(random_action(core, rng, halt_p=0.0, label_p=0.5))
        assert (res.reward >= low - 1e-5).all() and (res.reward <= high + 1e-5).all()


@pytest.mark.parametrize("mode", ["label", "verifier"])
@pytest.mark.parametrize("task", [("sudoku", {"size": 6}), ("maze", {"size": 7}), ("nqueens", {"board": 6})])
def test_label_answer_is_solved(mode, task):
    """6: submitting the label gives solved, verify true, score 1."""
    t = make_task(task[0], **task[1])
    core = RecursionCore(t, batch_size=5, latent_dim=D, reward_mode=mode, seed=1)
    core.reset()
    res = core.step({"latent": core.latent, "answer": core.label, "halt": torch.ones(5, dtype=torch.int64)})
    assert res.info["solved"].all() and torch.allclose(res.info["score"], torch.ones(5))
    assert torch.allclose(res.info["cell_accuracy"], torch.ones(5))
    assert t.verify(core.puzzle.numpy(), res.obs["answer"].numpy()).all()
    assert res.terminated.all()


def test_batched_core_equals_single_envs():
    """7: B puzzles in one core == B cores of one, stepped with the same actions."""
    B = 6
    batch = SUDOKU4.generate(B, 3)
    big = RecursionCore(SUDOKU4, batch_size=B, latent_dim=D, nfe_cost=0.01, max_steps=5)
    big.reset(puzzles=batch.inputs, labels=batch.labels)
    singles = [RecursionCore(SUDOKU4, batch_size=1, latent_dim=D, nfe_cost=0.01, max_steps=5) for _ in range(B)]
    for i, c in enumerate(singles):
        c.reset(puzzles=batch.inputs[i:i + 1], labels=batch.labels[i:i + 1])
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = random_action(big, rng, halt_p=0.0)
        res = big.step(action)
        for i, c in enumerate(singles):
            r1 = c.step({k: v[i:i + 1] for k, v in action.items()})
            for key in res.obs:
                assert torch.equal(r1.obs[key][0], res.obs[key][i]), key
            assert torch.allclose(r1.reward[0], res.reward[i])
            assert r1.truncated[0] == res.truncated[i] and r1.terminated[0] == res.terminated[i]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_givens_never_change_and_actions_are_not_mutated(seed):
    """8."""
    core = RecursionCore(SUDOKU4, batch_size=4, latent_dim=D, seed=seed)
    obs = core.reset()
    puzzle = obs["puzzle"].clone()
    givens = puzzle != 0
    rng = np.random.default_rng(seed)
    for _ in range(5):
        action = random_action(core, rng, halt_p=0.0)
        before = {k: v.clone() for k, v in action.items()}
        res = core.step(action)
        for k in action:
            assert torch.equal(action[k], before[k])
        assert torch.equal(res.obs["answer"][givens], puzzle[givens])
        assert torch.equal(res.obs["puzzle"], puzzle)


def test_core_keeps_copies_of_numpy_actions_and_puzzles():
    """The core never aliases a caller's NumPy array: writing into it after the call leaves the state unchanged."""
    core = RecursionCore(SUDOKU4, batch_size=2, latent_dim=D, seed=0)
    batch = SUDOKU4.generate(2, seed=1)
    puzzles = batch.inputs.copy()
    core.reset(puzzles=puzzles, labels=batch.labels)
    puzzles[:] = 0
    assert np.array_equal(core.puzzle.numpy(), batch.inputs)
    latent = np.ones((2, *core.latent_shape), np.float32)
    answer = batch.labels.copy()
    core.step({"latent": latent, "answer": answer, "halt": np.zeros(2, np.int64)})
    latent[:] = 7.0
    answer[:] = 1
    assert (core.latent == 1.0).all() and np.array_equal(core.answer.numpy(), batch.labels)


def test_reset_with_given_latent_and_stop():
    core = RecursionCore(SUDOKU4, batch_size=2, latent_dim=D, seed=0, nfe_cost=0.5)
    init = torch.randn(2, *core.latent_shape)
    obs = core.reset(latent=init)
    assert torch.equal(obs["latent"], init)
    res = core.stop(mask=torch.tensor([True, False]))
    assert res.terminated.tolist() == [True, False] and (res.reward == 0).all() and (core.nfe == 0).all()
    with pytest.raises(RuntimeError, match=r"finished episode \(env \[0\]\)"):
        core.step({"latent": init, "answer": core.answer, "halt": torch.zeros(2, dtype=torch.int64)})
    core.reset(mask=torch.tensor([True, False]))
    assert not core.done.any()


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("latent", torch.zeros(2, 2, 16, D + 1), "action 'latent': expected shape"),
    ("latent", torch.zeros(2, 2, 16, D, dtype=torch.int64), "action 'latent': expected a floating-point"),
    ("latent", torch.full((2, 2, 16, D), float("nan")), "action 'latent': contains NaN or inf"),
    ("latent", torch.full((2, 2, 16, D), float("inf")), "action 'latent': contains NaN or inf"),
    ("answer", torch.zeros(2, 15, dtype=torch.int64), "action 'answer': expected shape"),
    ("answer", torch.zeros(2, 16), "action 'answer': expected integer tokens"),
    ("answer", torch.full((2, 16), 5), "action 'answer': token out of the vocabulary"),
    ("answer", torch.full((2, 16), -1), "action 'answer': token out of the vocabulary"),
    ("halt", torch.tensor([0, 2]), "action 'halt': values must be 0 or 1"),
    ("halt", torch.tensor([0.0, 1.0]), "action 'halt': expected 0/1 integers"),
    ("halt", torch.tensor([0, 1, 0]), "action 'halt': expected shape"),
])
def test_bad_actions_raise_and_leave_state_unchanged(field, value, message):
    core = RecursionCore(SUDOKU4, batch_size=2, latent_dim=D, seed=0)
    core.reset()
    action = {"latent": torch.zeros(2, *core.latent_shape), "answer": core.answer.clone(),
              "halt": torch.zeros(2, dtype=torch.int64)}
    action[field] = value
    state = snapshot(core)
    with pytest.raises(ValueError, match=message):
        core.step(action)
    for k, v in state.items():
        assert torch.equal(getattr(core, k), v), k


def test_missing_action_field_and_bad_reset_input():
    core = RecursionCore(SUDOKU4, batch_size=1, latent_dim=D, seed=0)
    core.reset()
    with pytest.raises(ValueError, match=r"missing field\(s\) \['halt'\]"):
        core.step({"latent": core.latent, "answer": core.answer})
    with pytest.raises(ValueError, match="reset latent: contains NaN"):
        core.reset(latent=torch.full((1, *core.latent_shape), float("nan")))
    with pytest.raises(ValueError, match="reset puzzles: token out of the vocabulary"):
        core.reset(puzzles=np.full((1, 16), 9))
    with pytest.raises(ValueError, match="reward_mode must be one of"):
        RecursionCore(SUDOKU4, reward_mode="magic")
    with pytest.raises(dataclasses.FrozenInstanceError):  # the core's cached constants rely on it
        core.config.nfe_cost = 1.0


def test_one_env_takes_unbatched_actions_as_arrays_lists_and_tensors():
    core = RecursionCore(SUDOKU4, batch_size=1, latent_dim=D, seed=0)
    core.reset()
    label = core.label[0].numpy()
    res = core.step({"latent": np.ones(core.latent_shape, dtype=np.float32), "answer": label, "halt": 0})
    assert res.info["solved"].tolist() == [True] and (core.latent == 1).all()
    res = core.step({"latent": np.full(core.latent_shape, 2.0).tolist(), "answer": label.tolist(), "halt": 1})
    assert res.terminated.tolist() == [True] and core.latent.dtype == torch.float32 and (core.latent == 2).all()
    assert core.nfe.tolist() == [2]
    core.reset()
    res = core.step({"latent": torch.full(core.latent_shape, 3.0), "answer": core.label[0], "halt": 0})  # tensors
    assert res.info["solved"].tolist() == [True] and core.latent.shape == (1, *core.latent_shape)


# -- Gymnasium ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id, kw", [("TRMRecursion-Sudoku-v0", {"size": 4}), ("TRMRecursion-Maze-v0", {"size": 5}),
                                        ("TRMRecursion-NQueens-v0", {"board": 5})])
@pytest.mark.parametrize("render_mode", ["ansi", "rgb_array"])
def test_gymnasium_env_checker_and_render(env_id, kw, render_mode):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, latent_dim=D, render_mode=render_mode, **kw)
    check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    frame = env.render()
    if render_mode == "ansi":
        assert "[" in frame and "nfe 0" in frame
    else:
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_gym_observations_lie_in_space_and_seeding_is_deterministic(seed):
    """2 and 3."""
    env = gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=D, max_steps=4)
    obs, info = env.reset(seed=seed)
    obs2, _ = env.reset(seed=seed)
    assert all(np.array_equal(obs[k], obs2[k]) for k in obs)
    other, _ = env.reset(seed=seed + 1)
    env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    assert set(info) == {"nfe", "cell_accuracy", "solved", "score"}
    env.action_space.seed(seed)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        done = terminated or truncated
    assert obs["step"] <= 4


def test_different_seeds_give_different_puzzles():
    env = gym.make("TRMRecursion-Sudoku-v0", size=6, latent_dim=D)
    puzzles = {env.reset(seed=s)[0]["puzzle"].tobytes() for s in range(20)}
    assert len(puzzles) == 20


def test_gym_env_refuses_bad_actions_and_stepping_finished_episode():
    env = gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=D)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="action 'answer': expected shape"):
        env.step({"latent": obs["latent"], "answer": obs["answer"][:5], "halt": 0})
    with pytest.raises(ValueError, match="action 'halt': values must be 0 or 1"):
        env.step({"latent": obs["latent"], "answer": obs["answer"], "halt": 3})
    action = {"latent": obs["latent"], "answer": obs["answer"], "halt": 1}
    before = {k: np.copy(v) for k, v in action.items()}
    _, _, terminated, _, _ = env.step(action)
    assert terminated and all(np.array_equal(action[k], before[k]) for k in action)
    with pytest.raises(RuntimeError, match="finished episode"):
        env.unwrapped.step(action)


def test_gym_reset_with_text_puzzle_and_dataset_file(tmp_path):
    env = RecursionGymEnv("sudoku", size=4, latent_dim=D)
    obs, info = env.reset(options={"puzzle": "1...." "..3" ".4...." "2."})
    assert obs["puzzle"][0] == 1 and not info["solved"]
    from recursion_env.tasks import save_dataset

    batch = SUDOKU4.generate(3, 0)
    path = save_dataset(tmp_path / "d.npz", SUDOKU4, batch)
    env = gym.make("TRMRecursion-Sudoku-v0", dataset=str(path), latent_dim=D)
    obs, _ = env.reset(seed=0)
    assert any(np.array_equal(obs["puzzle"], x) for x in batch.inputs)
    with pytest.raises(ValueError, match="holds sudoku puzzles, not maze"):
        gym.make("TRMRecursion-Maze-v0", dataset=str(path))


def test_gym_make_in_fresh_interpreter():
    code = ("import gymnasium as gym; env = gym.make('recursion_env:TRMRecursion-Sudoku-v0', size=4); "
            "obs, _ = env.reset(seed=0); print(obs['puzzle'].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(16,)" in out.stdout


def test_make_vec_is_batched_and_autoresets_next_step():
    env = gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=4, size=4, latent_dim=D, max_steps=2)
    assert isinstance(env, recursion_env.RecursionVectorEnv)
    obs, info = env.reset(seed=0)
    assert obs["latent"].shape == (4, 2, 16, D) and info["nfe"].tolist() == [0] * 4
    action = {"latent": obs["latent"], "answer": obs["answer"], "halt": np.array([1, 0, 0, 0])}
    obs, reward, terminated, truncated, info = env.step(action)
    assert terminated.tolist() == [True, False, False, False] and obs["step"].tolist() == [[1]] * 4
    obs, reward, terminated, truncated, info = env.step({**action, "halt": np.zeros(4, dtype=np.int64)})
    assert obs["step"].tolist() == [[0], [2], [2], [2]]  # env 0 was reset, its action ignored
    assert reward[0] == 0 and truncated.tolist() == [False, True, True, True]
    assert env.observation_space.contains(obs)


# -- TorchRL ---------------------------------------------------------------------------------------------------


def test_torchrl_specs_rollout_and_collector():
    from torchrl.envs.utils import RandomPolicy, check_env_specs

    try:
        from torchrl.collectors import SyncDataCollector as Collector
    except ImportError:  # torchrl >= 0.14 names it Collector
        from torchrl.collectors import Collector

    torch.manual_seed(0)  # RandomPolicy samples from torch's generator: halts must not make this test flaky
    env = RecursionTorchRLEnv(task="sudoku", size=4, num_envs=6, latent_dim=D, seed=0, max_steps=3)
    check_env_specs(env)
    td = env.rollout(3, break_when_any_done=False)
    assert env.observation_spec.is_in(td[:, -1]["next"].select(*env.observation_spec.keys()))
    collector = Collector(env, RandomPolicy(env.full_action_spec), frames_per_batch=6 * 30, total_frames=6 * 60)
    batches = list(collector)
    assert len(batches) == 2
    for b in batches:
        assert b.batch_size == torch.Size([6, 30])
        assert (b["next", "nfe"] == b["next", "step"]).all() and b["next", "step"].max() <= 3
        nxt = b["next"]
        # truncated exactly when the budget is reached without a halt, on every frame
        assert torch.equal(nxt["truncated"].squeeze(-1), (nxt["step"] == 3) & ~nxt["terminated"].squeeze(-1))
        assert nxt["truncated"].any()
    collector.shutdown()


def test_torchrl_step_equals_envbase_step_and_falls_back_to_it():
    """The env's lean ``step`` gives what ``EnvBase.step`` gives, frame by frame (halts and resets included); a
    tensordict carrying preset "next" entries takes EnvBase's path, which keeps those the env does not compute."""
    from tensordict import TensorDict
    from torchrl.envs import EnvBase

    lean, general = (RecursionTorchRLEnv(task="sudoku", size=4, num_envs=4, latent_dim=D, seed=3, max_steps=4)
                     for _ in range(2))
    td_lean, td_general = lean.reset(), general.reset()
    torch.manual_seed(0)
    for _ in range(12):
        action = lean.full_action_spec.rand()
        td_lean.update(action)
        td_general.update(action)
        out_lean, out_general = lean.step(td_lean), EnvBase.step(general, td_general)
        assert set(out_lean.keys(True, True)) == set(out_general.keys(True, True))
        assert (out_lean == out_general).all()
        td_lean, td_general = lean.step_mdp(out_lean), general.step_mdp(out_general)
        if td_lean["done"].any():
            td_lean, td_general = lean.reset(td_lean), general.reset(td_general)
    td = lean.reset()
    td.update(lean.full_action_spec.rand())
    td["next"] = TensorDict({"note": torch.full((4, 1), 7.0)}, batch_size=[4])
    out = lean.step(td)
    assert (out["next", "note"] == 7.0).all() and (out["next", "step"] == 1).all()


def test_torchrl_partial_reset_and_seed():
    from tensordict import TensorDict

    env = RecursionTorchRLEnv(task="sudoku", size=4, num_envs=3, latent_dim=D)
    env.set_seed(5)
    first = env.reset()["puzzle"].clone()
    env.set_seed(5)
    assert torch.equal(env.reset()["puzzle"], first)
    td = env.reset()
    td.update(env.full_action_spec.rand())
    td = env.step(td)
    assert (td["next", "step"] == 1).all()
    assert not torch.equal(td["latent"], td["action", "latent"])  # the observation survives the action
    assert torch.equal(td["next", "latent"], td["action", "latent"])
    current = td["next"].exclude("reward", "done", "terminated", "truncated")
    current.set("_reset", torch.tensor([[True], [False], [False]]))
    out = env.reset(current)  # as collectors do: the current observation with the envs to restart
    assert out["step"].tolist() == [0, 1, 1] and env.core.step_count.tolist() == [0, 1, 1]
    assert isinstance(out, TensorDict)


# -- halting env ------------------------------------------------------------------------------------------------


def test_halting_env_checkers_and_accounting():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TRMHalting-Sudoku-v0", size=4, nfe_cost=0.01)
    check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["nfe"] == 0
    k = env.unwrapped.policy.nfe_per_step
    obs, reward, terminated, truncated, info = env.step(0)
    assert info["nfe"] == k and not terminated
    obs, reward, terminated, truncated, info = env.step(1)
    assert terminated and reward == 0.0 and info["nfe"] == k  # halting costs no compute
    with pytest.raises(ValueError, match="action must be 0"):
        env.reset(seed=0)
        env.step(2)


def test_halting_env_observes_whether_the_answer_obeys_the_rules():
    """The last feature is the task's label-free verdict on the current answer: 1 on a grid given in full (the
    answer keeps every given), and equal to ``info["solved"]`` along an episode."""
    from recursion_env.halting_env import FEATURES

    env = gym.make("TRMHalting-Sudoku-v0", size=4)
    assert FEATURES[-1] == "rules_held" and env.observation_space.shape == (len(FEATURES),)
    solution = env.unwrapped.task.generate(1, seed=0).labels[0]
    obs, _ = env.reset(seed=0, options={"puzzle": solution})
    assert obs[-1] == 0.0  # nothing answered yet
    obs, *_, info = env.step(0)
    assert obs[-1] == 1.0 and info["solved"]
    obs, _ = env.reset(seed=1)
    for _ in range(4):
        obs, _, terminated, truncated, info = env.step(0)
        assert obs[-1] == float(info["solved"])


def test_halting_env_truncates_and_rewards_telescope():
    env = gym.make("TRMHalting-Sudoku-v0", size=4, nfe_cost=0.05, max_steps=5)
    obs, info = env.reset(seed=3)
    total, s0 = 0.0, info["score"]
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(0)
        total += reward
    assert truncated and obs[0] == pytest.approx(1.0)
    expected = info["score"] - s0 + float(info["solved"]) - 0.05 * info["nfe"]
    assert total == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("module", ["recursion_env.gym_env", "recursion_env.torchrl_env",
                                    "recursion_env.halting_env"])
def test_docstring_rollouts_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_make_vec_without_copies_returns_read_only_views_that_never_change():
    vec = gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=2, size=4, latent_dim=D, max_steps=5, copy=False)
    obs, _ = vec.reset(seed=0)
    kept = {k: np.array(v) for k, v in obs.items()}
    with pytest.raises(ValueError, match="read-only"):
        obs["latent"][...] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(3):  # later steps make new state; what was returned stays as it was
        vec.step({"latent": rng.normal(size=(2, 2, 16, D)).astype(np.float32), "answer": rng.integers(0, 5, (2, 16)),
                  "halt": np.zeros(2, int)})
    assert all(np.array_equal(obs[k], kept[k]) for k in obs)


def test_make_vec_without_copies_matches_with_copies():
    kw = dict(num_envs=3, size=4, latent_dim=D, max_steps=3)
    a = gym.make_vec("TRMRecursion-Sudoku-v0", **kw)
    b = gym.make_vec("TRMRecursion-Sudoku-v0", copy=False, **kw)
    oa, _ = a.reset(seed=2)
    ob, _ = b.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = {"latent": rng.normal(size=(3, 2, 16, D)).astype(np.float32),
                  "answer": rng.integers(0, 5, size=(3, 16)), "halt": rng.integers(0, 2, size=3)}
        ra, rb = a.step({k: v.copy() for k, v in action.items()}), b.step(action)
        for k in ra[0]:
            assert np.array_equal(ra[0][k], rb[0][k])
        assert np.array_equal(ra[1], rb[1]) and np.array_equal(ra[2], rb[2]) and np.array_equal(ra[3], rb[3])


def test_torchrl_partial_steps_leave_unselected_envs_untouched():
    import torch as th

    env = RecursionTorchRLEnv(task="sudoku", size=4, batch_size=[3], latent_dim=8, seed=0)
    assert env.batch_size == th.Size([3])
    td = env.reset()
    latent, answer = env.core.latent.clone(), env.core.answer.clone()
    td = env.rand_step(td.set("_step", th.tensor([False, True, True])))
    assert env.core.step_count.tolist() == [0, 1, 1]
    assert th.equal(env.core.latent[0], latent[0]) and th.equal(env.core.answer[0], answer[0])
    assert td["next", "reward"][0].item() == 0.0 and not td["next", "done"][0].item()
    # a rollout that stops when all are done steps only the envs still running, on every seed
    for seed in range(6):
        env = RecursionTorchRLEnv(task="sudoku", size=4, num_envs=4, latent_dim=8, seed=seed)
        env.set_seed(seed)
        th.manual_seed(seed)
        rollout = env.rollout(6, break_when_any_done=False, break_when_all_done=True)
        done = rollout["next", "done"].squeeze(-1)
        steps = rollout["next", "step"]
        for t in range(1, done.shape[1]):  # a finished env's counters stay where they were
            finished = done[:, t - 1]
            assert th.equal(steps[finished, t], steps[finished, t - 1]), seed
    with pytest.raises(ValueError, match="batch_size"):
        RecursionTorchRLEnv(task="sudoku", size=4, batch_size=[2, 2])


@pytest.mark.parametrize("env_id,kw", [("TRMRecursion-Sudoku-v0", {"size": 4}), ("TRMRecursion-Maze-v0", {"size": 5}),
                                       ("TRMRecursion-NQueens-v0", {"board": 4})])
def test_stable_baselines3_and_torchrl_gym_wrapper_checkers_pass(env_id, kw):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    env = gym.make(env_id, latent_dim=8, **kw)
    sb3_check_env(env.unwrapped, warn=False)
    obs, _ = env.reset(seed=0)
    assert obs["step"].shape == obs["nfe"].shape == (1,)
    check_env_specs(GymEnv(env_id, latent_dim=8, **kw))


def test_torchrl_gym_env_batches_every_id_with_num_envs():
    """TorchRL's ``GymEnv(id, num_envs=N)`` (gymnasium's AsyncVectorEnv in worker processes, by the
    module-qualified id): its checker passes and a rollout steps every env, the Dict actions included."""
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    for env_id, kw in (("TRMRecursion-Sudoku-v0", {"size": 4}), ("TRMHalting-Sudoku-v0", {"size": 4})):
        env = GymEnv(f"recursion_env:{env_id}", num_envs=2, **kw)
        try:
            check_env_specs(env)
            assert env.batch_size == torch.Size([2])
            td = env.rollout(6, break_when_any_done=False)
            assert td.shape == (2, 6) and bool(td["next", "done"].any()), env_id  # episodes ended and restarted
            if env_id.startswith("TRMRecursion"):  # the Dict action: one spec per key, of the batch's size
                assert env.action_spec["answer"].shape == (2, 16) and env.action_spec["halt"].shape == (2,)
        finally:
            env.close()


def assert_child_prints_ok(script: str, timeout: float) -> None:
    """Run ``script`` in a fresh interpreter (its own imports, its own start method) that must print ``ok``."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("render_mode", ["ansi", "rgb_array"])
def test_the_native_vector_env_renders_every_env_as_sync_vector_env_does(render_mode):
    vec = gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=3, size=4, latent_dim=D, render_mode=render_mode)
    vec.reset(seed=0)
    frames = vec.render()
    assert isinstance(frames, tuple) and len(frames) == 3
    boards = [vec.unwrapped.core.puzzle[i] for i in range(3)]
    assert not torch.equal(boards[0], boards[1])  # so that the frames must differ too
    if render_mode == "ansi":
        assert all("nfe 0" in f for f in frames) and frames[0] != frames[1]
    else:
        assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames) and not np.array_equal(frames[0], frames[1])
    with pytest.raises(ValueError, match="render_mode must be one of"):
        gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=2, size=4, render_mode="human")


def test_module_qualified_ids_work_in_spawned_workers_without_a_prior_import():
    """``recursion_env:ID`` makes Gymnasium import the package first, so a spawned worker (a fresh interpreter) that
    unpickles ``partial(gym.make, ID)`` finds the id; the script itself never imports recursion_env."""
    script = (
        "import functools, gymnasium as gym\n"
        "if __name__ == '__main__':\n"
        "    make = functools.partial(gym.make, 'recursion_env:TRMRecursion-Sudoku-v0', size=4)\n"
        "    env = gym.vector.AsyncVectorEnv([make, make], context='spawn')\n"
        "    env.reset(seed=0)\n"
        "    env.step(env.action_space.sample())\n"
        "    env.close()\n"
        "    print('ok')\n")
    assert_child_prints_ok(script, timeout=180)


def test_async_vector_envs_work_after_torch_ran_in_the_parent():
    """A forked worker whose parent used torch's thread pool used to deadlock at its first step; run in a child
    process with a timeout so a deadlock fails the test instead of hanging it."""
    script = (
        "import torch, gymnasium as gym, recursion_env\n"
        "torch.randn(256, 256) @ torch.randn(256, 256)\n"
        "for env_id, action in (('TRMHalting-Sudoku-v0', [0, 1]), ('TRMRecursion-Sudoku-v0', None)):\n"
        "    env = gym.make_vec(env_id, num_envs=2, vectorization_mode='async', size=4)\n"
        "    env.reset(seed=0)\n"
        "    env.step(action if action is not None else env.action_space.sample())\n"
        "    env.close()\n"
        "print('ok')\n")
    assert_child_prints_ok(script, timeout=120)


def test_a_puzzle_without_a_label_gets_its_derived_label_or_a_clear_refusal():
    maze = make_task("maze", size=5)
    batch = maze.generate(1, seed=3)
    env = gym.make("TRMRecursion-Maze-v0", size=5, latent_dim=8)
    obs, _ = env.reset(seed=0, options={"puzzle": batch.inputs[0]})  # no label: the canonical path is derived
    assert np.array_equal(env.unwrapped.core.label[0].numpy(), batch.labels[0])
    obs, reward, terminated, _, info = env.step({"latent": obs["latent"], "answer": batch.labels[0], "halt": 1})
    assert info["solved"] and info["cell_accuracy"] == 1.0 and reward > 0

    sudoku = make_task("sudoku", size=4)
    puzzle = sudoku.generate(1, seed=5)
    halting = gym.make("TRMHalting-Sudoku-v0", size=4)
    halting.reset(seed=0, options={"puzzle": sudoku.to_line(puzzle.inputs[0])})  # a text line, no label
    assert np.array_equal(halting.unwrapped.core.label[0].numpy(), puzzle.labels[0])

    queens = make_task("nqueens", board=5)
    q = queens.generate(1, seed=0).inputs
    with pytest.raises(ValueError, match="cannot derive one.*reward_mode='verifier'"):
        RecursionCore(queens, 1, latent_dim=4).reset(puzzles=q)
    core = RecursionCore(queens, 1, latent_dim=4, reward_mode="verifier")
    core.reset(puzzles=q)  # the verifier needs no label
    assert core.score.shape == (1,)


def test_rendering_text_and_image_agree_and_sudoku_boxes_are_drawn():
    from recursion_env.render import board_image, board_text, cell_states

    maze = make_task("maze", size=5)
    b = maze.generate(1, seed=2)
    x, y = b.inputs[0], b.labels[0]
    off_path = np.flatnonzero((x == 0) & (y == 0))[0]  # an open cell the path does not take
    answer = y.copy()
    answer[off_path] = 4  # marked as path: wrong
    states = cell_states(x, answer, y)
    assert states[off_path] == "wrong" and "!" in board_text(maze, x, answer, y)
    sudoku = make_task("sudoku", size=4)
    s = sudoku.generate(1, seed=0)
    px, py = s.inputs[0], s.labels[0]
    blank = np.flatnonzero(px == 0)[0]
    answer = py.copy()
    answer[blank] = 0  # undecided: neither right nor wrong, in text and image alike
    assert cell_states(px, answer, py)[blank] == "blank"
    image = board_image(sudoku, px, answer, py, cell=20)
    r, c = divmod(int(blank), 4)
    assert tuple(image[r * 20 + 10, c * 20 + 3]) == (255, 255, 255)  # white, not the red of a wrong cell
    assert "!" not in board_text(sudoku, px, answer, py)
    # box borders (between columns 1 and 2) are thicker than cell borders (between columns 0 and 1)
    dark = (image.sum(-1) < 60)
    assert dark[:, 39:42].all(0).sum() > dark[:, 19:22].all(0).sum()


def test_make_vec_without_copies_never_aliases_the_callers_arrays():
    env = gym.make_vec("TRMRecursion-Sudoku-v0", num_envs=3, size=4, latent_dim=4, copy=False,
                       terminate_on_solve=False)
    obs, _ = env.reset(seed=0)
    latent = np.array(obs["latent"])
    halt = np.array([True, False, False])
    obs, _, terminated, _, _ = env.step({"latent": latent, "answer": np.array(obs["answer"]), "halt": halt})
    assert not np.shares_memory(terminated, halt)
    kept = env.unwrapped.core.latent.clone()
    latent += 100.0  # the caller reuses its buffer
    halt[:] = False
    assert torch.equal(env.unwrapped.core.latent, kept) and terminated.tolist() == [True, False, False]


@pytest.mark.parametrize("masked", [False, True])
def test_core_never_keeps_a_callers_tensors(masked):
    """Torch tensors as well as NumPy arrays: a caller writing into its buffers after reset/step (the TorchRL
    env hands over its tensordict's tensors) leaves the core's state unchanged."""
    core = RecursionCore(SUDOKU4, batch_size=2, latent_dim=D, seed=0)
    batch = SUDOKU4.generate(2, seed=1)
    puzzles, init = torch.from_numpy(batch.inputs.copy()), torch.randn(2, *core.latent_shape)
    core.reset(puzzles=puzzles, labels=batch.labels, latent=init)
    kept_puzzle, kept_latent = core.puzzle.clone(), core.latent.clone()
    puzzles.zero_()
    init.add_(5.0)
    assert torch.equal(core.puzzle, kept_puzzle) and torch.equal(core.latent, kept_latent)
    latent, halt = torch.ones(2, *core.latent_shape), torch.zeros(2, dtype=torch.bool)
    mask = torch.tensor([True, True]) if masked else None
    core.step({"latent": latent, "answer": core.answer.clone(), "halt": halt}, mask=mask)
    latent.fill_(7.0)
    assert (core.latent == 1.0).all()
    # the trusted path (the runner hands over a fresh network output) keeps it without a copy
    owned = torch.full((2, *core.latent_shape), 2.0)
    core.step({"latent": owned, "answer": core.answer.clone(), "halt": halt}, owned=True)
    assert core.latent.data_ptr() == owned.data_ptr()


def test_the_cost_per_forward_pass_is_nfe_cost_and_lam_is_refused():
    """``lam`` means GAE's lambda in most RL code; ours is the cost per forward pass, ``nfe_cost``. The name it had
    before it left this repository is refused with one line naming the right one."""
    from agents.cli import main as cli
    from agents.trainers.ppo import PPOConfig

    core = RecursionCore(SUDOKU4, batch_size=1, latent_dim=D, nfe_cost=0.25)
    assert core.config.nfe_cost == 0.25 and core.reward_bounds()[1] == pytest.approx(2.0 - 0.25)
    for make in (lambda: RecursionCore(SUDOKU4, batch_size=1, latent_dim=D, lam=0.25),
                 lambda: gym.make("TRMRecursion-Sudoku-v0", size=4, latent_dim=D, lam=0.5)):
        with pytest.raises(ValueError, match="called nfe_cost"):
            make()
    with pytest.raises(TypeError, match="lam"):
        PPOConfig(lam=0.2)
    with pytest.raises(SystemExit):
        cli(["train", "--method", "ppo", "--lam", "0.3", "--out", "x"])


@pytest.mark.parametrize("task_name", ["sudoku", "nqueens", "maze"])
def test_the_trusted_transition_is_steps_rules_without_reading_back(monkeypatch, task_name):
    """``core.transition`` (the runner's path) gives exactly what ``core.step`` gives for valid actions, masked or
    not, and never reads a value back to the host (on a GPU, each read is a synchronisation)."""
    kw = dict(nfe_cost=0.01, solve_bonus=1.0, max_steps=3, nfe_per_step=2, seed=0)
    checked, trusted = RecursionCore(task_name, 6, **kw), RecursionCore(task_name, 6, **kw)
    checked.reset(), trusted.reset()
    rng = np.random.default_rng(0)
    for t in range(3):
        latent = torch.from_numpy(rng.normal(size=(6, *checked.latent_shape)).astype(np.float32))
        answer = torch.from_numpy(np.where(rng.random((6, checked.seq_len)) < 0.5, checked.label.numpy(),
                                           rng.integers(0, checked.task.vocab_size, (6, checked.seq_len))))
        halt = torch.from_numpy(rng.random(6) < 0.2)
        mask = None if t == 0 else ~checked.done
        a = checked.step({"latent": latent, "answer": answer, "halt": halt}, mask=mask)
        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu"):
                m.setattr(torch.Tensor, name, lambda *_, name=name: pytest.fail(f"transition read back ({name})"))
            b = trusted.transition(latent.clone(), answer, halt, mask)
        for x, y in zip(a[1:4], b[1:4]):
            assert torch.equal(x, y)
        for k in checked.state.saved():
            assert torch.equal(getattr(checked, k), getattr(trusted, k)), k
