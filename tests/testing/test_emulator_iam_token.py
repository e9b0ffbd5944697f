"""Trusted identity propagation in the emulator: CreateTokenWithIAM and STS ProvidedContexts.

Driven with boto3 (botocore signs CreateTokenWithIAM with SigV4 ``sso-oauth``
itself); the blocking calls run in a worker thread while the emulator serves
in the test's event loop.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import anyio
import boto3
import botocore.loaders
import botocore.model
import botocore.session
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from credd.clock import ManualClock
from credd.testing.emulator import (
    DEFAULT_START_URL,
    Application,
    AssumableRole,
    Emulator,
    EmulatorConfig,
    IdentityCenter,
    TokenIssuer,
    default_directory,
)
from credd.testing.emulator.clients import Keys, visit
from credd.testing.emulator.errors import OidcError
from credd.testing.emulator.identity_center import (
    DEFAULT_APPLICATION_ARN,
    DEFAULT_ISSUER_ARN,
    DEFAULT_SCOPES,
)
from credd.testing.emulator.oauth import (
    ACCESS_TOKEN_TYPE,
    AUTH_CODE_GRANT,
    DEVICE_CODE_GRANT,
    JWT_BEARER_GRANT,
    REFRESH_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    s256,
)
from credd.testing.emulator.state import TemporaryCredentials

APP = DEFAULT_APPLICATION_ARN
#: an application only one role may use, for jwt-bearer only
REPORTING_APP = "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-4444444444444444"
REPORTING_ROLE = "arn:aws:iam::111111111111:role/Reporting"
#: a second application: its access tokens are subject tokens for APP
PORTAL_APP = "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-5555555555555555"
ALL_SCOPES = [*DEFAULT_SCOPES, "s3:access_grants:read_write"]
IDENTITY_CENTER = "arn:aws:iam::aws:contextProvider/IdentityCenter"
ROLE = "arn:aws:iam::111111111111:role/DataAnalyst"
NO_CONTEXT_ROLE = "arn:aws:iam::111111111111:role/Legacy"
CALLBACK = "http://127.0.0.1:43210/oauth/callback"

#: a private HOME and no AWS_* variables: botocore must find nothing of this machine's
pytestmark = pytest.mark.usefixtures("home")


# -- plumbing -----------------------------------------------------------------------


@functools.cache
def _session() -> Any:
    """One botocore session: each service model is loaded once for the module."""
    return boto3.session.Session(botocore_session=botocore.session.Session())


def client(
    service: str, emu: Emulator, keys: Keys | None, *, region: str = "us-east-1", **config: Any
) -> Any:
    """A boto3 client at the emulator; unsigned without ``keys``; no retries."""
    signing = {"signature_version": UNSIGNED} if keys is None else {}
    credentials = (
        {}
        if keys is None
        else {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
    )
    return _session().client(
        service,
        endpoint_url=emu.url,
        region_name=region,
        config=Config(retries={"total_max_attempts": 1}, **signing, **config),
        **credentials,
    )


async def call(method: Callable[..., Any], /, **kwargs: Any) -> Any:
    """A blocking botocore call, off the event loop the emulator serves on."""
    return await anyio.to_thread.run_sync(functools.partial(method, **kwargs))


async def refused(method: Callable[..., Any], /, **kwargs: Any) -> dict[str, Any]:
    """The parsed error response of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        await call(method, **kwargs)
    response: dict[str, Any] = caught.value.response
    return response


def code_and_status(response: dict[str, Any]) -> tuple[str, int]:
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return claims


def assumed_keys(answer: dict[str, Any]) -> Keys:
    creds = answer["Credentials"]
    return Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    directory = replace(
        default_directory(),
        roles=(AssumableRole(NO_CONTEXT_ROLE, allows_set_context=False),),
        identity_center=IdentityCenter(
            applications=(
                Application(),
                Application(
                    arn=REPORTING_APP,
                    grants=frozenset({JWT_BEARER_GRANT}),
                    scopes=(),
                    callers=(REPORTING_ROLE,),
                ),
                Application(arn=PORTAL_APP),
            )
        ),
    )
    # botocore signs with the real time; tests move the emulator's clock freely.
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config, directory=directory).running() as emulator:
        yield emulator


@pytest.fixture
def keys(emu: Emulator) -> Keys:
    key = emu.create_access_key("app-server")
    return Keys(key.access_key_id, key.secret_access_key.reveal())


@pytest.fixture
def oidc(emu: Emulator, keys: Keys) -> Any:
    return client("sso-oidc", emu, keys)


