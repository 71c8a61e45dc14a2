"""Print pip constraints pinning each direct dependency to its declared floor.

    python scripts/floors.py [EXTRA ...] > floors.txt
    pip install -c floors.txt ".[test]"

Reads pyproject.toml: every requirement of ``[project] dependencies`` and of
the named extras that has a ``>=`` floor becomes ``name==floor`` (its
environment marker kept), so installing with these constraints gets the
lowest versions the package claims to support for what it names, and the
newest compatible versions of everything those pull in (pip's equivalent of
a lowest-direct resolution).  A requirement without a floor is an error: a
floor that is never tested is a guess.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# name, optional [extras], the floor, then other clauses and an optional marker.
_REQ = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.+))?$"
)
_FLOOR = re.compile(r">=\s*(?P<version>[^,\s]+)")
# Extras that name this package itself (e.g. dev = ["fastelect[test,lint]"]).
_SELF = "fastelect"


def constraints(pyproject: Path, extras: list[str]) -> list[str]:
    """The ``name==floor[; marker]`` lines for the dependencies and ``extras``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"error: pyproject.toml has no extra {extra!r}")
        requirements += optional[extra]
    lines = []
    for requirement in requirements:
        match = _REQ.match(requirement)
        if match is None:
            raise SystemExit(f"error: cannot parse requirement {requirement!r}")
        name = match["name"]
        if name == _SELF:
            continue
        spec = match["spec"]
        if "==" in spec:
            continue  # pinned already (the linters): the pin is its own floor
        floor = _FLOOR.search(spec)
        if floor is None:
            raise SystemExit(f"error: {requirement!r} declares no '>=' floor")
        marker = f"; {match['marker']}" if match["marker"] else ""
        lines.append(f"{name}=={floor['version']}{marker}")
    return lines


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    for line in constraints(root / "pyproject.toml", sys.argv[1:]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
