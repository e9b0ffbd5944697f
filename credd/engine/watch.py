"""One watcher of every cache directory credd reads, shared by all sessions.

Other programs write the caches credd reads: ``aws sso login`` (botocore: a
temporary file renamed over the cache), ``aws sso logout`` (deletes it), the JS
SDK (rewrites it in place), a user restoring a torn file with ``touch -d`` to
its old mtime. Until issue 10 each session polled its cache file's mtime every
two seconds; with twenty sessions that kept an idle daemon waking about 35
times a minute. Issue 10 sets the goal at one wake-up a minute.

This module owns the replacement: a single inotify(7) instance, through the
``asyncinotify`` library, with one watch per *directory* (a cache file is
replaced by rename, so a watch on the file would follow the old inode), fanned
out to every subscriber of that directory. While nothing happens the watching
task waits on the inotify descriptor and never wakes. A directory that does not
exist yet (``~/.aws/sso/cache`` before the first login) is waited for through
its nearest existing ancestor; a watched directory that is removed or moved
away is waited for again the same way.

Where inotify cannot be had (not Linux, no inotify instance or watch left:
EMFILE, ENFILE, ENOSPC), every subscriber is told "anything may have changed"
every ``fallback_seconds`` instead, and :attr:`CacheWatcher.mode` says so.

Renaming a directory above a watched one (``mv ~/.aws ~/aws.old``) sends no
event to the watched directory's own watch, which follows the inode; so every
directory above is watched for its own removal or rename only, which costs no
wake-up for what happens inside it. Known limit: a symlink on the path pointed
elsewhere (``ln -sfn``) is not noticed until the watched directory itself changes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import structlog
from asyncinotify import Event, Inotify, Mask, Watch

from credd.errors import InternalFailure
from credd.files.store import TEMPORARY_SUFFIX

log = structlog.get_logger(__name__)

OnChange = Callable[[str | None], None]

#: what other programs do to a cache file, seen on its directory: close after a write
#: (botocore), a write in place (the JS SDK; MODIFY may come without a close for a
#: while), a rename in or out, a creation, a deletion (``aws sso logout``) and a
#: metadata change (``touch -d`` restoring an old mtime over a repaired file)
_ENTRY_EVENTS = (
    Mask.CLOSE_WRITE
    | Mask.MODIFY
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.CREATE
    | Mask.DELETE
    | Mask.ATTRIB
)
#: the watched directory itself went away (IGNORED and UNMOUNT come unasked); all that
#: a directory above a watched one is watched for
_SELF_EVENTS = Mask.DELETE_SELF | Mask.MOVE_SELF
_GONE_EVENTS = _SELF_EVENTS | Mask.IGNORED | Mask.UNMOUNT
#: a missing path component appeared in an ancestor (mkdir, or a directory renamed in)
_APPEAR_EVENTS = Mask.CREATE | Mask.MOVED_TO
_DIRECTORY_MASK = _ENTRY_EVENTS | _SELF_EVENTS
#: an ancestor only needs to say when a component appears or it goes itself, so that a
#: wait in a busy ``$HOME`` is not woken by every file written there
_ANCESTOR_MASK = _APPEAR_EVENTS | _SELF_EVENTS
#: ONLYDIR: a path that is a file now fails instead of watching the file;
#: EXCL_UNLINK: no events for a temporary file still written after its unlink
_WATCH_FLAGS = Mask.ONLYDIR | Mask.EXCL_UNLINK
#: the most events read together before the rest of credd gets a turn
_BATCH = 1000
#: add_watch on an absent path: wait for it, not an inotify failure
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class _Subscription:
    __slots__ = ("active", "on_change")

    def __init__(self, on_change: OnChange) -> None:
        self.on_change = on_change
        self.active = True


class _Target:
    """A directory someone subscribed to, and where it is watched from now."""

    __slots__ = ("placed", "subscriptions", "watched")

    def __init__(self) -> None:
        self.subscriptions: list[_Subscription] = []
        #: the watch on the directory itself; None while waiting through an ancestor
        self.watched: _Watched | None = None
        #: placed once: only later changes of ``watched`` are news to subscribers
        self.placed = False


class _Watched:
    """One kernel watch (one inode), and what credd wants of it."""

    __slots__ = ("awaited", "mask", "paths", "targets", "watch")

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.mask = Mask.ZERO
        #: the paths this inode was added under (two targets may share a directory)
        self.paths: set[Path] = set()
        #: targets that are this directory
        self.targets: set[Path] = set()
        #: names of missing path components that targets beneath are waiting for
        self.awaited: set[str] = set()


#: target -> names that may have changed, in order; None means "anything"
_Notes = dict[Path, dict[str | None, None]]


class CacheWatcher:
    """One inotify instance for every cache directory credd reads.

    Subscribe with :meth:`watch` before the first read of a directory, then run
    :meth:`run` in the daemon's task group. Callbacks are plain functions run on
    the event loop thread, in the watcher's task, after the events read together
    have been coalesced (one call per changed name, or one ``None`` per
    directory); they should only note the change and wake whoever re-reads. An
    exception in one is logged and does not stop the others. Each subscriber also
    hears ``None`` once when :meth:`run` starts watching (changes made between
    subscribing and that moment were not watched) and once when the watcher
    falls back to polling. ``watch`` and an unsubscribe function may themselves
    call other subscribers when they notice, while re-placing watches, that a
    directory appeared or went.
    """

    def __init__(
        self, *, fallback_seconds: float = 60.0, _inotify_available: bool | None = None
    ) -> None:
        """``_inotify_available=False`` is for tests: poll as a system without inotify would."""
        self._fallback_seconds = fallback_seconds
        if _inotify_available is None:
            _inotify_available = sys.platform.startswith("linux")
        self._mode = "inotify" if _inotify_available else "poll"
        self._targets: dict[Path, _Target] = {}
        self._inotify: Inotify | None = None
        self._by_wd: dict[int, _Watched] = {}
        self._at: dict[Path, _Watched] = {}
        self._scope: anyio.CancelScope | None = None
        self._running = False
        #: an event changed which directories exist: re-place the watches after this batch
        self._stale = False
        self._logged_fallback = False

    @property
    def mode(self) -> str:
        """``"inotify"`` or ``"poll"`` (the fallback), as ``credd status`` shows it."""
        return self._mode

    def watch(self, directory: Path, on_change: OnChange) -> Callable[[], None]:
        """Call ``on_change(name)`` when the entry ``name`` of ``directory`` may have changed.

        ``on_change(None)`` means anything in it may have (it appeared, went, or
        events were lost). Returns the function that unsubscribes; calling it
        again does nothing. Call from the event loop thread, before or while
        :meth:`run` runs.
        """
        path = Path(os.path.abspath(directory))
        subscription = _Subscription(on_change)
        target = self._targets.get(path)
        if target is None:
            target = self._targets[path] = _Target()
        target.subscriptions.append(subscription)
        if self._inotify is not None and target.subscriptions == [subscription]:
            self._place_watches()

        def unsubscribe() -> None:
            if not subscription.active:
                return
            subscription.active = False
            target.subscriptions.remove(subscription)
            if not target.subscriptions and self._targets.get(path) is target:
                del self._targets[path]
                if self._inotify is not None:
                    self._place_watches()

        return unsubscribe

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Watch until cancelled.

        ``task_status.started()`` once watching, or once it fell back to polling.
        """
        if self._running:
            raise RuntimeError("CacheWatcher.run() is already running")
        self._running = True
        try:
            if self._mode == "inotify" and await self._run_inotify(task_status):
                task_status = anyio.TASK_STATUS_IGNORED  # started already, fell back later
            elif self._mode == "poll" and not self._logged_fallback:
                self._log_fallback(reason="inotify(7) exists on Linux only")
            await self._run_poll(task_status)
        finally:
            self._running = False

    # -- inotify ------------------------------------------------------------------

    async def _run_inotify(self, task_status: anyio.abc.TaskStatus[None]) -> bool:
        """Watch until cancelled, or until inotify fails; then say whether it had started."""
        try:
            # sync_timeout=0: sync_get() selects before it reads, so draining a burst never
            # blocks the loop (asyncinotify 4.4 opens the descriptor blocking: its
            # InitFlags.NONBLOCK is O_CLOEXEC)
            inotify = Inotify(sync_timeout=0)
        except OSError as exc:  # EMFILE: the per-user instance limit, or out of files
            self._fall_back(exc)
            return False
        started = False
        # the context closes the descriptor however this ends, cancellation included
        with inotify, anyio.CancelScope() as self._scope:
            self._inotify = inotify
            try:
                notes: _Notes = {}
                self._place_watches(notes)
                if self._mode == "poll":
                    return False
                self._announce(self._targets)
                task_status.started()
                started = True
                while True:
                    # the only await: the task sleeps until the kernel has an event
                    self._read(await inotify.get(), notes)
                    # then whatever else is queued, read together so that a burst (a
                    # write in place is a dozen MODIFYs) reaches subscribers once
                    for _ in range(_BATCH):
                        if (event := inotify.sync_get()) is None:
                            break
                        self._read(event, notes)
                    else:
                        # a writer that never stops must not starve the event loop
                        await anyio.lowlevel.checkpoint()
                    if self._stale:
                        self._place_watches(notes)
                    self._deliver(notes)
                    notes = {}
            finally:
                self._inotify = None
                self._scope = None
                self._by_wd.clear()
                self._at.clear()
                for target in self._targets.values():
                    target.watched = None
                    target.placed = False
        return started

    def _read(self, event: Event, notes: _Notes) -> None:
        """Note what ``event`` means for the targets; structure changes wait for a re-placing."""
        if Mask.Q_OVERFLOW in event.mask:  # events were dropped: anything may have changed
            for path in self._targets:
                notes[path] = {None: None}
            self._stale = True
            return
        watch = event.watch
        watched = self._by_wd.get(watch.wd) if watch is not None else None
        if watched is None:  # a watch credd has removed, whose last events are still queued
            return
        if event.mask & _GONE_EVENTS:
            self._let_go(watched)
            self._stale = True
            return
        if event.name is None:
            # the directory's own metadata (chmod, touch): no entry of it changed
            return
        name = str(event.name)
        if event.mask & _APPEAR_EVENTS and name in watched.awaited:
            self._stale = True
        if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
            return  # credd's own temporary file; its rename to the real name is reported
        for path in watched.targets:
            notes.setdefault(path, {})[name] = None

    def _place_watches(self, notes: _Notes | None = None) -> None:
        """Put every target's watch where it belongs now, and note who must re-read.

        Called at the start, after events that changed the structure, and when a
        directory gets its first or loses its last subscriber. Outside the run
        loop the notes are delivered at once.
        """
        deliver = notes is None
        notes = {} if notes is None else notes
        if self._inotify is None or self._mode == "poll":  # poll: run() is leaving inotify
            return
        self._stale = False
        try:
            self._place_targets(notes)
        except OSError as exc:
            self._fall_back(exc)
        if deliver:
            self._deliver(notes)

    def _place_targets(self, notes: _Notes) -> None:
        wanted: dict[Path, Mask] = {}
        awaited: dict[Path, set[str]] = {}
        for path in self._targets:
            self._place(path, wanted, awaited)
        for watched in list(self._by_wd.values()):
            watched.targets.clear()
            watched.awaited.clear()
            for path in list(watched.paths):
                if path not in wanted:
                    watched.paths.discard(path)
                    if self._at.get(path) is watched:
                        del self._at[path]
            if not watched.paths:
                self._forget(watched)
                continue
            for path in watched.paths:
                watched.awaited |= awaited.get(path, set())
                if path in self._targets:
                    watched.targets.add(path)
            self._narrow(watched, wanted)
        for path, target in self._targets.items():
            now = self._at.get(path)
            if now is not target.watched and target.placed:
                notes[path] = {None: None}  # it appeared, went, or is another directory now
            target.watched = now
            target.placed = True

    def _place(self, target: Path, wanted: dict[Path, Mask], awaited: dict[Path, set[str]]) -> None:
        """Watch ``target``, or its nearest existing ancestor until the next component appears."""
        path = _nearest_directory(target)
        while True:
            mask = _DIRECTORY_MASK if path == target else _ANCESTOR_MASK
            if not self._add(path, mask):  # gone since the stat: look further up
                path = _nearest_directory(path.parent)
                continue
            if path == target:
                break
            child = path / target.relative_to(path).parts[0]
            # the watch on ``path`` is in place, so a component made from now on is
            # an event; one made before it is caught here
            if _is_directory(child):
                path = child
                continue
            awaited.setdefault(path, set()).add(child.name)
            break
        wanted[path] = wanted.get(path, Mask.ZERO) | mask
        # Renaming a directory above (mv ~/.aws ~/aws.old) carries the watched one away
        # with no event on its own watch; a watch for only that on each directory above
        # says so, and costs no wake-up for what happens inside them. Best effort: one
        # that cannot be had (an unreadable /home) leaves that rename unheard.
        for ancestor in path.parents:
            with contextlib.suppress(OSError):
                if self._add(ancestor, _SELF_EVENTS):
                    wanted[ancestor] = wanted.get(ancestor, Mask.ZERO) | _SELF_EVENTS

    def _add(self, path: Path, mask: Mask) -> bool:
        """Make sure ``path``'s watch reports at least ``mask``; False if it is not there."""
        assert self._inotify is not None
        watched = self._at.get(path)
        if watched is not None and mask in watched.mask:
            return True
        try:
            # MASK_ADD: another path may already watch this inode for more
            watch = self._inotify.add_watch(path, mask | _WATCH_FLAGS | Mask.MASK_ADD)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return False
            raise
        if watched is not None and watched.watch.wd != watch.wd:
            # the directory at ``path`` was replaced before its old watch's events were read
            watched.paths.discard(path)
            if not watched.paths:
                self._forget(watched)
        current = self._by_wd.get(watch.wd)
        if current is None:
            current = self._by_wd[watch.wd] = _Watched(watch)
        current.mask |= mask
        current.paths.add(path)
        self._at[path] = current
        return True

    def _narrow(self, watched: _Watched, wanted: dict[Path, Mask]) -> None:
        """Drop event kinds no path needs any more (a directory left as a mere ancestor)."""
        assert self._inotify is not None
        mask = Mask.ZERO
        for path in watched.paths:
            mask |= wanted[path]
        if mask == watched.mask:
            return
        path = next(iter(watched.paths))
        try:
            watch = self._inotify.add_watch(path, mask | _WATCH_FLAGS)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return  # it is going; its DELETE_SELF or MOVE_SELF is on the way
            raise
        if watch.wd == watched.watch.wd:
            watched.mask = mask
        elif (other := self._by_wd.get(watch.wd)) is not None:
            # the path is now a directory watched under another path: give back its mask
            self._inotify.add_watch(path, other.mask | _WATCH_FLAGS)
        else:  # another directory took the path meanwhile; its CREATE is on the way
            self._remove(watch)

    def _let_go(self, watched: _Watched) -> None:
        """Forget a directory that went, and every watch beneath it.

        A moved directory keeps its watch, and so do those beneath it: they follow
        the inodes to the new place, so they are removed. Beneath a deleted one they
        are gone already (rmdir needs an empty directory).
        """
        gone = list(watched.paths)
        self._forget(watched)
        for other in list(self._by_wd.values()):
            if any(path.is_relative_to(top) for path in other.paths for top in gone):
                self._forget(other)

    def _forget(self, watched: _Watched) -> None:
        self._by_wd.pop(watched.watch.wd, None)
        for path in watched.paths:
            if self._at.get(path) is watched:
                del self._at[path]
        watched.paths.clear()
        self._remove(watched.watch)

    def _remove(self, watch: Watch) -> None:
        if self._inotify is None:
            return
        # EINVAL: the kernel removed it already (the directory was deleted)
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(watch)

    # -- polling ------------------------------------------------------------------

    def _fall_back(self, error: OSError) -> None:
        """Give up on inotify for good: log once, and let run() poll instead."""
        if self._mode == "poll":
            return
        self._mode = "poll"
        self._log_fallback(
            reason="inotify failed",
            error=errno.errorcode.get(error.errno or 0, str(error.errno)),
            path=None if error.filename is None else os.fsdecode(error.filename),
        )
        if self._scope is not None:
            self._scope.cancel()

    def _log_fallback(self, *, reason: str, **details: object) -> None:
        self._logged_fallback = True
        log.warning(
            "cache_watch_polling",
            reason=reason,
            every_seconds=self._fallback_seconds,
            **{key: value for key, value in details.items() if value is not None},
        )

    async def _run_poll(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        # watches were lost, or never made: whatever was read may be stale already
        self._announce(self._targets)
        task_status.started()
        while True:
            await anyio.sleep(self._fallback_seconds)
            self._announce(self._targets)

    # -- delivery -----------------------------------------------------------------

    def _announce(self, paths: Iterable[Path]) -> None:
        self._deliver({path: {None: None} for path in paths})

    def _deliver(self, notes: _Notes) -> None:
        for path, names in notes.items():
            target = self._targets.get(path)
            if target is None:
                continue
            changed: Iterable[str | None] = [None] if None in names else names
            for subscription in list(target.subscriptions):
                for name in changed:
                    if not subscription.active:  # unsubscribed by an earlier callback
                        break
                    try:
                        subscription.on_change(name)
                    except Exception as exc:  # one subscriber's bug must not blind the others
                        # by type and place only: a message may quote what it read
                        log.error(  # noqa: TRY400
                            "cache_watch_callback_failed",
                            directory=str(path),
                            error=InternalFailure(exc).message,
                        )


def _is_directory(path: Path) -> bool:
    """Is ``path`` a directory (following symlinks)? Raises what is not mere absence."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return False
        raise


def _nearest_directory(path: Path) -> Path:
    while not _is_directory(path) and path != path.parent:
        path = path.parent
    return path
