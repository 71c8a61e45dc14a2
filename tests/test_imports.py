"""What ``import fastelect`` costs: the lazy package (PEP 562) and the health worker's imports.

Each check runs in a fresh interpreter (a real subprocess), since this one
has long imported everything.  Timings live in
``benchmarks/test_import_bench.py``; these tests check *which* modules load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import fastelect
from fastelect import LeadershipTable
from health_helpers import table_name

#: Heavy dependencies the attach path must never load.
HEAVY = ("aiohttp", "aiobotocore", "botocore", "granian", "cryptography", "uvloop", "asyncio")


def loaded_after(code: str, *args: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after running ``code``."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"the subprocess failed:\n{out.stderr}"
    return set(json.loads(out.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_attach_path_loads_only_the_core() -> None:
    """``import fastelect; fastelect.attach(name).is_leader(...)`` against a real named table."""
    with LeadershipTable(table_name()) as table:
        table.slot("cluster", "n1")
        assert table.name is not None
        modules = loaded_after(
            """
            import sys, fastelect
            reader = fastelect.attach(sys.argv[1])
            assert reader.is_leader("cluster") is False
            assert reader.elections() == ["cluster"]
            """,
            table.name,
        )
    assert heavy(modules) == [], f"the attach path imported {heavy(modules)}"
    ours = sorted(m for m in modules if m.split(".")[0] == "fastelect")
    assert ours == ["fastelect", "fastelect._core", "fastelect.errors"]


def test_bare_import_loads_nothing_of_ours() -> None:
    modules = loaded_after("import fastelect")
    assert sorted(m for m in modules if m.startswith("fastelect")) == ["fastelect"]
    assert heavy(modules) == [] and "typing" not in modules


def test_health_worker_does_not_import_the_controller() -> None:
    """granian's processes import the app, never the controller or the storage stack."""
    modules = loaded_after("import fastelect.health.app, fastelect.health._process")
    unwanted = {
        "fastelect.health.server",
        "fastelect.tls",
        "fastelect.elector",
        "fastelect.storage",
    }
    assert not unwanted & modules, sorted(unwanted & modules)
    assert not {m.split(".")[0] for m in modules} & {
        "aiohttp",
        "aiobotocore",
        "botocore",
        "cryptography",
    }


@pytest.mark.parametrize("name", fastelect.__all__)
def test_every_public_name_imports(name: str) -> None:
    """``from fastelect import X`` works for each name and gives the defining module's object."""
    import importlib

    value = getattr(fastelect, name)
    module = importlib.import_module(fastelect._LAZY[name], "fastelect")
    assert value is getattr(module, name)
    namespace: dict[str, object] = {}
    exec(f"from fastelect import {name}", namespace)
    assert namespace[name] is value


def test_names_dir_and_errors() -> None:
    assert set(fastelect._LAZY) == set(fastelect.__all__)
    assert len(fastelect.__all__) == len(set(fastelect.__all__))
    assert set(fastelect.__all__) <= set(dir(fastelect))
    assert "__version__" in dir(fastelect)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastelect.nope  # noqa: B018
    with pytest.raises(ImportError):
        exec("from fastelect import nope", {})
    import fastelect.health as health

    assert {"HealthServer", "HealthServerConfig"} <= set(dir(health))
    with pytest.raises(AttributeError):
        health.nope  # noqa: B018


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from fastelect import *", namespace)
    assert set(fastelect.__all__) <= set(namespace)
