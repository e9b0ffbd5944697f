"""The login's loopback listener and the Sign-In ``sub``: what another local process can send.

Real ``credd login`` processes against the emulator (issue 11, item 5). Any
local process can reach the listener, so a "browser" here first sends the
redirects a hostile process would (a wrong ``state``, none, a refusal that is
not this login's), then does what the user's browser does; the login must
ignore the first and finish with the second, and only the real one may say
"Signed in". A Sign-In endpoint that answers a ``sub`` built to inject a line
into ``~/.aws/config`` gets one clear error, and nothing is written.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from credd.config.writer import write_login_session
from credd.errors import LoginError, UpstreamError
from credd.sessions.signin_login import id_token_subject
from tests.support.configs import SIGNIN_CONFIG, USER_ARN
from tests.support.process import credd, login
from tests.support.world import World

#: a ``sub`` that would add a profile of the endpoint's choosing to the AWS config
HOSTILE_SUB = f"{USER_ARN}\n[profile evil]\ncredential_process = /bin/sh -c 'touch pwned'"

#: what a hostile local process sends to the listener before the browser comes back
STRAYS = (
    "?code=stolen&state=wrong",
    "?code=stolen",
    "?error=access_denied&state=wrong",
    "?code=stolen&state=",
)


def stray_browser(path: Path, record: Path) -> Path:
    """A ``$BROWSER`` that plays the stray requests, then the user's browser, and writes down
    every status and page it got."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, urllib.error, urllib.parse, urllib.request\n"
        "url = sys.argv[1]\n"
        "callback = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)['redirect_uri'][0]\n"
        "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        "def get(target):\n"
        "    try:\n"
        "        with opener.open(target, timeout=20) as answer:\n"
        "            return [answer.status, answer.read().decode()]\n"
        "    except urllib.error.HTTPError as refused:\n"
        "        return [refused.code, refused.read().decode()]\n"
        f"strays = [get(callback + query) for query in {list(STRAYS)!r}]\n"
        "final = get(url)  # the user approves: redirects are followed to the listener\n"
        f"with open({str(record)!r}, 'w') as out:\n"
        "    json.dump({'strays': strays, 'final': final}, out)\n"
    )
    path.chmod(0o700)
    return path


def pages(record: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.read_text())
    return data


def assert_strays_ignored_and_signed_in_last(record: Path) -> None:
    seen = pages(record)
    assert len(seen["strays"]) == len(STRAYS)
    for status, page in seen["strays"]:
        assert status == 400
        assert "Signed in" not in page
        assert "ignored" in page
    status, page = seen["final"]
    assert status == 200
    assert "Signed in" in page


# --------------------------------------------------------------------------- the listener


async def test_identity_center_login_ignores_stray_redirects(world: World) -> None:
    record = world.home.root / "pages.json"
    world.env["BROWSER"] = str(stray_browser(world.home.root / "browser", record))
    result = await login(world.env)
    assert "Logged in to my-sso" in result.stderr
    assert result.stderr.count("Ignored a request to the sign-in listener") == 1
    assert_strays_ignored_and_signed_in_last(record)
    assert world.cache_file.exists()
    assert "stolen" not in world.cache_file.read_text()


async def test_signin_login_ignores_stray_redirects(world: World) -> None:
    world.home.write_aws_config(SIGNIN_CONFIG)
    record = world.home.root / "pages.json"
    world.env["BROWSER"] = str(stray_browser(world.home.root / "browser", record))
    result = await credd(world.env, "login", "console", "--signin")
    assert result.returncode == 0, str(result)
    assert f"as {USER_ARN}" in result.stderr
    assert_strays_ignored_and_signed_in_last(record)
    assert f"login_session = {USER_ARN}\n" in world.home.aws_config.read_text()
    assert world.emu.calls["CreateOAuth2Token"] == 1


# --------------------------------------------------------------------------- the sub


def unsigned_jwt(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def test_a_hostile_signin_sub_is_refused_and_nothing_is_written(world: World) -> None:
    world.home.write_aws_config(SIGNIN_CONFIG)
    before = world.home.aws_config.read_bytes()
    answer = {
        "accessToken": {
            "accessKeyId": "ASIAHOSTILEHOSTILE01",
            "secretAccessKey": "hostile-secret",
            "sessionToken": "hostile-session",
        },
        "tokenType": "aws_sigv4",
        "expiresIn": 900,
        "refreshToken": "hostile-refresh-token",
        "idToken": unsigned_jwt({"sub": HOSTILE_SUB, "aud": "x", "exp": 2_000_000_000}),
    }
    world.emu.faults.add("CreateOAuth2Token", body=json.dumps(answer).encode(), status=200)
    result = await credd(world.env, "login", "console", "--signin")
    assert result.returncode == 1, str(result)
    last = result.stderr.splitlines()[-1]
    assert last.startswith("credd: Sign-In returned an idToken whose subject is not an IAM")
    assert "[profile evil]" not in result.stderr.splitlines()  # escaped, never a line of its own
    assert world.home.aws_config.read_bytes() == before
    assert not world.cache_dir.exists() or not any(world.cache_dir.iterdir())


@pytest.mark.parametrize(
    "sub",
    [
        USER_ARN,
        "arn:aws:sts::222222222222:assumed-role/Admin/alice@example.com",
        "arn:aws-cn:iam::111111111111:user/path/to/bob",
        "arn:aws-us-gov:sts::111111111111:assumed-role/R/s-1",
    ],
)
def test_arns_are_login_sessions(sub: str) -> None:
    assert id_token_subject(unsigned_jwt({"sub": sub})) == sub


@pytest.mark.parametrize(
    "sub",
    [
        HOSTILE_SUB,
        USER_ARN + "\n",
        USER_ARN + "\r",
        " " + USER_ARN,
        USER_ARN + " = x",
        USER_ARN.replace("iam", "s3"),
        "arn:aws:iam::11111111111:user/alice",
        "arn:aws:iam::" + "\u0661" * 12 + ":user/alice",  # ARABIC-INDIC DIGIT ONE
        "arn:aws:iam::111111111111:",
        "alice",
        "arn:aws:iam::111111111111:user/alice\u2028[profile evil]",
    ],
)
def test_anything_else_is_refused_in_one_line(sub: str) -> None:
    with pytest.raises(UpstreamError) as refused:
        id_token_subject(unsigned_jwt({"sub": sub}))
    assert "\n" not in str(refused.value)
    assert "\r" not in str(refused.value)
    assert not refused.value.transient


@pytest.mark.parametrize("value", [HOSTILE_SUB, "", " x", "a\rb", "a\x00b"])
def test_the_config_writer_writes_one_line_or_nothing(tmp_path: Path, value: str) -> None:
    config = tmp_path / "config"
    config.write_text("[profile console]\noutput = json\n")
    with pytest.raises(LoginError) as refused:
        write_login_session(config, "console", value, None)
    assert "\n" not in str(refused.value)
    assert config.read_text() == "[profile console]\noutput = json\n"
    with pytest.raises(LoginError):
        write_login_session(config, "console", USER_ARN, "eu-west-1\n[profile evil]")
    assert config.read_text() == "[profile console]\noutput = json\n"
