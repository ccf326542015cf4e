"""An in-process fake of annuaire's homeserver API (`/_annuaire/homeserver/v1/…`), for tests.

It checks the bearer token like annuaire does (401 M_UNAUTHORIZED), records every request and
answers each call with the contract's success body unless a test scripted another answer. It can
be stopped (connections are then refused) and started again on the same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PREFIX = "/_annuaire/homeserver/v1/"


@dataclass
class Recorded:
    """One request as annuaire would see it."""

    method: str
    call: str
    query: dict[str, str]
    body: Any
    authorization: str | None


@dataclass
class Scripted:
    """An answer other than the default: status, JSON body (or raw bytes), optional hold."""

    status: int
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    # Wait for this event before answering (the request is recorded first).
    hold: threading.Event | None = None


@dataclass
class FakeAnnuaire:
    token: str
    displayname: str = "Jean Dupont [Finances]"
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    _scripts: dict[str, list[Scripted]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # ---- control ----

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAnnuaire:
        """Listens (on the same port as before, when restarted)."""
        fake = self

        class Handler(_Handler):
            annuaire = fake

        deadline = time.monotonic() + 10
        while True:
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                # The port of a restart can linger briefly; a fresh port (0) never fails here.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening: connections to the port are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def is_refusing(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) != 0

    def script(self, call: str, *answers: Scripted) -> None:
        """The next answers to `call`, in order; then the default answer again."""
        with self._lock:
            self._scripts.setdefault(call, []).extend(answers)

    def calls(self, *names: str) -> list[Recorded]:
        """Recorded requests (of these calls only, if any are named)."""
        with self._lock:
            return [r for r in self.requests if not names or r.call in names]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- answering ----

    def _next_answer(self, call: str) -> Scripted | None:
        with self._lock:
            queue = self._scripts.get(call)
            return queue.pop(0) if queue else None

    def _default_answer(self, method: str, call: str, query: dict[str, str], body: Any) -> Scripted:
        expected = {
            "bind": "POST",
            "unbind": "POST",
            "profile": "POST",
            "deactivated": "POST",
            "display_name": "GET",
        }
        if call not in expected:
            return Scripted(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
        if method != expected[call]:
            return Scripted(405, {"errcode": "M_UNRECOGNIZED", "error": "Method not allowed"})
        if call == "display_name":
            if query.get("medium") != "email" or not query.get("address"):
                return Scripted(400, {"errcode": "M_MISSING_PARAMS", "error": "medium, address"})
            return Scripted(200, {"displayname": self.displayname, "organisation": "Finances"})
        if not isinstance(body, dict):
            return Scripted(400, {"errcode": "M_NOT_JSON", "error": "Body is not JSON"})
        if call in ("bind", "unbind"):
            if set(body) != {"medium", "address", "mxid"}:
                return Scripted(400, {"errcode": "M_BAD_JSON", "error": "medium, address, mxid"})
            if call == "bind":
                return Scripted(200, {**body, "ts": int(time.time() * 1000)})
            return Scripted(200, {"removed": True})
        if call == "profile":
            if "user_id" not in body:
                return Scripted(400, {"errcode": "M_MISSING_PARAMS", "error": "user_id"})
            return Scripted(200, {})
        if set(body) != {"user_id", "erased"} or not isinstance(body["erased"], bool):
            return Scripted(400, {"errcode": "M_BAD_JSON", "error": "user_id, erased"})
        return Scripted(200, {"removed_associations": 1})


class _Handler(BaseHTTPRequestHandler):
    annuaire: FakeAnnuaire
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test asserts on what was recorded

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if not parts.path.startswith(PREFIX):
            self._send(Scripted(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}))
            return
        call = parts.path[len(PREFIX) :]
        fake = self.annuaire
        with fake._lock:
            fake.requests.append(
                Recorded(method, call, query, body, self.headers.get("Authorization"))
            )
        if self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send(Scripted(401, {"errcode": "M_UNAUTHORIZED", "error": "Unknown token"}))
            return
        answer = fake._next_answer(call) or fake._default_answer(method, call, query, body)
        if answer.hold is not None:
            answer.hold.wait(30)
        self._send(answer)

    def _send(self, answer: Scripted) -> None:
        data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout)
