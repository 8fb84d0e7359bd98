"""What the replay charts draw, collected from the engine observer in bounded memory.

The engine calls :class:`SeriesCollector` with one :class:`rules.engine.Observation` per rule evaluation. Per
(rule set, rule, feature, phase, group) it keeps the value the rule compared with its threshold as a bounded
series (:class:`MinMaxSeries`: once over ``cap`` points it keeps, per time bin, only the lowest and the highest
point, so a spike survives any replay length) and the pending / firing runs as spans (:class:`StateSpans`), never a
state per instant. A 7-day replay at 1-minute instants therefore holds at most ``cap`` points per series whatever
its length. Everything here is a pure function of the observations in order: no clock, no I/O, no plotting.

>>> s = MinMaxSeries(cap=8)
>>> for t in range(100):
...     s.add(t * 1000, 50.0 if t == 37 else float(t % 3))
>>> t, v = s.points()
>>> len(t) <= 8, max(v), t[list(v).index(50.0)]
(True, 50.0, 37000)
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rules.engine import Observation

__all__ = [
    "CHART_MODES",
    "OUTCOMES",
    "ChartKey",
    "RuleInfo",
    "MinMaxSeries",
    "StateSpans",
    "GroupSeries",
    "RuleSeries",
    "SeriesCollector",
    "reduce_min_max",
    "merge_spans",
]

# ``active``: rules that were pending or firing at least once; ``all``: every evaluated rule; ``none``: no charts.
CHART_MODES = ("active", "all", "none")
DEFAULT_CAP = 2000  # points per series: about the pixel width of a chart, two points (min, max) per column
SPAN_CAP = 1000  # pending/firing runs per series before neighbours close in time are merged
STATE_RANK = {"pending": 1, "firing": 2}  # the states charts shade; firing wins where they overlap
# What a firing became (rules.policy): fired and acted on, recorded under a kill (inhibited), held by the breaker.
OUTCOMES = ("firing", "inhibited", "held")


@dataclass(frozen=True, order=True)
class ChartKey:
    """One chart of a single replay: a rule of a rule set on a feature and phase (its groups are its lines)."""

    ruleset: str
    rule_id: str
    feature: str
    phase: str


@dataclass(frozen=True)
class RuleInfo:
    """What a chart shows of the rule's definition. ``compared`` names what the series holds: the metric value,
    its relative change against the baseline, the Wilson bound, the spread across a segment key, or a drift
    detector's level (ADWIN's window mean; for other detectors the mean since the detector last restarted)."""

    tier: str
    mode: str
    metric: str
    op: str | None
    threshold: float | None
    every_ms: int
    group_by: tuple[str, ...]
    compared: str
    resolve_threshold: float | None = None  # hysteresis: where a firing instance resolves
    threshold_high: float | None = None  # op between / outside: the band's upper line
    # a compound rule's conditions (all / any): (metric, op, line), each plotted on its own
    conditions: tuple[tuple[str, str, float], ...] = ()

    @classmethod
    def of(cls, bound) -> RuleInfo:
        r = bound.rule
        if r.drift is not None:  # what the detector's level is (streams.offline.report_format.drift_evidence)
            compared = "window mean (ADWIN)" if r.drift.detector == "adwin" else "mean since detector restart"
        elif r.compare is not None and r.srm_of is not None:
            compared = "treatment share" if r.compare.split else "stable-split log e-value"
        elif r.compare is not None:
            compared = "treatment vs control" + (" (relative)" if r.compare.relative else "")
        elif r.conditions:  # all / any (rules.compound): each condition's value and line
            compared = "each condition's value"
        elif r.baseline_ms is not None:
            compared = "change vs baseline"
        elif r.across:
            compared = f"spread across {r.across}"
        elif r.confidence is not None:
            compared = f"Wilson bound ({r.confidence:g})"
        else:
            compared = "value"
        conditions = tuple((c.metric, c.op, c.threshold) for c in r.conditions)
        return cls(r.tier, r.mode, bound.metric, r.op, r.threshold, r.every_ms, tuple(r.group_by), compared,
                   r.resolve_threshold, r.threshold_high, conditions)  # fmt: skip

    @property
    def value_metric(self) -> str:
        """The metric whose unit the value axis shows: a compound rule's conditions' when they share one."""
        metrics = {c[0] for c in self.conditions}
        return metrics.pop() if len(metrics) == 1 else self.metric

    @property
    def relative(self) -> bool:
        return self.compared in ("change vs baseline", "treatment vs control (relative)")


def reduce_min_max(t: Iterable[int], v: Iterable[float], width: int) -> tuple[array, array]:
    """Per bin ``[k * width, (k + 1) * width)`` keep the lowest and the highest point, in time order; NaN (no
    value) only survives in a bin that has nothing else, so gaps stay visible.

    >>> tuple(map(list, reduce_min_max([0, 1, 2, 3, 10, 11], [5, 9, 1, 5, math.nan, math.nan], 10)))
    ([1, 2, 10], [9.0, 1.0, nan])
    """
    out_t, out_v = array("q"), array("d")
    bin_ = lo = hi = first = None
    for ti, vi in zip(t, v):
        k = ti // width
        if k != bin_:
            _emit(out_t, out_v, lo, hi, first)
            bin_, lo, hi, first = k, None, None, (ti, vi)
        if vi == vi:  # not NaN
            if lo is None or vi < lo[1]:
                lo = (ti, vi)
            if hi is None or vi > hi[1]:
                hi = (ti, vi)
    _emit(out_t, out_v, lo, hi, first)
    return out_t, out_v


def _emit(out_t: array, out_v: array, lo, hi, first) -> None:
    if first is None:
        return
    if lo is None:  # only NaN in the bin
        points = [first]
    else:
        points = sorted({lo, hi})
    for ti, vi in points:
        out_t.append(ti)
        out_v.append(vi)


class MinMaxSeries:
    """A (time ms, value) series of at most ``cap`` points: raw until ``cap``, then min/max per time bin, the bin
    width doubling as the series grows. Deterministic: the same points in the same order give the same result."""

    __slots__ = ("cap", "width", "t", "v")

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        if cap < 4:
            raise ValueError(f"cap {cap} too small: a series needs room for at least two bins of two points")
        self.cap = cap
        self.width = 0  # 0: raw, not yet reduced
        self.t, self.v = array("q"), array("d")

    def add(self, t: int, value: float | None) -> None:
        self.t.append(t)
        self.v.append(math.nan if value is None else float(value))
        if len(self.t) > self.cap:
            self._compact()

    def _compact(self) -> None:
        if not self.width:  # a power of two of seconds that fits the points so far in a quarter of the cap bins
            span, self.width = max(self.t[-1] - self.t[0], 1), 1000
            while span // self.width >= self.cap // 4:
                self.width *= 2
        while True:
            t, v = reduce_min_max(self.t, self.v, self.width)
            if len(t) <= self.cap // 2:
                self.t, self.v = t, v
                return
            self.width *= 2

    def points(self) -> tuple[array, array]:
        return self.t, self.v


class StateSpans:
    """Runs of pending and firing as ``(start, end, state)``: a state holds from the instant it was observed to
    the instant another one was; the last run ends one ``every`` after the last observation. Past ``cap`` runs,
    neighbours closer than a growing gap merge (the worse state wins), so a flapping rule stays bounded."""

    __slots__ = ("cap", "state", "since", "last", "runs")

    def __init__(self, cap: int = SPAN_CAP) -> None:
        self.cap = cap
        self.state, self.since, self.last = "inactive", 0, 0
        self.runs: list[tuple[int, int, str]] = []

    def add(self, t: int, state: str) -> None:
        if state != self.state:
            self._close(t)
            self.state, self.since = state, t
        self.last = t

    def _close(self, end: int) -> None:
        if self.state in STATE_RANK:
            self.runs.append((self.since, end, self.state))
            if len(self.runs) > self.cap:
                self.runs = _coalesce(self.runs, self.cap // 2)

    def spans(self, step: int) -> list[tuple[int, int, str]]:
        """The runs so far, the open one (if pending or firing) closed at the last observation + ``step``."""
        if self.state in STATE_RANK:
            return [*self.runs, (self.since, self.last + step, self.state)]
        return list(self.runs)

    def reached(self) -> str | None:
        """The worst state ever observed: ``firing``, ``pending`` or None."""
        states = {s for _, _, s in self.runs} | ({self.state} & set(STATE_RANK))
        return max(states, key=STATE_RANK.__getitem__, default=None)


def _coalesce(runs: list[tuple[int, int, str]], target: int) -> list[tuple[int, int, str]]:
    gap = 1
    while len(runs) > target:
        out = [runs[0]]
        for s, e, st in runs[1:]:
            ps, pe, pst = out[-1]
            if s - pe <= gap:
                out[-1] = (ps, max(pe, e), max(pst, st, key=STATE_RANK.__getitem__))
            else:
                out.append((s, e, st))
        runs, gap = out, gap * 2
    return runs


def merge_spans(spans: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping spans of the worst state at each time, over spans that may overlap (several groups).

    >>> merge_spans([(0, 10, "pending"), (5, 20, "firing"), (18, 30, "pending"), (40, 50, "pending")])
    [(0, 5, 'pending'), (5, 20, 'firing'), (20, 30, 'pending'), (40, 50, 'pending')]
    """
    changes: dict[int, list[int]] = {}  # time → change in the number of open (pending, firing) spans
    for s, e, st in spans:
        if s < e:
            i = STATE_RANK[st] - 1
            changes.setdefault(s, [0, 0])[i] += 1
            changes.setdefault(e, [0, 0])[i] -= 1
    out: list[tuple[int, int, str]] = []
    open_, prev, state = [0, 0], None, None
    for t in sorted(changes):
        if state is not None and prev is not None:
            if out and out[-1][1] == prev and out[-1][2] == state:
                out[-1] = (out[-1][0], t, state)
            else:
                out.append((prev, t, state))
        open_ = [open_[0] + changes[t][0], open_[1] + changes[t][1]]
        state = "firing" if open_[1] else "pending" if open_[0] else None
        prev = t
    return out


