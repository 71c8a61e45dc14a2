"""fastelect: leader election on S3 and S3-compatible object stores.

Nodes compete for one small JSON lock record using conditional writes
(``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace).  The
compiled core keeps every timing decision and answers ``is_leader()`` in tens
of nanoseconds from a lease deadline it checks at call time.

Guarantees, their assumptions (storage with atomic conditional writes, clocks
whose *rates* agree within the safety margin) and the safety rules are
spelled out in :mod:`fastelect.elector` and docs/safety.md.

Importing the package is cheap: every public name is loaded from its module
on first use (PEP 562), so a process that only calls
``fastelect.attach(name).is_leader(...)`` never imports the storage clients,
the HTTP stacks or the TLS toolkit.
"""

from __future__ import annotations

import importlib

# Not ``typing.TYPE_CHECKING``: importing typing alone would cost more than the
# rest of this module (type checkers treat the name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._core import LeadershipTable, TableReader, attach
    from .background import BackgroundElector
    from .config import ElectorConfig
    from .election import (
        ElectionConfig,
        ElectorFactory,
        Manager,
        ManagerConfig,
        ManagerStopError,
    )
    from .elector import Elector, LeadershipLost, LeadershipStatus
    from .errors import (
        BucketNotFound,
        ConfigError,
        FastelectError,
        HealthServerError,
        LifecycleError,
        ObjectNotFound,
        PreconditionFailed,
        RecordError,
        StorageAuthError,
        StorageError,
        StorageUnavailable,
        TLSError,
        UntrustedTableError,
    )
    from .health import HealthServer, HealthServerConfig
    from .host import HostLeadership
    from .record import LockRecord
    from .scheduler import Scheduler, SchedulerStats
    from .storage import FileStorage, MemoryStorage, S3Storage, Storage

__version__ = "0.1.0"

# Public name -> the submodule defining it.  Keep in step with the
# TYPE_CHECKING imports above (tests/test_imports.py checks both ways).
_LAZY: dict[str, str] = {
    "attach": "._core",
    "LeadershipTable": "._core",
    "TableReader": "._core",
    "BackgroundElector": ".background",
    "ElectorConfig": ".config",
    "ElectionConfig": ".election",
    "ElectorFactory": ".election",
    "Manager": ".election",
    "ManagerConfig": ".election",
    "ManagerStopError": ".election",
    "Elector": ".elector",
    "LeadershipLost": ".elector",
    "LeadershipStatus": ".elector",
    "HostLeadership": ".host",
    "BucketNotFound": ".errors",
    "ConfigError": ".errors",
    "FastelectError": ".errors",
    "HealthServerError": ".errors",
    "LifecycleError": ".errors",
    "ObjectNotFound": ".errors",
    "PreconditionFailed": ".errors",
    "RecordError": ".errors",
    "StorageAuthError": ".errors",
    "StorageError": ".errors",
    "StorageUnavailable": ".errors",
    "TLSError": ".errors",
    "UntrustedTableError": ".errors",
    "HealthServer": ".health",
    "HealthServerConfig": ".health",
    "LockRecord": ".record",
    "Scheduler": ".scheduler",
    "SchedulerStats": ".scheduler",
    "FileStorage": ".storage",
    "MemoryStorage": ".storage",
    "S3Storage": ".storage",
    "Storage": ".storage",
}

__all__ = [
    "BackgroundElector",
    "BucketNotFound",
    "ConfigError",
    "ElectionConfig",
    "Elector",
    "ElectorConfig",
    "ElectorFactory",
    "FastelectError",
    "FileStorage",
    "HealthServer",
    "HealthServerConfig",
    "HealthServerError",
    "HostLeadership",
    "LeadershipLost",
    "LeadershipStatus",
    "LeadershipTable",
    "LifecycleError",
    "LockRecord",
    "Manager",
    "ManagerConfig",
    "ManagerStopError",
    "MemoryStorage",
    "ObjectNotFound",
    "PreconditionFailed",
    "RecordError",
    "S3Storage",
    "Scheduler",
    "SchedulerStats",
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "TLSError",
    "TableReader",
    "UntrustedTableError",
    "attach",
]


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first use and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    # Later lookups find it in the module dict and skip this function.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
