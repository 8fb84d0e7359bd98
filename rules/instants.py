"""Evaluating instants: the half of :class:`rules.engine.Engine` that runs once the watermark passes an instant.

``Instants`` is a mixin of the engine (it reads the engine's plan, policy, breaker, stats and observer): it applies
the feature's pending events (``rules.batch``), evaluates every rule due at each instant up to the watermark in
plan order (kill first), hands verdicts to the lifecycle and the policy, skips quiet instants in one step each, and
expires state that has aged out. :class:`Observation` is what an engine observer sees of each evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.compare import evaluate_compare
from rules.compound import combine, condition_head
from rules.evaluation import Evaluation, WindowCache, evaluate_metric
from rules.lifecycle import Instance, advance
from rules.plan import BoundRule
from rules.policy import Outputs
from rules.promotion import evaluate as evaluate_promotion
from rules.promotion import time_changes
from rules.starvation import track as track_starvation
from rules.state import FeatureState
from rules.windows import RunningWindows

__all__ = ["Instants", "Observation"]

_SKIP_AFTER = 64  # instants due in one call before quiet ones are looked for


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

    @property
    def interval(self) -> tuple[float, float] | None:
        """The interval of a ``compare`` rule's difference, in the compared value's units (None for other rules, for
        an undefined interval, and for quantiles, whose interval is that of the excess share: rules.compare)."""
        c = self.evaluation.details.get("compare")
        if c is None or c["lo"] is None or "quantile_test" in c:
            return None
        return c["lo"], c["hi"]


class Instants:
    """The evaluation methods of :class:`rules.engine.Engine` (a mixin: see the module docstring)."""

    _gate_evals: dict | None = None  # during an instant with a promotion due: the evaluations of its gates

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
        promos = plan.promotions_for(feature)  # a promotion's verdict also moves with time (rules.promotion)
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
        # a promotion's clock also sees what its gates' stores hold (the gates are evaluated at its instants)
        for bp in promos:
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
        running = fs.windows
        if running is None or running.plan is not self.plan:  # first instant since load, or the rules were reloaded
            running = fs.windows = RunningWindows(self.plan)
        cache = WindowCache(running, t)
        rules: dict[int, tuple[BoundRule, list[str]]] = {}
        promos = []
        for phase in sorted(fs.phases):
            fp = self.plan.for_feature(feature, phase)
            for b in fp.metric_rules + fp.drift_rules:
                if b.rule.every_ms in everys:
                    rules.setdefault(b.order, (b, []))[1].append(phase)
            promos += [bp for bp in fp.promotions if bp.spec.every_ms in everys]
        if promos:  # a gate's clock may have skipped this instant as quiet: evaluate it as an unskipped clock would
            extra = {b.rule.every_ms for bp in promos for b in bp.gates} - everys
            if extra:
                for phase in sorted(fs.phases):
                    fp = self.plan.for_feature(feature, phase)
                    for b in fp.metric_rules + fp.drift_rules:
                        if b.rule.every_ms in extra:
                            rules.setdefault(b.order, (b, []))[1].append(phase)
        self._gate_evals = gate_evals = {} if promos else None
        for _, (b, phases) in sorted(rules.items(), key=lambda kv: kv[1][0].sort_key):
            if b.store is None:
                self._evaluate_drift(out, feature, fs, b, phases, t)
            else:
                self._evaluate_rule(out, feature, fs, b, phases, t, cache)
        for bp in promos:  # after every rule: a kill latched at this instant blocks the promotion at this instant

            def measure(probe, phase=bp.phase):
                series = fs.stores.get(probe.store.id, {})
                ev = evaluate_metric(probe.rule, probe.base, None, probe.store, series, phase, (), t, cache, False)
                return ev.value, ev.samples

            evaluate_promotion(out, fs, bp, feature, t, gate_evals, measure)
        self._gate_evals = None

    def _evaluate_rule(self, out, feature, fs, b: BoundRule, phases, t, cache) -> None:
        if b.parts:
            self._evaluate_compound(out, feature, fs, b, phases, t, cache)
            return
        series = fs.stores.get(b.store.id, {})
        groups = _groups(fs, b, [b.store], phases, t)
        hysteresis = b.rule.resolve_threshold is not None
        if b.rule.compare is not None:
            for phase, group in sorted(groups):
                ev = evaluate_compare(b.rule, b.base, b.param, b.store, series, phase, group, t, cache)
                self._apply(out, feature, fs, b, phase, group, t, ev)
            return
        for phase, group in sorted(groups):
            firing = False
            if hysteresis:
                inst = fs.instances.get((b.ruleset.name, b.rule.id, phase, group))
                firing = inst is not None and inst.state == "firing"
            first = fs.phase_first.get(phase) if b.rule.baseline_trailing else None
            ev = evaluate_metric(b.rule, b.base, b.param, b.store, series, phase, group, t, cache, firing, first)
            self._apply(out, feature, fs, b, phase, group, t, ev)

    def _evaluate_compound(self, out, feature, fs, b: BoundRule, phases, t, cache) -> None:
        """A compound rule (``all:`` / ``any:``): every condition for each group any of them has data for (or that
        has an instance), combined into one evaluation (rules.compound)."""
        groups = _groups(fs, b, [p.store for p in b.parts], phases, t)
        heads = [condition_head(p.rule) for p in b.parts]
        for phase, group in sorted(groups):
            parts = [evaluate_metric(p.rule, p.base, p.param, p.store, fs.stores.get(p.store.id, {}), phase, group, t,
                                     cache) for p in b.parts]  # fmt: skip
            self._apply(out, feature, fs, b, phase, group, t, combine(b.rule.combine, parts, heads, t, b.rule.window_ms))

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
        if self._gate_evals is not None and b.order in self.plan.gate_orders:
            self._gate_evals.setdefault((b.order, phase), []).append((group, ev))
        if self.observer is not None:
            if state not in ("pending", "firing"):
                state = "insufficient" if ev.verdict is None else "inactive"
            self.observer(Observation(feature, b, phase, group, t, ev, state))

    def _expire(self, fs: FeatureState, watermark: int) -> None:
        if len(fs.seen) > 1024:
            fs.seen = {i: ts for i, ts in fs.seen.items() if ts >= watermark}
            fs.seen_pruned = True  # the live shell then stores the ids whole (FeatureState.seen_changes)
        horizons: dict[int, int] = {}
        for sid, series in fs.stores.items():
            spec = self.plan.store_by_id[sid]
            horizon = watermark - spec.retention_ms - spec.every_ms
            horizons[sid] = horizon
            gone = []
            for key, s in series.items():
                dropped = s.expire(horizon)
                if dropped and fs.dropped is not None:  # the live shell deletes their stored fields
                    fs.dropped.extend((sid, key, start) for start in dropped)
                if not s.buckets:
                    gone.append(key)
            for key in gone:
                del series[key]
        if fs.windows is not None:
            fs.windows.prune(fs.stores, horizons)


def _groups(fs: FeatureState, b: BoundRule, stores, phases, t: int) -> set[tuple]:
    """The (phase, group) instances of ``b`` to evaluate at ``t``: those with data in any of ``stores``, and those that
    exist. A series counts from its first bucket before t: one that only holds later events (already applied, as
    they are within the allowed lateness) must not be evaluated, or when it is would depend on arrival order.
    Instances that saw no data in retention still need evaluating (e.g. traffic dropped to zero)."""
    n = len(b.rule.group_by)
    groups = set()
    for spec in stores:
        series = fs.stores.get(spec.id, {})
        groups.update((k[0], k[1][:n]) for k, s in series.items() if k[0] in phases and _has_before(s.buckets, t))
    groups.update((k[2], k[3]) for k in fs.instances if k[0] == b.ruleset.name and k[1] == b.rule.id)
    return groups


def _has_before(buckets: dict[int, object], t: int) -> bool:
    # insertion order is nearly chronological, so the first key usually answers
    return any(start < t for start in buckets)
