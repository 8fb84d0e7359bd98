"""The example scenario generator: deterministic, bounded out-of-order, contract-valid, realistic, incidents local."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import inspect
import itertools
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from streams.offline.scenario import (
    INCIDENT_KINDS,
    PRESETS,
    Incident,
    Platform,
    Scenario,
    ScenarioError,
    generate,
    scenario_from_args,
    write_jsonl,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
MONDAY_UTC = 1_793_577_600_000  # 2026-11-02T00:00:00Z
# 40 busy minutes (from 10:00 at UTC-5) with a 20-minute incident in the middle: enough for rates, fast to make
BUSY = dict(start=MONDAY_UTC + 15 * HOUR, duration_ms=40 * MINUTE, review_prob=0.05, review_delay_ms=5 * MINUTE)
WINDOW = (MONDAY_UTC + 15 * HOUR + 10 * MINUTE, MONDAY_UTC + 15 * HOUR + 30 * MINUTE)

# --- a plain CONTRACT §1 checker -------------------------------------------------------------------------------------
NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
LABEL = re.compile(r"[a-z0-9_]{1,64}")
COMMON = {"type", "event_id", "ts", "feature", "phase", "segment", "user", "model_version", "prompt_version"}
INTERACTION = COMMON | {"outcome", "latency_ms", "tokens_in", "tokens_out", "cost_usd", "confidence", "flags"}
FEEDBACK = COMMON | {"kind", "label", "score", "interaction_id"}
LABELS = {"suggestion": {"accepted", "edited", "rejected", "ignored"}, "thumbs": {"up", "down"},
          "survey": {"csat", "nps"}}


def is_number(x) -> bool:
    return type(x) in (int, float) and x == x


def check_event(e: dict) -> None:
    assert e["type"] in ("interaction", "feedback"), e
    assert isinstance(e["event_id"], str) and 1 <= len(e["event_id"]) <= 128, e
    if isinstance(e["ts"], str):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", e["ts"]), e
        assert datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).tzinfo is not None
    else:
        assert type(e["ts"]) is int and e["ts"] >= 0, e
    assert NAME.fullmatch(e["feature"]) and NAME.fullmatch(e["phase"]), e
    assert isinstance(e["segment"], dict) and len(e["segment"]) <= 16, e
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in e["segment"].items()), e
    for key in ("user", "model_version", "prompt_version"):
        assert isinstance(e[key], str) and len(e[key]) <= 128, e
    if e["type"] == "interaction":
        assert set(e) <= INTERACTION, set(e) - INTERACTION
        assert e["outcome"] in ("ok", "error", "timeout", "refused"), e
        assert is_number(e["latency_ms"]) and e["latency_ms"] >= 0, e
        assert type(e["tokens_in"]) is int and type(e["tokens_out"]) is int, e
        assert e["tokens_in"] >= 0 and e["tokens_out"] >= 0, e
        assert is_number(e["cost_usd"]) and e["cost_usd"] >= 0, e
        assert "confidence" not in e or (is_number(e["confidence"]) and 0 <= e["confidence"] <= 1), e
        assert "flags" not in e or (e["flags"] and all(LABEL.fullmatch(f) for f in e["flags"])), e
    else:
        assert set(e) <= FEEDBACK, set(e) - FEEDBACK
        assert e["kind"] in ("suggestion", "thumbs", "review", "ticket", "survey"), e
        assert LABEL.fullmatch(e["label"]) and e["label"] in LABELS.get(e["kind"], {e["label"]}), e
        assert isinstance(e["interaction_id"], str) and len(e["interaction_id"]) <= 128, e
        if e["kind"] == "review":
            assert type(e["score"]) is int and 1 <= e["score"] <= 5, e
        elif e["kind"] == "survey":
            assert type(e["score"]) is int and 0 <= e["score"] <= (5 if e["label"] == "csat" else 10), e
            assert e["label"] == "nps" or e["score"] >= 1, e
        else:
            assert "score" not in e, e


# --- helpers ---------------------------------------------------------------------------------------------------------
def interactions(events):
    return [e for e in events if e["type"] == "interaction"]


def feedback(events, kind):
    return [e for e in events if e["type"] == "feedback" and e["kind"] == kind]


def acceptance(events) -> float:
    labels = [e["label"] for e in feedback(events, "suggestion")]
    return sum(label in ("accepted", "edited") for label in labels) / len(labels)


def max_lateness(events) -> int:
    latest, worst = -1, 0
    for e in events:
        worst, latest = max(worst, latest - e["ts"]), max(latest, e["ts"])
    return worst


@pytest.fixture(scope="module")
def clean():
    return list(generate(Scenario(**BUSY)))


# --- determinism, order, laziness, files -----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, suffix: str):
    scenario = PRESETS["latency_spike"](duration_ms=10 * MINUTE, start=BUSY["start"])
    paths = [tmp_path / f"{name}{suffix}" for name in ("a", "b", "c")]
    counts = [write_jsonl(generate(scenario), paths[0]), write_jsonl(generate(scenario), paths[1]),
              write_jsonl(generate(dataclasses.replace(scenario, seed=8)), paths[2])]
    assert counts[0] == counts[1] > 1000
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_gzip_output_holds_the_same_lines_as_plain(tmp_path: Path):
    scenario = Scenario(duration_ms=10 * MINUTE)
    n = write_jsonl(generate(scenario), tmp_path / "e.jsonl")
    assert write_jsonl(generate(scenario), tmp_path / "e.jsonl.gz") == n
    plain = (tmp_path / "e.jsonl").read_bytes()
    assert gzip.decompress((tmp_path / "e.jsonl.gz").read_bytes()) == plain
    assert plain.count(b"\n") == n


def test_arrival_order_is_bounded_but_not_perfect(clean):
    # the ordering bound promised to consumers is 20 s; the generator's transport delay stays within 5 s
    assert 0 < max_lateness(clean) <= 5_000
    assert max_lateness(list(generate(Scenario(duration_ms=10 * MINUTE, max_arrival_jitter_ms=0)))) == 0


def test_event_ids_are_unique_and_feedback_links_to_real_interactions(clean):
    ids = [e["event_id"] for e in clean]
    assert len(ids) == len(set(ids))
    interaction_ids = {e["event_id"] for e in interactions(clean)}
    assert all(e["interaction_id"] in interaction_ids for e in clean if e["type"] == "feedback")
    by_id = {e["event_id"]: e for e in interactions(clean)}
    assert all(e["ts"] > by_id[e["interaction_id"]]["ts"] for e in clean if e["type"] == "feedback")


def test_generate_streams_lazily():
    month = Scenario(duration_ms=30 * 24 * HOUR, mean_rate_per_s=500.0)
    events = generate(month)
    assert inspect.isgenerator(events)
    assert len(list(itertools.islice(events, 2_000))) == 2_000  # a month at 500/s would not fit in memory


def test_feedback_due_after_the_end_is_not_emitted():
    scenario = Scenario(duration_ms=30 * MINUTE)
    assert max(e["ts"] for e in generate(scenario)) < scenario.end


# --- contract --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_event_follows_the_contract(name: str):
    scenario = PRESETS[name](duration_ms=2 * HOUR, mean_rate_per_s=1.0, review_delay_ms=20 * MINUTE)
    events = list(generate(scenario))
    assert {e["type"] for e in events} == {"interaction", "feedback"}
    for event in events:
        check_event(event)


def test_rfc3339_timestamps_are_the_same_instants():
    base = Scenario(duration_ms=10 * MINUTE)
    as_ms = list(generate(base))
    as_text = list(generate(dataclasses.replace(base, ts_format="rfc3339")))
    for ms, text in zip(as_ms, as_text):
        check_event(text)
        assert int(datetime.fromisoformat(text["ts"].replace("Z", "+00:00")).timestamp() * 1000) == ms["ts"]
    assert len(as_ms) == len(as_text)


def test_duplicates_are_resent_copies_within_the_order_bound():
    events = list(generate(Scenario(duration_ms=20 * MINUTE, duplicate_prob=0.02)))
    seen: dict[str, dict] = {}
    resent = 0
    for event in events:
        if event["event_id"] in seen:
            resent += 1
            assert event == seen[event["event_id"]] and event is not seen[event["event_id"]]
        seen[event["event_id"]] = event
    assert 0.01 < resent / len(seen) < 0.03
    assert max_lateness(events) <= 5_000


# --- realism of the clean scenario -----------------------------------------------------------------------------------
def test_clean_rates_are_as_designed(clean):
    inter = interactions(clean)
    latency = np.array([e["latency_ms"] for e in inter])
    outcomes = [e["outcome"] for e in inter]
    thumbs = [e["label"] for e in feedback(clean, "thumbs")]
    reviews = [e["label"] for e in feedback(clean, "review")]
    mobile = [e for e in clean if e["segment"]["platform"] == "mobile"]
    desktop = [e for e in clean if e["segment"]["platform"] == "desktop"]
    measured = {
        "interactions_per_s": len(inter) / (BUSY["duration_ms"] / 1000),
        "error_rate": sum(o in ("error", "timeout") for o in outcomes) / len(inter),
        "refusal_rate": outcomes.count("refused") / len(inter),
        "latency_p95": np.percentile(latency, 95),
        "mobile_share": len(interactions(mobile)) / len(inter),
        "cost_per_request": np.mean([e["cost_usd"] for e in inter]),
        "acceptance": acceptance(clean),
        "mobile_minus_desktop_acceptance": acceptance(mobile) - acceptance(desktop),
        "thumbs_down_rate": thumbs.count("down") / len(thumbs),
        "review_share": len(reviews) / len(inter),  # review_prob is 5% in this fixture
        "hallucination_rate": reviews.count("hallucination") / len(reviews),
    }
    expected = {
        "interactions_per_s": (6.0, 11.0),  # 10:00 local on a weekday: above the 5/s daily mean
        "error_rate": (0.005, 0.010),
        "refusal_rate": (0.003, 0.008),
        "latency_p95": (600, 720),
        "mobile_share": (0.38, 0.42),
        "cost_per_request": (0.0018, 0.0023),
        "acceptance": (0.27, 0.33),
        "mobile_minus_desktop_acceptance": (-0.08, -0.02),
        "thumbs_down_rate": (0.07, 0.14),
        "review_share": (0.035, 0.05),  # reviews of the last minutes fall after the end
        "hallucination_rate": (0.003, 0.02),
    }
    outside = {k: round(float(v), 5) for k, v in measured.items() if not expected[k][0] <= v <= expected[k][1]}
    assert not outside, f"outside the designed range: {outside}"


def test_diurnal_curve_has_a_quiet_night_and_a_busy_afternoon():
    tuesday = MONDAY_UTC + 24 * HOUR  # its UTC day starts on Monday evening at UTC-5: weekday traffic throughout
    counts = np.bincount([(e["ts"] - tuesday) // HOUR for e in generate(Scenario(start=tuesday, mean_rate_per_s=0.2))
                          if e["type"] == "interaction"], minlength=24)
    assert 0.10 < counts.min() / counts.max() < 0.22
    assert counts.argmin() in range(6, 11) and counts.argmax() in range(16, 23)  # 01-05 and 11-17 at UTC-5


def test_weekend_traffic_is_lower():
    saturday = MONDAY_UTC + 5 * 24 * HOUR + 5 * HOUR
    rates = [sum(e["type"] == "interaction" for e in generate(Scenario(start=t + 15 * HOUR, duration_ms=HOUR)))
             for t in (MONDAY_UTC, saturday - 5 * HOUR)]
    assert 0.25 < rates[1] / rates[0] < 0.5


# --- incidents -------------------------------------------------------------------------------------------------------
def in_window(events):
    return [e for e in events if WINDOW[0] <= e["ts"] < WINDOW[1]]


def linked_to_window(events, ts_of, segment=None):
    """Events of interactions in the window (and the segment); the rest must be untouched by the incident."""
    return [e for e in events if WINDOW[0] <= ts_of[e.get("interaction_id", e["event_id"])] < WINDOW[1]
            and all(e["segment"][k] == v for k, v in (segment or {}).items())]


def p95(events):
    return np.percentile([e["latency_ms"] for e in interactions(events)], 95)


def mean(events, key):
    return np.mean([e[key] for e in interactions(events) if key in e])


def flag_rate(events, flag="pii_leak"):
    inter = interactions(events)
    return sum(flag in e.get("flags", ()) for e in inter) / len(inter)


def hallucination_rate(events):
    labels = [e["label"] for e in feedback(events, "review")]
    return labels.count("hallucination") / len(labels)


def error_rate(events):
    inter = interactions(events)
    return sum(e["outcome"] == "error" for e in inter) / len(inter)


def late_half(events):
    return [e for e in events if e["ts"] >= (WINDOW[0] + WINDOW[1]) // 2]


INCIDENT_CASES = {
    # name: (kind, magnitude, segment, metric over events linked to the window, expected incident / clean ratio)
    "latency_spike_multiplies_latency": ("latency_spike", 1.5, None, p95, (2.2, 2.8)),
    "acceptance_decline_lowers_acceptance": ("acceptance_decline", 0.6, None, acceptance, (0.3, 0.5)),
    # a clean window may hold no leak at all: smooth by 1e-4 so the ratio is defined (clean ~2e-5, incident 1e-2)
    "pii_leak_flags_a_fraction": ("pii_leak", 0.01, None, lambda ev: flag_rate(ev) + 1e-4, (20, 110)),
    "hallucinations_show_in_reviews": ("hallucination_increase", 0.08, None, hallucination_rate, (3, None)),
    "cost_runaway_raises_cost": ("cost_runaway", 4.0, None, lambda ev: mean(ev, "cost_usd"), (2.5, 3.6)),
    "cost_runaway_raises_tokens_out": ("cost_runaway", 4.0, None, lambda ev: mean(ev, "tokens_out"), (4.5, 5.5)),
    "drift_lowers_confidence": ("drift", 1.0, None, lambda ev: mean(late_half(ev), "confidence"), (0.7, 0.9)),
    "drift_raises_latency": ("drift", 1.0, None, lambda ev: p95(late_half(ev)), (1.2, 1.5)),
    "traffic_drop_thins_interactions": ("traffic_drop", 0.9, None, lambda ev: len(interactions(ev)), (0.05, 0.15)),
    "error_burst_raises_errors": ("error_burst", 0.08, None, error_rate, (8, 25)),
    "segment_restricts_the_incident": ("acceptance_decline", 0.6, {"platform": "mobile"},
                                       lambda ev: acceptance([e for e in ev if e["segment"]["platform"] == "mobile"]),
                                       (0.3, 0.5)),
}


@functools.cache
def with_incident(kind: str, magnitude: float, segment: tuple[tuple[str, str], ...] = ()) -> list[dict]:
    incident = Incident(kind, WINDOW[0], WINDOW[1] - WINDOW[0], magnitude, dict(segment) or None)
    return list(generate(Scenario(**BUSY, incidents=(incident,))))


@pytest.mark.parametrize("case", list(INCIDENT_CASES), ids=list(INCIDENT_CASES))
def test_incident_changes_its_metric_in_its_window_only(clean, case: str):
    kind, magnitude, segment, metric, (low, high) = INCIDENT_CASES[case]
    events = with_incident(kind, magnitude, tuple((segment or {}).items()))
    ts_of = {e["event_id"]: e["ts"] for e in interactions(clean)}
    ratio = metric(linked_to_window(events, ts_of)) / metric(linked_to_window(clean, ts_of))
    assert low <= ratio and (high is None or ratio <= high), f"incident/clean = {ratio:.3f}"
    # everything outside the window, and outside the segment, is the clean scenario exactly
    touched = {e["event_id"] for e in linked_to_window(clean + events, ts_of, segment)}
    assert [e for e in events if e["event_id"] not in touched] == [e for e in clean if e["event_id"] not in touched]


def test_hallucinations_reach_reviews_later_than_the_window():
    events = with_incident("hallucination_increase", 0.08)
    hallucinated = [e["ts"] for e in feedback(events, "review") if e["label"] == "hallucination"]
    assert np.median(hallucinated) > WINDOW[0] + BUSY["review_delay_ms"] / 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_place_their_incidents_inside_the_scenario(name: str):
    scenario = PRESETS[name]()
    assert (name == "clean") == (scenario.incidents == ())
    for incident in scenario.incidents:
        assert incident.kind in INCIDENT_KINDS
        assert scenario.start <= incident.start < incident.end <= scenario.end
        local_hour = (incident.start // HOUR - 5) % 24
        assert 0 <= local_hour < 11, "starts by US morning so rules see it in busy hours"
    if name in INCIDENT_KINDS:
        assert [i.kind for i in scenario.incidents] == [name]
    assert PRESETS["mobile_gap"]().incidents[0].segment == {"platform": "mobile"}


def test_mobile_gap_preset_opens_a_gap_between_platforms():
    scenario = PRESETS["mobile_gap"](**BUSY)
    gap = scenario.incidents[0]
    events = [e for e in generate(scenario) if gap.start <= e["ts"] < gap.end]
    by_platform = {p: acceptance([e for e in events if e["segment"]["platform"] == p]) for p in ("desktop", "mobile")}
    assert by_platform["mobile"] < 0.14 and by_platform["desktop"] > 0.17  # the seed plan's investigate criterion


# --- validation and construction -------------------------------------------------------------------------------------
BAD_INCIDENTS = {
    "unknown_kind": (dict(kind="meteor"), "unknown kind"),
    "zero_duration": (dict(duration_ms=0), "duration_ms must be > 0"),
    "float_start": (dict(start=1.5), "integer epoch milliseconds"),
    "negative_magnitude": (dict(magnitude=-1.0), "magnitude must be > 0"),
    "probability_above_one": (dict(kind="pii_leak", magnitude=1.5), "<= 1"),
    "segment_not_a_dict": (dict(segment=["mobile"]), "segment must be a dict"),
}


@pytest.mark.parametrize("case", list(BAD_INCIDENTS), ids=list(BAD_INCIDENTS))
def test_invalid_incidents_are_refused_with_a_reason(case: str):
    changes, message = BAD_INCIDENTS[case]
    with pytest.raises(ScenarioError, match=re.escape(message)):
        Incident(**{"kind": "latency_spike", "start": MONDAY_UTC, "duration_ms": HOUR, **changes})


BAD_SCENARIOS = {
    "probability": (dict(error_prob=1.2), "error_prob: must be a probability"),
    "feature_charset": (dict(feature="email reply"), "feature: must match"),
    "negative_rate": (dict(mean_rate_per_s=-1.0), "mean_rate_per_s: must be a finite number >= 0"),
    "zero_duration": (dict(duration_ms=0), "duration_ms, users and timeout_ms must be > 0"),
    "jitter_beyond_bound": (dict(max_arrival_jitter_ms=30_000), "max_arrival_jitter_ms: must be <= 20000"),
    "ts_format": (dict(ts_format="iso"), "ts_format"),
    "duplicate_platform": (dict(platforms=(Platform("web", 1.0), Platform("web", 1.0))), "unique names"),
    "incident_outside": (dict(incidents=(Incident("drift", 0, HOUR),)), "incidents[0] (drift): window"),
    "unknown_segment_key": (dict(incidents=(Incident("drift", MONDAY_UTC, HOUR, segment={"os": "ios"}),)),
                            "segment key 'os' unknown"),
    "unknown_segment_value": (dict(incidents=(Incident("drift", MONDAY_UTC, HOUR, segment={"platform": "tv"}),)),
                              "segment platform='tv' unknown; the scenario has desktop, mobile"),
}


@pytest.mark.parametrize("case", list(BAD_SCENARIOS), ids=list(BAD_SCENARIOS))
def test_invalid_scenarios_are_refused_with_every_reason(case: str):
    changes, message = BAD_SCENARIOS[case]
    with pytest.raises(ScenarioError, match=re.escape(message)):
        Scenario(**changes)


def test_scenario_errors_are_reported_together():
    with pytest.raises(ScenarioError) as caught:
        Scenario(error_prob=2.0, thumbs_prob=-1.0)
    assert "error_prob" in str(caught.value) and "thumbs_prob" in str(caught.value)


ARGS = {
    "numbers_from_text": (dict(seed="3", mean_rate_per_s="2.5"), dict(seed=3, mean_rate_per_s=2.5)),
    "durations": (dict(duration_ms="2h", review_delay_ms="90s"), dict(duration_ms=2 * HOUR, review_delay_ms=90_000)),
    "plain_ms": (dict(duration_ms="60000"), dict(duration_ms=MINUTE)),
    "rfc3339_start": (dict(start="2026-11-03T00:00:00Z"), dict(start=MONDAY_UTC + 24 * HOUR)),
    "python_values": (dict(seed=11, phase="ga"), dict(seed=11, phase="ga")),
}


@pytest.mark.parametrize("case", list(ARGS), ids=list(ARGS))
def test_scenario_from_args_reads_command_line_text(case: str):
    overrides, expected = ARGS[case]
    scenario = scenario_from_args("latency_spike", **overrides)
    assert {k: getattr(scenario, k) for k in expected} == expected
    (incident,) = scenario.incidents
    assert scenario.start < incident.start < incident.end <= scenario.end  # placed in the overridden span


BAD_ARGS = {
    "unknown_preset": ("meteor", {}, "unknown preset 'meteor'"),
    "unknown_setting": ("clean", dict(speed="1"), "unknown scenario setting(s) speed"),
    "not_a_number": ("clean", dict(seed="seven"), "seed: cannot read 'seven'; expected an integer"),
    "bad_start": ("clean", dict(start="tomorrow"), "start: cannot read 'tomorrow'"),
    "structured_from_text": ("clean", dict(platforms="desktop"), "platforms: cannot be set from text"),
    "invalid_value": ("clean", dict(error_prob="3"), "error_prob: must be a probability"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS), ids=list(BAD_ARGS))
def test_scenario_from_args_refuses_bad_input(case: str):
    preset, overrides, message = BAD_ARGS[case]
    with pytest.raises(ScenarioError, match=re.escape(message)):
        scenario_from_args(preset, **overrides)


def test_explicit_incidents_replace_the_presets():
    assert PRESETS["latency_spike"](incidents=()).incidents == ()
