"""Every panel query of every committed dashboard, run by a real Prometheus that scraped a live worker through an
incident, returns data; and the tier and rule-state series show the incident.

One run serves both tests: a worker on the embedded stack with the rule catalogue (the rule packs the dashboards
are generated from) and ``ROLLGUARD_METRICS_PORT`` set, a Prometheus scraping it every second, and generated traffic
for every phase the packs cover, with an error burst in closed beta that the catalogue kills. The traffic goes in
three parts, each waited for until Prometheus has scraped its effect: the clean part before the burst (tier below
kill), twelve minutes into the burst (tier kill, the kill rule firing), then the rest in slices a second apart so
counters grow across scrapes. Panels are then queried the way Grafana draws them: range queries over the run
(instant queries at its end for instant targets), template variables at their *All* default. Every failure is
collected before the test fails, so one run lists them all.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dashboards.queries import PanelQuery, expand, panel_queries, variables
from rules.events import parse_ts
from rules.loader import CATALOG, load_rules
from rules.metric_names import COHORT_METRICS, cohort_span_ms, parse_metric
from rules.metrics import metric_sources
from streams.offline.scenario import Incident, Platform, Scenario, generate
from tests.live_kit import LiveWorker, merge_offsets, produce, produce_raw, read_topic, setup_topics, wait_processed
from tests.prometheus_kit import PrometheusServer, free_port, require_prometheus

pytestmark = pytest.mark.slow

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
FEATURE = "email-reply"
PHASES = ("internal", "closed_beta", "regional_expansion", "segment_targeting", "eu_launch", "general_availability")
START = 1_793_658_600_000  # 2026-11-02T22:30:00Z: the run crosses midnight, where the once-a-day rules evaluate
BURST = Incident("error_burst", start=START + 50 * 60_000, duration_ms=20 * 60_000, magnitude=0.15)
BURST_PART_END = BURST.start + 12 * 60_000  # the kill has fired by then and its rule is still firing
# The catalogue's packs cover six phases of email-reply; each phase gets its own traffic, shaped so that the rules
# evaluate with data within the run (~180K events in all): users in business hours (UTC+12), platforms, plans and
# regions split evenly (the `across` rules compare them), reviews after ~10 minutes instead of ~2 hours. Closed beta
# runs on past midnight and carries the incident: a 15% error burst that crosses the 10% rollback line
# (llmops-alerting) within minutes; the other phases stop just after midnight, internal dogfooding is smaller.
_SHAPE = dict(start=START, utc_offset_hours=12.0, review_delay_ms=600_000,
              platforms=(Platform("desktop", 0.5, 1.0, 0.32), Platform("mobile", 0.5, 1.15, 0.27)),
              plans=(("enterprise", 0.5), ("growth", 0.5)), regions=(("us-east", 0.5), ("us-west", 0.5)))  # fmt: skip
# Three phases also run one experiment each of the `experiments` pack, at its configured split, without a regression
# (its comparisons evaluate with both arms, nothing fires): the events carry `variant`.
_ARMS = {"regional_expansion": ("model-upgrade", 0.10), "segment_targeting": ("prompt-canary", 0.05),
         "eu_launch": ("prompt-ab", 0.10)}  # fmt: skip
SCENARIOS = tuple(
    Scenario(feature=FEATURE, phase=phase, seed=7 + i, duration_ms=2 * 3_600_000, mean_rate_per_s=2.0,
             incidents=(BURST,), **_SHAPE)
    if phase == "closed_beta" else
    Scenario(feature=FEATURE, phase=phase, seed=7 + i, duration_ms=95 * 60_000,
             mean_rate_per_s=0.5 if phase == "internal" else 1.5,
             **{**_SHAPE, **({"regions": (("eu", 0.5), ("us-east", 0.5))} if phase == "eu_launch" else {})},
             **({"treatment_variant": _ARMS[phase][0], "treatment_share": _ARMS[phase][1]} if phase in _ARMS else {}))
    for i, phase in enumerate(PHASES)
)  # fmt: skip
# The prompt-canary pack's two cohorts (its phases): a 6 % canary beside the stable prompt, equally healthy, so its
# comparisons evaluate and its promotion becomes ready (a promote_rollout command, not a rollback).
CANARY = tuple(
    Scenario(feature=FEATURE, phase=phase, seed=31 + i, duration_ms=95 * 60_000, mean_rate_per_s=rate, **_SHAPE)
    for i, (phase, rate) in enumerate((("prompt_stable", 1.5), ("prompt_canary", 0.1)))
)  # fmt: skip


# The safe-llm-rollout pack's three phases (a feature following seed 000's rollout plan) and the pilot-evaluation
# pack's pilot (seed 004's playbook), healthy, small.
ROLLOUT = tuple(
    Scenario(feature=FEATURE, phase=phase, seed=41 + i, duration_ms=95 * 60_000, mean_rate_per_s=0.3, **_SHAPE)
    for i, phase in enumerate(("beta_5pct", "ga_10pct", "ga_50pct", "pilot"))
)  # fmt: skip


def _eval_runs() -> list[dict[str, Any]]:
    """Offline evaluation runs (``type: eval``) for the packs that read them: the relevance eval of regional expansion,
    the quality eval of GA (both above their lines), the canary prompt's rubric and the production rubric's critical
    categories (launch-gates), every 20 minutes."""
    runs = [("regional_expansion", "relevance", 0.8, 100), ("general_availability", "quality", 0.85, 100),
            *((("prompt_canary", c, 0.9, 40)) for c in ("correctness", "safety", "tone")),
            *((("closed_beta", c, 0.9, 40)) for c in ("correctness", "safety"))]  # fmt: skip
    return [{"type": "eval", "event_id": f"eval-{phase}-{suite}-{k}", "ts": _iso(START + k * 20 * 60_000 + 30_000),
             "feature": FEATURE, "phase": phase, "suite": suite, "score": score, "n": n}
            for phase, suite, score, n in runs for k in range(5)]  # fmt: skip


def _iso(ms: int) -> str:
    from rules.outputs import iso

    return iso(ms)


RATE_INTERVAL = "30s"  # what $__rate_interval becomes: 30 one-second scrapes
INTERVAL = "5s"  # $__interval
SLICES = 8  # the rest of the traffic goes in this many slices, one second apart
STEP = 2.0  # range-query resolution, seconds


@dataclass(frozen=True)
class Run:
    prom: PrometheusServer
    start: float  # wall clock (s) when traffic began
    end: float  # wall clock (s) when every event had been processed and scraped
    commands: list[dict[str, Any]]
    produced: Counter[tuple[str, str]]  # (phase, event type) -> events produced
    events: list[dict[str, Any]]  # what was produced

    @property
    def window(self) -> str:
        """A PromQL range covering the whole run."""
        return f"{math.ceil(self.end - self.start) + 10}s"


def _events() -> list[dict[str, Any]]:
    """The phases' traffic as one stream in arrival order (each phase's own order kept; the watermark is per
    feature, so the phases must interleave as they would arrive)."""
    return list(heapq.merge(*(generate(s) for s in SCENARIOS + CANARY + ROLLOUT), sorted(_eval_runs(), key=lambda e: e["ts"]),
                            key=lambda e: parse_ts(e["ts"])))  # fmt: skip


def _split(events: list[dict[str, Any]], at_ms: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events in arrival order, cut before the first one with event time ``at_ms`` or later."""
    cut = next(i for i, e in enumerate(events) if parse_ts(e["ts"]) >= at_ms)
    return events[:cut], events[cut:]


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory) -> Iterator[Run]:
    require_prometheus()
    tmp = tmp_path_factory.mktemp("prometheus-dashboards")
    topics = setup_topics(stack, f"pd{uuid.uuid4().hex[:8]}.")  # own prefix: `topic_prefix` is per test
    port = free_port()
    closed_beta = f'feature="{FEATURE}",phase="closed_beta"'
    worker = LiveWorker(stack, topics, tmp / "worker.log", metrics_port=str(port), metrics_host="127.0.0.1")
    try:
        with PrometheusServer([f"127.0.0.1:{port}"], tmp / "prometheus") as prom:
            events = _events()
            before, rest = _split(events, BURST.start)  # while the worker joins its group
            burst, rest = _split(rest, BURST_PART_END)
            try:
                prom.wait_targets_up(timeout=60)
                start = time.time()
                last = merge_offsets(
                    produce(stack, topics, before, envelope=100),
                    produce_raw(stack, topics.interactions, FEATURE.encode(), [b"{not json"]),  # a dead letter
                )  # fmt: skip
                wait_processed(stack, topics, last, worker, timeout=120)
                prom.wait_for(f"rollguard_feature_tier{{{closed_beta}}} < 3", bool, timeout=20)
                last = merge_offsets(last, produce(stack, topics, burst, envelope=100))
                wait_processed(stack, topics, last, worker, timeout=120)
                # the kill has happened and its rule still fires: hold still until Prometheus has scraped that
                prom.wait_for(f"rollguard_feature_tier{{{closed_beta}}} == 3", bool, timeout=20)
                prom.wait_for(f'rollguard_rule_state{{{closed_beta},state="firing",tier="kill"}} > 0', bool, timeout=20)
                size = -(-len(rest) // SLICES)
                for i in range(0, len(rest), size):
                    last = merge_offsets(last, produce(stack, topics, rest[i : i + size], envelope=100))
                    time.sleep(1.0)
                wait_processed(stack, topics, last, worker, timeout=120)
                # two more scrapes of the final state
                prom.wait_for(f"timestamp(rollguard_worker_info) > {time.time() + 1:.3f}", bool, timeout=20)
                # and a range query's last step (one every STEP s from start) after them: a series that first
                # appears in the final state (an hourly instant the last events evaluate) is otherwise missed
                # whenever that scrape falls between the last step and the end
                time.sleep(STEP + 0.5)
            except TimeoutError as e:  # a scrape target or series that never came: the worker's log says why
                raise AssertionError(f"{e}\nworker log:\n{worker.tail()}") from None
            produced = Counter((e["phase"], e["type"]) for e in events)
            yield Run(prom, start, time.time(), read_topic(stack, topics.commands), produced, events)
    finally:
        worker.stop()


# --- the panels ----------------------------------------------------------------------------------------------------


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]


