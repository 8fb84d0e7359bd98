"""The report's promotion section (rules.promotion): per rule set and feature/phase, when the phase became ready to
go on (or why it never did), the verdict's changes over the replay, and the last verdict as a checklist.

>>> d = {"ts": "2026-11-16T01:00:00Z", "ruleset": "beta", "feature": "f", "phase": "beta", "transition": "ready",
...      "summary": "f/beta may be promoted to ga", "promotion": {"to": "ga", "blocking": [], "waiting": [],
...      "gates": [{"rule_id": "gate-acc", "status": "pass", "value": 0.18, "op": "<", "threshold": 0.15}],
...      "signoffs": {"required": ["pm"], "missing": [], "signed": {"pm": {"operator": "ann", "at": "x"}}}}}
>>> p = Promotions()
>>> p.add(d)
>>> print("\\n".join(p.render(10)[3:6]))
**beta** · f / beta → ga: **ready** at 2026-11-16 01:00:00Z (first ready 2026-11-16 01:00:00Z); 1 verdict change.
<BLANKLINE>
Last verdict: gate `gate-acc` passes (0.18, fails when < 0.15); sign-off pm by ann.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from rules.promotion import SIGNOFF_TRANSITIONS, VERDICTS
from rules.promotion_loader import PROMOTION_RULE_ID
from rules.timestamps import parse_ts

__all__ = ["Promotions", "is_promotion"]


def is_promotion(d: Mapping) -> bool:
    """Whether a decision is a promotion block's (a verdict or a sign-off), not a rule's."""
    return d.get("rule_id") == PROMOTION_RULE_ID and d.get("transition") in (*VERDICTS, *SIGNOFF_TRANSITIONS)


class Promotions:
    """The promotion decisions of one side of a replay, in one pass."""

    def __init__(self) -> None:
        self.changes: dict[tuple, list[Mapping]] = defaultdict(list)
        self.signoffs: dict[tuple, list[Mapping]] = defaultdict(list)

    def add(self, d: Mapping) -> None:
        key = (d["ruleset"], d["feature"], d["phase"])
        (self.signoffs if d["transition"] in SIGNOFF_TRANSITIONS else self.changes)[key].append(d)

    def render(self, cap: int, label: str = "") -> list[str]:
        if not self.changes and not self.signoffs:
            return []
        lines = ["", f"## Promotions{f' ({label})' if label else ''}"]
        for key in sorted(set(self.changes) | set(self.signoffs)):
            rs, feature, phase = key
            changes = sorted(self.changes.get(key, ()), key=lambda d: parse_ts(d["ts"]))
            last = changes[-1] if changes else None
            to = last["promotion"]["to"] if last else "?"
            ready = [d for d in changes if d["transition"] == "ready"]
            head = f"**{rs}** · {feature} / {phase} → {to}: "
            if last is None:
                head += "no verdict yet (no promotion instant passed)"
            else:
                head += f"**{last['transition']}** at {_ts(last['ts'])}"
                head += f" (first ready {_ts(ready[0]['ts'])})" if ready else " (never ready)"
                head += f"; {len(changes):,} verdict change{'s' if len(changes) != 1 else ''}."
            lines += ["", head]
            if last is not None:
                lines += ["", "Last verdict: " + _checklist(last["promotion"]) + "."]
            signed = self.signoffs.get(key, ())
            if signed:
                lines += ["", "Sign-offs: " + ", ".join(
                    f"{d['role']} {'withdrawn' if d['transition'] == 'signoff_revoked' else 'signed'} at "
                    f"{_ts(d['ts'])}" + (f" by {d['operator']}" if d.get("operator") else "") for d in signed) + "."]
            rows = [(_ts(d["ts"]), d["transition"], "; ".join(d["promotion"]["blocking"] + d["promotion"]["waiting"])
                     or "—") for d in changes[-cap:]]  # fmt: skip
            if len(changes) > 1:
                lines += ["", "| time | verdict | reasons |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
                if len(changes) > cap:
                    lines.append(f"\n… {len(changes) - cap:,} earlier changes, see decisions.jsonl")
        return lines


def _ts(ts: str) -> str:
    return ts.replace("T", " ")


def _checklist(p: Mapping) -> str:
    parts = []
    if p.get("latch"):
        parts.append(f"phase {'killed' if p['latch'] == 'kill' else 'paused'}")
    for g in p["gates"]:
        status = {"pass": "passes", "fail": "fails", "inconclusive": "inconclusive"}[g["status"]]
        line = f"[{_num(g['threshold'])}, {_num(g['threshold_high'])}]" if "threshold_high" in g \
            else f"{g['op']} {_num(g['threshold'])}"  # fmt: skip
        parts.append(f"gate `{g['rule_id']}` {status} ({_num(g['value'])}, fails when {line})")
    parts += [w for w in p.get("waiting", ()) if not w.startswith("gate ")]
    s = p["signoffs"]
    parts += [f"sign-off {r} by {s['signed'][r].get('operator', 'someone')}" for r in s["required"] if r in s["signed"]]
    parts += [f"sign-off {r} **missing**" for r in s["missing"]]
    return "; ".join(parts)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)
