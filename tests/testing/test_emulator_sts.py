"""The emulator's STS: SigV4-verified AssumeRole and GetCallerIdentity, via real clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from credd.clock import ManualClock
from credd.testing.emulator import (
    AssumableRole,
    Emulator,
    EmulatorConfig,
    default_directory,
)
from credd.testing.emulator.clients import (
    Keys,
    aws_client,
    device_login,
    register,
    role_keys,
)

DEPLOY = "arn:aws:iam::222222222222:role/Deploy"
SSO_ARN = re.compile(
    r"arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_ReadOnly_[0-9a-f]{16}/alice"
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[Emulator]:
    directory = replace(
        default_directory(),
        roles=(AssumableRole("arn:aws:iam::222222222222:role/Vendor", external_id="s3cr3t-id"),),
    )
    config = EmulatorConfig(poll_interval=0)
    async with Emulator(clock, config=config, directory=directory).running() as emulator:
        yield emulator


@pytest.fixture
async def sso_keys(emu: Emulator) -> Keys:
    async with aws_client(emu.url, "sso-oidc") as oidc, aws_client(emu.url, "sso") as sso:
        tokens = await device_login(oidc, await register(oidc))
        return await role_keys(sso, tokens.access_token, "111111111111", "ReadOnly")


def sts(emu: Emulator, keys: Keys, **kwargs: Any) -> Any:
    return aws_client(emu.url, "sts", keys, parameter_validation=False, **kwargs)


def assumed_keys(answer: dict[str, Any]) -> Keys:
    creds = answer["Credentials"]
    return Keys(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


async def test_caller_identity_of_sso_role_credentials(emu: Emulator, sso_keys: Keys) -> None:
    async with sts(emu, sso_keys, region="eu-west-1") as client:
        identity = await client.get_caller_identity()
    assert SSO_ARN.fullmatch(identity["Arn"])
    assert identity["Account"] == "111111111111"
    assert re.fullmatch(r"AROA[A-Z2-7]{17}:alice", identity["UserId"])
    assert identity["ResponseMetadata"]["RequestId"]


async def test_assume_role_from_sso_credentials_and_chain_again(
    emu: Emulator, sso_keys: Keys, clock: ManualClock
) -> None:
    async with sts(emu, sso_keys) as client:
        answer = await client.assume_role(RoleArn=DEPLOY, RoleSessionName="credd@work")
    assert answer["AssumedRoleUser"]["Arn"] == (
        "arn:aws:sts::222222222222:assumed-role/Deploy/credd@work"
    )
    assert answer["AssumedRoleUser"]["AssumedRoleId"].endswith(":credd@work")
    assert answer["Credentials"]["Expiration"].timestamp() == int(clock.now().timestamp()) + 3600
    deploy = assumed_keys(answer)
    async with sts(emu, deploy) as client:
        assert (await client.get_caller_identity())["Arn"] == answer["AssumedRoleUser"]["Arn"]
        chained = await client.assume_role(
            RoleArn="arn:aws:iam::111111111111:role/path/to/Audit", RoleSessionName="s2"
        )
    assert chained["AssumedRoleUser"]["Arn"] == "arn:aws:sts::111111111111:assumed-role/Audit/s2"
    assert emu.calls["AssumeRole"] == 2


async def test_role_chaining_is_limited_to_an_hour(emu: Emulator, sso_keys: Keys) -> None:
    async with sts(emu, sso_keys) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.assume_role(RoleArn=DEPLOY, RoleSessionName="ss", DurationSeconds=3601)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert "role chaining" in caught.value.response["Error"]["Message"]


async def test_iam_user_keys_assume_long_sessions_up_to_the_cap(
    emu: Emulator, clock: ManualClock
) -> None:
    key = emu.create_access_key("deployer", "333333333333")
    keys = Keys(key.access_key_id, key.secret_access_key.reveal())
    async with sts(emu, keys) as client:
        identity = await client.get_caller_identity()
        assert identity["Arn"] == "arn:aws:iam::333333333333:user/deployer"
        assert identity["UserId"].startswith("AIDA")
        long = await client.assume_role(RoleArn=DEPLOY, RoleSessionName="ss", DurationSeconds=43200)
        emu.config.assume_role_cap = 900
        capped = await client.assume_role(
            RoleArn=DEPLOY, RoleSessionName="ss", DurationSeconds=7200
        )
    now = int(clock.now().timestamp())
    assert long["Credentials"]["Expiration"].timestamp() == now + 43200
    assert capped["Credentials"]["Expiration"].timestamp() == now + 900


async def test_external_id_and_trust(emu: Emulator, sso_keys: Keys) -> None:
    vendor = "arn:aws:iam::222222222222:role/Vendor"
    async with sts(emu, sso_keys) as client:
        for external_id in (None, "wrong-id"):
            extra = {} if external_id is None else {"ExternalId": external_id}
            with pytest.raises(client.exceptions.ClientError) as caught:
                await client.assume_role(RoleArn=vendor, RoleSessionName="ss", **extra)
            assert caught.value.response["Error"]["Code"] == "AccessDenied"
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            assert "s3cr3t-id" not in str(caught.value.response)
        await client.assume_role(RoleArn=vendor, RoleSessionName="ss", ExternalId="s3cr3t-id")


async def test_a_closed_directory_denies_undeclared_roles() -> None:
    directory = replace(default_directory(), allow_any_role=False)
    emulator = Emulator(ManualClock(), directory=directory)
    key = emulator.create_access_key()
    keys = Keys(key.access_key_id, key.secret_access_key.reveal())
    async with emulator.running() as emu, sts(emu, keys) as client:
        with pytest.raises(client.exceptions.ClientError) as denied:
            await client.assume_role(RoleArn=DEPLOY, RoleSessionName="ss")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert denied.value.response["Error"]["Message"] == (
        f"User: arn:aws:iam::111111111111:user/ci is not authorized to perform: "
        f"sts:AssumeRole on resource: {DEPLOY}"
    )


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"RoleArn": "arn:aws:iam::1:r/x", "RoleSessionName": "ss"}, "roleArn"),
        ({"RoleArn": "arn:aws:s3:::my-bucket-name", "RoleSessionName": "ss"}, "is invalid"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "a"}, "greater than or equal to 2"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "x" * 65}, "less than or equal to 64"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "has space"}, "regular expression"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "ss", "DurationSeconds": 899}, "900"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "ss", "DurationSeconds": 43201}, "43200"),
        ({"RoleArn": DEPLOY, "RoleSessionName": "ss", "ExternalId": "x"}, "externalId"),
        ({"RoleArn": DEPLOY}, "null"),
    ],
)
async def test_assume_role_parameters_are_validated(
    emu: Emulator, params: dict[str, Any], fragment: str
) -> None:
    key = emu.create_access_key()
    async with sts(emu, Keys(key.access_key_id, key.secret_access_key.reveal())) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.assume_role(**params)
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert fragment in caught.value.response["Error"]["Message"]


# -- authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda k: replace(k, secret_access_key="wrong"), "SignatureDoesNotMatch"),
        (lambda k: replace(k, access_key_id="ASIAUNKNOWNUNKNOWN00"), "InvalidClientTokenId"),
        (lambda k: replace(k, session_token=None), "InvalidClientTokenId"),
        (lambda k: replace(k, session_token="forged"), "InvalidClientTokenId"),
    ],
)
async def test_bad_credentials_are_rejected(
    emu: Emulator, sso_keys: Keys, tamper: Any, code: str
) -> None:
    async with sts(emu, tamper(sso_keys)) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.get_caller_identity()
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["Error"]["Type"] == "Sender"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_long_term_keys_with_a_session_token_are_rejected(emu: Emulator) -> None:
    key = emu.create_access_key()
    async with sts(emu, Keys(key.access_key_id, key.secret_access_key.reveal(), "x")) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.get_caller_identity()
    assert caught.value.response["Error"]["Code"] == "InvalidClientTokenId"


async def test_expired_credentials(emu: Emulator, sso_keys: Keys, clock: ManualClock) -> None:
    clock.advance(emu.config.role_ttl)
    async with sts(emu, sso_keys) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.get_caller_identity()
    assert caught.value.response["Error"] == {
        "Type": "Sender",
        "Code": "ExpiredToken",
        "Message": "The security token included in the request is expired",
    }
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(("seconds", "wording"), [(301, "Signature expired"), (-301, "not yet")])
async def test_clock_skew_is_limited_to_five_minutes(
    emu: Emulator, sso_keys: Keys, clock: ManualClock, seconds: int, wording: str
) -> None:
    clock.advance(seconds)  # botocore signs with the real time; the emulator moved
    async with sts(emu, sso_keys) as client:
        with pytest.raises(client.exceptions.ClientError) as caught:
            await client.get_caller_identity()
        assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        assert wording in caught.value.response["Error"]["Message"]
        assert "5 min." in caught.value.response["Error"]["Message"]
        emu.config.max_clock_skew = None
        await client.get_caller_identity()


async def post_raw(emu: Emulator, body: str, headers: dict[str, str]) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(emu.url + "/", data=body, headers=headers) as response,
    ):
        return response.status, await response.text()


FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"


async def test_missing_and_garbled_authorization(emu: Emulator) -> None:
    body = GET_CALLER_IDENTITY
    status, text = await post_raw(emu, body, FORM)
    assert status == 403
    assert "<Code>MissingAuthenticationToken</Code>" in text
    assert text.startswith('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">')
    status, text = await post_raw(emu, body, {**FORM, "Authorization": "AWS4-HMAC-SHA256 x=y"})
    assert status == 400
    assert "<Code>IncompleteSignature</Code>" in text
    assert emu.calls["GetCallerIdentity"] == 2


def signed_headers(emu: Emulator, keys: Keys, service: str) -> dict[str, str]:
    """Headers botocore's own signer makes for ``GET_CALLER_IDENTITY``."""
    request = AWSRequest("POST", emu.url + "/", data=GET_CALLER_IDENTITY, headers=FORM)
    credentials = Credentials(keys.access_key_id, keys.secret_access_key, keys.session_token)
    SigV4Auth(credentials, service, "us-west-2").add_auth(request)
    return dict(request.headers.items())


async def test_signature_must_be_scoped_to_sts(emu: Emulator, sso_keys: Keys) -> None:
    status, text = await post_raw(emu, GET_CALLER_IDENTITY, signed_headers(emu, sso_keys, "iam"))
    assert status == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in text
    assert "Credential should be scoped to correct service: 'sts'." in text
    status, text = await post_raw(emu, GET_CALLER_IDENTITY, signed_headers(emu, sso_keys, "sts"))
    assert status == 200
    assert "<GetCallerIdentityResult>" in text


async def test_unknown_action_and_version(emu: Emulator) -> None:
    for body in ("Action=GetSessionToken&Version=2011-06-15", "Action=AssumeRole&Version=1"):
        status, text = await post_raw(emu, body, FORM)
        assert status == 400
        assert "<Code>InvalidAction</Code>" in text
