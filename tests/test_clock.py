"""credd.clock: wall-clock deadlines that wake their sleepers, manual or real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import anyio

from credd.clock import ManualClock, SystemClock, sleep_for

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


class JumpingClock(SystemClock):
    """The real clock plus an offset: ``jump`` plays a laptop suspend."""

    def __init__(self, max_chunk_seconds: float) -> None:
        super().__init__(max_chunk_seconds=max_chunk_seconds)
        self.offset = timedelta()

    def now(self) -> datetime:
        return super().now() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def test_manual_clock_starts_where_told_and_advances() -> None:
    clock = ManualClock(T0)
    assert clock.now() == T0
    clock.advance(90)
    assert clock.now() == T0 + timedelta(seconds=90)
    clock.set(T0 + timedelta(days=1))
    assert clock.now() == T0 + timedelta(days=1)


def test_manual_clock_is_utc() -> None:
    clock = ManualClock(datetime(2026, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now().utcoffset() == timedelta(0)
    assert clock.now() == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_system_clock_now_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


async def test_manual_advance_wakes_a_sleeper() -> None:
    clock = ManualClock(T0)
    woke = anyio.Event()

    async def sleeper() -> None:
        await clock.sleep_until(T0 + timedelta(seconds=60))
        woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            clock.advance(59)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()  # not there yet: still asleep
            clock.advance(1)
            await woke.wait()
    assert clock.now() == T0 + timedelta(seconds=60)


async def test_manual_clock_wakes_only_the_sleepers_it_passed() -> None:
    clock = ManualClock(T0)
    woken: list[int] = []

    async def sleeper(seconds: int) -> None:
        await clock.sleep_until(T0 + timedelta(seconds=seconds))
        woken.append(seconds)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for seconds in (10, 20, 30):
                tg.start_soon(sleeper, seconds)
            await anyio.wait_all_tasks_blocked()
            clock.advance(25)
            await anyio.wait_all_tasks_blocked()
            assert sorted(woken) == [10, 20]
            clock.advance(5)
    assert sorted(woken) == [10, 20, 30]


async def test_manual_clock_jump_far_past_the_deadline_wakes() -> None:
    clock = ManualClock(T0)
    woke = anyio.Event()

    async def sleeper() -> None:
        await sleep_for(clock, 3600)
        woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            clock.set(T0 + timedelta(days=3))  # a long weekend in a closed laptop
            await woke.wait()


async def test_manual_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = ManualClock(T0)
    with anyio.fail_after(1):
        await clock.sleep_until(T0)
        await clock.sleep_until(T0 - timedelta(hours=1))


async def test_system_clock_past_deadline_returns_at_once() -> None:
    clock = SystemClock()
    started = anyio.current_time()
    with anyio.fail_after(1):
        await clock.sleep_until(clock.now() - timedelta(hours=1))
        await clock.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))
    assert anyio.current_time() - started < 0.5


async def test_system_clock_sleeps_until_the_deadline() -> None:
    clock = SystemClock()
    deadline = clock.now() + timedelta(milliseconds=50)
    with anyio.fail_after(2):
        await clock.sleep_until(deadline)
    assert clock.now() >= deadline


async def test_system_clock_wakes_when_the_wall_clock_jumps_past_the_deadline() -> None:
    # A suspend stops the monotonic clock asyncio sleeps on; the chunked sleep
    # re-reads the wall clock and so wakes soon after resuming, not an hour later.
    clock = JumpingClock(max_chunk_seconds=0.01)
    woke = anyio.Event()

    async def sleeper() -> None:
        await clock.sleep_until(clock.now() + timedelta(hours=1))
        woke.set()

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await anyio.sleep(0.05)
            assert not woke.is_set()
            clock.jump(2 * 3600)
            await woke.wait()
