"""Folding repeated log lines: the first of a kind goes out, repeats are counted.

An elector whose store fails retries every F; logging each failure would
write the same line thousands of times an hour. :class:`LogFold` lets the
first line of a kind through, counts the repeats for a window, and lets the
next one after the window through with the count ("… 14 more in the last
20 s"). A kind can also be folded for as long as its streak lasts (a refused
permission is said once per streak).
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["FOLD_WINDOW_NS", "LogFold", "folded_suffix"]

#: How long repeats of one kind are folded into the next line.
FOLD_WINDOW_NS = 20_000_000_000


class LogFold:
    """Which log lines of a repeating kind to emit, and how many were folded."""

    __slots__ = ("_kinds", "_window_ns")

    def __init__(self, window_ns: int | None = None) -> None:
        self._window_ns = FOLD_WINDOW_NS if window_ns is None else window_ns
        # kind -> [start of the current window (ns), repeats folded in it, whole streak?]
        self._kinds: dict[Hashable, list[int]] = {}

    def admit(self, kind: Hashable, now_ns: int, *, once: bool = False) -> tuple[int, int] | None:
        """Count one occurrence of ``kind`` at ``now_ns``.

        Returns None when the line is folded (do not emit it), otherwise
        ``(folded, span_ns)``: how many were folded since the last emitted
        line of this kind and over how long. ``once`` folds every repeat
        until :meth:`end` is called for the kind.
        """
        state = self._kinds.get(kind)
        if state is None:
            self._kinds[kind] = [now_ns, 0, int(once)]
            return (0, 0)
        start, folded, whole_streak = state
        if whole_streak or now_ns - start < self._window_ns:
            state[1] = folded + 1
            return None
        state[0], state[1] = now_ns, 0
        return (folded, now_ns - start)

    def end(self, match: Hashable, now_ns: int) -> tuple[int, int] | None:
        """Forget every kind whose first element is ``match`` (its streak ended).

        Returns ``(folded, span_ns)`` summed over them (folded repeats never
        emitted, since the earliest window began) if any such kind was seen,
        else None.
        """
        ended = [k for k in self._kinds if isinstance(k, tuple) and k and k[0] == match]
        if not ended:
            return None
        folded = 0
        first = now_ns
        for kind in ended:
            start, count, _ = self._kinds.pop(kind)
            folded += count
            first = min(first, start)
        return (folded, now_ns - first)

    def __bool__(self) -> bool:
        return bool(self._kinds)


def folded_suffix(folded: int, span_ns: int) -> str:
    """`` (… N more in the last S s)`` for a line that stands for folded repeats."""
    if folded <= 0:
        return ""
    return f" (… {folded} more in the last {span_ns / 1e9:.0f} s)"
