"""A kept session: one sign-in's token, read from its cache file, renewed, never lost.

Every kind of sign-in (Identity Center, AWS Sign-In, trusted identity) is a
:class:`Strategy`: how to read its cache entry, how to exchange a token for a
new one upstream, and a few facts about its tokens. :class:`KeptSession` does
the rest, the same way for all of them, on one :class:`~credd.engine.record.Record`
driven by the one :class:`~credd.engine.planner.Planner`:

* **Adopt, never fight.** What another program writes into the cache (a
  login, the AWS CLI's own refresh, a logout that deletes the file) is
  noticed through the shared watcher (:mod:`credd.engine.watch`) and
  adopted. Changes are told apart by the *content* of the file (its
  fingerprint), not its mtime: a torn file restored with its old mtime is
  still a change.
* **A read that fails drops nothing.** A torn, truncated or garbage file
  leaves the held token in service; it is read again at the next change, and
  only if it is still unreadable when the held token runs out does the
  session need a login.
* **A refresh token is never lost** (design.md rule 8). The renewal runs
  under the cross-process lock, shielded from cancellation. The temporary
  file is made *before* the refresh token is spent, so a read-only or full
  disk fails first while a valid token is held. The new token is written by
  compare-and-swap: if another writer replaced the file since it was read,
  theirs is kept and adopted. If the write fails after the exchange, the new
  token is kept in memory and served, a rescue copy goes to credd's state
  directory, and the write is retried with backoff; the spent token on disk
  is never presented while a newer one is held.
* **Every fault backs off**, and a token a consumer saw refused is renewed at
  most once (:meth:`KeptSession.reject`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from credd.clock import Clock
from credd.engine.flight import SingleFlight
from credd.engine.record import Fault, Record, classify
from credd.engine.schedule import renewal_time
from credd.errors import (
    AssertionRequired,
    CreddError,
    InternalFailure,
    LoginRequired,
    UpstreamError,
)
from credd.files.store import (
    CacheChanged,
    CacheCorrupt,
    CacheWriteError,
    Fingerprint,
    PendingWrite,
    TokenCache,
)
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus

log = structlog.get_logger(__name__)

#: how long a renewal (the lock, the exchange and the write after it) may run, shielded
REFRESH_DEADLINE_SECONDS = 30.0


class HeldToken(Protocol):
    @property
    def expires_at(self) -> datetime: ...

    def to_json(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=HeldToken)


class Strategy(Protocol[T]):
    """What one kind of sign-in knows; :class:`KeptSession` does everything else."""

    #: ``identity-center``, ``signin``, ``create-token-with-iam``
    kind: str
    #: what the status says when the cache has no entry for the session
    nothing_cached: str

    @property
    def login_command(self) -> str:
        """What brings the session back once only a login can."""
        ...

    @property
    def begins_alone(self) -> bool:
        """Whether it can begin without a person (a jwt-bearer or token-exchange grant)."""
        ...

    def read(self) -> tuple[T | None, Fingerprint]:
        """The token in the cache and the file's fingerprint (blocking: run in a thread).

        Raises :class:`CacheCorrupt` (with the fingerprint of what it read) if unreadable.
        """
        ...

    def same(self, a: T, b: T) -> bool:
        """Whether ``a`` and ``b`` are the same token (a rewrite of the file need not change it)."""
        ...

    def access(self, token: T) -> Secret:
        """What a consumer presents upstream, and may see refused."""
        ...

    def renewable(self, token: T, now: datetime) -> bool:
        """Whether ``token`` has what its renewal needs."""
        ...

    def unrenewable(self, token: T) -> str:
        """Why ``token``, run out and not renewable, needs a login."""
        ...

    def margin(self, configured: float) -> float:
        """The renewal margin, from the configured one."""
        ...

    def lifetime_start(self, token: T, now: datetime, *, renewed: bool) -> datetime:
        """When ``token``'s lifetime began, as far as credd knows."""
        ...

    async def exchange(self, current: T | None, now: datetime) -> T:
        """Renew ``current`` upstream (``None``: begin anew); raises a :class:`CreddError`."""
        ...

    def input_changed(self) -> bool:
        """Whether what a refusal blamed on the outside (an IdP's assertion) has changed."""
        ...

    def describe(self, token: T | None) -> tuple[str | None, Mapping[str, object] | None]:
        """Whom the token is about, and further facts for the status (no secrets)."""
        ...


