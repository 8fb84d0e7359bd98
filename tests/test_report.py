"""Tests for streams.offline.report: the diff as a table, golden reports, determinism, bounds and input errors.

Regenerate the golden files with ``UPDATE_GOLDEN=1 pytest tests/test_report.py``.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from rules.exceptions import RollguardError
from streams.offline.report import (
    ComparisonInput,
    ReplayStats,
    ReportInputError,
    RulesetInfo,
    diff_outputs,
    write_report,
)
from streams.offline import report as report_module
from streams.offline import report_format

GOLDEN = Path(__file__).parent / "testdata" / "report"
DAY = "2026-11-02"
VERSION_A = "3f2a9c0d1e4b5a6f7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
VERSION_B = "b7e1d2c3a4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff"


def decision(time, rule, transition, *, tier="investigate", mode="enforce", feature="email-reply",
             phase="closed_beta", group=None, metric="error_rate", value=None, threshold=None, op=">",
             samples=None, ruleset="email-reply-closed-beta", version=VERSION_A, **extra):
    ts = f"{DAY}T{time}:00Z"
    return {"decision_id": f"d-{ruleset}-{rule}-{feature}-{phase}-{transition}-{time}", "ts": ts,
            "ruleset": ruleset, "ruleset_version": version, "rule_id": rule, "tier": tier, "mode": mode,
            "feature": feature, "phase": phase, "group": group or {}, "transition": transition, "metric": metric,
            "value": value, "threshold": threshold, "op": op, "samples": samples,
            "window_start": ts, "window_end": ts, **extra}


def command(time, rule, action, *, feature="email-reply", phase="closed_beta", ruleset="email-reply-closed-beta",
            reason="", decision_id=""):
    return {"command_id": f"c-{feature}-{phase}-{rule}-{time}", "ts": f"{DAY}T{time}:00Z", "feature": feature,
            "phase": phase, "action": action, "ruleset": ruleset, "rule_id": rule, "decision_id": decision_id,
            "reason": reason}


def page(time, rule, severity, *, feature="email-reply", phase="closed_beta", action="trigger", decision_id="",
         summary=""):
    return {"event_action": action, "dedup_key": f"{feature}/{phase}/{rule}",
            "payload": {"summary": summary or f"{rule} on {feature}", "source": "rollguard", "severity": severity,
                        "timestamp": f"{DAY}T{time}:00Z", "component": feature, "group": phase, "class": rule,
                        "custom_details": {"decision_id": decision_id}},
            "links": []}


def outputs(decisions=(), commands=(), pages=()):
    return {"decisions": list(decisions), "commands": list(commands), "pages": list(pages)}


# ------------------------------------------------------------------------------------------------ diff table

FIRE = decision("10:42", "latency-spike", "firing", tier="kill")
KILL = command("10:42", "latency-spike", "rollback")
CRIT = page("10:42", "latency-spike", "critical")

DIFF_CASES = {
    "identical outputs are the same": (
        outputs([FIRE], [KILL], [CRIT]), outputs([FIRE], [KILL], [CRIT]),
        [("commands", "same", 0), ("pages", "same", 0), ("decisions", "same", 0)]),
    "a command only in B is gained": (
        outputs(), outputs(commands=[KILL]), [("commands", "gained", None)]),
    "a firing only in A is lost": (
        outputs([FIRE]), outputs(), [("decisions", "lost", None)]),
    "a later firing in B is moved by the difference": (
        outputs([FIRE]), outputs([decision("10:54", "latency-spike", "firing", tier="kill")]),
        [("decisions", "moved", 12 * 60_000)]),
    "an earlier command in B has a negative delta": (
        outputs(commands=[KILL]), outputs(commands=[command("10:30", "latency-spike", "rollback")]),
        [("commands", "moved", -12 * 60_000)]),
    "a different tier at the same time is changed": (
        outputs([FIRE]), outputs([decision("10:42", "latency-spike", "firing", tier="pause")]),
        [("decisions", "changed", 0)]),
    "equal times pair first, the rest is lost": (
        outputs([decision("10:00", "r", "firing"), decision("14:00", "r", "firing")]),
        outputs([decision("14:00", "r", "firing")]),
        [("decisions", "lost", None), ("decisions", "same", 0)]),
    "unequal leftovers pair in time order": (
        outputs([decision("10:00", "r", "firing"), decision("12:00", "r", "firing")]),
        outputs([decision("10:05", "r", "firing"), decision("12:30", "r", "firing")]),
        [("decisions", "moved", 5 * 60_000), ("decisions", "moved", 30 * 60_000)]),
    "a renamed ruleset still matches by rule id": (
        outputs([FIRE]), outputs([decision("10:42", "latency-spike", "firing", tier="kill", ruleset="renamed",
                                           version=VERSION_B)]),
        [("decisions", "same", 0)]),
    "pending and cleared are not compared": (
        outputs([decision("10:00", "r", "pending")]), outputs([decision("10:01", "r", "cleared")]), []),
    "another group is another firing": (
        outputs([decision("10:00", "r", "firing", group={"platform": "ios"})]),
        outputs([decision("10:00", "r", "firing", group={"platform": "web"})]),
        [("decisions", "lost", None), ("decisions", "gained", None)]),
    "another action is another command": (
        outputs(commands=[KILL]), outputs(commands=[command("10:42", "latency-spike", "pause_rollout")]),
        [("commands", "gained", None), ("commands", "lost", None)]),
    "a page with another severity is lost and gained": (
        outputs(pages=[CRIT]), outputs(pages=[page("10:42", "latency-spike", "warning")]),
        [("pages", "lost", None), ("pages", "gained", None)]),
    "pages of different groups match their own decision's group": (
        outputs([decision("10:00", "r", "firing", group={"platform": "ios"}, decision_id="a1")],
                pages=[page("10:00", "r", "warning", decision_id="a1")]),
        outputs([decision("10:00", "r", "firing", group={"platform": "web"}, decision_id="b1")],
                pages=[page("10:00", "r", "warning", decision_id="b1")]),
        [("pages", "lost", None), ("pages", "gained", None), ("decisions", "lost", None),
         ("decisions", "gained", None)]),
}


@pytest.mark.parametrize("a, b, expected", DIFF_CASES.values(), ids=DIFF_CASES.keys())
def test_diff_outputs(a, b, expected):
    diff = diff_outputs(a, b)
    assert [(c.kind, c.status, c.delta_ms) for c in diff.changes] == expected
    assert diff.differs == any(status != "same" for _, status, _ in expected)


def test_diff_shows_which_definition_fields_changed():
    b = decision("10:42", "latency-spike", "firing", tier="kill", threshold=1200, metric="latency_p95")
    a = decision("10:42", "latency-spike", "firing", tier="pause", threshold=1500, metric="latency_p95")
    (change,) = diff_outputs(outputs([a]), outputs([b])).changes
    assert change.differences == (("tier", "pause", "kill"), ("threshold", 1500, 1200))


# ------------------------------------------------------------------------------------------- formatting

FORMAT_CASES = {
    "rate as percent": ("error_rate", 0.0423, False, "4.23%"),
    "flag rate as percent": ("flag_rate:pii_leak", 0.005, False, "0.5%"),
    "hallucination rate": ("hallucination_rate", 0.15, False, "15%"),
    "latency in ms": ("latency_p95", 1523.4, False, "1,523 ms"),
    "small cost in dollars": ("cost_per_request", 0.01234, False, "$0.0123"),
    "large cost in dollars": ("cost_total", 1234.5, False, "$1,234"),
    "count": ("tickets:billing", 12, False, "12"),
    "nps points": ("nps", -12.5, False, "-12.5"),
    "baseline change is relative": ("latency_p95", 0.52, True, "+52%"),
    "drift estimate in its signal's unit": ("drift:adwin:acceptance", 0.625, False, "62.5%"),
    "drift latency estimate": ("drift:page_hinkley:latency_ms", 812.3, False, "812 ms"),
    "no value": ("error_rate", None, False, "—"),
}


@pytest.mark.parametrize("metric, value, relative, text", FORMAT_CASES.values(), ids=FORMAT_CASES.keys())
def test_values_are_formatted_by_metric_name(metric, value, relative, text):
    assert report_module._fmt_value(metric, value, relative) == text


EVIDENCE_CASES = {
    "threshold rule": ({"metric": "error_rate", "value": 0.071, "op": ">", "threshold": 0.05}, "7.1% (> 5%)"),
    "confidence bound": ({"metric": "error_rate", "value": 0.071, "op": ">", "threshold": 0.05,
                          "details": {"bound": 0.062}}, "7.1%, bound 6.2% (> 5%)"),
    "baseline change": ({"metric": "cost_per_request", "value": 0.03, "op": ">=", "threshold": 1,
                         "details": {"baseline_value": 0.012, "change": 1.5}}, "$0.03, +150% vs baseline (>= +100%)"),
    "adwin level is its window mean": ({"metric": "drift:adwin:acceptance", "value": 0.41, "threshold": None},
                                       "window mean 41%"),
    # HDDM-A has no estimate of its own: the level is the mean since its last restart, which follows each flag; at
    # the firing it can be 0 while the error rate is 9%, so it is never shown as the metric's value
    "flagged, level since restart": ({"metric": "drift:hddm_a:error", "value": 0.0, "threshold": None,
                                      "details": {"drift_flags": 1}}, "drift flagged (mean since detector restart 0%)"),
    "flagged twice in the step": ({"metric": "drift:page_hinkley:latency_ms", "value": 812.3, "threshold": None,
                                   "details": {"drift_flags": 2}},
                                  "drift flagged ×2 (mean since detector restart 812 ms)"),
    "resolved, no flag": ({"metric": "drift:hddm_a:error", "value": 0.0474, "threshold": None},
                          "mean since detector restart 4.74%"),
    "drift without estimate": ({"metric": "drift:kswin:error", "value": None, "threshold": None}, "—"),
}


@pytest.mark.parametrize("decision_, text", EVIDENCE_CASES.values(), ids=EVIDENCE_CASES.keys())
def test_evidence_shows_what_the_rule_compared(decision_, text):
    assert report_format.evidence(decision_) == text


SUMMARY_CASES = {
    "rate metric without a template": ("kill: safe-llm/errors on email-reply/closed_beta: error_rate = 0.07525 > 0.05",
                                       "kill: safe-llm/errors on email-reply/closed_beta: error_rate = 7.52% > 5%"),
    "flag rate with a group": ("pause: p/leaks on f/beta [platform=mobile, region=eu]: flag_rate:pii_leak = 0.0004 >= "
                               "0.0001", "pause: p/leaks on f/beta [platform=mobile, region=eu]: flag_rate:pii_leak = "
                               "0.04% >= 0.01%"),
    "no value": ("investigate: p/r on f/p: acceptance_rate = n/a < 0.15",
                 "investigate: p/r on f/p: acceptance_rate = n/a < 15%"),
    "not a rate": ("kill: p/slow on f/p: latency_p95 = 1523 > 1500", "kill: p/slow on f/p: latency_p95 = 1523 > 1500"),
    "a template's own text": ("error rate 0.07 > 0.05 over 10m", "error rate 0.07 > 0.05 over 10m"),
}


@pytest.mark.parametrize("summary, shown", SUMMARY_CASES.values(), ids=SUMMARY_CASES.keys())
def test_report_shows_rates_in_untemplated_summaries_as_percent(tmp_path, summary, shown):
    cmd = command("10:00", "errors", "rollback", reason=summary)
    write_report(tmp_path / "report.md", ReplayStats(), [], [cmd], [])
    [row] = [line for line in (tmp_path / "report.md").read_text().splitlines() if "| rollback |" in line]
    assert row.endswith(f"| {shown} |")
    assert cmd["reason"] == summary  # the command itself (the contract's JSON) is left as it is


# ----------------------------------------------------------------------------------------------- scenario

STATS_A = ReplayStats(
    rule_paths=("rules/email-reply.yaml",), event_paths=("events/launch.jsonl.gz",), events_read=10_240,
    events_valid=10_180, invalid_by_reason={"schema": 42, "invalid_json": 18}, late=7, duplicates=11,
    first_event_ts=f"{DAY}T09:00:00Z", last_event_ts=f"{DAY}T12:00:00Z",
    rulesets=(RulesetInfo("email-reply-closed-beta", VERSION_A,
                          ("latency-spike", "error-rate", "acceptance-drift", "cost-watch", "hallucinations",
                           "tickets")),),
    feature_phases=(("email-reply", "closed_beta"), ("email-reply", "ga"), ("summarize", "default"),
                    ("translate", "default")),
    allowed_lateness="30s")

STATS_B = ReplayStats(
    rule_paths=("rules/candidate/",), event_paths=STATS_A.event_paths, events_read=10_240, events_valid=10_180,
    invalid_by_reason=STATS_A.invalid_by_reason, late=7, duplicates=11, first_event_ts=STATS_A.first_event_ts,
    last_event_ts=STATS_A.last_event_ts,
    rulesets=(RulesetInfo("email-reply-closed-beta", VERSION_B,
                          ("latency-spike", "error-rate", "acceptance-drift", "cost-watch", "tickets", "toxicity")),),
    feature_phases=STATS_A.feature_phases, allowed_lateness="30s")


def scenario_a():
    kill = decision("10:42", "latency-spike", "firing", tier="kill", metric="latency_p95", value=1620.4,
                    threshold=1500, samples=240)
    pause_ga = decision("11:00", "error-rate", "firing", tier="pause", phase="ga", value=0.071, threshold=0.05,
                        samples=1200)
    decisions = [
        decision("09:55", "acceptance-drift", "pending", metric="drift:adwin:acceptance", value=0.62),
        decision("10:00", "acceptance-drift", "firing", metric="drift:adwin:acceptance", value=0.62),
        decision("10:20", "acceptance-drift", "resolved", metric="drift:adwin:acceptance", value=0.62),
        decision("10:30", "latency-spike", "pending", tier="kill", metric="latency_p95", value=1530,
                 threshold=1500, samples=230),
        decision("10:35", "error-rate", "pending", tier="pause", value=0.06, threshold=0.05, samples=300),
        decision("10:36", "error-rate", "cleared", tier="pause", value=0.04, threshold=0.05, samples=310),
        kill,
        decision("10:45", "error-rate", "inhibited", tier="pause", value=0.09, threshold=0.05, samples=320),
        decision("10:50", "cost-watch", "firing", tier="pause", mode="shadow", metric="cost_per_request",
                 value=0.0123, threshold=0.01, samples=400, group={"platform": "ios"}),
        pause_ga,
        decision("11:05", "tickets", "firing", feature="summarize", phase="default", metric="tickets_per_1k_users",
                 value=3.4, threshold=2, samples=880, op=">="),
        decision("11:20", "latency-spike", "held", tier="kill", feature="summarize", phase="default",
                 metric="latency_p95", value=1610, threshold=0.5, samples=500,
                 details={"baseline_value": 1000, "baseline_samples": 480, "change": 0.61}),
    ]
    commands = [
        command("10:42", "latency-spike", "rollback", decision_id=kill["decision_id"],
                reason="P95 latency 1620 ms > 1500 ms for 10m"),
        command("11:00", "error-rate", "pause_rollout", phase="ga", decision_id=pause_ga["decision_id"],
                reason="error rate 7.1% > 5% | since 11:00"),
    ]
    pages = [
        page("10:00", "acceptance-drift", "warning"),
        page("10:20", "acceptance-drift", "warning", action="resolve"),
        page("10:42", "latency-spike", "critical", decision_id=kill["decision_id"]),
        page("11:00", "error-rate", "error", phase="ga", decision_id=pause_ga["decision_id"]),
        page("11:05", "tickets", "warning", feature="summarize", phase="default"),
        page("11:20", "latency-spike", "critical", feature="summarize", phase="default",
             summary="kill held by breaker: act by hand"),
    ]
    return decisions, commands, pages


def scenario_b():
    """The candidate: latency threshold 1200 (kills 12m earlier), no ga pause, a new toxicity kill."""
    kill = decision("10:30", "latency-spike", "firing", tier="kill", metric="latency_p95", value=1290,
                    threshold=1200, samples=230, version=VERSION_B)
    tox = decision("11:10", "toxicity", "firing", tier="kill", feature="summarize", phase="default",
                   metric="flag_rate:toxicity", value=0.012, threshold=0.01, samples=900, version=VERSION_B)
    decisions = [
        decision("10:00", "acceptance-drift", "firing", metric="drift:adwin:acceptance", value=0.62, version=VERSION_B),
        decision("10:20", "acceptance-drift", "resolved", metric="drift:adwin:acceptance", value=0.62, version=VERSION_B),
        kill,
        decision("10:45", "error-rate", "inhibited", tier="pause", value=0.09, threshold=0.05, samples=320,
                 version=VERSION_B),
        decision("11:05", "tickets", "firing", feature="summarize", phase="default", metric="tickets_per_1k_users",
                 value=3.4, threshold=2, samples=880, op=">=", version=VERSION_B),
        tox,
    ]
    commands = [
        command("10:30", "latency-spike", "rollback", decision_id=kill["decision_id"],
                reason="P95 latency 1290 ms > 1200 ms for 10m"),
        command("11:10", "toxicity", "rollback", feature="summarize", phase="default", decision_id=tox["decision_id"],
                reason="toxicity 1.2% > 1%"),
    ]
    pages = [
        page("10:00", "acceptance-drift", "warning"),
        page("10:20", "acceptance-drift", "warning", action="resolve"),
        page("10:30", "latency-spike", "critical", decision_id=kill["decision_id"]),
        page("11:05", "tickets", "warning", feature="summarize", phase="default"),
        page("11:10", "toxicity", "critical", feature="summarize", phase="default", decision_id=tox["decision_id"]),
    ]
    return decisions, commands, pages


def render(tmp_path, name="report.md", a=None, compare=None, stats=STATS_A, **kwargs):
    path = tmp_path / name
    write_report(path, stats, *(a or scenario_a()), compare=compare, **kwargs)
    return path.read_text(encoding="utf-8")


def comparison(b=None):
    decisions, commands, pages = b or scenario_b()
    return ComparisonInput("baseline", "candidate", STATS_B, decisions, commands, pages)


def assert_golden(name, text):
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from golden; UPDATE_GOLDEN=1 if intended"


def test_single_replay_report_matches_golden(tmp_path):
    assert_golden("single.md", render(tmp_path))


def test_compare_report_matches_golden(tmp_path):
    assert_golden("compare.md", render(tmp_path, compare=comparison()))


def test_bottom_line_names_kills_and_pages(tmp_path):
    text = render(tmp_path, compare=comparison())
    line = next(line for line in text.splitlines() if line.startswith("**Bottom line:**"))
    assert line == ("**Bottom line:** candidate adds 1 kill (summarize/default at 11:10), removes 1 pause "
                    "(email-reply/ga at 11:00), moves 1 kill (email-reply/closed_beta 12m earlier), "
                    "adds 1 kill page, removes 1 kill page, removes 1 pause page.")


def test_identical_sides_say_so(tmp_path):
    text = render(tmp_path, compare=ComparisonInput("A", "B", STATS_A, *scenario_a()))
    assert "**Bottom line:** B decides exactly like A over these events." in text


# -------------------------------------------------------------------------------------------- the verdict


def verdict_rows(text):
    section = text.split("## Verdict", 1)[1].split("###", 1)[0]
    return {tuple(c.strip() for c in line.strip("|").split("|")[:3])
            for line in section.splitlines() if line.startswith("| ") and "feature" not in line}


def test_verdict_latches_pause_and_kill_and_drops_resolved_investigations(tmp_path):
    assert verdict_rows(render(tmp_path)) == {
        ("email-reply", "closed_beta", "**KILL**"),  # acceptance-drift resolved; the kill latched
        ("email-reply", "ga", "**PAUSE**"),
        ("summarize", "default", "investigate"),    # the held kill was not executed; tickets still firing
        ("translate", "default", "ok"),              # seen in events, nothing fired
    }


def test_shadow_firings_do_not_change_the_verdict(tmp_path):
    shadow = [decision("10:00", "cost-watch", "firing", tier="kill", mode="shadow", feature="translate",
                       phase="default")]
    text = render(tmp_path, a=(shadow, [], []))
    assert ("translate", "default", "ok") in verdict_rows(text)
    assert "| kill (shadow) |" in text


# ------------------------------------------------------------------------------------ determinism, bounds


def test_report_is_byte_identical_whatever_the_input_order(tmp_path):
    first = render(tmp_path, "one.md", compare=comparison())
    rng = random.Random(7)
    shuffled_a = [rng.sample(part, len(part)) for part in scenario_a()]
    shuffled_b = [rng.sample(part, len(part)) for part in scenario_b()]
    second = render(tmp_path, "two.md", a=shuffled_a, compare=comparison(shuffled_b))
    assert first == second
    assert (tmp_path / "one.md").read_bytes() == (tmp_path / "two.md").read_bytes()


def test_large_replays_are_capped_and_read_from_generators(tmp_path):
    def many():
        for minute in range(600):
            time = f"{10 + minute // 60:02d}:{minute % 60:02d}"
            yield decision(time, "flappy", "pending")
            yield decision(time, "flappy", "firing" if minute % 2 == 0 else "resolved")

    text = render(tmp_path, a=(many(), iter(()), iter(())), max_rows=5)
    timeline = text.split("### email-reply-closed-beta", 1)[1]
    assert timeline.count("| flappy |") == 5
    assert "… 595 more, see decisions.jsonl" in timeline
    assert "300 firing · 300 resolved · 0 inhibited · 0 held; not shown: 600 pending, 0 cleared." in timeline
    assert "| 2026-11-02 10:00:00Z | flappy |" in timeline  # the earliest rows are the ones shown


def test_quiet_rules_are_listed(tmp_path):
    assert "Quiet rules: hallucinations." in render(tmp_path)


# --------------------------------------------------------------------------------------------- bad input


BAD_INPUT_CASES = {
    "decision without ts": (
        ([{k: v for k, v in FIRE.items() if k != "ts"}], [], []), "decisions[0] of A: missing field(s) ts"),
    "command with a naive time": (
        ([], [dict(KILL, ts="2026-11-02T10:42:00")], []), "commands[0] of A: time '2026-11-02T10:42:00'"),
    "page without payload": (([], [], [{"event_action": "trigger"}]), "pages[0] of A: missing field(s) payload"),
    "decision that is not an object": ((["firing"], [], []), "decisions[0] of A: expected a JSON object"),
}


@pytest.mark.parametrize("a, message", BAD_INPUT_CASES.values(), ids=BAD_INPUT_CASES.keys())
def test_malformed_records_are_located(tmp_path, a, message):
    with pytest.raises(ReportInputError, match="^" + re.escape(message)) as err:
        render(tmp_path, a=a)
    assert isinstance(err.value, RollguardError)


def test_verdict_is_capped_worst_first(tmp_path):
    many = [decision("10:00", "r", "firing", feature=f"f{i:02d}", phase="p") for i in range(9)]
    kill = [command("10:00", "r", "rollback", feature="z-last-by-name", phase="p")]
    text = render(tmp_path, a=(many, kill, []), stats=ReplayStats(), max_rows=3)
    assert [row[:3] for row in sorted(verdict_rows(text))] == [
        ("f00", "p", "investigate"), ("f01", "p", "investigate"), ("z-last-by-name", "p", "**KILL**")]
    assert "… 7 more feature/phase pairs, all at or below the last tier shown" in text


def test_an_empty_replay_still_reports(tmp_path):
    text = render(tmp_path, a=([], [], []), stats=ReplayStats(),
                  compare=ComparisonInput("A", "B", ReplayStats(), [], [], []))
    assert "No feature produced a decision, command or page." in text
    assert "**Bottom line:** B decides exactly like A over these events." in text
    assert "None on either side." in text
    assert text.count("No rulesets loaded and no decisions.") == 2


def test_malformed_candidate_records_name_side_b(tmp_path):
    with pytest.raises(ReportInputError, match=re.escape("commands[0] of B: missing field(s) action")):
        render(tmp_path, compare=comparison(([], [{k: v for k, v in KILL.items() if k != "action"}], [])))
