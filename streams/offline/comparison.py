"""Compare two replays' outputs: which decisions, commands and pages a candidate rule set gains, loses or moves.

Pure functions over the records exactly as the replay writes them (CONTRACT §4). Records are matched by what a
responder sees — feature, phase, rule id, segment group and transition (decisions) or action (commands) — never by
rule set name, so renaming a rule set does not hide what changed. ``streams.offline.report`` renders the result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from rules.exceptions import RollguardError

__all__ = ["Change", "Diff", "ReportInputError", "diff_outputs", "Timestamp"]

Timestamp = int | str | datetime  # epoch milliseconds, RFC 3339 with offset, or an aware datetime
# What a reader looks at; pending and cleared are counted only, they happen at every flap of a condition.
NOTABLE = ("firing", "resolved", "inhibited", "held")
# Fields of a matched decision pair whose difference is a change of rule definition worth showing.
_DEFINITION_FIELDS = ("tier", "mode", "metric", "op", "threshold", "threshold_high", "resolve_threshold")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DECISION_FIELDS = ("ts", "ruleset", "rule_id", "tier", "mode", "feature", "phase", "transition")
_COMMAND_FIELDS = ("ts", "feature", "phase", "action", "rule_id")


class ReportInputError(RollguardError):
    """An output record handed to the report lacks a field or has a malformed time.

    The records should come straight from the replay; the message names the record so the producer can be fixed.
    """


@dataclass(frozen=True)
class Change:
    """One matched or unmatched output between sides A and B.

    ``status``: ``gained`` (only in B), ``lost`` (only in A), ``moved`` (matched, ``delta_ms`` = B − A ≠ 0),
    ``changed`` (matched at the same time, ``differences`` non-empty) or ``same``.
    """

    kind: str  # "decisions" | "commands" | "pages"
    status: str
    key: tuple
    a: Mapping | None
    b: Mapping | None
    ts_a: int | None = None  # epoch milliseconds
    ts_b: int | None = None
    differences: tuple[tuple[str, Any, Any], ...] = ()

    @property
    def delta_ms(self) -> int | None:
        return None if self.ts_a is None or self.ts_b is None else self.ts_b - self.ts_a

    @property
    def record(self) -> Mapping:
        return self.b if self.b is not None else self.a  # type: ignore[return-value]


@dataclass(frozen=True)
class Diff:
    """All changes between two replays, ordered by time, then kind, then match key."""

    changes: tuple[Change, ...]

    def select(self, kind: str, *statuses: str) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == kind and (not statuses or c.status in statuses))

    @property
    def differs(self) -> bool:
        return any(c.status != "same" for c in self.changes)


def _ms(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    dt = value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            dt = None
    if not isinstance(dt, datetime) or dt.tzinfo is None:
        raise ReportInputError(f"{where}: time {value!r} is not RFC 3339 with an offset nor epoch milliseconds")
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def _group_key(group: Any) -> tuple:
    return tuple(sorted((str(k), str(v)) for k, v in (group or {}).items()))


def _require(record: Any, fields: Sequence[str], where: str) -> Mapping:
    if not isinstance(record, Mapping):
        raise ReportInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in fields if f not in record]
    if missing:
        raise ReportInputError(f"{where}: missing field(s) {', '.join(missing)}; pass records as the replay wrote them")
    return record


def _page_fields(page: Mapping, where: str) -> Mapping:
    _require(page, ("event_action", "payload"), where)
    return _require(page["payload"], ("timestamp", "severity", "component", "group", "class"), f"{where}.payload")


def _key_decision(d: Mapping, _: Mapping) -> tuple:
    return (d["feature"], d["phase"], d["rule_id"], _group_key(d.get("group")), d["transition"])


def _key_command(c: Mapping, _: Mapping) -> tuple:
    return (c["feature"], c["phase"], c["rule_id"], c["action"])


def _key_page(p: Mapping, groups: Mapping) -> tuple:
    # dedup_key includes the ruleset, which may be renamed in B; match on what a responder sees instead, with the
    # segment group taken from the decision the page links to.
    pl = p["payload"]
    group = groups.get((pl.get("custom_details") or {}).get("decision_id"), ())
    return (pl["component"], pl["group"], pl["class"], group, p["event_action"], pl["severity"])


def _identity(r: Mapping) -> str:
    # Ties in time are broken by the deterministic ids (CONTRACT.md §4), never by input order.
    return str(r.get("decision_id") or r.get("command_id") or r.get("dedup_key") or "")


def _pair(kind: str, a: Sequence[Mapping], b: Sequence[Mapping], key_of, groups: tuple) -> list[Change]:
    """Match A and B records with equal keys: equal times first, the rest in time order; leftovers gain or lose."""
    sides: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, records in enumerate((a, b)):
        for i, r in enumerate(records):
            ts = _ms(r["payload"]["timestamp"] if kind == "pages" else r["ts"], f"{kind}[{i}] of {'AB'[side]}")
            sides[key_of(r, groups[side])][side].append((ts, _identity(r), r))
    changes = []
    for key, (xs, ys) in sides.items():
        xs.sort(key=lambda t: t[:2])
        ys.sort(key=lambda t: t[:2])
        matched, rest_a, rest_b, i, j = [], [], [], 0, 0
        while i < len(xs) and j < len(ys):  # merge of two sorted lists: pairs with equal times
            if xs[i][0] == ys[j][0]:
                matched.append((xs[i], ys[j]))
                i, j = i + 1, j + 1
            elif xs[i][0] < ys[j][0]:
                rest_a.append(xs[i])
                i += 1
            else:
                rest_b.append(ys[j])
                j += 1
        rest_a += xs[i:]
        rest_b += ys[j:]
        matched += zip(rest_a, rest_b)
        for (ta, _, ra), (tb, _, rb) in matched:
            diffs = tuple((f, ra.get(f), rb.get(f)) for f in _DEFINITION_FIELDS
                          if kind == "decisions" and ra.get(f) != rb.get(f))
            status = "moved" if ta != tb else "changed" if diffs else "same"
            changes.append(Change(kind, status, key, ra, rb, ta, tb, diffs))
        changes += [Change(kind, "lost", key, r, None, t) for t, _, r in rest_a[len(rest_b):]]
        changes += [Change(kind, "gained", key, None, r, None, t) for t, _, r in rest_b[len(rest_a):]]
    return changes


def _change_order(c: Change) -> tuple:
    ts = min(t for t in (c.ts_a, c.ts_b) if t is not None)
    return (ts, ("commands", "pages", "decisions").index(c.kind), repr(c.key), c.status, c.delta_ms or 0,
            _identity(c.record))


def diff_outputs(a: Mapping[str, Iterable[Mapping]], b: Mapping[str, Iterable[Mapping]]) -> Diff:
    """Compare two replays' outputs (``{"decisions": [...], "commands": [...], "pages": [...]}``).

    Decisions match on feature, phase, rule_id, group and transition (pending and cleared are ignored); commands on
    feature, phase, rule_id and action; pages on feature, phase, rule, group, event action and severity. The ruleset
    is not part of any key, so rules match by id even when B renames or splits its rulesets.

    >>> cmd = {"ts": "2026-11-02T10:42:00Z", "feature": "f", "phase": "p", "action": "rollback", "rule_id": "r"}
    >>> later = dict(cmd, ts="2026-11-02T10:54:00Z")
    >>> [(c.status, c.delta_ms) for c in diff_outputs({"commands": [cmd]}, {"commands": [later]}).changes]
    [('moved', 720000)]
    """
    lists: list[dict[str, list[Mapping]]] = []
    for side, outputs in zip("AB", (a, b)):
        decisions = [_require(d, _DECISION_FIELDS, f"decisions[{i}] of {side}")
                     for i, d in enumerate(outputs.get("decisions", ()))]
        lists.append({
            "decisions": [d for d in decisions if d["transition"] in NOTABLE],
            "commands": [_require(c, _COMMAND_FIELDS, f"commands[{i}] of {side}")
                         for i, c in enumerate(outputs.get("commands", ()))],
            "pages": [p for i, p in enumerate(outputs.get("pages", ())) if _page_fields(p, f"pages[{i}] of {side}")],
        })
    groups = tuple({d.get("decision_id"): _group_key(d.get("group")) for d in side["decisions"]} for side in lists)
    changes: list[Change] = []
    for kind, key_of in (("decisions", _key_decision), ("commands", _key_command), ("pages", _key_page)):
        changes += _pair(kind, lists[0][kind], lists[1][kind], key_of, groups)
    return Diff(tuple(sorted(changes, key=_change_order)))
