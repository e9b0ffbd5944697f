"""Writing ``login_session`` (and ``region``) into an AWS config profile, as ``aws login`` does.

``credd login PROFILE --signin`` ends the way ``aws login`` ends (protocols.md
4.5): the profile's section gets ``login_session = <idToken sub>``, and
``region`` when the login had to choose one. Everything else in the file stays
as it was, byte for byte: other sections, other keys, comments, blank lines,
their order. The file is replaced atomically (a temporary file in the same
directory, fsync, rename) with its mode kept (0600 for a new file), and a
symlinked config is written through to its target.

Before any browser opens, :func:`inspect_profile` refuses a profile that
already gets credentials another way (SSO, keys, a role, a process, web
identity), as ``aws login`` refuses it; replacing a *different* session is the
CLI's question to ask.

``credd populate`` adds whole ``[profile NAME]`` sections at the end of the
file (:func:`with_profiles`), each under a comment line that marks it as
credd's, and may take such a section out again if nobody edited it
(:func:`without_profiles`); :func:`replace_config` writes the result only if
the file is still what was read.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from credd.config.ini import Section, read_ini
from credd.errors import CreddError, LoginError
from credd.files.store import atomic_write

#: settings that make a profile get its credentials some other way
CONFLICTING_KEYS: Final = (
    "sso_session",
    "sso_start_url",
    "sso_region",
    "sso_account_id",
    "sso_role_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "role_arn",
    "source_profile",
    "credential_source",
    "credential_process",
    "web_identity_token_file",
)

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")
_KEY = re.compile(r"^(?P<key>[^=:\s][^=:]*?)\s*[=:]")


@dataclass(frozen=True)
class ProfileState:
    """What a profile holds before a Sign-In login."""

    exists: bool
    region: str | None
    login_session: str | None


def _section_name(name: str) -> tuple[str, str]:
    """``(kind, name)`` of a section header as botocore reads it: ``profile  x`` is ``x``."""
    if name.strip() == "default":
        return "profile", "default"
    kind, _, rest = name.strip().partition(" ")
    return kind, rest.strip()


def _find(sections: dict[str, Section], profile: str) -> Section | None:
    for name, section in sections.items():
        if _section_name(name) == ("profile", profile):
            return section
    return None


def inspect_profile(config_file: Path, credentials_file: Path, profile: str) -> ProfileState:
    """The profile's region and current ``login_session``; :class:`LoginError` if it has others."""
    config = read_ini(config_file)
    section = _find(dict(config.sections), profile) if config else None
    values = section.values if section else {}
    conflicts: list[str] = [key for key in CONFLICTING_KEYS if key in values]
    credentials = read_ini(credentials_file)
    in_credentials = credentials.sections.get(profile) if credentials else None
    if in_credentials is not None and "aws_access_key_id" in in_credentials.values:
        conflicts.append(f"aws_access_key_id (in {credentials_file})")
    if conflicts:
        raise LoginError(
            f"profile {profile} already gets credentials another way ({', '.join(conflicts)}); "
            "a Sign-In login would not be used",
            hint="sign in to a new profile name instead: credd login NEW-NAME --signin",
        )
    return ProfileState(
        exists=section is not None,
        region=values.get("region") or None,
        login_session=values.get("login_session") or None,
    )


def write_login_session(
    config_file: Path, profile: str, login_session: str, region: str | None
) -> None:
    """Set ``login_session`` (and ``region``, unless ``None``) in the profile's section."""
    settings = {"login_session": login_session}
    if region is not None:
        settings["region"] = region
    for key, value in settings.items():
        # one line each: a newline would add a line (a section, a credential_process) of
        # whoever chose the value; Sign-In's sub is checked before, this is the last guard
        if not value or not value.isprintable() or value != value.strip():
            raise LoginError(
                f"will not write {key} = {value[:80]!a} into {config_file}: "
                "it is not one line of plain text"
            )
    target = config_file.resolve() if config_file.is_symlink() else config_file
    try:
        text = target.read_text(encoding="utf-8")
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        text, mode = "", None
    data = _with_settings(text, profile, settings).encode("utf-8")
    atomic_write(target, data, mode=0o600 if mode is None else mode)


