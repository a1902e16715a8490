"""The event loop choice: uvloop when installed, asyncio's on request, a clear error for
an unknown name or a missing uvloop asked for by name."""

from __future__ import annotations

import asyncio
import sys

import pytest
from unison import eventloop


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_runs_the_default_loop() -> None:
    assert eventloop.run(_loop_type(), "asyncio").startswith("asyncio")


def test_auto_takes_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_loop_type(), "auto").startswith("uvloop")
    assert eventloop.run(_loop_type(), "uvloop").startswith("uvloop")


def test_uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    assert eventloop.loop_factory("auto") == (None, "asyncio")
    with pytest.raises(eventloop.LoopUnavailable, match="uvloop"):
        eventloop.run(_loop_type(), "uvloop")


def test_choice_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.choice_from_env() == "auto"
    monkeypatch.setenv(eventloop.ENV, "AsyncIO")
    assert eventloop.choice_from_env() == "asyncio"
    monkeypatch.setenv(eventloop.ENV, "tokio")
    with pytest.raises(ValueError, match="UNISON_EVENT_LOOP"):
        eventloop.choice_from_env()
