"""Atomic file writes: nothing is lost or half-written if a run dies mid-save."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path`` (``<name>.<random>.tmp``), flush it to disk, then
    rename it onto ``path``. The file gets the permissions a plain ``open`` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves beside ``path`` when a process is killed mid-write
    (call it when a run starts, before anything writes to ``path``). Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
