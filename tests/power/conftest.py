"""LazyFS for the power-loss tests: mounted per test, always unmounted.

Where FUSE cannot be used the tests skip, saying why; with UNISON_REQUIRE_FUSE=1 (CI,
which installs fuse3) they fail instead, so a broken setup cannot pass as a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.power.harness import TOTALS, Machine
from tests.support.lazyfs import REQUIRE_ENV, LazyFS, unavailable


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Callable[[str], Machine]]:
    """`machine(name)`: a mounted LazyFS under tmp_path/name, for nodes to be added to;
    at the end its nodes are killed, then it is unmounted."""
    why = unavailable()
    if why is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"FUSE is required ({REQUIRE_ENV}=1) but unavailable: {why}")
        pytest.skip(f"FUSE unavailable: {why}")
    made: list[Machine] = []

    def make(name: str) -> Machine:
        m = Machine(LazyFS(tmp_path / name))
        made.append(m)
        m.fs.start()
        return m

    yield make
    for m in made:
        for node in m.nodes:
            node.power_off()
        m.fs.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TOTALS["cuts"]:
        terminalreporter.write_line(
            f"power loss: {TOTALS['cuts']} power cuts, {TOTALS['acked']} acknowledged writes "
            f"checked after them, {TOTALS['compared']} replicated records compared")
