"""Upstream economy: credd's calls to AWS over a simulated day, against the ideal number.

Run from the repository root, with credd installed in the interpreter you use::

    python bench/economy.py [--profiles 1,10,50] [--chained 2] [--hours 24]

For each profile count N, in a throwaway HOME (the real ``~/.aws`` is never read or
written): the strict local AWS emulator and the real daemon, in this process, on one
:class:`~credd.clock.ManualClock`; an AWS config with N Identity Center role
profiles of one sso-session (GetRoleCredentials), ``--chained`` roles chained on
them (AssumeRole), an AWS Sign-In profile with a role chained on it
(CreateOAuth2Token, 15-minute credentials) and a trusted-identity profile
(CreateTokenWithIAM, jwt-bearer, an identity-enhanced role); the logins done. A
simulated client then asks the endpoint for every profile every ``--request-every``
simulated seconds for ``--hours`` simulated hours, and the emulator counts every
upstream call. The table gives, per operation and overall: the calls, **the ideal**
(computed from the emulator's lifetimes and credd's documented margins; see
:mod:`economy_world` (beside this script) for the formula and why it is the least any policy
honouring those margins can make), calls/ideal against the target of issue 6
(<= 1.1), the most the policy allows (every renewal as early as its jitter may
put it) and the SDK floor (only the SDKs' own refresh windows as margins).

Then **the cold stampede**: a fresh daemon, a never-fetched profile, 1,000 concurrent
GETs through the real HTTP endpoint while GetRoleCredentials takes ``--latency``
seconds upstream: exactly one upstream call is the target. And the same for a
role chained on a never-fetched profile: one GetRoleCredentials, one AssumeRole.

Simulated time passes event by event (the next client request or the next planned
renewal), so a day takes seconds of real time; the real time is printed but means
little. Nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
from economy_world import (
    Scenario,
    economy_world,
    run_day,
    stampede,
    table,
    wait_served,
)

from credd.daemon import running_daemon
from credd.files.paths import Paths, resolve_paths
from credd.log import configure_logging

#: issue 6: no more than this many times the ideal number of upstream calls
TARGET_RATIO = 1.1


def private_home(root: Path) -> Paths:
    """Point HOME (and everything AWS and XDG) into ``root``; nothing of the user's is read."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "XDG_")) or name == "CREDD_CONFIG":
            del os.environ[name]
    home, runtime = root / "home", root / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    os.environ["HOME"] = str(home)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    # botocore must never find real credentials or a region on this machine
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    return resolve_paths(os.environ)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profiles",
        default="1,10,50",
        help="Identity Center role profile counts to run, comma-separated (default 1,10,50)",
    )
    parser.add_argument(
        "--chained", type=int, default=2, help="roles chained on them (default 2; at most N)"
    )
    parser.add_argument("--no-signin", action="store_true", help="leave out AWS Sign-In")
    parser.add_argument("--no-trusted", action="store_true", help="leave out trusted identity")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    parser.add_argument(
        "--request-every",
        type=float,
        default=300.0,
        help="each profile is asked for every this many simulated seconds (default 300)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of credd's jitter draws")
    parser.add_argument(
        "--stampede", type=int, default=1000, help="concurrent cold requests (0: skip)"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.2,
        help="upstream latency during the stampede, real seconds (default 0.2)",
    )
    return parser.parse_args(argv)


async def economy(args: argparse.Namespace, counts: Sequence[int]) -> bool:
    met = True
    for n in counts:
        scenario = Scenario(
            sso_roles=n,
            chained=min(args.chained, n),
            signin=not args.no_signin,
            trusted=not args.no_trusted,
            span=args.hours * 3600,
            request_every=args.request_every,
        )
        with tempfile.TemporaryDirectory(prefix="credd-economy-") as tmp:
            paths = private_home(Path(tmp))
            began = time.perf_counter()
            result, found = await run_day(scenario, paths, seed=args.seed)
            took = time.perf_counter() - began
        total = found[-1]
        met = met and total.ratio <= TARGET_RATIO
        print(
            f"\n## {n} role profile(s), {scenario.chained} chained"
            f"{', Sign-In + chain' if scenario.signin else ''}"
            f"{', trusted identity' if scenario.trusted else ''}:"
            f" {len(scenario.profiles)} profiles asked for every {scenario.request_every:.0f} s"
            f" for {args.hours:g} h"
        )
        print(table(found))
        served = sum(result.requests.values())
        print(
            f"requests: {served} ({dict(sorted(result.requests.items()))}, {result.retries}"
            " retried after the request deadline); least time left on"
            f" served credentials: {result.least_left:.0f} s; clock moves: {result.steps};"
            f" real time {took:.1f} s"
        )
        verdict = "met" if total.ratio <= TARGET_RATIO else "NOT met"
        print(f"target: total calls <= {TARGET_RATIO} x ideal: {total.ratio:.3f} ({verdict})")
    return met


async def cold_stampede(args: argparse.Namespace) -> bool:
    """1,000 concurrent cold requests: one upstream call per profile in the chain."""
    scenario = Scenario(sso_roles=2, chained=2, signin=False, trusted=False)
    cases = (
        ("role-0", {"GetRoleCredentials": 1}),
        # role-1 is cold too: one GetRoleCredentials for the source, one AssumeRole
        ("chain-1", {"GetRoleCredentials": 1, "AssumeRole": 1}),
    )
    met = True
    print(f"\n## cold stampede: {args.stampede} concurrent GETs, upstream latency {args.latency} s")
    with tempfile.TemporaryDirectory(prefix="credd-stampede-") as tmp:
        paths = private_home(Path(tmp))
        async with economy_world(scenario, paths) as (emulator, clock, settings):
            for operation in ("GetRoleCredentials", "AssumeRole"):
                emulator.faults.add(operation, latency=args.latency, count=None)
            async with running_daemon(settings, clock=clock) as daemon:
                for profile, expected in cases:
                    before = Counter(emulator.calls)
                    statuses = await stampede(daemon, profile, args.stampede)
                    await wait_served(daemon, profile)  # the fetch may outlive refused requests
                    calls = {op: emulator.calls[op] - before[op] for op in expected}
                    ok = calls == expected
                    met = met and ok
                    print(
                        f"{profile:<8} upstream calls {calls} (target {expected}):"
                        f" {'met' if ok else 'NOT met'}; answers {dict(sorted(statuses.items()))}"
                    )
    return met


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.profiles.split(",") if c.strip()]
    configure_logging("warning", "json", stream=sys.stderr)
    print(
        f"credd upstream economy; python {sys.version.split()[0]};"
        f" margins and lifetimes: credd's and the emulator's defaults"
    )
    met = anyio.run(economy, args, counts)
    if args.stampede:
        met = anyio.run(cold_stampede, args) and met
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
