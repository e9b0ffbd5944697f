"""credd.engine.watch: what other programs do to the cache directories reaches subscribers.

Real files in ``tmp_path`` and the real kernel: each test makes a change the
way botocore, the JS SDK, ``aws sso logout`` or a user would, then waits (under
a generous deadline that only a failure reaches) for the subscriber to hear it.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from credd.engine.watch import CacheWatcher

#: how long a change may take to be heard before the test fails; never reached when all is well
DEADLINE = 5.0

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify(7) exists on Linux only"
)


class Ear:
    """A subscriber that keeps what it heard, for a test to wait on."""

    def __init__(self) -> None:
        self.heard: list[str | None] = []
        self._news = anyio.Event()

    def __call__(self, name: str | None) -> None:
        self.heard.append(name)
        self._news.set()
        self._news = anyio.Event()

    async def hears(self, name: str | None, *, times: int = 1) -> None:
        """Return once ``name`` has been heard ``times`` times; fail after DEADLINE."""
        with anyio.fail_after(DEADLINE):
            while self.heard.count(name) < times:
                await self._news.wait()


@asynccontextmanager
async def running(watcher: CacheWatcher) -> AsyncIterator[CacheWatcher]:
    """The watcher running in a task group of the test's own, cancelled on the way out."""
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.run)
        yield watcher
        tg.cancel_scope.cancel()


def inotify_descriptors() -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:inotify":
                found.append(fd.name)
        except OSError:  # the descriptor iterdir itself used, closed since
            pass
    return found


#: from inotify(7): a file written in the directory, a file created in it
IN_MODIFY = 0x2
IN_CREATE = 0x100


def kernel_watches() -> list[int]:
    """The event masks of this process's inotify watches, as the kernel lists them (proc(5))."""
    masks = []
    for fd in inotify_descriptors():
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(field.split(":", 1) for field in line.split()[1:])
                masks.append(int(fields["mask"], 16))
    return masks


def watching_for(event: int) -> int:
    """How many watches report ``event``."""
    return sum(bool(mask & event) for mask in kernel_watches())


def write_in_place(path: Path, text: str) -> None:
    """As the JS SDK writes: the same inode, truncated and rewritten."""
    with path.open("r+") as file:
        file.truncate(0)
        file.write(text)


def replace_by_rename(path: Path, text: str) -> None:
    """As botocore writes: a temporary file renamed over the cache file."""
    temporary = path.parent / "tmpab12cd.tmp"
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    directory = tmp_path / "sso" / "cache"
    directory.mkdir(parents=True)
    return directory


@linux_only
async def test_a_new_file_is_heard_by_name(cache: Path) -> None:
    ear = Ear()
    watcher = CacheWatcher()
    watcher.watch(cache, ear)
    async with running(watcher):
        assert watcher.mode == "inotify"
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")


@linux_only
async def test_a_subscription_made_while_running_hears_too(cache: Path) -> None:
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")


@linux_only
async def test_subscribers_made_before_run_hear_none_once_it_watches(cache: Path) -> None:
    # what changed between subscribing and watching was not watched: re-read everything
    ear = Ear()
    watcher = CacheWatcher()
    watcher.watch(cache, ear)
    async with running(watcher):
        assert ear.heard == [None]


@linux_only
async def test_a_write_in_place_is_heard(cache: Path) -> None:
    token = cache / "token.json"
    token.write_text('{"accessToken": "old"}')
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        write_in_place(token, '{"accessToken": "new"}')
        await ear.hears("token.json")


@linux_only
async def test_a_rename_over_the_cache_file_is_heard(cache: Path) -> None:
    token = cache / "token.json"
    token.write_text("{}")
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        replace_by_rename(token, '{"accessToken": "new"}')
        await ear.hears("token.json")


@linux_only
async def test_a_file_moved_out_is_heard(cache: Path, tmp_path: Path) -> None:
    token = cache / "token.json"
    token.write_text("{}")
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        os.rename(token, tmp_path / "elsewhere.json")
        await ear.hears("token.json")


@linux_only
async def test_a_delete_is_heard(cache: Path) -> None:
    token = cache / "token.json"
    token.write_text("{}")
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        token.unlink()  # aws sso logout
        await ear.hears("token.json")


