"""The network is the official TRM, weight for weight: parameter counts, the mlp_t norm axis, SwiGLU widths, and
official checkpoints imported and checked against a forward pass written here from the official code's text
(models/recursive_reasoning/trm.py, models/layers.py), independently of agents/model/trm.py."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from agents.cli import main as cli
from agents.eval.evaluation import load_trained
from agents.model.official import TOKEN_MAPS, CheckpointMismatch, import_official
from agents.model.optim import AdamATan2, SignSGD
from agents.model.trm import TRM, Block, TRMConfig, swiglu_width
from agents.trainers import PAPER_PRESET, DeepSupervisionConfig, config_from_dict
from recursion_env import make_task

# -- the official network, written out --------------------------------------------------------------------------


def width(dim, expansion):
    inner = round(expansion * dim * 2 / 3)
    return ((inner + 255) // 256) * 256


def official_arch(**kw):
    arch = {"name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            "halt_exploration_prob": 0.1, "halt_max_steps": 4, "H_cycles": 2, "L_cycles": 2, "H_layers": 0,
            "L_layers": 2, "hidden_size": 64, "num_heads": 4, "expansion": 4, "puzzle_emb_ndim": 64,
            "pos_encodings": "none", "forward_dtype": "bfloat16", "mlp_t": True, "puzzle_emb_len": 16,
            "no_ACT_continue": True}
    return {**arch, **kw}


def official_state(arch, seq_len, vocab, num_ids=1, seed=0):
    """A random state dict with the official names and shapes (``model.inner.`` keys)."""
    g = torch.Generator().manual_seed(seed)
    D = arch["hidden_size"]
    P = arch["puzzle_emb_len"] or -(arch["puzzle_emb_ndim"] // -D)
    L = seq_len + P

    def w(*shape, std=None):
        return torch.randn(*shape, generator=g) * (std if std is not None else 1 / math.sqrt(shape[-1]))

    sd = {"embed_tokens.embedding_weight": w(vocab, D, std=1 / math.sqrt(D)), "lm_head.weight": w(vocab, D),
          "q_head.weight": w(2, D), "q_head.bias": w(2, std=1.0), "H_init": w(D, std=1.0), "L_init": w(D, std=1.0)}
    if arch["puzzle_emb_ndim"]:
        sd["puzzle_emb.weights"] = w(num_ids, arch["puzzle_emb_ndim"], std=0.5)
    if arch["pos_encodings"] == "learned":
        sd["embed_pos.embedding_weight"] = w(L, D, std=1 / math.sqrt(D))
    for i in range(arch["L_layers"]):
        p = f"L_level.layers.{i}."
        if arch["mlp_t"]:
            sd[p + "mlp_t.gate_up_proj.weight"] = w(2 * width(L, arch["expansion"]), L)
            sd[p + "mlp_t.down_proj.weight"] = w(L, width(L, arch["expansion"]))
        else:
            sd[p + "self_attn.qkv_proj.weight"] = w(3 * D, D)
            sd[p + "self_attn.o_proj.weight"] = w(D, D)
        sd[p + "mlp.gate_up_proj.weight"] = w(2 * width(D, arch["expansion"]), D)
        sd[p + "mlp.down_proj.weight"] = w(D, width(D, arch["expansion"]))
    return {"model.inner." + k: v for k, v in sd.items()}


def ref_rms_norm(h, eps=1e-5):
    h = h.to(torch.float32)
    return h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)


def ref_swiglu(sd, prefix, h):
    gate, up = F.linear(h, sd[prefix + "gate_up_proj.weight"]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, sd[prefix + "down_proj.weight"])


def ref_attention(sd, prefix, h, heads, cos_sin):
    B, S, D = h.shape
    hd = D // heads
    qkv = F.linear(h, sd[prefix + "qkv_proj.weight"]).view(B, S, 3 * heads, hd)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    if cos_sin is not None:
        cos, sin = cos_sin

        def rotate_half(x):
            return torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), dim=-1)

        q = q * cos.unsqueeze(-2) + rotate_half(q) * sin.unsqueeze(-2)
        k = k * cos.unsqueeze(-2) + rotate_half(k) * sin.unsqueeze(-2)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(B, S, D)
    return F.linear(out, sd[prefix + "o_proj.weight"])


def ref_block(sd, i, h, arch, cos_sin):
    p = f"model.inner.L_level.layers.{i}."
    if arch["mlp_t"]:
        h = h.transpose(1, 2)
        h = ref_rms_norm(h + ref_swiglu(sd, p + "mlp_t.", h)).transpose(1, 2)
    else:
        h = ref_rms_norm(h + ref_attention(sd, p + "self_attn.", h, arch["num_heads"], cos_sin))
    return ref_rms_norm(h + ref_swiglu(sd, p + "mlp.", h))


def official_steps(sd, arch, inputs, puzzle_ids, steps):
    """The official inner forward from the reset carry, ``steps`` times: [(z_H, z_L, logits, q_halt)]."""
    sd = {k.removeprefix("_orig_mod."): v.float() for k, v in sd.items()}
    inner = "model.inner."
    D = arch["hidden_size"]
    P = arch["puzzle_emb_len"] or -(arch["puzzle_emb_ndim"] // -D)
    B, S = inputs.shape
    emb = F.embedding(inputs, sd[inner + "embed_tokens.embedding_weight"])
    if arch["puzzle_emb_ndim"]:
        pe = sd[inner + "puzzle_emb.weights"][puzzle_ids]
        pe = F.pad(pe, (0, P * D - pe.shape[-1]))
        emb = torch.cat((pe.view(-1, P, D), emb), dim=-2)
    if arch["pos_encodings"] == "learned":
        emb = 0.707106781 * (emb + sd[inner + "embed_pos.embedding_weight"])
    x = math.sqrt(D) * emb
    cos_sin = None
    if arch["pos_encodings"] == "rope":
        hd = D // arch["num_heads"]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        freqs = torch.outer(torch.arange(S + P, dtype=torch.float32), inv_freq)
        e = torch.cat((freqs, freqs), dim=-1)
        cos_sin = (e.cos(), e.sin())

    def L_level(h, injection):
        h = h + injection
        for i in range(arch["L_layers"]):
            h = ref_block(sd, i, h, arch, cos_sin)
        return h

    z_H = sd[inner + "H_init"].expand(B, S + P, D)
    z_L = sd[inner + "L_init"].expand(B, S + P, D)
    out = []
    for _ in range(steps):
        for _ in range(arch["H_cycles"]):
            for _ in range(arch["L_cycles"]):
                z_L = L_level(z_L, z_H + x)
            z_H = L_level(z_H, z_L)
        logits = F.linear(z_H, sd[inner + "lm_head.weight"])[:, P:]
        q = F.linear(z_H[:, 0], sd[inner + "q_head.weight"], sd[inner + "q_head.bias"])
        out.append((z_H, z_L, logits, q[..., 0]))
    return out


def write_official(tmp_path, arch, sd, name="step_100"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.save(sd, tmp_path / name)
    config = {"arch": arch, "data_paths": ["data/sudoku-extreme-1k-aug-1000"], "global_batch_size": 768, "lr": 1e-4}
    (tmp_path / "all_config.yaml").write_text(yaml.dump(config))
    return tmp_path / name


# -- counts and shapes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixer,expected", [("mlp", 5_027_840), ("attention", 6_827_008)])
def test_parameter_counts_of_the_official_sudoku_extreme_model(mixer, expected):
    """hidden 512, 2 layers, no positions (mlp_t) / RoPE with 8 heads, 16 slots, 81 cells, vocab 11."""
    model = TRM(TRMConfig(seq_len=81, vocab_size=11, hidden=512, L_layers=2, mixer=mixer, heads=8))
    assert model.cfg.pos == ("none" if mixer == "mlp" else "rope") and model.cfg.latent_len == 97
    counted = sum(p.numel() for name, p in model.named_parameters()
                  if not name.startswith(("halt_head.", "value_head.", "puzzle_embedding.")))
    assert counted == expected
    assert model.puzzle_embedding.weight.shape == (1, 512)


def test_swiglu_widths_round_up_to_multiples_of_256():
    assert swiglu_width(512, 4) == 1536  # round(1365.3) = 1365 -> 1536
    assert swiglu_width(97, 4) == 512  # 259 -> 512
    assert swiglu_width(64, 4) == 256  # 171 -> 256
    assert swiglu_width(32, 4) == 256  # 85 -> 256
    model = TRM(TRMConfig(seq_len=36, vocab_size=7, hidden=64))
    block = model.layers[0]
    assert block.ffn.gate_up.weight.shape == (512, 64) and block.ffn.down.weight.shape == (64, 256)
    assert block.mlp_t.gate_up.weight.shape == (512, 52) and block.mlp_t.down.weight.shape == (52, 256)


def test_mlp_t_block_normalises_over_the_sequence_axis():
    torch.manual_seed(0)
    cfg = TRMConfig(seq_len=12, vocab_size=5, hidden=16, puzzle_emb_len=0, puzzle_emb_ndim=0)
    block = Block(cfg)
    h = torch.randn(2, 12, 16)
    official_names = {"mlp_t.gate_up.weight": "mlp_t.gate_up_proj.weight",
                      "mlp_t.down.weight": "mlp_t.down_proj.weight", "ffn.gate_up.weight": "mlp.gate_up_proj.weight",
                      "ffn.down.weight": "mlp.down_proj.weight"}
    sd = {f"model.inner.L_level.layers.0.{official_names[k]}": v for k, v in block.state_dict().items()}
    expected = ref_block(sd, 0, h, {"mlp_t": True}, None)
    assert torch.allclose(block(h), expected, atol=1e-5)
    # after the mixer's norm every channel (a row of [B, D, L]) has unit RMS over the sequence
    mixed = h.transpose(1, 2)
    mixed = (mixed + block.mlp_t(mixed))
    normed = mixed * torch.rsqrt(mixed.square().mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(normed.square().mean(-1), torch.ones(2, 16), atol=1e-4)
    # a channel norm would give a different block
    channel = h + block.mlp_t(h.transpose(1, 2)).transpose(1, 2)
    channel = channel * torch.rsqrt(channel.square().mean(-1, keepdim=True) + 1e-5)
    assert not torch.allclose(block.ffn(channel) + channel, block(h), atol=1e-2)


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=81, vocab_size=11, hidden=256))
    w = model.layers[0].ffn.gate_up.weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.02)  # truncated LeCun normal, true std
    # truncated at two standard deviations of the normal that was scaled up to make up for the truncation
    assert w.abs().max().item() <= 2 * 1.1369 / math.sqrt(256)
    assert model.token_embedding.weight.std().item() == pytest.approx(1 / 16, rel=0.05)
    assert torch.count_nonzero(model.puzzle_embedding.weight) == 0
    assert torch.count_nonzero(model.halt_head.weight) == 0 and model.halt_head.bias.item() == -5.0
    assert model.y_init.abs().max() <= 2 * 1.1369 and model.output_head.bias is None


# -- official checkpoints ----------------------------------------------------------------------------------------------

VARIANTS = [
    {"mlp_t": True, "pos_encodings": "none"},
    {"mlp_t": False, "pos_encodings": "rope"},
    {"mlp_t": False, "pos_encodings": "learned", "puzzle_emb_ndim": 40, "puzzle_emb_len": 2},
    {"mlp_t": True, "pos_encodings": "none", "puzzle_emb_ndim": 0, "puzzle_emb_len": 0},
    {"mlp_t": True, "pos_encodings": "none", "puzzle_emb_ndim": 96, "puzzle_emb_len": 0},  # two slots, ceil(96/64)
]


def check_against_official(run, sd, arch, steps=2):
    model, task, _ = load_trained(run)
    puzzle = torch.as_tensor(task.generate(5, seed=3).inputs)
    official_ids = torch.tensor(TOKEN_MAPS[task.name](task))
    reference = official_steps(sd, arch, official_ids[puzzle], torch.zeros(5, dtype=torch.long), steps)
    x = model.step_input(puzzle, puzzle)
    y, z = model.initial_state(5)
    with torch.no_grad():
        for z_H, z_L, logits, q_halt in reference:
            out = model.supervision_step(x, y, z)
            assert torch.allclose(out.logits, logits[..., official_ids], atol=1e-4, rtol=1e-4)
            assert torch.allclose(out.halt_logit, q_halt, atol=1e-4, rtol=1e-4)
            assert torch.allclose(out.y, z_H, atol=1e-4) and torch.allclose(out.z, z_L, atol=1e-4)
            y, z = out.y, out.z
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_official_checkpoint_matches_the_official_forward(tmp_path, variant):
    arch = official_arch(**variant)
    sd = official_state(arch, seq_len=16, vocab=6)
    ckpt = write_official(tmp_path / "official", arch, sd)
    run = import_official(ckpt, tmp_path / "run", task="sudoku", task_kwargs={"size": 4})
    model = check_against_official(run, sd, arch)
    assert model.cfg.T == 2 and model.cfg.n == 2 and model.cfg.N_sup == 4


def test_official_maze_checkpoint_imports_with_its_token_order(tmp_path):
    arch = official_arch(mlp_t=False, pos_encodings="rope")
    sd = official_state(arch, seq_len=25, vocab=6)
    ckpt = write_official(tmp_path / "official", arch, sd)
    run = import_official(ckpt, tmp_path / "run", task="maze", task_kwargs={"size": 5})
    model = check_against_official(run, sd, arch)
    # our open cell (0) is the official ' ' (2), our wall (1) the official '#' (1)
    assert torch.equal(model.token_embedding.weight[0], sd["model.inner.embed_tokens.embedding_weight"][2])
    assert torch.equal(model.token_embedding.weight[1], sd["model.inner.embed_tokens.embedding_weight"][1])


def test_compiled_bfloat16_checkpoint_imports(tmp_path):
    arch = official_arch()
    sd = {"_orig_mod." + k: v.to(torch.bfloat16) for k, v in official_state(arch, 16, 6, seed=1).items()}
    ckpt = write_official(tmp_path / "official", arch, sd)
    run = import_official(ckpt, tmp_path / "run", task="sudoku", task_kwargs={"size": 4})
    check_against_official(run, sd, arch)


def test_import_official_cli_and_the_run_is_usable(tmp_path, capsys):
    import gymnasium as gym

    from agents.model.rollout import TRMPolicy

    arch = official_arch(hidden_size=32, num_heads=4, puzzle_emb_ndim=32)
    sd = official_state(arch, seq_len=81, vocab=11)
    ckpt = write_official(tmp_path / "official", arch, sd)
    run = tmp_path / "run"
    assert cli(["import-official", str(ckpt), "--out", str(run)]) == 0  # 9x9 Sudoku inferred from the vocabulary
    model = check_against_official(run, sd, arch, steps=1)
    assert cli(["eval", str(run), "--n", "8", "--halting", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_puzzles"] == 8
    assert cli(["diagnose", str(run), "--n", "8"]) == 0
    env = gym.make("TRMHalting-Sudoku-v0", size=9, policy=TRMPolicy(model), max_steps=model.cfg.N_sup)
    env.reset(seed=0)
    assert env.step(0)[4]["nfe"] == model.cfg.nfe_per_supervision_step
    assert cli(["import-official", str(ckpt), "--out", str(run)]) == 2  # never overwritten silently
    assert "holds a run" in capsys.readouterr().err
    assert cli(["train", "--resume", "--out", str(run), "--steps", "1"]) == 2  # no training state to resume
    err = capsys.readouterr().err
    assert "imported official checkpoint" in err and "--init" in err and len(err.strip().splitlines()) == 1
    (run / "checkpoint.pt.1").write_bytes(b"an old backup")
    (run / "train_metrics.json").write_text("{}")
    assert cli(["import-official", str(ckpt), "--out", str(run), "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["checkpoint.pt", "config.json"]


def test_ppo_starts_from_an_imported_official_run(tmp_path):
    from agents.checkpoint import load_checkpoint

    arch = official_arch(hidden_size=16, num_heads=4, puzzle_emb_ndim=16)
    sd = official_state(arch, seq_len=16, vocab=6)
    run = import_official(write_official(tmp_path / "official", arch, sd), tmp_path / "run", task="sudoku",
                          task_kwargs={"size": 4})
    assert cli(["train", "--method", "ppo", "--mode", "halting", "--init", str(run), "--iterations", "1",
                "--num-envs", "8", "--out", str(tmp_path / "ppo")]) == 0
    before, after = load_checkpoint(run)["model"], load_checkpoint(tmp_path / "ppo")["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("halt_head.", "value_head.")) for k in changed), changed


def test_import_official_errors_are_clear(tmp_path):
    arch = official_arch()
    sd = official_state(arch, 16, 6)
    good = write_official(tmp_path / "o", arch, sd)
    kw = {"task": "sudoku", "task_kwargs": {"size": 4}}

    def fails(match, ckpt=good, **extra):
        with pytest.raises(CheckpointMismatch, match=match):
            import_official(ckpt, tmp_path / f"run{len(list(tmp_path.iterdir()))}", **{**kw, **extra})

    fails("vocabulary of 6 tokens", task_kwargs={"size": 9})  # a task whose tokens disagree
    torch.save({**sd, "model.inner.extra.weight": torch.zeros(3)}, tmp_path / "o" / "extra")
    fails("unknown keys.*extra.weight", ckpt=tmp_path / "o" / "extra")
    bad = dict(sd)
    bad["model.inner.L_level.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 128)
    torch.save(bad, tmp_path / "o" / "shape")
    fails("layers.0.mlp.down_proj.weight has shape", ckpt=tmp_path / "o" / "shape")
    missing = {k: v for k, v in sd.items() if "q_head.bias" not in k}
    torch.save(missing, tmp_path / "o" / "missing")
    fails("lacks model.inner.q_head.bias", ckpt=tmp_path / "o" / "missing")
    torch.save({"model.inner.H_init": torch.zeros(64), "optimizer.step": torch.zeros(1)}, tmp_path / "o" / "outer")
    fails("outside 'model.inner.'", ckpt=tmp_path / "o" / "outer")
    (tmp_path / "o" / "garbage").write_bytes(b"\x80not a checkpoint")
    fails("not a valid", ckpt=tmp_path / "o" / "garbage")
    fails("no such config file", config=tmp_path / "nowhere.yaml")
    (tmp_path / "partial.yaml").write_text(yaml.dump({"arch": {"hidden_size": 64}}))
    fails("arch lacks L_layers, H_cycles", config=tmp_path / "partial.yaml")
    fails("no mapping of official token ids", task="nqueens", task_kwargs={"board": 4})
    (tmp_path / "pos.yaml").write_text(yaml.dump({"arch": {**arch, "pos_encodings": "roZe"}}))
    fails(rf"{good}.* with .*pos.yaml: arch does not make a valid network: pos must be one of",
          config=tmp_path / "pos.yaml")  # (an arch and weights that disagree name both files)
    with pytest.raises(CheckpointMismatch, match="cannot infer the task"):
        import_official(good, tmp_path / "infer")


# -- the official training loop --------------------------------------------------------------------------------------


def test_adam_atan2_is_the_official_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    ref = p.detach().clone()
    m, v = torch.zeros(5), torch.zeros(5)
    opt = AdamATan2([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.5)
    for t in range(1, 4):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        # the fused kernel of adam-atan2 0.0.3, written out
        ref = ref * (1 - 0.1 * 0.5)
        m = m + 0.1 * (g - m)
        v = v + 0.05 * (g * g - v)
        ref = ref - 0.1 / (1 - 0.9**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - 0.95**t))
        assert torch.allclose(p.detach(), ref, atol=1e-6), t


def test_sign_sgd_moves_only_the_rows_in_use():
    from agents.model.trm import SparseEmbedding

    table = SparseEmbedding(4, 2).train()
    table.weight.fill_(1.0)
    rows = table(torch.tensor([0, 2, 0]))
    (rows * torch.tensor([[0.5, -2.0], [-1e-3, 0.0], [0.0, 0.0]])).sum().backward()
    SignSGD([table], lr=0.1, weight_decay=1.0).step()
    # row 0: gradient (0.5, -2) summed over its two uses; row 2: (-1e-3, 0); rows 1 and 3 not in the batch
    assert torch.allclose(table.weight, torch.tensor([[0.8, 1.0], [1.0, 1.0], [1.0, 0.9], [1.0, 1.0]]))


def test_configure_optimizers_decays_every_parameter_officially():
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16))
    adam, sign = model.configure_optimizers(1e-3, 0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.3)
    assert isinstance(adam, AdamATan2) and isinstance(sign, SignSGD)
    assert len(adam.param_groups) == 1 and adam.param_groups[0]["weight_decay"] == 0.1
    assert len(adam.param_groups[0]["params"]) == sum(1 for _ in model.parameters())  # (the table: a buffer)
    assert sign.param_groups[0]["params"][0] is model.puzzle_embedding.weight
    assert sign.param_groups[0]["lr"] == 1e-2 and sign.param_groups[0]["weight_decay"] == 0.3
    adamw = model.configure_optimizers(1e-3, 0.1, optimizer="adamw", weight_decay_scope="matrices")[0]
    assert isinstance(adamw, torch.optim.AdamW) and [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    no_decay = {id(p) for p in adamw.param_groups[1]["params"]}
    assert id(model.token_embedding.weight) in no_decay and id(model.layers[0].ffn.down.weight) not in no_decay
    with pytest.raises(ValueError, match="optimizer"):
        model.configure_optimizers(1e-3, 0.1, optimizer="sgd")


def test_paper_preset_is_the_official_recipe(tmp_path):
    cfg = DeepSupervisionConfig.from_dict(PAPER_PRESET)
    assert (cfg.optimizer, cfg.weight_decay_scope, cfg.grad_clip, cfg.ema_warmup) == ("adam_atan2", "all", 0.0, False)
    assert (cfg.lr, cfg.weight_decay, cfg.puzzle_emb_lr, cfg.puzzle_emb_weight_decay) == (1e-4, 1.0, 1e-4, 1.0)
    mcfg = cfg.model_config(make_task("sudoku", size=9))
    assert (mcfg.hidden, mcfg.mixer, mcfg.pos, mcfg.puzzle_emb_len, mcfg.puzzle_emb_ndim) == \
        (512, "mlp", "none", 16, 512)
    # the CPU default is the same architecture, smaller
    small = DeepSupervisionConfig().model_config(make_task("sudoku", size=9))
    assert (small.mixer, small.pos, small.puzzle_emb_len, small.puzzle_emb_ndim, small.expansion) == \
        ("mlp", "none", 16, small.hidden, 4.0)


def test_constant_ema_from_the_initial_weights():
    from agents.trainers.loop import EMA

    model = TRM(TRMConfig(seq_len=4, vocab_size=3, hidden=8))
    start = model.output_head.weight.detach().clone()
    ema = EMA(model, 0.9, warmup=False)
    with torch.no_grad():
        model.output_head.weight.add_(1.0)
        model.puzzle_embedding.weight.add_(2.0)
    ema.update(model)
    averaged = ema.weights(model)
    assert torch.allclose(averaged["output_head.weight"], start + 0.1)
    assert torch.equal(averaged["puzzle_embedding.weight"], model.puzzle_embedding.weight)  # not averaged, as official


def test_training_moves_the_identifier_embedding_by_sign_sgd_and_resumes(tmp_path):
    from agents.checkpoint import load_checkpoint
    from agents.trainers import train

    kw = dict(task_kwargs={"size": 4}, hidden=16, T=1, n=1, N_sup=2, batch_size=8, n_train=32, eval_n=8,
              progress=False, final_eval=False, grad_clip=0.0, ema_warmup=False, puzzle_emb_lr=0.01,
              checkpoint_every=1000)
    train(config_from_dict({**kw, "steps": 4, "out": str(tmp_path / "a")}))
    state = load_checkpoint(tmp_path / "a")
    emb = state["model"]["puzzle_embedding.weight"]
    # four sign steps of 0.01 from zero (warm-up 100: lr ramps 1/100 .. 4/100 of 0.01), each entry moved
    assert emb.abs().min() > 0 and emb.abs().max() <= 0.01 * (1 + 2 + 3 + 4) / 100 + 1e-9
    assert torch.equal(state["ema"]["puzzle_embedding.weight"], emb)  # not averaged
    train(config_from_dict({**kw, "steps": 2, "out": str(tmp_path / "b")}))
    train(config_from_dict({**kw, "steps": 2, "out": str(tmp_path / "b")}), resume=True)
    again = load_checkpoint(tmp_path / "b")
    for k, v in state["model"].items():
        assert torch.allclose(v, again["model"][k], atol=1e-6), k


def test_a_run_of_the_older_network_is_refused_clearly(tmp_path):
    from agents.checkpoint import save_checkpoint

    old = {"seq_len": 16, "vocab_size": 5, "hidden": 16, "pos": "learned", "puzzle_emb_len": 0, "num_puzzle_ids": 0}
    save_checkpoint(tmp_path / "checkpoint.pt", {"model_config": old, "ema": {}, "task": "sudoku",
                                                 "task_kwargs": {"size": 4}, "train_config": {}})
    with pytest.raises(ValueError, match="older recursion-env.*retrain"):
        load_trained(tmp_path)


def test_cli_preset_paper_and_the_named_deviations(tmp_path):
    run = tmp_path / "paper"
    assert cli(["train", "--preset", "paper", "--size", "4", "--hidden", "32", "--batch-size", "8", "--steps", "2",
                "--eval-n", "8", "--no-final-eval", "--out", str(run)]) == 0
    c = json.loads((run / "config.json").read_text())
    train, model = c["train"], c["model"]
    assert (train["optimizer"], train["grad_clip"], train["ema_warmup"], train["weight_decay_scope"]) == \
        ("adam_atan2", 0.0, False, "all")
    assert (train["lr"], train["weight_decay"], train["puzzle_emb_lr"], train["puzzle_emb_weight_decay"],
            train["warmup_steps"]) == (1e-4, 1.0, 1e-4, 1.0, 2000)
    assert (model["hidden"], model["mixer"], model["pos"], model["puzzle_emb_len"], model["puzzle_emb_ndim"]) == \
        (32, "mlp", "none", 16, 32)
    run = tmp_path / "cpu"
    assert cli(["train", "--size", "4", "--hidden", "16", "--steps", "2", "--eval-n", "8", "--no-final-eval",
                "--optimizer", "adamw", "--grad-clip", "0", "--no-ema-warmup", "--weight-decay-scope", "matrices",
                "--mixer", "attention", "--heads", "4", "--pos", "learned", "--puzzle-emb-len", "0",
                "--puzzle-emb-ndim", "0", "--out", str(run)]) == 0
    c = json.loads((run / "config.json").read_text())
    assert (c["train"]["optimizer"], c["train"]["grad_clip"], c["train"]["ema_warmup"]) == ("adamw", 0.0, False)
    assert (c["model"]["mixer"], c["model"]["pos"], c["model"]["puzzle_emb_len"]) == ("attention", "learned", 0)
