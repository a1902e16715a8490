"""After every other real-Kubernetes test: the API server's audit log shows that each
operator's requests carried its ServiceAccount's identity and none was forbidden (403),
and that no request at all was anonymous."""

from __future__ import annotations

from collections import Counter

from tests.kube.cluster import Cluster
from tests.kube.conftest import SUMMARY
from tests.kube.e2e import audit_events

# The cluster-wide release (and the plain manifest, same names) and the namespaced one.
OPERATORS = ("system:serviceaccount:unison-system:unison-operator",
             "system:serviceaccount:team-a:team-unison-operator")


def test_no_forbidden_or_anonymous_request(cluster: Cluster) -> None:
    anonymous = audit_events(cluster, "system:anonymous")
    assert not anonymous, [f"{e['verb']} {e['requestURI']}" for e in anonymous[:10]]
    seen = 0
    for user in OPERATORS:
        events = audit_events(cluster, user)
        seen += len(events)
        codes = Counter(e.get("responseStatus", {}).get("code") for e in events)
        SUMMARY.append(f"audit log: {user}: {len(events)} requests, by status "
                       f"{dict(sorted(codes.items(), key=str))}")
        forbidden = [f"{e['verb']} {e['requestURI']}" for e in events
                     if e.get("responseStatus", {}).get("code") == 403]
        assert not forbidden, f"{user} was refused {len(forbidden)} times: {forbidden[:10]}"
    # Run alone, it still needs one operator's work to judge (the README test installs it).
    assert seen > 20, f"the operators made {seen} requests: did any run?"