async def jwt_bearer(oidc: Any, assertion: str, **kwargs: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await call(
        oidc.create_token_with_iam,
        clientId=kwargs.pop("clientId", APP),
        grantType=JWT_BEARER_GRANT,
        assertion=assertion,
        **kwargs,
    )
    return answer


async def refresh(oidc: Any, refresh_token: str, **kwargs: Any) -> dict[str, Any]:
    answer: dict[str, Any] = await call(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=refresh_token,
        **kwargs,
    )
    return answer


async def sso_access_token(emu: Emulator) -> str:
    """A device-flow sign-in (CreateToken): an access token of another client."""
    oidc = client("sso-oidc", emu, None)
    reg = await call(
        oidc.register_client, clientName="cli", clientType="public", scopes=["sso:account:access"]
    )
    creds = {"clientId": reg["clientId"], "clientSecret": reg["clientSecret"]}
    started = await call(oidc.start_device_authorization, **creds, startUrl=DEFAULT_START_URL)
    assert (await visit(started["verificationUriComplete"]))[0] == 200
    token = await call(
        oidc.create_token, **creds, grantType=DEVICE_CODE_GRANT, deviceCode=started["deviceCode"]
    )
    access_token: str = token["accessToken"]
    return access_token


# -- jwt-bearer -----------------------------------------------------------------------


async def test_jwt_bearer_grant_answers_as_documented(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    answer = await jwt_bearer(oidc, emu.issuer.mint(sub="alice@example.com"))
    metadata = answer.pop("ResponseMetadata")
    assert metadata["HTTPStatusCode"] == 200
    assert set(answer) == {
        "accessToken",
        "tokenType",
        "expiresIn",
        "refreshToken",
        "idToken",
        "issuedTokenType",
        "scope",
        "awsAdditionalDetails",
    }
    assert answer["tokenType"] == "Bearer"
    assert answer["expiresIn"] == emu.config.iam_token_ttl == 3600
    assert answer["issuedTokenType"] == REFRESH_TOKEN_TYPE
    assert answer["scope"] == ALL_SCOPES
    context = answer["awsAdditionalDetails"]["identityContext"]
    assert 4 <= len(context) <= 2048

    claims = jwt_claims(answer["idToken"])
    now = int(clock.now().timestamp())
    assert uuid.UUID(claims["sub"]).version == 5
    assert claims["sts:identity_context"] == context
    assert claims["aws:identity_store_id"] == "d-1234567890"
    assert claims["aws:instance_account"] == "111111111111"
    assert re.fullmatch(
        r"https://identitycenter\.amazonaws\.com/ssoins-[0-9a-f]{16}", claims["iss"]
    )
    assert claims["aud"] == APP
    assert claims["aws:credential_id"]
    assert claims["act"] == {"sub": DEFAULT_ISSUER_ARN}
    assert claims["auth_time"] == clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (claims["iat"], claims["exp"]) == (now, now + 3600)

    remembered = emu.state.iam.identity_contexts[context]
    assert (remembered.user, remembered.user_id, remembered.application_arn) == (
        "alice",
        claims["sub"],
        APP,
    )
    assert emu.calls["CreateTokenWithIAM"] == 1


async def test_scope_downscoping(emu: Emulator, oidc: Any) -> None:
    narrow = await jwt_bearer(oidc, emu.issuer.mint(), scope=["openid", "sts:identity_context"])
    assert narrow["scope"] == ["openid", "sts:identity_context"]
    assert "sts:identity_context" in jwt_claims(narrow["idToken"])
    # Without openid no idToken; without sts:identity_context no identity context.
    bare = await jwt_bearer(oidc, emu.issuer.mint(), scope=["s3:access_grants:read_write"])
    assert bare["scope"] == ["s3:access_grants:read_write"]
    assert "idToken" not in bare
    assert "awsAdditionalDetails" not in bare
    unknown = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType=JWT_BEARER_GRANT,
        assertion=emu.issuer.mint(),
        scope=["openid", "sso:account:access"],
    )
    assert code_and_status(unknown) == ("InvalidScopeException", 400)
    assert unknown["error"] == "invalid_scope"


async def test_refresh_rotates_and_narrows_never_widens(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    emu.config.iam_token_ttl = 900
    first = await jwt_bearer(
        oidc, emu.issuer.mint(), scope=["openid", "aws", "sts:identity_context"]
    )
    clock.advance(600)
    second = await refresh(oidc, first["refreshToken"])
    assert second["expiresIn"] == 900
    assert second["refreshToken"] != first["refreshToken"]
    assert second["accessToken"] != first["accessToken"]
    assert second["scope"] == first["scope"]
    assert second["issuedTokenType"] == REFRESH_TOKEN_TYPE
    claims, before = jwt_claims(second["idToken"]), jwt_claims(first["idToken"])
    assert claims["sub"] == before["sub"]
    assert claims["act"] == before["act"]  # still a jwt-bearer session
    assert claims["auth_time"] == before["auth_time"]  # the sign-in, not the refresh
    assert claims["iat"] == before["iat"] + 600
    first_context, second_context = (
        tokens["awsAdditionalDetails"]["identityContext"] for tokens in (first, second)
    )
    assert first_context != second_context

    reused = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=first["refreshToken"],
    )
    assert code_and_status(reused) == ("InvalidGrantException", 400)
    wider = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=second["refreshToken"],
        scope=["openid", "s3:access_grants:read_write"],
    )
    assert code_and_status(wider) == ("InvalidScopeException", 400)
    narrower = await refresh(oidc, second["refreshToken"], scope=["aws"])
    assert narrower["scope"] == ["aws"]
    assert "idToken" not in narrower


