"""The browser half of an authorization-code login: PKCE, the loopback redirect, the wait.

Every interactive login that sends the user's browser to an ``/authorize`` page
and gets the code back on ``http://127.0.0.1:PORT/oauth/callback`` (Identity
Center's CreateToken and CreateTokenWithIAM, protocols.md 2.2 and 2.5) shares
this: a PKCE pair (RFC 7636), a one-shot listener on a free loopback port
(RFC 8252 section 7.3), showing the URL, opening the browser, and checking
what comes back (``state``, ``error``, ``code``). A request without this
login's ``state`` is ignored, never the end of the login (issue 11). The caller builds the
authorize URL, because each service spells its parameters its own way.
What the user sees goes through a :class:`LoginUI`; this module never prints.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import uuid
import webbrowser
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import anyio
from aiohttp import web

from credd.clock import Clock
from credd.errors import LoginError

CALLBACK_PATH = "/oauth/callback"
#: registered without a port; the port is added per login (RFC 8252 section 7.3)
REGISTERED_REDIRECT = f"http://127.0.0.1{CALLBACK_PATH}"
#: how long the browser step may take before the login gives up (the AWS CLI's 10 min)
BROWSER_TIMEOUT_SECONDS = 600.0
_VERIFIER_ALPHABET = string.ascii_letters + string.digits + "-._~"


class LoginUI(Protocol):
    """How a login talks to the person at the keyboard."""

    def prompt(self, url: str, user_code: str | None, deadline: datetime) -> None:
        """Show the URL to open (and the code to check), and start showing progress."""

    def browser_opened(self, opened: bool) -> None:
        """Say whether a browser was started for the URL."""

    def notice(self, message: str) -> None:
        """A line of news (another login is in progress, a code was refused...)."""


@dataclass(frozen=True)
class LoginOptions:
    device: bool = False
    open_browser: bool = True


@dataclass(frozen=True, repr=False)
class Pkce:
    """A PKCE verifier and its S256 challenge (RFC 7636 sections 4.1 and 4.2)."""

    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        # 64 characters of the unreserved set, as the AWS CLI makes them (protocols.md 2.5)
        verifier = "".join(secrets.choice(_VERIFIER_ALPHABET) for _ in range(64))
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).decode().rstrip("="))

    def __repr__(self) -> str:
        return "Pkce(verifier=[redacted])"


async def open_in_browser(url: str, ui: LoginUI, *, enabled: bool) -> None:
    """Open ``url`` with :mod:`webbrowser` (``$BROWSER`` honoured) and tell the UI if it did."""
    opened = False
    if enabled:
        # webbrowser may block (it can start a text-mode browser): keep it off the loop.
        opened = await anyio.to_thread.run_sync(webbrowser.open, url)
    ui.browser_opened(opened)


class Redirect:
    """The listening end of one login: where the browser is sent back, and the wait for it.

    Only a request that carries this login's ``state`` is its answer (RFC 6749
    section 10.12). Any local process can reach the listener, so a request
    with a wrong or missing ``state`` is answered 400 and ignored, and the
    login keeps waiting for the browser: a stray or hostile request can
    neither end the login nor slip a code of its own into it.
    """

    def __init__(self, receive: anyio.abc.ObjectReceiveStream[dict[str, str]]) -> None:
        #: ties the answer to this login (RFC 6749 section 10.12)
        self.state = str(uuid.uuid4())
        #: set once the listener is bound
        self.uri = ""
        self._receive = receive
        self._ui: LoginUI | None = None
        #: how many requests were ignored for want of this login's ``state``
        self.ignored = 0

    def answers(self, query: Mapping[str, str]) -> bool:
        """Whether ``query`` is this login's answer: its ``state``, compared in constant time."""
        state = query.get("state")
        return state is not None and hmac.compare_digest(state.encode(), self.state.encode())

    def ignore(self) -> None:
        """A request without this login's ``state``: said once, then only counted."""
        self.ignored += 1
        if self.ignored == 1 and self._ui is not None:
            self._ui.notice(
                "Ignored a request to the sign-in listener that did not come from this "
                "sign-in (wrong or missing state); still waiting for the browser."
            )

    async def code(
        self, url: str, *, ui: LoginUI, clock: Clock, open_browser: bool, again: str
    ) -> str:
        """Show ``url``, open the browser, and return the authorization code it brings back.

        ``again`` is the hint a failed or abandoned login ends with.
        """
        self._ui = ui
        deadline = clock.now() + timedelta(seconds=BROWSER_TIMEOUT_SECONDS)
        ui.prompt(url, None, deadline)
        await open_in_browser(url, ui, enabled=open_browser)
        try:
            with anyio.fail_after(BROWSER_TIMEOUT_SECONDS):
                query = await self._receive.receive()
        except TimeoutError as exc:
            raise LoginError(
                f"no answer from the browser within {BROWSER_TIMEOUT_SECONDS / 60:.0f} minutes",
                hint=again,
            ) from exc
        if "error" in query:
            detail = query.get("error_description") or query["error"]
            raise LoginError(f"the sign-in was refused: {detail}", hint=again)
        code = query.get("code")
        if not code:
            raise LoginError("the browser came back without an authorization code", hint=again)
        return code


_PAGE = (
    "<!doctype html><meta charset=utf-8><title>credd</title>"
    "<body style='font-family:sans-serif'><h1>{title}</h1><p>{text}</p>"
)


@asynccontextmanager
async def loopback_redirect() -> AsyncIterator[Redirect]:
    """A one-shot HTTP listener on 127.0.0.1 for the browser's redirect (protocols.md 2.5)."""
    send, receive = anyio.create_memory_object_stream[dict[str, str]](1)
    redirect = Redirect(receive)

    async def callback(request: web.Request) -> web.Response:
        query = dict(request.query)
        if not redirect.answers(query):
            redirect.ignore()
            return _page(
                400,
                "Not this sign-in",
                "This request did not come from the sign-in credd is waiting for; it was ignored.",
            )
        try:
            send.send_nowait(query)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            # the first redirect was taken already (a reload of this page)
            return _page(400, "Already answered", "Go back to the terminal for details.")
        if "error" in query or "code" not in query:
            return _page(200, "Sign-in not completed", "Go back to the terminal for details.")
        return _page(200, "Signed in", "credd has your session. You can close this tab.")

    app = web.Application()
    app.router.add_get(CALLBACK_PATH, callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    redirect.uri = f"http://127.0.0.1:{int(runner.addresses[0][1])}{CALLBACK_PATH}"
    try:
        async with receive:
            yield redirect
    finally:
        send.close()
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def _page(status: int, title: str, text: str) -> web.Response:
    return web.Response(
        status=status, text=_PAGE.format(title=title, text=text), content_type="text/html"
    )
