"""Run the emulator on its own: ``python -m credd.testing.emulator --port 0``.

Prints one line, ``EMULATOR_URL=http://127.0.0.1:PORT``, once it listens, then
serves until SIGTERM or SIGINT. One flag per setting of
:class:`~.config.EmulatorConfig` (``--access-token-ttl``, ``--role-ttl``, …;
``none`` switches an optional limit off), plus ``--host``, ``--port`` and
``--start-url`` (repeatable; default: any https start URL).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Callable, Sequence

import anyio

from .app import Emulator
from .config import EmulatorConfig, default_directory, knobs


def _seconds(optional: bool) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        if optional and text.lower() == "none":
            return None
        return int(text)

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m credd.testing.emulator",
        description="A strict local AWS emulator (sso-oidc, sso portal, sts) on one loopback port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--start-url",
        action="append",
        dest="start_urls",
        metavar="URL",
        help="an accepted start URL (repeatable); default: any https URL",
    )
    for knob in knobs():
        flag = "--" + knob.name.replace("_", "-")
        if isinstance(knob.default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=knob.default, help=knob.help
            )
        else:
            shown = "none" if knob.default is None else knob.default
            parser.add_argument(
                flag,
                type=_seconds(knob.optional),
                default=knob.default,
                metavar=knob.unit.upper(),
                help=f"{knob.help} (default: {shown})",
            )
    return parser


def build(argv: Sequence[str] | None = None) -> tuple[Emulator, str, int]:
    parser = _parser()
    args = parser.parse_args(argv)
    config = EmulatorConfig()
    try:
        config.update({knob.name: getattr(args, knob.name) for knob in knobs()})
    except ValueError as exc:
        parser.error(str(exc))
    directory = default_directory()
    if args.start_urls:
        directory = dataclasses.replace(directory, start_urls=tuple(args.start_urls))
    return Emulator(config=config, directory=directory), args.host, args.port


async def serve(emulator: Emulator, host: str, port: int) -> None:
    async with emulator.running(host, port) as emu:
        print(f"EMULATOR_URL={emu.url}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return


def main(argv: Sequence[str] | None = None) -> int:
    emulator, host, port = build(argv)
    asyncio.run(serve(emulator, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
