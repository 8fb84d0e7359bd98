"""One dashboard per rule pack: a panel per rule, in rows by tier (kill, pause, investigate).

A rule's panel plots what the engine compares with the threshold (``rollguard_rule_compared``: the metric, its
Wilson bound for ``confidence`` rules, its relative change for ``baseline`` rules, the spread for ``across``
rules; ``rollguard_rule_value``, the detector's estimate, for drift rules) per feature / phase / group, with

* the threshold twice: as the ``rollguard_rule_threshold`` series (what the running worker uses, so a hot reload
  shows) and as a Grafana threshold (what this dashboard was generated from), red on the side where the rule's
  ``op`` holds;
* firing and pending periods as red and orange bands over the whole panel height, from
  ``rollguard_rule_state`` on a hidden 0..1 axis — on-call sees the value, the line and when the rule held it,
  in one place.

The panel description carries the rule's condition, summary template and runbook.
"""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    dashboard,
    datasource_variable,
    decision_annotations,
    prop,
    query,
    query_variable,
    state_timeline_panel,
    timeseries_panel,
    value_mappings,
)
from dashboards.promql import FEATURE_PHASE, FEATURE_PHASE_SEGMENT, selector
from rules.durations import format_duration
from rules.metric_names import METRICS, parse_metric
from rules.model import Rule, RuleSet

__all__ = ["TIERS", "rulepack_dashboard", "rule_panel", "rule_title", "rule_unit", "rule_description"]

TIERS = ("kill", "pause", "investigate")
# Where the op holds, the threshold area is red; the other side stays clear.
_BAD_ABOVE = {">": True, ">=": True, "<": False, "<=": False}
_DRIFT_UNITS = {"latency_ms": "ms", "cost_usd": "currencyUSD", "confidence": "percentunit"}
# Overrides for the firing/pending bands: a separate unit gives them their own (hidden) 0..1 axis, because
# Grafana shares an axis between the series of one unit.
_BAND_UNIT = "bool_on_off"


def rule_title(rule: Rule) -> str:
    """``KILL · pii-leak`` (``· shadow`` appended for shadow rules, which decide but never act)."""
    title = f"{rule.tier.upper()} · {rule.id}"
    return f"{title} · shadow" if rule.mode == "shadow" else title


def rule_unit(rule: Rule) -> str:
    """The Grafana unit of the plotted value."""
    if rule.drift is not None:
        return _DRIFT_UNITS.get(rule.drift.signal, "percentunit")
    if rule.compare is not None and rule.srm_of is not None and not rule.compare.split:
        return "none"  # the stable-split test's log e-value
    if rule.baseline_ms is not None or (rule.compare is not None and (rule.compare.relative or rule.srm_of)):
        return "percentunit"  # relative change against the earlier window or the control; an observed share
    if rule.conditions:  # one axis for every condition: their unit when they share one
        units = {rule_unit(c) for c in rule.conditions}
        return units.pop() if len(units) == 1 else "none"
    base, _ = parse_metric(rule.metric)
    if base.startswith("latency_"):
        return "ms"
    if base.startswith("cost_"):
        return "currencyUSD"
    return "percentunit" if METRICS[base].is_rate else "none"


def _condition(rule: Rule) -> str:
    if rule.drift is not None:
        params = ", ".join(f"{k}={v}" for k, v in sorted(rule.drift.params.items()))
        return (
            f"drift detector `{rule.drift.detector}` on `{rule.drift.signal}`"
            + (f" ({params})" if params else "")
            + "; fires when it detects a change. Plotted: the detector's estimate."
        )
    if rule.conditions:
        joined = f" {'and' if rule.combine == 'all' else 'or'} ".join(
            f"({_condition(c).removesuffix(' Plotted: the compared value.').removesuffix('.')})"
            for c in rule.conditions)  # fmt: skip
        return f"{joined}. Plotted: each condition's value (#1, #2…) and its line."
    what = f"`{rule.metric}` over {format_duration(rule.window_ms)}"
    if rule.compare is not None:
        return _comparison(rule, what)
    if rule.across is not None:
        what = f"spread (max − min) of {what} across `{rule.across}` values"
    if rule.baseline_ms is not None:
        what = (f"relative change of {what} against its average over the {format_duration(rule.baseline_ms)} before"
                if rule.baseline_trailing else
                f"relative change of {what} against {format_duration(rule.baseline_ms)} earlier")  # fmt: skip
    if rule.confidence is not None:
        side = "upper" if rule.op in ("<", "<=") else "lower"
        what = f"{side} Wilson bound ({rule.confidence:g}) of {what}"
    hysteresis = ""
    if rule.resolve_threshold is not None:
        back = "at or below" if _BAD_ABOVE[rule.op] else "at or above"
        if rule.op in (">=", "<="):
            back = "below" if _BAD_ABOVE[rule.op] else "above"
        hysteresis = f"; once firing, resolves only when the value is {back} {rule.resolve_threshold:g}"
    if rule.threshold_high is not None:  # a band
        side = "inside" if rule.op == "between" else "outside"
        return (f"{what} {side} [{rule.threshold:g}, {rule.threshold_high:g}] (bounds in the band). "
                f"Plotted: the compared value.")  # fmt: skip
    return f"{what} {rule.op} {rule.threshold:g}{hysteresis}. Plotted: the compared value."


