"""The engine: one deterministic step function shared by replay, the live worker and rule tests.

``Engine.step(items)`` takes validated events and control inputs in arrival order, advances per-feature
event-time watermarks (highest event time seen minus the allowed lateness), evaluates every rule at each
instant the watermark passes, and returns the decisions, commands and pages that produced. ``finish()``
evaluates the remaining instants up to each feature's last event (end of a finite input). There is no wall
clock, no I/O and no global state: the same inputs in the same order give the same outputs, whatever the batch
boundaries.

>>> from rules.loader import load_rules_text
>>> rs = load_rules_text('''
... version: 1
... name: demo
... features: ["f"]
... rules:
...   - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 2}
... ''')
>>> from rules.events import Event
>>> eng = Engine(rs)
>>> evs = [Event("interaction", str(i), i * 1000, "f", "default", {}, None, None, None, "error") for i in range(90)]
>>> [c["action"] for c in (eng.step(evs).commands + eng.finish().commands)]
['rollback']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from rules.batch import apply_pending, finest_every
from rules.clock import ClockConfig, ClockGuard, StreamClock
from rules.clock_policy import quarantine, skew_hour
from rules.evaluation import Evaluation, WindowCache, evaluate_metric
from rules.events import Control, Event, row_event
from rules.lifecycle import Instance, advance
from rules.model import RuleSet
from rules.outputs import iso
from rules.plan import BoundRule, FeaturePlan, Plan
from rules.policy import HOUR_MS, Outputs, Policy
from rules.reload import migrate
from rules.seal import Sealer
from rules.state import BreakerState, FeatureState
from rules.windows import RunningWindows

__all__ = ["Engine", "EngineConfig", "EngineStats", "Observation", "Outputs"]

_SKIP_AFTER = 64  # instants due in one call before quiet ones are looked for


@dataclass(frozen=True)
class EngineConfig:
    allowed_lateness_ms: int = 30_000
    max_kills_per_hour: int = 5
    signing_key: bytes | None = None  # commands are HMAC-signed when set (rules.seal)
    signing_key_id: str | None = None  # published as ``key_id``; "default" when unset
    # producer clocks (rules.clock): how far from its stream an event's time may be before it is held or
    # quarantined as ``ts_outlier`` (None: trust every clock, as before); outliers per stream hour that page
    max_clock_skew_ms: int | None = 600_000
    clock_quorum: int = 5
    clock_min_span_ms: int = 5_000
    clock_skew_page_after: int = 10  # 0: never page


@dataclass
class EngineStats:
    """Counters of what the engine saw; the caller adds invalid inputs it rejected before the engine."""

    events: dict[str, int] = field(default_factory=lambda: {"interaction": 0, "feedback": 0, "control": 0})
    late: int = 0
    duplicates: int = 0
    unmatched: int = 0  # valid events of a feature/phase no loaded rule set applies to
    outliers: dict[str, int] = field(default_factory=lambda: {"ahead": 0, "behind": 0})  # ts_outlier dead letters
    instants: int = 0  # instants evaluated (skipped quiet ones are not counted)
    min_ts: int | None = None
    max_ts: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """One rule evaluation, for whoever watches the engine (metrics, report charts); decides nothing.

    ``state`` is the instance's lifecycle state after the evaluation, with ``insufficient`` for an instance at
    rest whose evaluation lacked data (a pending or firing instance holds its state then)."""

    feature: str
    bound: BoundRule
    phase: str
    group: tuple[str, ...]
    t: int
    evaluation: Evaluation
    state: str  # inactive | pending | firing | insufficient

    @property
    def compared(self) -> float | None:
        """The value set against the threshold: the relative change for ``baseline`` rules (None while the earlier
        window has no data), the Wilson bound for ``confidence`` rules, the metric value otherwise (the detector's
        estimation for drift rules)."""
        d = self.evaluation.details
        if self.bound.rule.baseline_ms is not None:
            return d.get("change")  # undefined until the earlier window has data
        if "bound" in d:
            return d["bound"]
        return self.evaluation.value


class Engine:
    """Drives the rule lifecycle from events. State lives in ``self.features`` and ``self.breaker``.

    Every method that returns outputs (``step``, ``finish``, ``advance_idle``, ``reload``) seals them last
    (``rules.seal``: command sequence numbers and signatures, the per-feature audit hash chains).

    ``observer``, when set, is called with an :class:`Observation` for every rule evaluation. It must not touch the
    engine; it sees what was decided, it does not take part (metrics and charts use it)."""

    def __init__(self, rulesets: tuple[RuleSet, ...] | Plan, config: EngineConfig | None = None,
                 observer: Callable[[Observation], None] | None = None) -> None:  # fmt: skip
        self.observer = observer
        self.plan = rulesets if isinstance(rulesets, Plan) else Plan(tuple(rulesets))
        self.config = config or EngineConfig()
        self.policy = Policy(self.config.max_kills_per_hour)
        self.sealer = Sealer(self.config.signing_key, self.config.signing_key_id)
        self.features: dict[str, FeatureState] = {}
        self.breaker = BreakerState()
        self.stats = EngineStats()
        skew = self.config.max_clock_skew_ms
        # events applied to windows and detectors in runs (rules.batch), per feature, before anything reads them
        self._pending: dict[str, list] = {}
        self._fine = finest_every(self.plan)
        self._user_hashes: dict[str, int] = {}  # keyed user id -> distinct-users sketch hash (bounded cache)
        self.guard = None if skew is None else ClockGuard(
            ClockConfig(skew, self.config.clock_quorum, self.config.clock_min_span_ms))

    # --- the step function -------------------------------------------------------------------------------------

    def step(self, items: Iterable[Event | Control], origins: Sequence[dict | None] | None = None) -> Outputs:
        """Apply ``items`` in order. An item may also be a *row* (``rules.events.EventParser.parse_rows``: a checked
        record that reads like an Event); ``origins[i]``, when given, is where the i-th item came from, for a row
        that the producer-clock guard holds or quarantines (an Event or Control carries its own ``origin``)."""
        out = Outputs()
        features = self.features
        guard = self.guard
        skew = self.config.max_clock_skew_ms or 0
        for i, ev in enumerate(items):
            if ev.type == "control":
                self.stats.events["control"] += 1
                fs = features.get(ev.feature)
                if fs is not None:
                    self.policy.resume(out, fs, self.plan, ev, self.breaker)
                continue
            fs = features.get(ev.feature)
            if fs is None:
                fs = features[ev.feature] = FeatureState()
            if guard is None:
                self._ingest(out, fs, ev)
                continue
            own = fs.src_max.get(ev.type)
            low = fs.max_ts if own is None else own
            sc = fs.clocks.get(ev.type)
            if low is not None and low - skew <= ev.ts <= fs.max_ts + skew and not sc:
                self._ingest(out, fs, ev)  # the common case: plausible, and nothing held for this stream
            else:
                if type(ev) is not Event:  # a row: the guard may hold it, and what it holds or refuses names its origin
                    ev = row_event(ev)
                    ev.origin = None if origins is None else origins[i]
                if sc is None:
                    sc = fs.clocks[ev.type] = StreamClock()
                guard.admit(sc, ev, *self._clock_hooks(out, fs, ev.feature, ev.type, ev))
            if fs.clocks:
                self._settle_clocks(out, fs, ev.feature)
        self._flush_all()
        return self.sealer.seal(out, features)

    def _flush(self, feature: str) -> None:
        """Apply the feature's pending events to its windows and detectors (rules.batch)."""
        pending = self._pending.pop(feature, None)
        if pending:
            apply_pending(self.plan, self._fine, feature, self.features[feature], pending, self._user_hashes)

    def _flush_all(self) -> None:
        for feature in list(self._pending):
            self._flush(feature)

    def _settle_clocks(self, out: Outputs, fs: FeatureState, feature: str) -> None:
        """The feature's time may have moved: release what any of its streams held and can now trust; forget
        streams that hold nothing (so ``fs.clocks`` is empty, and costs nothing, in the ordinary case)."""
        for src in sorted(fs.clocks):
            sc = fs.clocks[src]
            if sc:
                self.guard.recheck(sc, *self._clock_hooks(out, fs, feature, src))
        for src in [s for s, sc in fs.clocks.items() if not sc]:
            del fs.clocks[src]

    def _ingest(self, out: Outputs, fs: FeatureState, ev: Event, defer: bool = True) -> None:
        """Apply one event whose time is trusted: late and duplicate checks, windows, detectors, watermark.

        Windows and detectors get the event in a run with the feature's other pending events (rules.batch), unless
        ``defer`` is False: then at once, so that an error in applying it is raised here."""
        stats = self.stats
        ts = ev.ts
        src = ev.type
        smax = fs.src_max.get(src)
        if smax is not None and ts < smax - self.config.allowed_lateness_ms:  # late relative to its own source
            stats.late += 1
            return
        if ev.event_id in fs.seen:
            stats.duplicates += 1
            return
        stats.events[src] += 1
        fs.seen[ev.event_id] = ts
        if stats.min_ts is None or ts < stats.min_ts:
            stats.min_ts = ts
        if stats.max_ts is None or ts > stats.max_ts:
            stats.max_ts = ts
        if fs.applied_min is None or ts < fs.applied_min:
            fs.applied_min = ts
        fp = self.plan.for_feature(ev.feature, ev.phase)
        if ev.phase not in fs.phases:
            fs.phases.add(ev.phase)
        if src not in fs.src_first:
            fs.src_first[src] = ts
            self._start_clocks(fs, ev.feature)
        if not fp.metric_rules and not fp.drift_rules:
            stats.unmatched += 1
        if fp.stores or fp.drift_rules:
            pending = self._pending.get(ev.feature)
            if pending is None:
                pending = self._pending[ev.feature] = []
            pending.append((fp, ev))
            if not defer:
                self._flush(ev.feature)
        if fs.max_ts is None or ts > fs.max_ts:
            fs.max_ts = ts
            if fs.skew is not None and ts // HOUR_MS != fs.skew[0]:
                skew_hour(self.config, out, ev.feature, fs, ts // HOUR_MS)
        if smax is None or ts > smax:
            fs.src_max[src] = ts
            # the watermark is at most this source's time - lateness (or does not move, for a source no rule
            # reads): below the next instant due, evaluating would do nothing
            nxt = fs.next_eval
            if nxt and ts - self.config.allowed_lateness_ms >= min(nxt.values()):
                wm = self.watermark(ev.feature)
                if wm is not None:
                    self._evaluate_until(out, ev.feature, fs, wm)

    # --- producer clocks (rules.clock) -------------------------------------------------------------------------

    def _clock_hooks(self, out: Outputs, fs: FeatureState, feature: str, src: str, current: Event | None = None) -> tuple:
        def stream_time() -> tuple[int | None, int | None]:
            return fs.src_max.get(src), fs.max_ts

        def apply(e: Event) -> None:
            if e is current:
                self._ingest(out, fs, e)  # a failure is its message's: the shell isolates and dead-letters it
                return
            self._flush(feature)
            try:  # an event held since an earlier message: that message is long acknowledged, so dead-letter here
                self._ingest(out, fs, e, defer=False)
            except Exception as exc:  # noqa: BLE001 - a bug on one event must not stick in the held state
                out.dead_letters.append({"reason": "processing_error",
                                         "detail": f"{type(exc).__name__} while applying this event (held since it came)",
                                         "source": e.origin, "payload": e.payload()})  # fmt: skip

        def reject(e: Event, why: str, ref: tuple | None = None) -> None:
            quarantine(self.config, self.stats, out, feature, fs, e, why, ref)

        return stream_time, apply, reject

    def watermark(self, feature: str) -> int | None:
        """The feature's watermark: the lowest, over the sources its rules read, of (highest event time of that
        source - allowed lateness); None until every such source was seen. An event late for its own source is
        dropped, so no applied event ever falls into an evaluated window: what is evaluated does not depend on
        how interactions and feedback interleave (two Kafka topics in live mode, one file in replay)."""
        fs = self.features.get(feature)
        sources = self.plan.profile(feature).sources
        if fs is None or not sources:
            return None
        src_max = fs.src_max
        low = None
        for s in sources:
            v = src_max.get(s)
            if v is None:
                return None
            if low is None or v < low:
                low = v
        return low - self.config.allowed_lateness_ms

    def finish(self) -> Outputs:
        """End of a finite input: evaluate every instant up to each feature's last event time."""
        self._flush_all()
        out = Outputs()
        for feature in sorted(self.features):
            fs = self.features[feature]
            if self.guard is not None and fs.clocks:  # nothing stays held at the end: applied, or quarantined
                for src in sorted(fs.clocks):
                    if src in fs.clocks:
                        self.guard.finish(fs.clocks[src], *self._clock_hooks(out, fs, feature, src))
                        self._settle_clocks(out, fs, feature)
                for src in sorted(fs.clocks):  # what the feature's time did not catch up with is not confirmed
                    self.guard.finish(fs.clocks[src], *self._clock_hooks(out, fs, feature, src))
                fs.clocks.clear()
            if fs.max_ts is not None:
                self._start_clocks(fs, feature, force=True)
                self._evaluate_until(out, feature, fs, fs.max_ts)
        self._flush_all()
        return self.sealer.seal(out, self.features)

    def advance_idle(self, feature: str, source: str, ts: int) -> Outputs:
        """Live mode only: treat ``source`` of ``feature`` as having reached event time ``ts`` although no event
        came (the shell derives ``ts`` from the wall clock), so windows close and ``for`` timers run while a source
        is silent. Every decision it produces carries ``idle_watermark``. Later events of that source older than
        ``ts - allowed lateness`` are late."""
        out = Outputs()
        fs = self.features.get(feature)
        if fs is None or fs.max_ts is None or ts <= fs.src_max.get(source, ts - 1):
            return out
        fs.src_max[source] = ts
        if source not in fs.src_first:
            fs.src_first[source] = ts
            self._start_clocks(fs, feature)
        fs.max_ts = max(fs.max_ts, ts)
        if self.guard is not None and fs.clocks:  # events held as ahead of the feature may be plausible now
            self._settle_clocks(out, fs, feature)
        wm = self.watermark(feature)
        if wm is not None:
            self._evaluate_until(out, feature, fs, wm)
        mark = iso(wm) if wm is not None else None
        for d in out.decisions:
            d["idle_watermark"] = mark
        self._flush_all()
        return self.sealer.seal(out, self.features)

    def reload(self, rulesets: tuple[RuleSet, ...]) -> Outputs:
        """Swap in new rule sets, keeping the state that still means the same thing (see ``rules.reload``)."""
        self._flush_all()
        old, new = self.plan, Plan(tuple(rulesets))
        out = Outputs()
        for feature in sorted(self.features):
            migrate(self.features[feature], feature, old, new, out)
        self.plan = new
        self._fine = finest_every(new)
        return self.sealer.seal(out, self.features)

    # --- ingest ------------------------------------------------------------------------------------------------

    def _start_clocks(self, fs: FeatureState, feature: str, force: bool = False) -> None:
        """Start the evaluation clocks once every source the feature's rules read was seen (or, with ``force``, at
        the end of a finite input)."""
        prof = self.plan.profile(feature)
        if fs.next_eval or not prof.everys:
            return
        firsts = [fs.src_first.get(s) for s in prof.sources]
        if None in firsts and not force:
            return
        known = [t for t in firsts if t is not None] or list(fs.src_first.values())
        if not known:
            return
        # every applied event of a source is at or after its first one minus the allowed lateness, so instants
        # skipped before this origin have no data and would decide nothing, whichever event came first
        origin = min(known) - self.config.allowed_lateness_ms
        for every in prof.everys:
            fs.next_eval[every] = origin - origin % every + every

    # --- evaluation --------------------------------------------------------------------------------------------

    def _evaluate_until(self, out: Outputs, feature: str, fs: FeatureState, watermark: int) -> None:
        """Evaluate every instant up to ``watermark``. The cost is bounded by the work, not by the span of time:
        when many instants are due (a silence in the stream, a clock started long ago), quiet ones are skipped
        (see ``_skip_quiet``) in one step each."""
        nxt = fs.next_eval
        if not nxt or min(nxt.values()) > watermark:
            return
        self._flush(feature)  # what this instant reads includes every event that came before it
        evaluated = False
        gap = _SKIP_AFTER * min(nxt)
        retry = None
        while True:
            t = min(nxt.values())
            if t > watermark:
                break
            if watermark - t >= gap and (retry is None or t >= retry):
                if self._skip_quiet(fs, watermark):
                    continue
                retry = t + gap  # not quiet yet: try again a while later, never once per instant
            due = [e for e, v in nxt.items() if v == t]
            self._evaluate_instant(out, feature, fs, t, frozenset(due))
            self.stats.instants += 1
            evaluated = True
            for e in due:
                nxt[e] = t + e
        if evaluated:  # state only ages when an instant passed: once per `every`, not once per event
            self._expire(fs, watermark)

    def _skip_quiet(self, fs: FeatureState, watermark: int) -> bool:
        """Move each evaluation clock past the instants that cannot decide anything; True if one moved.

        An instant of a clock (``every``) is quiet when no window of its rules holds data there and it would see
        exactly what the clock's last evaluated instant saw: no bucket of its stores starts within the longest
        lookback (window + baseline) before the last instant, and none between that instant and the one
        considered. Every rule then evaluates the same empty windows, over the same series, to the same verdict as
        at the last instant. If moreover no instance has a timer that its verdict keeps running (``pending``
        on a true verdict, ``firing`` in a ``keep_firing_for`` countdown on a false one), the same verdict makes the same (no) transition, so skipping is invisible
        in decisions, commands and pages, ``traffic-stopped``-like absence rules included (their firing instance
        holds). Only the observer sees fewer evaluations."""
        for inst in fs.instances.values():
            if inst.timing:
                return False
        plan = self.plan
        starts: dict[int, list[int]] = {}
        reach: dict[int, int] = {}
        for sid, series in fs.stores.items():
            spec = plan.store_by_id[sid]
            e = spec.every_ms
            reach[e] = max(reach.get(e, 0), spec.retention_ms)
            acc = starts.setdefault(e, [])
            for s in series.values():
                acc.extend(s.buckets)
        for key, pend in fs.drift_pending.items():
            b = plan.by_key.get((key[0], key[1]))
            if b is not None and pend:
                starts.setdefault(b.rule.every_ms, []).extend(pend)
        nxt = fs.next_eval
        moved = False
        for e, n in nxt.items():
            last = n - e  # the clock's last instant (evaluated, or before its origin, where there is no data)
            seen_from = last - reach.get(e, 0)
            later = [s for s in starts.get(e, ()) if s >= seen_from]
            if any(s < last for s in later):
                continue  # its last instant saw data: the next one may see less of it
            limit = min(min(later, default=watermark), watermark)
            target = limit - limit % e + e  # the first instant after which data (or the watermark) comes
            if target > n:
                nxt[e] = target
                moved = True
        return moved

    def _evaluate_instant(self, out: Outputs, feature: str, fs: FeatureState, t: int, everys: frozenset[int]) -> None:
        running = fs.windows
        if running is None or running.plan is not self.plan:  # first instant since load, or the rules were reloaded
            running = fs.windows = RunningWindows(self.plan)
        cache = WindowCache(running, t)
        rules: dict[int, tuple[BoundRule, list[str]]] = {}
        for phase in sorted(fs.phases):
            fp = self.plan.for_feature(feature, phase)
            for b in fp.metric_rules + fp.drift_rules:
                if b.rule.every_ms in everys:
                    rules.setdefault(b.order, (b, []))[1].append(phase)
        for _, (b, phases) in sorted(rules.items(), key=lambda kv: kv[1][0].sort_key):
            if b.store is None:
                self._evaluate_drift(out, feature, fs, b, phases, t)
            else:
                self._evaluate_rule(out, feature, fs, b, phases, t, cache)

    def _evaluate_rule(self, out, feature, fs, b: BoundRule, phases, t, cache) -> None:
        series = fs.stores.get(b.store.id, {})
        n = len(b.rule.group_by)
        # a series counts from its first bucket before t: one that only holds later events (already applied, as
        # they are within the allowed lateness) must not be evaluated, or when it is would depend on arrival order
        groups = {(k[0], k[1][:n]) for k, s in series.items() if k[0] in phases and _has_before(s.buckets, t)}
        # instances that exist but saw no data in retention still need evaluating (e.g. traffic dropped to zero)
        groups.update((k[2], k[3]) for k in fs.instances if k[0] == b.ruleset.name and k[1] == b.rule.id)
        for phase, group in sorted(groups):
            ev = evaluate_metric(b.rule, b.base, b.param, b.store, series, phase, group, t, cache)
            self._apply(out, feature, fs, b, phase, group, t, ev)

    def _evaluate_drift(self, out, feature, fs, b: BoundRule, phases, t) -> None:
        keys = sorted(k for k in fs.detectors if k[0] == b.ruleset.name and k[1] == b.rule.id and k[2] in phases)
        for key in keys:
            pend = fs.drift_pending.get(key)
            flagged = 0
            if pend:
                due = [s for s in pend if s < t]  # buckets [s, s + every) with s < t end at or before t
                if due:
                    latest = None
                    for s in due:
                        slot = pend.pop(s)
                        flagged += slot[0]
                        if latest is None or slot[2] > latest[2]:
                            latest = slot
                    fs.drift_last[key] = [latest[1], latest[2]]
            last = fs.drift_last.get(key)
            if last is None:
                continue  # no update before t yet
            ev = Evaluation(bool(flagged), last[0], last[1], t - b.rule.every_ms, t)
            if flagged:
                ev.details["drift_flags"] = flagged
            self._apply(out, feature, fs, b, key[2], key[3], t, ev)

    def _apply(self, out, feature, fs, b: BoundRule, phase, group, t, ev: Evaluation) -> None:
        key = (b.ruleset.name, b.rule.id, phase, group)
        inst = fs.instances.get(key)
        if inst is None and ev.verdict:
            inst = fs.instances[key] = Instance()
        state = None
        if inst is not None:  # else nothing to remember about an instance that never was true
            r = b.rule
            transition = advance(inst, ev.verdict, t, r.for_ms, r.keep_firing_for_ms, b.latching)
            inst.verdict = ev.verdict
            state = inst.state
            if transition is not None:
                self.policy.on_transition(
                    out, fs, self.breaker, b, inst, transition, feature, phase, dict(zip(r.group_by, group)), t, ev
                )
                state = inst.state
                if inst.state in ("inactive", "resolved") and not inst.paged:
                    del fs.instances[key]  # back to rest: the windows (or the detector) alone carry what matters
        if self.observer is not None:
            if state not in ("pending", "firing"):
                state = "insufficient" if ev.verdict is None else "inactive"
            self.observer(Observation(feature, b, phase, group, t, ev, state))

    def _expire(self, fs: FeatureState, watermark: int) -> None:
        if len(fs.seen) > 1024:
            fs.seen = {i: ts for i, ts in fs.seen.items() if ts >= watermark}
        horizons: dict[int, int] = {}
        for sid, series in fs.stores.items():
            spec = self.plan.store_by_id[sid]
            horizon = watermark - spec.retention_ms - spec.every_ms
            horizons[sid] = horizon
            for key in [k for k, s in series.items() if (s.expire(horizon) or not s.buckets)]:
                del series[key]
        if fs.windows is not None:
            fs.windows.prune(fs.stores, horizons)


def _has_before(buckets: dict[int, object], t: int) -> bool:
    # insertion order is nearly chronological, so the first key usually answers
    return any(start < t for start in buckets)
