"""Can the endpoint token be guessed by timing? Wrong tokens near and far from the real one.

Run from the repository root, with credd installed in the interpreter you use::

    python bench/token_timing.py [--samples 20000] [--keep]

A guesser who could see how long the token check takes could find the token a
character at a time: a comparison that stops at the first wrong byte answers a
guess sharing 42 leading characters a little later than one sharing none.
credd compares with ``hmac.compare_digest``, whose time depends on the lengths
only. This measures it from outside, as a guesser would: ``credd serve``
(logged in, in a throwaway HOME, see :mod:`harness`) gets requests over one
keep-alive connection, interleaved in a shuffled order, with four kinds of
``Authorization`` header, all of the real token's length:

``far``     a random token that shares no leading character with the real one;
``far-2``   another such token: the baseline, ``far`` against ``far-2`` is the
            noise of the measurement itself;
``near``    the real token with only its last character changed;
``half``    the real token's first half, then random characters.

It prints the median and trimmed mean round trip of each kind and the
differences ``near - far`` and ``half - far`` next to the baseline ``far-2 -
far``, each with a 95 % bootstrap interval (fixed seed). A timing leak shows as
a ``near - far`` interval clear of zero and wider than the baseline's; on a
constant-time check the three differences look alike. Nothing here is part of
the test suite.
"""

from __future__ import annotations

import argparse
import random
import secrets
import socket
import statistics
import string
import time
from collections.abc import Sequence

import harness

KINDS = ("far", "far-2", "near", "half")
ALPHABET = string.ascii_letters + string.digits + "-_"
BOOTSTRAP = 2000
SEED = 20261121


def _unlike(token: str, rng: random.Random) -> str:
    """A random token of the same length whose first character differs."""
    first = rng.choice([c for c in ALPHABET if c != token[0]])
    return first + "".join(rng.choice(ALPHABET) for _ in token[1:])


def guesses(token: str, rng: random.Random) -> dict[str, str]:
    last = rng.choice([c for c in ALPHABET if c != token[-1]])
    half = len(token) // 2
    tail = _unlike(token[half:], rng)
    return {
        "far": _unlike(token, rng),
        "far-2": _unlike(token, rng),
        "near": token[:-1] + last,
        "half": token[:half] + tail,
    }


class Connection:
    """One keep-alive connection, and round trips on it timed in nanoseconds."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def round_trip(self, request: bytes) -> int:
        started = time.perf_counter_ns()
        self._sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = self._sock.recv(65536)
            if not chunk:
                raise harness.BenchError("credd closed the connection")
            answer += chunk
        elapsed = time.perf_counter_ns() - started
        if not answer.startswith(b"HTTP/1.1 401 "):
            raise harness.BenchError(f"expected a 401, got {answer[:60]!r}")
        return elapsed

    def close(self) -> None:
        self._sock.close()


def _trimmed_mean(values: Sequence[float], cut: float = 0.1) -> float:
    ordered = sorted(values)
    drop = int(len(ordered) * cut)
    return statistics.fmean(ordered[drop : len(ordered) - drop])


def _interval(a: Sequence[float], b: Sequence[float], rng: random.Random) -> tuple[float, float]:
    """95 % bootstrap interval of median(a) - median(b)."""
    diffs = sorted(
        statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
        for _ in range(BOOTSTRAP)
    )
    return diffs[int(0.025 * BOOTSTRAP)], diffs[int(0.975 * BOOTSTRAP)]


def measure(samples: int, keep: bool) -> int:
    rng = random.Random(SEED)
    with harness.workspace(keep=keep) as ws:
        home = harness.Home(ws)
        home.prepare()
        home.login()
        credd = home.start_credd()
        token = credd.token
        wrong = guesses(token, random.Random(secrets.randbits(64)))
        requests = {
            kind: (
                f"GET /v1/credentials/{harness.PROFILE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {value}\r\n\r\n"
            ).encode()
            for kind, value in wrong.items()
        }
        order = [kind for kind in KINDS for _ in range(samples)]
        rng.shuffle(order)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        connection = Connection(int(credd.url.rsplit(":", 1)[1]))
        try:
            for kind in KINDS * 200:  # warm up: caches, branch predictors, the allocator
                connection.round_trip(requests[kind])
            harness.progress(f"{len(order)} requests ...")
            for kind in order:
                times[kind].append(connection.round_trip(requests[kind]) / 1000)
        finally:
            connection.close()
    report(times, samples, rng)
    return 0


def report(times: dict[str, list[float]], samples: int, rng: random.Random) -> None:
    print(f"token check timing: {samples} requests per kind, interleaved, one connection")
    print("kind   | shared prefix | median us | trimmed mean us")
    shared = {"far": "0", "far-2": "0", "near": "42 of 43", "half": "21 of 43"}
    for kind in KINDS:
        values = times[kind]
        print(
            f"{kind:6} | {shared[kind]:>13} | {statistics.median(values):9.2f} | "
            f"{_trimmed_mean(values):15.2f}"
        )
    far = times["far"]
    print("difference of medians against far, 95 % bootstrap interval (us):")
    for kind in ("far-2", "half", "near"):
        low, high = _interval(times[kind], far, rng)
        diff = statistics.median(times[kind]) - statistics.median(far)
        label = "baseline (noise)" if kind == "far-2" else "guess"
        print(f"  {kind:6} - far: {diff:+.3f}  [{low:+.3f}, {high:+.3f}]  {label}")
    low, high = _interval(times["near"], far, rng)
    base_low, base_high = _interval(times["far-2"], far, rng)
    verdict = (
        "no difference beyond the noise"
        if low <= max(base_high, 0.0) and high >= min(base_low, 0.0)
        else "a difference beyond the noise: investigate"
    )
    print(f"verdict: near vs far: {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000, help="requests per kind")
    parser.add_argument("--keep", action="store_true", help="keep the temporary HOME")
    args = parser.parse_args(argv)
    return harness.guarded(lambda: measure(args.samples, args.keep))


if __name__ == "__main__":
    raise SystemExit(main())