@dataclass
class GroupSeries:
    """One lifecycle instance's chart data: the compared value over time and its pending / firing runs."""

    values: MinMaxSeries
    states: StateSpans = field(default_factory=StateSpans)
    # compare rules: the bounds of the difference's interval (rules.instants.Observation.interval), drawn as a band
    low: MinMaxSeries | None = None
    high: MinMaxSeries | None = None
    # compound rules: each condition's value (rules.compound), drawn instead of ``values``
    conditions: list[MinMaxSeries] | None = None


@dataclass
class RuleSeries:
    """Everything drawn on one chart: the rule's definition, its groups' series, and what its firings became
    (``outcomes``: decisions per transition of :data:`OUTCOMES`, from :meth:`SeriesCollector.note_decisions`)."""

    info: RuleInfo
    groups: dict[tuple[str, ...], GroupSeries] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)

    def reached(self) -> str | None:
        """The worst state any group reached: ``firing``, ``pending`` or None."""
        states = {g.states.reached() for g in self.groups.values()} - {None}
        return max(states, key=STATE_RANK.__getitem__, default=None)

    def outcome(self) -> str:
        """What the chart list says the rule did: ``quiet``, ``pending``, or for a rule that fired what its firings
        became — ``firing``, ``inhibited`` (a lower tier while the feature/phase was killed), ``held`` (a kill beyond
        the breaker), or several of them (``firing, inhibited``)."""
        reached = self.reached()
        if reached != "firing":
            return reached or "quiet"
        return ", ".join(o for o in OUTCOMES if self.outcomes[o]) or reached

    def latched_since(self) -> int | None:
        """For an enforced pause or kill that fired and is still firing at the end: when its latch began (the
        earliest firing run still open). Such a rule stays firing until an operator resumes, whatever the metric
        does; None otherwise."""
        info = self.info
        if info.tier not in ("pause", "kill") or info.mode != "enforce" or not self.outcomes["firing"]:
            return None
        open_ = [g.states.since for g in self.groups.values() if g.states.state == "firing"]
        return min(open_, default=None)

    def spans(self) -> list[tuple[int, int, str]]:
        """The worst state over all groups, as non-overlapping spans."""
        step = self.info.every_ms
        return merge_spans([s for g in self.groups.values() for s in g.states.spans(step)])


