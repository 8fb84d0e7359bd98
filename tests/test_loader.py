import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.loader import RuleError, RulesInvalid, load_rules, load_rules_text
from rules.model import RuleSet

RULES = Path(__file__).parent / "testdata" / "rules"
BAD = sorted((RULES / "bad").glob("*.yaml"))

HEADER = 'version: 1\nname: t\nfeatures: ["email-reply"]\n'


def load_one(text: str) -> RuleSet:
    [ruleset] = load_rules_text(text, source="t.yaml")
    return ruleset


def errors_of(text: str) -> list[str]:
    with pytest.raises(RulesInvalid) as caught:
        load_rules_text(text, source="t.yaml")
    return [str(error) for error in caught.value.errors]


# --- testdata: every bad file fails with exactly the messages in its sibling .txt -------------------------


def test_there_are_at_least_ten_bad_files_each_with_expected_messages():
    assert len(BAD) >= 10
    assert all(path.with_suffix(".txt").is_file() for path in BAD)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_rule_file_reports_exactly_the_expected_errors(path, monkeypatch):
    monkeypatch.chdir(path.parent)  # messages carry the path as given: the bare file name
    with pytest.raises(RulesInvalid) as caught:
        load_rules([path.name])
    assert str(caught.value).splitlines() == path.with_suffix(".txt").read_text().splitlines()


def test_good_files_load_from_their_folder_in_file_order():
    rulesets = load_rules([RULES / "good"])
    assert [rs.name for rs in rulesets] == ["email-reply-closed-beta", "assistants-ga", "tickets-watch"]
    assert rulesets[0].source == str(RULES / "good" / "email_reply.yaml")
    assert len({rs.version for rs in rulesets}) == 3


def test_email_reply_example_resolves_defaults_rule_by_rule():
    [rs] = load_rules([RULES / "good" / "email_reply.yaml"])
    rules = {rule.id: rule for rule in rs.rules}
    spike = rules["latency-spike"]
    assert (spike.tier, spike.metric, spike.op, spike.threshold) == ("kill", "latency_p95", ">", 1500.0)
    assert (spike.window_ms, spike.every_ms, spike.for_ms, spike.min_samples) == (300_000, 60_000, 7_200_000, 100)
    assert spike.group_by == ("platform",) and spike.line == 13
    assert spike.confidence is None, "defaults.confidence does not apply to a non-rate metric"
    assert spike.keep_firing_for_ms == 0, "defaults.keep_firing_for does not apply to kill rules"
    assert spike.runbook == "https://runbooks.example/latency"
    assert rules["pii-leak"].confidence == 0.95
    assert rules["pii-leak"].runbook == "https://runbooks.example/email-reply"
    assert rules["cost-regression"].baseline_ms == 86_400_000 and rules["cost-regression"].mode == "shadow"
    assert rules["cost-regression"].confidence is None, "defaults.confidence does not apply with baseline"
    assert rules["platform-gap"].across == "platform" and rules["platform-gap"].confidence is None
    assert rules["platform-gap"].keep_firing_for_ms == 600_000
    drift = rules["acceptance-drift"]
    assert drift.metric is drift.op is drift.threshold is drift.window_ms is None
    assert (drift.drift.detector, drift.drift.signal) == ("adwin", "acceptance")
    assert drift.drift.params == {"delta": 0.002}
    assert drift.keep_firing_for_ms == 3_600_000
    assert rules["errors-ddm"].drift.params == {}


def test_merge_keys_fill_a_rule_and_are_not_duplicate_keys():
    [rs, _] = load_rules([RULES / "good" / "multi_document.yaml"])
    hallucinations = rs.rules[1]
    assert (hallucinations.tier, hallucinations.op, hallucinations.metric) == ("investigate", ">", "hallucination_rate")


# --- inline cases ----------------------------------------------------------------------------------------

RULE = "rules:\n  - {id: r, tier: investigate, metric: error_rate, op: '>', threshold: 0.1, window: 5m}\n"