async def test_refresh_token_lifetime_and_revocation(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    emu.config.iam_refresh_token_ttl = 7200
    tokens = await jwt_bearer(oidc, emu.issuer.mint())
    clock.advance(7199)
    tokens = await refresh(oidc, tokens["refreshToken"])
    clock.advance(1)
    expired = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=tokens["refreshToken"],
    )
    assert code_and_status(expired) == ("InvalidGrantException", 400)
    tokens = await jwt_bearer(oidc, emu.issuer.mint())
    assert emu.revoke_sessions() >= 1
    revoked = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=tokens["refreshToken"],
    )
    assert code_and_status(revoked) == ("InvalidGrantException", 400)


def _unsigned_jwt(issuer: TokenIssuer) -> str:
    _, claims, _ = issuer.mint().split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    return f"{none}.{claims}."


def _forged(issuer: TokenIssuer, clock: ManualClock) -> str:
    """Signed with another key under the real key's id, as a forger would."""
    forger = TokenIssuer(clock)
    forger.kid = issuer.kid
    return forger.mint()


def _tampered(token: str) -> str:
    """Another first signature character: ``r`` changes (the last one may only pad)."""
    signing_input, _, signature = token.rpartition(".")
    first = "B" if signature[0] == "A" else "A"
    return f"{signing_input}.{first}{signature[1:]}"


def _now(clock: ManualClock) -> int:
    return int(clock.now().timestamp())


Mint = Callable[[TokenIssuer, ManualClock], str]

#: each flaw, and what the refusal says about it
BAD_ASSERTIONS: dict[str, tuple[Mint, str]] = {
    "expired": (lambda i, c: i.mint(iat=_now(c) - 600, lifetime=300), "has expired"),
    "expiring this second": (lambda i, c: i.mint(iat=_now(c) - 300, lifetime=300), "has expired"),
    "forged": (lambda i, c: _forged(i, c), "bad signature"),
    "another key": (lambda i, c: TokenIssuer(c).mint(), "unknown kid"),
    "untrusted issuer": (
        lambda i, c: TokenIssuer(c, url="https://evil.example").mint(),
        "not trusted",
    ),
    "wrong audience": (lambda i, c: i.mint(aud="someone-else"), "audience"),
    "audience list without ours": (lambda i, c: i.mint(aud=["a", "b"]), "audience"),
    "issued in the future": (lambda i, c: i.mint(iat=_now(c) + 3600), "iat is in the future"),
    "no exp": (lambda i, c: i.mint(claims={"exp": None}), "exp claim"),
    "unknown user": (lambda i, c: i.mint(sub="mallory@example.com"), "not a user"),
    "no subject": (lambda i, c: i.mint(claims={"sub": None}), "no sub claim"),
    "alg none": (lambda i, c: _unsigned_jwt(i), "unsupported alg"),
    "not a JWT": (lambda i, c: "not-a-jwt", "three dot-separated parts"),
    "tampered": (lambda i, c: _tampered(i.mint()), "bad signature"),
}


