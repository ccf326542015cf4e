"""The module's logic against the fake annuaire, over a real database (SQLite; PostgreSQL too
when TEST_POSTGRES_URL is set): what each callback sends, the display name at registration, and
the durable queue (order, retries, drops, restarts, workers)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from synapse.config import ConfigError
from synapse.module_api import ProfileInfo

from annuaire_synapse import (
    BACKOFF_CAP_MS,
    BATCH_SIZE,
    POLL_INTERVAL_MS,
    AnnuaireModule,
    retry_delay_ms,
)

from .fake_annuaire import FakeAnnuaire, Scripted
from .harness import Database, FakeModuleApi, in_reactor, mark_erased, outbox_rows, wait_for

ALICE = "@alice:example.test"
ALICE_EMAIL = "alice.martin@finances.gouv.example"
BOB = "@bob:example.test"
BOB_EMAIL = "bob@douane.finances.gouv.example"


class Homeserver:
    """One Synapse "process" running the module: its fake ModuleApi and the module."""

    def __init__(self, db: Database, annuaire: FakeAnnuaire, token: str, **options) -> None:
        timeout = options.pop("timeout", 5)
        self.api = FakeModuleApi(db, **options)
        config = AnnuaireModule.parse_config(
            {"url": annuaire.url, "token": token, "timeout": timeout}
        )
        self.module = in_reactor(lambda: AnnuaireModule(config, self.api))
        self.api.settle()

    def callback(self, name: str, *args):
        """Calls a registered callback as Synapse does, and waits for it to return."""
        return in_reactor(self.api.callbacks[name], *args)

    def add_email(self, user_id: str, address: str) -> None:
        self.callback("on_add_user_third_party_identifier", user_id, "email", address)

    def remove_email(self, user_id: str, address: str) -> None:
        self.callback("on_remove_user_third_party_identifier", user_id, "email", address)

    def retry_now(self) -> None:
        """Lets time pass beyond any backoff and fires the periodic poll."""
        self.api.advance(BACKOFF_CAP_MS)
        self.api.poll()
        self.api.settle()


@pytest.fixture
def hs(db, annuaire, token) -> Homeserver:
    return Homeserver(db, annuaire, token)


def bodies(annuaire: FakeAnnuaire, *calls: str) -> list[tuple[str, dict]]:
    return [(r.call, r.body) for r in annuaire.calls(*calls)]


def queued(db: Database) -> list[tuple[str, dict, int]]:
    """(call, body, attempts) of each queued job, in order."""
    return [(row[1], json.loads(row[2]), row[3]) for row in outbox_rows(db)]


# ---- what each callback sends ----


def test_registers_the_callbacks_and_the_poll(hs: Homeserver):
    assert set(hs.api.callbacks) == {
        "get_displayname_for_registration",
        "on_add_user_third_party_identifier",
        "on_remove_user_third_party_identifier",
        "on_profile_update",
        "on_user_deactivation_status_changed",
    }
    assert [msec for _, msec in hs.api.loops] == [POLL_INTERVAL_MS]


def test_without_password_auth_callbacks(db, annuaire: FakeAnnuaire, token: str, monkeypatch):
    """With authentication delegated (MAS), Synapse refuses password-auth callbacks."""

    def refuse(self, **_: object) -> None:
        raise ConfigError(
            "Cannot use password auth provider callbacks when OAuth delegation is enabled"
        )

    monkeypatch.setattr(FakeModuleApi, "register_password_auth_provider_callbacks", refuse)
    hs = Homeserver(db, annuaire, token)
    assert "get_displayname_for_registration" not in hs.api.callbacks
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    assert [r.call for r in annuaire.calls()] == ["bind"]


def test_bind_and_unbind(hs: Homeserver, annuaire: FakeAnnuaire, db: Database, token: str):
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    hs.remove_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    assert bodies(annuaire) == [
        ("bind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE}),
        ("unbind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE}),
    ]
    assert all(r.method == "POST" for r in annuaire.calls())
    assert all(r.authorization == f"Bearer {token}" for r in annuaire.calls())
    assert queued(db) == []


def test_only_email_addresses(hs: Homeserver, annuaire: FakeAnnuaire, db: Database):
    hs.callback("on_add_user_third_party_identifier", ALICE, "msisdn", "33612345678")
    hs.callback("on_remove_user_third_party_identifier", ALICE, "msisdn", "33612345678")
    hs.api.settle()
    assert annuaire.calls() == []
    assert queued(db) == []


def test_profile_update(hs: Homeserver, annuaire: FakeAnnuaire):
    hs.callback(
        "on_profile_update",
        ALICE,
        ProfileInfo(avatar_url="mxc://a/b", display_name="A"),
        False,
        False,
    )
    hs.callback(
        "on_profile_update", ALICE, ProfileInfo(avatar_url=None, display_name=None), True, False
    )
    hs.api.settle()
    assert bodies(annuaire) == [
        ("profile", {"user_id": ALICE, "displayname": "A", "avatar_url": "mxc://a/b"}),
        ("profile", {"user_id": ALICE, "displayname": None, "avatar_url": None}),
    ]


def test_profile_cleared_by_erasure_is_not_sent(hs: Homeserver, annuaire: FakeAnnuaire, db):
    hs.callback(
        "on_profile_update", ALICE, ProfileInfo(avatar_url=None, display_name=None), True, True
    )
    hs.api.settle()
    assert annuaire.calls() == []
    assert queued(db) == []


def test_deactivation_reads_erasure_from_synapse(hs: Homeserver, annuaire: FakeAnnuaire, db):
    mark_erased(db, ALICE)
    hs.callback("on_user_deactivation_status_changed", ALICE, True, True)
    hs.callback("on_user_deactivation_status_changed", BOB, True, False)
    hs.api.settle()
    assert bodies(annuaire) == [
        ("deactivated", {"user_id": ALICE, "erased": True}),
        ("deactivated", {"user_id": BOB, "erased": False}),
    ]


def test_reactivation_sends_nothing(hs: Homeserver, annuaire: FakeAnnuaire, db: Database):
    hs.callback("on_user_deactivation_status_changed", ALICE, False, True)
    hs.api.settle()
    assert annuaire.calls() == []
    assert queued(db) == []


# ---- the display name at registration ----


def uia(address: str = ALICE_EMAIL) -> dict:
    return {
        "m.login.email.identity": {
            "medium": "email",
            "address": address,
            "validated_at": 1_700_000_000_000,
            "threepid_creds": {"sid": "s", "client_secret": "c"},
        }
    }


def test_display_name_for_registration(hs: Homeserver, annuaire: FakeAnnuaire, token: str):
    name = hs.callback("get_displayname_for_registration", uia(), {"username": "alice"})
    assert name == "Jean Dupont [Finances]"
    [request] = annuaire.calls()
    assert (request.method, request.call) == ("GET", "display_name")
    assert request.query == {"medium": "email", "address": ALICE_EMAIL}
    assert request.authorization == f"Bearer {token}"


@pytest.mark.parametrize(
    "answer",
    [
        Scripted(404, {"errcode": "M_NOT_FOUND", "error": "No entry"}),
        Scripted(403, {"errcode": "M_FORBIDDEN", "error": "Not your server"}),
        Scripted(500, {"errcode": "M_UNKNOWN", "error": "Internal error"}),
        Scripted(200, raw=b"<html>proxy</html>", content_type="text/html"),
        Scripted(200, {"displayname": None, "organisation": None}),
        Scripted(200, {"displayname": 42}),
        Scripted(200, {"displayname": "   "}),
        Scripted(200, {"displayname": "x" * 257}),
        Scripted(200, {"displayname": "x" * 100_000}),
    ],
    ids=["404", "403", "500", "not-json", "null", "not-a-string", "blank", "too-long", "huge"],
)
def test_display_name_falls_back_to_synapse_default(hs: Homeserver, annuaire, answer):
    annuaire.script("display_name", answer)
    assert hs.callback("get_displayname_for_registration", uia(), {}) is None
    assert len(annuaire.calls("display_name")) == 1


def test_display_name_when_annuaire_is_down(hs: Homeserver, annuaire: FakeAnnuaire):
    annuaire.stop()
    assert hs.callback("get_displayname_for_registration", uia(), {}) is None


def test_display_name_when_annuaire_is_too_slow(db, annuaire: FakeAnnuaire, token: str):
    hs = Homeserver(db, annuaire, token, timeout=0.2)
    release = threading.Event()
    annuaire.script("display_name", Scripted(200, {"displayname": "Late"}, hold=release))
    try:
        assert hs.callback("get_displayname_for_registration", uia(), {}) is None
    finally:
        release.set()


@pytest.mark.parametrize(
    "results",
    [
        {},
        {"m.login.dummy": True},
        {"m.login.msisdn": {"medium": "msisdn", "address": "33612345678"}},
        {"m.login.email.identity": {"medium": "email"}},
        {"m.login.email.identity": "alice@example.org"},
    ],
)
def test_display_name_needs_a_confirmed_email(hs: Homeserver, annuaire: FakeAnnuaire, results):
    assert hs.callback("get_displayname_for_registration", results, {}) is None
    assert annuaire.calls() == []


# ---- the queue: retries, order, drops ----


def test_the_users_action_does_not_wait_for_annuaire(hs: Homeserver, annuaire, db):
    release = threading.Event()
    annuaire.script("bind", Scripted(200, {}, hold=release))
    try:
        hs.add_email(ALICE, ALICE_EMAIL)  # returns while annuaire holds the request
        wait_for(lambda: annuaire.calls("bind"), "the bind to reach annuaire")
        assert [call for call, _, _ in queued(db)] == ["bind"]
    finally:
        release.set()
    hs.api.settle()
    assert queued(db) == []


@pytest.mark.parametrize(
    "failure",
    [
        Scripted(500, {"errcode": "M_UNKNOWN", "error": "Internal error"}),
        Scripted(503, {"errcode": "M_UNKNOWN", "error": "Database unavailable"}),
        Scripted(502, raw=b"Bad Gateway", content_type="text/plain"),
        Scripted(401, {"errcode": "M_UNAUTHORIZED", "error": "Unknown token"}),
        Scripted(404, raw=b"<html>Not Found</html>", content_type="text/html"),
        Scripted(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
    ],
    ids=["500", "503", "502-from-a-proxy", "401-token", "404-not-annuaire", "404-no-such-api"],
)
def test_retried_after_an_error_answer(hs: Homeserver, annuaire, db, failure):
    annuaire.script("bind", failure)
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    assert len(annuaire.calls("bind")) == 1
    assert queued(db) == [("bind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE}, 1)]
    hs.retry_now()
    assert len(annuaire.calls("bind")) == 2
    assert queued(db) == []


def test_retried_when_annuaire_is_down(hs: Homeserver, annuaire: FakeAnnuaire, db: Database):
    annuaire.stop()
    assert annuaire.is_refusing()
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    assert [(c, a) for c, _, a in queued(db)] == [("bind", 1)]
    hs.retry_now()  # still down
    assert [(c, a) for c, _, a in queued(db)] == [("bind", 2)]
    annuaire.start()
    hs.retry_now()
    assert bodies(annuaire) == [
        ("bind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE})
    ]
    assert queued(db) == []


def test_retried_after_a_timeout(db, annuaire: FakeAnnuaire, token: str):
    hs = Homeserver(db, annuaire, token, timeout=0.2)
    release = threading.Event()
    annuaire.script("profile", Scripted(200, {}, hold=release))
    try:
        hs.callback(
            "on_profile_update", ALICE, ProfileInfo(avatar_url=None, display_name="A"), False, False
        )
        hs.api.settle()
        assert [(c, a) for c, _, a in queued(db)] == [("profile", 1)]
    finally:
        release.set()
    hs.retry_now()
    assert queued(db) == []
    assert len(annuaire.calls("profile")) == 2  # delivered twice: annuaire's profile is idempotent


def test_backoff_doubles_up_to_a_cap(hs: Homeserver, annuaire: FakeAnnuaire, db: Database):
    assert [retry_delay_ms(n) for n in range(1, 9)] == [
        1_000,
        2_000,
        4_000,
        8_000,
        16_000,
        32_000,
        60_000,
        60_000,
    ]
    assert retry_delay_ms(1_000) == BACKOFF_CAP_MS
    annuaire.stop()
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    [row] = outbox_rows(db)
    assert row[4] == hs.api.now_ms + 1_000  # next attempt: one second after the first failure
    # Not due yet: a poll leaves it alone, and a retry timer was set for when it is due.
    hs.api.poll()
    hs.api.settle()
    assert outbox_rows(db)[0][3] == 1
    assert [c.due_ms for c in hs.api.delayed if c.active()] == [hs.api.now_ms + 1_000]
    annuaire.start()
    hs.api.advance(1_000)
    hs.api.fire_due_timers()
    hs.api.settle()
    assert queued(db) == []
    assert len(annuaire.calls("bind")) == 1


def test_rate_limited_waits_as_told(hs: Homeserver, annuaire: FakeAnnuaire, db: Database):
    annuaire.script(
        "bind",
        Scripted(429, {"errcode": "M_LIMIT_EXCEEDED", "error": "Slow", "retry_after_ms": 30_000}),
    )
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.api.settle()
    [row] = outbox_rows(db)
    assert (row[3], row[4]) == (1, hs.api.now_ms + 30_000)
    hs.retry_now()
    assert queued(db) == []


def test_order_is_kept_behind_a_failing_call(hs: Homeserver, annuaire, db: Database):
    annuaire.script("unbind", Scripted(503, {"errcode": "M_UNKNOWN", "error": "Down"}))
    hs.remove_email(ALICE, ALICE_EMAIL)
    hs.add_email(BOB, ALICE_EMAIL)  # the address moves to Bob: must arrive after the unbind
    hs.callback(
        "on_profile_update", BOB, ProfileInfo(avatar_url=None, display_name="B"), False, False
    )
    hs.api.settle()
    assert [r.call for r in annuaire.calls()] == ["unbind"]
    assert [(c, a) for c, _, a in queued(db)] == [("unbind", 1), ("bind", 0), ("profile", 0)]
    hs.retry_now()
    assert [r.call for r in annuaire.calls()] == ["unbind", "unbind", "bind", "profile"]
    assert queued(db) == []


def test_refused_calls_are_dropped_and_logged_without_address_or_token(
    hs: Homeserver, annuaire: FakeAnnuaire, db: Database, token: str, caplog
):
    caplog.set_level(logging.DEBUG, logger="annuaire_synapse")
    annuaire.script(
        "bind", Scripted(400, {"errcode": "M_INVALID_EMAIL", "error": f"Bad {ALICE_EMAIL}"})
    )
    annuaire.script("unbind", Scripted(403, {"errcode": "M_FORBIDDEN", "error": "Not your server"}))
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.remove_email(BOB, BOB_EMAIL)
    hs.add_email(BOB, BOB_EMAIL)
    hs.api.settle()
    assert [r.call for r in annuaire.calls()] == ["bind", "unbind", "bind"]
    assert queued(db) == []
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("annuaire_synapse")]
    dropped = [m for m in messages if "dropped" in m]
    assert len(dropped) == 2
    assert "M_INVALID_EMAIL" in dropped[0] and "HTTP 400" in dropped[0]
    assert "M_FORBIDDEN" in dropped[1]
    for secret in (ALICE_EMAIL, BOB_EMAIL, token, "alice", "bob"):
        assert all(secret not in m for m in messages), secret


def test_failures_are_logged_without_address_or_token(
    db, annuaire: FakeAnnuaire, token: str, caplog
):
    caplog.set_level(logging.DEBUG, logger="annuaire_synapse")
    hs = Homeserver(db, annuaire, token)
    annuaire.script("bind", Scripted(500, {"errcode": "M_UNKNOWN", "error": ALICE_EMAIL}))
    annuaire.script("display_name", Scripted(404, {"errcode": "M_NOT_FOUND", "error": ALICE_EMAIL}))
    hs.add_email(ALICE, ALICE_EMAIL)
    hs.callback("get_displayname_for_registration", uia(), {})
    hs.api.settle()
    annuaire.stop()
    hs.callback("get_displayname_for_registration", uia(), {})
    hs.retry_now()
    annuaire.start()
    hs.retry_now()
    assert queued(db) == []
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("annuaire_synapse")]
    assert any("HTTP 500 M_UNKNOWN" in m for m in messages)
    assert any("ConnectionRefusedError" in m for m in messages)
    assert any("HTTP 404 M_NOT_FOUND" in m for m in messages)
    for secret in (ALICE_EMAIL, token, "alice"):
        assert all(secret not in m for m in messages), secret


def test_more_jobs_than_one_batch_arrive_in_order(hs: Homeserver, annuaire, db: Database):
    annuaire.stop()
    count = BATCH_SIZE + 7
    for i in range(count):
        hs.add_email(ALICE, f"a{i}@finances.gouv.example")
    hs.api.settle()
    annuaire.start()
    hs.retry_now()
    assert [r.body["address"] for r in annuaire.calls()] == [
        f"a{i}@finances.gouv.example" for i in range(count)
    ]
    assert queued(db) == []


# ---- durability: restarts and workers ----


def test_nothing_accepted_is_lost_across_a_restart(db, annuaire: FakeAnnuaire, token: str):
    first = Homeserver(db, annuaire, token)
    annuaire.stop()
    mark_erased(db, ALICE)
    first.add_email(ALICE, ALICE_EMAIL)
    first.callback(
        "on_profile_update",
        ALICE,
        ProfileInfo(avatar_url="mxc://x/y", display_name="A"),
        False,
        False,
    )
    first.remove_email(ALICE, ALICE_EMAIL)
    first.callback("on_user_deactivation_status_changed", ALICE, True, True)
    first.api.settle()
    assert [(c, a) for c, _, a in queued(db)] == [
        ("bind", 1),
        ("profile", 0),
        ("unbind", 0),
        ("deactivated", 0),
    ]
    first.api.shutdown()
    db.reopen()

    annuaire.start()
    # Synapse starts again later than the first job's backoff: the module delivers at start.
    second = Homeserver(db, annuaire, token, now_ms=first.api.now_ms + BACKOFF_CAP_MS)
    second.api.settle()
    assert bodies(annuaire) == [
        ("bind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE}),
        ("profile", {"user_id": ALICE, "displayname": "A", "avatar_url": "mxc://x/y"}),
        ("unbind", {"medium": "email", "address": ALICE_EMAIL, "mxid": ALICE}),
        ("deactivated", {"user_id": ALICE, "erased": True}),
    ]
    assert queued(db) == []


def test_restart_keeps_the_backoff_of_the_head_job(db, annuaire: FakeAnnuaire, token: str):
    first = Homeserver(db, annuaire, token)
    annuaire.stop()
    first.add_email(ALICE, ALICE_EMAIL)
    first.api.settle()
    first.api.shutdown()
    annuaire.start()
    second = Homeserver(db, annuaire, token, now_ms=first.api.now_ms)
    second.api.settle()
    assert annuaire.calls() == []  # not due yet: one second after the failed attempt
    second.api.advance(1_000)
    second.api.fire_due_timers()
    second.api.settle()
    assert len(annuaire.calls("bind")) == 1
    assert queued(db) == []


def test_workers_queue_and_the_main_process_delivers(db, annuaire: FakeAnnuaire, token: str):
    worker = Homeserver(db, annuaire, token, background=False)
    assert worker.api.loops == []
    worker.add_email(BOB, BOB_EMAIL)
    worker.callback(
        "on_profile_update", BOB, ProfileInfo(avatar_url=None, display_name="B"), False, False
    )
    worker.api.settle()
    assert annuaire.calls() == []
    assert [c for c, _, _ in queued(db)] == ["bind", "profile"]

    main = Homeserver(db, annuaire, token)  # delivers what is queued as it starts
    main.api.settle()
    assert [r.call for r in annuaire.calls()] == ["bind", "profile"]
    worker.add_email(BOB, "second@douane.finances.gouv.example")
    worker.api.settle()
    assert len(annuaire.calls()) == 2
    main.api.poll()  # the main process's periodic poll picks up what workers queue
    main.api.settle()
    assert [r.call for r in annuaire.calls()] == ["bind", "profile", "bind"]
    assert queued(db) == []


def test_two_processes_creating_the_table(db, annuaire: FakeAnnuaire, token: str):
    a = Homeserver(db, annuaire, token)
    b = Homeserver(db, annuaire, token, background=False)
    b.add_email(ALICE, ALICE_EMAIL)
    a.api.poll()
    a.api.settle()
    assert len(annuaire.calls("bind")) == 1
