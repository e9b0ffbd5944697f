"""The headless browser, on its own and as ``$BROWSER`` behind Python's ``webbrowser``."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
from aiohttp import web

from credd.clock import ManualClock
from credd.testing import browser
from credd.testing.emulator import DEFAULT_START_URL, Emulator, EmulatorConfig
from credd.testing.emulator.clients import ClientRegistration, aws_client, register
from credd.testing.emulator.oauth import AUTH_CODE_GRANT, s256

VERIFIER = "v" * 64


@dataclass
class Callback:
    """A login client's loopback listener: it records what the browser brings back."""

    url: str
    received: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(ManualClock(), config=EmulatorConfig(poll_interval=0)).running() as e:
        yield e


@pytest.fixture
async def callback() -> AsyncIterator[Callback]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    listener = Callback(f"http://127.0.0.1:{sock.getsockname()[1]}")

    async def oauth_callback(request: web.Request) -> web.Response:
        listener.received.append(dict(request.query))
        return web.Response(text="You may close this window.")

    async def away(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://example.com/x"})

    app = web.Application()
    app.add_routes([web.get("/oauth/callback", oauth_callback), web.get("/away", away)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield listener
    finally:
        await runner.cleanup()


async def authorize_url(
    emu: Emulator, callback: Callback, oidc: Any
) -> tuple[str, ClientRegistration]:
    reg = await register(
        oidc,
        grantTypes=[AUTH_CODE_GRANT, "refresh_token"],
        redirectUris=["http://127.0.0.1/oauth/callback"],
    )
    params = {
        "response_type": "code",
        "client_id": reg.client_id,
        "redirect_uri": f"{callback.url}/oauth/callback",
        "state": "st",
        "code_challenge_method": "S256",
        "scopes": "sso:account:access",
        "code_challenge": s256(VERIFIER),
    }
    return f"{emu.url}/authorize?{urlencode(params)}", reg


async def test_webbrowser_with_the_shim_completes_an_auth_code_login(
    emu: Emulator, callback: Callback, tmp_path: Path
) -> None:
    shim = browser.install_shim(tmp_path / "browser")
    async with aws_client(emu.url, "sso-oidc") as oidc:
        url, reg = await authorize_url(emu, callback, oidc)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys, webbrowser; sys.exit(0 if webbrowser.open(sys.argv[1]) else 1)",
            url,
            env={**os.environ, "BROWSER": str(shim)},
        )
        with anyio.fail_after(15):
            assert await process.wait() == 0
        assert len(callback.received) == 1
        assert callback.received[0]["state"] == "st"
        token = await oidc.create_token(
            clientId=reg.client_id,
            clientSecret=reg.client_secret,
            grantType=AUTH_CODE_GRANT,
            code=callback.received[0]["code"],
            redirectUri=f"{callback.url}/oauth/callback",
            codeVerifier=VERIFIER,
        )
    assert token["accessToken"]


async def test_device_page_visit_approves(emu: Emulator) -> None:
    async with aws_client(emu.url, "sso-oidc") as oidc:
        reg = await register(oidc)
        started = await oidc.start_device_authorization(
            clientId=reg.client_id, clientSecret=reg.client_secret, startUrl=DEFAULT_START_URL
        )
        exit_code = await anyio.to_thread.run_sync(
            browser.main, [started["verificationUriComplete"]]
        )
        assert exit_code == 0
        grant = emu.state.device_grant_by_user_code(started["userCode"])
        assert grant is not None
        assert grant.decision == "approved"


async def test_a_failing_page_exits_1_with_the_status(
    emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = await anyio.to_thread.run_sync(browser.main, [f"{emu.url}/authorize?x=1"])
    assert exit_code == 1
    assert "HTTP 400" in capsys.readouterr().err


async def test_only_loopback_is_ever_visited(
    callback: Callback, capsys: pytest.CaptureFixture[str]
) -> None:
    assert browser.main(["http://example.com/"]) == 1
    assert "refusing to visit http://example.com/" in capsys.readouterr().err
    exit_code = await anyio.to_thread.run_sync(browser.main, [f"{callback.url}/away"])
    assert exit_code == 1
    assert "refusing to follow a redirect" in capsys.readouterr().err


def test_usage() -> None:
    assert browser.main([]) == 2
    assert browser.is_loopback_url("http://[::1]:80/")
    assert not browser.is_loopback_url("file:///etc/passwd")
