"""Frozen copy (2026-12-04, commit 333decf) of the per-event bucket and window path of ``rules/windows.py``.

``SeriesBuckets.bucket``, ``.window`` (the merge of the buckets in ``[end - window, end)``, done afresh at every
instant) and ``.expire``, as functions over a series' ``buckets`` dict (bucket start -> ``rules.aggregate.Bucket``).
The series objects themselves stay ``rules.windows.SeriesBuckets``, so ``rules.state.FeatureState`` stores and
restores them; this module only relies on their ``buckets`` dict, never on the product's methods.

>>> from rules.windows import SeriesBuckets
>>> s = SeriesBuckets()
>>> bucket(s, 60_000, 60_000, False, False).c["n"] = 5
>>> window(s, 120_000, 60_000, 60_000, False, False).c
{'n': 5}
"""

from __future__ import annotations

from typing import Any

from rules.aggregate import Bucket

__all__ = ["bucket", "window", "expire"]


def bucket(series: Any, ts: int, every_ms: int, needs_latency: bool, needs_users: bool) -> Bucket:
    """The bucket of ``series`` holding event time ``ts``, created empty when missing."""
    buckets = series.buckets
    start = ts - ts % every_ms
    b = buckets.get(start)
    if b is None:
        b = buckets[start] = Bucket.empty(needs_latency, needs_users)
    return b


def window(series: Any, end: int, window_ms: int, every_ms: int, needs_latency: bool, needs_users: bool) -> Bucket:
    """Merge of the buckets of ``series`` in ``[end - window_ms, end)``."""
    out = Bucket.empty(needs_latency, needs_users)
    buckets = series.buckets
    if len(buckets) <= window_ms // every_ms:
        starts = [s for s in buckets if end - window_ms <= s < end]
    else:
        starts = [s for s in range(end - window_ms, end, every_ms) if s in buckets]
    for s in sorted(starts):
        out.merge(buckets[s])
    return out


def expire(series: Any, before: int) -> None:
    """Drop the buckets of ``series`` starting before ``before``."""
    buckets = series.buckets
    for s in [s for s in buckets if s < before]:
        del buckets[s]
