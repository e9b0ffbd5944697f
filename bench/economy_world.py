"""Upstream economy: how many calls credd makes to AWS over a simulated day, against the ideal.

Shared by ``bench/economy.py`` (a whole day, N profiles, figures and ratios) and
``tests/hostile/test_economy.py`` (a few hours, the bound guarded in the suite), which
finds it through pytest's ``pythonpath`` (pyproject.toml). A benchmark harness, so
it lives with the benchmarks, not in the installed package.

The real daemon runs in process against the emulator; both read one
:class:`~credd.clock.ManualClock`, so a day passes in seconds. A simulated client
asks for every profile through the real HTTP endpoint every ``request_every``
seconds; the emulator counts every request that reaches each operation.

**The ideal.** Something that lives ``L`` seconds and must be renewed ``m``
seconds before it lapses serves ``L - m`` seconds per upstream call, and no
policy that honours the margin can do with fewer calls: over a span ``T`` that
is one call at each ``k (L - m)``, ``k = 0, 1, ...`` (``k = 0`` only when the
first one falls inside the span: a profile's first request, a trusted-identity
session's first grant; not an access token a login fetched before the span). ``m``
is credd's documented renewal margin (README, "Configure" and "AWS Sign-In"):

* role credentials (GetRoleCredentials, AssumeRole): ``credentials_margin_seconds``,
  capped at half the lifetime;
* Identity Center and trusted-identity access tokens (CreateToken,
  CreateTokenWithIAM with the refresh-token grant): ``token_margin_seconds``, capped
  at half the lifetime;
* Sign-In credentials (CreateOAuth2Token): ``credentials_margin_seconds`` capped at
  half the lifetime, and never less than six minutes.

The ideal leaves out the jitter credd adds (:data:`credd.schedule.JITTER_SHARE` of
the margin, at most :data:`credd.schedule.JITTER_CAP_SECONDS`, always earlier), so
that what jitter costs shows in the ratio. The **bound** is the same formula with the
margin widened by the largest jitter: what the policy allows at worst. The
**SDK floor** is the formula with only the SDKs' own refresh windows as margins
(protocols.md 7 and 8.2): what renewing at the last moment any SDK tolerates
would cost, without credd's headroom for outages.

Time moves event by event: the clock jumps to the next client request or the
next renewal that a session or profile has planned (whichever is first, and never
more than ``max_step``), then waits until every renewal due has happened, so each
happens at the very instant it was planned for.
"""

from __future__ import annotations

import math
import os
import random
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import aiohttp
import anyio

from credd.clock import ManualClock
from credd.config.load import load_settings
from credd.config.settings import RefreshSettings, Settings, SsoSessionSpec
from credd.config.writer import write_login_session
from credd.daemon import DaemonHandle, running_daemon
from credd.engine.schedule import JITTER_CAP_SECONDS, JITTER_SHARE
from credd.files.paths import Paths
from credd.sessions.loopback import LoginOptions
from credd.sessions.signin import MIN_MARGIN_SECONDS
from credd.sessions.signin_login import SigninLogin, SigninLoginOptions, SigninTarget
from credd.sessions.sso_login import SsoLogin
from credd.testing.emulator import Emulator, EmulatorConfig
from credd.wiring import aws_clients, login_cache, sso_cache

START_URL: Final = "https://d-1234567890.awsapps.com/start"
SESSION: Final = "my-sso"
ACCOUNT: Final = "111111111111"
CHAIN_ACCOUNT: Final = "222222222222"
#: DurationSeconds of every chained role (AWS's role-chaining limit: 1 hour)
CHAIN_DURATION: Final = 3600
SIGNIN_PROFILE: Final = "console"
SIGNIN_CHAIN: Final = "console-admin"
TRUSTED_PROFILE: Final = "analyst"
APP_IAM_PROFILE: Final = "app-iam"
APPLICATION_ARN: Final = (
    "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-2222222222222222"
)
SIGNIN_REGION: Final = "us-east-1"

#: the SDKs' own refresh windows (protocols.md 7.1, 7.2, 7.3, 8.2): botocore refreshes
#: container credentials and SSO tokens 15 minutes ahead, every SDK Sign-In credentials
#: 5 minutes ahead; no SDK shares a trusted-identity token (its floor is credd's margin)
SDK_CREDENTIALS_WINDOW: Final = 900.0
SDK_SSO_TOKEN_WINDOW: Final = 900.0
SDK_SIGNIN_WINDOW: Final = 300.0

