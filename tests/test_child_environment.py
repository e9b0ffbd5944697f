"""What credd's children inherit: no token, no static keys, no systemd channel, no argv secret.

``child_environment`` on its own, then the real ``credd serve``, started with
every variable it must not pass on, running a ``credential_process`` source
and an ``assertion_command`` that write down the environment and command
lines they see (issue 11, item 3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from credd.platform.process import SCRUBBED, child_environment
from credd.testing.emulator.oauth import JWT_BEARER_GRANT
from tests.support.configs import AWS_CONFIG, static_keys_profile
from tests.support.process import command_line, issued_secrets
from tests.support.waiting import eventually
from tests.support.world import World

#: what the daemon is started with and no child may see
PLANTED = {
    "AWS_CONTAINER_AUTHORIZATION_TOKEN": "planted-container-token-value",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/nonexistent/credd/token",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/v1/credentials/dev",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/planted",
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDPLANTED01",
    "AWS_SECRET_ACCESS_KEY": "planted-secret-access-key",
    "AWS_SESSION_TOKEN": "planted-session-token",
    "AWS_SECURITY_TOKEN": "planted-security-token",
    "NOTIFY_SOCKET": "/nonexistent/notify",
    "WATCHDOG_USEC": "0",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "0",
    "LISTEN_PID": "1",
    "CREDENTIALS_DIRECTORY": "/nonexistent/credentials",
    "CREDD_EVENT_LOOP": "asyncio",
}
#: what a helper legitimately needs, passed on as it is
KEPT = {
    "LANG": "C.UTF-8",
    "AWS_REGION": "eu-west-1",
    "AWS_STS_REGIONAL_ENDPOINTS": "regional",
    "VAULT_ADDR": "https://vault.example.com",
}


def test_child_environment_drops_tokens_keys_and_systemd_keeps_the_rest() -> None:
    env = {
        **PLANTED,
        **KEPT,
        "CREDD_CONFIG": "/home/u/.config/credd/config.toml",
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/u",
        "USER": "u",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "XDG_CONFIG_HOME": "/home/u/.config",
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
        "AWS_PROFILE": "dev",
        "AWS_CONFIG_FILE": "/home/u/.aws/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/u/.aws/credentials",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/token",
        "HTTPS_PROXY": "http://proxy:3128",
    }
    child = child_environment(env)
    assert not set(child) & set(PLANTED)
    assert "CREDD_CONFIG" not in child
    assert child == {k: v for k, v in env.items() if k not in PLANTED and k != "CREDD_CONFIG"}
    assert set(PLANTED) - {"CREDD_EVENT_LOOP"} <= SCRUBBED


def helper(path: Path, record: Path, answer: str) -> Path:
    """An executable that writes down what it sees (environment, its argv, its parent's argv)
    to ``record`` and prints ``answer``."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "def argv(pid):\n"
        "    with open(f'/proc/{pid}/cmdline', 'rb') as f:\n"
        "        return f.read().decode('utf-8', 'replace')\n"
        "seen = {'env': dict(os.environ), 'argv': argv('self'), 'parent': argv(os.getppid())}\n"
        f"with open({str(record)!r}, 'w') as f:\n"
        "    json.dump(seen, f)\n"
        f"sys.stdout.write({answer})\n"
    )
    path.chmod(0o700)
    return path


def seen(record: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.read_text())
    return data


async def test_credential_process_and_assertion_command_inherit_no_secret(world: World) -> None:
    keys = world.keys
    process_record = world.home.root / "process.json"
    process = helper(
        world.home.root / "get-creds",
        process_record,
        repr(
            json.dumps(
                {
                    "Version": 1,
                    "AccessKeyId": keys.access_key_id,
                    "SecretAccessKey": keys.secret_access_key.reveal(),
                }
            )
        ),
    )
    world.write_assertion(lifetime=3600)
    assertion_record = world.home.root / "assertion.json"
    idp = helper(
        world.home.root / "idp-cli",
        assertion_record,
        f"open({str(world.assertion_file)!r}).read()",
    )
    world.configure(JWT_BEARER_GRANT, assertion_command=json.dumps([str(idp), "token"]))
    world.home.write_aws_config(
        AWS_CONFIG
        + static_keys_profile(keys)
        + f"\n[profile proc]\ncredential_process = {process} --profile proc\n"
        + "\n[profile on-proc]\nrole_arn = arn:aws:iam::111111111111:role/Deploy\n"
        + "source_profile = proc\n"
    )
    world.env.update(PLANTED)
    world.env.update(KEPT)
    world.env["CREDD_CONFIG"] = str(world.home.credd_config)

    async with world.serving() as daemon:
        answer = await daemon.get("/v1/credentials/on-proc")
        assert answer.status == 200, answer.text
        answer = await daemon.get("/v1/tokens/analyst")
        assert answer.status == 200, answer.text
        await eventually(lambda: process_record.exists() and assertion_record.exists())
        daemon_argv = command_line(daemon.pid)
        secrets = [
            daemon.token,
            keys.secret_access_key.reveal(),
            *(s for kind in issued_secrets(world.emu).values() for s in kind),
        ]

    assert b"serve" in daemon_argv
    for record in (process_record, assertion_record):
        child = seen(record)
        env = child["env"]
        for name in PLANTED:
            assert name not in env, f"{name} reached {record.stem}"
        assert not [name for name in env if name.startswith("CREDD_")]
        for name, value in KEPT.items():
            assert env.get(name) == value, name
        for name in ("PATH", "HOME", "XDG_RUNTIME_DIR", "AWS_ENDPOINT_URL"):
            assert env.get(name) == world.env[name], name
        # the parent is the daemon itself: its command line and the child's hold no secret
        assert child["parent"] == daemon_argv.decode()
        for secret in secrets:
            assert secret not in child["argv"]
            assert secret not in child["parent"]
            assert secret.encode() not in daemon_argv
    assert seen(process_record)["argv"].split("\0")[2:4] == ["--profile", "proc"]
    assert seen(assertion_record)["argv"].split("\0")[2:3] == ["token"]
