"""credd.secret: a string that never shows itself by accident."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from credd.secret import REDACTED, Secret

VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@dataclass(frozen=True)
class Holder:
    name: str
    secret: Secret


def test_reveal_gives_the_value() -> None:
    assert Secret(VALUE).reveal() == VALUE


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        format,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: f"{s!s}",
        lambda s: f"{s:>80}",
        lambda s: "{}".format(s),  # noqa: UP032 -- str.format is what is under test
        lambda s: "%s" % s,  # noqa: UP031 -- %-formatting is what is under test
        lambda s: "%r" % s,  # noqa: UP031
        lambda s: repr([s, {"k": s}]),
        lambda s: repr(Holder("x", s)),
    ],
    ids=[
        "repr",
        "str",
        "format",
        "fstring",
        "fstring-r",
        "fstring-s",
        "fstring-spec",
        "str.format",
        "percent-s",
        "percent-r",
        "container",
        "dataclass",
    ],
)
def test_renderings_never_show_the_value(render: Callable[[Secret], str]) -> None:
    text = render(Secret(VALUE))
    assert VALUE not in text
    assert "EXAMPLEKEY" not in text
    assert REDACTED in text


def test_str_is_exactly_the_redaction() -> None:
    assert str(Secret(VALUE)) == REDACTED
    assert repr(Secret(VALUE)) == f"Secret({REDACTED})"


def test_logging_percent_args_never_show_the_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="credd.test_secret"):
        logging.getLogger("credd.test_secret").info(
            "token is %s (%r)", Secret(VALUE), Secret(VALUE)
        )
    assert VALUE not in caplog.text
    assert "token is" in caplog.text


def test_equality_compares_values() -> None:
    assert Secret(VALUE) == Secret(VALUE)
    assert Secret(VALUE) != Secret(VALUE + "x")
    assert Secret("") == Secret("")
    assert Secret("a") != Secret("")


def test_never_equal_to_a_plain_string() -> None:
    assert Secret(VALUE) != VALUE
    assert VALUE != Secret(VALUE)  # noqa: SIM300 -- str.__ne__ first is the point


def test_hash_agrees_with_equality() -> None:
    assert hash(Secret(VALUE)) == hash(Secret(VALUE))
    assert len({Secret(VALUE), Secret(VALUE), Secret("other")}) == 2


def test_truthiness_follows_the_value() -> None:
    assert Secret("x")
    assert not Secret("")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(Secret(VALUE), protocol=protocol)


def test_pickling_inside_a_container_is_refused() -> None:
    with pytest.raises(TypeError):
        pickle.dumps({"creds": [Holder("x", Secret(VALUE))]})


def test_json_refuses_a_secret() -> None:
    with pytest.raises(TypeError):
        json.dumps({"accessToken": Secret(VALUE)})


def test_no_instance_dict_to_peek_into() -> None:
    secret = Secret(VALUE)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret.other = 1  # type: ignore[attr-defined]