#: upstream operations renewal may cause, in the order reports list them
RENEWAL_OPERATIONS: Final = (
    "CreateToken",
    "GetRoleCredentials",
    "AssumeRole",
    "CreateOAuth2Token",
    "CreateTokenWithIAM",
)

#: how long the daemon may take to do what is due at one instant (real seconds)
SETTLE_SECONDS: Final = 30.0


# ------------------------------------------------------------------------------ the scenario


@dataclass(frozen=True)
class Scenario:
    """What the simulated day holds: profiles of each kind, how often clients ask."""

    #: Identity Center role profiles (GetRoleCredentials), all of one sso-session
    sso_roles: int = 10
    #: role chains (AssumeRole) on those, one per role profile at most
    chained: int = 2
    #: an AWS Sign-In profile (15-minute credentials), and a role chained on it
    signin: bool = True
    #: a trusted-identity profile (CreateTokenWithIAM, jwt-bearer, identity-enhanced role)
    trusted: bool = True
    #: the simulated span, in seconds
    span: float = 86_400.0
    #: each profile is asked for this often (simulated seconds)
    request_every: float = 300.0
    #: the clock never jumps further than this at once (simulated seconds)
    max_step: float = 300.0

    def __post_init__(self) -> None:
        if self.sso_roles < 1 and (self.chained or self.trusted):
            raise ValueError("chained and trusted-identity profiles need an Identity Center role")
        if not 0 <= self.chained <= self.sso_roles:
            raise ValueError("chained must be between 0 and sso_roles")

    @property
    def role_profiles(self) -> tuple[str, ...]:
        return tuple(f"role-{i}" for i in range(self.sso_roles))

    @property
    def chain_profiles(self) -> tuple[str, ...]:
        return tuple(f"chain-{i}" for i in range(self.chained))

    @property
    def profiles(self) -> tuple[str, ...]:
        """Every profile the clients ask for."""
        names = [*self.role_profiles, *self.chain_profiles]
        if self.signin:
            names += [SIGNIN_PROFILE, SIGNIN_CHAIN]
        if self.trusted:
            names.append(TRUSTED_PROFILE)
        return tuple(names)

    def emulator_config(self) -> EmulatorConfig:
        """The emulator's defaults (AWS's lifetimes), with sessions that outlive the span.

        A Sign-In session lasts 12 hours on AWS; for a day without a new login, the
        emulator lets it last the span. Clocks are not checked: botocore signs with
        the real time while the emulator's clock runs a day ahead.
        """
        return EmulatorConfig(
            poll_interval=0,
            max_clock_skew=None,
            signin_session_ttl=max(int(self.span) + 3600, EmulatorConfig().signin_session_ttl),
        )


def aws_config(scenario: Scenario, *, app_keys: tuple[str, str] | None = None) -> str:
    """The AWS config of the scenario (``app_keys``: the static keys of ``app-iam``)."""
    parts = [
        f"""\
        [sso-session {SESSION}]
        sso_start_url = {START_URL}
        sso_region = us-east-1
        sso_registration_scopes = sso:account:access
        """
    ]
    roles = ("ReadOnly", "Admin")
    for i, name in enumerate(scenario.role_profiles):
        parts.append(
            f"""\
            [profile {name}]
            sso_session = {SESSION}
            sso_account_id = {ACCOUNT}
            sso_role_name = {roles[i % 2]}
            region = eu-west-1
            """
        )
    for i, name in enumerate(scenario.chain_profiles):
        parts.append(
            f"""\
            [profile {name}]
            role_arn = arn:aws:iam::{CHAIN_ACCOUNT}:role/Chain{i}
            source_profile = {scenario.role_profiles[i]}
            duration_seconds = {CHAIN_DURATION}
            """
        )
    if scenario.signin:
        parts.append(
            f"""\
            [profile {SIGNIN_PROFILE}]
            region = {SIGNIN_REGION}

            [profile {SIGNIN_CHAIN}]
            role_arn = arn:aws:iam::{CHAIN_ACCOUNT}:role/Admin
            source_profile = {SIGNIN_PROFILE}
            duration_seconds = {CHAIN_DURATION}
            """
        )
    if scenario.trusted:
        if app_keys is None:
            raise ValueError("a trusted-identity profile needs the keys of app-iam")
        parts.append(
            f"""\
            [profile {APP_IAM_PROFILE}]
            aws_access_key_id = {app_keys[0]}
            aws_secret_access_key = {app_keys[1]}
            """
        )
    return "\n".join(textwrap.dedent(part) for part in parts)


