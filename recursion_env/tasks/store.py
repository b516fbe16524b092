"""Datasets larger than memory: a Sudoku-Extreme CSV converted once to memory-mapped ``.npy`` files.

``convert_csv(FILE.csv, DIR)`` (the CLI's ``recursion-env data convert``) reads the CSV in blocks, checks every
row batched (cells parse, the answer has no blanks, keeps the givens and obeys the rules; optionally, with the
solver, that the question has one solution) and writes the good rows to ``DIR/inputs.npy`` and ``DIR/labels.npy``
(``uint8 [rows, seq_len]``) with a checksum per row in ``DIR/checksums.npy``, the others to ``DIR/rejected.tsv``
as ``line<TAB>reason``. After every block the arrays are flushed and ``DIR/progress.json`` records the byte offset
reached, so a conversion that is stopped or killed continues where it was when run again. ``DIR/meta.json`` is
written last: its presence means complete.

:class:`PuzzleStore` opens such a folder with ``mmap_mode="r"``: training draws rows from it lazily (the pages
read come from the file, and the OS can drop them), each data-parallel rank its own chunks. ``meta.json`` is
validated on open, and every row is checked as it is read (its checksum, its tokens, and that its label solves its
puzzle), so a damaged folder is refused with the rows it concerns instead of being trained on; the checks read
only the rows asked for (``benchmarks/big_dataset.py`` measures what they cost).
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

FORMAT = "recursion-env puzzle store v2"  # v2: checksums.npy
REQUIRED = ("source", "question", "answer", "rating")
#: the weights of the row checksum: fixed odd 64-bit numbers, one per byte of (question, answer)
_CHECKSUM_WEIGHTS = np.random.default_rng(0x5EED_C0DE).integers(0, 2**63, size=2 * 256, dtype=np.uint64) * 2 + 1


def row_checksums(inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``uint64 [n]``: sum_j byte_j * w_j (mod 2^64) over a row's question then answer bytes, batched. The weights
    are odd, so any change of one byte changes the sum (by d * w_j, d in 1..255); a change of several is missed
    with probability about 2^-64."""
    L = inputs.shape[1]
    w = _CHECKSUM_WEIGHTS
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        return (np.asarray(inputs, np.uint64) @ w[:L]) + (np.asarray(labels, np.uint64) @ w[L:2 * L])


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def _meta_error(path: Path, field: str, problem: str) -> ValueError:
    return ValueError(f"{path}: field {field!r} {problem}; the folder is damaged: convert it again "
                      "(recursion-env data convert CSV --out FOLDER --overwrite)")


