"""Batch application of events to a feature's windows and drift detectors.

The engine (``rules.engine``) keeps its per-event bookkeeping — clock checks, late and duplicate drops, watermarks,
which instants are due — but defers the expensive part, adding an event to its windows and detectors, into a
per-feature *pending* list. :func:`apply_pending` then applies a whole run of events at once:

* **windows**: events are grouped by (phase, segment, bucket of the finest ``every`` among the plan's stores); when
  the plan's stores read at most two segment keys (``Plan.segment_keys``: their keys and filters, no arm fields),
  by the values of those keys instead of the whole segment — every store routes an event by those values alone
  (``StoreSpec.admits`` and a series key read ``seg.get(k, "")``), so each group still lands in one series per store.
  Each group's counters are computed a column at a time (``rules.aggregate.group_counters``: one list per
  quantity, summed), its latencies go into one sketch (``DDSketch.add_many``) and its users into one set of hashes
  (cached per engine); then the group is merged into every store bucket it falls in, instead of adding each event
  into each of ~6 stores one dict increment at a time. A store bucket of ``every`` ``e`` is a union of groups (the finest granularity ``g`` divides ``e``, as
  both are multiples of their gcd). Counters are integers, a DDSketch merge adds bin counts, and a HyperLogLog is a
  function of its set of hashes, so the merged buckets equal the ones per-event adds build, bit for bit.
* **drift detectors**: a signal's values are taken as a column over the run's events of one (phase, event type);
  each detector gets its values in arrival order in one call
  (``DriftDetector.update_many``), with each value's instant slot; per slot it returns what the per-event loop
  left there: the number of flags and the estimation and update count after the slot's last update.

Why deferring equals applying at once: pending events of a feature are always applied before anything reads its
windows or detectors — before an instant is evaluated (the engine flushes the feature first), before a rule
reload, at the end of every ``step``/``finish``/``advance_idle`` — and nothing that runs between an event's arrival
and that flush reads them (the producer-clock checks, late and duplicate drops and watermarks read the feature's
times and ids only; controls read latches). So every evaluation sees exactly the events that arrived before it,
as when each event was applied on arrival. Evaluation is thus never moved after the batch: an instant is
evaluated at the same event as before, on the same data; only the work of applying events is grouped.
tests/test_differential.py checks this against the per-event engine that this module replaced (frozen under
tests/ as the oracle), and tests/test_batch_apply.py each column-wise piece against its per-event definition.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

from detectors import make_detector
from rules.aggregate import DDSKETCH_ACCURACY, group_counters, group_shares
from rules.metrics import signal_sources, signal_value
from rules.plan import FeaturePlan, Plan
from rules.sketches.ddsketch import DDSketch
from rules.sketches.hll import HyperLogLog, key_hash
from rules.state import FeatureState
from rules.windows import SeriesBuckets

__all__ = ["apply_pending", "prepare", "commit", "Prepared", "finest_every", "with_arms"]


def with_arms(ev) -> dict[str, str]:
    """The event's segment with its arm fields under their store keys (``@model_version``…, see
    ``rules.model.arm_key``; "" when absent). They override a segment key of the same name: rule keys cannot
    start with "@", so only these can be read there."""
    return {**ev.segment, "@model_version": ev.model_version or "", "@prompt_version": ev.prompt_version or "",
            "@variant": ev.variant or ""}  # fmt: skip


def finest_every(plan: Plan) -> int:
    """The gcd of the plan's store granularities: every store bucket is a whole number of buckets of it."""
    g = 0
    for spec in plan.stores.values():
        g = gcd(g, spec.every_ms)
    return g or 1


class _Group:
    """What one (phase, segment, finest bucket) adds to every store bucket it falls in."""

    __slots__ = ("fp", "phase", "seg", "route", "start", "evs", "c", "sq", "lat", "hashes")

    def __init__(self, fp: FeaturePlan, phase: str, seg: dict, route: tuple, start: int) -> None:
        self.fp = fp
        self.phase = phase
        self.seg = seg
        self.route = route  # the group's key without its time: the same store series for all such groups
        self.start = start
        self.evs: list = []
        self.c: dict[str, int] = {}
        self.sq: dict[str, int] = {}  # sums of squares, for the stores that keep them
        self.lat: DDSketch | None = None
        self.hashes: set[int] | None = None

    def summarise(self, user_hashes: dict[str, int], squares: bool, shares: tuple) -> None:
        """Counters (rules.aggregate.group_counters; with ``squares`` the sums of squares too), latency sketch and
        distinct user hashes of the group's events."""
        evs = self.evs
        self.c = group_counters(evs, self.sq if squares else None)
        if shares:
            self.c.update(group_shares(evs, shares))
        lats = [x for ev in evs if ev.type == "interaction" and (x := ev.latency_ms) is not None]
        if lats:
            self.lat = DDSketch(DDSKETCH_ACCURACY)
            self.lat.add_many(lats)
        users = {ev.user for ev in evs if ev.type == "interaction" and ev.user is not None}
        if users:
            hashes = set()
            for u in users:
                h = user_hashes.get(u)
                if h is None:
                    if len(user_hashes) >= _USER_HASHES_MAX:
                        user_hashes.clear()
                    h = user_hashes[u] = key_hash(u)
                hashes.add(h)
            self.hashes = hashes