def credd_config(scenario: Scenario, *, assertion_file: Path | None = None) -> str:
    """credd's config: any free loopback port, default margins, the trusted-identity table."""
    text = '[server]\nlisten = "127.0.0.1:0"\n'
    if scenario.trusted:
        if assertion_file is None:
            raise ValueError("a trusted-identity profile needs an assertion file")
        text += textwrap.dedent(
            f"""
            [profiles.{TRUSTED_PROFILE}]
            type = "create-token-with-iam"
            client_id = "{APPLICATION_ARN}"
            sso_region = "us-east-1"
            source_profile = "{APP_IAM_PROFILE}"
            grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
            assertion_file = "{assertion_file}"
            scopes = ["openid", "sts:identity_context"]
            role_arn = "arn:aws:iam::{ACCOUNT}:role/Analyst"
            duration_seconds = {CHAIN_DURATION}
            """
        )
    return text


# ------------------------------------------------------------------------------ the ideal


def calls_in_span(span: float, period: float, *, first_in_span: bool) -> int:
    """Calls at ``k * period`` for ``0 <= k * period <= span`` (``k = 0`` if ``first_in_span``)."""
    if period <= 0:
        raise ValueError("a margin as long as the lifetime leaves nothing to serve")
    renewals = math.floor(span / period + 1e-9)
    return renewals + (1 if first_in_span else 0)


def capped(margin: float, lifetime: float) -> float:
    """A margin larger than half a lifetime is capped at half that lifetime (README)."""
    return min(margin, lifetime / 2)


def largest_jitter(margin: float) -> float:
    return min(margin * JITTER_SHARE, JITTER_CAP_SECONDS)


@dataclass(frozen=True)
class Expectation:
    """``count`` things renewed alike by one upstream operation."""

    operation: str
    what: str
    count: int
    lifetime: float
    #: credd's margin, as documented (capped)
    margin: float
    #: the SDKs' own window: the floor
    sdk_margin: float
    #: whether the first call falls inside the span (else a login made it before)
    first_in_span: bool

    def calls(self, span: float, margin: float) -> int:
        period = self.lifetime - margin
        return self.count * calls_in_span(span, period, first_in_span=self.first_in_span)

    def ideal(self, span: float) -> int:
        return self.calls(span, self.margin)

    def bound(self, span: float) -> int:
        """The most calls the policy allows: every renewal as early as jitter may put it."""
        return self.calls(span, self.margin + largest_jitter(self.margin))

    def floor(self, span: float) -> int:
        return self.calls(span, min(self.sdk_margin, self.margin))


def expectations(
    scenario: Scenario, config: EmulatorConfig, refresh: RefreshSettings
) -> tuple[Expectation, ...]:
    """What the scenario should cost, from the emulator's lifetimes and credd's margins."""
    token_margin = refresh.token_margin_seconds
    creds_margin = refresh.credentials_margin_seconds
    chain = float(CHAIN_DURATION)
    chain_margin = capped(creds_margin, chain)
    found: list[Expectation] = []
    if scenario.sso_roles:
        ttl = float(config.access_token_ttl)
        found.append(
            Expectation(
                "CreateToken",
                "Identity Center access token (refresh grant)",
                count=1,
                lifetime=ttl,
                margin=capped(token_margin, ttl),
                sdk_margin=SDK_SSO_TOKEN_WINDOW,
                first_in_span=False,  # the login fetched the first one
            )
        )
        ttl = float(config.role_ttl)
        found.append(
            Expectation(
                "GetRoleCredentials",
                "Identity Center role profiles",
                count=scenario.sso_roles,
                lifetime=ttl,
                margin=capped(creds_margin, ttl),
                sdk_margin=SDK_CREDENTIALS_WINDOW,
                first_in_span=True,
            )
        )
    if scenario.chained:
        found.append(
            Expectation(
                "AssumeRole",
                "roles chained on them",
                count=scenario.chained,
                lifetime=chain,
                margin=chain_margin,
                sdk_margin=SDK_CREDENTIALS_WINDOW,
                first_in_span=True,
            )
        )
    if scenario.signin:
        ttl = float(config.signin_credentials_ttl)
        found.append(
            Expectation(
                "CreateOAuth2Token",
                "Sign-In credentials (refresh grant)",
                count=1,
                lifetime=ttl,
                margin=max(capped(creds_margin, ttl), MIN_MARGIN_SECONDS),
                sdk_margin=SDK_SIGNIN_WINDOW,
                first_in_span=False,  # the login fetched the first ones
            )
        )
        found.append(
            Expectation(
                "AssumeRole",
                "a role chained on Sign-In",
                count=1,
                lifetime=chain,
                margin=chain_margin,
                sdk_margin=SDK_CREDENTIALS_WINDOW,
                first_in_span=True,
            )
        )
    if scenario.trusted:
        ttl = float(config.iam_token_ttl)
        found.append(
            Expectation(
                "CreateTokenWithIAM",
                "trusted-identity access token (the grant, then refreshes)",
                count=1,
                lifetime=ttl,
                margin=capped(token_margin, ttl),
                sdk_margin=capped(token_margin, ttl),  # no SDK reads it
                first_in_span=True,
            )
        )
        found.append(
            Expectation(
                "AssumeRole",
                "identity-enhanced role (ProvidedContexts)",
                count=1,
                lifetime=chain,
                margin=chain_margin,
                sdk_margin=SDK_CREDENTIALS_WINDOW,
                first_in_span=True,
            )
        )
    return tuple(found)


