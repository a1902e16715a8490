"""`unison operator [--namespace NS ... | --all-namespaces] [--verbose] [--log-format json]`:
run the operator.

kopf does the watching, retries and event posting underneath (`kopf.run`); the
handlers come from `unison_operator.handlers.make_registry`. The operator runs
standalone (one replica, no kopf peering objects needed).

kopf and the Kubernetes client are the `operator` extra, so this module imports them only
once the arguments are read: without them `unison operator` says how to install them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Mapping

from unison.logs import FORMATS, JsonFormatter, setup_logging

# Distribution names as pip knows them: the `operator` extra of pyproject.toml.
OPERATOR_DEPENDENCIES = ("kopf", "kubernetes")
INSTALL_HINT = "pip install 'unison[operator]' (from a checkout: pip install -e '.[operator]')"
LOG_FORMAT_ENV = "UNISON_LOG_FORMAT"  # as for the client: the flag wins over it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unison operator",
        description="Reconcile UnisonCluster resources into StatefulSets, Services and the "
                    "client Deployment.")
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="watch UnisonClusters in this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch UnisonClusters in every namespace")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                        help="liveness endpoint served by kopf ('' to disable; default "
                             "%(default)s)")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="text (the default) or json: one JSON object per line, with the "
                             f"UnisonCluster a line is about under 'object' (env {LOG_FORMAT_ENV})")
    return parser


def log_format(flag: str | None, env: Mapping[str, str]) -> str:
    """The flag, else the environment, else text; ValueError naming a bad env value."""
    if flag is not None:
        return flag
    value = env.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={env[LOG_FORMAT_ENV]!r}: expected "
                         f"{' or '.join(FORMATS)}")
    return value


class ObjectJsonFormatter(JsonFormatter):
    """unison.logs' JSON lines, plus the Kubernetes object kopf attaches to a record
    (kopf's per-object loggers carry it as `k8s_ref`), so a line can be found by cluster."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ref = getattr(record, "k8s_ref", None)
        if not isinstance(ref, dict):
            return line
        doc = json.loads(line)
        doc["object"] = {k: v for k, v in ref.items() if v}
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(fmt: str, verbose: bool) -> None:
    """Text: kopf's own set-up, as before. JSON: unison.logs' set-up, which node and
    client share, with kopf's quieting of asyncio's debug chatter."""
    level = logging.DEBUG if verbose else logging.INFO
    if fmt == "json":
        setup_logging(level, "json")
        for handler in logging.getLogger().handlers:
            handler.setFormatter(ObjectJsonFormatter())
        asyncio_log = logging.getLogger("asyncio")
        asyncio_log.propagate = False
        asyncio_log.handlers[:] = [logging.NullHandler()]
    else:
        import kopf

        kopf.configure(verbose=verbose)
    logging.getLogger("unison_operator").setLevel(level)


def missing_dependencies() -> list[str]:
    """The operator's dependencies that cannot be imported here."""
    missing = []
    for name in OPERATOR_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fmt = log_format(args.log_format, os.environ if env is None else env)
    except ValueError as e:
        sys.stderr.write(f"unison operator: {e}\n")
        return 2
    missing = missing_dependencies()
    if missing:
        sys.stderr.write(f"unison operator: {' and '.join(missing)} not installed (the operator "
                         f"extra); install with: {INSTALL_HINT}\n")
        return 2
    import kopf

    from .handlers import OperatorConfig, make_registry
    from .kube import KubeClient

    configure_logging(fmt, args.verbose)
    try:
        client = KubeClient.from_environment()
    except Exception as e:  # kubernetes.config raises several types for missing configs
        sys.stderr.write(f"unison operator: no Kubernetes credentials (neither in-cluster nor "
                         f"kubeconfig): {e}\n")
        return 2
    registry = make_registry(OperatorConfig(client_factory=lambda: client))
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness or None,
    )
    return 0
