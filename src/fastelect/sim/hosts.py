"""The simulated processes: each runs the real driver and executor policy on its own clock.

:class:`SimNode` is one elector: the real :class:`~fastelect.driver.Driver`
around the real Campaign, with what ``Elector`` adds around its driver
(requests, timers, hooks and guarded work, as events on the world's heap).
:class:`SimProc` is one process: its electors and the real
:class:`~fastelect._schedule_policy.SchedulePolicy` they share, with
simulated CPU per step.  Neither decides anything about an election.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any

from .._schedule_policy import SchedulePolicy
from ..driver import HOLD, HOOK_ACQUIRE, HOOK_LOSE, Driver
from ..errors import RecordError
from ..record import parse_record, record_term
from .model import (
    A_PEER,
    A_READ,
    A_RELEASE,
    A_RENEW,
    A_WAIT,
    ACTION_NAMES,
    CALM_MAX,
    CAMPAIGN_LIMIT,
    CPU_LIMIT,
    CPU_WINDOW,
    E_EXPIRY,
    E_FAULT,
    E_HOOK,
    E_TURN,
    E_WORK,
    EPOCH_NS,
    EV_ACQUIRED,
    EV_DUPLICATE_ID,
    EV_LOST,
    LAG_LIMIT,
    LEADER,
    MS,
    NF_CONFIG,
    NF_PAUSE,
    O_FAIL,
    O_MISSING,
    O_OK,
    O_PRE,
    RATE_BITS,
    S_CRASHED,
    S_RUNNING,
    S_STOPPED,
    STOPPED_ROLE,
    Timing,
)
from .oracle import RuleOracle

if TYPE_CHECKING:
    from .world import World

__all__ = ["SimNode", "SimProc"]


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
