"""The emulator's sso-oidc API and browser pages, driven by real aiobotocore clients."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from credd.clock import ManualClock
from credd.testing.emulator import DEFAULT_START_URL, Emulator, EmulatorConfig
from credd.testing.emulator.clients import (
    ClientRegistration,
    aws_client,
    device_login,
    register,
    visit,
)
from credd.testing.emulator.oauth import AUTH_CODE_GRANT, DEVICE_CODE_GRANT, s256

REDIRECT = "http://127.0.0.1/oauth/callback"
CALLBACK = "http://127.0.0.1:43210/oauth/callback"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    async with Emulator(clock, config=EmulatorConfig(poll_interval=0)).running() as emulator:
        yield emulator


@pytest.fixture
async def oidc(emu: Emulator) -> AsyncIterator[Any]:
    async with aws_client(emu.url, "sso-oidc", parameter_validation=False) as client:
        yield client


async def start(oidc: Any, reg: ClientRegistration) -> dict[str, Any]:
    answer: dict[str, Any] = await oidc.start_device_authorization(
        clientId=reg.client_id, clientSecret=reg.client_secret, startUrl=DEFAULT_START_URL
    )
    return answer


async def poll(oidc: Any, reg: ClientRegistration, device_code: str) -> dict[str, Any]:
    answer: dict[str, Any] = await oidc.create_token(
        clientId=reg.client_id,
        clientSecret=reg.client_secret,
        grantType=DEVICE_CODE_GRANT,
        deviceCode=device_code,
    )
    return answer


async def refresh(oidc: Any, reg: ClientRegistration, refresh_token: str) -> dict[str, Any]:
    answer: dict[str, Any] = await oidc.create_token(
        clientId=reg.client_id,
        clientSecret=reg.client_secret,
        grantType="refresh_token",
        refreshToken=refresh_token,
    )
    return answer


# -- RegisterClient ----------------------------------------------------------------


async def test_registration_timestamps_are_epoch_seconds(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    answer = await oidc.register_client(clientName="c", clientType="public")
    issued = int(clock.now().timestamp())
    assert answer["clientIdIssuedAt"] == issued
    assert answer["clientSecretExpiresAt"] == issued + emu.config.registration_ttl
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]


@pytest.mark.parametrize(
    ("members", "code"),
    [
        ({"clientType": "confidential"}, "InvalidClientMetadataException"),
        ({"redirectUris": ["https://example.com/cb"]}, "InvalidRedirectUriException"),
        ({"redirectUris": ["http://10.0.0.1/cb"]}, "InvalidRedirectUriException"),
        ({"grantTypes": ["password"]}, "UnsupportedGrantTypeException"),
        ({"grantTypes": [AUTH_CODE_GRANT]}, "InvalidClientMetadataException"),
        ({"scopes": ["bad scope"]}, "InvalidScopeException"),
        ({"issuerUrl": "http://not-https"}, "InvalidRequestException"),
    ],
)
async def test_registration_is_validated(oidc: Any, members: dict[str, Any], code: str) -> None:
    request = {"clientName": "c", "clientType": "public", **members}
    with pytest.raises(oidc.exceptions.ClientError) as caught:
        await oidc.register_client(**request)
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# -- device code flow ---------------------------------------------------------------


async def test_device_flow_end_to_end(emu: Emulator, oidc: Any) -> None:
    reg = await register(oidc)
    started = await start(oidc, reg)
    assert started["verificationUri"] == f"{emu.url}/device"
    assert started["verificationUriComplete"] == (
        f"{emu.url}/device?user_code={started['userCode']}"
    )
    assert (started["expiresIn"], started["interval"]) == (600, 0)

    with pytest.raises(oidc.exceptions.AuthorizationPendingException) as pending:
        await poll(oidc, reg, started["deviceCode"])
    assert pending.value.response["error"] == "authorization_pending"
    assert pending.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    assert (await visit(started["verificationUriComplete"]))[0] == 200
    token = await poll(oidc, reg, started["deviceCode"])
    assert token["tokenType"] == "Bearer"
    assert token["expiresIn"] == emu.config.access_token_ttl
    assert token["accessToken"]
    assert token["refreshToken"]
    assert emu.calls["CreateToken"] == 2
    assert emu.calls["VerifyDevice"] == 1


async def test_device_code_is_single_use(oidc: Any) -> None:
    reg = await register(oidc)
    started = await start(oidc, reg)
    await visit(started["verificationUriComplete"])
    await poll(oidc, reg, started["deviceCode"])
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await poll(oidc, reg, started["deviceCode"])


async def test_device_code_belongs_to_its_client(oidc: Any) -> None:
    owner, other = await register(oidc), await register(oidc)
    started = await start(oidc, owner)
    await visit(started["verificationUriComplete"])
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await poll(oidc, other, started["deviceCode"])


async def test_polling_too_fast_earns_slow_down(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    emu.config.poll_interval = 1
    reg = await register(oidc)
    started = await start(oidc, reg)
    assert started["interval"] == 1
    with pytest.raises(oidc.exceptions.AuthorizationPendingException):
        await poll(oidc, reg, started["deviceCode"])
    with pytest.raises(oidc.exceptions.SlowDownException) as slow:
        await poll(oidc, reg, started["deviceCode"])
    assert slow.value.response["error"] == "slow_down"
    # RFC 8628 §3.5: every slow_down adds 5 s to the interval, for good.
    clock.advance(1)
    with pytest.raises(oidc.exceptions.SlowDownException):
        await poll(oidc, reg, started["deviceCode"])  # 1 s < 6 s: now 11 s are due
    clock.advance(11)
    with pytest.raises(oidc.exceptions.AuthorizationPendingException):
        await poll(oidc, reg, started["deviceCode"])


async def test_device_code_expires(emu: Emulator, oidc: Any, clock: ManualClock) -> None:
    reg = await register(oidc)
    started = await start(oidc, reg)
    clock.advance(started["expiresIn"])
    with pytest.raises(oidc.exceptions.ExpiredTokenException) as expired:
        await poll(oidc, reg, started["deviceCode"])
    assert expired.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    status, _ = await visit(started["verificationUriComplete"])
    assert status == 400


@pytest.mark.parametrize("how", ["page", "auto_approve", "python"])
async def test_denied_device_code(emu: Emulator, oidc: Any, how: str) -> None:
    reg = await register(oidc)
    started = await start(oidc, reg)
    if how == "page":
        await visit(started["verificationUriComplete"] + "&deny=1")
    elif how == "auto_approve":
        emu.auto_approve = False
        await visit(started["verificationUriComplete"])
    else:
        emu.deny_device(started["userCode"].lower())
    with pytest.raises(oidc.exceptions.AccessDeniedException) as denied:
        await poll(oidc, reg, started["deviceCode"])
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(LookupError):
        emu.approve_device(started["userCode"])


async def test_python_approval(emu: Emulator, oidc: Any) -> None:
    reg = await register(oidc)
    started = await start(oidc, reg)
    emu.approve_device(started["userCode"].replace("-", ""))
    assert (await poll(oidc, reg, started["deviceCode"]))["accessToken"]


async def test_legacy_registration_gets_no_refresh_token(oidc: Any) -> None:
    reg = await register(oidc, scopes=())
    assert (await device_login(oidc, reg)).refresh_token is None


@pytest.mark.parametrize("wrong", ["secret", "client"])
async def test_bad_client_credentials_are_401(oidc: Any, wrong: str) -> None:
    reg = await register(oidc)
    with pytest.raises(oidc.exceptions.InvalidClientException) as caught:
        await oidc.start_device_authorization(
            clientId=reg.client_id + ("x" if wrong == "client" else ""),
            clientSecret=reg.client_secret + ("x" if wrong == "secret" else ""),
            startUrl=DEFAULT_START_URL,
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert caught.value.response["error"] == "invalid_client"


async def test_expired_registration_is_refused(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    reg = await register(oidc)
    clock.advance(emu.config.registration_ttl)
    with pytest.raises(oidc.exceptions.InvalidClientException):
        await start(oidc, reg)


async def test_start_url_and_grant_are_checked(oidc: Any) -> None:
    reg = await register(oidc)
    with pytest.raises(oidc.exceptions.InvalidRequestException):
        await oidc.start_device_authorization(
            clientId=reg.client_id, clientSecret=reg.client_secret, startUrl="ftp://x"
        )
    code_only = await register(oidc, grantTypes=[AUTH_CODE_GRANT], redirectUris=[REDIRECT])
    with pytest.raises(oidc.exceptions.UnauthorizedClientException):
        await start(oidc, code_only)
    with pytest.raises(oidc.exceptions.UnsupportedGrantTypeException):
        await oidc.create_token(
            clientId=reg.client_id, clientSecret=reg.client_secret, grantType="password"
        )


# -- authorization code + PKCE ------------------------------------------------------


async def code_client(oidc: Any) -> ClientRegistration:
    return await register(
        oidc, grantTypes=[AUTH_CODE_GRANT, "refresh_token"], redirectUris=[REDIRECT]
    )


def authorize_url(emu: Emulator, reg: ClientRegistration, verifier: str, **overrides: str) -> str:
    params = {
        "response_type": "code",
        "client_id": reg.client_id,
        "redirect_uri": CALLBACK,
        "state": "state-123",
        "code_challenge_method": "S256",
        "scopes": "sso:account:access",
        "code_challenge": s256(verifier),
        **overrides,
    }
    return f"{emu.url}/authorize?{urlencode(params)}"


async def authorize(url: str) -> dict[str, str]:
    status, location = await visit(url)
    assert status == 302
    assert location is not None
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def redeem(
    oidc: Any, reg: ClientRegistration, code: str, verifier: str, redirect_uri: str = CALLBACK
) -> dict[str, Any]:
    answer: dict[str, Any] = await oidc.create_token(
        clientId=reg.client_id,
        clientSecret=reg.client_secret,
        grantType=AUTH_CODE_GRANT,
        code=code,
        redirectUri=redirect_uri,
        codeVerifier=verifier,
    )
    return answer


def new_verifier() -> str:
    return secrets.token_urlsafe(48)[:64]


async def test_auth_code_flow_with_pkce(emu: Emulator, oidc: Any) -> None:
    reg = await code_client(oidc)
    verifier = new_verifier()
    redirect = await authorize(authorize_url(emu, reg, verifier))
    assert redirect["state"] == "state-123"
    token = await redeem(oidc, reg, redirect["code"], verifier)
    assert token["accessToken"]
    assert token["refreshToken"]
    assert emu.calls["Authorize"] == 1


async def test_bad_verifier_is_rejected_and_burns_the_code(emu: Emulator, oidc: Any) -> None:
    reg = await code_client(oidc)
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, reg, verifier)))["code"]
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await redeem(oidc, reg, code, new_verifier())
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await redeem(oidc, reg, code, verifier)


async def test_reused_code_is_rejected_and_revokes_its_session(emu: Emulator, oidc: Any) -> None:
    reg = await code_client(oidc)
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, reg, verifier)))["code"]
    token = await redeem(oidc, reg, code, verifier)
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await redeem(oidc, reg, code, verifier)
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await refresh(oidc, reg, token["refreshToken"])


async def test_redirect_uri_must_match_the_authorize_request(emu: Emulator, oidc: Any) -> None:
    reg = await code_client(oidc)
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, reg, verifier)))["code"]
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await redeem(oidc, reg, code, verifier, redirect_uri=REDIRECT)


async def test_auth_code_expires(emu: Emulator, oidc: Any, clock: ManualClock) -> None:
    reg = await code_client(oidc)
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, reg, verifier)))["code"]
    clock.advance(emu.config.auth_code_ttl)
    with pytest.raises(oidc.exceptions.ExpiredTokenException):
        await redeem(oidc, reg, code, verifier)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scopes": "sso:account:access admin:everything"}, "invalid_scope"),
        ({"state": ""}, "invalid_request"),
    ],
)
async def test_authorize_errors_go_back_to_the_client(
    emu: Emulator, oidc: Any, overrides: dict[str, str], error: str
) -> None:
    reg = await code_client(oidc)
    redirect = await authorize(authorize_url(emu, reg, new_verifier(), **overrides))
    assert redirect["error"] == error
    assert "code" not in redirect


async def test_denied_authorization_redirects_with_access_denied(emu: Emulator, oidc: Any) -> None:
    emu.auto_approve = False
    reg = await code_client(oidc)
    redirect = await authorize(authorize_url(emu, reg, new_verifier()))
    assert redirect == {
        "error": "access_denied",
        "error_description": "The user denied the authorization request",
        "state": "state-123",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "nobody"},
        {"redirect_uri": "http://127.0.0.1:43210/elsewhere"},
        {"redirect_uri": "http://evil.example/oauth/callback"},
        {"redirect_uri": ""},
    ],
)
async def test_authorize_never_redirects_to_an_unregistered_uri(
    emu: Emulator, oidc: Any, overrides: dict[str, str]
) -> None:
    reg = await code_client(oidc)
    status, location = await visit(authorize_url(emu, reg, new_verifier(), **overrides))
    assert (status, location) == (400, None)


async def test_authorize_needs_a_live_auth_code_client(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    device_only = await register(oidc, redirectUris=[REDIRECT])
    redirect = await authorize(authorize_url(emu, device_only, new_verifier()))
    assert redirect["error"] == "unauthorized_client"
    reg = await code_client(oidc)
    clock.advance(emu.config.registration_ttl)
    assert (await visit(authorize_url(emu, reg, new_verifier())))[0] == 400


# -- refresh ------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_dies(oidc: Any) -> None:
    reg = await register(oidc)
    first = await device_login(oidc, reg)
    assert first.refresh_token is not None
    second = await refresh(oidc, reg, first.refresh_token)
    assert second["refreshToken"] != first.refresh_token
    assert second["accessToken"] != first.access_token
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await refresh(oidc, reg, first.refresh_token)
    assert (await refresh(oidc, reg, second["refreshToken"]))["refreshToken"]


async def test_refresh_token_is_bound_to_its_client(oidc: Any) -> None:
    owner, other = await register(oidc), await register(oidc)
    tokens = await device_login(oidc, owner)
    assert tokens.refresh_token is not None
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await refresh(oidc, other, tokens.refresh_token)


@pytest.mark.parametrize("ending", ["revoke", "expire", "session_ttl"])
async def test_refresh_token_dies_with_its_session(
    emu: Emulator, oidc: Any, clock: ManualClock, ending: str
) -> None:
    emu.config.update({"refresh_token_ttl": 3600, "access_token_ttl": 600})
    reg = await register(oidc)
    tokens = await device_login(oidc, reg)
    assert tokens.refresh_token is not None
    if ending == "revoke":
        assert emu.revoke_sessions() == 1
    elif ending == "expire":
        emu.expire_refresh_tokens()
    else:
        clock.advance(3600)
    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await refresh(oidc, reg, tokens.refresh_token)


async def test_refresh_needs_a_live_registration(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    emu.config.registration_ttl = 60
    reg = await register(oidc)
    tokens = await device_login(oidc, reg)
    assert tokens.refresh_token is not None
    clock.advance(60)
    with pytest.raises(oidc.exceptions.InvalidClientException):
        await refresh(oidc, reg, tokens.refresh_token)


# -- CreateTokenWithIAM (tests/testing/test_emulator_iam_token.py) ------------------


async def test_create_token_with_iam_is_routed_on_the_query_string(emu: Emulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/token?aws_iam=t", json={"clientId": "x"}) as response,
    ):
        # Unsigned: refused by the SigV4 front door before any grant is looked at.
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"].startswith(
            "MissingAuthenticationTokenException:"
        )
    assert emu.calls["CreateTokenWithIAM"] == 1
    assert emu.calls["CreateToken"] == 0


async def test_malformed_bodies_are_invalid_requests(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as http:
        for body in (b"{", b"[]", b'{"clientName": 5, "clientType": "public"}'):
            async with http.post(f"{emu.url}/client/register", data=body) as response:
                assert response.status == 400
                assert (await response.json())["error"] == "invalid_request"
        async with http.get(f"{emu.url}/no/such/thing") as response:
            assert response.status == 404
            assert response.headers["x-amzn-ErrorType"] == "UnknownOperationException"