INVALID = {
    "empty_text": ("", "t.yaml: empty file: expected a rule set (version: 1, name, features, rules)"),
    "scalar_document": ("42\n", "t.yaml:1: a rule set must be a mapping with version, name, features and rules; got integer 42"),
    "missing_everything": ("{}\n", "t.yaml:1: missing required key 'version'"),
    "bad_utf_control_char": ("version: 1\nname: \x00\n", "t.yaml:2: invalid YAML: special characters are not allowed (character #x0000)"),
    "tab_indentation": ("version: 1\n\tname: x\n", "t.yaml:2: invalid YAML: found character '\\t' that cannot start any token (while scanning for the next token)"),
    "invalid_date": ("version: 1\nname: 2024-13-45\n", "t.yaml: invalid YAML: ValueError: month must be in 1..12"),
    "unhashable_key": ("? [a]\n: 1\n", "t.yaml:1: invalid YAML: found unhashable key (while constructing a mapping)"),
    "recursive_alias": ("a: &x [*x]\n", "t.yaml:1: invalid YAML: a YAML alias refers to a node that contains it (recursion)"),
    "deep_nesting": ("x: " + "[" * 1000 + "]" * 1000 + "\n", "t.yaml: invalid YAML: nested too deeply"),
    "nan_threshold": (
        HEADER + "rules:\n  - {id: r, tier: kill, metric: requests, op: '<', threshold: .nan, window: 5m}\n",
        "t.yaml:5: ruleset 't' rule 'r': threshold: expected a finite number, got number nan",
    ),
    "huge_threshold": (
        HEADER + "rules:\n  - {id: r, tier: kill, metric: requests, op: '<', threshold: " + "9" * 400 + ", window: 5m}\n",
        "t.yaml:5: ruleset 't' rule 'r': threshold: expected a finite number, got a huge integer",
    ),
    "boolean_min_samples": (
        HEADER + "rules:\n  - {id: r, tier: kill, metric: requests, op: '<', threshold: 1, window: 5m, min_samples: yes}\n",
        "t.yaml:5: ruleset 't' rule 'r': min_samples: expected a whole number from 0 to 1000000000, got boolean true",
    ),
    "duplicate_under_unknown_key": (
        HEADER + RULE + "extra: {a: 1, a: 2}\n",
        "t.yaml:6: ruleset 't': duplicate key 'a' (first on line 6)",
    ),
    "duplicate_param": (
        HEADER + "rules:\n  - id: d\n    tier: investigate\n    drift: {detector: adwin, signal: error, params: {delta: 0.1, delta: 0.2}}\n",
        "t.yaml:7: ruleset 't' rule 'd': drift.params: duplicate key 'delta' (first on line 7)",
    ),
    "param_value_not_plain": (
        HEADER + "rules:\n  - id: d\n    tier: investigate\n    drift: {detector: adwin, signal: error, params: {delta: {x: 1}}}\n",
        "t.yaml:7: ruleset 't' rule 'd': drift.params.delta: expected a number, string, boolean or null (or a list of them), got a mapping",
    ),
    "across_in_group_by": (
        HEADER + "defaults: {group_by: [platform]}\n"
        "rules:\n  - {id: r, tier: pause, metric: requests, op: '<', threshold: 1, window: 5m, across: platform}\n",
        "t.yaml:6: ruleset 't' rule 'r': across: 'platform' is also in group_by; a spread across it needs all its values in one group",
    ),
    "every_from_rule_breaks_inherited_window": (
        HEADER + "defaults: {window: 5m}\n"
        "rules:\n  - {id: r, tier: pause, metric: requests, op: '<', threshold: 1, every: 2m}\n",
        "t.yaml:6: ruleset 't' rule 'r': window: 5m is not a multiple of every (2m)",
    ),
    "group_by_key_charset": (
        HEADER + "rules:\n  - {id: r, tier: pause, metric: requests, op: '<', threshold: 1, window: 5m, group_by: [plat form]}\n",
        "t.yaml:5: ruleset 't' rule 'r': group_by[0]: 'plat form' must be a string matching [A-Za-z0-9_.-]{1,128}",
    ),
}


@pytest.mark.parametrize(("text", "expected"), INVALID.values(), ids=INVALID.keys())
def test_invalid_text_reports_a_located_error(text, expected):
    assert expected in errors_of(text)


def test_every_error_of_every_file_is_reported_at_once(tmp_path):
    (tmp_path / "a.yaml").write_text(HEADER.replace("name: t", "name: a") + "rules:\n  - {id: r, tier: kill}\n")
    (tmp_path / "b.yml").write_text("version: [\n")
    (tmp_path / "c.yaml").write_bytes(b"version: 1\nname: \xff\n")
    (tmp_path / "notes.txt").write_text("not a rule file")
    with pytest.raises(RulesInvalid) as caught:
        load_rules([tmp_path, tmp_path / "missing.yaml", tmp_path / "empty"])
    files = [(Path(e.file).name, e.line) for e in caught.value.errors]
    assert files == [("a.yaml", 5), ("b.yml", 2), ("c.yaml", 2), ("missing.yaml", None), ("empty", None)]
    assert str(caught.value.errors[3]) == f"{tmp_path / 'missing.yaml'}: no such file or folder"
    assert "not UTF-8 text" in caught.value.errors[2].message


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(RulesInvalid, match="folder holds no"):
        load_rules([tmp_path])


