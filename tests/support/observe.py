"""What a test sees of a running ``credd serve``: its answers, its status, its log; and upstream.

:func:`ask` is one request that must be answered (a hung daemon fails the
test, it does not hang it); :func:`served` asks until the daemon serves (a
fetch may still be running, or a backoff ending), and :func:`session_when`
until a session's status is as expected, both for at most a bounded time
(:func:`answer_when` is what they share). None waits for a lifetime: what they
wait for is a state. :func:`events` reads the daemon's log as ``credd serve``
writes it to a file: JSON lines. :func:`refused_create_tokens` counts, in the
emulator, the renewals that got nothing: a spent refresh token presented again
is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio

from credd.testing.emulator import Emulator
from tests.support.process import Answer, Daemon
from tests.support.waiting import DEADLINE, POLL

#: how long one request may go unanswered before the daemon counts as hung
ANSWER_DEADLINE = 10.0


async def ask(daemon: Daemon, path: str, *, within: float = ANSWER_DEADLINE) -> Answer:
    """``GET path`` with the endpoint token; AssertionError if unanswered within ``within`` s."""
    try:
        with anyio.fail_after(within):
            return await daemon.get(path)
    except TimeoutError:
        raise AssertionError(f"credd serve did not answer GET {path} within {within} s") from None


async def answer_when(
    daemon: Daemon,
    path: str,
    accept: Callable[[Answer], bool],
    *,
    within: float = DEADLINE,
    what: str | None = None,
) -> Answer:
    """The daemon's first answer to ``GET path`` that ``accept`` takes, asking again until then.

    For a state the daemon reaches by itself (a fetch, a retry): AssertionError,
    with the last answer, if it is not there within ``within`` s.
    """
    last: Answer | None = None
    try:
        with anyio.fail_after(within):
            while True:
                try:
                    last = await daemon.get(path)
                except aiohttp.ClientError as exc:
                    raise AssertionError(f"GET {path}: {exc!r}") from exc
                if accept(last):
                    return last
                await anyio.sleep(POLL * 5)
    except TimeoutError:
        shown = f"{last.status} {last.text}" if last else "nothing"
        raise AssertionError(
            f"{what or f'GET {path}'} did not happen within {within} s; last answer: {shown}"
        ) from None


async def served(daemon: Daemon, path: str, *, within: float = DEADLINE) -> dict[str, Any]:
    """The body of the daemon's 200 for ``path``; until it comes the daemon may answer 503
    (a fetch under way, a backoff ending)."""
    answer = await answer_when(
        daemon, path, lambda a: a.status == 200, within=within, what=f"GET {path} served"
    )
    return answer.json()


def events(daemon: Daemon, name: str | None = None) -> list[dict[str, Any]]:
    """The daemon's log so far, one parsed JSON line each (only events ``name``, if given)."""
    found = []
    for line in daemon.output().splitlines():
        if not line.startswith("{"):
            continue  # not a log line (a warning of the interpreter, say)
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            continue  # the line being written right now
        if name is None or event.get("event") == name:
            found.append(event)
    return found


def session_in(document: dict[str, Any], name: str = "my-sso") -> dict[str, Any]:
    """Session ``name``'s record in a status document (``credd status --json``, ``/v1/status``)."""
    (record,) = (s for s in document["sessions"] if s["name"] == name)
    found: dict[str, Any] = record
    return found


async def session_status(daemon: Daemon, name: str = "my-sso") -> dict[str, Any]:
    """Session ``name``'s record, as the daemon's ``GET /v1/status`` says it now."""
    answer = await ask(daemon, "/v1/status")
    assert answer.status == 200, answer.text
    return session_in(answer.json(), name)


async def session_when(
    daemon: Daemon,
    accept: Callable[[dict[str, Any]], bool],
    *,
    name: str = "my-sso",
    within: float = DEADLINE,
    what: str = "the session's state",
) -> dict[str, Any]:
    """Session ``name``'s record, once ``GET /v1/status`` shows one that ``accept`` takes."""
    answer = await answer_when(
        daemon,
        "/v1/status",
        lambda a: a.status == 200 and accept(session_in(a.json(), name)),
        within=within,
        what=what,
    )
    return session_in(answer.json(), name)


def refused_create_tokens(emu: Emulator) -> int:
    """CreateToken calls that got no token: each one answered issues exactly one access token
    (a login's or a refresh's), so the difference counts refusals (and injected faults)."""
    return emu.calls["CreateToken"] - len(emu.state.access_tokens)
