"""Idle cost: what ``credd serve`` spends doing nothing, with 20 sessions logged in.

Run from the repository root, with credd installed in the interpreter you use::

    python bench/idle.py [--sessions 20] [--seconds 60] [--settle 20]

In a throwaway HOME (:mod:`harness`: the emulator, the headless browser): an AWS
config with ``--sessions`` Identity Center sessions, each with one role profile
(GetRoleCredentials); ``credd login`` for each; ``credd serve``; every profile
GET once through the endpoint, so that every session holds an access token and
every profile credentials to keep alive. After ``--settle`` seconds (20: the
AWS clients' idle connections to the emulator close about 12 s after their last
call, a one-off that is not the cost of being idle), a quiet
window of ``--seconds`` (60) with no request at all, read from ``/proc`` at both
ends:

* **CPU seconds per hour**: ``utime + stime`` of ``/proc/PID/stat`` (the whole
  process, threads that ended included; in clock ticks of 0.01 s, so the
  window's length sets the resolution, which the report states), scaled to an
  hour; beside it **on-CPU**, the threads' run time from
  ``/proc/PID/task/*/schedstat`` in nanoseconds. A tick a minute is 0.6 s an
  hour, coarser than the target, so the target is judged on the on-CPU time
  (when every thread was there at both ends of the window);
* **wake-ups per minute**: ``voluntary_ctxt_switches + nonvoluntary_ctxt_switches``
  summed over ``/proc/PID/task/*/status`` (every thread; one that ended inside
  the window takes its count with it, and the report says when that happened).

**The floor**, measured in the same window: a bare interpreter idling in asyncio
(``asyncio.run(asyncio.Event().wait())``), read the same way. The targets
(issue 10): at most 1 wake-up per minute and 0.5 CPU-seconds per hour above it.
The emulator's call counters show whether any renewal fell inside the window
(with its default lifetimes of an hour and more, none should). Suspend is not
exercised here. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import harness

TARGET_WAKEUPS_PER_MINUTE = 1.0
TARGET_CPU_SECONDS_PER_HOUR = 0.5
#: how long a GET is asked again while the daemon answers 503 (a fetch still under way)
SERVE_DEADLINE_SECONDS = 60.0
#: the floor: an interpreter whose event loop waits for nothing, forever
FLOOR_SOURCE = """\
import asyncio, sys
if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.install()
async def idle():
    print("IDLE_READY=1", flush=True)
    await asyncio.Event().wait()
