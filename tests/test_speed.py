"""The fast trainer: precision, no host synchronisation inside the loop, fused optimizers and EMA, the sparse
identifier embedding, compiled f. Speed itself is measured by benchmarks/step_cost.py, never timed here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

import agents.model.precision as precision_module
from agents.checkpoint import load_checkpoint
from agents.eval.evaluation import evaluate_run, load_trained
from agents.model.optim import AdamATan2, SignSGD, sparse_sign_sgd_
from agents.model.rollout import RecursionRunner
from agents.model.trm import TRM, TRMConfig
from agents.trainers import config_from_dict, train
from agents.trainers.data import DeviceFeed
from agents.trainers.loop import EMA
from recursion_env import make_task

SMALL = dict(task_kwargs={"size": 4}, hidden=16, batch_size=8, eval_n=16, progress=False, final_eval=False,
             checkpoint_every=10**6, compile="off")

#: Tensor methods and functions that wait for the device (or copy to the host) whatever their arguments
SYNCING = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave"}


def _syncs(func, args, kwargs) -> bool:
    name = getattr(func, "__name__", "")
    if name in SYNCING:
        return True
    if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):  # a boolean mask: a data-dependent shape
        index = args[1] if len(args) > 1 else None
        parts = index if isinstance(index, (tuple, list)) else (index,)
        return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
    if name == "to":  # to the host from another device (a same-device .to is a no-op on every device)
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        to_host = any(str(a) == "cpu" for a in [*args[1:], *(kwargs or {}).values()])
        return to_host and source is not None and source.device.type != "cpu"
    return False


class SyncCounter(TorchFunctionMode):
    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _syncs(func, args, kwargs):
            self.events.append(("sync", getattr(func, "__name__", str(func))))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["trm", "dis"])
def test_no_host_sync_in_the_training_loop_between_log_points(tmp_path, monkeypatch, method):
    """20 optimizer steps between two log points, the steps' forward, loss, backward, optimizer, EMA, halting,
    transition and replacement of finished rows included: not one call that waits for the device."""
    events: list = []
    forward, top_up = RecursionRunner.forward, DeviceFeed.top_up

    def marked_forward(self):
        events.append(("forward", None))
        return forward(self)

    def marked_top_up(self):
        events.append(("top_up", None))
        return top_up(self)

    monkeypatch.setattr(RecursionRunner, "forward", marked_forward)
    monkeypatch.setattr(DeviceFeed, "top_up", marked_top_up)
    kw = {**SMALL, "method": method, "steps": 40, "log_every": 20, "out": str(tmp_path / "run"), "n_train": 64}
    if method == "trm":
        kw |= {"T": 2, "n": 1, "N_sup": 4}  # (a no-grad recursion, halting and exploration draws: all exercised)
    with SyncCounter(events):
        train(config_from_dict(kw))
    forwards = [i for i, (kind, _) in enumerate(events) if kind == "forward"]
    top_ups = [i for i, (kind, _) in enumerate(events) if kind == "top_up"]
    # the top-ups: at the start, at step 20 and at step 40; the window: from step 21's forward to step 40's top-up
    assert len(top_ups) == 3 and len(forwards) >= 40
    start, end = forwards[20], top_ups[2]
    assert start < end
    window = [name for kind, name in events[start:end] if kind == "sync"]
    assert window == [], f"host synchronisations inside the loop: {window}"
    # and the counter sees them where they are (the log point reads the sums)
    assert any(kind == "sync" for kind, _ in events[top_ups[1]:forwards[20]])


def test_finished_rows_start_on_the_streams_puzzles_in_order(tmp_path):
    """The device feed hands the k-th finished row the k-th unused puzzle: the rows and puzzles that taking
    finished.sum() puzzles from the stream would give."""
    from agents.trainers.data import PuzzleStream

    task = make_task("sudoku", size=4)
    stream = PuzzleStream(task, seed=3, chunk=5)
    reference = PuzzleStream(task, seed=3, chunk=5)
    feed = DeviceFeed(stream, "cpu", reserve=6)
    feed.top_up()
    mask = torch.tensor([False, True, False, True, True])
    x, y, ids, extra = feed.take(mask)
    want_x, want_y, _ = reference.take(3)
    assert torch.equal(x[mask], torch.from_numpy(want_x)) and torch.equal(y[mask], torch.from_numpy(want_y))
    assert extra is None and len(feed) == 3
    x, *_ = feed.take(torch.tensor([True, False, False, False, False]))
    assert torch.equal(x[0], torch.from_numpy(reference.take(1)[0][0]))
    feed.take(torch.ones(5, dtype=torch.bool))  # 5 more than the 2 it holds: found at the next top-up
    with pytest.raises(RuntimeError, match="ran dry"):
        feed.top_up()


def _reference_adam_atan2(params, grads_per_step, lr, betas, wd):
    """The per-parameter update (the loop the optimizer had before it was fused)."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, 1):
        for i, g in enumerate(grads):
            params[i].mul_(1 - lr * wd)
            m[i].lerp_(g, 1 - betas[0])
            v[i].lerp_(g.square(), 1 - betas[1])
            step = torch.atan2(m[i], v[i].sqrt() / math.sqrt(1 - betas[1] ** t))
            params[i].add_(step, alpha=-lr / (1 - betas[0] ** t))
    return params


