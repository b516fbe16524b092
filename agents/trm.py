"""The Tiny Recursive Model (TRM): one small shared network f applied recursively to a latent.

Names follow the paper: x is the embedded puzzle, y the answer embedding, z the reasoning latent. One
*latent recursion* updates z ``n`` times, ``z = f(z + y + x)``, then y once, ``y = f(y + z)``: n + 1 calls of f.
A *deep recursion* runs T latent recursions, the first T - 1 without gradients. A *supervision step* is one deep
recursion followed by a readout; TRM trains up to ``N_sup`` of them per example, carrying (y, z) detached from
one to the next. Every call of f is one forward pass (NFE): 16 x 3 x 7 = 336 with the defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

HALT_READOUTS = ("first", "mean", "confidence")


@dataclass
class TRMConfig:
    seq_len: int
    vocab_size: int
    hidden: int = 128  # D
    L_layers: int = 2
    mixer: str = "mlp"  # "mlp" (TRM's mlp_t: an MLP across the sequence) or "attention"
    heads: int = 4
    expansion: float = 4.0
    T: int = 3
    n: int = 6
    N_sup: int = 16
    pos: str | None = None  # "rope" or "learned"; default: rope for attention, learned for mlp
    puzzle_emb_len: int = 0  # extra latent positions carrying a per-puzzle embedding
    num_puzzle_ids: int = 0  # size of the per-puzzle embedding table (0 = none)
    step_embedding: int = 0  # number of supervision-step indices embedded into x (0 = none; DIS uses N_sup)
    input_from_answer: bool = False  # x embeds the previous decoded answer instead of the puzzle (DIS option)
    #: what the halting head reads: y at position 0 (TRM), the mean of y ("mean"), or the readout's confidence
    #: ("confidence", see `confidence_features`)
    halt_readout: str = "first"

    def __post_init__(self) -> None:
        if self.mixer not in ("mlp", "attention"):
            raise ValueError(f"mixer must be 'mlp' or 'attention', got {self.mixer!r}")
        if self.pos is None:
            self.pos = "rope" if self.mixer == "attention" else "learned"
        if self.pos not in ("rope", "learned"):
            raise ValueError(f"pos must be 'rope' or 'learned', got {self.pos!r}")
        if self.halt_readout not in HALT_READOUTS:
            raise ValueError(f"halt_readout must be one of {HALT_READOUTS}, got {self.halt_readout!r}")
        if self.mixer == "attention" and self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        for k in ("T", "n", "N_sup", "hidden", "L_layers"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    @property
    def latent_len(self) -> int:
        return self.puzzle_emb_len + self.seq_len

    @property
    def nfe_per_supervision_step(self) -> int:
        return self.T * (self.n + 1)

    def to_dict(self) -> dict:
        return asdict(self)


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 3]`` from logits ``[B, L, V]``: log(1 - max prob) of the least sure cell and averaged over cells, and
    the mean entropy / log V. A halting head on these decides from how sure the answer is; a frozen network's y was
    never trained to carry that linearly (DIS trains no halting head). Log-scaled so a linear head can be sharp."""
    logp = logits.float().log_softmax(-1)
    doubt = (-torch.expm1(logp.max(-1).values)).clamp_min(1e-6).log()  # log(1 - max p), finite gradients
    entropy = -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])
    return torch.stack([doubt.max(-1).values, doubt.mean(-1), entropy.mean(-1)], -1)


def rms_norm(h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + eps).to(h.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, expansion: float):
        super().__init__()
        inner = int(round(expansion * dim * 2 / 3))
        self.gate_up = nn.Linear(dim, 2 * inner, bias=False)
        self.down = nn.Linear(inner, dim, bias=False)

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
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, h, rope=None):
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


