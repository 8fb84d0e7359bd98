"""``rollguard pager``: pages from the real engine, on the real (embedded) broker, delivered to a real Alertmanager,
to a recording server that checks PagerDuty's Events v2 request shape, and to a generic webhook.

What is proved: every page the engine and the worker make is a valid page and maps to each receiver's documented
request; Alertmanager notifies a trigger once however often it is delivered, honours a silence made through its
API and notifies the resolve; retryable failures (5xx, 429, a dropped connection) are retried with backoff and
delivered once, a 4xx is counted as failed and committed past, a malformed record is counted and skipped, offsets
are committed only after delivery (a rerun delivers nothing; a pager killed with -9 and restarted loses nothing);
no user id, raw or pseudonymised, and no credential leaves the pager or reaches its logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from engine_kit import T0, MIN
from live_kit import ROOT, produce_raw
from pager_kit import (
    DROP, Alertmanager, RecordingServer, alertmanager_missing, notifications, pagerduty_problems, wait_for,
)  # fmt: skip
from rules.engine import Engine, EngineConfig
from rules.events import EventParser, Pseudonymizer
from rules.loader import load_rules_text
from rules.outputs import iso
from streams.backoff import Backoff
from streams.pager import (
    Deliverer, DeliveryError, InvalidPage, Pager, PagerMetrics, alertmanager_alert, pager_problems, pagerduty_event,
    parse_page,
)  # fmt: skip
from streams.processor import Processor
from streams.settings import Settings
from streams.topics import Topics, ensure_topics

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, like a PagerDuty integration key
TOKEN = "am-bearer-secret-5c1e9a"
USER_KEY = b"pager-test-user-key-0123"
CANARY_USERS = [f"CANARY-PAGER-{i}-7d2e@example.com" for i in range(7)]

RULES = """
version: 1
name: pagertest
features: ["*"]
rules:
  - {id: errors-kill, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     runbook: "https://runbooks.example/errors"}
  - {id: users-watch, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 5,
     group_by: [platform]}
