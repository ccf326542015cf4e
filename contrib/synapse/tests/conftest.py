"""Fixtures shared by the unit tests and the integration test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from .fake_annuaire import FakeAnnuaire
from .harness import (
    Database,
    create_postgres_database,
    postgres_database,
    sqlite_database,
    start_reactor,
    stop_reactor,
)


@pytest.fixture(scope="session", autouse=True)
def reactor_thread() -> Iterator[None]:
    start_reactor()
    yield
    stop_reactor()


@pytest.fixture
def token() -> str:
    return "annuaire-hs-" + secrets.token_urlsafe(24)


@pytest.fixture
def annuaire(token: str) -> Iterator[FakeAnnuaire]:
    fake = FakeAnnuaire(token=token).start()
    yield fake
    fake.stop()


def _backends() -> list:
    # PostgreSQL when the test run provides one (contrib/synapse/run-tests starts one when the
    # PostgreSQL server binaries are installed); SQLite always.
    return [
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(
                not os.environ.get("TEST_POSTGRES_URL"), reason="TEST_POSTGRES_URL is not set"
            ),
        ),
    ]


@pytest.fixture(params=_backends())
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = sqlite_database(str(tmp_path / "homeserver.db"))
        yield database
        database.close()
        return
    url, drop = create_postgres_database(os.environ["TEST_POSTGRES_URL"])
    database = postgres_database(url)
    yield database
    database.close()
    drop()
