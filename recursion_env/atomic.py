"""Atomic file writes: nothing is lost or half-written if a run dies mid-save."""

from __future__ import annotations

import contextlib
import functools
import inspect
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


@contextlib.contextmanager
def folder_lock(folder, what: str = "--out"):
    """Hold an exclusive OS lock on ``folder`` (its ``.lock`` file, made with the folder) while the block runs:
    one writer per folder. The kernel drops the lock when the process dies, so a killed writer never leaves a
    stale one. A second writer gets one ``ValueError`` naming the holder's pid. (No-op where ``fcntl`` is missing.)"""
    try:
        import fcntl
    except ImportError:  # (not POSIX)
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{folder} is being written by another process (pid {holder}): wait for it to end, or "
                             f"give another {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def locks_folder(folder_of: Callable):
    """A decorator: the function runs holding :func:`folder_lock` on ``folder_of(arguments)`` (its bound
    arguments by name)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with folder_lock(folder_of(bound.arguments)):
                return fn(*args, **kwargs)
        return locked
    return wrap
