"""credd.log: structured logging that never writes a secret, whatever the format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from credd.log import configure_logging
from credd.secret import REDACTED, Secret

SECRET_TEXT = "s3cr3t-VALUE-that-must-never-appear"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def configured(fmt: str = "json", level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level=level, fmt=fmt, stream=stream)
    return stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_json_output_carries_the_event_and_plain_values() -> None:
    stream = configured()
    structlog.get_logger().info("credentials_fetched", profile="dev", attempt=2)
    [record] = records(stream)
    assert record["event"] == "credentials_fetched"
    assert record["profile"] == "dev"
    assert record["attempt"] == 2
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


SECRET_NAMED_KEYS = (
    "accessToken",
    "access_token",
    "refreshToken",
    "refresh_token",
    "clientSecret",
    "client_secret",
    "secretAccessKey",
    "SecretAccessKey",
    "sessionToken",
    "Token",
    "token",
    "Authorization",
    "password",
    "code_verifier",
    "deviceCode",
)


@pytest.mark.parametrize("key", SECRET_NAMED_KEYS)
def test_every_secret_named_key_is_redacted(key: str) -> None:
    stream = configured()
    structlog.get_logger().info("token_renewed", session="my-sso", **{key: SECRET_TEXT})
    output = stream.getvalue()
    assert SECRET_TEXT not in output
    [record] = records(stream)
    assert record["event"] == "token_renewed"
    assert record["session"] == "my-sso"
    assert record[key] == REDACTED


@pytest.mark.parametrize(
    "key", ["accessToken", "AccessToken", "refreshToken", "clientSecret", "SecretAccessKey"]
)
def test_secret_keys_match_whatever_their_case(key: str) -> None:
    stream = configured()
    structlog.get_logger().warning("upstream_answer", **{key: SECRET_TEXT})
    assert SECRET_TEXT not in stream.getvalue()
    assert records(stream)[0][key] == REDACTED


def test_secret_values_under_any_key_are_redacted() -> None:
    stream = configured()
    log = structlog.get_logger()
    log.info("registered", client=Secret(SECRET_TEXT), profile="dev")
    log.debug("bound", blob=Secret(SECRET_TEXT + "-2"))
    output = stream.getvalue()
    assert SECRET_TEXT not in output
    first, second = records(stream)
    assert first == {**first, "event": "registered", "client": REDACTED, "profile": "dev"}
    assert second["event"] == "bound"


def test_secrets_inside_containers_render_redacted() -> None:
    stream = configured()
    structlog.get_logger().info("batch", items=[Secret(SECRET_TEXT)], who={"s": Secret("x")})
    assert SECRET_TEXT not in stream.getvalue()
    assert records(stream)[0]["event"] == "batch"


def test_positional_formatting_of_a_secret() -> None:
    stream = configured()
    structlog.get_logger().info("token is %s", Secret(SECRET_TEXT))
    assert SECRET_TEXT not in stream.getvalue()
    assert records(stream)[0]["event"] == f"token is {REDACTED}"


def test_bound_and_context_values_are_redacted() -> None:
    stream = configured()
    structlog.contextvars.bind_contextvars(refresh_token=SECRET_TEXT, request="r-1")
    structlog.get_logger().bind(access_token=SECRET_TEXT + "-b").info("served")
    output = stream.getvalue()
    assert SECRET_TEXT not in output
    [record] = records(stream)
    assert record["event"] == "served"
    assert record["request"] == "r-1"
    assert record["refresh_token"] == REDACTED
    assert record["access_token"] == REDACTED


def test_console_format_redacts_too() -> None:
    stream = configured(fmt="console")
    structlog.get_logger().info(
        "token_renewed", access_token=SECRET_TEXT, other=Secret(SECRET_TEXT), session="my-sso"
    )
    output = stream.getvalue()
    assert "token_renewed" in output
    assert "my-sso" in output
    assert SECRET_TEXT not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output)


def test_auto_format_on_a_pipe_is_json() -> None:
    stream = configured(fmt="auto")
    structlog.get_logger().info("hello")
    assert records(stream)[0]["event"] == "hello"


def test_level_filters_events() -> None:
    stream = configured(level="warning")
    log = structlog.get_logger()
    log.debug("dropped_debug")
    log.info("dropped_info")
    log.warning("kept_warning")
    log.error("kept_error")
    assert [r["event"] for r in records(stream)] == ["kept_warning", "kept_error"]


def test_botocore_debug_logs_stay_silent_even_at_debug() -> None:
    # at DEBUG botocore logs request bodies, tokens included
    stream = configured(level="debug")
    logging.getLogger("botocore.endpoint").debug("body: %s", SECRET_TEXT)
    logging.getLogger("aiohttp.access").info("GET /v1/credentials/dev %s", SECRET_TEXT)
    logging.getLogger("botocore.credentials").warning("stdlib warning passes")
    output = stream.getvalue()
    assert SECRET_TEXT not in output
    assert "stdlib warning passes" in output


def test_exception_events_keep_the_event_and_redact() -> None:
    stream = configured()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("request_failed", authorization=SECRET_TEXT)
    output = stream.getvalue()
    assert SECRET_TEXT not in output
    [record] = records(stream)
    assert record["event"] == "request_failed"
    assert "RuntimeError: boom" in record["exception"]


@pytest.mark.parametrize(
    "key",
    ["aws_secret_access_key", "aws_session_token", "id_token", "dpop_key", "new_refresh_token"],
)
def test_secret_bearing_key_variants_are_redacted(key: str) -> None:
    stream = configured()
    structlog.get_logger().info("source_loaded", **{key: SECRET_TEXT})
    assert SECRET_TEXT not in stream.getvalue()