"""


# --- pages from the real engine ------------------------------------------------------------------------------------


def scenario_pages() -> list[dict]:
    """Two features go bad in the same hour with room for one kill: f1 is killed (kill page), f2 held (breaker
    page); an investigate rule fires and resolves per platform; resuming the held f2 resolves the
    breaker page, resuming f1 resolves its kill. Events carry raw user ids, re-keyed by the real parser."""
    events = []
    for feature in ("f1", "f2"):
        for minute, bad in enumerate("..xx......"):
            for i in range(20):
                events.append({
                    "type": "interaction", "event_id": f"{feature}-{minute}-{i}", "ts": iso(T0 + minute * MIN + i * 1000),
                    "feature": feature, "phase": "beta", "user": CANARY_USERS[i % 7],
                    "segment": {"platform": "ios" if i % 2 else "web"},
                    "outcome": "error" if bad == "x" else "ok", "latency_ms": 120,
                })  # fmt: skip
    for feature, minute in (("f2", 8), ("f1", 9)):
        events.append({"type": "control", "action": "resume", "feature": feature, "phase": "beta",
                       "ts": iso(T0 + minute * MIN), "event_id": f"resume-{feature}", "reason": "checked",
                       "operator": "oncall"})  # fmt: skip
    events.sort(key=lambda e: e["ts"])
    items = list(EventParser(Pseudonymizer(USER_KEY)).parse_message(orjson.dumps(events)))
    engine = Engine(load_rules_text(RULES, source="pagertest.yaml"),
                    EngineConfig(allowed_lateness_ms=0, max_kills_per_hour=1))  # fmt: skip
    out = engine.step(items)
    out.extend(engine.finish())
    return out.pages


PAGES = scenario_pages()


def degraded_page(action: str) -> dict:
    """The worker's monitor-degraded page, built by the processor's own method (its inputs are a topic prefix and
    a wall clock)."""
    me = SimpleNamespace(topics=Topics("t."), clock=lambda: 1_793_577_601.5)
    return Processor._degraded_page(me, action, "rollguard monitor degraded: ConnectionError: down")


def test_the_scenario_makes_every_kind_of_page():
    kinds = {(p["payload"]["class"], p["event_action"]) for p in PAGES}
    assert {("errors-kill", "trigger"), ("errors-kill", "resolve"), ("kill-breaker", "trigger"),
            ("kill-breaker", "resolve"), ("users-watch", "trigger"), ("users-watch", "resolve")} <= kinds


def test_pages_carry_no_user_id_raw_or_pseudonymised():
    text = orjson.dumps(PAGES).decode()
    pseudonyms = [Pseudonymizer(USER_KEY)(u) for u in CANARY_USERS]
    assert not [u for u in CANARY_USERS + pseudonyms if u in text]


# --- validation and the receivers' requests (pure) -----------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES + [degraded_page("trigger"), degraded_page("resolve")],
                         ids=lambda p: f"{p['payload']['class']}-{p['event_action']}")  # fmt: skip
def test_every_page_rollguard_makes_is_valid_and_forwarded_unchanged(page):
    parsed = parse_page(orjson.dumps(page))
    assert parsed.as_json() == page  # the webhook gets exactly what the worker published
    assert pagerduty_problems(pagerduty_event(parsed, ROUTING_KEY)) == []


BAD = [
    ("not JSON", b"{oops", "not JSON"),
    ("a list", b"[1, 2]", "a JSON object expected, got list"),
    ("no payload", b'{"event_action": "trigger", "dedup_key": "k"}', "payload: Field required"),
    ("unknown action", b'{"event_action": "ack", "dedup_key": "k", "payload": {}}', "event_action: Input should be"),
    ("bad severity", orjson.dumps({**PAGES[0], "payload": {**PAGES[0]["payload"], "severity": "SECRET-SEV"}}),
     "payload.severity: Input should be"),
    ("time without zone", orjson.dumps({**PAGES[0], "payload": {**PAGES[0]["payload"],
                                                                "timestamp": "2026-11-02T10:00:00"}}),
     "payload.timestamp: Value error, the time needs a zone"),
    ("empty dedup key", orjson.dumps({**PAGES[0], "dedup_key": ""}), "dedup_key: String should have at least 1"),
]  # fmt: skip


@pytest.mark.parametrize("case, value, message", BAD, ids=[b[0] for b in BAD])
def test_a_malformed_record_is_refused_naming_the_field_never_the_value(case, value, message):
    with pytest.raises(InvalidPage) as e:
        parse_page(value)
    assert message in str(e.value) and "SECRET-SEV" not in str(e.value)


def when(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


def test_alertmanager_labels_are_the_pages_identity_and_a_resolve_matches_its_trigger():
    pages = [parse_page(orjson.dumps(p)) for p in PAGES]
    now = int(datetime(2026, 11, 2, 12, tzinfo=timezone.utc).timestamp() * 1000)
    alerts = [alertmanager_alert(p, now_ms=now, ttl_ms=3_600_000) for p in pages]
    by_key: dict[str, list[dict]] = {}
    for p, a in zip(pages, alerts):
        by_key.setdefault(p.dedup_key, []).append(a["labels"])
        assert a["labels"]["dedup_key"] == p.dedup_key and a["annotations"]["summary"] == p.payload.summary
        assert when(a["startsAt"]) == when(p.payload.timestamp)  # the page's event time
        if p.event_action == "trigger":
            assert a["endsAt"] == "2026-11-02T13:00:00.000Z"  # now + ttl: firing until resolved or expired
        else:
            assert a["startsAt"] == a["endsAt"]  # "resolved at": Alertmanager keeps the trigger's start
    assert all(labels[0] == other for labels in by_key.values() for other in labels)
    kill = next(a for p, a in zip(pages, alerts) if p.payload.class_ == "errors-kill")
    assert kill["labels"] == {
        "alertname": "rollguard_errors_kill", "dedup_key": kill["labels"]["dedup_key"], "severity": "critical",
        "feature": "f1", "phase": "beta", "class": "errors-kill", "tier": "kill", "ruleset": "pagertest",
        "rule": "pagertest/errors-kill",
    }  # fmt: skip
    assert kill["annotations"]["runbook_url"] == "https://runbooks.example/errors"
    watch = next(a for p, a in zip(pages, alerts) if p.payload.class_ == "users-watch")
    assert watch["labels"]["segment"] in ("platform=ios", "platform=web")
    breaker = next(a for p, a in zip(pages, alerts) if p.payload.class_ == "kill-breaker")
    assert (breaker["labels"]["alertname"], breaker["labels"]["feature"], breaker["labels"]["phase"]) == (
        "rollguard_kill_breaker", "rollguard", "breaker")
    assert "tier" not in breaker["labels"] and "rule" not in breaker["labels"]


def test_pagerduty_resolve_carries_no_payload_and_a_trigger_the_required_fields():
    for p in PAGES:
        event = pagerduty_event(parse_page(orjson.dumps(p)), ROUTING_KEY)
        if p["event_action"] == "resolve":
            assert event == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": p["dedup_key"]}
        else:
            assert {"summary", "source", "severity"} <= set(event["payload"]) and event["client"] == "rollguard"


def test_backoff_doubles_to_its_bound_with_reproducible_jitter():
    plain = Backoff(0.1, 1.0)
    assert [plain.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    a, b = (Backoff(0.1, 1.0, rng=random.Random(3)) for _ in range(2))
    da, db = [a.next_delay() for _ in range(8)], [b.next_delay() for _ in range(8)]
    assert da == db and all(0.05 <= d <= 1.0 for d in da) and len(set(da)) == 8
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


PROBLEMS = [
    ("alertmanager without URL", {}, "pager_url: the alertmanager target needs a URL"),
    ("pagerduty without key", {"pager_target": "pagerduty"}, "pager_routing_key: PagerDuty needs"),
    ("half basic auth", {"pager_url": "http://am:9093", "pager_username": "u"}, "basic auth needs"),
    ("token and basic", {"pager_url": "http://am:9093", "pager_username": "u", "pager_password": "p",
                         "pager_token": "t"}, "not both"),
    ("credentials over http in production", {"profile": "production", "pager_url": "http://am:9093",
                                             "pager_token": "t"}, "in clear over http://"),
    ("backoff beyond its bound", {"pager_url": "http://am:9093", "pager_backoff": "1m"}, "pager_backoff: longer"),
]  # fmt: skip


@pytest.mark.parametrize("case, settings, message", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_settings_the_pager_refuses_to_start_with(case, settings, message):
    problems = pager_problems(Settings(**settings))
    assert any(message in p for p in problems), problems


def test_good_settings_pass_and_no_secret_prints():
    s = Settings(pager_target="pagerduty", pager_routing_key=ROUTING_KEY, pager_token=TOKEN,
                 pager_url="https://events.example/v2/enqueue?secret-path")  # fmt: skip
    assert pager_problems(s) == []
    d = Deliverer.from_settings(s)
    assert ROUTING_KEY not in repr(s) + repr(d) + d.name and TOKEN not in repr(s) + repr(d)
    assert d.name == "PagerDuty at https://events.example"  # never the path or query


# --- delivery on the embedded broker: PagerDuty (recording server) and a webhook ----------------------------------


def settings(stack, prefix: str, **kw) -> Settings:
    return Settings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=f"{prefix}rollguard",
                    session_timeout_s=2, pager_backoff="20ms", pager_backoff_max="200ms", pager_metrics_port=0,
                    **kw)  # fmt: skip


def run_once(s: Settings, registry: CollectorRegistry | None = None) -> Pager:
    pager = Pager(s, Deliverer.from_settings(s), metrics=PagerMetrics(registry or CollectorRegistry(), s.pager_target),
                  once=True, rng=random.Random(15))  # fmt: skip
    asyncio.run(pager.run())
    return pager


def sample(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def recorder():
    servers = []

    def make(**kw) -> RecordingServer:
        servers.append(RecordingServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_pagerduty_delivery_retries_skips_and_commits(stack, topic_prefix, recorder, caplog):
    caplog.set_level(logging.INFO, logger="rollguard")
    pd = recorder(pagerduty=True)
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    refused = {**PAGES[0], "dedup_key": "rollguard-refused-by-the-receiver"}
    pd.refuse[refused["dedup_key"]] = 400
    records = [orjson.dumps(p) for p in PAGES]
    records[1:1] = [b"{not json", orjson.dumps({"event_action": "trigger", "dedup_key": "x", "user": "SECRET"}),
                    orjson.dumps(refused), orjson.dumps(PAGES[0])]  # fmt: skip  # a re-published duplicate too
    produce_raw(stack, topics.pages, b"rollguard", records)
    # the first three attempts fail: a 503, a connection dropped without an answer, a 429 saying "retry now"
    pd.script = [(503, {}), (DROP, {}), (429, {"Retry-After": "0"})]
    s = settings(stack, topic_prefix, pager_target="pagerduty", pager_url=f"{pd.url}/v2/enqueue",
                 pager_routing_key=ROUTING_KEY)  # fmt: skip
    registry = CollectorRegistry()
    started = time.monotonic()
    stats = run_once(s, registry).stats
    elapsed = time.monotonic() - started

    assert (stats.delivered, stats.failed, stats.invalid, stats.retries) == (len(PAGES) + 1, 1, 2, 3)
    bodies = pd.bodies()
    assert len(bodies) == len(PAGES) + 2 + 3  # + the duplicate, the refused page, the three failed attempts
    assert all(pagerduty_problems(b) == [] for b in bodies)
    # PagerDuty's view: one incident per dedup_key, in the state of its last event
    last = {p["dedup_key"]: p["event_action"] for p in PAGES}
    assert {k: v["status"] for k, v in pd.incidents.items()} == {
        k: {"trigger": "triggered", "resolve": "resolved"}[a] for k, a in last.items()}
    first = PAGES[0]["dedup_key"]  # delivered twice (original and duplicate) but one incident
    assert pd.incidents[first]["events"] == sum(p["dedup_key"] == first for p in PAGES) + 1
    # order kept: every resolve reached PagerDuty after its trigger
    delivered = [(b["dedup_key"], b["event_action"]) for b in bodies if b["dedup_key"] in last]
    for key in last:
        actions = [a for k, a in delivered if k == key]
        assert actions.index("trigger") < (actions.index("resolve") if "resolve" in actions else len(actions))
    assert sample(registry, "rollguard_pager_delivered_total", target="pagerduty", event_action="trigger") + sample(
        registry, "rollguard_pager_delivered_total", target="pagerduty", event_action="resolve") == len(PAGES) + 1
    assert sample(registry, "rollguard_pager_failed_total", target="pagerduty") == 1
    assert sample(registry, "rollguard_pager_retried_total", target="pagerduty") == 3
    assert sample(registry, "rollguard_pager_invalid_total") == 2
    assert sample(registry, "rollguard_pager_delivery_latency_seconds_count", target="pagerduty") == len(PAGES) + 1
    assert elapsed < 30  # three backoffs of at most 20, 40, 80 ms (+ the broker's group join)
    # nothing secret or personal reached the receiver's error path or the logs
    assert ROUTING_KEY not in caplog.text and "SECRET" not in caplog.text and "HTTP 400" in caplog.text
    text = orjson.dumps(bodies).decode()
    assert not [u for u in CANARY_USERS + [Pseudonymizer(USER_KEY)(u) for u in CANARY_USERS] if u in text]

    # every offset was committed, past the refused page and the bad records: a rerun delivers nothing
    n = len(pd.requests)
    assert run_once(s).stats.delivered == 0 and len(pd.requests) == n


def test_webhook_gets_each_page_as_published_with_its_token_and_a_404_is_skipped(stack, topic_prefix, recorder):
    hook = recorder()
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    pages = PAGES + [degraded_page("trigger"), degraded_page("resolve")]
    produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(p) for p in pages])
    hook.script = [(404, {})]  # the first page meets a wrong path: refused for good, skipped
    s = settings(stack, topic_prefix, pager_target="webhook", pager_url=f"{hook.url}/hooks/T0KEN-IN-PATH",
                 pager_token=TOKEN)  # fmt: skip
    stats = run_once(s).stats
    assert (stats.delivered, stats.failed, stats.retries) == (len(pages) - 1, 1, 0)
    assert hook.bodies() == pages  # the refused attempt included: bodies are the pages, unchanged, in order
    assert {r.path for r in hook.requests} == {"/hooks/T0KEN-IN-PATH"}
    assert {r.headers["Authorization"] for r in hook.requests} == {f"Bearer {TOKEN}"}


def test_basic_auth_and_a_receiver_that_never_answers(recorder):
    hook = recorder()
    s = Settings(pager_target="webhook", pager_url=f"{hook.url}/h", pager_username="rg", pager_password="pw-secret",
                 pager_timeout_s=1)  # fmt: skip
    page = parse_page(orjson.dumps(PAGES[0]))

    async def go():
        d = Deliverer.from_settings(s)
        try:
            await d.deliver(page)
            hook.script = [(DROP, {})]
            with pytest.raises(DeliveryError) as e:
                await d.deliver(page)
            return e.value
        finally:
            await d.close()

    err = asyncio.run(go())
    assert hook.requests[0].headers["Authorization"] == "Basic cmc6cHctc2VjcmV0"  # base64("rg:pw-secret")
    assert err.retryable and "cannot reach webhook at http://127.0.0.1" in str(err) and "pw-secret" not in str(err)
    dead = Deliverer("webhook", "http://127.0.0.1:9/x", timeout_s=1)  # nothing listens on the discard port

    async def unreachable():
        try:
            await dead.deliver(page)
        finally:
            await dead.close()

    with pytest.raises(DeliveryError) as e:
        asyncio.run(unreachable())
    assert e.value.retryable and e.value.status is None


# --- a real Alertmanager -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    if missing := alertmanager_missing():
        pytest.skip(missing)
    hook = RecordingServer()
    am = Alertmanager(tmp_path_factory.mktemp("alertmanager"), hook.url)
    yield SimpleNamespace(am=am, hook=hook)
    am.stop()
    hook.close()


def page_for(feature: str, action: str, minute: int, dedup_key: str | None = None) -> dict:
    """A kill page of the scenario's shape, moved to ``feature`` (its own dedup_key) and to a recent event time, as
    a live worker's pages are."""
    base = next(p for p in PAGES if p["payload"]["class"] == "errors-kill" and p["event_action"] == action)
    ts = (datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10 - minute)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    return {**base, "dedup_key": dedup_key or f"rollguard-{feature}-kill",
            "payload": {**base["payload"], "component": feature, "timestamp": ts}}  # fmt: skip


