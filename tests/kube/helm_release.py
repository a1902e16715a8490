"""Install or uninstall a Helm release with Helm's own engine (helm-python-sdk), as
`helm install` / `helm uninstall` would. Run as a separate process inside the cluster's
network namespace: the engine is Go code whose threads must all see the API server.

    python tests/kube/helm_release.py install --kubeconfig K --namespace N --release R \\
        --chart charts/unison-operator --values '{"watch": {"allNamespaces": false}}'
    python tests/kube/helm_release.py uninstall --kubeconfig K --namespace N --release R
"""

from __future__ import annotations

import argparse
import json
import sys

import helm_python as helm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["install", "uninstall"])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--chart", help="chart directory (install)")
    p.add_argument("--values", default="{}", help="values as JSON (install)")
    p.add_argument("--timeout", type=int, default=300, help="seconds to wait for readiness")
    args = p.parse_args()
    try:
        with helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as cfg:
            if args.action == "install":
                cfg.install(args.chart, args.release, json.loads(args.values),
                            namespace=args.namespace, create_namespace=True,
                            wait="watcher", timeout=args.timeout)
            else:
                cfg.uninstall(args.release, wait="watcher", timeout=args.timeout)
    except helm.HelmError as e:
        print(f"helm {args.action} {args.release}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
