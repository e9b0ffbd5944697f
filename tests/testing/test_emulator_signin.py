"""AWS Sign-In (``aws login``) in the emulator, driven by botocore (protocols.md §4, §6.2, §7.3).

Most tests use aiobotocore's ``signin`` client (its method is
``create_oauth2_token``; only synchronous botocore also knows the
``create_o_auth2_token`` alias its login provider calls) with a DPoP proof built
here with ``cryptography`` exactly as botocore builds it (§4.4), added by a
``before-send`` handler that can also break it in every way a server must
notice. The reference tests at the end run botocore's own ``LoginProvider``
(its DPoP proofs come from awscrt) through a login cache file as ``aws login``
writes it: what the emulator accepts is exactly what botocore sends.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib
import json
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import anyio
import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import LoginInsufficientPermissions, LoginRefreshRequired
from cryptography.hazmat.primitives import serialization

from credd.clock import ManualClock
from credd.testing.emulator import Emulator, default_directory
from credd.testing.emulator.clients import Keys, aws_client, visit
from tests.support.configs import USER_ARN
from tests.support.home import Home
from tests.support.signin import (
    CALLBACK,
    SAME_DEVICE,
    Dpop,
    authorize,
    authorize_url,
    b64url,
    new_key,
    new_verifier,
    redeem,
)

CROSS_DEVICE = "arn:aws:signin:::devtools/cross-device"


def jwt_part(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    async with Emulator(clock).running() as emulator:
        yield emulator


@pytest.fixture
def dpop(clock: ManualClock) -> Dpop:
    return Dpop(clock)


@pytest.fixture
async def signin(emu: Emulator, dpop: Dpop) -> AsyncIterator[Any]:
    async with aws_client(emu.url, "signin", parameter_validation=False) as client:
        dpop.attach(client)
        yield client


async def refresh(signin: Any, refresh_token: str, client_id: str = SAME_DEVICE) -> dict[str, Any]:
    answer = await signin.create_oauth2_token(
        tokenInput={
            "clientId": client_id,
            "grantType": "refresh_token",
            "refreshToken": refresh_token,
        }
    )
    output: dict[str, Any] = answer["tokenOutput"]
    return output


async def login(emu: Emulator, signin: Any) -> dict[str, Any]:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    return await redeem(signin, code, verifier)


async def caller_arn(emu: Emulator, access_token: dict[str, str]) -> str:
    keys = Keys(
        access_token["accessKeyId"], access_token["secretAccessKey"], access_token["sessionToken"]
    )
    async with aws_client(emu.url, "sts", keys) as sts:
        arn: str = (await sts.get_caller_identity())["Arn"]
        return arn


def refused(caught: pytest.ExceptionInfo[Exception]) -> tuple[str, int, str]:
    """What botocore made of an error: shape, HTTP status, the ``error`` member."""
    response: dict[str, Any] = caught.value.response  # type: ignore[attr-defined]
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["error"],
    )


INVALID = ("ValidationException", 400, "INVALID_REQUEST")
EXPIRED = ("AccessDeniedException", 401, "TOKEN_EXPIRED")


# -- the whole login ------------------------------------------------------------------


async def test_same_device_login(
    emu: Emulator, signin: Any, dpop: Dpop, clock: ManualClock
) -> None:
    verifier = new_verifier()
    redirect = await authorize(authorize_url(emu, verifier))
    assert redirect["state"] == "3f2b6a1e-8c1d-4e5f-9a7b-0c1d2e3f4a5b"
    token = await redeem(signin, redirect["code"], verifier)
    assert token["tokenType"] == "aws_sigv4"
    assert token["expiresIn"] == 900
    assert set(token["accessToken"]) == {"accessKeyId", "secretAccessKey", "sessionToken"}
    assert token["accessToken"]["accessKeyId"].startswith("ASIA")
    assert token["refreshToken"]
    assert jwt_part(token["idToken"], 0)["alg"] == "ES256"
    claims = jwt_part(token["idToken"], 1)
    assert claims["sub"] == USER_ARN
    assert claims["aud"] == SAME_DEVICE
    assert claims["iat"] == int(clock.now().timestamp())
    assert await caller_arn(emu, token["accessToken"]) == USER_ARN
    assert emu.calls["SigninAuthorize"] == emu.calls["CreateOAuth2Token"] == 1
    # Bound to the RFC 7638 thumbprint of the proof's key (the model's cnf.jkt).
    jwk = dpop.jwk()
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    (session,) = emu.state.signin.sessions.values()
    assert session.jkt == b64url(hashlib.sha256(members.encode()).digest())


async def test_cross_device_login_through_the_confirmation_page(emu: Emulator, signin: Any) -> None:
    confirmation = f"{emu.url}/v1/sessions/confirmation"
    verifier = new_verifier()
    url = authorize_url(emu, verifier, client_id=CROSS_DEVICE, redirect_uri=confirmation)
    await authorize(url, confirmation)
    # The user's browser follows the redirect; the page shows the code to paste.
    async with aiohttp.ClientSession() as http, http.get(url) as page:
        assert page.status == 200
        assert page.url.path == "/v1/sessions/confirmation"
        text = await page.text()
    shown = text.split('id="verification-code">', 1)[1].split("<", 1)[0]
    pasted = {k: v[0] for k, v in parse_qs(base64.b64decode(shown).decode()).items()}
    assert set(pasted) == {"code", "state"}
    token = await redeem(
        signin, pasted["code"], verifier, redirect_uri=confirmation, client_id=CROSS_DEVICE
    )
    assert jwt_part(token["idToken"], 1)["aud"] == CROSS_DEVICE
    # Once redeemed, the page no longer shows the code.
    assert (await visit(f"{confirmation}?{urlencode(pasted)}"))[0] == 400
    assert emu.calls["SigninConfirmation"] == 2


async def test_the_signin_principal_comes_from_the_directory(clock: ManualClock) -> None:
    arn = "arn:aws:sts::222222222222:assumed-role/Admin/alice"
    directory = dataclasses.replace(default_directory(), signin_principal=arn)
    async with (
        Emulator(clock, directory=directory).running() as emu,
        aws_client(emu.url, "signin") as client,
    ):
        Dpop(clock).attach(client)
        token = await login(emu, client)
        assert jwt_part(token["idToken"], 1)["sub"] == arn
        assert await caller_arn(emu, token["accessToken"]) == arn
    with pytest.raises(ValueError, match="not an IAM user"):
        Emulator(directory=dataclasses.replace(directory, signin_principal="alice"))


# -- /v1/authorize --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "openid profile"}, "invalid_scope"),
        ({"state": ""}, "invalid_request"),
    ],
)
async def test_authorize_errors_go_back_to_the_validated_redirect(
    emu: Emulator, overrides: dict[str, str], error: str
) -> None:
    redirect = await authorize(authorize_url(emu, new_verifier(), **overrides))
    assert redirect["error"] == error
    assert "code" not in redirect


@pytest.mark.parametrize(
    ("client_id", "redirect_uri"),
    [
        ("arn:aws:signin:::devtools/other-device", CALLBACK),
        (SAME_DEVICE, "http://127.0.0.1/oauth/callback"),
        (SAME_DEVICE, "http://localhost:43210/oauth/callback"),
        (SAME_DEVICE, "http://127.0.0.1:43210/elsewhere"),
        (SAME_DEVICE, "https://evil.example/oauth/callback"),
        (SAME_DEVICE, "http://evil@127.0.0.1:43210/oauth/callback"),
        (SAME_DEVICE, CALLBACK + "?next=x"),
        (SAME_DEVICE, "{base}/v1/sessions/confirmation"),
        (CROSS_DEVICE, CALLBACK),
        (CROSS_DEVICE, "https://us-east-1.signin.aws.amazon.com/v1/sessions/confirmation"),
        (SAME_DEVICE, ""),
    ],
)
async def test_authorize_never_redirects_to_an_unvalidated_uri(
    emu: Emulator, client_id: str, redirect_uri: str
) -> None:
    url = authorize_url(
        emu, new_verifier(), client_id=client_id, redirect_uri=redirect_uri.format(base=emu.url)
    )
    assert await visit(url) == (400, None)


async def test_repeated_parameters_are_refused(emu: Emulator) -> None:
    url = authorize_url(emu, new_verifier()) + "&redirect_uri=" + "http%3A%2F%2Fevil.example%2F"
    assert await visit(url) == (400, None)


async def test_denied_authorization(emu: Emulator) -> None:
    emu.auto_approve = False
    redirect = await authorize(authorize_url(emu, new_verifier()))
    assert redirect["error"] == "access_denied"
    assert redirect["state"] == "3f2b6a1e-8c1d-4e5f-9a7b-0c1d2e3f4a5b"
    confirmation = f"{emu.url}/v1/sessions/confirmation"
    url = authorize_url(emu, new_verifier(), client_id=CROSS_DEVICE, redirect_uri=confirmation)
    async with aiohttp.ClientSession() as http, http.get(url) as page:
        text = await page.text()
    assert '<p id="error">access_denied</p>' in text
    assert "verification-code" not in text


# -- code redemption ------------------------------------------------------------------


async def test_wrong_verifier_is_refused_and_burns_the_code(emu: Emulator, signin: Any) -> None:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await redeem(signin, code, new_verifier())
    assert refused(caught) == INVALID
    with pytest.raises(signin.exceptions.ValidationException):
        await redeem(signin, code, verifier)


async def test_reused_code_is_refused_and_revokes_its_session(emu: Emulator, signin: Any) -> None:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    token = await redeem(signin, code, verifier)
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await redeem(signin, code, verifier)
    assert refused(caught) == INVALID
    with pytest.raises(signin.exceptions.AccessDeniedException) as denied:
        await refresh(signin, token["refreshToken"])
    assert refused(denied) == EXPIRED


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uri": "http://127.0.0.1:43211/oauth/callback"},
        {"client_id": CROSS_DEVICE},
    ],
)
async def test_code_is_bound_to_its_client_and_redirect_uri(
    emu: Emulator, signin: Any, overrides: dict[str, str]
) -> None:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    with pytest.raises(signin.exceptions.ValidationException):
        await redeem(signin, code, verifier, **overrides)


async def test_expired_code_is_authcode_expired(
    emu: Emulator, signin: Any, clock: ManualClock
) -> None:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    clock.advance(emu.config.signin_code_ttl)
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await redeem(signin, code, verifier)
    assert refused(caught) == ("AccessDeniedException", 401, "AUTHCODE_EXPIRED")


# -- DPoP -----------------------------------------------------------------------------


def _other_key_jwk(dpop: Dpop) -> None:
    dpop.header["jwk"] = Dpop(dpop.clock).jwk()


def _private_jwk(dpop: Dpop) -> None:
    private = dpop.key.private_numbers().private_value.to_bytes(32, "big")
    dpop.header["jwk"] = {**dpop.jwk(), "d": b64url(private)}


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        pytest.param(lambda d: setattr(d, "enabled", False), "header is missing", id="missing"),
        pytest.param(lambda d: setattr(d, "forge", True), "does not verify", id="bad-signature"),
        pytest.param(_other_key_jwk, "does not verify", id="jwk-of-another-key"),
        pytest.param(_private_jwk, "private d", id="jwk-with-d"),
        pytest.param(
            lambda d: d.header["jwk"].update(y=b64url(b"\x01" * 32)), "not a point", id="off-curve"
        ),
        pytest.param(lambda d: d.header.update(typ="JWT"), "typ must be dpop+jwt", id="typ"),
        pytest.param(lambda d: d.header.update(alg="ES384"), "alg must be ES256", id="alg"),
        pytest.param(lambda d: d.header["jwk"].update(crv="P-384"), "EC P-256", id="crv"),
        pytest.param(lambda d: d.claims.update(htm="GET"), "htm must be POST", id="htm"),
        pytest.param(
            lambda d: d.claims.update(htu="http://127.0.0.1:1/v1/token"), "htu", id="htu-port"
        ),
        pytest.param(lambda d: d.claims.update(htu="{base}/v1/tokens"), "htu", id="htu-path"),
        pytest.param(
            lambda d: d.claims.update(htu="https://us-east-1.signin.aws.amazon.com/v1/token"),
            "htu",
            id="htu-aws",
        ),
        pytest.param(lambda d: setattr(d, "skew", -301), "iat is more than", id="iat-stale"),
        pytest.param(lambda d: setattr(d, "skew", 301), "iat is more than", id="iat-future"),
        pytest.param(lambda d: d.claims.update(iat="now"), "iat must be", id="iat-string"),
        pytest.param(lambda d: d.claims.update(jti=""), "jti must be", id="jti-empty"),
        pytest.param(lambda d: setattr(d, "replay", "not.a-proof"), "compact JWS", id="garbage"),
    ],
)
async def test_bad_proofs_are_refused_before_the_code_is_spent(
    emu: Emulator, signin: Any, dpop: Dpop, breakage: Callable[[Dpop], None], reason: str
) -> None:
    dpop.header["jwk"] = dpop.jwk()
    breakage(dpop)
    if isinstance(dpop.claims.get("htu"), str):
        dpop.claims["htu"] = dpop.claims["htu"].format(base=emu.url)
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await redeem(signin, code, verifier)
    assert refused(caught) == INVALID
    message = caught.value.response["Error"]["Message"]
    assert message.startswith("Invalid DPoP proof: ")
    assert reason in message
    # The proof is checked first: the code was not spent.
    dpop.__dict__.update(Dpop(dpop.clock, dpop.key).__dict__)
    assert (await redeem(signin, code, verifier))["refreshToken"]


async def test_only_one_proof_per_request(emu: Emulator, dpop: Dpop) -> None:
    url = f"{emu.url}/v1/token"
    headers = [("DPoP", dpop.proof(url)), ("DPoP", dpop.proof(url))]
    body = {"clientId": SAME_DEVICE, "grantType": "refresh_token", "refreshToken": "x"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=headers) as response,
    ):
        assert response.status == 400
        assert (await response.json())["message"] == "Invalid DPoP proof: more than one DPoP header"


@pytest.mark.parametrize("skew", [-299, 299])
async def test_iat_tolerance_is_five_minutes(
    signin: Any, emu: Emulator, dpop: Dpop, skew: int
) -> None:
    dpop.skew = skew
    assert (await login(emu, signin))["refreshToken"]


async def test_stale_proof_after_the_clock_moves(
    emu: Emulator, signin: Any, dpop: Dpop, clock: ManualClock
) -> None:
    token = await login(emu, signin)
    dpop.replay = dpop.proof(f"{emu.url}/v1/token")
    clock.advance(301)
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await refresh(signin, token["refreshToken"])
    assert "iat" in caught.value.response["Error"]["Message"]


async def test_replayed_proofs_are_refused(emu: Emulator, signin: Any, dpop: Dpop) -> None:
    token = await login(emu, signin)
    dpop.replay = dpop.sent[-1]  # the very same proof again
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await refresh(signin, token["refreshToken"])
    assert "jti" in caught.value.response["Error"]["Message"]
    dpop.replay = None
    dpop.claims["jti"] = jwt_part(dpop.sent[0], 1)["jti"]  # a new proof, an old id
    with pytest.raises(signin.exceptions.ValidationException):
        await refresh(signin, token["refreshToken"])
    dpop.claims.clear()
    assert (await refresh(signin, token["refreshToken"]))["refreshToken"]


async def test_htu_is_the_url_the_client_addressed(emu: Emulator, dpop: Dpop) -> None:
    # The Host header decides; RFC 3986 normalization (case, default port) applies.
    port = urlsplit(emu.url).port
    body = {"clientId": SAME_DEVICE, "grantType": "refresh_token", "refreshToken": "unknown"}
    cases = [
        (f"localhost:{port}", f"http://localhost:{port}/v1/token", "Invalid refresh token"),
        (f"localhost:{port}", f"{emu.url}/v1/token", "Invalid DPoP proof: htu"),
        ("signin.test", "HTTP://SIGNIN.test:80/v1/token?ignored=1", "Invalid refresh token"),
        ("signin.test", "https://signin.test/v1/token", "Invalid DPoP proof: htu"),
    ]
    async with aiohttp.ClientSession() as http:
        for host, htu, message in cases:
            dpop.claims["htu"] = htu
            headers = {"Host": host, "DPoP": dpop.proof(emu.url)}
            async with http.post(f"{emu.url}/v1/token", json=body, headers=headers) as response:
                assert response.status == 400
                assert (await response.json())["message"].startswith(message), (host, htu)


# -- refresh --------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_is_refused(emu: Emulator, signin: Any) -> None:
    first = await login(emu, signin)
    second = await refresh(signin, first["refreshToken"])
    assert second["refreshToken"] != first["refreshToken"]
    assert second["accessToken"]["accessKeyId"] != first["accessToken"]["accessKeyId"]
    assert "idToken" not in second
    assert second["tokenType"] == "aws_sigv4"
    assert second["expiresIn"] == 900
    assert await caller_arn(emu, second["accessToken"]) == USER_ARN
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await refresh(signin, first["refreshToken"])
    assert refused(caught) == EXPIRED
    # Strict single use does not end the session: the newest token still works.
    assert (await refresh(signin, second["refreshToken"]))["refreshToken"]


async def test_refresh_needs_the_key_the_token_is_bound_to(
    emu: Emulator, signin: Any, dpop: Dpop
) -> None:
    token = await login(emu, signin)
    own_key, dpop.key = dpop.key, new_key()
    with pytest.raises(signin.exceptions.ValidationException) as caught:
        await refresh(signin, token["refreshToken"])
    assert refused(caught) == INVALID
    assert "bound to another key" in caught.value.response["Error"]["Message"]
    dpop.key = own_key
    assert (await refresh(signin, token["refreshToken"]))["refreshToken"]


async def test_refresh_token_is_bound_to_its_client(emu: Emulator, signin: Any) -> None:
    token = await login(emu, signin)
    with pytest.raises(signin.exceptions.ValidationException):
        await refresh(signin, token["refreshToken"], client_id=CROSS_DEVICE)
    with pytest.raises(signin.exceptions.ValidationException):
        await refresh(signin, "srt-never-issued")


async def test_session_lifetime(emu: Emulator, signin: Any, clock: ManualClock) -> None:
    assert emu.config.signin_session_ttl == 12 * 3600
    emu.config.update({"signin_session_ttl": 3600})
    token = await login(emu, signin)
    clock.advance(3600 - 100)
    # Credentials never outlive the session.
    token = await refresh(signin, token["refreshToken"])
    assert token["expiresIn"] == 100
    clock.advance(100)
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await refresh(signin, token["refreshToken"])
    assert refused(caught) == EXPIRED


async def test_credentials_expire(emu: Emulator, signin: Any, clock: ManualClock) -> None:
    emu.config.update({"signin_credentials_ttl": 60})
    token = await login(emu, signin)
    assert token["expiresIn"] == 60
    clock.advance(60)
    async with aws_client(
        emu.url,
        "sts",
        Keys(
            token["accessToken"]["accessKeyId"],
            token["accessToken"]["secretAccessKey"],
            token["accessToken"]["sessionToken"],
        ),
    ) as sts:
        with pytest.raises(sts.exceptions.ClientError) as caught:
            await sts.get_caller_identity()
    assert caught.value.response["Error"]["Code"] == "ExpiredToken"
    with pytest.raises(ValueError, match="at most 900"):
        emu.config.update({"signin_credentials_ttl": 901})


@pytest.mark.parametrize("ending", ["revoke", "expire"])
async def test_admin_ends_the_session(emu: Emulator, signin: Any, ending: str) -> None:
    token = await login(emu, signin)
    if ending == "revoke":
        assert emu.revoke_sessions() == 1
    else:
        emu.expire_refresh_tokens()
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await refresh(signin, token["refreshToken"])
    assert refused(caught) == EXPIRED


async def test_user_credentials_changed(emu: Emulator, signin: Any) -> None:
    token = await login(emu, signin)
    assert emu.signin_change_user_credentials() == 1
    for _ in range(2):  # and it stays that way
        with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
            await refresh(signin, token["refreshToken"])
        assert refused(caught) == ("AccessDeniedException", 403, "USER_CREDENTIALS_CHANGED")
    assert (await login(emu, signin))["refreshToken"]  # signing in again works


async def test_insufficient_permissions_on_both_grants(emu: Emulator, signin: Any) -> None:
    token = await login(emu, signin)
    emu.signin_deny_permission()
    denied = ("AccessDeniedException", 403, "INSUFFICIENT_PERMISSIONS")
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await refresh(signin, token["refreshToken"])
    assert refused(caught) == denied
    with pytest.raises(signin.exceptions.AccessDeniedException) as caught:
        await login(emu, signin)
    assert refused(caught) == denied
    emu.signin_deny_permission(False)
    assert (await refresh(signin, token["refreshToken"]))["refreshToken"]


# -- errors on the wire, faults --------------------------------------------------------


async def test_error_shape_on_the_wire(emu: Emulator) -> None:
    body = {"clientId": SAME_DEVICE, "grantType": "refresh_token", "refreshToken": "x"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/v1/token", json=body) as response,
    ):
        assert response.status == 400
        assert response.headers["x-amzn-ErrorType"] == "ValidationException"
        assert response.headers["x-amzn-RequestId"]
        assert response.content_type == "application/json"
        answer = await response.json()
    assert answer == {
        "error": "INVALID_REQUEST",
        "message": "Invalid DPoP proof: the DPoP header is missing",
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"tokenInput": {"clientId": SAME_DEVICE, "grantType": "refresh_token"}},
            "clientId is required",
        ),
        (
            {"client_id": SAME_DEVICE, "grant_type": "refresh_token", "refresh_token": "x"},
            "clientId is required",
        ),
        (
            {"clientId": "arn:aws:signin:::devtools/other", "grantType": "refresh_token"},
            "at 'clientId'",
        ),
        ({"clientId": SAME_DEVICE, "grantType": "password"}, "at 'grantType'"),
        ({"clientId": SAME_DEVICE, "grantType": "refresh_token"}, "refreshToken is required"),
        (
            {"clientId": SAME_DEVICE, "grantType": "authorization_code", "code": "c"},
            "redirectUri is required",
        ),
        (
            {
                "clientId": SAME_DEVICE,
                "grantType": "authorization_code",
                "code": "c",
                "redirectUri": CALLBACK,
                "codeVerifier": "too-short",
            },
            "at 'codeVerifier'",
        ),
        (
            {"clientId": SAME_DEVICE, "grantType": "refresh_token", "refreshToken": "x" * 2049},
            "at 'refreshToken'",
        ),
        (
            "clientId=arn%3Aaws%3Asignin%3A%3A%3Adevtools%2Fsame-device&grantType=refresh_token",
            "not valid JSON",
        ),
    ],
)
async def test_malformed_requests_are_invalid(
    emu: Emulator, dpop: Dpop, body: dict[str, Any] | str, reason: str
) -> None:
    # Only the camelCase JSON object every SDK sends is accepted (protocols.md §4.2).
    headers = {"DPoP": dpop.proof(f"{emu.url}/v1/token")}
    if isinstance(body, str):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        data = body.encode()
    else:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/v1/token", data=data, headers=headers) as response,
    ):
        assert response.status == 400
        answer = await response.json()
    assert answer["error"] == "INVALID_REQUEST"
    assert reason in answer["message"]


async def test_faults(emu: Emulator, signin: Any) -> None:
    token = await login(emu, signin)
    emu.faults.add("CreateOAuth2Token", error_code="TooManyRequestsError", message="Slow down")
    emu.faults.add("CreateOAuth2Token")
    emu.faults.add("CreateOAuth2Token", error_code="USER_CREDENTIALS_CHANGED")
    with pytest.raises(signin.exceptions.TooManyRequestsError) as throttled:
        await refresh(signin, token["refreshToken"])
    assert refused(throttled) == ("TooManyRequestsError", 429, "INVALID_REQUEST")
    assert throttled.value.response["Error"]["Message"] == "Slow down"
    with pytest.raises(signin.exceptions.InternalServerException) as failed:
        await refresh(signin, token["refreshToken"])
    assert refused(failed) == ("InternalServerException", 500, "server_error")
    with pytest.raises(signin.exceptions.AccessDeniedException) as denied:
        await refresh(signin, token["refreshToken"])
    assert refused(denied) == ("AccessDeniedException", 403, "USER_CREDENTIALS_CHANGED")
    # The faults answered before the operation: the refresh token is still good.
    assert (await refresh(signin, token["refreshToken"]))["refreshToken"]
    emu.faults.add("SigninAuthorize", status=503)
    assert (await visit(authorize_url(emu, new_verifier())))[0] == 503
    assert emu.calls["CreateOAuth2Token"] == 5


async def test_a_retry_after_a_fault_may_resend_the_same_proof(emu: Emulator, dpop: Dpop) -> None:
    # botocore adds the proof before-call, once per call: its retries resend it (§4.4).
    async with aws_client(emu.url, "signin", attempts=2) as client:
        dpop.attach(client)
        token = await login(emu, client)
        dpop.replay = dpop.proof(f"{emu.url}/v1/token")
        emu.faults.add("CreateOAuth2Token")
        answer = await client.create_oauth2_token(
            tokenInput={
                "clientId": SAME_DEVICE,
                "grantType": "refresh_token",
                "refreshToken": token["refreshToken"],
            }
        )
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert dpop.sent[-1] == dpop.sent[-2]


async def test_create_token_with_iam_is_routed_and_refused(emu: Emulator) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/v1/token?x-amz-client-auth-method=iam", json={}) as response,
    ):
        assert response.status == 400
        assert response.headers["x-amzn-ErrorType"] == "ValidationException"
    assert emu.calls["CreateOAuth2TokenWithIAM"] == 1
    assert emu.calls["CreateOAuth2Token"] == 0


# -- synchronous botocore (boto3), as SDK users and the AWS CLI send requests -----------


def _boto3_login(url: str, dpop: Dpop, code: str, verifier: str) -> dict[str, Any]:
    """Code exchange, a refresh, and the old refresh token again: TOKEN_EXPIRED."""
    client = boto3.client(
        "signin",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )
    dpop.attach(client)
    redeemed = client.create_o_auth2_token(  # botocore's alias of create_oauth2_token
        tokenInput={
            "clientId": SAME_DEVICE,
            "grantType": "authorization_code",
            "code": code,
            "redirectUri": CALLBACK,
            "codeVerifier": verifier,
        }
    )["tokenOutput"]
    grant = {"clientId": SAME_DEVICE, "grantType": "refresh_token"}
    refreshed = client.create_o_auth2_token(
        tokenInput={**grant, "refreshToken": redeemed["refreshToken"]}
    )["tokenOutput"]
    with pytest.raises(client.exceptions.AccessDeniedException) as caught:
        client.create_o_auth2_token(tokenInput={**grant, "refreshToken": redeemed["refreshToken"]})
    return {"redeemed": redeemed, "refreshed": refreshed, "reused": caught.value.response}


async def test_boto3_client(emu: Emulator, dpop: Dpop) -> None:
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    result = await anyio.to_thread.run_sync(_boto3_login, emu.url, dpop, code, verifier)
    assert jwt_part(result["redeemed"]["idToken"], 1)["sub"] == USER_ARN
    assert "idToken" not in result["refreshed"]
    assert await caller_arn(emu, result["refreshed"]["accessToken"]) == USER_ARN
    reused = result["reused"]
    assert reused["Error"]["Code"] == "AccessDeniedException"
    assert reused["error"] == "TOKEN_EXPIRED"
    assert reused["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert reused["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "AccessDeniedException"


# -- the reference client: botocore's LoginProvider (awscrt DPoP) ----------------------


def _cli_code_exchange(code: str, verifier: str, key_pem: str) -> dict[str, Any]:
    """CreateOAuth2Token(authorization_code) as ``aws login`` sends it: botocore's DPoP."""
    from botocore.credentials import _build_add_dpop_header_handler

    crt = importlib.import_module("awscrt.crypto")  # untyped: no stubs to check against
    der = base64.b64decode("".join(key_pem.splitlines()[1:-1]))
    # The endpoint comes from AWS_ENDPOINT_URL_SIGNIN, as for the CLI.
    client = boto3.session.Session().client(
        "signin", region_name="us-east-1", config=Config(signature_version=UNSIGNED)
    )
    client.meta.events.register(
        "before-call.signin.CreateOAuth2Token",
        _build_add_dpop_header_handler(crt.EC.new_key_from_der_data(der)),
    )
    answer = client.create_o_auth2_token(
        tokenInput={
            "clientId": SAME_DEVICE,
            "grantType": "authorization_code",
            "code": code,
            "redirectUri": CALLBACK,
            "codeVerifier": verifier,
        }
    )
    output: dict[str, Any] = answer["tokenOutput"]
    return output


