"""Datasets larger than memory: a Sudoku-Extreme CSV converted once to memory-mapped ``.npy`` files.

``convert_csv(FILE.csv, DIR)`` (the CLI's ``recursion-env data convert``) reads the CSV in blocks, checks every
row batched (cells parse, the answer has no blanks, keeps the givens and obeys the rules; optionally, with the
solver, that the question has one solution) and writes the good rows to ``DIR/inputs.npy`` and ``DIR/labels.npy``
(``uint8 [rows, seq_len]``), the others to ``DIR/rejected.tsv`` as ``line<TAB>reason``. After every block the
arrays are flushed and ``DIR/progress.json`` records the byte offset reached, so a conversion that is stopped or
killed continues where it was when run again. ``DIR/meta.json`` is written last: its presence means complete.

:class:`PuzzleStore` opens such a folder with ``mmap_mode="r"``: training draws rows from it lazily (the pages
read come from the file, and the OS can drop them), each data-parallel rank its own chunks.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write, locks_folder
from .sudoku import _DIGITS, SudokuTask

FORMAT = "recursion-env puzzle store v1"
REQUIRED = ("source", "question", "answer", "rating")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


class PuzzleStore:
    """A converted dataset folder: ``inputs``/``labels`` memory-mapped ``uint8 [n, seq_len]`` arrays (rows are
    read, and converted to int64, only when indexed) and the ``meta`` of its conversion."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            hint = (" (its conversion did not finish: run `recursion-env data convert` again to continue it)"
                    if (self.folder / "progress.json").exists() else "")
            raise ValueError(f"{self.folder}: not a converted dataset, no meta.json{hint}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from None
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        kwargs = self.meta["task_kwargs"]
        self.task = SudokuTask(**{**kwargs, **({"box": tuple(kwargs["box"])} if kwargs.get("box") else {})})
        arrays = {}
        for name in ("inputs", "labels"):
            path = self.folder / f"{name}.npy"
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a readable .npy array ({e})") from None
            if arrays[name].shape != (self.meta["rows"], self.task.seq_len):
                raise ValueError(f"{path}: shape {arrays[name].shape}, meta.json says "
                                 f"{(self.meta['rows'], self.task.seq_len)}")
        self.inputs, self.labels = arrays["inputs"], arrays["labels"]

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        return f"PuzzleStore({str(self.folder)!r}, {len(self)} rows of {self.task!r})"


def _parse_cells(task: SudokuTask, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cell strings -> ``uint8 [n, seq_len]`` and ``ok [n]`` (length and characters right), batched."""
    L = task.seq_len
    ok = np.array([len(t) == L and t.isascii() for t in texts], dtype=bool)
    raw = np.frombuffer("".join(t if good else "." * L for t, good in zip(texts, ok)).encode("ascii"),
                        dtype=np.uint8).reshape(-1, L)
    lut = np.full(256, 255, dtype=np.uint8)  # 255: not a cell character
    lut[ord(".")] = lut[ord("0")] = 0
    for v, ch in enumerate(_DIGITS[:task.size], start=1):
        lut[ord(ch)] = lut[ord(ch.lower())] = v
    cells = lut[raw]
    ok &= (cells != 255).all(1)
    return np.where(cells == 255, 0, cells).astype(np.uint8), ok


def check_rows(task: SudokuTask, questions: list[str], answers: list[str], unique: bool = False):
    """The rows of one block, checked batched: ``(inputs, labels, reasons)`` with ``reasons[i]`` None for a good
    row, else why it is rejected."""
    q, q_ok = _parse_cells(task, questions)
    a, a_ok = _parse_cells(task, answers)
    n = len(questions)
    satisfied, total = task.rule_counts(torch.from_numpy(q.astype(np.int64)), torch.from_numpy(a.astype(np.int64))) \
        if n else (torch.zeros(0), 0)
    digits = f"1-{_DIGITS[task.size - 1]}"
    checks = [  # in order: a row gets the first reason it fails
        (q_ok, f"question: expected {task.seq_len} cells of . 0 {digits}"),
        (a_ok, f"answer: expected {task.seq_len} cells of {digits}"),
        (~(a == 0).any(1), "answer has blanks"),
        (((a == q) | (q == 0)).all(1), "answer changes a given of the question"),
        ((satisfied >= total).numpy(), "answer breaks a row, column or box rule"),
    ]
    reasons: list[str | None] = [None] * n
    good = np.ones(n, dtype=bool)
    for passed, reason in checks:
        for i in np.flatnonzero(good & ~passed):
            reasons[i] = reason
        good &= passed
    if unique:
        for i in np.flatnonzero(good):
            if task.count_solutions(q[i].astype(np.int64), 2) > 1:
                reasons[i] = "the question has several solutions"
    return q, a, reasons


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _shrink_npy(path: Path, rows: int) -> None:
    """Cut a ``.npy`` array to its first ``rows`` rows in place: the header rewritten to the same length, the
    file truncated (both idempotent, so a conversion killed here finishes when run again)."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        data_start = f.tell()
        prefix = len(np.lib.format.magic(*version)) + (2 if version == (1, 0) else 4)  # magic, then header length
        text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
                     "shape": (rows, *shape[1:])}).encode("latin1")
        f.seek(prefix)
        f.write(text + b" " * (data_start - prefix - len(text) - 1) + b"\n")
        f.truncate(data_start + rows * int(np.prod(shape[1:])) * dtype.itemsize)


