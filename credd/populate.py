"""``credd populate SESSION``: a profile for every account and role a session reaches.

:mod:`credd.assignments` lists what the session reaches; this module decides
which profiles the AWS config lacks (:func:`plan_profiles`, pure) and writes
them (:func:`update_config`) through :mod:`credd.config.writer`: appended,
atomically, every other byte kept, and only if the file did not change since
it was read (else it is read and planned again).

Decisions (the README's reference says the same):

* **Served** means any profile, whatever its name, with the same Identity
  Center start URL (through its ``sso_session`` or a legacy ``sso_start_url``),
  ``sso_account_id`` and ``sso_role_name``. A profile the user wrote is never
  changed or duplicated, and a second run adds nothing.
* **Region**: ``region`` is the session's ``sso_region`` (an ``[sso-session]``
  section has no other region), unless ``--region`` names one.
* **Names** come from the template, made safe for the AWS config and for
  shells: only ASCII letters, digits and ``._@+=,-`` survive; every run of
  other characters becomes one ``-``, runs of ``-`` collapse, and ``-`` is
  stripped from both ends. An account name with nothing left is its id.
* **Collisions**: a name already taken (by any profile of the AWS config or
  the credentials file, an ``[sso-session]``, or a name credd's own config
  uses), or one that two new profiles would share (two accounts named alike),
  gets ``-ACCOUNT_ID`` appended, then ``-2``, ``-3``... while that is taken
  too. New profiles are named in the order of account id and role name, so a
  run names them the same way every time.
* **Pruning** (``--prune``): each profile populate writes sits under the
  comment line ``# credd populate: SESSION``. Only such a profile, still of
  this session, whose role the session no longer reaches, holding nothing but
  the settings populate writes (one edited by hand stays), and that no other
  profile names as its ``source_profile``, is removed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

from credd.assignments import (
    DEFAULT_POLICY,
    NO_PROGRESS,
    Assignment,
    FetchPolicy,
    Progress,
    list_assignments,
)
from credd.aws import AwsClients
from credd.clock import Clock
from credd.config.aws_profiles import AwsConfig, ProfileBuilder
from credd.config.formats import REGION
from credd.config.ini import parse_ini, read_config_text, read_ini
from credd.config.settings import SessionSpec, SsoSessionSpec
from credd.config.writer import (
    ConfigChanged,
    NewProfile,
    marked_profiles,
    replace_config,
    with_profiles,
    without_profiles,
)
from credd.engine.session import SessionContext
from credd.errors import CreddError, NotServed
from credd.files.store import SsoCache
from credd.sessions.identity_center import IdentityCenterSession

DEFAULT_TEMPLATE: Final = "{account_name}.{role_name}"
TEMPLATE_FIELDS: Final = ("account_name", "account_id", "role_name", "session")
#: the comment line above every profile populate writes: what ``--prune`` looks for
MARKER_PREFIX: Final = "# credd populate: "
#: every setting a profile populate writes may hold (legacy sessions: the start URL)
POPULATE_KEYS: Final = frozenset(
    {"sso_session", "sso_start_url", "sso_region", "sso_account_id", "sso_role_name", "region"}
)
#: what survives in a profile name: safe in an AWS config section header and in a shell word
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]+")
_DASHES = re.compile(r"-{2,}")
#: how often the config is read and planned again when it changes under the write
WRITE_ATTEMPTS: Final = 3


# --------------------------------------------------------------------------- the session


def find_session(name: str, found: SessionSpec | None, config_file: Path) -> SsoSessionSpec:
    """The Identity Center session ``name`` means.

    ``found`` is what the settings resolve ``name`` to (a session, or the one
    at the root of a profile). An ``[sso-session NAME]`` that no profile uses
    yet is not in the settings; it is read from the AWS config here, since a
    session with no profiles is just what populate is for.
    """
    if isinstance(found, SsoSessionSpec):
        return found
    if found is not None:
        raise CreddError(
            f"{name!r} is a {found.kind} session: populate lists the accounts and roles "
            "of an IAM Identity Center session",
            hint="name an [sso-session] of the AWS config",
        )
    spec = ProfileBuilder(AwsConfig(read_ini(config_file), None)).sso_session(name)
    if spec is None:
        raise NotServed(
            f"{name!r} is no [sso-session] of {config_file} (nor a profile that uses one)",
            hint="see credd status",
        )
    return spec


# --------------------------------------------------------------------------- names


def check_template(template: str) -> None:
    """``ValueError`` unless ``template`` names only :data:`TEMPLATE_FIELDS`, plainly."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            fields = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
            raise ValueError(f"template {template!r}: {{{field}}} is not one of {fields}")


