"""Prometheus metrics of one live worker: rule and feature series, counters, health (names: the metrics spec).

``WorkerMetrics`` is fed from three places, none of them per event:

* the engine observer (``Engine.observer = metrics.observe``): one call per rule evaluation — per evaluation instant,
  not per event — that keeps the latest :class:`~rules.engine.Observation` per (feature, phase, rule set, rule,
  group) in plain dicts (:class:`~streams.live.rule_series.RuleSeries`, which also renders them and caps groups);
* the processor, once per batch: duration, Redis round trips, what was published, the partition offsets reached;
* the worker: rules (re)loaded, assigned partitions and the consumer's high watermarks (read at scrape time).

What the engine and processor already count (events by type, late, duplicates, messages, batches) and every
state-like series (tiers, latches, watermarks, lag) is read when Prometheus scrapes, by a custom collector, so
processing pays nothing for them. The registry is injected (no global registry); ``rules/`` never imports this.
``exposition()`` is the whole ``/metrics`` body: the registry's families plus the rule series.

>>> from prometheus_client import CollectorRegistry
>>> from rules.engine import Engine
>>> from rules.loader import load_rules_text
>>> engine = Engine(load_rules_text('''
... version: 1
... name: demo
... features: ["f"]
... rules:
...   - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 2}
... '''))
>>> metrics = WorkerMetrics(CollectorRegistry(), engine)
>>> engine.observer = metrics.observe
>>> b'rollguard_worker_info{app_id="rollguard"' in metrics.exposition()
True
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from rules.engine import Engine
from rules.model import TIER_ORDER
from rules.plan import Plan
from rules.policy import Outputs
from rules.promotion import VERDICTS
from streams.live.rule_series import RuleSeries
from streams.live.status_summary import summary_of

if TYPE_CHECKING:
    from streams.live.processor import ProcessorStats

__all__ = ["WorkerMetrics", "rollguard_version"]

LATCHES = ("pause", "kill")
_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def rollguard_version() -> str:
    try:
        return package_version("rollguard")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class WorkerMetrics:
    """Metrics state of one worker process, exported through ``registry`` (plus the rule series).

    The worker wires the sources only it knows after construction: ``processor_stats`` (the processor's counters),
    ``assigned`` (the input partitions it holds) and ``highwater`` (the consumer's high watermark of a partition,
    None while unknown). Hooks are cheap: dict updates, one histogram observation per batch."""

    def __init__(self, registry: CollectorRegistry, engine: Engine, *, max_groups: int = 50, app_id: str = "rollguard",
                 version: str | None = None, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.registry = registry
        self.engine = engine
        self.rules = RuleSeries(max_groups)
        self.observe = self.rules.observe  # the engine observer, without a call in between
        self.app_id = app_id
        self.version = version or rollguard_version()
        self.clock = clock
        self.processor_stats: ProcessorStats | None = None
        self.assigned: Callable[[], Iterable[tuple[str, int]]] = tuple
        self.highwater: Callable[[str, int], int | None] = lambda topic, partition: None
        self.next_offsets: dict[tuple[str, int], int] = {}  # next offset to process per input partition
        self.decisions: dict[tuple[str, str], int] = {}  # (transition, tier) -> published
        self.commands: dict[str, int] = {}  # action -> published
        self.pages: dict[tuple[str, str], int] = {}  # (severity, action) -> published
        self.breaker_held = 0
        self.degraded = False
        self.last_state_write: float | None = None
        self.rules_version = engine.plan.version[:12]
        self.rules_loaded_at = clock()
        self.batch_duration = _Histogram(_BATCH_BUCKETS)
        self.redis_duration = {op: _Histogram(_REDIS_BUCKETS) for op in ("load", "claim", "commit")}
        registry.register(_Collector(self))

    def exposition(self) -> bytes:
        """The ``/metrics`` body (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry) + self.rules.render().encode()

    def forget(self, features: Iterable[str]) -> None:
        """Drop the rule series of features this worker no longer owns (their new owner exports them)."""
        self.rules.forget(features)

    def features(self) -> set[str]:
        return self.rules.features()

    # --- processor hooks (once per batch) -----------------------------------------------------------------------

    def batch_done(self, seconds: float, offsets: dict[str, int]) -> None:
        """A batch was committed: its duration and the highest offset applied per ``topic:partition``."""
        self.batch_duration.observe(seconds)
        nxt = self.next_offsets
        for tp, off in offsets.items():
            topic, _, part = tp.rpartition(":")
            nxt[(topic, int(part))] = off + 1
        self.degraded = False

    def batch_failed(self) -> None:
        self.degraded = True

    def redis_timer(self, op: str) -> AbstractContextManager:
        """``with metrics.redis_timer("load"): await store.load(...)`` observes the round trip's duration."""
        return _Timer(self.redis_duration[op])

    def state_written(self) -> None:
        self.last_state_write = self.clock()

    def published(self, out: Outputs) -> None:
        """Count what reached the output topics (one dict update per record; outputs are few per batch)."""
        for d in out.decisions:
            k = (d["transition"], d["tier"])
            self.decisions[k] = self.decisions.get(k, 0) + 1
            if d["transition"] == "held":
                self.breaker_held += 1
        for c in out.commands:
            self.commands[c["action"]] = self.commands.get(c["action"], 0) + 1
        for p in out.pages:
            k = (p["payload"]["severity"], p["event_action"])
            self.pages[k] = self.pages.get(k, 0) + 1

    # --- worker hooks -------------------------------------------------------------------------------------------

    def rules_loaded(self, plan: Plan) -> None:
        """The worker (re)loaded its rules: new version; series of rules that are gone or changed are dropped (an
        unchanged rule keeps its series until its next evaluation)."""
        self.rules_version = plan.version[:12]
        self.rules_loaded_at = self.clock()
        self.rules.prune(plan)

    def set_positions(self, offsets: dict[tuple[str, int], int]) -> None:
        """Next offsets to process, e.g. read from Redis when partitions are assigned (before any batch)."""
        self.next_offsets.update(offsets)

    def ready(self) -> bool:
        """Readiness: input partitions assigned and the last batch committed (Redis reachable)."""
        return bool(tuple(self.assigned())) and not self.degraded


class _Collector:
    """Builds the feature, counter and health families at scrape time, on the worker's event loop (engine state is
    not locked). The rule series are rendered by :class:`~streams.live.rule_series.RuleSeries`."""

    def __init__(self, m: WorkerMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        yield from self._features()
        yield from self._counters()
        yield from self._health()

    def _features(self) -> Iterator[Metric]:
        m, eng = self.m, self.m.engine
        tier = GaugeMetricFamily("rollguard_feature_tier", "0 ok, 1 investigate, 2 pause, 3 kill: highest firing "
                                 "tier or latch", labels=["feature", "phase"])  # fmt: skip
        latch = GaugeMetricFamily("rollguard_feature_latch", "1 while the phase is latched at that tier",
                                  labels=["feature", "phase", "latch"])  # fmt: skip
        firing = GaugeMetricFamily("rollguard_feature_firing_rules", "Firing rule instances",
                                   labels=["feature", "phase"])  # fmt: skip
        starved = GaugeMetricFamily("rollguard_feature_starved_rules", "Rule instances with too little data to "
                                    "decide for longer than max_starved", labels=["feature", "phase"])  # fmt: skip
        verdict = GaugeMetricFamily("rollguard_promotion_verdict", "1 for a promotion block's current verdict (ready, "
                                    "blocked, inconclusive), 0 for the others", labels=["feature", "phase", "ruleset",
                                                                                       "to", "verdict"])  # fmt: skip
        missing = GaugeMetricFamily("rollguard_promotion_signoffs_missing", "Sign-off roles a promotion still waits "
                                    "for", labels=["feature", "phase", "ruleset"])  # fmt: skip
        delay = GaugeMetricFamily("rollguard_watermark_delay_seconds", "Wall clock minus the feature's event-time "
                                  "watermark", labels=["feature"])  # fmt: skip
        mark = GaugeMetricFamily("rollguard_feature_watermark_timestamp_seconds", "The feature's event-time "
                                 "watermark", labels=["feature"])  # fmt: skip
        now = m.clock()
        for feature in sorted(eng.features):
            summary = summary_of(eng, feature, eng.features[feature])
            for phase, p in summary["phases"].items():
                tier.add_metric([feature, phase], TIER_ORDER[p["tier"]])
                for lt in LATCHES:
                    latch.add_metric([feature, phase, lt], 1 if p["latch"] == lt else 0)
                firing.add_metric([feature, phase], sum(1 for r in p["rules"] if r["state"] == "firing"))
                starved.add_metric([feature, phase], len(p.get("starved", ())))
                for pr in p.get("promotions", ()):  # rules.promotion: the last verdict of each block
                    for v in VERDICTS:
                        verdict.add_metric([feature, phase, pr["ruleset"], pr["to"], v], 1 if pr["verdict"] == v else 0)
                    missing.add_metric([feature, phase, pr["ruleset"]], len(pr["signoffs"]["missing"]))
            wm = eng.watermark(feature)
            if wm is not None:
                delay.add_metric([feature], now - wm / 1000)
                mark.add_metric([feature], wm / 1000)
        yield from (tier, latch, firing, starved, verdict, missing, delay, mark)

    def _counters(self) -> Iterator[Metric]:
        m, st = self.m, self.m.engine.stats
        events = CounterMetricFamily("rollguard_events", "Events applied by the engine", labels=["type"])
        for typ in ("interaction", "feedback", "control"):
            events.add_metric([typ], st.events.get(typ, 0))
        yield events
        yield CounterMetricFamily("rollguard_late_events", "Events older than their source's late bound",
                                  value=st.late)  # fmt: skip
        yield CounterMetricFamily("rollguard_duplicate_events", "Events whose id was already applied",
                                  value=st.duplicates)  # fmt: skip
        outliers = CounterMetricFamily("rollguard_clock_outliers", "Events quarantined as ts_outlier: their time "
                                       "was implausible for their stream", labels=["direction"])  # fmt: skip
        for direction in ("ahead", "behind"):
            outliers.add_metric([direction], st.outliers.get(direction, 0))
        yield outliers
        held = sum(len(c.held) for fs in m.engine.features.values() for c in fs.clocks.values())
        yield GaugeMetricFamily("rollguard_clock_held_events", "Events held until their stream confirms their time",
                                value=held)  # fmt: skip
        ps = m.processor_stats
        if ps is not None:
            invalid = CounterMetricFamily("rollguard_invalid_events", "Dead-lettered inputs by reason",
                                          labels=["reason"])  # fmt: skip
            for reason, n in sorted(ps.invalid.items()):
                invalid.add_metric([reason], n)
            yield invalid
            yield CounterMetricFamily("rollguard_messages", "Kafka messages consumed", value=ps.messages)
            yield CounterMetricFamily("rollguard_batches", "Batches committed", value=ps.batches)
            yield CounterMetricFamily("rollguard_batch_failures", "Batch attempts that failed and were retried",
                                      value=ps.retries)  # fmt: skip
        decisions = CounterMetricFamily("rollguard_decisions", "Decisions published", labels=["transition", "tier"])
        for (tr, tier), n in sorted(m.decisions.items()):
            decisions.add_metric([tr, tier], n)
        commands = CounterMetricFamily("rollguard_commands", "Commands published", labels=["action"])
        for action, n in sorted(m.commands.items()):
            commands.add_metric([action], n)
        pages = CounterMetricFamily("rollguard_pages", "Pages published", labels=["severity", "action"])
        for (sev, action), n in sorted(m.pages.items()):
            pages.add_metric([sev, action], n)
        yield from (decisions, commands, pages)
        yield CounterMetricFamily("rollguard_breaker_held", "Kills held by the kill breaker", value=m.breaker_held)

    def _health(self) -> Iterator[Metric]:
        m = self.m
        batch = HistogramMetricFamily("rollguard_batch_duration_seconds", "Processing time of one batch, parse to "
                                      "state commit")  # fmt: skip
        batch.add_metric([], *m.batch_duration.export())
        yield batch
        redis = HistogramMetricFamily("rollguard_redis_duration_seconds", "Redis round trips of the processor: state "
                                      "load (features, kill breaker), ownership claim before publishing, and commit", labels=["op"])  # fmt: skip
        for op, h in m.redis_duration.items():
            redis.add_metric([op], *h.export())
        yield redis
        assigned = sorted(m.assigned())
        lag = GaugeMetricFamily("rollguard_consumer_lag", "High watermark minus the next offset to process",
                                labels=["topic", "partition"])  # fmt: skip
        for topic, part in assigned:
            hw, nxt = m.highwater(topic, part), m.next_offsets.get((topic, part))
            if hw is not None and (nxt is not None or hw == 0):
                lag.add_metric([topic, str(part)], max(0, hw - (nxt or 0)))
        yield lag
        if m.last_state_write is not None:
            yield GaugeMetricFamily("rollguard_last_state_write_timestamp_seconds", "Wall clock of the last "
                                    "successful Redis commit", value=m.last_state_write)  # fmt: skip
        info = GaugeMetricFamily("rollguard_rules_info", "The loaded rule plan", labels=["version"])
        info.add_metric([m.rules_version], 1)
        yield info
        yield GaugeMetricFamily("rollguard_rules_loaded_timestamp_seconds", "Wall clock when the rules were "
                                "(re)loaded", value=m.rules_loaded_at)  # fmt: skip
        yield GaugeMetricFamily("rollguard_assigned_partitions", "Input topic partitions assigned",
                                value=len(assigned))  # fmt: skip
        yield GaugeMetricFamily("rollguard_degraded", "1 while a failed batch is being retried",
                                value=1 if m.degraded else 0)  # fmt: skip
        worker = GaugeMetricFamily("rollguard_worker_info", "One per worker process", labels=["app_id", "version"])
        worker.add_metric([m.app_id, m.version], 1)
        yield worker


class _Histogram:
    """Bucket counts of a duration, exported at scrape time (no lock, no ``_created`` series: one loop owns it)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf only
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def export(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets, sum) as ``HistogramMetricFamily.add_metric`` takes them."""
        out, n = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts):
            n += c
            out.append((floatToGoString(bound), n))
        return out, self.total


class _Timer:
    """``with _Timer(histogram): ...`` observes the block's wall-clock duration, also when it raises."""

    __slots__ = ("h", "t0")

    def __init__(self, h: _Histogram) -> None:
        self.h = h

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.h.observe(time.perf_counter() - self.t0)