def alert_notifications(hook: RecordingServer, feature: str) -> list[tuple[str, list[dict]]]:
    """(status, alerts) of each Alertmanager notification about ``feature``."""
    out = []
    for n in notifications(hook):
        alerts = [a for a in n["alerts"] if a["labels"].get("feature") == feature]
        if alerts:
            out.append((n["status"], alerts))
    return out


def test_alertmanager_notifies_once_honours_a_silence_and_notifies_the_resolve(alertmanager, stack, topic_prefix):
    am, hook = alertmanager.am, alertmanager.hook
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    s = settings(stack, topic_prefix, pager_url=am.url)
    feature, muted = f"{topic_prefix}checkout", f"{topic_prefix}muted"

    # a trigger, delivered twice (the worker re-published it after a crash): one alert, one notification
    trigger = page_for(feature, "trigger", 0)
    produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(trigger)] * 2)
    sent = time.monotonic()
    assert run_once(s).stats.delivered == 2
    wait_for(lambda: alert_notifications(hook, feature), what="the trigger's notification")
    latency = time.monotonic() - sent
    time.sleep(2.5)  # two more group intervals: a second notification would have come by now
    [(status, alerts)] = alert_notifications(hook, feature)
    assert status == "firing" and len(alerts) == 1
    assert alerts[0]["labels"]["dedup_key"] == trigger["dedup_key"] and alerts[0]["labels"]["tier"] == "kill"
    assert alerts[0]["annotations"]["runbook_url"] == "https://runbooks.example/errors"
    print(f"trigger page -> Alertmanager notification: {latency:.2f}s (group_wait 200ms)")

    # a silence made through Alertmanager's API suppresses the next page for that feature
    now = datetime.now(timezone.utc)
    silence = am.api("POST", "/silences", {
        "matchers": [{"name": "feature", "value": muted, "isRegex": False, "isEqual": True}],
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "test_pager", "comment": "maintenance"})["silenceID"]  # fmt: skip
    produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(page_for(muted, "trigger", 1))])
    assert run_once(s).stats.delivered == 1
    [held] = wait_for(lambda: am.alerts(feature=muted), what="the silenced alert in Alertmanager")
    assert held["status"]["state"] == "suppressed" and held["status"]["silencedBy"] == [silence]
    time.sleep(2.5)
    assert alert_notifications(hook, muted) == []

    # the resolve: Alertmanager notifies it as resolved and drops the alert
    produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(page_for(feature, "resolve", 2, trigger["dedup_key"]))])
    assert run_once(s).stats.delivered == 1
    wait_for(lambda: len(alert_notifications(hook, feature)) == 2, what="the resolved notification")
    status, alerts = alert_notifications(hook, feature)[1]
    assert status == "resolved" and alerts[0]["labels"]["dedup_key"] == trigger["dedup_key"]
    assert am.alerts(feature=feature) == []


