"""Checkpoints: written atomically (temporary file in the same folder, then rename), verified on load (a SHA-256
of the payload is stored with it: the torch format has no checksum of its own), read with ``weights_only=True`` so
loading never runs pickled code, and kept ``keep`` deep (``checkpoint.pt``, ``checkpoint.pt.1``, ...) so a resume
can fall back to the newest valid one."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from recursion_env.atomic import atomic_write

FORMAT = "recursion-env checkpoint v2"


#: the files a run needs to load and resume, which no other output may replace
RUN_DATA = ("checkpoint.pt", "config.json", "train_metrics.json", "ppo_metrics.json")
#: what a run folder holds; a fresh run refuses a folder that has any of them unless told to overwrite
RUN_FILES = (*RUN_DATA, "tb", "plots", "looks")


def run_files(out) -> list[Path]:
    """The run in folder ``out``: its :data:`RUN_FILES` there, and its checkpoint's backups (``checkpoint.pt.N``)
    and set-aside corrupt copies (not the temporary files of a save in progress)."""
    out = Path(out)
    return [out / n for n in RUN_FILES if (out / n).exists()] + sorted(
        p for p in out.glob("checkpoint.pt.*") if p.suffix[1:].isdigit() or ".corrupt" in p.name)


def guard_output(path, overwrite: bool, flag: str = "--overwrite") -> Path:
    """An output file a command is about to write: refused when it is one of a run folder's own files (whatever
    ``overwrite`` says: the run would no longer load), or when it exists and ``overwrite`` is not given."""
    path = Path(path)
    own = path.name in RUN_DATA or path.name.startswith("checkpoint.pt.")
    if own and any((path.parent / f).exists() for f in ("checkpoint.pt", "config.json")):
        raise ValueError(f"{path} is a file of the run in {path.parent}: write the output elsewhere")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists: pass {flag} to replace it, or give another path")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file path")
    return path


def map_leaves(fn, obj):
    """``fn`` applied to every leaf of nested dicts, lists and tuples (the containers rebuilt, same types)."""
    if isinstance(obj, dict):
        return {k: map_leaves(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_leaves(fn, v) for v in obj)
    return fn(obj)


def _plain_leaf(obj):
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj.item() if isinstance(obj, np.generic) else obj


def _plain(obj):
    """Numpy arrays -> tensors, numpy scalars -> Python, recursively: what ``weights_only`` loading accepts."""
    return map_leaves(_plain_leaf, obj)


def _rotate(path: Path, keep: int) -> None:
    """Before ``path`` is replaced: ``path.(i)`` -> ``path.(i+1)``, the oldest beyond ``keep`` dropped, and the
    current ``path`` linked (or copied) to ``path.1``; ``path`` itself stays whole throughout."""
    backups = [path.with_name(f"{path.name}.{i}") for i in range(1, keep)]
    if not backups or not path.exists():
        return
    backups[-1].unlink(missing_ok=True)
    for older, newer in zip(reversed(backups[1:]), reversed(backups[:-1])):
        if newer.exists():
            os.replace(newer, older)
    try:
        os.link(path, backups[0])
    except OSError:  # no hard links here: a copy does the same
        shutil.copy2(path, backups[0])


def save_checkpoint(path, state: dict, keep: int = 1) -> Path:
    """Write ``state`` to ``path`` with its checksum; with ``keep > 1`` the previous ``keep - 1`` versions stay as
    ``path.1`` (the newest) ... ``path.(keep-1)``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(_plain(state), buffer)
    payload = buffer.getvalue()
    wrapped = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    _rotate(path, keep)
    return atomic_write(path, lambda f: torch.save(wrapped, f))


