"""A live view for the terminal that degrades to plain lines.

On a terminal (``isatty`` and ``TERM`` is not ``dumb``) a block of lines at
the bottom is redrawn in place with ANSI escapes and event lines scroll
above it; colour unless ``NO_COLOR`` is set.  Anywhere else (a pipe, a file,
CI logs) only the event lines are printed, one per line, so the output stays
readable and greppable.

Plain ANSI rather than a TUI library: the view is one table and a few event
lines, which a dozen escape sequences cover, and it keeps the CLI free of a
dependency (and of its import time) for one command.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

__all__ = ["LiveView"]

_CSI = "\x1b["


class LiveView:
    """Event lines plus, on a terminal, a redrawn block (the "frame") below them."""

    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self._stream = stream
        if live is None:
            live = stream.isatty() and os.environ.get("TERM", "") != "dumb"
        #: True when the frame is redrawn in place (a terminal).
        self.live = live
        #: True when ANSI colours are used.
        self.color = live and "NO_COLOR" not in os.environ
        self._frame: list[str] = []
        self._drawn = 0
        self._started = time.monotonic()
        self._closed = False
        if self.live:
            # Hide the cursor; clip long lines instead of wrapping them, which
            # would break the count of lines to move up when redrawing.
            self._stream.write(f"{_CSI}?25l{_CSI}?7l")

    def elapsed(self) -> float:
        """Seconds since the view was created."""
        return time.monotonic() - self._started

    def style(self, text: str, *codes: int) -> str:
        """``text`` with SGR ``codes`` (1 bold, 2 dim, 31 red, 32 green, 33 yellow) if colour."""
        if not self.color or not codes:
            return text
        return f"{_CSI}{';'.join(map(str, codes))}m{text}{_CSI}0m"

    def event(self, text: str) -> None:
        """Print a timestamped event line (above the frame on a terminal)."""
        line = f"{self.style(f'[+{self.elapsed():6.2f}s]', 2)} {text}\n"
        if self.live:
            self._clear()
            self._stream.write(line)
            self._draw()
        else:
            self._stream.write(line)
        self._stream.flush()

    def message(self, text: str) -> None:
        """Print a line without a timestamp (headers, summaries)."""
        if self.live:
            self._clear()
            self._stream.write(text + "\n")
            self._draw()
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def update(self, frame: list[str]) -> None:
        """Replace the frame and redraw it (nothing happens when not live)."""
        if not self.live or self._closed:
            return
        self._frame = frame
        self._clear()
        self._draw()
        self._stream.flush()

    def close(self, *, keep_frame: bool = True) -> None:
        """Leave the last frame on screen (or erase it) and restore the cursor."""
        if self._closed:
            return
        self._closed = True
        if self.live:
            if not keep_frame:
                self._clear()
            self._stream.write(f"{_CSI}?7h{_CSI}?25h")
            self._stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            # To the start of the frame's first line, then erase to the end.
            self._stream.write(f"{_CSI}{self._drawn}F{_CSI}J")
            self._drawn = 0

    def _draw(self) -> None:
        for line in self._frame:
            self._stream.write(line + "\n")
        self._drawn = len(self._frame)