@pytest.mark.parametrize(("make", "fragment"), BAD_ASSERTIONS.values(), ids=BAD_ASSERTIONS.keys())
async def test_jwt_bearer_rejects_bad_assertions(
    emu: Emulator, oidc: Any, clock: ManualClock, make: Mint, fragment: str
) -> None:
    error = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType=JWT_BEARER_GRANT,
        assertion=make(emu.issuer, clock),
    )
    assert code_and_status(error) == ("InvalidGrantException", 400)
    assert error["error"] == "invalid_grant"
    assert fragment in error["Error"]["Message"]
    assert emu.state.iam.identity_contexts == {}


async def test_jwt_bearer_accepts_any_listed_audience(emu: Emulator, oidc: Any) -> None:
    answer = await jwt_bearer(oidc, emu.issuer.mint(aud=["other", "credd-test"], lifetime=60))
    assert answer["scope"] == ALL_SCOPES


async def test_missing_members_are_invalid_requests(emu: Emulator, keys: Keys) -> None:
    oidc = client("sso-oidc", emu, keys, parameter_validation=False)
    for members in (
        {"clientId": APP, "grantType": JWT_BEARER_GRANT},
        {"clientId": APP},
        {"grantType": JWT_BEARER_GRANT},
        {"clientId": APP, "grantType": AUTH_CODE_GRANT, "code": "c"},
    ):
        error = await refused(oidc.create_token_with_iam, **members)
        assert code_and_status(error) == ("InvalidRequestException", 400)


# -- token exchange -------------------------------------------------------------------


async def test_token_exchange(emu: Emulator, oidc: Any) -> None:
    subject = await sso_access_token(emu)
    exchange = {
        "clientId": APP,
        "grantType": TOKEN_EXCHANGE_GRANT,
        "subjectToken": subject,
        "subjectTokenType": ACCESS_TOKEN_TYPE,
    }
    access_only = await call(oidc.create_token_with_iam, **exchange)
    assert "refreshToken" not in access_only
    assert access_only["issuedTokenType"] == ACCESS_TOKEN_TYPE
    claims = jwt_claims(access_only["idToken"])
    assert "act" not in claims
    alice = jwt_claims((await jwt_bearer(oidc, emu.issuer.mint()))["idToken"])["sub"]
    assert claims["sub"] == alice  # the subject token's user, by her Identity Store id

    with_refresh = await call(
        oidc.create_token_with_iam, **exchange, requestedTokenType=REFRESH_TOKEN_TYPE
    )
    assert with_refresh["issuedTokenType"] == REFRESH_TOKEN_TYPE
    assert (await refresh(oidc, with_refresh["refreshToken"]))["scope"] == ALL_SCOPES

    # An application's access token is a subject token for another application only.
    portal = await call(
        oidc.create_token_with_iam,
        clientId=PORTAL_APP,
        grantType=JWT_BEARER_GRANT,
        assertion=emu.issuer.mint(),
    )
    chained = await call(
        oidc.create_token_with_iam, **{**exchange, "subjectToken": portal["accessToken"]}
    )
    assert chained["scope"] == ALL_SCOPES
    same_app = await refused(
        oidc.create_token_with_iam, **{**exchange, "subjectToken": access_only["accessToken"]}
    )
    assert code_and_status(same_app) == ("InvalidGrantException", 400)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"subjectTokenType": "urn:ietf:params:oauth:token-type:id_token"},
            "InvalidRequestException",
        ),
        ({"requestedTokenType": "urn:ietf:params:oauth:token-type:jwt"}, "InvalidRequestException"),
        ({"subjectToken": "aoa-never-issued"}, "InvalidGrantException"),
        ({"subjectToken": None}, "InvalidRequestException"),
    ],
)
async def test_token_exchange_validation(
    emu: Emulator, keys: Keys, change: dict[str, str | None], expected: str
) -> None:
    oidc = client("sso-oidc", emu, keys, parameter_validation=False)
    members = {
        "clientId": APP,
        "grantType": TOKEN_EXCHANGE_GRANT,
        "subjectToken": await sso_access_token(emu),
        "subjectTokenType": ACCESS_TOKEN_TYPE,
        **change,
    }
    given = {k: v for k, v in members.items() if v is not None}
    assert code_and_status(await refused(oidc.create_token_with_iam, **given)) == (expected, 400)


