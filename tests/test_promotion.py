"""Promotion verdicts and sign-offs (rules.promotion, rules.promotion_loader): the ``promotion:`` block of a rule set.

Pure-logic tests drive the engine with hand-made events; the seed's P2 -> P3 promotion runs on a generated two-week
closed beta through the catalogue's closed-beta rule set.
"""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from rules.control_auth import sign_control
from rules.engine import Engine, EngineConfig
from rules.events import Control, Event, EventParser, Pseudonymizer
from rules.exceptions import InvalidEvent
from rules.loader import CATALOG, RulesInvalid, load_rules, load_rules_text
from rules.outputs import iso
from rules.state import FeatureState
from rules.verify import VerifierState, verify_command
from tests.reference_engine import ReferenceEngine

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z

RULES = """
version: 1
name: beta
features: ["f"]
phases: [beta]
rules:
  - {id: gate-acc, tier: investigate, mode: shadow, metric: acceptance_rate, op: "<", threshold: 0.15, window: 1h,
     every: 10m, min_samples: 20}
  - {id: errs, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 10m, min_samples: 20}
promotion:
  to: ga
  gates: [gate-acc]
  min_exposure: {time: 2h, interactions: 100, users: 5}
  signoffs: [pm, legal]
"""


def ruleset(text: str = RULES, **replace: str):
    for old, new in replace.items():
        text = text.replace(old, new)
    return load_rules_text(text)


