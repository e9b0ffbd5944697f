"""botocore's data files, read so that the daemon keeps only what its clients use.

botocore reads ``endpoints.json`` (every service in every partition, 1.2 MB of
JSON, some 7 MB of dictionaries) for the first client a session makes, and
keeps all of it. credd calls four services. :class:`DataLoader` reads that
file member by member and keeps, of each partition, its own settings and the
entries of those services: a few kilobytes, and the whole file is never in
memory as objects at once (memory freed after a parse that size would stay
resident, held by the odd object allocated between its pieces).

Every other data file (service models, endpoint rule sets, retry and default
settings) is read by botocore as usual.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Collection, Iterator
from typing import Any, Final

from botocore.loaders import JSONFileLoader, Loader

#: the services credd makes clients for, and their endpoint prefix (the service
#: model's ``metadata.endpointPrefix``, the key of ``endpoints.json``'s entries)
ENDPOINT_PREFIXES: Final = {
    "sso": "portal.sso",
    "sso-oidc": "oidc",
    "sts": "sts",
    "signin": "signin",
}

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _read(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as packed:
            return packed.read()
    with open(path, "rb") as plain:
        return plain.read()


class _Reader:
    """Walks a JSON text: containers member by member, anything else whole."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._at = 0

    def _next(self) -> str:
        match = _SPACE.match(self._text, self._at)
        self._at = match.end() if match else self._at
        if self._at >= len(self._text):
            raise ValueError("the JSON text ends too early")
        return self._text[self._at]

    def _take(self, char: str) -> None:
        if self._next() != char:
            raise ValueError(f"expected {char!r} at offset {self._at}")
        self._at += 1

    def value(self) -> Any:
        self._next()
        found, self._at = _DECODER.raw_decode(self._text, self._at)
        return found

    def members(self) -> Iterator[str]:
        """An object's keys; the caller reads (or skips) each value before asking for more."""
        self._take("{")
        if self._next() == "}":
            self._at += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise ValueError("an object key is not a string")
            self._take(":")
            yield key
            if self._next() == ",":
                self._at += 1
                continue
            self._take("}")
            return

    def elements(self) -> Iterator[None]:
        """An array's elements; the caller reads each one."""
        self._take("[")
        if self._next() == "]":
            self._at += 1
            return
        while True:
            yield None
            if self._next() == ",":
                self._at += 1
                continue
            self._take("]")
            return

    def end(self) -> None:
        match = _SPACE.match(self._text, self._at)
        if match is None or match.end() != len(self._text):
            raise ValueError("text after the JSON value")


def endpoints_for(text: str, prefixes: Collection[str]) -> dict[str, Any]:
    """``endpoints.json`` parsed, each partition's ``services`` cut down to ``prefixes``.

    Equal to parsing it whole and dropping the other services, one service entry
    in memory at a time. A layout other than botocore's (version 3) is parsed
    whole and cut down the same way.
    """
    try:
        return _endpoints_streamed(text, prefixes)
    except ValueError:
        whole = json.loads(text)
        if not isinstance(whole, dict) or not isinstance(whole.get("partitions"), list):
            return dict(whole) if isinstance(whole, dict) else {}
        for partition in whole["partitions"]:
            if isinstance(partition, dict) and isinstance(partition.get("services"), dict):
                services = partition["services"]
                partition["services"] = {k: v for k, v in services.items() if k in prefixes}
        return whole


def _endpoints_streamed(text: str, prefixes: Collection[str]) -> dict[str, Any]:
    reader = _Reader(text)
    root: dict[str, Any] = {}
    for key in reader.members():
        if key != "partitions":
            root[key] = reader.value()
            continue
        partitions: list[dict[str, Any]] = []
        for _ in reader.elements():
            partition: dict[str, Any] = {}
            for name in reader.members():
                if name != "services":
                    partition[name] = reader.value()
                    continue
                services: dict[str, Any] = {}
                for service in reader.members():
                    entry = reader.value()
                    if service in prefixes:
                        services[service] = entry
                partition[name] = services
            partitions.append(partition)
        root[key] = partitions
    reader.end()
    return root


class _FileLoader(JSONFileLoader):  # type: ignore[misc]  # botocore is untyped
    def load_file(self, file_path: str) -> Any:
        if os.path.basename(file_path) != "endpoints":
            return super().load_file(file_path)
        for path in (file_path + ".json", file_path + ".json.gz"):  # botocore's order
            if os.path.isfile(path):
                return endpoints_for(_read(path).decode("utf-8"), ENDPOINT_PREFIXES.values())
        return None


class DataLoader(Loader):  # type: ignore[misc]  # botocore is untyped
    """botocore's data loader (``AWS_DATA_PATH`` as botocore reads it), lean on endpoints."""

    def __init__(self, data_path: str | None) -> None:
        paths = [
            os.path.expanduser(os.path.expandvars(path))
            for path in (data_path or "").split(os.pathsep)
            if path
        ]
        super().__init__(extra_search_paths=paths, file_loader=_FileLoader())
