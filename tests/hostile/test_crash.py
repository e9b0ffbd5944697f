"""Crashes: ``kill -9`` at random points of renewal, of login and of the atomic write.

Real ``credd serve`` and ``credd login`` processes run against the emulator
(in this test's event loop) with lifetimes so short that a daemon asked for
credentials renews every few seconds (Identity Center, AWS Sign-In and
trusted-identity sessions). Each is killed with SIGKILL at a point drawn from
a seeded RNG (so a failure reproduces), many times in a row; after every kill:

* every file in ``~/.aws/sso/cache``, ``~/.aws/login/cache`` and credd's
  trusted-identity token store parses, with the fields its reader requires;
* a temporary file the killed writer left behind is removed when the next
  daemon starts (``aws sso logout`` reads every file of the directory);
* the refresh token on disk is one the emulator still accepts, and the next
  daemon serves credentials without a new login.

**The one window no client can close.** The emulator rotates refresh tokens
strictly (the one presented dies at once), and a request whose client died is
still carried out, as a server would. A kill that lands after the emulator
rotated the token and before credd's rename lands (the answer in transit,
being parsed, being written) leaves the previous token on disk, now dead:
the session needs a login. The random kills may land there, so for them the
test accepts exactly that and nothing else: the token on disk is the live
one, or the one the last rotation of the same session consumed, never older
and never unknown. Kills placed inside a renewal whose exchange fails, inside
a login, and inside the write itself must lose nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process

from credd.files.store import LoginToken, Registration, SsoToken, sha1_name, sha256_name
from credd.secret import Secret
from credd.sessions.iam_tokens import IamToken, IamTokenCache
from credd.testing.emulator import Emulator
from credd.testing.emulator.oauth import AUTH_CODE_GRANT
from credd.testing.emulator.state import SigninSession, SsoSession, TokenSet
from tests.support.configs import AWS_CONFIG, LISTEN_ANY_PORT, credd_profile, static_keys_profile
from tests.support.home import Home
from tests.support.process import CREDD, Daemon, credd, log_paths, serving
from tests.support.waiting import eventually
from tests.support.world import World

pytestmark = pytest.mark.slow

SEED = 6_0809
#: an access token with fewer than 30 s left is renewed before use (MIN_SERVE_SECONDS),
#: and role credentials too: 32 s lifetimes make a daemon in use renew every ~2 s
LIFETIME = 32
#: how long a CreateToken is held in the emulator when a kill is aimed at it
HELD = 0.4


# ------------------------------------------------------------------------------- the world


@dataclass
class Rotation:
    session_id: str
    consumed: str
    issued: str


@dataclass(frozen=True)
class Kind:
    """One kind of session credd renews with a rotating refresh token in a shared cache."""

    name: str
    #: the profile a consumer asks for
    profile: str
    aws_config: str
    #: ``credd ...`` that logs it in (the headless browser approves)
    login: tuple[str, ...]
    #: the emulator operation its renewal calls
    renewal: str
    #: credd's own ``[profiles.NAME]`` tables
    credd_profiles: str = ""
    #: whether the AWS config has ``app-iam``: an emulator IAM user's static keys (the signer)
    signer_keys: bool = False

    def configure(self, home: Home, emu: Emulator) -> None:
        aws_config = self.aws_config
        if self.signer_keys:
            aws_config += static_keys_profile(emu.create_access_key("app-server"))
        home.write_aws_config(aws_config)
        home.write_credd_config(LISTEN_ANY_PORT + self.credd_profiles)

    @property
    def routes(self) -> tuple[str, ...]:
        """What consumers ask the daemon for; an SDK asks for the first all the time."""
        if self.name == "trusted-identity":
            return (f"/v1/tokens/{self.profile}", f"/v1/credentials/{self.profile}")
        return (f"/v1/credentials/{self.profile}",)

    def cache_file(self, home: Home) -> Path:
        paths = home.paths()
        if self.name == "signin":
            return paths.login_cache_dir / f"{sha256_name(SIGNIN_ARN)}.json"
        if self.name == "trusted-identity":
            name = IamTokenCache.token_name(self.profile)
            return paths.trusted_identity_cache_dir / f"{name}.json"
        return paths.sso_cache_dir / f"{sha1_name('my-sso')}.json"

    def refresh_token(self, path: Path) -> str:
        """The refresh token in the cache file (parsed by credd's own reader: all fields)."""
        data = json.loads(path.read_bytes())
        token: LoginToken | IamToken | SsoToken
        if self.name == "signin":
            token = LoginToken.from_json(data, path)
        elif self.name == "trusted-identity":
            token = IamToken.from_json(data, path)
        else:
            token = SsoToken.from_json(data, path)
        assert token.refresh_token is not None, "the refresh token is gone"
        return token.refresh_token.reveal()

    def is_live(self, emu: Emulator, refresh_token: str) -> bool:
        """Whether the emulator would still accept ``refresh_token``."""
        if self.name == "signin":
            signin = emu.state.signin.session_of_refresh_token(refresh_token)
            return signin is not None and signin.refresh_token == Secret(refresh_token)
        # Identity Center's sessions, CreateTokenWithIAM's among them
        return emu.state.session_of_refresh_token(refresh_token) is not None

    def record_rotations(self, emu: Emulator, rotations: list[Rotation]) -> None:
        """Watch the emulator's refresh-token rotations (it forgets what they consumed)."""
        if self.name == "signin":
            signin = emu.state.signin
            rotate_signin = signin.rotate_refresh_token

            def recorded_signin(session: SigninSession) -> Secret:
                consumed = session.refresh_token
                issued = rotate_signin(session)
                if consumed is not None:  # None: the first one, at login
                    rotations.append(
                        Rotation(session.session_id, consumed.reveal(), issued.reveal())
                    )
                return issued

            signin.rotate_refresh_token = recorded_signin  # type: ignore[method-assign]
            return
        state = emu.state
        rotate = state.rotate_refresh_token

        def recorded(session: SsoSession, now: datetime, access_ttl: int) -> TokenSet:
            consumed = session.refresh_token
            tokens = rotate(session, now, access_ttl)
            assert consumed is not None
            assert tokens.refresh_token is not None
            rotations.append(
                Rotation(session.session_id, consumed.reveal(), tokens.refresh_token.reveal())
            )
            return tokens

        state.rotate_refresh_token = recorded  # type: ignore[method-assign]


SIGNIN_ARN = "arn:aws:iam::111111111111:user/alice"
IDENTITY_CENTER = Kind("identity-center", "dev", AWS_CONFIG, ("login", "my-sso"), "CreateToken")
SIGNIN = Kind(
    "signin",
    "console",
    "[profile console]\noutput = json\n",
    ("login", "console", "--signin"),
    "CreateOAuth2Token",
)
#: CreateTokenWithIAM with the authorization code grant: only ``credd login analyst`` begins
#: it, so a refresh token lost would show (a jwt-bearer session would begin again unseen)
TRUSTED_IDENTITY = Kind(
    "trusted-identity",
    "analyst",
    AWS_CONFIG,
    ("login", "analyst"),
    "CreateTokenWithIAM",
    credd_profiles="\n" + credd_profile(AUTH_CODE_GRANT),
    signer_keys=True,
)


@dataclass(kw_only=True)
class CrashWorld(World):
    """The one World, with the kind of session being crashed and what the crashes did."""

    kind: Kind
    rng: random.Random
    #: every refresh-token rotation the emulator carried out, in order
    rotations: list[Rotation] = field(default_factory=list)
    runs: int = 0

    @property
    def directories(self) -> tuple[Path, ...]:
        paths = self.home.paths()
        return (paths.sso_cache_dir, paths.login_cache_dir, paths.trusted_identity_cache_dir)

    @property
    def cache_file(self) -> Path:
        return self.kind.cache_file(self.home)

    def next_name(self, what: str) -> str:
        self.runs += 1
        return f"{what}-{self.runs}"

    def refresh_token(self) -> str:
        return self.kind.refresh_token(self.cache_file)

    def session_is_live(self) -> bool:
        """Whether the refresh token on disk is one the emulator still accepts."""
        return self.kind.is_live(self.emu, self.refresh_token())

    async def log_in(self) -> None:
        result = await credd(self.env, *self.kind.login)
        assert result.returncode == 0, str(result)


def make_world(kind: Kind, home: Home, emu: Emulator, tmp_path: Path) -> CrashWorld:
    emu.config.update(
        {
            "access_token_ttl": LIFETIME,
            "role_ttl": LIFETIME,
            "signin_credentials_ttl": LIFETIME,
            "iam_token_ttl": LIFETIME,
        }
    )
    kind.configure(home, emu)
    world = CrashWorld(home, emu, kind=kind, rng=random.Random(SEED))
    kind.record_rotations(emu, world.rotations)
    return world


@pytest.fixture
def world(home: Home, emulator: object, tmp_path: Path) -> CrashWorld:
    assert isinstance(emulator, Emulator)
    return make_world(IDENTITY_CENTER, home, emulator, tmp_path)


# ------------------------------------------------------------------------------- the checks


def read_token(path: Path) -> SsoToken:
    return SsoToken.from_json(json.loads(path.read_bytes()), path)


def temporary_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))


