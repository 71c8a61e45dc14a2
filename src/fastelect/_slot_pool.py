"""Slots for electors that bring no table: 256 to one private table, not a mapping each.

A private table of one slot per elector costs a memory mapping (a page and
a kernel VMA) per election: 60,000 electors would ask for 60,000 mappings,
near Linux's default ``vm.max_map_count`` of 65,530.  Pooled, they ask for
235.  Slots are not reused: a table is unmapped once the last elector
holding one of its slots is gone (each elector keeps its table alive).
"""

from __future__ import annotations

import os
import threading

from ._core import LeadershipTable, Slot

__all__ = ["pooled_slot"]

#: Slots per pooled table.
POOL_SLOTS = 256

_lock = threading.Lock()  # BackgroundElector makes electors on its own thread
_table: LeadershipTable | None = None
_taken = 0
_pid = 0


def pooled_slot(server_id: str) -> tuple[LeadershipTable, Slot]:
    """A fresh slot in the current pooled private table, and that table."""
    global _table, _taken, _pid
    with _lock:
        if _table is None or _taken == POOL_SLOTS or _pid != os.getpid():
            # A forked child may not claim slots of its parent's tables (rule 7).
            _table, _taken, _pid = LeadershipTable(slots=POOL_SLOTS), 0, os.getpid()
        index = _taken
        _taken += 1
        # Private and unnamed: the slot's name only has to be unique in its table.
        return _table, _table.slot(f"s{index}", server_id)
