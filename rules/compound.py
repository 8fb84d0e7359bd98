"""Compound rules (``all:`` / ``any:``): several conditions, one verdict, one lifecycle.

Each condition is a threshold rule of its own (``<id>#1``…, with the rule's window, clocks and groups) evaluated
for the same group at the same instant; their three-valued verdicts combine as in Kleene's logic, so a condition
without enough data never makes the rule fire and never clears it on its own:

* ``all``: false as soon as one condition is false, true when every one is true, else insufficient;
* ``any``: true as soon as one condition is true, false when every one is false, else insufficient.

The rule's value and samples are those of its *deciding* condition — the first whose verdict is the rule's (for an
insufficient rule, the first undecided one) — and ``details.conditions`` lists every condition's metric, line,
value, samples and verdict, so a decision shows the whole picture.

>>> from rules.evaluation import Evaluation
>>> mobile, desktop = Evaluation(True, 0.12, 300, 0, 10), Evaluation(False, 0.15, 500, 0, 10)
>>> combine("all", [mobile, desktop], [{"metric": "m"}, {"metric": "d"}], 0, 10).verdict
False
>>> ev = combine("any", [mobile, desktop], [{"metric": "m"}, {"metric": "d"}], 0, 10)
>>> ev.verdict, ev.value, [c["verdict"] for c in ev.details["conditions"]]
(True, 0.12, [True, False])
"""

from __future__ import annotations

from collections.abc import Sequence

from rules.evaluation import Evaluation

__all__ = ["combine", "condition_head", "describe"]


def describe(rule) -> str:
    """The rule's conditions as one line, e.g. ``all(acceptance_rate{platform = mobile} < 0.14, …)``: the
    ``metric`` its decisions, pages and gauges carry."""
    return f"{rule.combine}({', '.join(_one(c) for c in rule.conditions)})"


def _one(c) -> str:
    where = "{" + ", ".join(m.describe() for m in c.where) + "}" if c.where else ""
    line = f"[{c.threshold:g}, {c.threshold_high:g}]" if c.threshold_high is not None else f"{c.threshold:g}"
    return f"{c.metric}{where} {c.op} {line}"


def condition_head(c) -> dict:
    """What ``details.conditions`` says of a condition before its evaluation: metric, filter, op and line(s)."""
    head = {"metric": c.metric, "op": c.op, "threshold": c.threshold}
    if c.threshold_high is not None:
        head["threshold_high"] = c.threshold_high
    if c.where:
        head["where"] = [m.describe() for m in c.where]
    return head


def combine(kind: str, parts: Sequence[Evaluation], heads: Sequence[dict], t: int, window_ms: int) -> Evaluation:
    """One evaluation of a compound rule from its conditions' ``parts`` (in condition order) and their ``heads``
    (:func:`condition_head`)."""
    verdicts = [p.verdict for p in parts]
    if kind == "all":
        verdict = False if any(v is False for v in verdicts) else True if all(v is True for v in verdicts) else None
    else:
        verdict = True if any(v is True for v in verdicts) else False if all(v is False for v in verdicts) else None
    lead = next(p for p in parts if p.verdict is verdict)
    ev = Evaluation(verdict, lead.value, lead.samples, t - window_ms, t)
    ev.details["conditions"] = [
        {**head, "value": p.value, "samples": p.samples, "verdict": p.verdict, **p.details}
        for head, p in zip(heads, parts)
    ]
    ev.live = verdict is None and any(p.live or p.verdict is not None for p in parts)  # undecided, with data
    return ev
