"""File reads on renewal paths run off the event loop that answers SDKs (issue 11, item 6).

An ``assertion_file`` that is a FIFO nobody writes would have stopped the
real daemon's loop for good: now it is refused, and ``/healthz`` answers
throughout. botocore's reads of the AWS config and shared credentials files
(a new session's, the default credential chain's), and the rescue copy of a
token the disk refused, are watched where they are made, and none may happen
on the event loop's thread.
"""

from __future__ import annotations

import errno
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import botocore.configloader
import pytest

from credd.aws import AwsClients
from credd.clock import ManualClock
from credd.daemon import running_daemon
from credd.files.store import CacheWriteError, JsonCacheDir, SsoCache
from credd.testing.emulator import Emulator
from credd.testing.emulator.config import EmulatorConfig
from credd.testing.emulator.oauth import JWT_BEARER_GRANT
from tests.support.configs import LISTEN_ANY_PORT
from tests.support.home import Home
from tests.support.inprocess import login
from tests.support.process import status_json
from tests.support.waiting import DEADLINE, POLL, eventually
from tests.support.world import World


async def test_a_fifo_as_assertion_file_is_refused_and_the_daemon_keeps_answering(
    world: World,
) -> None:
    world.assertion_file.parent.mkdir(parents=True)
    os.mkfifo(world.assertion_file, 0o600)
    world.configure(JWT_BEARER_GRANT, assertion_file=str(world.assertion_file))
    async with world.serving() as daemon:
        # a loop stuck opening the FIFO would answer nothing at all: bounded, not 5 minutes
        with anyio.fail_after(DEADLINE):
            answer = await daemon.get("/v1/tokens/analyst")
            assert (await daemon.get("/healthz")).status == 200
        assert answer.status == 503, answer.text
        assert "is not a regular file" in answer.json()["message"]
        status = await status_json(world.env)
        (session,) = (s for s in status["sessions"] if s["name"] == "analyst")
        assert "is not a regular file" in str(session)

        # a tool replaces the FIFO with a real assertion: served without a restart
        world.assertion_file.unlink()
        world.write_assertion()
        with anyio.fail_after(DEADLINE):
            while (await daemon.get("/v1/tokens/analyst")).status != 200:  # noqa: ASYNC110  # polling the daemon is the point
                await anyio.sleep(POLL)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every file botocore parses as INI, and the thread that parsed it."""
    seen: list[tuple[str, int]] = []
    original = botocore.configloader.raw_config_parse

    def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((str(path), threading.get_ident()))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(botocore.configloader, "raw_config_parse", watched)
    return seen


async def test_botocore_reads_the_shared_files_off_the_event_loop(
    tmp_path: Path, parses: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = tmp_path / "config"
    config.write_text("[profile dev]\nregion = eu-west-1\n\n[profile other]\noutput = json\n")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = AKIADEFAULTCHAIN0001\naws_secret_access_key = s3cret\n"
    )
    loop_thread = threading.get_ident()
    async with AwsClients(config, credentials, keep_open=True) as clients:
        keys = await clients.default_keys()
        assert keys.access_key_id == "AKIADEFAULTCHAIN0001"
        assert keys.secret_access_key.reveal() == "s3cret"
        for profile in ("dev", "other", None):
            async with clients.client("sts", region="us-east-1", profile=profile):
                pass
        # what the chain found is kept: asked again, nothing is read again
        read = len(parses)
        assert (await clients.default_keys()).access_key_id == "AKIADEFAULTCHAIN0001"
        assert len(parses) == read
    read_files = {path for path, _ in parses}
    assert {str(config), str(credentials)} <= read_files
    on_the_loop = [path for path, thread in parses if thread == loop_thread]
    assert on_the_loop == []


async def test_a_token_the_disk_refused_is_rescued_off_the_event_loop(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal's write fails (EROFS): the 0600 rescue copy is written in a worker thread."""
    clock = ManualClock(datetime.now(UTC))
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        home.write_aws_config()
        home.write_credd_config(LISTEN_ANY_PORT)
        settings = home.settings()
        await login(settings, clock)

        def refused(self: SsoCache, pending: Any, token: Any, *, expected: Any) -> Any:
            raise CacheWriteError(pending.path, OSError(errno.EROFS, "Read-only file system"))

        rescues: list[int] = []
        rescue = JsonCacheDir.rescue

        def watched(self: JsonCacheDir, name: str, data: Any) -> Path | None:
            rescues.append(threading.get_ident())
            return rescue(self, name, data)

        monkeypatch.setattr(SsoCache, "commit", refused)
        monkeypatch.setattr(JsonCacheDir, "rescue", watched)
        loop_thread = threading.get_ident()
        async with running_daemon(settings, clock=clock) as daemon:
            clock.advance(3600 + 60)  # past the access token's expiry: renewed, not written
            await eventually(lambda: bool(rescues), what="the rescue copy")
            assert daemon.broker.session("my-sso") is not None
    assert loop_thread not in rescues
    assert any(settings.paths.state_dir.joinpath("rescue", "sso").iterdir())
