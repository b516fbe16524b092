"""Checkpoints: written atomically (temporary file in the same folder, then rename), read with
``weights_only=True`` so loading never runs pickled code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recursion_env.atomic import atomic_write


def _plain(obj):
    """Numpy arrays -> tensors, numpy scalars -> Python, recursively: what ``weights_only`` loading accepts."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def save_checkpoint(path, state: dict) -> Path:
    state = _plain(state)
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
