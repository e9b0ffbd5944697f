"""Storms bounded: any fault, on any path, costs at most about one upstream call a second per
operation, and a rejected access token is renewed at most once (issue 10, items 4 and 5).

Upstream calls are counted where they land, in the emulator (``emu.calls``),
while a real ``credd serve`` is asked for credentials as fast as clients can.
"""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

from credd.testing.emulator.oauth import TOKEN_EXCHANGE_GRANT
from tests.support.faketime import FrozenWorld
from tests.support.observe import ask, session_in
from tests.support.process import Daemon, status_json
from tests.support.world import World

pytestmark = pytest.mark.slow

#: how long the trusted-identity storm is kept up (real seconds: the daemon's own backoff
#: runs on the real clock here), and by how many clients at once
STORM_SECONDS = 10.0
CLIENTS_PER_ROUTE = 2
ANALYST_ROUTES = ("/v1/credentials/analyst", "/v1/tokens/analyst")


async def hammer(daemon: Daemon, path: str, until: float, answers: Counter[int]) -> None:
    """Ask for ``path`` back to back until the monotonic clock reaches ``until``."""
    while time.monotonic() < until:
        answers[(await ask(daemon, path)).status] += 1


async def test_a_token_exchange_refused_access_retries_slowly_and_blames_itself(
    world: World,
) -> None:
    """AccessDenied on every CreateTokenWithIAM: the trusted-identity session backs off, never
    rotates its subject session's refresh token, and says the refusal is its own."""
    emu = world.emu
    world.configure(TOKEN_EXCHANGE_GRANT, subject_session="my-sso")
    await world.login()
    emu.faults.add("CreateTokenWithIAM", error_code="AccessDeniedException", count=None)
    before = emu.calls.copy()
    answers: Counter[int] = Counter()
    started = time.monotonic()  # the daemon begins the session as soon as it starts
    async with world.serving() as daemon:
        until = time.monotonic() + STORM_SECONDS
        async with anyio.create_task_group() as tg:
            for path in ANALYST_ROUTES * CLIENTS_PER_ROUTE:
                tg.start_soon(hammer, daemon, path, until, answers)
        elapsed = time.monotonic() - started
        exchanges = emu.calls["CreateTokenWithIAM"] - before["CreateTokenWithIAM"]
        refreshes = emu.calls["CreateToken"] - before["CreateToken"]
        doc = await status_json(world.env)

    requests = sum(answers.values())
    assert requests >= 10 * STORM_SECONDS, f"not a storm: {requests} requests"
    assert set(answers) == {503}, answers
    bound = elapsed + 2  # about one call a second per operation
    assert 1 <= exchanges <= bound, f"{exchanges} CreateTokenWithIAM in {elapsed:.1f} s"
    assert refreshes <= bound, f"{refreshes} CreateToken in {elapsed:.1f} s"
    assert refreshes < requests / 10, "the Identity Center token is rotated per request"

    analyst, identity_center = session_in(doc, "analyst"), session_in(doc)
    assert analyst["state"] == "error", analyst
    assert "AccessDenied" in analyst["last_error"], analyst
    assert analyst["action"], analyst  # what to check
    assert (identity_center["state"], identity_center["last_error"]) == ("ok", None), (
        identity_center
    )


async def test_a_portal_refusing_every_token_costs_at_most_two_renewals_for_20_requests(
    frozen_world: FrozenWorld,
) -> None:
    """GetRoleCredentials answers 401 UnauthorizedException to everything: the access token
    is renewed once for the token refused, not once per request. The daemon's clock stands
    still, so no backoff ends during the 20 requests, however slowly they come."""
    world, emu = frozen_world, frozen_world.emu
    await world.login()
    emu.faults.add("GetRoleCredentials", error_code="UnauthorizedException", count=None)
    async with world.serving() as daemon:
        refreshes = emu.calls["CreateToken"]
        statuses = [(await ask(daemon, "/v1/credentials/dev")).status for _ in range(20)]
        renewals = emu.calls["CreateToken"] - refreshes
    assert set(statuses) == {503}, statuses
    assert 1 <= renewals <= 2, f"{renewals} CreateToken for 20 requests"