def _variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every template variable at its default: the *All* value of the multi-value variables (``.*``, which also
    shows that no query compares a variable with ``=``), the current value of the others."""
    values: dict[str, str] = {}
    for name, var in variables(dashboard).items():
        if var.get("type") == "datasource":
            continue
        if var.get("includeAll"):
            values[name] = var.get("allValue") or ".*"
        else:
            current = (var.get("current") or {}).get("value")
            values[name] = current[0] if isinstance(current, list) else str(current or "")
    return values


def _why_empty(run: Run, q: PanelQuery, expr: str) -> str | None:
    """None when the query draws something over the run, otherwise why not."""
    try:
        if q.instant:
            series = [{"values": [r["value"]]} for r in run.prom.query(expr, time=run.end)]
        else:
            series = run.prom.query_range(expr, run.start, run.end, STEP)
    except AssertionError as e:  # PrometheusQueryError: Prometheus's own message
        return f"query error: {e}"
    if not series:
        return "no series"
    if not any(math.isfinite(float(v)) for s in series for _, v in s["values"]):
        return f"{len(series)} series, but every value is NaN or infinite"
    return None


_RULE_OF = re.compile(r'ruleset="([^"]+)",\s*rule="([^"]+)"')


def _not_in_run(reason: str) -> bool:
    """A waiver reason that says the run has nothing the rule reads (or no instant of it), not too little history."""
    return "no such event" in reason or "no instant in the run" in reason


def _admitted(rule, event: dict[str, Any]) -> bool:
    seg = {**event.get("segment", {}), **{"@" + f: event.get(f) or "" for f in ("model_version", "prompt_version",
                                                                               "variant")}}  # fmt: skip
    return all(m.admits(seg) for m in rule.where)


def _beyond_the_run(run: Run) -> dict[tuple[str, str], str]:
    """Rules whose compared value cannot be defined within this run, from their definition alone: a ``baseline``
    longer than the traffic (the earlier window is empty), or an ``across`` rule whose ``min_samples`` per segment
    value exceeds a phase's whole traffic split over two values. Their value panels stay empty until a deployment
    has that much history; the test still requires them to be evaluated (their state series exist)."""
    counts = run.produced
    span = max(s.duration_ms for s in SCENARIOS)
    seg_keys = {k for e in run.events for k in e.get("segment", {})}
    suites = {e.get("suite") for e in run.events if e.get("type") == "eval"}
    out = {}
    for rs in load_rules([str(CATALOG)]):
        phases = rs.phases or PHASES
        for r in rs.rules:
            if r.where and not any(_admitted(r, e) for e in run.events):
                out[(rs.name, r.id)] = f"where {', '.join(m.describe() for m in r.where)}: no such event in the run"
                continue
            base, param = parse_metric(r.metric) if r.metric else (None, None)
            if r.every_ms >= span:
                out[(rs.name, r.id)] = f"every {r.every_ms // 3_600_000} h: no instant in the run"
            elif r.across is not None and r.across not in seg_keys:
                out[(rs.name, r.id)] = f"across {r.across}: no such event carries it in the run"
            elif base in ("eval_score", "eval_pass_rate") and param not in suites:
                out[(rs.name, r.id)] = f"eval suite {param}: no such event in the run"
            elif r.baseline_ms is not None and r.baseline_ms >= span:
                out[(rs.name, r.id)] = f"baseline {r.baseline_ms // 3_600_000} h > {span // 3_600_000} h of traffic"
            elif base in COHORT_METRICS and cohort_span_ms(param) >= span:
                out[(rs.name, r.id)] = f"cohort span {param} > {span // 3_600_000} h of traffic"
            elif r.across is not None:
                sources = metric_sources(*parse_metric(r.metric))
                most = max(sum(counts.get((ph, t), 0) for t in sources) for ph in phases)
                if 2 * r.min_samples > most:
                    out[(rs.name, r.id)] = f"across {r.across}: min_samples {r.min_samples} per value > {most // 2}"
    return out


def test_every_panel_query_returns_data(run):
    dashboards = _dashboards()
    assert dashboards, f"no dashboard JSON in {DASHBOARDS}"
    durations = dict(rate_interval=RATE_INTERVAL, interval=INTERVAL, time_range=f"{math.ceil(run.end - run.start)}s")
    beyond = _beyond_the_run(run)
    failures, waived, checked = [], set(), 0
    for dashboard in dashboards:
        queries = panel_queries(dashboard)
        assert queries, f"dashboard {dashboard.get('title')!r} has no panel queries"
        values = _variable_values(dashboard)
        for q in queries:
            expr = expand(q.expr, values, **durations)
            checked += 1
            why = _why_empty(run, q, expr)
            m = _RULE_OF.search(expr)
            if why == "no series" and m and _not_in_run(beyond.get((m[1], m[2]), "")):
                waived.add((m[1], m[2]))  # a rule whose events (or instants) the run never has is never evaluated
                continue
            if why == "no series" and m and (m[1], m[2]) in beyond and "rollguard_rule_state" not in expr:
                evaluated = run.prom.query_range(f'rollguard_rule_state{{ruleset="{m[1]}",rule="{m[2]}"}}',
                                                 run.start, run.end, STEP)  # fmt: skip
                if evaluated:
                    waived.add((m[1], m[2]))
                    continue
                why += " (and the rule was never evaluated)"
            if why is not None:
                failures.append(f"- {q.dashboard} / {q.panel} / {q.ref_id}: {why}\n    {expr}")
    assert not failures, f"{len(failures)} of {checked} panel queries return no data:\n" + "\n".join(failures)
    # the waiver is exactly the rules that need more history than a test can make, and stays small
    print(f"{checked} panel queries checked; value panels waived (need more history than the run): "
          + ", ".join(f"{k[0]}/{k[1]} ({beyond[k]})" for k in sorted(waived)))
    # the cohort-filter waivers are not history; the cohort metrics' (a week of users, then a week more) are, but
    # of one kind, counted apart
    history = {k for k in waived if not _not_in_run(beyond[k]) and "cohort span" not in beyond[k]}
    assert len(history) <= 20 and waived <= set(beyond)


# --- the incident --------------------------------------------------------------------------------------------------


def _samples(run: Run, expr: str) -> list[list[float]]:
    """The raw scraped values of each series of ``expr`` over the run, oldest first."""
    return [[float(v) for _, v in s["values"]] for s in run.prom.query(f"{expr}[{run.window}]", time=run.end)]


def test_the_kill_shows_in_tier_and_rule_state(run):
    kills = [c for c in run.commands if c["action"] == "rollback"]
    assert [(c["feature"], c["phase"]) for c in kills] == [(FEATURE, "closed_beta")], run.commands
    [kill] = kills
    tier = f'rollguard_feature_tier{{feature="{FEATURE}",phase="closed_beta"}}'
    [peak] = run.prom.query(f"max_over_time({tier}[{run.window}])", time=run.end)
    assert float(peak["value"][1]) == 3.0
    # the series shows the incident, not a constant: below kill before the burst, kill from then on
    [tiers] = _samples(run, tier)
    assert tiers[0] < 3 and tiers[-1] == 3, tiers
    firing = (f'rollguard_rule_state{{feature="{FEATURE}",phase="closed_beta",ruleset="{kill["ruleset"]}",'
              f'rule="{kill["rule_id"]}",state="firing"}}')  # fmt: skip
    [peak] = run.prom.query(f"max_over_time({firing}[{run.window}])", time=run.end)
    assert float(peak["value"][1]) == 1.0, (kill, peak)
    [states] = _samples(run, firing)
    assert states[0] == 0 and 1 in states, states
