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
from functools import partial

from rules.batch import apply_pending, commit, finest_every, prepare
from rules.clock import ClockConfig, ClockGuard, StreamClock
from rules.clock_policy import quarantine, skew_hour
from rules.events import Control, Event, row_event
from rules.instants import Instants, Observation
from rules.model import RuleSet
from rules.outputs import iso
from rules.plan import Plan
from rules.policy import HOUR_MS, Outputs, Policy
from rules.promotion import signoff
from rules.reload import migrate
from rules.seal import Sealer
from rules.state import BreakerState, FeatureState

__all__ = ["Engine", "EngineConfig", "EngineStats", "Observation", "Outputs"]


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


class Engine(Instants):
    """Drives the rule lifecycle from events. State lives in ``self.features`` and ``self.breaker``.

    Every method that returns outputs (``step``, ``finish``, ``advance_idle``, ``reload``) seals them last
    (``rules.seal``: command sequence numbers and signatures, the per-feature audit hash chains).

    ``observer``, when set, is called with an :class:`Observation` for every rule evaluation. It must not touch the
    engine; it sees what was decided, it does not take part (metrics and charts use it)."""

    def __init__(self, rulesets: tuple[RuleSet, ...] | Plan, config: EngineConfig | None = None,
                 observer: Callable[[Observation], None] | None = None) -> None:  # fmt: skip
        self.observer = observer
        self.plan = rulesets if isinstance(rulesets, Plan) else Plan(tuple(rulesets))
        self._for_feature = self.plan.for_feature  # (the plan's, cached: read for every event)
        self.config = config or EngineConfig()
        self.policy = Policy(self.config.max_kills_per_hour)
        self.sealer = Sealer(self.config.signing_key, self.config.signing_key_id)
        self.features: dict[str, FeatureState] = {}
        self.breaker = BreakerState()
        self.stats = EngineStats()
        skew = self.config.max_clock_skew_ms
        self._lateness = self.config.allowed_lateness_ms
        # events applied to windows and detectors in runs (rules.batch), per feature, before anything reads them
        self._pending: dict[str, list] = {}
        self._releasing: tuple[str, Outputs] | None = None  # (feature, outputs) while applying released events
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
                if ev.action == "signoff":  # may come before the phase's first event: it is kept for then
                    signoff(out, features.setdefault(ev.feature, FeatureState()) if fs is None else fs, self.plan, ev)
                elif fs is not None:
                    self.policy.resume(out, fs, self.plan, ev, self.breaker)
                continue
            fs = features.get(ev.feature)
            if fs is None:
                fs = features[ev.feature] = FeatureState()
            if guard is None:
                self._ingest(out, fs, ev)
                continue
            own = fs.src_max.get(ev.type)
            # a stream without a time of its own is judged against its feature's span (rules.clock)
            low = own if own is not None else min(fs.src_first.values(), default=fs.max_ts)
            sc = fs.clocks.get(ev.type)
            if low is not None and low - skew <= ev.ts <= fs.max_ts + skew and not sc:
                self._ingest(out, fs, ev)  # the common case: plausible, and nothing held for this stream
            else:
                if type(ev) is not Event:  # a row: the guard may hold it, and what it holds or refuses names its origin
                    ev = row_event(ev)
                    ev.origin = None if origins is None else origins[i]
                if sc is None:
                    sc = fs.clocks[ev.type] = StreamClock()
                self._guarded(out, fs, ev.feature, ev.type, partial(guard.admit, sc, ev), ev)
            if fs.clocks:
                self._settle_clocks(out, fs, ev.feature)
        self._flush_all()
        return self.sealer.seal(out, features)

    def _flush(self, feature: str) -> None:
        """Apply the feature's pending events to its windows and detectors (rules.batch)."""
        pending = self._pending.pop(feature, None)
        if not pending:
            return
        if self._releasing is not None and self._releasing[0] == feature:
            self._apply_released(feature, pending, self._releasing[1])
            return
        apply_pending(self.plan, self._fine, feature, self.features[feature], pending, self._user_hashes)

    def _apply_released(self, feature: str, pending: list, out: Outputs) -> None:
        """Apply a run of events the clock guard released (see ``_guarded``); what fails is dead-lettered, never
        raised: their messages are long acknowledged. A failure in preparing the run (rules.batch.prepare: the
        events' own computations) changed nothing, so the run is applied again one event at a time and only the
        events that fail are dead-lettered, as when each was applied alone; a failure in committing it (the state's
        merges) dead-letters the whole run."""
        fs = self.features[feature]
        try:
            prepared = prepare(self.plan, self._fine, feature, pending, self._user_hashes)
        except Exception:  # noqa: BLE001 - find the event(s) that break it
            for item in pending:
                try:
                    apply_pending(self.plan, self._fine, feature, fs, [item], self._user_hashes)
                except Exception as exc:  # noqa: BLE001
                    self._drop(out, [item[1]], exc)
            return
        try:
            commit(self.plan, fs, prepared)
        except Exception as exc:  # noqa: BLE001
            self._drop(out, [ev for _, ev in pending], exc)

    def _flush_all(self) -> None:
        for feature in list(self._pending):
            self._flush(feature)

    def _settle_clocks(self, out: Outputs, fs: FeatureState, feature: str) -> None:
        """The feature's time may have moved: release what any of its streams held and can now trust; forget
        streams that hold nothing (so ``fs.clocks`` is empty, and costs nothing, in the ordinary case)."""
        for src in sorted(fs.clocks):
            sc = fs.clocks[src]
            if sc:
                self._guarded(out, fs, feature, src, partial(self.guard.recheck, sc))
        for src in [s for s, sc in fs.clocks.items() if not sc]:
            del fs.clocks[src]

    def _ingest(self, out: Outputs, fs: FeatureState, ev: Event) -> None:
        """Apply one event whose time is trusted: late and duplicate checks, windows, detectors, watermark.

        Windows and detectors get the event in a run with the feature's other pending events (rules.batch)."""
        stats = self.stats
        ts = ev.ts
        src = ev.type
        lateness = self._lateness
        smax = fs.src_max.get(src)
        if smax is not None and ts < smax - lateness:  # late relative to its own source
            stats.late += 1
            return
        seen = fs.seen
        if ev.event_id in seen:
            stats.duplicates += 1
            return
        stats.events[src] += 1
        seen[ev.event_id] = ts
        if fs.seen_new is not None:  # the live shell stores the ids added since its last write (FeatureState)
            fs.seen_new.append(ev.event_id)
        if stats.min_ts is None or ts < stats.min_ts:
            stats.min_ts = ts
        if stats.max_ts is None or ts > stats.max_ts:
            stats.max_ts = ts
        if fs.applied_min is None or ts < fs.applied_min:
            fs.applied_min = ts
        feature = ev.feature
        phase = ev.phase
        fp = self._for_feature(feature, phase)
        fs.phases.add(phase)
        if fp.tracks_first:  # time in phase: a promotion's min_exposure, a trailing baseline's span
            first = fs.phase_first.get(phase)
            if first is None or ts < first:
                fs.phase_first[phase] = ts
        if src not in fs.src_first:
            fs.src_first[src] = ts
            self._start_clocks(fs, feature)
        if fp.feeds:  # windows or detectors read it
            pending = self._pending.get(feature)
            if pending is None:
                pending = self._pending[feature] = []
            pending.append((fp, ev))
        elif not fp.metric_rules:  # (a control phase only feeds stores)
            stats.unmatched += 1
        if fs.max_ts is None or ts > fs.max_ts:
            fs.max_ts = ts
            if fs.skew is not None and ts // HOUR_MS != fs.skew[0]:
                skew_hour(self.config, out, feature, fs, ts // HOUR_MS)
        if smax is None or ts > smax:
            fs.src_max[src] = ts
            # the watermark is at most this source's time - lateness (or does not move, for a source no rule
            # reads): below the next instant due, evaluating would do nothing
            nxt = fs.next_eval
            if nxt:
                due = fs.due  # a lower bound of min(nxt.values()) (FeatureState.due): exact when it says "not yet"
                if due is None or due[0] is not nxt or ts - lateness >= due[1]:
                    first = min(nxt.values())
                    fs.due = (nxt, first)
                    if ts - lateness >= first:
                        wm = self.watermark(feature)
                        if wm is not None:
                            self._evaluate_until(out, feature, fs, wm)

    # --- producer clocks (rules.clock) -------------------------------------------------------------------------

    def _guarded(self, out: Outputs, fs: FeatureState, feature: str, src: str, op: Callable[..., None],
                 current: Event | None = None) -> None:  # fmt: skip
        """Run the clock guard's ``op(stream_time, apply, reject)`` for stream ``src`` of ``feature``; ``current``
        is the event being admitted, if any (a failure on it is its message's: the shell isolates and dead-letters
        it).

        Events the guard releases, held since earlier messages, go to the feature's pending events as a *run*,
        applied together (:meth:`_apply_released`) once the guard is done, before ``current``, or at an instant
        the watermark passes on the way: a stream that moves on after a silence may release thousands, and
        applying each alone cost ~0.4 ms under the catalogue. Their messages are long acknowledged, so what fails
        in applying them is dead-lettered here with its origin, never raised."""
        run: list[Event] = []  # released events pending: the feature's pending events hold only these

        def settle() -> None:
            if run:
                self._releasing = (feature, out)
                try:
                    self._flush(feature)
                finally:
                    self._releasing = None
                run.clear()

        def stream_time() -> tuple[int | None, int | None, int | None]:
            return fs.src_max.get(src), fs.max_ts, min(fs.src_first.values(), default=None)

        def apply(e: Event) -> None:
            if e is current:
                settle()
                self._ingest(out, fs, e)
                return
            if not run:
                self._flush(feature)  # what was pending before the run is the shell's: it raises there, as ever
            run.append(e)
            self._releasing = (feature, out)  # an instant it passes applies the run so far (_flush)
            try:
                self._ingest(out, fs, e)
            except Exception as exc:  # noqa: BLE001 - an instant it passed failed: a bug must not stick in the state
                self._drop(out, [e], exc)
            finally:
                self._releasing = None
            if feature not in self._pending:
                run.clear()

        def reject(e: Event, why: str, ref: tuple | None = None) -> None:
            quarantine(self.config, self.stats, out, feature, fs, e, why, ref)

        op(stream_time, apply, reject)
        settle()

    @staticmethod
    def _drop(out: Outputs, evs: list[Event], exc: Exception) -> None:
        """Dead-letter released events that could not be applied."""
        others = f" with {len(evs) - 1} other(s) released together" if len(evs) > 1 else ""
        for e in evs:
            out.dead_letters.append({"reason": "processing_error",
                                     "detail": f"{type(exc).__name__} while applying this event (held since it came"
                                               f"{others})",
                                     "source": e.origin, "payload": e.payload()})  # fmt: skip

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
                        self._guarded(out, fs, feature, src, partial(self.guard.finish, fs.clocks[src]))
                        self._settle_clocks(out, fs, feature)
                for src in sorted(fs.clocks):  # what the feature's time did not catch up with is not confirmed
                    self._guarded(out, fs, feature, src, partial(self.guard.finish, fs.clocks[src]))
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
        self._for_feature = new.for_feature
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
