"""Kubernetes operator for UnisonCluster resources (kopf).

The UnisonCluster parser and the cluster plan live in the data plane (`unison.topology`),
shared with local mode (`unison up`); this package imports them, never the reverse.

- `render`: pure spec -> Kubernetes objects; `render_cli`: `unison render FILE`;
- `handlers`: kopf handlers (apply children, status, events); `kube`: the REST client;
- `run`: `unison operator [--namespace NS | --all-namespaces]`.
"""
