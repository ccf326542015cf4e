"""parse_config: the keys url, token_file | token, timeout, and clear errors."""

from __future__ import annotations

import pytest
from synapse.config import ConfigError

from annuaire_synapse import AnnuaireModule
from annuaire_synapse.config import DEFAULT_TIMEOUT_SECONDS


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "annuaire.token"
    path.write_text("s3cr3t-token-value\n")
    return str(path)


def parse(raw):
    return AnnuaireModule.parse_config(raw)


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    return str(info.value)


def test_token_file_is_read_and_stripped(token_file):
    config = parse({"url": "https://annuaire.internal:8090/", "token_file": token_file})
    assert config.url == "https://annuaire.internal:8090"
    assert config.token == "s3cr3t-token-value"
    assert config.timeout == DEFAULT_TIMEOUT_SECONDS == 5.0
    assert config.endpoint("bind") == "https://annuaire.internal:8090/_annuaire/homeserver/v1/bind"


def test_inline_token_and_timeout():
    config = parse({"url": "http://10.0.0.5:8090", "token": " abc ", "timeout": 2})
    assert (config.url, config.token, config.timeout) == ("http://10.0.0.5:8090", "abc", 2.0)
    assert parse({"url": "http://a", "token": "t", "timeout": 0.5}).timeout == 0.5


def test_token_never_in_repr(token_file):
    config = parse({"url": "https://a.example", "token_file": token_file})
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "must be a mapping"),
        ({"token": "t"}, "'url' is required"),
        ({"url": "", "token": "t"}, "'url' must be a non-empty string"),
        ({"url": 8090, "token": "t"}, "'url' must be a non-empty string"),
        ({"url": "ftp://a", "token": "t"}, "must start with https:// or http://"),
        ({"url": "annuaire:8090", "token": "t"}, "must start with https:// or http://"),
        ({"url": "https://", "token": "t"}, "'url' has no host"),
        ({"url": "https://a?x=1", "token": "t"}, "plain base URL"),
        ({"url": "https://u:p@a", "token": "t"}, "plain base URL"),
        ({"url": "https://a:99999", "token": "t"}, "invalid port"),
        ({"url": "https://a"}, "'token_file' is required"),
        ({"url": "https://a", "token": "t", "token_file": "/x"}, "exactly one of"),
        ({"url": "https://a", "token": 5}, "'token' must be a string"),
        ({"url": "https://a", "token": "  "}, "'token' is empty"),
        ({"url": "https://a", "token": "two words"}, "printable ASCII"),
        ({"url": "https://a", "token": "t", "timeout": "5"}, "'timeout' must be a number"),
        ({"url": "https://a", "token": "t", "timeout": True}, "'timeout' must be a number"),
        ({"url": "https://a", "token": "t", "timeout": 0}, "more than 0"),
        ({"url": "https://a", "token": "t", "timeout": -1}, "more than 0"),
        ({"url": "https://a", "token": "t", "timeout": 61}, "at most 60"),
        ({"url": "https://a", "token": "t", "timeout": float("nan")}, "more than 0"),
        ({"url": "https://a", "token": "t", "tls": False}, "unknown key(s) tls"),
    ],
)
def test_errors(raw, message):
    assert message in error_of(raw)


def test_token_file_problems(tmp_path):
    missing = str(tmp_path / "nope")
    assert f"cannot read {missing}" in error_of({"url": "https://a", "token_file": missing})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in error_of({"url": "https://a", "token_file": str(empty)})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in error_of({"url": "https://a", "token_file": str(binary)})
    two_lines = tmp_path / "two"
    two_lines.write_text("abc\ndef\n")
    assert "printable ASCII" in error_of({"url": "https://a", "token_file": str(two_lines)})


def test_errors_never_show_the_token(tmp_path):
    path = tmp_path / "t"
    path.write_text("s3cr3t with space")
    assert "s3cr3t" not in error_of({"url": "https://a", "token_file": str(path)})
