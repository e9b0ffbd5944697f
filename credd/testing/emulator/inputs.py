"""Reading request members the way a strict service does.

rest-json bodies (sso-oidc) arrive as JSON objects whose keys are the model's
member names (protocols.md §1); a member of the wrong type, a missing required
member or a body that is not a JSON object is the service's invalid-request
error, raised through the factory the caller passes in.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from .errors import AwsError

ErrorFactory = Callable[[str], AwsError]


class JsonInput:
    def __init__(self, members: dict[str, object], error: ErrorFactory) -> None:
        self._members = members
        self._error = error

    @classmethod
    async def read(cls, request: web.Request, error: ErrorFactory) -> JsonInput:
        raw = await request.read()
        try:
            members = json.loads(raw) if raw else {}
        except ValueError:
            raise error("Request body is not valid JSON") from None
        if not isinstance(members, dict):
            raise error("Request body must be a JSON object")
        return cls(members, error)

    def required_string(self, name: str) -> str:
        value = self.optional_string(name)
        if not value:
            raise self._error(f"{name} is required")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._members.get(name)
        if value is not None and not isinstance(value, str):
            raise self._error(f"{name} must be a string")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self._members.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._error(f"{name} must be a list of strings")
        return tuple(value)


def required_query(request: web.Request, name: str, error: ErrorFactory) -> str:
    value = request.query.get(name)
    if not value:
        raise error(f"{name} is required")
    return value