@linux_only
async def test_an_old_mtime_restored_is_heard(cache: Path) -> None:
    # a torn file repaired, then `touch -d` back to the mtime it had: only ATTRIB says so
    token = cache / "token.json"
    token.write_text("{}")
    old = token.stat()
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        os.utime(token, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))
        await ear.hears("token.json")


@linux_only
async def test_a_burst_reaches_subscribers_coalesced(cache: Path) -> None:
    # queued while the test holds the event loop: three events a file, read in batches
    ear = Ear()
    files = 1500
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        for number in range(files):
            (cache / f"{number}.json").write_text("{}")
        await ear.hears(f"{files - 1}.json")
    assert set(ear.heard) == {f"{number}.json" for number in range(files)}
    # once a file, but for a file whose events a batch boundary split
    assert len(ear.heard) < files + 10


@linux_only
async def test_credds_own_temporary_files_are_not_reported(cache: Path) -> None:
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        (cache / ".token.json.123.abc.tmp").write_text("{}")
        os.replace(cache / ".token.json.123.abc.tmp", cache / "token.json")
        await ear.hears("token.json")
    assert ear.heard == ["token.json"]


@linux_only
async def test_a_directory_made_after_watch_is_picked_up(tmp_path: Path) -> None:
    # no login ever: ~/.aws/sso/cache does not exist until the first one, made with mkdir -p
    cache = tmp_path / ".aws" / "sso" / "cache"
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        cache.mkdir(parents=True)
        await ear.hears(None)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")


@linux_only
async def test_directories_made_one_by_one_are_followed_down(tmp_path: Path) -> None:
    cache = tmp_path / ".aws" / "sso" / "cache"
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        (tmp_path / ".aws").mkdir()
        (tmp_path / ".aws" / "sso").mkdir()
        # a bystander in an ancestor is no news for the cache directory
        (tmp_path / ".aws" / "config").write_text("")
        cache.mkdir()
        await ear.hears(None)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")
    assert ear.heard == [None, "token.json"]


@linux_only
async def test_a_directory_renamed_into_place_is_picked_up(tmp_path: Path) -> None:
    cache = tmp_path / "sso" / "cache"
    cache.parent.mkdir()
    staged = tmp_path / "staged"
    staged.mkdir()
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        os.rename(staged, cache)
        await ear.hears(None)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")


@linux_only
async def test_a_directory_removed_then_made_again_keeps_working(cache: Path) -> None:
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        shutil.rmtree(cache)
        await ear.hears(None)
        os.mkdir(cache)
        await ear.hears(None, times=2)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")


@linux_only
async def test_a_directory_moved_away_is_let_go(cache: Path, tmp_path: Path) -> None:
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        moved = tmp_path / "moved"
        os.rename(cache, moved)
        await ear.hears(None)
        # the moved directory is no longer the cache: nothing written there is news
        (moved / "stray.json").write_text("{}")
        os.mkdir(cache)
        await ear.hears(None, times=2)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")
    assert "stray.json" not in ear.heard


@linux_only
async def test_a_directory_above_moved_away_is_let_go(tmp_path: Path) -> None:
    aws = tmp_path / ".aws"
    cache = aws / "sso" / "cache"
    cache.mkdir(parents=True)
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        os.rename(aws, tmp_path / "aws.old")  # the user puts the old login aside
        await ear.hears(None)
        (tmp_path / "aws.old" / "sso" / "cache" / "stray.json").write_text("{}")
        cache.mkdir(parents=True)
        await ear.hears(None, times=2)
        (cache / "token.json").write_text("{}")
        await ear.hears("token.json")
    assert "stray.json" not in ear.heard


@linux_only
async def test_two_subscribers_of_one_directory_both_hear(cache: Path) -> None:
    first, second = Ear(), Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, first)
        watcher.watch(cache, second)
        (cache / "token.json").write_text("{}")
        await first.hears("token.json")
        await second.hears("token.json")


@linux_only
async def test_a_directory_and_one_beneath_it_are_watched_apart(tmp_path: Path) -> None:
    aws = tmp_path / ".aws"
    cache = aws / "sso" / "cache"
    aws.mkdir()
    config_ear, cache_ear = Ear(), Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(aws, config_ear)
        watcher.watch(cache, cache_ear)
        cache.mkdir(parents=True)
        await cache_ear.hears(None)
        (aws / "config").write_text("")
        (cache / "token.json").write_text("{}")
        await config_ear.hears("config")
        await cache_ear.hears("token.json")
    assert "token.json" not in config_ear.heard
    assert "config" not in cache_ear.heard


