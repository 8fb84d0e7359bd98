"""Running windows (rules.windows.RunningWindows) equal the fresh merge of their buckets at every instant: counters
(key set included), latency sketches and distinct-user sketches, through gaps, baselines, expiry and reloads; and
the engine decides exactly what it decided with fresh merges."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_kit import MIN, T0, rules
from rules import instants as instants_mod  # where the instant loop builds its WindowCache
from rules.aggregate import Bucket
from rules.engine import Engine, EngineConfig
from rules.evaluation import WindowCache
from rules.events import Event
from rules.sketches.hll import HyperLogLog
from rules.state import FeatureState
from rules.windows import RunningWindows, SeriesBuckets, StoreSpec


class _Ev:
    """The fields of an interaction ``Bucket.add`` reads."""

    type = "interaction"

    def __init__(self, latency_ms, user):
        self.latency_ms = latency_ms
        self.user = user


def _same(a: Bucket, b: Bucket) -> None:
    assert a.c == b.c  # key set included: a counter summing to 0 is kept iff an included bucket has it
    assert a.to_state() == b.to_state()
    assert a == b


def _dense_users(seed: int) -> HyperLogLog:
    return HyperLogLog.from_hashes({(seed * 1_000_003 + i) * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(1100)})


@st.composite
def scenarios(draw):
    every = draw(st.sampled_from([1_000, 5_000, 60_000]))
    window = every * draw(st.integers(1, 12))  # the loader refuses windows and baselines not a multiple of every
    baseline = draw(st.sampled_from([None, every * draw(st.integers(1, 6)), window]))
    lateness = every * draw(st.integers(0, 2))
    steps = []
    t = T0 - T0 % every + every
    for _ in range(draw(st.integers(1, 40))):
        gap = draw(st.sampled_from([1, 1, 1, 1, 2, 3, 7, 30]))  # instants skipped (quiet stretches, jumps)
        t += gap * every
        writes = []
        for _ in range(draw(st.integers(0, 6))):
            ahead = draw(st.integers(0, 3 * every + lateness))  # events at or after the instant (the invariant)
            kind = draw(st.sampled_from(["n", "n", "zero", "flag", "dense"]))
            writes.append((ahead, kind, draw(st.integers(0, 30)), draw(st.floats(0, 5000))))
        steps.append((t, writes, draw(st.sampled_from([None] * 12 + ["state", "runs"]))))
    return every, window, baseline, lateness, steps


def _write(s: SeriesBuckets, ts: int, every: int, kind: str, x: int, lat: float) -> None:
    b = s.bucket(ts, every, True, True)
    if kind == "zero":  # a counter that sums to 0 (lat.s of a 0 ms latency)
        b.add([("n", 1), ("lat.n", 1), ("lat.s", 0)], _Ev(0.0, f"u{x}"))
    elif kind == "flag":
        b.add([("n", 1), (f"flag:f{x % 4}", 1)], _Ev(lat, None))
    elif kind == "dense":
        b.add([("n", 1)], _Ev(None, None))
        b.users.merge(_dense_users(x))
    else:
        b.add([("n", 1), ("lat.n", 1), ("lat.s", round(lat * 1000))], _Ev(lat, f"u{x}"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_running_window_equals_fresh_merge(sc):
    every, window, baseline, lateness, steps = sc
    spec = StoreSpec(0, every, (), True, True, window + (baseline or 0))
    key = ("p", ())
    s = SeriesBuckets()
    running = RunningWindows()
    ends = [(0, window)] + ([(baseline, window)] if baseline else [])
    last = T0 - T0 % every  # the last instant evaluated: every event applied since is at or after it
    for t, writes, event in steps:
        for ahead, kind, x, lat in writes:
            _write(s, last + ahead, every, kind, x, lat)
        for offset, w in ends:
            end = t - offset
            got = running.window(spec, key, s, end, w, offset)
            _same(got, s.window(end, w, every, True, True))
            assert all(start < end for start in running.windows[(0, key, w, offset)].parts)
        last = t
        s.expire(t - spec.retention_ms - every)
        running.prune({0: {key: s}}, {0: t - spec.retention_ms - every})
        if event == "state":  # a reload: the series is a new object, its running windows rebuild
            s = SeriesBuckets.from_state(orjson.loads(orjson.dumps(s.to_state())))
        elif event == "runs":
            running = RunningWindows()
    assert running.distrusts == 0  # every bucket was subtracted with the content it was added with


def test_steps_are_incremental_and_cost_does_not_grow_with_window():
    every = 3_600_000
    spec = StoreSpec(0, every, (), True, False, 14 * 24 * every)
    s = SeriesBuckets()
    running = RunningWindows()
    t0 = T0 - T0 % every
    for h in range(24 * 20):
        start = t0 + h * every
        s.bucket(start, every, True, False).add([("n", 1), ("lat.n", 1), ("lat.s", 5)], _Ev(float(h % 50 + 1), None))
        t = start + every
        running.window(spec, ("p", ()), s, t, 14 * 24 * every, 0)
        s.expire(t - spec.retention_ms - every)
    assert running.rebuilds == 1 and running.steps == 24 * 20 - 1
    rw = running.windows[(0, ("p", ()), 14 * 24 * every, 0)]
    _same(rw.result(), s.window(rw.end, 14 * 24 * every, every, True, False))


def test_a_bucket_changed_after_it_was_included_is_not_trusted():
    every = 1_000
    spec = StoreSpec(0, every, (), True, True, 10_000)
    s = SeriesBuckets()
    running = RunningWindows()
    for i in range(5):
        s.bucket(T0 + i * every, every, True, True).add([("n", 1)], _Ev(10.0, f"u{i}"))
    running.window(spec, ("p", ()), s, T0 + 5 * every, 4 * every, 0)
    # an event before the window's end (the engine never applies one: it would be late)
    s.bucket(T0 + 3 * every, every, True, True).add([("n", 1)], _Ev(20.0, "late"))
    got = running.window(spec, ("p", ()), s, T0 + 6 * every, 4 * every, 0)
    _same(got, s.window(T0 + 6 * every, 4 * every, every, True, True))
    assert running.distrusts == 1
    # a change the epoch does not see (written behind SeriesBuckets.bucket's back) is caught when it leaves
    s.buckets[T0 + 3 * every].c["n"] += 1
    got = running.window(spec, ("p", ()), s, T0 + 8 * every, 4 * every, 0)
    _same(got, s.window(T0 + 8 * every, 4 * every, every, True, True))
    assert running.distrusts == 2


def test_users_from_exact_hashes_equal_the_merge_across_the_dense_switch():
    parts = []
    for i in range(6):
        u = HyperLogLog()
        for j in range(300):
            u.add(f"user{(i * 211 + j) % 1500}")
        parts.append(u)
    parts.append(_dense_users(3))
    s = SeriesBuckets({T0 + i * 1000: Bucket({"n": 1}, None, u) for i, u in enumerate(parts)})
    spec = StoreSpec(0, 1000, (), False, True, 100_000)
    running = RunningWindows()
    for end in range(T0 + 1000, T0 + 10_000, 1000):
        for w in (2000, 4000):
            got = running.window(spec, ("p", ()), s, end, w, 0)
            want = s.window(end, w, 1000, False, True)
            _same(got, want)
            assert got.users.cardinality() == want.users.cardinality()


# --- the engine -----------------------------------------------------------------------------------------------

RULES = rules(
    """
