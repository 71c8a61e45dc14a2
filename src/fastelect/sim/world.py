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
from typing import Any

import orjson

from .. import _core
from .._core import Campaign, LeadershipTable
from ..errors import RecordError
from ..record import parse_record, record_term
from .checker import Checker, Violation
from .hosts import SimNode, SimProc
from .model import (
    _CORRUPT_LEASES,
    _FATE_NAMES,
    A_CREATE,
    A_PEER,
    A_READ,
    A_TAKEOVER,
    ACTION_NAMES,
    CALM_MAX,
    CALM_MIN,
    CORRUPT_NOT_JSON,
    CORRUPT_TERM_RANGE,
    COVERAGE,
    E_APPLY,
    E_CHECK,
    E_EXPIRY,
    E_FAULT,
    E_HOOK,
    E_REPLY,
    E_TIMEOUT,
    E_TURN,
    E_WORK,
    F_403,
    F_409,
    F_500,
    F_503,
    F_LATE,
    F_LIE,
    F_LOST_REPLY,
    F_LOST_REQ,
    F_NORMAL,
    FAMILIES,
    LATE_MAX,
    LEADER,
    MS,
    NF_CONFIG,
    NF_CONFIG_MIDWRITE,
    NF_CORRUPT,
    NF_CRASH,
    NF_CRASH_LEADER,
    NF_END,
    NF_FAST,
    NF_HEAL_ALL,
    NF_HEAL_ONE,
    NF_PARTITION,
    NF_PAUSE,
    NF_PEER,
    NF_RESTART,
    NF_RESUME,
    NF_SLOW,
    NF_START,
    NF_STOP,
    NF_STOP_LEADER,
    O_FAIL,
    O_MISSING,
    O_OK,
    O_PRE,
    S_CRASHED,
    S_RUNNING,
    S_STOPPED,
    Params,
    Result,
    SimFailure,
    by_family,
    draw_params,
    format_families,
)
from .mutants import campaign_factory

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
