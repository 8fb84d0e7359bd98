"""Mergeable per-bucket aggregates: integer counters plus optional sketches.

Every quantity is kept as an integer (latency in µs, cost in nano-USD, confidence and scores in millionths and
thousandths), so adding events in any order or any batch split gives bit-identical buckets, and subtracting or merging
is exact. An event's contribution is computed once (:func:`contributions`) and added to every bucket it belongs to.

>>> b = Bucket.empty(needs_latency=True, needs_users=False)
>>> ev = type("E", (), dict(type="interaction", outcome="error", latency_ms=12.5, cost_usd=None, tokens_out=None,
...                         confidence=None, flags=("pii_leak",), user=None))()
>>> b.add(contributions(ev), ev)
>>> sorted(b.c.items())
[('flag:pii_leak', 1), ('lat.n', 1), ('lat.s', 12500), ('n', 1), ('o:error', 1)]
"""

from __future__ import annotations

from typing import Any

from rules.sketches.ddsketch import DDSketch
from rules.sketches.hll import HyperLogLog

__all__ = ["Bucket", "contributions", "LATENCY_SCALE", "COST_SCALE", "UNIT_SCALE", "SCORE_SCALE"]

LATENCY_SCALE = 1_000  # ms -> µs
COST_SCALE = 1_000_000_000  # USD -> nano-USD
UNIT_SCALE = 1_000_000  # confidence in [0, 1] -> millionths
SCORE_SCALE = 1_000  # review / survey scores -> thousandths
DDSKETCH_ACCURACY = 0.005  # half of the contract's 1 % budget, leaving room for the index rounding


def contributions(ev: Any) -> list[tuple[str, int]]:
    """The counter increments one event adds to a bucket (sketches are handled by :meth:`Bucket.add`)."""
    if ev.type == "interaction":
        out = [("n", 1)]
        if ev.outcome != "ok":
            out.append(("o:" + ev.outcome, 1))
        if ev.latency_ms is not None:
            out.append(("lat.n", 1))
            out.append(("lat.s", round(ev.latency_ms * LATENCY_SCALE)))
        if ev.cost_usd is not None:
            out.append(("cost.n", 1))
            out.append(("cost.s", round(ev.cost_usd * COST_SCALE)))
        if ev.tokens_out is not None:
            out.append(("tok.n", 1))
            out.append(("tok.s", ev.tokens_out))
        if ev.confidence is not None:
            out.append(("conf.n", 1))
            out.append(("conf.s", round(ev.confidence * UNIT_SCALE)))
        for f in ev.flags:
            out.append(("flag:" + f, 1))
        return out
    kind = ev.kind
    if kind == "suggestion":
        return [("sug", 1), ("sug:" + ev.label, 1)]
    if kind == "thumbs":
        return [("th", 1), ("th:" + ev.label, 1)]
    if kind == "review":
        out = [("rev", 1), ("rev:" + ev.label, 1)]
        if ev.score is not None:
            out.append(("rs.n", 1))
            out.append(("rs.s", round(ev.score * SCORE_SCALE)))
        return out
    if kind == "ticket":
        return [("tk", 1), ("tk:" + ev.label, 1)] if ev.label else [("tk", 1)]
    # survey: label csat|nps with a score (validated upstream)
    if ev.label == "csat":
        return [("csat.n", 1), ("csat.s", round(ev.score * SCORE_SCALE))]
    out = [("nps.n", 1)]
    if ev.score >= 9:
        out.append(("nps.p", 1))
    elif ev.score <= 6:
        out.append(("nps.d", 1))
    return out


class Bucket:
    """Counters of one (series, time bucket), with a latency sketch and a distinct-user sketch when rules need them."""

    __slots__ = ("c", "lat", "users")

    def __init__(self, c: dict[str, int], lat: DDSketch | None, users: HyperLogLog | None) -> None:
        self.c = c
        self.lat = lat
        self.users = users

    @classmethod
    def empty(cls, needs_latency: bool, needs_users: bool) -> Bucket:
        return cls(
            {},
            DDSketch(relative_accuracy=DDSKETCH_ACCURACY) if needs_latency else None,
            HyperLogLog() if needs_users else None,
        )

    def add(self, contrib: list[tuple[str, int]], ev: Any) -> None:
        c = self.c
        for k, d in contrib:
            c[k] = c.get(k, 0) + d
        if ev.type == "interaction":
            if self.lat is not None and ev.latency_ms is not None:
                self.lat.add(ev.latency_ms)
            if self.users is not None and ev.user is not None:
                self.users.add(ev.user)

    def merge(self, other: Bucket) -> None:
        c = self.c
        for k, v in other.c.items():
            c[k] = c.get(k, 0) + v
        if self.lat is not None and other.lat is not None:
            self.lat.merge(other.lat)
        if self.users is not None and other.users is not None:
            self.users.merge(other.users)

    def to_state(self) -> dict:
        out: dict[str, Any] = {"c": dict(sorted(self.c.items()))}
        if self.lat is not None:
            out["lat"] = self.lat.to_state()
        if self.users is not None:
            out["users"] = self.users.to_state()
        return out

    @classmethod
    def from_state(cls, d: dict) -> Bucket:
        return cls(
            dict(d["c"]),
            DDSketch.from_state(d["lat"]) if "lat" in d else None,
            HyperLogLog.from_state(d["users"]) if "users" in d else None,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bucket) and self.to_state() == other.to_state()
