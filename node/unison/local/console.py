"""Terminal output for `unison up` and `unison demo`: one lock, colours only on a TTY,
progress that rewrites its line on a terminal and stays quiet in a log file."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_COLOURS = ("36", "35", "33", "34", "32", "31")  # cyan, magenta, yellow, blue, green, red


class Console:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.tty = self.stream.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        encoding = (getattr(self.stream, "encoding", None) or "").lower()
        self.unicode = encoding.replace("-", "").startswith("utf")
        self._live = ""  # the progress text currently on screen (TTY only)

    # -- plain lines ---------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        with self.lock:
            if self._live:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            if self._live:
                self.stream.write(self._live)
            self.stream.flush()

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def tag(self, text: str, index: int) -> str:
        return self.paint(text, _COLOURS[index % len(_COLOURS)])

    @property
    def ok_mark(self) -> str:
        return self.paint("✓" if self.unicode else "ok", "32")

    @property
    def fail_mark(self) -> str:
        return self.paint("✗" if self.unicode else "FAIL", "31")

    def heading(self, text: str) -> None:
        self.line()
        self.line(self.bold(text))

    # -- progress ------------------------------------------------------------------------

    @contextmanager
    def progress(self, indent: str = "  ") -> Iterator[Progress]:
        p = Progress(self, indent)
        try:
            yield p
        finally:
            p.clear()


class Progress:
    """A status line: rewritten in place on a terminal; elsewhere a line every few
    seconds so a log of the run still shows that something was being waited for."""

    QUIET_INTERVAL = 5.0

    def __init__(self, console: Console, indent: str) -> None:
        self.console = console
        self.indent = indent
        self._last_quiet = time.monotonic()

    def update(self, text: str) -> None:
        c = self.console
        if c.tty:
            with c.lock:
                c._live = f"{self.indent}{text}"
                c.stream.write("\r\033[K" + c._live)
                c.stream.flush()
        elif time.monotonic() - self._last_quiet >= self.QUIET_INTERVAL:
            self._last_quiet = time.monotonic()
            c.line(f"{self.indent}{text}")

    def done(self, text: str) -> None:
        self.console.line(f"{self.indent}{self.console.ok_mark} {text}")

    def clear(self) -> None:
        c = self.console
        if c.tty and c._live:
            with c.lock:
                c.stream.write("\r\033[K")
                c.stream.flush()
                c._live = ""
