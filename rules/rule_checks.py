"""The per-rule checks of the rule loader (``rules.loader``) that stand on their own: a rule's ``action``, a cohort
metric's companions, a band's two lines, and ``resolve_threshold``'s side. Each reports through the rule's
:class:`rules.loader_scope.Scope` and returns the validated value (or None after reporting why not)."""

from __future__ import annotations

from rules.durations import MAX_DURATION_MS, format_duration
from rules.loader_scope import Scope
from rules.located_yaml import LocatedMap, line_of
from rules.metric_names import cohort_span_ms, parse_metric
from rules.model import BAND_OPS
from rules.outputs import ACTION_TIER, RULE_ACTIONS

__all__ = ["band", "check_cohort", "check_resolve", "rule_action"]


def rule_action(scope: Scope, item: LocatedMap, v: dict) -> str | None:
    """``action``: the command a pause or kill rule sends instead of its tier's (``rules.outputs.RULE_ACTIONS``);
    None for the tier's own."""
    action, tier = v.get("action"), v.get("tier")
    if action is None:
        return None
    allowed = RULE_ACTIONS.get(tier)
    if allowed is None:
        scope.error(line_of(item, "action"), f"action: only pause and kill rules send commands; {tier} sends none")
        return None
    if action not in allowed:
        hint = f" ({action} is a {ACTION_TIER[action]} action)" if action in ACTION_TIER else ""
        scope.error(line_of(item, "action"), f"action: a {tier} rule sends {' or '.join(allowed)}, got {action!r}{hint}")
        return None
    return action if action != allowed[0] else None


def check_cohort(scope: Scope, item: LocatedMap, metric: str, every: int | None) -> None:
    """A cohort metric (``rules.cohort``) already compares two windows of users: it takes none of the other
    comparisons, and its span ends windows, so it is a multiple of ``every`` like the window."""
    for key in ("baseline", "trailing_baseline", "across", "compare", "confidence"):
        if key in item:
            message = (f"{metric} is a share of one window's users found in another (estimated from sketches past "
                       f"1,024 users), so it takes no {key}")  # fmt: skip
            scope.error(line_of(item, key), f"{key}: {message}")
    span = cohort_span_ms(parse_metric(metric)[1])
    if span > MAX_DURATION_MS:  # as for any duration: state is kept for window + span
        scope.error(line_of(item, "metric"), f"metric: the span of {metric} is over {format_duration(MAX_DURATION_MS)}")
    elif every and span % every:
        message = f"the span of {metric} is not a multiple of every ({format_duration(every)})"
        scope.error(line_of(item, "metric"), f"metric: {message}")


def band(scope: Scope, item: LocatedMap, v: dict) -> tuple[float | None, float | None]:
    """(threshold, threshold_high): a band ``[low, high]`` goes with ``op: between`` / ``outside`` and only with
    them, and not with what judges one side of a line (``confidence``, ``compare``, ``resolve_threshold``)."""
    threshold, op = v.get("threshold"), v.get("op")
    is_band = isinstance(threshold, tuple)
    if op is None or threshold is None:
        return (None, None) if is_band else (threshold, None)
    if (op in BAND_OPS) != is_band:
        message = (f"op {op} takes a band [low, high], got one number" if op in BAND_OPS else
                   f"a band [low, high] goes with op between or outside, not {op}")  # fmt: skip
        scope.error(line_of(item, "threshold"), f"threshold: {message}")
        return None, None
    if not is_band:
        return threshold, None
    for key in ("confidence", "compare", "resolve_threshold"):
        if key in item:
            scope.error(line_of(item, key), f"{key}: cannot be combined with op {op} (a band has two sides)")
    return threshold


def check_resolve(scope: Scope, item: LocatedMap, v: dict, resolve: float, threshold: float | None,
                  fraction: bool) -> None:  # fmt: skip
    """``resolve_threshold`` (hysteresis): on the side of ``threshold`` where the rule does not fire, on an
    ``investigate`` rule (pause and kill latch until an operator resumes), in [0, 1] for a rate."""
    where = line_of(item, "resolve_threshold")
    if v.get("tier") in ("pause", "kill"):
        message = f"only tier investigate resolves; {v['tier']} latches until an operator resumes"
        scope.error(where, f"resolve_threshold: {message}")
    op = v.get("op")
    if threshold is not None and op is not None:
        above = op in (">", ">=")  # fires above the threshold: resolves once the value is back at or below
        if (resolve > threshold) if above else (resolve < threshold):
            message = (f"{resolve:g} is on the firing side of threshold {threshold:g}: with op {op} it must be "
                       f"{'<=' if above else '>='} {threshold:g} (a firing instance then resolves only once the "
                       f"value crosses back over it)")  # fmt: skip
            scope.error(where, f"resolve_threshold: {message}")
    if fraction and not 0 <= resolve <= 1:
        scope.error(where, f"resolve_threshold: {v.get('metric')} is a fraction in [0, 1]; got {resolve:g}")
