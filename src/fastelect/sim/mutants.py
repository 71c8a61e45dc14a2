"""Mutants: each safety fix reverted by name, and the Campaign factory of a World.

A mutant is one fix of ``docs/safety.md`` undone, selected by name without a
rebuild: the core's fixes are undone in the pure-Python twin
(:mod:`fastelect._rules_py`, one ``_revert_*`` class attribute each), so a
mutant run drives the twin in place of the compiled Campaign.  The simulator
must catch every mutant (``tests/test_sim_mutants.py``; the schedules each
needed are in ``docs/simulator.md``).

The registry is open: a driver or executor mutant (rule 9's hooks, the
renew-first overload policy) registers a :class:`Mutant` whose ``apply``
switches the driver's flag on the World it is given, and leaves the core
compiled.  ``register()`` adds one.

:func:`campaign_factory` builds what ``SimNode`` constructs each incarnation
with (``World.make_campaign``): the compiled Campaign, the twin or a mutant,
optionally in lockstep (:mod:`fastelect.sim.lockstep`), and, where the
schedule gives nodes wall clocks that disagree or a ``max_clock_skew``
(rule 1(c)), a thin layer that shifts the wall instants the driver passes in
by the node's wall-clock offset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import _rules_py
from .wallclock import walled

if TYPE_CHECKING:
    from .world import Params, World

__all__ = ["MUTANTS", "Mutant", "campaign_factory", "mutant_class", "register"]


@dataclass(frozen=True, slots=True)
class Mutant:
    """One safety fix, reverted.

    ``twin_flag``: the ``_revert_*`` attribute of the twin Campaign that
    undoes it (a core mutant), or "" for a driver mutant, whose ``apply``
    is called with the World once per schedule, in ``World.__init__``
    before the nodes are built (set the driver's flag there).  Register it
    where this module can see it at import, so ``--mutant all`` and the
    tests run it too.
    """

    name: str
    rule: str
    reverts: str
    twin_flag: str = ""
    apply: Callable[[World], None] | None = None


MUTANTS: dict[str, Mutant] = {}


def register(m: Mutant) -> Mutant:
    """Add ``m`` to :data:`MUTANTS` (its name must be new)."""
    if m.name in MUTANTS:
        raise ValueError(f"mutant {m.name!r} is already registered")
    if bool(m.twin_flag) == (m.apply is not None):
        raise ValueError(f"mutant {m.name!r}: give either twin_flag or apply")
    if m.twin_flag and not hasattr(_rules_py.Campaign, m.twin_flag):
        raise ValueError(f"mutant {m.name!r}: the twin has no {m.twin_flag}")
    MUTANTS[m.name] = m
    return m


for _m in (
    Mutant(
        "rule0",
        "0",
        "a record is ours by server id alone; the incarnation nonce is ignored",
        "_revert_rule0",
    ),
    Mutant(
        "rule1",
        "1",
        "a lease counts from the record's lastUpdated (its writer's wall clock), "
        "not from when this node first observed the etag",
        "_revert_rule1",
    ),
    Mutant(
        "rule1c",
        "1(c)",
        "with max_clock_skew set, a record is stale once lastUpdated is older than "
        "the lease alone: the skew allowance is dropped",
        "_revert_rule1c",
    ),
    Mutant(
        "rule2",
        "2",
        "the deadline counts the lease and margin configured when the answer "
        "arrives, not the snapshot the write advertised",
        "_revert_rule2",
    ),
    Mutant(
        "rule2-cap",
        "2",
        "a renewal advertising a shorter lease does not cap the lease already held",
        "_revert_rule2_cap",
    ),
    Mutant(
        "rule3",
        "3",
        "poll() does not end a lease that ran out: the lapsed leader keeps its role "
        "and renews instead of reading",
        "_revert_rule3",
    ),
    Mutant(
        "rule4",
        "4",
        "a failed renewal (outcome unknown) counts as landed: the lease grows "
        "from its send, and the retry is a new write",
        "_revert_rule4",
    ),
    Mutant(
        "rule5",
        "5",
        "a new leadership writes the observed record's term + 1, not the highest "
        "term ever seen + 1; an invalid record's own term is not counted",
        "_revert_rule5",
    ),
    Mutant(
        "rule6",
        "6",
        "the leader trusts the whole lease: its deadline is first send + T, the "
        "safety margin is not subtracted",
        "_revert_rule6",
    ),
):
    register(_m)


def _no_hold_back(world: World) -> None:
    world.hold_back = False


register(
    Mutant(
        "rule9",
        "9",
        "the driver campaigns for a new leadership while the last one's hooks still "
        "run (Driver(hold_back=False), 0.1's Elector)",
        apply=_no_hold_back,
    )
)


def _no_renew_first(world: World) -> None:
    world.renew_first = False


register(
    Mutant(
        "renew-first",
        "executor",
        "the executor queues due renewals with reads and campaigns under max_inflight, "
        "sheds with them under overload, and never steps down to keep the older leases",
        apply=_no_renew_first,
    )
)


@functools.cache
def mutant_class(name: str | None) -> type[_rules_py.Campaign]:
    """The twin Campaign with mutant ``name``'s fix undone (None: the faithful twin)."""
    if name is None:
        return _rules_py.Campaign
    m = MUTANTS[name]
    if not m.twin_flag:
        raise ValueError(f"mutant {name!r} is a driver mutant: the core stays compiled")
    attrs = {m.twin_flag: True, "__slots__": ()}
    return type(f"Campaign_{name.replace('-', '_')}", (_rules_py.Campaign,), attrs)


def campaign_factory(p: Params, world: World, compiled: type) -> Callable[..., Any]:
    """``make_campaign(node_index, *campaign_args)`` for the schedule ``p``.

    ``compiled``: the compiled Campaign class (world.py's, so a test that
    replaces it there still reaches every node).  ``p.mutant`` names a
    mutant (:data:`MUTANTS`); ``p.lockstep`` runs the compiled Campaign and
    the twin (or the mutant twin) side by side on every call.
    """
    mutant = MUTANTS[p.mutant] if p.mutant is not None else None
    if mutant is not None and mutant.apply is not None:
        mutant.apply(world)
    core_mutant = mutant is not None and bool(mutant.twin_flag)
    cls: type
    kw: dict[str, Any] = {}
    if p.lockstep:
        from .lockstep import Lockstep

        cls = Lockstep
        kw = {
            "twin_class": mutant_class(p.mutant if core_mutant else None),
            "compiled_class": compiled,
        }
    elif core_mutant:
        cls = mutant_class(p.mutant)
    else:
        cls = compiled
    plain = p.max_skew < 0 and not any(p.wall_offsets)
    if plain and not kw:
        return lambda index, *args: cls(*args)
    layered = cls if plain else walled(cls)
    reader = world.table.reader() if p.lockstep else None

    def make(index: int, slot: Any, *args: Any) -> Any:
        more = dict(kw)
        if reader is not None:
            more["seq"] = functools.partial(reader.seq, slot.election)
            more["clock"] = lambda: world.now
        if plain:
            return layered(slot, *args, **more)

        def on_read(*read: Any) -> None:
            world.nodes[index].oracle.wall_observed(*read)

        # Wall clocks are per process (node index = election * processes + process).
        offset = p.wall_offsets[index % len(p.node_ids)] if p.wall_offsets else 0
        return layered((offset, p.max_skew, on_read), slot, *args, **more)

    return make
