"""Eval events (``type: eval``): offline evaluation runs of a suite, as events of the feedback stream, and the metrics
``eval_score:<suite>`` and ``eval_pass_rate:<suite>`` they feed."""

from __future__ import annotations

import orjson
import pytest

from rules.engine import Engine, EngineConfig
from rules.events import Event, EventParser, Pseudonymizer
from rules.exceptions import InvalidEvent
from rules.loader import load_rules_text
from tests.reference_engine import ReferenceEngine

HOUR = 3_600_000
PARSER = EventParser(Pseudonymizer(b"eval-test-key-0123456789"))
RULES = load_rules_text("""
version: 1
name: evals
features: ["f"]
rules:
  - {id: quality, tier: kill, metric: "eval_score:quality", op: "<", threshold: 0.7, window: 1d, every: 1h,
     min_samples: 300}
  - {id: passes, tier: investigate, metric: "eval_pass_rate:quality", op: "<", threshold: 0.8, window: 1d, every: 1h,
     min_samples: 100, confidence: 0.95}
  - {id: errors, tier: pause, metric: error_rate, op: ">", threshold: 0.5, window: 1h, every: 1h, min_samples: 5}
""")


def run_of(i: int, score: float | None, n: int, passed: int | None = None, suite: str = "quality") -> dict:
    d = {"type": "eval", "event_id": f"run{i}", "ts": i * HOUR + 1, "feature": "f", "suite": suite, "n": n,
         "model_version": "m2"}  # fmt: skip
    if score is not None:
        d["score"] = score
    if passed is not None:
        d["passed"] = passed
    return d


def traffic(hours: int) -> list[dict]:
    return [{"type": "interaction", "event_id": f"i{t}", "ts": t * 60_000, "feature": "f"} for t in range(hours * 60)]


def outcome(objs: list[dict], engine=Engine):
    eng = engine(RULES, EngineConfig())
    items = sorted((PARSER.parse_obj(o) for o in objs), key=lambda e: e.ts)
    out = eng.step(items)
    out.extend(eng.finish())
    return out


def test_a_run_parses_as_the_feedback_stream_and_dead_letters_read_as_sent():
    ev = PARSER.parse_obj(run_of(3, 0.68, 300, 210))
    assert (ev.type, ev.kind, ev.label, ev.score, ev.n, ev.passed) == ("feedback", "eval", "quality", 0.68, 300, 210)
    assert ev.payload() == {"type": "eval", "event_id": "run3", "ts": "1970-01-01T03:00:00.001Z", "feature": "f",
                            "phase": "default", "model_version": "m2", "suite": "quality", "score": 0.68, "n": 300,
                            "passed": 210}  # fmt: skip
    [row] = PARSER.parse_rows(orjson.dumps(run_of(3, 0.68, 300, 210)))
    assert (row.type, row.kind, row.label, row.n, row.passed) == ("feedback", "eval", "quality", 300, 210)
    # a held event persists with its feature: n and passed survive, and states written before them read the same
    assert Event.from_state(ev.to_state()) == ev
    old = PARSER.parse_obj({"type": "feedback", "event_id": "s", "ts": 5, "feature": "f", "kind": "thumbs",
                            "label": "up"}).to_state()  # fmt: skip
    assert len(old) == 21 and Event.from_state(old).n is None


@pytest.mark.parametrize("patch, message", [
    ({"score": None, "passed": None}, "an eval run needs a score, a passed count, or both"),
    ({"passed": 301}, "passed (301) cannot exceed n (300)"),
    ({"n": 0}, "n: Input should be greater than or equal to 1"),
    ({"suite": "Quality!"}, "suite: String should match pattern"),
    ({"score": 2e6}, "score: Input should be less than or equal to 1000000"),
    ({"n": 1.5}, "n: Input should be a valid integer"),
])  # fmt: skip
def test_a_malformed_run_is_refused_with_a_located_reason(patch, message):
    obj = {k: v for k, v in {**run_of(1, 0.7, 300, 100), **patch}.items() if v is not None}
    with pytest.raises(InvalidEvent) as e:
        PARSER.parse_obj(obj)
    assert e.value.reason == "schema" and message in e.value.detail
    assert PARSER.parse_rows(orjson.dumps(obj)) is None


def test_the_score_is_the_item_weighted_mean_and_the_pass_rate_the_share_of_items():
    # two runs: 100 items at 0.9 and 300 at 0.6: mean 0.675 over 400 items (not 0.75, the mean of the runs)
    objs = traffic(4) + [run_of(0, 0.9, 100, 95), run_of(1, 0.6, 300, 150)]
    out = outcome(objs)
    kill = next(d for d in out.decisions if d["rule_id"] == "quality" and d["transition"] == "firing")
    assert kill["value"] == pytest.approx(0.675) and kill["samples"] == 400
    assert [c["action"] for c in out.commands] == ["rollback"]
    page = next(d for d in out.decisions if d["rule_id"] == "passes")
    assert page["value"] == pytest.approx(245 / 400) and page["details"]["bound"] < 0.8
    ref = outcome(objs, ReferenceEngine)
    assert orjson.dumps(out.decisions) == orjson.dumps(ref.decisions)


def test_runs_of_another_suite_or_too_few_items_decide_nothing():
    out = outcome(traffic(4) + [run_of(0, 0.5, 100, 10, suite="relevance"), run_of(1, 0.5, 200)])
    assert not [d for d in out.decisions if d["rule_id"] == "quality" and d["transition"] == "firing"]


def test_a_run_rides_the_feedback_clock_so_a_late_one_is_late():
    eng = Engine(RULES, EngineConfig(max_clock_skew_ms=None))
    eng.step([PARSER.parse_obj(o) for o in traffic(3)])
    eng.step([PARSER.parse_obj(run_of(2, 0.9, 10))])  # the feedback stream is now at 2h
    eng.step([PARSER.parse_obj(run_of(0, 0.1, 10_000))])  # two hours behind its own stream: late, not applied
    assert eng.stats.late == 1