version: 1
name: incr
features: ["*"]
defaults: {min_samples: 1, window: 5m}
rules:
  - {id: err, tier: kill, metric: error_rate, op: ">", threshold: 0.3, for: 2m}
  - {id: p95, tier: pause, metric: latency_p95, op: ">", threshold: 400, group_by: [platform], window: 7m}
  - {id: users, tier: investigate, metric: active_users, op: "<", threshold: 3, every: 1m, window: 10m}
  - {id: drop, tier: investigate, metric: requests, op: "<", threshold: -0.3, baseline: 4m, window: 4m}
  - {id: udrop, tier: investigate, metric: active_users, op: "<", threshold: -0.3, baseline: 3m, window: 6m}
  - {id: gap, tier: investigate, metric: error_rate, op: ">", threshold: 0.2, across: platform, window: 3m}
  - {id: long, tier: investigate, metric: latency_mean, op: ">", threshold: 900, window: 30m, every: 2m}
"""
)
LATENESS = 30_000


@st.composite
def streams(draw):
    evs: list[Event] = []
    m = 0
    for _ in range(draw(st.integers(3, 25))):
        m += draw(st.sampled_from([1, 1, 1, 2, 5, 40]))  # gaps: quiet stretches, windows emptying, expiry
        for i in range(draw(st.integers(0, 12))):
            ts = T0 + m * MIN + draw(st.integers(0, MIN - 1))
            plat = draw(st.sampled_from(["mobile", "desktop"]))
            evs.append(Event("interaction", f"i{m}-{i}", ts, "f", "p", {"platform": plat},
                             f"u{draw(st.integers(0, 12))}", None, None,
                             draw(st.sampled_from(["ok", "ok", "error"])), draw(st.sampled_from([0.0, 10.0, 950.0])),
                             None, None, None, None, ()))  # fmt: skip
    evs.sort(key=lambda e: (e.ts, e.event_id))
    return evs


class _CheckedCache(WindowCache):
    """Asserts every running window equals the fresh merge."""

    checked = 0

    def get(self, spec, key, series, end, window_ms):
        got = super().get(spec, key, series, end, window_ms)
        _same(got, series.window(end, window_ms, spec.every_ms, spec.needs_latency, spec.needs_users))
        _CheckedCache.checked += 1
        return got


def _digest(outs) -> list:
    return [orjson.dumps([o.decisions, o.commands, o.pages]) for o in outs]


def _run(evs, cuts, reload_at=None):
    eng = Engine(RULES, EngineConfig(allowed_lateness_ms=LATENESS))
    outs = []
    i = 0
    for n, c in enumerate(cuts + [len(evs)]):
        outs.append(eng.step(evs[i:c]))
        i = c
        if n == reload_at:
            for f, fs in list(eng.features.items()):  # a worker restart: the state reloaded, no running windows
                eng.features[f] = FeatureState.from_state(orjson.loads(orjson.dumps(fs.to_state(b"k"))), b"k")
                assert eng.features[f].windows is None
            outs.append(eng.reload(RULES))  # a rule reload: a new plan, the running windows start afresh
    outs.append(eng.finish())
    return outs, eng


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_engine_running_windows_equal_fresh_merges(evs, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(evs)), max_size=3)))
    reload_at = data.draw(st.sampled_from([None, 0, 1]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instants_mod, "WindowCache", _CheckedCache)
        checked, eng = _run(evs, cuts, reload_at)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instants_mod, "WindowCache", lambda running, t: WindowCache())  # fresh merges only
        fresh, _ = _run(evs, cuts, reload_at)
    assert _digest(checked) == _digest(fresh)
    for fs in eng.features.values():
        assert fs.windows is None or fs.windows.distrusts == 0
        assert "windows" not in fs.to_state(b"k")


def test_engine_uses_incremental_steps():
    evs = [Event("interaction", f"e{m}-{i}", T0 + m * MIN + i * 1000, "f", "p", {"platform": "mobile"}, f"u{i}",
                 None, None, "ok", 100.0, None, None, None, None, ()) for m in range(90) for i in range(5)]  # fmt: skip
    eng = Engine(RULES, EngineConfig(allowed_lateness_ms=LATENESS))
    eng.step(evs)
    w = eng.features["f"].windows
    assert w.steps > 10 * w.rebuilds and w.distrusts == 0
