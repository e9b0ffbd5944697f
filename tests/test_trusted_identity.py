"""Trusted identity propagation in process: CreateTokenWithIAM sessions against the emulator.

The daemon and the emulator share one ManualClock, so lifetimes pass when a
test says so. Each grant is served to boto3 through the endpoint and proven
by STS GetCallerIdentity: the role session is identity-enhanced (the
emulator remembers the identity context it was given, and the raw XML says
``OnBehalfOf``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
from botocore.config import Config

from credd.aws import SigningKeys
from credd.clock import ManualClock
from credd.config.settings import Settings, TrustedIdentitySpec
from credd.daemon import DaemonHandle, running_daemon
from credd.errors import AssertionRequired, ConfigError, LoginError
from credd.profiles import source_keys
from credd.sessions import SessionStatus
from credd.sessions.assertions import AssertionSource
from credd.sessions.iam_login import login_trusted_identity
from credd.sessions.iam_tokens import IamToken
from credd.sessions.loopback import LoginOptions
from credd.testing.emulator import (
    Application,
    Emulator,
    EmulatorConfig,
    IdentityCenter,
    default_directory,
)
from credd.testing.emulator.iam_token import user_uuid
from credd.testing.emulator.identity_center import DEFAULT_APPLICATION_ARN
from credd.testing.emulator.oauth import AUTH_CODE_GRANT, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT
from credd.testing.emulator.state import TemporaryCredentials
from credd.wiring import aws_clients, trusted_identity_cache
from tests.support.configs import credd_profile
from tests.support.home import Home
from tests.support.inprocess import RecordingUI, get, login, sdk_identity
from tests.support.waiting import eventually
from tests.support.world import World

APP = DEFAULT_APPLICATION_ARN
#: an application without the refresh_token grant: every renewal is the grant again
NO_REFRESH_APP = (
    "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-6666666666666666"
)
ANALYST_ARN = "arn:aws:sts::111111111111:assumed-role/Analyst/credd-analyst"


# --------------------------------------------------------------------------- the world


@pytest.fixture
async def world(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    clock = ManualClock(datetime.now(UTC))
    directory = replace(
        default_directory(),
        identity_center=IdentityCenter(
            applications=(
                Application(),
                Application(
                    arn=NO_REFRESH_APP,
                    grants=frozenset({JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, AUTH_CODE_GRANT}),
                ),
            )
        ),
    )
    # botocore signs with the real time while the emulator's clock moves on
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config, directory=directory).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        yield World(home, emu)


def session_status(daemon: DaemonHandle, name: str = "analyst") -> SessionStatus:
    return next(s for s in daemon.broker.session_statuses() if s.name == name)


def served_bearer(daemon: DaemonHandle, name: str = "analyst") -> str | None:
    """The access token the daemon holds for ``name`` in memory, if any."""
    session = daemon.broker.bearer_session(name)
    held = session.usable_token() if session else None
    return held.access_token.reveal() if held else None


def session_state(daemon: DaemonHandle, name: str = "analyst") -> str:
    return str(session_status(daemon, name).state)


def served_key(daemon: DaemonHandle, name: str = "analyst") -> str | None:
    creds = daemon.broker.usable(name)
    return creds.access_key_id if creds else None


def token_file(home: Home, name: str = "analyst") -> dict[str, Any]:
    """The session's token cache file, which must be owner-only."""
    path = home.paths().trusted_identity_cache_dir / f"{cache_name(name)}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def cache_name(name: str) -> str:
    from credd.sessions.iam_tokens import IamTokenCache

    return IamTokenCache.token_name(name)


async def proven_identity(world: World, daemon: DaemonHandle, settings: Settings) -> str:
    """boto3 through the endpoint, then GetCallerIdentity: identity-enhanced for alice."""
    raw: list[bytes] = []
    identity = await sdk_identity(daemon, settings, "analyst", world.emu.url, raw=raw)
    alice = user_uuid(world.emu.directory.identity_center, "alice")
    assert f"<OnBehalfOf><UserId>{alice}</UserId>" in raw[0].decode()
    key = served_key(daemon)
    assert key is not None
    issued = world.emu.state.credentials[key]
    assert isinstance(issued, TemporaryCredentials)
    assert issued.identity_context is not None
    assert issued.identity_context.user == "alice"
    arn: str = identity["Arn"]
    return arn


