"""`unison render FILE [--namespace NS]`: print the manifests the operator would apply.

The output is multi-document YAML for review or GitOps. Objects carry no owner
references (there is no live UnisonCluster to point at); everything else is exactly
what the operator writes, except the TLS Secret `<name>-tls` (spec.tls.enabled, the
default): keys are never printed, so the pods mount a Secret the operator makes (or you
provide: ca.crt, and <part>.crt/<part>.key per datacenter and the relayer).
"""

from __future__ import annotations

import argparse
import sys

import yaml
from unison.topology.spec import SpecError, load_cluster

from .render import render


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the node TOML) as literal blocks, so they read as files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="unison render",
        description="Print the Kubernetes objects for a UnisonCluster manifest as YAML.")
    parser.add_argument("file", help="YAML file holding one UnisonCluster")
    parser.add_argument("-n", "--namespace", default=None,
                        help="namespace of the objects (default: the manifest's, else 'default')")
    args = parser.parse_args(argv)
    try:
        cluster = load_cluster(args.file)
    except SpecError as e:
        sys.stderr.write(f"unison render: {e}\n")
        return 2
    namespace = args.namespace or cluster.namespace or "default"
    assert cluster.name is not None  # load_cluster requires metadata.name
    sys.stdout.write(to_yaml(render(cluster, cluster.name, namespace)))
    if cluster.tls.enabled:
        sys.stderr.write(f"unison render: the pods mount Secret {cluster.name}-tls (the "
                         "cluster's CA and node keys), which is not printed: the operator "
                         "makes it\n")
    return 0