def _comparison(rule: Rule, what: str) -> str:
    c = rule.compare
    if c.by is not None:
        arms = f"`{c.by}` = {c.treatment or 'any other value'} against `{c.by}` = {c.control}"
    else:
        arms = f"this phase against phase `{c.phase}`"
    diff = "relative difference" if c.relative else "difference"
    interval = "always-valid (sequential)" if c.test == "sequential" else "per-look (fixed)"
    if rule.srm_of is not None and c.split:
        return (f"sample-ratio check of {rule.srm_of}: the treatment's share of {what}, {arms}, against the configured "
                f"{rule.threshold:.1%}; fires while a sequential test rejects the split. Plotted: the observed share.")
    if rule.srm_of is not None:
        return (f"stable-split check of {rule.srm_of}: whether the treatment's share of {what}, {arms}, has changed "
                f"over the window; fires while the sequential test's log e-value is at least {rule.threshold:.2f} "
                f"(log 1/alpha). Plotted: the log e-value.")
    return (f"{diff} of {what}, {arms}; fires when the {interval} {1 - c.alpha:.0%} interval lies wholly "
            f"{rule.op} {rule.threshold:g}. Plotted: the difference and its interval (band).")


def _timing(rule: Rule) -> str:
    parts = [f"Evaluated every {format_duration(rule.every_ms)}"]
    parts.append(f"fires after {format_duration(rule.for_ms)} pending" if rule.for_ms else "fires at once")
    if rule.keep_firing_for_ms:
        parts.append(f"keeps firing for {format_duration(rule.keep_firing_for_ms)}")
    per = " per arm" if rule.compare is not None else ""
    parts.append(f"needs at least {rule.min_samples} samples{per}" if rule.min_samples else "needs no minimum of samples")
    if rule.group_by:
        parts.append(f"one instance per {', '.join(rule.group_by)}")
    return ", ".join(parts) + "."


def rule_description(ruleset: RuleSet, rule: Rule) -> str:
    """Markdown for the panel's (i) tooltip: what the rule tests and what to do."""
    lines = [
        f"**{rule.id}** — rule set `{ruleset.name}`, tier **{rule.tier}**"
        + (", **shadow** (decides, never acts)." if rule.mode == "shadow" else "."),
        "",
        f"**Condition:** {_condition(rule)}",
        "",
        _timing(rule),
    ]
    if rule.summary:
        lines += ["", f"**Summary:** {rule.summary}"]
    if rule.runbook:
        lines += ["", f"**Runbook:** {rule.runbook}"]
    legend = "Red band: firing; orange band: pending"
    legend += ("." if rule.drift is not None else
               "; dashed red lines: each condition's line (#1, #2…)" if rule.conditions else
               "; dashed red line: the threshold the running worker uses")  # fmt: skip
    if rule.drift is None:
        legend += "; dotted line: where a firing instance resolves." if rule.resolve_threshold is not None else "."
    return "\n".join(lines + ["", legend])


