"""The emulator's console federation endpoint, driven as AWS's IAM User Guide shows it.

"Enable custom identity broker access to the AWS console": a plain HTTP
``GET /federation?Action=getSigninToken&SessionDuration=N&Session=<JSON>``
(the JSON ``{"sessionId", "sessionKey", "sessionToken"}`` URL-encoded), then
the browser's ``GET /federation?Action=login&Issuer=...&Destination=...&SigninToken=...``.
The credentials come from the emulator's own services, through real botocore
clients: the SSO portal, AssumeRole from IAM user keys and from a role session
(role chaining), and AWS Sign-In.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from credd.clock import ManualClock
from credd.testing.emulator import Emulator
from credd.testing.emulator.clients import (
    Keys,
    aws_client,
    device_login,
    register,
    role_keys,
    visit,
)
from credd.testing.emulator.federation import SIGNIN_TOKEN_TTL
from credd.testing.emulator.state import TemporaryCredentials
from tests.support.signin import Dpop, authorize, authorize_url, new_verifier, redeem

DEPLOY = "arn:aws:iam::222222222222:role/Deploy"
CONSOLE = "https://eu-west-1.console.aws.amazon.com/console/home?region=eu-west-1"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    async with Emulator(clock).running() as emulator:
        yield emulator


@pytest.fixture
async def sso_keys(emu: Emulator) -> Keys:
    async with aws_client(emu.url, "sso-oidc") as oidc, aws_client(emu.url, "sso") as sso:
        tokens = await device_login(oidc, await register(oidc))
        return await role_keys(sso, tokens.access_token, "111111111111", "ReadOnly")


async def assume(emu: Emulator, keys: Keys) -> Keys:
    async with aws_client(emu.url, "sts", keys) as sts:
        answer = await sts.assume_role(RoleArn=DEPLOY, RoleSessionName="console-test")
    creds = answer["Credentials"]
    return Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


async def signin_keys(emu: Emulator, clock: ManualClock) -> Keys:
    async with aws_client(emu.url, "signin", parameter_validation=False) as client:
        Dpop(clock).attach(client)
        verifier = new_verifier()
        code = (await authorize(authorize_url(emu, verifier)))["code"]
        token = (await redeem(client, code, verifier))["accessToken"]
    return Keys(token["accessKeyId"], token["secretAccessKey"], token["sessionToken"])


def expiry(emu: Emulator, keys: Keys) -> datetime:
    """When the emulator's temporary credentials ``keys`` expire."""
    issued = emu.state.credentials[keys.access_key_id]
    assert isinstance(issued, TemporaryCredentials)
    return issued.expires_at


def session_json(keys: Keys) -> str:
    return json.dumps(
        {
            "sessionId": keys.access_key_id,
            "sessionKey": keys.secret_access_key,
            "sessionToken": keys.session_token,
        }
    )


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as answer:
        return answer.status, await answer.text()


async def signin_token(
    emu: Emulator, keys: Keys | None = None, *, session: str | None = None, **params: str
) -> tuple[int, str]:
    """``getSigninToken``: (status, the token or the refusal's page)."""
    query = {"Action": "getSigninToken", **params}
    query["Session"] = session if session is not None else session_json(keys) if keys else ""
    status, text = await get(f"{emu.url}/federation?{urlencode(query)}")
    if status == 200:
        answer: dict[str, Any] = json.loads(text)
        assert set(answer) == {"SigninToken"}
        return status, str(answer["SigninToken"])
    return status, text


def login_url(emu: Emulator, token: str, destination: str = CONSOLE) -> str:
    query = {"Action": "login", "Issuer": "credd", "Destination": destination, "SigninToken": token}
    return f"{emu.url}/federation?{urlencode(query)}"


async def granted(emu: Emulator, keys: Keys, **params: str) -> str:
    status, token = await signin_token(emu, keys, **params)
    assert status == 200, token
    return token


