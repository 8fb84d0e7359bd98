"""``rollguard pager`` against a real Alertmanager (Debian's ``prometheus-alertmanager``, started by the test on a
free loopback port, clustering off, its own storage; its receiver is a webhook served by the test): a trigger
notifies, a duplicate is grouped into the same single notification, a silence made through Alertmanager's API
suppresses, a resolve notifies "resolved"; and a pager killed with -9 — once after delivering, once while
Alertmanager was down — and restarted loses nothing, the pages coming from the embedded Kafka-protocol broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import orjson
import pytest

from live_kit import ROOT, produce_raw
from pager_kit import (
    PAGES, TOKEN, Alertmanager, RecordingServer, alertmanager_missing, free_port, metric, notifications, run_once,
    settings, wait_for,
)  # fmt: skip
from streams.kafka.topics import Topics, ensure_topics

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


class PagerProcess:
    """``rollguard pager`` in a subprocess, settings from the environment, /metrics on its own port."""

    def __init__(self, stack, prefix: str, am_url: str, log) -> None:
        self.port = free_port()
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
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed: apt-get update && apt-get install -y prometheus-alertmanager")
    cfg = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    done = subprocess.run([amtool, "check-config", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


