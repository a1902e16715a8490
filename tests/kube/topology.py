"""The test cluster's fixed names and addresses. All of them live inside the network
namespace the harness makes, so they cannot clash with anything on the host."""

NETNS_PREFIX = "unison-kube-"  # + the pid of the test process that owns the namespace
NODE_NAME = "unison-node"
NODE_IP = "10.201.0.1"  # the node's only address, on a link inside the namespace
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
API_URL = "https://127.0.0.1:6443"  # as the node's own processes reach the API server
DNS_IP = NODE_IP  # kubelet's clusterDNS: tests/kube/addons.py answers here
PAUSE_IMAGE = "registry.k8s.io/pause:unison"