_USER_HASHES_MAX = 100_000  # keyed user id -> sketch hash, per engine: a hit is a dict lookup, not a BLAKE2b


def apply_pending(plan: Plan, fine_ms: int, feature: str, fs: FeatureState, pending: list,
                  user_hashes: dict[str, int] | None = None) -> None:  # fmt: skip
    """Apply ``pending`` — (FeaturePlan, Event) pairs of one feature, in arrival order — to its stores and drift
    detectors, as applying each on arrival would have. ``user_hashes`` caches the distinct-user sketch hash of
    keyed user ids across calls (bounded: cleared when full)."""
    commit(plan, fs, prepare(plan, fine_ms, feature, pending, user_hashes))


class Prepared:
    """What a run of events adds, computed from the events alone (:func:`prepare`), for :func:`commit`."""

    __slots__ = ("groups", "drift")

    def __init__(self, groups: list[_Group], drift: list[tuple]) -> None:
        self.groups = groups
        self.drift = drift  # (detector key, bound rule, feature, phase, group, values, slots) in feeding order


def prepare(plan: Plan, fine_ms: int, feature: str, pending: list,
            user_hashes: dict[str, int] | None = None) -> Prepared:  # fmt: skip
    """The first half of :func:`apply_pending`: everything that depends on the events — grouping, counters,
    sketches, signal columns — and nothing that changes state, so that a failure here (an event no code path
    expected) leaves the feature as it was and the caller may retry the events one at a time."""
    groups: dict[tuple, _Group] = {}
    # (phase, event type) -> the phase's plan and its events in arrival order (one plan per phase: a run never
    # spans a reload, and the plan's per-phase objects, even if its cache rebuilt one, hold the same rules)
    drift: dict[tuple, tuple[FeaturePlan, list]] = {}
    arms = plan.needs_arms
    # few segment keys read by any store (plan.segment_keys): group by their values alone, so the events of one
    # (phase, bucket) that every store counts together are summarised once, not once per full segment
    read = plan.segment_keys
    few = -1 if read is None or len(read) > 2 else len(read)
    k0, k1 = ((read or ()) + ("", ""))[:2]
    for fp, ev in pending:
        if fp.stores:
            start = ev.ts - ev.ts % fine_ms
            if few == 0:
                gk = (ev.phase, start)
            elif few == 1:
                gk = (ev.phase, ev.segment.get(k0, ""), start)
            elif few == 2:
                seg = ev.segment
                gk = (ev.phase, seg.get(k0, ""), seg.get(k1, ""), start)
            elif arms:  # stores keyed by an arm field (rules.compare) read it from the group's segment
                versions = (ev.model_version, ev.prompt_version, ev.variant)
                gk = (ev.phase, tuple(ev.segment.items()), versions, start)
            else:
                gk = (ev.phase, tuple(ev.segment.items()), start)
            g = groups.get(gk)
            if g is None:
                if few >= 0:  # what the stores read of the segment (absent reads as "", as StoreSpec does)
                    seg = {k: ev.segment.get(k, "") for k in read}
                else:
                    seg = with_arms(ev) if arms else ev.segment
                g = groups[gk] = _Group(fp, ev.phase, seg, gk[:-1], start)
            g.evs.append(ev)
        if fp.drift_rules:
            k = (ev.phase, ev.type)
            run = drift.get(k)
            if run is None:
                drift[k] = (fp, [ev])
            else:
                run[1].append(ev)
    if groups:
        cache = {} if user_hashes is None else user_hashes
        squares = plan.needs_squares
        for g in groups.values():
            g.summarise(cache, squares, plan.shares)
    return Prepared(list(groups.values()), _drift_runs(feature, drift) if drift else [])


def commit(plan: Plan, fs: FeatureState, prepared: Prepared) -> None:
    """The second half of :func:`apply_pending`: merge the prepared groups into the feature's store buckets and feed
    its detectors."""
    if prepared.groups:
        _merge_groups(plan, fs, prepared.groups)
    if prepared.drift:
        _feed_detectors(fs, prepared.drift)


def _routes(plan: Plan, g: _Group) -> tuple:
    """The stores a group's events go to, each with its series key: (spec, (phase, key values)) in store order.
    Memoised on the plan by the group's phase plan and route (its phase and the segment values it was grouped by,
    which determine ``g.seg``); bounded: cleared when it holds 100,000."""
    memo = plan.routes
    k = (g.fp, g.route)
    r = memo.get(k)
    if r is None:
        seg = g.seg
        r = tuple((spec, (g.phase, tuple([seg.get(k, "") for k in spec.keys]) if spec.keys else ()))
                  for spec in g.fp.stores if not (spec.filtered and not spec.admits(seg)))  # fmt: skip
        if len(memo) >= 100_000:
            memo.clear()
        memo[k] = r
    return r


