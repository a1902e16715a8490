"""The OpenAPI 3 description of the node's HTTP API, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from unison import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_NS = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "Namespace (one RocksDB database), e.g. ad-campaign-dc1."}
_KEY = {"name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": "Key, URL-encoded (`/` as %2F); taken after URL-decoding."}
_NOT_FOUND = _error("Unknown namespace: `namespace not found: X`.")
_BAD = _error("Invalid request; the message names the field (and batch index).")
_READ_ONLY = _error("The namespace is read-only on this node (relayer).")
_TOO_LARGE = _error("Request body over `http_config.max_body_size`.")
_WRITE_ERRORS = {"400": _BAD, "403": _READ_ONLY, "404": _NOT_FOUND, "413": _TOO_LARGE,
                 "500": _error("Internal error (logged on the node)."),
                 "503": _error("The node is shutting down.")}


_VALUE_BODY = {"type": "object", "required": ["value"],
               "properties": {"value": {"type": "string", "format": "byte"}}}


def _key_paths() -> dict[str, Any]:
    """Single keys and the atomic batch."""
    return {
        "/api/v1/{namespace}/kv/{key}": {
            "parameters": [_NS, _KEY],
            "put": {
                "summary": "Write a key; answered once the write is durable.",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _VALUE_BODY}}},
                "responses": {"200": _json(_ref("Success"), "Written."), **_WRITE_ERRORS},
            },
            "get": {
                "summary": "Read a key.",
                "responses": {
                    "200": _json(_ref("Value"), "The value; a missing key answers "
                                                "`{\"value\": \"\", \"found\": false}`."),
                    "400": _BAD, "404": _NOT_FOUND},
            },
            "delete": {
                "summary": "Delete a key; answered once the delete is durable.",
                "responses": {"200": _json(_ref("Success"), "Deleted."), **_WRITE_ERRORS},
            },
        },
        "/api/v1/{namespace}/kv/batch": {
            "parameters": [_NS],
            "post": {
                "summary": "Put items or delete keys atomically (all or nothing).",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [_ref("BatchPut"), _ref("BatchDelete")]}}}},
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "success": {"type": "boolean"}, "count": {"type": "integer"}}},
                        "Applied."),
                    **_WRITE_ERRORS},
            },
        },
    }


def _namespace_paths() -> dict[str, Any]:
    """Scan, offset, stats and the change watch of a namespace."""
    return {
        "/api/v1/{namespace}/kv": {
            "parameters": [_NS],
            "get": {
                "summary": "Scan keys by prefix in key order; page with `after`.",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"},
                     "description": "Return keys strictly after this one."},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": 10000,
                        "default": 1000}},
                ],
                "responses": {"200": _json(_ref("ScanPage"), "One page of items."),
                              "400": _BAD, "404": _NOT_FOUND},
            },
        },
        "/api/v1/{namespace}/offset": {
            "parameters": [_NS],
            "get": {"summary": "Latest LSN of the namespace.",
                    "responses": {"200": _json({"type": "object", "properties": {
                        "namespace": {"type": "string"}, "lsn": {"type": "integer"}}},
                        "Offset."), "404": _NOT_FOUND}},
        },
        "/api/v1/{namespace}/stats": {
            "parameters": [_NS],
            "get": {"summary": "LSNs and counters of the namespace (and its follower "
                               "and notifier, where present).",
                    "responses": {"200": _json({"type": "object"}, "Stats."),
                                  "404": _NOT_FOUND}},
        },
        "/api/v1/{namespace}/watch": {
            "parameters": [_NS],
            "get": {
                "summary": "Server-sent events of committed changes, resumable by LSN.",
                "parameters": [{"name": "from_lsn", "in": "query",
                                "schema": {"type": "integer", "minimum": 0}}],
                "responses": {
                    "200": {"description": "Event stream: `id: <lsn>`, `data: "
                                           "{key, namespace, operation, entry_type, "
                                           "seq_num}`.",
                            "content": {"text/event-stream": {"schema": {
                                "type": "string"}}}},
                    "404": _NOT_FOUND,
                    "410": _error("from_lsn is older than the retained log."),
                },
            },
        },
    }


def _node_paths() -> dict[str, Any]:
    """Converged CRDT reads, health, readiness, metrics and this document."""
    return {
        "/crdt/{key}": {
            "parameters": [_KEY],
            "get": {
                "summary": "A CRDT key (lww:, counter:, pncounter:) merged across every "
                           "namespace this node holds, with each namespace's LSN.",
                "responses": {"200": _json(_ref("Converged"), "The merged value."),
                              "400": _BAD},
            },
        },
        "/healthz": {"get": {"summary": "200 while the process is up.",
                             "responses": {"200": _json({"type": "object"}, "Alive.")}}},
        "/readyz": {"get": {
            "summary": "200 when storage is open and, on a relayer, every upstream is "
                       "caught up.",
            "responses": {"200": _json(_ref("Ready"), "Ready."),
                          "503": _json(_ref("Ready"), "Not ready; `reasons` says why.")}}},
        "/metrics": {"get": {"summary": "Prometheus text exposition.", "responses": {
            "200": {"description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document.", "responses": {
            "200": _json({"type": "object"}, "OpenAPI 3 document.")}}},
    }


def _schemas() -> dict[str, Any]:
    return {
        "Converged": {"type": "object", "properties": {
            "key": {"type": "string"},
            "type": {"type": "string", "enum": ["lww", "counter", "pncounter"]},
            "found": {"type": "boolean"},
            "value": {"type": "object", "nullable": True,
                      "description": "As the client's /state shows this key."},
            "namespaces": {"type": "object", "additionalProperties": {
                "type": "object", "properties": {
                    "lsn": {"type": "integer"}, "found": {"type": "boolean"},
                    "skipped": {"type": "string"}}}}}},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Success": {"type": "object", "properties": {"success": {"type": "boolean"}}},
        "Value": {"type": "object", "properties": {
            "value": {"type": "string", "format": "byte"}, "found": {"type": "boolean"}}},
        "BatchPut": {"type": "object", "required": ["operation", "items"], "properties": {
            "operation": {"type": "string", "enum": ["put"]},
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["key", "value"], "properties": {
                    "key": {"type": "string", "minLength": 1},
                    "value": {"type": "string", "format": "byte"}}}}}},
        "BatchDelete": {"type": "object", "required": ["operation", "keys"], "properties": {
            "operation": {"type": "string", "enum": ["delete"]},
            "keys": {"type": "array", "minItems": 1,
                     "items": {"type": "string", "minLength": 1}}}},
        "ScanPage": {"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"}, "value": {"type": "string", "format": "byte"}}}},
            "count": {"type": "integer"}, "more": {"type": "boolean"}}},
        "Ready": {"type": "object", "properties": {
            "ready": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}}}},
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Unison node HTTP API",
            "version": __version__,
            "description": "UnisonDB-compatible key/value API (values base64 in JSON), plus "
                           "scan, offsets, change watch, health and metrics.",
        },
        "paths": {**_key_paths(), **_namespace_paths(), **_node_paths()},
        "components": {"schemas": _schemas()},
    }