asyncio.run(idle())
"""
TICK_SECONDS = 1 / os.sysconf("SC_CLK_TCK")


def aws_config(sessions: int) -> tuple[str, list[str], list[str]]:
    """(config text, profile names, sso-session names): one role profile per session."""
    text = ""
    names, used = [], []
    for i in range(sessions):
        session, profile = f"idle-{i:02d}", f"role-{i:02d}"
        text += harness.sso_session_section(session)
        text += harness.role_profile_section(profile, session)
        names.append(profile)
        used.append(session)
    return text, names, used


# --------------------------------------------------------------------------- /proc


@dataclasses.dataclass(frozen=True)
class Thread:
    name: str
    #: voluntary + involuntary context switches: each is the thread leaving the CPU
    switches: int
    #: time on the CPU (schedstat), nanoseconds
    runtime_ns: int


@dataclasses.dataclass(frozen=True)
class Reading:
    """One process's counters at one instant."""

    at: float
    #: utime + stime of the whole process, threads that ended included, in clock ticks
    cpu_ticks: int
    threads: dict[int, Thread]

    @staticmethod
    def take(pid: int) -> Reading:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # the fields after the command name, which may hold spaces and parentheses
        utime, stime = (int(v) for v in stat.rpartition(")")[2].split()[11:13])
        threads = {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                status = (task / "status").read_text()
                runtime = int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while it was being read
            switches = sum(
                int(line.split()[1])
                for line in status.splitlines()
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
            )
            threads[int(task.name)] = Thread(name, switches, runtime)
        return Reading(time.monotonic(), utime + stime, threads)


@dataclasses.dataclass(frozen=True)
class Idle:
    """What one process spent between two readings."""

    label: str
    seconds: float
    cpu_seconds: float
    runtime_seconds: float
    wakeups: int
    #: wake-ups by thread name, most first
    by_thread: list[tuple[str, int]]
    threads: int
    #: threads that ended inside the window (their wake-ups are not counted)
    ended: int

    @staticmethod
    def between(label: str, before: Reading, after: Reading) -> Idle:
        by_thread: dict[str, int] = {}
        runtime_ns = 0
        for tid, thread in after.threads.items():
            # a thread born inside the window counts from zero
            start = before.threads.get(tid, Thread(thread.name, 0, 0))
            woke = thread.switches - start.switches
            by_thread[thread.name] = by_thread.get(thread.name, 0) + woke
            runtime_ns += thread.runtime_ns - start.runtime_ns
        return Idle(
            label=label,
            seconds=after.at - before.at,
            cpu_seconds=(after.cpu_ticks - before.cpu_ticks) * TICK_SECONDS,
            runtime_seconds=runtime_ns / 1e9,
            wakeups=sum(by_thread.values()),
            by_thread=sorted(by_thread.items(), key=lambda item: -item[1]),
            threads=len(after.threads),
            ended=len(set(before.threads) - set(after.threads)),
        )

    @property
    def cpu_per_hour(self) -> float:
        return self.cpu_seconds * 3600 / self.seconds

    @property
    def runtime_per_hour(self) -> float:
        return self.runtime_seconds * 3600 / self.seconds

    @property
    def wakeups_per_minute(self) -> float:
        return self.wakeups * 60 / self.seconds


# --------------------------------------------------------------------------- the run


def serve_each(home: harness.Home, credd: harness.Credd, names: Sequence[str]) -> None:
    """GET every profile once (a 503 "still being fetched" is asked again)."""
    for name in names:
        deadline = time.monotonic() + SERVE_DEADLINE_SECONDS
        while True:
            status, body = harness.http_get(credd.credentials_url(name), credd.token)
            if status == 200 and b"AccessKeyId" in body:
                break
            if status != 503 or time.monotonic() > deadline:
                raise harness.BenchError(
                    f"GET {name} answered {status}: {body[:300]!r}\n"
                    + home.procs.log_tail(credd.name)
                )
            time.sleep(0.05)


def upstream_calls(home: harness.Home) -> int:
    """Every request the emulator has answered so far, all operations together."""
    status, body = harness.http_get(f"{home.emulator_url}/_emulator/calls", "")
    if status != 200:
        raise harness.BenchError(f"the emulator's call counters answered {status}")
    counts: dict[str, int] = json.loads(body)
    return sum(counts.values())


@dataclasses.dataclass(frozen=True)
class Window:
    floor: Idle
    credd: Idle
    upstream: int
    machine: harness.CpuUse


def measure(args: argparse.Namespace, ws: harness.Workspace) -> Window:
    text, names, used = aws_config(args.sessions)
    home = harness.Home(ws, aws_config=text)
    home.prepare()
    home.env["CREDD_EVENT_LOOP"] = args.event_loop
    for i, session in enumerate(used, 1):
        harness.progress(f"credd login {session} ({i} of {len(used)})")
        home.login(session)
    floor = ws.procs.start(
        "floor", [sys.executable, "-c", FLOOR_SOURCE, args.event_loop], harness.child_env(ws.root)
    )
    ws.procs.wait_for_line("floor", floor, "IDLE_READY=")
    credd = home.start_credd(name="credd")
    serve_each(home, credd, names)
    harness.progress(f"{len(names)} profiles served; settling for {args.settle:g} s")
    time.sleep(args.settle)

    harness.progress(f"quiet window: {args.seconds:g} s")
    calls = upstream_calls(home)
    machine = harness.CpuSnapshot.take([credd.pid, floor.pid])
    credd_before, floor_before = Reading.take(credd.pid), Reading.take(floor.pid)
    time.sleep(args.seconds)
    credd_after, floor_after = Reading.take(credd.pid), Reading.take(floor.pid)
    machine_use = harness.CpuSnapshot.take([credd.pid, floor.pid]).since(machine)
    calls = upstream_calls(home) - calls
    for proc, name in ((credd.proc, "credd serve"), (floor, "the floor")):
        if proc.poll() is not None:
            raise harness.BenchError(f"{name} exited during the window ({proc.returncode})")
    return Window(
        floor=Idle.between(f"floor (python, {args.event_loop}, idle)", floor_before, floor_after),
        credd=Idle.between(f"credd serve ({args.event_loop})", credd_before, credd_after),
        upstream=calls,
        machine=machine_use,
    )


def verdict(value: float, target: float, resolution: float = 0.0) -> str:
    if abs(value - target) < resolution:
        return "within the resolution of the window: run longer (--seconds)"
    return "met" if value <= target else "NOT MET"


def format_report(args: argparse.Namespace, window: Window) -> list[str]:
    floor, credd = window.floor, window.credd
    resolution = TICK_SECONDS * 3600 / credd.seconds  # one tick over the window, per hour
    lines = [
        f"credd serve at rest: {args.sessions} Identity Center sessions logged in, "
        f"{args.sessions} role profiles served once, then {credd.seconds:.0f} s with no "
        f"request (after {args.settle:g} s to settle); both processes read from /proc "
        "over the same window",
        "",
        "| | CPU s/hour | on-CPU s/hour | wake-ups/minute | threads | upstream calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for idle, calls in ((floor, "-"), (credd, str(window.upstream))):
        lines.append(
            f"| {idle.label} | {idle.cpu_per_hour:.2f} | {idle.runtime_per_hour:.3f} | "
            f"{idle.wakeups_per_minute:.1f} | {idle.threads} | {calls} |"
        )
    cpu = credd.cpu_per_hour - floor.cpu_per_hour
    runtime = credd.runtime_per_hour - floor.runtime_per_hour
    wakeups = credd.wakeups_per_minute - floor.wakeups_per_minute
    lines += [
        f"| credd over the floor | {cpu:+.2f} | {runtime:+.3f} | {wakeups:+.1f} | | |",
        "",
        f"CPU: utime+stime of /proc/PID/stat, whole process, in ticks of {TICK_SECONDS:g} s "
        f"(±{resolution:.2f} s/hour over this window); on-CPU: the threads' run time in "
        "/proc/PID/task/*/schedstat, in nanoseconds",
        "credd's wake-ups by thread: "
        + (", ".join(f"{name} {count}" for name, count in credd.by_thread if count) or "none"),
    ]
    complete = not (credd.ended or floor.ended)
    for idle in (credd, floor):
        if idle.ended:
            lines.append(
                f"{idle.label}: {idle.ended} thread(s) ended inside the window; their "
                "wake-ups and on-CPU time are not counted (CPU s/hour includes them)"
            )
    if window.upstream:
        lines.append(
            f"{window.upstream} upstream calls inside the window: a renewal fell in it, "
            "and its cost is in the figures"
        )
    # the target is finer than a tick a minute: judge it on the threads' run time when
    # every thread was there at both ends, else on utime+stime within its resolution
    cpu_verdict = (
        f"{runtime:+.3f} (on-CPU) {verdict(runtime, TARGET_CPU_SECONDS_PER_HOUR)}"
        if complete
        else f"{cpu:+.2f} {verdict(cpu, TARGET_CPU_SECONDS_PER_HOUR, resolution)}"
    )
    lines += [
        "",
        f"target wake-ups <= {TARGET_WAKEUPS_PER_MINUTE:g} per minute above the floor: "
        f"{wakeups:+.1f} {verdict(wakeups, TARGET_WAKEUPS_PER_MINUTE)}",
        f"target CPU <= {TARGET_CPU_SECONDS_PER_HOUR:g} s per hour above the floor: " + cpu_verdict,
        f"the rest of the machine kept {window.machine.other_cpus:.2f} CPUs busy during the "
        f"window (steal {window.machine.steal_cpus:.2f})",
    ]
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=20, help="sessions, one profile each")
    parser.add_argument("--seconds", type=float, default=60.0, help="the quiet window (60)")
    parser.add_argument("--settle", type=float, default=20.0, help="rest before the window (20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary HOME and logs")
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="credd's and the floor's event loop (default asyncio, as a plain install runs)",
    )
    return parser


def bench_main(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.seconds <= 0 or args.settle < 0:
        raise harness.BenchError("--sessions >= 1, --seconds > 0 and --settle >= 0, please")
    with harness.workspace(keep=args.keep, prefix="credd-idle-") as ws:
        if args.keep:
            harness.progress(f"kept in {ws.root}")
        window = measure(args, ws)
    for line in format_report(args, window):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return harness.guarded(lambda: bench_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
