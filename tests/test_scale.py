"""What keeps a daemon with a thousand profiles small (bench/scale.py measures it).

Profiles alike share one botocore session and, in the daemon, one open client
per service; botocore's endpoint data is read lean; one task renews every
profile in use, however many there are.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import botocore
import pytest
from botocore.loaders import Loader

from credd.aws import AwsClients
from credd.botodata import ENDPOINT_PREFIXES, DataLoader, endpoints_for
from credd.clock import ManualClock
from credd.daemon import running_daemon
from credd.testing.emulator import Emulator
from tests.support.configs import ACCOUNT, START_URL
from tests.support.home import Home
from tests.support.inprocess import get, login
from tests.support.waiting import eventually

ENDPOINTS = Path(botocore.__file__).parent / "data" / "endpoints.json"


def test_endpoint_prefixes_are_botocores() -> None:
    loader = Loader()
    for service, prefix in ENDPOINT_PREFIXES.items():
        model = loader.load_service_model(service, "service-2")
        assert model["metadata"]["endpointPrefix"] == prefix, service


def test_lean_endpoints_equal_the_whole_file_cut_down() -> None:
    text = ENDPOINTS.read_text()
    kept = set(ENDPOINT_PREFIXES.values())
    whole = json.loads(text)
    for partition in whole["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in kept}
    assert endpoints_for(text, kept) == whole
    assert {"portal.sso", "oidc", "sts"} <= set(whole["partitions"][0]["services"])
    # a layout it does not expect is parsed whole and cut down all the same
    odd = json.dumps({"version": 3, "partitions": {"not": "a list"}})
    assert endpoints_for(odd, kept) == json.loads(odd)
    with pytest.raises(json.JSONDecodeError):
        endpoints_for(text[:-10], kept)  # a truncated file is an error, not half the data


def test_data_loader_keeps_only_credds_services() -> None:
    data = DataLoader(None).load_data("endpoints")
    services = {name for p in data["partitions"] for name in p["services"]}
    assert services <= set(ENDPOINT_PREFIXES.values())
    assert DataLoader(None).load_service_model("sso", "service-2")["metadata"]  # others as usual


async def test_profiles_alike_share_a_session_and_overrides_still_apply(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"p{i}" for i in range(20)]
    config = "".join(
        f"[profile {name}]\nsso_session = s\nsso_account_id = {ACCOUNT}\n"
        f"sso_role_name = Role{i}\nregion = eu-west-{i % 3 + 1}\n\n"
        for i, name in enumerate(names)
    )
    config += (
        "[profile special]\nsso_session = s\nsso_account_id = 1\nsso_role_name = R\n"
        "services = local\n\n[services local]\nsso =\n  endpoint_url = http://127.0.0.1:1\n\n"
        f"[sso-session s]\nsso_start_url = {START_URL}\nsso_region = us-east-1\n"
    )
    home.write_aws_config(config)
    clients = AwsClients(home.aws_config, home.root / ".aws" / "credentials", keep_open=True)
    async with clients:
        seen = set()
        for name in names:
            async with clients.client("sso", region="us-east-1", profile=name) as portal:
                seen.add(id(portal.meta))
                assert portal.meta.endpoint_url == "https://portal.sso.us-east-1.amazonaws.com"
        assert len(seen) == 1  # one kept-open client for all twenty
        async with clients.client("sso", region="us-east-1", profile="special") as portal:
            assert portal.meta.endpoint_url == "http://127.0.0.1:1"
            assert id(portal.meta) not in seen
        async with clients.client("sso", region="eu-west-1", profile="p0") as portal:
            assert portal.meta.endpoint_url == "https://portal.sso.eu-west-1.amazonaws.com"
        with pytest.raises(ValueError, match="ENDPOINT_PREFIXES"):
            async with clients.client("s3", region="us-east-1", profile="p0"):
                pass
    # short-lived clients (keep_open off, as the CLI's) are new every time
    once = AwsClients(home.aws_config, home.root / ".aws" / "credentials")
    metas = []
    for _ in range(2):
        async with once.client("sso", region="us-east-1", profile="p1") as portal:
            metas.append(portal.meta)
    assert metas[0] is not metas[1]


@pytest.fixture
def many(home: Home) -> list[str]:
    names = [f"role{i:03d}" for i in range(60)]
    home.write_aws_config(
        f"[sso-session my-sso]\nsso_start_url = {START_URL}\nsso_region = us-east-1\n\n"
        + "".join(
            f"[profile {name}]\nsso_session = my-sso\nsso_account_id = {ACCOUNT}\n"
            f"sso_role_name = ReadOnly\nregion = eu-west-1\n\n"
            for name in names
        )
    )
    return names


async def test_one_task_renews_every_profile_in_use(
    home: Home,
    clocked: tuple[Emulator, ManualClock],
    many: list[str],
) -> None:
    emu, clock = clocked
    settings = home.settings()
    await login(settings, clock)
    async with running_daemon(settings, clock=clock) as daemon:
        tasks_before = len(asyncio.all_tasks())
        keys = {}
        for name in many:
            status, body = await get(daemon, f"/v1/credentials/{name}")
            assert status == 200, body
            keys[name] = body["AccessKeyId"]
        assert emu.calls["GetRoleCredentials"] == len(many)
        # sixty profiles in use, all renewing: no task of their own each
        # (the endpoint's connection tasks end as its clients hang up)
        await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before + 1)
        statuses = daemon.broker.profile_statuses()
        assert {p.state for p in statuses} == {"fresh"}

        # past every renewal time (1 h credentials, renewed 20 min ahead): each once
        clock.advance(2700)

        def renewed() -> bool:
            held = [daemon.broker.usable(name) for name in many]
            return all(
                c is not None and c.access_key_id != keys[n]
                for c, n in zip(held, many, strict=True)
            )

        await eventually(renewed)
        assert emu.calls["GetRoleCredentials"] == 2 * len(many)
