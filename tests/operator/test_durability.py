"""spec.storage.walFsyncInterval under kopf's real runner against kmock's emulator: setting
it puts storage_config.wal_fsync_interval in every node's TOML and rolls every StatefulSet
(the config hash changes); "0s" brings back the synced default's exact objects; a value
the CRD would refuse (the emulator does not check the schema) is reported naming the field
and touches no child."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from unison.topology.spec import parse_cluster
from unison_operator.render import CONFIG_HASH_ANNOTATION, allocation_from_status, render

from .conftest import (
    NS,
    ApiServerEmulator,
    as_sent,
    eventually,
    example,
    live,
    running_operator,
    tls_data,
    writes,
)
from .test_operator import all_children, cluster_status, create, handled, patch_cluster

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

PARTS = ("dc1", "dc2", "relayer")


def intervals(k8s: Any) -> dict[str, str | None]:
    data = live(k8s, "ConfigMap", "ad-campaign-config")["data"]
    return {part: tomllib.loads(data[f"{part}.toml"])["storage_config"].get(
        "wal_fsync_interval") for part in PARTS}


def config_hashes(k8s: Any) -> dict[str, str]:
    return {part: live(k8s, "StatefulSet", f"ad-campaign-{part}")["spec"]["template"][
        "metadata"]["annotations"][CONFIG_HASH_ANNOTATION] for part in PARTS}


def assert_stored_as_rendered(k8s: Any) -> None:
    cluster = live(k8s, "UnisonCluster", "ad-campaign")
    expected = render(parse_cluster(cluster), "ad-campaign", NS, "uid-ad-campaign",
                      ports=allocation_from_status(cluster["status"]["ports"]),
                      tls=tls_data(k8s))
    for obj in expected:
        assert as_sent(live(k8s, obj["kind"], obj["metadata"]["name"])) == obj


async def test_the_interval_reaches_every_node_and_rolls_every_pod(k8s: Any) -> None:
    async with running_operator(k8s):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s), "every child object")
        await eventually(lambda: handled(k8s, "ad-campaign-dc1"), "the creation handled")
        assert intervals(k8s) == {part: None for part in PARTS}  # synced by default
        synced = config_hashes(k8s)

        await patch_cluster(k8s, {"spec": {"storage": {"walFsyncInterval": "200ms"}}})
        await eventually(lambda: intervals(k8s) == {part: "200ms" for part in PARTS},
                         "every node's TOML in interval mode")
        await eventually(lambda: handled(k8s, "200ms"), "the update handled")
        rolled = config_hashes(k8s)
        assert all(rolled[part] != synced[part] for part in PARTS), (synced, rolled)
        assert_stored_as_rendered(k8s)

        await patch_cluster(k8s, {"spec": {"storage": {"walFsyncInterval": "0s"}}})
        await eventually(lambda: intervals(k8s) == {part: None for part in PARTS},
                         "every node's TOML synced again")
        await eventually(lambda: handled(k8s, '"0s"'), "the update handled")
        assert config_hashes(k8s) == synced
        assert_stored_as_rendered(k8s)


async def test_a_bad_interval_is_reported_naming_the_field(k8s: Any) -> None:
    doc = example()
    doc["spec"]["storage"] = {"walFsyncInterval": "1.5s"}
    async with running_operator(k8s):
        await create(k8s, doc)
        status = await eventually(
            lambda: (s := cluster_status(k8s)).get("phase") == "Invalid" and s, "Invalid")
        ready = [c for c in status["conditions"] if c["type"] == "Ready"][0]
        assert ready["message"].startswith("spec.storage.walFsyncInterval: expected a duration")
        assert writes(k8s) == []