@linux_only
async def test_unsubscribe_stops_callbacks(cache: Path) -> None:
    gone, staying = Ear(), Ear()
    async with running(CacheWatcher()) as watcher:
        unsubscribe = watcher.watch(cache, gone)
        watcher.watch(cache, staying)
        unsubscribe()
        unsubscribe()  # a second call does nothing
        (cache / "token.json").write_text("{}")
        # both would hear it in the same delivery: once one has, the other would have
        await staying.hears("token.json")
    assert gone.heard == []


@linux_only
async def test_one_watch_per_directory_and_the_last_unsubscribe_removes_it(
    cache: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    async with running(CacheWatcher()) as watcher:
        first = watcher.watch(cache, Ear())
        second = watcher.watch(cache, Ear())
        assert watching_for(IN_MODIFY) == 1
        watcher.watch(other, Ear())
        assert watching_for(IN_MODIFY) == 2
        first()
        assert watching_for(IN_MODIFY) == 2
        watches = len(kernel_watches())
        second()
        assert watching_for(IN_MODIFY) == 1
        assert len(kernel_watches()) == watches - 2  # the cache directory and sso/ above it


@linux_only
async def test_a_directory_awaited_or_above_costs_no_wake_up_for_what_is_written_there(
    tmp_path: Path,
) -> None:
    # waiting for ~/.aws/sso/cache must not wake credd for every file written in $HOME
    cache = tmp_path / ".aws" / "sso" / "cache"
    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, ear)
        assert watching_for(IN_MODIFY) == 0
        assert watching_for(IN_CREATE) == 1  # tmp_path, for ".aws" to appear
        cache.mkdir(parents=True)
        await ear.hears(None)
        assert watching_for(IN_MODIFY) == 1  # the cache directory alone
        assert watching_for(IN_CREATE) == 1


@linux_only
async def test_a_failing_subscriber_neither_stops_the_others_nor_the_watcher(
    cache: Path,
) -> None:
    def broken(name: str | None) -> None:
        raise ValueError(f"cannot parse {name}: RT-SECRET")

    ear = Ear()
    async with running(CacheWatcher()) as watcher:
        watcher.watch(cache, broken)
        watcher.watch(cache, ear)
        with capture_logs() as logs:
            (cache / "one.json").write_text("{}")
            await ear.hears("one.json")
            (cache / "two.json").write_text("{}")
            await ear.hears("two.json")
    failures = [entry for entry in logs if entry["event"] == "cache_watch_callback_failed"]
    assert failures
    assert all("ValueError" in entry["error"] for entry in failures)
    assert "RT-SECRET" not in repr(logs)


@linux_only
async def test_cancellation_closes_the_inotify_descriptor(cache: Path) -> None:
    before = len(inotify_descriptors())
    watcher = CacheWatcher()
    watcher.watch(cache, Ear())
    async with running(watcher):
        assert len(inotify_descriptors()) == before + 1
    assert len(inotify_descriptors()) == before


async def test_without_inotify_every_subscriber_is_told_to_look_again(cache: Path) -> None:
    first, second = Ear(), Ear()
    watcher = CacheWatcher(fallback_seconds=0.05, _inotify_available=False)
    watcher.watch(cache, first)
    with capture_logs() as logs:
        async with running(watcher):
            assert watcher.mode == "poll"
            watcher.watch(cache / "elsewhere", second)
            await first.hears(None, times=3)
            await second.hears(None, times=2)
    assert [entry["event"] for entry in logs] == ["cache_watch_polling"]


@linux_only
async def test_no_inotify_instance_to_be_had_falls_back_to_polling(cache: Path) -> None:
    # a real EMFILE: the process may open no more descriptors while the watcher starts
    ear = Ear()
    watcher = CacheWatcher(fallback_seconds=0.05)
    watcher.watch(cache, ear)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                await tg.start(watcher.run)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert watcher.mode == "poll"
            await ear.hears(None, times=3)
            tg.cancel_scope.cancel()
    [warning] = [entry for entry in logs if entry["event"] == "cache_watch_polling"]
    assert warning["error"] == "EMFILE"
