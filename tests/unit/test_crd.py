"""The UnisonCluster CRD: a valid CRD whose schema accepts the example and rejects mistakes.

Plain JSON-schema keywords are checked with jsonschema; the CEL rules
(x-kubernetes-validations) with a CEL interpreter, the way the API server would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from unison.topology.spec import (
    DEFAULT_CLIENT_STATE_PORT,
    DEFAULT_IMAGE,
    DEFAULT_STORAGE_SIZE,
    parse_cluster,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "unisoncluster.yaml"
EXAMPLE = ROOT / "examples" / "ad-campaign.yaml"

CRD = yaml.safe_load(CRD_FILE.read_text())
(VERSION,) = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def _walk(schema: dict[str, Any], value: Any, path: str = ""
          ) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(path, schema node, value) for every value present in the document."""
    yield path, schema, value
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                yield from _walk(schema["properties"][key], sub, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from _walk(schema["additionalProperties"], sub, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, f"{path}[{i}]")


def cel_field_errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of every failing rule, the field as the API server reports it:
    the rule's node joined with its fieldPath."""
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    errors = []
    for path, node, value in _walk(SCHEMA, doc):
        for rule in node.get("x-kubernetes-validations", []):
            program = env.program(env.compile(rule["rule"]))
            if not program.evaluate({"self": celpy.json_to_cel(value)}):
                field = (path + rule.get("fieldPath", "")).lstrip(".")
                errors.append((field, rule["message"]))
    return errors


def cel_errors(doc: dict[str, Any]) -> list[str]:
    return [message for _, message in cel_field_errors(doc)]


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(CRD, kubernetes_validate.utils.latest_version(), strict=True)
    assert CRD["metadata"]["name"] == "unisonclusters.unisondb.io"
    assert CRD["spec"]["names"]["kind"] == "UnisonCluster"
    assert "uc" in CRD["spec"]["names"]["shortNames"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert VERSION["name"] == "v1alpha1" and VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.ready"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_chart_carries_an_identical_copy() -> None:
    copy_in_chart = ROOT / "charts" / "unison-operator" / "crds" / "unisoncluster.yaml"
    if not copy_in_chart.exists():
        pytest.skip("the Helm chart has no CRD copy yet")
    assert yaml.safe_load(copy_in_chart.read_text()) == CRD


def test_every_spec_field_is_typed_and_described() -> None:
    # Structural schema: every node has a type; descriptions make `kubectl explain` useful.
    def check(node: dict[str, Any], path: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for name, sub in node.get("properties", {}).items():
            if path.startswith("spec"):
                assert sub.get("description"), f"{path}.{name} has no description"
            check(sub, f"{path}.{name}")
        if "items" in node:
            check(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            check(node["additionalProperties"], f"{path}.*")

    check(SCHEMA["properties"]["spec"], "spec")
    check(SCHEMA["properties"]["status"], "status")


def test_defaults_agree_with_the_operator() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    dc = spec["datacenters"]["items"]["properties"]
    parsed = parse_cluster(example())
    assert spec["image"]["default"] == DEFAULT_IMAGE
    assert dc["storage"]["properties"]["size"]["default"] == DEFAULT_STORAGE_SIZE
    assert dc["storage"]["properties"]["reclaimPolicy"]["default"] == "Retain"
    assert spec["relayer"]["properties"]["notifierBasePort"]["default"] == (
        parsed.relayer.notifier_base_port)
    assert spec["client"]["properties"]["statePort"]["default"] == DEFAULT_CLIENT_STATE_PORT
    assert spec["relayer"]["properties"]["replicas"]["default"] == parsed.relayer.replicas


def test_example_is_accepted() -> None:
    assert schema_errors(example()) == []


def test_example_passes_the_cel_rules() -> None:
    assert cel_errors(example()) == []


def _mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return doc


SCHEMA_INVALID = [
    ("spec", None),
    ("spec.datacenters", None),
    ("spec.datacenters", []),
    ("spec.datacenters.0.name", "DC1"),
    ("spec.datacenters.0.name", "a-very-long-datacenter-name-over-30"),
    ("spec.datacenters.0.namespaces", []),
    ("spec.datacenters.0.namespaces", ["Not Valid"]),
    ("spec.datacenters.0.storage.size", "a lot"),
    ("spec.datacenters.0.storage.reclaimPolicy", "Keep"),
    ("spec.datacenters.0.resources", {"requests": {"memory": "lots"}}),
    ("spec.relayer.replicas", 0),
    ("spec.relayer.replicas", "1"),
    ("spec.relayer.notifierBasePort", 80),
    ("spec.relayer.follow", []),
    ("spec.client.enabled", "yes"),
    ("spec.imagePullPolicy", "Sometimes"),
    ("spec.logLevel", "chatty"),
    ("spec.image", "has space"),
]


@pytest.mark.parametrize(("path", "value"), SCHEMA_INVALID,
                         ids=[f"{p}={v!r}"[:50] for p, v in SCHEMA_INVALID])
def test_schema_rejects(path: str, value: Any) -> None:
    assert schema_errors(_mutate(example(), path, value))


CEL_INVALID = [
    ("spec.datacenters.1.namespaces", ["ad-campaign-dc1"],
     "a namespace may belong to one datacenter only (spec.datacenters[*].namespaces)",
     "spec.datacenters"),
    ("spec.relayer.follow", ["dc1", "dc3"],
     "every entry must name a datacenter in spec.datacenters", "spec.relayer.follow"),
    ("spec.datacenters.0.name", "relayer",
     "this datacenter name is reserved (relayer, client and config name other parts)",
     "spec.datacenters[0].name"),
    ("metadata.name", "x" * 45,
     "is too long: object names <name>-<datacenter> must stay within 52 characters",
     "metadata.name"),
]


@pytest.mark.parametrize(("path", "value", "message", "field"), CEL_INVALID,
                         ids=[p for p, _, _, _ in CEL_INVALID])
def test_cel_rules_reject_naming_the_field(path: str, value: Any, message: str,
                                          field: str) -> None:
    doc = _mutate(example(), path, value)
    assert schema_errors(doc) == []  # only the CEL rule catches this one
    assert (field, message) in cel_field_errors(doc)


# What the API server accepts in a rule's `reason`.
REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired",
           "FieldValueDuplicate"}


def _rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any],
                                                               dict[str, Any]]]:
    for rule in node.get("x-kubernetes-validations", []):
        yield path, node, rule
    for name, sub in node.get("properties", {}).items():
        yield from _rules(sub, f"{path}.{name}")
    if "items" in node:
        yield from _rules(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _rules(node["additionalProperties"], f"{path}.*")


def resolve_field_path(node: dict[str, Any], field_path: str) -> dict[str, Any]:
    """The schema node a rule's fieldPath names, relative to the rule's node, the way the
    API server checks it when the CRD is written ('.a.b' or "['a']" steps only)."""
    assert field_path.startswith((".", "[")), f"{field_path!r} must start with . or ["
    rest = field_path
    while rest:
        if rest.startswith("."):
            name = rest[1:].split(".")[0].split("[")[0]
            rest = rest[1 + len(name):]
        else:
            assert rest.startswith("['"), f"unsupported step in {field_path!r}"
            name, _, rest = rest[2:].partition("']")
        assert name, f"empty step in {field_path!r}"
        props = node.get("properties", {})
        if name in props:
            node = props[name]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise AssertionError(f"{field_path!r}: no field {name!r} in the schema")
    return node


def test_every_rule_names_an_existing_field_and_a_valid_reason() -> None:
    rules = list(_rules(SCHEMA, ""))
    assert len(rules) >= 4
    for path, node, rule in rules:
        assert "fieldPath" in rule, f"rule at {path or '<root>'} has no fieldPath: {rule['rule']}"
        resolve_field_path(node, rule["fieldPath"])
        assert rule.get("reason", "FieldValueInvalid") in REASONS, rule


def test_field_path_resolution_rejects_missing_fields() -> None:
    spec = SCHEMA["properties"]["spec"]
    assert resolve_field_path(spec, ".relayer.follow")["type"] == "array"
    for bad in (".relayer.folow", "relayer", ".datacenters.name"):
        with pytest.raises(AssertionError):
            resolve_field_path(spec, bad)
