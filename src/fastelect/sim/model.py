"""The simulator's model of a schedule: its parameters, drawn from a seed, and its codes.

Constants (event kinds, request fates, node faults, outcomes), the schedule's
:class:`Params` and how :func:`draw_params` draws them, the liveness bound,
the coverage keys and their families, and what a run returns.  The world
that plays a schedule is :mod:`fastelect.sim.world`; the processes in it,
:mod:`fastelect.sim.hosts`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .. import _core
from .checker import Violation
from .wallclock import draw_wall_clocks

__all__ = [
    "COVERAGE",
    "FAMILIES",
    "Params",
    "Result",
    "SimFailure",
    "Timing",
    "by_family",
    "draw_params",
    "format_families",
    "liveness_bound",
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
