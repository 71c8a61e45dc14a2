"""Handing a thread's outcome to an asyncio future, on the future's loop."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["settle"]


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Set ``future``'s outcome unless its waiter gave up (cancelled) meanwhile.

    Call it on the future's loop (``loop.call_soon_threadsafe(settle, ...)``).
    """
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
