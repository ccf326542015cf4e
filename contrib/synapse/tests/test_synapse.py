"""Integration: a real Synapse 1.163.2 runs the module against the fake annuaire.

It proves the callbacks are wired the way Synapse really calls them: registration by email
(Synapse's own confirmation mail through a real SMTP server) gets annuaire's display name and a
bind; addresses added and removed through the admin API, profile changes through the client and
admin APIs, and deactivations with and without erasure reach annuaire in order; with annuaire
down, nothing fails for users and every call arrives once annuaire is back, including across a
Synapse restart. On SQLite, and on PostgreSQL when TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from .fake_annuaire import FakeAnnuaire
from .harness import create_postgres_database, wait_for

pytestmark = pytest.mark.integration

SERVER_NAME = "finances.test"
# Generous: Synapse retries with backoff (up to a minute), and the machine may be busy.
ARRIVAL_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a real SMTP server for Synapse's confirmation mail ----


class MailSink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    def link_for(self, address: str) -> str:
        def find() -> str | None:
            for msg in self.messages:
                if address in str(msg["To"]):
                    text = msg.get_body(("plain",)).get_content()
                    match = re.search(r"https?://\S+submit_token\?\S+", text)
                    if match:
                        return match.group(0)
            return None

        return wait_for(find, f"Synapse's confirmation mail to {address}", 30)


@pytest.fixture
def smtp():
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, sink
    controller.stop()


# ---- Synapse ----


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


class Synapse:
    """One homeserver in a temporary folder: configure, start, stop, call."""

    def __init__(self, root: Path, annuaire: FakeAnnuaire, smtp_port: int, database: dict) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(16)
        self.log = root / "homeserver.log"
        self.process: subprocess.Popen | None = None
        self.database = database
        (root / "media").mkdir(parents=True)
        (root / "annuaire.token").write_text(annuaire.token + "\n")
        (root / "log.yaml").write_text(
            f"""
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(levelname)s - %(request)s - %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {self.log}
    filters: [context]
loggers:
  synapse.storage.SQL: {{level: WARNING}}
  annuaire_synapse: {{level: DEBUG}}
