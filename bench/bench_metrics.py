"""The cost of recording one HTTP request's duration, the node's hand-written histogram
(`unison.api.metrics.RequestCounter`) against prometheus_client's Histogram, which every
request would otherwise pay. Medians of several rounds, microseconds per request.

    python -m bench.bench_metrics
"""

from __future__ import annotations

import statistics
import timeit

from prometheus_client import CollectorRegistry, Histogram
from unison.api.metrics import DURATION_BUCKETS, RequestCounter

ROUTE = "/api/v1/{ns}/kv/{key}"


def per_call_us(fn: object, number: int = 100_000, rounds: int = 5) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def main() -> None:
    ours = RequestCounter()
    hist = Histogram("bench_request_seconds", "bench", ["method", "route"],
                     registry=CollectorRegistry(), buckets=DURATION_BUCKETS)
    child = hist.labels("PUT", ROUTE)
    rows = [
        ("RequestCounter.add (ours: count by status + duration)",
         per_call_us(lambda: ours.add("PUT", ROUTE, 200, 0.003))),
        ("prometheus_client Histogram.labels(...).observe",
         per_call_us(lambda: hist.labels("PUT", ROUTE).observe(0.003))),
        ("prometheus_client Histogram child .observe (cached)",
         per_call_us(lambda: child.observe(0.003))),
        ("empty call (the floor)", per_call_us(lambda: None)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.2f} us")


if __name__ == "__main__":
    main()