def _with_settings(text: str, profile: str, settings: dict[str, str]) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if (m := _HEADER.match(line)) and _section_name(m["name"]) == ("profile", profile)
        ),
        None,
    )
    if start is None:
        header = "[default]" if profile == "default" else f"[profile {profile}]"
        block = [header + "\n", *(f"{key} = {value}\n" for key, value in settings.items())]
        if lines and lines[-1].strip():
            block.insert(0, "\n")
        return "".join(lines + block)
    end = next((i for i in range(start + 1, len(lines)) if _HEADER.match(lines[i])), len(lines))
    last_content = start  # where keys the section lacks go: after its last setting
    for i in range(start + 1, end):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        last_content = i
        if line[0] in " \t":
            continue  # a continuation line of a nested value
        match = _KEY.match(stripped)
        if match and (key := match["key"].strip().lower()) in settings:
            lines[i] = f"{key} = {settings.pop(key)}\n"
    added = [f"{key} = {value}\n" for key, value in settings.items()]
    return "".join(lines[: last_content + 1] + added + lines[last_content + 1 :])


# --------------------------------------------------------------------------- whole sections
# ``credd populate`` adds whole ``[profile NAME]`` sections at the end of the file, each
# under a comment line of its own, and may take such sections out again. Every other
# byte stays as it was: line endings (``\r\n`` files get ``\r\n`` sections), a missing
# final newline (one is added before the first new section), comments, blank lines.


class ConfigChanged(CreddError):
    """The AWS config changed between its read and its write: the write was dropped."""

    code = "ConfigChanged"


#: lines as botocore breaks them (``\n``, ``\r\n``, ``\r``), each with its ending
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_SETTING_KEY = re.compile(r"[a-z0-9_]+")
#: what can never be part of a profile name in a section header, on one line
_NOT_IN_NAMES = frozenset("[]#;=:")


def _one_line(text: str) -> bool:
    return bool(text) and text.isprintable() and text == text.strip()


@dataclass(frozen=True)
class NewProfile:
    """A ``[profile NAME]`` section to add, under a comment line of its own."""

    name: str
    #: ``(key, value)`` in the order they are written
    settings: tuple[tuple[str, str], ...]
    #: a whole comment line (``# ...``) written right above the header, or none
    comment: str | None = None

    def __post_init__(self) -> None:
        # Each must stay one line of its own: a newline in a value (from an upstream
        # answer, say) would add a key or a section of whoever chose it.
        name = self.name
        if (
            not _one_line(name)
            or name == "default"
            or any(c.isspace() or c in _NOT_IN_NAMES for c in name)
        ):
            raise ValueError(f"not a profile name credd writes: {name[:80]!a}")
        for key, value in self.settings:
            if not _SETTING_KEY.fullmatch(key) or not _one_line(value):
                raise ValueError(f"not a setting credd writes: {key[:40]!a}")
        if self.comment is not None and (
            not _one_line(self.comment) or self.comment[0] not in "#;"
        ):
            raise ValueError("a comment is one line that begins with # or ;")


def config_lines(text: str) -> list[str]:
    """``text``'s lines with their endings, broken only where botocore breaks them."""
    return _LINES.findall(text)


def _read_bytes(config_file: Path) -> bytes | None:
    """The AWS config as it is on disk (a symlink's target); ``None`` if there is none."""
    try:
        return config_file.read_bytes()
    except FileNotFoundError:
        return None


