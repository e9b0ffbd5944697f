"""``make demo``: credd's main job end to end, against the bundled emulator, narrated.

Starts the strict local AWS emulator, writes an AWS config into a throwaway
HOME (your own ``~/.aws`` is never touched), runs the real ``credd serve``,
logs in with ``credd login`` (the browser step is played by
:mod:`credd.testing.browser`), and has boto3, in a process of its own, call
``sts get-caller-identity`` with credentials served by credd.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio
from anyio.abc import Process

from credd.testing.browser import install_shim
from credd.testing.emulator import Emulator, organization_directory

AWS_CONFIG = """\
[sso-session demo]
sso_start_url = https://d-1234567890.awsapps.com/start
sso_region = us-east-1
sso_registration_scopes = sso:account:access

[profile dev]
sso_session = demo
sso_account_id = 111111111111
sso_role_name = ReadOnly
region = eu-west-1

[profile admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = dev
region = us-east-1
"""

WHOAMI = (
    "import boto3; i = boto3.client('sts').get_caller_identity(); "
    "print('    Arn:', i['Arn']); print('    Account:', i['Account'])"
)


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


async def run(env: dict[str, str], *argv: str) -> str:
    print("$ " + " ".join(argv), flush=True)
    result = await anyio.run_process(list(argv), env=env, check=False, stderr=None)
    output = result.stdout.decode()
    print(output, end="", flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} {argv[1]} exited with {result.returncode}")
    return output


async def wait_ready(env: dict[str, str], daemon: Process, address: Path) -> None:
    with anyio.fail_after(20):
        while not address.exists():  # noqa: ASYNC240  # one stat per poll, in a demo
            if daemon.returncode is not None:
                raise SystemExit("demo: credd serve exited early")
            await anyio.sleep(0.05)


async def main() -> None:
    credd = [sys.executable, "-m", "credd.cli"]
    with tempfile.TemporaryDirectory(prefix="credd-demo-") as tmp:
        home = Path(tmp)
        (home / ".aws").mkdir()
        (home / ".aws" / "config").write_text(AWS_CONFIG)
        (home / ".config" / "credd").mkdir(parents=True)
        (home / ".config" / "credd" / "config.toml").write_text(
            '[server]\nlisten = "127.0.0.1:0"\n\n[log]\nformat = "console"\n'
        )
        browser = install_shim(home / "browser")

        async with Emulator(directory=organization_directory()).running() as emu:
            say(f"A strict local AWS emulator (sso-oidc, SSO portal, STS) listens on {emu.url}")
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "XDG_", "CREDD"))
            }
            env.update(
                HOME=str(home),
                XDG_RUNTIME_DIR=str(home / "run"),
                AWS_ENDPOINT_URL=emu.url,
                BROWSER=str(browser),
                AWS_EC2_METADATA_DISABLED="true",
            )
            print(f"    (a throwaway HOME at {home}; your ~/.aws is not touched)")
            print(
                "    AWS config:\n" + "".join(f"      {line}\n" for line in AWS_CONFIG.splitlines())
            )

            say("Start the daemon: credd serve")
            async with await anyio.open_process(
                [*credd, "serve"], env=env, stdout=None, stderr=None
            ) as daemon:
                try:
                    await wait_ready(env, daemon, home / "run" / "credd" / "address")
                    say("Nothing is served before a login; credd status says what to run")
                    await run(env, *credd, "status")

                    say("Log in once: credd login demo (authorization code + PKCE)")
                    await run(env, *credd, "login", "demo")

                    say("Point SDKs at credd: credd env dev")
                    await run(env, *credd, "env", "dev")

                    say("A real SDK call: boto3 sts get-caller-identity, credentials from credd")
                    await run(env, *credd, "exec", "dev", "--", sys.executable, "-c", WHOAMI)

                    say("Role chaining: profile admin assumes a role from dev's credentials")
                    await run(env, *credd, "exec", "admin", "--", sys.executable, "-c", WHOAMI)

                    say("Every account and role of the session as a profile: credd populate demo")
                    await run(env, *credd, "populate", "demo")
                    say("A new profile, served at once: Data-Analytics-EU.DataScientist")
                    await run(
                        env,
                        *credd,
                        "exec",
                        "Data-Analytics-EU.DataScientist",
                        "--",
                        sys.executable,
                        "-c",
                        WHOAMI,
                    )

                    say("The AWS console, signed in with dev's credentials: credd console dev")
                    print("    (--print: the URL only; it signs anyone in for 15 minutes)")
                    await run(env, *credd, "console", "dev", "--print")

                    say("What credd holds now")
                    await run(env, *credd, "status")
                    calls = ", ".join(f"{op} {n}" for op, n in sorted(emu.calls.items()))
                    say(f"Upstream calls the emulator saw: {calls}")
                finally:
                    daemon.terminate()
                    await daemon.wait()
        say("Done: daemon, login and a real SDK call, with no AWS account.")


def entry() -> None:
    anyio.run(main)


if __name__ == "__main__":
    entry()
