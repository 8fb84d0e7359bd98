"""Unit tests for rule packs, ``promtool test rules`` style: synthetic inputs, expected decisions at given times.

A cases file names rule files (relative to itself) and holds tests. Each test feeds explicit ``events`` and compact
``series`` (see :mod:`rules.series`) through the real :class:`~rules.engine.Engine` (``step`` then ``finish``, as a
finite replay does) and checks the decisions it made: ``expect`` lists decisions that must exist at given instants,
``expect_no`` decisions that must not happen, ``exact`` whether anything else may. The format reference with
examples is ``docs/rules-testing.md``.

Reading and validating a cases file is :mod:`rules.case_loader`; its parsed form :mod:`rules.cases`.

>>> import pathlib, tempfile
>>> from rules.case_loader import load_cases
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.yaml").write_text('''version: 1
... name: demo
... features: [f]
... rules:
...   - {id: leak, tier: kill, metric: "flag_count:pii_leak", op: ">", threshold: 0, window: 1m, min_samples: 0}
... ''')
>>> _ = (d / "r.test.yaml").write_text('''rule_files: [r.yaml]
... tests:
...   - name: one leak kills
...     feature: f
...     series: [{type: interaction, to: 10m, every: 10s, fields: {flags: {pii_leak: 1, _: 59}}}]
...     expect: [{at: 5m, rule: leak, transition: firing, command: rollback}]
... ''')
>>> [run_case(cf, case).passed for cf in [load_cases(d / "r.test.yaml")] for case in cf.cases]
[True]
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.cases import PROMOTION, STARVATION, Case, CasesFile, format_offset
from rules.engine import Engine, Observation
from rules.events import parse_ts
from rules.policy import Outputs

__all__ = ["CaseResult", "run_case", "compare", "never_evaluated"]


@dataclass
class CaseResult:
    name: str
    failures: list[str]  # one readable block per problem; empty when the test passed
    outputs: Outputs
    evaluated: set[tuple[str, str]]  # (ruleset, rule id) of every rule that had enough data to decide true or false

    @property
    def passed(self) -> bool:
        return not self.failures


def run_case(cf: CasesFile, case: Case) -> CaseResult:
    """Run one test through a fresh engine (``step`` over its inputs in event-time order, then ``finish``), exactly
    as ``rollguard replay`` runs the same events."""
    evaluated: set[tuple[str, str]] = set()

    def observe(o: Observation) -> None:  # coverage: a clean test proves little about rules that never had enough data
        if o.evaluation.verdict is not None:
            evaluated.add((o.bound.ruleset.name, o.bound.rule.id))

    engine = Engine(cf.rulesets, case.config, observer=observe)
    out = engine.step(case.inputs)
    out.extend(engine.finish())
    return CaseResult(case.name, compare(case, cf.start_ms, out), out, evaluated)


def never_evaluated(cf: CasesFile, results: list[CaseResult]) -> list[str]:
    """``ruleset/rule`` of the file's rules that no test gave enough data to decide (always *insufficient*)."""
    seen = set().union(*(r.evaluated for r in results))
    return [f"{rs.name}/{r.id}" for rs in cf.rulesets for r in rs.rules if (rs.name, r.id) not in seen]


def compare(case: Case, start: int, out: Outputs) -> list[str]:
    """What differs between the test's expectations and the engine's outputs, as readable blocks (empty: pass)."""
    commands = {c["decision_id"]: c["action"] for c in out.commands}
    pages: dict[str, str] = {}
    for p in out.pages:
        details = p["payload"]["custom_details"]
        pages.setdefault(details.get("decision_id") or details.get("held_decision_id"), p["event_action"])
    decided = [(parse_ts(d["ts"]) - start, d) for d in out.decisions]

    def line(t: int, d: dict) -> str:
        group = "".join(f" {k}={v}" for k, v in d["group"].items())
        value = "n/a" if d["value"] is None else f"{d['value']:.4g}"
        did = d["decision_id"]
        outputs = [f"command {commands[did]}"] if did in commands else []
        outputs += [f"page {pages[did]}"] if did in pages else []
        outputs += ["shadow"] if d["mode"] == "shadow" else []
        where = f"{d['ruleset']}/{d['rule_id']}  {d['feature']}/{d['phase']}"
        return (f"  at {format_offset(t):<7} {d['transition']:<9} {where}"
                f"{group}  value {value}  samples {d['samples']}" + "".join(f"  {o}" for o in outputs))  # fmt: skip

    def lines(hits: list, limit: int = 10) -> str:
        return "\n".join(line(t, d) for t, d in hits[:limit]) + ("\n  ..." if len(hits) > limit else "")

    failures = []
    for x in case.expect:
        hits = [(t, d) for t, d in decided if x.matches(d, t)]
        good = [(t, d) for t, d in hits if x.command in (None, commands.get(d["decision_id"], "none"))
                and x.page in (None, pages.get(d["decision_id"], "none"))]  # fmt: skip
        if good:
            continue
        if hits:
            failures.append(f"expected {x.describe()}\ngot the decision with other outputs:\n{lines(hits)}")
            continue
        ref = x.at if x.at is not None else x.lo if x.lo is not None else x.hi
        same = sorted((abs(t - ref), t, i) for i, (t, d) in enumerate(decided) if d["rule_id"] == x.rule)[:5]
        near = [decided[i] for _, _, i in sorted(same, key=lambda n: n[1:])]
        got = f"nearest decisions of {x.rule}:\n{lines(near)}" if near else f"{x.rule} made no decision at all"
        failures.append(f"expected {x.describe()}\ngot no such decision; {got}")
    for x in case.expect_no:
        hits = [(t, d) for t, d in decided if x.matches(d, t)]
        if hits:
            failures.append(f"expected no {x.describe()}\ngot:\n{lines(hits)}")
    if case.exact:
        listed = {x.rule for x in case.expect}
        # starvation decisions count only in a case about them (else every case would list its idle rules)
        starvation = any(x.transitions & STARVATION for x in case.expect)
        # and so do a promotion block's (else every case of a rule set with one would list its verdicts)
        promotion = any(x.transitions & PROMOTION for x in case.expect)
        extra = [(t, d) for t, d in decided if (case.exact == "all" or d["rule_id"] in listed)
                 and (starvation or d["transition"] not in STARVATION)
                 and (promotion or d["transition"] not in PROMOTION)
                 and not any(x.matches(d, t) for x in case.expect)]  # fmt: skip
        if extra:
            scope = "any rule" if case.exact == "all" else ", ".join(sorted(listed))
            failures.append(f"expected no other decision of {scope} (exact: {case.exact})\ngot also:\n{lines(extra)}")
    return failures
