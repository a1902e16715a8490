"""spec.storage.walFsyncInterval: the cluster's durability mode (storage_config.
wal_fsync_interval on every node). The parser, the CRD's schema and CEL rule agree on what
is a valid value; every node's TOML carries it when set and not when absent; setting it
changes every node's config hash, so every pod rolls."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
from unison.config import parse_config
from unison.errors import SpecError
from unison.topology.spec import parse_cluster
from unison_operator.render import CONFIG_HASH_ANNOTATION, render

from tests.unit.test_crd import cel_field_errors, example, schema_errors

FIELD = "spec.storage.walFsyncInterval"


def with_interval(value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example())
    doc["spec"]["storage"] = {"walFsyncInterval": value}
    return doc


GOOD = [("0", 0.0), ("0s", 0.0), ("0ms", 0.0), ("1ms", 0.001), ("200ms", 0.2), ("1s", 1.0),
        ("1s500ms", 1.5), ("1m30s", 90.0), ("2m", 120.0), ("1h", 3600.0),
        ("3599s1000ms", 3600.0)]


@pytest.mark.parametrize(("text", "seconds"), GOOD, ids=[t for t, _ in GOOD])
def test_good_values_parse_and_pass_the_schema(text: str, seconds: float) -> None:
    doc = with_interval(text)
    assert parse_cluster(doc).storage.wal_fsync_interval == pytest.approx(seconds)
    assert schema_errors(doc) == []
    assert cel_field_errors(doc) == []


BAD_FORMAT = ["", " 1s", "1", "1.5s", "0.5", "500us", "1000ns", "1d", "-1s", "1S", "s",
              "1s ", "1 s", "10M", "1" * 31 + "ms", "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h"]


@pytest.mark.parametrize("text", BAD_FORMAT)
def test_malformed_values_are_refused_by_both_naming_the_field(text: str) -> None:
    doc = with_interval(text)
    with pytest.raises(SpecError, match=rf"^{FIELD}: expected a duration in whole h, m, s "
                                        rf"or ms like \"1s\""):
        parse_cluster(doc)
    assert [e for e in schema_errors(doc) if e.startswith(f"{FIELD}: ")], schema_errors(doc)


@pytest.mark.parametrize("value", [1, 1.5, True, ["1s"]])
def test_values_of_another_type_are_refused_naming_the_field(value: Any) -> None:
    doc = with_interval(value)
    with pytest.raises(SpecError, match=rf"^{FIELD}: expected a string"):
        parse_cluster(doc)
    assert schema_errors(doc)


@pytest.mark.parametrize("text", ["61m", "1h1ms", "3601s", "2h"])
def test_more_than_an_hour_is_refused_by_the_parser_and_the_cel_rule(text: str) -> None:
    doc = with_interval(text)
    with pytest.raises(SpecError, match=rf"^{FIELD}: must be at most 1h"):
        parse_cluster(doc)
    assert schema_errors(doc) == []  # only the CEL rule catches this one
    assert [field for field, _ in cel_field_errors(doc)] == [FIELD]


def test_unknown_fields_of_spec_storage_are_named() -> None:
    doc = copy.deepcopy(example())
    doc["spec"]["storage"] = {"size": "1Gi"}
    with pytest.raises(SpecError, match=r"^spec.storage.size: unknown field \(known fields: "
                                        r"walFsyncInterval\)"):
        parse_cluster(doc)  # (the API server prunes unknown fields; `unison up` refuses them)


def tomls(doc: dict[str, Any]) -> dict[str, str]:
    (cm,) = [o for o in render(parse_cluster(doc), "ad-campaign", "prod")
             if o["kind"] == "ConfigMap"]
    return dict(cm["data"])


def test_every_nodes_toml_carries_the_interval_when_set_and_not_when_absent() -> None:
    default = tomls(example())
    assert sorted(default) == ["dc1.toml", "dc2.toml", "relayer.toml"]
    for name, text in default.items():
        assert "wal_fsync_interval" not in text, name
    assert tomls(with_interval("0s")) == default  # "0s" is the default, spelled out
    for name, text in tomls(with_interval("200ms")).items():
        storage = tomllib.loads(text)["storage_config"]
        assert storage["wal_fsync_interval"] == "200ms", name
        # ... and the node reads it back as the interval mode.
        cfg = parse_config(tomllib.loads(text), name)
        assert cfg.storage.wal_fsync_interval == pytest.approx(0.2), name


def test_local_mode_plans_the_same_interval() -> None:
    plans = parse_cluster(with_interval("1m30s")).plan(base_dir="/d")
    assert [(p.name, p.config.storage.wal_fsync_interval) for p in plans] == [
        ("dc1", 90.0), ("dc2", 90.0), ("relayer", 90.0)]


def config_hashes(doc: dict[str, Any]) -> dict[str, str]:
    return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
        CONFIG_HASH_ANNOTATION] for o in render(parse_cluster(doc), "ad-campaign", "prod")
        if o["kind"] == "StatefulSet"}


def test_changing_the_interval_rolls_every_node_and_absent_equals_0s() -> None:
    default = config_hashes(example())
    assert config_hashes(with_interval("0s")) == default  # no restart for spelling it out
    one_second = config_hashes(with_interval("1s"))
    assert sorted(one_second) == sorted(default) == [
        "ad-campaign-dc1", "ad-campaign-dc2", "ad-campaign-relayer"]
    assert all(one_second[n] != default[n] for n in default)
    two_seconds = config_hashes(with_interval("2s"))
    assert all(two_seconds[n] != one_second[n] for n in default)
