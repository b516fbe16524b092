"""Puzzle tasks: ``make_task(name, **kw)`` and saved datasets.

Every task has ``name``, ``seq_len``, ``vocab_size`` and ``generate(n, seed)``, ``verify(inputs, answers)``,
``rule_counts``/``rule_score`` (the label-free count and fraction of rules satisfied),
``parse``/``format``/``to_line``, ``augment``.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from .arc import ARCTask
from .base import PuzzleBatch, Task
from .maze import MazeTask
from .nqueens import NQueensTask
from .sudoku import SudokuTask

TASKS: dict[str, type[Task]] = {"sudoku": SudokuTask, "maze": MazeTask, "nqueens": NQueensTask, "arc": ARCTask}
DATASET_VERSION = 1


def make_task(name: str, **kwargs) -> Task:
    """Build a task by name: ``sudoku`` (size, box, min_givens, max_givens), ``maze`` (size, loop_fraction,
    min_path), ``nqueens`` (board, min_given, max_given) or ``arc`` (version, split, num_aug, seed, translate;
    the ``[arc]`` extra)."""
    try:
        cls = TASKS[name.lower().replace("-", "")]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None
    if "box" in kwargs and kwargs["box"] is not None:
        kwargs["box"] = tuple(kwargs["box"])
    return cls(**kwargs)


def build_dataset(task: Task, n: int, seed: int, chunk: int = 500, progress: bool = False,
                  workers: int = 1) -> PuzzleBatch:
    """``n`` puzzles in chunks of ``chunk``; chunk ``k`` is ``task.generate(chunk, seed=[seed, k])``, so a
    dataset is reproducible from (task, n, seed, chunk), whatever ``workers`` (processes generating chunks at
    once), and shows a progress bar while it builds."""
    from tqdm import tqdm

    if n <= 0:
        raise ValueError(f"build_dataset: n must be positive, got {n}")
    chunks = [(k, min(chunk, n - start)) for k, start in enumerate(range(0, n, chunk))]
    with tqdm(total=n, desc=f"generating {task.name}", unit="puzzle", disable=not progress) as bar:
        if workers > 1 and len(chunks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawned, not forked: a parent that ran torch may hold thread-pool locks a fork would copy
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=multiprocessing.get_context("spawn")) as ex:
                futures = [ex.submit(_generate_chunk, task.name, task.kwargs, m, [seed, k]) for k, m in chunks]
                parts = []
                for f in futures:
                    parts.append(f.result())
                    bar.update(len(parts[-1]))
        else:
            parts = []
            for k, m in chunks:
                parts.append(task.generate(m, seed=[seed, k]))
                bar.update(len(parts[-1]))
    return PuzzleBatch.concat(parts)


def _generate_chunk(name: str, kwargs: dict, m: int, seed: list[int]) -> PuzzleBatch:
    return make_task(name, **kwargs).generate(m, seed=seed)


def save_dataset(path, task: Task, batch: PuzzleBatch, seed=None) -> Path:
    """Write ``batch`` as ``.npz`` with a JSON header (task, kwargs, seed, version, n). Atomic: written to a
    temporary file in the same folder, then renamed."""
    header = {"task": task.name, "kwargs": task.kwargs, "seed": seed, "version": DATASET_VERSION,
              "n": len(batch), "seq_len": task.seq_len, "vocab_size": task.vocab_size}
    arrays = {"inputs": batch.inputs, "labels": batch.labels,
              "header": np.asarray(json.dumps(header))}
    for k, v in batch.meta.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == len(batch) and v.dtype.kind in "biufU":
            arrays[f"meta_{k}"] = v
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


#: what a damaged or foreign .npz raises inside NumPy's reader (truncated, bit-flipped, not a zip, pickled data)
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of a dataset file; ``ValueError`` naming the file for anything unreadable."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a dataset file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except _UNREADABLE as e:
        raise ValueError(f"{path}: not a readable .npz dataset ({type(e).__name__}: {e})") from None
    missing = [k for k in ("header", "inputs", "labels") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(repr(k) for k in missing)}; found {sorted(arrays)}")
    try:
        header = json.loads(str(arrays.pop("header")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    return header, arrays


def load_dataset(path) -> tuple[Task, PuzzleBatch, dict]:
    """Read a dataset written by :func:`save_dataset`: returns (task, batch, header). Never unpickles. Every
    problem (an unreadable file, a header without a task, tokens that are not integers of the task's vocabulary,
    labels that do not solve their puzzle) is a ``ValueError`` naming the file and the field."""
    path = Path(path)
    header, arrays = _read_npz(path)
    if header.get("version") != DATASET_VERSION:
        raise ValueError(f"{path}: dataset version {header.get('version')!r} is not {DATASET_VERSION}")
    if not isinstance(header.get("task"), str) or not isinstance(header.get("kwargs"), dict):
        raise ValueError(f"{path}: header needs 'task' (a name) and 'kwargs' (an object), got {header!r}"[:300])
    try:
        task = make_task(header["task"], **header["kwargs"])
    except TypeError as e:
        raise ValueError(f"{path}: header kwargs do not fit task {header['task']!r} ({e})") from None
    for field in ("inputs", "labels"):
        a = arrays[field]
        if a.dtype.kind not in "iu" or a.ndim != 2:
            raise ValueError(f"{path}: {field} must be a 2-D integer array, got {a.dtype} {a.shape}")
    meta = {k[5:]: v for k, v in arrays.items() if k.startswith("meta_")}
    batch = PuzzleBatch(task.name, arrays["inputs"], arrays["labels"], meta)
    if batch.inputs.shape[1] != task.seq_len:
        raise ValueError(f"{path}: rows have {batch.inputs.shape[1]} cells, task {task!r} needs {task.seq_len}")
    task.check_tokens(batch.inputs, f"{path}: inputs")
    task.check_tokens(batch.labels, f"{path}: labels")
    labelled = batch.labels.any(1)  # an all-zero row is a puzzle without a label (N-Queens from text)
    if labelled.any():
        bad = np.flatnonzero(~task.verify(batch.inputs[labelled], batch.labels[labelled]))
        if len(bad):
            rows = np.flatnonzero(labelled)[bad]
            raise ValueError(f"{path}: {len(rows)} label(s) do not solve their puzzle or break its givens, e.g. "
                             f"row {int(rows[0])}")
    return task, batch, header


def load_puzzles(path, task: Task | None = None) -> tuple[Task, PuzzleBatch]:
    """Load puzzles from any supported file: a saved ``.npz`` dataset, a folder converted by ``data convert`` (a
    memory-mapped :class:`~recursion_env.tasks.store.PuzzleStore`, read lazily), a Sudoku-Extreme style ``.csv``
    (``source,question,answer,rating``), or a text file of puzzle lines for ``task`` (labels by solver for
    Sudoku; zeros elsewhere, where only the verifier can judge)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        if not (path / "meta.json").exists() and not (path / "progress.json").exists():
            raise ValueError(f"{path}: is a folder, not a file of puzzles nor a dataset converted by "
                             "`recursion-env data convert`")
        from .store import PuzzleStore

        store = PuzzleStore(path)
        if task is not None and (task.name, task.seq_len) != (store.task.name, store.task.seq_len):
            raise ValueError(f"{path}: holds {store.task!r}, expected {task!r}")
        return store.task, store
    if path.suffix == ".npz":
        loaded_task, batch, _ = load_dataset(path)
        if task is not None and (task.name, task.seq_len) != (loaded_task.name, loaded_task.seq_len):
            raise ValueError(f"{path}: holds {loaded_task!r}, expected {task!r}")
        return loaded_task, batch
    if task is None:
        task = make_task("sudoku", size=9)
    if path.suffix == ".csv":
        if not isinstance(task, SudokuTask):
            raise ValueError(f"{path}: CSV files are read for sudoku only, not {task.name}")
        return task, task.read_csv(path)
    if isinstance(task, SudokuTask):
        return task, task.read_puzzles(path)
    inputs = task.read_lines(path)
    if isinstance(task, MazeTask):
        labels = np.stack([task.canonical_path(x) for x in inputs]) if len(inputs) else np.zeros_like(inputs)
        return task, PuzzleBatch(task.name, inputs, labels, {})
    # N-Queens completions are not unique: no label, the verifier judges
    return task, PuzzleBatch(task.name, inputs, np.zeros_like(inputs), {"labels_known": False})


__all__ = ["Task", "PuzzleBatch", "SudokuTask", "MazeTask", "NQueensTask", "ARCTask", "TASKS", "make_task",
           "build_dataset", "save_dataset", "load_dataset", "load_puzzles"]
