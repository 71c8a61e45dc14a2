"""Wall clocks that disagree, and the ``max_clock_skew`` that bounds them (rule 1(c)).

The lease clock of each node drifts (``Params.rates``); its *wall* clock is
true wall time plus a fixed offset (NTP keeps a wall clock's rate right, not
its reading).  The rules use the wall clock only for rule 1(c): with
``max_clock_skew`` set, a record whose ``lastUpdated`` is older than
``max(T, leaseMs) + skew`` by our wall clock is stale.  That is safe while
every two wall clocks differ by at most the skew, so the draws keep them
within it; with the skew unset, wall clocks may disagree by anything and the
rules must not care.

The driver (``SimNode``) passes true wall time (``EPOCH_NS + t``) to the
Campaign; :func:`walled` puts the node's offset on those instants at the
Campaign's boundary, the one place a real host's clock enters the rules.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .world import Params

__all__ = ["draw_wall_clocks", "walled"]

MS = 1_000_000


def draw_wall_clocks(p: Params) -> None:
    """Give ``p`` wall-clock offsets and a max_clock_skew, from a generator of their own.

    A quarter of the schedules run with ``max_clock_skew`` set (0, T/10, T/2,
    T or 2T of the shortest T) and wall clocks spread within it; a further
    15 % have wall clocks up to 3 T apart with the skew unset.
    """
    rng = random.Random(p.seed ^ 0x3A11C10C)
    n = len(p.node_ids)
    t_min = min(t.lease for t in p.timings)
    t_max = max(t.lease for t in p.timings)
    u = rng.random()
    if u < 0.25:
        skew = rng.choice((0, t_min // 10, t_min // 2, t_min, 2 * t_min)) // MS * MS
        half = skew // 2
        p.max_skew = skew
        p.wall_offsets = [rng.randint(-half, half) for _ in range(n)]
    elif u < 0.4:
        p.wall_offsets = [rng.randint(-3 * t_max, 3 * t_max) for _ in range(n)]


@functools.cache
def walled(base: type) -> type:
    """``base`` (a Campaign-like class) behind a node's wall clock.

    Constructed as ``walled(base)((offset, max_skew, on_read), *campaign_args)``:
    the wall instants the driver passes in move by ``offset``; the Campaign
    runs with ``max_skew`` whatever ``configure`` is given (the driver does
    not know the setting); ``on_read(now, wall_now, etag, updated_wall,
    lease_ms, max_skew)`` hears each valid record read (the rule oracle's
    view of rule 1(c)).
    """

    class Walled(base):  # type: ignore[misc]
        def __init__(
            self,
            wall: tuple[int, int, Callable[..., None]],
            slot: Any,
            server_id: str,
            server_addr: str,
            lease_ns: int,
            frequent_ns: int,
            infrequent_ns: int,
            margin_ns: int,
            max_skew_ns: int = -1,
            peer_mode: bool = False,
            now_ns: int = 0,
            nonce: str = "",
            **kw: Any,
        ) -> None:
            self._wall_offset, self._max_skew, self._on_read = wall
            super().__init__(
                slot,
                server_id,
                server_addr,
                lease_ns,
                frequent_ns,
                infrequent_ns,
                margin_ns,
                self._max_skew,
                peer_mode,
                now_ns,
                nonce,
                **kw,
            )

        def configure(
            self,
            lease_ns: int,
            frequent_ns: int,
            infrequent_ns: int,
            margin_ns: int,
            max_skew_ns: int = -1,
            peer_mode: bool = False,
        ) -> None:
            super().configure(
                lease_ns, frequent_ns, infrequent_ns, margin_ns, self._max_skew, peer_mode
            )

        def record_body(self, wall_ns: int) -> bytes:
            body: bytes = super().record_body(wall_ns + self._wall_offset if wall_ns else 0)
            return body

        def write_succeeded(self, now_ns: int, new_etag: str, wall_ns: int = 0) -> None:
            super().write_succeeded(now_ns, new_etag, wall_ns + self._wall_offset if wall_ns else 0)

        def observe_record(
            self,
            now_ns: int,
            wall_now_ns: int,
            etag: str,
            leader_id: str,
            leader_addr: str,
            term: int,
            lease_ms: int,
            renewal: int,
            released: bool,
            updated_wall_ns: int,
            nonce: str = "",
        ) -> None:
            wall_now_ns += self._wall_offset
            self._on_read(now_ns, wall_now_ns, etag, updated_wall_ns, lease_ms, self._max_skew)
            super().observe_record(
                now_ns,
                wall_now_ns,
                etag,
                leader_id,
                leader_addr,
                term,
                lease_ms,
                renewal,
                released,
                updated_wall_ns,
                nonce,
            )

    Walled.__name__ = Walled.__qualname__ = f"Walled{base.__name__}"
    return Walled