@dataclass(frozen=True)
class SessionContext:
    """What the daemon gives every session."""

    clock: Clock
    #: where renewals run, so that a caller giving up never cancels one half-way
    task_group: anyio.abc.TaskGroup
    #: renew this long before expiry (capped at half a lifetime)
    margin_seconds: float
    #: told ``(name to log in, reason)`` once a session needs a login
    on_login_required: Callable[[str, str], None] | None = None
    #: the record of another session, by name: a failure blamed on it waits for it to change
    records: Callable[[str], Record[Any] | None] = lambda _name: None
    #: a random draw in ``[0, 1)`` for jitter and backoff
    draw: Callable[[], float] = random.random


@contextlib.contextmanager
def shielded(deadline: float, what: str) -> Iterator[None]:
    """Shield the block from cancellation, under ``deadline`` seconds.

    Once an exchange has rotated a refresh token upstream, the new one must
    be kept whatever happens (design.md rule 8); a block that overruns is an
    :class:`UpstreamError` (``what`` took longer than the deadline).
    """
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(deadline):
            yield
    except TimeoutError as exc:
        raise UpstreamError(f"{what} took longer than {deadline:.0f} s") from exc


class RefreshRefused(CreddError):
    """An exchange's refusal that leaves something worth keeping: the token less what
    was refused (a refresh token never to be presented again), then ``error``."""

    def __init__(self, kept: Any, error: CreddError) -> None:
        super().__init__(error.message, hint=error.hint)
        self.kept = kept
        self.error = error


@dataclass(frozen=True)
class _Read:
    """What one read of the cache file found."""

    token: Any
    fingerprint: Fingerprint
    error: CacheCorrupt | None = None


