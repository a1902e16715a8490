"""`unison operator [--namespace NS ... | --all-namespaces] [--verbose]`: run the operator.

kopf does the watching, retries and event posting underneath (`kopf.run`); the
handlers come from `unison_operator.handlers.make_registry`. The operator runs
standalone (one replica, no kopf peering objects needed).

kopf and the Kubernetes client are the `operator` extra, so this module imports them only
once the arguments are read: without them `unison operator` says how to install them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Distribution names as pip knows them: the `operator` extra of pyproject.toml.
OPERATOR_DEPENDENCIES = ("kopf", "kubernetes")
INSTALL_HINT = "pip install 'unison[operator]' (from a checkout: pip install -e '.[operator]')"


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
    return parser


def missing_dependencies() -> list[str]:
    """The operator's dependencies that cannot be imported here."""
    missing = []
    for name in OPERATOR_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_dependencies()
    if missing:
        sys.stderr.write(f"unison operator: {' and '.join(missing)} not installed (the operator "
                         f"extra); install with: {INSTALL_HINT}\n")
        return 2
    import kopf

    from .handlers import OperatorConfig, make_registry
    from .kube import KubeClient

    kopf.configure(verbose=args.verbose)
    logging.getLogger("unison_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
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