async def test_token_exchange_with_dead_subject_tokens(
    emu: Emulator, oidc: Any, clock: ManualClock
) -> None:
    exchange = {
        "clientId": APP,
        "grantType": TOKEN_EXCHANGE_GRANT,
        "subjectTokenType": ACCESS_TOKEN_TYPE,
    }
    expiring = await sso_access_token(emu)
    clock.advance(emu.config.access_token_ttl)
    expired = await refused(oidc.create_token_with_iam, **exchange, subjectToken=expiring)
    assert code_and_status(expired) == ("ExpiredTokenException", 400)
    assert expired["Error"]["Message"] == "The subject token has expired"

    revoked_token = await sso_access_token(emu)
    emu.revoke_sessions()
    revoked = await refused(oidc.create_token_with_iam, **exchange, subjectToken=revoked_token)
    assert code_and_status(revoked) == ("InvalidGrantException", 400)


# -- authorization code -------------------------------------------------------------------


async def authorize(emu: Emulator, verifier: str, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": APP,
        "redirect_uri": CALLBACK,
        "state": "st",
        "code_challenge_method": "S256",
        "code_challenge": s256(verifier),
        **params,
    }
    status, location = await visit(f"{emu.url}/authorize?{urlencode(query)}")
    assert status == 302
    assert location is not None
    answer = parse_qs(urlsplit(location).query)
    assert answer["state"] == ["st"]
    return answer["code"][0]


async def test_authorization_code_grant(emu: Emulator, oidc: Any) -> None:
    verifier = "v" * 64
    code = await authorize(emu, verifier, scopes="openid sts:identity_context")
    redeem = {
        "clientId": APP,
        "grantType": AUTH_CODE_GRANT,
        "code": code,
        "redirectUri": CALLBACK,
        "codeVerifier": verifier,
    }
    tokens = await call(oidc.create_token_with_iam, **redeem)
    assert tokens["scope"] == ["openid", "sts:identity_context"]
    assert tokens["issuedTokenType"] == REFRESH_TOKEN_TYPE
    assert "act" not in jwt_claims(tokens["idToken"])
    # Single use: a replay fails and revokes what the code bought (RFC 6749 §4.1.2).
    replay = await refused(oidc.create_token_with_iam, **redeem)
    assert code_and_status(replay) == ("InvalidGrantException", 400)
    dead = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType="refresh_token",
        refreshToken=tokens["refreshToken"],
    )
    assert code_and_status(dead) == ("InvalidGrantException", 400)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"codeVerifier": "w" * 64}, "InvalidGrantException"),
        ({"redirectUri": "http://127.0.0.1:1/oauth/callback"}, "InvalidGrantException"),
        ({"code": "ac-never-issued"}, "InvalidGrantException"),
        ({"clientId": PORTAL_APP}, "InvalidGrantException"),
    ],
)
async def test_authorization_code_validation(
    emu: Emulator, oidc: Any, change: dict[str, str], expected: str
) -> None:
    verifier = "v" * 64
    redeem = {
        "clientId": APP,
        "grantType": AUTH_CODE_GRANT,
        "code": await authorize(emu, verifier),
        "redirectUri": CALLBACK,
        "codeVerifier": verifier,
        **change,
    }
    assert code_and_status(await refused(oidc.create_token_with_iam, **redeem)) == (expected, 400)


async def test_expired_authorization_code(emu: Emulator, oidc: Any, clock: ManualClock) -> None:
    verifier = "v" * 64
    code = await authorize(emu, verifier)
    clock.advance(emu.config.auth_code_ttl)
    error = await refused(
        oidc.create_token_with_iam,
        clientId=APP,
        grantType=AUTH_CODE_GRANT,
        code=code,
        redirectUri=CALLBACK,
        codeVerifier=verifier,
    )
    assert code_and_status(error) == ("ExpiredTokenException", 400)


# -- callers, applications, grants ------------------------------------------------------


async def test_region_must_be_the_identity_center_region(emu: Emulator, keys: Keys) -> None:
    oidc = client("sso-oidc", emu, keys, region="eu-west-1")
    error = await refused(
        oidc.create_token_with_iam, clientId=APP, grantType=JWT_BEARER_GRANT, assertion="x.y.z"
    )
    assert code_and_status(error) == ("InvalidRequestRegionException", 400)
    assert error["endpoint"] == "https://oidc.us-east-1.amazonaws.com"
    assert error["region"] == "us-east-1"
    assert error["error"] == "invalid_request"


