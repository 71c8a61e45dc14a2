"""fastelect: leader election on S3 and S3-compatible object stores.

Nodes compete for one small JSON lock record using conditional writes
(``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace).  The
compiled core keeps every timing decision and answers ``is_leader()`` in tens
of nanoseconds from a lease deadline it checks at call time.

Guarantees, their assumptions (storage with atomic conditional writes, clocks
whose *rates* agree within the safety margin) and the safety rules are
spelled out in :mod:`fastelect.elector` and the README.
"""

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
)
from .health import HealthServer, HealthServerConfig
from .record import LockRecord
from .storage import FileStorage, MemoryStorage, S3Storage, Storage

__version__ = "0.1.0"

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
    "Storage",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailable",
    "TLSError",
    "TableReader",
    "attach",
]
