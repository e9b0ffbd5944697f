"""The one planner: turns in wake order on a ManualClock, one at a time per job, never stopped.

The jobs here are plain objects that keep the planner's protocol
(:class:`credd.engine.planner.Job`) and write down their turns; the planner,
its task group and the clock are the real ones. Time moves only when a test
moves it, and "not run" is checked once every task is blocked, not after a
sleep.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio

from credd.clock import ManualClock
from credd.engine.planner import Planner
from tests.support.logs import captured_log
from tests.support.waiting import eventually

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class ScriptedJob:
    """A job whose wakes the test sets; it writes down when each turn began and ended."""

    def __init__(self, name: str, clock: ManualClock, wake: datetime | None = None) -> None:
        self.name = name
        self._clock = clock
        #: what :meth:`wake` answers; a turn replaces it with ``then`` (used up: None after)
        self.next_wake = wake
        self.then: datetime | None = None
        self.turns: list[datetime] = []
        self.running = 0
        self.most_at_once = 0
        #: a turn waits for this, when set, before it ends
        self.hold: anyio.Event | None = None
        #: a turn raises this (once), as a bug would
        self.bug: Exception | None = None

    def wake(self, now: datetime) -> datetime | None:
        return self.next_wake

    async def turn(self) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.turns.append(self._clock.now())
            self.next_wake, self.then = self.then, None
            if self.hold is not None:
                await self.hold.wait()
            if self.bug is not None:
                bug, self.bug = self.bug, None
                raise bug
        finally:
            self.running -= 1


@asynccontextmanager
async def planning(
    clock: ManualClock, *, after_turn: Callable[[], None] = lambda: None
) -> AsyncIterator[Planner]:
    """A running planner in its own task group, cancelled when the block ends."""
    async with anyio.create_task_group() as tg:
        planner = Planner(clock, tg, after_turn=after_turn)
        await tg.start(planner.run)
        yield planner
        tg.cancel_scope.cancel()


def turned(job: ScriptedJob) -> Callable[[], bool]:
    return lambda: bool(job.turns)


async def settled() -> None:
    """Every task is blocked: whatever the planner was going to start has started."""
    await anyio.wait_all_tasks_blocked()


async def test_jobs_run_in_wake_order_and_not_before() -> None:
    clock = ManualClock(T0)
    order: list[str] = []
    jobs = {
        name: ScriptedJob(name, clock, at(seconds))
        for name, seconds in (("late", 300), ("first", 100), ("middle", 200))
    }
    async with planning(clock) as planner:
        for job in jobs.values():
            assert planner.plan(job) == job.next_wake
        await settled()
        assert not any(job.turns for job in jobs.values()), "nothing is due at T0"

        for seconds, name in ((100, "first"), (200, "middle"), (300, "late")):
            clock.set(at(seconds - 1))
            await settled()
            assert not jobs[name].turns, f"{name} ran a second early"
            clock.set(at(seconds))
            await eventually(turned(jobs[name]), what=f"{name}'s turn")
            order.append(name)
            await settled()
            ran = [n for n, job in jobs.items() if job.turns]
            assert sorted(ran) == sorted(order), f"at +{seconds} s only {order} were due"
            assert jobs[name].turns == [at(seconds)]
    assert order == ["first", "middle", "late"]


async def test_jobs_due_together_start_in_wake_order() -> None:
    clock = ManualClock(T0)
    started: list[str] = []

    class Recording(ScriptedJob):
        async def turn(self) -> None:
            started.append(self.name)
            await super().turn()

    jobs = [Recording(name, clock, at(s)) for name, s in (("c", 30), ("a", 10), ("b", 20))]
    async with planning(clock) as planner:
        for job in jobs:
            planner.plan(job)
        clock.set(at(60))  # a suspend that ends past all three
        await eventually(lambda: len(started) == 3, what="the three turns")
    assert started == ["a", "b", "c"]


async def test_planning_an_earlier_job_wakes_the_sleeping_planner() -> None:
    clock = ManualClock(T0)
    far = ScriptedJob("far", clock, at(3600))
    near = ScriptedJob("near", clock, at(10))
    async with planning(clock) as planner:
        planner.plan(far)
        await settled()  # asleep until far's wake
        planner.plan(near)
        # ManualClock wakes a sleeper when it moves; a planner still sleeping until
        # +3600 s would look, find it early, and sleep on: near would never run
        clock.set(at(10))
        await eventually(lambda: bool(near.turns), what="the earlier job's turn")
        assert near.turns == [at(10)]
        await settled()
        assert not far.turns


async def test_planning_a_job_due_now_runs_it_without_the_clock_moving() -> None:
    clock = ManualClock(T0)
    far = ScriptedJob("far", clock, at(3600))
    now = ScriptedJob("now", clock, T0)
    async with planning(clock) as planner:
        planner.plan(far)
        await settled()
        planner.plan(now)  # a cache file changed: the watcher asks for a turn at once
        await eventually(lambda: bool(now.turns), what="the turn asked for")
    assert clock.now() == T0


async def test_a_job_whose_wake_is_none_is_not_run() -> None:
    clock = ManualClock(T0)
    idle = ScriptedJob("idle", clock, None)
    withdrawn = ScriptedJob("withdrawn", clock, at(10))
    dropped = ScriptedJob("dropped", clock, at(10))
    witness = ScriptedJob("witness", clock, at(20))
    async with planning(clock) as planner:
        assert planner.plan(idle) is None
        assert not planner.planned(idle)
        planner.plan(withdrawn)
        planner.plan(dropped)
        planner.plan(witness)
        assert planner.planned(withdrawn)
        # re-planned while only an outside event can help it (a parked session)
        withdrawn.next_wake = None
        assert planner.plan(withdrawn) is None
        assert not planner.planned(withdrawn)
        planner.drop(dropped)  # a reload removed it
        assert not planner.planned(dropped)

        clock.set(at(3600))
        await eventually(lambda: bool(witness.turns), what="the witness's turn")
        await settled()
    assert idle.turns == withdrawn.turns == dropped.turns == []


async def test_a_busy_job_is_not_run_twice_at_once_and_is_replanned_after_its_turn() -> None:
    clock = ManualClock(T0)
    job = ScriptedJob("busy", clock, T0)
    job.hold = anyio.Event()
    job.then = T0  # still due when its turn ends: it asks for another at once
    async with planning(clock) as planner:
        planner.plan(job)
        await eventually(lambda: job.running == 1, what="the first turn")
        # while the turn runs: asked again (a request, the watcher), and time passes
        for _ in range(3):
            assert planner.plan(job) is None, "a busy job is planned when its turn ends"
        clock.set(at(60))
        await settled()
        assert job.turns == [T0]
        assert planner.planned(job)

        job.then = at(120)  # what the second turn leaves: its next work is at +120 s
        job.hold.set()
        await eventually(lambda: len(job.turns) == 2, what="the turn planned after the first")
        assert job.turns == [T0, at(60)]
        await eventually(lambda: job.running == 0, what="the second turn's end")
        await settled()
        assert len(job.turns) == 2, "planned for +120 s after the second turn, not before"
        assert planner.planned(job)
        clock.set(at(120))
        await eventually(lambda: len(job.turns) == 3, what="the third turn, at its wake")
    assert job.most_at_once == 1


async def test_a_job_dropped_during_its_turn_is_not_planned_again() -> None:
    clock = ManualClock(T0)
    job = ScriptedJob("removed", clock, T0)
    job.hold = anyio.Event()
    job.then = at(60)  # it would have more work at +60 s, had it not been removed
    async with planning(clock) as planner:
        planner.plan(job)
        await eventually(lambda: job.running == 1, what="the turn")
        planner.drop(job)  # a reload removed it while its turn ran
        job.hold.set()
        await eventually(lambda: job.running == 0, what="the turn's end")
        await settled()
        assert not planner.planned(job), "a dropped job was planned again after its turn"
        clock.set(at(3600))
        await settled()
    assert job.turns == [T0]


async def test_a_turn_that_raises_is_logged_replanned_and_the_planner_keeps_running() -> None:
    clock = ManualClock(T0)
    buggy = ScriptedJob("buggy", clock, at(10))
    buggy.bug = KeyError("aws_secret=AKIA-LEAKED-IN-A-MESSAGE")
    buggy.then = at(20)
    other = ScriptedJob("other", clock, at(30))
    after_turns: list[datetime] = []
    with captured_log() as log:
        async with planning(clock, after_turn=lambda: after_turns.append(clock.now())) as planner:
            planner.plan(buggy)
            planner.plan(other)
            clock.set(at(10))
            await eventually(lambda: len(after_turns) == 1, what="the buggy turn's end")
            assert planner.planned(buggy), "re-planned after the exception"
            clock.set(at(20))
            await eventually(lambda: len(buggy.turns) == 2, what="the buggy job's next turn")
            clock.set(at(30))
            await eventually(lambda: bool(other.turns), what="another job's turn")
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    bugs = [line for line in lines if line.get("event") == "turn_bug"]
    assert len(bugs) == 1, lines
    assert bugs[0]["job"] == "buggy"
    assert "KeyError" in bugs[0]["error"]
    assert bugs[0]["level"] == "error"
    assert "AKIA-LEAKED" not in log.getvalue(), "an exception's message may quote a secret"
    assert "Traceback" not in log.getvalue()
