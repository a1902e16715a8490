"""The client's stdout writer: user data must never make printing raise (issue 6)."""

from __future__ import annotations

import io
import logging

import pytest
from unison.client import output
from unison.client.sync import StdoutPrinter
from unison.crdt import CRDTState, encode_value


def strict_stream(encoding: str = "utf-8") -> io.TextIOWrapper:
    # errors="strict" is what a pipe's stdout uses: a lone surrogate raises there
    return io.TextIOWrapper(io.BytesIO(), encoding=encoding, errors="strict")


def written(stream: io.TextIOWrapper) -> bytes:
    stream.flush()
    buf = stream.buffer
    assert isinstance(buf, io.BytesIO)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1"])
def test_lone_surrogates_are_written_backslash_escaped(encoding: str) -> None:
    stream = strict_stream(encoding)
    StdoutPrinter(stream=stream).show("Value: \ud800 and \udcff")
    assert written(stream) == b"Value: \\ud800 and \\udcff\n"


def test_encodable_text_is_written_as_it_is() -> None:
    stream = strict_stream()
    StdoutPrinter(stream=stream).show("Value: DC2 wins! é ✓")
    assert written(stream).decode("utf-8") == "Value: DC2 wins! é ✓\n"


def test_the_state_block_with_surrogates_prints() -> None:
    state = CRDTState()
    state.apply_b64("lww:x", encode_value({"value": "\ud800", "timestamp": 1, "replica": "a"}))
    stream = strict_stream()
    StdoutPrinter(stream=stream).show(output.state_block(state.snapshot()))
    assert b"Value: \\ud800" in written(stream)


def test_a_stream_that_cannot_be_written_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = strict_stream()
    stream.close()
    console = StdoutPrinter(stream=stream)
    with caplog.at_level(logging.DEBUG, logger="unison.client.sync"):
        console.show("first")
        console.show("second")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not once per line
    assert "cannot write to stdout" in warnings[0].getMessage()


def test_quiet_shows_only_what_is_always_shown() -> None:
    stream = strict_stream()
    console = StdoutPrinter(quiet=True, stream=stream)
    console.show("per-change line")
    console.show("banner", always=True)
    assert written(stream) == b"banner\n"
