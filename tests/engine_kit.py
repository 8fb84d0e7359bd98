"""Small builders for engine tests: traffic per minute, rule sets from inline YAML, output digests."""

from __future__ import annotations

from rules.engine import Engine, EngineConfig
from rules.decode import EvalRecord, Feedback, Interaction
from rules.events import Control, Event, row_event
from rules.loader import load_rules_text

T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z
MIN = 60_000


def as_row(ev: Event) -> Interaction | Feedback | EvalRecord:
    """The row (``EventParser.parse_rows``: a checked decoder record that reads like an Event) of ``ev``."""
    common = dict(event_id=ev.event_id, ts=ev.ts, feature=ev.feature, phase=ev.phase, segment=ev.segment,
                  user=ev.user, model_version=ev.model_version, prompt_version=ev.prompt_version,
                  variant=ev.variant)  # fmt: skip
    if ev.type == "interaction":
        row = Interaction(**common, outcome=ev.outcome, latency_ms=ev.latency_ms, tokens_in=ev.tokens_in,
                          tokens_out=ev.tokens_out, cost_usd=ev.cost_usd, confidence=ev.confidence, flags=ev.flags,
                          session_ms=ev.session_ms)  # fmt: skip
    elif ev.kind == "eval":
        row = EvalRecord(**common, label=ev.label, score=ev.score, n=ev.n, passed=ev.passed)
    else:
        row = Feedback(**common, kind=ev.kind, label=ev.label, score=ev.score, interaction_id=ev.interaction_id)
    assert row_event(row) == ev
    return row


def as_rows(items: list) -> tuple[list, list]:
    """(items with each Event as its row, their origins): what replay and the worker hand ``Engine.step``."""
    return [x if x.type == "control" else as_row(x) for x in items], [x.origin for x in items]


def rules(text: str, name: str = "t"):
    return load_rules_text(text, source=f"{name}.yaml")


RULES_HEAD = "version: 1\nname: t\nfeatures: ['*']\nrules:\n"  # four lines: a rule body starts on line 5


def rule_body(body: str):
    """Rule set ``t`` for every feature with the rules of ``body`` (YAML list items), loaded from ``t.yaml``."""
    return load_rules_text(RULES_HEAD + body, source="t.yaml")


def rule_errors(body: str) -> list[str]:
    """``line: message`` of each problem the loader finds in :func:`rule_body` of ``body`` (which must fail)."""
    import pytest

    from rules.loader import RulesInvalid

    with pytest.raises(RulesInvalid) as exc:
        rule_body(body)
    return [f"{e.line}: {e.message}" for e in exc.value.errors]


def interactions(minute: int, n: int, *, errors: int = 0, latency: float = 100.0, feature: str = "f",
                 phase: str = "p", segment: dict | None = None, flags: tuple = (), prefix: str = "") -> list[Event]:  # fmt: skip
    """``n`` interactions spread over one minute, the first ``errors`` of them failing."""
    out = []
    for i in range(n):
        ts = T0 + minute * MIN + (i * MIN) // max(n, 1)
        out.append(
            Event("interaction", f"{prefix}{feature}-{phase}-{minute}-{i}-{segment}", ts, feature, phase,
                  dict(segment or {}), f"user{i % 7}", None, None, "error" if i < errors else "ok", latency,
                  None, None, None, None, flags if i == 0 else ())  # fmt: skip
        )
    return out


def traffic(pattern: str, *, n: int = 20, **kw) -> list[Event]:
    """One minute per character: ``x`` bad minute (all errors), ``.`` good minute, ``_`` no traffic."""
    evs: list[Event] = []
    for m, c in enumerate(pattern):
        if c != "_":
            evs += interactions(m, n, errors=n if c == "x" else 0, **kw)
    return evs


def resume(minute: int, feature: str = "f", phase: str | None = "p") -> Control:
    return Control(f"resume-{minute}", T0 + minute * MIN, "resume", feature, phase, "fixed upstream", "oncall")


def run(rulesets, items, config: EngineConfig | None = None, batch: int | None = None):
    eng = Engine(rulesets, config or EngineConfig(allowed_lateness_ms=0))
    items = list(items)
    out = []
    if batch is None:
        o = eng.step(items)
        out.append(o)
    else:
        for i in range(0, len(items), batch):
            out.append(eng.step(items[i : i + batch]))
    out.append(eng.finish())
    decisions = [d for o in out for d in o.decisions]
    commands = [c for o in out for c in o.commands]
    pages = [p for o in out for p in o.pages]
    return eng, decisions, commands, pages


def timeline(decisions, rule: str | None = None) -> list[tuple[int, str]]:
    """(minute, transition) of each decision, optionally of one rule."""
    from datetime import datetime

    out = []
    for d in decisions:
        if rule is None or d["rule_id"] == rule:
            ms = int(datetime.fromisoformat(d["ts"].replace("Z", "+00:00")).timestamp() * 1000)
            out.append(((ms - T0) // MIN, d["transition"]))
    return out
