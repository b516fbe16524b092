"""Import checkpoints of the official TRM code (SamsungSAILMontreal/TinyRecursiveModels) as recursion-env runs.

The official ``pretrain.py`` saves ``model.state_dict()`` of ``ACTLossHead(TinyRecursiveReasoningModel_ACTV1)``:
keys under ``model.inner.`` (prefixed ``_orig_mod.`` when the model was compiled), possibly in bfloat16, and an
``all_config.yaml`` beside it whose ``arch`` section holds the network's settings. The vocabulary and the number
of puzzle identifiers come from the weights' shapes; the task from the command line (default: inferred from the
vocabulary). Official token ids are ours shifted: id 0 is PAD (its embedding and logit are dropped), Sudoku's
blank is 1 and its digits 2..size+1 (ours: 0 and 1..size); Maze's ``# SGo`` are 1..5 (ours: ``.#SGo`` = 0..4);
ARC's are ours (PAD, EOS, colours), and its identifier table comes from the data's ``identifiers.json``
(``--identifiers``), row for row.

    recursion-env import-official step_123456 --out runs/official --task sudoku --size 9
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from recursion_env.atomic import locks_folder
from recursion_env.tasks import Task, make_task

from ..checkpoint import read_torch, run_files, save_checkpoint
from .trm import TRM, TRMConfig

#: for each task: official token id of each of our tokens (index = our token)
TOKEN_MAPS = {
    "sudoku": lambda task: list(range(1, task.vocab_size + 1)),
    "maze": lambda task: [2, 1, 3, 4, 5],  # ours . # S G o  ->  official ' ' '#' 'S' 'G' 'o'
    "arc": lambda task: list(range(task.vocab_size)),  # the same: PAD 0, EOS 1, colours 2..11
}

#: official arch fields read from all_config.yaml, and where they go
_ARCH = {"hidden_size": "hidden", "L_layers": "L_layers", "H_cycles": "T", "L_cycles": "n", "halt_max_steps": "N_sup",
         "num_heads": "heads", "expansion": "expansion", "pos_encodings": "pos", "puzzle_emb_ndim": "puzzle_emb_ndim",
         "puzzle_emb_len": "puzzle_emb_len", "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta"}
_REQUIRED = ("hidden_size", "L_layers", "H_cycles", "L_cycles", "halt_max_steps")
#: official arch values the importer does not support, with the value it needs
_FIXED = {"H_layers": (0,), "no_ACT_continue": (True,)}


class CheckpointMismatch(ValueError):
    """A checkpoint or config that cannot be mapped (a ValueError, so the CLI reports it in one line)."""


def read_official_state(path) -> dict[str, torch.Tensor]:
    """The inner model's tensors, keys without ``_orig_mod.`` / ``model.inner.``, as float32."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatch(f"{path}: no such checkpoint file")
    try:
        state = read_torch(path, path, what="torch checkpoint")
    except ValueError as e:
        raise CheckpointMismatch(str(e)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatch(f"{path}: expected a state dict of tensors (what the official pretrain.py saves)")
    inner, outside = {}, []
    for key, value in state.items():
        k = key.removeprefix("_orig_mod.")
        if not k.startswith("model.inner."):
            outside.append(key)
            continue
        if not value.is_floating_point():
            raise CheckpointMismatch(f"{path}: {key} has dtype {value.dtype}, expected floating point")
        inner[k.removeprefix("model.inner.")] = value.float()
    if outside:
        raise CheckpointMismatch(f"{path}: keys outside 'model.inner.' (not an official TRM checkpoint?): "
                           f"{', '.join(sorted(outside)[:5])}")
    if not inner:
        raise CheckpointMismatch(f"{path}: no 'model.inner.' weights")
    return inner


def read_official_arch(path) -> dict:
    """The ``arch`` section of an official ``all_config.yaml`` (or a bare arch mapping)."""
    from ..checkpoint import read_yaml

    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatch(f"{path}: no such config file (the all_config.yaml the official run wrote beside its "
                           "checkpoints; pass it with --config)")
    try:
        cfg = read_yaml(path, "official config")
    except ValueError as e:
        raise CheckpointMismatch(str(e)) from None
    arch = cfg.get("arch", cfg) if isinstance(cfg, dict) else None
    if not isinstance(arch, dict):
        raise CheckpointMismatch(f"{path}: expected a mapping with an 'arch' section")
    missing = [k for k in _REQUIRED if k not in arch]
    if missing:
        raise CheckpointMismatch(f"{path}: arch lacks {', '.join(missing)}")
    for k, allowed in _FIXED.items():
        if k in arch and arch[k] not in allowed:
            raise CheckpointMismatch(f"{path}: arch.{k} = {arch[k]!r} is not supported (only {allowed[0]!r})")
    return arch


def official_model_config(arch: dict, state: dict[str, torch.Tensor], task: Task) -> tuple[TRMConfig, list[int]]:
    """Our TRMConfig for an official arch + weights on ``task``, and the official token id of each of ours."""
    if task.name not in TOKEN_MAPS:
        raise CheckpointMismatch(f"no mapping of official token ids for task {task.name!r} "
                                 f"(known: {sorted(TOKEN_MAPS)})")
    token_ids = TOKEN_MAPS[task.name](task)
    if "embed_tokens.embedding_weight" not in state:
        raise CheckpointMismatch("checkpoint lacks model.inner.embed_tokens.embedding_weight")
    vocab, hidden = state["embed_tokens.embedding_weight"].shape
    if vocab != max(token_ids) + 1:
        raise CheckpointMismatch(f"official vocabulary of {vocab} tokens does not match {task!r} (expected "
                                 f"{max(token_ids) + 1}); check --task / --size")
    if hidden != arch["hidden_size"]:
        raise CheckpointMismatch(f"embed_tokens width {hidden} disagrees with arch.hidden_size {arch['hidden_size']}")
    kw = {ours: arch[theirs] for theirs, ours in _ARCH.items() if theirs in arch}
    kw["mixer"] = "mlp" if arch.get("mlp_t", False) else "attention"
    ndim = int(arch.get("puzzle_emb_ndim", 0))
    kw["puzzle_emb_ndim"] = ndim
    kw["puzzle_emb_len"] = int(arch.get("puzzle_emb_len", 16))  # official default
    if ndim and "puzzle_emb.weights" not in state:
        raise CheckpointMismatch(f"arch.puzzle_emb_ndim is {ndim} but the checkpoint has no "
                                 "model.inner.puzzle_emb.weights")
    kw["num_puzzle_ids"] = int(state["puzzle_emb.weights"].shape[0]) if ndim else 1
    table = task.identifiers
    if ndim and table is not None and len(table) != kw["num_puzzle_ids"]:
        raise CheckpointMismatch(f"the checkpoint's identifier table has {kw['num_puzzle_ids']} rows, the task's "
                                 f"{len(table)}: pass the identifiers.json of the data it was trained on "
                                 "(--identifiers)")
    try:
        cfg = TRMConfig(seq_len=task.seq_len, vocab_size=task.vocab_size, keeps_givens=task.keeps_givens, **kw)
    except (TypeError, ValueError) as e:
        raise CheckpointMismatch(f"arch does not make a valid network: {e}") from None
    return cfg, token_ids


def _our_key(key: str) -> str | None:
    """Our parameter name for an official inner key (None: not a key we know)."""
    simple = {"embed_tokens.embedding_weight": "token_embedding.weight", "lm_head.weight": "output_head.weight",
              "puzzle_emb.weights": "puzzle_embedding.weight", "embed_pos.embedding_weight": "position_embedding",
              "H_init": "y_init", "L_init": "z_init"}
    if key in simple:
        return simple[key]
    parts = key.split(".")
    if len(parts) == 6 and parts[:2] == ["L_level", "layers"] and parts[5] == "weight":
        i, module, proj = parts[2], parts[3], parts[4]
        mapping = {("mlp_t", "gate_up_proj"): "mlp_t.gate_up", ("mlp_t", "down_proj"): "mlp_t.down",
                   ("mlp", "gate_up_proj"): "ffn.gate_up", ("mlp", "down_proj"): "ffn.down",
                   ("self_attn", "qkv_proj"): "attn.qkv", ("self_attn", "o_proj"): "attn.out"}
        if (module, proj) in mapping:
            return f"layers.{i}.{mapping[module, proj]}.weight"
    return None


def official_to_ours(state: dict[str, torch.Tensor], cfg: TRMConfig, token_ids: list[int]) -> TRM:
    """A TRM holding the official weights (the value head, ours, starts at zero)."""
    model = TRM(cfg)
    ours = model.state_dict()
    loaded = {}
    unknown = []
    for key, value in state.items():
        if key in ("q_head.weight", "q_head.bias"):
            continue
        name = _our_key(key)
        if name is None or name not in ours:
            unknown.append(key)
            continue
        if key in ("embed_tokens.embedding_weight", "lm_head.weight"):
            value = value[token_ids]  # PAD dropped, ids in our order
        if value.shape != ours[name].shape:
            raise CheckpointMismatch(f"model.inner.{key} has shape {tuple(value.shape)}, but the config makes "
                               f"{name} {tuple(ours[name].shape)}")
        loaded[name] = value
    if unknown:
        names = ", ".join("model.inner." + k for k in sorted(unknown))
        raise CheckpointMismatch(f"unknown keys for this config: {names}")
    for key, shape in (("q_head.weight", (2, cfg.hidden)), ("q_head.bias", (2,))):
        if key not in state:
            raise CheckpointMismatch(f"checkpoint lacks model.inner.{key}")
        if tuple(state[key].shape) != shape:
            raise CheckpointMismatch(f"model.inner.{key} has shape {tuple(state[key].shape)}, expected {shape}")
    loaded["halt_head.weight"] = state["q_head.weight"][:1]  # row 0 is q_halt (row 1, q_continue, is unused)
    loaded["halt_head.bias"] = state["q_head.bias"][:1]
    missing = [k for k in ours if k not in loaded and not k.startswith("value_head.")]
    if missing:
        raise CheckpointMismatch(f"checkpoint lacks weights for: {', '.join(missing)}")
    model.load_state_dict({**ours, **loaded})
    return model.eval()


@locks_folder(lambda a: a["out"])
def import_official(checkpoint, out, config=None, task: str | None = None, task_kwargs: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write a run folder (``checkpoint.pt`` + ``config.json``) that ``eval``, ``diagnose``, the environments and
    PPO accept. ``config`` defaults to ``all_config.yaml`` beside the checkpoint."""
    checkpoint = Path(checkpoint)
    out = Path(out)
    target = out / "checkpoint.pt"
    held = run_files(out)
    if held and not overwrite:
        raise CheckpointMismatch(f"{out} holds a run ({', '.join(p.name for p in held)}); choose another --out or "
                                 "pass --overwrite")
    state = read_official_state(checkpoint)
    config = Path(config) if config else checkpoint.parent / "all_config.yaml"
    arch = read_official_arch(config)
    if task is None:  # infer from the vocabulary
        vocab = state.get("embed_tokens.embedding_weight", torch.empty(0, 0)).shape[0]
        if vocab != 11:
            raise CheckpointMismatch(f"cannot infer the task from a {vocab}-token vocabulary (only 9x9 Sudoku's "
                                          "11 is): pass --task and --size (Maze-Hard: --task maze --size 30)")
        task, task_kwargs = "sudoku", {"size": 9}
    the_task = make_task(task, **(task_kwargs or {}))
    try:
        cfg, token_ids = official_model_config(arch, state, the_task)
    except CheckpointMismatch as e:  # (the arch and the weights disagree: name both files)
        raise CheckpointMismatch(f"{checkpoint} with {config}: {e}") from None
    model = official_to_ours(state, cfg, token_ids)
    weights = model.state_dict()
    for old_file in held:  # (--overwrite: the old run's backups, metrics, logs and looks go with it)
        shutil.rmtree(old_file) if old_file.is_dir() else old_file.unlink()
    out.mkdir(parents=True, exist_ok=True)
    train_config = {"method": "trm", "imported_from": str(checkpoint.resolve()), "task": the_task.name,
                    "task_kwargs": the_task.kwargs, "official_arch": arch}
    save_checkpoint(target, {"model_config": cfg.to_dict(), "model": weights, "ema": weights,
                             "task": the_task.name, "task_kwargs": the_task.kwargs, "train_config": train_config})
    (out / "config.json").write_text(json.dumps({"train": train_config, "model": cfg.to_dict()}, indent=2,
                                                default=str))
    return out
