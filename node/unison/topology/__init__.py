"""A cluster's shape, shared by local mode (`unison up`) and the Kubernetes operator.

- `spec`: a UnisonCluster manifest -> validated ClusterSpec (`load_cluster`, `parse_cluster`);
- `plan`: ClusterSpec's datacenters -> one NodePlan (name, role, ports, NodeConfig) per node;
  the one source of node names and ports.
"""