def test_ruleset_names_are_unique_across_files(tmp_path):
    for stem in ("one", "two"):
        (tmp_path / f"{stem}.yaml").write_text(HEADER + RULE)
    with pytest.raises(RulesInvalid) as caught:
        load_rules([tmp_path])
    [error] = caught.value.errors
    assert (Path(error.file).name, error.line, error.ruleset) == ("two.yaml", 2, "t")
    assert error.message == f"ruleset name 't' is already used at {tmp_path / 'one.yaml'}:2"


def test_a_file_named_and_reached_through_its_folder_loads_once(tmp_path):
    (tmp_path / "one.yaml").write_text(HEADER + RULE)
    assert len(load_rules([tmp_path / "one.yaml", tmp_path])) == 1


# --- rules-test cases files kept next to their pack (docs/rules-testing.md) -----------------------------------------

CASES = "rule_files: [pack.yaml]\nfeature: email-reply\ntests:\n  - name: t\n    events: []\n"


@pytest.mark.parametrize("name, text", [
    ("pack.test.yaml", CASES),
    ("pack.test.yml", "a cases file by its name: not even read\n"),
    ("checks.yaml", CASES),
    ("quoted.yaml", CASES.replace("tests:", '"tests":')),
], ids=["by-name-yaml", "by-name-yml", "by-tests-key", "by-quoted-tests-key"])  # fmt: skip
def test_a_folder_walk_skips_rules_test_cases_files_and_says_which(tmp_path, name, text):
    (tmp_path / "pack.yaml").write_text(HEADER + RULE)
    (tmp_path / name).write_text(text)
    skipped: list[str] = []
    [ruleset] = load_rules([tmp_path], skipped=skipped)
    assert ruleset.name == "t"
    assert skipped == [str(tmp_path / name)]


def test_a_tests_key_that_is_not_top_level_does_not_make_a_cases_file(tmp_path):
    (tmp_path / "pack.yaml").write_text("# tests: none yet\n" + HEADER + RULE)
    indented = HEADER.replace("name: t", "name: u") + RULE.replace("window: 5m}", "window: 5m, tests: 1}")
    (tmp_path / "typo.yaml").write_text(indented)  # a rule key, not a top-level one: an error, not a skip
    skipped: list[str] = []
    with pytest.raises(RulesInvalid) as caught:
        load_rules([tmp_path], skipped=skipped)
    [error] = caught.value.errors
    assert (Path(error.file).name, error.message) == ("typo.yaml", "unknown key 'tests'")
    assert skipped == []


def test_a_cases_file_named_explicitly_is_an_error_that_says_to_run_rules_test(tmp_path):
    (tmp_path / "checks.yaml").write_text(CASES)
    with pytest.raises(RulesInvalid) as caught:
        load_rules([tmp_path / "checks.yaml"])
    [error] = caught.value.errors
    assert error.message == ("a `rules test` cases file (top-level tests:), not a rule file: run it with "
                             f"`rollguard rules test {tmp_path / 'checks.yaml'}`")


def test_a_folder_of_only_cases_files_is_an_error(tmp_path):
    (tmp_path / "pack.test.yaml").write_text(CASES)
    with pytest.raises(RulesInvalid, match="folder holds no rule files, only 1 `rules test` cases file"):
        load_rules([tmp_path])


def test_a_single_path_string_is_one_path_not_characters():
    assert load_rules(str(RULES / "good" / "email_reply.yaml"))[0].name == "email-reply-closed-beta"


def test_version_ignores_comments_and_formatting_but_not_content():
    plain = load_one(HEADER + RULE).version
    reformatted = load_one(
        "# a comment\nversion: 1\nfeatures:\n  - email-reply\nname: 't'\n"
        "rules:\n  - id: r\n    tier: investigate\n    metric: error_rate\n    op: '>'\n    threshold: 0.1\n    window: 5m\n"
    ).version
    changed = load_one(HEADER + RULE.replace("0.1", "0.2")).version
    assert plain == reformatted != changed
    assert len(plain) == 64 and int(plain, 16) >= 0


def test_defaults_never_override_the_rule_and_builtins_fill_the_rest():
    rs = load_one(
        HEADER + "defaults: {every: 5m, window: 10m, for: 10m, min_samples: 5, mode: shadow, group_by: [region]}\n"
        "rules:\n"
        "  - {id: own, tier: pause, metric: requests, op: '<', threshold: 1, window: 1h, mode: enforce, group_by: []}\n"
        "  - {id: inherits, tier: pause, metric: requests, op: '<', threshold: 1}\n"
    )
    own, inherits = rs.rules
    assert (own.window_ms, own.mode, own.group_by, own.every_ms) == (3_600_000, "enforce", (), 300_000)
    assert (inherits.window_ms, inherits.for_ms, inherits.min_samples) == (600_000, 600_000, 5)
    assert inherits.group_by == ("region",) and inherits.mode == "shadow"
    bare = load_one(HEADER + RULE).rules[0]
    assert (bare.every_ms, bare.for_ms, bare.keep_firing_for_ms) == (60_000, 0, 0)
    assert (bare.min_samples, bare.mode, bare.confidence, bare.runbook) == (30, "enforce", None, None)


