"""``credd populate``: every account and role of a session as a profile, nothing else touched.

End to end, the real ``credd`` runs as processes against an organization of
five accounts in the emulator (one named ``Data & Analytics (EU)``, another
``Sandbox: Ana's team``), whose portal hands out one item a page and
throttles when told to. What is checked: the bytes of the AWS config before
and after (every hand-written line and comment kept, exactly the new
sections appended), a second run and a dry run writing nothing, and a new
profile served by the running daemon at once, proven by GetCallerIdentity
through boto3's container provider (``credd exec``). In process: the listing's
backoff and its bound on calls in flight, a refused token renewed, the
names, the collisions, and the pure text functions of the writer.
"""

from __future__ import annotations

import json
import re
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from credd.assignments import Assignment, FetchPolicy, Sleep, list_assignments
from credd.clock import SystemClock
from credd.config.settings import SsoSessionSpec
from credd.config.writer import (
    ConfigChanged,
    NewProfile,
    marked_profiles,
    replace_config,
    with_profiles,
    without_profiles,
)
from credd.engine.session import SessionContext
from credd.errors import LoginRequired
from credd.populate import (
    DEFAULT_TEMPLATE,
    POPULATE_KEYS,
    Options,
    check_template,
    plan_profiles,
    profile_name,
    safe_name,
)
from credd.sessions.identity_center import IdentityCenterSession
from credd.testing.emulator import Emulator, EmulatorConfig, organization_directory
from credd.wiring import aws_clients, sso_cache
from tests.support.configs import LISTEN_ANY_PORT, START_URL
from tests.support.home import Home
from tests.support.process import WHOAMI, credd, login
from tests.support.world import World

#: a config as a person keeps it: comments, a role written by hand under a name of their
#: own, a legacy profile of the same portal, and a profile that takes a name populate wants
HAND_WRITTEN = f"""\
# my AWS config; credd populate must keep every byte of it
[sso-session my-sso]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

; Development's ReadOnly, by hand
[profile dev]
sso_session = my-sso
sso_account_id = 111111111111
sso_role_name = ReadOnly
region = eu-west-1

[profile shared-legacy]
sso_start_url = {START_URL}/
sso_region = us-east-1
sso_account_id = 444444444444
sso_role_name = ReadOnly

#   not a role: only a region, under the name populate would give Production's Admin
[profile Production.Admin]
region = eu-central-1
output = json"""

#: what populate appends to it: the six roles no profile serves, in account order
APPENDED = """
# credd populate: my-sso
[profile Development.Admin]
sso_session = my-sso
sso_account_id = 111111111111
sso_role_name = Admin
region = us-east-1

# credd populate: my-sso
[profile Production.Admin-222222222222]
sso_session = my-sso
sso_account_id = 222222222222
sso_role_name = Admin
region = us-east-1

# credd populate: my-sso
[profile Data-Analytics-EU.DataScientist]
sso_session = my-sso
sso_account_id = 333333333333
sso_role_name = DataScientist
region = us-east-1

# credd populate: my-sso
[profile Data-Analytics-EU.ReadOnly]
sso_session = my-sso
sso_account_id = 333333333333
sso_role_name = ReadOnly
region = us-east-1

# credd populate: my-sso
[profile Shared-Services.NetworkAdmin]
sso_session = my-sso
sso_account_id = 444444444444
sso_role_name = NetworkAdmin
region = us-east-1

# credd populate: my-sso
[profile Sandbox-Ana-s-team.Admin]
sso_session = my-sso
sso_account_id = 555555555555
sso_role_name = Admin
region = us-east-1
"""
ADDED = [
    "Development.Admin",
    "Production.Admin-222222222222",
    "Data-Analytics-EU.DataScientist",
    "Data-Analytics-EU.ReadOnly",
    "Shared-Services.NetworkAdmin",
    "Sandbox-Ana-s-team.Admin",
]
REACH = "8 roles in 5 accounts, 2 already served"
DATA_SCIENTIST_ARN = re.compile(
    r"^arn:aws:sts::333333333333:assumed-role/AWSReservedSSO_DataScientist_[0-9a-f]{16}/alice$"
)


