"""Decisions, commands and pages (CONTRACT §4) with deterministic ids.

Ids are hashes of what identifies the thing, never of wall-clock time or counters, so a replay — or a worker that
re-publishes after a crash — produces the same ids: a decision by (ruleset, rule, feature, phase, group, transition,
instant); a command and a page ``dedup_key`` by the *incident* (the instant its pending run began).

>>> iso(1793613600000), iso(1793613600123)
('2026-11-02T10:00:00Z', '2026-11-02T10:00:00.123Z')
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import orjson

from rules.durations import format_duration

__all__ = ["iso", "stable_id", "decision", "command", "page", "render_summary", "SEVERITY", "ACTIONS", "RULE_ACTIONS",
           "ACTION_TIER", "canonical",
           "STARVATION_TRANSITIONS"]

# the decisions about a rule's data rather than its condition (rules.starvation); the others are lifecycle transitions
STARVATION_TRANSITIONS = ("starved", "fed")
SEVERITY = {"kill": "critical", "pause": "error", "investigate": "warning"}
ACTIONS = {"kill": "rollback", "pause": "pause_rollout"}  # a tier's command, unless its rule names another action
# what a rule's ``action`` may name instead, per tier: a kill may put the feature in shadow-only mode (outputs kept
# out of users' sight, still generated and logged), a pause may revert the model version without touching the
# feature (and hold the expansion); each command keeps its tier's latch
RULE_ACTIONS = {"kill": ("rollback", "shadow_only"), "pause": ("pause_rollout", "revert_model")}
ACTION_TIER = {action: tier for tier, actions in RULE_ACTIONS.items() for action in actions}


def iso(ms: int) -> str:
    """RFC 3339 UTC with millisecond precision only when needed."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ms % 1000:03d}Z" if ms % 1000 else base + "Z"


def canonical(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no whitespace): what hashes and signatures are computed over."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def stable_id(*parts: Any) -> str:
    return hashlib.sha256(canonical(list(parts))).hexdigest()[:32]


def render_summary(template: str | None, fields: dict[str, Any]) -> str:
    """Fill a rule's summary template; a value that cannot take a format spec falls back to a plain sentence."""
    if template:
        try:
            return template.format(**fields)
        except (ValueError, TypeError, KeyError, IndexError):
            pass  # e.g. {value:.1%} with value None on an insufficient drift rule
    head = (f"{fields['tier']}: {fields['ruleset']}/{fields['rule_id']} on {fields['feature']}/{fields['phase']}"
            f"{_group_text(fields['group'])}")  # fmt: skip
    conditions = (fields.get("details") or {}).get("conditions")
    if conditions:  # a compound rule (rules.compound): each condition's value against its line
        kind = fields["metric"].split("(", 1)[0]
        return f"{head}: {kind} of " + "; ".join(
            f"{c['metric']}{'{' + ', '.join(c['where']) + '}' if c.get('where') else ''} = {_num(c['value'])} "
            f"{c['op']} {_threshold_text(c)}" for c in conditions)  # fmt: skip
    return (
        f"{head}: {fields['metric']} = {_num(fields['value'])}"
        + (f" {fields['op']} {_threshold_text(fields)}" if fields.get("op") else "")
    )


def _threshold_text(fields: dict) -> str:
    """``0.05``, or a band: ``[0.15, 0.165]``."""
    if fields.get("threshold_high") is not None:
        return f"[{_num(fields['threshold'])}, {_num(fields['threshold_high'])}]"
    return _num(fields["threshold"])


def _group_text(group: dict) -> str:
    return " [" + ", ".join(f"{k}={v}" for k, v in group.items()) + "]" if group else ""


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def decision(
    *, t: int, ruleset, rule, feature: str, phase: str, group: dict, transition: str, metric: str,
    value: float | None, samples: int, window_start: int, window_end: int, details: dict | None = None,
    extra: dict | None = None,
) -> dict:  # fmt: skip
    d = {
        "decision_id": stable_id("decision", ruleset.name, rule.id, feature, phase, group, transition, t),
        "ts": iso(t),
        "ruleset": ruleset.name,
        "ruleset_version": ruleset.version,
        "rule_id": rule.id,
        "tier": rule.tier,
        "mode": rule.mode,
        "feature": feature,
        "phase": phase,
        "group": group,
        "transition": transition,
        "metric": metric,
        "value": value,
        "threshold": rule.threshold,
        **({"threshold_high": rule.threshold_high} if rule.threshold_high is not None else {}),
        "op": rule.op,
        "samples": samples,
        "window_start": iso(window_start),
        "window_end": iso(window_end),
    }
    fields = dict(d, window=format_duration(window_end - window_start), details=details or {},
                  threshold_high=rule.threshold_high)
    d["summary"] = render_summary(rule.summary, fields)
    if rule.resolve_threshold is not None:
        d["resolve_threshold"] = rule.resolve_threshold
    if rule.runbook:
        d["runbook"] = rule.runbook
    if details:
        d["details"] = details
    if extra:
        d.update(extra)
    return d


def command(*, tier: str, dec: dict, incident: int, action: str | None = None) -> dict:
    """A command, unsealed: ``rules.seal`` adds ``seq``, ``issued_at``, the signature and the chain fields.
    ``action``: the rule's own (:data:`RULE_ACTIONS`), else the tier's."""
    action = action or ACTIONS[tier]
    return {
        "command_id": stable_id(
            "command", dec["feature"], dec["phase"], action, dec["ruleset"], dec["rule_id"], dec["group"], incident,
        ),  # fmt: skip
        "ts": dec["ts"],
        "feature": dec["feature"],
        "phase": dec["phase"],
        "action": action,
        "ruleset": dec["ruleset"],
        "rule_id": dec["rule_id"],
        "decision_id": dec["decision_id"],
        "reason": dec["summary"],
    }


def page(*, action: str, dec: dict, incident: int, severity: str | None = None) -> dict:
    p = {
        "event_action": action,
        "dedup_key": "rollguard-"
        + stable_id("page", dec["feature"], dec["phase"], dec["ruleset"], dec["rule_id"], dec["group"], incident),
        "payload": {
            "summary": dec["summary"][:1024],
            "source": "rollguard",
            "severity": severity or SEVERITY[dec["tier"]],
            "timestamp": dec["ts"],
            "component": dec["feature"],
            "group": dec["phase"],
            "class": dec["rule_id"],
            "custom_details": {
                "ruleset": dec["ruleset"],
                "tier": dec["tier"],
                "segment_group": dec["group"],
                "metric": dec["metric"],
                "value": dec["value"],
                "threshold": dec["threshold"],
                **({"threshold_high": dec["threshold_high"]} if "threshold_high" in dec else {}),
                **({"resolve_threshold": dec["resolve_threshold"]} if "resolve_threshold" in dec else {}),
                "op": dec["op"],
                "samples": dec["samples"],
                "window": f"{dec['window_start']} .. {dec['window_end']}",
                "decision_id": dec["decision_id"],
            },
        },
    }
    if dec.get("runbook"):
        p["links"] = [{"href": dec["runbook"], "text": "runbook"}]
    return p
