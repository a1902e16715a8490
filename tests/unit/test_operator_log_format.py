"""The operator's log format: `--log-format` or UNISON_LOG_FORMAT, JSON lines from
unison.logs with kopf's object reference, and the chart's operator.logFormat value.
(tests/operator/test_log_format.py runs the real operator process with it.)"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kopf
import pytest
import yaml
from unison_operator import run

CHART = Path(__file__).resolve().parents[2] / "charts" / "unison-operator"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root and asyncio loggers back as they were (the tests reconfigure them)."""
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    saved = (root.handlers[:], root.level, aio.handlers[:], aio.propagate)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        aio.handlers[:], aio.propagate = saved[2], saved[3]


def test_the_flag_wins_over_the_environment_which_wins_over_text() -> None:
    assert run.log_format(None, {}) == "text"
    assert run.log_format(None, {"UNISON_LOG_FORMAT": " JSON "}) == "json"
    assert run.log_format("text", {"UNISON_LOG_FORMAT": "json"}) == "text"
    assert run.build_parser().parse_args(["-A", "--log-format", "json"]).log_format == "json"
    with pytest.raises(ValueError, match=r"UNISON_LOG_FORMAT='xml': expected text or json"):
        run.log_format(None, {"UNISON_LOG_FORMAT": "xml"})
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["-A", "--log-format", "xml"])


def test_a_bad_environment_value_stops_the_operator_with_a_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--all-namespaces"], env={"UNISON_LOG_FORMAT": "yaml"}) == 2
    assert "unison operator: UNISON_LOG_FORMAT='yaml': expected text or json" in (
        capsys.readouterr().err)


def test_json_lines_carry_the_object_kopf_logs_about(root_logging: None) -> None:
    run.configure_logging("json", verbose=False)
    stream = io.StringIO()
    for handler in logging.getLogger().handlers:
        assert isinstance(handler.formatter, run.ObjectJsonFormatter)
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(stream)
    body = kopf.Body({"apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
                      "metadata": {"name": "ad-campaign", "namespace": "demo", "uid": "u1"}})
    # kopf's own per-object logger, as handlers receive it
    kopf.ObjectLogger(body=body, settings=kopf.OperatorSettings()).info("applied %d", 7)
    logging.getLogger("unison_operator.handlers").warning("plain \"line\"\n2")
    logging.getLogger("unison_operator.handlers").debug("not at INFO")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["message"] == "applied 7" and first["level"] == "info"
    assert first["object"] == {"apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
                               "name": "ad-campaign", "namespace": "demo", "uid": "u1"}
    assert second == {**second, "level": "warning", "logger": "unison_operator.handlers",
                      "message": 'plain "line"\n2'} and "object" not in second
    assert logging.getLogger("asyncio").propagate is False


def test_text_stays_kopfs_format(root_logging: None) -> None:
    run.configure_logging("text", verbose=True)
    record = logging.LogRecord("unison_operator", logging.INFO, __file__, 1, "hello", (), None)
    lines = [h.format(record) for h in logging.getLogger().handlers]
    assert any(line.endswith("[INFO    ] hello") for line in lines), lines  # kopf's layout
    assert logging.getLogger("unison_operator").level == logging.DEBUG


def container_args(values: dict[str, Any]) -> list[str]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="unison-operator", namespace="unison-system",
                                is_install=True)
    text = next(v for k, v in rendered.items() if k.endswith("templates/deployment.yaml"))
    (container,) = yaml.safe_load(text)["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_the_chart_value_chooses_the_format() -> None:
    default = container_args({})
    assert "--log-format" not in default  # the default manifest is unchanged
    args = container_args({"operator": {"logFormat": "json"}})
    assert run.build_parser().parse_args(args[1:]).log_format == "json"
    with pytest.raises(Exception, match="logFormat"):
        container_args({"operator": {"logFormat": "xml"}})
