"""Reference oracle: today's per-event engine, frozen on 2026-12-04 at commit 333decf (a copy of rules/engine.py).

``ReferenceEngine`` has the constructor and interface of ``rules.engine.Engine`` (``step``, ``finish``,
``advance_idle``, ``reload``, ``watermark``; state in ``features``, ``breaker``, ``stats``) and behaves as it did
on that day: each event is applied on its own (``_ingest`` -> ``_add`` / ``_update_detectors``) and every window is
merged afresh from its buckets at each instant (``reference_engine.windows`` and ``reference_engine.evaluation``,
frozen copies of the window path of ``rules/windows.py`` and ``rules/evaluation.py``). It shares only the stable
modules with the product: the model and plan, the lifecycle and policy, outputs and sealing, state, clocks,
events, metrics, the aggregate ``Bucket``, sketches, detectors and reload.

The product never imports it (``tests/test_architecture.py`` checks); it is the oracle of
``tests/test_differential.py``, which asserts that ``rules.engine.Engine`` gives byte-identical outputs and equal
counters on the same inputs, whatever the batch boundaries.

>>> from rules.loader import load_rules_text
>>> rs = load_rules_text('''
... version: 1
... name: demo
... features: ["f"]
... rules:
...   - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 2}
... ''')
>>> from rules.events import Event
>>> eng = ReferenceEngine(rs)
>>> evs = [Event("interaction", str(i), i * 1000, "f", "default", {}, None, None, None, "error") for i in range(90)]
>>> [c["action"] for c in (eng.step(evs).commands + eng.finish().commands)]
['rollback']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from detectors import make_detector
from rules.aggregate import contributions, share_contributions, square_contributions
from rules.compare import evaluate_compare
from rules.compound import combine, condition_head
from rules.clock import ClockConfig, ClockGuard, StreamClock, approx_duration
from rules.events import Control, Event
from rules.lifecycle import Instance, advance
from rules.metrics import signal_value
from rules.model import RuleSet
from rules.outputs import SEVERITY, iso, stable_id
from rules.plan import BoundRule, FeaturePlan, Plan
from rules.policy import HOUR_MS, Outputs, Policy
from rules.reload import migrate
from rules.seal import Sealer
from rules.promotion import evaluate as evaluate_promotion
from rules.promotion import time_changes
from rules.promotion import signoff
from rules.starvation import track as track_starvation
from rules.state import BreakerState, FeatureState
from rules.windows import SeriesBuckets

from . import windows as frozen_windows
from .evaluation import Evaluation, WindowCache, evaluate_metric

__all__ = ["ReferenceEngine", "EngineConfig", "EngineStats", "Observation", "Outputs"]

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


class ReferenceEngine:
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
        self.guard = None if skew is None else ClockGuard(
            ClockConfig(skew, self.config.clock_quorum, self.config.clock_min_span_ms))

    # --- the step function -------------------------------------------------------------------------------------

    def step(self, items: Iterable[Event | Control]) -> Outputs:
        out = Outputs()
        features = self.features
        guard = self.guard
        skew = self.config.max_clock_skew_ms or 0
        for ev in items:
            if ev.type == "control":
                self.stats.events["control"] += 1
                fs = features.get(ev.feature)
                if ev.action == "signoff":
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
            low = fs.max_ts if own is None else own
            sc = fs.clocks.get(ev.type)
            if low is not None and low - skew <= ev.ts <= fs.max_ts + skew and not sc:
                self._ingest(out, fs, ev)  # the common case: plausible, and nothing held for this stream
            else:
                if sc is None:
                    sc = fs.clocks[ev.type] = StreamClock()
                guard.admit(sc, ev, *self._clock_hooks(out, fs, ev.feature, ev.type, ev))
            if fs.clocks:
                self._settle_clocks(out, fs, ev.feature)
        return self.sealer.seal(out, features)

    def _settle_clocks(self, out: Outputs, fs: FeatureState, feature: str) -> None:
        """The feature's time may have moved: release what any of its streams held and can now trust; forget
        streams that hold nothing (so ``fs.clocks`` is empty, and costs nothing, in the ordinary case)."""
        for src in sorted(fs.clocks):
            sc = fs.clocks[src]
            if sc:
                self.guard.recheck(sc, *self._clock_hooks(out, fs, feature, src))
        for src in [s for s, sc in fs.clocks.items() if not sc]:
            del fs.clocks[src]

    def _ingest(self, out: Outputs, fs: FeatureState, ev: Event) -> None:
        """Apply one event whose time is trusted: late and duplicate checks, windows, detectors, watermark."""
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
        if fp.tracks_first:
            fs.phase_first[ev.phase] = min(ts, fs.phase_first.get(ev.phase, ts))
        if src not in fs.src_first:
            fs.src_first[src] = ts
            self._start_clocks(fs, ev.feature)
        if not fp.metric_rules and not fp.drift_rules and not fp.stores:  # (a compare rule's control phase)
            stats.unmatched += 1
        if fp.stores:
            self._add(fs, fp, ev, self.plan.needs_arms, self.plan.needs_squares, self.plan.shares)
        if fp.drift_rules:
            self._update_detectors(fs, fp, ev)
        if fs.max_ts is None or ts > fs.max_ts:
            fs.max_ts = ts
            if fs.skew is not None and ts // HOUR_MS != fs.skew[0]:
                self._skew_hour(out, ev.feature, fs, ts // HOUR_MS)
        if smax is None or ts > smax:
            fs.src_max[src] = ts
            wm = self.watermark(ev.feature)
            if wm is not None:
                self._evaluate_until(out, ev.feature, fs, wm)

    # --- producer clocks (rules.clock) -------------------------------------------------------------------------

    def _clock_hooks(self, out: Outputs, fs: FeatureState, feature: str, src: str, current: Event | None = None) -> tuple:
        def stream_time() -> tuple[int | None, int | None, int | None]:  # (rules.clock.Times: the guard's hook)
            return fs.src_max.get(src), fs.max_ts, min(fs.src_first.values(), default=None)

        def apply(e: Event) -> None:
            if e is current:
                self._ingest(out, fs, e)  # a failure is its message's: the shell isolates and dead-letters it
                return
            try:  # an event held since an earlier message: that message is long acknowledged, so dead-letter here
                self._ingest(out, fs, e)
            except Exception as exc:  # noqa: BLE001 - a bug on one event must not stick in the held state
                out.dead_letters.append({"reason": "processing_error",
                                         "detail": f"{type(exc).__name__} while applying this event (held since it came)",
                                         "source": e.origin, "payload": e.payload()})  # fmt: skip

        def reject(e: Event, why: str, ref: tuple | None = None) -> None:
            self._quarantine(out, feature, fs, e, why, ref)

        return stream_time, apply, reject

    def _quarantine(self, out: Outputs, feature: str, fs: FeatureState, ev: Event, why: str,
                    judged: tuple | None = None) -> None:  # fmt: skip
        """A ``ts_outlier`` dead letter: how far off the event's time was, relative to what, and why. ``judged`` is
        what the event was compared with when it came: (time, "stream" | "feature" | "first"). Its own stream's
        time when it has one — one partition's order — so the dead letter reads the same live and in replay."""
        skew = self.config.max_clock_skew_ms or 0
        ref, kind = judged if judged is not None else (fs.src_max.get(ev.type), "stream")
        if ref is None:
            ref, kind = fs.max_ts, "feature"
        where = {"stream": f"the {ev.type} stream of feature {feature!r}", "feature": f"feature {feature!r}",
                 "first": f"the first events of feature {feature!r}"}[kind]  # fmt: skip
        direction = "ahead" if ref is None or ev.ts > ref else "behind"
        if ref is None:
            off = None
            head = f"event time {iso(ev.ts)} disagrees with the first events of {where}"
        else:
            off = ev.ts - ref
            rel = "ahead of" if direction == "ahead" else "behind"
            head = f"event time {iso(ev.ts)} is {approx_duration(off)} {rel} {where} (at {iso(ref)})"
        tail = {
            "behind": f"more than the maximum clock skew of {approx_duration(skew)} behind it",
            "contradicted": f"held, then contradicted by {self.config.clock_quorum} or more messages at the "
                            "stream's own time",
            "unconfirmed": f"held, and the input ended before {self.config.clock_quorum} messages confirmed it",
            "hold_full": "held events of this stream at their limit",
        }[why]  # fmt: skip
        self.stats.outliers[direction] += 1
        fs.outliers[direction] = fs.outliers.get(direction, 0) + 1
        out.dead_letters.append({
            "reason": "ts_outlier",
            "detail": f"{head}: {tail}",
            "source": ev.origin,
            "payload": ev.payload(),
            "outlier": {"stream": ev.type, "direction": direction, "offset_ms": off,
                        "stream_time": None if ref is None else iso(ref), "max_clock_skew_ms": skew, "why": why},
        })  # fmt: skip
        self._skew_count(out, feature, fs, ev, off)

    def _skew_count(self, out: Outputs, feature: str, fs: FeatureState, ev: Event, off: int | None) -> None:
        """Outliers per hour of the feature's stream time; ``clock_skew_page_after`` of them in one hour page
        ``investigate`` ("producer clock skew"), resolved after an hour of stream time with fewer."""
        limit = self.config.clock_skew_page_after
        if limit <= 0:
            return
        hour = (fs.max_ts if fs.max_ts is not None else 0) // HOUR_MS
        if fs.skew is not None and fs.skew[0] != hour:
            self._skew_hour(out, feature, fs, hour)
        if fs.skew is None:
            fs.skew = [hour, 0, None, 0]
        sk = fs.skew
        sk[1] += 1
        if off is not None and abs(off) > abs(sk[3]):
            sk[3] = off
        if sk[1] >= limit and sk[2] is None:
            sk[2] = hour
            out.pages.append(self._skew_page("trigger", feature, fs, ev.phase, hour))

    def _skew_hour(self, out: Outputs, feature: str, fs: FeatureState, hour: int) -> None:
        """The feature's stream time entered ``hour``. A paged run ends (resolve) once an hour closes with fewer
        outliers than the limit, or hours with none were skipped."""
        sk = fs.skew  # [hour, outliers in it, hour the page went out (None: not paged), worst offset]
        if sk[2] is not None and (sk[1] < self.config.clock_skew_page_after or hour > sk[0] + 1):
            out.pages.append(self._skew_page("resolve", feature, fs, None, sk[2]))
            sk[2] = None
        if sk[2] is None:
            fs.skew = None  # nothing to remember: the next outlier starts a new count
        else:
            sk[0], sk[1], sk[3] = hour, 0, 0

    def _skew_page(self, action: str, feature: str, fs: FeatureState, phase: str | None, since: int) -> dict:
        sk = fs.skew
        n, worst = sk[1], sk[3]
        summary = (
            f"Producer clock skew on feature {feature}: {n} events quarantined (ts_outlier) in the hour from "
            f"{iso(since * HOUR_MS)}, up to {approx_duration(worst)} {'ahead of' if worst >= 0 else 'behind'} "
            "their stream. They are in the dead-letter topic and decided nothing; check the producers' clocks "
            "(NTP) and time zones." if action == "trigger" else
            f"Producer clock skew on feature {feature}: an hour of stream time with fewer than "
            f"{self.config.clock_skew_page_after} outliers"
        )  # fmt: skip
        return {
            "event_action": action,
            "dedup_key": "rollguard-clock-skew-" + stable_id("clock_skew", feature, since),
            "payload": {
                "summary": summary,
                "source": "rollguard",
                "severity": SEVERITY["investigate"],
                "timestamp": iso(max(fs.max_ts or 0, since * HOUR_MS)),
                "component": feature,
                "group": phase or "*",
                "class": "clock-skew",
                "custom_details": {
                    "outliers_this_hour": n,
                    "worst_offset_ms": worst,
                    "outliers_total": dict(sorted(fs.outliers.items())),
                    "max_clock_skew_ms": self.config.max_clock_skew_ms,
                },
            },
        }

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
        return self.sealer.seal(out, self.features)

    def reload(self, rulesets: tuple[RuleSet, ...]) -> Outputs:
        """Swap in new rule sets, keeping the state that still means the same thing (see ``rules.reload``)."""
        old, new = self.plan, Plan(tuple(rulesets))
        out = Outputs()
        for feature in sorted(self.features):
            migrate(self.features[feature], feature, old, new, out)
        self.plan = new
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

    @staticmethod
    def _add(fs: FeatureState, fp: FeaturePlan, ev: Event, arms: bool, squares: bool, shares: tuple) -> None:
        # (compare rules, added with them: arm fields under their "@" store keys, and sums of squares)
        contrib = contributions(ev) + share_contributions(ev, shares)  # (share metrics: added with them)
        with_squares = contrib + (square_contributions(ev) if squares else [])
        seg = ev.segment
        if arms:
            seg = dict(seg)
            for name in ("model_version", "prompt_version", "variant"):
                seg["@" + name] = getattr(ev, name) or ""
        for spec in fp.stores:
            if spec.filtered and not spec.admits(seg):  # a where filter, an arm store (added with them)
                continue
            series = fs.stores.get(spec.id)
            if series is None:
                series = fs.stores[spec.id] = {}
            key = (ev.phase, tuple(seg.get(k, "") for k in spec.keys) if spec.keys else ())
            s = series.get(key)
            if s is None:
                s = series[key] = SeriesBuckets()
            b = frozen_windows.bucket(s, ev.ts, spec.every_ms, spec.needs_latency, spec.needs_users)
            b.add(with_squares if spec.needs_squares else contrib, ev)

    def _update_detectors(self, fs: FeatureState, fp: FeaturePlan, ev: Event) -> None:
        for b in fp.drift_rules:
            x = signal_value(b.rule.drift.signal, ev)
            if x is None:
                continue
            group = b.group_of(ev.segment)
            key = (b.ruleset.name, b.rule.id, ev.phase, group)
            det = fs.detectors.get(key)
            if det is None:
                det = fs.detectors[key] = make_detector(
                    b.rule.drift.detector, dict(b.rule.drift.params), b.detector_seed(ev.feature, ev.phase, group)
                )
            flagged = det.update(x)
            # attributed to the instant that first covers its event time: per (detector, instant) the number of
            # flags and the estimation after the latest update (n_updates grows with arrival order)
            every = b.rule.every_ms
            start = ev.ts - ev.ts % every
            pend = fs.drift_pending.get(key)
            if pend is None:
                pend = fs.drift_pending[key] = {}
            slot = pend.get(start)
            if slot is None:
                pend[start] = [1 if flagged else 0, det.estimation, det.n_updates]
            else:
                if flagged:
                    slot[0] += 1
                slot[1] = det.estimation
                slot[2] = det.n_updates

    # --- evaluation --------------------------------------------------------------------------------------------

    def _evaluate_until(self, out: Outputs, feature: str, fs: FeatureState, watermark: int) -> None:
        """Evaluate every instant up to ``watermark``. The cost is bounded by the work, not by the span of time:
        when many instants are due (a silence in the stream, a clock started long ago), quiet ones are skipped
        (see ``_skip_quiet``) in one step each."""
        nxt = fs.next_eval
        if not nxt:
            return
        evaluated = False
        gap = _SKIP_AFTER * min(nxt)
        retry = None
        while True:
            t = min(nxt.values())
            if t > watermark:
                break
            if watermark - t >= gap and (retry is None or t >= retry):
                if self._skip_quiet(fs, watermark, feature):
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

    def _skip_quiet(self, fs: FeatureState, watermark: int, feature: str) -> bool:
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
        promos = plan.promotions_for(feature)
        for bp in promos:  # a promotion's clock also sees what its gates' stores hold
            e = bp.spec.every_ms
            for se in {b.store.every_ms for b in bp.gates}:
                starts[e] = starts.get(e, []) + starts.get(se, [])
                reach[e] = max(reach.get(e, 0), reach.get(se, 0))
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
            change = time_changes(fs, [bp for bp in promos if bp.spec.every_ms == e], last) if promos else None
            if change is not None:  # no further than the first instant at or after a promotion's time change
                target = min(target, -(-change // e) * e)
            if target > n:
                nxt[e] = target
                moved = True
        return moved

    def _evaluate_instant(self, out: Outputs, feature: str, fs: FeatureState, t: int, everys: frozenset[int]) -> None:
        cache = WindowCache()
        rules: dict[int, tuple[BoundRule, list[str]]] = {}
        promos = []
        for phase in sorted(fs.phases):
            fp = self.plan.for_feature(feature, phase)
            for b in fp.metric_rules + fp.drift_rules:
                if b.rule.every_ms in everys:
                    rules.setdefault(b.order, (b, []))[1].append(phase)
            promos += [bp for bp in fp.promotions if bp.spec.every_ms in everys]
        extra = {b.rule.every_ms for bp in promos for b in bp.gates} - everys
        if extra:
            for phase in sorted(fs.phases):
                fp = self.plan.for_feature(feature, phase)
                for b in fp.metric_rules + fp.drift_rules:
                    if b.rule.every_ms in extra:
                        rules.setdefault(b.order, (b, []))[1].append(phase)
        self._gate_evals = {}
        for _, (b, phases) in sorted(rules.items(), key=lambda kv: kv[1][0].sort_key):
            if b.store is None:
                self._evaluate_drift(out, feature, fs, b, phases, t)
            else:
                self._evaluate_rule(out, feature, fs, b, phases, t, cache)
        for bp in promos:

            def measure(probe, phase=bp.phase):
                series = fs.stores.get(probe.store.id, {})
                ev = evaluate_metric(probe.rule, probe.base, None, probe.store, series, phase, (), t, cache)
                return ev.value, ev.samples

            evaluate_promotion(out, fs, bp, feature, t, self._gate_evals, measure)

    def _evaluate_rule(self, out, feature, fs, b: BoundRule, phases, t, cache) -> None:
        n = len(b.rule.group_by)
        # a series counts from its first bucket before t: one that only holds later events (already applied, as
        # they are within the allowed lateness) must not be evaluated, or when it is would depend on arrival order;
        # a compound rule's groups are those of any of its conditions' stores
        groups = set()
        for store in [p.store for p in b.parts] or [b.store]:
            series = fs.stores.get(store.id, {})
            groups.update((k[0], k[1][:n]) for k, s in series.items() if k[0] in phases and _has_before(s.buckets, t))
        series = fs.stores.get(b.store.id, {})
        # instances that exist but saw no data in retention still need evaluating (e.g. traffic dropped to zero)
        groups.update((k[2], k[3]) for k in fs.instances if k[0] == b.ruleset.name and k[1] == b.rule.id)
        for phase, group in sorted(groups):
            if b.parts:  # all / any: the conditions evaluated here, combined by the product's three-valued logic
                parts = [evaluate_metric(p.rule, p.base, p.param, p.store, fs.stores.get(p.store.id, {}), phase,
                                         group, t, cache) for p in b.parts]  # fmt: skip
                heads = [condition_head(p.rule) for p in b.parts]
                ev = combine(b.rule.combine, parts, heads, t, b.rule.window_ms)
            elif b.rule.compare is not None:  # the statistics are the product's; the windows here are full merges
                ev = evaluate_compare(b.rule, b.base, b.param, b.store, series, phase, group, t, cache)
            else:
                first = fs.phase_first.get(phase) if b.rule.baseline_trailing else None
                ev = evaluate_metric(b.rule, b.base, b.param, b.store, series, phase, group, t, cache, first)
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
        track_starvation(out, fs, b, feature, phase, group, t, ev)
        if b.order in self.plan.gate_orders:
            self._gate_evals.setdefault((b.order, phase), []).append((group, ev))
        if self.observer is not None:
            if state not in ("pending", "firing"):
                state = "insufficient" if ev.verdict is None else "inactive"
            self.observer(Observation(feature, b, phase, group, t, ev, state))

    def _expire(self, fs: FeatureState, watermark: int) -> None:
        if len(fs.seen) > 1024:
            fs.seen = {i: ts for i, ts in fs.seen.items() if ts >= watermark}
        for sid, series in fs.stores.items():
            spec = self.plan.store_by_id[sid]
            horizon = watermark - spec.retention_ms - spec.every_ms
            for key in [k for k, s in series.items() if (frozen_windows.expire(s, horizon) or not s.buckets)]:
                del series[key]


def _has_before(buckets: dict[int, object], t: int) -> bool:
    # insertion order is nearly chronological, so the first key usually answers
    return any(start < t for start in buckets)
