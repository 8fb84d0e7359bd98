"""Frozen copy (2026-12-04, commit 333decf) of ``rules/evaluation.py``, the reference oracle's rule evaluation.

Identical to the product's module that day except that ``WindowCache`` merges windows with the frozen
``reference_engine.windows.window`` (afresh from the buckets, at every instant), not with the product's
``SeriesBuckets.window``. Part of ``tests/reference_engine`` (see its ``__init__``); never imported by the product.

Evaluate one metric rule for one group at one event-time instant.

The result is a verdict — ``True`` (condition holds), ``False``, or ``None`` (*insufficient*: too few samples or an
undefined value, which holds the lifecycle state) — with the evidence a decision carries.

Semantics (CONTRACT §3):

* plain: the metric over ``[t - window, t)`` compared with ``op threshold``;
* ``confidence``: rate metrics compare the one-sided Wilson bound on the far side of the threshold (the lower bound
  for ``>``/``>=``, the upper bound for ``<``/``<=``), so a rule only fires when the data is convincing;
* ``baseline``: the relative change ``(value - then) / then`` against the threshold, ``then`` being the same window
  ``baseline`` earlier; ``min_samples`` applies to both windows, except that for count metrics (``requests``,
  ``tickets``…) only the earlier window must have them — a drop to zero is the observation, not missing data;
* ``across``: the spread ``max - min`` of the metric over the values of one segment key; values with fewer than
  ``min_samples`` samples are left out, and at least two must remain.

>>> wilson_bound(5, 100, 0.95, upper=False) < 0.05 < wilson_bound(5, 100, 0.95, upper=True)
True
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

from rules.aggregate import Bucket
from rules.metric_names import cohort_span_ms
from rules.sketches.hll import HyperLogLog
from rules.metrics import COUNT_METRICS, metric_value, rate_counts

from .windows import window

if TYPE_CHECKING:  # annotations only: the product's window path is not used here
    from rules.windows import SeriesBuckets, SeriesKey, StoreSpec

__all__ = ["Evaluation", "WindowCache", "evaluate_metric", "wilson_bound", "OPS"]

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


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
    """Merged windows of one evaluation instant, shared by the rules that read the same series and window."""

    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d: dict[tuple, Bucket] = {}

    def get(self, spec: StoreSpec, key: SeriesKey, series: SeriesBuckets, end: int, window_ms: int) -> Bucket:
        ck = (spec.id, key, end, window_ms)
        b = self._d.get(ck)
        if b is None:
            b = self._d[ck] = window(series, end, window_ms, spec.every_ms, spec.needs_latency, spec.needs_users)
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
    first: int | None = None,
) -> Evaluation:
    """Evaluate ``rule`` (a validated ``rules.model.Rule``) for ``(phase, group)`` at instant ``t``; ``first``: the
    phase's first event time (``trailing_baseline`` rules)."""
    w = rule.window_ms
    ev = Evaluation(None, None, 0, t - w, t)
    if rule.across is not None:
        return _evaluate_across(rule, base, param, spec, series, phase, group, t, cache, ev)
    if base in ("retention", "returning_share"):
        return _evaluate_cohort(rule, base, param, spec, series.get((phase, group)), (phase, group), t, cache, ev)
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
    ev.verdict = _holds(rule, compared)
    return ev


def _evaluate_across(rule, base, param, spec, series, phase, group, t, cache, ev: Evaluation) -> Evaluation:
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
    ev.verdict = _holds(rule, ev.value)
    return ev


def _evaluate_cohort(rule, base, param, spec, s, key, t, cache, ev: Evaluation) -> Evaluation:
    """The share of the users of one window (the cohort ending ``k`` before ``t`` for retention, the rule's window
    for returning_share) also active in the adjacent ``k``: a set intersection while both sketches hold their hashes,
    inclusion–exclusion over the sketches past that."""
    k, w = cohort_span_ms(param), rule.window_ms
    ev.window_start = t - k - w
    if s is None:
        return ev
    if base == "retention":
        xb, yb = cache.get(spec, key, s, t - k, w), cache.get(spec, key, s, t, k)
    else:
        xb, yb = cache.get(spec, key, s, t, w), cache.get(spec, key, s, t - w, k)
    n = xb.users.cardinality()
    if n:
        hx, hy = xb.users.exact_hashes(), yb.users.exact_hashes()
        if hx is not None and hy is not None:
            shared = len(hx & hy)
        else:
            ny = yb.users.cardinality()
            shared = max(0, min(n, ny, n + ny - HyperLogLog.merged(xb.users, yb.users).cardinality()))
        ev.value = shared / n
    else:
        shared = 0
    ev.samples = n
    ev.details.update(users=n, shared_users=shared)
    if not n or n < rule.min_samples:
        ev.live = any(xb.c.values())
        return ev
    ev.verdict = _holds(rule, ev.value)
    return ev


def _holds(rule, x: float) -> bool:
    if rule.op == "between":
        return rule.threshold <= x <= rule.threshold_high
    if rule.op == "outside":
        return x < rule.threshold or x > rule.threshold_high
    return OPS[rule.op](x, rule.threshold)
