"""A string that never shows itself by accident.

Access tokens, refresh tokens, client secrets and secret keys travel through
credd as :class:`Secret`; ``repr``, ``str`` and f-strings print a redaction,
and only :meth:`Secret.reveal` hands out the value, at the edge where it goes
on the wire or to disk.
"""

from __future__ import annotations

import hmac
from typing import Final

REDACTED: Final = "[redacted]"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")