def metric(port: int, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == name and smp.labels == labels:
                return smp.value
    return 0.0


class PagerProcess:
    """``rollguard pager`` in a subprocess, settings from the environment, /metrics on its own port."""

    def __init__(self, stack, prefix: str, am_url: str, log) -> None:
        self.port = _free_port()
        env = dict(os.environ, ROLLGUARD_KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ROLLGUARD_TOPIC_PREFIX=prefix,
                   ROLLGUARD_APP_ID=f"{prefix}rollguard", ROLLGUARD_SESSION_TIMEOUT_S="2",
                   ROLLGUARD_PAGER_URL=am_url, ROLLGUARD_PAGER_TOKEN=TOKEN, ROLLGUARD_PAGER_BACKOFF="50ms",
                   ROLLGUARD_PAGER_BACKOFF_MAX="500ms", ROLLGUARD_PAGER_METRICS_PORT=str(self.port),
                   ROLLGUARD_METRICS_HOST="127.0.0.1")  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "pager", "--log-level", "info"], cwd=ROOT,
                                     env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def value(self, name: str, **labels) -> float:
        """A sample of its /metrics (0 while it does not answer yet)."""
        try:
            return metric(self.port, name, labels)
        except OSError:
            return 0.0


def _free_port() -> int:
    from pager_kit import free_port

    return free_port()


