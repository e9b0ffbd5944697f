"""What a person sees during a login: the URL, the code, and a live countdown.

On a terminal a spinner line counts down the time left; elsewhere (CI, a
pipe) one line says what is awaited. Writes to stderr, so stdout stays clean.
"""

from __future__ import annotations

import itertools
import sys
from datetime import datetime
from typing import TextIO

import anyio

from credd.clock import Clock

_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class TerminalLoginUI:
    def __init__(self, clock: Clock, stream: TextIO | None = None) -> None:
        self._clock = clock
        self._out = stream or sys.stderr
        self._tty = self._out.isatty()
        self._deadline: datetime | None = None
        self._what = "the browser"

    def _line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def prompt(self, url: str, user_code: str | None, deadline: datetime) -> None:
        self._deadline = deadline
        self._line("To sign in, open this URL in a browser:")
        self._line(f"\n    {url}\n")
        if user_code:
            self._line(f"and check that it shows the code:  {user_code}\n")
            self._what = "approval of the code"

    def browser_opened(self, opened: bool) -> None:
        if opened:
            self._line("(a browser was opened for you)")
        if not self._tty:
            self._line(f"waiting for {self._what}...")

    def notice(self, message: str) -> None:
        self._clear()
        self._line(message)

    def _clear(self) -> None:
        if self._tty:
            self._out.write("\r\033[K")

    async def run_spinner(self) -> None:
        """Animate until cancelled (only on a terminal)."""
        if not self._tty:
            return
        try:
            for frame in itertools.cycle(_FRAMES):
                if self._deadline is not None:
                    left = max(0, int((self._deadline - self._clock.now()).total_seconds()))
                    clock = f"{left // 60}:{left % 60:02d}"
                    self._out.write(f"\r\033[K{frame} waiting for {self._what}... {clock} left")
                    self._out.flush()
                await anyio.sleep(0.1)
        finally:
            self._clear()
            self._out.flush()
