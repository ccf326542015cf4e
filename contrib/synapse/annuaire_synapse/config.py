"""The module's configuration: `url`, `token_file` or `token`, `timeout`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_TIMEOUT_SECONDS = 60.0
KNOWN_KEYS = frozenset({"url", "token", "token_file", "timeout"})


class AnnuaireConfigError(ValueError):
    """A configuration error; its message names the key at fault."""


@dataclass(frozen=True)
class AnnuaireConfig:
    """Where annuaire's homeserver API lives and how to call it."""

    # Base URL of annuaire without trailing slash, e.g. "https://annuaire.internal:8090".
    url: str
    # The bearer token of this homeserver (`annuaire homeserver add SERVER_NAME`). Kept out of
    # repr() so that it never reaches a log line.
    token: str = field(repr=False)
    # Seconds allowed for one call to annuaire, connection and response body included.
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def endpoint(self, call: str) -> str:
        """The URL of one call of the homeserver API (`bind`, `unbind`, …)."""
        return f"{self.url}/_annuaire/homeserver/v1/{call}"


def parse(raw: Any) -> AnnuaireConfig:
    """Validates the `config:` mapping of the module in homeserver.yaml."""
    if not isinstance(raw, dict):
        raise AnnuaireConfigError(
            "the module's config must be a mapping with 'url' and 'token_file'"
        )
    unknown = sorted(str(k) for k in raw if k not in KNOWN_KEYS)
    if unknown:
        raise AnnuaireConfigError(
            f"unknown key(s) {', '.join(unknown)}: the keys are url, token_file (or token), timeout"
        )
    return AnnuaireConfig(
        url=_parse_url(raw.get("url")),
        token=_parse_token(raw.get("token"), raw.get("token_file")),
        timeout=_parse_timeout(raw.get("timeout", DEFAULT_TIMEOUT_SECONDS)),
    )


def _parse_url(value: Any) -> str:
    if value is None:
        raise AnnuaireConfigError(
            "'url' is required: annuaire's base URL, e.g. https://annuaire.internal:8090"
        )
    if not isinstance(value, str) or not value.strip():
        raise AnnuaireConfigError("'url' must be a non-empty string")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise AnnuaireConfigError(f"'url' must start with https:// or http://, not {value!r}")
    if not parts.hostname:
        raise AnnuaireConfigError(f"'url' has no host: {value!r}")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise AnnuaireConfigError(
            "'url' must be a plain base URL (no query, fragment or credentials): "
            "the token goes in 'token_file'"
        )
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as err:
        raise AnnuaireConfigError(f"'url' has an invalid port: {err}") from None
    return url


def _parse_token(token: Any, token_file: Any) -> str:
    if token is not None and token_file is not None:
        raise AnnuaireConfigError(
            "set exactly one of 'token_file' (preferred) and 'token', not both"
        )
    if token is None and token_file is None:
        raise AnnuaireConfigError(
            "'token_file' is required: a file holding the token that "
            "`annuaire homeserver add SERVER_NAME` printed ('token' is the inline alternative)"
        )
    if token_file is not None:
        if not isinstance(token_file, str) or not token_file:
            raise AnnuaireConfigError("'token_file' must be a path")
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as f:
                value = f.read()
        except OSError as err:
            raise AnnuaireConfigError(
                f"'token_file': cannot read {token_file}: {err.strerror or err}"
            ) from None
        except UnicodeDecodeError:
            raise AnnuaireConfigError(f"'token_file': {token_file} is not UTF-8 text") from None
        where = f"'token_file' ({token_file})"
    else:
        if not isinstance(token, str):
            raise AnnuaireConfigError("'token' must be a string")
        value = token
        where = "'token'"
    value = value.strip()
    if not value:
        raise AnnuaireConfigError(f"{where} is empty")
    # It goes into an HTTP header: printable ASCII only, no spaces or line breaks.
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise AnnuaireConfigError(
            f"{where} must be a single line of printable ASCII characters without spaces"
        )
    return value


def _parse_timeout(value: Any) -> float:
    # bool is an int in Python: `timeout: true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AnnuaireConfigError(f"'timeout' must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TIMEOUT_SECONDS:
        raise AnnuaireConfigError(
            f"'timeout' must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds,"
            f" not {value!r}"
        )
    return seconds
