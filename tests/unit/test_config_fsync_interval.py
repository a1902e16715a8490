"""storage_config.wal_fsync_interval (issue 17): UnisonDB's interval durability mode,
opt-in. Parsing, errors naming the field, rendering and round trips."""

from __future__ import annotations

import logging
import tomllib

import pytest
from unison.config import ConfigError, StorageConfig, parse_config, render_toml

BASE = {"http_port": 8001, "storage_config": {"base_dir": "/d", "namespaces": ["a"]}}


def with_interval(value: object) -> dict:
    return {**BASE, "storage_config": {**BASE["storage_config"], "wal_fsync_interval": value}}


def test_absent_means_the_durable_default() -> None:
    cfg = parse_config(BASE)
    assert cfg.storage.wal_fsync_interval == 0.0 == StorageConfig().wal_fsync_interval
    assert "wal_fsync_interval" not in render_toml(cfg)  # default files stay as they were


@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("200ms", 0.2), ("1m", 60.0), ("0", 0.0), ("0s", 0.0), (2, 2.0), (0.5, 0.5),
    ("1ms", 0.001),
])
def test_go_style_durations(text: object, seconds: float) -> None:
    assert parse_config(with_interval(text)).storage.wal_fsync_interval == pytest.approx(seconds)


@pytest.mark.parametrize("bad, message", [
    ("fast", "expected a duration"),
    (-1, "must not be negative"),
    (True, "expected a duration"),
    ("1 s", "expected a duration"),
    ("500us", "at least 1ms"),
    ([1], "expected a duration"),
])
def test_bad_values_name_the_field(bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match="storage_config.wal_fsync_interval") as e:
        parse_config(with_interval(bad), "dc1.toml")
    assert message in str(e.value) and "dc1.toml" in str(e.value)


@pytest.mark.parametrize("value", ["1s", "200ms", "1m30s", "1500ms", "0"])
def test_renders_and_round_trips(value: str) -> None:
    cfg = parse_config(with_interval(value), "x.toml")
    text = render_toml(cfg)
    assert (("wal_fsync_interval" in text) == bool(cfg.storage.wal_fsync_interval)), text
    assert parse_config(tomllib.loads(text), "x.toml") == cfg
    assert render_toml(parse_config(tomllib.loads(text), "x.toml")) == text


def test_it_is_understood_not_noted_as_without_effect(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="unison.config"):
        parse_config(with_interval("1s"))
    assert not [r for r in caplog.records if "wal_fsync_interval" in r.getMessage()]