def safe_name(text: str) -> str:
    """``text`` as a profile name: ASCII letters, digits and ``._@+=,-`` survive.

    Every run of other characters becomes one ``-``, runs of ``-`` collapse,
    and ``-`` is stripped from both ends (so the result may be empty).
    """
    return _DASHES.sub("-", _UNSAFE.sub("-", text)).strip("-")


def profile_name(template: str, assignment: Assignment, session: str) -> str:
    """The name ``template`` gives ``assignment``'s profile, made safe (never empty)."""
    account_id = assignment.account_id
    values = {
        "account_name": safe_name(assignment.account_name) or account_id,
        "account_id": account_id,
        "role_name": safe_name(assignment.role_name),
        "session": safe_name(session),
    }
    name = safe_name(template.format_map(values))
    return name or safe_name(f"{account_id}.{assignment.role_name}")


def _unique_names(
    template: str, assignments: Sequence[Assignment], session: str, taken: Collection[str]
) -> list[str]:
    """A name for each of ``assignments`` (in their order): none taken, none shared."""
    bases = [profile_name(template, a, session) for a in assignments]
    shared = {base for base, count in Counter(bases).items() if count > 1}
    used = set(taken)
    names: list[str] = []
    for base, assignment in zip(bases, assignments, strict=True):
        name = base
        if name in used or name in shared:
            name = f"{base}-{assignment.account_id}"
            count = 2
            while name in used:
                name = f"{base}-{assignment.account_id}-{count}"
                count += 1
        used.add(name)
        names.append(name)
    return names


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    template: str = DEFAULT_TEMPLATE
    #: the ``region`` of new profiles; ``None``: the session's ``sso_region``
    region: str | None = None
    dry_run: bool = False
    prune: bool = False

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.region is not None and not REGION.match(self.region):
            raise ValueError(f"not an AWS region: {self.region!r}")


@dataclass(frozen=True)
class Added:
    name: str
    assignment: Assignment


@dataclass(frozen=True)
class Plan:
    """What one run changes in the AWS config."""

    #: the AWS config with the changes made (the text planned against, if there are none)
    result: str
    added: tuple[Added, ...]
    #: the sections added, as they are written
    new_sections: str
    removed: tuple[str, ...]
    #: populate's own profiles of roles no longer reachable that stay, and why
    kept: tuple[tuple[str, str], ...]
    #: the roles the session reaches, and in how many accounts
    roles: int
    accounts: int
    #: of those roles, how many some profile already serves
    served: int


def marker(spec: SsoSessionSpec) -> str:
    return f"{MARKER_PREFIX}{spec.name}"


def _sessions_start_urls(config: AwsConfig) -> dict[str, str]:
    return {
        name: section.values.get("sso_start_url", "")
        for name, section in config.sso_sessions.items()
    }


def _start_url(url: str) -> str:
    """A start URL as compared: ``.../start`` and ``.../start/`` are one portal."""
    return url.rstrip("/")


def _role_of(values: Mapping[str, str], start_urls: Mapping[str, str]) -> tuple[str, str, str]:
    """``(start URL, account, role)`` an Identity Center profile serves (empty parts if not)."""
    session = values.get("sso_session")
    start = start_urls.get(session, "") if session else values.get("sso_start_url", "")
    return _start_url(start), values.get("sso_account_id", ""), values.get("sso_role_name", "")


def _is_of_session(values: Mapping[str, str], spec: SsoSessionSpec) -> bool:
    if spec.legacy:
        return "sso_session" not in values and values.get("sso_start_url") == spec.start_url
    return values.get("sso_session") == spec.name


def plan_profiles(
    text: str,
    *,
    config_file: Path,
    spec: SsoSessionSpec,
    assignments: Sequence[Assignment],
    options: Options,
    reserved: Collection[str] = (),
) -> Plan:
    """What populate changes in the AWS config ``text`` (pure: no I/O).

    ``reserved``: names no new profile may take besides the AWS config's own (the
    credentials file's profiles, credd's ``[profiles.NAME]`` and sessions).
    """
    config = AwsConfig(parse_ini(text, config_file), None)
    start_urls = _sessions_start_urls(config)
    served = {
        (start, account, role)
        for section in config.profiles.values()
        for start, account, role in [_role_of(section.values, start_urls)]
        if start and account and role
    }
    start = _start_url(spec.start_url)
    missing = [a for a in assignments if (start, a.account_id, a.role_name) not in served]
    taken = {*config.profiles, *config.sso_sessions, *reserved, "default"}
    names = _unique_names(options.template, missing, spec.name, taken)
    region = options.region or spec.region
    comment = marker(spec)
    source: tuple[tuple[str, str], ...]
    if spec.legacy:
        source = (("sso_start_url", spec.start_url), ("sso_region", spec.region))
    else:
        source = (("sso_session", spec.name),)
    new = [
        NewProfile(
            name,
            (
                *source,
                ("sso_account_id", assignment.account_id),
                ("sso_role_name", assignment.role_name),
                ("region", region),
            ),
            comment,
        )
        for name, assignment in zip(names, missing, strict=True)
    ]
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    result = text
    if options.prune:
        result, removed, kept = _pruned(text, config, spec, assignments)
    return Plan(
        result=with_profiles(result, new) if new else result,
        added=tuple(Added(p.name, a) for p, a in zip(new, missing, strict=True)),
        new_sections=with_profiles("", new),
        removed=tuple(removed),
        kept=tuple(kept),
        roles=len(assignments),
        accounts=len({a.account_id for a in assignments}),
        served=len(assignments) - len(missing),
    )


