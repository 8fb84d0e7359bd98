"""For the pager tests: pages from the real engine (raw user ids in, re-keyed by the real parser), pager runs on the
embedded broker, and receivers: a recording HTTP server that checks PagerDuty's documented Events v2 request
shape (and de-duplicates incidents by ``dedup_key`` as PagerDuty does), and a real Alertmanager process.

The recording server runs in a thread (stdlib ``ThreadingHTTPServer``), so pagers in the test's event loop and in
subprocesses reach it alike. Its answers can be scripted per request: a status (with an optional ``Retry-After``) or
``DROP`` (the connection is closed without an answer).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from engine_kit import MIN, T0
from rules.engine import Engine, EngineConfig
from rules.events import EventParser, Pseudonymizer
from rules.loader import load_rules_text
from rules.outputs import iso
from streams.pager import Deliverer, Pager, PagerMetrics
from streams.settings import Settings

ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, like a PagerDuty integration key
TOKEN = "am-bearer-secret-5c1e9a"
USER_KEY = b"pager-test-user-key-0123"
CANARY_USERS = [f"CANARY-PAGER-{i}-7d2e@example.com" for i in range(7)]
DROP = 0  # scripted "status": close the connection without answering
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
SEVERITIES = {"critical", "error", "warning", "info"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def pagerduty_problems(event: Any) -> list[str]:
    """What PagerDuty's Events API v2 (developer.pagerduty.com, "Send an Alert Event") would reject."""
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    errs = []
    if not (isinstance(event.get("routing_key"), str) and len(event["routing_key"]) == 32):
        errs.append("routing_key: the 32-character integration key is required")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errs.append("event_action: must be trigger, acknowledge or resolve")
    key = event.get("dedup_key")
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= 255):
        errs.append("dedup_key: a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and key is None:
        errs.append("dedup_key: required to acknowledge or resolve")
    if action == "trigger":
        p = event.get("payload")
        if not isinstance(p, dict):
            errs.append("payload: required for a trigger")
        else:
            if not (isinstance(p.get("summary"), str) and 0 < len(p["summary"]) <= 1024):
                errs.append("payload.summary: required, at most 1024 characters")
            if not (isinstance(p.get("source"), str) and p["source"]):
                errs.append("payload.source: required")
            if p.get("severity") not in SEVERITIES:
                errs.append("payload.severity: one of critical, error, warning, info")
            for k in ("component", "group", "class", "timestamp"):
                if k in p and not isinstance(p[k], str):
                    errs.append(f"payload.{k}: a string")
            if "custom_details" in p and not isinstance(p["custom_details"], dict):
                errs.append("payload.custom_details: an object")
    for link in event.get("links", []):
        if not (isinstance(link, dict) and isinstance(link.get("href"), str)):
            errs.append("links: objects with an href")
    known = {"routing_key", "event_action", "dedup_key", "payload", "links", "images", "client", "client_url"}
    errs += [f"{k}: unknown field" for k in event if k not in known]
    return errs


@dataclass
class RecordingServer:
    """Records every request; answers from ``script`` (a list consumed first-in first-out, per path prefix ""),
    else 202 (PagerDuty mode: 400 on a malformed event, incidents de-duplicated by ``dedup_key``) or 200."""

    pagerduty: bool = False
    requests: list[Request] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)  # dedup_key -> status answered for its events
    incidents: dict[str, dict] = field(default_factory=dict)  # dedup_key -> {"status", "events"}

    def __post_init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, answer = rec._answer(Request(self.path, dict(self.headers), body))
                if status == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = json.dumps(answer).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answer(self, req: Request) -> tuple[int, dict, Any]:
        with self.lock:
            self.requests.append(req)
            if self.script:
                status, headers = self.script.pop(0)
                if status == DROP or status >= 300:
                    return status, headers, {"status": "error", "message": "scripted"}
            if not self.pagerduty:
                return 200, {}, {"status": "ok"}
            try:
                event = req.json()
            except ValueError:
                return 400, {}, {"status": "invalid event", "message": "Event object is invalid", "errors": ["JSON"]}
            if errs := pagerduty_problems(event):
                return 400, {}, {"status": "invalid event", "message": "Event object is invalid", "errors": errs}
            key = event["dedup_key"]
            if key in self.refuse:
                # the worst case of a receiver: its error echoes the request, credential included
                return self.refuse[key], {}, {"status": "invalid event",
                                              "message": f"refused (test) for routing_key {event['routing_key']}"}
            inc = self.incidents.setdefault(key, {"status": None, "events": 0})
            inc["events"] += 1
            inc["status"] = {"trigger": "triggered", "resolve": "resolved"}.get(event["event_action"], inc["status"])
            return 202, {}, {"status": "success", "message": "Event processed", "dedup_key": key}

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Alertmanager:
    """``prometheus-alertmanager`` on a free loopback port, clustering off, its own storage, a config whose receiver
    is ``webhook_url`` with short group timers. ``restart()`` keeps the port and the storage (silences survive)."""

    def __init__(self, tmp: Path, webhook_url: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config = tmp / "alertmanager.yml"
        self.config.write_text(f"""
route:
  receiver: test
  group_by: [alertname, feature, phase]
  group_wait: 200ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {webhook_url}/alerts
        send_resolved: true
""")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.tmp / "alertmanager.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={self.config}", f"--storage.path={self.tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"Alertmanager did not become ready:\n{(self.tmp / 'alertmanager.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/v2{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read()
        return json.loads(text) if text else None

    def alerts(self, **labels: str) -> list[dict]:
        """Alerts Alertmanager holds (active, silenced or inhibited; resolved ones are not listed)."""
        from urllib.parse import quote

        query = "&".join("filter=" + quote(f'{k}="{v}"') for k, v in labels.items())
        return self.api("GET", "/alerts" + (f"?{query}" if query else ""))


def alertmanager_missing() -> str | None:
    if shutil.which(ALERTMANAGER) is None and not Path(ALERTMANAGER).exists():
        return ("prometheus-alertmanager not installed: apt-get update && apt-get install -y prometheus-alertmanager "
                "(./dev test installs it when run as root)")  # fmt: skip
    return None


def notifications(server: RecordingServer) -> list[dict]:
    """Alertmanager webhook notifications received so far."""
    return [r.json() for r in list(server.requests) if r.path == "/alerts"]


def wait_for(predicate, timeout: float = 30.0, every: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- pages from the real engine, and pager runs -----------------------------------------------------------------

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
    """The worker's monitor-degraded page, built by the worker's own function (its inputs are a topic prefix and
    a wall clock)."""
    from streams.live.publishing import degraded_page as page

    return page(action, "rollguard monitor degraded: ConnectionError: down", "t.", 1_793_577_601.5)


def settings(stack, prefix: str, **kw) -> Settings:
    return Settings(kafka_bootstrap=stack.kafka_bootstrap, topic_prefix=prefix, app_id=f"{prefix}rollguard",
                    session_timeout_s=2, pager_backoff="20ms", pager_backoff_max="200ms", pager_metrics_port=0,
                    **kw)  # fmt: skip


def run_once(s: Settings, registry: CollectorRegistry | None = None) -> Pager:
    pager = Pager(s, Deliverer.from_settings(s), metrics=PagerMetrics(registry or CollectorRegistry(), s.pager_target),
                  once=True, rng=random.Random(15))  # fmt: skip
    asyncio.run(pager.run())
    return pager


def metric(port: int, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == name and smp.labels == labels:
                return smp.value
    return 0.0