async def renewed(world: World, daemon: DaemonHandle, refresh_token: str) -> None:
    """Past the renewal point: a rotated refresh token is on disk and the session is ok."""
    world.clock.advance(45 * 60)
    await eventually(lambda: token_file(world.home)["refreshToken"] != refresh_token)
    await eventually(lambda: session_state(daemon) == "ok")


def oidc_client(world: World) -> Any:
    """CreateTokenWithIAM as the application server itself would call it."""
    return boto3.client(
        "sso-oidc",
        region_name="us-east-1",
        endpoint_url=world.emu.url,
        aws_access_key_id=world.keys.access_key_id,
        aws_secret_access_key=world.keys.secret_access_key.reveal(),
        config=Config(retries={"total_max_attempts": 1}),
    )


async def login_trusted(settings: Settings, world: World, name: str = "analyst") -> IamToken:
    """``credd login NAME`` in process; ``$BROWSER`` (the test browser) approves."""
    spec = settings.sessions[name]
    assert isinstance(spec, TrustedIdentitySpec)
    clients = aws_clients(settings)

    async def no_daemon(profile: str) -> SigningKeys:
        raise AssertionError(f"{profile} is served: this test signs with static keys")

    signer = functools.partial(
        source_keys,
        spec.source_profile,
        sources=settings.sources,
        served=no_daemon,
        clients=clients,
    )
    return await login_trusted_identity(
        spec,
        cache=trusted_identity_cache(settings),
        clients=clients,
        signer=signer,
        clock=world.clock,
        ui=RecordingUI(),
        options=LoginOptions(),
    )


# --------------------------------------------------------------------------- each grant


async def test_jwt_bearer_from_a_file_serves_an_identity_enhanced_role(world: World) -> None:
    assertion = world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with running_daemon(settings, clock=world.clock) as daemon:
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN

        status, bearer = await get(daemon, "/v1/tokens/analyst")
        assert status == 200, bearer
        assert set(bearer) == {"accessToken", "tokenType", "expiresAt", "scopes"}
        assert bearer["accessToken"] in world.emu.state.access_tokens
        assert bearer["tokenType"] == "Bearer"
        assert bearer["scopes"] == ["openid", "sts:identity_context"]
        assert bearer["expiresAt"].endswith("Z")

        _, doc = await get(daemon, "/v1/status")
        session = next(s for s in doc["sessions"] if s["name"] == "analyst")
        alice = user_uuid(world.emu.directory.identity_center, "alice")
        assert session["state"] == "ok"
        assert session["kind"] == "create-token-with-iam"
        assert session["who"] == f"alice@example.com (Identity Store user {alice} in d-1234567890)"
        details = session["details"]
        assert details["granted_scopes"] == ["openid", "sts:identity_context"]
        assert details["downscoped"] is False
        assert details["issued_token_type"] == "urn:ietf:params:oauth:token-type:refresh_token"
        assert details["claims"]["sub"] == alice
        assert "sts:identity_context" not in details["claims"]  # a credential, never shown
        profile = next(p for p in doc["profiles"] if p["name"] == "analyst")
        assert (profile["kind"], profile["source"], profile["state"]) == (
            "identity-enhanced-role",
            "analyst",
            "fresh",
        )
        assert assertion not in json.dumps(doc)

    stored = token_file(world.home)
    assert stored["refreshToken"]
    assert stored["identityContext"]
    assert stored["grantType"] == JWT_BEARER_GRANT
    assert stored["clientId"] == APP
    assert world.emu.calls["CreateTokenWithIAM"] == 1