def _merge_groups(plan: Plan, fs: FeatureState, groups) -> None:
    stores = fs.stores
    touched = fs.touched  # the live shell's incremental writes: which buckets changed (None: nobody asks)
    for g in groups:
        users = None
        start = g.start
        gc = g.c
        for spec, key in _routes(plan, g):
            series = stores.get(spec.id)
            if series is None:
                series = stores[spec.id] = {}
            s = series.get(key)
            if s is None:
                s = series[key] = SeriesBuckets()
            b = s.bucket(start, spec.every_ms, spec.needs_latency, spec.needs_users)
            if touched is not None:
                touched.add((spec.id, key, start - start % spec.every_ms))
            c = b.c
            for k, d in gc.items():
                c[k] = c.get(k, 0) + d
            if spec.needs_squares:
                for k, d in g.sq.items():
                    c[k] = c.get(k, 0) + d
            if b.lat is not None and g.lat is not None:
                b.lat.merge(g.lat)
            if b.users is not None and g.hashes:
                if users is None:
                    users = HyperLogLog.from_hashes(g.hashes)
                b.users.merge(users)


@lru_cache(maxsize=4096)
def _drift_plan(fp: FeaturePlan) -> dict[str, tuple]:
    """Per event type, the drift signals it can carry and, per signal, the rules that read it (plan order)."""
    out: dict[str, dict[str, list]] = {}
    for b in fp.drift_rules:
        signal = b.rule.drift.signal
        for src in signal_sources(signal):
            out.setdefault(src, {}).setdefault(signal, []).append(b)
    return {src: tuple((sig, tuple(bs)) for sig, bs in sigs.items()) for src, sigs in out.items()}


def _signal_column(signal: str, evs: list) -> tuple[list, list]:
    """The values a drift signal takes over ``evs`` (events of the type that carries it), and the events that
    carry one (``rules.metrics.signal_value``, a column at a time for the common signals)."""
    if signal in ("latency_ms", "cost_usd", "confidence"):  # the event attribute of that name, when present
        carriers = [ev for ev in evs if getattr(ev, signal) is not None]
        return [getattr(ev, signal) for ev in carriers], carriers
    if signal == "error":
        return [1.0 if ev.outcome in ("error", "timeout") else 0.0 for ev in evs], evs
    if signal in ("tokens_in", "tokens_out"):  # integers, seen as floats (rules.metrics.signal_value)
        carriers = [ev for ev in evs if getattr(ev, signal) is not None]
        return [float(getattr(ev, signal)) for ev in carriers], carriers
    pairs = [(x, ev) for ev in evs if (x := signal_value(signal, ev)) is not None]
    return [x for x, _ in pairs], [ev for _, ev in pairs]


def _drift_runs(feature: str, drift: dict[tuple, tuple[FeaturePlan, list]]) -> list[tuple]:
    """Each detector's values of the run in arrival order, with their instant slots. A detector's key holds the
    phase and a signal is carried by one event type, so the events of one (phase, type) hold every value of its
    detectors, in order."""
    runs: dict[tuple, tuple] = {}
    for (phase, typ), (fp, evs) in drift.items():
        for signal, bound in _drift_plan(fp).get(typ, ()):
            xs, carriers = _signal_column(signal, evs)
            if not xs:
                continue
            slots_by_every: dict[int, list] = {}  # rules of one signal often share their ``every``
            for b in bound:
                r = b.rule
                every = r.every_ms
                if not r.group_by:
                    slots = slots_by_every.get(every)
                    if slots is None:
                        slots = slots_by_every[every] = [t - t % every for t in [ev.ts for ev in carriers]]
                    parts = {(): (xs, slots)}
                else:
                    parts = {}
                    cache: dict[tuple, tuple] = {}
                    for x, ev in zip(xs, carriers):
                        t = ev.ts
                        segt = tuple(ev.segment.items())
                        group = cache.get(segt)
                        if group is None:
                            group = cache[segt] = b.group_of(ev.segment)
                        part = parts.get(group)
                        if part is None:
                            part = parts[group] = ([], [])
                        part[0].append(x)
                        part[1].append(t - t % every)
                for group, (vs, slots) in parts.items():
                    key = (b.ruleset.name, r.id, phase, group)
                    # one (phase, type) per key: the key holds the phase, a signal has one type
                    runs[key] = (key, b, feature, phase, group, vs, slots)
    return list(runs.values())


def _feed_detectors(fs: FeatureState, runs: list[tuple]) -> None:
    """Feed each detector its values of the run in one call. Detectors are created when their first value comes
    (``fs.detectors`` is read in key order only)."""
    detectors = fs.detectors
    for key, b, feature, phase, group, _, _ in runs:
        if key not in detectors:
            r = b.rule
            seed = b.detector_seed(feature, phase, group)
            detectors[key] = make_detector(r.drift.detector, dict(r.drift.params), seed)
    pending = fs.drift_pending
    for key, _, _, _, _, xs, slots in runs:
        result = detectors[key].update_many(xs, slots)
        pend = pending.get(key)
        if pend is None:
            pend = pending[key] = {}
        for start, (flags, est, n) in result.items():
            slot = pend.get(start)
            if slot is None:
                pend[start] = [flags, est, n]
            else:
                slot[0] += flags
                slot[1] = est
                slot[2] = n
