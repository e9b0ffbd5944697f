"""AWS Sign-In (``aws login``) sessions in process, against the emulator, on a ManualClock.

The emulator and the daemon share one clock: 15-minute lifetimes pass when a
test advances it, never in real time. What the SDKs see is checked with their
own code: botocore's container provider (boto3 GetCallerIdentity) for the
served credentials, botocore's ``LoginProvider`` (awscrt DPoP) for the cache
credd writes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import stat
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anyio
import boto3
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from credd import cli
from credd.clock import ManualClock
from credd.config.settings import SigninProfile, SigninSessionSpec
from credd.config.writer import write_login_session
from credd.daemon import DaemonHandle, running_daemon
from credd.errors import LoginError, LoginRequired, UpstreamError
from credd.files.store import LoginToken, sha256_name
from credd.sessions import SessionState
from credd.sessions.dpop import DpopKey
from credd.sessions.signin import (
    SDK_REFRESH_WINDOW_SECONDS,
    attach_proofs,
    explain_refusal,
    offline_status,
)
from credd.sessions.signin_login import (
    CROSS_DEVICE_CLIENT,
    SAME_DEVICE_CLIENT,
    SigninLogin,
    SigninLoginOptions,
    SigninTarget,
    parse_verification_code,
)
from credd.testing.emulator import Emulator
from credd.testing.emulator.clients import aws_client
from credd.testing.emulator.dpop import ProofError, verify_proof
from credd.wiring import aws_clients, login_cache
from tests.support.configs import ACCOUNT, USER_ARN
from tests.support.configs import SIGNIN_CONFIG as AWS_CONFIG
from tests.support.home import Home
from tests.support.inprocess import RecordingUI, get, sdk_identity
from tests.support.signin import (
    Dpop,
    authorize,
    authorize_url,
    new_verifier,
    redeem,
    signin_login,
)
from tests.support.waiting import eventually
from tests.support.world import World

ADMIN_ARN = "arn:aws:sts::222222222222:assumed-role/Admin/credd-console"
LIFETIME = 900


@pytest.fixture
def world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    emu, _ = clocked
    home.write_aws_config(AWS_CONFIG)
    return World(home, emu)


async def reload(daemon: DaemonHandle) -> None:
    """What ``credd login`` does to a running daemon: reload, then sync the session."""
    status, body = await get(daemon, "/v1/reload", method="POST")
    assert status == 200, body
    status, body = await get(
        daemon, f"/v1/sessions/{USER_ARN.replace('/', '%2F')}/sync", method="POST"
    )
    assert status == 200, body


def session_status(daemon: DaemonHandle, name: str = USER_ARN) -> Any:
    return next(s for s in daemon.broker.session_statuses() if s.name == name)


def profile_status(daemon: DaemonHandle, name: str = "console") -> Any:
    return next(p for p in daemon.broker.profile_statuses() if p.name == name)


def settled(daemon: DaemonHandle, clock: ManualClock, profiles: tuple[str, ...]) -> bool:
    """Every renewal that is due has happened: the session and the keepers plan ahead."""
    now = clock.now()
    session = session_status(daemon)
    if session.next_renewal is None or session.next_renewal <= now:
        return False
    for name in profiles:
        planned = profile_status(daemon, name).next_renewal
        if planned is None or planned <= now:
            return False
    return True


def seconds_left(body: dict[str, Any], clock: ManualClock) -> float:
    return (datetime.fromisoformat(body["Expiration"]) - clock.now()).total_seconds()


async def served(daemon: DaemonHandle, profile: str = "console") -> dict[str, Any]:
    status, body = await get(daemon, f"/v1/credentials/{profile}")
    assert status == 200, body
    return body


# -------------------------------------------------------------------------------- the login


async def test_same_device_login_writes_the_cache_and_the_profile_and_is_served_at_once(
    world: World,
) -> None:
    emu, clock = world.emu, world.clock
    settings = world.home.settings()
    assert "console" in settings.unserved
    async with running_daemon(settings, clock=clock) as daemon:
        ui = RecordingUI()
        result = await signin_login(world, ui=ui)
        assert result.login_session == USER_ARN

        # the authorize step as aws login runs it (protocols.md 4.5)
        [(url, user_code)] = ui.prompts
        assert user_code is None
        assert url.startswith(f"{emu.url}/v1/authorize?response_type=code&client_id=")
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert query["client_id"] == SAME_DEVICE_CLIENT
        assert query["code_challenge_method"] == "SHA-256"
        assert query["scope"] == "openid"
        assert urlsplit(query["redirect_uri"]).hostname == "127.0.0.1"
        assert urlsplit(query["redirect_uri"]).path == "/oauth/callback"
        assert len(query["code_challenge"]) == 43
        assert url.index("&code_challenge=") > url.index("redirect_uri=")
        assert ui.opened == [True]

        # the AWS CLI's cache format, to the letter (protocols.md 6.2)
        cached = world.cached()
        assert list(cached) == [
            "accessToken",
            "tokenType",
            "clientId",
            "refreshToken",
            "idToken",
            "dpopKey",
        ]
        assert list(cached["accessToken"]) == [
            "accessKeyId",
            "secretAccessKey",
            "sessionToken",
            "accountId",
            "expiresAt",
        ]
        assert cached["accessToken"]["accountId"] == ACCOUNT
        assert cached["tokenType"] == "aws_sigv4"
        assert cached["clientId"] == SAME_DEVICE_CLIENT
        expires = datetime.fromisoformat(cached["accessToken"]["expiresAt"])
        assert cached["accessToken"]["expiresAt"].endswith("Z")
        assert expires == clock.now().replace(microsecond=0) + timedelta(seconds=LIFETIME)
        pem = cached["dpopKey"]
        assert pem.startswith("-----BEGIN EC PRIVATE KEY-----\n")
        assert pem.endswith("-----END EC PRIVATE KEY-----\n")
        assert all(len(line) <= 64 for line in pem.splitlines())
        der = base64.b64decode("".join(pem.splitlines()[1:-1]))
        assert len(der) == 121  # SEC1 with the curve OID and the public key, as awscrt writes
        assert serialization.load_pem_private_key(pem.encode(), None).key_size == 256  # type: ignore[union-attr]
        session = next(iter(emu.state.signin.sessions.values()))
        assert session.jkt  # bound to the key in the cache
        assert world.cache_dir.stat().st_mode & 0o077 == 0

        # the profile, as aws login writes it: region only because it had to choose
        config = world.home.aws_config.read_text()
        assert config == AWS_CONFIG.replace(
            "output = json\n",
            f"output = json\nlogin_session = {USER_ARN}\nregion = us-east-1\n",
        )

        # a running daemon serves it without a restart
        status, _ = await get(daemon, "/v1/credentials/console")
        assert status == 404
        await reload(daemon)
        body = await served(daemon)
        assert body["AccessKeyId"] == cached["accessToken"]["accessKeyId"]
        assert body["AccountId"] == ACCOUNT
        assert seconds_left(body, clock) > LIFETIME - 5
        identity = await sdk_identity(daemon, world.home.settings(), "console", emu.url)
        assert identity["Arn"] == USER_ARN
        assert identity["Account"] == ACCOUNT
        assert emu.calls["CreateOAuth2Token"] == 1  # served from the login, no refresh


async def test_a_broken_config_on_reload_keeps_the_running_one(world: World) -> None:
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=world.clock) as daemon:
        good = world.home.aws_config.read_text()
        world.home.aws_config.write_text(good + "\nthis line is broken\n")
        status, body = await get(daemon, "/v1/reload", method="POST")
        assert status == 503
        assert "the running one is kept" in body["message"]
        assert (await served(daemon))["AccessKeyId"]
        status, _ = await get(daemon, "/v1/reload", token="wrong", method="POST")
        assert status == 401


async def test_cross_device_login_reads_the_pasted_code(world: World) -> None:
    emu, clock = world.emu, world.clock
    ui = RecordingUI()
    result = await signin_login(world, remote=True, ui=ui)
    [(url, _)] = ui.prompts
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["client_id"] == CROSS_DEVICE_CLIENT
    assert query["redirect_uri"] == f"{emu.url}/v1/sessions/confirmation"
    assert ui.opened == []  # another device signs in: no browser here
    assert result.token.client_id == CROSS_DEVICE_CLIENT
    assert world.cached()["clientId"] == CROSS_DEVICE_CLIENT
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        identity = await sdk_identity(daemon, world.home.settings(), "console", emu.url)
        assert identity["Arn"] == USER_ARN
        clock.advance(LIFETIME - 400)  # renewed with the cross-device client id
        await eventually(lambda: emu.calls["CreateOAuth2Token"] == 2)
        await eventually(lambda: session_status(daemon).state == "ok")


def test_verification_codes_are_base64_of_code_and_state() -> None:
    pasted = base64.b64encode(b"code=abc%2Fdef&state=s-1").decode()
    assert parse_verification_code(f" {pasted}\n") == ("abc/def", "s-1")
    assert parse_verification_code(pasted.rstrip("=")) == ("abc/def", "s-1")
    for bad in ("not base64!", base64.b64encode(b"code=only").decode(), ""):
        with pytest.raises(LoginError, match="not a Sign-In verification code"):
            parse_verification_code(bad)


async def test_a_pasted_code_from_another_login_is_refused(world: World) -> None:
    settings = world.home.settings()
    other = base64.b64encode(b"code=c&state=someone-else").decode()

    async def paste() -> str:
        return other

    login = SigninLogin(
        SigninTarget("console", "us-east-1", "console"),
        cache=login_cache(settings),
        clients=aws_clients(settings),
        clock=world.clock,
        ui=RecordingUI(),
        options=SigninLoginOptions(remote=True),
        read_code=paste,
    )
    with pytest.raises(LoginError, match="state mismatch"):
        await login.run()
    assert world.emu.calls["CreateOAuth2Token"] == 0


class ExpiringUI(RecordingUI):
    """The user takes too long between the browser and the token exchange, once."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self._clock = clock

    def browser_opened(self, opened: bool) -> None:
        super().browser_opened(opened)
        if len(self.opened) == 1:
            self._clock.advance(301)  # past signin_code_ttl (300 s)


