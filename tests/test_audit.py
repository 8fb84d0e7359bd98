"""The audit hash chains (``rules.seal`` writes them, ``rules.audit`` checks them): every way of tampering with a log
is reported with the right kind and position, and the chains are as deterministic as the decisions themselves —
whatever the batch boundaries, across a restart from stored state, through resume, reload and idle advances."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_kit import MIN, T0, resume, rules, run, traffic
from rules.audit import genesis, link_hash, verify_chain
from rules.engine import Engine, EngineConfig
from rules.state import BreakerState, FeatureState

RULES = rules("""
version: 1
name: t
features: ["*"]
rules:
  - {id: errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
  - {id: outage, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 3m, min_samples: 10}
  - {id: quiet, tier: investigate, metric: requests, op: "<", threshold: 5, window: 1m, min_samples: 0}
""")  # fmt: skip
PATTERN = "x.x.x.x..xxx..x.x"  # a kill at once; investigate fires and resolves; resume at 8; the kill again
CFG = EngineConfig(allowed_lateness_ms=0, signing_key=b"k", signing_key_id="k1")


def items(features=("f",)) -> list:
    evs = [e for f in features for e in traffic(PATTERN, feature=f)] + [resume(8, f) for f in features]
    return sorted(evs, key=lambda e: e.ts)


@pytest.fixture(scope="module")
def log():
    _, decisions, commands, _ = run(RULES, items(("f", "g")), CFG)
    return decisions, commands


def of(records, feature="f"):
    return [dict(r) for r in records if r["feature"] == feature]


def test_a_replayed_log_verifies_and_every_record_is_linked(log):
    decisions, commands = log
    report = verify_chain(decisions + commands)
    assert report.ok, report.problems
    assert {k: c.records for k, c in report.chains.items()} == {
        ("decisions", "f"): len(of(decisions)), ("decisions", "g"): len(of(decisions, "g")),
        ("commands", "f"): len(of(commands)), ("commands", "g"): len(of(commands, "g")),
    }  # fmt: skip
    f = of(decisions)
    assert f[0]["prev_hash"] == genesis("decisions", "f")
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(f, f[1:]))
    assert len(f) >= 8 and any(d.get("cause") == "operator_resume" for d in f)
    assert [c["seq"] for c in of(commands)] == list(range(1, len(of(commands)) + 1))


def _rehash(r: dict) -> dict:
    r["hash"] = link_hash(r["prev_hash"], r)
    return r


def _forged_after(log: list, i: int) -> list:
    x = dict(log[i], decision_id="forged", transition="resolved", prev_hash=log[i]["hash"])
    return log[: i + 1] + [_rehash(x)] + log[i + 1 :]


def _edit(log, i, **fields):
    log[i] = dict(log[i], **fields)
    return log


TAMPER = [
    # name, tamper(records of one chain) -> records, expected (kind, index) or None (verifies)
    ("untouched", lambda L: L, None),
    ("a value edited", lambda L: _edit(L, 3, value=0.0), ("edit", 3)),
    ("a transition edited", lambda L: _edit(L, 5, transition="held"), ("edit", 5)),
    ("edited and its hash recomputed", lambda L: [*L[:3], _rehash(dict(L[3], value=0.0)), *L[4:]], ("deletion", 4)),
    ("chain fields stripped", lambda L: [*L[:3], {k: v for k, v in L[3].items() if "hash" not in k}, *L[4:]],
     ("edit", 3)),
    ("a record deleted", lambda L: L[:3] + L[4:], ("deletion", 3)),
    ("the first record deleted", lambda L: L[1:], ("deletion", 0)),
    ("two records swapped", lambda L: [*L[:3], L[4], L[3], *L[5:]], ("reorder", 3)),
    ("a record moved to the end", lambda L: L[:2] + L[3:] + [L[2]], ("reorder", 2)),
    ("a forged record inserted", lambda L: _forged_after(L, 3), ("fork", 5)),
    ("records re-delivered (at-least-once)", lambda L: L[:5] + L[3:], None),
]  # fmt: skip


@pytest.mark.parametrize("name, tamper, expected", TAMPER, ids=[c[0] for c in TAMPER])
def test_tampered_log(log, name, tamper, expected):
    report = verify_chain(tamper(of(log[0])))
    got = [(p.kind, p.index) for p in report.problems]
    assert got == ([] if expected is None else [expected]), [p.detail for p in report.problems]


def test_a_problem_names_the_record_and_leaves_other_chains_alone(log):
    decisions = [dict(r) for r in log[0]]
    i = next(n for n, r in enumerate(decisions) if r["feature"] == "g" and r["transition"] == "resolved")
    decisions[i]["samples"] += 1
    report = verify_chain(decisions)
    (p,) = report.problems
    assert (p.kind, p.stream, p.feature, p.index) == ("edit", "decisions", "g", i)
    assert p.record_id == decisions[i]["decision_id"]
    assert report.chains[("decisions", "f")].records == len(of(log[0]))


def test_a_tampered_command_log(log):
    commands = of(log[1])
    assert len(commands) >= 2
    assert [(p.kind, p.index) for p in verify_chain(commands[1:]).problems] == [("deletion", 0)]
    assert [(p.kind, p.index) for p in verify_chain(commands[::-1]).problems] == [("reorder", 0)]


def test_truncation_is_found_only_with_the_stored_head(log):
    full = of(log[0])
    head = verify_chain(full).heads()
    assert head == {"decisions": {"f": full[-1]["hash"]}}
    cut = full[:-2]
    assert verify_chain(cut).ok  # a log cut at its end is a valid, shorter log: that is what the head is for
    assert [(p.kind, p.index) for p in verify_chain(cut, head).problems] == [("truncation", len(cut))]
    assert [p.kind for p in verify_chain([], head).problems] == ["truncation"]
    report = verify_chain(full, head)
    assert report.ok and report.chains[("decisions", "f")].anchored


def test_records_after_the_stored_head_are_counted_not_refused(log):
    full = of(log[0])
    report = verify_chain(full, {"decisions": {"f": full[4]["hash"]}})
    c = report.chains[("decisions", "f")]
    assert report.ok and c.anchored and c.beyond_head == len(full) - 5


def test_a_log_whose_start_expired_verifies_only_when_told(log):
    tail = of(log[0])[3:]
    assert [(p.kind, p.index) for p in verify_chain(tail).problems] == [("deletion", 0)]
    assert verify_chain(tail, from_genesis=False).ok


def test_records_from_before_chaining_are_counted_as_legacy(log):
    full = of(log[0])
    old = [{k: v for k, v in r.items() if "hash" not in k} for r in full[:2]]
    report = verify_chain(old + full)
    assert report.ok and report.chains[("decisions", "f")].legacy == 2


def test_a_record_that_is_neither_decision_nor_command_is_malformed():
    assert [(p.kind, p.index) for p in verify_chain([{"event_action": "trigger"}, None]).problems] == [
        ("malformed", 0), ("malformed", 1)]  # fmt: skip


# --- determinism: the chains are part of the outputs ----------------------------------------------------------------


def test_replaying_the_same_input_twice_gives_the_same_chains():
    a = run(RULES, items(), CFG)
    b = run(RULES, items(), CFG)
    assert orjson.dumps(a[1:3]) == orjson.dumps(b[1:3])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 200))
def test_batch_boundaries_never_change_the_chains(batch):
    whole = run(RULES, items(), CFG)
    split = run(RULES, items(), CFG, batch=batch)
    assert orjson.dumps(split[1:3]) == orjson.dumps(whole[1:3])


def test_resume_reload_and_idle_decisions_are_chained_too():
    eng = Engine(RULES, CFG)
    out = [eng.step(items())]
    out.append(eng.step([resume(40)]))  # the second kill is resumed
    fired = rules("""
version: 1
name: t
features: ["*"]
rules:
  - {id: quiet, tier: investigate, metric: requests, op: "<", threshold: 5, window: 1m, min_samples: 0}
""")  # fmt: skip
    out.append(eng.advance_idle("f", "interaction", T0 + 25 * MIN))  # silence: `quiet` fires on the idle watermark
    out.append(eng.reload(fired))  # `errors` and `outage` removed: their open instances resolve
    decisions = [d for o in out for d in o.decisions]
    causes = {d.get("cause") for d in decisions} | {"idle" for d in decisions if "idle_watermark" in d}
    assert {"operator_resume", "rule_removed", "idle"} <= causes
    assert verify_chain(decisions + [c for o in out for c in o.commands]).ok
    assert eng.features["f"].chain["decisions"] == decisions[-1]["hash"]


def test_a_restart_from_stored_state_continues_the_chains():
    evs = items()
    whole = run(RULES, evs, CFG)
    cut = len(evs) // 2
    key = b"state-key"
    first = Engine(RULES, CFG)
    a = first.step(evs[:cut])
    second = Engine(RULES, CFG)
    for f, fs in first.features.items():
        core = orjson.loads(orjson.dumps(fs.core_state(key, CFG.allowed_lateness_ms)))
        buckets = fs.bucket_fields(first.plan, None)[0]  # binary values, as stored
        second.features[f] = FeatureState.from_parts(core, buckets, second.plan, key)
        assert second.features[f].chain == fs.chain and second.features[f].command_seq == fs.command_seq
    second.breaker = BreakerState.from_state(first.breaker.to_state())
    b, c = second.step(evs[cut:]), second.finish()
    got = [a.decisions + b.decisions + c.decisions, a.commands + b.commands + c.commands]
    assert orjson.dumps(got) == orjson.dumps(whole[1:3])


def test_state_stored_before_the_audit_trail_still_loads_and_starts_new_chains():
    eng = Engine(RULES, CFG)
    eng.step(items())
    core = eng.features["f"].core_state(b"k", 0)
    assert core["chain"] and core["command_seq"] >= 1
    del core["chain"], core["command_seq"]
    fs = FeatureState.from_parts(core, {}, eng.plan, b"k")
    assert (fs.chain, fs.command_seq) == ({}, 0)
