"""``rollguard demo``: the main job on the embedded default.

Starts a local Kafka-protocol broker (tansu) and Redis, a rollguard worker, and a traffic generator with an injected
incident for the AI email-reply feature; shows a live status view read from Redis; ends when the rollback command
is readable on the commands topic. It then replays the same events offline and checks that replay decided exactly
what the live pipeline did. Everything it starts, it stops. ``--offline`` skips the live part (file replay only).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from rules.loader import CATALOG, load_rules
from rules.outputs import iso
from streams.offline.replay import OUTPUT_FILES, replay
from streams.offline.report_format import plural
from streams.offline.scenario import generate, scenario_from_args, write_jsonl
from streams.settings import Settings

__all__ = ["run_demo"]

DEMO_USER_KEY = "rollguard-demo-user-key"  # the demo's worker and its replay share it, so pseudonyms agree


def run_demo(out: Path, preset: str = "latency_spike", offline: bool = False, duration: str = "8h",
             timeout_s: float = 240.0) -> int:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    scenario = scenario_from_args(preset, duration_ms=duration)
    events_path = out / "events.jsonl.gz"
    print(f"generating scenario {preset!r}: {scenario.feature}/{scenario.phase}, "
          f"{scenario.duration_ms / 3_600_000:.0f} h of traffic, incidents: "
          + (", ".join(f"{i.kind} at {_hm(i.start)}" for i in scenario.incidents) or "none"))  # fmt: skip
    events = list(generate(scenario))
    write_jsonl(events, events_path)
    print(f"    {len(events):,} events -> {events_path}")
    settings = Settings(user_key=DEMO_USER_KEY)
    live_dir = None if offline else out / "live"
    if live_dir is not None:
        code = _live(events, live_dir, settings, timeout_s)
        if code:
            return code
    print("replaying the same events offline through the catalogue (rollguard replay) ...")
    rulesets = load_rules([CATALOG])
    res = replay(rulesets, [str(events_path)], out, config=settings.engine_config(),
                 user_key=settings.user_key_bytes(), rule_paths=([str(CATALOG)], None), progress=False,
                 charts="active")  # fmt: skip
    commands = _jsonl(out / "commands.jsonl")
    pages = [p for p in _jsonl(out / "pages.jsonl") if p["event_action"] == "trigger"]
    for c in commands:
        print(f"    {c['ts']}  {c['action'].upper():<14} {c['feature']}/{c['phase']}  by {c['ruleset']}/{c['rule_id']}")
    print(f"    pages triggered: {len(pages)}   decisions: {res.counts['decisions.jsonl']:,}   "
          f"dead letters: {res.counts['deadletter.jsonl']:,}")  # fmt: skip
    if live_dir is not None:
        same = _compare(live_dir, out, max(_ts_ms(e["ts"]) for e in events) - settings.engine_config().allowed_lateness_ms)
        print("live equals replay: " + ("yes — same decisions, commands and pages, same ids" if same else f"NO: {same}"))
        if same is not True:
            return 1
    print(f"report: {out / 'report.md'}")
    print(f"charts: {res.charts_dir}/ ({plural(len(res.charts), 'PNG')}, one per rule that was pending or firing) — "
          f"open {out / 'report.md'}, section Charts")
    return 0


def _live(events: list[dict], out: Path, settings: Settings, timeout_s: float) -> int:
    from streams.live.embedded import EmbeddedStack
    from streams.emitter import Emitter
    from streams.live.ops import read_status
    from streams.kafka.topics import Topics, ensure_topics

    out.mkdir(parents=True, exist_ok=True)
    topics = Topics()
    print("starting the embedded stack: tansu (Kafka protocol) + redis-server ...")
    with EmbeddedStack() as stack:
        ensure_topics(stack.kafka_bootstrap, topics, settings.partitions)
        env = dict(os.environ, ROLLGUARD_KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ROLLGUARD_REDIS_URL=stack.redis_url,
                   ROLLGUARD_USER_KEY=DEMO_USER_KEY, ROLLGUARD_IDLE_AFTER="off", ROLLGUARD_SESSION_TIMEOUT_S="6")  # fmt: skip
        pager = pager_target(settings)
        metrics_port = _free_port()
        env["ROLLGUARD_METRICS_PORT"] = str(metrics_port)
        if pager is not None:  # pages go on to a real receiver: the pager runs inside the worker
            env["ROLLGUARD_PAGER_IN_WORKER"] = "true"
        log = open(out / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--log-level", "warning"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            print(f"    broker {stack.kafka_bootstrap}, redis {stack.redis_url}, worker pid {worker.pid}")
            print(f"sending {len(events):,} events to {topics.interactions} / {topics.feedback} (envelopes of 100) ...")
            with Emitter(stack.kafka_bootstrap, topics, envelope_size=100) as em:
                for e in events:
                    em.emit(e, wait=5.0)
                em.flush(60)
            print(f"    {em.stats.summary()}")
            print("live status (from Redis):")
            command = _watch(stack, topics, worker, timeout_s, read_status)
            if command is None:
                print(f"no rollback within {timeout_s:.0f}s; worker log: {out / 'worker.log'}", file=sys.stderr)
                return 1
            print(f"rollback command on {topics.commands}:")
            print("    " + orjson.dumps(command).decode())
            _wait_idle(stack)
            _dump_topics(stack, topics, out)
            print(_pages_went(pager, metrics_port, len(_jsonl(out / "pages.jsonl")), topics.pages))
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
    print(f"stopped the worker, broker and Redis; live outputs in {out}")
    return 0


def pager_target(settings: Settings) -> str | None:
    """Where the demo's pages go beyond the pages topic: ``target at scheme://host`` when ``ROLLGUARD_PAGER_URL`` is
    set (never the path, which may hold a key), None when the demo stays self-contained."""
    if not settings.pager_url:
        return None
    from urllib.parse import urlsplit

    u = urlsplit(settings.pager_url)
    return f"{settings.pager_target} at {u.scheme}://{u.netloc.rsplit('@', 1)[-1]}"


def _pages_went(pager: str | None, metrics_port: int, produced: int, topic: str, wait_s: float = 30.0) -> str:
    """One line saying where the pages went; with a pager, once it delivered (or gave up on) all of them."""
    if pager is None:
        return (f"pages: {produced} on topic {topic} only (self-contained; set ROLLGUARD_PAGER_TARGET and "
                "ROLLGUARD_PAGER_URL to deliver them to Alertmanager, PagerDuty or a webhook)")  # fmt: skip
    counts: dict[str, float] = {}
    start = time.monotonic()
    while time.monotonic() - start < wait_s:
        counts = _pager_counts(metrics_port)
        if counts.get("delivered", 0) + counts.get("failed", 0) >= produced:
            break
        time.sleep(0.5)
    return (f"pages: {produced} on topic {topic}, delivered to {pager} by the pager in the worker: "
            f"{counts.get('delivered', 0):.0f} delivered, {counts.get('failed', 0):.0f} refused, "
            f"{counts.get('retried', 0):.0f} retried")  # fmt: skip


def _pager_counts(port: int) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            for what in ("delivered", "failed", "retried"):
                if s.name == f"rollguard_pager_{what}_total":
                    out[what] = out.get(what, 0) + s.value
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch(stack, topics, worker, timeout_s: float, read_status):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.commands, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    start = time.monotonic()
    last_line = ""
    try:
        while time.monotonic() - start < timeout_s:
            if worker.poll() is not None:
                print(f"worker exited with code {worker.returncode}", file=sys.stderr)
                return None
            line = _status_line(asyncio.run(read_status(stack.redis_url, "rollguard")))
            if line != last_line:
                print(f"  [{time.monotonic() - start:5.1f}s] {line}")
                last_line = line
            for msgs in consumer.poll(timeout_ms=1000).values():
                for m in msgs:
                    cmd = orjson.loads(m.value)
                    if cmd.get("action") == "rollback":
                        print(f"  [{time.monotonic() - start:5.1f}s] "
                              + _status_line(asyncio.run(read_status(stack.redis_url, "rollguard"))))  # fmt: skip
                        return cmd
        return None
    finally:
        consumer.close()


def _status_line(rows: list[dict]) -> str:
    if not rows:
        return "waiting for the worker to join the group and process the first batch ..."
    parts = []
    for s in rows:
        for phase, p in sorted(s["phases"].items()):
            firing = [r["rule_id"] + (" (shadow)" if r.get("mode") == "shadow" else "")
                      for r in p["rules"] if r["state"] == "firing"]  # fmt: skip
            pending = [r["rule_id"] for r in p["rules"] if r["state"] == "pending"]
            parts.append(f"{s['feature']}/{phase} tier {p['tier'].upper()} at event time {(s['watermark'] or '')[:16]}"
                         + (f"; firing: {', '.join(firing)}" if firing else "")
                         + (f"; pending: {', '.join(pending)}" if pending else ""))  # fmt: skip
    return " | ".join(parts)


def _wait_idle(stack, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """Until the worker's processed offsets stop moving (it has consumed everything sent)."""
    import redis

    r = redis.Redis.from_url(stack.redis_url)
    last, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit_s:
        cur = sorted((k, r.get(k)) for k in r.scan_iter("rollguard:{tp:*"))
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.3)
    r.close()


def _dump_topics(stack, topics, out: Path) -> None:
    from kafka import KafkaConsumer, TopicPartition

    for name, topic in zip(OUTPUT_FILES, topics.outputs()):
        c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        with open(out / name, "wb") as f:
            for m in c:
                f.write(m.value + b"\n")
        c.close()


def _compare(live: Path, offline: Path, watermark_ms: int) -> bool | str:
    """Live outputs equal replay's, up to the live watermark (replay's end of input also evaluates past it)."""
    wm = iso(watermark_ms)
    when = {"decisions.jsonl": lambda d: d["ts"], "commands.jsonl": lambda c: c["ts"],
            "pages.jsonl": lambda p: p["payload"]["timestamp"]}  # fmt: skip
    for name, ts in when.items():
        a = _jsonl(live / name)
        b = [x for x in _jsonl(offline / name) if ts(x) <= wm]
        if a != b:
            return f"{name}: live {len(a)} records, replay {len(b)}"
    return True


def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _ts_ms(ts) -> int:
    from rules.events import parse_ts

    return parse_ts(ts)


def _hm(ms: int) -> str:
    return iso(ms)[11:16] + "Z"