async def test_an_expired_authorization_code_restarts_the_login(world: World) -> None:
    ui = ExpiringUI(world.clock)
    result = await signin_login(world, ui=ui)
    assert result.login_session == USER_ARN
    assert len(ui.prompts) == 2
    assert any("AUTHCODE_EXPIRED" in n and "starting the sign-in again" in n for n in ui.notices)
    assert world.emu.calls["SigninAuthorize"] == 2
    assert world.emu.calls["CreateOAuth2Token"] == 2


async def test_login_without_the_permission_names_the_policy(world: World) -> None:
    world.emu.signin_deny_permission()
    with pytest.raises(LoginError, match="SignInLocalDevelopmentAccess"):
        await signin_login(world)
    assert not world.cache_dir.exists()
    assert "login_session" not in world.home.aws_config.read_text()


async def test_login_retries_a_throttled_or_failing_code_exchange(world: World) -> None:
    world.emu.faults.add("CreateOAuth2Token", error_code="TooManyRequestsError")
    world.emu.faults.add("CreateOAuth2Token")  # InternalServerException, server_error
    ui = RecordingUI()
    await signin_login(world, ui=ui)
    assert [n for n in ui.notices if "busy" in n] == [
        "Sign-In is busy (TooManyRequestsError); trying again",
        "Sign-In is busy (InternalServerException); trying again",
    ]
    assert world.emu.calls["CreateOAuth2Token"] == 3