def read_yaml(path, what: str = "YAML file"):
    """A user's YAML file (``yaml.safe_load``: no code runs), or one ``ValueError`` line naming the file, the line
    and column, and what is wrong: not a file, not UTF-8, not YAML."""
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the {what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ValueError(f"{path}: the {what} is not valid YAML ({where}{problem})") from None
    except RecursionError:
        raise ValueError(f"{path}: the {what} nests too deeply to read") from None


def read_torch(source, path, map_location="cpu", what: str = "checkpoint"):
    """``torch.load(source, weights_only=True)``; anything torch cannot read becomes a one-line ``ValueError``
    naming ``path`` (``source`` is the file or, for a checkpoint's payload, its bytes). torch's own text (several
    lines, colour codes, and advice to load with ``weights_only=False``, which would run the file's code) is not
    passed on."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a valid or trusted {what}: it holds objects other than tensors and plain "
                         "values (possibly code), which are never loaded") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
        reason = first[0][:120] if first else type(e).__name__
        raise ValueError(f"{path}: not a valid {what} ({type(e).__name__}: {reason})") from None


#: the model zoo: ``NAME.pt`` (weights, as :func:`save_checkpoint` writes them) and ``NAME.json`` (its manifest)
ZOO_DIR = Path(__file__).parent / "zoo"
ZOO_PREFIX = "zoo:"


def zoo_manifest(name: str) -> dict:
    """The manifest of zoo entry ``name`` (``ZOO_DIR/NAME.json``), or one error naming the entries there are."""
    import json

    path = ZOO_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(f.stem for f in ZOO_DIR.glob("*.json"))
        raise ValueError(f"zoo:{name}: no such zoo entry (known: {', '.join(known) or 'none'}; recursion-env zoo "
                         "list)")
    return json.loads(path.read_text())


def zoo_file(name: str) -> Path:
    """The weights file of zoo entry ``name``, after checking its SHA-256 against the manifest's."""
    expected = zoo_manifest(name).get("sha256")
    weights = ZOO_DIR / f"{name}.pt"
    if not weights.is_file():
        raise ValueError(f"zoo:{name}: its weights file {weights} is missing (rebuild it: recursion-env zoo build "
                         f"{name} --overwrite)")
    if hashlib.sha256(weights.read_bytes()).hexdigest() != expected:
        raise ValueError(f"{weights}: its SHA-256 does not match {name}.json's; the file is damaged "
                         f"(rebuild it: recursion-env zoo build {name} --overwrite)")
    return weights


def resolve_run(run):
    """``zoo:NAME`` -> that entry's verified weights file; anything else as it is."""
    if isinstance(run, str) and run.startswith(ZOO_PREFIX):
        return zoo_file(run[len(ZOO_PREFIX):])
    return run


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state saved by :func:`save_checkpoint` (a run folder, a file, or ``zoo:NAME``); a file whose checksum
    does not match, or that torch cannot read, is a ``ValueError`` naming it. Files without a checksum (written by
    older versions, or imported) load as they are."""
    path = Path(resolve_run(path))
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    state = read_torch(path, path)
    if isinstance(state, dict) and {"format", "sha256", "payload"} & set(state):
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: corrupted checkpoint (format {state.get('format')!r}, expected {FORMAT!r})")
        payload = state.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
            raise ValueError(f"{path}: corrupted checkpoint (no payload)")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != state.get("sha256"):
            raise ValueError(f"{path}: corrupted checkpoint (its SHA-256 does not match the one stored with it)")
        state = read_torch(io.BytesIO(data), path, map_location)
    elif map_location != "cpu":  # a file without a checksum (older, or not ours): read again onto the device
        state = read_torch(path, path, map_location)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a recursion-env checkpoint (expected a dict, got {type(state).__name__})")
    return state


def load_newest_valid(path, map_location="cpu", set_aside: bool = False) -> tuple[dict, Path]:
    """For ``--resume``: ``path`` if it verifies, else the newest of ``path.1``, ``path.2``, ... that does (with a
    warning naming what was skipped and why). ``ValueError`` when none does. ``set_aside`` (a resume that will
    write): the invalid files newer than the one returned are renamed ``NAME.corrupt`` (``.corrupt.1``, ... when
    taken), so the next save neither rotates them into the kept backups nor pushes a valid backup out."""
    path = Path(path)
    backups = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    candidates = [path] + sorted(backups, key=lambda p: int(p.suffix[1:]))
    problems, invalid = [], []
    for candidate in candidates:
        if not candidate.exists():
            problems.append(f"{candidate}: missing")
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except ValueError as e:
            problems.append(str(e))
            invalid.append(candidate)
            continue
        moved = [_set_aside(p) for p in invalid] if set_aside else []
        if problems:
            warnings.warn(f"resuming from {candidate}, the newest valid checkpoint; skipped: {'; '.join(problems)}"
                          + "".join(f"; moved {a.name} to {b.name}" for a, b in zip(invalid, moved)), stacklevel=2)
        return state, candidate
    if path.parent.is_dir() and not candidates[0].exists() and not backups and (path.parent / "config.json").exists():
        raise ValueError(f"{path.parent} holds a run stopped before its first checkpoint: there is nothing to "
                         "resume; start it again with the same train command and --overwrite")
    raise ValueError("no valid checkpoint to resume from: " + "; ".join(problems))


def _set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the rotation (never over another file)."""
    target, i = path.with_name(path.name + ".corrupt"), 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}.corrupt.{i}")
    os.replace(path, target)
    return target


class StopRequest:
    """SIGTERM or SIGINT ask a training loop to stop at the next step boundary (``requested``): it finishes the
    optimizer step, writes a checkpoint and returns, so ``--resume`` continues exactly. A second signal stops at
    once (the default action). Outside the main thread (where Python cannot install handlers) it never fires.

        with StopRequest() as stop:
            while training:
                ...one step...
                if stop.requested:
                    break
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second one: as if no handler were here
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this step and writing a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def report(self, where: str, out) -> None:
        """Tell the user where the run stopped and how to continue it."""
        print(f"stopped by {self.requested} after {where}: checkpoint written; continue with train --resume --out "
              f"{out}", file=sys.stderr)
