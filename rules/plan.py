"""Compile loaded rule sets into an evaluation plan: which stores to keep, which rules read them, in which order.

Rules that share a granularity (``every``) and segment keys (``group_by`` + ``across``) share one store, so an event
is added once per store, not once per rule. Within one evaluation instant rules run kill-first (then pause, then
investigate), each tier in load order, so that a kill inhibits lower tiers decided at the same instant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

from rules.compare import COMPARABLE_MEANS
from rules.compound import describe as describe_compound
from rules.aggregate import share_key
from rules.metric_names import COHORT_METRICS, cohort_span_ms, parse_metric, share_of
from rules.metrics import metric_sources, needs_latency_sketch, needs_users, signal_sources
from rules.model import TIER_ORDER, Rule, RuleSet
from rules.promotion import BoundPromotion, probe_rules
from rules.windows import StoreSpec

__all__ = ["BoundRule", "Plan", "FeaturePlan", "FeatureProfile"]


def _store_name(s: StoreSpec) -> str:
    """``every:keys`` (``|`` and the filter's matchers for a filtered store): stable across reloads, so persisted
    state finds its store again."""
    name = f"{s.every_ms}:{','.join(s.keys)}"
    return (name + "".join(f"|{m.describe()}" for m in s.where) + (f"|arm {s.arm}" if s.arm else "")
            + (f"|{s.purpose}" if s.purpose else ""))


@dataclass(frozen=True, eq=False)
class BoundRule:
    """A rule with everything the engine needs pre-computed."""

    order: int
    ruleset: RuleSet
    rule: Rule
    store: StoreSpec | None  # None for drift rules
    base: str | None
    param: str | None
    metric: str  # as written, ``drift:<detector>:<signal>``, or ``all(…)`` / ``any(…)`` (rules.compound.describe)
    latching: bool  # enforced pause / kill: never resolve by themselves (a shadow rule decides, it holds nothing)
    # a compound rule's conditions (rules.compound), bound like metric rules; ``store`` is the first one's
    parts: tuple[BoundRule, ...] = ()

    @property
    def sources(self) -> frozenset[str]:
        if self.parts:
            return frozenset().union(*(p.sources for p in self.parts))
        if self.store is None:
            return signal_sources(self.rule.drift.signal)
        return metric_sources(self.base, self.param)

    @property
    def sort_key(self) -> tuple[int, int]:
        return (-TIER_ORDER[self.rule.tier], self.order)

    def group_of(self, segment: dict[str, str]) -> tuple[str, ...]:
        return tuple(segment.get(k, "") for k in self.rule.group_by)

    def detector_seed(self, feature: str, phase: str, group: tuple[str, ...]) -> int:
        h = hashlib.sha256(repr((self.ruleset.name, self.rule.id, feature, phase, group)).encode()).digest()
        return int.from_bytes(h[:4], "big")


@dataclass(frozen=True)
class FeatureProfile:
    """What a feature's watermark and clocks depend on, over every phase its rule sets could apply to."""

    everys: frozenset[int]  # evaluation clocks
    sources: frozenset[str]  # event types its rules read: its watermark is the lowest of theirs
    promotion_everys: frozenset[int] = frozenset()  # clocks of promotion blocks (rules.promotion): never skipped


@dataclass(frozen=True, eq=False)
class FeaturePlan:
    """What applies to one (feature, phase)."""

    stores: tuple[StoreSpec, ...]
    metric_rules: tuple[BoundRule, ...]
    drift_rules: tuple[BoundRule, ...]
    promotions: tuple[BoundPromotion, ...] = ()  # promotion blocks of this phase (rules.promotion)
    # the phase's first event time is kept (FeatureState.phase_first): a promotion's exposure, the span a
    # ``trailing_baseline`` average covers
    tracks_first: bool = False
    # whether its events go to windows or detectors (read per event; a phase that is only another's control has stores)
    feeds: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "feeds", bool(self.stores or self.drift_rules))

    @property
    def everys(self) -> frozenset[int]:
        return frozenset(b.rule.every_ms for b in self.metric_rules + self.drift_rules)


