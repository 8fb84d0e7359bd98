"""Event-time buckets and sliding windows as merges of buckets.

A *store* keeps, for one feature, the buckets of one granularity (the rules' ``every``) and one set of segment
keys (``group_by`` plus ``across``). A *series* is one (phase, segment values) combination inside a store. The window
for instant ``t`` is ``[t - window, t)``: the merge of the buckets starting in that range.

>>> s = SeriesBuckets()
>>> s.bucket(60_000, 60_000, False, False).c["n"] = 5
>>> s.window(120_000, 60_000, 60_000, False, False).c
{'n': 5}
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.aggregate import Bucket

__all__ = ["StoreSpec", "SeriesBuckets", "SeriesKey"]

SeriesKey = tuple[str, tuple[str, ...]]  # (phase, segment values in the store's key order)


@dataclass(frozen=True)
class StoreSpec:
    """What one store keeps; shared by every rule with the same ``every`` and segment keys."""

    id: int
    every_ms: int
    keys: tuple[str, ...]
    needs_latency: bool
    needs_users: bool
    retention_ms: int  # longest window + baseline among its rules: older buckets are dropped


class SeriesBuckets:
    """The buckets of one series, keyed by bucket start (epoch ms, a multiple of ``every``)."""

    __slots__ = ("buckets",)

    def __init__(self, buckets: dict[int, Bucket] | None = None) -> None:
        self.buckets: dict[int, Bucket] = buckets if buckets is not None else {}

    def bucket(self, ts: int, every_ms: int, needs_latency: bool, needs_users: bool) -> Bucket:
        start = ts - ts % every_ms
        b = self.buckets.get(start)
        if b is None:
            b = self.buckets[start] = Bucket.empty(needs_latency, needs_users)
        return b

    def window(self, end: int, window_ms: int, every_ms: int, needs_latency: bool, needs_users: bool) -> Bucket:
        """Merge of the buckets in ``[end - window_ms, end)``."""
        out = Bucket.empty(needs_latency, needs_users)
        buckets = self.buckets
        if len(buckets) <= window_ms // every_ms:
            starts = [s for s in buckets if end - window_ms <= s < end]
        else:
            starts = [s for s in range(end - window_ms, end, every_ms) if s in buckets]
        for s in sorted(starts):
            out.merge(buckets[s])
        return out

    def expire(self, before: int) -> None:
        """Drop buckets starting before ``before``."""
        for s in [s for s in self.buckets if s < before]:
            del self.buckets[s]

    def to_state(self) -> dict:
        return {str(s): b.to_state() for s, b in sorted(self.buckets.items())}

    @classmethod
    def from_state(cls, d: dict) -> SeriesBuckets:
        return cls({int(s): Bucket.from_state(b) for s, b in d.items()})
