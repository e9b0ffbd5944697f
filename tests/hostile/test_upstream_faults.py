"""A hostile upstream: every operation credd renews with, answering every way but the right one.

Issue 6, item 7. For each upstream operation on a renewal path (CreateToken's
refresh, GetRoleCredentials, AssumeRole, Sign-In's CreateOAuth2Token,
CreateTokenWithIAM) and each misbehaviour the emulator's fault modes can act
out (invalid JSON, a truncated body, wrong types, missing members, a huge
body, a hang past the client's read timeout, a throttling storm, 5xx, a
dropped connection), the daemon holds valid credentials, the renewal falls due
on the shared ManualClock, and then:

1. what is still valid is served unchanged;
2. nothing is marked login-required (garbage proves nothing about a refresh
   token), ``/v1/status`` says retrying (or error), and no refresh token is lost;
3. the retries back off: the upstream calls over simulated time are few;
4. no secret, and nothing of a huge body, reaches the log or the status, and
   every log line is short;
5. once what is held has expired, the endpoint answers 503 with the documented
   body rather than serve expired credentials;
6. once the fault clears, the next renewal succeeds and fresh credentials are served.

botocore's own retries (real sleeps of a second or so) are turned off for the
matrix (``credd.aws.BOTOCORE_RETRIES = 0``): each credd attempt is then one
upstream call, so what is counted is credd's own backoff.
:func:`test_botocore_retries_stay_within_each_attempt` counts them with the
default on. The read timeout is shortened so that a hang costs a fifth of a
second, not ten.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import credd.aws
from credd.aws import AwsClients
from credd.clock import ManualClock
from credd.daemon import DaemonHandle, running_daemon
from credd.engine.schedule import BACKOFF_CAP_SECONDS
from credd.errors import UpstreamError
from credd.testing.emulator import Emulator, EmulatorConfig
from credd.testing.emulator.clients import aws_client
from credd.testing.emulator.oauth import JWT_BEARER_GRANT
from credd.wiring import trusted_identity_cache
from tests.support.configs import SIGNIN_CONFIG, USER_ARN
from tests.support.home import Home
from tests.support.inprocess import get, login
from tests.support.logs import captured_log
from tests.support.signin import signin_login
from tests.support.waiting import eventually
from tests.support.world import World

pytestmark = pytest.mark.slow

#: what a fake answer carries where its secrets go: it must never be seen again
CANARY = "CANARY-SECRET-0f1e2d3c4b5a"
#: the read timeout while a test runs: a hang costs this much real time per call
READ_TIMEOUT = 0.2
#: a huge body: eight times what credd reads of an answer
HUGE = 8 * credd.aws.MAX_ANSWER_BYTES
#: how long the storm lasts in simulated time (unless what is held lapses sooner),
#: and the steps it is watched in
STORM_SECONDS = 15 * 60
STEP_SECONDS = 30
#: a log line longer than this is a log line carrying what it should not
MAX_LOG_LINE = 2000
#: the most attempts a 15-minute storm may cost: capped exponential backoff (1 s
#: doubling to 300 s, equal jitter) allows at most 15; a hot loop makes thousands
MAX_STORM_ATTEMPTS = 15
ERROR_BODY_KEYS = {"code", "message", "Code", "Message"}


@pytest.fixture
async def world(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setattr(credd.aws, "READ_TIMEOUT_SECONDS", READ_TIMEOUT)
    monkeypatch.setattr(credd.aws, "BOTOCORE_RETRIES", 0)
    clock = ManualClock(datetime.now(UTC))
    # botocore signs with the real time while the emulator's clock moves on
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        yield World(home, emu)


# ------------------------------------------------------------------------ the operations


@dataclass(frozen=True)
class Operation:
    """One upstream operation on a renewal path, and how to bring its renewal about."""

    name: str
    #: what the endpoint serves from it: a path, and the member that tells sets apart
    path: str
    key: str
    #: how long after the start its renewal is due, and everything held still valid
    due_after: int
    #: how long the storm then lasts: what is held stays valid throughout
    storm_seconds: int
    #: a well-formed answer with the canary where its secrets go (bytes on the wire)
    answer: bytes
    #: the same answer with members of the wrong type
    wrong_types: bytes
    #: an answer missing what matters
    missing: bytes
    throttling_code: str
    #: logs in (or configures) whatever serves ``path``
    setup: Callable[[World], Awaitable[None]]
    #: the refresh token on disk of the session behind it
    refresh_token: Callable[[World], str]
    #: whether the operation renews that session (and rotates its refresh token)
    renews_session: bool = True

    @property
    def served_name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    def held_key(self, daemon: DaemonHandle) -> str | None:
        """What the daemon holds in memory for ``path`` (its key), if anything valid."""
        if self.key == "accessToken":
            session = daemon.broker.bearer_session(self.served_name)
            token = session.usable_token() if session else None
            return token.access_token.reveal() if token else None
        creds = daemon.broker.usable(self.served_name)
        return creds.access_key_id if creds else None

    async def fetch(self, daemon: DaemonHandle) -> None:
        """Get something valid into memory, however long it takes (the first fetch)."""
        if self.key == "accessToken":
            session = daemon.broker.bearer_session(self.served_name)
            assert session is not None
            await session.token()
        else:
            await daemon.broker.credentials(self.served_name, wait=None)


async def identity_center(world: World, *, token_ttl: int, role_ttl: int) -> None:
    world.emu.config.update({"access_token_ttl": token_ttl, "role_ttl": role_ttl})
    world.home.write_aws_config()
    world.home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
    await login(world.home.settings(), world.clock)


async def signin(world: World) -> None:
    world.home.write_aws_config(SIGNIN_CONFIG)
    world.home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
    await signin_login(world)


def signin_refresh_token(world: World) -> str:
    cached = world.cached(USER_ARN)
    return str(cached["refreshToken"])


async def trusted_identity(world: World) -> None:
    world.write_assertion(lifetime=86400)
    world.configure(
        JWT_BEARER_GRANT,
        assertion_file=str(world.assertion_file),
        role_arn="",
        role_session_name="",
    )


def trusted_refresh_token(world: World) -> str:
    settings = world.home.settings()
    token = trusted_identity_cache(settings).load_token("analyst")
    assert token is not None
    assert token.refresh_token is not None
    return token.refresh_token.reveal()


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _sts(credentials: str) -> bytes:
    return (
        '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<AssumeRoleResult>{credentials}<AssumedRoleUser><Arn>"
        "arn:aws:sts::222222222222:assumed-role/Admin/credd-test</Arn>"
        "<AssumedRoleId>AROA:credd-test</AssumedRoleId></AssumedRoleUser></AssumeRoleResult>"
        "</AssumeRoleResponse>"
    ).encode()


def _sts_credentials(expiration: str) -> str:
    return (
        f"<Credentials><AccessKeyId>ASIACANARY</AccessKeyId><SecretAccessKey>{CANARY}"
        f"</SecretAccessKey><SessionToken>{CANARY}</SessionToken>"
        f"<Expiration>{expiration}</Expiration></Credentials>"
    )


_LATER_MS = int((datetime.now(UTC) + timedelta(days=1)).timestamp() * 1000)
OPERATIONS = [
    Operation(
        "CreateToken",
        "/v1/credentials/dev",
        "AccessKeyId",
        due_after=41 * 60,  # the access token (1 h) renews 20 min ahead
        storm_seconds=STORM_SECONDS,
        answer=_json(
            {
                "accessToken": CANARY,
                "refreshToken": CANARY,
                "tokenType": "Bearer",
                "expiresIn": 3600,
            }
        ),
        wrong_types=_json({"accessToken": 5, "tokenType": "Bearer", "expiresIn": "soon"}),
        missing=_json({"tokenType": "Bearer", "refreshToken": CANARY}),
        throttling_code="SlowDownException",
        setup=lambda world: identity_center(world, token_ttl=3600, role_ttl=7200),
        refresh_token=World.sso_refresh_token,
    ),
    Operation(
        "GetRoleCredentials",
        "/v1/credentials/dev",
        "AccessKeyId",
        due_after=41 * 60,  # the role credentials (1 h) renew 20 min ahead
        storm_seconds=STORM_SECONDS,
        answer=_json(
            {
                "roleCredentials": {
                    "accessKeyId": "ASIACANARY",
                    "secretAccessKey": CANARY,
                    "sessionToken": CANARY,
                    "expiration": _LATER_MS,
                }
            }
        ),
        wrong_types=_json(
            {"roleCredentials": {"accessKeyId": 5, "secretAccessKey": [], "expiration": "soon"}}
        ),
        missing=_json({"roleCredentials": {"secretAccessKey": CANARY}}),
        throttling_code="TooManyRequestsException",
        setup=lambda world: identity_center(world, token_ttl=7200, role_ttl=3600),
        refresh_token=World.sso_refresh_token,
        renews_session=False,
    ),
    Operation(
        "AssumeRole",
        "/v1/credentials/admin",
        "AccessKeyId",
        due_after=41 * 60,  # the chained role (1 h) renews 20 min ahead; dev lasts 2 h
        storm_seconds=STORM_SECONDS,
        answer=_sts(_sts_credentials("2099-01-01T00:00:00Z")),
        wrong_types=_sts(_sts_credentials("soon")),
        missing=_sts(""),
        throttling_code="Throttling",
        setup=lambda world: identity_center(world, token_ttl=7200, role_ttl=7200),
        refresh_token=World.sso_refresh_token,
        renews_session=False,
    ),
    Operation(
        "CreateOAuth2Token",
        "/v1/credentials/console",
        "AccessKeyId",
        due_after=460,  # 15-minute credentials renew 7.5 min ahead
        storm_seconds=6 * 60,  # then they have 7.3 min left
        answer=_json(
            {
                "accessToken": {
                    "accessKeyId": "ASIACANARY",
                    "secretAccessKey": CANARY,
                    "sessionToken": CANARY,
                },
                "tokenType": "aws_sigv4",
                "expiresIn": 900,
                "refreshToken": CANARY,
            }
        ),
        wrong_types=_json({"accessToken": CANARY, "tokenType": 5, "expiresIn": "soon"}),
        missing=_json({"tokenType": "aws_sigv4", "refreshToken": CANARY}),
        throttling_code="TooManyRequestsError",
        setup=signin,
        refresh_token=signin_refresh_token,
    ),
    Operation(
        "CreateTokenWithIAM",
        "/v1/tokens/analyst",
        "accessToken",
        due_after=41 * 60,  # the access token (1 h) renews 20 min ahead
        storm_seconds=STORM_SECONDS,
        answer=_json(
            {
                "accessToken": CANARY,
                "refreshToken": CANARY,
                "tokenType": "Bearer",
                "expiresIn": 3600,
            }
        ),
        wrong_types=_json({"accessToken": 5, "tokenType": "Bearer", "expiresIn": "soon"}),
        missing=_json({"refreshToken": CANARY, "idToken": CANARY}),
        throttling_code="SlowDownException",
        setup=trusted_identity,
        refresh_token=trusted_refresh_token,
    ),
]

#: each misbehaviour, as fault keyword arguments for an operation
MISBEHAVIOURS: dict[str, Callable[[Operation], dict[str, Any]]] = {
    "invalid-json": lambda op: {"body": op.answer[: len(op.answer) // 2] + b"}}{", "status": 200},
    "truncated": lambda op: {"body": op.answer, "truncate_at": len(op.answer) - 10},
    "wrong-types": lambda op: {"body": op.wrong_types, "status": 200},
    "missing-fields": lambda op: {"body": op.missing, "status": 200},
    "huge-body": lambda op: {"huge_body": HUGE},
    "hang": lambda op: {"hang": True},
    "throttling-storm": lambda op: {"error_code": op.throttling_code},
    "5xx": lambda op: {"status": 503},
    "connection-drop": lambda op: {"drop_connection": True},
}


# ---------------------------------------------------------------------------- watching


def everything_due_has_run(daemon: DaemonHandle, now: datetime) -> bool:
    """Every renewal or retry that is due has run: all the loops plan for later."""
    for session in daemon.broker.session_statuses():
        if session.next_renewal is not None and session.next_renewal <= now:
            return False
    for profile in daemon.broker.profile_statuses():
        if profile.next_renewal is not None and profile.next_renewal <= now:
            return False
    return True


async def settle(world: World, daemon: DaemonHandle) -> None:
    await eventually(lambda: everything_due_has_run(daemon, world.clock.now()))


async def served(daemon: DaemonHandle, op: Operation) -> dict[str, Any]:
    status, body = await get(daemon, op.path)
    assert status == 200, body
    return body


def secrets_of(body: dict[str, Any]) -> list[str]:
    return [str(body[k]) for k in ("SecretAccessKey", "Token", "accessToken") if k in body]


def states(document: dict[str, Any]) -> dict[str, str]:
    found = {f"session {s['name']}": s["state"] for s in document["sessions"]}
    found.update({f"profile {p['name']}": p["state"] for p in document["profiles"]})
    return found


def newly_login_required(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {
        name
        for name, state in after.items()
        if state == "login-required" and before.get(name) != "login-required"
    }


def assert_nothing_leaked(log: str, document: dict[str, Any], secrets: list[str]) -> None:
    shown = json.dumps(document)
    for secret in [CANARY, *secrets]:
        assert secret not in log
        assert secret not in shown
    assert "x" * 200 not in log  # nothing of a huge body
    assert "x" * 200 not in shown
    longest = max(map(len, log.splitlines()), default=0)
    assert longest <= MAX_LOG_LINE, f"a log line of {longest} characters"
    for record in [*document["sessions"], *document["profiles"]]:
        assert len(record["last_error"] or "") <= 2 * credd.aws.MAX_MESSAGE_CHARS


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("misbehaviour", list(MISBEHAVIOURS))
@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
async def test_a_misbehaving_upstream_never_costs_what_is_valid(
    world: World, op: Operation, misbehaviour: str
) -> None:
    emu, clock = world.emu, world.clock
    await op.setup(world)
    with captured_log() as stream:
        async with running_daemon(world.home.settings(), clock=clock) as daemon:
            await op.fetch(daemon)
            held = await served(daemon, op)
            refresh_token = op.refresh_token(world)
            # what needs a login anyway (configured, never logged in): not the fault's doing
            baseline = states((await get(daemon, "/v1/status"))[1])
            emu.faults.add(op.name, count=None, **MISBEHAVIOURS[misbehaviour](op))
            before = emu.calls[op.name]

            # the storm: the renewal falls due and keeps failing for 15 minutes
            clock.advance(op.due_after)
            for _ in range(op.storm_seconds // STEP_SECONDS):
                await settle(world, daemon)
                clock.advance(STEP_SECONDS)
            await settle(world, daemon)
            calls = emu.calls[op.name] - before
            # aiohttp sends a GET again, once, when a reused connection closes under it
            per_attempt = 2 if misbehaviour == "connection-drop" else 1
            assert 2 <= calls <= MAX_STORM_ATTEMPTS * per_attempt, f"{calls} calls in the storm"

            # (1) what is valid is served unchanged
            assert await served(daemon, op) == held
            # (2) retrying, nobody newly needs a login, no refresh token lost
            status, document = await get(daemon, "/v1/status")
            assert status == 200
            found = states(document)
            assert newly_login_required(baseline, found) == set(), found
            assert set(found.values()) & {"retrying", "error"}, found
            records = [*document["sessions"], *document["profiles"]]
            assert any(record["last_error"] for record in records), document
            if op.renews_session:
                assert op.refresh_token(world) == refresh_token

            # (5) once what is held expires: 503 with the documented body, never expired ones
            expires = held.get("Expiration") or held.get("expiresAt")
            assert isinstance(expires, str)
            clock.set(datetime.fromisoformat(expires) + timedelta(seconds=1))
            await settle(world, daemon)
            status, body = await get(daemon, op.path)
            assert status == 503, body
            assert set(body) == ERROR_BODY_KEYS
            assert body["code"] == body["Code"] == "UpstreamUnavailable"
            _, document = await get(daemon, "/v1/status")
            assert newly_login_required(baseline, states(document)) == set(), states(document)
            if op.renews_session:
                assert op.refresh_token(world) == refresh_token
            log_during_outage = stream.getvalue()
            document_during_outage = document

            # (6) the fault clears: the next retry renews, and fresh credentials are served
            emu.faults.clear()
            clock.advance(BACKOFF_CAP_SECONDS)
            await settle(world, daemon)
            await eventually(lambda: op.held_key(daemon) not in (None, held[op.key]))
            fresh = await served(daemon, op)
            assert fresh[op.key] != held[op.key]
            if op.renews_session:
                assert op.refresh_token(world) != refresh_token  # rotated, and on disk
            _, document = await get(daemon, "/v1/status")
            found = states(document)
            assert {k for k, v in found.items() if v in {"retrying", "error"}} == set(), found
            assert newly_login_required(baseline, found) == set(), found
    # (4) nothing leaked, at any point
    secrets = [*secrets_of(held), *secrets_of(fresh), refresh_token, op.refresh_token(world)]
    assert_nothing_leaked(log_during_outage, document_during_outage, secrets)
    assert_nothing_leaked(stream.getvalue(), document, secrets)


# ----------------------------------------------------------------- the client, up close


def aws_clients(home: Home) -> AwsClients:
    paths = home.paths()
    return AwsClients(paths.aws_config_file, paths.aws_credentials_file)


async def register(clients: AwsClients) -> object:
    async with clients.client("sso-oidc", region="us-east-1", profile=None) as oidc:
        return await oidc.register_client(clientName="credd-test", clientType="public")


async def test_a_huge_answer_is_never_read_whole(world: World) -> None:
    """botocore reads any body whole (aiobotocore's ``await response.content``); credd stops.

    Measured with tracemalloc around one call, in this process: plain aiobotocore
    holds the whole 32 MiB answer (and more while parsing it); credd's client
    gives up after :data:`credd.aws.MAX_ANSWER_BYTES`: beyond what any call costs
    (a client, its endpoint rules), it holds a few megabytes at most.
    """
    size = 32 * 1024 * 1024
    clients = aws_clients(world.home)
    await register(clients)  # botocore's models and endpoint rules, loaded before measuring
    world.emu.faults.add("RegisterClient", huge_body=size, count=2)
    tracemalloc.start()
    try:
        async with aws_client(world.emu.url, "sso-oidc") as plain:
            tracemalloc.reset_peak()
            await plain.register_client(clientName="credd-test", clientType="public")
            plain_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with pytest.raises(UpstreamError, match=r"larger than \d+ bytes") as caught:
            await register(clients)
        credd_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        await register(clients)  # what one call costs anyway (a client, its endpoint rules)
        baseline = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plain_peak >= size
    assert credd_peak - baseline < 4 * credd.aws.MAX_ANSWER_BYTES
    assert len(str(caught.value)) < credd.aws.MAX_MESSAGE_CHARS
    assert "x" * 100 not in str(caught.value)


async def test_an_answer_that_never_comes_meets_the_call_deadline(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read timeout is per read: an answer dripping a byte at a time never trips
    # it. The deadline of the whole call does.
    monkeypatch.setattr(credd.aws, "READ_TIMEOUT_SECONDS", 60.0)
    monkeypatch.setattr(credd.aws, "CALL_DEADLINE_SECONDS", 0.3)
    world.emu.faults.add("RegisterClient", hang=True)
    with pytest.raises(UpstreamError, match=r"did not answer within 0\.3 s") as caught:
        await register(aws_clients(world.home))
    assert caught.value.transient
    await register(aws_clients(world.home))  # the next call is answered
    assert world.emu.calls["RegisterClient"] == 2


@pytest.mark.parametrize(
    ("fault", "calls"),
    [
        ({"error_code": "SlowDownException"}, 1),  # not a throttle to botocore's standard mode
        ({"status": 503}, 1 + credd.aws.BOTOCORE_RETRIES),
        ({"body": b"{not json", "status": 500}, 1 + credd.aws.BOTOCORE_RETRIES),
    ],
)
async def test_botocore_retries_stay_within_each_attempt(
    world: World, monkeypatch: pytest.MonkeyPatch, fault: dict[str, Any], calls: int
) -> None:
    """With botocore's own retries on (as credd runs), one attempt is at most three calls."""
    monkeypatch.setattr(credd.aws, "BOTOCORE_RETRIES", 2)
    world.emu.faults.add("RegisterClient", count=None, **fault)
    with pytest.raises(UpstreamError) as caught:
        await register(aws_clients(world.home))
    assert world.emu.calls["RegisterClient"] == calls
    assert caught.value.transient
    assert "not json" not in str(caught.value)  # a body that is no AWS error is not shown
