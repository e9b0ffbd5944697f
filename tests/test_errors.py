"""What credd's errors say, and what they never say."""

from __future__ import annotations

from credd.errors import InternalFailure


def _fail_with(message: str) -> None:
    raise ValueError(message)


def test_an_internal_failure_names_the_type_and_place_never_the_message() -> None:
    try:
        _fail_with("aoaAAAAtoken-that-must-not-show")
    except ValueError as exc:
        failure = InternalFailure(exc)
    assert "token-that-must-not-show" not in str(failure)
    assert failure.message.startswith("credd failed unexpectedly (ValueError at test_errors.py:")
    assert failure.code == "InternalError"