def test_defaults_inherited_together_are_checked_once_not_per_rule():
    rule = RULE.replace(", window: 5m", "")
    two_rules = rule + rule.replace("rules:\n", "").replace("id: r,", "id: r2,")
    errors = errors_of(HEADER + "defaults: {every: 2m, window: 5m}\n" + two_rules)
    assert errors == ["t.yaml:4: ruleset 't': defaults.window: 5m is not a multiple of every (2m)"]


def test_multiple_documents_are_separate_rule_sets_with_their_own_versions():
    first, second = load_rules_text(HEADER + RULE + "---\n" + HEADER.replace("name: t", "name: u") + RULE)
    assert (first.name, second.name) == ("t", "u")
    assert first.version != second.version
    assert first.source == second.source == "<string>"


def test_an_alias_bomb_is_rejected_without_expanding_it():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    [error] = errors_of("\n".join(lines) + "\n")
    assert "expands to over 100000 YAML nodes" in error


def test_rule_error_str_leaves_out_what_is_unknown():
    assert str(RuleError("f.yaml", None, None, None, "no such file or folder")) == "f.yaml: no such file or folder"
    assert str(RuleError("f.yaml", 3, "x", None, "m")) == "f.yaml:3: ruleset 'x': m"
    assert str(RuleError("f.yaml", 3, "x", "y", "m")) == "f.yaml:3: ruleset 'x' rule 'y': m"


def test_rules_invalid_lists_one_error_per_line():
    errors = [RuleError("a", 1, None, None, "one"), RuleError("b", 2, None, None, "two")]
    assert str(RulesInvalid(errors)) == "a:1: one\nb:2: two"


# --- property: any input gives rule sets or RulesInvalid, nothing else -----------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
nested = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(scalars, inner, max_size=4), max_leaves=20
)


def loads_or_raises_rules_invalid(text: str) -> None:
    try:
        rulesets = load_rules_text(text)
    except RulesInvalid as exc:
        assert exc.errors and all(isinstance(error, RuleError) for error in exc.errors)
    else:
        assert all(isinstance(rs, RuleSet) for rs in rulesets)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"\n #?,.01")), max_size=60))
def test_random_yaml_text_never_raises_anything_but_rules_invalid(text):
    loads_or_raises_rules_invalid(text)


@settings(max_examples=100, deadline=None)
@given(nested)
def test_random_nested_data_never_raises_anything_but_rules_invalid(data):
    loads_or_raises_rules_invalid(yaml.safe_dump(data))


GOOD_TEXT = (RULES / "good" / "email_reply.yaml").read_text()
GOOD_DOC = yaml.safe_load(GOOD_TEXT)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(GOOD_TEXT)), st.integers(0, 12), st.text(max_size=6))
def test_good_text_with_a_random_splice_never_raises_anything_but_rules_invalid(at, cut, insert):
    loads_or_raises_rules_invalid(GOOD_TEXT[:at] + insert + GOOD_TEXT[at + cut :])
RULE_KEYS = sorted({key for rule in GOOD_DOC["rules"] for key in rule} | {"baseline", "trailing_baseline", "across", "confidence"})


@st.composite
def mutated_good_document(draw):
    """The good example with a few keys of the header, defaults or one rule replaced by random values."""
    doc = copy.deepcopy(GOOD_DOC)
    # Targets are taken before any change, so replacing e.g. ``rules`` first still leaves them mutable.
    targets = [
        (doc, ["version", "name", "features", "phases", "defaults", "rules"]),
        (doc["defaults"], ["every", "window", "for", "keep_firing_for", "confidence", "group_by", "tier"]),
        (doc["rules"][4]["drift"], ["detector", "signal", "params"]),
    ] + [(rule, RULE_KEYS) for rule in doc["rules"]]
    for _ in range(draw(st.integers(1, 3))):
        target, keys = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(nested | st.sampled_from(["5m", "0s", "error_rate", "adwin", "ddm", ">", "kill", 0.5]))
    return doc


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_good_document())
def test_mutated_good_documents_never_raise_anything_but_rules_invalid(doc):
    loads_or_raises_rules_invalid(yaml.safe_dump(doc))
