"""Loading a rule's ``compare:`` block (CONTRACT §3 extension), with located errors like the rest of ``rules.loader``.

::

    compare: {by: model_version, control: m-2026-02, treatment: m-2026-03, as: relative, test: sequential,
              alpha: 0.05, split: {m-2026-03: 0.10}}
    compare: {phase: internal}

A comparison of arms gets a companion rule ``<id>.srm`` (:func:`srm_companion`): an ``investigate`` rule that fires
while the sequential sample-ratio test rejects the configured ``split`` (and pages with the observed share), or,
without one, while the stable-split test finds the split has changed (``split: unchecked`` turns that off).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rules.compare import comparable
from rules.located_yaml import LocatedMap, describe, line_of
from rules.model import PHASE_NAME, SEGMENT_KEY, CompareSpec, Rule

if TYPE_CHECKING:
    from rules.loader_scope import Scope

__all__ = ["load_compare", "srm_companion", "COMPARE_KEYS"]

COMPARE_KEYS = ("by", "control", "treatment", "phase", "as", "test", "alpha", "split")
_HOUR_MS = 3_600_000
_EXCLUSIVE = ("baseline", "trailing_baseline", "across", "confidence", "resolve_threshold")


def load_compare(scope: Scope, item: LocatedMap, base: str | None, group_by: tuple[str, ...]) -> CompareSpec | None:
    """The validated ``compare`` block of ``item`` (a threshold rule), or None after reporting what is wrong."""
    c = item["compare"]
    where = line_of(item, "compare")
    if not isinstance(c, LocatedMap):
        example = "{by: model_version, control: m-1}"
        scope.error(where, f"compare: expected a mapping such as {example}, got {describe(c)}")
        return None
    errors = len(scope.checker.errors)
    scope.keys(c, COMPARE_KEYS, "compare: ")
    for key in _EXCLUSIVE:
        if key in item:
            scope.error(line_of(item, key), f"{key}: cannot be combined with compare")
    if base is not None and not comparable(base):
        message = (f"{item['metric']} is not a per-event mean; arms compare rates, means, nps and latency "
                   f"quantiles (not counts or per-user ratios)")  # fmt: skip
        scope.error(line_of(item, "metric"), f"compare: {message}")
    values: dict[str, Any] = {}
    if ("by" in c) == ("phase" in c):
        scope.error(c.line, "compare: give either by (arms of one feature and phase) or phase (another phase)")
    if "by" in c:
        by = scope.string(c, "by", "compare.by", SEGMENT_KEY)
        if by is not None and by in group_by:
            scope.error(line_of(c, "by"), f"compare.by: {by!r} is also in group_by; arms must share a group")
        values["by"] = by
        if "control" not in c:
            scope.error(c.line, "compare: missing required key 'control' (the arm value treated as the control)")
        for key in ("control", "treatment"):
            if key in c:
                values[key] = _arm_value(scope, c, key)
        if values.get("treatment") is not None and values["treatment"] == values.get("control"):
            scope.error(line_of(c, "treatment"), "compare.treatment: must differ from control")
        if "split" in c and c["split"] in ("stable", "unchecked"):
            values["check_split"] = c["split"] == "stable"
        elif "split" in c:
            values["split"] = _split(scope, c, values.get("control"), values.get("treatment"))
    else:
        for key in ("control", "treatment", "split"):
            if key in c:
                scope.error(line_of(c, key), f"compare.{key}: only for a comparison of arms (by:), not of phases")
        if "phase" in c:
            values["phase"] = scope.string(c, "phase", "compare.phase", PHASE_NAME)
    if "as" in c:
        values["relative"] = scope.choice(c, "as", "compare.as", ("absolute", "relative")) == "relative"
    if "test" in c:
        values["test"] = scope.choice(c, "test", "compare.test", ("sequential", "fixed"))
    if "alpha" in c:
        alpha = scope.number(c, "alpha", "compare.alpha")
        if alpha is not None and not 0 < alpha <= 0.5:
            scope.error(line_of(c, "alpha"), f"compare.alpha: must be in (0, 0.5] (e.g. 0.05), got {alpha:g}")
        values["alpha"] = alpha
    threshold = item.get("threshold")
    relative = values.get("relative")
    if relative and isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold <= -1:
        message = f"a relative change (as: relative) is above -1 (-100 %), got {threshold:g}"
        scope.error(line_of(item, "threshold"), f"threshold: {message}")
    if len(scope.checker.errors) > errors or None in values.values():
        return None
    return CompareSpec(**values)


def _arm_value(scope: Scope, c: LocatedMap, key: str) -> str | None:
    value = c[key]
    if isinstance(value, bool) or not isinstance(value, str):
        hint = " (quote it: arm values are strings, as in events)" if isinstance(value, (int, float)) else ""
        scope.error(line_of(c, key), f"compare.{key}: expected a string, got {describe(value)}{hint}")
        return None
    if not value or len(value) > 128:
        scope.error(line_of(c, key), f"compare.{key}: must be 1 to 128 characters")
        return None
    return value


def _split(scope: Scope, c: LocatedMap, control: str | None, treatment: str | None) -> dict[str, float] | None:
    s = c["split"]
    where = line_of(c, "split")
    if not isinstance(s, LocatedMap) or not s:
        message = (f"expected a mapping of arm value to share such as {{m-2: 0.1}}, or stable (the default) or "
                   f"unchecked, got {describe(s)}")  # fmt: skip
        scope.error(where, f"compare.split: {message}")
        return None
    scope.keys(s, tuple(s), "compare.split: ")
    out: dict[str, float] = {}
    for arm, share in s.items():
        line = line_of(s, arm)
        if not isinstance(arm, str):
            scope.error(line, f"compare.split: arm values are strings (quote it), got {describe(arm)}")
            continue
        if arm == control:
            scope.error(line, f"compare.split: {arm!r} is the control; it has the share the others leave")
            continue
        if treatment is not None and arm != treatment:
            scope.error(line, f"compare.split: {arm!r} is not the treatment {treatment!r}")
            continue
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            message = f"expected a share strictly between 0 and 1, got {describe(share)}"
            scope.error(line, f"compare.split.{arm}: {message}")
            continue
        out[arm] = float(share)
    total = math.fsum(out.values())
    if out and total >= 1:
        scope.error(where, f"compare.split: the shares sum to {total:g}; the control needs the rest (< 1)")
        return None
    return out if len(out) == len(s) else None


def srm_companion(rule: Rule) -> Rule:
    """The ``<id>.srm`` rule of a comparison of arms: same feature scope, window, clock, groups and arms; tier
    ``investigate``. With ``split``, value the treatment arms' observed share and threshold the expected one; without,
    value the stable-split test's log e-value and threshold ``log(1/alpha)`` (``rules.compare``). It keeps firing for
    an hour (at least one ``every``) after the test last rejected, so a split that hovers at the edge of rejection
    pages once, not once per minute."""
    c = rule.compare
    if c.split:
        threshold, op = math.fsum(c.split.values()), "<"
        summary = (f"arm split {{value:.1%}} vs expected {{threshold:.1%}}: {rule.id} is withheld until the split is "
                   f"as configured")  # fmt: skip
    else:
        threshold, op = round(-math.log(c.alpha), 6), ">="
        summary = (f"arm split changed: treatment {{details[srm][share_after]:.1%}} of samples since "
                   f"{{details[srm][changed_at]}}, {{details[srm][share_before]:.1%}} before: {rule.id} is withheld "
                   f"until the split is stable")  # fmt: skip
    return Rule(
        id=f"{rule.id}.srm", tier="investigate", mode=rule.mode, metric=rule.metric, op=op, threshold=threshold,
        window_ms=rule.window_ms, every_ms=rule.every_ms, min_samples=rule.min_samples, group_by=rule.group_by,
        keep_firing_for_ms=rule.every_ms * max(1, _HOUR_MS // rule.every_ms),
        compare=c, where=rule.where, srm_of=rule.id, runbook=rule.runbook, line=rule.line, summary=summary,
    )  # fmt: skip


def needs_srm(rule: Rule) -> bool:
    """Whether a rule gets an ``<id>.srm`` companion: a comparison of arms whose split is checked."""
    c = rule.compare
    return c is not None and c.by is not None and (bool(c.split) or c.check_split) and rule.srm_of is None