async def test_jwt_bearer_from_a_command_serves_a_bearer_token_signed_by_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write_assertion()
    runs = world.home.root / "runs"
    idp = world.home.root / "idp-cli"
    idp.write_text(f'#!/bin/sh\necho run >> "{runs}"\ncat "{world.assertion_file}"\n')
    idp.chmod(0o700)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", world.keys.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", world.keys.secret_access_key.reveal())
    settings = world.configure(
        JWT_BEARER_GRANT,
        assertion_command=json.dumps([str(idp), "token"]),
        source_profile="",
        role_arn="",
        role_session_name="",
        scopes="",
    )
    async with running_daemon(settings, clock=world.clock) as daemon:
        status, bearer = await get(daemon, "/v1/tokens/analyst")
        assert status == 200, bearer
        assert bearer["scopes"] == ["openid", "aws", "sts:identity_context", *APP_SCOPES]
        # without role_arn there are no credentials under the name, and it says why
        status, body = await get(daemon, "/v1/credentials/analyst")
        assert status == 404
        assert "bearer token" in body["message"]
        assert "credd token analyst" in body["message"]

        # renewed ahead of expiry with the refresh token: the IdP CLI is not run again
        first = bearer["accessToken"]
        world.clock.advance(45 * 60)
        await eventually(lambda: token_file(world.home)["accessToken"] != first)
        # the file is written before the new token is used; wait for it to be in use too
        await eventually(lambda: served_bearer(daemon) not in (None, first))
        status, renewed = await get(daemon, "/v1/tokens/analyst")
        assert status == 200
        assert renewed["accessToken"] != first
    assert runs.read_text().splitlines() == ["run"]


APP_SCOPES = ["s3:access_grants:read_write"]


async def test_signed_by_a_credential_process(world: World) -> None:
    world.write_assertion()
    script = world.home.root / "get-creds"
    script.write_text(
        "#!/bin/sh\n"
        f'echo \'{{"Version": 1, "AccessKeyId": "{world.keys.access_key_id}", '
        f'"SecretAccessKey": "{world.keys.secret_access_key.reveal()}"}}\'\n'
    )
    script.chmod(0o700)
    world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    with world.home.aws_config.open("a") as config:
        config.write(f"\n[profile proc]\ncredential_process = {script}\n")
    world.home.write_credd_config(
        '[server]\nlisten = "127.0.0.1:0"\n\n'
        + credd_profile(
            JWT_BEARER_GRANT, assertion_file=str(world.assertion_file), source_profile="proc"
        )
    )
    settings = world.home.settings()
    async with running_daemon(settings, clock=world.clock) as daemon:
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN


async def test_token_exchange_of_an_identity_center_session(world: World) -> None:
    # signed by "dev": an Identity Center role profile credd itself serves
    settings = world.configure(TOKEN_EXCHANGE_GRANT, subject_session="my-sso", source_profile="dev")
    await login(settings, world.clock)
    async with running_daemon(settings, clock=world.clock) as daemon:
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN
        details = session_status(daemon).details
        assert details is not None
        # asked for a refresh token, so that renewal needs no subject token
        assert details["refreshable"] is True
        assert details["issued_token_type"] == "urn:ietf:params:oauth:token-type:refresh_token"
        first = token_file(world.home)["accessToken"]
        assert len(world.emu.state.iam.session_starts) == 1

        # renewed with the refresh token: no new exchange (which would begin a new session)
        world.clock.advance(45 * 60)
        await eventually(lambda: token_file(world.home)["accessToken"] != first)
        await eventually(lambda: session_state(daemon) == "ok")
        assert len(world.emu.state.iam.session_starts) == 1
        assert token_file(world.home)["grantType"] == TOKEN_EXCHANGE_GRANT
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN


async def test_token_exchange_without_refresh_tokens_exchanges_again(world: World) -> None:
    settings = world.configure(
        TOKEN_EXCHANGE_GRANT,
        subject_session="my-sso",
        client_id=NO_REFRESH_APP,
        role_arn="",
        role_session_name="",
    )
    await login(settings, world.clock)
    async with running_daemon(settings, clock=world.clock) as daemon:
        status, bearer = await get(daemon, "/v1/tokens/analyst")
        assert status == 200, bearer
        details = session_status(daemon).details
        assert details is not None
        assert details["refreshable"] is False
        assert details["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
        # each renewal is a new exchange with the subject's current token
        calls = world.emu.calls["CreateTokenWithIAM"]
        world.clock.advance(45 * 60)
        await eventually(lambda: token_file(world.home)["accessToken"] != bearer["accessToken"])
        assert world.emu.calls["CreateTokenWithIAM"] == calls + 1
        _, renewed = await get(daemon, "/v1/tokens/analyst")
        assert renewed["accessToken"] == token_file(world.home)["accessToken"]


async def test_authorization_code_login_then_served(world: World) -> None:
    settings = world.configure(AUTH_CODE_GRANT)
    async with running_daemon(settings, clock=world.clock) as daemon:
        status, body = await get(daemon, "/v1/tokens/analyst")
        assert status == 503
        assert body["code"] == "LoginRequired"
        assert "credd login analyst" in body["message"]
        assert session_status(daemon).action == "credd login analyst"

        token = await login_trusted(settings, world)
        assert token.who() is not None
        daemon.broker.sync_session("analyst")  # what `credd login` asks a running daemon
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN
        assert session_state(daemon) == "ok"
    assert world.emu.calls["Authorize"] == 1
    assert token_file(world.home)["grantType"] == AUTH_CODE_GRANT


async def test_login_is_only_for_the_authorization_code_grant(world: World) -> None:
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    with pytest.raises(LoginError, match="no login is needed"):
        await login_trusted(settings, world)


# --------------------------------------------------------------------------- renewal


async def test_renewal_across_expiry_rotates_and_persists_the_refresh_token(world: World) -> None:
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with running_daemon(settings, clock=world.clock) as daemon:
        await proven_identity(world, daemon, settings)
        first = token_file(world.home)
        first_key = served_key(daemon)
        for _ in range(3):  # well past the first token's expiry, renewing each time
            await renewed(world, daemon, token_file(world.home)["refreshToken"])
        await eventually(lambda: served_key(daemon) != first_key)
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN
        assert world.clock.now() > datetime.fromisoformat(first["expiresAt"])
        status, bearer = await get(daemon, "/v1/tokens/analyst")
        assert status == 200
        assert bearer["accessToken"] == token_file(world.home)["accessToken"]

    # the rotated-out refresh token is dead upstream: credd never needs it again
    oidc = oidc_client(world)

    def reuse_old() -> None:
        oidc.create_token_with_iam(
            clientId=APP, grantType="refresh_token", refreshToken=first["refreshToken"]
        )

    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await anyio.to_thread.run_sync(reuse_old)


async def test_the_assertion_file_is_read_again_when_the_old_one_nears_exp(world: World) -> None:
    world.write_assertion(lifetime=300)
    settings = world.configure(
        JWT_BEARER_GRANT, assertion_file=str(world.assertion_file), client_id=NO_REFRESH_APP
    )
    world.emu.config.update({"iam_token_ttl": 900})
    async with running_daemon(settings, clock=world.clock) as daemon:
        await proven_identity(world, daemon, settings)
        assert "refreshToken" not in token_file(world.home)
        first = token_file(world.home)["accessToken"]
        # the IdP tool keeps the file fresh; the old assertion lapses before the renewal
        world.clock.advance(200)
        world.write_assertion(lifetime=900)
        world.clock.advance(400)  # past the renewal point (half of 900 s): the grant again
        await eventually(lambda: token_file(world.home)["accessToken"] != first)
        await eventually(lambda: session_state(daemon) == "ok")
        assert world.emu.calls["CreateTokenWithIAM"] == 2

        # nobody refreshes the file: the next renewal finds it expired and says what to do
        world.clock.advance(600)
        await eventually(lambda: session_state(daemon) == "assertion-required")
        status = session_status(daemon)
        assert status.last_error is not None
        assert "expired at" in status.last_error
        assert (
            status.action
            == f"have your identity provider write a fresh JWT to {world.assertion_file}"
        )
        assert world.emu.calls["CreateTokenWithIAM"] == 2  # an expired assertion is not sent
        world.clock.advance(400)  # the token expires too: nothing valid to serve
        status_code, body = await get(daemon, "/v1/tokens/analyst")
        assert status_code == 503
        assert body["code"] == "AssertionRequired"

        # a fresh assertion brings it back at once
        world.write_assertion()
        status_code, body = await get(daemon, "/v1/tokens/analyst")
        assert status_code == 200, body
        assert session_state(daemon) == "ok"


async def test_a_failing_assertion_command_is_reported_without_its_output(world: World) -> None:
    idp = world.home.root / "idp-cli"
    idp.write_text("#!/bin/sh\necho secret-looking-output\necho oops >&2\nexit 3\n")
    idp.chmod(0o700)
    command = json.dumps([str(idp), "--client-secret=s3cr3t"])
    settings = world.configure(JWT_BEARER_GRANT, assertion_command=command)
    async with running_daemon(settings, clock=world.clock) as daemon:
        await eventually(lambda: session_state(daemon) == "assertion-required")
        status = session_status(daemon)
        assert status.last_error is not None
        assert "exited with status 3" in status.last_error
        assert "secret-looking-output" not in status.last_error
        assert "oops" not in status.last_error
        assert "s3cr3t" not in status.last_error  # arguments may hold a secret
        code, body = await get(daemon, "/v1/credentials/analyst")
        assert code == 503
        assert body["code"] == "AssertionRequired"
        profile = next(p for p in daemon.broker.profile_statuses() if p.name == "analyst")
        assert profile.state == "assertion-required"
    assert world.emu.calls["CreateTokenWithIAM"] == 0


# --------------------------------------------------------------------------- errors


#: every error of the seed API (protocols.md 2.3), what the session becomes, what it names
ERRORS: dict[str, tuple[str, str]] = {
    "InternalServerException": ("retrying", "InternalServerException"),
    "SlowDownException": ("retrying", "SlowDownException"),
    "AuthorizationPendingException": ("retrying", "AuthorizationPendingException"),
    "InvalidGrantException": ("assertion-required", "refused the assertion"),
    "ExpiredTokenException": ("assertion-required", "refused the assertion"),
    "AccessDeniedException": ("assertion-required", "refused the assertion"),
    "InvalidClientException": ("error", "client_id in [profiles.analyst]"),
    "InvalidScopeException": ("error", "scopes in [profiles.analyst]"),
    "UnsupportedGrantTypeException": ("error", "grant_type in [profiles.analyst]"),
    "UnauthorizedClientException": ("error", "grant_type in [profiles.analyst]"),
    "InvalidRequestRegionException": ("error", "sso_region in [profiles.analyst]"),
    "InvalidRequestException": ("error", "grant_type in [profiles.analyst]"),
    "TeapotException": ("error", "sso-oidc answered TeapotException: Injected"),
}


@pytest.mark.parametrize(("code", "expected"), ERRORS.items(), ids=ERRORS.keys())
async def test_every_error_of_create_token_with_iam(
    world: World, code: str, expected: tuple[str, str]
) -> None:
    state, fragment = expected
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    status = 418 if code == "TeapotException" else None
    world.emu.faults.add(
        "CreateTokenWithIAM", error_code=code, status=status, message="Injected", count=None
    )
    async with running_daemon(settings, clock=world.clock) as daemon:
        await eventually(lambda: session_state(daemon) == state)
        session = session_status(daemon)
        assert session.last_error is not None
        assert fragment in session.last_error
        assert code in session.last_error
        if state == "error" and code != "TeapotException":  # an unknown code names no key
            assert session.action is not None
        code_status, body = await get(daemon, "/v1/tokens/analyst")
        assert code_status == 503
        assert code in body["message"]

        # retried with backoff (never in a tight loop), and served once the fault is gone
        world.emu.faults.clear()
        world.clock.advance(301)
        world.write_assertion()
        await eventually(lambda: session_state(daemon) == "ok")
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN


async def test_transient_errors_keep_serving_the_last_good_token(world: World) -> None:
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with running_daemon(settings, clock=world.clock) as daemon:
        _, good = await get(daemon, "/v1/tokens/analyst")
        world.emu.faults.add("CreateTokenWithIAM", error_code="SlowDownException", count=None)
        world.clock.advance(45 * 60)  # renewal due, upstream failing
        await eventually(lambda: session_state(daemon) == "retrying")
        status, still = await get(daemon, "/v1/tokens/analyst")
        assert status == 200
        assert still["accessToken"] == good["accessToken"]
        assert token_file(world.home)["refreshToken"]  # a transient error keeps it

        world.emu.faults.clear()
        world.clock.advance(5 * 60)
        await eventually(lambda: session_state(daemon) == "ok")
        _, fresh = await get(daemon, "/v1/tokens/analyst")
        assert fresh["accessToken"] != good["accessToken"]


async def test_a_refused_refresh_token_begins_again_with_the_assertion(world: World) -> None:
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with running_daemon(settings, clock=world.clock) as daemon:
        await proven_identity(world, daemon, settings)
        first = token_file(world.home)
        world.emu.expire_refresh_tokens()  # the session ended upstream
        world.write_assertion(lifetime=3600)
        world.clock.advance(45 * 60)
        await eventually(lambda: token_file(world.home)["accessToken"] != first["accessToken"])
        stored = token_file(world.home)
        assert stored["refreshToken"] != first["refreshToken"]  # the new session's
        # the refused refresh, then the grant again: two calls after the first
        assert world.emu.calls["CreateTokenWithIAM"] == 3
        assert len(world.emu.state.iam.session_starts) == 2
        assert session_state(daemon) == "ok"
        assert await proven_identity(world, daemon, settings) == ANALYST_ARN


async def test_a_refused_refresh_token_of_an_authorization_code_session_needs_a_login(
    world: World,
) -> None:
    settings = world.configure(AUTH_CODE_GRANT)
    await login_trusted(settings, world)
    async with running_daemon(settings, clock=world.clock) as daemon:
        status, _ = await get(daemon, "/v1/tokens/analyst")
        assert status == 200
        world.emu.revoke_sessions()
        world.clock.advance(61 * 60)
        await eventually(lambda: session_state(daemon) == "login-required")
        assert session_status(daemon).action == "credd login analyst"
        # a refused refresh token is never reused: it leaves the cache file
        await eventually(lambda: "refreshToken" not in token_file(world.home))
        status, body = await get(daemon, "/v1/credentials/analyst")
        assert status == 503
        assert body["code"] == "LoginRequired"

        await login_trusted(settings, world)  # a new login brings it back, no restart
        status, body = await get(daemon, "/v1/credentials/analyst")
        assert status == 200, body


async def test_a_downscoped_grant_is_reported(world: World) -> None:
    world.write_assertion()
    settings = world.configure(
        JWT_BEARER_GRANT,
        assertion_file=str(world.assertion_file),
        scopes='["openid", "aws", "sts:identity_context"]',
        role_arn="",
        role_session_name="",
    )
    narrowed = {
        "accessToken": "aoa-narrowed",
        "tokenType": "Bearer",
        "expiresIn": 3600,
        "issuedTokenType": "urn:ietf:params:oauth:token-type:access_token",
        "scope": ["openid", "aws"],
    }
    world.emu.faults.add("CreateTokenWithIAM", status=200, body=json.dumps(narrowed).encode())
    async with running_daemon(settings, clock=world.clock) as daemon:
        status, bearer = await get(daemon, "/v1/tokens/analyst")
        assert status == 200
        assert bearer["scopes"] == ["openid", "aws"]
        _, doc = await get(daemon, "/v1/status")
    session = next(s for s in doc["sessions"] if s["name"] == "analyst")
    assert session["details"]["downscoped"] is True
    assert session["details"]["requested_scopes"] == ["openid", "aws", "sts:identity_context"]

    from credd.endpoint.status import render_status

    assert "asked for scopes openid, aws, sts:identity_context, granted openid, aws" in (
        render_status(doc)
    )


# --------------------------------------------------------------------------- the bearer route


async def test_the_bearer_route_has_the_endpoints_checks(world: World) -> None:
    world.write_assertion()
    settings = world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with running_daemon(settings, clock=world.clock) as daemon:
        assert (await get(daemon, "/v1/tokens/analyst", token=""))[0] == 401
        assert (await get(daemon, "/v1/tokens/analyst", token="x" * 43))[0] == 401
        status, _ = await get(daemon, "/v1/tokens/analyst", headers={"Host": "evil.example"})
        assert status == 403
        status, body = await get(daemon, "/v1/tokens/my-sso")  # not a trusted-identity session
        assert status == 404
        assert body["code"] == "NotFound"
        assert (await get(daemon, "/v1/tokens/nobody"))[0] == 404
        assert (await get(daemon, "/v1/tokens/analyst", method="POST"))[0] == 405
        assert (await get(daemon, "/v1/tokens/analyst"))[0] == 200


# --------------------------------------------------------------------------- configuration


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


#: invalid combinations: (changes to the README's example, the key named, the needle)
BAD_CONFIGS: dict[str, tuple[dict[str, str], str, str]] = {
    "jwt-bearer without an assertion": ({}, "grant_type", "assertion_file or assertion_command"),
    "both assertion sources": (
        {"assertion_file": "/a", "assertion_command": '["idp"]'},
        "assertion_command",
        "not both",
    ),
    "token-exchange without a subject": (
        {"grant_type": TOKEN_EXCHANGE_GRANT},
        "grant_type",
        "needs subject_session",
    ),
    "unknown grant": ({"grant_type": "password"}, "grant_type", "unknown grant"),
    "refresh_token is not a starting grant": (
        {"grant_type": "refresh_token"},
        "grant_type",
        "used by itself",
    ),
    "an assertion for another grant": (
        {"grant_type": AUTH_CODE_GRANT, "assertion_file": "/a"},
        "assertion_file",
        "only used with",
    ),
    "a subject for another grant": (
        {"assertion_file": "/a", "subject_session": "my-sso"},
        "subject_session",
        "only used with",
    ),
    "not an application": (
        {"assertion_file": "/a", "client_id": "arn:aws:iam::111111111111:role/X"},
        "client_id",
        "application ARN",
    ),
    "not a region": ({"assertion_file": "/a", "sso_region": "moon"}, "sso_region", "region"),
    "role without the identity context scope": (
        {"assertion_file": "/a", "scopes": '["openid"]'},
        "scopes",
        "sts:identity_context",
    ),
    "empty scopes": ({"assertion_file": "/a", "scopes": "[]"}, "scopes", "must not be empty"),
    "session name without a role": (
        {"assertion_file": "/a", "role_arn": ""},
        "role_session_name",
        "only used with role_arn",
    ),
    "duration out of range": (
        {"assertion_file": "/a", "duration_seconds": "60"},
        "duration_seconds",
        "900 to 43200",
    ),
    "not a role": ({"assertion_file": "/a", "role_arn": "arn:aws:s3:::b"}, "role_arn", "role ARN"),
    "unknown key": ({"assertion_file": "/a", "colour": "blue"}, "colour", "unknown key"),
    "unknown source profile": (
        {"assertion_file": "/a", "source_profile": "ghost"},
        "source_profile",
        "'ghost' is not a profile",
    ),
    "unknown subject session": (
        {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_session": "ghost"},
        "subject_session",
        "'ghost' is neither",
    ),
    "its own subject": (
        {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_session": "analyst"},
        "subject_session",
        "its own subject",
    ),
}


@pytest.mark.parametrize(("changes", "key", "needle"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
async def test_invalid_combinations_name_file_line_and_key(
    world: World, changes: dict[str, str], key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        world.configure(JWT_BEARER_GRANT, **changes)
    text = world.home.credd_config.read_text()
    where = f"{world.home.credd_config}:{line_of(text, f'{key} =')}: profiles.analyst.{key}:"
    assert where in caught.value.message
    assert needle in caught.value.message


async def test_a_missing_key_names_the_table(world: World) -> None:
    with pytest.raises(ConfigError) as caught:
        world.configure(JWT_BEARER_GRANT, assertion_file="/a", client_id="")
    text = world.home.credd_config.read_text()
    where = f"{world.home.credd_config}:{line_of(text, '[profiles.analyst]')}:"
    assert f"{where} profiles.analyst.client_id: missing" in caught.value.message


async def test_a_name_taken_in_the_aws_config_is_refused(world: World) -> None:
    with pytest.raises(ConfigError, match="also a name in"):
        world.configure(JWT_BEARER_GRANT, name="dev", assertion_file="/a")


async def test_role_chaining_on_an_identity_enhanced_profile(world: World) -> None:
    world.write_assertion()
    world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    with world.home.aws_config.open("a") as config:
        config.write(
            "\n[profile on-analyst]\n"
            "role_arn = arn:aws:iam::222222222222:role/Reader\n"
            "source_profile = analyst\n"
            "role_session_name = chained\n"
        )
    settings = world.home.settings()
    assert settings.session_for("on-analyst") == settings.sessions["analyst"]
    async with running_daemon(settings, clock=world.clock) as daemon:
        identity = await sdk_identity(daemon, settings, "on-analyst", world.emu.url)
    assert identity["Arn"] == "arn:aws:sts::222222222222:assumed-role/Reader/chained"


async def test_the_documented_example_is_valid_and_names_every_key(world: World) -> None:
    """config.example.toml's commented [profiles.analyst], uncommented, loads as written."""
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    block = example[example.index("# [profiles.analyst]") :]
    keys = [
        line.removeprefix("# # ").split(" = ")[0]
        for line in block.splitlines()
        if line.startswith("# # ") and " = " in line and line[4].isalpha()
    ]
    live = "\n".join(
        line.removeprefix("# ")
        for line in block.splitlines()
        if line.startswith("# ") and not line.startswith("# # ")
    )
    world.configure(JWT_BEARER_GRANT, assertion_file="/a")  # the AWS config with app-iam
    world.home.write_credd_config(live)
    spec = world.home.settings().sessions["analyst"]
    assert isinstance(spec, TrustedIdentitySpec)
    assert spec.assertion_file == world.home.root / ".config" / "idp" / "jwt"
    documented = set(keys) | {line.split(" = ")[0] for line in live.splitlines() if " = " in line}
    assert documented == {
        "type",
        "client_id",
        "sso_region",
        "source_profile",
        "grant_type",
        "assertion_file",
        "assertion_command",
        "subject_session",
        "scopes",
        "role_arn",
        "role_session_name",
        "duration_seconds",
        "region",
    }


# --------------------------------------------------------------------------- assertions


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("\n", "empty assertion"),
        ("not-a-jwt", "not a JWT"),
        ("a.!!!.c", "not a JWT"),
    ],
)
async def test_unusable_assertion_files(world: World, content: str | None, fragment: str) -> None:
    if content is not None:
        world.assertion_file.parent.mkdir(parents=True)
        world.assertion_file.write_text(content)
    source = AssertionSource("analyst", file=world.assertion_file, clock=world.clock)
    with pytest.raises(AssertionRequired) as caught:
        await source.get()
    assert fragment in caught.value.message
    assert (
        caught.value.hint
        == f"have your identity provider write a fresh JWT to {world.assertion_file}"
    )


async def test_an_assertion_is_fetched_again_only_near_its_exp(world: World) -> None:
    world.write_assertion(lifetime=300)
    runs = world.home.root / "runs"
    idp = world.home.root / "idp-cli"
    idp.write_text(f'#!/bin/sh\necho run >> "{runs}"\ncat "{world.assertion_file}"\n')
    idp.chmod(0o700)
    source = AssertionSource("analyst", command=(str(idp),), clock=world.clock)
    first = await source.get()
    assert first.subject == "alice@example.com"
    world.clock.advance(200)  # 100 s left: still well clear of the margin
    assert await source.get() is first
    world.write_assertion(lifetime=300)
    world.clock.advance(50)  # 50 s left: within the margin, so the command runs again
    second = await source.get()
    assert second.value != first.value
    source.refused()  # Identity Center refused it: the next one is fetched, whatever its exp
    await source.get()
    assert runs.read_text().splitlines() == ["run"] * 3
