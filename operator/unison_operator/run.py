"""`unison operator [--namespace NS ... | --all-namespaces] [--verbose]`: run the operator.

kopf does the watching, retries and event posting underneath (`kopf.run`); the
handlers come from `unison_operator.handlers.make_registry`. The operator runs
standalone (one replica, no kopf peering objects needed).
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from .handlers import OperatorConfig, make_registry
from .kube import KubeClient


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


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
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