class KeptSession(Generic[T]):
    """One session's token, kept alive: the :class:`~credd.engine.planner.Job` of a sign-in."""

    def __init__(
        self,
        spec: Any,
        strategy: Strategy[T],
        *,
        cache: TokenCache[T],
        key: str,
        context: SessionContext,
    ) -> None:
        self._spec = spec
        self.name: str = spec.name
        self.kind = strategy.kind
        self._strategy = strategy
        self._cache = cache
        self._key = key
        self._clock = context.clock
        self.margin_seconds = context.margin_seconds
        self._on_login_required = context.on_login_required
        self._records = context.records
        self.record: Record[T] = Record(self.name, context.draw)
        self._lifetime_start: datetime | None = None
        #: the file as this session last saw it (``None``: not read yet); what a
        #: compare-and-swap expects to replace
        self._disk: Fingerprint | None = None
        #: why the file cannot be read, while it cannot
        self._unreadable: CacheCorrupt | None = None
        #: the token held is newer than the file: its write failed and is retried
        self._unsaved = False
        #: the file the unsaved token replaces: seen again, it is still older than ours
        self._supersedes: Fingerprint | None = None
        #: the file changed (the watcher said so): read it at the next turn
        self._stale = True
        #: an access token a consumer saw refused: renewed even if it looks valid
        self._rejected: Secret | None = None
        #: one renewal or read at a time, in this process
        self._busy = anyio.Lock()
        self._flight: SingleFlight[T] = SingleFlight(context.task_group, self._renew_tracked)
        #: told whenever the session holds something else (a login, a logout, a renewal)
        self.on_change: Callable[[KeptSession[T]], None] = lambda _session: None
        #: the planner's hook: called when the next wake may have moved
        self.replan: Callable[[], object] = lambda: None

    @property
    def spec(self) -> Any:
        return self._spec

    @property
    def login_command(self) -> str:
        return self._strategy.login_command

    @property
    def begins_alone(self) -> bool:
        """Whether it begins again without a person when nothing is cached."""
        return self._strategy.begins_alone

    @property
    def cache_path(self) -> Path:
        return self._cache.files.path(self._cache.token_name(self._key))

    # ------------------------------------------------------------------ the request path

    def _servable(self, now: datetime) -> T | None:
        token = self.record.usable(now)
        if token is None or (
            self._rejected is not None and self._strategy.access(token) == self._rejected
        ):
            return None
        return token

    def usable(self) -> T | None:
        """The token held, if it may be served for a while yet: from memory."""
        return self._servable(self._clock.now())

    async def token(self) -> T:
        """A valid token, renewed first if none is held; raises what keeps it from being had.

        While the last renewal failed, this fails fast until its backoff is over
        (or a login, or the session its failure blamed, changed something).
        """
        # A login may have landed a moment ago, before the watcher said so: a request
        # for a logged-out session reads the file rather than fail on hearsay.
        await self.recheck()
        now = self._clock.now()
        held = self._servable(now)
        if held is not None:
            return held
        record = self.record
        if record.problem is not None and not self._retry_due(now):
            raise record.problem
        try:
            renewed = await self._flight.run()
        except CreddError:
            held = self._servable(self._clock.now())
            if held is not None:
                return held  # renewed, but its write failed: served from memory all the same
            raise
        if self._servable(self._clock.now()) is None:
            raise UpstreamError(f"the new token of {self.name} is already expiring")
        return renewed

    async def reject(self, refused: Secret) -> T:
        """A consumer saw ``refused`` refused upstream: renew it, once.

        A token refused again after it was replaced is not renewed again: the
        replacement is handed out, and the consumer's own backoff paces it.
        """
        held = self.record.value
        if held is not None and self._strategy.access(held) == refused:
            self._rejected = refused
        return await self.token()

    async def renew_now(self) -> T:
        """Renew even if what is held is not due (its holder wants a new one)."""
        record = self.record
        if record.problem is not None and not self._retry_due(self._clock.now()):
            raise record.problem
        await self._flight.run()
        token = self._servable(self._clock.now())
        if token is None:
            raise LoginRequired(self.name, "the renewed token is already expired")
        return token

    def _retry_due(self, now: datetime) -> bool:
        return self.record.retry_due(now) or self._strategy.input_changed()

    # ------------------------------------------------------------------ the cache file

    def cache_changed(self) -> None:
        """The watcher saw the file change (or may have): read it at the next turn."""
        self._stale = True
        self.replan()

    def _read(self) -> _Read:
        """The file now (blocking: run in a thread)."""
        try:
            token, fingerprint = self._strategy.read()
        except CacheCorrupt as exc:
            return _Read(None, exc.fingerprint or Fingerprint(None), exc)
        return _Read(token, fingerprint)

    async def _sync(self) -> None:
        async with self._busy:
            self._stale = False
            self._take(await anyio.to_thread.run_sync(self._read), self._clock.now())

    async def recheck(self) -> None:
        """Read the file again if only a login can help (a request's doubt)."""
        if self._stale or self.record.parked:
            await self._sync()

    def sync(self) -> None:
        """Re-read the file now (``credd login`` or ``credd logout`` in another process)."""
        self._stale = False
        self._take(self._read(), self._clock.now())
        self.replan()

    def start(self) -> None:
        """Read the file, and take back a token whose write failed before a restart."""
        read = self._read()
        self._stale = False
        self._take(read, self._clock.now())
        self._recover_rescue(read)

    def _take(self, read: _Read, now: datetime) -> None:
        """What the file holds now, as another program may have left it."""
        if read.fingerprint == self._disk and read.error is None and not self._unreadable:
            return  # nothing new: our own write, or a touch
        if read.error is not None:
            if read.fingerprint != self._disk or self._unreadable is None:
                log.warning("session_cache_unreadable", session=self.name, error=read.error.message)
            self._disk = read.fingerprint
            self._unreadable = read.error
            if self.record.usable(now) is None and not self._strategy.begins_alone:
                self._fail(
                    LoginRequired(self.name, read.error.message, action=self.login_command), now
                )
            return  # the held token stays in service; read again at the next change
        self._disk = read.fingerprint
        self._unreadable = None
        if self._unsaved and read.fingerprint == self._supersedes:
            return  # the spent token ours replaced, back again (say, a torn write undone)
        token: T | None = read.token
        held = self.record.value
        if token is None:
            self._unsaved = False
            if held is not None:
                log.info("session_logged_out", session=self.name)
            self._hold(None, now)
            if not self._strategy.begins_alone:
                self._fail(
                    LoginRequired(
                        self.name,
                        f"{self._strategy.nothing_cached} (never logged in, or logged out)",
                        action=self.login_command,
                    ),
                    now,
                    quiet=True,
                )
            return
        if held is not None and self._strategy.same(token, held):
            self._unsaved = False  # what is held is what the file holds
            return
        # Another writer's token (a login, another tool's refresh) wins over one held
        # unsaved: theirs is newer than the spent one ours replaced.
        self._unsaved = False
        self._hold(token, now)
        self.record.succeeded()
        log.info("session_token_adopted", session=self.name, expires_at=token.expires_at)

    def _recover_rescue(self, read: _Read) -> None:
        """A rescue copy whose write never landed: taken back if the file is still the one
        it was to replace, else dropped (another writer has moved on)."""
        name = self._cache.token_name(self._key)
        rescued = self._cache.files.rescued(name)
        if rescued is None:
            return
        supersedes = rescued.get("supersedes")
        digest = read.fingerprint.digest
        data = rescued.get("token")
        if isinstance(data, dict) and supersedes == (digest.hex() if digest else None):
            try:
                token = self._cache.parse(data, self._cache.files.path(name))
            except CacheCorrupt:
                token = None
            if token is not None:
                self._hold(token, self._clock.now())
                self._unsaved = True
                self._supersedes = read.fingerprint
                self.record.succeeded()
                log.warning("session_token_rescued", session=self.name)
                return
        self._cache.files.discard_rescue(name)

    def _hold(self, token: T | None, now: datetime, *, renewed: bool = False) -> None:
        self.record.hold(token, token.expires_at if token is not None else None)
        self._lifetime_start = (
            self._strategy.lifetime_start(token, now, renewed=renewed)
            if token is not None
            else None
        )
        if renewed:
            self._rejected = None
        self.on_change(self)

    # ------------------------------------------------------------------ renewal

    async def _renew_tracked(self) -> T:
        """The single-flight's work: one renewal, its outcome recorded.

        A failure's backoff counts from when the attempt began: a clock that
        jumped while the call was out (a suspend) must not push the retry later.
        """
        began = self._clock.now()
        try:
            async with self._busy:
                token = await self._renew()
        except CreddError as exc:
            self._fail(exc, began)
            raise
        except Exception as exc:
            failure = InternalFailure(exc)
            # no traceback: an exception's message may quote a token
            log.error("renewal_bug", session=self.name, error=failure.message)  # noqa: TRY400
            self._fail(failure, began)
            raise failure from exc
        if not self._unsaved:  # else its write failed: that failure stands, and is retried
            self.record.succeeded()
        return token

    async def _renew(self) -> T:
        with shielded(REFRESH_DEADLINE_SECONDS, "renewal"):
            async with self._cache.lock(self._key):
                return await self._renew_locked()

    async def _renew_locked(self) -> T:
        strategy, record = self._strategy, self.record
        now = self._clock.now()
        self._stale = False
        before = record.generation
        self._take(await anyio.to_thread.run_sync(self._read), now)
        expected = self._disk  # what the compare-and-swap expects to replace
        assert expected is not None  # just read
        held = record.value
        if record.parked:
            assert record.problem is not None
            raise record.problem
        if held is not None and record.generation != before and not self._due(held, now):
            servable = self._servable(now)
            if servable is not None:
                return servable  # another process renewed it first: adopted, not fought
        if self._unreadable is not None:
            if self._servable(now) is not None:
                # Perhaps a writer halfway through: what is held stays in service.
                raise UpstreamError(
                    f"{self._unreadable.message}; the token held is kept in the meantime",
                    hint="credd reads it again as soon as it changes",
                )
            if not strategy.begins_alone:
                raise LoginRequired(self.name, self._unreadable.message, action=self.login_command)
            held = None  # begun again; the unreadable file is kept aside when replaced
        if held is None and not strategy.begins_alone:
            raise LoginRequired(
                self.name, f"{strategy.nothing_cached} (logged out)", action=self.login_command
            )
        if held is not None and self._unsaved:
            try:
                expected = await self._write(held, expected, None)
            except CacheWriteError:
                if not self._due(held, now) and self._servable(now) is not None:
                    raise  # nothing due: the write alone is retried, with backoff
                # Due: renewed from the token held in memory (the one on disk is spent),
                # and the new one is kept in memory in its turn.
            else:
                if not self._due(held, now) and self._servable(now) is not None:
                    return held
        if held is not None and not strategy.renewable(held, now):
            servable = self._servable(now)
            if servable is not None:
                return servable  # usable until it expires; status says a login is coming
            raise LoginRequired(self.name, strategy.unrenewable(held), action=self.login_command)
        pending = await self._prepare(now)
        try:
            try:
                fresh = await strategy.exchange(held, now)
            except RefreshRefused as refused:
                # What was refused is never presented again, by this process or another.
                if isinstance(pending, PendingWrite):
                    with contextlib.suppress(CacheChanged, CacheWriteError):
                        await self._write(refused.kept, expected, pending)
                self._hold(refused.kept, now)
                raise refused.error from refused
            if isinstance(pending, CacheWriteError):
                await self._keep_unsaved(fresh, expected, now, pending)
                return fresh
            try:
                await self._write(fresh, expected, pending)
            except CacheChanged:
                # Another writer replaced the file while the exchange was out: theirs is
                # kept (a login, or a refresh that came first), and adopted.
                log.info("session_cache_changed_during_renewal", session=self.name)
                self._take(await anyio.to_thread.run_sync(self._read), now)
                adopted = self._servable(now)
                if adopted is not None:
                    return adopted
                if record.problem is not None:
                    raise record.problem from None  # what the other writer left: a logout
                raise
            except CacheWriteError as exc:
                await self._keep_unsaved(fresh, expected, now, exc)
                return fresh
        finally:
            if isinstance(pending, PendingWrite):
                pending.discard()
        self._hold(fresh, now, renewed=True)
        log.info("session_token_renewed", session=self.name, expires_at=fresh.expires_at)
        return fresh

    async def _prepare(self, now: datetime) -> PendingWrite | CacheWriteError:
        """The temporary file, made before a refresh token is spent.

        If it cannot be made while a valid token is held, nothing is spent:
        the error is the renewal's, retried with backoff. If nothing valid is
        held, there is nothing to lose by going ahead: the error is returned,
        and the new token will be kept in memory.
        """
        try:
            return await anyio.to_thread.run_sync(self._cache.prepare, self._key)
        except CacheWriteError as exc:
            # The message names the errno and the path; a traceback would add nothing.
            if self._servable(now) is not None:
                log.warning("session_cache_unwritable", session=self.name, error=exc.message)
                raise
            log.error(  # noqa: TRY400
                "session_cache_unwritable",
                session=self.name,
                error=exc.message,
                renewing="anyway: nothing valid is held, the new token is kept in memory",
            )
            return exc

    async def _write(
        self, token: T, expected: Fingerprint, pending: PendingWrite | None
    ) -> Fingerprint:
        """``token`` onto the disk by compare-and-swap; the unsaved flag and rescue follow."""

        unsaved = self._unsaved

        def write() -> Fingerprint:
            if pending is None:
                with self._cache.prepare(self._key) as fresh_pending:
                    written = self._cache.commit(fresh_pending, token, expected=expected)
            else:
                written = self._cache.commit(pending, token, expected=expected)
            if unsaved:  # on disk now: the rescue copy has done its job
                # one left behind is dropped at the next start: the file has moved past it
                with contextlib.suppress(OSError):
                    self._cache.files.discard_rescue(self._cache.token_name(self._key))
            return written

        fingerprint = await anyio.to_thread.run_sync(write)
        self._disk = fingerprint
        if unsaved:
            self._unsaved = False
            log.info("session_token_saved", session=self.name, path=str(self.cache_path))
        return fingerprint

    async def _keep_unsaved(
        self, fresh: T, expected: Fingerprint, now: datetime, error: CacheWriteError
    ) -> None:
        """The new token could not be written: held, served, rescued, and written later."""
        self._hold(fresh, now, renewed=True)
        self._unsaved = True
        self._supersedes = expected
        name = self._cache.token_name(self._key)
        digest = expected.digest
        copy = {"supersedes": digest.hex() if digest else None, "token": fresh.to_json()}
        # a write and two fsyncs, on a disk that just failed one: off the event loop
        rescue = await anyio.to_thread.run_sync(self._cache.files.rescue, name, copy)
        log.error(
            "session_token_unsaved",
            session=self.name,
            error=error.message,
            path=str(self.cache_path),
            rescue_copy=str(rescue) if rescue else None,
            kept="in memory: served, and written again with backoff",
        )
        self._fail(error, now)

    # ------------------------------------------------------------------ failures

    def _fail(self, error: CreddError, now: datetime, *, quiet: bool = False) -> None:
        record = self.record
        fault = classify(error, self.name)
        waits_on = None
        if fault is Fault.ELSEWHERE and isinstance(error, LoginRequired):
            waits_on = self._records(error.session)
        first = record.failed(error, now, fault=fault, waits_on=waits_on)
        if fault is Fault.DEAD:
            if first and not quiet:
                reason = error.reason if isinstance(error, LoginRequired) else error.message
                log.warning("session_login_required", session=self.name, reason=reason)
                if self._on_login_required is not None:
                    self._on_login_required(self._login_name(), reason)
            return
        log.warning(
            "session_renewal_failed",
            session=self.name,
            error=error.message,
            retry_at=record.retry_at,
        )

    def _login_name(self) -> str:
        return self.login_command.removeprefix("credd login ").split(" ")[0]

    # ------------------------------------------------------------------ timing

    def _renewal_time(self, token: T, draw: float) -> datetime:
        return renewal_time(
            lifetime_start=self._lifetime_start or self._clock.now(),
            expires_at=token.expires_at,
            margin_seconds=self._strategy.margin(self.margin_seconds),
            draw=draw,
        )

    def _due(self, token: T, now: datetime) -> bool:
        return now >= self._renewal_time(token, self.record.jitter)

    def renew_by(self, token: T) -> datetime:
        """When the session replaces ``token``: its holders may keep it until then."""
        return self._renewal_time(token, self.record.jitter)

    def wake(self, now: datetime) -> datetime | None:
        """When the session next has work (the planner's question)."""
        if self._stale:
            return now
        record, strategy = self.record, self._strategy
        if record.parked:
            return None  # only a change of the file (a login) helps
        if record.problem is not None:
            if record.other_changed() or strategy.input_changed():
                return now
            return record.retry_at
        token = record.value
        if token is None:
            return now if strategy.begins_alone else None
        if self._unsaved:
            return now
        if not strategy.renewable(token, now):
            return token.expires_at  # then it needs a login
        return self._renewal_time(token, record.jitter)

    async def turn(self) -> None:
        """Read the file if it changed; renew if that is due."""
        if self._stale:
            await self._sync()
        now = self._clock.now()
        wake = self.wake(now)
        if wake is not None and now >= wake:
            with contextlib.suppress(CreddError):  # recorded by _fail: the next wake retries
                await self._flight.run()

    # ------------------------------------------------------------------ status

    def status(self) -> SessionStatus:
        now = self._clock.now()
        record, strategy = self.record, self._strategy
        token, problem = record.value, record.problem
        action: str | None = None
        last_error = problem.message if problem else None
        if record.parked or (token is None and problem is None and not strategy.begins_alone):
            state, action = SessionState.LOGIN_REQUIRED, self.login_command
            if problem is None:
                last_error = "not logged in"
        elif isinstance(problem, AssertionRequired):
            state, action = SessionState.ASSERTION_REQUIRED, problem.hint
        elif record.fault is Fault.REFUSED:
            state, action = SessionState.ERROR, problem.hint if problem else None
        elif problem is not None:
            state = SessionState.RETRYING
            action = problem.action if isinstance(problem, LoginRequired) else problem.hint
        elif token is not None and self._servable(now) is None and not strategy.begins_alone:
            state, action = SessionState.LOGIN_REQUIRED, self.login_command
        elif token is not None and not strategy.renewable(token, now):
            state, action = SessionState.EXPIRING, self.login_command
        else:
            state = SessionState.OK
        who, details = strategy.describe(token)
        return SessionStatus(
            name=self.name,
            kind=self.kind,
            state=state,
            expires_at=token.expires_at if token else None,
            next_renewal=self.wake(now) if state is not SessionState.LOGIN_REQUIRED else None,
            last_error=last_error,
            action=action,
            who=who,
            details=details,
        )
