"""What the Prometheus metrics cost a worker, measured in one process (not a test): ``./dev bench metrics_cost``.

``bench/worker.py`` compares whole workers with and without ``/metrics`` scraped every second; on a small shared
machine those runs swing by ±10 % from run to run, more than the 5 % budget they are meant to check. This bench
takes the two parts of the cost apart, with nothing else moving:

* the engine observer (``WorkerMetrics.observe``, called once per rule evaluation): the engine on the same events
  with and without it, best of ``--repeat`` runs each, alternating — and, since that difference is within the
  noise, the observer's own time summed around each call;
* one scrape (``WorkerMetrics.exposition``) of the state that run leaves, i.e. what the worker's loop spends per
  scrape, and that as a share of one CPU at a 1 s and a 15 s scrape interval.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry  # noqa: E402

from rules.engine import Engine  # noqa: E402
from rules.events import EventParser, Pseudonymizer  # noqa: E402
from rules.loader import CATALOG, load_rules  # noqa: E402
from streams.live.observability import WorkerMetrics  # noqa: E402
from streams.offline.scenario import generate, scenario_from_args  # noqa: E402

FEATURES = ("email-reply", "chat-assist", "summarize", "search-answer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=60, help="event time per feature (default 60)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    rulesets = load_rules([str(CATALOG)])
    events = []
    for i, f in enumerate(FEATURES):
        sc = replace(scenario_from_args("latency_spike", duration_ms=f"{args.minutes}m", seed=i), feature=f)
        events += generate(sc)
    events.sort(key=lambda e: e["ts"])
    parser = EventParser(Pseudonymizer(b"bench"))
    items = [parser.parse_obj(e) for e in events]

    def run(observe: bool) -> tuple[float, WorkerMetrics | None, int, float]:
        eng = Engine(rulesets)
        metrics = WorkerMetrics(CollectorRegistry(), eng) if observe else None
        calls, spent = 0, 0.0
        if metrics is not None:
            inner = metrics.observe

            def timed(o) -> None:  # the observer's own time, exactly, whatever the noise around it
                nonlocal calls, spent
                t0 = time.perf_counter()
                inner(o)
                spent += time.perf_counter() - t0
                calls += 1

            eng.observer = timed
        t = time.process_time()
        for i in range(0, len(items), args.batch):
            eng.step(items[i : i + args.batch])
        return time.process_time() - t, metrics, calls, spent

    plain, observed = [], []
    metrics, evaluations, spent = None, 0, 0.0
    for _ in range(args.repeat):
        plain.append(run(False)[0])
        t, metrics, evaluations, spent = run(True)
        observed.append(t)
    base, obs = min(plain), min(observed)
    scrapes = []
    for _ in range(30):
        t = time.perf_counter()
        body = metrics.exposition()
        scrapes.append(time.perf_counter() - t)
    p50 = statistics.median(scrapes)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(f"input:  {len(items):,} events of {len(FEATURES)} features, {args.minutes} min of event time each; "
          f"catalogue ({sum(len(r.rules) for r in rulesets)} rules); CPU time, best of {args.repeat}")
    print(f"engine without observer   {base:7.2f} s   {1e6 * base / len(items):6.1f} us/event   1.000")
    print(f"engine with metrics       {obs:7.2f} s   {1e6 * obs / len(items):6.1f} us/event   {base / obs:.3f}"
          f"   (run-to-run noise included)")
    print(f"observer itself           {spent:7.3f} s   {1e6 * spent / len(items):6.2f} us/event   "
          f"{base / (base + spent):.4f}   ({evaluations:,} rule evaluations, {1e6 * spent / evaluations:.2f} us each)")
    print(f"one scrape                {p50 * 1000:7.2f} ms p50, {max(scrapes) * 1000:.2f} ms max   "
          f"({len(body) / 1024:.0f} KB, {samples:,} samples)")
    print(f"scrape share of one CPU   {100 * p50 / 1:.2f} % at 1 s interval, {100 * p50 / 15:.3f} % at 15 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