async def test_signature_failures(emu: Emulator, keys: Keys, clock: ManualClock) -> None:
    sts = client("sts", emu, keys)
    temporary = assumed_keys(await call(sts.assume_role, RoleArn=ROLE, RoleSessionName="app"))
    clock.advance(3600)
    cases = [
        (None, "MissingAuthenticationTokenException"),
        (replace(keys, secret_access_key="wrong"), "InvalidSignatureException"),
        (replace(keys, access_key_id="AKIAUNKNOWNUNKNOWN00"), "UnrecognizedClientException"),
        (replace(keys, session_token="forged"), "UnrecognizedClientException"),
        (temporary, "ExpiredTokenException"),
    ]
    for tampered, expected in cases:
        oidc = client("sso-oidc", emu, tampered)
        error = await refused(
            oidc.create_token_with_iam,
            clientId=APP,
            grantType=JWT_BEARER_GRANT,
            assertion=emu.issuer.mint(),
        )
        assert code_and_status(error) == (expected, 403), expected
        assert error["Error"]["Message"]
    assert emu.calls["CreateTokenWithIAM"] == len(cases)
    assert emu.state.iam.identity_contexts == {}


async def test_garbled_and_misdirected_signatures(emu: Emulator, keys: Keys) -> None:
    body = json.dumps({"clientId": APP, "grantType": JWT_BEARER_GRANT, "assertion": "a.b.c"})
    url = f"{emu.url}/token?aws_iam=t"
    headers = {"Content-Type": "application/json"}
    signed_for_sts = AWSRequest("POST", url, data=body, headers=headers)
    credentials = Credentials(keys.access_key_id, keys.secret_access_key)
    SigV4Auth(credentials, "sts", "us-east-1").add_auth(signed_for_sts)
    cases = [
        ({**headers, "Authorization": "AWS4-HMAC-SHA256 x=y"}, "IncompleteSignatureException"),
        (dict(signed_for_sts.headers.items()), "InvalidSignatureException"),
    ]
    async with aiohttp.ClientSession() as http:
        for sent, expected in cases:
            async with http.post(url, data=body, headers=sent) as response:
                assert response.status == 403
                assert response.headers["x-amzn-ErrorType"].partition(":")[0] == expected
                assert set(await response.json()) == {"message"}


async def test_applications_clients_and_grants(emu: Emulator, oidc: Any, keys: Keys) -> None:
    assertion = emu.issuer.mint()
    unknown = await refused(
        oidc.create_token_with_iam,
        clientId="arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-0",
        grantType=JWT_BEARER_GRANT,
        assertion=assertion,
    )
    assert code_and_status(unknown) == ("InvalidClientException", 401)
    unsupported = await refused(
        oidc.create_token_with_iam, clientId=APP, grantType=DEVICE_CODE_GRANT
    )
    assert code_and_status(unsupported) == ("UnsupportedGrantTypeException", 400)

    denied = await refused(
        oidc.create_token_with_iam,
        clientId=REPORTING_APP,
        grantType=JWT_BEARER_GRANT,
        assertion=assertion,
    )
    assert code_and_status(denied) == ("AccessDeniedException", 400)
    assert "sso-oauth:CreateTokenWithIAM" in denied["Error"]["Message"]

    sts = client("sts", emu, keys)
    reporting = client(
        "sso-oidc",
        emu,
        assumed_keys(await call(sts.assume_role, RoleArn=REPORTING_ROLE, RoleSessionName="rr")),
    )
    tokens = await jwt_bearer(reporting, assertion, clientId=REPORTING_APP)
    assert tokens["scope"] == list(DEFAULT_SCOPES)
    assert "refreshToken" not in tokens  # the application has no refresh_token grant
    assert tokens["issuedTokenType"] == ACCESS_TOKEN_TYPE
    not_allowed = await refused(
        reporting.create_token_with_iam,
        clientId=REPORTING_APP,
        grantType="refresh_token",
        refreshToken="aor-x",
    )
    assert code_and_status(not_allowed) == ("UnauthorizedClientException", 400)


def _modeled_errors() -> list[tuple[str, int]]:
    """Each error shape of CreateTokenWithIAM in botocore's model, with its HTTP status."""
    loader = botocore.loaders.create_loader()
    model = botocore.model.ServiceModel(loader.load_service_model("sso-oidc", "service-2"))
    shapes = model.operation_model("CreateTokenWithIAM").error_shapes
    return sorted((shape.name, shape.metadata["error"]["httpStatusCode"]) for shape in shapes)


