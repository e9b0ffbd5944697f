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
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from credd.config.ini import Section, read_ini
from credd.errors import LoginError
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
