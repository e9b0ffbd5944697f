"""The endpoint token file: only a sound file of the user's own is ever taken as the token.

``ensure_endpoint_token`` in process for each thing that can be found at the
path (issue 11, item 3), then the real ``credd serve`` with a planted symlink,
a readable file and, as root, a file of another user.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from credd.errors import CreddError
from credd.wiring import ensure_endpoint_token
from tests.support.process import credd, token_file
from tests.support.world import World

#: a token of the right shape that somebody else chose
PLANTED = "planted-token-planted-token-planted-token-planted"
NOBODY = 65534


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_fresh_token_file(path: Path, token: str) -> None:
    """A regular 0600 file of ours holding ``token`` and nothing else."""
    found = path.lstat()
    assert stat.S_ISREG(found.st_mode)
    assert mode_of(path) == 0o600
    assert found.st_uid == os.getuid()
    assert path.read_text(encoding="ascii") == token
    assert len(token) == 43
    assert token != PLANTED


# --------------------------------------------------------------------------- in process


def test_a_missing_file_is_made_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "run" / "credd" / "token"
    token = ensure_endpoint_token(path)
    assert_fresh_token_file(path, token)
    assert mode_of(path.parent) == 0o700


def test_a_sound_file_is_kept_untouched(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first = ensure_endpoint_token(path)
    inode = path.stat().st_ino
    assert ensure_endpoint_token(path) == first
    assert path.stat().st_ino == inode


def test_a_symlink_is_never_followed_and_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "planted"
    target.write_text(PLANTED)
    target.chmod(0o600)
    path = tmp_path / "token"
    path.symlink_to(target)
    token = ensure_endpoint_token(path)
    assert_fresh_token_file(path, token)
    # the file it pointed to was neither taken as the token nor written through
    assert target.read_text() == PLANTED


def test_a_dangling_symlink_is_replaced_without_creating_its_target(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.symlink_to(tmp_path / "elsewhere")
    token = ensure_endpoint_token(path)
    assert_fresh_token_file(path, token)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o400, 0o700])
def test_a_file_others_may_read_or_of_another_mode_is_replaced(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text(PLANTED)
    path.chmod(mode)
    token = ensure_endpoint_token(path)
    assert_fresh_token_file(path, token)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"too-short",
        PLANTED.encode() + b"\n",
        b" " + PLANTED.encode(),
        b"x" * 513,
        b"\xff" * 60,
        PLANTED.encode() + b"\0",
        b"two tokens " + PLANTED.encode(),
    ],
    ids=["empty", "short", "newline", "space", "huge", "binary", "nul", "words"],
)
def test_a_file_of_the_wrong_shape_is_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    token = ensure_endpoint_token(path)
    assert_fresh_token_file(path, token)


def test_a_fifo_is_replaced_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "token"
    os.mkfifo(path, 0o600)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(ensure_endpoint_token(path)))
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # blocked opening the FIFO: release it, and fail
        with open(path, "wb"):
            pass
        worker.join()
        pytest.fail("the token file's FIFO was opened and waited on")
    assert_fresh_token_file(path, result[0])


def test_a_file_of_another_user_is_refused_in_one_line(tmp_path: Path) -> None:
    """Seen as another user (``uid``): the file is not ours, so it is neither used nor replaced."""
    path = tmp_path / "token"
    path.write_text(PLANTED)
    path.chmod(0o600)
    other = os.getuid() + 1
    with pytest.raises(CreddError) as refused:
        ensure_endpoint_token(path, uid=other)
    message = str(refused.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"owned by uid {os.getuid()}" in message
    assert PLANTED not in message
    assert path.read_text() == PLANTED
    # a symlink of another user's is refused the same way
    path.unlink()
    path.symlink_to(tmp_path / "planted")
    with pytest.raises(CreddError):
        ensure_endpoint_token(path, uid=other)
    assert path.is_symlink()


def test_a_directory_at_the_path_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.mkdir()
    with pytest.raises(CreddError) as refused:
        ensure_endpoint_token(path)
    assert "\n" not in str(refused.value)
    assert path.is_dir()


# --------------------------------------------------------------------------- credd serve


async def test_credd_serve_replaces_a_planted_symlink_and_never_serves_its_token(
    world: World,
) -> None:
    path = token_file(world.env)
    path.parent.mkdir(parents=True, mode=0o700)
    planted = world.home.root / "planted"
    planted.write_text(PLANTED)
    planted.chmod(0o600)
    path.symlink_to(planted)
    async with world.serving() as daemon:
        assert_fresh_token_file(path, daemon.token)
        assert planted.read_text() == PLANTED
        assert (await daemon.get("/v1/status", token=PLANTED)).status == 401
        assert (await daemon.get("/v1/status")).status == 200


async def test_credd_serve_replaces_a_token_file_others_may_read(world: World) -> None:
    path = token_file(world.env)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(PLANTED)
    path.chmod(0o644)
    async with world.serving() as daemon:
        assert_fresh_token_file(path, daemon.token)
        assert (await daemon.get("/v1/status", token=PLANTED)).status == 401


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user takes root")
async def test_credd_serve_refuses_a_token_file_of_another_user(world: World) -> None:
    path = token_file(world.env)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(PLANTED)
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    result = await credd(world.env, "serve")
    assert result.returncode == 1, str(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, str(result)
    assert lines[0].startswith(f"credd: will not use the endpoint token file {path}: ")
    assert f"owned by uid {NOBODY}" in lines[0]
    assert path.read_text() == PLANTED
    assert path.stat().st_uid == NOBODY
