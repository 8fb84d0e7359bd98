"""Broken producer clocks through the shells: ``rollguard replay`` of an incident file with +1 day, +1 year, year-9999
and 1970 events mixed in (and a new feature whose first event is dated 1970) decides what the clean file decides,
lists the outliers in deadletter.jsonl, the summary and report.md; the live worker on the embedded broker and Redis
decides the same as replay and dead-letters the same outliers."""

from __future__ import annotations

import copy
import io
import time
from contextlib import redirect_stdout

import orjson
import pytest

from rules.events import parse_ts
from rules.loader import CATALOG, load_rules
from rules.outputs import iso
from streams.cli import main
from streams.offline.replay import replay
from streams.offline.scenario import generate, scenario_from_args, write_jsonl
from streams.settings import Settings
from tests.live_kit import LiveWorker, merge_offsets, outputs, produce, read_jsonl, setup_topics, wait_processed

USER_KEY = "test-user-key-0123456789"
DAY, YEAR = 86_400_000, 365 * 86_400_000


def incident_with_outliers(hours: str = "4h") -> tuple[list[dict], list[dict], set[str]]:
    """(clean events, the same with outliers inserted, the outliers' event ids)."""
    clean = list(generate(scenario_from_args("pii_leak", duration_ms=hours, seed=11)))
    dirty = list(clean)
    bad: set[str] = set()
    for k, (at, shift) in enumerate([(2_001, DAY), (9_000, YEAR), (15_000, "9999-12-31T23:59:59Z"), (21_000, 0),
                                     (30_000, DAY), (40_000, "1970-01-01T00:00:00Z"), (45_000, YEAR)]):  # fmt: skip
        e = copy.deepcopy(clean[at])
        e["event_id"] = f"outlier-{k}"
        e["ts"] = shift if isinstance(shift, str) else (parse_ts(e["ts"]) + shift if shift else 0)
        if e["type"] == "interaction":
            e["flags"] = ["pii_leak"]  # it would kill, were its time trusted
        dirty.insert(at, e)
        bad.add(e["event_id"])
    # a brand-new feature whose very first event is dated 1970, then ordinary traffic
    first = copy.deepcopy(clean[100])
    newcomer = []
    for i, e in enumerate(clean[100:400]):
        n = copy.deepcopy(e)
        n["feature"], n["event_id"] = "brand-new", f"brand-new-{i}"
        newcomer.append(n)
    first.update(feature="brand-new", event_id="brand-new-1970", ts="1970-01-01T00:00:00Z")
    bad.add(first["event_id"])
    dirty[100:100] = [first]
    dirty[200:200] = newcomer
    clean[200:200] = newcomer
    return clean, dirty, bad


def _replay(tmp_path, name, events):
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(events, path)
    s = Settings(user_key=USER_KEY)
    out = tmp_path / name
    res = replay(load_rules([CATALOG]), [str(path)], out, config=s.engine_config(), user_key=s.user_key_bytes(),
                 progress=False)  # fmt: skip
    return res, {k: read_jsonl(out / f"{k}.jsonl") for k in ("decisions", "commands", "pages", "deadletter")}


def test_replay_of_an_incident_with_bad_clocks_decides_what_the_clean_file_decides(tmp_path):
    clean, dirty, bad = incident_with_outliers()
    started = time.process_time()
    res, got = _replay(tmp_path, "dirty", dirty)
    spent = time.process_time() - started
    _, want = _replay(tmp_path, "clean", clean)
    assert [c["action"] for c in want["commands"]] == ["rollback"]
    for k in ("decisions", "commands", "pages"):
        assert got[k] == want[k], k
    dead = got["deadletter"]
    assert {d["payload"]["event_id"] for d in dead} == bad and all(d["reason"] == "ts_outlier" for d in dead)
    lines = {d["payload"]["event_id"]: d["source"]["line"] for d in dead}
    text = (tmp_path / "dirty.jsonl").read_bytes().splitlines()
    for eid, line in lines.items():
        assert orjson.loads(text[line - 1])["event_id"] == eid  # the dead letter names the file line
    assert res.engine.stats.outliers == {"ahead": 5, "behind": 3}
    assert "**Clock outliers**: 8 events (5 ahead, 3 behind)" in (tmp_path / "dirty" / "report.md").read_text()
    # the year-9999 event used to make replay spin for ever, and 1970 to walk 56 years of minutes: the whole replay
    # costs what the clean one does (generous bound: this is no benchmark)
    assert spent < 120


def test_replay_cli_summary_counts_clock_outliers_and_takes_the_skew_option(tmp_path):
    _, dirty, _ = incident_with_outliers()
    path = tmp_path / "e.jsonl"
    write_jsonl(dirty[:30_000], path)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["replay", "--rules", str(CATALOG), "--events", str(path), "--out", str(tmp_path / "o"),
                     "--charts", "none"]) == 0  # fmt: skip
    assert "clock outliers (ts_outlier, dead-lettered)" in buf.getvalue()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["replay", "--rules", str(CATALOG), "--events", str(path), "--out", str(tmp_path / "off"),
                     "--charts", "none", "--max-clock-skew", "off"]) == 0  # fmt: skip
    assert "clock outliers" not in buf.getvalue()
    assert main(["replay", "--rules", str(CATALOG), "--events", str(path), "--out", str(tmp_path / "x"),
                 "--max-clock-skew", "200ms"]) == 2  # fmt: skip


@pytest.mark.slow
def test_live_worker_quarantines_the_same_outliers_and_decides_what_replay_decides(stack, topic_prefix, tmp_path):
    clean, dirty, bad = incident_with_outliers("3h")
    topics = setup_topics(stack, topic_prefix)
    worker = LiveWorker(stack, topics, tmp_path / "worker.log")  # its user key is USER_KEY
    try:
        last = merge_offsets(
            produce(stack, topics, dirty[:8000], envelope=1),  # single-event messages ...
            produce(stack, topics, dirty[8000:], envelope=50),  # ... and batch envelopes
        )
        wait_processed(stack, topics, last, worker, timeout=240)
    finally:
        worker.stop()
    live = outputs(stack, topics)
    _, want = _replay(tmp_path, "dirty", dirty)
    assert [c["action"] for c in live["commands"]] == ["rollback"]
    wm = iso(max(parse_ts(e["ts"]) for e in clean) - 30_000)
    assert live["decisions"] == [d for d in want["decisions"] if d["ts"] <= wm]
    assert live["commands"] == [c for c in want["commands"] if c["ts"] <= wm]
    assert live["pages"] == [p for p in want["pages"] if p["payload"]["timestamp"] <= wm]

    def same(d):
        return d["payload"]["event_id"], d["detail"], orjson.dumps(d["outlier"]), orjson.dumps(d["payload"])

    dead = [d for d in live["deadletter"] if d["reason"] == "ts_outlier"]
    assert {d["payload"]["event_id"] for d in dead} == bad
    assert sorted(map(same, dead)) == sorted(map(same, want["deadletter"]))
    for d in dead:
        assert d["source"]["topic"] in (topics.interactions, topics.feedback) and d["source"]["offset"] >= 0
