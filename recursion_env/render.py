"""Board rendering shared by the environments: text with givens marked, and an RGB image."""

from __future__ import annotations

import numpy as np

from .tasks import Task

_GIVEN, _RIGHT, _WRONG, _BLANK = (200, 200, 200), (190, 235, 190), (245, 185, 185), (255, 255, 255)


def board_text(task: Task, puzzle, answer, label=None, changed=None) -> str:
    """One row per board row. Givens in brackets ``[5]``; other cells plain, followed by ``!`` where a decided
    (non-zero) token disagrees with a known label, else ``*`` where ``changed`` marks them (e.g. changed by
    the last step)."""
    rows, cols = task.grid_shape
    chars = task.to_line(answer)
    puzzle = np.asarray(puzzle).reshape(-1)
    answer = np.asarray(answer).reshape(-1)
    lines = []
    for r in range(rows):
        cells = []
        for c in range(cols):
            i = r * cols + c
            if puzzle[i] != 0:
                cells.append(f"[{chars[i]}]")
            else:
                wrong = label is not None and label[i] != 0 and answer[i] != 0 and answer[i] != label[i]
                mark = "!" if wrong else "*" if changed is not None and changed[i] else " "
                cells.append(f" {chars[i]}{mark}")
        lines.append("".join(cells))
    return "\n".join(lines)


def board_image(task: Task, puzzle, answer, label=None, cell: int = 24, changed=None) -> np.ndarray:
    """``uint8 [H, W, 3]``: givens grey, answers green where they match a known label and red where not,
    ``changed`` cells (e.g. by the last step) outlined in blue."""
    from PIL import Image, ImageDraw

    rows, cols = task.grid_shape
    chars = task.to_line(answer)
    puzzle = np.asarray(puzzle).reshape(-1)
    answer = np.asarray(answer).reshape(-1)
    img = Image.new("RGB", (cols * cell + 1, rows * cell + 1), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if puzzle[i] != 0:
                fill = _GIVEN
            elif label is None or label[i] == 0:
                fill = _BLANK
            else:
                fill = _RIGHT if answer[i] == label[i] else _WRONG
            box = (c * cell + 1, r * cell + 1, (c + 1) * cell - 1, (r + 1) * cell - 1)
            draw.rectangle(box, fill=fill)
            if changed is not None and changed[i]:
                draw.rectangle(box, outline=(40, 90, 230), width=2)
            if chars[i] != ".":
                draw.text((c * cell + cell // 3, r * cell + cell // 5), chars[i], fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8)


def render_env(core, mode: str, header: str, changed=None):
    """What ``render()`` returns for env 0 of a core: ``header`` and the board as text, or the board image."""
    puzzle, answer = core.puzzle[0].cpu().numpy(), core.answer[0].cpu().numpy()
    label = core.label[0].cpu().numpy()
    if mode == "ansi":
        return f"{header}\n{board_text(core.task, puzzle, answer, label)}\n"
    return board_image(core.task, puzzle, answer, label, changed=changed)
