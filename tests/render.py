"""Rendering what the CLI prints at a given terminal width, and the checks that nothing was cut."""

from __future__ import annotations

import io
import re

from rich.console import Console

# Any C0 control character but newline, and DEL: what a pipe or a log must not get.
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def render(*renderables, width: int = 80) -> str:
    """What `Console(width=width)` prints for `renderables` into a pipe (no colours)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    for renderable in renderables:
        console.print(renderable)
    return out.getvalue()


def assert_fits(text: str, width: int = 80) -> None:
    """No ellipsis, no line wider than `width`, no control character."""
    assert "…" not in text, text
    assert not CONTROL.search(text), repr(CONTROL.search(text).group())
    wide = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not wide, "\n".join(wide)


def assert_whole(text: str, *cells: str) -> None:
    """Every word of every cell appears whole in `text` (a cell may wrap at spaces, never inside a word)."""
    words = set(text.split())
    missing = [word for cell in cells for word in cell.split() if word not in words]
    assert not missing, f"cut or missing: {missing}\n{text}"