# -- the documented flow ------------------------------------------------------------


async def test_sso_role_credentials_sign_in_for_the_session_duration_asked(
    emu: Emulator, sso_keys: Keys, clock: ManualClock
) -> None:
    token = await granted(emu, sso_keys, SessionDuration="1800")
    assert await visit(login_url(emu, token)) == (302, CONSOLE)
    [console] = emu.state.federation.console_sessions
    assert console.access_key_id == sso_keys.access_key_id
    assert console.principal.kind == "sso-role"
    assert console.issuer == "credd"
    assert console.destination == CONSOLE
    assert console.ends_at == clock.now() + timedelta(seconds=1800)
    assert emu.calls["GetSigninToken"] == emu.calls["FederationLogin"] == 1


async def test_without_session_duration_the_console_ends_with_the_credentials(
    emu: Emulator, sso_keys: Keys
) -> None:
    token = await granted(emu, sso_keys)
    assert await visit(login_url(emu, token)) == (302, CONSOLE)
    assert emu.state.federation.console_sessions[0].ends_at == expiry(emu, sso_keys)


async def test_a_signin_token_signs_in_once(emu: Emulator, sso_keys: Keys) -> None:
    token = await granted(emu, sso_keys)
    assert (await visit(login_url(emu, token)))[0] == 302
    status, page = await get(login_url(emu, token))
    assert status == 400
    assert "already been used" in page
    assert len(emu.state.federation.console_sessions) == 1


async def test_a_signin_token_lasts_fifteen_minutes(
    emu: Emulator, sso_keys: Keys, clock: ManualClock
) -> None:
    early, late = await granted(emu, sso_keys), await granted(emu, sso_keys)
    clock.advance(SIGNIN_TOKEN_TTL - 1)
    assert (await visit(login_url(emu, early)))[0] == 302
    clock.advance(1)
    status, page = await get(login_url(emu, late))
    assert status == 400
    assert "expired" in page


async def test_unknown_and_missing_tokens_are_refused(emu: Emulator) -> None:
    assert (await visit(login_url(emu, "fst-made-up")))[0] == 400
    status, _ = await get(f"{emu.url}/federation?Action=login&Destination={CONSOLE}")
    assert status == 400


@pytest.mark.parametrize(
    "destination",
    [
        "https://evil.example/console",
        "http://console.aws.amazon.com/",
        "https://console.aws.amazon.com.evil.example/",
        "https://user@console.aws.amazon.com/",
        "javascript:alert(1)",
        "",
    ],
)
async def test_login_redirects_only_to_the_console(
    emu: Emulator, sso_keys: Keys, destination: str
) -> None:
    token = await granted(emu, sso_keys)
    status, _ = await get(login_url(emu, token, destination))
    assert status == 400
    assert not emu.state.federation.console_sessions


@pytest.mark.parametrize(
    "destination",
    [
        "https://console.aws.amazon.com/console/home",
        "https://us-east-1.console.aws.amazon.com/s3/home?region=us-east-1",
        "https://console.amazonaws.cn/console/home?region=cn-north-1",
        "https://console.amazonaws-us-gov.com/console/home?region=us-gov-west-1",
    ],
)
async def test_every_console_is_a_destination(
    emu: Emulator, sso_keys: Keys, destination: str
) -> None:
    token = await granted(emu, sso_keys)
    assert await visit(login_url(emu, token, destination)) == (302, destination)


# -- which credentials, and SessionDuration -------------------------------------------


async def test_role_credentials_from_iam_user_keys_take_a_session_duration(
    emu: Emulator, clock: ManualClock
) -> None:
    user = emu.create_access_key("broker")
    role = await assume(emu, Keys(user.access_key_id, user.secret_access_key.reveal(), None))
    token = await granted(emu, role, SessionDuration="43200")
    assert (await visit(login_url(emu, token)))[0] == 302
    console = emu.state.federation.console_sessions[0]
    assert console.ends_at == clock.now() + timedelta(hours=12)


