import copy
import pickle

import pytest
from pydantic import ValidationError

from rules.model import SUMMARY_FIELDS, DriftSpec, Rule, RuleSet, summary_problems, worst

WORST = {
    "none_is_ok": ((), "ok"),
    "one": (("pause",), "pause"),
    "kill_beats_all": (("investigate", "kill", "pause"), "kill"),
    "ok_is_lowest": (("ok", "investigate", "ok"), "investigate"),
}


@pytest.mark.parametrize(("tiers", "expected"), WORST.values(), ids=WORST.keys())
def test_worst_picks_the_most_severe_tier(tiers, expected):
    assert worst(*tiers) == expected


def test_worst_refuses_an_unknown_tier():
    with pytest.raises(ValueError, match="unknown tier 'critical'"):
        worst("kill", "critical")


def ruleset(features, phases=None):
    return RuleSet(name="x", version="0" * 64, features=features, phases=phases, rules=(), source="x.yaml")


APPLIES = {
    "exact": (("email-reply",), None, "email-reply", "ga", True),
    "other_feature": (("email-reply",), None, "search", "ga", False),
    "star": (("*",), None, "anything", "default", True),
    "glob": (("*-assistant",), None, "code-assistant", "beta", True),
    "glob_is_case_sensitive": (("Email-*",), None, "email-reply", "ga", False),
    "character_class": (("search-[ab]",), None, "search-b", "ga", True),
    "listed_phase": (("*",), ("closed_beta",), "f", "closed_beta", True),
    "unlisted_phase": (("*",), ("closed_beta",), "f", "ga", False),
    "phases_are_exact_not_globs": (("*",), ("closed_*",), "f", "closed_beta", False),
}


@pytest.mark.parametrize(("features", "phases", "feature", "phase", "expected"), APPLIES.values(), ids=APPLIES.keys())
def test_ruleset_applies_to_feature_globs_and_exact_phases(features, phases, feature, phase, expected):
    assert ruleset(features, phases).applies_to(feature, phase) is expected


def test_models_are_frozen_hashable_and_forbid_extra_fields():
    drift = DriftSpec(detector="adwin", signal="error", params={"delta": 0.1})
    rule = Rule(id="d", tier="investigate", drift=drift)
    with pytest.raises(ValidationError):
        rule.tier = "kill"
    with pytest.raises(TypeError):
        drift.params["delta"] = 0.5  # type: ignore[index]
    with pytest.raises(ValidationError, match="extra"):
        Rule(id="d", tier="investigate", drift=drift, treshold=1)
    same = Rule(id="d", tier="investigate", drift=DriftSpec(detector="adwin", signal="error", params={"delta": 0.1}))
    assert hash(rule) == hash(same) and rule == same
    assert rule.model_dump()["drift"]["params"] == {"delta": 0.1}


def test_a_rule_is_either_a_threshold_rule_or_a_drift_rule():
    with pytest.raises(ValidationError, match="needs metric, op, threshold and window_ms"):
        Rule(id="r", tier="kill", metric="requests", op="<", threshold=1.0)
    with pytest.raises(ValidationError, match="takes no metric"):
        Rule(id="r", tier="kill", metric="requests", drift=DriftSpec(detector="adwin", signal="error"))
    rule = Rule(id="r", tier="kill", metric="requests", op="<", threshold=1.0, window_ms=300_000)
    assert (rule.every_ms, rule.for_ms, rule.min_samples, rule.mode, rule.group_by) == (60_000, 0, 30, "enforce", ())


SUMMARIES = {
    "plain_text": ("kill it", False, []),
    "every_field": (" ".join("{%s}" % f for f in SUMMARY_FIELDS), False, []),
    "format_specs": ("{value:.1%} of {samples:,} > {threshold:.2f}", False, []),
    "escaped_braces": ("{{literal}} {value}", False, []),
    "conversion": ("{metric!r}", False, []),
    "unknown_field": ("{valeu}", False, ["unknown field {valeu} (did you mean {value}?)"]),
    "positional": ("{} {0}", False, ["positional field {} is not allowed; use a name such as {value}",
                                      "positional field {0} is not allowed; use a name such as {value}"]),
    "attribute": ("{value.real}", False, ["field {value.real}: attribute and index access are not allowed; use plain names"]),
    "index": ("{group[platform]}", False, ["field {group[platform]}: attribute and index access are not allowed; use plain names"]),
    "nested_spec": ("{value:{width}}", False, ["field {value}: nested fields in a format spec are not allowed"]),
    "bad_conversion": ("{value!z}", False, ["field {value}: unknown conversion '!z' (use !r, !s or !a)"]),
    "lone_brace": ("50% }", False, ["not a valid format string: Single '}' encountered in format string (write '{{' and '}}' for literal braces)"]),
    "threshold_in_drift": ("{threshold} {op}", True, ["field {threshold} is not available in drift rules (they have no threshold)",
                                                      "field {op} is not available in drift rules (they have no op)"]),
}


@pytest.mark.parametrize(("template", "drift", "problems"), SUMMARIES.values(), ids=SUMMARIES.keys())
def test_summary_templates_are_checked_against_the_fields_the_engine_provides(template, drift, problems):
    assert summary_problems(template, drift=drift) == problems


def test_rules_survive_pickle_and_deepcopy_unchanged():
    spec = DriftSpec(detector="kswin", signal="latency_ms", params={"window": [1, 2]})
    drift = Rule(id="d", tier="investigate", drift=spec)
    assert pickle.loads(pickle.dumps(drift)) == drift == copy.deepcopy(drift)
    assert hash(copy.deepcopy(drift)) == hash(drift)
