"""The one way a test waits: for a state, under a bounded deadline, never for a lifetime."""

from __future__ import annotations

from collections.abc import Callable

import anyio

#: how long a state may take to come about before the test fails (never reached when all
#: is well); generous because a subprocess on a loaded 2-core machine starts slowly
DEADLINE = 20.0
POLL = 0.01


async def eventually(
    predicate: Callable[[], bool], *, within: float = DEADLINE, what: str = "the condition"
) -> None:
    """Poll ``predicate`` until it holds; fail (AssertionError) after ``within`` seconds.

    Background work (another task, another process) reaches a state; the test
    waits for that state, not for the time it usually takes.
    """
    try:
        with anyio.fail_after(within):
            while not predicate():  # noqa: ASYNC110  # polling another task's state is the point
                await anyio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {within} s") from None