@dataclass(frozen=True)
class Row:
    operation: str
    calls: int
    ideal: int
    bound: int
    floor: int

    @property
    def ratio(self) -> float:
        return self.calls / self.ideal if self.ideal else math.inf


def rows(calls: Mapping[str, int], expected: Sequence[Expectation], span: float) -> tuple[Row, ...]:
    """Per operation, then ``total``: calls made, the ideal, the bound, the SDK floor."""
    made: list[Row] = []
    for operation in RENEWAL_OPERATIONS:
        mine = [e for e in expected if e.operation == operation]
        if not mine and not calls.get(operation):
            continue
        made.append(
            Row(
                operation,
                calls.get(operation, 0),
                sum(e.ideal(span) for e in mine),
                sum(e.bound(span) for e in mine),
                sum(e.floor(span) for e in mine),
            )
        )
    made.append(
        Row(
            "total",
            sum(r.calls for r in made),
            sum(r.ideal for r in made),
            sum(r.bound for r in made),
            sum(r.floor for r in made),
        )
    )
    return tuple(made)


def table(found: Sequence[Row]) -> str:
    lines = [
        f"{'operation':<20} {'calls':>7} {'ideal':>7} {'ratio':>6} {'bound':>7} {'SDK floor':>9}"
    ]
    for row in found:
        lines.append(
            f"{row.operation:<20} {row.calls:>7} {row.ideal:>7} {row.ratio:>6.3f} "
            f"{row.bound:>7} {row.floor:>9}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the world


@dataclass
class _ApprovingUI:
    """The person at the keyboard: approves a device code at once, on the emulator."""

    emulator: Emulator
    prompts: list[str] = field(default_factory=list)

    def prompt(self, url: str, user_code: str | None, deadline: datetime) -> None:
        self.prompts.append(url)
        if user_code is not None:
            self.emulator.approve_device(user_code)

    def browser_opened(self, opened: bool) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


async def login_identity_center(settings: Settings, emulator: Emulator, clock: ManualClock) -> None:
    """``credd login my-sso --device --no-browser``, the code approved on the emulator."""
    spec = settings.session_for(SESSION)
    assert isinstance(spec, SsoSessionSpec)
    await SsoLogin(
        spec,
        cache=sso_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=_ApprovingUI(emulator),
        options=LoginOptions(device=True, open_browser=False),
    ).run()


async def login_signin(settings: Settings, emulator: Emulator, clock: ManualClock) -> None:
    """``credd login console --signin --remote``: another device signs in, the code is pasted."""
    ui = _ApprovingUI(emulator)

    async def paste() -> str:
        async with aiohttp.ClientSession() as http, http.get(ui.prompts[-1]) as page:
            page.raise_for_status()
            text = await page.text()
        return text.split('id="verification-code">', 1)[1].split("<", 1)[0]

    paths = settings.paths
    result = await SigninLogin(
        SigninTarget(SIGNIN_PROFILE, SIGNIN_REGION, SIGNIN_PROFILE),
        cache=login_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=ui,
        options=SigninLoginOptions(remote=True, open_browser=False),
        read_code=paste,
    ).run()
    write_login_session(paths.aws_config_file, SIGNIN_PROFILE, result.login_session, None)


async def prepare(scenario: Scenario, emulator: Emulator, paths: Paths) -> Settings:
    """Write both configurations and log in; the settings the daemon starts with."""
    keys = None
    assertion_file = paths.home / "idp" / "jwt"
    if scenario.trusted:
        issued = emulator.create_access_key("app-server", ACCOUNT)
        keys = (issued.access_key_id, issued.secret_access_key.reveal())
        assertion = emulator.issuer.mint(
            sub="alice@example.com", lifetime=int(scenario.span) + 3600
        )
        assertion_file.parent.mkdir(parents=True, exist_ok=True)
        assertion_file.write_text(assertion + "\n")
    paths.aws_config_file.parent.mkdir(parents=True, exist_ok=True)
    paths.aws_config_file.write_text(aws_config(scenario, app_keys=keys))
    paths.credd_config_file.parent.mkdir(parents=True, exist_ok=True)
    paths.credd_config_file.write_text(credd_config(scenario, assertion_file=assertion_file))
    settings = load_settings(paths)
    clock = emulator.clock
    assert isinstance(clock, ManualClock)
    if scenario.sso_roles:
        await login_identity_center(settings, emulator, clock)
    if scenario.signin:
        await login_signin(settings, emulator, clock)
        settings = load_settings(paths)  # the login wrote login_session into the profile
    return settings


# ------------------------------------------------------------------------------ the day


class SettleError(RuntimeError):
    """The daemon did not get done what was due (a renewal failing, a session parked)."""


def _pending(daemon: DaemonHandle, now: datetime) -> list[str]:
    """What is due and not yet done; raises :class:`SettleError` for what cannot be."""
    pending: list[str] = []
    for session in daemon.broker.session_statuses():
        if session.state != "ok":
            raise SettleError(f"session {session.name} is {session.state}: {session.last_error}")
        if session.next_renewal is None or session.next_renewal <= now:
            pending.append(f"session {session.name}")
    for profile in daemon.broker.profile_statuses():
        if profile.state in ("cold", "idle"):
            continue
        if profile.state != "fresh":
            raise SettleError(f"profile {profile.name} is {profile.state}: {profile.last_error}")
        if profile.next_renewal is None or profile.next_renewal <= now:
            pending.append(f"profile {profile.name}")
    return pending


async def settle(daemon: DaemonHandle, clock: ManualClock) -> None:
    """Wait until every renewal due at this instant has happened (state, not a guessed time)."""
    polls = 0
    with anyio.move_on_after(SETTLE_SECONDS):
        while _pending(daemon, clock.now()):
            polls += 1
            # mostly a renewal's round trip to the emulator, in this same event loop;
            # every look costs a status of everything, so look less often as it lasts
            await anyio.sleep(0 if polls < 3 else min(0.004, 0.0005 * 2 ** (polls - 3)))
        return
    raise SettleError(f"still due after {SETTLE_SECONDS:.0f} s: {_pending(daemon, clock.now())}")


def _next_planned(daemon: DaemonHandle, now: datetime) -> datetime | None:
    planned: Iterable[datetime | None] = [
        *(s.next_renewal for s in daemon.broker.session_statuses()),
        *(p.next_renewal for p in daemon.broker.profile_statuses()),
    ]
    later = [at for at in planned if at is not None and at > now]
    return min(later) if later else None


@dataclass(frozen=True)
class DayResult:
    calls: Counter[str]
    #: the clients' requests by final status
    requests: Counter[int]
    #: attempts beyond the first (a cold fetch that outlasted the request deadline)
    retries: int
    #: the least time left on any credentials a client was served (simulated seconds)
    least_left: float
    steps: int


#: a client tries this often before giving up, as botocore's container provider does
CLIENT_ATTEMPTS: Final = 3


async def _ask(
    http: aiohttp.ClientSession, daemon: DaemonHandle, profile: str, clock: ManualClock
) -> tuple[int, int, float]:
    """One client's request, retried like botocore's (no pause: simulated time stands still).

    ``(final status, attempts, seconds left on the credentials served)``.
    """
    headers = {"Authorization": daemon.token}
    status = 0
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        async with http.get(f"{daemon.url}/v1/credentials/{profile}", headers=headers) as answer:
            body = await answer.json()
            status = answer.status
        if status == 200:
            expiration = datetime.fromisoformat(str(body["Expiration"]))
            return status, attempt, (expiration - clock.now()).total_seconds()
    return status, CLIENT_ATTEMPTS, math.inf


async def simulate_day(
    scenario: Scenario, daemon: DaemonHandle, emulator: Emulator, clock: ManualClock
) -> DayResult:
    """Clients ask for every profile every ``request_every`` seconds for ``span`` seconds.

    Counts every upstream call from the first request to the end of the span.
    """
    before = Counter(emulator.calls)
    start = clock.now()
    end = start + timedelta(seconds=scenario.span)
    every = timedelta(seconds=scenario.request_every)
    step_cap = timedelta(seconds=scenario.max_step)
    next_request = start
    statuses: Counter[int] = Counter()
    least_left = math.inf
    steps = retries = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        while True:
            await settle(daemon, clock)
            now = clock.now()
            if now >= next_request and now <= end:
                answers: list[tuple[int, int, float]] = []

                async def one(profile: str, into: list[tuple[int, int, float]]) -> None:
                    into.append(await _ask(http, daemon, profile, clock))

                async with anyio.create_task_group() as tg:
                    for profile in scenario.profiles:
                        tg.start_soon(one, profile, answers)
                for status, attempts, left in answers:
                    statuses[status] += 1
                    retries += attempts - 1
                    least_left = min(least_left, left)
                next_request += every
                await settle(daemon, clock)
            if now >= end:
                break
            planned = _next_planned(daemon, now)
            candidates = [next_request, end, now + step_cap]
            if planned is not None:
                candidates.append(planned)
            clock.set(min(candidates))
            steps += 1
    after = emulator.calls
    calls = Counter({op: after[op] - before[op] for op in RENEWAL_OPERATIONS})
    return DayResult(+calls, statuses, retries, least_left, steps)


@asynccontextmanager
async def economy_world(
    scenario: Scenario, paths: Paths, *, start: datetime | None = None
) -> AsyncIterator[tuple[Emulator, ManualClock, Settings]]:
    """The emulator on a ManualClock, both configurations written, every login done.

    ``paths`` is a private HOME's (the caller owns the environment: the tests'
    ``home`` fixture, the bench's throwaway HOME). ``AWS_ENDPOINT_URL`` points at
    the emulator for the lifetime of the block, as botocore reads it there.
    """
    # whole seconds: what the caches and STS write down is then exactly what was issued
    clock = ManualClock(start or datetime.now(UTC).replace(microsecond=0))
    async with Emulator(clock, config=scenario.emulator_config()).running() as emulator:
        previous = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = emulator.url
        try:
            settings = await prepare(scenario, emulator, paths)
            yield emulator, clock, settings
        finally:
            if previous is None:
                os.environ.pop("AWS_ENDPOINT_URL", None)
            else:
                os.environ["AWS_ENDPOINT_URL"] = previous


#: the day's request deadline (real seconds): long, so that a slow machine never turns a
#: cold fetch into a failed request; what it changes is latency, never upstream calls
DAY_REQUEST_DEADLINE: Final = 30.0


async def run_day(
    scenario: Scenario, paths: Paths, *, seed: int = 0
) -> tuple[DayResult, tuple[Row, ...]]:
    """One simulated span: the counts and, per operation, the ideal and the ratio."""
    random.seed(seed)  # credd's jitter draws: the same run twice draws alike
    async with economy_world(scenario, paths) as (emulator, clock, settings):
        async with running_daemon(
            settings, clock=clock, request_deadline=DAY_REQUEST_DEADLINE
        ) as daemon:
            result = await simulate_day(scenario, daemon, emulator, clock)
        expected = expectations(scenario, emulator.config, settings.refresh)
    return result, rows(result.calls, expected, scenario.span)


# ------------------------------------------------------------------------------ the stampede


async def wait_served(daemon: DaemonHandle, profile: str, *, within: float = 30.0) -> None:
    """Until ``profile`` is held in memory (a fetch outlives the requests that refused to wait)."""
    with anyio.fail_after(within):
        while daemon.broker.usable(profile) is None:  # noqa: ASYNC110  # another task's state
            await anyio.sleep(0.01)


async def stampede(daemon: DaemonHandle, profile: str, requests: int) -> Counter[int]:
    """``requests`` concurrent GETs for ``profile`` through the endpoint; statuses counted."""
    headers = {"Authorization": daemon.token}
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=requests)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> None:
            async with http.get(f"{daemon.url}/v1/credentials/{profile}", headers=headers) as r:
                await r.read()
                statuses[r.status] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(requests):
                tg.start_soon(one)
    return statuses


__all__ = [
    "DayResult",
    "Expectation",
    "Row",
    "Scenario",
    "calls_in_span",
    "economy_world",
    "expectations",
    "rows",
    "run_day",
    "simulate_day",
    "stampede",
    "table",
    "wait_served",
]
