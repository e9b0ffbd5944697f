"""Upstream economy, guarded: simulated hours cost what credd's renewal policy allows.

The real daemon against the emulator on one ManualClock (``bench/economy_world.py``,
shared with ``bench/economy.py``; pytest's ``pythonpath`` puts bench/ on the path):
clients ask for every kind of profile every five simulated minutes, and the
emulator's call counts are held to the ideal and the bound computed from the
lifetimes and the documented margins. Whatever jitter credd draws, a correct
policy lands between the two; a renewal that comes late, a duplicate fetch or a
renewal loop that spins does not.
"""

from __future__ import annotations

import pytest
from economy_world import (
    RENEWAL_OPERATIONS,
    Scenario,
    calls_in_span,
    economy_world,
    run_day,
    stampede,
    table,
    wait_served,
)

from credd.daemon import running_daemon
from credd.sessions.signin import SDK_REFRESH_WINDOW_SECONDS
from tests.support.home import Home

#: every kind of profile, a few simulated hours: each renews several times
SCENARIO = Scenario(sso_roles=3, chained=2, signin=True, trusted=True, span=4 * 3600)


def test_the_ideal_counts_whole_renewal_periods() -> None:
    # one call at k * period for 0 <= k * period <= span; k = 0 only when it is in the span
    assert calls_in_span(7200, 2400, first_in_span=True) == 4  # 0, 2400, 4800, 7200
    assert calls_in_span(7200, 2400, first_in_span=False) == 3
    assert calls_in_span(7199, 2400, first_in_span=True) == 3
    with pytest.raises(ValueError, match="nothing to serve"):
        calls_in_span(3600, 0, first_in_span=True)


@pytest.mark.slow
async def test_simulated_hours_make_no_more_calls_than_the_policy_allows(home: Home) -> None:
    result, found = await run_day(SCENARIO, home.paths(), seed=6)
    shown = table(found)
    by_operation = {row.operation: row for row in found}
    assert set(by_operation) == {*RENEWAL_OPERATIONS, "total"}, shown
    for row in found:
        # never later than the margin asks (ideal), never earlier than jitter allows (bound)
        assert row.ideal <= row.calls <= row.bound, shown
    assert by_operation["total"].ratio <= 1.1, shown
    asks = len(SCENARIO.profiles) * (int(SCENARIO.span // SCENARIO.request_every) + 1)
    assert result.requests == {200: asks}
    # what every client was served stayed out of every SDK's refresh window
    assert result.least_left > SDK_REFRESH_WINDOW_SECONDS


async def test_a_thousand_cold_requests_for_a_cold_chain_make_one_call_per_link(
    home: Home,
) -> None:
    scenario = Scenario(sso_roles=1, chained=1, signin=False, trusted=False)
    async with economy_world(scenario, home.paths()) as (emulator, clock, settings):
        for operation in ("GetRoleCredentials", "AssumeRole"):
            emulator.faults.add(operation, latency=0.2, count=None)  # keep each fetch in flight
        async with running_daemon(settings, clock=clock) as daemon:
            statuses = await stampede(daemon, "chain-0", 1000)
            assert sum(statuses.values()) == 1000
            # answered from the fetch, or refused by the endpoint's limits: never a second fetch
            assert set(statuses) <= {200, 429, 503}, statuses
            await wait_served(daemon, "chain-0")
            assert emulator.calls["GetRoleCredentials"] == 1, statuses
            assert emulator.calls["AssumeRole"] == 1, statuses
            # the source profile, fetched along the way, is served from memory now
            statuses = await stampede(daemon, "role-0", 100)
            assert statuses == {200: 100}
            assert emulator.calls["GetRoleCredentials"] == 1
