"""A reader for the AWS config and credentials files that remembers line numbers.

It follows botocore's reading (``configloader.raw_config_parse``, a
``RawConfigParser``): ``key = value`` or ``key: value``, whole-line comments
starting with ``#`` or ``;``, no inline comments, indented continuation lines
forming nested values (``[services NAME]`` sections use them), and duplicate
sections or keys are errors. Unlike ``configparser`` it keeps the line of
every key, so an error can name the file, the line and the key. Lines end
where Python's universal newlines end them (``\n``, ``\r\n``, ``\r``), as
when botocore reads the file; a form feed or U+2028 inside a value is not a
line break.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from credd.errors import ConfigError

_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_DELIMITER = re.compile(r"[=:]")


def _option(line: str) -> tuple[str, str] | None:
    """``key = value`` (or ``key: value``) of a stripped line; ``None`` if it is not one.

    The first ``=`` or ``:`` splits it, as in ``configparser``. (A regular expression
    with a lazy key and ``\\s*`` took quadratic time on a long line without either.)
    """
    found = _DELIMITER.search(line)
    if found is None:
        return None
    key = line[: found.start()].rstrip()
    if not key:
        return None
    return key, line[found.end() :].strip()


@dataclass
class Section:
    name: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def nested(self, key: str) -> dict[str, str]:
        """A nested value (``sts =`` followed by indented ``endpoint_url = ...``)."""
        out: dict[str, str] = {}
        for raw in self.values.get(key, "").split("\n"):
            if option := _option(raw.strip()):
                out[option[0].lower()] = option[1]
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
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, raw in enumerate(lines, start=1):
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
        option = _option(stripped)
        if current is None:
            # The line itself is not echoed: it may hold a secret key.
            raise ConfigError(f"{path}:{number}: a line outside any [section]")
        if option is None:
            raise ConfigError(f"{path}:{number}: in [{current.name}], expected 'key = value'")
        key = option[0].lower()
        if key in current.values:
            raise ConfigError(
                f"{path}:{number}: key {key!r} appears twice in [{current.name}] "
                f"(first at line {current.lines[key]})"
            )
        current.values[key] = option[1]
        current.lines[key] = number
        last_key = key
    return IniFile(path=path, sections=sections)


def read_config_text(path: Path) -> str | None:
    """The text of a configuration file; ``None`` when it does not exist.

    Bytes that are not UTF-8 are refused naming the line they are on.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save it as UTF-8"
        ) from exc


def read_ini(path: Path) -> IniFile | None:
    """Parse ``path``; ``None`` when it does not exist."""
    text = read_config_text(path)
    return None if text is None else parse_ini(text, path)