def replace_config(config_file: Path, before: bytes | None, after: bytes) -> None:
    """Write ``after`` atomically, if the file still holds ``before`` (``None``: absent).

    A symlinked config is written through to its target, and the file keeps its
    mode (0600 for a new one). :class:`ConfigChanged` if someone wrote the file
    since ``before`` was read (an editor, ``aws configure``): their write is kept,
    and the caller reads it again. The window left is one rename wide.
    """
    target = config_file.resolve() if config_file.is_symlink() else config_file
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None
    if _read_bytes(target) != before:
        raise ConfigChanged(f"{config_file} changed while credd was about to write it")
    atomic_write(target, after, mode=0o600 if mode is None else mode)


def with_profiles(text: str, profiles: Sequence[NewProfile]) -> str:
    """``text`` with ``profiles`` appended, a blank line before each; the rest untouched."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = config_lines(text)
    out = [text]
    if lines and not lines[-1].endswith(("\n", "\r")):
        out.append(newline)
    last_blank = not lines or not lines[-1].strip()
    for profile in profiles:
        if not last_blank:
            out.append(newline)
        block = [] if profile.comment is None else [profile.comment]
        block.append(f"[profile {profile.name}]")
        block += [f"{key} = {value}" for key, value in profile.settings]
        out += [line + newline for line in block]
        last_blank = False
    return "".join(out)


def _profile_header(line: str) -> str | None:
    """The profile a section header line opens (``[default]``: ``default``); else ``None``."""
    match = _HEADER.match(line)
    if match is None:
        return None
    kind, name = _section_name(match["name"])
    return name if kind == "profile" else None


def _is_header(line: str) -> bool:
    return _HEADER.match(line) is not None


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and stripped[0] in "#;"


def marked_profiles(text: str, comment: str) -> list[str]:
    """The profiles whose header has the line ``comment`` right above it."""
    lines = config_lines(text)
    return [
        name
        for i, line in enumerate(lines)
        if i > 0
        and lines[i - 1].rstrip("\r\n") == comment
        and (name := _profile_header(line)) is not None
    ]


def without_profiles(
    text: str, names: Collection[str], *, comment: str, keys: Collection[str]
) -> tuple[str, list[str]]:
    """``text`` without those of ``names`` that :func:`with_profiles` could have written.

    A section goes only if ``comment`` is right above its header and it holds
    nothing but settings of ``keys`` and blank lines: one edited by hand (another
    key, a comment among its settings, a nested value) stays. The comment line
    goes with it; the comments before the next section stay, and so a section
    removed is as if it had never been appended (at the end of the file, the
    blank line before it goes too). Returns the new text and the names of the
    sections removed.
    """
    lines = config_lines(text)
    blocks: list[tuple[int, int, str]] = []  # (comment line, end of section, name)
    for i, line in enumerate(lines):
        name = _profile_header(line)
        if name is None or name not in names or i == 0:
            continue
        if lines[i - 1].rstrip("\r\n") != comment:
            continue
        end = i + 1
        found: set[str] = set()
        while end < len(lines):
            body = lines[end]
            if body.strip():
                match = _KEY.match(body)
                if body[0] in " \t" or _is_comment(body) or _is_header(body) or not match:
                    break
                found.add(match["key"].strip().lower())
            end += 1
        # What follows must open the next section (after its own comments) or end the file:
        # a comment, then more of this section's settings, is an edit by hand.
        after = end
        while after < len(lines) and (_is_comment(lines[after]) or not lines[after].strip()):
            after += 1
        if after < len(lines) and not _is_header(lines[after]):
            continue  # a nested value, a comment among the settings: not as written
        if found <= set(keys):
            blocks.append((i - 1, end, name))
    drop: set[int] = set()
    tail = len(lines)  # from here to the end, every line goes
    for start, end, _name in reversed(blocks):
        if end >= tail:
            if start > 0 and not lines[start - 1].strip():
                start -= 1  # the blank line with_profiles put before it, at the end
            tail = start
        drop.update(range(start, end))
    kept = "".join(line for i, line in enumerate(lines) if i not in drop)
    return kept, [name for _start, _end, name in blocks]
