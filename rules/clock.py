"""Producer clocks are not trusted: event times implausible for their stream are quarantined (``ts_outlier``).

A watermark driven by the highest event time seen (Kafka Streams' stream time, Flink's bounded out-of-orderness) is
at the mercy of one producer's clock: a single event dated a day ahead makes every later event late, and the kill
switch goes blind. For a kill switch a producer with a bad clock is an ordinary day, so this module decides whether
an event's time may be trusted, per feature and source (interactions, feedback), from that stream's own event times
in arrival order only. Each source of a feature is one Kafka partition's order, so the answer is the same live, in
``replay`` of a file and in ``replay --from-kafka``; nothing here reads a clock. (The feature's time below mixes two
sources, whose interleaving differs between live and a file; that can change the answer only for an event within a
few seconds of the bound, which no ordinary producer comes near.)

Two times bound an event: its stream's time ``S`` (the highest applied event time of that feature and source) and
its feature's time ``F`` (the highest over the feature's sources, ``>= S``); a source that has no time yet is
bounded by its feature's span ``[F0, F]`` (``F0``: the earliest first applied event of its sources). With
``max_skew`` (``ROLLGUARD_MAX_CLOCK_SKEW``):

* ``ts < S - max_skew``: an outlier at once (*behind*). Between the allowed lateness and ``max_skew`` behind, an
  event is *late*, as it always was: counted, not applied.
* ``ts <= F + max_skew``: applied as before. The feature's time, not the stream's, bounds the future so that a
  sparse source (support tickets a few times a day) is judged against the busy one beside it.
* ``ts > F + max_skew``: *held*: not applied, it moves no watermark. So is an event of a stream that has no time of
  its own yet and is more than ``max_skew`` before its feature's span (one Kafka topic may be consumed far behind
  the other: that is no reason to trust or to reject its first events), and, to keep them in order, every event of
  such a stream after one that is held. (The span, not ``F`` alone: a sparse stream whose first events came while
  its feature's first ones were held is within the span once they are confirmed, though already more than
  ``max_skew`` behind ``F``; judged against ``F`` it stayed held, and so did everything after it.) Held events
  gather in clusters, a cluster being a run of held times each within ``max_skew`` of the cluster's range. A
  cluster is

  - **confirmed** once it holds events of at least ``quorum`` distinct messages, spans at least ``min_span`` of its
    own event time, and at most one message in ten since its first contradicts it: the stream really moved on
    (after a silence longer than ``max_skew``). Its events are applied in arrival order.
  - **released** when the feature catches up with it (``F`` comes within ``max_skew``): it was early, not wrong.
  - **rejected** once at least ``quorum`` messages contradicting it arrived after its first event and they
    outnumber its own: each of its events becomes a ``ts_outlier`` dead letter.

  A message contradicts a held cluster when one of its events is applied to the stream (the stream goes on at its
  own time) or, before the stream has a time of its own, when it belongs to another cluster.
* Before the feature's first applied event there is no time at all: every event is held and the first confirmed
  cluster sets it. A first event dated 1970 or 9999 is rejected by the events that follow it, never trusted.

Votes are distinct *messages*, not events, so one producer's batch envelope cannot confirm itself; the span keeps a
burst of one bad host from confirming itself while the rest of the fleet is quiet for a moment.

At the end of a finite input (:meth:`ClockGuard.finish`) a stream with a time of its own rejects its unconfirmed
clusters ("not confirmed before the input ended"); one without applies its largest cluster (ties: the earliest) and
rejects the rest, so a short input is not lost.

Why decisions on the remaining events do not change: an event within ``max_skew`` of the stream is applied at once,
whether or not something is held, and a held event is applied, if ever, in its arrival order relative to the events
of its own cluster, while it held nothing back. Holding the stream's first events delays them but applies them in
the order they came. The limit: a feature whose every gap is longer than ``max_skew`` cannot confirm anything on its
own (live, idle watermarks keep its time moving once it has one; for such a replay raise ``max_skew`` or turn it
off), and a new feature whose first events are all more than ``max_skew`` apart never gets a time at all, live
included: each is a cluster of its own, and they vote each other down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rules.events import Event

__all__ = ["ClockConfig", "ClockGuard", "StreamClock", "Cluster", "approx_duration", "message_key"]

_UNITS = (("y", 365 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


def approx_duration(ms: int) -> str:
    """The two most significant units of a duration, for people.

    >>> [approx_duration(x) for x in (0, 1_500, 90_000, 86_400_000 + 5, 1_798_848_000_000)]
    ['0s', '1s 500ms', '1m 30s', '1d', '57y 15d']
    """
    ms = abs(ms)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        n, ms = divmod(ms, size)
        if n or parts:
            parts.append(f"{n}{unit}")
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0")) or "0s"


def message_key(ev: Event) -> Any:
    """What identifies the message an event came in (a batch envelope is one message); None: the event alone."""
    o = ev.origin
    return None if o is None else tuple(o.values())


@dataclass(frozen=True)
class ClockConfig:
    max_skew_ms: int = 600_000
    quorum: int = 5  # distinct messages to confirm a held cluster, or to reject it
    min_span_ms: int = 5_000  # of its own event time, to confirm a held cluster
    max_held: int = 10_000  # held events per stream; beyond that a new event is rejected at once


class Cluster:
    """Held events whose times agree with each other, and the votes for and against them."""

    __slots__ = ("id", "lo", "hi", "own", "own_last", "contra", "contra_last")

    def __init__(self, id: int, lo: int, hi: int, own: int = 0, own_last: Any = None, contra: int = 0,
                 contra_last: Any = None) -> None:  # fmt: skip
        self.id, self.lo, self.hi = id, lo, hi
        self.own, self.own_last = own, own_last  # distinct messages holding its events; the last one counted
        self.contra, self.contra_last = contra, contra_last  # distinct messages contradicting it since its first

    def to_state(self) -> list:
        return [self.id, self.lo, self.hi, self.own, _key_state(self.own_last), self.contra,
                _key_state(self.contra_last)]  # fmt: skip

    @classmethod
    def from_state(cls, s: list) -> Cluster:
        return cls(s[0], s[1], s[2], s[3], _key_from(s[4]), s[5], _key_from(s[6]))


class StreamClock:
    """The held events of one (feature, source) stream, in arrival order, and their clusters."""

    __slots__ = ("held", "clusters", "next_id")

    def __init__(self) -> None:
        # (cluster id, event, reference) in arrival order; the reference is what the event was judged against when
        # it came, (time, "stream" | "feature"), so a dead letter reads the same however late the verdict falls
        self.held: list[tuple[int, Event, tuple | None]] = []
        self.clusters: dict[int, Cluster] = {}
        self.next_id = 0

    def __bool__(self) -> bool:
        return bool(self.held)

    def to_state(self) -> dict:
        return {
            "held": [[cid, ev.to_state(), None if ref is None else list(ref)] for cid, ev, ref in self.held],
            "clusters": [c.to_state() for c in self.clusters.values()],
            "next_id": self.next_id,
        }

    @classmethod
    def from_state(cls, d: dict) -> StreamClock:
        sc = cls()
        sc.held = [(h[0], Event.from_state(h[1]), None if h[2] is None else tuple(h[2])) for h in d["held"]]
        sc.clusters = {c.id: c for c in map(Cluster.from_state, d["clusters"])}
        sc.next_id = d["next_id"]
        return sc


def _key_state(k: Any) -> Any:
    return list(k) if isinstance(k, tuple) else k


def _key_from(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


Apply = Callable[[Event], None]
Reject = Callable[..., None]  # (event, why[, ref]) — the caller words the dead letter from the stream's time


# (the stream's time S, the feature's time F, the feature's first time F0); None: none yet. F0 is the earliest of its
# sources' first applied events: with F, the span of time the feature's trusted events cover
Times = Callable[[], "tuple[int | None, int | None, int | None]"]


class ClockGuard:
    """Admits the events of one stream (see the module docstring). ``times()`` gives ``(S, F)``; ``apply`` applies
    one event (which may raise both); ``reject`` quarantines one."""

    def __init__(self, config: ClockConfig) -> None:
        self.config = config

    def admit(self, sc: StreamClock, ev: Event, stream_time: Callable[[], int | None], apply: Apply,
              reject: Reject) -> None:  # fmt: skip
        self._admit(sc, ev, stream_time, apply, reject)
        if sc.held:
            self._resolve(sc, stream_time, apply, reject)

    def recheck(self, sc: StreamClock, stream_time: Callable[[], int | None], apply: Apply, reject: Reject) -> None:
        """The stream's time moved without an event (a live idle watermark): release what it caught up with."""
        if sc.held:
            self._resolve(sc, stream_time, apply, reject)

    def finish(self, sc: StreamClock, stream_time: Callable[[], int | None], apply: Apply, reject: Reject) -> None:
        """End of a finite input: nothing stays held."""
        if not sc.held:
            return
        if stream_time()[0] is None:  # no time of its own: its largest cluster is the stream (ties: the earliest)
            best = max(sc.clusters.values(), key=lambda c: (c.own, -c.id))
            self._release(sc, best.id, stream_time, apply, reject)
        held, sc.held, sc.clusters = sc.held, [], {}
        for _, ev, ref in held:
            reject(ev, "unconfirmed", ref)

    # --- internals --------------------------------------------------------------------------------------------

    def _admit(self, sc: StreamClock, ev: Event, stream_time, apply: Apply, reject: Reject,
               ref: tuple | None = None) -> None:  # fmt: skip
        """Classify one event; resolving clusters is the caller's (so a release can re-admit without recursion).
        ``ref``: what a re-admitted event was judged against when it first came."""
        skew = self.config.max_skew_ms
        own, c, first = stream_time()
        ts = ev.ts
        msg = message_key(ev)
        if ref is None:
            ref = (own, "stream") if own is not None else (c, "feature") if c is not None else None
        if own is not None and ts < own - skew:
            reject(ev, "behind", ref)
            return
        if c is not None and ts <= c + skew and (own is not None or (ts >= _low(c, first) - skew and not sc.held)):
            apply(ev)
            for cl in sc.clusters.values():  # the stream went on at its own time: a vote against each
                _vote_against(cl, msg)
            return
        if len(sc.held) >= self.config.max_held:
            reject(ev, "hold_full", ref)
            return
        cl = None
        for k in sc.clusters.values():
            if k.lo - skew <= ts <= k.hi + skew:
                cl = k
                break
        if cl is None:
            cl = sc.clusters[sc.next_id] = Cluster(sc.next_id, ts, ts)
            sc.next_id += 1
        else:
            cl.lo, cl.hi = min(cl.lo, ts), max(cl.hi, ts)
        if msg is None or msg != cl.own_last:
            cl.own += 1
            cl.own_last = msg
        if own is None:  # before the stream has a time of its own, its clusters vote against each other
            for other in sc.clusters.values():
                if other is not cl:
                    _vote_against(other, msg)
        sc.held.append((cl.id, ev, ref))

    def _resolve(self, sc: StreamClock, stream_time, apply: Apply, reject: Reject) -> None:
        cfg = self.config
        while sc.held:
            for cl in list(sc.clusters.values()):
                if cl.contra >= cfg.quorum and cl.contra > cl.own:
                    others = [k for k in sc.clusters.values() if k is not cl]
                    best = max(others, key=lambda k: (k.own, -k.id), default=None)
                    self._reject_cluster(sc, cl.id, reject, None if best is None else (best.lo, "first"))
            own, c, first = stream_time()
            for cl in sc.clusters.values():
                if c is not None and cl.lo <= c + cfg.max_skew_ms and (
                    own is not None or cl.hi >= _low(c, first) - cfg.max_skew_ms
                ):
                    # the feature caught up with one of its events (its gaps are at most max_skew, so one lies
                    # within max_skew of the feature's time): held for being early, not wrong
                    before = len(sc.held)
                    self._readmit(sc, stream_time, apply, reject)
                    if len(sc.held) >= before:  # cannot happen (see above); never loop on it
                        return
                    break
                if cl.own >= cfg.quorum and cl.hi - cl.lo >= cfg.min_span_ms and cl.contra * 10 <= cl.own:
                    self._release(sc, cl.id, stream_time, apply, reject)
                    break
            else:
                return

    def _reject_cluster(self, sc: StreamClock, cid: int, reject: Reject, other: tuple | None) -> None:
        """``other``: the held events that outvoted it, for an event that came before its stream had any time."""
        keep = []
        for item in sc.held:
            if item[0] == cid:
                reject(item[1], "contradicted", item[2] or other)
            else:
                keep.append(item)
        sc.held = keep
        del sc.clusters[cid]

    def _release(self, sc: StreamClock, cid: int, stream_time, apply: Apply, reject: Reject) -> None:
        """Apply cluster ``cid`` (the stream moved on to it) and re-admit everything else held, in arrival order."""
        held, sc.held, sc.clusters = sc.held, [], {}
        for k, ev, ref in held:
            if k == cid:
                apply(ev)
            else:
                self._admit(sc, ev, stream_time, apply, reject, ref)

    def _readmit(self, sc: StreamClock, stream_time, apply: Apply, reject: Reject) -> None:
        held, sc.held, sc.clusters = sc.held, [], {}
        for _, ev, ref in held:
            self._admit(sc, ev, stream_time, apply, reject, ref)


def _low(c: int, first: int | None) -> int:
    """The start of the feature's span (its first time, else its time): a stream without a time of its own is
    trusted within the skew of that span, not only of the feature's latest time."""
    return c if first is None else min(first, c)


def _vote_against(cl: Cluster, msg: Any) -> None:
    if msg is None or msg != cl.contra_last:
        cl.contra += 1
        cl.contra_last = msg
