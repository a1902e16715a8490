"""Kubernetes operator for UnisonCluster resources (kopf).

- `spec`: parse/validate a UnisonCluster (also used by local mode, `unison up`);
- `render`: pure spec -> Kubernetes objects; `render_cli`: `unison render FILE`;
- `handlers`: kopf handlers (apply children, status, events); `kube`: the REST client;
- `run`: `unison operator [--namespace NS | --all-namespaces]`.
"""