def stream(hours: float, accept=lambda t: True, error=lambda t: False, phase: str = "beta") -> list[Event]:
    """An interaction every 20 s with its suggestion outcome 1 ms later, seven users round robin."""
    out = []
    for k in range(int(hours * HOUR // 20_000)):
        t = T0 + k * 20_000
        out.append(Event("interaction", f"i{k}", t, "f", phase, {}, f"u{k % 7}", None, None,
                         "error" if error(t) else "ok"))  # fmt: skip
        out.append(Event("feedback", f"s{k}", t + 1, "f", phase, {}, None, None, None, kind="suggestion",
                         label="accepted" if accept(t) else "rejected"))  # fmt: skip
    return out


def signoff(at: int, role: str, revoke: bool = False, phase: str = "beta", event_id: str | None = None) -> Control:
    return Control(event_id or f"so-{role}-{at}", at, "signoff", "f", phase, "reviewed the beta", f"{role}-lead",
                   role=role, revoke=revoke)  # fmt: skip


def with_controls(events: list[Event], controls: list[Control]) -> list:
    """Controls placed in arrival order at their time."""
    return sorted(events + controls, key=lambda x: (x.ts, x.type != "control"))


def run(rs, items, config: EngineConfig | None = None, engine=Engine):
    eng = engine(rs, config)
    out = eng.step(items)
    out.extend(eng.finish())
    return eng, out


def verdicts(out, signoffs: bool = False) -> list[tuple[int, str]]:
    """(offset, transition) of the promotion's verdicts (and, with ``signoffs``, its sign-off decisions)."""
    keep = ("ready", "blocked", "inconclusive") + (("signed_off", "signoff_revoked") if signoffs else ())
    return [((_ms(d["ts"]) - T0), d["transition"]) for d in out.decisions if d["rule_id"] == "promotion"
            and d["transition"] in keep]  # fmt: skip


def _ms(ts: str) -> int:
    from rules.timestamps import parse_ts

    return parse_ts(ts)


# --- loading ------------------------------------------------------------------------------------------------------


def test_a_promotion_block_loads_with_its_defaults():
    [rs] = ruleset()
    p = rs.promotion
    assert (p.to, p.gates, p.every_ms, p.hold_for_ms, p.min_time_ms) == ("ga", ("gate-acc",), 10 * MIN, 0, 2 * HOUR)
    assert (p.min_interactions, p.min_users, p.signoffs, p.auto) == (100, 5, ("pm", "legal"), False)
    [rs2] = ruleset(**{"  gates: [gate-acc]": "  gates: [gate-acc, errs]"})
    assert rs2.promotion.every_ms == 10 * MIN  # the least common multiple of the gates' every (10m, 1m)


@pytest.mark.parametrize("change, message", [
    ({"phases: [beta]": "phases: [beta, ga2]"}, "exactly one phase"),
    ({"  to: ga": "  to: beta"}, "is the phase promoted from"),
    ({"gates: [gate-acc]": "gates: [gate-ac]"}, "no threshold rule 'gate-ac' in this rule set"),
    ({"promotion:\n": "promotion:\n  every: 15m\n"}, "not a multiple of a gate's every (10m)"),
    ({"{time: 2h, interactions: 100, users: 5}": "{interactions: 100}"}, "give time too"),
    ({"signoffs: [pm, legal]": "signoffs: [pm, Legal]"}, "must be a string matching"),
    ({"  signoffs": "  auto: yes please\n  signoffs"}, "promotion.auto: expected true or false"),
    ({"  signoffs": "  hold: 1d\n  signoffs"}, "unknown key 'hold' (did you mean 'hold_for'?)"),
    ({"id: errs,": "id: promotion,"}, "taken by the rule set's promotion decisions"),
])  # fmt: skip
def test_a_wrong_promotion_block_is_refused_with_its_line(change, message):
    with pytest.raises(RulesInvalid) as e:
        ruleset(**change)
    assert message in str(e.value), str(e.value)
    assert all(err.line for err in e.value.errors)


def test_a_drift_rule_cannot_be_a_gate():
    text = RULES.replace("rules:\n", "rules:\n  - {id: d, tier: investigate, drift: {detector: adwin, signal: error}}\n")
    with pytest.raises(RulesInvalid, match="'d' is a drift rule; a gate is a threshold rule"):
        load_rules_text(text.replace("gates: [gate-acc]", "gates: [gate-acc, d]"))


# --- verdicts -----------------------------------------------------------------------------------------------------


def test_blocked_until_the_gate_passes_and_every_role_signed_then_ready():
    """Acceptance 10 % for the first 90 minutes, then 50 %; pm signs at 30m, legal at 3h05."""
    evs = stream(5, accept=lambda t: t >= T0 + 90 * MIN or (t // 20_000) % 10 == 0)
    _, out = run(ruleset(), with_controls(evs, [signoff(T0 + 30 * MIN, "pm"), signoff(T0 + 3 * HOUR + 5 * MIN, "legal")]))
    v = verdicts(out)
    assert v[0] == (0, "blocked")  # sign-offs are missing from the start, whatever the data says
    ready = [t for t, x in v if x == "ready"]
    assert ready == [3 * HOUR + 10 * MIN]  # the first instant after legal signed (a sign-off counts after its ts)
    first = {d["transition"]: d for d in reversed(out.decisions) if d["rule_id"] == "promotion"}
    assert first["signed_off"]["role"] in ("pm", "legal") and first["signed_off"]["operator"].endswith("-lead")
    blocked = [d for d in out.decisions if d["transition"] == "blocked"]
    assert any("gate gate-acc fails" in d["promotion"]["blocking"] for d in blocked)
    assert any(d["promotion"]["blocking"] == ["sign-off legal missing"] for d in blocked)
    r = next(d for d in out.decisions if d["transition"] == "ready")
    assert r["promotion"]["gates"][0]["status"] == "pass" and r["promotion"]["signoffs"]["missing"] == []
    assert r["promotion"]["exposure"]["interactions"] >= 100 and r["promotion"]["exposure"]["users"] == 7
    assert r["summary"] == "f/beta may be promoted to ga: every gate passes, signed off by pm, legal"
    assert out.commands == []  # no auto: a human promotes


def test_decisions_are_recorded_when_the_verdict_or_its_reasons_change_not_every_instant():
    _, out = run(ruleset(), stream(6))
    v = verdicts(out)
    assert len(v) < 6 and all(x == "blocked" for _, x in v)  # 36 instants, a handful of changes
    reasons = [d["promotion"]["blocking"] + d["promotion"]["waiting"] for d in out.decisions]
    assert all(a != b for a, b in zip(reasons, reasons[1:]))


def test_without_data_the_gate_is_inconclusive_never_ready():
    """Every role signed, exposure met, but the gate rule has too few samples: inconclusive, never ready."""
    evs = [e for e in stream(4) if e.type == "interaction" or e.ts % 40_000 == 1]  # a reply every 40 s...
    rs = ruleset(**{"min_samples: 20}": "min_samples: 500}"})  # ...against 500 needed
    _, out = run(rs, with_controls(evs, [signoff(T0 - 1, "pm"), signoff(T0 - 1, "legal")]))
    v = verdicts(out)
    assert v and {x for _, x in v} == {"inconclusive"}
    gate = out.decisions[-1]["promotion"]["gates"][0]
    assert gate["status"] == "inconclusive" and gate["why"].startswith("too few samples")


def test_a_kill_latch_blocks_the_promotion_at_the_instant_it_fires_and_until_resumed():
    errors = lambda t: T0 + 3 * HOUR <= t < T0 + 3 * HOUR + 20 * MIN  # noqa: E731
    evs = stream(5, error=errors)
    resume = Control("r1", T0 + 4 * HOUR, "resume", "f", "beta", "fixed", "oncall")
    items = with_controls(evs, [signoff(T0, "pm"), signoff(T0, "legal"), resume])
    _, out = run(ruleset(), items)
    kill = next(d for d in out.decisions if d["rule_id"] == "errs" and d["transition"] == "firing")
    v = verdicts(out)
    blocked = next(d for d in out.decisions if d["rule_id"] == "promotion" and d["transition"] == "blocked"
                   and d["promotion"]["latch"] == "kill")  # fmt: skip
    assert blocked["promotion"]["blocking"][0] == "phase beta is killed"
    assert 0 <= _ms(blocked["ts"]) - _ms(kill["ts"]) < 10 * MIN  # the next promotion instant (every 10m)
    assert v[-1][1] == "ready" and v[-1][0] >= 4 * HOUR  # after the resume, ready again


def test_hold_for_keeps_it_inconclusive_until_every_gate_held_that_long():
    rs = ruleset(**{"  signoffs": "  hold_for: 1h\n  signoffs", "time: 2h, interactions: 100": "time: 30m, interactions: 50"})
    _, out = run(rs, with_controls(stream(5), [signoff(T0, "pm"), signoff(T0, "legal")]))
    v = verdicts(out)
    clear = next(d for d in out.decisions if d["transition"] == "inconclusive"
                 and any(w.startswith("holding") for w in d["promotion"]["waiting"]))  # fmt: skip
    since = _ms(clear["ts"])
    assert [t for t, x in v if x == "ready"] == [since - T0 + HOUR]


def test_a_revoked_signoff_blocks_again_and_auto_promotes_once_per_ready_run():
    rs = ruleset(**{"  signoffs": "  auto: true\n  signoffs"})
    key = b"promotion-signing-key-0123456789"
    ctl = [signoff(T0, "pm"), signoff(T0, "legal"), signoff(T0 + 3 * HOUR, "legal", revoke=True),
           signoff(T0 + 4 * HOUR, "legal", event_id="so-legal-again")]  # fmt: skip
    _, out = run(rs, with_controls(stream(6), ctl), EngineConfig(signing_key=key, signing_key_id="k1"))
    v = [x for _, x in verdicts(out, signoffs=True)]
    assert "signoff_revoked" in v and v.count("ready") == 2
    assert [c["action"] for c in out.commands] == ["promote_rollout", "promote_rollout"]
    for c in out.commands:
        assert c["to"] == "ga" and c["phase"] == "beta"
        assert verify_command(c, {"k1": key}, now_ms=_ms(c["ts"]), max_age_ms=None, state=VerifierState()).ok
    assert out.commands[0]["command_id"] != out.commands[1]["command_id"]  # two ready runs, two commands
    again = [d for d in out.decisions if d["transition"] == "blocked" and d["ts"] >= iso(T0 + 3 * HOUR)]
    assert again[0]["promotion"]["blocking"] == ["sign-off legal missing"]


def test_a_signoff_before_the_phase_has_traffic_is_kept_and_an_unknown_role_is_a_dead_letter():
    eng = Engine(ruleset())
    out = eng.step([signoff(T0 - DAY, "pm"), signoff(T0 - DAY, "qa")])
    assert [d["transition"] for d in out.decisions] == ["signed_off"]
    [dl] = out.dead_letters
    assert dl["reason"] == "signoff_unknown" and "role 'qa' (roles: legal, pm)" in dl["detail"]
    assert "reason" not in dl["payload"]  # the operator's free text is not echoed
    out = eng.step([signoff(T0, "pm", phase="ga")])
    assert out.dead_letters[0]["detail"].startswith("no loaded rule set has a promotion of f/ga")
    out = eng.step(with_controls(stream(3), [signoff(T0, "legal")]))
    out.extend(eng.finish())
    assert "ready" in [x for _, x in verdicts(out)]


def test_signed_signoffs_are_checked_like_resumes():
    keys = {"op1": b"operator-key-0123456789abcdef"}
    parser = EventParser(Pseudonymizer(b"k" * 16), operator_keys=keys)
    msg = {"type": "control", "action": "signoff", "event_id": "s1", "ts": T0, "feature": "f", "phase": "beta",
           "role": "pm", "reason": "ok", "operator": "ann"}  # fmt: skip
    good = parser.parse_obj(sign_control(msg, "op1", keys["op1"]))
    assert good.key_id == "op1" and good.role == "pm"
    tampered = dict(sign_control(msg, "op1", keys["op1"]), role="legal")
    with pytest.raises(InvalidEvent) as e:
        parser.parse_obj(tampered)
    assert e.value.reason == "control_bad_signature"
    eng = Engine(ruleset())
    out = eng.step([good, good])  # the same signed control twice: applied once
    assert [d["transition"] for d in out.decisions] == ["signed_off"]
    assert out.decisions[0]["key_id"] == "op1" and out.dead_letters[0]["reason"] == "control_replayed"


@pytest.mark.parametrize("obj, message", [
    ({"role": "pm"}, "a signoff names the phase it signs off"),
    ({"phase": "beta"}, "a signoff names its role"),
    ({"phase": "beta", "role": "P M"}, "role: String should match pattern"),
    ({"action": "resume", "role": "pm"}, "role and revoke belong to a signoff control"),
])  # fmt: skip
def test_a_malformed_signoff_is_refused_with_a_located_error(obj, message):
    msg = {"type": "control", "action": "signoff", "event_id": "s1", "ts": T0, "feature": "f", "reason": "ok", **obj}
    parser = EventParser(Pseudonymizer(b"k" * 16))
    with pytest.raises(InvalidEvent) as e:
        parser.parse_obj(msg)
    assert message in e.value.detail
    assert parser.parse_rows(orjson.dumps(msg)) is None  # the typed path refuses it too, leaving the words to pydantic


def test_state_round_trip_mid_run_and_the_reference_engine_agree():
    """Persisting and restoring the feature state between two steps changes nothing, and the reference engine (which
    shares rules.promotion but none of the product's windows) decides the same."""
    rs = ruleset(**{"  signoffs": "  hold_for: 30m\n  auto: true\n  signoffs"})
    items = with_controls(stream(6, accept=lambda t: t > T0 + 2 * HOUR),
                          [signoff(T0, "pm"), signoff(T0 + HOUR, "legal"), signoff(T0 + 5 * HOUR, "pm", True)])
    _, whole = run(rs, items)
    _, ref = run(rs, items, engine=ReferenceEngine)
    assert orjson.dumps(whole.decisions) == orjson.dumps(ref.decisions)
    assert orjson.dumps(whole.commands) == orjson.dumps(ref.commands)
    eng = Engine(rs)
    half = len(items) // 2
    out = eng.step(items[:half])
    key = b"detector-key-0123456789abcdef012"
    state = orjson.loads(orjson.dumps(eng.features["f"].to_state(key)))
    assert set(state) >= {"phase_first", "promotions", "signoffs"}
    eng2 = Engine(rs)
    eng2.features["f"] = FeatureState.from_state(state, key)
    out.extend(eng2.step(items[half:]))
    out.extend(eng2.finish())
    assert orjson.dumps(out.decisions) == orjson.dumps(whole.decisions)
    assert FeatureState().to_state(key).keys().isdisjoint({"phase_first", "promotions", "signoffs"})


def test_a_reload_without_the_block_forgets_its_verdict_but_keeps_the_signoffs():
    eng = Engine(ruleset())
    eng.step(with_controls(stream(3), [signoff(T0, "pm")]))
    fs = eng.features["f"]
    assert fs.promotions and fs.signoffs["beta"]["pm"]["operator"] == "pm-lead"
    bare = RULES.split("promotion:")[0]
    eng.reload(load_rules_text(bare))
    assert fs.promotions == {} and "pm" in fs.signoffs["beta"]
    eng.reload(ruleset())
    out = eng.step(stream(4)[len(stream(3)):])
    assert verdicts(out)[0][1] == "blocked"  # judged afresh: legal is still missing


# --- rules test cases ---------------------------------------------------------------------------------------------


def test_rules_test_cases_expect_promotion_verdicts_and_exact_ignores_them_otherwise(tmp_path):
    from rules.case_loader import load_cases
    from rules.testing import run_case

    (tmp_path / "beta.yaml").write_text(RULES)
    (tmp_path / "beta.test.yaml").write_text(f"""
rule_files: [beta.yaml]
feature: f
phase: beta
start: "{iso(T0)}"
tests:
  - name: ready once both roles signed
    series:
      - {{type: interaction, from: 0s, to: 4h, every: 20s, users: 7}}
      - {{type: feedback, from: 0s, to: 4h, every: 20s, fields: {{kind: suggestion, label: accepted}}}}
    events:
      - {{at: 10m, type: control, action: signoff, event_id: s1, role: pm, reason: ok}}
      - {{at: 3h, type: control, action: signoff, event_id: s2, role: legal, reason: ok}}
    expect:
      - {{at: 3h10m, rule: promotion, transition: ready}}
      - {{at: 3h, rule: promotion, transition: signed_off}}
    expect_no:
      - {{rule: promotion, transition: ready, to: 3h10m}}
  - name: nothing fires (promotion verdicts are not listed, and exact does not count them)
    series:
      - {{type: interaction, from: 0s, to: 1h, every: 20s, users: 7}}
    exact: all
""")
    cf = load_cases(tmp_path / "beta.test.yaml")
    results = [run_case(cf, c) for c in cf.cases]
    assert [r.failures for r in results] == [[], []]
    bad = (tmp_path / "beta.test.yaml").read_text().replace("at: 3h10m, rule", "at: 3h5m, rule")
    (tmp_path / "bad.test.yaml").write_text(bad)
    with pytest.raises(Exception, match="3h5m is not an instant of the promotion"):
        load_cases(tmp_path / "bad.test.yaml")


# --- the seed's P2 -> P3 promotion on a generated closed beta ------------------------------------------------------


@pytest.mark.slow
def test_the_seed_closed_beta_promotion_is_blocked_then_ready_the_instant_both_hold_with_14_days_of_data():
    """Sixteen days of a closed beta users like (0.15 interactions/s, 2 % of them answer a survey, a rejection does
    not sour them: NPS ~45): acceptance is cut to ~12 % for the first 5 days, PM and Engineering sign off on day 2,
    Legal on day 10 and withdraws on day 15. Blocked while acceptance < 15 % or a sign-off is missing, ready the
    first instant with 14 days of data once both hold, blocked again on withdrawal."""
    from streams.offline.scenario import Incident, generate, scenario_from_args

    sc = scenario_from_args("clean", duration_ms=16 * DAY, mean_rate_per_s=0.15, seed=5, hallucination_prob=0.0,
                            unhappy_after_rejection_prob=0.0, survey_prob=0.02)  # fmt: skip
    sc = dataclasses.replace(sc, incidents=(Incident("acceptance_decline", sc.start, 5 * DAY, 0.6),))

    def ctl(day: float, role: str, revoke: bool = False) -> dict:
        ts = sc.start + int(day * DAY)
        return {"type": "control", "action": "signoff", "event_id": f"so-{role}-{day}", "ts": ts,
                "feature": "email-reply", "phase": "closed_beta", "role": role, "reason": "reviewed the beta",
                "operator": f"{role}-lead", **({"revoke": True} if revoke else {})}  # fmt: skip

    controls = sorted([ctl(2.4, "pm"), ctl(2.4, "engineering"), ctl(10.4, "legal"), ctl(15.4, "legal", True)],
                      key=lambda c: c["ts"])  # fmt: skip
    parser = EventParser(Pseudonymizer(b"golden-test-key-0123456789"))
    eng = Engine(load_rules([CATALOG / "email-reply-2-closed-beta.yaml"]), EngineConfig())
    items = []
    for e in generate(sc):
        while controls and controls[0]["ts"] <= e["ts"]:
            items.append(controls.pop(0))
        items.append(e)
    out = eng.step(parser.parse_obj(x) for x in items)
    out.extend(eng.finish())
    promo = [d for d in out.decisions if d["rule_id"] == "promotion"]
    verdict = [(_ms(d["ts"]), d["transition"], d) for d in promo if d["transition"] in ("ready", "blocked",
                                                                                          "inconclusive")]
    first = eng.features["email-reply"].phase_first["closed_beta"]
    [ready] = [(t, d) for t, v, d in verdict if v == "ready"]
    t_ready = ready[0]
    # the first promotion instant (hourly) with 14 days of data in the phase
    assert t_ready - first >= 14 * DAY and t_ready - HOUR - first < 14 * DAY
    gates = {g["rule_id"]: g for g in ready[1]["promotion"]["gates"]}
    assert gates["gate-acceptance-15pct"]["value"] >= 0.15 and all(g["status"] == "pass" for g in gates.values())
    before = [d for t, v, d in verdict if t < t_ready]
    acc_low = [d for d in before if any("gate-acceptance-15pct fails" in b for b in d["promotion"]["blocking"])]
    assert acc_low and acc_low[0]["transition"] == "blocked"  # blocked while acceptance < 15 %
    legal_only = [d for d in before if d["promotion"]["blocking"] == ["sign-off legal missing"]]
    assert legal_only  # acceptance recovered before Legal signed: blocked on the sign-off alone
    assert all(v != "ready" for t, v, _ in verdict if t < t_ready)
    after = [(t, v, d) for t, v, d in verdict if t > t_ready]
    assert after and after[0][1] == "blocked" and after[0][2]["promotion"]["blocking"] == ["sign-off legal missing"]
    assert after[0][0] > sc.start + int(15.4 * DAY)
    assert out.commands == [] and not [p for p in out.pages if p["payload"]["class"] == "promotion"]


# --- what people see: status, report, Grafana annotations ---------------------------------------------------------


def test_status_report_and_annotations_show_the_promotion(tmp_path):
    from streams.grafana.annotations import annotation_for
    from streams.live.ops import render_status
    from streams.live.status_summary import summary_of
    from streams.offline.replay import replay

    text = RULES.replace("  signoffs", "  auto: true\n  signoffs")
    (tmp_path / "beta.yaml").write_text(text)
    rs = load_rules([tmp_path / "beta.yaml"])
    items = with_controls(stream(4), [signoff(T0 + 30 * MIN, "pm"), signoff(T0 + HOUR, "legal")])
    eng, out = run(rs, items)
    row = summary_of(eng, "f", eng.features["f"])
    [pr] = row["phases"]["beta"]["promotions"]
    assert pr["verdict"] == "ready" and pr["to"] == "ga" and pr["signoffs"]["missing"] == []
    shown = render_status([dict(row, updated_ms=0)], 0)
    assert "f/beta -> ga: READY (beta, at " in shown and "[x] gate gate-acc" in shown
    assert "[x] sign-off legal: legal-lead at" in shown

    def line(x) -> dict:
        if isinstance(x, Control):
            return {"type": "control", "action": "signoff", "event_id": x.event_id, "ts": x.ts, "feature": x.feature,
                    "phase": x.phase, "role": x.role, "reason": x.reason, "operator": x.operator}  # fmt: skip
        d = {"type": x.type, "event_id": x.event_id, "ts": x.ts, "feature": x.feature, "phase": x.phase}
        return d | ({"outcome": x.outcome, "user": x.user} if x.type == "interaction" else {"kind": x.kind, "label": x.label})

    (tmp_path / "events.jsonl").write_bytes(b"\n".join(orjson.dumps(line(x)) for x in items))
    replay(rs, [str(tmp_path / "events.jsonl")], tmp_path / "out", config=EngineConfig(), user_key=b"k" * 16,
           progress=False)  # fmt: skip
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Promotions" in report and "**beta** · f / beta → ga: **ready**" in report
    assert "Sign-offs: pm signed at" in report and "| time | verdict | reasons |" in report
    decided = [orjson.loads(x) for x in (tmp_path / "out" / "decisions.jsonl").read_bytes().splitlines()]
    assert [d["decision_id"] for d in decided] == [d["decision_id"] for d in out.decisions]  # replay = engine
    ready = next(d for d in decided if d["transition"] == "ready")
    mark = annotation_for(ready, "decision")
    assert "tier:promotion" in mark["tags"] and "transition:ready" in mark["tags"]
    assert mark["text"].startswith("promotion ready: f/beta may be promoted to ga")
    assert annotation_for(next(d for d in decided if d["transition"] == "blocked"), "decision") is None
    [cmd] = [orjson.loads(x) for x in (tmp_path / "out" / "commands.jsonl").read_bytes().splitlines()]
    assert "command:promote_rollout" in annotation_for(cmd, "command")["tags"]


def test_exposure_counts_keep_stores_of_their_own_so_rule_windows_keep_their_retention():
    """A promotion's min_exposure window (14 or 21 days) must not stretch the retention, and so the Redis bytes, of
    the rules' stores it would otherwise share (the catalogue's daily store read by every feature)."""
    from rules.plan import Plan

    rs = load_rules([CATALOG])
    with_blocks = Plan(rs)
    without = Plan(tuple(r.model_copy(update={"promotion": None}) for r in rs))
    before = {without.store_names[s.id]: s.retention_ms for s in without.stores.values()}
    after = {with_blocks.store_names[s.id]: s.retention_ms for s in with_blocks.stores.values()}
    added = {name: ms for name, ms in after.items() if name not in before}
    assert {name: ms for name, ms in after.items() if name in before} == before
    assert added and all(name.endswith("|exposure") for name in added)
