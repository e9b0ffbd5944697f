"""How fast credd answers ``GET /v1/credentials/PROFILE``, against the aiohttp floor.

Run from the repository root, with credd installed in the interpreter you use::

    python bench/endpoint.py [--duration 5] [--connections 1,32,256] [--rounds 1] [--uvloop]
                             [--admin-token]

Everything lives in a throwaway HOME (the real ``~/.aws`` is never read or
written): the strict local AWS emulator, an AWS config with the sso-session
``my-sso`` and the profile ``dev``, ``credd serve`` on ``127.0.0.1:0`` and a
``credd login my-sso`` approved by the headless test browser, each one a
subprocess. One GET then puts dev's credentials in memory. credd is asked with a
token scoped to ``dev`` from ``credd grant dev``, as SDKs given ``credd env`` ask
it (its check is the admin token's comparison, then one SHA-256 and a lookup);
``--admin-token`` asks with the admin token instead, as the ``credd`` command does.

The baseline ("the framework floor") is a bare aiohttp app in its own process:
the same route, a constant JSON body of the same size and the same token check
(``hmac.compare_digest`` on ``Authorization``), and nothing else. Whatever
credd costs above it is credd's own per-request work.

Load comes from ``wrk`` when it is installed, else from an aiohttp client in a
separate process (closed loop, N keep-alive connections, per-request latency).
Both servers run alternately under the same load, at each connection count, and
the table gives requests/s, p50 and p99 for each and the credd/floor throughput
ratio, against the targets of issue 6, then the servers' CPU time per request
and how busy the rest of the machine was during the runs (a noisy run says
so). The scheduler places the processes, as it does for real SDK clients;
``--pin`` puts the servers on the first CPU and the load on the others instead
(on a small VM, cross-CPU wake-ups then cost more than they save).

``--uvloop`` repeats the whole run with both servers on uvloop and compares.
credd itself is never changed for that: it is started through a launcher
(``python -c ...``, :data:`CREDD_LAUNCHER`) that sets the event loop policy
before calling ``credd.cli.main``; ``anyio.run`` builds its loop from that
policy. The launcher prints the class of the loop it made, so the report says
which loop each server really ran on.

``--profile`` adds one run at 32 connections with ``py-spy`` sampling credd,
and prints where its time goes (own time per function).

Figures depend on the machine; only the ratios measured in the same run mean
anything. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hmac
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    PROFILE,
    BenchError,
    CpuSnapshot,
    Home,
    Processes,
    Workspace,
    guarded,
    http_get,
    progress,
    workspace,
)

DEFAULT_CONNECTIONS = (1, 32, 256)
#: issue 6: credd keeps at least this share of the floor's throughput at 32 connections
TARGET_RATIO = 0.8
TARGET_RATIO_CONNECTIONS = 32
#: issue 6: credd's p99 latency
TARGET_P99_MS = 2.0
PERCENTILES = (50, 75, 90, 99)
#: CPUs busy outside the benchmark above which a run is reported as noisy
NOISE_CPUS = 0.1

#: ``credd serve`` with the event loop chosen from outside: argv[1] is ``asyncio`` or
#: ``uvloop``. anyio.run (credd.cli) makes its loop through the policy set here.
CREDD_LAUNCHER = """\
import asyncio, os, sys
os.environ["CREDD_EVENT_LOOP"] = "asyncio"  # the policy below decides, not credd
if sys.argv.pop(1) == "uvloop":
    import uvloop
    Base = uvloop.EventLoopPolicy
else:
    Base = asyncio.DefaultEventLoopPolicy
class Policy(Base):
    def new_event_loop(self):
        loop = super().new_event_loop()
        kind = type(loop)
        print(f"BENCH_LOOP={kind.__module__}.{kind.__qualname__}", flush=True)
        return loop
