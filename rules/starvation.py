"""Starved rules: a rule that cannot decide for want of data says so (``max_starved``, CONTRACT §3 extension).

A threshold rule whose evaluation stays *insufficient* (fewer than ``min_samples``, no value, an empty baseline
window, a comparison arm short of samples) protects nothing: a kill rule on acceptance whose feedback pipeline broke
is as good as no rule, and canary judges stalled on "no data" are how launches go unwatched for hours. A rule is
**starved** at an instant when its evaluation is insufficient *while its window holds data* (``Evaluation.live``):
the feature is live, this rule's metric does not get enough of it. A window without any data is *idle* (traffic
stopped: the absence rules' business, not this one's).

Per (rule set, rule, feature, phase, group) the engine keeps ``[since, flagged]`` (``FeatureState.starving``):

* a starved evaluation starts the clock (``since``), or, once ``t - since >= max_starved``, flags the instance: a
  ``starved`` decision (``starved_since``, ``max_starved``) and, for an enforced rule, an ``investigate``-severity
  page of class ``<rule>.starved`` ("... has had too little data to decide for 6h");
* a sufficient evaluation (the rule decides again, either way) ends it: a flagged instance gets a ``fed`` decision
  and its page resolves;
* an idle evaluation restarts the clock of an unflagged instance and leaves a flagged one flagged.

Defaults per tier (:data:`DEFAULT_MAX_STARVED_MS`), never shorter than the rule's window plus its baseline and its
cohort metric's span (a window cannot be asked to fill faster than it spans); ``max_starved: off`` turns it off.
Drift rules and the ``.srm`` companions have none (a detector warms up by design; a withheld comparison has its own page).

Deterministic like the lifecycle: the clock is the evaluation instants (event time). Skipping quiet instants
(``rules.instants``) is invisible here: a clock's instants are skipped only after one that saw no data in any
window, which restarted every unflagged clock of its rules, and an idle instant leaves a flagged one as it is.
"""

from __future__ import annotations

from functools import lru_cache

from rules.durations import format_duration
from rules.metric_names import COHORT_METRICS, cohort_span_ms, parse_metric
from rules.outputs import SEVERITY, decision, iso, stable_id
from rules.policy import Outputs
from rules.state import FeatureState

__all__ = ["DEFAULT_MAX_STARVED_MS", "max_starved_ms", "track", "end"]

_HOUR_MS = 3_600_000
DEFAULT_MAX_STARVED_MS = {"kill": 6 * _HOUR_MS, "pause": 12 * _HOUR_MS, "investigate": 24 * _HOUR_MS}


def max_starved_ms(rule) -> int | None:
    """How long ``rule`` may stay starved before it pages; None when it never does."""
    if rule.drift is not None or rule.srm_of is not None or rule.max_starved_ms == 0:
        return None
    if rule.max_starved_ms is not None:
        return rule.max_starved_ms
    return max(DEFAULT_MAX_STARVED_MS[rule.tier], rule.window_ms + (rule.baseline_ms or 0) + _span_ms(rule.metric))


@lru_cache(maxsize=1024)
def _span_ms(metric: str | None) -> int:
    """A cohort metric's span (``rules.cohort``): its value needs that long after the window too."""
    base, param = parse_metric(metric) if metric else (None, None)
    return cohort_span_ms(param) if base in COHORT_METRICS else 0


def track(out: Outputs, fs: FeatureState, bound, feature: str, phase: str, group: tuple[str, ...], t: int,
          ev) -> None:  # fmt: skip
    """Apply one evaluation of ``bound``'s rule at ``t`` to its starvation clock (see the module docstring)."""
    limit = max_starved_ms(bound.rule)
    if limit is None:
        return
    key = (bound.ruleset.name, bound.rule.id, phase, group)
    entry = fs.starving.get(key)
    if ev.verdict is None and ev.live:
        if entry is None:
            fs.starving[key] = [t, False]
        elif not entry[1] and t - entry[0] >= limit:
            entry[1] = True
            _emit(out, bound, feature, phase, group, t, ev, "starved", entry[0], limit)
        return
    if entry is None or (ev.verdict is None and entry[1]):
        return  # idle: a flagged rule stays starved until it decides again
    del fs.starving[key]
    if entry[1]:
        _emit(out, bound, feature, phase, group, t, ev, "fed", entry[0], limit)


def end(out: Outputs, fs: FeatureState, bound, feature: str, key, t: int, cause: str) -> None:
    """Drop the starvation clock of ``key`` (a rule removed by a reload); a flagged one ends with ``fed``."""
    entry = fs.starving.pop(key, None)
    if entry is not None and entry[1] and bound is not None:
        limit = max_starved_ms(bound.rule) or 0
        _emit(out, bound, feature, key[2], key[3], t, None, "fed", entry[0], limit, cause=cause)


def _emit(out: Outputs, bound, feature: str, phase: str, group: tuple[str, ...], t: int, ev, transition: str,
          since: int, limit: int, cause: str | None = None) -> None:  # fmt: skip
    rule = bound.rule
    extra = {"starved_since": iso(since), "max_starved": format_duration(limit)}
    if cause is not None:
        extra["cause"] = cause
    d = decision(
        t=t, ruleset=bound.ruleset, rule=rule, feature=feature, phase=phase, group=dict(zip(rule.group_by, group)),
        transition=transition, metric=bound.metric, value=ev.value if ev is not None else None,
        samples=ev.samples if ev is not None else 0, window_start=ev.window_start if ev is not None else t,
        window_end=ev.window_end if ev is not None else t, extra=extra,
    )  # fmt: skip
    where = f"{bound.ruleset.name}/{rule.id} on {feature}/{phase}" + "".join(
        f" [{k}={v}]" for k, v in d["group"].items()
    )
    if transition == "starved":
        d["summary"] = (f"{where} has had too little data to decide for {format_duration(t - since)} "
                        f"({d['samples']} samples, needs {rule.min_samples}): this {rule.tier} rule cannot fire")
    else:
        d["summary"] = f"{where} decides again after {format_duration(t - since)} with too little data"
    out.decisions.append(d)
    if rule.mode == "shadow":
        return  # shadow rules log; they page nothing
    out.pages.append({
        "event_action": "trigger" if transition == "starved" else "resolve",
        "dedup_key": "rollguard-" + stable_id("starved", feature, phase, bound.ruleset.name, rule.id, d["group"],
                                              since),
        "payload": {
            "summary": d["summary"][:1024],
            "source": "rollguard",
            "severity": SEVERITY["investigate"],
            "timestamp": d["ts"],
            "component": feature,
            "group": phase,
            "class": f"{rule.id}.starved",
            "custom_details": {
                "ruleset": bound.ruleset.name, "tier": rule.tier, "segment_group": d["group"], "metric": d["metric"],
                "samples": d["samples"], "min_samples": rule.min_samples, "starved_since": iso(since),
                "max_starved": format_duration(limit), "decision_id": d["decision_id"],
            },
        },
    })  # fmt: skip
