"""Numeric precision and compilation of the network: what the machine runs fastest without changing the science.

``--precision`` ``auto`` (the default) | ``bf16`` | ``fp32``. bf16 is autocast with fp32 master weights: the
matrix products run in bfloat16, while the norm statistics (``rms_norm``), the stable-max/cross-entropy loss, the
halting logits and the carried latent stay in float32, as the official code keeps them (it trains with
``forward_dtype: bfloat16``). ``auto`` picks bf16 where the hardware has native bf16 matrix units: every CUDA card
that supports bf16, and CPUs with AMX or AVX512-BF16 (asked of PyTorch, which asks the CPU); fp32 elsewhere, so
no machine gets slower.

``--compile`` ``auto`` | ``on`` | ``off``: ``torch.compile`` of the shared network f (one forward pass, the cost
of a step; a few graphs, one per pattern of inputs that carry a gradient, serve all T (n + 1) calls). Compiling
takes seconds to tens of seconds on a CPU (measured in ``benchmarks/step_cost.py``), excluded from the training
clock; ``auto`` compiles runs long enough to repay it.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
from functools import cache

import torch

#: what ``--precision`` means, for every command that takes it
PRECISION_HELP = ("bf16 (autocast, fp32 master weights), fp32, or auto: bf16 on CUDA and on a CPU with native "
                  "bf16 units (AMX or AVX512-BF16), else fp32")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "off")

#: ``--compile auto`` compiles a run whose budget is at least this long (training minutes, or steps at the
#: measured rate): long enough for the seconds compiling f takes to be repaid by the cheaper bf16 steps after it
#: (benchmarks/step_cost.py; the figures: BENCHMARKS.md, "Training speed")
COMPILE_AUTO_MINUTES = 10.0
COMPILE_AUTO_STEPS = 2000
#: ``eval --compile auto`` compiles a bf16 evaluation of at least this many forward passes (puzzles x NFE); an fp32
#: evaluation is not compiled by default, since compiling did not pay there (benchmarks/step_cost.py --eval; the
#: figures: BENCHMARKS.md, "Training speed")
COMPILE_AUTO_FORWARD_PASSES = 100_000


@cache
def cpu_model() -> str:
    """The CPU's model name (reported beside every speed figure)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_units() -> list[str]:
    """The native bf16 matrix units of this CPU that PyTorch found: ``amx`` and/or ``avx512_bf16`` (empty: none)."""
    found = []
    probes = {"amx": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for name, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            found.append(name)
    if found and not torch.backends.mkldnn.is_available():  # (the bf16 kernels are oneDNN's)
        return []
    return found


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (and so faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_bf16_units())


def checked_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` (else a ``ValueError`` naming the flag)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def checked_compile(mode: str | bool) -> str:
    """``mode`` as one of :data:`COMPILE_MODES` (a bool from configs written when --compile was a switch: on/off;
    else a ``ValueError`` naming the flag)."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``bf16`` or ``fp32`` for ``--precision`` on ``device``."""
    if checked_precision(precision) == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def trained_precision(state: dict) -> str:
    """The precision a checkpointed run trained in (``bf16`` or ``fp32``): saved with it; runs from before the
    option trained with bf16 autocast on CUDA and in fp32 elsewhere."""
    saved = state.get("precision")
    if saved:
        return saved
    return "bf16" if str(state.get("train_config", {}).get("device", "cpu")).startswith("cuda") else "fp32"


def autocast(precision: str, device: str | torch.device):
    """The context the network runs in: bf16 autocast, or nothing for fp32 (``precision`` resolved)."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def machine(device: str | torch.device = "cpu") -> str:
    """What a speed figure was measured on: the CUDA card's name, or the CPU model and its native bf16 units."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, native bf16: {'+'.join(cpu_bf16_units()) or 'none'}"


def describe(precision: str, device: str | torch.device) -> str:
    """One line for the start of a run: the precision used and the machine."""
    return f"precision {precision} on {torch.device(device).type} ({machine(device)})"


def compiler_available(device: str | torch.device) -> bool:
    """torch.compile's inductor needs a C++ compiler on a CPU (Triton on CUDA, which ships with torch)."""
    return torch.device(device).type == "cuda" or shutil.which("g++") is not None or shutil.which("c++") is not None


def resolve_compile(mode: str | bool, device: str | torch.device, steps: int | None = None,
                    minutes: float | None = None, forward_passes: int | None = None,
                    precision: str = "bf16") -> bool:
    """Whether to compile, for ``--compile`` and the run's budget: training ``steps``/``minutes``, or a bf16
    evaluation's ``forward_passes`` (``auto``: long enough to repay compiling, and a compiler is there)."""
    mode = checked_compile(mode)
    if mode != "auto":
        return mode == "on"
    if forward_passes is not None:
        long_enough = precision == "bf16" and forward_passes >= COMPILE_AUTO_FORWARD_PASSES
    else:
        long_enough = (minutes is not None and minutes >= COMPILE_AUTO_MINUTES) or (
            minutes is None and (steps is None or steps >= COMPILE_AUTO_STEPS))
    return long_enough and compiler_available(device)
