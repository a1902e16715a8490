"""Invalid UnisonClusters on a real API server: what the CRD's schema and CEL rules can
judge is refused by `kubectl apply` with the field named; what only the operator can judge
is accepted, then reported as a Warning Event and an Invalid phase naming the field, and
no child is made.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.kube.cluster import Cluster
from tests.kube.e2e import Operator, apply, children, example, get_uc, wait_until

NS = "invalid"


@pytest.fixture(scope="module")
def ns(cluster: Cluster, operator: Operator) -> Cluster:
    cluster.kubectl("create", "namespace", NS)
    return cluster


def variant(name: str, change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example(name))
    change(doc["spec"])
    return doc


def _dc(i: int, **fields: Any) -> Any:
    return lambda spec: spec["datacenters"][i].update(fields)


# (case, change to the example's spec, what the API server's error must name)
REJECTED_BY_API = [
    ("no-datacenters", lambda s: s.update(datacenters=[]), "spec.datacenters"),
    ("reserved-name", _dc(0, name="relayer"), "spec.datacenters[0].name"),
    ("bad-name", _dc(1, name="DC_2"), "spec.datacenters[1].name"),
    ("no-namespaces", _dc(0, namespaces=[]), "spec.datacenters[0].namespaces"),
    ("shared-namespace", _dc(1, namespaces=["ad-campaign-dc1"]), "spec.datacenters"),
    ("follow-unknown", lambda s: s["relayer"].update(follow=["dc1", "dc9"]),
     "spec.relayer.follow"),
    ("too-many-relayers", lambda s: s["relayer"].update(replicas=10), "spec.relayer.replicas"),
    ("bad-size", _dc(0, storage={"size": "lots"}), "spec.datacenters[0].storage.size"),
    ("bad-policy", _dc(0, storage={"reclaimPolicy": "Sometimes"}),
     "spec.datacenters[0].storage.reclaimPolicy"),
    ("unknown-pull-policy", lambda s: s.update(imagePullPolicy="Sometimes"),
     "spec.imagePullPolicy"),
    ("low-notifier-port", lambda s: s["relayer"].update(notifierBasePort=80),
     "spec.relayer.notifierBasePort"),
    ("client-port-type", lambda s: s["client"].update(statePort="8090"),
     "spec.client.statePort"),
]


@pytest.mark.parametrize("case,change,field", REJECTED_BY_API,
                         ids=[c[0] for c in REJECTED_BY_API])
def test_rejected_by_the_api_server(ns: Cluster, case: str, change: Any, field: str) -> None:
    r = apply(ns, variant(f"bad-{case}", change), NS, check=False)
    assert r.returncode != 0, f"{case}: accepted\n{r.stdout}"
    assert field in r.stderr, f"{case}: the error does not name {field}:\n{r.stderr}"
    # Each error names its field; the one exception is the API server's own notice that
    # CEL rules were skipped because the schema already failed.
    unnamed = [line for line in r.stderr.splitlines()
               if "<nil>" in line and "some validation rules were not checked" not in line]
    assert not unnamed, r.stderr
    assert ns.kubectl("-n", NS, "get", "unisoncluster", f"bad-{case}",
                      check=False).returncode != 0, "a refused object exists"


# Valid for the schema, refused by the operator's own checks.
REJECTED_BY_OPERATOR = [
    ("notifier-clash", lambda s: s["relayer"].update(notifierBasePort=8002),
     "spec.relayer.notifierBasePort"),
    ("zero-size", _dc(1, storage={"size": "0Gi"}), "spec.datacenters[1].storage.size"),
    ("bad-selector", _dc(0, nodeSelector={"-bad key-": "x"}),
     "spec.datacenters[0].nodeSelector"),
]


@pytest.mark.parametrize("case,change,field", REJECTED_BY_OPERATOR,
                         ids=[c[0] for c in REJECTED_BY_OPERATOR])
def test_reported_by_the_operator(ns: Cluster, case: str, change: Any, field: str) -> None:
    name = f"op-{case}"
    r = apply(ns, variant(name, change), NS, check=False)
    assert r.returncode == 0, f"{case}: the API server refused it already:\n{r.stderr}"

    def reported() -> dict[str, Any] | None:
        st = get_uc(ns, name, NS).get("status") or {}
        return st if st.get("phase") == "Invalid" else None

    status = wait_until(f"{case}: phase Invalid", reported, 60)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec", ready
    assert field in ready["message"], ready
    events = ns.get_json("-n", NS, "events", "--field-selector",
                         f"involvedObject.name={name},reason=InvalidSpec")["items"]
    assert events and field in events[0]["message"], events
    for kind in ("statefulsets", "services", "configmaps"):
        assert children(ns, kind, name, NS) == [], f"{case}: a {kind} was made"

    ns.kubectl("-n", NS, "delete", "unisoncluster", name)