asyncio.set_event_loop_policy(Policy())
from credd.cli import main
main()
"""

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    #: percentile (50, 75, 90, 99) -> milliseconds
    latency_ms: dict[int, float]
    #: answers that were not 2xx, plus connect/read/write/timeout errors
    failures: int
    #: CPU seconds the server used during the run (all its threads)
    server_cpu: float = 0.0
    #: CPUs kept busy on average by processes outside this benchmark during the run
    other_cpus: float = 0.0
    #: CPUs taken on average by the hypervisor (steal time) during the run
    steal_cpus: float = 0.0

    @property
    def p50(self) -> float:
        return self.latency_ms[50]

    @property
    def server_share(self) -> float:
        """How much of one CPU the server used."""
        return self.server_cpu / self.seconds if self.seconds else float("nan")

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu / self.requests * 1e6 if self.requests else float("nan")

    @property
    def p99(self) -> float:
        return self.latency_ms[99]


@dataclasses.dataclass(frozen=True)
class Row:
    connections: int
    credd: LoadResult
    floor: LoadResult

    @property
    def ratio(self) -> float:
        return self.credd.rps / self.floor.rps if self.floor.rps else float("nan")

    @property
    def cpu_ratio(self) -> float:
        """Floor CPU per request / credd CPU per request: what ``ratio`` tends to when
        the server is the bottleneck, and less sensitive to other load on the machine."""
        return self.floor.cpu_us_per_request / self.credd.cpu_us_per_request


@dataclasses.dataclass(frozen=True)
class ModeResult:
    loop: str
    credd_loop: str
    floor_loop: str
    rows: list[Row]


# --------------------------------------------------------------------------- the setup


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    url: str
    token: str
    loop: str
    pid: int


class Bench:
    """The throwaway HOME (:class:`harness.Home`), credd in it, and the floor beside it."""

    def __init__(self, ws: Workspace, *, scoped: bool = True) -> None:
        self.home = Home(ws)
        #: credd is asked with a scoped token (credd grant), else with the admin token
        self.scoped = scoped
        self._scoped: str | None = None
        self.procs = ws.procs
        self.body_size = 0
        self._credd: subprocess.Popen[bytes] | None = None
        self._floor: subprocess.Popen[bytes] | None = None
        self._credd_starts = 0

    @property
    def env(self) -> dict[str, str]:
        return self.home.env

    def prepare(self) -> None:
        self.home.prepare()

    def start_credd(self, loop: str) -> Target:
        """``credd serve`` through the launcher; logs in once, then warms ``dev`` up."""
        if self._credd is not None:
            self.procs.stop(self._credd)
        self._credd_starts += 1
        name = f"credd-{loop}-{self._credd_starts}"
        credd = self.home.start_credd(
            [sys.executable, "-c", CREDD_LAUNCHER, loop, "serve"], name=name
        )
        self._credd = credd.proc
        kind = self.procs.wait_for_line(name, credd.proc, "BENCH_LOOP=")
        if self._credd_starts == 1:
            self.home.login()
        self.body_size = len(self.home.get_credentials(credd, PROFILE))
        token = credd.token
        if self.scoped:
            if self._scoped is None:  # kept in the grants file across restarts
                self._scoped = self.home.credd_command("grant", PROFILE).strip()
            status, body = http_get(credd.credentials_url(PROFILE), self._scoped)
            if status != 200 or len(body) != self.body_size:
                raise BenchError(f"credd refused the scoped token: {status}")
            token = self._scoped
        return Target("credd", credd.credentials_url(PROFILE), token, kind, credd.pid)

    def start_floor(self, loop: str) -> Target:
        if self._floor is not None:
            self.procs.stop(self._floor)
        token = secrets.token_urlsafe(32)  # the same length as credd's
        name = f"floor-{loop}"
        self._floor = self.procs.start_server(
            name,
            [sys.executable, __file__, "--serve-floor", str(self.body_size), "--loop", loop],
            {**self.home.env, "BENCH_TOKEN": token},
        )
        url = self.procs.wait_for_line(name, self._floor, "FLOOR_URL=")
        kind = self.procs.wait_for_line(name, self._floor, "BENCH_LOOP=")
        status, body = http_get(f"{url}/v1/credentials/{PROFILE}", token)
        if status != 200 or len(body) != self.body_size:
            raise BenchError(f"the floor answered {status} with {len(body)} bytes")
        return Target("floor", f"{url}/v1/credentials/{PROFILE}", token, kind, self._floor.pid)


# --------------------------------------------------------------------------- load


class Load:
    """One way of putting load on a URL: wrk, or the aiohttp client in a process."""

    def __init__(
        self, procs: Processes, files: Path, cpus: set[int] | None, threads: int, use_wrk: bool
    ) -> None:
        self._procs = procs
        self._files = files
        self._cpus = cpus
        self._threads = threads
        self.wrk = shutil.which("wrk") if use_wrk else None
        self.runs = 0

    def describe(self) -> str:
        if self.wrk:
            version = subprocess.run(
                [self.wrk, "-v"], capture_output=True, text=True, check=False
            ).stdout.split()
            shown = version[1] if len(version) > 1 else "?"
            return f"wrk {shown}, {self._threads} thread(s), --latency, token set by a Lua script"
        loop = "uvloop" if _has_uvloop() else "asyncio"
        return f"aiohttp client process ({loop}, closed loop, one task per connection)"

    def _wrk_script(self, target: Target) -> Path:
        """Sets the token header (kept out of argv, where ``ps`` would show it)."""
        path = self._files / f"wrk-{target.name}.lua"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as script:
            script.write(f'wrk.headers["Authorization"] = {json.dumps(target.token)}\n')
        return path

    def run(self, target: Target, connections: int, seconds: float) -> LoadResult:
        self.runs += 1
        name = f"load-{self.runs}"
        env = {**os.environ, "BENCH_TOKEN": target.token}
        if self.wrk:
            argv = [
                self.wrk,
                f"-t{min(self._threads, connections)}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--latency",
                "--timeout",
                "10s",
                "--script",
                str(self._wrk_script(target)),
                target.url,
            ]
        else:
            argv = [sys.executable, __file__, "--load-client", target.url, str(connections)]
            argv += ["--duration", f"{seconds:g}"]
        before = CpuSnapshot.take([target.pid])
        proc = self._procs.start(name, argv, env, cpus=self._cpus, capture=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
            after = CpuSnapshot.take([target.pid])
        except subprocess.TimeoutExpired as exc:
            raise BenchError(
                f"the load generator did not finish ({' '.join(argv[:3])} ...)"
            ) from exc
        finally:
            self._procs.stop(proc)
        text = out.decode(errors="replace")
        (self._files / "logs" / f"{name}.out").write_text(text)
        if proc.returncode != 0:
            raise BenchError(f"load generator failed ({proc.returncode}): {text[-500:]}")
        result = parse_wrk(text) if self.wrk else LoadResult(**_result_fields(json.loads(text)))
        return _account(after, before, result)


def _account(after: CpuSnapshot, before: CpuSnapshot, result: LoadResult) -> LoadResult:
    """``result`` with the server's CPU time and the machine's other load during the run."""
    use = after.since(before)
    return dataclasses.replace(
        result,
        server_cpu=use.watched,
        other_cpus=use.other_cpus,
        steal_cpus=use.steal_cpus,
    )


def _result_fields(document: dict[str, Any]) -> dict[str, Any]:
    document["latency_ms"] = {int(k): float(v) for k, v in document["latency_ms"].items()}
    return document


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise BenchError(f"cannot read a wrk duration: {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(text: str) -> LoadResult:
    """Requests/s, the latency distribution and the failures from ``wrk --latency`` output."""
    latency: dict[int, float] = {}
    for match in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.MULTILINE):
        latency[int(match[1])] = _ms(match[2])
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+\w+),", text, re.MULTILINE)
    if rps is None or total is None or set(latency) != set(PERCENTILES):
        raise BenchError(f"cannot read wrk's output:\n{text}")
    failures = 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        failures += sum(int(n) for n in errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        failures += int(non2xx[1])
    return LoadResult(
        requests=int(total[1]),
        seconds=_ms(total[2]) / 1000,
        rps=float(rps[1]),
        latency_ms=latency,
        failures=failures,
    )


# --------------------------------------------------------------------------- child roles


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _runner(loop: str) -> asyncio.Runner:
    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def serve_floor(body_size: int, loop: str) -> None:
    """The framework floor: aiohttp, one route, one token check, one constant body."""
    from aiohttp import web

    token = os.environ["BENCH_TOKEN"].encode()
    filler = body_size - len(json.dumps({"pad": ""}))
    if filler < 0:
        raise BenchError(f"a {body_size}-byte body is too small to fake")
    body = json.dumps({"pad": "x" * filler}).encode()
    assert len(body) == body_size

    async def credentials(request: web.Request) -> web.Response:
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), token):
            return web.Response(status=401, body=b'{"code":"Unauthorized"}')
        return web.Response(body=body, content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/v1/credentials/{profile}", credentials, allow_head=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        host, port = runner.addresses[0][:2]
        kind = type(asyncio.get_running_loop())
        print(f"FLOOR_URL=http://{host}:{port}", flush=True)
        print(f"BENCH_LOOP={kind.__module__}.{kind.__qualname__}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with _runner(loop) as runner:
        runner.run(serve())


def load_client(url: str, connections: int, seconds: float) -> None:
    """wrk's stand-in: ``connections`` keep-alive connections, each a closed loop."""
    import aiohttp

    headers = {"Authorization": os.environ["BENCH_TOKEN"]}
    latencies: list[int] = []
    failures = 0

    async def worker(http: aiohttp.ClientSession, stop_at: int) -> None:
        nonlocal failures
        clock = time.perf_counter_ns
        record = latencies.append
        while clock() < stop_at:
            started = clock()
            try:
                async with http.get(url, headers=headers) as answer:
                    await answer.read()
                    if answer.status >= 300:
                        failures += 1
            except aiohttp.ClientError:
                failures += 1
                continue
            record(clock() - started)

    async def run() -> float:
        connector = aiohttp.TCPConnector(limit=connections, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.perf_counter_ns()
            stop_at = started + int(seconds * 1e9)
            async with asyncio.TaskGroup() as tg:
                for _ in range(connections):
                    tg.create_task(worker(http, stop_at))
            return (time.perf_counter_ns() - started) / 1e9

    with _runner("uvloop" if _has_uvloop() else "asyncio") as runner:
        elapsed = runner.run(run())
    ordered = sorted(latencies)

    def percentile(p: int) -> float:
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    print(
        json.dumps(
            {
                "requests": len(ordered),
                "seconds": elapsed,
                "rps": len(ordered) / elapsed,
                "latency_ms": {p: percentile(p) for p in PERCENTILES},
                "failures": failures,
            }
        )
    )


# --------------------------------------------------------------------------- the runs


def run_mode(
    bench: Bench, load: Load, loop: str, connections: Sequence[int], args: argparse.Namespace
) -> ModeResult:
    credd = bench.start_credd(loop)
    floor = bench.start_floor(loop)
    for target in (credd, floor):  # warm both: first connections, lazily built paths
        load.run(target, max(connections), args.warmup)
    rows = []
    for n in connections:
        runs: dict[str, list[LoadResult]] = {"credd": [], "floor": []}
        for round_ in range(args.rounds):
            order = (credd, floor) if round_ % 2 == 0 else (floor, credd)
            for target in order:
                runs[target.name].append(load.run(target, n, args.duration))
        rows.append(Row(n, _median_run(runs["credd"]), _median_run(runs["floor"])))
        progress(f"  [{loop}] {n} connection(s) done")
    return ModeResult(loop, credd.loop, floor.loop, rows)


def _median_run(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (the lower middle one for an even count)."""
    ranked = sorted(runs, key=lambda r: r.rps)
    return ranked[(len(ranked) - 1) // 2]


def profile_credd(bench: Bench, load: Load, seconds: float, out_dir: Path) -> str:
    """One extra 32-connection run with py-spy sampling credd; own time per function."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return "profile: py-spy is not installed (pip install py-spy); skipped"
    credd = bench.start_credd("asyncio")
    pid = credd.pid
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "credd-profile.txt"
    record = bench.procs.start(
        "py-spy",
        [
            *(spy, "record", "--pid", str(pid), "--rate", "500", "--duration", f"{seconds:g}"),
            *("--format", "raw", "--output", str(raw)),
        ],
        os.environ.copy(),
    )
    time.sleep(0.5)
    load.run(credd, TARGET_RATIO_CONNECTIONS, seconds)
    try:
        record.wait(seconds + 30)
    except subprocess.TimeoutExpired:
        bench.procs.stop(record)
    if not raw.exists():
        return "profile: py-spy recorded nothing:\n" + bench.procs.log_tail("py-spy", 5)
    return summarize_profile(raw)


def summarize_profile(raw: Path, top: int = 22) -> str:
    """py-spy's collapsed stacks of the event loop's thread: own and inclusive time.

    Other threads (anyio's and the executor's idle workers) are counted apart.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = elsewhere = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if "credd/cli.py" not in stack:  # not under credd.cli.main: another thread
            elsewhere += count
            continue
        total += count
        frames = [_short_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "profile: no samples"
    lines = [
        f"profile of credd at {TARGET_RATIO_CONNECTIONS} connections: {total} samples of the "
        f"event loop's thread ({elsewhere} more in other threads, left out)"
    ]
    lines.append("  own time (leaf function):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    credd_frames = [
        (k, v) for k, v in inclusive.most_common() if "credd/" in k and "credd/cli.py" not in k
    ]
    lines.append("  inclusive time of credd's own functions:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in credd_frames[:12]]
    lines.append(f"  raw collapsed stacks: {raw}")
    return "\n".join(lines)


def _short_frame(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame.strip())
    if match is None:
        return frame.strip()
    path = match[2]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/main/", 1)[-1]
    return f"{match[1]} ({path})"


# --------------------------------------------------------------------------- the report


def machine_facts(load: Load, pinned: tuple[set[int], set[int]] | None) -> list[str]:
    import aiohttp
    from aiohttp import http_parser

    cpus = sorted(os.sched_getaffinity(0))
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    c_parser = "C" if "_http_parser" in http_parser.HttpRequestParser.__module__ else "pure Python"
    try:
        uvloop = f"uvloop {importlib.metadata.version('uvloop')} installed"
    except importlib.metadata.PackageNotFoundError:
        uvloop = "uvloop not installed"
    pinning = (
        f"servers on CPU {_cpus(pinned[0])}, load on CPU {_cpus(pinned[1])}" if pinned else "none"
    )
    return [
        f"machine   nproc {os.cpu_count()} (usable: {_cpus(set(cpus))}), {model}, "
        f"{platform.system()} {platform.release()}, load average %.2f %.2f %.2f" % os.getloadavg(),
        f"python    {platform.python_version()} ({sys.executable})",
        f"aiohttp   {aiohttp.__version__} ({c_parser} HTTP parser); {uvloop}",
        f"load      {load.describe()}",
        f"pinning   {pinning}",
    ]


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _fmt_ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def format_table(mode: ModeResult) -> list[str]:
    head = (
        f"{'conns':>5} | {'credd req/s':>11} {'p50':>9} {'p99':>9} | "
        f"{'floor req/s':>11} {'p50':>9} {'p99':>9} | {'credd/floor':>11}"
    )
    lines = [head, "-" * len(head)]
    notes = []
    for row in mode.rows:
        c, f = row.credd, row.floor
        lines.append(
            f"{row.connections:>5} | {c.rps:>11,.0f} {_fmt_ms(c.p50):>9} {_fmt_ms(c.p99):>9} | "
            f"{f.rps:>11,.0f} {_fmt_ms(f.p50):>9} {_fmt_ms(f.p99):>9} | {row.ratio:>11.2f}"
        )
        for name, result in (("credd", c), ("floor", f)):
            if result.failures:
                notes.append(
                    f"  WARNING: {name} at {row.connections} connection(s): "
                    f"{result.failures} failed or non-2xx answers; its figures are not valid"
                )
    lines += notes
    lines.append("")
    head = (
        f"{'conns':>5} | {'credd CPU':>9} {'us/req':>7} | {'floor CPU':>9} {'us/req':>7} | "
        f"{'credd extra':>11} {'floor/credd':>11} | {'busy elsewhere':>14} {'steal':>6}"
    )
    lines += ["server CPU (share of one core) and CPU time per request:", head, "-" * len(head)]
    noisy = False
    for row in mode.rows:
        c, f = row.credd, row.floor
        elsewhere = max(c.other_cpus, f.other_cpus)
        steal = max(c.steal_cpus, f.steal_cpus)
        noisy = noisy or elsewhere + steal > NOISE_CPUS
        lines.append(
            f"{row.connections:>5} | {c.server_share:>9.0%} {c.cpu_us_per_request:>7.1f} | "
            f"{f.server_share:>9.0%} {f.cpu_us_per_request:>7.1f} | "
            f"{c.cpu_us_per_request - f.cpu_us_per_request:>+8.1f} us "
            f"{row.cpu_ratio:>11.2f} | "
            f"{elsewhere:>9.2f} CPUs {steal:>6.2f}"
        )
    if noisy:
        lines.append(
            f"  WARNING: other processes used more than {NOISE_CPUS:.2f} CPUs during some runs; "
            "figures are noisy, run again on a quiet machine (or with --rounds 3)"
        )
    return lines


def format_targets(mode: ModeResult) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    lines = ["targets (issue 6):"]
    at = [r for r in mode.rows if r.connections == TARGET_RATIO_CONNECTIONS]
    if at:
        ratio = at[0].ratio
        lines.append(
            f"  credd/floor >= {TARGET_RATIO:.2f} at {TARGET_RATIO_CONNECTIONS} connections: "
            f"{ratio:.3f} -> {verdict(ratio >= TARGET_RATIO)}"
            f"   (CPU per request, floor/credd: {at[0].cpu_ratio:.2f})"
        )
    else:
        lines.append(
            f"  credd/floor >= {TARGET_RATIO:.2f} at {TARGET_RATIO_CONNECTIONS} connections: "
            "not measured (add 32 to --connections)"
        )
    for row in mode.rows:
        p99 = row.credd.p99
        # Little's law: with N requests always in flight, mean latency = N / throughput.
        queueing = row.connections / row.floor.rps * 1000 if row.floor.rps else float("nan")
        lines.append(
            f"  credd p99 <= {TARGET_P99_MS:g} ms at {row.connections:>3} connection(s): "
            f"{_fmt_ms(p99)} -> {verdict(p99 <= TARGET_P99_MS)}"
            f"   (floor p99 {_fmt_ms(row.floor.p99)}; N/throughput of the floor "
            f"{_fmt_ms(queueing)})"
        )
    return lines


def format_uvloop(base: ModeResult, fast: ModeResult) -> list[str]:
    head = (
        f"{'conns':>5} | {'credd asyncio':>13} {'uvloop':>9} {'gain':>6} | "
        f"{'floor asyncio':>13} {'uvloop':>9} {'gain':>6} | {'ratio asyncio':>13} {'uvloop':>6}"
    )
    lines = ["asyncio vs uvloop (req/s):", head, "-" * len(head)]
    for a, u in zip(base.rows, fast.rows, strict=True):
        lines.append(
            f"{a.connections:>5} | {a.credd.rps:>13,.0f} {u.credd.rps:>9,.0f} "
            f"{u.credd.rps / a.credd.rps:>5.2f}x | {a.floor.rps:>13,.0f} {u.floor.rps:>9,.0f} "
            f"{u.floor.rps / a.floor.rps:>5.2f}x | {a.ratio:>13.2f} {u.ratio:>6.2f}"
        )
    lines.append("credd p99 (ms), asyncio -> uvloop:")
    lines += [
        f"  {a.connections:>3} connection(s): {_fmt_ms(a.credd.p99)} -> {_fmt_ms(u.credd.p99)}"
        for a, u in zip(base.rows, fast.rows, strict=True)
    ]
    return lines


# --------------------------------------------------------------------------- main


def _connections(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("connection counts are positive integers")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/endpoint.py",
        description="credd's credentials endpoint against a bare aiohttp app (the floor).",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument(
        "--connections",
        type=_connections,
        default=list(DEFAULT_CONNECTIONS),
        help="comma-separated connection counts (1,32,256)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs per server and count, alternating order; the median is shown (1)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per server (1)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument(
        "--uvloop", action="store_true", help="also run both servers on uvloop and compare"
    )
    parser.add_argument(
        "--no-wrk", dest="wrk", action="store_false", help="use the aiohttp load client"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the servers to the first CPU and the load generator to the others",
    )
    parser.add_argument(
        "--profile", action="store_true", help="one more run with py-spy sampling credd"
    )
    parser.add_argument(
        "--admin-token",
        action="store_true",
        help="ask credd with the admin token, as the credd command does (default: a scoped "
        "token from credd grant, as SDKs given credd env do)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary HOME and logs")
    # internal roles of this same file, run as child processes
    parser.add_argument("--serve-floor", type=int, metavar="BODY_SIZE", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--load-client", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    return parser


def _split_cpus(pin: bool) -> tuple[set[int], set[int]] | None:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def bench_main(args: argparse.Namespace) -> int:
    if args.uvloop and not _has_uvloop():
        progress("--uvloop: uvloop is not importable (pip install uvloop); running asyncio only")
        args.uvloop = False
    pinned = _split_cpus(args.pin)
    with workspace(keep=args.keep, server_cpus=pinned[0] if pinned else None) as ws:
        root = ws.root
        load = Load(ws.procs, root, pinned[1] if pinned else None, args.threads, args.wrk)
        if args.wrk and load.wrk is None:
            progress("wrk not found (apt-get install wrk); using the aiohttp load client instead")
        bench = Bench(ws, scoped=not args.admin_token)
        progress(f"setting up in {root} ...")
        bench.prepare()
        modes = [run_mode(bench, load, "asyncio", args.connections, args)]
        if args.uvloop:
            modes.append(run_mode(bench, load, "uvloop", args.connections, args))
        profile = None
        if args.profile:
            profile = profile_credd(bench, load, args.duration, root / "profile")
            ws.keep = True  # a profile's raw stacks are kept

    report: list[str] = []
    report.append(
        f"credd endpoint benchmark: GET /v1/credentials/{PROFILE} ({bench.body_size}-byte JSON "
        f"answer), {args.duration:g} s per run, {args.rounds} round(s), credd and the floor "
        f"alternately; credd asked with {'the admin' if args.admin_token else 'a scoped'} token"
    )
    report += machine_facts(load, pinned)
    for mode in modes:
        report.append("")
        report.append(
            f"event loop: {mode.loop} (credd: {mode.credd_loop}; floor: {mode.floor_loop})"
        )
        report += format_table(mode)
        report += format_targets(mode)
    if len(modes) == 2:
        report.append("")
        report += format_uvloop(modes[0], modes[1])
    if profile:
        report.append("")
        report.append(profile)
    if args.keep or profile is not None:
        report.append(f"\nlogs and files kept in {root}")
    print("\n".join(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.loop)
        return 0
    if args.load_client is not None:
        url, connections = args.load_client
        load_client(url, int(connections), args.duration)
        return 0
    return guarded(lambda: bench_main(args))


if __name__ == "__main__":
    sys.exit(main())
