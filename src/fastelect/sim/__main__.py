"""Command line: ``python -m fastelect.sim``.

    python -m fastelect.sim --seed 1234 --trace        replay one schedule, every event
    python -m fastelect.sim --schedules 1000000 --jobs 2 [--base 0]
                                                       many schedules, stop at the first violation

Exit status 0 when every schedule held every invariant, 1 on a violation
(its seed and trace are printed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from .runner import print_progress, run_many
from .world import SimFailure, draw_params, run_schedule


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fastelect.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, help="run only this schedule")
    ap.add_argument("--trace", action="store_true", help="with --seed: print every event")
    ap.add_argument("--schedules", type=int, default=10_000, help="how many (default 10000)")
    ap.add_argument("--base", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (default: all cores)")
    args = ap.parse_args(argv)
    if args.schedules < 1 or args.jobs < 0 or args.base < 0:
        ap.error("--schedules must be positive, --jobs and --base not negative")
    if args.seed is not None:
        p = draw_params(args.seed)
        print(
            f"seed={args.seed}: {len(p.node_ids)} nodes {p.node_ids}, peer_mode={p.peer_mode}, "
            f"timings (ms) {[(t.lease // 10**6, t.frequent // 10**6, t.infrequent // 10**6, t.margin // 10**6) for t in p.timings]}, "  # noqa: E501
            f"faults end {p.faults_end / 1e6:.0f} ms, leader due by {p.live_by / 1e6:.0f} ms"
        )
        try:
            r = run_schedule(args.seed, trace=args.trace)
        except SimFailure as exc:
            print(exc)
            return 1
        print(f"seed={args.seed}: ok, {r.events} events, {r.acquisitions} leaderships, {r.stats}")
        return 0
    print(
        f"seeds {args.base} .. {args.base + args.schedules - 1} on {args.jobs or 'all'} cores",
        file=sys.stderr,
    )
    s = run_many(args.base, args.schedules, args.jobs, progress=print_progress)
    if s.failure:
        print(s.failure)
        print(f"violation at seed={s.failed_seed} after {s.schedules} clean schedules")
        return 1
    print(
        f"ok: {s.schedules} schedules in {s.seconds:.1f} s ({s.rate:.0f}/s), "
        f"{s.events} events, {s.acquisitions} leaderships, {s.work_steps} work steps"
    )
    print("coverage: " + ", ".join(f"{k}={v}" for k, v in sorted(s.stats.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
