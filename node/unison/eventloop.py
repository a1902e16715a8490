"""Which asyncio event loop a program runs on: uvloop when it is installed, else asyncio's.

uvloop (libuv, in C) spends less CPU per socket read/write and per callback than
asyncio's pure-Python selector loop, which is most of what an aiohttp request costs
besides our own handler. It is a runtime dependency; `asyncio` turns it off (a
suspected loop bug, or to compare), chosen by a command-line flag or `UNISON_EVENT_LOOP`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

CHOICES = ("auto", "uvloop", "asyncio")
ENV = "UNISON_EVENT_LOOP"

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(RuntimeError):
    """uvloop was asked for explicitly and cannot be imported."""


def choice_from_env(default: str = "auto") -> str:
    """UNISON_EVENT_LOOP when set (validated), else `default`."""
    value = os.environ.get(ENV, "").strip().lower() or default
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def loop_factory(choice: str = "auto") -> tuple[LoopFactory | None, str]:
    """(factory for asyncio.Runner, name of the loop it makes); factory None is asyncio's
    default loop. `auto` takes uvloop when it imports and falls back quietly."""
    if choice not in CHOICES:
        raise ValueError(f"event loop {choice!r}: expected one of {', '.join(CHOICES)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError as e:
            if choice == "uvloop":
                raise LoopUnavailable(f"event loop uvloop requested but not installed: {e}") from e
        else:
            return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
    return None, "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str = "auto", *, program: str = "unison") -> T:
    """asyncio.run(main) on the chosen loop, logging which one runs."""
    try:
        factory, name = loop_factory(choice)
    except Exception:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    log.info("%s: event loop %s", program, name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
