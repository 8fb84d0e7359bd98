"""Grafana annotations for rollguard decisions and commands: a pure mapping (no I/O, no clock).

What a person looking at a dashboard wants marked on the time axis: a rule **firing**, a kill **held** by the kill
breaker, a lower tier **inhibited** by a kill, an incident **resolved**, and every **command** (rollback, pause).
``pending`` and ``cleared`` decisions are noise on a graph and map to ``None``.

Each annotation is the body of Grafana's ``POST /api/annotations``: ``time`` (epoch ms: the decision's evaluation
instant, event time), ``tags`` (``rollguard``, ``feature:…``, ``phase:…``, ``tier:…``, ``transition:…`` or
``command:…``, ``ruleset:…``, ``rule:…``, and ``mode:…`` for decisions) and ``text`` (the rule-authored summary
the engine rendered, plus the value and threshold). A resolved incident (its `incident_start`, or a firing this process saw) becomes a region
(``time`` = when it fired, ``timeEnd`` = when it resolved). Nothing else of the record is copied: not the
operator or free-text reason of a resume, not the evidence ``details``.

Records are validated here, once: identifiers must be tag-safe names, so a malformed or hostile record raises
:class:`InvalidRecord` (the consumer counts and skips it) instead of producing a strange tag.

>>> cmd = {"command_id": "c1", "ts": "2026-11-02T10:05:00Z", "feature": "email-reply", "phase": "beta",
...        "action": "rollback", "ruleset": "latency", "rule_id": "p95-kill", "decision_id": "d1",
...        "reason": "P95 latency 2100 ms > 1500 ms"}
>>> annotation_for(cmd, "command")["tags"]
['rollguard', 'feature:email-reply', 'phase:beta', 'tier:kill', 'command:rollback', 'ruleset:latency', 'rule:p95-kill']
>>> annotation_for(dict(cmd, action="resume"), "command")
Traceback (most recent call last):
...
streams.grafana.annotations.InvalidRecord: command: action must be one of pause_rollout, promote_rollout, revert_model, rollback, shadow_only
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from rules.events import parse_ts
from rules.exceptions import RollguardError
from rules.outputs import ACTION_TIER, STARVATION_TRANSITIONS, canonical
from rules.promotion import PROMOTE, SIGNOFF_TRANSITIONS, VERDICTS
from rules.promotion_loader import PROMOTION_RULE_ID

__all__ = ["annotation_for", "InvalidRecord", "AnnotationPlanner", "ANNOTATED_TRANSITIONS", "KINDS"]

KINDS = ("decision", "command")
ANNOTATED_TRANSITIONS = ("firing", "held", "inhibited", "resolved")
# not marked: about a rule's data (rules.starvation), a promotion that is not ready, sign-offs (the ready verdict
# after them is); a promotion's ``ready`` is marked
_TRANSITIONS = frozenset({"pending", "cleared", *ANNOTATED_TRANSITIONS, *STARVATION_TRANSITIONS, *VERDICTS,
                          *SIGNOFF_TRANSITIONS})  # fmt: skip
_STARTS = frozenset({"firing", "held", "inhibited"})  # the instance is in the firing state from then on
_TIERS = frozenset({"investigate", "pause", "kill"})
_MODES = frozenset({"enforce", "shadow"})
_TIER_OF_ACTION = dict(ACTION_TIER) | {PROMOTE: PROMOTION_RULE_ID}
# feature and phase charset (CONTRACT §1); rule set names and rule ids are narrower subsets of it
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_TEXT = 1024


class InvalidRecord(RollguardError):
    """A decision or command record lacks a field or has one of the wrong shape; it is skipped and counted."""


def annotation_for(record: Any, kind: str, *, since_ms: int | None = None,
                   dashboard_uid: str | None = None) -> dict | None:  # fmt: skip
    """The annotation body for one record of the decisions (``kind="decision"``) or commands topic, or ``None``
    when the record is not worth a mark (pending, cleared). ``since_ms``: when the incident a ``resolved``
    decision ends began firing, if known; it makes the annotation a region."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not isinstance(record, dict):
        raise InvalidRecord(f"{kind}: not a JSON object")
    feature, phase = _name(record, "feature", kind), _name(record, "phase", kind)
    ruleset, rule_id = _name(record, "ruleset", kind), _name(record, "rule_id", kind)
    t = _time(record, kind)
    if kind == "command":
        action = _choice(record, "action", _TIER_OF_ACTION, kind)
        tier = _TIER_OF_ACTION[action]
        tags = [f"tier:{tier}", f"command:{action}"]
        text = f"{action} {feature}/{phase}: {_text(record, 'reason', kind)}"
        body: dict[str, Any] = {"time": t}
    else:
        transition = _choice(record, "transition", _TRANSITIONS, kind)
        if transition == "ready" and rule_id == PROMOTION_RULE_ID:  # rules.promotion: the phase may go on
            body = {"time": t, "tags": ["rollguard", f"feature:{feature}", f"phase:{phase}", "tier:promotion",
                                        "transition:ready", f"ruleset:{ruleset}", f"rule:{rule_id}"],
                    "text": f"promotion ready: {_text(record, 'summary', kind)}"[:MAX_TEXT]}  # fmt: skip
            if dashboard_uid:
                body["dashboardUID"] = dashboard_uid
            return body
        if transition not in ANNOTATED_TRANSITIONS:
            return None
        tier = _choice(record, "tier", _TIERS, kind)
        mode = _choice(record, "mode", _MODES, kind)
        tags = [f"tier:{tier}", f"transition:{transition}"]
        text = f"{tier} {transition}: {_text(record, 'summary', kind)}{_evidence(record, kind)}"
        if transition == "resolved" and record.get("cause") == "operator_resume":
            text += " (operator resume)"
        body = {"time": t}
        if transition == "resolved" and since_ms is not None and since_ms <= t:
            body = {"time": since_ms, "timeEnd": t}
        tags.append(f"mode:{mode}")
    body["tags"] = ["rollguard", f"feature:{feature}", f"phase:{phase}", *tags[:2], f"ruleset:{ruleset}",
                    f"rule:{rule_id}", *tags[2:]]  # fmt: skip
    body["text"] = text[:MAX_TEXT]
    if dashboard_uid:
        body["dashboardUID"] = dashboard_uid
    return body


