"""Properties the engine must hold for any input: batch boundaries, arrival order within the allowed lateness,
and a state round trip never change a decision."""

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kit import MIN, T0, interactions, rules
from rules.engine import Engine, EngineConfig
from rules.events import Event
from rules.state import FeatureState

RULES = rules(
    """
version: 1
name: props
features: ["*"]
defaults: {min_samples: 5, window: 3m}
rules:
  - {id: err, tier: kill, metric: error_rate, op: ">", threshold: 0.3, for: 2m}
  - {id: p95, tier: pause, metric: latency_p95, op: ">", threshold: 400, group_by: [platform]}
  - {id: users, tier: investigate, metric: active_users, op: "<", threshold: 3, min_samples: 0, every: 1m}
  - {id: gap, tier: investigate, metric: error_rate, op: ">", threshold: 0.2, across: platform, keep_firing_for: 2m}
  - {id: acc, tier: investigate, metric: acceptance_rate, op: "<", threshold: 0.2, window: 5m}
"""
)
LATENESS = 30_000


@st.composite
def streams(draw):
    """Events in event-time order with random content."""
    n_minutes = draw(st.integers(3, 12))
    evs: list[Event] = []
    for m in range(n_minutes):
        k = draw(st.integers(0, 15))
        for i in range(k):
            ts = T0 + m * MIN + draw(st.integers(0, MIN - 1))
            plat = draw(st.sampled_from(["mobile", "desktop"]))
            if draw(st.booleans()):
                evs.append(Event("interaction", f"i{m}-{i}", ts, "f", "p", {"platform": plat}, f"u{draw(st.integers(0, 9))}",
                                 None, None, draw(st.sampled_from(["ok", "ok", "error", "timeout"])),
                                 draw(st.floats(1, 2000)), None, None, None, None, ()))  # fmt: skip
            else:
                evs.append(Event("feedback", f"s{m}-{i}", ts, "f", "p", {"platform": plat}, None, None, None,
                                 kind="suggestion", label=draw(st.sampled_from(["accepted", "rejected", "ignored"]))))  # fmt: skip
    evs.sort(key=lambda e: (e.ts, e.event_id))
    return evs


def outputs(evs, splits=None):
    eng = Engine(RULES, EngineConfig(allowed_lateness_ms=LATENESS))
    outs = []
    if splits is None:
        outs.append(eng.step(evs))
    else:
        i = 0
        for s in splits:
            outs.append(eng.step(evs[i : i + s]))
            i += s
        outs.append(eng.step(evs[i:]))
    outs.append(eng.finish())
    blob = orjson.dumps([[o.decisions, o.commands, o.pages] for o in outs if o])
    flat = orjson.dumps([[x for o in outs for x in getattr(o, k)] for k in ("decisions", "commands", "pages")])
    return eng, flat, blob


@settings(max_examples=60, deadline=None)
@given(streams(), st.lists(st.integers(0, 40), max_size=10))
def test_batch_boundaries_never_change_outputs(evs, splits):
    _, whole, _ = outputs(evs)
    _, split, _ = outputs(evs, splits)
    assert whole == split


@settings(max_examples=60, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_arrival_order_within_allowed_lateness_never_changes_windows_or_decisions(evs, rnd):
    # reorder: each event may arrive up to half the allowed lateness after its place in time
    shuffled = sorted(evs, key=lambda e: e.ts + rnd.randint(0, LATENESS // 2))
    a, out_a, _ = outputs(evs)
    b, out_b, _ = outputs(shuffled)
    assert b.stats.late == 0
    assert out_a == out_b
    key = b"k"
    assert {f: fs.to_state(key)["stores"] for f, fs in a.features.items()} == {
        f: fs.to_state(key)["stores"] for f, fs in b.features.items()
    }


@settings(max_examples=40, deadline=None)
@given(streams(), st.integers(0, 200))
def test_state_round_trip_continues_exactly(evs, cut):
    key = b"state-key"
    ref, out_ref, _ = outputs(evs)
    eng = Engine(RULES, EngineConfig(allowed_lateness_ms=LATENESS))
    first = eng.step(evs[:cut])
    restored = Engine(RULES, EngineConfig(allowed_lateness_ms=LATENESS))
    restored.features = {
        f: FeatureState.from_state(orjson.loads(orjson.dumps(fs.to_state(key))), key) for f, fs in eng.features.items()
    }
    restored.breaker = type(eng.breaker).from_state(orjson.loads(orjson.dumps(eng.breaker.to_state())))
    restored.stats = eng.stats
    rest = [restored.step(evs[cut:]), restored.finish()]
    outs = [first, *rest]
    flat = orjson.dumps([[x for o in outs for x in getattr(o, k)] for k in ("decisions", "commands", "pages")])
    assert flat == out_ref


def test_replaying_twice_is_byte_identical():
    evs = []
    rnd = random.Random(3)
    for m in range(30):
        evs += interactions(m, 20, errors=rnd.randint(0, 20), latency=rnd.uniform(50, 900),
                            segment={"platform": rnd.choice(["mobile", "desktop"])})  # fmt: skip
    evs.sort(key=lambda e: e.ts)
    assert outputs(evs)[1] == outputs(evs)[1]


@settings(max_examples=60, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_any_interleaving_of_interactions_and_feedback_gives_the_same_decisions(evs, rnd):
    # live mode reads the two event types from two Kafka topics: each keeps its own order, but how they interleave
    # depends on fetch timing. Shift each source as a whole and merge them arbitrarily.
    inter = [e for e in evs if e.type == "interaction"]
    fb = [e for e in evs if e.type == "feedback"]
    merged, i, j = [], 0, 0
    bias = rnd.choice([0.02, 0.5, 0.98])  # mostly one source far ahead of the other, or evenly mixed
    while i < len(inter) or j < len(fb):
        if j >= len(fb) or (i < len(inter) and rnd.random() < bias):
            merged.append(inter[i])
            i += 1
        else:
            merged.append(fb[j])
            j += 1
    a, out_a, _ = outputs(evs)
    b, out_b, _ = outputs(merged)
    assert (a.stats.late, a.stats.events) == (b.stats.late, b.stats.events)
    assert out_a == out_b