@pytest.mark.parametrize(("code", "status"), _modeled_errors())
async def test_every_modeled_error_by_fault(
    emu: Emulator, oidc: Any, code: str, status: int
) -> None:
    emu.faults.add("CreateTokenWithIAM", error_code=code, message="Injected")
    with pytest.raises(getattr(oidc.exceptions, code)) as caught:
        await jwt_bearer(oidc, emu.issuer.mint())
    assert code_and_status(caught.value.response) == (code, status)
    assert caught.value.response["Error"]["Message"] == "Injected"
    await jwt_bearer(oidc, emu.issuer.mint())  # count=1: the next one is served
    assert emu.calls["CreateTokenWithIAM"] == 2


def test_the_error_table_matches_the_model() -> None:
    """protocols.md §2.3's statuses are the model's for every CreateTokenWithIAM error."""
    assert {code: OidcError.STATUSES[code] for code, _ in _modeled_errors()} == dict(
        _modeled_errors()
    )


# -- STS AssumeRole with ProvidedContexts -------------------------------------------------


async def identity_context(emu: Emulator, oidc: Any) -> tuple[str, str]:
    """An identity context for alice, and her Identity Store user id."""
    answer = await jwt_bearer(oidc, emu.issuer.mint())
    return answer["awsAdditionalDetails"]["identityContext"], jwt_claims(answer["idToken"])["sub"]


async def caller_identity(sts: Any) -> tuple[dict[str, Any], bytes]:
    """GetCallerIdentity parsed by botocore, and the raw body botocore received."""
    raw: list[bytes] = []

    def keep(http_response: Any, **_: Any) -> None:
        raw.append(http_response.content)

    sts.meta.events.register("after-call.sts.GetCallerIdentity", keep)
    identity: dict[str, Any] = await call(sts.get_caller_identity)
    return identity, raw[0]


async def test_identity_enhanced_role_session(emu: Emulator, oidc: Any, keys: Keys) -> None:
    context, user_id = await identity_context(emu, oidc)
    sts = client("sts", emu, keys)
    answer = await call(
        sts.assume_role,
        RoleArn=ROLE,
        RoleSessionName="alice-session",
        ProvidedContexts=[{"ProviderArn": IDENTITY_CENTER, "ContextAssertion": context}],
    )
    assert answer["AssumedRoleUser"]["Arn"] == (
        "arn:aws:sts::111111111111:assumed-role/DataAnalyst/alice-session"
    )
    enhanced = assumed_keys(answer)
    identity, raw = await caller_identity(client("sts", emu, enhanced))
    # What AWS shows for any role session...
    assert identity["Arn"] == answer["AssumedRoleUser"]["Arn"]
    assert re.fullmatch(r"AROA[A-Z2-7]{17}:alice-session", identity["UserId"])
    # ...and, beside it, on whose behalf (dropped by botocore's parser, present on the wire).
    assert f"<OnBehalfOf><UserId>{user_id}</UserId>" in raw.decode()
    assert "identitystore/d-1234567890</IdentityStoreArn>" in raw.decode()
    remembered = emu.state.credentials[enhanced.access_key_id]
    assert isinstance(remembered, TemporaryCredentials)
    assert remembered.principal.arn == identity["Arn"]
    assert remembered.identity_context is not None
    assert (remembered.identity_context.user, remembered.identity_context.user_id) == (
        "alice",
        user_id,
    )

    plain = assumed_keys(await call(sts.assume_role, RoleArn=ROLE, RoleSessionName="plain"))
    _, raw = await caller_identity(client("sts", emu, plain))
    assert b"OnBehalfOf" not in raw


def _contexts(count: int = 1, provider: str = IDENTITY_CENTER, assertion: str = "{ctx}") -> Any:
    """``count`` ProvidedContexts; ``{ctx}`` stands for a real identity context."""
    return [{"ProviderArn": provider, "ContextAssertion": assertion}] * count


BAD_CONTEXTS: dict[str, tuple[list[dict[str, str]], str, str]] = {
    "forged": (_contexts(assertion="AQoJ" + "x" * 600), "InvalidParameterValue", "is invalid"),
    "unknown provider": (
        _contexts(provider="arn:aws:iam::aws:contextProvider/Other"),
        "InvalidParameterValue",
        "Unsupported context provider",
    ),
    "twice": (_contexts(2), "InvalidParameterValue", "Duplicate context provider"),
    "six": (_contexts(6), "ValidationError", "less than or equal to 5"),
    "none": ([], "ValidationError", "greater than or equal to 1"),
    "assertion too short": (_contexts(assertion="abc"), "ValidationError", "between 4 and 2048"),
    "assertion too long": (
        _contexts(assertion="x" * 2049),
        "ValidationError",
        "between 4 and 2048",
    ),
    "provider too short": (
        _contexts(provider="arn:aws:iam::aws:x"),
        "ValidationError",
        "between 20 and 2048",
    ),
    "no provider": ([{"ContextAssertion": "{ctx}"}], "ValidationError", "providerArn"),
    "no assertion": ([{"ProviderArn": IDENTITY_CENTER}], "ValidationError", "contextAssertion"),
}


