"""fastelect's deterministic simulator: the real compiled Campaign under injected faults.

In the spirit of FoundationDB's simulation and TigerBeetle's VOPR: several
nodes, each a real :class:`fastelect._core.Campaign` driven by a faithful
re-implementation of the Elector's loop, run on virtual time against a
simulated linearizable store.  Every source of nondeterminism comes from one
seed; invariants (:mod:`fastelect.sim.checker`) are checked as the history
unfolds; a failing seed replays exactly with ``python -m fastelect.sim
--seed S --trace``.  The pure-Python twin of the rules can run in lockstep
with the compiled core (:mod:`fastelect.sim.lockstep`), or in its place with
one safety fix reverted (:mod:`fastelect.sim.mutants`).  See
``docs/simulator.md``.
"""

from .checker import Checker, Violation
from .world import Params, Result, SimFailure, draw_params, run_schedule

__all__ = ["Checker", "Params", "Result", "SimFailure", "Violation", "draw_params", "run_schedule"]
