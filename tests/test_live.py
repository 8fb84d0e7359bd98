"""The live pipeline end to end on the real embedded broker and Redis: a worker process consumes generated traffic
and publishes what replay decides for the same input."""

from __future__ import annotations

import pytest

from rules.loader import CATALOG, load_rules
from rules.outputs import iso
from streams.offline.replay import replay
from streams.offline.scenario import generate, scenario_from_args, write_jsonl
from streams.settings import Settings
from rules.events import parse_ts
from tests.live_kit import (
    LiveWorker, merge_offsets, outputs, produce, produce_raw, read_jsonl, setup_topics, wait_processed,
)  # fmt: skip

USER_KEY = "test-user-key-0123456789"


def _replay(tmp_path, events):
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    s = Settings(user_key=USER_KEY)
    out = tmp_path / "replay"
    replay(load_rules([CATALOG]), [str(path)], out, config=s.engine_config(), user_key=s.user_key_bytes(),
           progress=False)  # fmt: skip
    return {k: read_jsonl(out / f"{k}.jsonl") for k in ("decisions", "commands", "pages", "deadletter")}


def _upto(records: list[dict], watermark_iso: str, ts) -> list[dict]:
    return [r for r in records if ts(r) <= watermark_iso]


@pytest.mark.slow
def test_live_equals_replay_and_dead_letters(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    events = list(generate(scenario_from_args("latency_spike", duration_ms="8h", seed=11)))
    worker = LiveWorker(stack, topics, tmp_path / "worker.log")
    try:
        last = merge_offsets(
            produce(stack, topics, events[:5000], envelope=1),  # single-event messages ...
            produce(stack, topics, events[5000:], envelope=50),  # ... and batch envelopes
            produce_raw(stack, topics.interactions, b"email-reply", [
                b"{not json", b'{"type":"interaction","feature":"email-reply","user":"alice@example.com"}']),
        )  # fmt: skip
        wait_processed(stack, topics, last, worker, timeout=240)
    finally:
        worker.stop()
    live = outputs(stack, topics)
    want = _replay(tmp_path, events)

    assert [c["action"] for c in live["commands"]] == ["rollback"]
    # live evaluates up to the watermark (last event - lateness); replay's end of input goes up to the last event
    wm = iso(max(parse_ts(e["ts"]) for e in events) - 30_000)
    assert live["decisions"] == _upto(want["decisions"], wm, lambda d: d["ts"])
    assert live["commands"] == _upto(want["commands"], wm, lambda c: c["ts"])
    assert live["pages"] == _upto(want["pages"], wm, lambda p: p["payload"]["timestamp"])
    assert len(live["decisions"]) > 3

    dead = live["deadletter"]
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "schema"]
    for d in dead:
        assert d["source"]["topic"] == topics.interactions and d["source"]["offset"] >= 0
    assert "alice@example.com" not in str(dead)