root: {{level: INFO, handlers: [file]}}
disable_existing_loggers: false
"""
        )
        rc = {"per_second": 1000, "burst_count": 1000}
        config = {
            "server_name": SERVER_NAME,
            "public_baseurl": f"{self.url}/",
            "pid_file": str(root / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": database,
            "log_config": str(root / "log.yaml"),
            "media_store_path": str(root / "media"),
            "signing_key_path": str(root / "signing.key"),
            "report_stats": False,
            "enable_metrics": False,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "registration_shared_secret": self.secret,
            "bcrypt_rounds": 4,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "enable_registration": True,
            "registrations_require_3pid": ["email"],
            "email": {
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "enable_tls": False,
                "require_transport_security": False,
                "notif_from": "%(app)s <noreply@finances.test>",
                "app_name": "annuaire-synapse test",
                "enable_notifs": False,
            },
            "modules": [
                {
                    "module": "annuaire_synapse.AnnuaireModule",
                    "config": {
                        "url": annuaire.url,
                        "token_file": str(root / "annuaire.token"),
                        "timeout": 3,
                    },
                }
            ],
            "user_directory": {"enabled": True, "search_all_users": True},
        }
        for limit in ("rc_message", "rc_registration", "rc_3pid_validation", "rc_admin_redaction"):
            config[limit] = rc
        config["rc_login"] = {"address": rc, "account": rc, "failed_attempts": rc}
        # JSON is YAML: no YAML library needed.
        (root / "homeserver.yaml").write_text(json.dumps(config, indent=2))
        self._run("--generate-keys")

    def _command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "-c",
            str(self.root / "homeserver.yaml"),
            *extra,
        ]

    def _run(self, *extra: str) -> None:
        result = subprocess.run(
            self._command(*extra), capture_output=True, text=True, timeout=120, cwd=self.root
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        out = open(self.root / "stdout.log", "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            self._command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )
        out.close()
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"Synapse exited at start:\n{self.tail()}")
            try:
                if http("GET", f"{self.url}/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Synapse did not answer /health:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def tail(self, lines: int = 60) -> str:
        text = ""
        for name in ("stdout.log", "homeserver.log"):
            path = self.root / name
            if path.exists():
                text += (
                    f"---- {name}\n"
                    + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                    + "\n"
                )
        return text

    def module_log(self) -> list[str]:
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if " - annuaire_synapse" in line
        ]

    def module_log_has(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.module_log())

    # ---- calls ----

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, answer = http(method, self.url + path, body, token)
        assert 200 <= status < 300, f"{method} {path}: HTTP {status} {answer}\n{self.tail(20)}"
        return answer

    def register_with_secret(self, username: str, admin: bool = False) -> tuple[str, str]:
        """(user_id, access_token) of a new user, through the shared-secret admin API."""
        endpoint = "/_synapse/admin/v1/register"
        nonce = self.call("GET", endpoint)["nonce"]
        password = secrets.token_hex(8)
        mac = hmac.new(
            self.secret.encode(),
            b"\x00".join(
                [
                    nonce.encode(),
                    username.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            ),
            hashlib.sha1,
        ).hexdigest()
        answer = self.call(
            "POST",
            endpoint,
            {
                "nonce": nonce,
                "username": username,
                "password": password,
                "admin": admin,
                "mac": mac,
            },
        )
        return answer["user_id"], answer["access_token"]

    def register_with_email(self, sink: MailSink, username: str, address: str) -> str:
        """Registration as a client does it: confirm the address by mail, then register."""
        client_secret = secrets.token_hex(16)
        sid = self.call(
            "POST",
            "/_matrix/client/v3/register/email/requestToken",
            {"client_secret": client_secret, "email": address, "send_attempt": 1},
        )["sid"]
        link = sink.link_for(address)
        status, _ = http("GET", link)
        assert status == 200, f"the confirmation link answered HTTP {status}"
        request = {"username": username, "password": secrets.token_hex(8)}
        status, flows = http("POST", self.url + "/_matrix/client/v3/register", request)
        assert status == 401, flows
        answer = self.call(
            "POST",
            "/_matrix/client/v3/register",
            {
                **request,
                "auth": {
                    "type": "m.login.email.identity",
                    "threepid_creds": {"sid": sid, "client_secret": client_secret},
                    "session": flows["session"],
                },
            },
        )
        return answer["user_id"]

    def outbox(self) -> list[tuple]:
        """The module's queue table in Synapse's database (it must exist: the module made it)."""
        sql = "SELECT id, call, attempts FROM annuaire_synapse_outbox ORDER BY id"
        args = self.database["args"]
        if self.database["name"] == "sqlite3":
            import sqlite3

            with sqlite3.connect(args["database"]) as conn:
                return list(conn.execute(sql))
        import psycopg2

        conn = psycopg2.connect(
            user=args["user"],
            password=args["password"],
            host=args["host"],
            port=args["port"],
            dbname=args["database"],
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def displayname(self, user_id: str) -> str | None:
        status, answer = http("GET", f"{self.url}/_matrix/client/v3/profile/{user_id}/displayname")
        return answer.get("displayname") if status == 200 else None


def _databases() -> list:
    return [
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(
                not os.environ.get("TEST_POSTGRES_URL"), reason="TEST_POSTGRES_URL is not set"
            ),
        ),
    ]


@pytest.fixture(params=_databases())
def database(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield {"name": "sqlite3", "args": {"database": str(tmp_path / "homeserver.db")}}
        return
    url, drop = create_postgres_database(os.environ["TEST_POSTGRES_URL"])
    parts = urllib.parse.urlsplit(url)
    yield {
        "name": "psycopg2",
        "args": {
            "user": parts.username,
            "password": parts.password,
            "host": parts.hostname,
            "port": parts.port,
            "database": parts.path.lstrip("/"),
            "cp_min": 1,
            "cp_max": 5,
        },
    }
    drop()


@pytest.fixture
def synapse(tmp_path: Path, annuaire: FakeAnnuaire, smtp, database):
    hs = Synapse(tmp_path / "hs", annuaire, smtp[0], database)
    hs.start()
    yield hs
    hs.stop()


def calls_after(annuaire: FakeAnnuaire, start: int) -> list[tuple[str, Any]]:
    return [(r.call, r.query if r.method == "GET" else r.body) for r in annuaire.calls()[start:]]


def wait_for_calls(annuaire: FakeAnnuaire, start: int, expected: list, hs: Synapse) -> None:
    """Waits until annuaire got exactly `expected` (in order) since the call number `start`."""
    try:
        wait_for(
            lambda: len(annuaire.calls()) - start >= len(expected),
            "annuaire's calls",
            ARRIVAL_TIMEOUT,
        )
    except AssertionError:
        raise AssertionError(
            f"annuaire got {calls_after(annuaire, start)}, expected {expected}\n{hs.tail(30)}"
        ) from None
    time.sleep(0.5)  # nothing more must come (an extra call would show up here)
    assert calls_after(annuaire, start) == expected


def test_synapse_calls_annuaire(synapse: Synapse, annuaire: FakeAnnuaire, smtp) -> None:
    _, sink = smtp
    hs = synapse
    addresses = {
        "carol": "carol.durand@finances.gouv.example",
        "alice": "alice.martin@finances.gouv.example",
        "dave": "dave@douane.finances.gouv.example",
        "bob": "bob.petit@finances.gouv.example",
    }
    _, admin_token = hs.register_with_secret("admin", admin=True)
    assert annuaire.calls() == []  # no email, no profile change: nothing for annuaire

    # Registration by email: the display name comes from annuaire, then the address is bound.
    n = len(annuaire.calls())
    carol = hs.register_with_email(sink, "carol", addresses["carol"])
    assert carol == f"@carol:{SERVER_NAME}"
    wait_for_calls(
        annuaire,
        n,
        [
            ("display_name", {"medium": "email", "address": addresses["carol"]}),
            ("bind", {"medium": "email", "address": addresses["carol"], "mxid": carol}),
        ],
        hs,
    )
    assert hs.displayname(carol) == annuaire.displayname
    assert all(r.authorization == f"Bearer {annuaire.token}" for r in annuaire.calls())

    # An address added by an administrator, then profile changes by the user.
    alice, alice_token = hs.register_with_secret("alice")
    n = len(annuaire.calls())
    hs.call(
        "PUT",
        f"/_synapse/admin/v2/users/{alice}",
        {"threepids": [{"medium": "email", "address": addresses["alice"]}]},
        admin_token,
    )
    hs.call(
        "PUT",
        f"/_matrix/client/v3/profile/{alice}/displayname",
        {"displayname": "Alice M"},
        alice_token,
    )
    hs.call(
        "PUT",
        f"/_matrix/client/v3/profile/{alice}/avatar_url",
        {"avatar_url": "mxc://finances.test/abc"},
        alice_token,
    )
    wait_for_calls(
        annuaire,
        n,
        [
            ("bind", {"medium": "email", "address": addresses["alice"], "mxid": alice}),
            ("profile", {"user_id": alice, "displayname": "Alice M", "avatar_url": None}),
            (
                "profile",
                {
                    "user_id": alice,
                    "displayname": "Alice M",
                    "avatar_url": "mxc://finances.test/abc",
                },
            ),
        ],
        hs,
    )

    # Deactivation with erasure: Synapse removes the address first (unbind), clears the profile
    # (not sent), then the deactivation says erased.
    n = len(annuaire.calls())
    hs.call("POST", f"/_synapse/admin/v1/deactivate/{alice}", {"erase": True}, admin_token)
    wait_for_calls(
        annuaire,
        n,
        [
            ("unbind", {"medium": "email", "address": addresses["alice"], "mxid": alice}),
            ("deactivated", {"user_id": alice, "erased": True}),
        ],
        hs,
    )
    # Without erasure.
    n = len(annuaire.calls())
    hs.call("POST", f"/_synapse/admin/v1/deactivate/{carol}", {"erase": False}, admin_token)
    wait_for_calls(
        annuaire,
        n,
        [
            ("unbind", {"medium": "email", "address": addresses["carol"], "mxid": carol}),
            ("deactivated", {"user_id": carol, "erased": False}),
        ],
        hs,
    )

    # annuaire down: registration still succeeds (Synapse's default display name), and the bind
    # arrives once annuaire is back, without a restart.
    annuaire.stop()
    dave = hs.register_with_email(sink, "dave", addresses["dave"])
    assert hs.displayname(dave) == "dave"
    wait_for(
        lambda: hs.module_log_has(r"bind call \d+ failed \(ConnectionRefusedError\), attempt 1;"),
        "the module to try the bind while annuaire is down",
    )
    n = len(annuaire.calls())
    annuaire.start()
    wait_for_calls(
        annuaire, n, [("bind", {"medium": "email", "address": addresses["dave"], "mxid": dave})], hs
    )

    # annuaire down across a Synapse restart: what the module accepted arrives after it.
    bob, _ = hs.register_with_secret("bob")
    annuaire.stop()
    hs.call(
        "PUT",
        f"/_synapse/admin/v2/users/{bob}",
        {"threepids": [{"medium": "email", "address": addresses["bob"]}], "displayname": "Bob P"},
        admin_token,
    )
    hs.call("POST", f"/_synapse/admin/v1/deactivate/{bob}", {"erase": True}, admin_token)
    # Let the module fail once on the first of them, so that the restart also carries a backoff.
    wait_for(
        lambda: hs.module_log_has(
            r"profile call \d+ failed \(ConnectionRefusedError\), attempt 1;"
        ),
        "the module to try the profile call while annuaire is down",
    )
    hs.stop()
    queued = hs.outbox()
    assert [call for _, call, _ in queued] == ["profile", "bind", "unbind", "deactivated"]
    assert queued[0][2] >= 1  # attempts of the head job, kept across the restart
    n = len(annuaire.calls())
    annuaire.start()
    hs.start()
    wait_for_calls(
        annuaire,
        n,
        [
            ("profile", {"user_id": bob, "displayname": "Bob P", "avatar_url": None}),
            ("bind", {"medium": "email", "address": addresses["bob"], "mxid": bob}),
            ("unbind", {"medium": "email", "address": addresses["bob"], "mxid": bob}),
            ("deactivated", {"user_id": bob, "erased": True}),
        ],
        hs,
    )

    assert hs.outbox() == []

    # Synapse saw no error, and no logging-context misuse (the module awaits Twisted deferreds).
    problems = [
        line
        for line in hs.log.read_text(errors="replace").splitlines()
        if " - ERROR - " in line or " - synapse.logging.context - " in line
    ]
    assert problems == [], "\n".join(problems)

    # The module's log lines never hold an address, a user id or the token.
    lines = hs.module_log()
    assert any(re.search(r"profile call \d+ delivered after [1-9]", line) for line in lines)
    for secret in [*addresses.values(), annuaire.token, *(f"@{u}:" for u in addresses)]:
        assert not [line for line in lines if secret in line], secret