class SequenceMLP(nn.Module):
    """TRM's mlp_t mixer: a SwiGLU across the sequence axis (positions mix, channels do not)."""

    def __init__(self, length: int, expansion: float):
        super().__init__()
        self.mlp = SwiGLU(length, expansion)

    def forward(self, h, rope=None):
        return self.mlp(h.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """Post-norm: h = rmsnorm(h + mix(h)); h = rmsnorm(h + SwiGLU(h))."""

    def __init__(self, cfg: TRMConfig):
        super().__init__()
        self.mix = (Attention(cfg.hidden, cfg.heads) if cfg.mixer == "attention"
                    else SequenceMLP(cfg.latent_len, cfg.expansion))
        self.ffn = SwiGLU(cfg.hidden, cfg.expansion)

    def forward(self, h, rope=None):
        h = rms_norm(h + self.mix(h, rope))
        return rms_norm(h + self.ffn(h))


class SupervisionOutput(NamedTuple):
    y: torch.Tensor  # answer embedding after the step (carries gradient from the last recursion)
    z: torch.Tensor
    logits: torch.Tensor  # conditional logits, after the step [B, L, V]
    reference_logits: torch.Tensor  # logits before the step (no gradient) [B, L, V]
    halt_logit: torch.Tensor  # [B]
    value: torch.Tensor  # [B]
    nfe: int


class TRM(nn.Module):
    def __init__(self, cfg: TRMConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden
        self.embed_scale = math.sqrt(D)
        self.token_embedding = nn.Embedding(cfg.vocab_size, D)
        nn.init.normal_(self.token_embedding.weight, std=1.0 / self.embed_scale)
        if cfg.pos == "learned":
            self.position_embedding = nn.Parameter(torch.randn(cfg.latent_len, D) / self.embed_scale)
        else:
            cos, sin = rope_tables(cfg.latent_len, D // cfg.heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if cfg.num_puzzle_ids and cfg.puzzle_emb_len:
            self.puzzle_embedding = nn.Embedding(cfg.num_puzzle_ids, cfg.puzzle_emb_len * D)
            nn.init.zeros_(self.puzzle_embedding.weight)
        if cfg.step_embedding:
            self.step_embedding = nn.Embedding(cfg.step_embedding, D)
            nn.init.normal_(self.step_embedding.weight, std=1.0 / self.embed_scale)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.L_layers))
        # fixed (untrained) initial states of y and z, unit scale like the rms-normed latents, as in TRM
        self.register_buffer("y_init", torch.randn(D))
        self.register_buffer("z_init", torch.randn(D))
        self.output_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self._new_heads()

    def _new_heads(self) -> None:
        """The halting (Q) head and the value head, on y or, with ``halt_readout="confidence"``, on the readout's
        confidence (`confidence_features`): a frozen network's y was never trained to say how sure it is."""
        size = 3 if self.cfg.halt_readout == "confidence" else self.cfg.hidden
        device = self.output_head.weight.device
        self.halt_head = nn.Linear(size, 1, device=device)
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, -5.0)  # p(halt) ~ 0.7% until trained
        self.value_head = nn.Linear(size, 1, device=device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def set_halt_readout(self, readout: str) -> None:
        """Switch what the halting and value heads read; heads of a different input size start afresh."""
        if readout not in HALT_READOUTS:
            raise ValueError(f"halt_readout must be one of {HALT_READOUTS}, got {readout!r}")
        changes_size = (readout == "confidence") != (self.cfg.halt_readout == "confidence")
        self.cfg.halt_readout = readout
        if changes_size:
            self._new_heads()

    # -- embeddings and state -----------------------------------------------------------------------------
    def embed(self, puzzle: torch.Tensor, step_index: torch.Tensor | None = None,
              puzzle_id: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``[B, latent_len, D]`` from tokens ``[B, L]`` (plus step index / per-puzzle embedding)."""
        cfg = self.cfg
        x = self.token_embedding(puzzle)
        if cfg.puzzle_emb_len:
            slots = (self.puzzle_embedding(puzzle_id).view(-1, cfg.puzzle_emb_len, cfg.hidden)
                     if puzzle_id is not None and cfg.num_puzzle_ids
                     else x.new_zeros(x.shape[0], cfg.puzzle_emb_len, cfg.hidden))
            x = torch.cat([slots, x], 1)
        if cfg.step_embedding and step_index is not None:
            x = x + self.step_embedding(step_index.clamp(max=cfg.step_embedding - 1))[:, None]
        if cfg.pos == "learned":
            x = x + self.position_embedding
        return self.embed_scale * x

    def step_input(self, puzzle: torch.Tensor, answer: torch.Tensor, step_index: torch.Tensor | None = None):
        """x for a supervision step: the puzzle, or with ``input_from_answer`` the previous decoded answer, plus
        the step index (ignored without a step embedding)."""
        return self.embed(answer if self.cfg.input_from_answer else puzzle, step_index)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, self.cfg.latent_len, self.cfg.hidden)
        return self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone()

    def initial_latent(self, puzzle: torch.Tensor) -> torch.Tensor:
        """``[B, 2, latent_len, D]``: (y, z) stacked, the MDP's latent."""
        return torch.stack(self.initial_state(puzzle.shape[0]), 1)

    # -- the recursion ----------------------------------------------------------------------------------------
    def f(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        """The shared network: one forward pass (one NFE)."""
        rope = (self.rope_cos, self.rope_sin) if self.cfg.pos == "rope" else None
        h = h + injection
        for layer in self.layers:
            h = layer(h, rope)
        return h

    def latent_recursion(self, x, y, z, n: int):
        for _ in range(n):
            z = self.f(z, y + x)
        y = self.f(y, z)
        return y, z

    def deep_recursion(self, x, y, z, T: int, n: int):
        """T latent recursions, the first T - 1 without gradient (they build no graph)."""
        with torch.no_grad():
            for _ in range(T - 1):
                y, z = self.latent_recursion(x, y, z, n)
        return self.latent_recursion(x, y, z, n)

    def _head_inputs(self, y: torch.Tensor, logits: torch.Tensor | None = None):
        """What the halting (Q) head and the value head read, each computed once: TRM's Q head reads position 0
        (a puzzle-embedding slot when there is one, else the first cell) or the mean of y, the value head the mean
        of y; with ``halt_readout="confidence"`` both read the readout's confidence (``logits``, computed from y
        when not given). Any batch dims."""
        readout = self.cfg.halt_readout
        if readout == "confidence":
            h = confidence_features(self.output_head(y[..., self.cfg.puzzle_emb_len:, :]) if logits is None
                                    else logits)
            return h, h
        mean = y.mean(-2)
        return (y[..., 0, :] if readout == "first" else mean), mean

    def halt_logit(self, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.halt_head(self._head_inputs(y, logits)[0]).squeeze(-1)

    def value(self, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.value_head(self._head_inputs(y, logits)[1]).squeeze(-1)

    def readout(self, y: torch.Tensor):
        """(logits [B, L, V], halt logit [B], value [B]) from the answer embedding."""
        logits = self.output_head(y[:, self.cfg.puzzle_emb_len:])
        halt_in, value_in = self._head_inputs(y, logits)
        return logits, self.halt_head(halt_in).squeeze(-1), self.value_head(value_in).squeeze(-1)

    def supervision_step(self, x, y, z, T: int | None = None, n: int | None = None) -> SupervisionOutput:
        """One supervision step from carry (y, z): the reference logits before it, the conditional ones after."""
        T = self.cfg.T if T is None else T
        n = self.cfg.n if n is None else n
        with torch.no_grad():
            reference_logits = self.output_head(y[:, self.cfg.puzzle_emb_len:])
        y, z = self.deep_recursion(x, y, z, T, n)
        logits, halt_logit, value = self.readout(y)
        return SupervisionOutput(y, z, logits, reference_logits, halt_logit, value, T * (n + 1))
