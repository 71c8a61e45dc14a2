"""One simulated schedule: nodes running the real driver and Campaign on virtual time.

Everything that varies comes from ``random.Random(seed)``: the fleet, its
timings, each node's clock, every request's latency and fate, and every
node-level fault.  Events sit on a heap ordered by ``(true time, sequence
number)``, so ties resolve the same way on every run and a seed replays
exactly.

Clocks.  Node *i* reads ``local_i(t) = offset_i + t * rate_i`` (integer
arithmetic, the rate as a binary fraction).  Rule 2 makes a leader trust
``T - margin`` on its clock while followers wait ``T`` on theirs, so the
rates may differ by a factor of at most ``T / (T - margin)``; rates are drawn
in ``[1, 1 + 0.9 * (T / (T - margin) - 1)]`` for the smallest such ratio of
the schedule's configurations (headroom 10 %).  Rates >= 1 also make every
true duration at most its local length, which the liveness bound uses.

Liveness is checked in true time with the arithmetic ``is_leader()`` uses:
node *i* is live at ``t`` iff its Campaign's role is LEADER and
``local_i(t) < deadline_ns``.

Each elector (:class:`SimNode`) runs the real :class:`~fastelect.driver.Driver`
around the real Campaign: the simulator adds only what ``Elector`` adds
around its driver -- requests, timers, hooks and guarded work, as events on
the heap -- and each method names the Elector method it stands for.

Processes (:class:`SimProc`) host one elector per election (each election
its own key in the store, its own :class:`Checker`), and every elector of a
process runs on that process's executor: the real
:class:`~fastelect._schedule_policy.SchedulePolicy` (the timer wheel,
renew-first, shedding, the overload step-down) driven as
:class:`~fastelect.scheduler.Scheduler` drives it, on the process's clock.
Executor work costs simulated CPU (``Params.exec_cost`` per step, far more
during an ``NF_SLOW`` fault): a process with more due work than CPU serves
it late, and its policy sees that lag and load.  Node index =
``election * processes + process``.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from .. import _core
from .._core import Campaign, LeadershipTable
from .._schedule_policy import SchedulePolicy
from ..driver import HOLD, HOOK_ACQUIRE, HOOK_LOSE, Driver
from ..errors import RecordError
from ..record import parse_record, record_term
from .checker import Checker, Violation
from .mutants import campaign_factory
from .oracle import RuleOracle
from .wallclock import draw_wall_clocks

__all__ = [
    "COVERAGE",
    "FAMILIES",
    "Params",
    "Result",
    "SimFailure",
    "World",
    "by_family",
    "draw_params",
    "format_families",
    "run_schedule",
]

#: Situations the default run must reach (``Result.stats`` keys), so a change
#: that quietly stops injecting a fault fails the tests instead of passing them.
COVERAGE = (
    "crash",  # a process killed (its in-flight requests may still land)
    "pause",  # a SIGSTOP-like freeze, often longer than the lease
    "partition",  # one node cut off from storage and peers
    "stop",  # a graceful stop (a leader releases)
    "config",  # update_config on a running elector
    "config-mid-write",  # update_config while a write of that node was in flight
    "late-write",  # a write applied after its client gave up
    "lost-reply",  # a write applied whose answer never arrived
    "orphan-write",  # a write of a crashed or given-up client applied
    "adopt",  # rule 4: a leader recognised its own write after 412/timeout
    "lease-lapsed",  # a leader's lease ran out (EV_LOST without a lost CAS)
    "work-refused",  # the guard refused a leader-work step after the lease
    "duplicate-id",  # EV_DUPLICATE_ID raised
    "peer-lie",  # a peer answered 200 for a leader that may not lead
    "takeover",  # a leadership changed hands to another node
    "corrupt",  # a hostile write replaced the record with an invalid one
    "corrupt-term-kept",  # ... one whose own term is in bounds (rule 5 must count it)
    "corrupt-replaced",  # an elector replaced such a record (after its own T)
    "hook-hung",  # a hook ran to hook_timeout and counted as failed (rule 9)
    "campaign-held",  # a campaign waited for the last leadership's hooks (rule 9)
    "shed",  # the executor put back a poll or campaign under overload
    "slow",  # a process's executor slowed down (NF_SLOW: steps cost far more CPU)
    "multi-election",  # processes hosting electors of several elections on one executor
    "peer-toggle",  # peer mode switched on or off on a running elector
)

#: Coverage counters by family, printed after a run; each family must be
#: reached (tests/test_sim.py), and its keys are the ``Result.stats`` keys.
FAMILIES: dict[str, tuple[str, ...]] = {
    # The executor (its policy on simulated CPU): polls and campaigns put back,
    # a load measured over cpu_limit and leaderships given up to keep the rest.
    "shed": ("shed-read", "shed-campaign"),
    "overload": ("overloaded", "overload-stepdown"),
    "executor": ("slow", "multi-election", "shed-turn"),
    "hook": ("hook-hung", "hook-skipped", "campaign-held"),
    "skew": ("skew-bounded", "wall-apart"),
    "peer": ("peer-lie", "peer-toggle", "peer-on"),
    "config": ("config", "config-mid-write"),
    "restart": ("crash", "restart", "stop", "pause"),
    "store": ("late-write", "lost-reply", "orphan-write", "partition", "corrupt"),
    "rules": ("adopt", "lease-lapsed", "work-refused", "duplicate-id", "takeover"),
}


def by_family(stats: dict[str, int]) -> dict[str, dict[str, int]]:
    """``stats`` grouped by :data:`FAMILIES` (a family's keys with their counts, 0 if never)."""
    return {fam: {k: stats.get(k, 0) for k in keys} for fam, keys in FAMILIES.items()}


def format_families(stats: dict[str, int]) -> str:
    """One line per family: its total, then each counter (printed after a run)."""
    lines = []
    for fam, counts in by_family(stats).items():
        inner = ", ".join(f"{k}={v}" for k, v in counts.items())
        lines.append(f"  {fam:<9}{sum(counts.values()):>8}  ({inner})")
    return "\n".join(lines)


MS = 1_000_000
SEC = 1_000_000_000
RATE_BITS = 30
RATE_ONE = 1 << RATE_BITS
#: Wall clock of true time 0 (any date; only lastUpdated carries it).
EPOCH_NS = 1_780_000_000 * SEC
#: Upper bound of how long after the client gave up a "late" request lands.
LATE_MAX = 1500 * MS
#: Latency bounds (each way) once the faults stop.
CALM_MIN, CALM_MAX = 1 * MS, 10 * MS
#: The core's fixed retry delays (RETRY_DELAYS_NS in _core.pyx); the longest one.
RETRY_MAX = 1 * SEC
#: Past those, a retry waits F plus up to F / RETRY_JITTER_DIV (_rules.pyx).
RETRY_JITTER_DIV = 4
#: The executor's settings: Scheduler()'s defaults (scheduler.py), in ns.
RESOLUTION = 5 * MS
LAG_LIMIT = 100 * MS
CPU_LIMIT = 0.9
CAMPAIGN_LIMIT = 0.6
#: The window its load is measured over (scheduler.py's _CPU_WINDOW_NS).
CPU_WINDOW = 500 * MS

LEADER = int(_core.Role.LEADER)
STOPPED_ROLE = int(_core.Role.STOPPED)
A_WAIT = int(_core.Action.WAIT)
A_READ = int(_core.Action.READ)
A_PEER = int(_core.Action.PEER_CHECK)
A_CREATE = int(_core.Action.CREATE)
A_TAKEOVER = int(_core.Action.TAKEOVER)
EV_ACQUIRED = int(_core.Event.EV_ACQUIRED)
EV_LOST = int(_core.Event.EV_LOST)
EV_DUPLICATE_ID = int(_core.Event.EV_DUPLICATE_ID)
ACTION_NAMES = _core.ACTION_NAMES

# Event kinds on the heap.
# E_TURN: a process's executor turn (its index in the node field).
E_TURN, E_REPLY, E_TIMEOUT, E_APPLY, E_EXPIRY, E_WORK, E_FAULT, E_CHECK, E_HOOK = range(9)
A_RENEW = int(_core.Action.RENEW)
A_RELEASE = int(_core.Action.RELEASE)
# Outcomes of a request, as the client sees them.
O_OK, O_MISSING, O_PRE, O_FAIL = range(4)
# Request fates (drawn per request while faults are on).
F_NORMAL, F_500, F_503, F_403, F_409, F_LOST_REQ, F_LOST_REPLY, F_LATE, F_LIE = range(9)
_FATE_NAMES = ("ok", "500", "503", "403", "409", "lost-request", "lost-reply", "late", "lie")
# Node-level faults.
NF_CRASH, NF_PAUSE, NF_PARTITION, NF_STOP, NF_CONFIG = range(5)
NF_RESTART, NF_RESUME, NF_HEAL_ONE, NF_START, NF_HEAL_ALL, NF_END = range(5, 11)
#: Failover scenarios: crash / gracefully stop whichever node leads at that instant.
NF_CRASH_LEADER, NF_STOP_LEADER = range(11, 13)
#: update_config while this node's next write is in flight (rule 2's case).
NF_CONFIG_MIDWRITE = 13
#: A hostile write replaces the record with an invalid one (argument: the variant).
NF_CORRUPT = 14
#: What NF_CORRUPT writes: not JSON; a term out of range; an in-bounds term with
#: an absurd or negative lease (the values issue 19 found).
CORRUPT_NOT_JSON, CORRUPT_TERM_RANGE, CORRUPT_LEASE = range(3)
#: A process's executor slows down for ``arg`` ns (a CPU hog beside it), and back.
NF_SLOW, NF_FAST = 15, 16
#: Peer mode switched on (or off) on a running process's electors (update_config).
NF_PEER = 17
_CORRUPT_LEASES = (9_223_372_036_854, 10**12, -1, 0, 86_400_001)
# Node process states.
S_RUNNING, S_STOPPED, S_CRASHED = range(3)


@dataclass(frozen=True, slots=True)
class Timing:
    """One elector configuration, in ns (ms-aligned so ``leaseMs`` is exact)."""

    lease: int
    frequent: int
    infrequent: int
    margin: int

    @property
    def storage_timeout(self) -> int:
        # ElectorConfig's default: min(2 s, leader_timeout / 3).
        return min(2 * SEC, self.lease // 3)


@dataclass(slots=True)
class Params:
    """Everything a schedule is made of, drawn from its seed (or built by hand)."""

    seed: int
    timings: list[Timing]
    #: Per node: index into ``timings`` it starts with, server id, clock rate/offset.
    node_timing: list[int]
    node_ids: list[str]
    rates: list[int]
    offsets: list[int]
    peer_mode: bool
    peer_timeout: int
    #: Latency (each way) while faults are on: base + exponential jitter, some slow.
    lat_base: int
    lat_jitter: int
    p_slow: float
    #: Per-request fate weights (F_* order) while faults are on.
    fate_weights: list[float]
    p_peer_lie: float
    #: (true time, fault, node, argument) node-level faults.
    faults: list[tuple[int, int, int, int]]
    #: Faults stop here; the fault-free tail follows.
    faults_end: int
    #: By then (after faults_end) some node must lead, and keep leading to ``end``.
    live_by: int
    end: int
    #: Leader-work step interval range (local ns).
    work_min: int
    work_max: int
    #: Fixed latencies (each way) from the start, no drawn faults: failover scenarios.
    calm_from_start: bool = False
    fixed_latency: int = 0
    #: The nodes run on_acquire / on_lose hooks (rule 9), each bounded by
    #: ``hook_timeout``: up to ``hook_max`` long, and while faults are on, with
    #: probability ``p_hook_fail``, an on_acquire or on_lose hung past its bound.
    hooks: bool = False
    hook_timeout: int = 0
    hook_max: int = 0
    p_hook_fail: float = 0.0
    #: A mutant of fastelect.sim.mutants to run instead of the faithful core
    #: (None: the compiled Campaign); run the compiled Campaign and the twin in
    #: lockstep (fastelect.sim.lockstep) on every call.
    mutant: str | None = None
    lockstep: bool = False
    #: Wall clocks (rule 1(c)): each node's wall-clock offset from true wall
    #: time (empty: all agree), and the max_clock_skew electors run with (-1: off).
    wall_offsets: list[int] = field(default_factory=list)
    max_skew: int = -1
    #: Elections: each process hosts one elector of each, on its one executor.
    elections: int = 1
    #: The executor: max_inflight and the wheel's resolution (Scheduler's),
    #: CPU each executor step costs (ns), and while an NF_SLOW fault lasts.
    max_inflight: int = 512
    resolution: int = RESOLUTION
    exec_cost: int = 0
    slow_cost: int = 0


def _ms(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi) * MS


def draw_timing(rng: random.Random) -> Timing:
    """A valid configuration: F + margin < T with room for a renewal's latency."""
    lease = rng.randint(10, 40) * 100 * MS
    margin = _ms(rng, lease // MS // 20, lease // MS // 5)
    frequent = _ms(rng, lease // MS // 10, (lease - margin) // MS * 2 // 5)
    infrequent = frequent + _ms(rng, 0, 3 * lease // MS)
    return Timing(lease, frequent, infrequent, margin)


def liveness_bound(p: Params) -> int:
    """How long after the faults stop some node must lead (derivation in docs/simulator.md).

    1. Stray requests: every request sent before ``faults_end`` has landed or
       been dropped by ``+ storage_timeout + LATE_MAX``; after that the record
       changes only through requests sent in the tail.
    2. Backoff: a node in a failure streak tries again within
       ``max(1 s, 1.25 F)`` (the core's retry delays, then F plus jitter)
       after its last failure.
    3. A follower that saw the last write of a silent leader polls again
       within ``min(I, T)`` (rule 1 caps the idle poll at the takeover
       instant), or, in peer mode, notices the dead peer within
       ``F + peer_timeout`` and reads.
    4. It takes over ``T`` (the longest lease advertised or configured) after
       first seeing that write; the takeover lands after one request.
    Rates >= 1 make every true duration at most its local length; each step
    adds a few calm request latencies (``2 * CALM_MAX`` each).
    """
    t_max = max(t.lease for t in p.timings)
    f_max = max(t.frequent for t in p.timings)
    poll_max = max(min(t.infrequent, t.lease) for t in p.timings)
    st_max = max(t.storage_timeout for t in p.timings)
    stray = st_max + LATE_MAX + 2 * CALM_MAX
    backoff = max(RETRY_MAX, f_max + f_max // RETRY_JITTER_DIV) + st_max
    peer = f_max + p.peer_timeout if p.peer_mode else 0
    # 5. Hooks: a node campaigns once its last leadership's hooks finished;
    #    two hung past their bound (on_acquire, then on_lose) may have begun
    #    before the faults stopped, and a failed on_acquire's release makes
    #    that node wait a lease before it campaigns again.
    hooks = 2 * p.hook_timeout + 4 * p.hook_max + t_max if p.hooks else 0
    # 6. The executor: each step may start a resolution late; a slowed one
    #    drains its backlog (a few events per elector) at its slow cost, its
    #    load stays measured high for up to two windows, and what it shed
    #    comes back within 2 F.
    executor = 8 * p.resolution + 16 * p.elections * p.exec_cost
    if p.slow_cost:
        executor += 6 * p.elections * p.slow_cost + 2 * CPU_WINDOW + 2 * LAG_LIMIT + 2 * f_max
    return stray + backoff + poll_max + peer + t_max + hooks + executor + 8 * 2 * CALM_MAX


def draw_params(seed: int) -> Params:
    """The schedule of ``seed``."""
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    timings = [draw_timing(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
    ratio = min(t.lease / (t.lease - t.margin) for t in timings)
    rate_hi = 1.0 + 0.9 * (ratio - 1.0)
    rates = [int(RATE_ONE * rng.uniform(1.0, rate_hi)) for _ in range(n)]
    offsets = [rng.randint(10**12, 10**14) for _ in range(n)]
    ids = [f"s{i}" for i in range(n)]
    if n >= 3 and rng.random() < 0.25:
        ids[n - 1] = ids[0]  # two live processes configured with one id
    t_max = max(t.lease for t in timings)
    peer_mode = rng.random() < 0.3
    faults_end = rng.randint(2, 8) * t_max + rng.randint(0, t_max)
    faults: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(0, 8)):
        at = rng.randint(0, faults_end)
        kinds = (NF_CRASH, NF_PAUSE, NF_PARTITION, NF_STOP, NF_CONFIG, NF_CONFIG_MIDWRITE)
        kind = rng.choices(kinds, (3, 3, 2, 2, 2, 2))[0]
        node = rng.randrange(n)
        if kind in (NF_CONFIG, NF_CONFIG_MIDWRITE):
            arg = rng.randrange(len(timings))
        elif kind == NF_PAUSE:
            arg = rng.randint(t_max // 2, 5 * t_max // 2)  # longer than the lease, often
        else:
            arg = rng.randint(0, 2 * t_max)
        faults.append((at, kind, node, arg))
    p_fault = rng.choice((0.0, 0.02, 0.05, 0.15))
    weights = [1.0 - p_fault] + [p_fault / 7] * 7
    p = Params(
        seed=seed,
        timings=timings,
        node_timing=[rng.randrange(len(timings)) for _ in range(n)],
        node_ids=ids,
        rates=rates,
        offsets=offsets,
        peer_mode=peer_mode,
        peer_timeout=rng.randint(5, 30) * t_max // 100,
        lat_base=_ms(rng, 0, 20),
        lat_jitter=_ms(rng, 1, 80),
        p_slow=rng.choice((0.0, 0.01, 0.05)),
        fate_weights=weights,
        p_peer_lie=rng.choice((0.0, 0.0, 0.1)),
        faults=faults,
        faults_end=faults_end,
        live_by=0,
        end=0,
        work_min=t_max // 50,
        work_max=t_max // 8,
    )
    # Hostile writes, from their own generator so every other draw stays as it was.
    crng = random.Random(seed ^ 0xBAD5EED)
    if crng.random() < 0.3:
        for _ in range(crng.randint(1, 3)):
            variant = crng.choice((CORRUPT_NOT_JSON, CORRUPT_TERM_RANGE, CORRUPT_LEASE))
            faults.append((crng.randint(0, faults_end), NF_CORRUPT, -1, variant))
    # Hooks, from their own generator too.
    hrng = random.Random(seed ^ 0x400C5)
    if hrng.random() < 0.5:
        p.hooks = True
        p.hook_timeout = hrng.choice((t_max // 4, t_max // 2, t_max))
        p.hook_max = t_max // 40
        p.p_hook_fail = hrng.choice((0.0, 0.1, 0.3))
    draw_wall_clocks(p)  # from a generator of its own too
    _draw_executor(p, n, t_max)  # and so is the executor's
    p.live_by = faults_end + liveness_bound(p)
    p.end = p.live_by + 2 * t_max
    return p


def _draw_executor(p: Params, n: int, t_max: int) -> None:
    """Elections per process, the executor's settings and its faults, from their own generator."""
    xrng = random.Random(p.seed ^ 0xE8EC)
    p.elections = xrng.choices((1, 2, 4), (8.0, 1.5, 0.5))[0]
    p.max_inflight = xrng.choice((p.elections, 2 * p.elections, 512))
    p.exec_cost = xrng.choice((0, 0, 100_000, MS))
    if xrng.random() < (0.3 if p.elections == 1 else 0.6):
        # A CPU hog beside the process: each step costs so much that its
        # electors need 0.7 to 3 times the CPU it has.
        f_min = min(t.frequent for t in p.timings)
        load = xrng.choice((0.7, 1.5, 3.0))
        p.slow_cost = max(MS, int(load * f_min / (3 * p.elections)))
        for _ in range(xrng.randint(1, 2)):
            at = xrng.randint(0, p.faults_end)
            p.faults.append((at, NF_SLOW, xrng.randrange(n), xrng.randint(t_max, 3 * t_max)))
    if xrng.random() < 0.25:
        for _ in range(xrng.randint(1, 2)):
            p.faults.append((xrng.randint(0, p.faults_end), NF_PEER, xrng.randrange(n), 0))


class SimFailure(AssertionError):
    """A schedule broke an invariant: the seed, the rule and a short trace."""

    def __init__(self, seed: int, violation: Violation, trace: list[str]) -> None:
        lines = "\n".join(trace)
        super().__init__(
            f"seed={seed}: {violation}\n"
            f"replay: python -m fastelect.sim --seed {seed} --trace\n"
            f"last {len(trace)} events (true ms, node, local ms, what | role term deadline):\n"
            f"{lines}"
        )
        self.seed = seed
        self.violation = violation


@dataclass(slots=True)
class Result:
    """What one schedule did (for rates, coverage and the failover figures)."""

    seed: int
    events: int = 0
    acquisitions: int = 0
    work_steps: int = 0
    duplicate_reports: int = 0
    #: (true time, node) of every EV_ACQUIRED, in order.
    acquired_at: list[tuple[int, int]] = field(default_factory=list)
    #: (true time, node) of an NF_CRASH_LEADER / NF_STOP_LEADER that found a leader.
    leader_fault: tuple[int, int] | None = None
    #: How often each interesting situation arose (coverage: see ``COVERAGE``).
    stats: dict[str, int] = field(default_factory=dict)


class SimNode:
    """One elector: the real :class:`~fastelect.driver.Driver` on its process's clock.

    What this class adds is what ``Elector`` adds around its driver: the
    requests (sent to the simulated store), timers, hooks (simulated: each
    takes a drawn time, some hang to ``hook_timeout``) and guarded leader
    work; every rule lives in the driver and the Campaign, and when a step
    runs is its process's executor's (:class:`SimProc`) decision.
    """

    __slots__ = (
        "addr",
        "c",
        "chk",
        "config_on_write",
        "d",
        "deferred",
        "election",
        "expiry_token",
        "final_write",
        "freeze_after_write",
        "hook_token",
        "index",
        "last_read",
        "leaderships_before",
        "lease_deadline",
        "lease_on",
        "offset",
        "op_kind",
        "op_to",
        "op_token",
        "oracle",
        "partitioned",
        "paused",
        "peer_mode",
        "pos",
        "proc",
        "rate",
        "renew_due",
        "server_id",
        "slot",
        "state",
        "stopping",
        "timing",
        "w",
    )

    def __init__(self, w: World, proc: SimProc, election: int) -> None:
        p = w.p
        self.w = w
        self.proc = proc
        self.election = election
        #: Its place among its election's electors (the checker's numbering).
        self.pos = pos = proc.index
        self.index = election * len(p.node_ids) + pos
        self.chk = w.checkers[election]
        self.server_id = p.node_ids[pos]
        self.addr = f"n{pos}:8443"
        self.rate = p.rates[pos]
        self.offset = p.offsets[pos]
        self.timing = p.timings[p.node_timing[pos]]
        self.peer_mode = p.peer_mode
        self.slot = w.table.slot(f"e{election}n{pos}", self.server_id)
        self.state = S_RUNNING
        self.paused = False
        self.partitioned = False
        self.deferred: list[tuple[int, int, int, int, Any]] = []
        #: A timing index to apply while the next write is in flight (or -1).
        self.config_on_write = -1
        self.freeze_after_write = False
        self.hook_token = 0
        #: Leaderships begun by earlier incarnations (crashed processes).
        self.leaderships_before = 0
        self.d = self._new_driver(0, 0)
        self.c = self.d.campaign
        self.oracle = self._new_oracle()
        self.last_read: tuple[str, int, int] | None = None
        self._reset_loop()

    def _new_oracle(self) -> RuleOracle:
        tm = self.timing
        return RuleOracle(f"n{self.index}", self.server_id, self.c.nonce, tm.lease, tm.margin)

    # -- clocks --------------------------------------------------------------------

    def local(self, t: int) -> int:
        return self.offset + ((t * self.rate) >> RATE_BITS)

    def true_at(self, local_ns: int) -> int:
        """The first true instant at which this node's clock reads ``local_ns``."""
        return -((-(local_ns - self.offset) << RATE_BITS) // self.rate)

    def true_after(self, t: int, local_dur: int) -> int:
        return self.true_at(self.local(t) + local_dur)

    # -- lifecycle -----------------------------------------------------------------

    def _new_driver(self, t: int, generation: int) -> Driver:
        tm = self.timing
        p = self.w.p
        campaign = self.w.make_campaign(
            self.index,
            self.slot,
            self.server_id,
            self.addr,
            tm.lease,
            tm.frequent,
            tm.infrequent,
            tm.margin,
            -1,
            self.peer_mode,
            self.local(t),
            self.w.nonce(),
        )
        return Driver(
            campaign,
            frequent_ns=tm.frequent,
            lease_ns=tm.lease,
            storage_timeout_ns=tm.storage_timeout,
            peer_timeout_ns=p.peer_timeout,
            hooks=HOOK_ACQUIRE | HOOK_LOSE if p.hooks else 0,
            generation=generation,
            hold_back=self.w.hold_back,
        )

    def _reset_loop(self) -> None:
        self.renew_due = -1
        self.stopping = False
        self.final_write = False
        self.op_token = 0
        self.op_kind = 0
        self.op_to = 0
        self.expiry_token = 0
        self.lease_on = False
        self.lease_deadline = 0

    # -- events and the checker (Elector._dispatch) -----------------------------------

    def sync(self, t: int, adopted: tuple[str, int, int] | None = None) -> None:
        """Take the driver's events, then check leases and roles.

        ``adopted``: the (nonce, term, renewal) just read, when a read led here.
        """
        c = self.c
        d = self.d
        w = self.w
        ev = d.take_events()
        if ev:
            if w.rec:
                w.note(t, self, f"events {ev:#x}")
            if ev & EV_DUPLICATE_ID:
                w.result.duplicate_reports += 1
                w.count("duplicate-id")
            if ev & EV_LOST:
                if (
                    not c.is_leader(self.local(t))
                    and self.lease_on
                    and self.true_at(self.lease_deadline) <= t
                ):
                    w.count("lease-lapsed")
                    if self.renew_due >= 0:
                        # Renew-first: a due renewal never waits behind other steps.
                        self.chk.renewal_held(t, self.pos, self.true_at(self.renew_due))
                self.renew_due = -1
                self.expiry_token = 0  # _cancel_expiry
                self.chk.lost(t, self.pos)
            if ev & EV_ACQUIRED:
                self.chk.acquired(t, self.pos, c.term)
                acq = w.result.acquired_at
                last = w.last_leader
                if last[self.election] not in (-1, self.pos):
                    w.count("takeover")
                last[self.election] = self.pos
                if self.op_kind == A_READ:
                    w.count("adopt")
                acq.append((t, self.index))
                self._schedule_work(t, d.generation)
            if c.role == LEADER:
                self._arm_expiry(t)
        is_leader = c.role == LEADER
        self.chk.role_agrees(t, self.pos, is_leader)
        if is_leader:
            dl = c.deadline_ns
            if not self.lease_on or dl != self.lease_deadline:
                self.lease_on = True
                self.lease_deadline = dl
                self.chk.lease(t, self.pos, self.true_at(dl), c.term)
                self.oracle.leading(t, dl, adopted)
        elif self.lease_on:
            self.lease_on = False
            self.chk.lease_over(t, self.pos)
        if d.hooks_pending and not self.hook_token:
            self._next_hook(t)

    # -- hooks (Elector._run_hooks / _call_hook, one at a time) ------------------------

    def _next_hook(self, t: int) -> None:
        w = self.w
        p = w.p
        d = self.d
        skipped = d.hooks_skipped
        hook = d.next_hook()
        if d.hooks_skipped != skipped:
            w.count("hook-skipped")
        if hook is not None:
            leadership = self.leaderships_before + hook.leadership
            self.chk.hook_started(t, self.pos, hook.name, leadership)
            hung = not w.calm and w.hook_rng.random() < p.p_hook_fail
            took = p.hook_timeout if hung else w.hook_rng.randint(0, p.hook_max)
            if hung:
                w.count("hook-hung")
            if w.rec:
                w.note(t, self, f"{hook.name} of leadership {leadership}{' hangs' if hung else ''}")
            self.hook_token = tok = w.token()
            w.push(self.true_after(t, took), E_HOOK, self.index, tok, hung)
        elif not d.lease_hooks:
            self.kick(t)  # a campaign held back for these hooks may go

    def on_hook_end(self, t: int, failed: bool) -> None:
        self.hook_token = 0
        if self.d.hook_finished(failed):
            self.kick(t)  # a release, or a campaign held back for these hooks
        self._next_hook(t)

    def _arm_expiry(self, t: int) -> None:
        # Elector._arm_expiry: a timer at the deadline kicks the loop.
        self.expiry_token = tok = self.w.token()
        self.w.push(max(t, self.true_at(self.c.deadline_ns)), E_EXPIRY, self.index, tok, None)

    def on_expiry(self, t: int) -> None:
        # Elector._on_expiry
        self.expiry_token = 0
        c = self.c
        now = self.local(t)
        if c.role == LEADER and c.is_leader(now):
            self._arm_expiry(t)  # renewals moved the deadline: follow it
            return
        if not c.is_leader(now):
            self.kick(t)

    # -- guarded leader work (run_while_leader's Stepper) -------------------------

    def _schedule_work(self, t: int, generation: int) -> None:
        w = self.w
        # Each election's leader works; the more elections, the slower each
        # one's steps (the run's budget), each still checked against its lease.
        step = w.rng.randint(w.p.work_min, w.p.work_max) * w.p.elections
        w.push(self.true_after(t, step), E_WORK, self.index, generation, None)

    def on_work(self, t: int, generation: int) -> None:
        # alive(): same generation and the compiled lease check, before each step.
        if generation != self.d.generation:
            return
        if not self.c.is_leader(self.local(t)):
            if self.w.rec:
                self.w.note(t, self, "work: lease over, not resumed")
            self.w.count("work-refused")
            return
        if self.w.rec:
            self.w.note(t, self, "work step")
        self.chk.work_step(t, self.pos, self.c.term)
        self._schedule_work(t, generation)

    # -- the executor's side (Scheduler._kick / _take_due / _start) --------------------

    def kick(self, t: int) -> None:
        # Elector._kick -> Scheduler._kick: look at the campaign again now.
        if self.state == S_RUNNING and not self.stopping and not self.final_write:
            self.proc.kick(t, self)

    def due(self, t: int, now: int) -> int | None:
        """The executor took this elector off its wheel: poll; the action to start, if any."""
        d = self.d
        c = self.c
        action = d.poll(now)
        self.sync(t)
        if action == HOLD:
            # Rule 9: the last leadership's hooks finish before a new one begins.
            self.w.count("campaign-held")
            self.proc.push(t, self, d.hold_until(now))
            return None
        if action == A_WAIT:
            if c.role != STOPPED_ROLE:
                self.proc.push(t, self, c.next_at_ns)
            return None
        if action == A_RENEW:
            self.renew_due = now  # until its write begins (or it steps down)
        return action

    def begin(self, t: int, now: int, action: int) -> None:
        """Start the step the executor chose (Elector._sched_step, up to the request)."""
        d = self.d
        c = self.c
        if action == A_READ:
            self._send(t, A_READ, d.op_timeout_ns(now), None)
        elif action == A_PEER:
            self._send(t, A_PEER, d.peer_timeout_ns, (c.leader_addr, c.leader_id))
        else:
            self._begin_write(t, now)

    def overload_step_down(self, t: int, now: int) -> None:
        """The executor gave up this leadership to keep the older ones (no write)."""
        self.renew_due = -1
        self.w.count("overload-stepdown")
        if self.w.rec:
            self.w.note(t, self, "overload: steps down")
        d = self.d
        d.step_down(now)
        self.sync(t)
        self.proc.push(t, self, d.hold_until(now))

    def _begin_write(self, t: int, now: int) -> None:
        # Elector._write, up to the request.
        c = self.c
        self.renew_due = -1
        kind, body, if_match, term, wall, _ = self.d.begin_write(now, EPOCH_NS + t)
        # The lease held once the write is under way (begin_write may shorten it).
        leading = c.deadline_ns if c.role == LEADER and c.is_leader(now) else None
        # The oracle checks the lease the body really advertises, not the core's word for it.
        sent = parse_record(body)
        self.oracle.begin_write(t, now, kind, if_match, term, sent.renewal, sent.lease_ms, leading)
        # Not a dispatch point in Elector._write, but begin_write may move the
        # deadline (a core that shortens a lease there), so the checker looks.
        self.sync(t)
        if self.w.rec:
            self.w.note(
                t, self, f"send {ACTION_NAMES[kind]} term={term} r={sent.renewal} if={if_match}"
            )
        self._send(t, kind, self.d.op_timeout_ns(now), (body, if_match, wall))
        if self.config_on_write >= 0:
            # The operator's update_config lands while this write is in flight.
            w = self.w
            at = min(self.op_to - 1, t + w.rng.randint(0, 2 * CALM_MAX))
            w.push(at, E_FAULT, self.pos, 0, (NF_CONFIG, self.config_on_write))
            w.count("config-mid-write")
            self.config_on_write = -1
            if w.rng.random() < 0.5:
                # ...and the node freezes once this write answered, before its next
                # renewal could advertise the new lease: the window rule 2 is about.
                self.freeze_after_write = True

    def _send(self, t: int, kind: int, timeout_local: int, data: Any) -> None:
        self.op_token = tok = self.w.token()
        self.op_kind = kind
        self.op_to = self.true_after(t, timeout_local)
        self.w.request(self, tok, kind, data)

    def on_reply(self, t: int, outcome: tuple[Any, ...]) -> None:
        """The request finished (answer or client timeout): Elector._read/_write/_peer_check."""
        self.op_token = 0
        d = self.d
        now = self.local(t)
        kind = self.op_kind
        code = outcome[0]
        w = self.w
        if kind == A_READ:
            if code == O_MISSING:
                if w.rec:
                    w.note(t, self, "read: missing")
                d.read_missing(now)
            elif code == O_FAIL:
                if w.rec:
                    w.note(t, self, f"read failed: {outcome[1]}")
                d.read_failed(now, outcome[1] == "403")  # as Elector: a 403 waits F
            else:
                self._read(t, now, outcome[1], outcome[2])
        elif kind == A_PEER:
            if code == O_OK:
                if w.rec:
                    w.note(t, self, f"peer: ok={outcome[1]} {outcome[2]} {outcome[3]}")
                if outcome[1] and outcome[2] == self.c.leader_id:
                    self.oracle.peer_etag(now, outcome[3])
                d.peer_answered(now, outcome[1], outcome[2], outcome[3])
            else:
                if w.rec:
                    w.note(t, self, "peer: no answer")
                d.peer_answered(now, False)
        else:
            if code == O_OK:
                if w.rec:
                    w.note(t, self, f"write ok -> {outcome[1]}")
                self.oracle.wrote(now, outcome[1])
                d.write_succeeded(now, outcome[1], outcome[2])
            elif code == O_PRE:
                if w.rec:
                    w.note(t, self, "write 412")
                d.write_conflicted(now)
            else:
                if w.rec:
                    w.note(t, self, f"write failed: {outcome[1]}")
                d.write_failed(now, outcome[1] == "403")
            if self.freeze_after_write:
                self.freeze_after_write = False
                t_max = max(tm.lease for tm in w.p.timings)
                at = t + w.rng.randint(0, self.timing.frequent // 2)
                w.push(at, E_FAULT, self.pos, 0, (NF_PAUSE, w.rng.randint(t_max, 2 * t_max)))
        self.sync(t, self.last_read if kind == A_READ and code == O_OK else None)
        if self.final_write:
            self.final_write = False
            self._finish_stop(t)
            return
        self.proc.step_done(t, self)
        if self.stopping:
            self._stop_sequence(t)

    def _read(self, t: int, now: int, body: bytes, etag: str) -> None:
        w = self.w
        d = self.d
        # The oracle looks first: it checks the rules against the record as sent.
        try:
            r = parse_record(body)
        except RecordError:
            kept = record_term(body)
            if w.rec:
                w.note(t, self, f"read {etag}: invalid record (term {kept})")
            self.oracle.garbage(now, etag, kept)
        else:
            if w.rec:
                w.note(
                    t,
                    self,
                    f"read {etag}: {r.leader_id}/{r.nonce[:4]} term={r.term} "
                    f"r={r.renewal} lease={r.lease_ms}{' released' if r.released else ''}",
                )
            self.oracle.observed(now, etag, r.term, r.lease_ms, r.released, r.nonce)
            self.last_read = (r.nonce, r.term, r.renewal)
        d.read_record(now, EPOCH_NS + t, body, etag)

    # -- stop and start (Elector.stop / start), crash and restart ----------------------

    def request_stop(self, t: int) -> None:
        if self.state != S_RUNNING or self.stopping or self.final_write:
            return  # not running, or already stopping
        if self.w.rec:
            self.w.note(t, self, "stop requested")
        self.stopping = True
        # Elector.stop: off the executor's wheel; a step in flight ends first.
        self.proc.policy.unschedule(self)
        if not self.op_token:
            self._stop_sequence(t)

    def _stop_sequence(self, t: int) -> None:
        self.stopping = False
        now = self.local(t)
        if self.d.begin_stop(now):
            self.sync(t)
            self.final_write = True
            self._begin_write(t, now)
            return
        self._finish_stop(t)

    def _finish_stop(self, t: int) -> None:
        self.d.stopped(self.local(t))
        self.sync(t)
        self.state = S_STOPPED
        if self.w.rec:
            self.w.note(t, self, "stopped")
        w = self.w
        if w.healed and not w.ending:
            # A stop begun before the faults ended finished after: the tail has
            # every node running, and the START drawn for it fell past the heal.
            self.start(t)

    def start(self, t: int) -> None:
        if self.state != S_STOPPED:
            return
        c = self.c
        if c.role == STOPPED_ROLE:
            self.d.restart(self.local(t), self.w.nonce())  # rule 0: a new incarnation
            self.oracle = self._new_oracle()
        self.state = S_RUNNING
        self.stopping = False  # Elector.start
        if self.w.rec:
            self.w.note(t, self, f"started, nonce {c.nonce[:4]}")
        self.sync(t)
        self.proc.push(t, self, 0)

    def crash(self, t: int) -> None:
        if self.state == S_CRASHED:
            return
        if self.w.rec:
            self.w.note(t, self, "CRASH")
        self.state = S_CRASHED
        self.paused = False
        self.deferred.clear()
        self._reset_loop()
        # Hooks and guarded work die with the process.
        self.d.drop_hooks()
        self.d.generation += 1
        self.hook_token = 0
        self.chk.crashed(t, self.pos)
        self.slot.release_slot()

    def restart(self, t: int) -> None:
        if self.state != S_CRASHED:
            return
        self.slot.restart_slot()
        self.w.count("restart")
        # Same id, new incarnation; the count of leadership changes goes on, so
        # work and hooks of the dead process never match the new one's.
        self.leaderships_before += self.d.leaderships
        self.d = self._new_driver(t, self.d.generation)
        self.c = self.d.campaign
        self.oracle = self._new_oracle()
        self.state = S_RUNNING
        if self.w.rec:
            self.w.note(t, self, f"restarted, nonce {self.c.nonce[:4]}")
        self.proc.push(t, self, 0)

    def update_config(self, t: int, timing: Timing) -> None:
        # Elector.update_config: configure() then kick.
        if self.state == S_CRASHED:
            return
        self.timing = timing
        p = self.w.p
        self.d.configure(
            timing.lease,
            timing.frequent,
            timing.infrequent,
            timing.margin,
            -1,
            self.peer_mode,
            storage_timeout_ns=timing.storage_timeout,
            peer_timeout_ns=p.peer_timeout,
            hooks=self.d.hooks,
        )
        self.oracle.configured(timing.lease, timing.margin)
        self.sync(t)
        if self.w.rec:
            self.w.note(t, self, f"config T={timing.lease // MS} m={timing.margin // MS}")
        if self.state == S_RUNNING:
            self.kick(t)

    def set_peer_mode(self, t: int, on: bool) -> None:
        # Elector.enable_peer_mode / update_config(peer_mode=...): configure() then kick.
        self.peer_mode = on
        if self.state == S_CRASHED:
            return
        tm = self.timing
        self.d.configure(
            tm.lease,
            tm.frequent,
            tm.infrequent,
            tm.margin,
            -1,
            on,
            storage_timeout_ns=tm.storage_timeout,
            peer_timeout_ns=self.w.p.peer_timeout,
            hooks=self.d.hooks,
        )
        self.sync(t)
        if self.w.rec:
            self.w.note(t, self, f"peer mode {'on' if on else 'off'}")
        if self.state == S_RUNNING:
            self.kick(t)


def _waiting(node: SimNode) -> bool:
    # Scheduler._waiting: a queued step is still the elector's next one.
    return node.state == S_RUNNING and not (node.stopping or node.final_write or node.op_token)


class SimProc:
    """One process: its electors and the executor they share, on the process's clock.

    What this class adds is what :class:`~fastelect.scheduler.Scheduler`
    adds around its :class:`~fastelect._schedule_policy.SchedulePolicy`:
    one turn at a time at the wheel's next bucket, the steps it chose
    started, in-flight accounting and kicks.  Every decision is the
    policy's.  Each event the process handles costs ``cost`` ns of its one
    CPU (a turn: ``cost`` per elector polled and step started); an event
    that arrives while the CPU is busy waits for it, so a process with more
    work than CPU serves it late, and measures a load (its busy share over
    ``CPU_WINDOW``) its policy sees.
    """

    __slots__ = (
        "busy_ns",
        "cost",
        "cpu_free",
        "index",
        "inflight",
        "kicked",
        "nodes",
        "offset",
        "policy",
        "rate",
        "turn_at",
        "turn_token",
        "w",
        "window_at",
    )

    def __init__(self, w: World, index: int) -> None:
        self.w = w
        self.index = index
        self.rate = w.p.rates[index]
        self.offset = w.p.offsets[index]
        self.nodes: list[SimNode] = []
        self.cost = w.p.exec_cost
        self.reset(0)

    def reset(self, t: int) -> None:
        """A new process (start of the run, or after a crash): a fresh executor."""
        p = self.w.p
        self.policy: SchedulePolicy[SimNode] = SchedulePolicy(
            max_inflight=p.max_inflight,
            lag_limit_ns=LAG_LIMIT,
            cpu_limit=CPU_LIMIT,
            campaign_limit=CAMPAIGN_LIMIT,
            resolution_ns=p.resolution,
            campaign_of=attrgetter("c"),
            frequent_of=attrgetter("d.frequent_ns"),
            rand=self.w.rng.random,
            renew_first=self.w.renew_first,
        )
        self.inflight: dict[SimNode, int] = {}
        self.kicked: set[SimNode] = set()
        self.turn_at = 0
        self.turn_token = 0
        self.cpu_free = t
        self.busy_ns = 0
        self.window_at = self.local(t)

    def local(self, t: int) -> int:
        return self.offset + ((t * self.rate) >> RATE_BITS)

    def true_at(self, local_ns: int) -> int:
        return -((-(local_ns - self.offset) << RATE_BITS) // self.rate)

    # -- the wheel (Scheduler._push / _kick / _op_done) ----------------------------------

    def push(self, t: int, node: SimNode, due_local: int) -> None:
        pol = self.policy
        pol.push(node, due_local)
        res = pol.resolution_ns
        start = max(due_local // res, pol.cursor) * res
        # The Scheduler wakes at the bucket's start; a step due later in the
        # bucket is polled there (not due), put in the next bucket and started
        # at its start.  Waking for it just before that start starts it at the
        # same instant with one poll, not two.
        self._turn_by(t, start if due_local <= start else start + res - 1)

    def _turn_by(self, t: int, local_at: int) -> None:
        if self.turn_token < 0:
            return  # inside a turn: its end schedules the next one
        at = max(t, self.true_at(local_at))
        if self.turn_token and self.turn_at <= at:
            return
        self.turn_at = at
        self.turn_token = tok = self.w.token()
        self.w.push(at, E_TURN, self.index, tok, None)

    def kick(self, t: int, node: SimNode) -> None:
        if node in self.inflight:
            self.kicked.add(node)  # re-queued at once when its step ends
        else:
            self.push(t, node, 0)

    def step_done(self, t: int, node: SimNode) -> None:
        """``node``'s step answered (or timed out): its next one goes on the wheel."""
        kind = self.inflight.pop(node, -1)
        if kind >= 0 and self.policy.ended(kind):
            self._turn_by(t, 0)  # room freed for a queued step
        if node.stopping or node.state != S_RUNNING:
            return
        if node in self.kicked:
            self.kicked.discard(node)
            self.push(t, node, 0)
        else:
            self.push(t, node, node.c.next_at_ns)

    # -- the CPU --------------------------------------------------------------------------

    def spend(self, t: int, steps: int) -> None:
        cost = self.cost * steps
        self.cpu_free = t + cost
        self.busy_ns += cost

    def _measure(self, now: int) -> None:
        # Scheduler._measure_cpu: the load over the last window is the policy's input.
        elapsed = now - self.window_at
        if elapsed >= CPU_WINDOW:
            self.policy.busy = self.busy_ns / elapsed
            if self.policy.busy > CPU_LIMIT:
                self.w.count("overloaded")
            self.busy_ns = 0
            self.window_at = now

    # -- a turn (Scheduler._drive's body) -----------------------------------------------

    def turn(self, t: int) -> None:
        w = self.w
        pol = self.policy
        self.turn_token = -1
        now = self.offset + ((t * self.rate) >> RATE_BITS)
        if now - self.window_at >= CPU_WINDOW:
            self._measure(now)
        due, lag = pol.take_due(now)
        steps = len(due)
        renewals: list[SimNode] = []
        for node in due:
            if (
                node.state != S_RUNNING
                or node.stopping
                or node.final_write
                or node in self.inflight
            ):
                continue  # its step's end puts it back
            action = node.due(t, now)
            if action is None:
                continue
            if action == A_RENEW:
                renewals.append(node)
            elif action == A_RELEASE:
                pol.stats.renewals += 1
                self._start(t, now, node, action)
            else:
                pol.queue(node, action, now)
        if renewals:
            start, drop = pol.renew(renewals, now)
            for node in drop:
                node.overload_step_down(t, now)
            for node in start:
                self._start(t, now, node, A_RENEW)
            steps += len(start) + len(drop)
        if pol.ready:
            starts, shed = pol.start_ready(now, lag, _waiting)
            for node, action in starts:
                self._start(t, now, node, action)
            steps += len(starts)
            if shed:
                w.count("shed-turn")
                for node, action in shed:
                    w.count("shed-read" if action in (A_READ, A_PEER) else "shed-campaign")
                    w.count("shed")
                    if w.rec:
                        w.note(t, node, f"shed {ACTION_NAMES[action]}")
        if self.cost:
            self.spend(t, steps)
        self.turn_token = 0
        # Sleep until the next due bucket (at most one wake-up per resolution).
        nxt = pol.next_due_ns()
        if pol.has_room():
            nxt = now  # room freed meanwhile: go round again
        if nxt >= 0:
            self._turn_by(max(t, self.cpu_free), max(nxt, now + pol.resolution_ns))

    def _start(self, t: int, now: int, node: SimNode, action: int) -> None:
        self.inflight[node] = self.policy.began(action)
        node.begin(t, now, action)


class Key:
    """One election's key in the store: linearizable; a fresh etag per successful write."""

    __slots__ = ("body", "corrupt", "etag", "etags", "stored_at", "stored_campaign")

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.etag = ""
        self.etags = 0
        #: It holds a record NF_CORRUPT wrote (counts "corrupt-replaced").
        self.corrupt = False
        #: True time the stored record was written.
        self.stored_at = 0
        #: (elector's checker position, leaderships it had begun) of the
        #: campaign write stored, if any.
        self.stored_campaign: tuple[int, int] | None = None


class World:
    """The event loop, the store and the fault injector of one schedule."""

    def __init__(self, p: Params, *, trace: bool = False, record: bool = False) -> None:
        self.p = p
        self.rng = random.Random(p.seed ^ 0x5EED)
        self.heap: list[tuple[int, int, int, int, int, Any]] = []
        self.seq = 0
        self.calm = p.calm_from_start
        #: The faults are over (faults_end passed) / the final stop began.
        self.healed = False
        self.ending = False
        procs = len(p.node_ids)
        self.table = LeadershipTable(slots=procs * p.elections)
        #: One checker per election (each numbers its electors by process).
        self.checkers = [Checker(procs, hooks=p.hooks) for _ in range(p.elections)]
        self.checker = self.checkers[0]
        #: The process that last began a leadership of each election (-1: none yet).
        self.last_leader = [-1] * p.elections
        #: Hook durations and failures: a generator of their own, so schedules
        #: without hooks draw exactly what they drew before hooks were simulated.
        self.hook_rng = random.Random(p.seed ^ 0x400C5 ^ 1)
        self.result = Result(p.seed)
        self.print_trace = trace
        #: Keep a trace?  The fast run does not; a failing seed is replayed with it on.
        self.rec = trace or record
        self.trace: deque[tuple[int, int, int, str, int, int, int]] = deque(maxlen=40)
        self.now = 0
        # The store: one key per election.
        self.keys = [Key() for _ in range(p.elections)]
        #: Rule 9's hold-back in every node's driver (False: that rule's mutant).
        self.hold_back = True
        #: The executors' renew-first order (False: that policy's mutant).
        self.renew_first = True
        #: Builds each node's Campaign (the compiled one, a mutant, or both in lockstep).
        self.make_campaign = campaign_factory(p, self, Campaign)
        self.procs = [SimProc(self, i) for i in range(procs)]
        self.nodes: list[SimNode] = []
        for e in range(p.elections):
            for proc in self.procs:
                node = SimNode(self, proc, e)
                proc.nodes.append(node)
                self.nodes.append(node)
        self.fates = list(range(8))
        if p.elections > 1:
            self.count("multi-election")
        if p.max_skew >= 0:
            self.count("skew-bounded")
        if any(p.wall_offsets):
            self.count("wall-apart")
        if p.peer_mode:
            self.count("peer-on")

    # -- plumbing ------------------------------------------------------------------

    def token(self) -> int:
        self.seq += 1
        return self.seq

    def count(self, what: str) -> None:
        stats = self.result.stats
        stats[what] = stats.get(what, 0) + 1

    def nonce(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def push(self, t: int, kind: int, node: int, token: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, node, token, data))

    def note(self, t: int, node: SimNode, what: str) -> None:
        c = node.c
        entry = (t, node.index, node.local(t), what, c.role, c.term, c.deadline_ns)
        self.trace.append(entry)
        if self.print_trace:
            print(self.format(entry, node))

    def format(self, entry: tuple[int, int, int, str, int, int, int], node: SimNode) -> str:
        t, i, local, what, role, term, deadline = entry
        n = node
        rel = (local - n.offset) / 1e6
        dl = f"{(deadline - n.offset) / 1e6:.1f}" if role == LEADER else "-"
        role_name = _core.ROLE_NAMES[role]
        return f"{t / 1e6:11.3f} n{i} {rel:11.3f}  {what} | {role_name} t{term} dl={dl}"

    # -- the store and the network -----------------------------------------------------

    def _latency(self) -> int:
        p = self.p
        if self.calm:
            if p.fixed_latency:
                return p.fixed_latency
            return self.rng.randint(CALM_MIN, CALM_MAX)
        rng = self.rng
        if p.p_slow and rng.random() < p.p_slow:
            return rng.randint(0, 2 * max(t.storage_timeout for t in p.timings))
        return p.lat_base + int(rng.expovariate(1.0) * p.lat_jitter) + 1000

    def request(self, node: SimNode, token: int, kind: int, data: Any) -> None:
        """Send ``node``'s request; its fate and timing are drawn now."""
        t = self.now
        rng = self.rng
        fate = F_NORMAL
        if node.partitioned:
            fate = F_LOST_REQ
        elif not self.calm:
            if kind == A_PEER:
                if self.p.p_peer_lie and rng.random() < self.p.p_peer_lie:
                    fate = F_LIE
            else:
                fate = rng.choices(self.fates, self.p.fate_weights)[0]
        t_apply = t + self._latency()
        t_reply = t_apply + self._latency()
        idx = node.index
        if kind == A_PEER:
            if fate == F_LOST_REQ or t_reply >= node.op_to:
                self.push(node.op_to, E_TIMEOUT, idx, token, None)
                return
            if fate == F_LIE:
                self.count("peer-lie")
                # A peer that answers 200 naming the leader we expect, whatever is true.
                self.push(t_reply, E_REPLY, idx, token, (O_OK, True, data[1], ""))
                return
            self.push(t_apply, E_APPLY, idx, token, (kind, (data, node.op_to), t_reply, fate))
            return
        if fate in (F_500, F_503, F_403, F_409):
            if t_reply < node.op_to:
                # S3's 409 ConditionalRequestConflict reads as a lost CAS (S3Storage).
                out: tuple[Any, ...] = (O_FAIL, _FATE_NAMES[fate])
                if fate == F_409 and kind != A_READ:
                    out = (O_PRE,)
                self.push(t_reply, E_REPLY, idx, token, out)
            else:
                self.push(node.op_to, E_TIMEOUT, idx, token, None)
            return
        if fate == F_LOST_REQ:
            self.push(node.op_to, E_TIMEOUT, idx, token, None)
            return
        if fate == F_LATE:
            t_apply = node.op_to + rng.randint(0, LATE_MAX)
        if fate != F_NORMAL or t_reply >= node.op_to:
            self.push(node.op_to, E_TIMEOUT, idx, token, None)
            t_reply = 0  # no answer reaches the client
        self.push(t_apply, E_APPLY, idx, token, (kind, data, t_reply, fate))

    def _apply(self, t: int, node_idx: int, token: int, data: Any) -> None:
        kind, payload, t_reply, fate = data
        if kind == A_PEER:
            self._peer_answer(t, node_idx, token, payload, t_reply)
            return
        sender = self.nodes[node_idx]
        k = self.keys[sender.election]
        if kind == A_READ:
            out: tuple[Any, ...] = (O_MISSING,) if k.body is None else (O_OK, k.body, k.etag)
        else:
            body, if_match, wall = payload
            if (k.body is not None) if if_match == "" else (if_match != k.etag):
                out = (O_PRE,)
            else:
                k.etags += 1
                k.body = body
                k.etag = f"e{k.etags}"
                k.stored_at = t
                out = (O_OK, k.etag, wall)
                k.stored_campaign = (
                    (sender.pos, sender.chk.begun[sender.pos])
                    if kind in (A_CREATE, A_TAKEOVER)
                    else None
                )
                if k.corrupt:
                    k.corrupt = False
                    self.count("corrupt-replaced")
                if fate == F_LATE:
                    self.count("late-write")
                elif fate == F_LOST_REPLY:
                    self.count("lost-reply")
                if sender.op_token != token or sender.state == S_CRASHED:
                    self.count("orphan-write")
            if self.print_trace:
                landed = k.etag if out[0] == O_OK else "412"
                print(
                    f"{t / 1e6:11.3f} store: {ACTION_NAMES[kind]} from n{node_idx} "
                    f"({_FATE_NAMES[fate]}) -> {landed}"
                )
        if t_reply:
            self.push(t_reply, E_REPLY, node_idx, token, out)

    def _peer_answer(self, t: int, node_idx: int, token: int, payload: Any, t_reply: int) -> None:
        # The health endpoint of the node at that address answers from its table:
        # 200 naming itself only while its lease is live (the same arithmetic).
        (addr, expected), op_to = payload
        target = None
        election = self.nodes[node_idx].election
        for n in self.nodes:
            if n.addr == addr and n.election == election:
                target = n
        if target is None or target.state == S_CRASHED or target.paused or target.partitioned:
            self.push(op_to, E_TIMEOUT, node_idx, token, None)  # no answer
            return
        tc = target.c
        leading = target.state == S_RUNNING and tc.is_leader(target.local(t))
        ok = leading and tc.server_id == expected
        out = (O_OK, ok, tc.server_id if leading else "", tc.etag if leading else "")
        self.push(t_reply, E_REPLY, node_idx, token, out)

    # -- faults -----------------------------------------------------------------------

    def _fault(self, t: int, kind: int, node_idx: int, arg: int) -> None:
        """A node-level fault; ``node_idx`` names a process, and it hits all its electors."""
        pr = self.procs[node_idx] if node_idx >= 0 else None
        if t > self.p.faults_end and (kind < NF_HEAL_ALL or kind >= NF_CONFIG_MIDWRITE):
            return  # the heal at faults_end already ended every fault
        if kind == NF_HEAL_ALL:
            self._heal_all(t)
            return
        if kind == NF_END:
            self.ending = True
            for node in self.nodes:
                node.request_stop(t)
            return
        if kind in (NF_CRASH_LEADER, NF_STOP_LEADER):
            live = self.checker.live(t)
            if live:
                self.result.leader_fault = (t, live[0])
                if kind == NF_CRASH_LEADER:
                    self._crash(t, self.procs[live[0]])
                    self.push(t + arg, E_FAULT, live[0], 0, (NF_RESTART, 0))
                else:
                    self.nodes[live[0]].request_stop(t)
                    self.push(t + arg, E_FAULT, live[0], 0, (NF_START, 0))
            return
        if kind == NF_CORRUPT:
            self._corrupt(t, arg)
            return
        assert pr is not None
        nodes = pr.nodes
        first = nodes[0]
        if kind <= NF_CONFIG:
            self.count(("crash", "pause", "partition", "stop", "config")[kind])
        if kind == NF_CONFIG_MIDWRITE:
            first.config_on_write = arg  # at the next write of its first elector
            return
        if kind == NF_CRASH:
            self._crash(t, pr)
            self.push(t + arg, E_FAULT, node_idx, 0, (NF_RESTART, 0))
        elif kind == NF_RESTART:
            for n in nodes:
                n.restart(t)
        elif kind == NF_PAUSE:
            if first.state != S_CRASHED and not first.paused:
                if self.rec:
                    self.note(t, first, f"PAUSE for {arg / 1e6:.0f} ms")
                for n in nodes:
                    n.paused = True
                self.push(t + arg, E_FAULT, node_idx, 0, (NF_RESUME, 0))
        elif kind == NF_RESUME:
            self._resume(t, pr)
        elif kind == NF_PARTITION:
            if self.rec:
                self.note(t, first, "partitioned")
            for n in nodes:
                n.partitioned = True
            self.push(t + arg, E_FAULT, node_idx, 0, (NF_HEAL_ONE, 0))
        elif kind == NF_HEAL_ONE:
            for n in nodes:
                n.partitioned = False
        elif kind in (NF_STOP, NF_CONFIG, NF_PEER) and first.paused:
            # Faults of the process's own code wait for it to run again (once: on its first).
            first.deferred.append((t, self.token(), E_FAULT, node_idx, (kind, arg)))
        elif kind == NF_STOP:
            for n in nodes:
                n.request_stop(t)
            self.push(t + arg, E_FAULT, node_idx, 0, (NF_START, 0))
        elif kind == NF_START:
            for n in nodes:
                n.start(t)
        elif kind == NF_CONFIG:
            for n in nodes:
                n.update_config(t, self.p.timings[arg])
        elif kind == NF_SLOW:
            if first.state != S_CRASHED:
                self.count("slow")
                if self.rec:
                    self.note(t, first, f"SLOW executor for {arg / 1e6:.0f} ms")
                pr.cost = self.p.slow_cost
                self.push(t + arg, E_FAULT, node_idx, 0, (NF_FAST, 0))
        elif kind == NF_FAST:
            pr.cost = self.p.exec_cost
        elif kind == NF_PEER:
            # Elector.enable_peer_mode / update_config(peer_mode=...) at run time.
            self.count("peer-toggle")
            for n in nodes:
                n.set_peer_mode(t, not n.peer_mode)

    def _crash(self, t: int, pr: SimProc) -> None:
        if pr.nodes[0].state == S_CRASHED:
            return
        for n in pr.nodes:
            n.crash(t)
        pr.reset(t)  # the executor dies with the process

    def _corrupt(self, t: int, variant: int) -> None:
        """A hostile (or buggy) client overwrites the record with an invalid one.

        Only where the rules can keep their promise: an invalid record hides
        the lease its predecessor advertised, so followers wait their own T.
        That is safe while every node is configured with one T (one timing in
        the schedule), or once the stored record's lease is over; otherwise
        the hostile write is skipped (docs/safety.md states this limit).
        """
        stored = self._stored_term()
        if len(self.p.timings) > 1 and not self._stored_lease_over(t):
            return
        top = max(self.checker.max_term, stored, 0)
        k = self.keys[0]  # election 0's key (its checker is self.checker)
        base = {"leaderID": "intruder", "leaderAddr": "", "lastUpdated": "2026-01-01T00:00:00Z"}
        if variant == CORRUPT_NOT_JSON:
            body = b"\x00 not a lock record"
        elif variant == CORRUPT_TERM_RANGE:
            body = orjson.dumps({**base, "term": 2**62 + 1 + top, "leaseMs": 1000})
        else:
            # A term above every leadership so far: the next one must be higher still.
            term = top + self.rng.randint(1, 5)
            lease = self.rng.choice(_CORRUPT_LEASES)
            body = orjson.dumps({**base, "term": term, "leaseMs": lease})
        kept = record_term(body)
        # A campaign write stored whose writer has not begun that leadership
        # yet (its answer is on the way): won before, known after.
        won = k.stored_campaign
        late = stored if won is not None and self.checker.begun[won[0]] == won[1] else -1
        k.stored_campaign = None
        if kept is None:
            self.checker.terms_destroyed(max(self.checker.max_term, stored), late)
        else:
            self.checker.invalid_term(kept, late)
            self.count("corrupt-term-kept")
        k.etags += 1
        k.body = body
        k.etag = f"e{k.etags}"
        k.stored_at = t
        k.corrupt = True
        self.count("corrupt")
        if self.print_trace:
            print(f"{t / 1e6:11.3f} store: CORRUPT ({variant}) -> {k.etag} {body[:60]!r}")

    def _stored_term(self) -> int:
        """The in-bounds term of the stored record (-1 if none).

        It may belong to a write whose answer has not arrived yet, which the
        checker has not seen: the highest term stored so far.
        """
        body = self.keys[0].body
        kept = record_term(body) if body is not None else None
        return -1 if kept is None else kept

    def _stored_lease_over(self, t: int) -> bool:
        """No lease can be live: the stored record is released, invalid, or past its lease.

        A leader's deadline counts from before its write's first send, on a
        clock no slower than true time, so it ends within leaseMs of true time
        after the write was stored.
        """
        k = self.keys[0]
        if k.body is None:
            return True
        try:
            r = parse_record(k.body)
        except RecordError:
            return True  # only a takeover (which replaces it) can lead from it
        return r.released or t >= k.stored_at + r.lease_ms * MS

    def _resume(self, t: int, pr: SimProc, *, healing: bool = False) -> None:
        if not pr.nodes[0].paused:
            return
        for n in pr.nodes:
            n.paused = False
            if healing:
                # Faults that waited for the pause to end (stop, config) end with it.
                n.deferred = [d for d in n.deferred if d[2] != E_FAULT]
            if self.rec:
                self.note(t, n, f"resumed with {len(n.deferred)} due")
            due = n.deferred
            n.deferred = []
            # After SIGCONT everything that came due is ready at once; the loops
            # differ in which they run first, so the order is drawn.
            self.rng.shuffle(due)
            for _t, _seq, kind, idx, data in due:
                if kind == E_REPLY and n.op_to <= t and self.rng.random() < 0.5:
                    kind = E_TIMEOUT  # the timeout callback won the race
                token = data[0] if kind != E_FAULT else 0
                payload = data[1] if kind != E_FAULT else data
                self.push(t, kind, idx, token, payload)
        pr.turn_token = 0
        pr._turn_by(t, 0)  # the executor's turn that waited

    def _heal_all(self, t: int) -> None:
        self.calm = True
        self.healed = True
        for pr in self.procs:
            self._resume(t, pr, healing=True)
            pr.cost = self.p.exec_cost
        for n in self.nodes:
            n.partitioned = False
            n.config_on_write = -1
            n.freeze_after_write = False
            if n.peer_mode != self.p.peer_mode:
                n.set_peer_mode(t, self.p.peer_mode)
            if n.state == S_CRASHED:
                n.restart(t)
            elif n.state == S_STOPPED:
                n.start(t)

    # -- running -------------------------------------------------------------------------

    def run(self) -> Result:
        p = self.p
        for n in self.nodes:
            n.proc.push(0, n, 0)
        for at, kind, node, arg in p.faults:
            self.push(at, E_FAULT, node, 0, (kind, arg))
        self.push(p.faults_end, E_FAULT, -1, 0, (NF_HEAL_ALL, 0))
        step = max(MS, min(t.frequent for t in p.timings) // 2)
        t = p.live_by
        while t < p.end:
            self.push(t, E_CHECK, -1, 0, None)
            t += step
        self.push(p.end, E_FAULT, -1, 0, (NF_END, 0))
        heap = self.heap
        nodes = self.nodes
        procs = self.procs
        pop = heapq.heappop
        events = 0
        limit = 2_000_000
        while heap:
            t, seq, kind, idx, token, data = pop(heap)
            if t < self.now:
                raise Violation("simulator", t, f"time ran backwards from {self.now}")
            self.now = t
            events += 1
            if events > limit:
                raise Violation("runaway", t, f"more than {limit} events")
            if kind == E_APPLY:
                self._apply(t, idx, token, data)
                continue
            if kind == E_FAULT:
                self._fault(t, data[0], idx, data[1])
                continue
            if kind == E_CHECK:
                for e, checker in enumerate(self.checkers):
                    if not checker.live(t):
                        raise Violation(
                            "liveness",
                            t,
                            f"no node leads{f' election {e}' if e else ''} "
                            f"{(t - p.faults_end) / 1e6:.1f} ms after the faults "
                            f"stopped (bound {(p.live_by - p.faults_end) / 1e6:.1f} ms)",
                        )
                continue
            if kind == E_TURN:
                pr = procs[idx]
                if token != pr.turn_token or pr.nodes[0].state == S_CRASHED:
                    continue
                if pr.nodes[0].paused:
                    pr.turn_token = 0  # taken again at the resume
                    continue
                if pr.cpu_free > t:
                    # The CPU is busy: the turn waits for it (so due work runs late).
                    pr.turn_at = pr.cpu_free
                    self.push(pr.cpu_free, E_TURN, idx, token, None)
                    continue
                pr.turn(t)
                continue
            n = nodes[idx]
            if n.state == S_CRASHED:
                continue
            if n.paused:
                n.deferred.append((t, seq, kind, idx, (token, data)))
                continue
            pr = n.proc
            if pr.cpu_free > t:
                self.push(pr.cpu_free, kind, idx, token, data)  # waits for the CPU
                continue
            if pr.cost:
                pr.spend(t, 1)
            if kind in (E_REPLY, E_TIMEOUT):
                if token != n.op_token:
                    continue
                if kind == E_REPLY and n.partitioned:
                    # The answer is lost on the way back: the client times out.
                    self.push(max(t, n.op_to), E_TIMEOUT, idx, token, None)
                    continue
                n.on_reply(t, data if kind == E_REPLY else (O_FAIL, "timeout"))
            elif kind == E_EXPIRY:
                if token == n.expiry_token:
                    n.on_expiry(t)
            elif kind == E_WORK:
                n.on_work(t, token)
            elif kind == E_HOOK and token == n.hook_token:
                n.on_hook_end(t, data)
        for checker in self.checkers:
            checker.finished(self.now)
        for n in nodes:
            if n.state == S_RUNNING:
                raise Violation("lifecycle", self.now, f"n{n.index} did not stop at the end")
        r = self.result
        reset = sum(c.terms_reset for c in self.checkers)
        if reset:
            # rule 5's documented limit, reached: shown in a run's counts, not required.
            r.stats["term-reused"] = r.stats.get("term-reused", 0) + reset
        r.events = events
        r.acquisitions = sum(c.acquisitions for c in self.checkers)
        r.work_steps = sum(c.work_steps for c in self.checkers)
        return r

    def close(self) -> None:
        self.table.close()

    def trace_lines(self) -> list[str]:
        return [self.format(e, self.nodes[e[1]]) for e in self.trace]


def _run(p: Params, trace: bool, record: bool) -> tuple[Result | Violation, list[str]]:
    w = World(p, trace=trace, record=record)
    try:
        return w.run(), []
    except Violation as v:
        return v, w.trace_lines()
    finally:
        w.close()


def run_schedule(
    seed: int,
    *,
    trace: bool = False,
    params: Params | None = None,
    mutant: str | None = None,
    lockstep: bool = False,
) -> Result:
    """Run the schedule of ``seed``; raises :class:`SimFailure` on a violation.

    The fast run keeps no trace; a violation is replayed from the seed with
    the trace on, which also proves the failure reproduces.  ``mutant`` and
    ``lockstep``: see :class:`Params`.
    """
    p = params if params is not None else draw_params(seed)
    if mutant is not None or lockstep:
        p = dataclasses.replace(p, mutant=mutant, lockstep=lockstep)
    outcome, lines = _run(p, trace, trace)
    if isinstance(outcome, Result):
        return outcome
    if not trace:
        again, lines = _run(p, False, True)
        if not isinstance(again, Violation) or str(again) != str(outcome):
            lines = [f"NOT REPRODUCED on replay (the simulator is nondeterministic): {again}"]
    raise SimFailure(p.seed, outcome, lines)
