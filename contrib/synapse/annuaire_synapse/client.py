"""Calls to annuaire's homeserver API (`/_annuaire/homeserver/v1/…`), with a timeout.

Twisted's own `Agent` rather than the module API's `http_client`: Synapse's client logs every
request URL at INFO level, and `GET display_name` carries the email address in its query string;
the project's rule is that no log line holds an address. The agent verifies TLS certificates
against the system's trust store, like Synapse's own client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from .config import AnnuaireConfig

USER_AGENT = b"annuaire-synapse/0.1"
# annuaire's answers are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """annuaire's answer to one call: the status and the JSON body (None when not JSON)."""

    status: int
    body: Any

    @property
    def errcode(self) -> str | None:
        """The Matrix `errcode` of an error body, if there is one."""
        if isinstance(self.body, dict) and isinstance(self.body.get("errcode"), str):
            return self.body["errcode"]
        return None

    @property
    def retry_after_ms(self) -> int | None:
        """`retry_after_ms` of a 429 body, if there is a usable one."""
        if isinstance(self.body, dict):
            value = self.body.get("retry_after_ms")
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory (annuaire's bodies are a few hundred bytes)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class AnnuaireClient:
    """Makes one HTTP call to annuaire; raises on transport errors and on timeout."""

    def __init__(self, config: AnnuaireConfig, reactor: Any) -> None:
        self._config = config
        self._reactor = reactor
        # No persistent connections: calls are rare (registrations, profile changes), and a
        # pooled connection that the server closed meanwhile would fail a POST that Twisted does
        # not replay, costing a retry for nothing.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, connectTimeout=config.timeout, pool=pool)
        self._authorization = b"Bearer " + config.token.encode("ascii")

    async def call(
        self,
        method: str,
        call: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Answer:
        """`method` `{url}/_annuaire/homeserver/v1/{call}`; the whole exchange within `timeout`."""
        # Imported here so that the config and the answer types stay importable without Synapse.
        from synapse.module_api import make_deferred_yieldable

        uri = self._config.endpoint(call)
        if query:
            uri += "?" + urlencode(query)
        headers = Headers(
            {
                b"Authorization": [self._authorization],
                b"Accept": [b"application/json"],
                b"User-Agent": [USER_AGENT],
            }
        )
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _BytesProducer(json.dumps(body).encode("utf-8"))

        d = self._agent.request(method.encode("ascii"), uri.encode("utf-8"), headers, producer)
        d.addCallback(_read_answer)
        # Cancelling on timeout aborts the connection, whichever step it was at.
        d.addTimeout(self._config.timeout, self._reactor)
        return await make_deferred_yieldable(d)


class ResponseTooLarge(Exception):
    """annuaire's answers are small; a large one is not from annuaire."""


class _BodyCollector(Protocol):
    """Reads a response body up to a size limit (what `readBody` does, without the limit)."""

    def __init__(self, done: defer.Deferred, limit: int) -> None:
        self._done = done
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(ResponseTooLarge())
            self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return
        # A body without Content-Length ends at connection close, which Twisted reports as
        # possible data loss: what was read is the whole body for such a response.
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


def _read_answer(response: Any) -> defer.Deferred:
    collector: list[_BodyCollector] = []

    def cancel(_: defer.Deferred) -> None:
        # Timed out while reading the body: close the connection.
        if collector and collector[0].transport is not None:
            collector[0].transport.stopProducing()

    done: defer.Deferred = defer.Deferred(canceller=cancel)
    collector.append(_BodyCollector(done, MAX_BODY_BYTES))
    response.deliverBody(collector[0])

    def parse(raw: bytes) -> Answer:
        try:
            parsed = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            parsed = None
        return Answer(status=response.code, body=parsed)

    return done.addCallback(parse)
