"""What a worker publishes, as Kafka records (``streams.live.processor`` decides when).

Decisions, commands and pages keyed by feature (a page by its component) and dead letters keyed by their source
topic, each the engine's dict serialised as is (replay writes the same bytes to files); a signed command's
emission time goes in record headers beside it (``rules.verify``), never in the command; an invalid input becomes
a dead letter naming its topic, partition and offset with a redacted payload (``rules.events.redact``: known
fields only, the user re-keyed, no free text); the worker's own "monitor degraded" page.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from rules import events
from rules.events import InvalidEvent, Pseudonymizer
from rules.outputs import iso, stable_id
from rules.policy import Outputs
from rules.verify import emission_headers
from streams.kafka.topics import Topics

__all__ = ["output_records", "command_headers", "dead_letter", "degraded_page"]


class Record(Protocol):
    """A consumed Kafka record (``streams.live.processor.Message``)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


def dead_key(dead: dict) -> bytes:
    src = dead.get("source") or {}
    return str(src.get("topic") or dead.get("payload", {}).get("feature") or "").encode()


def output_records(topics: Topics, out: Outputs, dead: list[dict]) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every output, in this order: decisions, commands, pages, dead letters (``dead`` first,
    then the engine's own: events it quarantined, rules.clock — deterministic outputs like decisions, published
    again, identical, if a crash re-runs their batch)."""
    t = topics
    recs: list[tuple[str, bytes, bytes]] = []
    recs += [(t.decisions, d["feature"].encode(), orjson.dumps(d)) for d in out.decisions]
    recs += [(t.commands, c["feature"].encode(), orjson.dumps(c)) for c in out.commands]
    recs += [(t.pages, p["payload"]["component"].encode(), orjson.dumps(p)) for p in out.pages]
    recs += [(t.deadletter, dead_key(d), orjson.dumps(d)) for d in dead + out.dead_letters]
    return recs


def command_headers(out: Outputs, n_records: int, key: bytes, now_ms: int) -> list:
    """Per record of :func:`output_records`, the headers of a signed command (None for any other record): its
    emission time, signed apart from the command (which replay reproduces byte for byte), so an actuator tells a
    command decided late (backlog) from an old one re-sent."""
    first = len(out.decisions)
    headers: list = [None] * n_records
    for i, c in enumerate(out.commands):
        if "signature" in c:
            headers[first + i] = emission_headers(c, now_ms, key)
    return headers


def dead_letter(m: Record, item: InvalidEvent, pseudo: Pseudonymizer) -> dict:
    """The dead letter of an invalid input read from ``m`` (:func:`rules.events.dead_letter`)."""
    source = {"topic": m.topic, "partition": m.partition, "offset": m.offset}
    return events.dead_letter(item, source, len(m.value or b""), pseudo)


def degraded_page(action: str, summary: str, prefix: str, now_s: float) -> dict:
    """The worker's "monitor degraded" page (``trigger`` or ``resolve``), one dedup key per deployment (topic
    prefix)."""
    return {
        "event_action": action,
        "dedup_key": "rollguard-" + stable_id("degraded", prefix),
        "payload": {
            "summary": summary,
            "source": "rollguard",
            "severity": "error",
            "timestamp": iso(int(now_s * 1000)),
            "component": "rollguard",
            "group": "monitor",
            "class": "monitor-degraded",
        },
    }
