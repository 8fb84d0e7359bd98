"""The column-at-a-time pieces of the batch engine (rules.batch) equal their per-event definitions, bit for bit:
group counters = the sum of each event's contributions, DDSketch.add_many = add one by one, and a run applied by
apply_pending = the same events added into each store bucket one at a time (as the reference engine does)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.aggregate import Bucket, contributions, group_counters, share_contributions, square_contributions
from rules.batch import apply_pending, finest_every
from rules.events import Event
from rules.loader import CATALOG, load_rules
from rules.plan import Plan
from rules.sketches.ddsketch import DDSketch
from rules.sketches.exceptions import SketchError
from rules.state import FeatureState
from rules.windows import SeriesBuckets

MIN = 60_000
T0 = 1_767_225_600_000

labels = {"suggestion": ["accepted", "edited", "rejected", "ignored"], "thumbs": ["up", "down"],
          "review": ["pass", "fail", "p0"], "ticket": [None, "billing", "quality"], "survey": ["csat", "nps"],
          "eval": ["golden", "safety"]}  # fmt: skip
maybe = st.none() | st.floats(0, 1e6, allow_nan=False)


@st.composite
def event(draw, i: int = 0):
    ts = T0 + draw(st.integers(0, 30 * MIN))
    seg = {"platform": draw(st.sampled_from(["mobile", "desktop"])), "plan": draw(st.sampled_from(["free", "pro"]))}
    phase = draw(st.sampled_from(["p", "closed_beta"]))
    if draw(st.booleans()):
        return Event("interaction", f"i{i}", ts, "email-reply", phase, seg, draw(st.none() | st.sampled_from(["u1", "u2", "u3"])),
                     None, None, draw(st.sampled_from(["ok", "ok", "error", "timeout", "refused"])),
                     draw(maybe | st.just(0.0)), None, draw(st.none() | st.integers(0, 5000)), draw(maybe),
                     draw(st.none() | st.floats(0, 1)),
                     tuple(draw(st.lists(st.sampled_from(["pii_leak", "toxicity"]), max_size=2))))  # fmt: skip
    kind = draw(st.sampled_from(sorted(labels)))
    label = draw(st.sampled_from(labels[kind]))
    score = None
    if kind == "survey":
        score = float(draw(st.integers(0, 10))) if label == "nps" else float(draw(st.integers(1, 5)))
    elif kind == "review":
        score = draw(st.none() | st.floats(1, 5))
    elif kind == "eval":  # an eval run: n items, a mean score and/or how many passed
        n = draw(st.integers(1, 500))
        return Event("feedback", f"f{i}", ts, "email-reply", phase, seg, None, None, None, kind=kind, label=label,
                     score=draw(st.none() | st.floats(0, 1)), n=n, passed=draw(st.none() | st.integers(0, n)))
    return Event("feedback", f"f{i}", ts, "email-reply", phase, seg, None, None, None, kind=kind, label=label,
                 score=score)  # fmt: skip


events = st.integers(0, 60).flatmap(lambda n: st.tuples(*[event(i) for i in range(n)])).map(list)


@settings(max_examples=200, deadline=None)
@given(events)
def test_group_counters_equal_the_summed_contributions(evs):
    summed: dict[str, int] = {}
    for ev in evs:
        for k, d in contributions(ev):
            summed[k] = summed.get(k, 0) + d
    assert group_counters(evs) == summed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e300, allow_nan=False) | st.just(0.0) | st.integers(0, 10_000), max_size=80))
def test_ddsketch_add_many_equals_adding_one_by_one(values):
    one, many = DDSketch(), DDSketch()
    for v in values:
        one.add(v)
    many.add_many(values)
    assert one == many and one.count == many.count


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 2e300])
def test_ddsketch_add_many_refuses_before_changing_anything(bad):
    sk = DDSketch()
    sk.add(5.0)
    with pytest.raises(SketchError, match="between 0 and 1e300"):
        sk.add_many([1.0, bad, 2.0])
    assert sk.count == 1 and sk.quantile(0.5) == DDSketch.merged(sk).quantile(0.5)


@settings(max_examples=60, deadline=None)
@given(events)
def test_apply_pending_builds_the_buckets_per_event_adds_build(evs):
    plan = Plan(load_rules([CATALOG]))
    batched = FeatureState()
    apply_pending(plan, finest_every(plan), "email-reply", batched,
                  [(plan.for_feature(ev.feature, ev.phase), ev) for ev in evs])  # fmt: skip
    each = FeatureState()
    for ev in evs:  # the per-event definition (tests/reference_engine's _add)
        fp = plan.for_feature(ev.feature, ev.phase)
        seg = dict(ev.segment)
        if plan.needs_arms:  # the catalogue compares arms (compare: {by: variant}) and keeps squares of means
            seg.update({"@" + f: getattr(ev, f) or "" for f in ("model_version", "prompt_version", "variant")})
        contrib = contributions(ev) + share_contributions(ev, plan.shares)
        for spec in fp.stores:
            if not spec.admits(seg):
                continue
            series = each.stores.setdefault(spec.id, {})
            key = (ev.phase, tuple(seg.get(k, "") for k in spec.keys) if spec.keys else ())
            s = series.setdefault(key, SeriesBuckets())
            squares = square_contributions(ev) if spec.needs_squares else []
            s.bucket(ev.ts, spec.every_ms, spec.needs_latency, spec.needs_users).add(contrib + squares, ev)
    assert batched.stores.keys() == each.stores.keys()
    for sid, series in each.stores.items():
        assert batched.stores[sid].keys() == series.keys()
        for key, s in series.items():
            got = batched.stores[sid][key].buckets
            assert got.keys() == s.buckets.keys()
            for start, b in s.buckets.items():
                assert isinstance(got[start], Bucket) and got[start].to_bytes() == b.to_bytes()