@locks_folder(lambda a: a["out"])
def convert_csv(source, out, task: SudokuTask | None = None, unique: bool = False, overwrite: bool = False,
                block_bytes: int = 8 << 20, on_block: Callable[[dict], None] | None = None,
                progress: bool = True) -> dict:
    """Convert a ``source,question,answer,rating`` CSV (the public Sudoku-Extreme layout) to a
    :class:`PuzzleStore` in ``out``; resumes an unfinished conversion there. Returns the ``meta`` written.
    ``on_block(progress)`` is called after each block is safely recorded."""
    from tqdm import tqdm

    source, out = Path(source), Path(out)
    task = task or SudokuTask(size=9)
    if not source.is_file():
        raise ValueError(f"{source}: no such file")
    meta_path, progress_path = out / "meta.json", out / "progress.json"
    if meta_path.exists():
        if not overwrite:
            raise ValueError(f"{out} already holds a converted dataset ({meta_path}): choose another --out or pass "
                             "--overwrite to convert again")
        for name in ("meta.json", "progress.json", "inputs.npy", "labels.npy", "rejected.tsv"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stat = source.stat()
    identity = {"source": str(source.resolve()), "source_bytes": stat.st_size, "source_mtime": stat.st_mtime,
                "task_kwargs": task.kwargs, "unique": unique}
    identity = json.loads(json.dumps(identity))  # as progress.json holds it (tuples are lists there)
    state = json.loads(progress_path.read_text()) if progress_path.exists() else None
    if state is not None and {k: state.get(k) for k in identity} != identity:
        raise ValueError(f"{out} holds an unfinished conversion of another file or with other options "
                         f"({progress_path}): pass --overwrite to start again, or another --out")
    if state is not None and overwrite:
        state = None
    t0 = time.perf_counter()
    if state is None:
        with open(source, "rb") as f:
            raw_header = f.readline()
        try:
            header_line = raw_header.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}: line 1 (the header) is not UTF-8 text (byte {e.start}: {e.reason})") from None
        fields = next(csv.reader([header_line]), [])
        missing = [k for k in REQUIRED if k not in fields]
        if missing:
            raise ValueError(f"{source}: CSV is missing column(s) {missing}; header is {fields}")
        with open(source, "rb") as f:
            offset = len(f.readline())
        capacity = max(_count_lines(source) - 1, 0)
        for name in ("inputs", "labels"):
            np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.uint8,
                                      shape=(capacity, task.seq_len)).flush()
        (out / "rejected.tsv").write_bytes(b"line\treason\n")
        state = identity | {"columns": fields, "offset": offset, "line": 1, "rows": 0, "rejected": 0,
                            "rejected_bytes": len(b"line\treason\n"), "capacity": capacity, "seconds": 0.0}
        _write_json(progress_path, state)
    columns = [state["columns"].index(k) for k in ("question", "answer")]
    inputs = np.load(out / "inputs.npy", mmap_mode="r+")
    labels = np.load(out / "labels.npy", mmap_mode="r+")
    with open(out / "rejected.tsv", "r+b") as rejected:
        rejected.truncate(state["rejected_bytes"])  # what a killed run wrote past its last record
    bar = tqdm(total=stat.st_size, initial=state["offset"], unit="B", unit_scale=True, disable=not progress,
               desc=f"convert {source.name}")
    seconds = state["seconds"]
    with open(source, "rb") as f, open(out / "rejected.tsv", "ab") as rejected:
        f.seek(state["offset"])
        while lines := f.readlines(block_bytes):
            questions, answers, line_numbers, problems, texts, numbers = [], [], [], [], [], []
            for number, raw in enumerate(lines, start=state["line"] + 1):  # a row per line (no quoted newlines)
                try:
                    texts.append(raw.decode("utf-8"))
                    numbers.append(number)
                except UnicodeDecodeError as e:  # rejected with its reason, never decoded into other characters
                    problems.append((number, f"not UTF-8 text (byte {e.start} of the line: {e.reason})"))
            for number, row in zip(numbers, csv.reader(texts)):
                if len(row) < len(state["columns"]):
                    problems.append((number, f"{len(row)} column(s), the header has {len(state['columns'])}"))
                    continue
                questions.append(row[columns[0]])
                answers.append(row[columns[1]])
                line_numbers.append(number)
            q, a, reasons = check_rows(task, questions, answers, unique)
            good = np.array([r is None for r in reasons], dtype=bool)
            problems += [(n, r) for n, r in zip(line_numbers, reasons) if r is not None]
            k, start = int(good.sum()), state["rows"]
            inputs[start:start + k], labels[start:start + k] = q[good], a[good]
            inputs.flush()
            labels.flush()
            text = "".join(f"{n}\t{r}\n" for n, r in sorted(problems)).encode()
            rejected.write(text)
            rejected.flush()
            os.fsync(rejected.fileno())
            consumed = sum(len(line) for line in lines)
            state |= {"offset": state["offset"] + consumed, "line": state["line"] + len(lines), "rows": start + k,
                      "rejected": state["rejected"] + len(problems),
                      "rejected_bytes": state["rejected_bytes"] + len(text),
                      "seconds": seconds + time.perf_counter() - t0}
            _write_json(progress_path, state)  # after the rows are on disk: a kill before this redoes the block
            bar.update(consumed)
            if on_block is not None:
                on_block(state)
    bar.close()
    del inputs, labels
    for name in ("inputs", "labels"):
        _shrink_npy(out / f"{name}.npy", state["rows"])
    meta = {"format": FORMAT, "task": task.name, "task_kwargs": task.kwargs, "rows": state["rows"],
            "rejected": state["rejected"], "rejected_file": "rejected.tsv", "dtype": "uint8",
            "source": state["source"], "source_bytes": state["source_bytes"], "unique_checked": unique,
            "seconds": round(state["seconds"], 2)}
    _write_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    return meta


def write_csv(path, task: SudokuTask, inputs: np.ndarray, labels: np.ndarray, source: str = "generated",
              mode: str = "w") -> Path:
    """Puzzles as a Sudoku-Extreme style CSV (``source,question,answer,rating``, rating 0), written batched: a
    million rows in seconds. ``mode="a"`` appends rows without a header."""
    path = Path(path)
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    chars = np.frombuffer(("." + _DIGITS[:task.size]).encode(), dtype=np.uint8)
    prefix = np.frombuffer(f"{source},".encode(), dtype=np.uint8)
    comma, tail = np.frombuffer(b",", dtype=np.uint8), np.frombuffer(b",0\n", dtype=np.uint8)
    with open(path, mode + "b") as f:
        if mode == "w":
            f.write(b"source,question,answer,rating\n")
        for start in range(0, len(inputs), 1 << 16):
            q, a = chars[inputs[start:start + (1 << 16)]], chars[labels[start:start + (1 << 16)]]
            n = len(q)
            rows = np.concatenate([np.broadcast_to(prefix, (n, len(prefix))), q, np.broadcast_to(comma, (n, 1)), a,
                                   np.broadcast_to(tail, (n, 3))], axis=1)
            f.write(rows.tobytes())
    return path