class SeriesCollector:
    """The engine observer that feeds the charts: ``Engine(rulesets, config, observer=SeriesCollector())``.

    Holds one :class:`RuleSeries` per :class:`ChartKey`; memory is bounded by ``cap`` points and ``SPAN_CAP`` runs
    per group, whatever the replay length."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.rules: dict[ChartKey, RuleSeries] = {}
        self.first: int | None = None  # earliest and latest evaluation instant: every chart of a replay spans them
        self.last: int | None = None
        self._last: tuple | None = None  # (bound, feature, phase) → RuleSeries of the previous call: rules repeat

    def __call__(self, obs: Observation) -> None:
        b, t = obs.bound, obs.t
        if self.first is None or t < self.first:
            self.first = t
        if self.last is None or t > self.last:
            self.last = t
        memo = self._last
        if memo is not None and memo[0] is b and memo[1] == obs.feature and memo[2] == obs.phase:
            rs = memo[3]
        else:
            key = ChartKey(b.ruleset.name, b.rule.id, obs.feature, obs.phase)
            rs = self.rules.get(key)
            if rs is None:
                rs = self.rules[key] = RuleSeries(RuleInfo.of(b))
            self._last = (b, obs.feature, obs.phase, rs)
        g = rs.groups.get(obs.group)
        if g is None:
            g = rs.groups[obs.group] = GroupSeries(MinMaxSeries(self.cap))
        g.values.add(t, obs.compared)
        g.states.add(t, obs.state)
        if b.rule.conditions:
            if g.conditions is None:
                g.conditions = [MinMaxSeries(self.cap) for _ in b.rule.conditions]
            for series, c in zip(g.conditions, obs.evaluation.details["conditions"]):
                series.add(t, c["value"])
        if b.rule.compare is not None:
            iv = obs.interval
            if g.low is None:
                g.low, g.high = MinMaxSeries(self.cap), MinMaxSeries(self.cap)
            g.low.add(t, None if iv is None else iv[0])
            g.high.add(t, None if iv is None else iv[1])

    def note_decisions(self, decisions: Iterable[Mapping]) -> None:
        """Count what each firing became (``firing``, ``inhibited``, ``held``): the observer sees lifecycle states
        only, the decisions say what the policy made of them. Feed each engine step's decisions after the step."""
        for d in decisions:
            if d["transition"] in OUTCOMES:
                rs = self.rules.get(ChartKey(d["ruleset"], d["rule_id"], d["feature"], d["phase"]))
                if rs is not None:
                    rs.outcomes[d["transition"]] += 1

    def selected(self, mode: str) -> list[ChartKey]:
        """The charts ``mode`` draws, in key order: ``all`` evaluated rules or the ``active`` ones."""
        if mode not in CHART_MODES:
            raise ValueError(f"unknown charts mode {mode!r}; choose one of {', '.join(CHART_MODES)}")
        if mode == "none":
            return []
        return sorted(k for k, rs in self.rules.items() if mode == "all" or rs.reached() is not None)