def _pruned(
    text: str, config: AwsConfig, spec: SsoSessionSpec, assignments: Sequence[Assignment]
) -> tuple[str, list[str], list[tuple[str, str]]]:
    """``text`` without populate's own profiles of ``spec`` whose role is gone upstream."""
    reachable = {(a.account_id, a.role_name) for a in assignments}
    sources = {
        section.values["source_profile"]: name
        for name, section in config.profiles.items()
        if section.values.get("source_profile")
    }
    gone: list[str] = []
    kept: list[tuple[str, str]] = []
    for name in marked_profiles(text, marker(spec)):
        values = config.profiles[name].values if name in config.profiles else {}
        role = (values.get("sso_account_id", ""), values.get("sso_role_name", ""))
        if not _is_of_session(values, spec) or role in reachable:
            continue
        if name in sources:
            kept.append((name, f"profile {sources[name]} uses it as its source_profile"))
            continue
        gone.append(name)
    result, removed = without_profiles(text, gone, comment=marker(spec), keys=POPULATE_KEYS)
    kept += [(name, "edited by hand") for name in gone if name not in removed]
    order = {name: i for i, name in enumerate(config.profiles)}
    return result, removed, sorted(kept, key=lambda item: order.get(item[0], 0))


# --------------------------------------------------------------------------- writing


def _credentials_names(credentials_file: Path) -> set[str]:
    found = read_ini(credentials_file)
    return set(found.sections) if found else set()


def update_config(
    spec: SsoSessionSpec,
    assignments: Sequence[Assignment],
    *,
    config_file: Path,
    credentials_file: Path,
    options: Options,
    reserved: Collection[str] = (),
) -> Plan:
    """Plan against the AWS config as it is now and, unless a dry run, write the plan.

    The file is written only if it still holds what was planned against; if it
    changed in between, it is read and planned again.
    """
    taken = {*reserved, *_credentials_names(credentials_file)}
    for _attempt in range(WRITE_ATTEMPTS):
        found = read_config_text(config_file)  # strict UTF-8: its bytes are found.encode()
        text = found or ""
        plan = plan_profiles(
            text,
            config_file=config_file,
            spec=spec,
            assignments=assignments,
            options=options,
            reserved=taken,
        )
        if options.dry_run or plan.result == text:
            return plan
        try:
            before = None if found is None else found.encode("utf-8")
            replace_config(config_file, before, plan.result.encode("utf-8"))
        except ConfigChanged:
            continue
        return plan
    raise ConfigChanged(
        f"{config_file} kept changing while credd was writing it; nothing was written",
        hint=f"run credd populate {spec.name} again",
    )


# --------------------------------------------------------------------------- the command


async def populate(
    spec: SsoSessionSpec,
    *,
    cache: SsoCache,
    clients: AwsClients,
    clock: Clock,
    margin_seconds: float,
    config_file: Path,
    credentials_file: Path,
    options: Options,
    reserved: Collection[str] = (),
    policy: FetchPolicy = DEFAULT_POLICY,
    progress: Progress = NO_PROGRESS,
) -> Plan:
    """List what ``spec``'s session reaches and add the profiles the AWS config lacks.

    The access token is the one in the shared cache, renewed there (under the
    cache's lock, by compare-and-swap) if it has run out: the same session a
    running daemon keeps, which adopts the renewal as it would the AWS CLI's.
    """
    try:
        async with anyio.create_task_group() as tg:  # where a renewal runs, shielded
            session = IdentityCenterSession(
                spec,
                cache=cache,
                clients=clients,
                context=SessionContext(clock=clock, task_group=tg, margin_seconds=margin_seconds),
            )
            assignments = await list_assignments(
                spec, tokens=session, clients=clients, policy=policy, progress=progress
            )
            tg.cancel_scope.cancel()
    except* CreddError as failed:
        raise failed.exceptions[0] from None
    return await anyio.to_thread.run_sync(
        lambda: update_config(
            spec,
            assignments,
            config_file=config_file,
            credentials_file=credentials_file,
            options=options,
            reserved=reserved,
        )
    )
