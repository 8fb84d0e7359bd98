"""A rule's ``action``: the command a kill or pause sends instead of its tier's (``rules.outputs.RULE_ACTIONS``).

Checked: the rule language (which tier takes which action, the tier's own action is the default), the commands
published, the latch each keeps (a shadow-only kill latches like a rollback; a model revert holds like a pause, so
a kill still rolls back after it), and the reference oracle's agreement.
"""

from __future__ import annotations

from engine_kit import interactions, rule_body, rule_errors, run, timeline, traffic
from reference_engine import ReferenceEngine
from rules.engine import EngineConfig

HEAD = '  - {id: r, metric: error_rate, op: ">", threshold: 0.5, window: 1m, '


def test_the_language_says_which_tier_sends_which_action():
    assert rule_body(HEAD + "tier: kill, action: shadow_only}\n")[0].rules[0].action == "shadow_only"
    assert rule_body(HEAD + "tier: pause, action: revert_model}\n")[0].rules[0].action == "revert_model"
    assert rule_body(HEAD + "tier: kill, action: rollback}\n")[0].rules[0].action is None  # the tier's own
    assert rule_errors(HEAD + "tier: kill, action: revert_model}\n") == [
        "5: action: a kill rule sends rollback or shadow_only, got 'revert_model' (revert_model is a pause action)"]
    assert rule_errors(HEAD + "tier: investigate, action: shadow_only}\n") == [
        "5: action: only pause and kill rules send commands; investigate sends none"]
    assert rule_errors(HEAD + "tier: pause, action: reboot}\n") == [
        "5: action: a pause rule sends pause_rollout or revert_model, got 'reboot'"]


RULES = """\
  - {id: quality, tier: pause, action: revert_model, metric: error_rate, op: ">", threshold: 0.2, window: 1m,
     min_samples: 5}
  - {id: leak, tier: kill, action: shadow_only, metric: "flag_count:pii_leak", op: ">", threshold: 0, window: 1m,
     min_samples: 0}
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.6, window: 1m, min_samples: 5}
"""


def test_a_model_revert_holds_like_a_pause_and_a_kill_still_rolls_back():
    # 30 % errors in minute 2 revert the model (a pause); all errors in minute 4 still roll back
    evs = [e for m, k in enumerate((0, 0, 6, 0, 20, 0)) for e in interactions(m, 20, errors=k)]
    _, decisions, commands, _ = run(rule_body(RULES), evs)
    assert [(c["rule_id"], c["action"]) for c in commands] == [("quality", "revert_model"), ("errors", "rollback")]
    assert (5, "firing") in timeline(decisions, "errors") and (3, "firing") in timeline(decisions, "quality")


def test_a_shadow_only_kill_latches_like_a_rollback():
    evs = traffic("." * 3, n=20, flags=("pii_leak",)) + traffic("...x..", n=20)[60:]
    _, decisions, commands, pages = run(rule_body(RULES), evs)
    assert [(c["rule_id"], c["action"]) for c in commands] == [("leak", "shadow_only")]
    # minute 3 all errors: the pause is inhibited by the kill latch, the rollback rule fires without a command
    assert (4, "inhibited") in timeline(decisions, "quality") and (4, "firing") in timeline(decisions, "errors")
    assert {p["payload"]["class"] for p in pages if p["event_action"] == "trigger"} >= {"leak"}


def test_the_reference_engine_sends_the_same_commands():
    evs = traffic("..x.x" + "." * 3, n=20, flags=("pii_leak",))
    ours = run(rule_body(RULES), evs)
    eng = ReferenceEngine(rule_body(RULES), EngineConfig(allowed_lateness_ms=0))
    out = eng.step(evs)
    out.extend(eng.finish())
    assert out.commands == ours[2] and out.decisions == ours[1]  # run() drives the product engine