@dataclass
class CliLogin:
    """What ``aws login`` leaves behind: the cache file and the profile (§6.2, §6.4)."""

    cache_file: Path
    session_name: str

    def read(self) -> dict[str, Any]:
        cached: dict[str, Any] = json.loads(self.cache_file.read_text())
        return cached


async def cli_login(emu: Emulator, home: Home, monkeypatch: pytest.MonkeyPatch) -> CliLogin:
    pytest.importorskip("awscrt", reason="botocore's login provider needs awscrt (botocore[crt])")
    cache_dir = home.root / "login-cache"
    monkeypatch.setenv("AWS_LOGIN_CACHE_DIRECTORY", str(cache_dir))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SIGNIN", emu.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emu.url)
    key_pem = (
        new_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # SEC1: "EC PRIVATE KEY"
            serialization.NoEncryption(),
        )
        .decode()
    )
    verifier = new_verifier()
    code = (await authorize(authorize_url(emu, verifier)))["code"]
    token = await anyio.to_thread.run_sync(_cli_code_exchange, code, verifier, key_pem)
    session_name = jwt_part(token["idToken"], 1)["sub"]
    # Nearly expired, as after a while: botocore must refresh before using them.
    expires_at = datetime.now(UTC) + timedelta(seconds=60)
    cache_file = cache_dir / f"{hashlib.sha256(session_name.encode()).hexdigest()}.json"
    cache_dir.mkdir(mode=0o700)
    cache_file.write_text(
        json.dumps(
            {
                "accessToken": {
                    **token["accessToken"],
                    "accountId": session_name.split(":")[4],
                    "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                "tokenType": token["tokenType"],
                "clientId": SAME_DEVICE,
                "refreshToken": token["refreshToken"],
                "idToken": token["idToken"],
                "dpopKey": key_pem,
            }
        )
    )
    home.write_aws_config(
        textwrap.dedent(
            f"""\
            [profile signin]
            login_session = {session_name}
            region = us-east-1
            """
        )
    )
    return CliLogin(cache_file, session_name)


def _caller_identity_through_login_provider() -> tuple[dict[str, Any], str]:
    session = boto3.session.Session(profile_name="signin")
    sts = session.client("sts")
    identity: dict[str, Any] = sts.get_caller_identity()
    sts.get_caller_identity()  # fresh credentials: no second refresh
    credentials = session.get_credentials()
    assert credentials is not None
    assert credentials.method == "login"
    return identity, str(credentials.get_frozen_credentials().access_key)


async def test_botocore_login_provider_refreshes_through_the_emulator(
    emu: Emulator, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    login_ = await cli_login(emu, home, monkeypatch)
    before = login_.read()
    assert login_.session_name == USER_ARN
    identity, access_key = await anyio.to_thread.run_sync(_caller_identity_through_login_provider)
    assert identity["Arn"] == USER_ARN
    assert identity["Account"] == "111111111111"
    after = login_.read()
    assert after["refreshToken"] != before["refreshToken"]
    assert after["accessToken"]["accessKeyId"] == access_key != before["accessToken"]["accessKeyId"]
    assert after["idToken"] == before["idToken"]
    assert emu.calls["CreateOAuth2Token"] == 2  # the code exchange and one refresh


@pytest.mark.parametrize(
    ("cause", "raised"),
    [
        ("credentials_changed", LoginRefreshRequired),
        ("expired", LoginRefreshRequired),
        ("permission", LoginInsufficientPermissions),
    ],
)
async def test_botocore_login_provider_reads_the_error_codes(
    emu: Emulator,
    home: Home,
    monkeypatch: pytest.MonkeyPatch,
    cause: str,
    raised: type[Exception],
) -> None:
    await cli_login(emu, home, monkeypatch)
    if cause == "credentials_changed":
        emu.signin_change_user_credentials()
    elif cause == "expired":
        emu.expire_refresh_tokens()
    else:
        emu.signin_deny_permission()
    with pytest.raises(raised):
        await anyio.to_thread.run_sync(_caller_identity_through_login_provider)
