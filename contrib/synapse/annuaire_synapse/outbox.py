"""The durable queue of calls to annuaire, a table of this module's own in Synapse's database.

Every function here runs inside `ModuleApi.run_db_interaction`, so it gets Synapse's
`LoggingTransaction`: `?` placeholders work on SQLite and PostgreSQL alike (Synapse converts them),
and the transaction is committed when the function returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TABLE = "annuaire_synapse_outbox"

# The calls that go through the queue; `display_name` is synchronous and never queued.
QUEUED_CALLS = frozenset({"bind", "unbind", "profile", "deactivated"})


@dataclass(frozen=True)
class Job:
    """One call waiting to reach annuaire."""

    id: int
    call: str
    body: dict[str, Any]
    attempts: int
    next_attempt_ts: int


def _is_postgres(txn: Any) -> bool:
    from synapse.storage.engines import PostgresEngine

    return isinstance(txn.database_engine, PostgresEngine)


def create_table(txn: Any) -> None:
    """Creates the table when it is missing (the first start, on any Synapse process)."""
    # Ids give the delivery order, so they must grow: AUTOINCREMENT on SQLite (never reuses an id
    # after the newest row was deleted), a sequence on PostgreSQL.
    id_column = (
        "id BIGSERIAL PRIMARY KEY" if _is_postgres(txn) else "id INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    txn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            {id_column},
            call TEXT NOT NULL,
            body TEXT NOT NULL,
            created_ts BIGINT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ts BIGINT NOT NULL
        )
        """
    )


def add(txn: Any, call: str, body: dict[str, Any], now_ms: int) -> None:
    """Queues one call, due now."""
    if call not in QUEUED_CALLS:
        raise ValueError(f"not a queued call: {call}")
    txn.execute(
        f"INSERT INTO {TABLE} (call, body, created_ts, attempts, next_attempt_ts)"
        " VALUES (?, ?, ?, 0, ?)",
        (call, json.dumps(body), now_ms, now_ms),
    )


def add_deactivated(txn: Any, user_id: str, now_ms: int) -> bool:
    """Queues `deactivated` for a user, reading whether Synapse erased them; returns `erased`.

    Synapse's deactivation marks the user in `erased_users` (when asked to erase) before it calls
    `on_user_deactivation_status_changed`, and that table is in the main database that every
    process shares, so this read is exact whichever process ran the deactivation.
    """
    txn.execute("SELECT 1 FROM erased_users WHERE user_id = ?", (user_id,))
    erased = txn.fetchone() is not None
    add(txn, "deactivated", {"user_id": user_id, "erased": erased}, now_ms)
    return erased


def head(txn: Any, limit: int) -> list[Job]:
    """The oldest jobs, in the order they must reach annuaire."""
    txn.execute(
        f"SELECT id, call, body, attempts, next_attempt_ts FROM {TABLE} ORDER BY id LIMIT ?",
        (limit,),
    )
    return [
        Job(
            id=row[0], call=row[1], body=json.loads(row[2]), attempts=row[3], next_attempt_ts=row[4]
        )
        for row in txn.fetchall()
    ]


def remove(txn: Any, job_id: int) -> None:
    """Forgets a job: delivered, or refused for good."""
    txn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (job_id,))


def postpone(txn: Any, job_id: int, attempts: int, next_attempt_ts: int) -> None:
    """Records a failed attempt and when to try again."""
    txn.execute(
        f"UPDATE {TABLE} SET attempts = ?, next_attempt_ts = ? WHERE id = ?",
        (attempts, next_attempt_ts, job_id),
    )


def count(txn: Any) -> int:
    """How many jobs wait (for tests and for the start-up log line)."""
    txn.execute(f"SELECT COUNT(*) FROM {TABLE}")
    row = txn.fetchone()
    return int(row[0]) if row else 0
