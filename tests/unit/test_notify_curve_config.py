"""notifier_config.<namespace> CURVE keys: parsed, checked and rendered back."""

from __future__ import annotations

import tomllib

import pytest
from unison.config import NotifierConfig, parse_config, render_toml
from unison.errors import ConfigError

BASE = {"http_port": 8001, "storage_config": {"base_dir": "/data", "namespaces": ["ns1"]}}


def with_notifier(**entry: object) -> dict:
    return {**BASE, "notifier_config": {"ns1": {"bind_port": 5555, **entry}}}


def test_curve_is_off_by_default_and_unset_keys_are_not_rendered() -> None:
    cfg = parse_config(with_notifier())
    nc = cfg.notifiers[0]
    assert (nc.curve_secret_key_file, nc.curve_authorized_keys_dir) == ("", "")
    assert "curve" not in render_toml(cfg)


def test_curve_keys_round_trip() -> None:
    cfg = parse_config(with_notifier(curve_secret_key_file="/keys/server.key_secret",
                                     curve_authorized_keys_dir="/keys/clients"))
    assert cfg.notifiers == [NotifierConfig("ns1", 5555,
                                            curve_secret_key_file="/keys/server.key_secret",
                                            curve_authorized_keys_dir="/keys/clients")]
    assert parse_config(tomllib.loads(render_toml(cfg))).notifiers == cfg.notifiers


def test_secret_key_alone_is_encryption_without_a_client_list() -> None:
    cfg = parse_config(with_notifier(curve_secret_key_file="/keys/server.key_secret"))
    assert cfg.notifiers[0].curve_authorized_keys_dir == ""


@pytest.mark.parametrize(("entry", "message"), [
    ({"curve_authorized_keys_dir": "/keys/clients"},
     "f.toml: notifier_config.ns1.curve_authorized_keys_dir: needs curve_secret_key_file"),
    ({"curve_secret_key_file": 7},
     "f.toml: notifier_config.ns1.curve_secret_key_file: expected a string, got 7"),
    ({"curve_authorized_keys_dir": ["/a"]},
     "f.toml: notifier_config.ns1.curve_authorized_keys_dir: expected a string"),
])
def test_errors_name_the_field(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(with_notifier(**entry), "f.toml")
    assert str(e.value).startswith(message), e.value
