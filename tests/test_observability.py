"""Worker metrics without a broker: a real engine on tiny rule sets, an injected registry, the exposition parsed back.

Each test reads ``/metrics`` as Prometheus would (``text_string_to_metric_families`` on ``exposition()``), so names,
labels and values are checked as exported, not as held in memory.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine_kit import MIN, interactions, resume, rules, traffic
from rules.engine import Engine, EngineConfig
from rules.plan import Plan
from rules.policy import Outputs
from streams.live.observability import WorkerMetrics
from streams.live.processor import ProcessorStats

NOW = 1_800_000_000.0  # the metrics' wall clock in these tests
STATES = ("inactive", "pending", "firing", "insufficient")

VALUES = """
version: 1
name: t
features: ["f"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
  - {id: slower, tier: investigate, metric: latency_p95, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     baseline: 2m, keep_firing_for: 0s}
  - {id: latency-drift, tier: investigate, drift: {detector: page_hinkley, signal: latency_ms,
     params: {min_instances: 5}}, keep_firing_for: 0s}
"""


def one_rule(tier: str = "kill", extra: str = "") -> str:
    keep = ", keep_firing_for: 0s" if tier == "investigate" else ""
    return f"""
version: 1
name: t
features: ["*"]
rules:
  - {{id: errors, tier: {tier}, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 5{keep}{extra}}}
"""


class Harness:
    """An engine with metrics attached, fed like the processor feeds it (outputs counted per step)."""

    def __init__(self, text: str, *, max_groups: int = 50, config: EngineConfig | None = None) -> None:
        self.engine = Engine(rules(text), config or EngineConfig(allowed_lateness_ms=0))
        self.metrics = WorkerMetrics(CollectorRegistry(), self.engine, max_groups=max_groups, app_id="rg-test",
                                     version="9.9.9", clock=lambda: NOW)  # fmt: skip
        self.engine.observer = self.metrics.observe
        self.outputs = Outputs()

    def feed(self, items) -> Harness:
        out = self.engine.step(list(items))
        self.metrics.published(out)
        self.outputs.extend(out)
        return self

    def scrape(self) -> list:
        return list(text_string_to_metric_families(self.metrics.exposition().decode()))


def samples(families, name: str, **labels: str) -> dict[frozenset, float]:
    """Samples called ``name`` whose labels include ``labels``: {frozenset(all labels): value}."""
    return {frozenset(s.labels.items()): s.value for f in families for s in f.samples
            if s.name == name and labels.items() <= s.labels.items()}  # fmt: skip


def one(families, name: str, **labels: str) -> float | None:
    """The single matching sample's value, None when absent."""
    found = samples(families, name, **labels)
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return next(iter(found.values()), None)


def states(families, **labels: str) -> dict[str, float]:
    return {s: one(families, "rollguard_rule_state", state=s, **labels) for s in STATES}


def latency_traffic(minutes: list[float]) -> list:
    return [e for m, lat in enumerate(minutes) for e in interactions(m, 20, latency=lat)]


# --- rule series ----------------------------------------------------------------------------------------------------

RULE_CASES = [
    # name, events, rule, expected value, compared, threshold, samples, state
    ("calm minute: rate 0, inactive", traffic("...."), "errors", 0.0, 0.0, 0.5, 20, "inactive"),
    ("bad minute: rate 1, firing", traffic("..x."), "errors", 1.0, 1.0, 0.5, 20, "firing"),
    ("empty minute: no value, insufficient", traffic("..._."), "errors", None, None, 0.5, 0, "insufficient"),
    ("baseline: compared is the relative change", latency_traffic([100, 100, 100, 200, 200]), "slower",
     pytest.approx(200, rel=0.01), pytest.approx(1.0, rel=0.02), 0.5, 20, "firing"),
]  # fmt: skip


@pytest.mark.parametrize("name, events, rule, value, compared, threshold, n, state", RULE_CASES,
                         ids=[c[0] for c in RULE_CASES])  # fmt: skip
def test_rule_series_carry_the_latest_evaluation(name, events, rule, value, compared, threshold, n, state):
    fams = Harness(VALUES).feed(events).scrape()
    labels = {"feature": "f", "phase": "p", "ruleset": "t", "rule": rule, "group": ""}
    assert one(fams, "rollguard_rule_value", **labels) == value
    assert one(fams, "rollguard_rule_compared", **labels) == compared
    assert one(fams, "rollguard_rule_threshold", **labels) == threshold
    assert one(fams, "rollguard_rule_samples", **labels) == n
    assert states(fams, **labels) == {s: 1.0 if s == state else 0.0 for s in STATES}
    last_instant = max(e.ts for e in events) // MIN * MIN  # the watermark (lateness 0) passed it
    assert one(fams, "rollguard_rule_evaluated_timestamp_seconds", **labels) == last_instant / 1000


def test_rule_labels_name_tier_and_metric_as_written():
    fams = Harness(VALUES).feed(latency_traffic([100] * 12)).scrape()
    got = {(dict(k)["rule"], dict(k)["tier"], dict(k)["metric"]) for k in samples(fams, "rollguard_rule_samples")}
    assert got == {("errors", "kill", "error_rate"), ("slower", "investigate", "latency_p95"),
                   ("latency-drift", "investigate", "drift:page_hinkley:latency_ms")}  # fmt: skip


def test_drift_rules_have_a_value_but_no_threshold_nor_compared():
    fams = Harness(VALUES).feed(latency_traffic([100] * 12)).scrape()
    drift = {"rule": "latency-drift"}
    assert one(fams, "rollguard_rule_value", **drift) is not None
    assert one(fams, "rollguard_rule_threshold", **drift) is None
    assert one(fams, "rollguard_rule_compared", **drift) is None
    assert sum(states(fams, **drift).values()) == 1


def test_group_label_values_are_escaped_and_parse_back():
    h = Harness(one_rule("investigate", ", group_by: [platform]"))
    odd = 'a "quoted"\\ value'
    h.feed(e for m in range(3) for e in interactions(m, 10, segment={"platform": odd}))
    fams = h.scrape()
    assert set(dict(k)["group"] for k in samples(fams, "rollguard_rule_samples")) == {f"platform={odd}"}


# --- feature series -------------------------------------------------------------------------------------------------

TIER_CASES = [
    # name, rule tier, events, tier value, latch, firing rules
    ("calm", "kill", traffic("...."), 0, None, 0),
    ("a kill fires and latches", "kill", traffic("..xx"), 3, "kill", 1),
    ("the kill latch outlives the incident", "kill", traffic("..xx...."), 3, "kill", 1),
    ("an operator resume clears it", "kill", [*traffic("..xx.."), resume(6)], 0, None, 0),
    ("a pause latches at tier 2", "pause", traffic("..xx"), 2, "pause", 1),
    ("investigate fires without latch", "investigate", traffic("..x."), 1, None, 1),
    ("investigate resolves", "investigate", traffic("..x..."), 0, None, 0),
]  # fmt: skip


@pytest.mark.parametrize("name, tier, events, value, latch, firing", TIER_CASES, ids=[c[0] for c in TIER_CASES])
def test_feature_tier_latch_and_firing_rules(name, tier, events, value, latch, firing):
    fams = Harness(one_rule(tier)).feed(events).scrape()
    fp = {"feature": "f", "phase": "p"}
    assert one(fams, "rollguard_feature_tier", **fp) == value
    assert {lt: one(fams, "rollguard_feature_latch", latch=lt, **fp) for lt in ("pause", "kill")} == {
        lt: 1.0 if lt == latch else 0.0 for lt in ("pause", "kill")}  # fmt: skip
    assert one(fams, "rollguard_feature_firing_rules", **fp) == firing


def test_watermark_series_use_the_engine_watermark_and_the_wall_clock():
    h = Harness(one_rule()).feed(traffic("..."))
    wm = h.engine.watermark("f") / 1000
    fams = h.scrape()
    assert one(fams, "rollguard_feature_watermark_timestamp_seconds", feature="f") == wm
    assert one(fams, "rollguard_watermark_delay_seconds", feature="f") == NOW - wm


# --- cardinality cap ------------------------------------------------------------------------------------------------


def platforms(errors: dict[str, list[int]], minutes: int = 4) -> list:
    """10 interactions a minute on platforms a-d; ``errors[p]`` lists the minutes where platform p fails."""
    evs = [e for m in range(minutes) for p in "abcd" for e in
           interactions(m, 10, errors=10 if m in errors.get(p, []) else 0, segment={"platform": p})]  # fmt: skip
    return sorted(evs, key=lambda e: e.ts)  # in time order: with lateness 0 an older event would be late


OVERFLOW_CASES = [
    # name, cap, failing minutes per platform, groups kept, overflow state counts
    ("calm: the first groups in sorted order", 2, {}, {"platform=a", "platform=b"}, {"inactive": 2}),
    ("firing first, then pending, then sorted", 2, {"d": [1, 2], "c": [2]}, {"platform=d", "platform=c"},
     {"inactive": 2}),
    ("firing groups beyond the cap are counted", 1, {"d": [1, 2], "b": [1, 2]}, {"platform=b"},
     {"firing": 1, "inactive": 2}),
    ("no overflow under the cap", 4, {"a": [2]}, {"platform=a", "platform=b", "platform=c", "platform=d"}, None),
]  # fmt: skip


@pytest.mark.parametrize("name, cap, errors, kept, overflow", OVERFLOW_CASES, ids=[c[0] for c in OVERFLOW_CASES])
def test_groups_beyond_the_cap_fold_into_overflow(name, cap, errors, kept, overflow):
    h = Harness(one_rule("investigate", ", for: 1m, group_by: [platform]"), max_groups=cap)
    fams = h.feed(platforms(errors)).scrape()
    groups = {dict(k)["group"] for k in samples(fams, "rollguard_rule_samples")}
    assert groups == kept | ({"__overflow__"} if overflow else set())
    folded = 4 - len(kept)
    assert one(fams, "rollguard_metrics_series_dropped") == folded
    if overflow:
        ov = {"group": "__overflow__"}
        assert states(fams, **ov) == {s: float(overflow.get(s, 0)) for s in STATES}
        assert one(fams, "rollguard_rule_samples", **ov) == 10 * folded
        assert one(fams, "rollguard_rule_value", **ov) is None and one(fams, "rollguard_rule_threshold", **ov) == 0.5


# --- forget, reload -------------------------------------------------------------------------------------------------


def test_forget_drops_the_rule_series_of_features_no_longer_owned():
    h = Harness(one_rule()).feed([*traffic("...", feature="f"), *traffic("...", feature="g")])
    assert {dict(k)["feature"] for k in samples(h.scrape(), "rollguard_rule_samples")} == {"f", "g"}
    h.metrics.forget({"f"})
    assert {dict(k)["feature"] for k in samples(h.scrape(), "rollguard_rule_samples")} == {"g"}
    assert h.metrics.features() == {"g"}


@pytest.mark.parametrize("new_rule, kept", [
    (one_rule(), True),  # the same rule: its series stays until the next evaluation
    (one_rule().replace("min_samples: 5", "min_samples: 7"), False),  # changed: dropped
    (one_rule().replace("id: errors", "id: other"), False),  # gone: dropped
])  # fmt: skip
def test_a_reload_sets_the_version_and_drops_series_of_changed_rules(new_rule, kept):
    h = Harness(one_rule()).feed(traffic("..."))
    before = one(h.scrape(), "rollguard_rules_info", version=h.engine.plan.version[:12])
    plan = Plan(rules(new_rule))
    h.metrics.clock = lambda: NOW + 60
    h.metrics.rules_loaded(plan)
    fams = h.scrape()
    assert before == 1 and one(fams, "rollguard_rules_info", version=plan.version[:12]) == 1
    assert one(fams, "rollguard_rules_loaded_timestamp_seconds") == NOW + 60
    assert (one(fams, "rollguard_rule_samples", rule="errors") is not None) == kept


# --- counters -------------------------------------------------------------------------------------------------------


def test_counters_match_what_the_engine_counted_and_produced():
    # two features killed in the same event-time hour with at most one kill an hour: the second is held
    h = Harness(one_rule(), config=EngineConfig(allowed_lateness_ms=0, max_kills_per_hour=1))
    f_events, g_events = traffic("..xx..", feature="f"), traffic("...xx.", feature="g")
    h.feed(f_events).feed(g_events)
    h.feed([f_events[-1], g_events[-1]])  # duplicates
    h.feed(interactions(0, 3, feature="f", prefix="old-"))  # late
    h.feed([resume(7, feature="f")])
    h.metrics.processor_stats = ProcessorStats(messages=9, batches=4, retries=1, invalid={"invalid_json": 2})
    fams = h.scrape()
    out = h.outputs
    assert one(fams, "rollguard_events_total", type="interaction") == len(f_events) + len(g_events)
    assert one(fams, "rollguard_events_total", type="control") == 1
    assert one(fams, "rollguard_events_total", type="feedback") == 0
    assert one(fams, "rollguard_duplicate_events_total") == 2 == h.engine.stats.duplicates
    assert one(fams, "rollguard_late_events_total") == 3 == h.engine.stats.late
    decisions = Counter((d["transition"], d["tier"]) for d in out.decisions)
    assert decisions[("held", "kill")] == 1 and decisions[("firing", "kill")] == 1
    published = samples(fams, "rollguard_decisions_total")
    assert {(dict(k)["transition"], dict(k)["tier"]): v for k, v in published.items()} == decisions
    assert {dict(k)["action"]: v for k, v in samples(fams, "rollguard_commands_total").items()} == {"rollback": 1}
    pages = Counter((p["payload"]["severity"], p["event_action"]) for p in out.pages)
    assert {(dict(k)["severity"], dict(k)["action"]): v for k, v in samples(fams, "rollguard_pages_total").items()} \
        == pages and pages[("critical", "trigger")] == 2  # the kill's page and the breaker's  # fmt: skip
    assert one(fams, "rollguard_breaker_held_total") == 1
    assert one(fams, "rollguard_messages_total") == 9
    assert one(fams, "rollguard_batches_total") == 4
    assert one(fams, "rollguard_batch_failures_total") == 1
    assert one(fams, "rollguard_invalid_events_total", reason="invalid_json") == 2


def test_clock_outliers_and_held_events_are_exported():
    h = Harness(one_rule(), config=EngineConfig(allowed_lateness_ms=0))
    evs = traffic("......")
    h.feed(evs)
    fams = h.scrape()
    assert one(fams, "rollguard_clock_outliers_total", direction="ahead") == 0
    ahead = interactions(0, 1, prefix="skewed-")[0]
    ahead.ts = evs[-1].ts + 86_400_000
    behind = interactions(0, 1, prefix="old-")[0]
    behind.ts = 0
    h.feed([ahead, behind])
    fams = h.scrape()
    assert one(fams, "rollguard_clock_held_events") == 1  # a day ahead: held until its stream says
    assert one(fams, "rollguard_clock_outliers_total", direction="behind") == 1 == h.engine.stats.outliers["behind"]
    h.feed(interactions(6, 5, prefix="more-"))  # five messages at the stream's own time contradict it
    fams = h.scrape()
    assert one(fams, "rollguard_clock_held_events") == 0
    assert one(fams, "rollguard_clock_outliers_total", direction="ahead") == 1


# --- health ---------------------------------------------------------------------------------------------------------


def test_batch_and_redis_histograms_observe():
    m = Harness(one_rule()).metrics
    m.batch_done(0.25, {"in:0": 9})
    with m.redis_timer("commit"):
        pass
    fams = list(text_string_to_metric_families(m.exposition().decode()))
    assert one(fams, "rollguard_batch_duration_seconds_count") == 1
    assert one(fams, "rollguard_batch_duration_seconds_sum") == 0.25
    assert one(fams, "rollguard_batch_duration_seconds_bucket", le="0.25") == 1
    assert one(fams, "rollguard_batch_duration_seconds_bucket", le="0.1") == 0
    assert one(fams, "rollguard_redis_duration_seconds_count", op="commit") == 1
    assert one(fams, "rollguard_redis_duration_seconds_count", op="load") == 0


def test_lag_is_highwater_minus_next_offset_per_assigned_partition():
    m = Harness(one_rule()).metrics
    m.assigned = lambda: {("in", 0), ("in", 1), ("in", 2), ("in", 3)}
    marks = {("in", 0): 50, ("in", 1): None, ("in", 2): 0, ("in", 3): 30}
    m.highwater = lambda topic, part: marks[(topic, part)]
    m.set_positions({("in", 3): 12})  # from Redis at assignment
    m.batch_done(0.01, {"in:0": 41, "in:1": 7, "other:5": 3})
    fams = list(text_string_to_metric_families(m.exposition().decode()))
    lag = {dict(k)["partition"]: v for k, v in samples(fams, "rollguard_consumer_lag", topic="in").items()}
    assert lag == {"0": 8, "2": 0, "3": 18}  # 1: high watermark unknown yet
    assert one(fams, "rollguard_assigned_partitions") == 4


def test_degraded_ready_and_last_state_write():
    m = Harness(one_rule()).metrics
    scrape = lambda: list(text_string_to_metric_families(m.exposition().decode()))  # noqa: E731
    assert not m.ready()  # nothing assigned yet
    assert one(scrape(), "rollguard_last_state_write_timestamp_seconds") is None
    m.assigned = lambda: {("in", 0)}
    assert m.ready() and one(scrape(), "rollguard_degraded") == 0
    m.batch_failed()
    assert not m.ready() and one(scrape(), "rollguard_degraded") == 1
    m.state_written()
    m.batch_done(0.01, {})
    assert m.ready() and one(scrape(), "rollguard_degraded") == 0
    assert one(scrape(), "rollguard_last_state_write_timestamp_seconds") == NOW
    assert one(scrape(), "rollguard_worker_info", app_id="rg-test", version="9.9.9") == 1


SPEC_FAMILIES = {
    "rollguard_rule_value", "rollguard_rule_compared", "rollguard_rule_threshold", "rollguard_rule_resolve_threshold",
    "rollguard_rule_threshold_high",
    "rollguard_rule_interval_low", "rollguard_rule_interval_high", "rollguard_rule_arm_value", "rollguard_rule_arm_samples",
    "rollguard_rule_condition_value", "rollguard_rule_condition_threshold",
    "rollguard_rule_samples",
    "rollguard_rule_state", "rollguard_rule_evaluated_timestamp_seconds",
    "rollguard_feature_tier", "rollguard_feature_latch", "rollguard_feature_firing_rules",
    "rollguard_feature_starved_rules", "rollguard_promotion_verdict", "rollguard_promotion_signoffs_missing",
    "rollguard_watermark_delay_seconds", "rollguard_feature_watermark_timestamp_seconds",
    "rollguard_events", "rollguard_invalid_events", "rollguard_late_events", "rollguard_duplicate_events",
    "rollguard_messages", "rollguard_decisions", "rollguard_commands", "rollguard_pages", "rollguard_breaker_held",
    "rollguard_batches", "rollguard_batch_failures", "rollguard_clock_outliers", "rollguard_clock_held_events",
    "rollguard_batch_duration_seconds", "rollguard_redis_duration_seconds", "rollguard_consumer_lag",
    "rollguard_last_state_write_timestamp_seconds", "rollguard_rules_info", "rollguard_rules_loaded_timestamp_seconds",
    "rollguard_assigned_partitions", "rollguard_degraded", "rollguard_worker_info", "rollguard_metrics_series_dropped",
}  # fmt: skip


def test_the_exposition_has_exactly_the_spec_families_all_prefixed():
    h = Harness(VALUES).feed(traffic("..x."))
    h.metrics.processor_stats = ProcessorStats()
    h.metrics.state_written()
    fams = h.scrape()
    assert {f.name for f in fams} == SPEC_FAMILIES
    assert all(s.name.startswith("rollguard_") for f in fams for s in f.samples)
    types = {f.name: f.type for f in fams}
    assert {n for n, t in types.items() if t == "counter"} == {"rollguard_" + c for c in (
        "events", "invalid_events", "late_events", "duplicate_events", "messages", "decisions", "commands", "pages",
        "breaker_held", "batches", "batch_failures", "clock_outliers")}  # fmt: skip
    assert {n for n, t in types.items() if t == "histogram"} == {"rollguard_batch_duration_seconds",
                                                                "rollguard_redis_duration_seconds"}  # fmt: skip


# --- HTTP endpoint --------------------------------------------------------------------------------------------------


def test_http_endpoint_serves_metrics_and_probes():
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import CONTENT_TYPE_LATEST

    from streams.metrics_server import metrics_app

    h = Harness(one_rule()).feed(traffic("..xx"))
    h.metrics.assigned = lambda: {("in", 0)}

    async def probe() -> list[tuple[str, int, str]]:
        got = []
        async with TestClient(TestServer(metrics_app(h.metrics.exposition, h.metrics.ready))) as client:
            for path in ("/metrics", "/healthz", "/ready"):
                r = await client.get(path)
                got.append((path, r.status, r.headers["Content-Type"]))
                if path == "/metrics":
                    body = await r.text()
            h.metrics.batch_failed()
            r = await client.get("/ready")
            got.append(("/ready degraded", r.status, ""))
        assert 'rollguard_feature_tier{feature="f",phase="p"} 3.0' in body
        return got

    got = asyncio.run(probe())
    assert [(p, s) for p, s, _ in got] == [("/metrics", 200), ("/healthz", 200), ("/ready", 200),
                                           ("/ready degraded", 503)]  # fmt: skip
    assert got[0][2] == CONTENT_TYPE_LATEST


def test_a_taken_port_disables_the_endpoint_but_not_the_worker(caplog):
    from streams.metrics_server import MetricsServer

    async def start_on_taken_port() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = MetricsServer(lambda: b"", "127.0.0.1", taken.getsockname()[1], lambda: True)
            await server.on_start()  # logs, does not raise
            await server.on_stop()

    asyncio.run(start_on_taken_port())
    assert "metrics endpoint disabled: cannot listen on 127.0.0.1" in caplog.text
