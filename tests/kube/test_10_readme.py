"""The README's Kubernetes section, literally, on a real cluster: the chart installed with
Helm's engine, the operator in-cluster with the chart's ServiceAccount and RBAC,
`kubectl apply -f examples/ad-campaign.yaml`, `kubectl wait` for Ready, the README's
port-forwards, `examples/curl-scenarios.sh`, and the client's /state holding the seed's
converged state.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys

import pytest
from unison.local.scenarios import RELAYER_READS, seed_scenarios

from tests.container.harness import kv_path, unmet
from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    EXAMPLE,
    REPO_ROOT,
    Operator,
    children,
    get_uc,
    http_call,
    phase_summary,
    port_forwards,
    wait_until,
)


def test_readme_flow(cluster: Cluster, operator: Operator) -> None:
    assert shutil.which("curl"), "curl-scenarios.sh needs curl"
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    r = cluster.kubectl("wait", "unisoncluster/ad-campaign",
                        "--for=jsonpath={.status.phase}=Ready", "--timeout=300s",
                        timeout=320, check=False)
    assert r.returncode == 0, (f"not Ready: {r.stderr}\n"
                               f"{phase_summary(get_uc(cluster, 'ad-campaign'))}\n"
                               f"{cluster.diagnose()}\n{operator.logs()[-3000:]}")

    # What `kubectl get unisonclusters` shows a user.
    table = cluster.kubectl("get", "unisonclusters").stdout
    assert "ad-campaign" in table and "Ready" in table, table

    # One pod per datacenter and the relayer (StatefulSets), the client (Deployment).
    pods = children(cluster, "pods", "ad-campaign")
    parts = sorted(p["metadata"]["labels"]["unisondb.io/part"] for p in pods)
    assert parts == ["client", "dc1", "dc2", "relayer"], parts

    # A NetworkPolicy per StatefulSet, accepted by the API server and owned by the cluster:
    # gRPC only from the relayer (datacenters) or the cluster's pods (relayer), HTTP and
    # ZeroMQ open. The test cluster's CNI (bridge) does not enforce NetworkPolicy, so this
    # checks the objects, not the traffic; the port-forwards below never pass through it.
    policies = {p["metadata"]["name"]: p for p in children(cluster, "networkpolicies",
                                                           "ad-campaign")}
    assert sorted(policies) == ["ad-campaign-dc1", "ad-campaign-dc2", "ad-campaign-relayer"]
    for policy in policies.values():
        (owner,) = policy["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("UnisonCluster", "ad-campaign"), owner
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy
    open_ports = {name: [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]
                  for name, policy in policies.items()}
    assert open_ports == {"ad-campaign-dc1": [8001], "ad-campaign-dc2": [8002],
                          "ad-campaign-relayer": [8003, 5555, 5556]}, open_ports
    grpc_from = policies["ad-campaign-dc1"]["spec"]["ingress"][1]["from"]
    assert [f["podSelector"]["matchLabels"]["unisondb.io/part"] for f in grpc_from] == [
        "relayer"], grpc_from

    with port_forwards(cluster, "default",
                       ("ad-campaign-dc1", ["8001:8001"]),
                       ("ad-campaign-dc2", ["8002:8002"]),
                       ("ad-campaign-relayer", ["8003:8003", "5555:5555", "5556:5556"]),
                       ("ad-campaign-client", ["8090:8090"])):
        script = cluster.run("bash", str(REPO_ROOT / "examples" / "curl-scenarios.sh"),
                             timeout=120, check=False)
        assert script.returncode == 0, f"curl-scenarios.sh failed:\n{script.stdout}{script.stderr}"
        assert script.stdout.count('{"success":true}') == 11, script.stdout

        last: list[object] = [None]

        def converged() -> bool:
            status, doc = http_call(cluster, "127.0.0.1", 8090, "GET", "/state")
            last[0] = doc
            if status != 200:
                return False
            # Scenario 2 writes at the script's own `date +%s`000: take that timestamp.
            config = (doc.get("lww") or {}).get("lww:config") or {}
            expects = [e for sc in seed_scenarios(config.get("timestamp", 0))
                       for e in sc.expects]
            return not unmet(expects, doc)

        wait_until("the client's /state equals the seed's converged state", converged, 60,
                   lambda: json.dumps(last[0], indent=1))

        # The seed's last step: read both namespaces back from the read-only relayer.
        for read in RELAYER_READS:
            status, body = http_call(cluster, "127.0.0.1", 8003, "GET",
                                     kv_path(read.namespace, read.key))
            assert status == 200 and body["found"], (read, status, body)
            assert json.loads(base64.b64decode(body["value"])) == read.payload

        # The relayer is read-only, as in the seed.
        status, body = http_call(cluster, "127.0.0.1", 8003, "PUT",
                                 kv_path("ad-campaign-dc1", "lww:x"), {"value": "eA=="})
        assert status == 403, (status, body)


@pytest.mark.parametrize("namespace,port", [("ad-campaign-dc1", 5555),
                                            ("ad-campaign-dc2", 5556)])
def test_notifications_through_port_forward(cluster: Cluster, operator: Operator,
                                            namespace: str, port: int) -> None:
    """A ZeroMQ subscriber on a port-forwarded notifier port sees a write's notification."""
    dc = "ad-campaign-dc1" if namespace.endswith("dc1") else "ad-campaign-dc2"
    http_port = 8001 if namespace.endswith("dc1") else 8002
    subscriber = (
        "import json, sys, zmq\n"
        "s = zmq.Context().socket(zmq.SUB)\n"
        f"s.connect('tcp://127.0.0.1:{port}')\n"
        f"s.setsockopt(zmq.SUBSCRIBE, b'{namespace}')\n"
        "s.setsockopt(zmq.RCVTIMEO, 20000)\n"
        "print('subscribed', flush=True)\n"
        "while True:\n"
        "    topic, body = s.recv_multipart()\n"
        "    msg = json.loads(body)\n"
        "    if msg['key'] == 'counter:notified':\n"
        "        print(topic.decode(), json.dumps(msg), flush=True)\n"
        "        break\n")
    with port_forwards(cluster, "default", (dc, [f"{http_port}:{http_port}"]),
                       ("ad-campaign-relayer", ["8003:8003", f"{port}:{port}"])):
        sub = cluster.popen(sys.executable, "-c", subscriber, pipe=True)
        try:
            assert sub.stdout is not None
            assert sub.stdout.readline().strip() == b"subscribed"
            value = base64.b64encode(json.dumps({"replica": namespace, "count": 1}).encode())

            def write_seen() -> bool:
                # A SUB socket joins asynchronously: write until a notification arrives.
                status, _ = http_call(cluster, "127.0.0.1", http_port, "PUT",
                                      kv_path(namespace, "counter:notified"),
                                      {"value": value.decode()})
                assert status == 200
                return sub.poll() is not None

            wait_until("a notification on the port-forwarded ZeroMQ port", write_seen, 25,
                       every=1.0)
            line = sub.stdout.read().decode()
            topic, _, payload = line.strip().partition(" ")
            msg = json.loads(payload)
            assert topic == f"{namespace}.kv"
            assert msg["namespace"] == namespace and msg["operation"] == "put"
            assert isinstance(msg["seq_num"], int) and msg["seq_num"] > 0
        finally:
            if sub.poll() is None:
                sub.kill()
            sub.wait(5)
