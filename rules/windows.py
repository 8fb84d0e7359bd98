"""Event-time buckets and sliding windows as merges of buckets.

A *store* keeps, for one feature, the buckets of one granularity (the rules' ``every``) and one set of segment
keys (``group_by`` plus ``across``). A *series* is one (phase, segment values) combination inside a store. The window
for instant ``t`` is ``[t - window, t)``: the merge of the buckets starting in that range.

>>> s = SeriesBuckets()
>>> s.bucket(60_000, 60_000, False, False).c["n"] = 5
>>> s.window(120_000, 60_000, 60_000, False, False).c
{'n': 5}

Incremental (running) windows
-----------------------------

Merging every bucket of a window at every instant costs ``window / every`` merges (336 for a 14-day window of hourly
buckets). :class:`RunningWindows` keeps, per feature and in memory only, one :class:`RunningWindow` per (store id,
series key, window length, offset of its end before the instant: 0, or the rule's ``baseline``). Asked for the
window ending at ``end``, it moves from the end it holds by adding the buckets that entered ``[old end, end)`` and
subtracting the ones that left ``[old end - window, end - window)``: a step of one ``every`` costs two bucket
operations whatever the window's length. Counters subtract exactly (integers); a counter name is kept while at least
one included bucket has it (a reference count, not its value: a fresh merge keeps a name whose sum is 0), so the
dict equals the fresh merge's, key set included. DDSketch bins subtract exactly (``DDSketch.subtract``, zero bins
dropped). It rebuilds by a full merge when ``end`` goes backwards, when more than ``window / every`` bucket positions
would change (a jump of more than half a window), and whenever it cannot be trusted (below).

Why it is exact. The engine drops an event late for its own source (``ts < source max - allowed lateness``) and
evaluates an instant only once the watermark (the minimum over sources of ``source max - lateness``) passed it. So
every event applied after instant ``t`` was evaluated has ``ts >= t``; instants are multiples of the store's
``every``, so its bucket starts at or after ``t``: *a bucket that starts before an evaluated instant never changes
again* (the loader makes ``window`` and ``baseline`` multiples of ``every``, so ends are bucket bounds too). A running window ending at ``end`` therefore never includes a bucket at or after ``end`` (those may still
change), and subtracts each bucket with the content it was added with. That is checked, not assumed:

* ``SeriesBuckets.sealed`` is the latest end any running window of the series was built to; ``SeriesBuckets.bucket``
  (the only way events reach a bucket, ``rules.batch`` included) bumps ``SeriesBuckets.epoch`` when it hands out a bucket starting before it,
  and a running window whose epoch differs rebuilds (``finish()`` evaluates past the watermark; a test harness may
  then step more events);
* each included bucket is kept as a reference plus a fingerprint (number of counters, their sum, sketch counts) taken when it
  was added; if the bucket differs at subtraction, or a subtraction is refused (``DDSketch.subtract``), the window
  rebuilds. Keeping the reference (not a copy) also means expiry (``SeriesBuckets.expire``) cannot break a running
  window: what leaves is subtracted from the object that was added, present in the series or not. The engine's
  ``_expire`` drops running windows that may hold an expired bucket, or whose series is gone (``prune``).

Running windows are transient: never persisted, absent after ``FeatureState.from_state`` / ``from_parts``, and
dropped when the plan changes (rule reload: store ids are renumbered), so they always start from a full merge.

Distinct users (HyperLogLog). Registers are a maximum and cannot be subtracted; the result must stay bit-identical
to the fresh merge. A sketch's mode and registers depend only on the *set* of hashes it saw, so a running window keeps
a multiset of hashes (hash -> number of included buckets holding it) over the buckets whose users sketch is still
exact (``HyperLogLog.is_exact``: at most 1024 distinct users in the bucket), which adds and subtracts exactly, and
builds the window's sketch from that set (``HyperLogLog.from_hashes``: the same sparse set, or the same registers
folded from it, as any merge). Buckets whose sketch went dense (more than 1024 distinct users in one bucket) cannot
be taken apart: they are merged afresh into that sketch, so the cost is one register merge (``2**14`` bytes, numpy)
per *dense* bucket in the window, plus O(distinct users) to build the sketch. The sketch is built lazily, only when a
metric reads ``users`` (most rules of a store that keeps users do not), and reused while the window's content does
not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from heapq import heapify, heappop, heappush

from rules.aggregate import Bucket
from rules.sketches.exceptions import SketchError
from rules.sketches.hll import HyperLogLog

__all__ = ["StoreSpec", "SeriesBuckets", "SeriesKey", "RunningWindow", "RunningWindows"]

_NEVER = -(1 << 62)

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
    # a rule's ``where`` filter (rules.model.Matcher): only events it admits reach the store
    where: tuple = ()
    # the arm dimension of a comparison's store (its last key): events without a value for it belong to no arm and
    # are not kept (a feature that runs no experiment keeps nothing here)
    arm: str | None = None
    needs_squares: bool = False  # sums of squares for comparisons of means
    # what the store is for when it is not a rule's: "exposure" for a promotion block's counts (rules.promotion), kept
    # apart so that its window (a phase's 14 or 21 days) never stretches the retention of the rules' stores
    purpose: str = ""

    @property
    def filtered(self) -> bool:
        return bool(self.where) or self.arm is not None

    def admits(self, seg: dict[str, str]) -> bool:
        """Whether an event whose segment (with its arm fields, ``rules.batch.with_arms``) is ``seg`` is counted."""
        if self.arm is not None and not seg.get(self.arm):
            return False
        return all(m.admits(seg) for m in self.where)


class SeriesBuckets:
    """The buckets of one series, keyed by bucket start (epoch ms, a multiple of ``every``)."""

    __slots__ = ("buckets", "sealed", "epoch", "_starts")

    def __init__(self, buckets: dict[int, Bucket] | None = None) -> None:
        self.buckets: dict[int, Bucket] = buckets if buckets is not None else {}
        # in memory only (see "Incremental windows" above): the latest end a running window was built to, and a
        # counter of buckets handed out for writing that start before it (running windows then rebuild)
        self.sealed = _NEVER
        self.epoch = 0
        # a min-heap of the bucket starts, so expiring costs the buckets dropped, not the buckets kept (a 7-day
        # window of 1-minute buckets holds 10,080); None until the first expire (buckets may be loaded directly)
        self._starts: list[int] | None = None

    def bucket(self, ts: int, every_ms: int, needs_latency: bool, needs_users: bool) -> Bucket:
        """The bucket holding time ``ts``, created if needed, for adding an event to: every write goes through here."""
        start = ts - ts % every_ms
        if start < self.sealed:
            self.epoch += 1
        b = self.buckets.get(start)
        if b is None:
            b = self.buckets[start] = Bucket.empty(needs_latency, needs_users)
            if self._starts is not None:
                heappush(self._starts, start)
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

    def expire(self, before: int) -> list[int]:
        """Drop buckets starting before ``before``; returns the starts of those dropped."""
        starts = self._starts
        if starts is None:
            starts = self._starts = list(self.buckets)
            heapify(starts)
        buckets = self.buckets
        dropped = []
        while starts and starts[0] < before:
            start = heappop(starts)
            if buckets.pop(start, None) is not None:
                dropped.append(start)
        return dropped

    def to_state(self) -> dict:
        return {str(s): b.to_state() for s, b in sorted(self.buckets.items())}

    @classmethod
    def from_state(cls, d: dict) -> SeriesBuckets:
        return cls({int(s): Bucket.from_state(b) for s, b in d.items()})


def _aligned(lo: int, hi: int, every_ms: int) -> range:
    """Bucket starts (multiples of ``every_ms``) in ``[lo, hi)``."""
    return range(lo + (-lo) % every_ms, hi, every_ms)


def _fingerprint(b: Bucket) -> tuple[int, int, int, int]:
    """What must not change in a bucket between adding it to a running window and subtracting it: every event adds
    at least one positive count, so an event applied since changes the sum."""
    lat, users = b.lat, b.users
    return (len(b.c), sum(b.c.values()), -1 if lat is None else lat.count,
            -1 if users is None else (users.cardinality() if users.is_exact else -2))  # fmt: skip


class _WindowBucket(Bucket):
    """A running window's result: its counters and latency sketch (shared, read-only: valid until the window moves)
    and a users sketch built on first read."""

    __slots__ = ("_rw",)

    def __init__(self, c: dict[str, int], lat, rw: RunningWindow | None) -> None:
        super().__init__(c, lat, None)
        self._rw = rw

    @property
    def users(self) -> HyperLogLog | None:  # type: ignore[override]
        rw = self._rw
        if rw is not None:
            Bucket.users.__set__(self, rw.users())
            self._rw = None
        return Bucket.users.__get__(self)

    @users.setter
    def users(self, value: HyperLogLog | None) -> None:
        Bucket.users.__set__(self, value)
        self._rw = None


class RunningWindow:
    """The merge of one series' buckets in ``[end - window_ms, end)``, moved along by adding and subtracting."""

    __slots__ = ("series", "window_ms", "every_ms", "needs_latency", "needs_users", "end", "epoch", "c", "refs",
                 "lat", "parts", "hashes", "dense", "precision", "_users")  # fmt: skip

    def __init__(self, series: SeriesBuckets, window_ms: int, every_ms: int, needs_latency: bool,
                 needs_users: bool) -> None:  # fmt: skip
        self.series = series
        self.window_ms = window_ms
        self.every_ms = every_ms
        self.needs_latency = needs_latency
        self.needs_users = needs_users
        self.end: int | None = None

    def _reset(self, end: int) -> None:
        self.end = end
        self.epoch = self.series.epoch
        self.c: dict[str, int] = {}
        self.refs: dict[str, int] = {}  # counter name -> number of included buckets that have it
        empty = Bucket.empty(self.needs_latency, False)
        self.lat = empty.lat
        self.parts: dict[int, tuple[Bucket, tuple]] = {}  # start -> (bucket, fingerprint when added)
        self.hashes: dict[int, int] = {}  # hash -> number of included exact users sketches holding it
        self.dense: dict[int, HyperLogLog] = {}  # start -> users sketch that is not exact (merged afresh)
        self.precision = HyperLogLog().precision
        self._users: HyperLogLog | None = None

    def rebuild(self, end: int) -> None:
        """Full merge of the buckets in ``[end - window_ms, end)``."""
        self._reset(end)
        buckets = self.series.buckets
        lo = end - self.window_ms
        if len(buckets) <= self.window_ms // self.every_ms:
            starts = sorted(s for s in buckets if lo <= s < end)
        else:
            starts = [s for s in _aligned(lo, end, self.every_ms) if s in buckets]
        for s in starts:
            self._add(s, buckets[s])
        if end > self.series.sealed:
            self.series.sealed = end

    def move_to(self, end: int) -> str:
        """Hold the window ending at ``end``: incrementally when it is a short step forward (``"step"``), else by a
        full merge (``"rebuild"``, or ``"distrust"`` when the window could not be trusted)."""
        old = self.end
        if old is not None and self.epoch != self.series.epoch:
            self.rebuild(end)
            return "distrust"
        if old is None or end < old or 2 * (end - old) > self.window_ms:
            self.rebuild(end)
            return "rebuild"
        if end == old:
            return "step"
        w, every = self.window_ms, self.every_ms
        parts = self.parts
        try:
            for s in _aligned(old - w, end - w, every):
                if s in parts:
                    self._subtract(s)
        except _Distrust:
            self.rebuild(end)
            return "distrust"
        buckets = self.series.buckets
        for s in _aligned(old, end, every):
            b = buckets.get(s)
            if b is not None:
                self._add(s, b)
        self.end = end
        if end > self.series.sealed:
            self.series.sealed = end
        return "step"

    def _add(self, s: int, b: Bucket) -> None:
        c, refs = self.c, self.refs
        for k, v in b.c.items():
            c[k] = c.get(k, 0) + v
            refs[k] = refs.get(k, 0) + 1
        if self.lat is not None and b.lat is not None:
            self.lat.merge(b.lat)
        if self.needs_users and b.users is not None:
            self._users = None
            hs = b.users.exact_hashes()
            if hs is None or b.users.precision != self.precision:
                self.dense[s] = b.users
            else:
                m = self.hashes
                for h in hs:
                    m[h] = m.get(h, 0) + 1
        self.parts[s] = (b, _fingerprint(b))

    def _subtract(self, s: int) -> None:
        b, fp = self.parts[s]
        if _fingerprint(b) != fp:
            raise _Distrust
        c, refs = self.c, self.refs
        for k in b.c:
            if k not in refs:
                raise _Distrust
        if self.lat is not None and b.lat is not None:
            try:
                self.lat.subtract(b.lat)
            except SketchError:
                raise _Distrust from None
        for k, v in b.c.items():
            n = refs[k] - 1
            if n:
                refs[k] = n
                c[k] -= v
            else:
                del refs[k]
                del c[k]
        if self.needs_users and b.users is not None:
            self._users = None
            if self.dense.pop(s, None) is None:
                m = self.hashes
                for h in b.users.exact_hashes():
                    n = m[h] - 1
                    if n:
                        m[h] = n
                    else:
                        del m[h]
        del self.parts[s]

    def users(self) -> HyperLogLog | None:
        """The window's distinct-users sketch, equal to the fresh merge's; built on demand, kept until a change."""
        if not self.needs_users:
            return None
        u = self._users
        if u is None:
            u = HyperLogLog.from_hashes(self.hashes.keys(), self.precision)
            for s in sorted(self.dense):
                u.merge(self.dense[s])
            self._users = u
        return u

    def result(self) -> Bucket:
        """The window as a bucket (read-only; valid until the window next moves)."""
        return _WindowBucket(self.c, self.lat, self if self.needs_users else None)


