"""The Tiny Recursive Model (TRM): one small shared network f applied recursively to a latent.

Names follow the paper: x is the embedded puzzle, y the answer embedding, z the reasoning latent. One
*latent recursion* updates z ``n`` times, ``z = f(z + y + x)``, then y once, ``y = f(y + z)``: n + 1 calls of f.
A *deep recursion* runs T latent recursions, the first T - 1 without gradients. A *supervision step* is one deep
recursion followed by a readout; TRM trains up to ``N_sup`` of them per example, carrying (y, z) detached from
one to the next. Every call of f is one forward pass (NFE): 16 x 3 x 7 = 336 with the defaults.

The network is the official one (SamsungSAILMontreal/TinyRecursiveModels, ``models/recursive_reasoning/trm.py``
and ``models/layers.py``), weight for weight: post-norm blocks whose mlp_t mixer normalises over the sequence
axis, SwiGLU widths rounded up to a multiple of 256, truncated LeCun-normal initialisation, no position encoding
for mlp_t (RoPE for attention; learned positions scaled by 1/sqrt 2 with the tokens), and ``puzzle_emb_len``
latent slots in front of the cells, slot 0 holding a per-identifier embedding (zero-initialised) that the halting
(Q) head reads. In their names: y is ``z_H``, z is ``z_L``, ``y_init``/``z_init`` are ``H_init``/``L_init``, T is
``H_cycles`` and n is ``L_cycles``. What is ours: the value head (for PPO), the halting head's other readouts, and
DIS's step embedding (the official DIS code's ``timestep_embed``) and input from the previous answer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..options import option

HALT_READOUTS = ("first", "mean", "confidence", "rules")
#: the readouts that read the decoded answer rather than y, and their heads' input width (not D: `_head_inputs`)
ANSWER_READOUTS = {"confidence": 3, "rules": 5}
POSITIONS = ("none", "rope", "learned")


@dataclass(frozen=True)
class TRMConfig:
    """The network's hyper-parameters, frozen: a model's config never changes under it (or under its optimizer);
    :meth:`TRM.set_halt_readout` gives the model a new one. The training configs hold one (``cfg.model``) with
    ``seq_len`` and ``vocab_size`` left at 0: :meth:`for_task` fills them from the task the run is on."""

    seq_len: int = 0  # cells; 0 = not known yet (for_task)
    vocab_size: int = 0
    hidden: int = option(128, "width D of the network (official 512)")
    L_layers: int = option(2, "layers of the shared network f", flags=("--layers",))
    mixer: str = option("mlp", "mlp (TRM's mlp_t) or attention", choices=("mlp", "attention"))
    heads: int = option(8, "attention heads")
    expansion: float = option(4.0, "SwiGLU expansion")
    T: int = option(3, "latent recursions per supervision step (the last T-1 without gradients)")
    n: int = option(6, "latent updates z = f(x + y + z) per recursion, before y = f(y + z)")
    N_sup: int = option(16, "supervision steps per puzzle", flags=("--n-sup",))
    #: "none", "rope" or "learned"; default as official: none for mlp_t, rope for attention
    pos: str | None = option(
        None,
        "position encoding (default as official: none for mlp, rope for attention)",
        choices=POSITIONS)
    #: latent slots in front of the cells (official default 16); slot 0 carries the per-identifier embedding
    puzzle_emb_len: int = option(16, "latent slots before the cells, slot 0 holding the identifier embedding")
    #: width of the per-identifier embedding, <= puzzle_emb_len * hidden (None = hidden, as official; 0 = none)
    puzzle_emb_ndim: int | None = option(None, "width of the identifier embedding (default: hidden; 0 = none)")
    num_puzzle_ids: int = 1  # identifiers in the table (Sudoku and Maze data have one)
    step_embedding: int = 0  # supervision steps embedded into x (0 = none; DIS uses N_sup)
    input_from_answer: bool = False  # x embeds the previous decoded answer instead of the puzzle (DIS option)
    keeps_givens: bool = True  # the task's: a decoded answer keeps the puzzle's non-zero cells (not in ARC)
    #: what the halting head reads: y at position 0 (TRM), the mean of y ("mean"), the readout's confidence
    #: ("confidence", see `confidence_features`), or that and how far the decoded answer is from obeying the
    #: puzzle's rules ("rules", see `TRM.set_rules`)
    halt_readout: str = "first"
    rms_norm_eps: float = option(1e-5, "epsilon of the RMS norms")
    rope_theta: float = option(10000.0, "base of the rotary position encoding")

    def __post_init__(self) -> None:
        if self.mixer not in ("mlp", "attention"):
            raise ValueError(f"mixer must be 'mlp' or 'attention', got {self.mixer!r}")
        if self.pos is None:
            object.__setattr__(self, "pos", "rope" if self.mixer == "attention" else "none")
        if self.pos not in POSITIONS:
            raise ValueError(f"pos must be one of {POSITIONS}, got {self.pos!r}")
        if self.halt_readout not in HALT_READOUTS:
            raise ValueError(f"halt_readout must be one of {HALT_READOUTS}, got {self.halt_readout!r}")
        if (self.mixer == "attention" or self.pos == "rope") and self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        for k in ("seq_len", "vocab_size"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0 (0 = from the task), got {getattr(self, k)}")
        for k in ("T", "n", "N_sup", "hidden", "L_layers"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.puzzle_emb_ndim is None:
            object.__setattr__(self, "puzzle_emb_ndim", self.hidden)
        if self.puzzle_emb_ndim and not self.puzzle_emb_len:  # as official: enough slots to hold it
            object.__setattr__(self, "puzzle_emb_len", -(self.puzzle_emb_ndim // -self.hidden))
        if self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden:
            raise ValueError(f"puzzle_emb_ndim {self.puzzle_emb_ndim} does not fit in puzzle_emb_len "
                             f"{self.puzzle_emb_len} slots of width {self.hidden}")
        if self.puzzle_emb_ndim and self.num_puzzle_ids < 1:
            raise ValueError(f"num_puzzle_ids must be >= 1 with a puzzle embedding, got {self.num_puzzle_ids}")

    @property
    def latent_len(self) -> int:
        return self.puzzle_emb_len + self.seq_len

    @property
    def nfe_per_supervision_step(self) -> int:
        return self.T * (self.n + 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def for_task(self, task, **changes) -> TRMConfig:
        """This network sized for ``task``'s sequence and vocabulary (plus ``changes``, e.g. a method's
        step embedding)."""
        sized = {"seq_len": task.seq_len, "vocab_size": task.vocab_size, "keeps_givens": task.keeps_givens}
        if task.identifiers is not None and self.puzzle_emb_ndim != 0:  # ARC: one per variant
            sized["num_puzzle_ids"] = len(task.identifiers)
        return replace(self, **sized, **changes)


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """Normal truncated at two standard deviations, with the scale corrected so the result has standard deviation
    ``std`` (JAX's truncated normal, which the official code uses; torch's ``trunc_normal_`` keeps the scale of the
    untruncated normal)."""
    if std == 0:
        return nn.init.zeros_(tensor)
    # variance of a standard normal truncated to [-2, 2]
    pdf2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    scale = std / math.sqrt(1 - 2 * 2 * pdf2 / mass)
    return nn.init.trunc_normal_(tensor, 0.0, scale, -2 * scale, 2 * scale)


def lecun_linear(fan_in: int, fan_out: int, bias: bool = False) -> nn.Linear:
    """A linear layer with the official init: truncated LeCun normal weights (std 1/sqrt(fan_in)), zero bias."""
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    trunc_normal_(layer.weight, 1.0 / math.sqrt(fan_in))
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _cell_doubt_and_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell ``[B, L]``: log(1 - max prob), floored at log(1e-6) (finite gradients), and the entropy / log V."""
    logp = logits.float().log_softmax(-1)
    doubt = (-torch.expm1(logp.max(-1).values)).clamp_min(1e-6).log()
    return doubt, -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` from logits ``[B, L, V]``: log(1 - max prob) of the least sure cell and averaged over cells, and
    the mean entropy / log V. A halting head on these decides from how sure the answer is; a frozen network's y was
    never trained to carry that linearly (DIS trains no halting head). Log-scaled so a linear head can be sharp."""
    doubt, entropy = _cell_doubt_and_entropy(logits)
    return torch.stack([doubt.max(-1).values, doubt.mean(-1), entropy.mean(-1)], -1)


def rules_features(logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``[B, 5]`` from logits ``[B, L, V]`` and the decoded answer's rule score ``[B]``, each in [0, 1] with 1 meaning
    "stop": how sure the least sure cell and the average cell are (log(1 - max prob) / log(1e-6)), one minus the
    mean entropy / log V, whether the answer obeys every rule, and how close it is to that (log(1 - score) /
    log(1e-4)). Signed alike on purpose: with features that are large where halting is right and small where it is
    wrong, punishing a bad halt moves the bias, not the weights that make a good halt likely (the log-doubts of
    `confidence_features`, large in magnitude where the answer is sure, tie the two together)."""
    doubt, entropy = _cell_doubt_and_entropy(logits)
    sure = doubt / math.log(1e-6)  # in [0, 1]: 1 where 1 - max p <= 1e-6, 0 where it is 1
    closeness = (1.0 - score.float()).clamp(1e-4, 1.0).log() / math.log(1e-4)
    return torch.stack([sure.min(-1).values, sure.mean(-1), 1.0 - entropy.mean(-1), (score >= 1).float(),
                        closeness], -1)


def rms_norm(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last axis, without a gain, computed in float32."""
    h32 = h.float()
    return (h32 * torch.rsqrt(h32.square().mean(-1, keepdim=True) + eps)).to(h.dtype)


def swiglu_width(dim: int, expansion: float) -> int:
    """The official inner width: round(expansion * dim * 2/3), rounded up to a multiple of 256."""
    return -(round(expansion * dim * 2 / 3) // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, dim: int, expansion: float):
        super().__init__()
        inner = swiglu_width(dim, expansion)
        self.gate_up = lecun_linear(dim, 2 * inner)
        self.down = lecun_linear(inner, dim)

    def forward(self, h):
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def rope_tables(length: int, head_dim: int, base: float = 10000.0):
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    return torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()


def apply_rope(q, cos, sin):
    q1, q2 = q.chunk(2, dim=-1)
    return q * cos + torch.cat([-q2, q1], -1) * sin


class Attention(nn.Module):
    """Non-causal multi-head self-attention with optional RoPE."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = lecun_linear(dim, 3 * dim)
        self.out = lecun_linear(dim, dim)

    def forward(self, h, rope=None):
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Post-norm. mlp_t: in ``[B, D, L]``, h = rmsnorm(h + SwiGLU_L(h)) normalised over the sequence axis, as
    official; attention: h = rmsnorm(h + attn(h)). Then h = rmsnorm(h + SwiGLU_D(h)) over channels."""

    def __init__(self, cfg: TRMConfig):
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.mixer = cfg.mixer
        if cfg.mixer == "attention":
            self.attn = Attention(cfg.hidden, cfg.heads)
        else:
            self.mlp_t = SwiGLU(cfg.latent_len, cfg.expansion)
        self.ffn = SwiGLU(cfg.hidden, cfg.expansion)

    def forward(self, h, rope=None):
        if self.mixer == "attention":
            h = rms_norm(h + self.attn(h, rope), self.eps)
        else:
            h = h.transpose(1, 2)
            h = rms_norm(h + self.mlp_t(h), self.eps).transpose(1, 2)
        return rms_norm(h + self.ffn(h), self.eps)


class SparseEmbedding(nn.Module):
    """The per-identifier embedding as the official ``CastedSparseEmbedding``: the table is a buffer (no gradient,
    no optimizer state the size of the table); in training the batch's rows are gathered into a local tensor that
    carries the gradient, and :class:`~agents.model.optim.SignSGD` updates those rows only. Evaluation reads the table.
    As official, one gathered batch per optimizer step: a second call before the step replaces the first."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim))
        self.local: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids, rows with gradient) of the last batch

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids]
        if self.training and torch.is_grad_enabled():
            rows.requires_grad_()
            self.local = (ids, rows)
        return rows


class SupervisionOutput(NamedTuple):
    y: torch.Tensor  # answer embedding after the step (carries gradient from the last recursion)
    z: torch.Tensor
    logits: torch.Tensor  # conditional logits, after the step [B, L, V]
    reference_logits: torch.Tensor  # logits before the step (no gradient) [B, L, V]
    halt_logit: torch.Tensor  # [B]
    value: torch.Tensor  # [B]
    nfe: int


def _forward_pass(model: TRM, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
    rope = (model.rope_cos, model.rope_sin) if model.cfg.pos == "rope" else None
    h = h + injection
    for layer in model.layers:
        h = layer(h, rope)
    return h


@functools.cache
def _compiled_forward_pass():
    return torch.compile(_forward_pass, dynamic=False)


class TRM(nn.Module):
    def __init__(self, cfg: TRMConfig):
        super().__init__()
        if not (cfg.seq_len and cfg.vocab_size):
            raise ValueError("TRMConfig has no seq_len/vocab_size yet: size it for a task with cfg.for_task(task)")
        self.cfg = cfg
        D = cfg.hidden
        self.embed_scale = math.sqrt(D)
        self.token_embedding = nn.Embedding(cfg.vocab_size, D)
        trunc_normal_(self.token_embedding.weight, 1.0 / self.embed_scale)
        if cfg.puzzle_emb_ndim:
            # the per-identifier embedding: zero at start, trained by sign-SGD (see `configure_optimizers`)
            self.puzzle_embedding = SparseEmbedding(cfg.num_puzzle_ids, cfg.puzzle_emb_ndim)
        if cfg.pos == "learned":
            self.position_embedding = nn.Parameter(trunc_normal_(torch.empty(cfg.latent_len, D),
                                                                 1.0 / self.embed_scale))
        elif cfg.pos == "rope":
            cos, sin = rope_tables(cfg.latent_len, D // cfg.heads, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.step_embedding:
            # as the official DIS code's timestep_embed: steps 1..N_sup, two spare rows
            self.step_embedding = nn.Embedding(cfg.step_embedding + 2, D)
            trunc_normal_(self.step_embedding.weight, 1.0 / self.embed_scale)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.L_layers))
        # fixed (untrained) initial states of y and z, unit scale like the rms-normed latents
        self.register_buffer("y_init", trunc_normal_(torch.empty(D), 1.0))
        self.register_buffer("z_init", trunc_normal_(torch.empty(D), 1.0))
        self.output_head = lecun_linear(D, cfg.vocab_size)
        self._new_heads()
        self.compiled = False  # see compile_f

    def _new_heads(self) -> None:
        """The halting (Q) head and the value head, on y or, with ``halt_readout`` "confidence" or "rules", on
        features of the decoded answer (`_head_inputs`): a frozen network's y was never trained to say how sure it
        is."""
        size = ANSWER_READOUTS.get(self.cfg.halt_readout, self.cfg.hidden)
        device = self.output_head.weight.device
        self.halt_head = nn.Linear(size, 1, device=device)
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, -5.0)  # p(halt) ~ 0.7% until trained, as official
        self.value_head = nn.Linear(size, 1, device=device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def set_halt_readout(self, readout: str) -> None:
        """Switch what the halting and value heads read; heads of a different input size start afresh (so build
        the optimizer after this). The model gets a new config; the old one, wherever it is held, is unchanged.
        ``"rules"`` needs the task's rules (:meth:`set_rules`)."""
        if readout not in HALT_READOUTS:
            raise ValueError(f"halt_readout must be one of {HALT_READOUTS}, got {readout!r}")
        size = ANSWER_READOUTS.get(self.cfg.halt_readout, self.cfg.hidden)
        self.cfg = replace(self.cfg, halt_readout=readout)
        if ANSWER_READOUTS.get(readout, self.cfg.hidden) != size:
            self._new_heads()

    def set_rules(self, task) -> None:
        """The task whose rules ``halt_readout="rules"`` checks the decoded answer against (its label-free
        ``rule_score``: no label is read, and no forward pass of f is spent). `load_trained` sets it for every
        network it loads; a task without rules (ARC) is refused when the readout is used."""
        self.rules = task
        self.__dict__.pop("_rule_contexts", None)

    def configure_optimizers(self, lr: float, weight_decay: float, betas=(0.9, 0.95), optimizer: str = "adam_atan2",
                             weight_decay_scope: str = "all", puzzle_emb_lr: float | None = None,
                             puzzle_emb_weight_decay: float | None = None,
                             gather=None) -> list[torch.optim.Optimizer]:
        """The optimizers, as the official ``pretrain.py`` builds them: Adam-atan2 (or AdamW) with weight decay on
        every parameter (``weight_decay_scope="matrices"``: only on matrices other than embeddings, our older
        choice), and sign-SGD with decoupled weight decay on the per-identifier embedding, at its own learning rate
        (default: ``lr``) and weight decay (default: ``weight_decay``), on the rows of the batch only; ``gather``
        (data-parallel) concatenates a tensor over the ranks, so every rank applies every rank's rows."""
        from .optim import OPTIMIZERS, SignSGD

        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if weight_decay_scope not in ("all", "matrices"):
            raise ValueError(f"weight_decay_scope must be 'all' or 'matrices', got {weight_decay_scope!r}")
        embeddings = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
        decay, no_decay = [], []
        for p in self.parameters():  # (the identifier table is a buffer: SignSGD's, below)
            keep = weight_decay_scope == "matrices" and (p.ndim < 2 or any(p is e for e in embeddings))
            (no_decay if keep else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizers = [OPTIMIZERS[optimizer](groups, lr=lr, betas=tuple(betas))]
        if self.cfg.puzzle_emb_ndim:
            optimizers.append(SignSGD([self.puzzle_embedding], lr=lr if puzzle_emb_lr is None else puzzle_emb_lr,
                                      weight_decay=weight_decay if puzzle_emb_weight_decay is None
                                      else puzzle_emb_weight_decay, gather=gather))
        return optimizers

    # -- embeddings and state -----------------------------------------------------------------------------
    def embed(self, puzzle: torch.Tensor, step_index: torch.Tensor | None = None,
              puzzle_id: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``[B, latent_len, D]`` from tokens ``[B, L]``: the identifier's embedding in slot 0 (identifier 0, the
        one Sudoku and Maze have, when ``puzzle_id`` is None) and zero padding in the other slots, then the step
        embedding (index ``step_index + 1``, as official DIS) and positions, scaled by sqrt(D)."""
        cfg = self.cfg
        x = self.token_embedding(puzzle)
        B = x.shape[0]
        if cfg.puzzle_emb_len:
            if cfg.puzzle_emb_ndim:
                ids = puzzle_id if puzzle_id is not None else torch.zeros(B, dtype=torch.long, device=x.device)
                slots = self.puzzle_embedding(ids).to(x.dtype)
                slots = F.pad(slots, (0, cfg.puzzle_emb_len * cfg.hidden - cfg.puzzle_emb_ndim))
            else:
                slots = x.new_zeros(B, cfg.puzzle_emb_len * cfg.hidden)
            x = torch.cat([slots.view(B, cfg.puzzle_emb_len, cfg.hidden), x], 1)
        if cfg.step_embedding and step_index is not None:
            x = x + self.step_embedding(step_index.clamp(max=cfg.step_embedding - 1) + 1)[:, None]
        if cfg.pos == "learned":
            x = 0.707106781 * (x + self.position_embedding)  # 1/sqrt(2) keeps the variance, as official
        return self.embed_scale * x

    def step_input(self, puzzle: torch.Tensor, answer: torch.Tensor | None = None,
                   step_index: torch.Tensor | None = None, y: torch.Tensor | None = None,
                   puzzle_id: torch.Tensor | None = None) -> torch.Tensor:
        """x for a supervision step: the puzzle, or with ``input_from_answer`` the previous decoded answer, plus
        the step index (ignored without a step embedding). A caller that keeps no answer (the halting env) gives
        y instead: the answer is then y's readout with the givens kept, and the puzzle before the first step."""
        if not self.cfg.input_from_answer:
            return self.embed(puzzle, step_index, puzzle_id)
        if answer is None:
            if y is None:
                raise ValueError("input_from_answer: step_input needs the previous answer or y to decode it from")
            answer = self.output_head(y[:, self.cfg.puzzle_emb_len:]).argmax(-1)
            if self.cfg.keeps_givens:
                answer = torch.where(puzzle != 0, puzzle, answer)
            if step_index is not None:
                answer = torch.where(step_index.reshape(-1, 1) == 0, puzzle, answer)
        return self.embed(answer, step_index, puzzle_id)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.cfg.latent_len, self.cfg.hidden)
        return self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone()

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        """``[B, 2, latent_len, D]``: (y, z) stacked, the MDP's latent."""
        return torch.stack(self.initial_state(puzzle.shape[0]), 1)

    # -- the recursion ----------------------------------------------------------------------------------------
    def f(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        """The shared network: one forward pass (one NFE); compiled after :meth:`compile_f`."""
        return (_compiled_forward_pass() if self.compiled else _forward_pass)(self, h, injection)

    def compile_f(self, enabled: bool = True) -> TRM:
        """Run f through ``torch.compile`` (static shapes; the weights are the graph's inputs, so TRMs of the same
        sizes share its graphs: one per batch shape and pattern of inputs that carry a gradient). A flag, so a copy
        of the model (the EMA's, for evaluation) is compiled too."""
        self.compiled = enabled
        return self

    def recursion_call(self, c: int, x, y, z, n: int | None = None):
        """Call ``c`` (0 ... n) of a latent recursion, one forward pass: z = f(z, y + x) n times, then y = f(y, z)."""
        if c < (self.cfg.n if n is None else n):
            return y, self.f(z, y + x)
        return self.f(y, z), z

    def latent_recursion(self, x, y, z, n: int):
        for c in range(n + 1):
            y, z = self.recursion_call(c, x, y, z, n)
        return y, z

    def deep_recursion(self, x, y, z, T: int, n: int):
        """T latent recursions, the first T - 1 without gradient (they build no graph)."""
        with torch.no_grad():
            for _ in range(T - 1):
                y, z = self.latent_recursion(x, y, z, n)
        return self.latent_recursion(x, y, z, n)

    def _head_inputs(self, y: torch.Tensor, logits: torch.Tensor | None = None, puzzle: torch.Tensor | None = None):
        """What the halting (Q) head and the value head read, each computed once: TRM's Q head reads position 0
        (a puzzle-embedding slot when there is one, else the first cell) or the mean of y, the value head the mean
        of y; with ``halt_readout="confidence"`` both read the readout's confidence (``logits``, computed from y
        when not given), with ``"rules"`` `rules_features`: the same, signed alike, and the decoded answer checked
        against ``puzzle``'s rules. Any batch dims."""
        readout = self.cfg.halt_readout
        if readout in ANSWER_READOUTS:
            if logits is None:
                logits = self.output_head(y[..., self.cfg.puzzle_emb_len:, :])
            h = (rules_features(logits, self.answer_rule_score(puzzle, logits)) if readout == "rules"
                 else confidence_features(logits))
            return h, h
        mean = y.mean(-2)
        return (y[..., 0, :] if readout == "first" else mean), mean

    def answer_rule_score(self, puzzle: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        """The rule score of the answer decoded from ``logits`` (givens kept, as the MDP core keeps them)."""
        rules = getattr(self, "rules", None)
        if rules is None or puzzle is None:
            raise ValueError("halt_readout 'rules' checks the decoded answer against the puzzle's rules: give the "
                             "network its task (model.set_rules(task); load_trained does) and the puzzle")
        answer = logits.argmax(-1)
        if self.cfg.keeps_givens:
            answer = torch.where(puzzle != 0, puzzle, answer)
        shape = answer.shape
        puzzle, answer = puzzle.reshape(-1, shape[-1]), answer.reshape(-1, shape[-1])
        return rules.rule_score(puzzle, answer, self._rule_context(puzzle)).reshape(shape[:-1])

    def _rule_context(self, puzzle: torch.Tensor):
        """The task's rule context of each puzzle row, computed once per distinct puzzle: an episode checks every
        step's answer against the same puzzle, and a maze's context is a breadth-first search (100 ms per 512
        puzzles on a CPU core, against 0.4 ms for the check given it). Only for a task that says its context is
        costly (``Task.costly_rule_context``); the others compute theirs faster than a cache looks it up (None:
        ``rule_score`` computes it). Reads the puzzles back to the host."""
        if not self.rules.costly_rule_context:
            return None
        cache = self.__dict__.setdefault("_rule_contexts", {})
        keys = [row.tobytes() for row in puzzle.cpu().numpy()]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in cache}.values())
        if missing:
            if len(cache) + len(missing) > 200_000:  # (a bound on memory, far above a training pool)
                cache.clear()
                missing = sorted({k: i for i, k in enumerate(keys)}.values())
            context = self.rules.rule_context(puzzle[missing])
            if context is None:
                return None
            for j, i in enumerate(missing):
                cache[keys[i]] = context[j]
        return torch.stack([cache[k] for k in keys])

    def halt_logit(self, y: torch.Tensor, logits: torch.Tensor | None = None,
                   puzzle: torch.Tensor | None = None) -> torch.Tensor:
        return self.halt_head(self._head_inputs(y, logits, puzzle)[0]).squeeze(-1)

    def value(self, y: torch.Tensor, logits: torch.Tensor | None = None,
              puzzle: torch.Tensor | None = None) -> torch.Tensor:
        return self.value_head(self._head_inputs(y, logits, puzzle)[1]).squeeze(-1)

    def readout(self, y: torch.Tensor, puzzle: torch.Tensor | None = None):
        """(logits [B, L, V], halt logit [B], value [B]) from the answer embedding (and the puzzle, which the
        "rules" readout checks the answer against)."""
        logits = self.output_head(y[:, self.cfg.puzzle_emb_len:])
        halt_in, value_in = self._head_inputs(y, logits, puzzle)
        return logits, self.halt_head(halt_in).squeeze(-1), self.value_head(value_in).squeeze(-1)

    def forward(self, puzzle: torch.Tensor, latent: torch.Tensor, step_index: torch.Tensor | None = None,
                answer: torch.Tensor | None = None, puzzle_id: torch.Tensor | None = None) -> SupervisionOutput:
        """One supervision step from the MDP state: the puzzle, the latent ``[B, 2, latent_len, D]`` (y, z), the
        step count, the current answer (see :meth:`step_input`) and the puzzle's identifier (ARC's variants; 0
        when None). The trainers, evaluation, the env policy and PPO's actor all act through this one call."""
        y, z = latent[:, 0], latent[:, 1]
        return self.supervision_step(self.step_input(puzzle, answer, step_index, y, puzzle_id), y, z, puzzle=puzzle)

    def supervision_step(self, x, y, z, T: int | None = None, n: int | None = None,
                         puzzle: torch.Tensor | None = None) -> SupervisionOutput:
        """One supervision step from carry (y, z): the reference logits before it, the conditional ones after."""
        T = self.cfg.T if T is None else T
        n = self.cfg.n if n is None else n
        with torch.no_grad():
            reference_logits = self.output_head(y[:, self.cfg.puzzle_emb_len:])
        y, z = self.deep_recursion(x, y, z, T, n)
        logits, halt_logit, value = self.readout(y, puzzle)
        return SupervisionOutput(y, z, logits, reference_logits, halt_logit, value, T * (n + 1))
