"""The CRD's schema is the one source of truth for the UnisonCluster's shape; the parser
(unison.topology.spec, which `unison up` uses where no API server checks the schema) must
agree with it. These tests walk the schema, so a field added to one and not the other, a
range or an enum changed in one place only, or a pattern that drifted, fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from unison.errors import SpecError
from unison.topology.spec import parse_cluster

from tests.unit.test_crd import SCHEMA, example

Path = tuple[str | int, ...]


def _leaves(node: dict[str, Any], path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, schema node) of every property under `node`, arrays entered at index 0."""
    for name, sub in node.get("properties", {}).items():
        yield (*path, name), sub
        if sub.get("type") == "object":
            yield from _leaves(sub, (*path, name))
        elif sub.get("type") == "array" and sub["items"].get("type") == "object":
            yield from _leaves(sub["items"], (*path, name, 0))


SPEC = SCHEMA["properties"]["spec"]
FIELDS = list(_leaves(SPEC, ("spec",)))
OBJECTS = [(("spec",), SPEC)] + [(p, n) for p, n in FIELDS if n.get("properties")]
OBJECTS += [((*p, 0), n["items"]) for p, n in FIELDS
            if n.get("type") == "array" and n["items"].get("properties")]


def text(path: Path) -> str:
    out = ""
    for token in path:
        out += f"[{token}]" if isinstance(token, int) else f".{token}"
    return out.lstrip(".")


def with_value(path: Path, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example())
    node: Any = doc
    for token, following in zip(path[:-1], path[1:], strict=True):
        if isinstance(node, dict) and token not in node:
            node[token] = [] if isinstance(following, int) else {}
        node = node[token]
    node[path[-1]] = value
    return doc


def parser_error(doc: dict[str, Any]) -> str | None:
    try:
        parse_cluster(doc)
    except SpecError as e:
        return str(e)
    return None


def schema_accepts(doc: dict[str, Any]) -> bool:
    return not list(jsonschema.Draft7Validator(SCHEMA).iter_errors(doc))


@pytest.mark.parametrize("path,node", OBJECTS, ids=[text(p) for p, _ in OBJECTS])
def test_every_object_knows_exactly_the_schemas_fields(path: Path, node: dict[str, Any]) -> None:
    unknown = with_value((*path, "notAField"), 1)
    error = parser_error(unknown)
    assert error and f"{text(path)}.notAField: unknown field" in error, error
    known = set(node["properties"])
    listed = error.split("known fields: ", 1)[1].rstrip(")").split(", ")
    assert set(listed) == known, (text(path), sorted(listed), sorted(known))


RANGES = [(p, n) for p, n in FIELDS if n.get("type") == "integer"
          and ("minimum" in n or "maximum" in n)]


@pytest.mark.parametrize("path,node", RANGES, ids=[text(p) for p, _ in RANGES])
def test_integer_ranges_agree(path: Path, node: dict[str, Any]) -> None:
    """Just outside a bound both refuse it as out of range; on the bound neither does (the
    parser may still refuse it for a cross-field reason, e.g. no room for notifier ports)."""
    out_of_range = f"{text(path)}: must be between"
    for bound, outside in (("minimum", -1), ("maximum", 1)):
        if bound not in node:
            continue
        doc = with_value(path, node[bound] + outside)
        assert not schema_accepts(doc)
        error = parser_error(doc)
        assert error and error.startswith(out_of_range), (bound, error)
        on_bound = with_value(path, node[bound])
        assert schema_accepts(on_bound)
        error = parser_error(on_bound)
        assert error is None or not error.startswith(out_of_range), (bound, error)


ENUMS = [(p, n) for p, n in FIELDS if "enum" in n]


@pytest.mark.parametrize("path,node", ENUMS, ids=[text(p) for p, _ in ENUMS])
def test_enums_agree(path: Path, node: dict[str, Any]) -> None:
    for member in node["enum"]:
        assert parser_error(with_value(path, member)) is None, member
    wrong = with_value(path, "NotAMember")
    error = parser_error(wrong)
    assert not schema_accepts(wrong) and error and error.startswith(text(path)), error


STRINGS = [(p, n) for p, n in FIELDS if n.get("type") == "string" and "enum" not in n]
PROBES = ["", "a", "dc9", "x" * 64, "a b", "UPPER", "-lead", "trail-", "a.b", "a_b", "1Gi",
          "0.5", "10M", "unison:0.1.0", "registry.example/unison@sha256:abc", "Ünïcode"]


@pytest.mark.parametrize("path,node", STRINGS, ids=[text(p) for p, _ in STRINGS])
def test_string_rules_agree(path: Path, node: dict[str, Any]) -> None:
    """For every probe, the schema refuses it exactly when the parser refuses it for that
    field (other fields' cross-checks, such as a follow list naming a datacenter, aside)."""
    drift = []
    for probe in PROBES:
        doc = with_value(path, probe)
        error = parser_error(doc)
        parser_refuses = error is not None and error.startswith(text(path))
        if schema_accepts(doc) == parser_refuses:
            drift.append(f"{probe!r}: schema {'accepts' if schema_accepts(doc) else 'refuses'}"
                         f", parser says {error}")
    assert not drift, "\n".join(drift)
