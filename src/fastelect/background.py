"""Run an elector from synchronous code: gunicorn, Django, plain threads.

:class:`BackgroundElector` runs an :class:`~fastelect.Elector` on an event
loop of its own (uvloop where available) in a daemon thread, and answers
``is_leader()`` from the compiled leadership slot, so the hot path costs the
same tens of nanoseconds as in asyncio code and takes no lock::

    from fastelect import BackgroundElector, ElectorConfig, S3Storage

    elector = BackgroundElector(
        ElectorConfig("leader.json", server_id="web-1"),
        lambda: S3Storage("my-bucket", "locks"),   # built on the elector's loop
    )
    elector.start()             # returns once campaigning; raises here on a bad bucket
    ...
    if elector.is_leader():
        run_the_singleton_job()
    ...
    elector.stop()              # releases the lock if leading

**Storage and loops.** aiobotocore clients (and anything holding aiohttp
sessions) are bound to the event loop that first used them.  Pass a zero-
argument *factory* and it is called on the background loop, so the storage
is created and used there; a storage *instance* works too, as long as it has
not been used on another loop yet.  Either way the background elector owns
the storage from then on and closes it on :meth:`~BackgroundElector.stop`.

**Several processes per host** (gunicorn/uWSGI workers): give one elector a
``table_name``; it publishes its leadership in shared memory and every
process on the host asks ``fastelect.attach(table_name).is_leader("default")``
at the same cost, without an elector (and storage traffic) of its own.

**fork.** A thread does not survive ``fork()``.  Start a background elector
in the process that keeps it (after the fork, e.g. gunicorn's ``post_fork``,
or in a process that never forks).  In a forked child the inherited object
neither campaigns nor stops: its :meth:`stop` does nothing there, so a
child's exit cannot release the parent's lock.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from ._core import LeadershipTable
from .config import Duration, ElectorConfig, wait_seconds
from .elector import Elector, LeadershipStatus
from .errors import FastelectError, LifecycleError
from .storage import Storage

__all__ = ["BackgroundElector", "StorageSource"]

T = TypeVar("T")

#: A storage, or a zero-argument callable that makes one on the elector's loop.
StorageSource = Storage | Callable[[], Storage]

_log = logging.getLogger(__name__)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # PyPy / Windows: the dependency marker leaves uvloop out
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _not_started() -> bool:
    """is_leader() before start(): never leader."""
    return False


class BackgroundElector:
    """An :class:`~fastelect.Elector` on its own event loop in a daemon thread.

    ``storage`` is a storage or a zero-argument factory called on the
    background loop (use a factory for :class:`~fastelect.S3Storage`, see the
    module docs).  ``table_name`` publishes the leadership as a named shared-
    memory table for :func:`fastelect.attach` (default: a private table).
    ``election`` names the slot in that table (default ``"default"``).

    :meth:`start` and :meth:`stop` may be called from any thread but the
    elector's own; :meth:`is_leader` from any thread at any time.
    """

    def __init__(
        self,
        config: ElectorConfig,
        storage: StorageSource,
        *,
        table_name: str | None = None,
        logger: logging.Logger | None = None,
        election: str = "default",
    ) -> None:
        if not isinstance(config, ElectorConfig):
            raise TypeError("config must be an ElectorConfig")
        if not (isinstance(storage, Storage) and not isinstance(storage, type)) and not callable(
            storage
        ):
            raise TypeError("storage must be a Storage or a zero-argument callable returning one")
        self._config = config.copy()
        self._source = storage
        self._table_name = table_name
        self._logger = logger
        self._election = election
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._elector: Elector | None = None
        self._storage: Storage | None = None
        self._table: LeadershipTable | None = None
        self._opening: asyncio.Task[None] | None = None
        self._start_error: BaseException | None = None
        self._handshake = threading.Lock()
        self._abandoned = False
        self._pid = 0
        self._wait_for_store = 0.0
        #: The process this object was made in: rule 7, a forked child's copy never starts.
        self._made_pid = os.getpid()
        #: True while this node holds an unexpired lease, checked now.  After
        #: start() this is the compiled slot's own method: no Python frame, no
        #: lock, no allocation.
        self.is_leader: Callable[[], bool] = _not_started

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float | None = 60.0, *, wait_for_store: Duration = 0.0) -> None:
        """Start campaigning; returns once the elector runs.

        Raises the elector's start error in the calling thread (for example
        :class:`~fastelect.BucketNotFound` or :class:`~fastelect.StorageAuthError`),
        :class:`~fastelect.LifecycleError` if already running or inherited
        through ``fork()`` (create a new one in the child), and
        :class:`~fastelect.FastelectError` if starting takes longer than
        ``timeout`` seconds (None: wait as long as it takes).

        ``wait_for_store`` keeps trying an unreachable store for that many
        seconds first (see :meth:`Elector.start`); make ``timeout`` longer, or
        None, when you use it.
        """
        with self._lifecycle:
            if os.getpid() != self._made_pid:
                # It would campaign under the parent's id, beside the parent (rule 7).
                raise LifecycleError(
                    "this background elector was inherited through fork(); create a new "
                    "BackgroundElector in the child (e.g. in gunicorn's post_fork)"
                )
            if self.running:
                raise LifecycleError(f"background elector {self._config.server_id!r} is running")
            ready = threading.Event()
            self._start_error = None
            self._abandoned = False
            self._pid = os.getpid()
            self._wait_for_store = wait_seconds("wait_for_store", wait_for_store)
            thread = threading.Thread(
                target=self._thread_main,
                args=(ready,),
                name=f"fastelect-{self._config.server_id}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
            if not ready.wait(timeout):
                # Too slow: give up, unless it got there in the meantime (the
                # handshake decides which, so an elector is never left behind).
                with self._handshake:
                    self._abandoned = not ready.is_set()
                if self._abandoned:
                    loop, opening = self._loop, self._opening
                    if loop is not None and opening is not None:
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(opening.cancel)
                    ready.wait()
                    thread.join()
                    self._thread = None
                    raise FastelectError(
                        f"background elector {self._config.server_id!r} did not start within "
                        f"{timeout} s"
                    )
            error = self._start_error
            if error is not None:
                thread.join()
                self._thread = None
                self._start_error = None
                raise error
            assert self._elector is not None
            self.is_leader = self._elector.slot.is_leader
            atexit.register(self._at_exit)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop campaigning, release the lock if leading, close the storage and table.

        Waits up to ``timeout`` seconds for the release; past that the loop is
        stopped anyway (the lock then frees itself when the lease runs out).
        Safe to call twice, and a no-op in a forked child.
        """
        with self._lifecycle:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            if os.getpid() != self._pid:
                return  # a forked child: the thread and the leadership are the parent's
            if threading.current_thread() is thread:
                raise LifecycleError("stop() cannot be called from the elector's own thread")
            atexit.unregister(self._at_exit)
            # False from here on, before the table closes (its slot would
            # raise), and while the release is on its way: never a late True.
            self.is_leader = _not_started
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                _log.error(
                    "background elector %s did not stop within %.1f s",
                    self._config.server_id,
                    timeout,
                )
            except Exception:
                _log.exception("background elector %s failed to stop", self._config.server_id)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may have closed already
                    loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
                self._thread = None

    def __enter__(self) -> BackgroundElector:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _at_exit(self) -> None:
        # Interpreter shutdown: release the lock instead of making others wait a lease.
        with contextlib.suppress(Exception):
            self.stop(timeout=5.0)

    # -- queries ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between a successful start() and stop(), in the process that started it."""
        thread = self._thread
        return thread is not None and thread.is_alive() and os.getpid() == self._pid

    @property
    def term(self) -> int:
        """The fencing token: ours while leading, else the observed leader's (0 before start)."""
        return self._elector.term if self._elector is not None else 0

    @property
    def leader_id(self) -> str:
        """The id of the leader this node knows of ("" when none or before start)."""
        return self._elector.leader_id if self._elector is not None else ""

    @property
    def table_name(self) -> str | None:
        """The shared-memory table name other processes attach to, or None."""
        return self._table_name

    @property
    def elector(self) -> Elector:
        """The underlying Elector.  It lives on :attr:`loop`: run its coroutines there."""
        if self._elector is None:
            raise LifecycleError("background elector has not been started")
        return self._elector

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background event loop (for ``asyncio.run_coroutine_threadsafe``)."""
        if self._loop is None or not self.running:
            raise LifecycleError("background elector is not running")
        return self._loop

    def status(self) -> LeadershipStatus:
        """What the elector knows now.

        Read from this thread without waiting for the loop (each field is
        read atomically; fields may come from adjacent election cycles).
        """
        return self.elector.status()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this node leads; False if ``timeout`` seconds pass first."""
        if self.is_leader():
            return True
        future = self._submit(self.elector.wait_for_leadership())
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return False
        return self.is_leader()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            loop = self.loop
        except LifecycleError:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<BackgroundElector {self._config.server_id!r} {state} "
            f"leader={self.is_leader()} term={self.term}>"
        )

    # -- the background thread ---------------------------------------------------------

    def _thread_main(self, ready: threading.Event) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._opening = loop.create_task(self._open())
            try:
                loop.run_until_complete(self._opening)
            except BaseException as exc:
                self._start_error = exc
                self._elector = None
                loop.run_until_complete(self._close_resources())
                return
            finally:
                self._opening = None
            with self._handshake:
                abandoned = self._abandoned
                if not abandoned:
                    ready.set()
            if abandoned:  # start() timed out meanwhile: undo the start
                loop.run_until_complete(self._shutdown())
                return
            loop.run_forever()
        finally:
            self._finish_loop(loop)
            ready.set()

    async def _open(self) -> None:
        source = self._source
        if isinstance(source, Storage) and not isinstance(source, type):
            storage = source
        else:
            storage = source()
            if not isinstance(storage, Storage):
                raise TypeError(f"the storage factory returned {storage!r}, not a Storage")
        self._storage = storage
        if self._table_name is not None:
            self._table = LeadershipTable(self._table_name, slots=1)
        elector = Elector(
            self._config,
            storage,
            self._logger,
            table=self._table,
            election=self._election,
        )
        self._elector = elector
        await elector.start(wait_for_store=self._wait_for_store)

    async def _shutdown(self) -> None:
        if self._elector is not None:
            await self._elector.stop()
        await self._close_resources()

    async def _close_resources(self) -> None:
        storage, self._storage = self._storage, None
        table, self._table = self._table, None
        try:
            if storage is not None:
                await storage.close()
        finally:
            if table is not None:
                table.close()

    @staticmethod
    def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