def _thresholds(rule: Rule) -> tuple[list[dm.Threshold], cm.GraphTresholdsStyleMode]:
    if rule.drift is not None or rule.conditions:  # a compound rule's lines are series of their own, one a condition
        return [dm.Threshold(value=None, color="green")], cm.GraphTresholdsStyleMode.OFF
    if rule.threshold_high is not None:  # a band: red inside it (between) or on both sides of it (outside)
        inside, outside = ("red", "transparent") if rule.op == "between" else ("transparent", "red")
        steps = [dm.Threshold(value=None, color=outside), dm.Threshold(value=rule.threshold, color=inside),
                 dm.Threshold(value=rule.threshold_high, color=outside)]  # fmt: skip
    elif _BAD_ABOVE[rule.op]:
        steps = [dm.Threshold(value=None, color="transparent"), dm.Threshold(value=rule.threshold, color="red")]
    else:
        steps = [dm.Threshold(value=None, color="red"), dm.Threshold(value=rule.threshold, color="transparent")]
    return steps, cm.GraphTresholdsStyleMode.DASHED_AND_AREA


def _band(color: str, opacity: int) -> list[dm.DynamicConfigValue]:
    return [
        prop("unit", _BAND_UNIT),
        prop("min", 0),
        prop("max", 1),
        prop("color", {"mode": "fixed", "fixedColor": color}),
        prop("custom.axisPlacement", "hidden"),
        prop("custom.drawStyle", "line"),
        prop("custom.lineInterpolation", "stepAfter"),
        prop("custom.lineWidth", 0),
        prop("custom.fillOpacity", opacity),
        prop("custom.showPoints", "never"),
    ]


def _line(color: str, style: dict) -> list[dm.DynamicConfigValue]:
    """A horizontal reference series (the threshold, the resolve line): thin, stepped, no points."""
    return [
        prop("color", {"mode": "fixed", "fixedColor": color}),
        prop("custom.lineStyle", style),
        prop("custom.lineWidth", 1),
        prop("custom.lineInterpolation", "stepAfter"),
        prop("custom.showPoints", "never"),
    ]


def rule_panel(ruleset: RuleSet, rule: Rule) -> timeseries.Panel:
    """The one panel of ``rule``; its queries all select ``ruleset`` and ``rule`` exactly."""
    ident = {"ruleset": ruleset.name, "rule": rule.id}
    value_metric = "rollguard_rule_value" if rule.drift is not None else "rollguard_rule_compared"
    targets = [
        query(
            "A",
            f"max by (feature, phase, group) ({selector(value_metric, ident, FEATURE_PHASE_SEGMENT)})",
            "{{feature}} / {{phase}} {{group}}",
        )
    ]
    if rule.conditions:  # all / any: each condition's value and line
        targets = [
            query("A", f"max by (feature, phase, group, condition) "
                       f"({selector('rollguard_rule_condition_value', ident, FEATURE_PHASE_SEGMENT)})",
                  "{{feature}} / {{phase}} {{group}} #{{condition}}"),
            query("B", f"max by (condition) ({selector('rollguard_rule_condition_threshold', ident, FEATURE_PHASE)})",
                  "line #{{condition}}"),
        ]  # fmt: skip
    elif rule.drift is None:
        targets.append(query("B", f"max({selector('rollguard_rule_threshold', ident, FEATURE_PHASE)})", "threshold"))
    if rule.threshold_high is not None:
        targets.append(query("H", f"max({selector('rollguard_rule_threshold_high', ident, FEATURE_PHASE)})",
                             "band high"))  # fmt: skip
    if rule.drift is None and rule.resolve_threshold is not None:
        sel = selector("rollguard_rule_resolve_threshold", ident, FEATURE_PHASE)
        targets.append(query("E", f"max({sel})", "resolves at"))
    band = rule.compare is not None and rule.srm_of is None and not rule.metric.startswith("latency_p")
    if band:  # the difference's interval, shaded between its bounds (quantiles: the interval is of a share)
        low = selector("rollguard_rule_interval_low", ident, FEATURE_PHASE_SEGMENT)
        high = selector("rollguard_rule_interval_high", ident, FEATURE_PHASE_SEGMENT)
        targets.append(query("F", f"min({low})", "interval low"))
        targets.append(query("G", f"max({high})", "interval high"))
    for ref, state in (("C", "firing"), ("D", "pending")):
        sel = selector("rollguard_rule_state", {**ident, "state": state}, FEATURE_PHASE_SEGMENT)
        targets.append(query(ref, f"sum({sel}) > bool 0", state))
    steps, style = _thresholds(rule)
    panel = (
        timeseries_panel(rule_title(rule), rule_description(ruleset, rule), targets, unit=rule_unit(rule))
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(style))
        .override_by_query("C", _band("red", 25))
        .override_by_query("D", _band("orange", 15))
    )
    if rule.drift is None:
        panel = panel.override_by_query("B", _line("red", {"fill": "dash", "dash": [10, 10]}))
    if rule.threshold_high is not None:
        panel = panel.override_by_query("H", _line("red", {"fill": "dash", "dash": [10, 10]}))
    if rule.drift is None and rule.resolve_threshold is not None:
        panel = panel.override_by_query("E", _line("orange", {"fill": "dot", "dash": [0, 10]}))
    if band:
        panel = panel.override_by_query("F", _line("blue", {"fill": "solid"}))
        upper = [*_line("blue", {"fill": "solid"}), prop("custom.fillBelowTo", "interval low"),
                 prop("custom.fillOpacity", 15)]  # fmt: skip
        panel = panel.override_by_query("G", upper)
    return panel


