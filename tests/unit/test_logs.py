"""Log formats: text for people, JSON lines for pipelines, in the node's config and the
client's flag; a real node started with `log_format = "json"` logs only JSON objects."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from unison.client.options import UsageError, parse_options
from unison.config import ConfigError, LogConfig, parse_config, render_toml
from unison.logs import JsonFormatter

from tests.support.nodes import NodeProcess, single_node_config


def test_json_formatter_writes_one_object_per_record() -> None:
    record = logging.LogRecord("unison.node", logging.WARNING, __file__, 1,
                               'port %d in use: "%s"', (8001, "x\ny"), None)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "warning" and doc["logger"] == "unison.node"
    assert doc["message"] == 'port 8001 in use: "x\ny"'
    assert doc["time"].endswith("Z")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(record))["exception"]


MINIMAL = {"http_port": 8001, "storage_config": {"base_dir": "/data", "namespaces": ["ns1"]}}


def test_config_keys() -> None:
    cfg = parse_config({**MINIMAL, "log_config": {"log_format": "JSON",
                                                  "disable_timestamp": True}})
    assert cfg.log == LogConfig(log_level="info", log_format="json", disable_timestamp=True)
    assert parse_config(render_toml_doc(cfg)).log == cfg.log
    with pytest.raises(ConfigError, match=r"log_config.log_format: expected text or json"):
        parse_config({**MINIMAL, "log_config": {"log_format": "xml"}})
    with pytest.raises(ConfigError, match=r"log_config.disable_timestamp"):
        parse_config({**MINIMAL, "log_config": {"disable_timestamp": "yes"}})


def render_toml_doc(cfg: object) -> dict[str, object]:
    import tomllib

    return tomllib.loads(render_toml(cfg))  # type: ignore[arg-type]


def test_client_flag() -> None:
    assert parse_options(["--log-format", "json"], env={}).log_format == "json"
    assert parse_options([], env={}).log_format == "text"
    with pytest.raises((UsageError, SystemExit)):
        parse_options(["--log-format", "xml"], env={})


def test_a_node_logs_json_lines(tmp_path: Path) -> None:
    cfg = single_node_config(tmp_path, ["ns1"])
    cfg.log = LogConfig(log_format="json")
    node = NodeProcess("json", "replicator", cfg, tmp_path / "json")
    node.start()
    try:
        assert node.put("ns1", "k", "v")[0] == 200
    finally:
        node.stop()
    lines = [ln for ln in node.log_path.read_text().splitlines() if ln.strip()]
    docs = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert any(str(cfg.http_port) in d["message"] for d in docs), docs[:5]
    assert {d["level"] for d in docs} <= {"debug", "info", "warning", "error", "critical"}