def writer_pid(temporary: Path) -> int:
    """The pid in ``.<target>.<pid>.<random>.tmp`` (credd.store.atomic_write)."""
    return int(temporary.name.rsplit(".", 3)[1])


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_every_cache_file_parses(world: CrashWorld) -> None:
    """Every file a reader would open is whole: JSON, with the fields its reader requires."""
    for directory in world.directories:
        if not directory.exists():
            continue
        for path in directory.iterdir():
            if path.name.endswith(".tmp"):
                assert path.name.startswith("."), path  # never a name a reader opens
                continue
            assert path.suffix == ".json", path
            data = json.loads(path.read_bytes())  # whole JSON, or this raises
            assert isinstance(data, dict), path
            if path == world.cache_file:
                world.refresh_token()  # credd's reader: every required field is there
            elif "clientSecret" in data and "accessToken" not in data:
                Registration.from_json(data, path)
            else:
                raise AssertionError(f"a file no credd writer writes: {path}")


def assert_no_leftovers(world: CrashWorld) -> None:
    """What a killed writer left was swept by the daemon that started since."""
    for directory in world.directories:
        if directory.exists():
            left = [p for p in temporary_files(directory) if not is_alive(writer_pid(p))]
            assert not left, left


async def kill_9(process: Process) -> int:
    """SIGKILL ``process``; its exit status (0 if it had just finished by itself)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    return await process.wait()


def logins(emu: Emulator) -> int:
    """Browser logins, and CreateTokenWithIAM sessions begun (by any grant), so far."""
    calls = emu.calls
    return calls["Authorize"] + calls["SigninAuthorize"] + len(emu.state.iam.session_starts)


async def serves_without_login(world: CrashWorld, daemon: Daemon) -> None:
    """The daemon started after a kill serves credentials from what is on disk."""
    before = logins(world.emu)
    for path in world.kind.routes:
        with anyio.fail_after(20):
            while (await daemon.get(path)).status != 200:  # noqa: ASYNC110  # polling
                await anyio.sleep(0.05)
    assert logins(world.emu) == before  # no login happened, no session began again
    assert_no_leftovers(world)


async def ask_constantly(world: CrashWorld, daemon: Daemon) -> None:
    """An SDK asking all the time, so that the daemon keeps renewing."""
    while True:
        try:
            await daemon.get(world.kind.routes[0])
        except (OSError, aiohttp.ClientError):
            return  # the daemon is gone
        await anyio.sleep(0.02)


def judge_random_kill(world: CrashWorld) -> bool:
    """After a kill at a random point: whether the session survived.

    Lost is accepted only in the window no client closes: the token on disk is
    exactly the one the latest rotation of its session consumed.
    """
    if world.session_is_live():
        return True
    on_disk = world.refresh_token()
    consumed = [r for r in world.rotations if r.consumed == on_disk]
    assert consumed, "the refresh token on disk was never issued, or never rotated"
    latest = [r for r in world.rotations if r.session_id == consumed[0].session_id][-1]
    assert latest.consumed == on_disk, "a rotated refresh token was lost"
    return False


# ------------------------------------------------------------------------------- the daemon


#: where a daemon is killed: each as often, in an order the seeded RNG shuffles
DAEMON_KILLS = ("starting", "serving", "renewing") * 3


@pytest.mark.parametrize(
    "kind", [IDENTITY_CENTER, SIGNIN, TRUSTED_IDENTITY], ids=lambda kind: kind.name
)
async def test_kill_9_during_renewal_never_breaks_a_cache_or_loses_the_session(
    kind: Kind, home: Home, emulator: object, tmp_path: Path
) -> None:
    assert isinstance(emulator, Emulator)
    world = make_world(kind, home, emulator, tmp_path)
    await world.log_in()
    rng = world.rng
    kills = list(DAEMON_KILLS)
    rng.shuffle(kills)
    lost = 0
    for kill in kills:
        if kill == "starting":
            # reading the cache, adopting it, renewing what is due: at a random point
            stdout_path, stderr_path = log_paths(world.logs, world.next_name("start"))
            with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
                process = await anyio.open_process(
                    [*CREDD, "serve"], env=world.env, stdout=out, stderr=err
                )
            await anyio.sleep(rng.uniform(0, 2.0))
            assert await kill_9(process) == -signal.SIGKILL
            await process.aclose()
        else:
            async with serving(world.env, world.logs, name=world.next_name("serve")) as daemon:
                await serves_without_login(world, daemon)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ask_constantly, world, daemon)
                    if kill == "renewing":
                        await hold_the_next_renewal(world)
                        await anyio.sleep(rng.uniform(0, HELD))
                    else:
                        await anyio.sleep(rng.uniform(0, LIFETIME - 30 + 0.5))
                    assert await kill_9(daemon.process) == -signal.SIGKILL
                    tg.cancel_scope.cancel()
        world.emu.faults.clear()
        assert_every_cache_file_parses(world)
        if kill == "renewing":
            assert world.session_is_live(), "a kill mid-exchange lost the session"
        elif not judge_random_kill(world):
            lost += 1
            await world.log_in()  # the one window no client closes: log in again
    # the last kill, too, is survived by a daemon started afterwards
    async with serving(world.env, world.logs, name=world.next_name("serve")) as daemon:
        await serves_without_login(world, daemon)
    assert world.rotations  # the daemons did renew: the point of killing them
    print(f"{kind.name}: {len(kills)} kills, {len(world.rotations)} rotations, {lost} lost")


async def hold_the_next_renewal(world: CrashWorld) -> None:
    """Hold the next renewal in the emulator; it fails afterwards: nothing rotates."""
    operation = world.kind.renewal
    before = world.emu.calls[operation]
    world.emu.faults.add(operation, latency=HELD, status=500, error_code="InternalServerException")
    await eventually(
        lambda: world.emu.calls[operation] > before, what="a renewal reaching the emulator"
    )


# ------------------------------------------------------------------------------- login

GATED_BROWSER = """\
#!/bin/sh
# A user who never gets to approve: waits for the test to let it go, then leaves.
: > {opened}
while [ ! -e {gate} ]; do sleep 0.02; done
"""


async def start_login(world: CrashWorld, env: dict[str, str]) -> Process:
    stdout_path, stderr_path = log_paths(world.logs, world.next_name("login"))
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        return await anyio.open_process(
            [*CREDD, "login", "my-sso"], env=env, stdout=out, stderr=err
        )


async def test_kill_9_during_login_keeps_the_session_and_a_new_login_works(
    world: CrashWorld, tmp_path: Path
) -> None:
    await world.log_in()
    rng = world.rng
    opened, gate = tmp_path / "opened", tmp_path / "gate"
    browser = tmp_path / "gated-browser"
    browser.write_text(
        GATED_BROWSER.format(opened=shlex.quote(str(opened)), gate=shlex.quote(str(gate)))
    )
    browser.chmod(0o700)
    points = ("before authorization", "during CreateToken", "anywhere")
    for i in range(6):
        point = points[i % len(points)]
        before = read_token(world.cache_file)
        if point == "before authorization":
            opened.unlink(missing_ok=True)
            gate.unlink(missing_ok=True)
            process = await start_login(world, {**world.env, "BROWSER": str(browser)})
            await eventually(opened.exists, what="the login opening the browser")
            await anyio.sleep(rng.uniform(0, 0.2))
        elif point == "during CreateToken":
            calls = world.emu.calls["CreateToken"]
            world.emu.faults.add("CreateToken", latency=HELD)  # then redeemed, as upstream
            process = await start_login(world, world.env)
            await eventually(
                lambda c=calls: world.emu.calls["CreateToken"] > c,  # type: ignore[misc]
                what="the login redeeming its code",
            )
            await anyio.sleep(rng.uniform(0, HELD))
        else:
            process = await start_login(world, world.env)
            await anyio.sleep(rng.uniform(0, 1.5))
        # "anywhere" may come after the login finished by itself (exit status 0)
        assert await kill_9(process) in (-signal.SIGKILL, 0)
        await process.aclose()
        gate.touch()  # the gated browser leaves
        world.emu.faults.clear()

        assert_every_cache_file_parses(world)
        after = read_token(world.cache_file)
        # a login killed half-way leaves the session as it was, or the new one whole
        assert world.session_is_live(), (point, "the session was lost")
        if point != "anywhere":
            assert after.refresh_token == before.refresh_token, point
        if i >= len(points):  # after each kind of kill once: a new login succeeds
            await world.log_in()
            assert read_token(world.cache_file).refresh_token not in (
                before.refresh_token,
                after.refresh_token,
            )
            assert world.session_is_live()
    async with serving(world.env, world.logs, name=world.next_name("serve")) as daemon:
        await serves_without_login(world, daemon)


# ------------------------------------------------------------------------------- the write

#: what another tool added to the token file: enough that writing it takes a while, and
#: still under the largest cache file credd reads (MAX_CACHE_BYTES)
PADDING = 768 * 1024
#: credd's own atomic write in a process of its own, rewriting the token file forever
WRITER = """\
import json, sys
from pathlib import Path
from credd.files.store import JsonCacheDir
files = JsonCacheDir(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
padding = {"otherTool": "x" * int(sys.argv[5])} if int(sys.argv[5]) else {}
versions = [{**json.loads(v), **padding} for v in sys.argv[6:]]
i = 0
while True:
    files.write(sys.argv[4], versions[i % len(versions)])
    i += 1
"""


def writer_argv(
    world: CrashWorld, versions: list[dict[str, Any]], *, padding: int = 0
) -> list[str]:
    """The writer's command line; ``padding`` bytes another tool added to every version."""
    paths = world.home.paths()
    return [
        sys.executable,
        "-c",
        WRITER,
        str(paths.sso_cache_dir),
        str(paths.lock_dir),
        str(paths.state_dir / "unreadable"),
        sha1_name("my-sso"),
        str(padding),
        *(json.dumps(v) for v in versions),
    ]


def versions_of(token: dict[str, Any]) -> list[dict[str, Any]]:
    """The same session written two ways, as renewals do."""
    return [{**token, "writer": "a"}, {**token, "writer": "b"}]


async def test_kill_9_during_the_atomic_write_leaves_a_whole_file(world: CrashWorld) -> None:
    await world.log_in()
    token = json.loads(world.cache_file.read_bytes())
    rng = world.rng
    directory = world.cache_file.parent

    # at random points of a writer that does nothing but rewrite the file
    versions = versions_of(token)
    seen: set[str] = set()
    for _ in range(20):
        mtime = world.cache_file.stat().st_mtime_ns
        async with await anyio.open_process(writer_argv(world, versions)) as writer:
            await eventually(
                lambda m=mtime: world.cache_file.stat().st_mtime_ns != m,  # type: ignore[misc]
                what="the writer writing",
            )
            await anyio.sleep(rng.uniform(0, 0.05))
            assert await kill_9(writer) == -signal.SIGKILL
        written = json.loads(world.cache_file.read_bytes())
        assert written in versions
        seen.add(written["writer"])
        assert_every_cache_file_parses(world)

    # inside the write itself: a file big enough that the kill lands before the rename
    left: list[Path] = []
    while not left:
        before = world.cache_file.read_bytes()
        argv = writer_argv(world, versions, padding=PADDING)
        async with await anyio.open_process(argv) as writer:
            with anyio.fail_after(20):
                while not temporary_files(directory):  # noqa: ASYNC110  # another process
                    await anyio.sleep(0.001)
            assert await kill_9(writer) == -signal.SIGKILL
        left = temporary_files(directory)
        if left:
            assert world.cache_file.read_bytes() == before  # the old file, whole
    assert all(not is_alive(writer_pid(p)) for p in left)
    assert_every_cache_file_parses(world)

    async with serving(world.env, world.logs, name=world.next_name("serve")) as daemon:
        await serves_without_login(world, daemon)  # and the leftovers are swept
    for path in left:
        assert not path.exists(), path
    assert world.session_is_live()