def test_a_pager_killed_and_restarted_loses_nothing(alertmanager, stack, topic_prefix, tmp_path):
    am = alertmanager.am
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    first = [page_for(f"{topic_prefix}a{i}", "trigger", 0) for i in range(10)]
    second = [page_for(f"{topic_prefix}b{i}", "trigger", 0) for i in range(10)]
    second += [page_for(f"{topic_prefix}a{i}", "resolve", 1, first[i]["dedup_key"]) for i in range(3)]
    log = open(tmp_path / "pager.log", "ab")  # noqa: SIM115
    procs = []

    def held(prefix: str) -> set[str]:
        return {a["labels"]["feature"] for a in am.alerts() if a["labels"]["feature"].startswith(prefix)}

    try:
        produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(p) for p in first])
        p1 = PagerProcess(stack, topic_prefix, am.url, log)
        procs.append(p1)
        wait_for(lambda: len(held(f"{topic_prefix}a")) == 10, 60, what="the first pages in Alertmanager")
        p1.proc.send_signal(signal.SIGKILL)
        p1.proc.wait(10)

        # Alertmanager goes down; the next pager cannot deliver, retries, commits nothing, and is killed too
        am.stop()
        produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(p) for p in second])
        p2 = PagerProcess(stack, topic_prefix, am.url, log)
        procs.append(p2)
        wait_for(lambda: p2.value("rollguard_pager_retried_total", target="alertmanager") >= 2, 60,
                 what="the pager retrying while Alertmanager is down")  # fmt: skip
        assert p2.value("rollguard_pager_delivered_total", event_action="trigger", target="alertmanager") == 0
        p2.proc.send_signal(signal.SIGKILL)
        p2.proc.wait(10)

        # Alertmanager back (same port and storage; it keeps silences, not alerts, across restarts)
        am.start()
        p3 = PagerProcess(stack, topic_prefix, am.url, log)
        procs.append(p3)
        wait_for(lambda: held(f"{topic_prefix}b") == {f"{topic_prefix}b{i}" for i in range(10)}, 60,
                 what="every trigger of the second batch in Alertmanager")  # fmt: skip
        resolves = wait_for(lambda: p3.value("rollguard_pager_delivered_total", target="alertmanager",
                                             event_action="resolve") == 3, 30, what="the three resolves delivered")
        assert resolves
        triggers = p3.value("rollguard_pager_delivered_total", target="alertmanager", event_action="trigger")
        # at least the second batch; at most also the first (a kill between delivery and commit re-delivers)
        assert 10 <= triggers <= 20

        # a page published while the pager runs: time from the append to the alert held by Alertmanager
        latencies = []
        for i in range(5):
            live = page_for(f"{topic_prefix}live{i}", "trigger", 0)
            sent = time.monotonic()
            produce_raw(stack, topics.pages, b"rollguard", [orjson.dumps(live)])
            wait_for(lambda f=live["payload"]["component"]: am.alerts(feature=f), 30, 0.02, what="the live page")
            latencies.append(time.monotonic() - sent)
        print(f"append -> alert in Alertmanager, running pager: {', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")
        p3.proc.send_signal(signal.SIGTERM)
        assert p3.proc.wait(30) == 0
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(10)
        log.close()
        if am.proc is None or am.proc.poll() is not None:
            am.start()
    text = (tmp_path / "pager.log").read_text(errors="replace")
    assert TOKEN not in text and "Traceback" not in text, text[-3000:]
    for p in second:  # each page of the second batch is logged as delivered (by the third pager: the others could not)
        assert f"delivered page {p['dedup_key']} ({p['event_action']})" in text


