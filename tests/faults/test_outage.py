"""An upstream outage across the renewal point: last good is served until 15 s before expiry.

Issue 10, item 7: credd gave held credentials up 30 s before their expiry, so
an outage spanning the renewal point turned still-valid credentials into 503s
for the last 30 s of their life; the EKS Pod Identity Agent serves down to 15 s.
Every upstream operation answers 503 while a real ``credd serve`` is asked at
instants the test sets on its clock (:mod:`tests.support.faketime`): before,
across and after both renewal points (the access token's and the role
credentials', 20 minutes ahead), down to 16 s before expiry, then past it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from credd.engine.schedule import BACKOFF_CAP_SECONDS
from credd.files.store import parse_timestamp
from tests.support.faketime import FrozenWorld
from tests.support.observe import ask, served, session_in, session_status
from tests.support.process import status_json

pytestmark = pytest.mark.slow

LIFETIME = 3600  # the access token's and the role credentials' alike
DEV = "/v1/credentials/dev"
#: seconds before expiry the held credentials are asked for: from before both renewal points
#: (1200 s ahead, jitter up to 120 s more) to one second inside the 15 s credd keeps back
SERVED_AT = (1500, 1320, 1200, 1100, 900, 600, 300, 60, 30, 16)
REFUSED_AT = (14, 1, 0, -60)


async def test_an_outage_across_the_renewal_point_serves_last_good_until_15_s_before_expiry(
    frozen_world: FrozenWorld,
) -> None:
    world, emu = frozen_world, frozen_world.emu
    emu.config.update({"access_token_ttl": LIFETIME, "role_ttl": LIFETIME})
    await world.login()
    async with world.serving() as daemon:
        held = await served(daemon, DEV)
        expiration = parse_timestamp(held["Expiration"])
        for operation in emu.operations:  # every upstream call, from now on
            emu.faults.add(operation.name, status=503, count=None)

        for left in SERVED_AT:
            world.frozen.set(expiration - timedelta(seconds=left))
            answer = await ask(daemon, DEV)
            assert answer.status == 200, (left, answer)
            assert answer.json() == held, left  # the held credentials, unchanged
        assert (await session_status(daemon))["state"] != "login-required"

        for left in REFUSED_AT:
            world.frozen.set(expiration - timedelta(seconds=left))
            answer = await ask(daemon, DEV)
            assert answer.status == 503, (left, answer)  # never expired, nor expiring, ones
            assert answer.json()["code"] == "UpstreamUnavailable", (left, answer)
        session = session_in(await status_json(world.env))
        assert session["state"] != "login-required", session  # an outage proves nothing dead

        # The outage ends: at the next retry, whatever its backoff had grown to, all is well.
        emu.faults.clear()
        world.frozen.advance(int(BACKOFF_CAP_SECONDS) + 1)
        fresh = await served(daemon, DEV)
        assert fresh["AccessKeyId"] != held["AccessKeyId"]
        assert parse_timestamp(fresh["Expiration"]) > world.frozen.now() + timedelta(minutes=30)
        session = await session_status(daemon)
        assert (session["state"], session["last_error"]) == ("ok", None), session
