"""Command line: ``python -m fastelect.sim``.

    python -m fastelect.sim --seed 1234 --trace        replay one schedule, every event
    python -m fastelect.sim --schedules 1000000 --jobs 2 [--base 0]
                                                       many schedules, stop at the first violation
    python -m fastelect.sim --lockstep [N] ...         the compiled Campaign and its Python
                                                       twin on every call, compared (in every
                                                       schedule, or in every N-th)
    python -m fastelect.sim --mutant rule0 --schedules 2000
                                                       a safety fix reverted: after how many
                                                       schedules (and at which seed) is it caught?
    python -m fastelect.sim --mutant all               each mutant in turn, as a table

Exit status 0 when every schedule held every invariant (with --mutant: when
every mutant was caught), 1 on a violation (its seed and trace are printed;
with --mutant: a mutant survived), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import re
import sys

from .mutants import MUTANTS
from .runner import RunSummary, print_progress, run_many
from .world import SimFailure, draw_params, format_families, run_schedule

#: Seeds per block in a mutant hunt: blocks go in seed order, so a small
#: block wastes little past the first failing seed.
MUTANT_BLOCK = 20


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fastelect.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="run only this schedule")
    ap.add_argument("--trace", action="store_true", help="with --seed: print every event")
    ap.add_argument("--schedules", type=int, default=10_000, help="how many (default 10000)")
    ap.add_argument("--base", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (default: all cores)")
    ap.add_argument(
        "--lockstep",
        type=int,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="run the compiled Campaign and its pure-Python twin side by side on every call, "
        "in every schedule (or in those whose seed is a multiple of N)",
    )
    ap.add_argument(
        "--mutant",
        metavar="NAME",
        help=f"revert one safety fix ({', '.join(MUTANTS)}) or 'all'; reports when it is caught",
    )
    args = ap.parse_args(argv)
    if args.schedules < 1 or args.jobs < 0 or args.base < 0 or args.lockstep < 0:
        ap.error("--schedules must be positive, --jobs, --base and --lockstep not negative")
    if args.mutant is not None and args.mutant != "all" and args.mutant not in MUTANTS:
        ap.error(f"no mutant {args.mutant!r}; known: {', '.join(MUTANTS)}, all")
    if args.mutant == "all" and args.seed is not None:
        ap.error("--mutant all runs many schedules; replay one with --mutant NAME --seed S")
    if args.mutant is not None and args.seed is None:
        names = list(MUTANTS) if args.mutant == "all" else [args.mutant]
        return _hunt(names, args.base, args.schedules, args.jobs, args.lockstep)
    if args.seed is not None:
        p = draw_params(args.seed)
        print(
            f"seed={args.seed}: {len(p.node_ids)} nodes {p.node_ids}, peer_mode={p.peer_mode}, "
            f"timings (ms) {[(t.lease // 10**6, t.frequent // 10**6, t.infrequent // 10**6, t.margin // 10**6) for t in p.timings]}, "  # noqa: E501
            f"faults end {p.faults_end / 1e6:.0f} ms, leader due by {p.live_by / 1e6:.0f} ms, "
            f"max_clock_skew {'off' if p.max_skew < 0 else f'{p.max_skew // 10**6} ms'}"
            + (f", mutant {args.mutant}" if args.mutant else "")
        )
        lockstep = args.lockstep > 0 and args.seed % args.lockstep == 0
        try:
            r = run_schedule(args.seed, trace=args.trace, mutant=args.mutant, lockstep=lockstep)
        except SimFailure as exc:
            print(exc)
            return 1
        print(f"seed={args.seed}: ok, {r.events} events, {r.acquisitions} leaderships, {r.stats}")
        return 0
    last = args.base + args.schedules - 1
    twin = f", the twin in lockstep in every {args.lockstep}" if args.lockstep else ""
    print(f"seeds {args.base} .. {last} on {args.jobs or 'all'} cores{twin}", file=sys.stderr)
    s = run_many(args.base, args.schedules, args.jobs, print_progress, lockstep=args.lockstep)
    if s.failure:
        print(s.failure)
        print(f"violation at seed={s.failed_seed} after {s.schedules} clean schedules")
        return 1
    print(
        f"ok: {s.schedules} schedules in {s.seconds:.1f} s ({s.rate:.0f}/s), "
        f"{s.events} events, {s.acquisitions} leaderships, {s.work_steps} work steps"
    )
    print("coverage: " + ", ".join(f"{k}={v}" for k, v in sorted(s.stats.items())))
    print("coverage by family:\n" + format_families(s.stats))
    return 0


def _violated(failure: str) -> str:
    """The rule a failure message names (``seed=S: [rule] ...``)."""
    m = re.match(r"seed=\d+: \[([^\]]+)\]", failure)
    return m.group(1) if m else "?"


def _hunt(names: list[str], base: int, schedules: int, jobs: int, lockstep: int) -> int:
    """Run each mutant until the simulator catches it; a table; 1 if one survived."""
    last = base + schedules - 1
    print(f"mutants over seeds {base} .. {last} on {jobs or 'all'} cores", file=sys.stderr)
    rows: list[tuple[str, RunSummary]] = []
    for name in names:
        s = run_many(base, schedules, jobs, mutant=name, lockstep=lockstep, block=MUTANT_BLOCK)
        rows.append((name, s))
        if len(names) == 1 and s.failure:
            print(s.failure)
        verdict = (
            f"caught at seed={s.failed_seed} after {s.failed_seed - base + 1} schedules"
            f" ({_violated(s.failure)}), {s.seconds:.1f} s"
            if s.failure and s.failed_seed is not None
            else f"SURVIVED {s.schedules} schedules, {s.seconds:.1f} s"
        )
        print(f"{name}: {verdict}", file=sys.stderr, flush=True)
    print(f"{'mutant':<10} {'rule':<5} {'caught':<7} {'seed':>7} {'schedules':>9}  violation")
    survivors = []
    for name, s in rows:
        m = MUTANTS[name]
        if s.failure and s.failed_seed is not None:
            seed, needed, rule = (
                str(s.failed_seed),
                str(s.failed_seed - base + 1),
                _violated(s.failure),
            )
            caught = "yes"
        else:
            seed, needed, rule, caught = "-", f">{s.schedules}", "-", "NO"
            survivors.append(name)
        print(f"{name:<10} {m.rule:<5} {caught:<7} {seed:>7} {needed:>9}  {rule}")
    if survivors:
        print(f"survived {schedules} schedules (base {base}): {', '.join(survivors)}")
        return 1
    if len(names) == 1:
        seed = str(rows[0][1].failed_seed)
        print(f"replay: python -m fastelect.sim --mutant {names[0]} --seed {seed} --trace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