def test_fused_adam_atan2_matches_the_per_parameter_update_over_100_steps():
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(100)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = AdamATan2(params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for step_grads in grads:
        for p, gr in zip(params, step_grads):
            p.grad = gr.clone()
        opt.step()
    want = _reference_adam_atan2(start, grads, 3e-3, (0.9, 0.95), 0.1)
    for p, w in zip(params, want):
        assert (p.detach() - w).abs().max() <= 1e-6
    assert all(opt.state[p]["step"] == 100 for p in params)


def test_fused_ema_matches_the_per_parameter_average_over_100_steps():
    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=4, vocab_size=3, hidden=8))
    ema = EMA(model, 0.99, warmup=True)
    shadow = {k: p.detach().clone() for k, p in model.named_parameters()}
    for t in range(1, 101):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        ema.update(model)
        d = min(0.99, (1 + t) / (10 + t))
        for k, p in model.named_parameters():
            shadow[k].mul_(d).add_(p.detach(), alpha=1 - d)
    for k in shadow:
        assert (ema.shadow[k] - shadow[k]).abs().max() <= 1e-6, k


def test_sparse_sign_sgd_moves_and_decays_only_the_batch_rows_as_official():
    table = torch.ones(6, 2)
    ids = torch.tensor([4, 1, 4, 4])
    grad = torch.tensor([[1.0, -1.0], [0.0, 0.0], [-0.5, 0.0], [1.0, 0.0]])
    sparse_sign_sgd_(table, ids, grad, lr=0.1, weight_decay=1.0)
    want = torch.ones(6, 2)
    want[4] = torch.tensor([0.9 - 0.1, 0.9 + 0.1])  # summed per id: (1.5, -1): sign (1, -1)
    want[1] = 0.9  # in the batch with a zero gradient: decays, as official (every batch id is updated)
    assert torch.allclose(table, want)


def test_the_identifier_table_has_no_gradient_and_its_rows_train_by_sign_sgd():
    model = TRM(TRMConfig(seq_len=4, vocab_size=3, hidden=8, num_puzzle_ids=1000)).train()
    assert "puzzle_embedding.weight" not in dict(model.named_parameters())  # a buffer: no table-sized gradient
    assert "puzzle_embedding.weight" in model.state_dict()  # (the official import and old checkpoints' key)
    adam, sign = model.configure_optimizers(1e-3, 0.1, puzzle_emb_lr=0.01)
    assert isinstance(sign, SignSGD) and sign.param_groups[0]["params"][0] is model.puzzle_embedding.weight
    ids = torch.tensor([3, 7, 3])
    puzzle = torch.randint(0, 3, (3, 4))
    out = model.supervision_step(model.embed(puzzle, puzzle_id=ids), *model.initial_state(3))
    out.logits.float().square().mean().backward()
    _, rows = model.puzzle_embedding.local
    assert rows.grad is not None and rows.grad.shape == (3, model.cfg.puzzle_emb_ndim)
    before = model.puzzle_embedding.weight.clone()
    sign.step()
    moved = (model.puzzle_embedding.weight != before).any(-1).nonzero().reshape(-1).tolist()
    assert moved == [3, 7] and model.puzzle_embedding.local is None
    # evaluation reads the table and gathers nothing
    model.eval()
    model.embed(puzzle, puzzle_id=ids)
    assert model.puzzle_embedding.local is None