async def test_role_chaining_refuses_a_session_duration(emu: Emulator, sso_keys: Keys) -> None:
    chained = await assume(emu, sso_keys)
    status, page = await signin_token(emu, chained, SessionDuration="3600")
    assert status == 400
    assert "role chaining" in page
    # without it, the console session keeps the credentials' own end
    token = await granted(emu, chained)
    assert (await visit(login_url(emu, token)))[0] == 302
    assert emu.state.federation.console_sessions[0].ends_at == expiry(emu, chained)


async def test_signin_credentials_refuse_a_session_duration(
    emu: Emulator, clock: ManualClock
) -> None:
    keys = await signin_keys(emu, clock)
    assert (await signin_token(emu, keys, SessionDuration="3600"))[0] == 400
    token = await granted(emu, keys)
    assert (await visit(login_url(emu, token)))[0] == 302
    assert emu.state.federation.console_sessions[0].principal.kind == "iam-user"


@pytest.mark.parametrize("duration", ["899", "43201", "0", "-900", "1h", "", "900.5"])
async def test_session_duration_is_900_to_43200_seconds(
    emu: Emulator, sso_keys: Keys, duration: str
) -> None:
    status, page = await signin_token(emu, sso_keys, SessionDuration=duration)
    assert status == 400, page


@pytest.mark.parametrize("duration", ["900", "43200"])
async def test_session_duration_bounds_are_accepted(
    emu: Emulator, sso_keys: Keys, duration: str
) -> None:
    await granted(emu, sso_keys, SessionDuration=duration)


async def test_only_valid_temporary_credentials_it_issued(
    emu: Emulator, sso_keys: Keys, clock: ManualClock
) -> None:
    user = emu.create_access_key("broker")
    wrong = (
        Keys("ASIAUNKNOWNKEY000000", sso_keys.secret_access_key, sso_keys.session_token),
        Keys(sso_keys.access_key_id, "not-the-secret", sso_keys.session_token),
        Keys(sso_keys.access_key_id, sso_keys.secret_access_key, "not-the-token"),
        # long-term IAM user keys: the broker exchanges temporary credentials only
        Keys(user.access_key_id, user.secret_access_key.reveal(), "none"),
    )
    for keys in wrong:
        status, page = await signin_token(emu, keys)
        assert status == 400, keys
        assert sso_keys.secret_access_key not in page
    await granted(emu, sso_keys)
    clock.set(expiry(emu, sso_keys))
    status, page = await signin_token(emu, sso_keys)
    assert status == 400
    assert "expired" in page


@pytest.mark.parametrize(
    "session",
    [
        "",
        "not json",
        "[]",
        '{"sessionId": "ASIA", "sessionKey": "k"}',
        '{"sessionId": "ASIA", "sessionKey": "k", "sessionToken": 7}',
        '{"sessionId": "ASIA", "sessionKey": "k", "sessionToken": "t", "extra": "x"}',
    ],
)
async def test_malformed_sessions_are_refused(emu: Emulator, session: str) -> None:
    assert (await signin_token(emu, session=session))[0] == 400


async def test_repeated_parameters_and_unknown_actions_are_refused(
    emu: Emulator, sso_keys: Keys
) -> None:
    once = urlencode({"Action": "getSigninToken", "Session": session_json(sso_keys)})
    assert (await get(f"{emu.url}/federation?{once}&SessionDuration=900&SessionDuration=900"))[
        0
    ] == 400
    assert (await get(f"{emu.url}/federation?Action=getSignInToken"))[0] == 400
    assert (await get(f"{emu.url}/federation"))[0] == 400


async def test_faults_reach_the_federation_endpoint(emu: Emulator, sso_keys: Keys) -> None:
    emu.faults.add("GetSigninToken", status=503)
    assert (await signin_token(emu, sso_keys))[0] == 503
    await granted(emu, sso_keys)