class Plan:
    """The compiled form of a tuple of rule sets; immutable and shared."""

    def __init__(self, rulesets: tuple[RuleSet, ...]) -> None:
        self.rulesets = tuple(rulesets)
        self.version = hashlib.sha256("".join(r.version for r in self.rulesets).encode()).hexdigest()
        stores: dict[tuple, dict] = {}
        bound: list[tuple] = []
        # events are grouped by their arm fields too once a store is keyed by (or filtered on) one (rules.batch); the
        # stores of rules that compare arms on a mean keep sums of squares (rules.compare)
        self.needs_arms = False
        self.needs_squares = False
        shares: set[tuple] = set()

        def keyed(rule: Rule) -> tuple:
            """(store key, base, param) of a threshold rule; its store's needs updated."""
            base, param = parse_metric(rule.metric)
            keys = tuple(rule.group_by) + ((rule.across,) if rule.across else ())
            arm = rule.compare.key if rule.compare is not None else None
            if arm is not None:  # an arm store: only events with a value for the dimension (rules.compare)
                keys += (arm,)
                self.needs_arms |= arm.startswith("@")
            if any(m.store_key.startswith("@") for m in rule.where):
                self.needs_arms = True
            if base in ("share_ge", "share_lt"):
                field, ge, x = share_of(base, param)
                shares.add((share_key(base, param), field, ge, x))
            sk = (rule.every_ms, keys, rule.where, arm)
            s = stores.setdefault(sk, {"lat": False, "users": False, "ret": 0, "sq": False})
            s["sq"] |= rule.compare is not None and base in COMPARABLE_MEANS
            self.needs_squares |= s["sq"]
            s["lat"] |= needs_latency_sketch(base)
            s["users"] |= needs_users(base)
            span = cohort_span_ms(param) if base in COHORT_METRICS else 0  # the adjacent window of users
            s["ret"] = max(s["ret"], rule.window_ms + (rule.baseline_ms or 0) + span)
            return sk, base, param

        for rs in self.rulesets:
            for rule in rs.rules:
                if rule.drift is not None:
                    metric = f"drift:{rule.drift.detector}:{rule.drift.signal}"
                    bound.append((rs, rule, None, None, None, metric, ()))
                elif rule.conditions:
                    parts = tuple((c, *keyed(c)) for c in rule.conditions)
                    bound.append((rs, rule, parts[0][1], None, None, describe_compound(rule), parts))
                else:
                    bound.append((rs, rule, *keyed(rule), rule.metric, ()))
        probes = []  # (rule set, probe rule, store key): the exposure counts of promotion blocks
        for rs in self.rulesets:
            for rule in probe_rules(rs.promotion) if rs.promotion is not None else ():
                sk = (rule.every_ms, (), (), None, "exposure")  # a store of its own (StoreSpec.purpose)
                s = stores.setdefault(sk, {"lat": False, "users": False, "ret": 0, "sq": False})
                s["users"] |= needs_users(rule.metric)
                s["ret"] = max(s["ret"], rule.window_ms)
                probes.append((rs, rule, sk))
        # (counter, field, at_or_above, x) of the share metrics the rules read (rules.aggregate.share_contributions)
        self.shares = tuple(sorted(shares))
        self.stores = {
            sk: StoreSpec(i, sk[0], sk[1], v["lat"], v["users"], v["ret"], sk[2], sk[3], v["sq"], *sk[4:])
            for i, (sk, v) in enumerate(stores.items())
        }
        self.store_by_id = {s.id: s for s in self.stores.values()}
        # the segment keys some store reads (its keys, its filter's); events whose segments agree on them land in the
        # same store series, so rules.batch may group them together. None: by the whole segment (arm fields read)
        read = {k for s in self.stores.values() for k in (*s.keys, *(m.store_key for m in s.where), s.arm or "")}
        self.segment_keys = None if self.needs_arms else tuple(sorted(read - {""}))
        # names of the stores that stay the same across rule reloads (persisted state refers to stores by these)
        self.store_names = {s.id: _store_name(s) for s in self.stores.values()}
        self.store_ids = {name: sid for sid, name in self.store_names.items()}
        self.rules = tuple(
            BoundRule(i, rs, rule, self.stores[sk] if sk else None, base, param, metric,
                      rule.tier in ("pause", "kill") and rule.mode == "enforce",
                      tuple(BoundRule(-1, rs, c, self.stores[csk], cb, cp, c.metric, False)
                            for c, csk, cb, cp in parts))  # fmt: skip
            for i, (rs, rule, sk, base, param, metric, parts) in enumerate(bound)
        )
        self.by_key = {(b.ruleset.name, b.rule.id): b for b in self.rules}
        bound_probes: dict[str, list[BoundRule]] = {}
        for rs, rule, sk in probes:
            bound_probes.setdefault(rs.name, []).append(
                BoundRule(-1, rs, rule, self.stores[sk], rule.metric, None, rule.metric, False))
        self.promotions = tuple(
            BoundPromotion(rs, rs.promotion, rs.phases[0], tuple(self.by_key[(rs.name, g)] for g in rs.promotion.gates),
                           tuple(bound_probes.get(rs.name, ())))  # fmt: skip
            for rs in self.rulesets if rs.promotion is not None
        )
        # the orders of rules some promotion reads as a gate: their evaluations are collected at each instant
        self.gate_orders = frozenset(b.order for bp in self.promotions for b in bp.gates)
        self.promotions_for = lru_cache(maxsize=4096)(self._promotions_for)
        self.for_feature = lru_cache(maxsize=4096)(self._for_feature)
        self.profile = lru_cache(maxsize=4096)(self._profile)
        # rules.batch's memo: (phase plan, a group's phase and segment values) -> the store series its events go to
        self.routes: dict[tuple, tuple] = {}

    def _promotions_for(self, feature: str) -> tuple[BoundPromotion, ...]:
        return tuple(bp for bp in self.promotions if bp.ruleset.matches_feature(feature))

    def _profile(self, feature: str) -> FeatureProfile:
        rules = [b for b in self.rules if b.ruleset.matches_feature(feature)]
        promos = self.promotions_for(feature)
        rules += [p for bp in promos for p in bp.probes]
        pe = frozenset(bp.spec.every_ms for bp in promos)
        return FeatureProfile(frozenset(b.rule.every_ms for b in rules) | pe,
                              frozenset().union(*(b.sources for b in rules)), pe)  # fmt: skip

    def _for_feature(self, feature: str, phase: str) -> FeaturePlan:
        rules = [b for b in self.rules if b.ruleset.applies_to(feature, phase)]
        metric = tuple(b for b in rules if b.store is not None)
        drift = tuple(b for b in rules if b.store is None)
        # a phase that is another phase's control (compare: {phase: ...}) keeps its events in that rule's store
        controls = [b.store for b in self.rules if b.store is not None and b.rule.compare is not None
                    and b.rule.compare.phase == phase and b.ruleset.matches_feature(feature)]  # fmt: skip
        promos = tuple(bp for bp in self.promotions_for(feature) if bp.phase == phase)
        probes = [p.store for bp in promos for p in bp.probes]
        parts = [p.store for b in metric for p in b.parts]
        stores = tuple(sorted({s.id: s for s in [b.store for b in metric] + parts + controls + probes}.values(),
                              key=lambda s: s.id))  # fmt: skip
        tracks_first = bool(promos) or any(b.rule.baseline_trailing for b in metric)
        return FeaturePlan(stores, metric, drift, promos, tracks_first)
