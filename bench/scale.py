"""Scale and memory: ``credd serve``'s start time and resident memory with many profiles.

For each profile count (``--profiles 1,100,1000``) it writes an AWS config in a
throwaway HOME (:mod:`harness`): SSO role profiles spread over a few
sso-sessions, and every tenth profile a role chained on the one before it
(STS AssumeRole); logs in to every sso-session once, then, ``--rounds`` times:

1. starts ``credd serve`` and times it from spawn to ready: the first answer
   of ``GET /v1/status`` naming that process (polled every 10 ms);
2. reads ``VmRSS`` and ``VmHWM`` (the peak) from ``/proc/PID/status`` once
   the daemon has sat idle for ``--settle`` seconds;
3. GETs every profile once through the endpoint (``--parallel`` at a time; a
   503 "still being fetched" is asked again), which makes every profile fetch
   its credentials from the emulator and start renewing them;
4. reads the memory again right after, and again after ``--settle`` seconds;
5. stops the daemon.

The baselines, measured in the same run: **the floor**, a bare interpreter
that imports what credd's daemon imports (aiohttp's server, aiobotocore,
anyio, structlog) and nothing else, started and read the same way; and credd
itself with 1 profile, so the differences show what profiles cost. Figures
are medians over the rounds. The targets (issue 6): at most 1.5 s to start
and 70 MB resident with 1,000 profiles, idle and after serving each once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import harness

#: what each sso-session's user (the emulator's alice) may assume: (account, role)
ROLES = (("111111111111", "ReadOnly"), ("111111111111", "Admin"), ("222222222222", "Admin"))
#: every CHAIN_EVERY-th profile is a role chained on the profile before it
CHAIN_EVERY = 10
TARGET_START_SECONDS = 1.5
TARGET_RSS_MB = 70.0
#: the profile count the targets are for
TARGET_PROFILES = 1000
#: how long a GET is asked again while the daemon answers 503 (a fetch still under way)
SERVE_DEADLINE_SECONDS = 60.0
#: the floor: credd's daemon's third-party imports, then a line saying it is ready
FLOOR_SOURCE = (
    "import aiohttp.web, aiobotocore.session, anyio, structlog, sys, time\n"
    "print('FLOOR_READY=1', flush=True)\n"
    "time.sleep(3600)\n"
)


def aws_config(count: int, sessions: int) -> tuple[str, list[str], list[str]]:
    """(config text, profile names, sso-session names) for ``count`` profiles."""
    used = [f"sso-{i}" for i in range(max(1, min(sessions, count)))]
    text = ""
    for session in used:
        text += harness.sso_session_section(session)
    names = [f"p{i:04d}" for i in range(count)]
    for i, name in enumerate(names):
        if i % CHAIN_EVERY == CHAIN_EVERY - 1:
            text += (
                f"[profile {name}]\nrole_arn = arn:aws:iam::222222222222:role/Chain{i}\n"
                f"source_profile = {names[i - 1]}\nrole_session_name = bench-{i}\n\n"
            )
        else:
            account, role = ROLES[i % len(ROLES)]
            text += harness.role_profile_section(
                name, used[i % len(used)], account=account, role=role
            )
    return text, names, used


@dataclasses.dataclass(frozen=True)
class Memory:
    """From ``/proc/PID/status``, in MB: resident now, its peak, and the anonymous part."""

    rss: float
    hwm: float
    anon: float

    @staticmethod
    def read(pid: int) -> Memory:
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024  # kB
        return Memory(fields["VmRSS"], fields["VmHWM"], fields["RssAnon"])


@dataclasses.dataclass(frozen=True)
class Round:
    start: float
    idle: Memory
    served: Memory
    settled: Memory
    serve_seconds: float
    retries: int


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    profiles: int
    sessions: int
    rounds: list[Round]

    def median(self, pick: str) -> float:
        values = []
        for r in self.rounds:
            value: object = r
            for part in pick.split("."):
                value = getattr(value, part)
            assert isinstance(value, float | int)
            values.append(float(value))
        return statistics.median(values)


def measure_floor(ws: harness.Workspace, rounds: int, settle: float) -> Row:
    """The bare interpreter with credd's daemon's imports: start time and memory."""
    env = harness.child_env(ws.root)
    runs = []
    for i in range(rounds):
        name = f"floor-{i}"
        started = time.perf_counter()
        proc = ws.procs.start(name, [sys.executable, "-c", FLOOR_SOURCE], env)
        ws.procs.wait_for_line(name, proc, "FLOOR_READY=")
        took = time.perf_counter() - started
        time.sleep(settle)
        memory = Memory.read(proc.pid)
        ws.procs.stop(proc)
        runs.append(Round(took, memory, memory, memory, 0.0, 0))
    return Row("floor (imports only)", 0, 0, runs)


def serve_each(
    home: harness.Home, credd: harness.Credd, names: Sequence[str], parallel: int
) -> int:
    """GET every profile once; how many answers were 503 and asked again."""

    def one(name: str) -> int:
        deadline = time.monotonic() + SERVE_DEADLINE_SECONDS
        retries = 0
        while True:
            status, body = harness.http_get(credd.credentials_url(name), credd.token)
            if status == 200 and b"AccessKeyId" in body:
                return retries
            if status != 503 or time.monotonic() > deadline:
                raise harness.BenchError(
                    f"GET {name} answered {status}: {body[:300]!r}\n"
                    + home.procs.log_tail(credd.name)
                )
            retries += 1
            time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        return sum(pool.map(one, names))


def measure_credd(
    ws: harness.Workspace,
    count: int,
    sessions: int,
    rounds: int,
    settle: float,
    parallel: int,
    event_loop: str,
) -> Row:
    """``rounds`` daemons with ``count`` profiles in a HOME of their own, each started,
    read idle, made to serve every profile once, read again, settled, read again."""
    text, names, used = aws_config(count, sessions)
    home = harness.Home(ws, aws_config=text)
    home.prepare()
    home.env["CREDD_EVENT_LOOP"] = event_loop
    for session in used:
        home.login(session)
    runs = []
    for i in range(rounds):
        harness.progress(f"{count} profiles: round {i + 1} of {rounds}")
        started = time.perf_counter()
        credd = home.start_credd(name=f"credd-{count}-{i}")
        took = time.perf_counter() - started
        document = json.loads(harness.http_get(f"{credd.url}/v1/status", credd.token)[1])
        if len(document["profiles"]) != count:
            raise harness.BenchError(f"credd serves {len(document['profiles'])} of {count}")
        time.sleep(settle)
        idle = Memory.read(credd.pid)
        begun = time.perf_counter()
        retries = serve_each(home, credd, names, parallel)
        serve_seconds = time.perf_counter() - begun
        served = Memory.read(credd.pid)
        time.sleep(settle)
        settled = Memory.read(credd.pid)
        home.procs.stop(credd.proc)
        runs.append(Round(took, idle, served, settled, serve_seconds, retries))
    profiles = "1 profile" if count == 1 else f"{count} profiles"
    on = "1 sso-session" if len(used) == 1 else f"{len(used)} sso-sessions"
    return Row(f"credd, {profiles} on {on}", count, len(used), runs)


def format_report(floor: Row, rows: list[Row], rounds: int) -> list[str]:
    lines = [
        f"credd serve: start time and resident memory (MB, /proc/PID/status), median of {rounds}",
        "",
        "| | start s | idle RSS | served RSS | settled RSS | peak (HWM) | anon | serve s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in [floor, *rows]:
        serve = f"{row.median('serve_seconds'):.1f}" if row.profiles else "-"
        lines.append(
            f"| {row.label} | {row.median('start'):.2f} | {row.median('idle.rss'):.1f} | "
            f"{row.median('served.rss'):.1f} | {row.median('settled.rss'):.1f} | "
            f"{row.median('settled.hwm'):.1f} | {row.median('settled.anon'):.1f} | {serve} |"
        )
    lines.append("")
    base = next((r for r in rows if r.profiles == 1), None)
    for row in rows:
        idle = row.median("idle.rss")
        settled = row.median("settled.rss")
        text = (
            f"{row.label}: start {row.median('start') / floor.median('start'):.2f}x the floor's; "
            f"idle {idle - floor.median('idle.rss'):+.1f} MB, served "
            f"{settled - floor.median('idle.rss'):+.1f} MB over the floor"
        )
        if base is not None and row is not base and row.profiles > 1:
            per = (settled - base.median("settled.rss")) * 1024 / (row.profiles - 1)
            text += f"; {per:.1f} kB per served profile beyond the first"
        retries = sum(r.retries for r in row.rounds)
        if retries:
            text += f"; {retries} GETs answered 503 and were asked again"
        lines.append(text)
    lines.append("")
    target = next((r for r in rows if r.profiles == TARGET_PROFILES), None)
    if target is None:
        lines.append(f"targets (issue 6) are for {TARGET_PROFILES} profiles: not measured")
        return lines
    start = target.median("start")
    worst = max(target.median(f"{when}.rss") for when in ("idle", "served", "settled"))
    lines.append(
        f"target start <= {TARGET_START_SECONDS} s with {TARGET_PROFILES} profiles: "
        f"{start:.2f} s {'met' if start <= TARGET_START_SECONDS else 'NOT MET'}"
    )
    lines.append(
        f"target RSS <= {TARGET_RSS_MB:.0f} MB with {TARGET_PROFILES} profiles, idle and served: "
        f"{worst:.1f} MB at most {'met' if worst <= TARGET_RSS_MB else 'NOT MET'}"
    )
    return lines


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of profile counts >= 1")
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profiles", type=_counts, default=[1, 100, 1000], metavar="N,N,...")
    parser.add_argument("--sessions", type=int, default=3, help="sso-sessions (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="daemon starts per count")
    parser.add_argument("--settle", type=float, default=2.0, metavar="S", help="idle before reads")
    parser.add_argument("--parallel", type=int, default=8, help="GETs at a time when serving")
    parser.add_argument("--keep", action="store_true", help="keep the temporary HOME and logs")
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="credd's event loop (default asyncio, as a plain install runs; uvloop: the extra)",
    )
    return parser


def bench_main(args: argparse.Namespace) -> int:
    counts = sorted(set(args.profiles) | {1})  # the 1-profile daemon is a baseline
    with harness.workspace(keep=args.keep, prefix="credd-scale-floor-") as ws:
        floor = measure_floor(ws, args.rounds, args.settle)
    rows = []
    for count in counts:  # a workspace (HOME, emulator, logs) per profile count
        with harness.workspace(keep=args.keep, prefix=f"credd-scale-{count}-") as ws:
            if args.keep:
                harness.progress(f"{count} profiles: kept in {ws.root}")
            rows.append(
                measure_credd(
                    ws,
                    count,
                    args.sessions,
                    args.rounds,
                    args.settle,
                    args.parallel,
                    args.event_loop,
                )
            )
    print(f"credd's event loop: {args.event_loop} (CREDD_EVENT_LOOP)")
    for line in format_report(floor, rows, args.rounds):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return harness.guarded(lambda: bench_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