def test_precision_auto_follows_the_cpus_bf16_units(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_units", lambda: [])
    assert precision_module.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(precision_module, "cpu_bf16_units", lambda: ["avx512_bf16"])
    assert precision_module.resolve_precision("auto", "cpu") == "bf16"
    assert precision_module.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="--precision"):
        precision_module.resolve_precision("fp16", "cpu")
    assert precision_module.resolve_compile("auto", "cpu", steps=20) is False
    assert precision_module.resolve_compile("off", "cpu", minutes=60) is False
    assert precision_module.resolve_compile(True, "cpu") is True
    monkeypatch.setattr(precision_module, "compiler_available", lambda device: True)
    assert precision_module.resolve_compile("auto", "cpu", minutes=30) is True
    assert precision_module.resolve_compile("auto", "cpu", forward_passes=512 * 336) is True  # TRM's evaluation
    assert precision_module.resolve_compile("auto", "cpu", forward_passes=1000 * 18) is False  # DIS's
    assert precision_module.resolve_compile("auto", "cpu", forward_passes=512 * 336, precision="fp32") is False
    monkeypatch.setattr(precision_module, "compiler_available", lambda device: False)
    assert precision_module.resolve_compile("auto", "cpu", minutes=30) is False


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_run_records_its_precision_resumes_exactly_in_it_and_evaluates_in_it(tmp_path, precision):
    kw = {**SMALL, "method": "dis", "precision": precision, "n_train": 64, "log_every": 3}
    train(config_from_dict({**kw, "steps": 8, "out": str(tmp_path / "whole")}))
    train(config_from_dict({**kw, "steps": 5, "out": str(tmp_path / "split")}))
    train(config_from_dict({**kw, "steps": 3, "out": str(tmp_path / "split")}), resume=True)
    whole, split = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole["precision"] == split["precision"] == precision
    for k, v in whole["model"].items():
        assert torch.equal(v, split["model"][k]), k
    metrics = json.loads((tmp_path / "whole" / "train_metrics.json").read_text())
    assert metrics["precision"] == precision and metrics["compiled"] is False
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["precision"] == precision
    _, _, config = load_trained(tmp_path / "whole")
    assert config["precision"] == precision
    assert evaluate_run(tmp_path / "whole", n=8)["precision"] == precision
    other = "fp32" if precision == "bf16" else "bf16"
    assert evaluate_run(tmp_path / "whole", n=8, precision=other)["precision"] == other


def test_bf16_and_fp32_steps_agree_within_bf16_tolerance():
    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=32, T=2, n=2))
    puzzle = torch.randint(0, 5, (4, 16))
    with torch.no_grad():
        ref = model.supervision_step(model.embed(puzzle), *model.initial_state(4))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.supervision_step(model.embed(puzzle), *model.initial_state(4))
    assert low.y.dtype == torch.float32  # the carried latent stays fp32 (norms in fp32, as official)
    assert (low.logits.float() - ref.logits).abs().max() < 0.1 * ref.logits.abs().max()
    assert (low.logits.float().argmax(-1) == ref.logits.argmax(-1)).float().mean() > 0.9


@pytest.mark.slow
def test_compiled_f_agrees_with_eager_and_compiles_once_per_run(tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TRM(TRMConfig(seq_len=16, vocab_size=5, hidden=16, T=1, n=1, L_layers=1))
    puzzle = torch.randint(0, 5, (4, 16))
    with torch.no_grad():
        eager = model.supervision_step(model.embed(puzzle), *model.initial_state(4))
        model.compile_f()
        compiled = model.supervision_step(model.embed(puzzle), *model.initial_state(4))
    assert torch.allclose(eager.logits, compiled.logits, atol=1e-4, rtol=1e-4)
    model.compile_f(False)
    # a compiled run: the graphs are made before the clock starts (one per pattern of which inputs carry a
    # gradient), and no later step recompiles: 12 steps compile what 1 step does
    frames = {}
    for steps in (1, 12):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        result = train(config_from_dict({**SMALL, "method": "dis", "compile": "on", "steps": steps, "n_train": 64,
                                         "L_layers": 1, "out": str(tmp_path / f"run{steps}")}))
        assert result["compiled"] is True and result["compile_s"] > 0
        frames[steps] = torch._dynamo.utils.counters["frames"]["ok"]
    assert 1 <= frames[1] == frames[12] <= 4