# --- deploy: the example Alertmanager configuration ---------------------------------------------------------------


def test_the_example_alertmanager_config_passes_amtool():
    import shutil

    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed: apt-get update && apt-get install -y prometheus-alertmanager")
    cfg = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    done = subprocess.run([amtool, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- inside a worker ------------------------------------------------------------------------------------------------


def test_the_pager_runs_inside_a_worker_when_asked(stack, topic_prefix, tmp_path, recorder):
    from live_kit import LiveWorker, setup_topics
    from pager_kit import free_port

    hook = recorder()
    topics = setup_topics(stack, topic_prefix, partitions=1)
    port = free_port()
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", pager_in_worker="true", pager_target="webhook",
                        pager_url=f"{hook.url}/hook", metrics_port=str(port), metrics_host="127.0.0.1",
                        partitions="1")  # fmt: skip
    try:
        produce_raw(stack, topics.pages, b"rollguard", [b"{not json"] + [orjson.dumps(p) for p in PAGES])
        wait_for(lambda: len(hook.requests) >= len(PAGES) or not worker.alive(), 120, 0.2, what="pages via the worker")
        assert worker.alive(), worker.tail()
        assert hook.bodies() == PAGES
        counted = wait_for(lambda: sum(metric(port, "rollguard_pager_delivered_total",
                                              {"target": "webhook", "event_action": a}) for a in ("trigger", "resolve"))
                           == len(PAGES), 10, what="the worker's /metrics")  # fmt: skip
        assert counted and metric(port, "rollguard_pager_invalid_total", {}) == 1
    finally:
        worker.stop()
