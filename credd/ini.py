"""A reader for the AWS config and credentials files that remembers line numbers.

It follows botocore's reading (``configloader.raw_config_parse``, a
``RawConfigParser``): ``key = value`` or ``key: value``, whole-line comments
starting with ``#`` or ``;``, no inline comments, indented continuation lines
forming nested values (``[services NAME]`` sections use them), and duplicate
sections or keys are errors. Unlike ``configparser`` it keeps the line of
every key, so an error can name the file, the line and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from credd.errors import ConfigError

_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_OPTION = re.compile(r"^(?P<key>[^=:\s][^=:]*?)\s*[=:]\s*(?P<value>.*)$")


@dataclass
class Section:
    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def nested(self, key: str) -> dict[str, str]:
        """A nested value (``sts =`` followed by indented ``endpoint_url = ...``)."""
        out: dict[str, str] = {}
        for raw in self.values.get(key, "").splitlines():
            if match := _OPTION.match(raw.strip()):
                out[match["key"].strip().lower()] = match["value"].strip()
        return out


@dataclass(frozen=True)
class IniFile:
    path: Path
    sections: Mapping[str, Section]

    def where(self, section: Section, key: str | None = None) -> str:
        line = section.lines.get(key, section.line) if key else section.line
        return f"{self.path}:{line}"


def parse_ini(text: str, path: Path) -> IniFile:
    sections: dict[str, Section] = {}
    current: Section | None = None
    last_key: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if raw[0] in " \t" and current is not None and last_key is not None:
            current.values[last_key] += "\n" + stripped
            continue
        if match := _SECTION.match(stripped):
            name = match["name"].strip()
            if name in sections:
                raise ConfigError(
                    f"{path}:{number}: section [{name}] appears twice "
                    f"(first at line {sections[name].line})"
                )
            current = sections[name] = Section(name=name, line=number)
            last_key = None
            continue
        match = _OPTION.match(stripped)
        if current is None:
            # The line itself is not echoed: it may hold a secret key.
            raise ConfigError(f"{path}:{number}: a line outside any [section]")
        if match is None:
            raise ConfigError(f"{path}:{number}: in [{current.name}], expected 'key = value'")
        key = match["key"].strip().lower()
        if key in current.values:
            raise ConfigError(
                f"{path}:{number}: key {key!r} appears twice in [{current.name}] "
                f"(first at line {current.lines[key]})"
            )
        current.values[key] = match["value"].strip()
        current.lines[key] = number
        last_key = key
    return IniFile(path=path, sections=sections)


def read_ini(path: Path) -> IniFile | None:
    """Parse ``path``; ``None`` when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    return parse_ini(text, path)
