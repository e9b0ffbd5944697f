"""The status document: what ``credd status --json`` and ``GET /v1/status`` say.

Built from the broker's and sessions' status records and the scoped tokens
(never their values), and rendered as a table for people. Reveals no secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from credd.config.settings import SsoSessionSpec
from credd.engine.broker import ProfileStatus
from credd.files.store import CacheCorrupt, SsoCache, format_timestamp
from credd.sessions import SessionState, SessionStatus


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: format_timestamp(value) if isinstance(value, datetime) else value
        for key, value in record.items()
    }


def status_document(
    *,
    daemon: Mapping[str, Any],
    sessions: Iterable[SessionStatus],
    profiles: Iterable[ProfileStatus],
    unserved: Mapping[str, str],
    grants: Iterable[Mapping[str, Any]] = (),
    grants_problem: str | None = None,
    containers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``grants``: each live scoped token as :func:`credd.endpoint.grants.describe` gives it;
    ``grants_problem``: why the grants file could not be read, if it could not;
    ``containers``: the container listener's state, when one is configured."""
    document: dict[str, Any] = {
        "daemon": dict(daemon),
        "sessions": [_jsonable(asdict(s)) for s in sorted(sessions, key=lambda s: s.name)],
        "profiles": [_jsonable(asdict(p)) for p in sorted(profiles, key=lambda p: p.name)],
        "unserved": [{"name": n, "reason": r} for n, r in sorted(unserved.items())],
        "grants": [dict(g) for g in grants],
        "containers": dict(containers) if containers is not None else None,
    }
    if grants_problem is not None:
        document["grants_problem"] = grants_problem
    return document


def offline_sessions(
    sessions: Iterable[SsoSessionSpec], cache: SsoCache, now: datetime
) -> list[SessionStatus]:
    """What the shared cache says of each session, for when no daemon is running."""
    out: list[SessionStatus] = []
    for spec in sessions:
        action: str | None = f"credd login {spec.name}"
        expires_at = None
        error: str | None
        try:
            token = cache.load_token(spec.cache_key)
        except CacheCorrupt as exc:
            token, error = None, exc.message
        else:
            error = None if token else "not logged in"
        if token is None:
            state = SessionState.LOGIN_REQUIRED
        else:
            expires_at = token.expires_at
            if token.can_refresh(now):
                state, action = SessionState.OK, None
            elif token.expires_at > now:
                state = SessionState.EXPIRING
            else:
                state, error = SessionState.LOGIN_REQUIRED, "the access token expired"
        out.append(
            SessionStatus(spec.name, "identity-center", state, expires_at, None, error, action)
        )
    return out


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _when(value: object) -> str:
    return str(value) if value else "-"


def _note(record: Mapping[str, Any]) -> str:
    parts = [
        record.get("who"),
        _downscoped(record.get("details")),
        record.get("last_error"),
        record.get("action") and f"run: {record['action']}",
    ]
    return "; ".join(str(p) for p in parts if p)


def _downscoped(details: object) -> str | None:
    """A trusted-identity session granted fewer scopes than it asked for says so."""
    if not isinstance(details, Mapping) or not details.get("downscoped"):
        return None
    asked = ", ".join(map(str, details.get("requested_scopes") or []))
    granted = ", ".join(map(str, details.get("granted_scopes") or [])) or "none"
    return f"asked for scopes {asked}, granted {granted}"


def _containers_line(listener: Mapping[str, Any]) -> str:
    """The container listener in one line: bound or waiting, since when, and why."""
    listen, state, since = listener.get("listen"), listener.get("state"), listener.get("since")
    if state == "bound":
        line = f"containers: listening on {listen} since {_when(since)}"
    elif state == "waiting":
        line = f"containers: waiting for {listen} since {_when(since)}"
    else:
        line = f"containers: {listen} ({state})"
    notes = [listener.get("last_error"), listener.get("action")]
    watch = listener.get("watch")
    if watch and watch != "netlink":
        notes.append(watch)
    extra = "; ".join(str(n) for n in notes if n)
    return f"{line}: {extra}" if extra else line


def render_status(document: Mapping[str, Any]) -> str:
    """A readable table: sessions, then profiles, then what is not served and why."""
    lines: list[str] = []
    daemon = document.get("daemon", {})
    running = daemon.get("running")
    lines.append(f"daemon: running on {daemon.get('listen')}" if running else "daemon: not running")
    containers = document.get("containers")
    if containers:
        lines.append(_containers_line(containers))
    sessions = document.get("sessions", [])
    if sessions:
        lines += ["", "SESSIONS"]
        rows = [["NAME", "STATE", "EXPIRES", "NEXT RENEWAL", "NOTE"]]
        for s in sessions:
            note = _note(s)
            rows.append(
                [
                    s["name"],
                    s["state"],
                    _when(s.get("expires_at")),
                    _when(s.get("next_renewal")),
                    note,
                ]
            )
        lines += _table(rows)
    profiles = document.get("profiles", [])
    if profiles:
        lines += ["", "PROFILES"]
        rows = [["NAME", "SOURCE", "STATE", "EXPIRES", "NOTE"]]
        for p in profiles:
            note = _note(p)
            rows.append([p["name"], p["source"], p["state"], _when(p.get("expiration")), note])
        lines += _table(rows)
    unserved = document.get("unserved", [])
    if unserved:
        lines += ["", "NOT SERVED"]
        lines += _table([["NAME", "REASON"]] + [[u["name"], u["reason"]] for u in unserved])
    grants = document.get("grants", [])
    if grants:
        lines += ["", "SCOPED TOKENS"]
        rows = [["ID", "PROFILE", "PURPOSE", "CREATED", "EXPIRES", "LAST USED"]]
        for g in grants:
            rows.append(
                [
                    g["id"],
                    g["profile"],
                    g["purpose"],
                    _when(g.get("created")),
                    _when(g.get("expires")) if g.get("expires") else "never",
                    _when(g.get("last_used")),
                ]
            )
        lines += _table(rows)
    problem = document.get("grants_problem")
    if problem:
        lines += ["", f"scoped tokens: {problem}"]
    return "\n".join(lines)
