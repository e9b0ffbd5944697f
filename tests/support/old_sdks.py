"""AWS SDKs that predate ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``, as Debian 12 ships them.

SDKs added the token-file variable in late 2023; older ones send only the value of
``AWS_CONTAINER_AUTHORIZATION_TOKEN``. Two such clients, each a program of its own in
tests/oldsdk/ that resolves credentials with its SDK's default chain and calls STS
GetCallerIdentity:

- Debian's botocore 1.29 (``python3-botocore``), run by the system Python, isolated from
  the project's venv;
- Debian's AWS SDK for Go v2 (``golang-github-aws-aws-sdk-go-v2-dev``), built offline with
  Debian's ``golang-go`` in GOPATH mode against /usr/share/gocode.

A client that is not installed is skipped outside CI and fails the test in CI (``$CI``
set; .ci/run sets it and installs both). :func:`run_client` starts one with the
environment a shell gets from ``eval "$(credd env PROFILE)"``: the shell evaluates what
credd printed, so the test parses nothing of it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.process import Result, run

OLDSDK_DIR = Path(__file__).resolve().parent.parent / "oldsdk"
#: Debian's own interpreter, where apt's python3-botocore lives (not pyenv's, not the venv's)
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: where python3-botocore installs botocore (tests/oldsdk/botocore_whoami.py refuses any other)
DEBIAN_BOTOCORE = Path("/usr/lib/python3/dist-packages/botocore")
#: Debian's golang-go, and the GOPATH its -dev packages install Go sources into
DEBIAN_GO = Path("/usr/bin/go")
GOCODE = Path("/usr/share/gocode")
GO_SDK = GOCODE / "src" / "github.com" / "aws" / "aws-sdk-go-v2"
#: a cold build of the SDK's config and STS packages takes about 10 s on an idle 2-core VM
GO_BUILD_DEADLINE = 600.0
#: a refused credential fetch costs botocore 1.29 three tries 1 s apart
CLIENT_DEADLINE = 60.0
#: the variable that carries what ``credd env`` printed into ``sh`` (not argv: ``ps`` shows argv)
PRINTED = "CREDD_ENV_PRINTED"
#: evaluate what ``credd env`` printed, then run the arguments as a command
EVAL_THEN_EXEC = f'eval "${PRINTED}" && unset {PRINTED} && exec "$@"'


@dataclass(frozen=True)
class OldClient:
    """An old-SDK program: ``argv + [STS_URL]`` prints what :class:`Outcome` reads."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """One run of an old client: the process, and the JSON line it printed."""

    result: Result
    said: dict[str, Any]

    @property
    def failed(self) -> str | None:
        """The step that failed (``"credentials"``, ``"sts"``...), or None on success."""
        step: str | None = self.said.get("failed")
        return step

    @property
    def status(self) -> int:
        """The container endpoint's HTTP status for a failed fetch (0 if none came)."""
        status: int = self.said.get("status", 0)
        return status


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a client, except in CI, where a skip would hide an untested claim."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


def debian_botocore() -> OldClient:
    """Debian's botocore 1.29 under the system Python (``apt-get install python3-botocore``)."""
    if not SYSTEM_PYTHON.is_file() or not (DEBIAN_BOTOCORE / "credentials.py").is_file():
        unavailable("Debian's botocore is not installed (apt-get install -y python3-botocore)")
    # -I: PYTHONPATH, the user site and the script's directory stay out of sys.path
    script = OLDSDK_DIR / "botocore_whoami.py"
    return OldClient("botocore (python3-botocore)", (str(SYSTEM_PYTHON), "-I", str(script)))


def debian_go_sdk(build_dir: Path) -> OldClient:
    """tests/oldsdk/whoami.go built into ``build_dir`` with Debian's Go and Go SDK v2.

    Blocking (a session fixture calls it once): GOPATH mode, ``GOPROXY=off`` and a fresh
    environment, so the build reads only /usr/share/gocode and never the network.
    """
    if not DEBIAN_GO.is_file() or not (GO_SDK / "config" / "env_config.go").is_file():
        unavailable(
            "Debian's Go SDK v2 is not installed "
            "(apt-get install -y golang-go golang-github-aws-aws-sdk-go-v2-dev)"
        )
    binary = build_dir / "whoami"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(build_dir),
        "GO111MODULE": "off",
        "GOPATH": str(GOCODE),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        "GOCACHE": str(build_dir / "go-cache"),
        "CGO_ENABLED": "0",
    }
    built = subprocess.run(
        [str(DEBIAN_GO), "build", "-o", str(binary), str(OLDSDK_DIR / "whoami.go")],
        env=env,
        cwd=build_dir,
        capture_output=True,
        text=True,
        timeout=GO_BUILD_DEADLINE,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"go build of tests/oldsdk/whoami.go failed:\n{built.stdout}{built.stderr}")
    return OldClient("Go SDK v2 (golang-github-aws-aws-sdk-go-v2-dev)", (str(binary),))


async def run_client(
    client: OldClient,
    printed: str,
    env: Mapping[str, str],
    sts_url: str,
    *,
    unset: Sequence[str] = (),
    override: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``client`` in the environment ``eval "$(credd env ...)"`` leaves in ``sh``.

    ``unset`` and ``override`` then change that environment (through ``env(1)``), for the
    runs that must fail.
    """
    changes = [f"--unset={name}" for name in unset]
    changes += [f"{name}={value}" for name, value in (override or {}).items()]
    argv = ["/bin/sh", "-c", EVAL_THEN_EXEC, "sh", "env", *changes, *client.argv, sts_url]
    result = await run(argv, {**env, PRINTED: printed}, deadline=CLIENT_DEADLINE)
    lines = result.stdout.splitlines()
    assert result.returncode in (0, 3), f"{client.name}:\n{result}"
    assert len(lines) == 1, f"{client.name}:\n{result}"
    said: dict[str, Any] = json.loads(lines[0])
    return Outcome(result, said)
