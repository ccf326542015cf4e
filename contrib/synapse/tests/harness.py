"""Unit-test harness: the Twisted reactor in a thread, a fake `ModuleApi` over a real database.

The module's SQL runs through Synapse's own `LoggingTransaction` and database engine classes (the
`?` placeholder conversion, the engine type the module checks), on SQLite, or on PostgreSQL when
TEST_POSTGRES_URL is set, committed after each interaction like `DatabasePool.runInteraction`.
The fake `ModuleApi` freezes time (tests advance it) and lets tests fire the periodic poll and the
retry timers themselves, so no test waits for a real delay.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from synapse.storage.database import LoggingTransaction
from synapse.storage.engines import create_engine
from twisted.internet import defer, reactor, threads

SERVER_NAME = "example.test"


# ---- the reactor in a background thread ----

_reactor_thread: threading.Thread | None = None


def start_reactor() -> None:
    global _reactor_thread
    if _reactor_thread is None:
        _reactor_thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        _reactor_thread.start()


def stop_reactor() -> None:
    global _reactor_thread
    if _reactor_thread is not None:
        reactor.callFromThread(reactor.stop)
        _reactor_thread.join(10)
        _reactor_thread = None


def in_reactor(fn: Callable[..., Any], *args: Any, timeout: float = 30, **kwargs: Any) -> Any:
    """Runs fn in the reactor thread and returns its result; awaits it if it is async."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
            d = defer.ensureDeferred(result) if _is_awaitable(result) else defer.succeed(result)
        except BaseException as err:
            d = defer.fail(err)

        def ok(value: Any) -> None:
            outcome["value"] = value
            done.set()

        def failed(failure: Any) -> None:
            outcome["error"] = failure.value
            done.set()

        d.addCallbacks(ok, failed)

    reactor.callFromThread(run)
    if not done.wait(timeout):
        raise TimeoutError(f"{fn!r} did not finish within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _is_awaitable(value: Any) -> bool:
    return hasattr(value, "__await__") or isinstance(value, defer.Deferred)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Polls predicate until it is truthy; fails the test with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- databases ----


class Database:
    """One connection, used like Synapse's DatabasePool: one transaction per interaction."""

    def __init__(self, engine: Any, connect: Callable[[], Any]) -> None:
        self.engine = engine
        self._connect = connect
        self._conn = connect()
        self._lock = threading.Lock()

    def run(self, desc: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            cursor = self._conn.cursor()
            txn = LoggingTransaction(
                txn=cursor,
                name=desc,
                server_name=SERVER_NAME,
                database_engine=self.engine,
                after_callbacks=[],
                async_after_callbacks=[],
                exception_callbacks=[],
            )
            try:
                result = func(txn, *args, **kwargs)
                self._conn.commit()
                return result
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cursor.close()

    def close(self) -> None:
        self._conn.close()

    def reopen(self) -> None:
        """A new connection, as a restarted Synapse would have."""
        self._conn.close()
        self._conn = self._connect()


def sqlite_database(path: str) -> Database:
    engine = create_engine({"name": "sqlite3", "args": {"database": path}})
    db = Database(engine, lambda: sqlite3.connect(path, check_same_thread=False))
    _create_synapse_tables(db)
    return db


def _pg_args(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "user": parts.username,
        "password": parts.password,
        "host": parts.hostname,
        "port": parts.port or 5432,
        "dbname": parts.path.lstrip("/") or "postgres",
    }


def create_postgres_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server of `server_url` (a superuser's URL, as
    TEST_POSTGRES_URL is); returns its URL and a function that drops it. C collation and UTF-8,
    as Synapse requires."""
    import psycopg2

    name = "annuaire_synapse_" + secrets.token_hex(6)
    admin = _pg_args(server_url)

    def execute(sql: str) -> None:
        conn = psycopg2.connect(**admin)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    execute(
        f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    parts = urlsplit(server_url)
    url = parts._replace(path="/" + name).geturl()
    return url, lambda: execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_database(url: str) -> Database:
    """The database of `url` (postgres://user:password@host:port/name), used as Synapse would."""
    import psycopg2

    args = _pg_args(url)
    engine = create_engine({"name": "psycopg2", "args": args})
    db = Database(engine, lambda: psycopg2.connect(**args))
    _create_synapse_tables(db)
    return db


def _create_synapse_tables(db: Database) -> None:
    # The one Synapse table the module reads, as Synapse's schema defines it.
    db.run(
        "erased_users",
        lambda txn: txn.execute("CREATE TABLE IF NOT EXISTS erased_users (user_id TEXT NOT NULL)"),
    )


def outbox_rows(db: Database) -> list[tuple]:
    def read(txn: Any) -> list[tuple]:
        txn.execute(
            "SELECT id, call, body, attempts, next_attempt_ts FROM annuaire_synapse_outbox"
            " ORDER BY id"
        )
        return list(txn.fetchall())

    return db.run("outbox_rows", read)


def mark_erased(db: Database, user_id: str) -> None:
    db.run(
        "mark_erased",
        lambda txn: txn.execute("INSERT INTO erased_users (user_id) VALUES (?)", (user_id,)),
    )


# ---- the fake ModuleApi ----


class _DelayedCall:
    def __init__(self, api: FakeModuleApi, due_ms: int, f: Callable[[], Any]) -> None:
        self._api = api
        self.due_ms = due_ms
        self.f = f
        self.cancelled = False
        self.called = False

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def cancel(self) -> None:
        self.cancelled = True


class FakeModuleApi:
    """What the module uses of Synapse's ModuleApi, with a frozen clock and manual timers."""

    server_name = SERVER_NAME

    def __init__(self, db: Database, *, background: bool = True, now_ms: int = 1_700_000_000_000):
        self.db = db
        self.background = background
        self.now_ms = now_ms
        self.callbacks: dict[str, Any] = {}
        self.loops: list[tuple[Callable[[], Any], float]] = []
        self.delayed: list[_DelayedCall] = []
        self._tasks: list[defer.Deferred] = []
        self.task_errors: list[BaseException] = []
        self.shut_down = False

    # registration
    def register_password_auth_provider_callbacks(self, **callbacks: Any) -> None:
        self.callbacks.update({k: v for k, v in callbacks.items() if v is not None})

    def register_third_party_rules_callbacks(self, **callbacks: Any) -> None:
        self.callbacks.update({k: v for k, v in callbacks.items() if v is not None})

    # background work
    def should_run_background_tasks(self) -> bool:
        return self.background

    def looping_background_call(self, f: Callable, msec: float, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("desc", None)
        kwargs.pop("run_on_all_instances", None)
        self.loops.append((lambda: f(*args, **kwargs), msec))

    def delayed_background_call(self, msec: float, f: Callable, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("desc", None)
        call = _DelayedCall(self, self.now_ms + int(msec), lambda: f(*args, **kwargs))
        self.delayed.append(call)
        return call

    def run_as_background_process(self, desc: str, func: Callable, *args: Any, **kwargs: Any):
        if self.shut_down:
            return defer.succeed(None)
        d = defer.ensureDeferred(func(*args, **kwargs))

        def failed(failure: Any) -> None:
            # Synapse logs and swallows a background process's exception; tests fail on one.
            self.task_errors.append(failure.value)

        d.addErrback(failed)
        self._tasks.append(d)
        return d

    def get_current_time_msec(self) -> int:
        return self.now_ms

    def run_db_interaction(self, desc: str, func: Callable, *args: Any, **kwargs: Any):
        return threads.deferToThread(self.db.run, desc, func, *args, **kwargs)

    # test controls
    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def poll(self) -> None:
        """Fires the periodic poll the module registered (from the test thread)."""
        for f, _ in self.loops:
            in_reactor(lambda f=f: self.run_as_background_process("poll", f))

    def fire_due_timers(self) -> None:
        for call in list(self.delayed):
            if call.active() and call.due_ms <= self.now_ms:
                call.called = True
                in_reactor(lambda c=call: self.run_as_background_process("timer", c.f))

    def settle(self, timeout: float = 15) -> None:
        """Waits until every background task the module started has finished."""

        def all_done() -> bool:
            return all(d.called for d in in_reactor(lambda: list(self._tasks)))

        wait_for(all_done, "the module's background tasks to finish", timeout)
        if self.task_errors:
            raise AssertionError(f"a background task of the module raised: {self.task_errors!r}")

    def shutdown(self) -> None:
        """Stops this "process": no more background work (the database stays)."""
        self.settle()
        self.shut_down = True
        self.loops.clear()
        self.delayed.clear()
