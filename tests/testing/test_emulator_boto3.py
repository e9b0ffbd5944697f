"""The synchronous botocore stack (boto3, urllib3) against the emulator, end to end.

The rest of the emulator's tests use aiobotocore; SDK users and the AWS CLI send
their requests through urllib3 instead, so one whole journey goes that way too:
the blocking calls run in a worker thread while the emulator serves in the
test's event loop.
"""

from __future__ import annotations

from typing import Any

import anyio
import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from credd.clock import ManualClock
from credd.testing import browser
from credd.testing.emulator import DEFAULT_START_URL, Emulator, EmulatorConfig
from credd.testing.emulator.oauth import DEVICE_CODE_GRANT

NO_RETRIES = {"total_max_attempts": 1}


def journey(url: str) -> dict[str, Any]:
    """Device login, role credentials, then STS with them: what ``aws sso login`` leads to."""
    unsigned = Config(signature_version=UNSIGNED, retries=NO_RETRIES)
    oidc = boto3.client("sso-oidc", endpoint_url=url, region_name="us-east-1", config=unsigned)
    sso = boto3.client("sso", endpoint_url=url, region_name="us-east-1", config=unsigned)
    reg = oidc.register_client(
        clientName="boto3", clientType="public", scopes=["sso:account:access"]
    )
    client = {"clientId": reg["clientId"], "clientSecret": reg["clientSecret"]}
    started = oidc.start_device_authorization(**client, startUrl=DEFAULT_START_URL)
    with pytest.raises(oidc.exceptions.AuthorizationPendingException):
        oidc.create_token(**client, grantType=DEVICE_CODE_GRANT, deviceCode=started["deviceCode"])
    assert browser.main([started["verificationUriComplete"]]) == 0
    token = oidc.create_token(
        **client, grantType=DEVICE_CODE_GRANT, deviceCode=started["deviceCode"]
    )
    creds = sso.get_role_credentials(
        accessToken=token["accessToken"], accountId="111111111111", roleName="Admin"
    )["roleCredentials"]
    sts = boto3.client(
        "sts",
        endpoint_url=url,
        region_name="ap-southeast-2",
        aws_access_key_id=creds["accessKeyId"],
        aws_secret_access_key=creds["secretAccessKey"],
        aws_session_token=creds["sessionToken"],
        config=Config(retries=NO_RETRIES),
    )
    assumed = sts.assume_role(RoleArn="arn:aws:iam::222222222222:role/Deploy", RoleSessionName="b3")
    return {"identity": sts.get_caller_identity(), "assumed": assumed}


async def test_boto3_journey() -> None:
    config = EmulatorConfig(poll_interval=0)
    async with Emulator(ManualClock(), config=config).running() as emu:
        result = await anyio.to_thread.run_sync(journey, emu.url)
    assert result["identity"]["Arn"].startswith(
        "arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_Admin_"
    )
    assert result["assumed"]["AssumedRoleUser"]["Arn"] == (
        "arn:aws:sts::222222222222:assumed-role/Deploy/b3"
    )
    assert emu.calls["CreateToken"] == 2
