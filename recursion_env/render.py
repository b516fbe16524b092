"""Board rendering shared by the environments: text with givens marked, and an RGB image, both from the same
per-cell states."""

from __future__ import annotations

import numpy as np

from .tasks import Task

_FILLS = {"given": (200, 200, 200), "blank": (255, 255, 255), "decided": (255, 255, 255),
          "right": (190, 235, 190), "wrong": (245, 185, 185)}


def cell_states(puzzle, answer, label=None, keeps_givens: bool = True) -> np.ndarray:
    """Per cell, what text and image both show: "given", "blank" (nothing decided: token 0), "right" or "wrong"
    (a decided token equal to / different from a known label; a label of all zeros is no label), or "decided"
    (no label to judge by). A Maze answer marking an open cell the path does not take is wrong."""
    puzzle, answer = np.asarray(puzzle).reshape(-1), np.asarray(answer).reshape(-1)
    states = np.full(puzzle.shape, "decided", dtype=object)
    if label is not None and np.asarray(label).any():
        states[:] = np.where(answer == np.asarray(label).reshape(-1), "right", "wrong")
    states[answer == 0] = "blank"
    if keeps_givens:  # (ARC's input is not part of its answer: nothing there is given)
        states[puzzle != 0] = "given"
    return states


def board_text(task: Task, puzzle, answer, label=None, changed=None) -> str:
    """One row per board row. Givens in brackets ``[5]``; other cells plain, followed by ``!`` where a decided
    (non-zero) token disagrees with a known label, else ``*`` where ``changed`` marks them (e.g. changed by
    the last step)."""
    rows, cols = task.grid_shape
    chars = task.cell_chars(answer)
    states = cell_states(puzzle, answer, label, task.keeps_givens)
    lines = []
    for r in range(rows):
        cells = []
        for c in range(cols):
            i = r * cols + c
            if states[i] == "given":
                cells.append(f"[{chars[i]}]")
            else:
                mark = "!" if states[i] == "wrong" else "*" if changed is not None and changed[i] else " "
                cells.append(f" {chars[i]}{mark}")
        lines.append("".join(cells))
    return "\n".join(lines)


def board_image(task: Task, puzzle, answer, label=None, cell: int = 24, changed=None) -> np.ndarray:
    """``uint8 [H, W, 3]``: givens grey, blank (undecided) cells white, answers green where they match a known
    label and red where not (the states of :func:`cell_states`, as the text shows them), ``changed`` cells (e.g.
    by the last step) outlined in blue, and Sudoku's boxes drawn with thicker borders."""
    from PIL import Image, ImageDraw

    rows, cols = task.grid_shape
    chars = task.cell_chars(answer)
    states = cell_states(puzzle, answer, label, task.keeps_givens)
    img = Image.new("RGB", (cols * cell + 1, rows * cell + 1), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            box = (c * cell + 1, r * cell + 1, (c + 1) * cell - 1, (r + 1) * cell - 1)
            draw.rectangle(box, fill=_FILLS[states[i]])
            if changed is not None and changed[i]:
                draw.rectangle(box, outline=(40, 90, 230), width=2)
            if chars[i] != ".":
                draw.text((c * cell + cell // 3, r * cell + cell // 5), chars[i], fill=(0, 0, 0))
    box_rows, box_cols = getattr(task, "box", (rows, cols))  # Sudoku's boxes; other boards: the frame only
    for r in range(0, rows + 1, box_rows):
        draw.line([(0, r * cell), (cols * cell, r * cell)], fill=(0, 0, 0), width=3)
    for c in range(0, cols + 1, box_cols):
        draw.line([(c * cell, 0), (c * cell, rows * cell)], fill=(0, 0, 0), width=3)
    return np.asarray(img, dtype=np.uint8)


RENDER_MODES = ["ansi", "rgb_array"]


def checked_render_mode(render_mode: str | None) -> str | None:
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    return render_mode


def render_env(core, mode: str, header: str, changed=None, index: int = 0):
    """What ``render()`` returns for env ``index`` of a core: ``header`` and the board as text, or the board
    image."""
    puzzle, answer = core.puzzle[index].cpu().numpy(), core.answer[index].cpu().numpy()
    label = core.label[index].cpu().numpy()
    if mode == "ansi":
        return f"{header}\n{board_text(core.task, puzzle, answer, label)}\n"
    return board_image(core.task, puzzle, answer, label, changed=changed)