@pytest.fixture
async def org(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    """The organization in the emulator (one item a page), the hand-written AWS config."""
    config = EmulatorConfig(portal_page_size=1)
    emulator = Emulator(config=config, directory=organization_directory())
    async with emulator.running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        home.write_aws_config(HAND_WRITTEN)
        home.write_credd_config(LISTEN_ANY_PORT)
        yield World(home, emu)


def throttle(emu: Emulator) -> None:
    """The portal refuses a few calls of each listing, as a busy Identity Center does."""
    emu.faults.add("ListAccounts", error_code="TooManyRequestsException", count=2)
    emu.faults.add("ListAccountRoles", error_code="TooManyRequestsException", count=3)


# ----------------------------------------------------------------------------- end to end


async def test_populate_adds_every_role_keeps_every_byte_and_the_daemon_serves_it(
    org: World,
) -> None:
    emu, config = org.emu, org.home.aws_config
    before = config.read_bytes()
    async with org.serving():
        await login(org.env)
        throttle(emu)

        dry = await credd(org.env, "populate", "my-sso", "--dry-run")
        assert dry.returncode == 0, str(dry)
        assert dry.stdout == APPENDED.lstrip("\n")
        assert dry.stderr == f"Dry run: would add 6 profiles ({REACH}); nothing written.\n"
        assert config.read_bytes() == before

        throttle(emu)
        done = await credd(org.env, "populate", "my-sso")
        assert done.returncode == 0, str(done)
        # not a terminal: the summary only, no progress
        assert done.stderr == (
            f"Added 6 profiles in {config} ({REACH}).\nThe running daemon serves them now.\n"
        )
        assert [line.split(" ")[1] for line in done.stdout.splitlines()] == ADDED
        assert "added Data-Analytics-EU.DataScientist (333333333333 DataScientist)\n" in done.stdout
        # the file had no final newline: one is added, and every other byte is kept
        assert config.read_bytes() == before + b"\n" + APPENDED.encode()
        assert emu.faults.pending() == []  # every throttle was met, and outlasted
        # one item a page: 5 pages of accounts and 8 of roles a run, 2 runs, and the
        # throttled calls on top
        assert emu.calls["ListAccounts"] == 2 * 5 + 2 * 2
        assert emu.calls["ListAccountRoles"] == 2 * 8 + 2 * 3

        served = await credd(
            org.env,
            "exec",
            "Data-Analytics-EU.DataScientist",
            "--",
            sys.executable,
            "-c",
            WHOAMI,
        )
        assert served.returncode == 0, str(served)
        seen = json.loads(served.stdout)
        assert seen["method"] == "container-role"  # through the daemon, not luck
        assert DATA_SCIENTIST_ARN.match(seen["arn"]), seen
        assert seen["account"] == "333333333333"

        again = await credd(org.env, "populate", "my-sso")
        assert again.returncode == 0, str(again)
        assert again.stdout == ""
        assert (
            again.stderr
            == f"Nothing to change in {config} (8 roles in 5 accounts, 8 already served).\n"
        )
        assert config.read_bytes() == before + b"\n" + APPENDED.encode()


async def test_without_a_daemon_the_cached_token_is_renewed_and_used(org: World) -> None:
    await login(org.env)  # no daemon: the token lives in the AWS CLI's cache alone
    cached = json.loads(org.cache_file.read_text())
    cached["expiresAt"] = "2020-01-01T00:00:00Z"  # as if the token had run out
    org.cache_file.write_text(json.dumps(cached))
    refreshes = org.emu.calls["CreateToken"]

    result = await credd(
        org.env, "populate", "my-sso", "--template", "{session}-{account_id}-{role_name}"
    )
    assert result.returncode == 0, str(result)
    assert org.emu.calls["CreateToken"] == refreshes + 1  # renewed with the refresh token
    renewed = json.loads(org.cache_file.read_text())
    assert renewed["accessToken"] != cached["accessToken"]
    assert result.stderr == f"Added 6 profiles in {org.home.aws_config} ({REACH}).\n"
    assert "[profile my-sso-555555555555-Admin]\n" in org.home.aws_config.read_text()


async def test_prune_removes_only_populates_own_profiles_of_roles_gone(org: World) -> None:
    config = org.home.aws_config
    await login(org.env)
    assert (await credd(org.env, "populate", "my-sso")).returncode == 0
    # the user edits one of populate's profiles, and chains a role on another
    text = config.read_text()
    text = text.replace(
        "sso_role_name = ReadOnly\nregion = us-east-1\n",
        "sso_role_name = ReadOnly\nregion = us-east-1\noutput = json\n",
    )
    text += (
        "\n[profile sandbox-admin]\nrole_arn = arn:aws:iam::555555555555:role/Admin\n"
        "source_profile = Sandbox-Ana-s-team.Admin\n"
    )
    config.write_text(text)
    # the administrator takes Data & Analytics, the Sandbox and Development's roles away
    directory = org.emu.directory
    alice = directory.user("alice")
    kept = {"222222222222": ("Admin",), "444444444444": ("ReadOnly", "NetworkAdmin")}
    org.emu.directory = replace(directory, users=(replace(alice, assignments=kept),))

    dry = await credd(org.env, "populate", "my-sso", "--prune", "--dry-run")
    assert dry.returncode == 0, str(dry)
    assert dry.stdout.splitlines() == [
        "# would remove [profile Development.Admin]",
        "# would remove [profile Data-Analytics-EU.DataScientist]",
    ]
    assert config.read_text() == text

    result = await credd(org.env, "populate", "my-sso", "--prune")
    assert result.returncode == 0, str(result)
    assert result.stdout == "removed Development.Admin\nremoved Data-Analytics-EU.DataScientist\n"
    assert result.stderr.splitlines() == [
        "credd: kept profile Data-Analytics-EU.ReadOnly, whose role is gone: edited by hand",
        "credd: kept profile Sandbox-Ana-s-team.Admin, whose role is gone: "
        "profile sandbox-admin uses it as its source_profile",
        f"Added 0 profiles and removed 2 in {config} (3 roles in 2 accounts, 3 already served).",
    ]
    expected, _ = without_profiles(
        text,
        ["Development.Admin", "Data-Analytics-EU.DataScientist"],
        comment="# credd populate: my-sso",
        keys=POPULATE_KEYS,
    )
    after = config.read_text()
    assert after == expected
    # the hand-written dev (Development's ReadOnly, gone too) was never populate's
    assert "[profile dev]\n" in after
    assert after.startswith(HAND_WRITTEN)


async def test_errors_are_one_line(org: World) -> None:
    not_logged_in = await credd(org.env, "populate", "my-sso")
    assert not_logged_in.returncode == 1
    assert not_logged_in.stderr.count("\n") == 1
    assert "needs a new login" in not_logged_in.stderr
    assert "credd login my-sso" in not_logged_in.stderr

    unknown = await credd(org.env, "populate", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("credd: 'nope' is no [sso-session] of ")

    bad = await credd(org.env, "populate", "my-sso", "--template", "{account}")
    assert bad.returncode == 2
    assert "{account} is not one of {account_name}, {account_id}" in bad.stderr
    assert org.home.aws_config.read_text() == HAND_WRITTEN


# ----------------------------------------------------------------------------- the listing


async def listed(world: World, policy: FetchPolicy, sleep: Sleep = anyio.sleep) -> list[Assignment]:
    """:func:`list_assignments` in this process, with the session kept as credd keeps it."""
    settings = world.settings
    spec = settings.sessions["my-sso"]
    assert isinstance(spec, SsoSessionSpec)
    async with anyio.create_task_group() as tg:
        session = IdentityCenterSession(
            spec,
            cache=sso_cache(settings),
            clients=aws_clients(settings),
            context=SessionContext(clock=SystemClock(), task_group=tg, margin_seconds=600),
        )
        found = await list_assignments(
            spec,
            tokens=session,
            clients=aws_clients(settings),
            policy=policy,
            sleep=sleep,
            draw=lambda: 0.5,
        )
        tg.cancel_scope.cancel()
    return found


async def test_throttled_calls_back_off_capped_and_jittered(org: World) -> None:
    await org.login()
    throttle(org.emu)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    # one call at a time: the three throttles of the role listings fall on one call
    policy = FetchPolicy(concurrency=1, backoff_base_seconds=1.0, backoff_cap_seconds=2.0)
    found = await listed(org, policy, sleep)
    assert len(found) == 8
    assert Assignment("333333333333", "DataScientist", "Data & Analytics (EU)") in found
    # 1 s doubled per refusal in a row, capped at 2 s; half of it fixed, half drawn (0.5)
    assert slept == [0.75, 1.5, 0.75, 1.5, 1.5]
    assert org.emu.faults.pending() == []


async def test_calls_in_flight_keep_to_the_bound(org: World) -> None:
    emu = org.emu
    await org.login()
    # every role listing waits a little in the portal, so that calls overlap
    emu.faults.add("ListAccountRoles", latency=0.05, count=None)
    found = await listed(org, FetchPolicy(concurrency=2))
    assert len(found) == 8
    assert 1 <= emu.peak_in_flight["ListAccountRoles"] <= 2
    assert emu.peak_in_flight["ListAccounts"] == 1  # pages one after the other


async def test_a_refused_token_is_renewed_and_the_listing_begun_again(org: World) -> None:
    emu = org.emu
    await org.login()
    settings = org.settings
    spec = settings.sessions["my-sso"]
    assert isinstance(spec, SsoSessionSpec)
    # the portal refuses the token once (revoked elsewhere, say)
    first = emu.calls["ListAccounts"]
    emu.faults.add("ListAccounts", error_code="UnauthorizedException")
    refreshes = emu.calls["CreateToken"]
    async with anyio.create_task_group() as tg:
        session = IdentityCenterSession(
            spec,
            cache=sso_cache(settings),
            clients=aws_clients(settings),
            context=SessionContext(clock=SystemClock(), task_group=tg, margin_seconds=600),
        )
        found = await list_assignments(spec, tokens=session, clients=aws_clients(settings))
        tg.cancel_scope.cancel()
    assert len(found) == 8
    assert emu.calls["CreateToken"] == refreshes + 1
    assert emu.calls["ListAccounts"] == first + 1 + 5  # refused, then all five pages

    emu.faults.add("ListAccounts", error_code="UnauthorizedException", count=2)
    async with anyio.create_task_group() as tg:
        session = IdentityCenterSession(
            spec,
            cache=sso_cache(settings),
            clients=aws_clients(settings),
            context=SessionContext(clock=SystemClock(), task_group=tg, margin_seconds=600),
        )
        with pytest.raises(LoginRequired, match="the SSO portal refused the access token"):
            await list_assignments(spec, tokens=session, clients=aws_clients(settings))
        tg.cancel_scope.cancel()
    assert emu.calls["CreateToken"] == refreshes + 2  # renewed once more, then given up


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Data & Analytics (EU)", "Data-Analytics-EU"),
        ("Sandbox: Ana's team", "Sandbox-Ana-s-team"),
        ("a--b  c", "a-b-c"),
        ("x@y+z=w,v.u_t-9", "x@y+z=w,v.u_t-9"),
        ("ünïcode", "n-code"),
        ("[profile]\nx = 1", "profile-x-=-1"),
        ("$(rm -rf ~)", "rm-rf"),
        ("???", ""),
    ],
)
def test_safe_names(text: str, name: str) -> None:
    assert safe_name(text) == name