def validate_meta(meta, path: Path) -> SudokuTask:
    """The task a ``meta.json`` describes, after checking its fields and their types (one error naming the field)."""
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") == "recursion-env puzzle store v1":
        raise ValueError(f"{path}: converted without checksums by an older recursion-env: convert it again "
                         "(recursion-env data convert CSV --out FOLDER --overwrite)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("task") != "sudoku":
        raise _meta_error(path, "task", f"is {meta.get('task')!r}, expected 'sudoku'")
    kwargs = meta.get("task_kwargs")
    if not isinstance(kwargs, dict):
        raise _meta_error(path, "task_kwargs", f"is {kwargs!r}, expected an object of Sudoku options")
    try:
        task = SudokuTask(**{**kwargs, **({"box": tuple(kwargs["box"])} if kwargs.get("box") else {})})
    except (TypeError, ValueError) as e:
        raise _meta_error(path, "task_kwargs", f"{kwargs!r} is not a Sudoku ({e})") from None
    for name in ("rows", "rejected"):
        value = meta.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _meta_error(path, name, f"is {value!r}, expected an integer >= 0")
    if meta.get("dtype") != "uint8":
        raise _meta_error(path, "dtype", f"is {meta.get('dtype')!r}, expected 'uint8'")
    return task


class CheckedRows:
    """One array of a :class:`PuzzleStore` (``inputs`` or ``labels``), read through the store's row checks:
    ``store.inputs[idx]`` returns the rows as the memory map holds them (``uint8``) once they passed. ``raw`` is the
    memory map itself, unchecked."""

    def __init__(self, store: PuzzleStore, name: str, raw: np.ndarray):
        self.store, self.name, self.raw = store, name, raw
        self.shape, self.dtype = raw.shape, raw.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = len(self)
        if isinstance(rows, slice):
            idx = np.arange(*rows.indices(n))
        else:
            idx = np.asarray(rows)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + n, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"{self.store.folder}: row index out of range for {n} rows")
        x, y = self.store.read(idx.reshape(-1))
        out = (x if self.name == "inputs" else y).reshape(*idx.shape, self.shape[1])
        return out[(Ellipsis, *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class PuzzleStore:
    """A converted dataset folder: ``inputs``/``labels`` ``uint8 [n, seq_len]`` rows read lazily from memory maps
    through their checks (:class:`CheckedRows`; ``inputs.raw`` is the memory map), and the ``meta`` of its
    conversion. ``verify=False`` skips the row checks (to measure what they cost; never to train)."""

    def __init__(self, folder, verify: bool = True):
        self.folder = Path(folder)
        self.verify = verify
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            hint = (" (its conversion did not finish: run `recursion-env data convert` again to continue it)"
                    if (self.folder / "progress.json").exists() else "")
            raise ValueError(f"{self.folder}: not a converted dataset, no meta.json{hint}")
        try:
            self.meta = json.loads(meta_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from None
        self.task = validate_meta(self.meta, meta_path)
        arrays = {}
        for name in ("inputs", "labels", "checksums"):
            path = self.folder / f"{name}.npy"
            expected = (self.meta["rows"],) if name == "checksums" else (self.meta["rows"], self.task.seq_len)
            dtype = np.uint64 if name == "checksums" else np.uint8
            try:
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as e:  # noqa: BLE001 (a damaged header raises anything from EOFError to SyntaxError)
                raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__}: {e}); the folder is "
                                 "damaged: convert it again") from None
            if arrays[name].shape != expected or arrays[name].dtype != dtype:
                raise ValueError(f"{path}: {arrays[name].dtype} {arrays[name].shape}, meta.json says "
                                 f"{np.dtype(dtype)} {expected}; the folder is damaged: convert it again")
        self.inputs = CheckedRows(self, "inputs", arrays["inputs"])
        self.labels = CheckedRows(self, "labels", arrays["labels"])
        self.checksums = arrays["checksums"]

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` of (inputs, labels), ``uint8``, checked: their checksums, their tokens (givens 0..size,
        answers 1..size), and that each answer keeps its givens and obeys every rule. A failure is one error naming
        the folder, the file and the first rows."""
        x, y = self.inputs.raw[idx], self.labels.raw[idx]
        if not self.verify or not len(idx):
            return x, y
        size = self.task.size

        def refuse(bad, what: str, file: str):
            rows = np.unique(idx[bad])
            shown = ", ".join(map(str, rows[:5].tolist())) + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")
            raise ValueError(f"{self.folder / file}: row(s) {shown} {what}; the folder is damaged: convert it again "
                             "(recursion-env data convert CSV --out FOLDER --overwrite)")

        if (bad := row_checksums(x, y) != self.checksums[idx]).any():
            refuse(bad, "do not match their checksums in checksums.npy", "checksums.npy")
        if (bad := (x > size).any(1)).any():
            refuse(bad, f"hold a token outside 0-{size}", "inputs.npy")
        if (bad := ((y < 1) | (y > size)).any(1)).any():
            refuse(bad, f"hold an answer token outside 1-{size}", "labels.npy")
        if (bad := ~self.task.verify(x, y)).any():  # (keeps the givens and obeys every rule)
            refuse(bad, "hold a label that does not solve its puzzle", "labels.npy")
        return x, y

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
        for name in ("meta.json", "progress.json", "inputs.npy", "labels.npy", "checksums.npy", "rejected.tsv"):
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
        np.lib.format.open_memmap(out / "checksums.npy", mode="w+", dtype=np.uint64, shape=(capacity,)).flush()
        (out / "rejected.tsv").write_bytes(b"line\treason\n")
        state = identity | {"columns": fields, "offset": offset, "line": 1, "rows": 0, "rejected": 0,
                            "rejected_bytes": len(b"line\treason\n"), "capacity": capacity, "seconds": 0.0}
        _write_json(progress_path, state)
    columns = [state["columns"].index(k) for k in ("question", "answer")]
    inputs = np.load(out / "inputs.npy", mmap_mode="r+")
    labels = np.load(out / "labels.npy", mmap_mode="r+")
    if not (out / "checksums.npy").exists():  # an unfinished conversion begun before checksums existed
        sums = np.lib.format.open_memmap(out / "checksums.npy", mode="w+", dtype=np.uint64, shape=(len(inputs),))
        sums[:state["rows"]] = row_checksums(inputs[:state["rows"]], labels[:state["rows"]])
        sums.flush()
        del sums
    checksums = np.load(out / "checksums.npy", mmap_mode="r+")
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
            checksums[start:start + k] = row_checksums(q[good], a[good])
            for array in (inputs, labels, checksums):
                array.flush()
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
    del inputs, labels, checksums
    for name in ("inputs", "labels", "checksums"):
        _shrink_npy(out / f"{name}.npy", state["rows"])
    meta = {"format": FORMAT, "task": task.name, "task_kwargs": task.kwargs, "rows": state["rows"],
            "rejected": state["rejected"], "rejected_file": "rejected.tsv", "dtype": "uint8",
            "checksums_file": "checksums.npy",
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