def _name(record: dict, key: str, kind: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidRecord(f"{kind}: {key} missing or not a name of [A-Za-z0-9._-]")
    return value


def _choice(record: dict, key: str, allowed, kind: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRecord(f"{kind}: {key} must be one of {', '.join(sorted(allowed))}")
    return value


def _time(record: dict, kind: str) -> int:
    try:
        return parse_ts(record.get("ts"))
    except ValueError:
        raise InvalidRecord(f"{kind}: ts missing or not an RFC 3339 time") from None


def _text(record: dict, key: str, kind: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise InvalidRecord(f"{kind}: {key} missing or not a string")
    return " ".join(value.split())  # one line: Grafana shows it in a tooltip


def _evidence(record: dict, kind: str) -> str:
    value, threshold, op = record.get("value"), record.get("threshold"), record.get("op")
    high = record.get("threshold_high")
    for key, x in (("value", value), ("threshold", threshold), ("threshold_high", high)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, int | float)):
            raise InvalidRecord(f"{kind}: {key} must be a number or null")
    if op is not None and op not in (">", ">=", "<", "<=", "between", "outside"):
        raise InvalidRecord(f"{kind}: op must be one of > >= < <= between outside or null")
    if value is None:
        return ""
    if threshold is None or op is None:
        return f" (value {_num(value)})"
    if high is not None:
        return f" (value {_num(value)} {op} [{_num(threshold)}, {_num(high)}])"
    return f" (value {_num(value)} {op} threshold {_num(threshold)})"


def _num(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


class AnnotationPlanner:
    """The consumer's memory between records, kept apart from Kafka and HTTP so it is tested as plain calls.

    * **Incident starts**: when each (ruleset, rule, feature, phase, group) instance began firing, from the
      firing / held / inhibited decisions seen, so the ``resolved`` decision that ends it becomes a region. Resolved
      decisions carry ``incident_start`` (when the condition first held), which wins; the memory serves records
      written before that field existed.
    * **Duplicates**: the worker re-publishes identical records after a crash (docs/live.md: consumers
      de-duplicate on ``decision_id`` / ``command_id``); the last ``remember`` ids posted are skipped.

    :meth:`plan` never changes this memory; :meth:`posted` does, once Grafana accepted the annotation, so a
    record whose post failed is planned again, identically, on retry.
    """

    def __init__(self, dashboard_uid: str | None = None, remember: int = 10_000) -> None:
        self.dashboard_uid = dashboard_uid
        self.remember = remember
        self._starts: dict[bytes, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def plan(self, record: Any, kind: str) -> dict | None:
        """The annotation to post for ``record``, or ``None`` (not annotated, or a duplicate)."""
        body = annotation_for(record, kind, since_ms=self._since(record, kind), dashboard_uid=self.dashboard_uid)
        if body is None or self._id(record, kind) in self._seen:
            return None
        return body

    def is_duplicate(self, record: Any, kind: str) -> bool:
        return isinstance(record, dict) and self._id(record, kind) in self._seen

    def posted(self, record: dict, kind: str) -> None:
        """Record that ``record``'s annotation is in Grafana."""
        rid = self._id(record, kind)
        if rid:
            self._seen[rid] = None
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        if kind == "decision":
            key = _instance(record)
            if record["transition"] in _STARTS:
                self._starts.setdefault(key, parse_ts(record["ts"]))
            elif record["transition"] == "resolved":
                self._starts.pop(key, None)

    def _since(self, record: Any, kind: str) -> int | None:
        if kind != "decision" or not isinstance(record, dict) or record.get("transition") != "resolved":
            return None
        start = record.get("incident_start")  # the worker says when the incident began (since its chain fields)
        if isinstance(start, str):
            try:
                return parse_ts(start)
            except (ValueError, TypeError):
                pass
        return self._starts.get(_instance(record))

    @staticmethod
    def _id(record: dict, kind: str) -> str | None:
        rid = record.get("decision_id" if kind == "decision" else "command_id")
        return f"{kind}:{rid}" if isinstance(rid, str) and rid else None


def _instance(record: dict) -> bytes:
    group = record.get("group") if isinstance(record.get("group"), dict) else {}
    return canonical([record.get("ruleset"), record.get("rule_id"), record.get("feature"), record.get("phase"), group])
