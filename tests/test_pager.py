"""``rollguard pager``: pages from the real engine, on the real (embedded) broker, delivered to a real Alertmanager,
to a recording server that checks PagerDuty's Events v2 request shape, and to a generic webhook.

What is proved: every page the engine and the worker make is a valid page and maps to each receiver's documented
request; Alertmanager notifies a trigger once however often it is delivered, honours a silence made through its
API and notifies the resolve; retryable failures (5xx, 429, a dropped connection) are retried with backoff and
delivered once, a 4xx is counted as failed and committed past, a malformed record is counted and skipped, offsets
are committed only after delivery (a rerun delivers nothing; a pager killed with -9 and restarted loses nothing);
no user id, raw or pseudonymised, and no credential leaves the pager or reaches its logs.

The real Alertmanager tests are in tests/test_pager_alertmanager.py; pages, receivers and helpers in
tests/pager_kit.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime, timezone

import orjson
import pytest
from prometheus_client import CollectorRegistry

from live_kit import produce_raw
from pager_kit import (
    CANARY_USERS, DROP, PAGES, ROUTING_KEY, TOKEN, USER_KEY, RecordingServer, degraded_page, metric,
    pagerduty_problems, run_once, settings, wait_for,
)  # fmt: skip
from rules.events import Pseudonymizer
from streams.kafka.backoff import Backoff
from streams.pager import (
    Deliverer, DeliveryError, InvalidPage, alertmanager_alert, pager_problems, pagerduty_event, parse_page,
)  # fmt: skip
from streams.settings import Settings
from streams.kafka.topics import Topics, ensure_topics


# --- the pages the engine and the worker make ----------------------------------------------------------------------


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
    assert ROUTING_KEY not in caplog.text and "SECRET" not in caplog.text
    assert "HTTP 400" in caplog.text and "for routing_key **********" in caplog.text  # the echo, redacted
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