@pytest.mark.parametrize(
    "existing",
    [
        "sso_session = my-sso",
        "role_arn = arn:aws:iam::222222222222:role/Admin\nsource_profile = other",
        "credential_process = /bin/true",
        "aws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = secret",
    ],
)
async def test_login_refuses_a_profile_with_other_credentials(world: World, existing: str) -> None:
    world.home.write_aws_config(f"[profile taken]\n{existing}\n")
    with pytest.raises(LoginError, match="already gets credentials another way"):
        await signin_login(world, "taken")
    assert world.emu.calls["SigninAuthorize"] == 0


async def test_login_to_a_profile_the_config_does_not_have_yet(world: World) -> None:
    result = await signin_login(world, "brand-new")
    assert world.home.aws_config.read_text() == AWS_CONFIG + (
        f"\n[profile brand-new]\nlogin_session = {result.login_session}\nregion = us-east-1\n"
    )
    settings = world.home.settings()
    assert settings.profiles["brand-new"] == SigninProfile("brand-new", USER_ARN, "us-east-1")
    async with running_daemon(settings, clock=world.clock) as daemon:
        identity = await sdk_identity(daemon, settings, "brand-new", world.emu.url)
        assert identity["Arn"] == USER_ARN


async def test_the_login_cache_directory_can_be_moved(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LOGIN_CACHE_DIRECTORY", "~/elsewhere/login")
    await signin_login(world)
    moved = world.home.root / "elsewhere" / "login" / f"{sha256_name(USER_ARN)}.json"
    assert json.loads(moved.read_text())["clientId"] == SAME_DEVICE_CLIENT
    assert not world.cache_path().exists()
    async with running_daemon(world.home.settings(), clock=world.clock) as daemon:
        assert (await served(daemon))["AccessKeyId"] == LoginToken.from_json(
            json.loads(moved.read_text()), moved
        ).access_key_id


# -------------------------------------------------------------------- the 15-minute policy


async def test_renewal_across_lifetimes_never_serves_credentials_inside_five_minutes(
    world: World,
) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    settings = world.home.settings()
    refresh_tokens = [world.cached()["refreshToken"]]
    keys: set[str] = set()
    async with running_daemon(settings, clock=clock) as daemon:
        await served(daemon)
        await served(daemon, "console-admin")
        step, lifetimes = 30, 4
        for _ in range(lifetimes * LIFETIME // step):
            clock.advance(step)
            await eventually(lambda: settled(daemon, clock, ("console", "console-admin")))
            body = await served(daemon)
            keys.add(body["AccessKeyId"])
            # what every SDK sees: never inside its 5-minute window (protocols.md 7.3, 8.2)
            assert seconds_left(body, clock) > SDK_REFRESH_WINDOW_SECONDS, body["Expiration"]
            # and the shared cache neither: no `aws` reading it ever refreshes it itself
            cached = world.cached()
            left = datetime.fromisoformat(cached["accessToken"]["expiresAt"]) - clock.now()
            assert left.total_seconds() > SDK_REFRESH_WINDOW_SECONDS
            assert cached["accessToken"]["accessKeyId"] == body["AccessKeyId"]
            if cached["refreshToken"] != refresh_tokens[-1]:
                refresh_tokens.append(cached["refreshToken"])
            await served(daemon, "console-admin")
        # renewed at half the 900 s lifetime: twice per lifetime, no more
        renewals = emu.calls["CreateOAuth2Token"] - 1
        assert 2 * lifetimes - 1 <= renewals <= 2 * lifetimes + 1, renewals
        assert len(keys) == renewals + 1
        assert len(refresh_tokens) == renewals + 1
        assert session_status(daemon).state == "ok"
    # every rotation reached the disk: the emulator only knows the last refresh token
    (live,) = emu.state.signin.sessions.values()
    assert live.refresh_token is not None
    assert live.refresh_token.reveal() == refresh_tokens[-1]
    await assert_spent(world, refresh_tokens[-2])


async def assert_spent(world: World, refresh_token: str) -> None:
    """A rotated-out refresh token is dead upstream (401 TOKEN_EXPIRED)."""
    cached = world.cached()
    key = DpopKey.from_pem(cached["dpopKey"])
    url = f"{world.emu.url}/v1/token"
    body = {
        "clientId": cached["clientId"],
        "grantType": "refresh_token",
        "refreshToken": refresh_token,
    }
    headers = {"DPoP": key.proof(method="POST", url=url, now=world.clock.now())}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as answer,
    ):
        assert answer.status == 401
        assert (await answer.json())["error"] == "TOKEN_EXPIRED"


async def test_the_session_renews_without_requests_so_the_shared_cache_stays_fresh(
    world: World,
) -> None:
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=world.clock) as daemon:
        for _ in range(3 * LIFETIME // 60):
            world.clock.advance(60)
            await eventually(
                lambda: (
                    (session_status(daemon).next_renewal or world.clock.now()) > world.clock.now()
                )
            )
            left = (
                datetime.fromisoformat(world.cached()["accessToken"]["expiresAt"])
                - world.clock.now()
            )
            assert left.total_seconds() > SDK_REFRESH_WINDOW_SECONDS
        assert world.emu.calls["CreateOAuth2Token"] >= 6


async def test_a_small_credentials_margin_still_renews_before_the_sdk_window(
    world: World,
) -> None:
    world.home.write_credd_config(
        '[server]\nlisten = "127.0.0.1:0"\n[refresh]\ncredentials_margin_seconds = 60\n'
    )
    await signin_login(world)
    clock = world.clock
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        await served(daemon)
        for _ in range(2 * LIFETIME // 30):
            clock.advance(30)
            await eventually(lambda: settled(daemon, clock, ("console",)))
            assert seconds_left(await served(daemon), clock) > SDK_REFRESH_WINDOW_SECONDS


# ------------------------------------------------------------------ the cache, shared with aws


def cli_cache(world: World, token: dict[str, Any], key_pem: str, expires_at: datetime) -> None:
    """A login cache file as ``aws login`` (or the JS SDK) writes it."""
    world.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    document = {
        "accessToken": {
            **token["accessToken"],
            "accountId": ACCOUNT,
            # the JS SDK's spelling, milliseconds included
            "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        },
        "tokenType": "aws_sigv4",
        "clientId": SAME_DEVICE_CLIENT,
        "refreshToken": token["refreshToken"],
        "idToken": token["idToken"],
        "dpopKey": key_pem,
        "someOtherTool": {"kept": True},
    }
    path = world.cache_path()
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)


async def aws_login(world: World) -> tuple[dict[str, Any], str]:
    """What ``aws login`` does, with a key of its own: the browser step and the code exchange."""
    dpop = Dpop(world.clock)
    verifier = new_verifier()
    code = (await authorize(authorize_url(world.emu, verifier)))["code"]
    async with aws_client(world.emu.url, "signin") as signin:
        dpop.attach(signin)
        token = await redeem(signin, code, verifier)
    pem = dpop.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return token, pem


async def test_adopts_a_session_aws_login_wrote_and_keeps_it_alive(world: World) -> None:
    emu, clock = world.emu, world.clock
    token, pem = await aws_login(world)
    cli_cache(world, token, pem, clock.now() + timedelta(seconds=LIFETIME))
    world.home.write_aws_config(f"[profile console]\nlogin_session = {USER_ARN}\n")
    settings = world.home.settings()
    assert isinstance(settings.profiles["console"], SigninProfile)
    async with running_daemon(settings, clock=clock) as daemon:
        body = await served(daemon)
        assert body["AccessKeyId"] == token["accessToken"]["accessKeyId"]
        assert emu.calls["CreateOAuth2Token"] == 1  # adopted as it is
        clock.advance(LIFETIME - 420)
        # renewed with the key aws login made: the emulator checks the binding
        await eventually(lambda: emu.calls["CreateOAuth2Token"] == 2)
        await eventually(lambda: settled(daemon, clock, ("console",)))
        cached = world.cached()
        assert cached["someOtherTool"] == {"kept": True}  # nothing of theirs lost
        assert cached["dpopKey"] == pem
        assert cached["idToken"] == token["idToken"]
        assert cached["refreshToken"] != token["refreshToken"]
        assert (await served(daemon))["AccessKeyId"] == cached["accessToken"]["accessKeyId"]


async def test_a_refresh_aws_made_meanwhile_is_adopted_not_fought(world: World) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        await served(daemon)
        # the AWS CLI refreshes first, with the cache's key and refresh token
        cached = world.cached()
        key = DpopKey.from_pem(cached["dpopKey"])
        url = f"{emu.url}/v1/token"
        request = {
            "clientId": cached["clientId"],
            "grantType": "refresh_token",
            "refreshToken": cached["refreshToken"],
        }
        headers = {"DPoP": key.proof(method="POST", url=url, now=clock.now())}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json=request, headers=headers) as answer,
        ):
            assert answer.status == 200
            output = await answer.json()
        cached["accessToken"] = {
            **output["accessToken"],
            "accountId": ACCOUNT,
            "expiresAt": (clock.now() + timedelta(seconds=LIFETIME)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        cached["refreshToken"] = output["refreshToken"]
        world.cache_path().write_text(json.dumps(cached))
        os.utime(world.cache_path(), (1, 1))  # a distinct mtime, whatever the file system
        await eventually(lambda: daemon.broker.sync_session(USER_ARN).expires_at is not None)
        calls = emu.calls["CreateOAuth2Token"]
        clock.advance(LIFETIME - 420)  # due: renewed with *their* refresh token, which works
        await eventually(lambda: emu.calls["CreateOAuth2Token"] == calls + 1)
        await eventually(lambda: settled(daemon, clock, ("console",)))
        assert session_status(daemon).state == "ok"


def _botocore_identity(profile: str) -> tuple[dict[str, Any], str, str]:
    session = boto3.session.Session(profile_name=profile)
    identity: dict[str, Any] = session.client("sts").get_caller_identity()
    credentials = session.get_credentials()
    assert credentials is not None
    return identity, credentials.method, str(credentials.get_frozen_credentials().access_key)


async def test_the_cache_credd_writes_works_in_botocores_login_provider(world: World) -> None:
    pytest.importorskip("awscrt", reason="botocore's login provider needs awscrt (botocore[crt])")
    emu, clock = world.emu, world.clock
    await signin_login(world)
    # as if a while had passed: botocore must refresh with credd's key and refresh token
    cached = world.cached()
    before = cached["refreshToken"]
    cached["accessToken"]["expiresAt"] = (datetime.now(UTC) + timedelta(seconds=60)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    world.cache_path().write_text(json.dumps(cached))
    identity, method, key = await anyio.to_thread.run_sync(_botocore_identity, "console")
    assert method == "login"
    assert identity["Arn"] == USER_ARN
    after = world.cached()
    assert after["refreshToken"] != before  # botocore refreshed: awscrt read our PEM key
    assert after["accessToken"]["accessKeyId"] == key
    assert after["dpopKey"] == cached["dpopKey"]
    assert emu.calls["CreateOAuth2Token"] == 2

    # and credd, started after that, carries on from botocore's rotation
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        assert (await served(daemon))["AccessKeyId"] == key
        clock.advance(LIFETIME)
        await eventually(lambda: emu.calls["CreateOAuth2Token"] == 3)
        await eventually(lambda: settled(daemon, clock, ("console",)))
        assert session_status(daemon).state == "ok"


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("end", "says"),
    [
        ("revoke", "TOKEN_EXPIRED"),
        ("expire", "TOKEN_EXPIRED"),
        ("credentials", "USER_CREDENTIALS_CHANGED"),
    ],
)
async def test_a_dead_session_needs_a_login_and_serves_what_is_valid_meanwhile(
    world: World, end: str, says: str
) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        good = await served(daemon)
        if end == "revoke":
            emu.revoke_sessions()
        elif end == "expire":
            emu.expire_refresh_tokens()
        else:
            emu.signin_change_user_credentials()
        clock.advance(LIFETIME - 420)
        await eventually(lambda: session_status(daemon).state == "login-required")
        status = session_status(daemon)
        assert says in status.last_error
        assert status.action == "credd login console --signin"
        # still valid: still served (interface.md)
        assert (await served(daemon))["AccessKeyId"] == good["AccessKeyId"]
        calls = emu.calls["CreateOAuth2Token"]
        clock.advance(420)
        code, body = await get(daemon, "/v1/credentials/console")
        assert code == 503
        assert body["code"] == "LoginRequired"
        assert says in body["message"]
        assert "credd login console --signin" in body["message"]
        _, doc = await get(daemon, "/v1/status")
        profile = next(p for p in doc["profiles"] if p["name"] == "console")
        assert profile["state"] == "login-required"
        assert profile["action"] == "credd login console --signin"
        assert emu.calls["CreateOAuth2Token"] == calls  # no hammering a dead session

        # a new login brings it back without a restart
        await signin_login(world)
        await reload(daemon)
        assert (await served(daemon))["AccessKeyId"] != good["AccessKeyId"]
        assert session_status(daemon).state == "ok"


async def test_insufficient_permissions_names_the_policy_and_recovers(world: World) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        good = await served(daemon)
        emu.signin_deny_permission()
        clock.advance(LIFETIME - 420)
        await eventually(lambda: session_status(daemon).state == "error")
        status = session_status(daemon)
        assert "INSUFFICIENT_PERMISSIONS" in status.last_error
        assert "SignInLocalDevelopmentAccess" in status.action
        assert (await served(daemon))["AccessKeyId"] == good["AccessKeyId"]  # last good
        emu.signin_deny_permission(False)  # the administrator attaches the policy
        clock.advance(60)
        await eventually(lambda: session_status(daemon).state == "ok")
        await eventually(lambda: settled(daemon, clock, ("console",)))
        assert (await served(daemon))["AccessKeyId"] != good["AccessKeyId"]


@pytest.mark.parametrize(
    ("code", "status"), [("TooManyRequestsError", 429), ("InternalServerException", 500)]
)
async def test_throttling_and_server_errors_back_off_and_retry(
    world: World, code: str, status: int
) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    async with running_daemon(world.home.settings(), clock=clock) as daemon:
        good = await served(daemon)
        emu.faults.add("CreateOAuth2Token", error_code=code, count=None)
        clock.advance(LIFETIME - 420)
        await eventually(lambda: session_status(daemon).state == "retrying")
        assert code in session_status(daemon).last_error
        first = session_status(daemon).next_renewal
        assert first is not None
        assert first > clock.now()
        assert (await served(daemon))["AccessKeyId"] == good["AccessKeyId"]
        failed = emu.calls["CreateOAuth2Token"]
        clock.advance(2)  # a first retry within seconds, with a fresh proof
        await eventually(lambda: emu.calls["CreateOAuth2Token"] > failed)
        emu.faults.clear()
        clock.advance(10)
        await eventually(lambda: session_status(daemon).state == "ok")
        await eventually(lambda: settled(daemon, clock, ("console",)))
        fresh = await served(daemon)
        assert fresh["AccessKeyId"] != good["AccessKeyId"]
        assert seconds_left(fresh, clock) > LIFETIME - 60


SPEC = SigninSessionSpec(name=USER_ARN, region="us-east-1", profile="console")


@pytest.mark.parametrize(
    ("aws_code", "status", "error", "outcome"),
    [
        ("AccessDeniedException", 401, "TOKEN_EXPIRED", "login"),
        ("AccessDeniedException", 403, "USER_CREDENTIALS_CHANGED", "login"),
        ("AccessDeniedException", 403, "INSUFFICIENT_PERMISSIONS", "policy"),
        # the member missing or unknown: the status tells (protocols.md 4.3)
        ("AccessDeniedException", 401, None, "login"),
        ("AccessDeniedException", 403, None, "refused"),
        ("ValidationException", 400, "INVALID_REQUEST", "refused"),
        ("TooManyRequestsError", 429, "INVALID_REQUEST", "transient"),
        ("InternalServerException", 500, "server_error", "transient"),
    ],
)
def test_refusals_are_told_apart(
    aws_code: str, status: int, error: str | None, outcome: str
) -> None:
    upstream = UpstreamError(
        "signin answered",
        aws_code=aws_code,
        status=status,
        oauth_error=error,
        transient=status >= 429,
    )
    explained = explain_refusal(upstream, SPEC)
    if outcome == "login":
        assert isinstance(explained, LoginRequired)
        assert explained.action == "credd login console --signin"
        assert "run: credd login console --signin" in str(explained)
    else:
        assert isinstance(explained, UpstreamError)
        assert explained.transient == (outcome == "transient")
        if outcome == "policy":
            assert explained.hint is not None
            assert "SignInLocalDevelopmentAccess" in explained.hint


# ------------------------------------------------------------------ role chaining, profiles


async def test_a_role_chained_on_a_signin_profile_lives_longer(world: World) -> None:
    emu, clock = world.emu, world.clock
    await signin_login(world)
    settings = world.home.settings()
    assert settings.profiles["console-admin"].source == "console"
    async with running_daemon(settings, clock=clock) as daemon:
        identity = await sdk_identity(daemon, settings, "console-admin", emu.url)
        assert identity["Arn"] == ADMIN_ARN
        body = await served(daemon, "console-admin")
        assert seconds_left(body, clock) > 3500  # an hour, not 15 minutes
        assert emu.calls["AssumeRole"] == 1


def test_profiles_naming_one_login_session_share_one_session(home: Home) -> None:
    home.write_aws_config(
        f"""\
        [profile b-second]
        login_session = {USER_ARN}

        [profile a-first]
        login_session = {USER_ARN}
        region = eu-central-1

        [profile sso-wins]
        sso_session = s
        sso_account_id = 111111111111
        sso_role_name = R
        login_session = {USER_ARN}

        [sso-session s]
        sso_start_url = https://d-1234567890.awsapps.com/start
        sso_region = us-east-1

        [profile keys-win]
        login_session = arn:aws:iam::333333333333:user/bob
        """
    )
    (home.root / ".aws" / "credentials").write_text(
        "[keys-win]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = x\n"
    )
    settings = home.settings()
    spec = settings.sessions[USER_ARN]
    assert spec == SigninSessionSpec(name=USER_ARN, region="eu-central-1", profile="a-first")
    assert settings.profiles["a-first"] == SigninProfile("a-first", USER_ARN, "eu-central-1")
    assert settings.profiles["b-second"] == SigninProfile("b-second", USER_ARN, None)
    assert settings.session_for("b-second") == spec
    assert settings.profiles["sso-wins"].kind == "sso-role"  # botocore's order (6.4)
    assert "keys-win" not in settings.profiles  # the credentials file comes before login
    assert settings.region_of("b-second") is None


# ------------------------------------------------------------------------------ status


async def test_status_table_and_json_show_signin_sessions_and_profiles(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    await signin_login(world)
    settings = world.home.settings()
    # no daemon: what the cache says
    capsys.readouterr()
    cli.main(["status", "--json"])
    offline = json.loads(capsys.readouterr().out)
    assert offline["daemon"] == {"running": False}
    [session] = [s for s in offline["sessions"] if s["kind"] == "signin"]
    assert session["name"] == USER_ARN
    assert session["state"] == "ok"
    assert session["expires_at"].endswith("Z")
    async with running_daemon(settings, clock=world.clock) as daemon:
        await served(daemon)
        doc = await anyio.to_thread.run_sync(_status_json)
        assert doc["daemon"]["running"] is True
        [session] = [s for s in doc["sessions"] if s["kind"] == "signin"]
        assert session["state"] == "ok"
        assert session["next_renewal"] is not None
        profile = next(p for p in doc["profiles"] if p["name"] == "console")
        assert profile["kind"] == "signin"
        assert profile["source"] == USER_ARN
        assert profile["state"] == "fresh"
        table = await anyio.to_thread.run_sync(_status_table)
        assert USER_ARN in table
        assert "console" in table
        world.emu.revoke_sessions()
        world.clock.advance(LIFETIME)
        await eventually(lambda: session_status(daemon).state == "login-required")
        table = await anyio.to_thread.run_sync(_status_table)
        assert "run: credd login console --signin" in table


def _status_json() -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        cli.main(["status", "--json"])
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def _status_table() -> str:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        cli.main(["status"])
    return out.getvalue()


def test_offline_status_reads_the_cache(world: World) -> None:
    settings = world.home.settings()
    cache = login_cache(settings)
    now = world.clock.now()
    status = offline_status(SPEC, cache, now)
    assert (status.state, status.last_error) == (SessionState.LOGIN_REQUIRED, "not logged in")
    assert status.action == "credd login console --signin"
    world.cache_dir.mkdir(parents=True)
    world.cache_path().write_text("{not json")
    status = offline_status(SPEC, cache, now)
    assert status.state is SessionState.LOGIN_REQUIRED
    assert str(world.cache_path()) in (status.last_error or "")


# ------------------------------------------------------------------------------- secrets


async def test_no_secret_reaches_the_log(world: World) -> None:
    from credd.log import configure_logging

    stream = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("debug", "json", stream)
    try:
        await signin_login(world)
        async with running_daemon(world.home.settings(), clock=world.clock) as daemon:
            await served(daemon)
            world.clock.advance(LIFETIME - 420)
            await eventually(lambda: world.emu.calls["CreateOAuth2Token"] == 2)
            await eventually(lambda: settled(daemon, world.clock, ("console",)))
            await served(daemon)
            cached = world.cached()
    finally:  # process-wide state: put it back for the other tests
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
    log = stream.getvalue()
    assert "session_token_renewed" in log
    secrets = [
        cached["refreshToken"],
        cached["idToken"],
        cached["accessToken"]["secretAccessKey"],
        cached["accessToken"]["sessionToken"],
        *cached["dpopKey"].splitlines()[1:-1],
    ]
    for secret in secrets:
        assert secret not in log
    token = LoginToken.from_json(cached, world.cache_path())
    assert cached["refreshToken"] not in repr(token)
    assert cached["accessToken"]["secretAccessKey"] not in repr(token)
    assert "PRIVATE" not in repr(token)
    assert repr(DpopKey.from_pem(cached["dpopKey"])) == "DpopKey([redacted])"


# ---------------------------------------------------------------------------------- DPoP


def test_proofs_are_what_the_emulator_and_botocore_accept() -> None:
    key = DpopKey.generate()
    now = datetime.now(UTC)
    url = "http://127.0.0.1:4321/v1/token?x=1"
    first = key.proof(method="POST", url=url, now=now)
    second = key.proof(method="POST", url=url, now=now)
    a = verify_proof([first], method="POST", url="http://127.0.0.1:4321/v1/token", now=now)
    b = verify_proof([second], method="POST", url="http://127.0.0.1:4321/v1/token", now=now)
    assert a.jti != b.jti  # a fresh jti per proof
    assert a.jkt == b.jkt
    header = json.loads(base64.urlsafe_b64decode(first.split(".")[0] + "=="))
    assert header == {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk()}
    payload = json.loads(base64.urlsafe_b64decode(first.split(".")[1] + "=="))
    assert payload["htu"] == "http://127.0.0.1:4321/v1/token"  # no query
    assert payload["iat"] == int(now.timestamp())
    with pytest.raises(ProofError, match="htu"):
        verify_proof([first], method="POST", url="http://127.0.0.1:9/v1/token", now=now)
    # the PEM round-trips, and awscrt (botocore's DPoP) loads it
    pem = key.to_pem()
    assert DpopKey.from_pem(pem).jwk() == key.jwk()
    crt = pytest.importorskip("awscrt.crypto")
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    x, _ = crt.EC.new_key_from_der_data(der).get_public_coords()
    assert base64.urlsafe_b64encode(x).rstrip(b"=").decode() == key.jwk()["x"]
    with pytest.raises(ValueError, match="PEM"):
        DpopKey.from_pem("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")


async def test_every_http_attempt_carries_a_fresh_proof(world: World) -> None:
    """botocore retries a 500 itself: each attempt must be signed anew (a spent jti is refused)."""
    result = await signin_login(world)
    settings = world.home.settings()
    world.emu.faults.add("CreateOAuth2Token", count=2)  # 500 InternalServerException, twice
    sent: list[str] = []
    key = DpopKey.from_pem(result.token.dpop_key.reveal())
    assert result.token.refresh_token is not None
    async with aws_clients(settings).client(
        "signin", region="us-east-1", profile="console", attempts=3
    ) as signin:
        attach_proofs(signin, key, world.clock)
        signin.meta.events.register(
            "before-send.signin.CreateOAuth2Token",
            lambda request, **_: sent.append(request.headers["DPoP"]),
        )
        answer = await signin.create_oauth2_token(
            tokenInput={
                "clientId": SAME_DEVICE_CLIENT,
                "grantType": "refresh_token",
                "refreshToken": result.token.refresh_token.reveal(),
            }
        )
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(sent) == 3
    jtis = {json.loads(base64.urlsafe_b64decode(p.split(".")[1] + "=="))["jti"] for p in sent}
    assert len(jtis) == 3


# ------------------------------------------------------------------- the AWS config writer


def test_writing_the_profile_keeps_every_other_line(tmp_path: Path) -> None:
    config = tmp_path / "config"
    original = textwrap.dedent(
        """\
        # top comment
        [default]
        region = eu-west-1

        [profile console]HEADER-SPACES
        ; a comment
        login_session = arn:aws:iam::111111111111:user/old
        s3 =
          max_concurrent_requests = 20

        # before the next section
        [profile zzz]
        output = json"""
    ).replace("HEADER-SPACES", "   ")  # botocore reads "[profile console]   " too
    config.write_text(original)
    config.chmod(0o640)
    write_login_session(config, "console", USER_ARN, "us-east-1")
    nested = "s3 =\n  max_concurrent_requests = 20\n"
    expected = original.replace(
        f"login_session = arn:aws:iam::111111111111:user/old\n{nested}",
        f"login_session = {USER_ARN}\n{nested}region = us-east-1\n",
    )
    assert config.read_text() == expected + "\n"  # and a final newline where there was none
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    write_login_session(config, "new", USER_ARN, None)
    assert config.read_text().endswith(
        f"output = json\n\n[profile new]\nlogin_session = {USER_ARN}\n"
    )
    write_login_session(config, "default", USER_ARN, None)
    assert f"[default]\nregion = eu-west-1\nlogin_session = {USER_ARN}\n" in config.read_text()
    fresh = tmp_path / "sub" / "config"
    write_login_session(fresh, "console", USER_ARN, "us-east-1")
    assert (
        fresh.read_text() == f"[profile console]\nlogin_session = {USER_ARN}\nregion = us-east-1\n"
    )
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert list(tmp_path.glob("**/.config.*")) == []  # no temporary file left behind


def test_writing_through_a_symlinked_config(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "aws-config"
    target.parent.mkdir()
    target.write_text("[profile console]\n")
    link = tmp_path / "config"
    link.symlink_to(target)
    write_login_session(link, "console", USER_ARN, None)
    assert link.is_symlink()
    assert target.read_text() == f"[profile console]\nlogin_session = {USER_ARN}\n"


def test_cache_key_is_sha256_of_the_login_session() -> None:
    assert sha256_name("arn:aws:iam::123456789012:user/alice") == (
        "b7d71d383b9557a9bad4c3346c50365819226484c6824a0fdef66637be339db0"
    )
    assert hashlib.sha256(USER_ARN.encode()).hexdigest() == sha256_name(USER_ARN)