def test_names_from_the_template() -> None:
    role = Assignment("333333333333", "ReadOnly", "Data & Analytics (EU)")
    assert (
        profile_name("{account_name}.{role_name}", role, "my-sso") == "Data-Analytics-EU.ReadOnly"
    )
    assert profile_name("{session}/{account_id}/{role_name}", role, "my sso") == (
        "my-sso-333333333333-ReadOnly"
    )
    nameless = Assignment("333333333333", "ReadOnly", "???")
    assert profile_name("{account_name}.{role_name}", nameless, "s") == "333333333333.ReadOnly"
    assert profile_name("???", nameless, "s") == "333333333333.ReadOnly"


@pytest.mark.parametrize(
    "template",
    ["{account}", "{account_name.upper}", "{role_name!r}", "{account_id:>20}", "{", "{}", "{0}"],
)
def test_templates_name_only_their_fields(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        check_template(template)
    with pytest.raises(ValueError, match="template"):
        Options(template=template)


def test_a_region_must_be_one() -> None:
    assert Options(region="eu-west-1").region == "eu-west-1"
    with pytest.raises(ValueError, match="region"):
        Options(region="eu-west-1\n[profile x]")


SPEC = SsoSessionSpec(
    name="my-sso",
    start_url=START_URL,
    region="us-east-1",
    registration_scopes=("sso:account:access",),
    legacy=False,
    endpoint_profile=None,
)


def plan(text: str, roles: list[Assignment], template: str = DEFAULT_TEMPLATE) -> list[str]:
    done = plan_profiles(
        text,
        config_file=Path("config"),
        spec=SPEC,
        assignments=roles,
        options=Options(template=template),
        reserved={"analyst"},
    )
    return [added.name for added in done.added]


def test_collisions_get_the_account_id_then_a_number() -> None:
    roles = [
        Assignment("111111111111", "Admin", "Sandbox"),
        Assignment("222222222222", "Admin", "Sandbox"),  # two accounts named alike
        Assignment("333333333333", "Admin", "Taken"),
        Assignment("444444444444", "Admin", "analyst"),  # credd's own config has it
        Assignment("555555555555", "Admin", "default"),
        Assignment("555555555555", "ReadOnly", "default"),
    ]
    text = "[profile Taken.Admin]\nregion = eu-west-1\n[profile Taken.Admin-333333333333]\n"
    assert plan(text, roles) == [
        "Sandbox.Admin-111111111111",
        "Sandbox.Admin-222222222222",
        "Taken.Admin-333333333333-2",
        "analyst.Admin",
        "default.Admin",
        "default.ReadOnly",
    ]
    assert plan(text, roles, "{account_name}") == [
        "Sandbox-111111111111",
        "Sandbox-222222222222",
        "Taken",
        "analyst-444444444444",
        "default-555555555555",
        "default-555555555555-2",
    ]


def test_served_means_the_same_portal_account_and_role_whatever_the_name() -> None:
    roles = [
        Assignment("111111111111", "Admin", "Dev"),
        Assignment("222222222222", "Admin", "Prod"),
        Assignment("333333333333", "Admin", "Data"),
    ]
    text = f"""\
[sso-session other]
sso_start_url = {START_URL}/
sso_region = us-east-1
[sso-session elsewhere]
sso_start_url = https://d-9999999999.awsapps.com/start
sso_region = us-east-1
[profile a]
sso_session = other
sso_account_id = 111111111111
sso_role_name = Admin
[profile b]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_account_id = 222222222222
sso_role_name = Admin
[profile c]
sso_session = elsewhere
sso_account_id = 333333333333
sso_role_name = Admin
"""
    assert plan(text, roles) == ["Data.Admin"]


def test_a_legacy_session_gets_legacy_profiles() -> None:
    legacy = replace(SPEC, name=START_URL, legacy=True, registration_scopes=())
    text = f"""\
[profile old]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_account_id = 111111111111
sso_role_name = Admin
"""
    roles = [
        Assignment("111111111111", "Admin", "Dev"),
        Assignment("222222222222", "Admin", "Prod"),
    ]
    done = plan_profiles(
        text, config_file=Path("config"), spec=legacy, assignments=roles, options=Options()
    )
    assert [added.name for added in done.added] == ["Prod.Admin"]
    assert done.result == text + (
        f"\n# credd populate: {START_URL}\n[profile Prod.Admin]\n"
        f"sso_start_url = {START_URL}\nsso_region = us-east-1\n"
        "sso_account_id = 222222222222\nsso_role_name = Admin\nregion = us-east-1\n"
    )
    # and --prune knows them as its own once the role is gone
    pruned = plan_profiles(
        done.result,
        config_file=Path("config"),
        spec=legacy,
        assignments=roles[:1],
        options=Options(prune=True),
    )
    assert pruned.removed == ("Prod.Admin",)
    assert pruned.result == text


# ----------------------------------------------------------------------------- the writer


PROFILE = NewProfile(
    "Dev.Admin",
    (("sso_session", "my-sso"), ("sso_account_id", "111111111111")),
    "# credd populate: my-sso",
)


@pytest.mark.parametrize(
    ("text", "appended", "after_removal"),
    [
        ("", "# credd populate: my-sso\n[profile Dev.Admin]\n", ""),
        (
            "[default]\nregion = x",
            "\n\n# credd populate: my-sso\n[profile Dev.Admin]\n",
            "[default]\nregion = x\n",  # the final newline it lacked stays
        ),
        (
            "[default]\nregion = x\n\n",
            "# credd populate: my-sso\n[profile Dev.Admin]\n",
            "[default]\nregion = x\n",  # the blank line before it goes with it
        ),
        (
            "[default]\r\nregion = x\r\n",
            "\r\n# credd populate: my-sso\r\n[profile Dev.Admin]\r\n",
            "[default]\r\nregion = x\r\n",
        ),
    ],
)
def test_sections_are_appended_and_nothing_else_changes(
    text: str, appended: str, after_removal: str
) -> None:
    result = with_profiles(text, [PROFILE])
    assert result.startswith(text)
    newline = "\r\n" if "\r\n" in text else "\n"
    settings = f"sso_session = my-sso{newline}sso_account_id = 111111111111{newline}"
    assert result == text + appended + settings
    assert marked_profiles(result, "# credd populate: my-sso") == ["Dev.Admin"]
    removed, names = without_profiles(
        result, ["Dev.Admin"], comment="# credd populate: my-sso", keys=POPULATE_KEYS
    )
    assert names == ["Dev.Admin"]
    assert removed == after_removal


def test_only_what_could_have_been_written_is_removed() -> None:
    text = with_profiles("# mine\n", [PROFILE, replace(PROFILE, name="Other")])
    edits = {
        "a key of the user's": text.replace(
            "[profile Other]\n", "[profile Other]\noutput = json\n"
        ),
        "a comment inside": text.replace("[profile Other]\n", "[profile Other]\n# mine\n"),
        "no marker": text.replace("# credd populate: my-sso\n[profile Other]", "[profile Other]"),
        "a nested value": text + "  nested = 1\n",
        "a setting after a comment": text + "# mine\nregion = x\n",
    }
    for why, edited in edits.items():
        result, names = without_profiles(
            edited, ["Other"], comment="# credd populate: my-sso", keys=POPULATE_KEYS
        )
        assert (result, names) == (edited, []), why


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("a b", ()),
        ("x]\n[profile y", ()),
        ("default", ()),
        ("", ()),
        ("ok", (("region", "eu-west-1\nrole_arn = x"),)),
        ("ok", (("Region", "eu-west-1"),)),
        ("ok", (("region", ""),)),
    ],
)
def test_nothing_but_one_line_each_is_written(
    name: str, settings: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(ValueError, match="credd writes"):
        NewProfile(name, settings)


def test_the_write_is_atomic_through_a_symlink_and_only_over_what_was_read(
    tmp_path: Path,
) -> None:
    target = tmp_path / "dotfiles" / "aws-config"
    target.parent.mkdir()
    target.write_bytes(b"[default]\nregion = x\n")
    target.chmod(0o640)
    link = tmp_path / "config"
    link.symlink_to(target)
    with pytest.raises(ConfigChanged):
        replace_config(link, b"what someone else read\n", b"new\n")
    assert target.read_bytes() == b"[default]\nregion = x\n"

    replace_config(link, b"[default]\nregion = x\n", b"new\n")
    assert link.is_symlink()  # written through to its target, not replaced
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["aws-config"]  # no temporary left

    fresh = tmp_path / "new" / "config"
    replace_config(fresh, None, b"[profile a]\n")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
