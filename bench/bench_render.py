"""Operator render time for a 10-datacenter UnisonCluster.

What the operator does on every reconcile before it talks to Kubernetes: validate the
spec and render every object (ConfigMap with 11 TOML files, Services, StatefulSets,
PDBs, the client). Timed in-process over many iterations; p50 and p99 per iteration.

    python -m bench.run --only render
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.report import Outcome, percentile


@dataclass(frozen=True)
class RenderSizes:
    iterations: int
    datacenters: int = 10
    warmup: int = 5


SIZES = {
    "smoke": RenderSizes(iterations=20, warmup=2),
    "full": RenderSizes(iterations=500),
}


def cluster_manifest(datacenters: int) -> dict[str, Any]:
    """A UnisonCluster with `datacenters` primaries, all followed by the relayer."""
    dcs = [{"name": f"dc{i}", "namespaces": [f"ad-campaign-dc{i}"]}
           for i in range(1, datacenters + 1)]
    return {
        "apiVersion": "unisondb.io/v1alpha1",
        "kind": "UnisonCluster",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "datacenters": dcs,
            "relayer": {"follow": [d["name"] for d in dcs]},
            "client": {"enabled": True},
        },
    }


def run(profile: str) -> Outcome:
    from unison.topology.spec import parse_cluster
    from unison_operator.render import render

    sizes = SIZES[profile]
    manifest = cluster_manifest(sizes.datacenters)
    objects: list[dict[str, Any]] = []
    durations: list[float] = []
    for i in range(sizes.warmup + sizes.iterations):
        t0 = time.perf_counter()
        spec = parse_cluster(manifest)
        objects = render(spec, "bench", "default", uid="00000000-0000-0000-0000-000000000000")
        if i >= sizes.warmup:
            durations.append((time.perf_counter() - t0) * 1000.0)
    kinds: dict[str, int] = {}
    for o in objects:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    return Outcome(
        metrics={
            "render_p50_ms": percentile(durations, 50),
            "render_p99_ms": percentile(durations, 99),
            "objects": float(len(objects)),
        },
        samples={"parse + render (10 datacenters)": durations},
        params={"iterations": sizes.iterations, "datacenters": sizes.datacenters},
        notes=[f"parse_cluster + render per iteration, {sizes.iterations} iterations; "
               f"{len(objects)} objects: "
               + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))],
    )