def promotion_panel(ruleset: RuleSet):
    """The promotion block's verdict over time (rollguard_promotion_verdict): 0 blocked, 1 inconclusive, 2 ready."""
    p = ruleset.promotion

    def verdict(v: str) -> str:
        series = selector("rollguard_promotion_verdict", {"ruleset": ruleset.name, "verdict": v}, FEATURE_PHASE)
        return f"max by (feature, phase) ({series})"

    gates = ", ".join(p.gates)
    signs = ", ".join(p.signoffs) or "none"
    return state_timeline_panel(
        f"Promotion verdict → {p.to}",
        f"Blocked (a gate fails, a sign-off missing, a latch), inconclusive (not enough data, exposure short, hold "
        f"running) or ready, per feature/phase. Gates: {gates}; sign-offs: {signs}. `rollguard status` prints the "
        "checklist (rules.md §4.14).",
        query("A", f"2 * {verdict('ready')} + {verdict('inconclusive')}", "{{feature}} / {{phase}}"),
        value_mappings({0: ("BLOCKED", "red"), 1: ("INCONCLUSIVE", "yellow"), 2: ("READY", "green")}),
        height=5,
    )


def _scope(ruleset: RuleSet) -> str:
    phases = ", ".join(ruleset.phases) if ruleset.phases is not None else "all phases"
    return f"features {', '.join(ruleset.features)}; {phases}"


def rulepack_dashboard(ruleset: RuleSet, uid: str) -> db.Dashboard:
    """The dashboard of one rule pack (rule set)."""
    series = selector("rollguard_rule_state", {"ruleset": ruleset.name})
    scoped = selector("rollguard_rule_state", {"ruleset": ruleset.name}, {"feature": "$feature"})
    grouped = selector("rollguard_rule_state", {"ruleset": ruleset.name}, FEATURE_PHASE)
    builder = (
        dashboard(
            f"rollguard rules · {ruleset.name}", uid,
            f"Generated by `rollguard dashboards build` from {Path(ruleset.source).name} "
            f"(rule set {ruleset.name}, version {ruleset.version[:12]}; {_scope(ruleset)}). Do not edit: regenerate.",
            ["rollguard", "rollguard-rules"], "now-24h", "1m",
        )  # fmt: skip
        .annotation(decision_annotations(["rollguard", f"ruleset:{ruleset.name}"]))
        .with_variable(datasource_variable())
        .with_variable(
            query_variable("feature", "Feature", f"label_values({series}, feature)", "Features this rule set covers")
        )
        .with_variable(query_variable("phase", "Phase", f"label_values({scoped}, phase)", "Rollout phases"))
        .with_variable(
            query_variable(
                "segment",
                "Segment",
                f"label_values({grouped}, group)",
                "The rule's group_by values (label group, e.g. platform=ios); All includes ungrouped rules",
            )
        )
    )
    for tier in TIERS:
        rules = [r for r in ruleset.rules if r.tier == tier]
        if not rules:
            continue
        builder = builder.with_row(db.Row(f"{tier.capitalize()} ({len(rules)} rules)"))
        for rule in rules:
            builder = builder.with_panel(rule_panel(ruleset, rule))
    if ruleset.promotion is not None:
        builder = builder.with_row(db.Row(f"Promotion to {ruleset.promotion.to}")).with_panel(promotion_panel(ruleset))
    return builder