class _Distrust(Exception):
    """An included bucket is not what was added: the running window rebuilds."""


class RunningWindows:
    """A feature's running windows (transient: never persisted), for one plan; see "Incremental windows" above."""

    __slots__ = ("plan", "windows", "rebuilds", "steps", "distrusts")

    def __init__(self, plan: object = None) -> None:
        self.plan = plan  # the plan whose store ids key the windows: another plan starts afresh
        self.windows: dict[tuple, RunningWindow] = {}
        self.rebuilds = 0  # full merges (first build, jumps, distrust), for tests and profiling
        self.steps = 0  # incremental moves
        self.distrusts = 0  # rebuilds because an included bucket changed (never, while the engine's invariant holds)

    def window(self, spec: StoreSpec, key: SeriesKey, series: SeriesBuckets, end: int, window_ms: int,
               offset: int) -> Bucket:  # fmt: skip
        """The merge of ``series``' buckets in ``[end - window_ms, end)``, equal to ``series.window(...)``;
        ``offset`` is how far ``end`` lies before the instant (0, or a ``baseline``)."""
        rk = (spec.id, key, window_ms, offset)
        rw = self.windows.get(rk)
        if rw is None or rw.series is not series or rw.every_ms != spec.every_ms:
            rw = self.windows[rk] = RunningWindow(series, window_ms, spec.every_ms, spec.needs_latency,
                                                  spec.needs_users)  # fmt: skip
        how = rw.move_to(end)
        if how == "step":
            self.steps += 1
        else:
            self.rebuilds += 1
            if how == "distrust":
                self.distrusts += 1
        return rw.result()

    def prune(self, stores: dict[int, dict[SeriesKey, SeriesBuckets]], horizons: dict[int, int]) -> None:
        """Drop running windows whose series is gone, or that may hold a bucket starting before the store's expiry
        horizon (they would rebuild anyway; this frees the buckets they still reference)."""
        drop = []
        for rk, rw in self.windows.items():
            series = stores.get(rk[0])
            h = horizons.get(rk[0])
            if series is None or h is None or series.get(rk[1]) is not rw.series or \
                    (rw.end is not None and rw.end - rw.window_ms < h):  # fmt: skip
                drop.append(rk)
        for rk in drop:
            del self.windows[rk]
