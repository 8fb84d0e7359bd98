"""Evaluate one metric rule for one group at one event-time instant.

The result is a verdict — ``True`` (condition holds), ``False``, or ``None`` (*insufficient*: too few samples or an
undefined value, which holds the lifecycle state) — with the evidence a decision carries.

Semantics (CONTRACT §3):

* plain: the metric over ``[t - window, t)`` compared with ``op threshold``;
* ``confidence``: rate metrics compare the one-sided Wilson bound on the far side of the threshold (the lower bound
  for ``>``/``>=``, the upper bound for ``<``/``<=``), so a rule only fires when the data is convincing;
* ``baseline``: the relative change ``(value - then) / then`` against the threshold, ``then`` being the same window
  ``baseline`` earlier; ``min_samples`` applies to both windows, except that for count metrics (``requests``,
  ``tickets``…) only the earlier window must have them — a drop to zero is the observation, not missing data;
* ``trailing_baseline``: as ``baseline``, but ``then`` is the average window over the ``trailing_baseline`` before
  this window, ``[t - window - trailing, t - window)``: the metric over that span, scaled by ``window / trailing``
  for count metrics (a daily spend against its 7-day moving average) — over the time the phase has existed
  instead, when that is shorter, and undefined while it is shorter than one window; ``min_samples`` applies as for
  ``baseline``, the earlier samples being those of the whole span;
* cohort metrics (``retention:<k>``, ``returning_share:<k>``): the share of one window's users found in the
  adjacent one, ``rules.cohort``;
* ``across``: the spread ``max - min`` of the metric over the values of one segment key; values with fewer than
  ``min_samples`` samples are left out, and at least two must remain.

>>> wilson_bound(5, 100, 0.95, upper=False) < 0.05 < wilson_bound(5, 100, 0.95, upper=True)
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

from rules.aggregate import Bucket
from rules.cohort import cohort_windows, share_returning
from rules.metric_names import COHORT_METRICS
from rules.metrics import COUNT_METRICS, metric_value, rate_counts
from rules.windows import RunningWindows, SeriesBuckets, SeriesKey, StoreSpec

__all__ = ["Evaluation", "WindowCache", "evaluate_metric", "wilson_bound"]


@dataclass(slots=True)
class Evaluation:
    verdict: bool | None
    value: float | None
    samples: int
    window_start: int
    window_end: int
    details: dict = field(default_factory=dict)
    # set on an insufficient evaluation whose window holds data (rules.starvation: the rule is starved, not idle)
    live: bool = False


def wilson_bound(successes: int, trials: int, confidence: float, upper: bool) -> float:
    """One-sided Wilson score bound of a binomial proportion at the given confidence."""
    if trials == 0:
        return math.nan
    z = NormalDist().inv_cdf(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre + margin) / denom if upper else (centre - margin) / denom


class WindowCache:
    """Merged windows of one evaluation instant ``t``, shared by the rules that read the same series and window.

    With ``running`` (the feature's ``rules.windows.RunningWindows``) a window is moved along from where it was at
    the previous instant instead of merged afresh (see ``rules.windows``: equal to the fresh merge); without, every
    window is a full merge. The buckets returned are read-only and valid for this instant only."""

    __slots__ = ("_d", "_running", "_t")

    def __init__(self, running: RunningWindows | None = None, t: int | None = None) -> None:
        self._d: dict[tuple, Bucket] = {}
        self._running = running if t is not None else None
        self._t = t

    def get(self, spec: StoreSpec, key: SeriesKey, series: SeriesBuckets, end: int, window_ms: int) -> Bucket:
        ck = (spec.id, key, end, window_ms)
        b = self._d.get(ck)
        if b is None:
            if self._running is not None:
                b = self._running.window(spec, key, series, end, window_ms, self._t - end)
            else:
                b = series.window(end, window_ms, spec.every_ms, spec.needs_latency, spec.needs_users)
            self._d[ck] = b
        return b


def _point(rule, base: str, param: str | None, b: Bucket) -> tuple[float | None, int, float | None]:
    """(value, samples, value to compare): the compared value is the Wilson bound when ``confidence`` is set."""
    value, samples = metric_value(base, param, b)
    compared = value
    if rule.confidence is not None and value is not None:
        k, n = rate_counts(base, param, b)
        compared = wilson_bound(k, n, rule.confidence, upper=rule.op in ("<", "<="))
    return value, samples, compared


def evaluate_metric(
    rule,
    base: str,
    param: str | None,
    spec: StoreSpec,
    series: Mapping[SeriesKey, SeriesBuckets],
    phase: str,
    group: tuple[str, ...],
    t: int,
    cache: WindowCache,
    firing: bool = False,
    first: int | None = None,
) -> Evaluation:
    """Evaluate ``rule`` (a validated ``rules.model.Rule``) for ``(phase, group)`` at instant ``t``. ``firing``: the
    instance is firing, so a rule with ``resolve_threshold`` compares with that line instead (hysteresis): it stays
    true until the value crosses back over it. ``first``: the phase's first event time (``trailing_baseline``
    rules: a count's average window is taken over the span the phase has existed for, when shorter)."""
    w = rule.window_ms
    ev = Evaluation(None, None, 0, t - w, t)
    if rule.across is not None:
        return _evaluate_across(rule, base, param, spec, series, phase, group, t, cache, ev, firing)
    if base in COHORT_METRICS:
        return _evaluate_cohort(rule, base, param, spec, series.get((phase, group)), (phase, group), t, cache, ev,
                                firing)  # fmt: skip
    key = (phase, group)
    s = series.get(key)
    now = cache.get(spec, key, s, t, w) if s is not None else Bucket.empty(spec.needs_latency, spec.needs_users)
    value, samples, compared = _point(rule, base, param, now)
    ev.value, ev.samples = value, samples
    if rule.confidence is not None and compared is not None:
        ev.details["bound"] = compared
    enough = samples >= rule.min_samples
    if rule.baseline_ms is not None:
        if rule.baseline_trailing:  # the ``baseline_ms`` before this window, as an average window (counts scale)
            then_end, then_w = t - w, rule.baseline_ms
        else:  # the same window ``baseline_ms`` earlier
            then_end, then_w = t - rule.baseline_ms, w
        then_b = cache.get(spec, key, s, then_end, then_w) if s is not None else Bucket.empty(False, False)
        then, then_samples = metric_value(base, param, then_b)
        if rule.baseline_trailing and then is not None and base in COUNT_METRICS:
            # an average window over the span the phase has existed for, when that is shorter (a launch's first
            # week); less than one window of history has no average window yet
            covered = then_w if first is None else min(then_w, then_end - (first - first % spec.every_ms))
            then = then * w / covered if covered >= w else None
        ev.details.update(baseline_value=then, baseline_samples=then_samples)
        enough = then_samples >= rule.min_samples and (base in COUNT_METRICS or enough)
        if compared is None or then is None or then == 0:
            ev.live = any(now.c.values())
            return ev
        compared = (compared - then) / then
        ev.details["change"] = compared
    if not enough or compared is None or math.isnan(compared):
        ev.live = any(now.c.values())
        return ev
    ev.verdict = rule.holds(compared, _line(rule, firing))
    return ev


def _evaluate_cohort(rule, base, param, spec, s, key, t, cache, ev: Evaluation, firing: bool) -> Evaluation:
    """A cohort metric (``rules.cohort``): the share of one window's users found in the adjacent one."""
    (xe, xw), (ye, yw) = cohort_windows(base, param, rule.window_ms, t)
    ev.window_start = min(xe - xw, ye - yw)
    if s is None:
        return ev
    x, y = cache.get(spec, key, s, xe, xw), cache.get(spec, key, s, ye, yw)
    value, n, shared = share_returning(x.users, y.users)
    ev.value, ev.samples = value, n
    ev.details.update(users=n, shared_users=shared)
    if value is None or n < rule.min_samples:
        ev.live = any(x.c.values())
        return ev
    ev.verdict = rule.holds(value, _line(rule, firing))
    return ev


def _line(rule, firing: bool) -> float:
    """The line the compared value is held against: ``resolve_threshold`` while firing, when the rule has one."""
    return rule.resolve_threshold if firing and rule.resolve_threshold is not None else rule.threshold


def _evaluate_across(rule, base, param, spec, series, phase, group, t, cache, ev: Evaluation,
                     firing: bool) -> Evaluation:  # fmt: skip
    n = len(group)
    values: dict[str, float] = {}
    total = 0
    live = False
    for key in sorted(k for k in series if k[0] == phase and k[1][:n] == group):
        b = cache.get(spec, key, series[key], t, rule.window_ms)
        value, samples = metric_value(base, param, b)
        live = live or any(b.c.values())
        if value is not None and samples >= rule.min_samples:
            values[key[1][n]] = value
            total += samples
    ev.details["by"] = values
    ev.samples = total
    if len(values) < 2:
        ev.live = live
        return ev
    ev.value = max(values.values()) - min(values.values())
    ev.verdict = rule.holds(ev.value, _line(rule, firing))
    return ev
