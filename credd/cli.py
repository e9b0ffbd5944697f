"""The ``credd`` command: argv to settings to a daemon or a client call.

The only module that prints or exits. Errors print one line to stderr and
exit non-zero (1; 2 for a usage or configuration error); a traceback only
with ``--debug``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shlex
import signal
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, NoReturn, TypeVar

import anyio

from credd import __version__
from credd.config.load import load_settings
from credd.config.settings import (
    SessionSpec,
    Settings,
    SigninSessionSpec,
    SsoSessionSpec,
    TrustedIdentitySpec,
)
from credd.errors import ConfigError, CreddError, DaemonUnavailable, NotServed
from credd.files.paths import resolve_paths

if TYPE_CHECKING:
    from credd.sessions.prompt import TerminalLoginUI

T = TypeVar("T")

#: what `credd env` and `credd exec` clear (or set), so nothing shadows the endpoint
#: (botocore's chain puts env keys and profiles before the container provider)
SHADOWING_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="credd config file (default: $CREDD_CONFIG, else $XDG_CONFIG_HOME/credd/config.toml)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging and tracebacks",
    )
    parser = argparse.ArgumentParser(
        prog="credd",
        parents=[common],
        description="Keeps AWS sign-ins alive and serves role credentials to every SDK.",
    )
    parser.add_argument("--version", action="version", version=f"credd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=text, description=text)

    add("serve", "run the daemon in the foreground until SIGTERM or SIGINT")
    login = add("login", "log in a profile or sso-session")
    login.add_argument("name", metavar="NAME")
    login.add_argument("--device", action="store_true", help="use the device code flow")
    login.add_argument("--signin", action="store_true", help="AWS Sign-In (aws login)")
    login.add_argument("--remote", action="store_true", help="Sign-In's cross-device flow")
    login.add_argument("--no-browser", action="store_true", help="only print the URL")
    logout = add("logout", "forget a session, locally and upstream")
    logout.add_argument("name", metavar="NAME")
    status = add("status", "every session and profile: state, expiry, last error")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    env = add("env", "print export lines that point SDKs at the endpoint for PROFILE")
    env.add_argument("profile", metavar="PROFILE")
    grant = add("grant", "print a new scoped token: it fetches PROFILE's credentials only")
    grant.add_argument("profile", metavar="PROFILE")
    grant.add_argument(
        "--ttl", type=_seconds, metavar="SECONDS", help="it expires this long from now"
    )
    revoke = add("revoke", "end scoped tokens at once: one (its value or id), a profile's, all")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token", nargs="?", metavar="TOKEN", help="a token, or its id")
    which.add_argument("--profile", metavar="PROFILE", help="every scoped token of PROFILE")
    which.add_argument("--all", action="store_true", help="every scoped token")
    run = add("exec", "run a command with the endpoint for PROFILE")
    run.add_argument("profile", metavar="PROFILE")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    process = add("credential-process", "print credential_process JSON for PROFILE")
    process.add_argument("profile", metavar="PROFILE")
    populate = add(
        "populate", "add a profile for every account and role an Identity Center session reaches"
    )
    populate.add_argument("session", metavar="SESSION")
    populate.add_argument("--dry-run", action="store_true", help="print what would be added")
    populate.add_argument(
        "--template",
        default="{account_name}.{role_name}",
        help="profile names: {account_name}, {account_id}, {role_name}, {session} "
        "(default: %(default)s)",
    )
    populate.add_argument("--region", help="region of the new profiles (default: sso_region)")
    populate.add_argument(
        "--prune", action="store_true", help="remove populate's own profiles of roles now gone"
    )
    console = add("console", "sign the browser in to the AWS console with PROFILE's credentials")
    console.add_argument("profile", metavar="PROFILE")
    console.add_argument(
        "--print",
        action="store_true",
        dest="print_url",
        help="only print the URL (it signs anyone in, for 15 minutes)",
    )
    console.add_argument(
        "--destination",
        metavar="URL",
        type=_destination,
        help="the console page to open (default: the console home of the profile's region)",
    )
    token = add("token", "print the bearer access token of a trusted-identity session")
    token.add_argument("name", metavar="NAME")
    container = add("container", "credentials for containers: the listener's setup, their env")
    container_commands = container.add_subparsers(
        dest="container_command", required=True, metavar="COMMAND"
    )
    text = "print Docker --env-file lines: a container's own scoped token for PROFILE"
    container_env = container_commands.add_parser(
        "env", parents=[common], help=text, description=text
    )
    container_env.add_argument("profile", metavar="PROFILE")
    container_env.add_argument(
        "--ttl", type=_seconds, metavar="SECONDS", help="the token expires this long from now"
    )
    container_env.add_argument(
        "--relative",
        action="store_true",
        help="AWS_CONTAINER_CREDENTIALS_RELATIVE_URI for SDKs that know only it (needs port 80)",
    )
    text = "make 169.254.170.2 for the container listener, and port 80 on it (as root)"
    container_setup = container_commands.add_parser(
        "setup", parents=[common], help=text, description=text
    )
    container_setup.add_argument(
        "--docker", action="store_true", help="a Docker network credd instead of a bridge credd0"
    )
    service = add("service", "the systemd user units: install, uninstall, status")
    service.add_argument("action", choices=("install", "uninstall", "status"))
    return parser


def _destination(text: str) -> str:
    from credd.console import checked_destination

    try:
        return checked_destination(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(resolve_paths(os.environ, config_file=getattr(args, "config", None)))


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"credd: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        _dispatch(args, debug)
    except ConfigError as exc:
        if debug:
            raise
        _fail(str(exc), 2)
    except CreddError as exc:
        if debug:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _use_uvloop() -> bool:
    """uvloop when installed (``pip install 'credd[uvloop]'``), unless ``CREDD_EVENT_LOOP=asyncio``.

    bench/endpoint.py measures what it changes: about a quarter more requests a second.
    """
    choice = os.environ.get("CREDD_EVENT_LOOP", "auto")
    if choice not in {"auto", "asyncio", "uvloop"}:
        raise ConfigError(f"CREDD_EVENT_LOOP: expected auto, asyncio or uvloop, found {choice!r}")
    if choice == "asyncio":
        return False
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise ConfigError(
            "CREDD_EVENT_LOOP=uvloop, but uvloop is not installed",
            hint="pip install 'credd[uvloop]'",
        )
    return installed


#: the commands that hold tokens in memory: no core dumps, no reading of it (issue 11)
TOKEN_HOLDING_COMMANDS = frozenset({"serve", "login", "populate"})


def _dispatch(args: argparse.Namespace, debug: bool) -> None:
    command = args.command
    if command in TOKEN_HOLDING_COMMANDS:
        from credd.platform.process import disable_core_dumps

        for problem in disable_core_dumps():  # first: before any secret is read
            print(f"credd: warning: core dumps stay possible: {problem}", file=sys.stderr)
    settings = _settings(args)
    if command == "serve":
        from credd.log import configure_logging

        configure_logging("debug" if debug else settings.log.level, settings.log.format)
        anyio.run(_serve, args, settings, backend_options={"use_uvloop": _use_uvloop()})
    elif command == "login":
        _login(settings, args, debug)
    elif command == "logout":
        _logout(settings, args.name)
    elif command == "status":
        _status(settings, as_json=args.json)
    elif command == "env":
        for line in _env_lines(settings, args.profile):
            print(line)
    elif command == "exec":
        _exec(settings, args.profile, args.argv)
    elif command == "grant":
        print(_grant(settings, args.profile, args.ttl))
    elif command == "revoke":
        _revoke(settings, args.token, args.profile, everything=args.all)
    elif command == "credential-process":
        _credential_process(settings, args.profile)
    elif command == "service":
        from credd.platform import service

        action = {
            "install": service.install,
            "uninstall": service.uninstall,
            "status": service.status,
        }[args.action]
        for line in action(settings, os.environ).lines:
            print(line)
    elif command == "populate":
        _populate(settings, args, debug)
    elif command == "console":
        _console(settings, args, debug)
    elif command == "container" and args.container_command == "env":
        for line in _container_env(settings, args.profile, args.ttl, relative=args.relative):
            print(line)
    elif command == "container" and args.container_command == "setup":
        _container_setup(settings, docker=args.docker)
    elif command == "token":
        from credd.endpoint import client

        answer = client.request(settings, f"/v1/tokens/{_quote(args.name)}")
        print(answer["accessToken"])


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# --------------------------------------------------------------------------- serve


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    """Run the daemon: SIGHUP reloads the configuration, SIGTERM and SIGINT stop it."""
    from credd.daemon import DaemonHandle, run_daemon
    from credd.platform.systemd import clear_activation_environment

    stops = (signal.SIGTERM, signal.SIGINT)
    with anyio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
        try:
            async with anyio.create_task_group() as tg:
                handle: DaemonHandle = await tg.start(functools.partial(run_daemon, settings))
                clear_activation_environment()  # not for credential processes or notify-send
                async for received in signals:
                    if received == signal.SIGHUP:
                        handle.reload(lambda: _settings(args))
                        continue
                    handle.stop()  # drains in-flight requests, then returns
                    break
        except* CreddError as failed:  # one line (a refused token file, a taken port)
            raise failed.exceptions[0] from None


# --------------------------------------------------------------------------- login, logout


def _session_spec(settings: Settings, name: str) -> SessionSpec:
    spec = settings.session_for(name)
    if spec is None:
        reason = settings.unserved.get(name)
        detail = f": {reason}" if reason else ""
        raise NotServed(
            f"{name!r} is neither an sso-session nor a profile served through one{detail}",
            hint="see credd status",
        )
    return spec


def _login(settings: Settings, args: argparse.Namespace, debug: bool) -> None:
    # --remote is Sign-In's; a login_session profile (or its session) needs no --signin
    if args.signin or args.remote or isinstance(settings.session_for(args.name), SigninSessionSpec):
        _login_signin(settings, args, debug)
        return
    from credd import wiring
    from credd.clock import SystemClock
    from credd.log import configure_logging
    from credd.sessions.loopback import LoginOptions
    from credd.sessions.prompt import TerminalLoginUI

    configure_logging("debug" if debug else "warning", "console")
    spec = _session_spec(settings, args.name)
    if isinstance(spec, TrustedIdentitySpec):
        _login_trusted_identity(settings, spec, args)
        return
    assert isinstance(spec, SsoSessionSpec)  # Sign-In's went to _login_signin
    clock = SystemClock()
    ui = TerminalLoginUI(clock)
    login = wiring.sso_login(
        settings,
        spec,
        clock=clock,
        ui=ui,
        options=LoginOptions(device=args.device, open_browser=not args.no_browser),
    )
    token = _with_spinner(ui, login.run)
    print(
        f"Logged in to {spec.name}; access token valid until "
        f"{token.expires_at:%Y-%m-%d %H:%M:%S} UTC.",
        file=sys.stderr,
    )
    _tell_daemon(settings, spec.name, logged_in=True)


def _with_spinner(
    ui: TerminalLoginUI, work: Callable[[], Awaitable[T]], *, spinner: bool = True
) -> T:
    """Run a login while the terminal shows it waiting (without ``spinner``, it only runs it).

    A failed login is one :class:`CreddError` for :func:`main` to print in one line.
    """

    async def run() -> T:
        try:
            async with anyio.create_task_group() as tg:
                if spinner:
                    tg.start_soon(ui.run_spinner)
                result = await work()
                tg.cancel_scope.cancel()
        except* CreddError as failed:  # one line, not a traceback (the spinner never fails)
            raise failed.exceptions[0] from None
        return result

    return anyio.run(run)


def _login_trusted_identity(
    settings: Settings, spec: TrustedIdentitySpec, args: argparse.Namespace
) -> None:
    from credd import wiring
    from credd.clock import SystemClock
    from credd.sessions.loopback import LoginOptions
    from credd.sessions.prompt import TerminalLoginUI

    clock = SystemClock()
    ui = TerminalLoginUI(clock)
    login = wiring.trusted_identity_login(
        settings,
        spec,
        clock=clock,
        ui=ui,
        options=LoginOptions(device=args.device, open_browser=not args.no_browser),
    )
    token = _with_spinner(ui, login)
    who = token.who()
    print(
        f"Logged in to {spec.name}{f' as {who}' if who else ''}; access token valid until "
        f"{token.expires_at:%Y-%m-%d %H:%M:%S} UTC.",
        file=sys.stderr,
    )
    _tell_daemon(settings, spec.name, logged_in=True)


def _tell_daemon(
    settings: Settings, session: str, *, logged_in: bool, reload: bool = False
) -> None:
    from credd.endpoint import client

    try:
        if reload and not _reloaded(settings):
            return
        client.request(settings, f"/v1/sessions/{_quote(session)}/sync", method="POST")
    except DaemonUnavailable:
        if logged_in:
            print(
                "(credd is not running: `credd serve` will pick the session up.)", file=sys.stderr
            )
    else:
        done = "serves it now" if logged_in else "has dropped its credentials"
        print(f"The running daemon {done}.", file=sys.stderr)


def _reloaded(settings: Settings) -> bool:
    """Have a running daemon read the AWS config again (a profile written since it started)."""
    from credd.endpoint import client

    try:
        client.request(settings, "/v1/reload", method="POST")
    except DaemonUnavailable:
        raise
    except CreddError as exc:  # the login itself succeeded: say so, and how to finish
        print(
            f"credd: warning: the running daemon did not reload its configuration ({exc}); "
            "reload it (systemctl --user reload credd, or SIGHUP) to serve the profile",
            file=sys.stderr,
        )
        return False
    return True


def _login_signin(settings: Settings, args: argparse.Namespace, debug: bool) -> None:
    """``credd login PROFILE --signin [--remote]``: as ``aws login``, profile written at the end."""
    from credd import wiring
    from credd.clock import SystemClock
    from credd.config.settings import DEFAULT_SIGNIN_REGION, SigninProfile
    from credd.config.writer import inspect_profile, write_login_session
    from credd.errors import LoginError
    from credd.log import configure_logging
    from credd.sessions.prompt import TerminalLoginUI
    from credd.sessions.signin_login import SigninLoginOptions, SigninTarget

    configure_logging("debug" if debug else "warning", "console")
    if args.device:
        raise CreddError(
            "--device is an Identity Center flow; AWS Sign-In uses the browser",
            hint="for another device: credd login NAME --signin --remote",
        )
    # The profile to sign in: NAME itself if it names a login_session or nothing yet; the
    # session's first profile for a login_session ARN or a role chained on a Sign-In profile.
    root = settings.session_for(args.name)
    own = isinstance(settings.profiles.get(args.name), SigninProfile)
    profile = root.profile if isinstance(root, SigninSessionSpec) and not own else args.name
    paths = settings.paths
    before = inspect_profile(paths.aws_config_file, paths.aws_credentials_file, profile)
    region = before.region or DEFAULT_SIGNIN_REGION
    clock = SystemClock()
    ui = TerminalLoginUI(clock)
    login = wiring.signin_login(
        settings,
        SigninTarget(profile, region, profile if before.exists else None),
        clock=clock,
        ui=ui,
        options=SigninLoginOptions(remote=args.remote, open_browser=not args.no_browser),
        read_code=_read_pasted_code,
    )
    # a spinner would run through the pasted code
    result = _with_spinner(ui, login.run, spinner=not args.remote)
    session = result.login_session
    if before.login_session not in (None, session) and not _confirm(
        f"Profile {profile} is signed in as {before.login_session}. Replace it with {session}?"
    ):
        raise LoginError(
            f"profile {profile} keeps login_session {before.login_session}",
            hint=f"to use {session}, sign in to another profile: credd login OTHER --signin",
        )
    # region only when the login had to choose one, as aws login does (protocols.md 4.1)
    write_login_session(paths.aws_config_file, profile, session, None if before.region else region)
    print(
        f"Logged in to profile {profile} as {session}; credentials valid until "
        f"{result.token.expires_at:%Y-%m-%d %H:%M:%S} UTC, renewed for up to 12 hours.",
        file=sys.stderr,
    )
    _tell_daemon(settings, session, logged_in=True, reload=True)


async def _read_pasted_code() -> str:
    print(
        "Sign in on any device, then paste the verification code it shows and press Enter:",
        file=sys.stderr,
        flush=True,
    )
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return line.strip()


def _confirm(question: str) -> bool:
    """Ask on a terminal; without one, the answer is no."""
    if not sys.stdin.isatty():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def _logout(settings: Settings, name: str) -> None:
    from credd import wiring

    spec = _session_spec(settings, name)
    refused = anyio.run(wiring.log_out, settings, spec)
    if refused is not None:
        print(
            f"credd: warning: the portal's Logout failed ({refused}); "
            "the local session is gone anyway",
            file=sys.stderr,
        )
    # a Sign-In session is named by its ARN: the profile tells the user which one it was
    detail = f" (profile {spec.profile})" if isinstance(spec, SigninSessionSpec) else ""
    print(f"Logged out of {spec.name}{detail}.", file=sys.stderr)
    _tell_daemon(settings, spec.name, logged_in=False)


# --------------------------------------------------------------------------- populate


class _PopulateProgress:
    """On a terminal: what the listing is doing, redrawn in place on one line of stderr."""

    def show(self, text: str) -> None:
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)

    def accounts_listed(self, count: int) -> None:
        self.roles_listed(0, count)

    def roles_listed(self, done: int, total: int) -> None:
        self.show(f"Fetching roles for {total} accounts… {done}/{total}")

    def clear(self) -> None:
        self.show("")


def _populate(settings: Settings, args: argparse.Namespace, debug: bool) -> None:
    """``credd populate SESSION``: a profile for each role the session reaches and the AWS
    config does not serve yet (see :mod:`credd.populate`); a running daemon reloads."""
    from credd import populate, wiring
    from credd.assignments import NO_PROGRESS
    from credd.clock import SystemClock
    from credd.log import configure_logging

    configure_logging("debug" if debug else "warning", "console")
    paths = settings.paths
    try:
        options = populate.Options(
            template=args.template, region=args.region, dry_run=args.dry_run, prune=args.prune
        )
    except ValueError as exc:
        _fail(str(exc), 2)
    spec = populate.find_session(
        args.session, settings.session_for(args.session), paths.aws_config_file
    )
    terminal = _PopulateProgress() if sys.stderr.isatty() else None
    if terminal is not None:
        terminal.show("Fetching accounts…")
    try:
        plan = anyio.run(
            functools.partial(
                populate.populate,
                spec,
                cache=wiring.sso_cache(settings),
                clients=wiring.aws_clients(settings),
                clock=SystemClock(),
                margin_seconds=settings.refresh.token_margin_seconds,
                config_file=paths.aws_config_file,
                credentials_file=paths.aws_credentials_file,
                options=options,
                reserved={*settings.sessions, *settings.profiles},
                progress=terminal or NO_PROGRESS,
            )
        )
    finally:
        if terminal is not None:
            terminal.clear()
    reach = f"{plan.roles} roles in {plan.accounts} accounts, {plan.served} already served"
    if args.dry_run:
        print(plan.new_sections, end="")
        for name in plan.removed:
            print(f"# would remove [profile {name}]")
        would = f"would add {len(plan.added)} profiles"
        if options.prune:
            would += f" and remove {len(plan.removed)}"
        print(f"Dry run: {would} ({reach}); nothing written.", file=sys.stderr)
        return
    for added in plan.added:
        role = added.assignment
        print(f"added {added.name} ({role.account_id} {role.role_name})")
    for name in plan.removed:
        print(f"removed {name}")
    for name, why in plan.kept:
        print(f"credd: kept profile {name}, whose role is gone: {why}", file=sys.stderr)
    if not (plan.added or plan.removed):
        print(f"Nothing to change in {paths.aws_config_file} ({reach}).", file=sys.stderr)
    else:
        done = [f"Added {len(plan.added)} profiles"]
        if options.prune:
            done.append(f"removed {len(plan.removed)}")
        print(f"{' and '.join(done)} in {paths.aws_config_file} ({reach}).", file=sys.stderr)
        try:
            if _reloaded(settings):
                print("The running daemon serves them now.", file=sys.stderr)
        except DaemonUnavailable:
            pass  # `credd serve` reads the AWS config when it starts


# --------------------------------------------------------------------------- status


def _status(settings: Settings, *, as_json: bool) -> None:
    from credd.endpoint import client
    from credd.endpoint.status import render_status

    try:
        document = client.request(settings, "/v1/status")
    except DaemonUnavailable:
        from credd import wiring
        from credd.clock import SystemClock

        document = wiring.offline_status(settings, SystemClock().now())
    print(json.dumps(document, indent=2) if as_json else render_status(document))


# --------------------------------------------------------------------------- serving SDKs


def _served(settings: Settings, profile: str) -> None:
    if isinstance(settings.sessions.get(profile), TrustedIdentitySpec) and (
        profile not in settings.profiles
    ):
        raise NotServed(
            f"profile {profile!r} serves only a bearer token (its [profiles.{profile}] has no "
            "role_arn)",
            hint=f"use: credd token {profile}",
        )
    if profile not in settings.profiles:
        reason = settings.unserved.get(profile)
        raise NotServed(
            f"profile {profile!r} is not served"
            + (f": {reason}" if reason else " (no such profile in the AWS config)"),
            hint="see credd status",
        )


def _environment(settings: Settings, profile: str) -> dict[str, str]:
    """The endpoint for ``profile`` and its scoped token, as a file and as a value."""
    from credd import wiring
    from credd.clock import SystemClock
    from credd.endpoint.client import endpoint
    from credd.endpoint.handout import hand_out

    _served(settings, profile)
    where = endpoint(settings)
    handout = hand_out(
        wiring.grant_store(settings),
        wiring.env_token_dir(settings),
        profile,
        now=SystemClock().now(),
    )
    if not handout.reused:
        _sync_grants(settings)
    values = {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": where.credentials_url(profile),
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(handout.token_file),
        # the value too, for SDKs that predate the file (issue 11)
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": handout.token,
    }
    region = settings.region_of(profile)
    if region:
        values["AWS_REGION"] = values["AWS_DEFAULT_REGION"] = region
    return values


def _env_lines(settings: Settings, profile: str) -> list[str]:
    values = _environment(settings, profile)
    cleared = [name for name in SHADOWING_VARIABLES if name not in values]
    lines = [f"unset {' '.join(cleared)}"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    return lines


# --------------------------------------------------------------------------- scoped tokens


def _grant(settings: Settings, profile: str, ttl: float | None) -> str:
    """``credd grant``: a new scoped token for ``profile``, in force when this returns."""
    from credd import wiring
    from credd.clock import SystemClock

    _served(settings, profile)
    _, token = wiring.grant_store(settings).issue(
        profile, now=SystemClock().now(), purpose="grant", ttl_seconds=ttl
    )
    _sync_grants(settings)
    return token


def _revoke(
    settings: Settings, token: str | None, profile: str | None, *, everything: bool
) -> None:
    """``credd revoke``: prints each scoped token it ended; none for a TOKEN is an error."""
    from credd import wiring
    from credd.clock import SystemClock
    from credd.files.store import format_timestamp

    ended = wiring.grant_store(settings).revoke(
        now=SystemClock().now(), token=token, profile=profile, everything=everything
    )
    _sync_grants(settings)
    for grant in ended:
        print(
            f"revoked {grant.id} ({grant.profile}, {grant.purpose}, "
            f"created {format_timestamp(grant.created)})"
        )
    if not ended:
        if token is not None:
            raise CreddError("no live scoped token has that value or id", hint="see credd status")
        print("no live scoped tokens to revoke" + (f" for {profile}" if profile else ""))


def _container_env(
    settings: Settings, profile: str, ttl: float | None, *, relative: bool
) -> list[str]:
    """``credd container env``: a new container token for ``profile``, as env-file lines."""
    from credd import wiring
    from credd.clock import SystemClock
    from credd.endpoint import container_env

    containers = settings.containers
    if containers.listen is None:
        raise ConfigError(
            f"no container listener: [containers] listen is not set in "
            f"{settings.paths.credd_config_file}",
            hint='set listen = "169.254.170.2:9912" there, run credd container setup, '
            "and restart credd",
        )
    _served(settings, profile)
    if relative:
        problem = container_env.port_80_problem(containers)
        if problem is not None:
            raise CreddError(
                f"--relative cannot work here: {problem}",
                hint="without --relative, AWS_CONTAINER_CREDENTIALS_FULL_URI needs no port 80",
            )
    _, token = wiring.grant_store(settings).issue(
        profile, now=SystemClock().now(), purpose="container", ttl_seconds=ttl
    )
    _sync_grants(settings)
    values = container_env.container_variables(
        containers, profile, token, settings.region_of(profile), relative=relative
    )
    return container_env.env_file_lines(values)


def _container_setup(settings: Settings, *, docker: bool) -> None:
    """``credd container setup``: root makes the listener's address and port 80; a user is
    shown how (see :mod:`credd.platform.containers`)."""
    from credd.platform import containers
    from credd.platform.service import credd_command

    listen = settings.containers
    config = settings.paths.credd_config_file
    port = listen.port if listen.host is not None else containers.DEFAULT_LISTEN_PORT
    if listen.host is None:
        print(
            f"credd: [containers] listen is not set in {config}, so credd serves no containers "
            f'yet: add listen = "{containers.CONTAINER_ADDRESS}:{port}" there (port 80 is sent '
            f"to {port}, its default port)",
            file=sys.stderr,
        )
    elif listen.host != containers.CONTAINER_ADDRESS:
        print(
            f"credd: warning: [containers] listen is {listen.listen}, but containers reach "
            f"credd on {containers.CONTAINER_ADDRESS}, which this setup makes",
            file=sys.stderr,
        )
    report = containers.setup(docker, listen_port=port, env=os.environ)
    for line in report.lines:
        print(line)
    if report.needs_root:
        # root reads its own config, not this one: name it, so that the port is the same
        pinned = ["--config", str(config.absolute())] if config.exists() else []
        rerun = [*credd_command(), *pinned, "container", "setup", *(["--docker"] if docker else [])]
        print(f"or have credd do it: sudo {shlex.join(rerun)}")


def _sync_grants(settings: Settings) -> None:
    """Have a running daemon re-read the grants file now: the change is in force on return."""
    from credd.endpoint import client

    try:
        client.request(settings, "/v1/grants/sync", method="POST")
    except DaemonUnavailable:
        pass  # a daemon that starts later reads the file then
    except CreddError as exc:  # the file is written: say how to put it in force
        print(
            f"credd: warning: the running daemon did not re-read its scoped tokens ({exc}); "
            "it will when it notices the file changed, or restart it",
            file=sys.stderr,
        )


def _exec(settings: Settings, profile: str, argv: list[str]) -> NoReturn:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        _fail("usage: credd exec PROFILE -- CMD [ARGS...]", 2)
    env = {k: v for k, v in os.environ.items() if k not in SHADOWING_VARIABLES}
    env.update(_environment(settings, profile))
    sys.stdout.flush()
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606  # running the user's command is the point
    except OSError as exc:
        _fail(f"cannot run {argv[0]!r}: {exc.strerror}", 127)


def _credential_process(settings: Settings, profile: str) -> None:
    from credd.endpoint import client

    _served(settings, profile)
    creds = client.request(settings, f"/v1/credentials/{_quote(profile)}")
    print(
        json.dumps(
            {
                "Version": 1,
                "AccessKeyId": creds["AccessKeyId"],
                "SecretAccessKey": creds["SecretAccessKey"],
                "SessionToken": creds["Token"],
                "Expiration": creds["Expiration"],
            }
        )
    )


def _console(settings: Settings, args: argparse.Namespace, debug: bool) -> None:
    """``credd console PROFILE``: the browser signed in to the AWS console, or the URL."""
    from credd import console
    from credd.log import configure_logging

    # errors only: a fetch made here, with no daemon running, logs what the daemon would
    configure_logging("debug" if debug else "error", "console")
    login = anyio.run(
        functools.partial(
            console.console_login, settings, args.profile, destination=args.destination
        )
    )
    if args.print_url:
        print(login.url.reveal())
        return
    if not console.open_in_browser(login):
        raise CreddError(
            "no browser could be opened",
            hint=f"print the URL instead: credd console {args.profile} --print",
        )
    print(
        f"Opened the AWS console for {args.profile}; the console session ends "
        f"{login.session_ends:%Y-%m-%d %H:%M:%S} UTC.",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