@pytest.mark.parametrize(
    ("contexts", "expected", "fragment"), BAD_CONTEXTS.values(), ids=BAD_CONTEXTS.keys()
)
async def test_provided_contexts_are_validated(
    emu: Emulator,
    oidc: Any,
    keys: Keys,
    contexts: list[dict[str, str]],
    expected: str,
    fragment: str,
) -> None:
    context, _ = await identity_context(emu, oidc)
    given = [{k: v.replace("{ctx}", context) for k, v in c.items()} for c in contexts]
    sts = client("sts", emu, keys, parameter_validation=False)
    error = await refused(
        sts.assume_role, RoleArn=ROLE, RoleSessionName="ss", ProvidedContexts=given
    )
    assert code_and_status(error) == (expected, 400)
    assert error["Error"]["Type"] == "Sender"
    assert fragment in error["Error"]["Message"]
    assert context not in error["Error"]["Message"]
    assert len(emu.state.credentials) == 1  # the caller's static key, nothing issued


async def test_expired_context_and_untrusting_role(
    emu: Emulator, oidc: Any, keys: Keys, clock: ManualClock
) -> None:
    context, _ = await identity_context(emu, oidc)
    sts = client("sts", emu, keys)
    provided = [{"ProviderArn": IDENTITY_CENTER, "ContextAssertion": context}]
    untrusting = await refused(
        sts.assume_role, RoleArn=NO_CONTEXT_ROLE, RoleSessionName="ss", ProvidedContexts=provided
    )
    assert code_and_status(untrusting) == ("AccessDenied", 403)
    assert "sts:SetContext" in untrusting["Error"]["Message"]
    await call(sts.assume_role, RoleArn=NO_CONTEXT_ROLE, RoleSessionName="ss")  # plain is fine
    clock.advance(emu.config.iam_token_ttl)
    with pytest.raises(sts.exceptions.ExpiredTokenException) as expired:
        await call(sts.assume_role, RoleArn=ROLE, RoleSessionName="ss", ProvidedContexts=provided)
    assert code_and_status(expired.value.response) == ("ExpiredTokenException", 400)


# -- the hosted token issuer ----------------------------------------------------------


async def test_issuer_controls_over_http(emu: Emulator, oidc: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emu.url}/_emulator/issuer") as response:
            described = await response.json()
        async with http.post(
            f"{emu.url}/_emulator/issuer/mint", json={"sub": "alice@example.com", "lifetime": 60}
        ) as response:
            minted = (await response.json())["assertion"]
        async with http.post(
            f"{emu.url}/_emulator/issuer/mint", json={"lifetime": "x"}
        ) as response:
            assert response.status == 400
    assert described["issuer"] == emu.issuer.url == "https://issuer.credd.test"
    assert described["audience"] == "credd-test"
    claims = jwt_claims(minted)
    assert (claims["iss"], claims["aud"], claims["exp"] - claims["iat"]) == (
        described["issuer"],
        "credd-test",
        60,
    )
    _verify_es256(minted, described["jwks"]["keys"][0])
    assert (await jwt_bearer(oidc, minted))["scope"] == ALL_SCOPES


def _verify_es256(token: str, jwk: dict[str, str]) -> None:
    """What any relying party does with the published JWK Set (RFC 7515, RFC 7518 §3.4)."""
    header = json.loads(unb64(token.split(".")[0]))
    assert (header["alg"], header["kid"]) == ("ES256", jwk["kid"])

    def number(field: str) -> int:
        return int.from_bytes(unb64(jwk[field]), "big")

    key = ec.EllipticCurvePublicNumbers(number("x"), number("y"), ec.SECP256R1()).public_key()
    signing_input, _, signature = token.rpartition(".")
    raw = unb64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        key.verify(der, signing_input.encode() + b"x", ec.ECDSA(hashes.SHA256()))


def test_mint_uses_the_emulators_clock() -> None:
    clock = ManualClock(datetime.fromisoformat("2030-01-01T00:00:00+00:00"))
    claims = jwt_claims(TokenIssuer(clock).mint(lifetime=120))
    assert (claims["iat"], claims["exp"]) == (1893456000, 1893456120)
