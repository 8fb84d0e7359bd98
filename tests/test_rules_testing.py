"""`rollguard rules test`: the series notation, located validation errors, pass/fail reports, exit codes, and every
catalogue pack's cases (the CI use)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from rules.case_loader import load_cases
from rules.cases import CasesInvalid
from rules.loader import CATALOG
from rules.series import NotationError, expand, lay_out_ratio, lay_out_sequence, parse_layout
from rules.testing import never_evaluated, run_case
from streams.cli import main

RULES = """\
version: 1
name: demo
features: ["f"]
rules:
  - {id: leak, tier: kill, metric: "flag_count:pii_leak", op: ">", threshold: 0, window: 1m, min_samples: 0}
  - {id: slow, tier: pause, metric: latency_p95, op: ">", threshold: 1000, window: 5m, for: 3m, min_samples: 10}
  - {id: errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.2, window: 5m, every: 5m,
     keep_firing_for: 10m}
"""

# 1 request every 10 s; latency 200 ms for 15 minutes, then 2000 ms for 15 (each value covers half the series)
PASSING = """\
rule_files: [rules.yaml]
feature: f
tests:
  - name: slow requests pause after for
    series: [{type: interaction, to: 30m, every: 10s, fields: {latency_ms: "200 2000"}}]
    expect:
      - {at: 16m, rule: slow, transition: pending}
      - {at: 19m, rule: slow, transition: firing, tier: pause, command: pause, page: trigger}
    expect_no: [leak, errors]
    exact: all
"""


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    return tmp_path


def write_cases(d: Path, text: str, name: str = "demo.test.yaml") -> Path:
    (d / name).write_text(text)
    return d / name


# ------------------------------------------------------------------------------------------------ series notation


@pytest.mark.parametrize(
    "notation, values",
    [
        ("5", [5]),
        ("-2+4x3", [-2, 2, 6, 10]),
        ("1-2x4", [1, -1, -3, -5, -7]),
        ("1x4", [1, 1, 1, 1, 1]),
        ("0.5+0.25x2", [0.5, 0.75, 1.0]),
        ("0.1+0.1x2", [0.1, 0.2, 0.3]),  # exact decimal steps, not 0.30000000000000004
        ("1e3", [1000.0]),
        ("_", [None]),
        ("1 _x3 7", [1, None, None, None, 7]),
        ("200+0x1 1500", [200, 200, 1500]),
    ],
    ids=["constant", "up", "down", "repeat", "fractions", "decimal-exact", "exponent", "absent", "absent-run",
         "two-terms"],  # fmt: skip
)
def test_expanding_notation_follows_promtool(notation, values):
    assert expand(notation) == values
    assert [type(v) for v in expand(notation)] == [type(v) for v in values]  # integers stay integers


@pytest.mark.parametrize(
    "notation, message",
    [
        ("", "empty"),
        ("5+2", "needs a count"),
        ("abc", "'abc' is not a value"),
        ("_+1x2", "'_+1x2' is not a value"),
        ("1x3000000", "more than 2,000,000"),
    ],
    ids=["empty", "no-count", "word", "absent-increment", "too-many"],
)
def test_bad_notation_says_which_token_and_why(notation, message):
    with pytest.raises(NotationError, match=re.escape(message)):
        expand(notation)


@pytest.mark.parametrize(
    "weights, n, counts",
    [
        ({"error": 0.1, "ok": 0.9}, 1000, {"error": 100, "ok": 900}),
        ({"error": 1, "ok": 9}, 1000, {"error": 100, "ok": 900}),
        ({"a": 1, "b": 1, "c": 1}, 7, {"a": 3, "b": 2, "c": 2}),
        ({"x": 1, None: 59}, 120, {"x": 2, None: 118}),
    ],
    ids=["fractions", "weights", "three-way", "rare"],
)
def test_ratios_are_exact_proportions_without_randomness(weights, n, counts):
    values = list(lay_out_ratio(weights, n))
    assert Counter(values) == counts
    assert values == list(lay_out_ratio(weights, n))
    # evenly interleaved: every prefix is within one of its exact share
    for key, w in weights.items():
        share = w / sum(weights.values())
        assert all(abs(values[:i].count(key) - i * share) <= 1 for i in range(0, n, max(1, n // 50)))


def test_a_sequence_is_spread_in_equal_shares_and_a_rare_value_falls_mid_cycle():
    assert list(lay_out_sequence([200, 2000], 6)) == [200, 200, 200, 2000, 2000, 2000]
    assert [i for i, v in enumerate(lay_out_ratio({"x": 1, "_": 99}, 300)) if v == "x"] == [49, 149, 249]
    with pytest.raises(NotationError, match="3 values for 2 events"):
        lay_out_sequence([1, 2, 3], 2)


@pytest.mark.parametrize(
    "field, raw, kind, values",
    [
        ("latency_ms", 240, "constant", 240),
        ("latency_ms", "240", "constant", 240),
        ("latency_ms", "200+100x2", "sequence", [200, 300, 400]),
        ("outcome", "ok", "constant", "ok"),
        ("outcome", ["ok", "_", "error"], "sequence", ["ok", None, "error"]),
        ("outcome", {"error": 1, "ok": 9}, "ratio", {"error": 1, "ok": 9}),
        ("score", {"1": 1, 5: 3}, "ratio", {1: 1, 5: 3}),
        ("flags", ["pii_leak"], "constant", ("pii_leak",)),
        ("flags", {"pii_leak": 1, "_": 99}, "ratio", {("pii_leak",): 1, None: 99}),
    ],
)
def test_a_field_value_is_a_constant_a_sequence_or_a_ratio(field, raw, kind, values):
    layout = parse_layout(field, raw)
    assert (layout.kind, layout.values) == (kind, values)


# ------------------------------------------------------------------------------------------------ validation


def errors_of(d: Path, text: str) -> list[str]:
    with pytest.raises(CasesInvalid) as exc:
        load_cases(write_cases(d, text))
    return [str(e).split("demo.test.yaml:", 1)[1] for e in exc.value.errors]


def test_every_problem_is_reported_at_once_with_its_line(cases_dir):
    text = """\
rule_files: [rules.yaml]
feature: f
allowed_lateness: 30
tests:
  - name: typos
    serie: []
    expect: [{at: 1m, rule: leek, transition: fireing}]
  - name: bad inputs
    series:
      - {type: interaction, to: 10m, every: 10s, fields: {latency_ms: "200+x3", flgs: [a]}}
      - {type: feedback, to: 10m, count: 5}
      - {type: interaction, from: 5m, to: 1m, every: 0s}
      - {type: interaction, to: 1m, every: 1s, fields: {confidence: "0.5+0.1x10"}}
    events:
      - {type: interaction, at: 1m, outcome: maybe}
    expect: [{at: 90s, rule: slow, transition: firing, command: kill}]
    expect_no: [nope*]
  - name: bad inputs
    events: [{type: interaction, at: 1m}]
"""
    assert errors_of(cases_dir, text) == [
        "3: file.allowed_lateness: expected a duration such as '30s', '5m' or '2h', got integer 30",
        "5: test 'typos': tests[0]: no inputs: give events, series or both",
        "6: test 'typos': tests[0]: unknown key 'serie' (did you mean 'series'?)",
        "7: test 'typos': tests[0].expect[0].transition: must be one of pending, firing, resolved, cleared, inhibited, "
        "held, starved, fed, ready, blocked, inconclusive, signed_off, signoff_revoked; got string 'fireing' "
        "(did you mean 'firing'?)",
        "7: test 'typos': tests[0].expect[0].rule: no rule 'leek' in demo (did you mean 'leak'?)",
        "10: test 'bad inputs': tests[1].series[0].fields: unknown key 'flgs' (did you mean 'flags'?)",
        "10: test 'bad inputs': tests[1].series[0].fields.latency_ms: '200+x3' is not a value: write a number, a+bxN, "
        "a-bxN, axN, _ or _xN",
        "11: test 'bad inputs': tests[1].series[1]: feedback series need fields.kind (suggestion, thumbs, review, ...)",
        "12: test 'bad inputs': tests[1].series[2]: give exactly one of every (a duration > 0) or count",
        "12: test 'bad inputs': tests[1].series[2].to: must be after from (5m)",
        # the first event that breaks CONTRACT §1 is named by its time: value 1.1 from the 34th event on
        "13: test 'bad inputs': tests[1].series[3]: the event at 33s: confidence: Input should be less than or equal to 1",
        "15: test 'bad inputs': tests[1].events[0]: outcome: Input should be 'ok', 'error', 'timeout' or 'refused'",
        "16: test 'bad inputs': tests[1].expect[0].command: must be one of rollback, pause, pause_rollout, promote, "
        "promote_rollout, shadow_only, revert_model, none; got string 'kill'",
        "16: test 'bad inputs': tests[1].expect[0].at: 1m30s is not an evaluation instant of slow (every 1m)",
        "17: test 'bad inputs': tests[1].expect_no[0].rule: no rule 'nope*' in demo",
        "18: test 'bad inputs': name already used by the test on line 8",
        "18: test 'bad inputs': tests[2]: nothing to check: give expect, expect_no or exact (a test must be able to "
        "fail)",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("rule_files: [nothere.yaml]\ntests: [{name: t, events: [], exact: all}]\n", "nothere.yaml: no such file"),
        ("rule_files: [rules.yaml]\ntests: []\n", "2: tests: expected a non-empty list of tests"),
        ("rule_files: [rules.yaml]\ntests: [\n", "invalid YAML"),
        ("rule_files: [rules.yaml]\nstart: yesterday\ntests: [{name: t, events: [], exact: all}]\n", "2: start: must be"),
        ("rule_files: [rules.yaml]\ntests:\n  - {name: t, exact: all, events: [{type: interaction, at: 1m, ts: 5}]}\n",
         "3: test 't': tests[0].events[0]: give exactly one of at (offset from start) or ts (event time)"),
        ("rule_files: [rules.yaml]\ntests:\n  - {name: t, feature: f, expect: [{rule: leak, transition: firing}],\n"
         "     series: [{type: interaction, to: 1m, every: 1s}]}\n", "3: test 't': tests[0].expect[0]: give at"),
        ("rule_files: [rules.yaml]\ntests:\n  - {name: t, feature: f, exact: all,\n     series: [{type: interaction, "
         "to: 1m, every: 1s,\n       fields: {outcome: {ok: 1, ok: 2}}}]}\n", "5: duplicate key 'ok' (first on line 5)"),
    ],
    ids=["missing-rule-file", "no-tests", "bad-yaml", "bad-start", "at-and-ts", "expect-without-time",
         "duplicate-ratio-key"],
)
def test_file_level_problems_are_located(cases_dir, text, expected):
    with pytest.raises(CasesInvalid) as exc:
        load_cases(write_cases(cases_dir, text))
    assert any(expected in str(e) for e in exc.value.errors), exc.value


def test_unquoted_yaml_times_are_read_as_the_rfc_3339_they_are(cases_dir):
    text = """\
rule_files: [rules.yaml]
feature: f
start: 2026-11-02T10:00:00+02:00
tests:
  - name: leak
    series: [{type: interaction, to: 10m, every: 10s}]
    events: [{type: interaction, ts: 2026-11-02T08:03:20Z, flags: [pii_leak]}]
    expect: [{at: 4m, rule: leak, transition: firing}]
"""
    cf = load_cases(write_cases(cases_dir, text))
    assert cf.start_ms == 1_793_606_400_000 and run_case(cf, cf.cases[0]).passed


def test_a_resume_before_any_event_of_a_source_the_rules_read_is_rejected(cases_dir):
    (cases_dir / "rules.yaml").write_text(RULES.replace("metric: error_rate", "metric: acceptance_rate"))
    text = """\
rule_files: [rules.yaml]
feature: f
tests:
  - name: resume
    series: [{type: interaction, to: 10m, every: 10s}]
    events:
      - {type: control, action: resume, at: 5m, reason: fixed}
    exact: all
"""
    [error] = errors_of(cases_dir, text)
    assert error.startswith("7: test 'resume': tests[0].events[0]: the rules of 'f' read feedback events too")


# ------------------------------------------------------------------------------------------------ running


def test_a_passing_case_runs_the_real_engine(cases_dir):
    cf = load_cases(write_cases(cases_dir, PASSING))
    [result] = [run_case(cf, case) for case in cf.cases]
    assert result.passed, result.failures
    assert [c["action"] for c in result.outputs.commands] == ["pause_rollout"]
    assert never_evaluated(cf, [result]) == []


def test_coverage_names_the_rules_that_never_had_enough_data(cases_dir):
    # 4 minutes: `errors` is evaluated every 5m, so it never decides; `slow` has 24 requests (min_samples 10)
    cf = load_cases(write_cases(cases_dir, PASSING.replace("to: 30m", "to: 4m").split("    expect:")[0]
                                + "    exact: all\n"))  # fmt: skip
    assert never_evaluated(cf, [run_case(cf, case) for case in cf.cases]) == ["demo/errors"]


def test_a_failing_case_names_the_rule_and_the_times_it_did_decide(cases_dir):
    text = PASSING.replace("{at: 19m, rule: slow", "{at: 20m, rule: slow")
    cf = load_cases(write_cases(cases_dir, text))
    [result] = [run_case(cf, case) for case in cf.cases]
    assert not result.passed
    expected, *_ = result.failures
    lines = expected.splitlines()
    assert lines[0] == "expected at 20m: slow firing (tier pause, command pause_rollout, page trigger)"
    assert lines[1] == "got no such decision; nearest decisions of slow:"
    assert lines[2].startswith("  at 16m     pending   demo/slow  f/default  value 20")
    assert lines[3].startswith("  at 19m     firing    demo/slow  f/default  value 20")
    assert lines[3].endswith("command pause_rollout  page trigger")
    # exact: all also reports the firing at 19m as unexpected
    assert result.failures[1].startswith("expected no other decision of any rule (exact: all)\ngot also:\n  at 19m")


@pytest.mark.parametrize(
    "expectation, passes",
    [
        ("expect: [{from: 17m, to: 20m, rule: slow, transition: firing}]", True),
        ("expect: [{from: 20m, rule: slow, transition: firing}]", False),
        ("expect: [{at: 19m, rule: slow, transition: firing, command: none}]", False),
        ("expect: [{at: 19m, rule: slow, transition: firing, mode: shadow}]", False),
        ("expect_no: [{rule: slow, transition: pending, from: 17m}]", True),
        ("expect_no: [{rule: slow, transition: pending, to: 17m}]", False),
        ("expect_no: ['*']", False),
        ("expect: [{at: 16m, rule: slow, transition: pending}]\n    exact: listed", False),
        ("expect: [{at: 16m, rule: slow, transition: pending}, {at: 19m, rule: slow, transition: firing}]\n"
         "    exact: listed", True),
    ],
    ids=["span", "span-misses", "wrong-command", "wrong-mode", "expect-no-after", "expect-no-during", "glob",
         "exact-listed-misses-one", "exact-listed"],
)  # fmt: skip
def test_expectations_match_what_they_say(cases_dir, expectation, passes):
    text = PASSING.split("    expect:")[0] + "    " + expectation + "\n"
    cf = load_cases(write_cases(cases_dir, text))
    assert run_case(cf, cf.cases[0]).passed is passes


def test_held_kills_and_operator_resumes_can_be_expected(cases_dir):
    text = """\
rule_files: [rules.yaml]
feature: f
max_kills_per_hour: 0
tests:
  - name: the breaker holds the kill
    series: [{type: interaction, to: 10m, every: 10s, fields: {flags: {pii_leak: 1, _: 59}}}]
    expect: [{at: 5m, rule: leak, transition: held, command: none, page: trigger}]
    exact: all
  - name: a resume ends the incident, the next leak starts a new one
    max_kills_per_hour: 5
    series: [{type: interaction, to: 20m, every: 10s, fields: {flags: {pii_leak: 1, _: 59}}}]
    events: [{type: control, action: resume, at: 7m, reason: fixed}]
    expect:
      - {at: 5m, rule: leak, transition: firing, command: rollback}
      - {at: 7m, rule: leak, transition: resolved, page: resolve}
      - {at: 15m, rule: leak, transition: firing, command: rollback}
    exact: all
"""
    cf = load_cases(write_cases(cases_dir, text))
    assert [run_case(cf, c).failures for c in cf.cases] == [[], []]


# ------------------------------------------------------------------------------------------------ command line


def test_exit_codes(cases_dir, capsys):
    good = write_cases(cases_dir, PASSING, "good.test.yaml")
    bad = write_cases(cases_dir, PASSING.replace("at: 19m", "at: 20m"), "failing.test.yaml")
    invalid = write_cases(cases_dir, PASSING.replace("rule: slow", "rule: slo"), "invalid.test.yaml")
    assert main(["rules", "test", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"Unit testing: {good}", "  OK      slow requests pause after for",
                                "1 test(s) in 1 file(s): 1 passed, 0 failed"]  # fmt: skip
    assert main(["rules", "test", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "  FAILED  slow requests pause after for\n    expected at 20m: slow firing" in out
    assert out.endswith("2 test(s) in 2 file(s): 1 passed, 1 failed\n")
    assert main(["rules", "test", str(good), str(invalid)]) == 2
    assert "rule: no rule 'slo' in demo (did you mean 'slow'?)" in capsys.readouterr().out
    assert main(["rules", "test", str(cases_dir / "missing.yaml")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("cases_name", ["demo.test.yaml", "demo-cases.yaml"], ids=["by-name", "by-tests-key"])
def test_a_pack_and_its_cases_in_one_folder_work_with_validate_and_test(cases_dir, capsys, cases_name):
    """The layout docs/rules-testing.md suggests: `rules validate DIR` skips the cases file, `rules test DIR` the
    rule file, and both say what they skipped."""
    write_cases(cases_dir, PASSING, cases_name)
    assert main(["rules", "validate", str(cases_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    skip = f"skip {cases_dir / cases_name}  (a `rules test` cases file: run it with `rollguard rules test`)"
    assert out[-2:] == [skip, "1 rule set(s), 3 rules: valid; skipped 1 rules-test cases file"]
    assert main(["rules", "test", str(cases_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Unit testing: {cases_dir / 'rules.yaml'}" not in out
    assert out.endswith("1 test(s) in 1 file(s): 1 passed, 0 failed; skipped 1 rule file(s)\n")


def test_run_filters_tests_by_name_and_a_filter_matching_nothing_is_an_error(cases_dir, capsys):
    path = write_cases(cases_dir, PASSING)
    assert main(["rules", "test", str(path), "--run", "pause after"]) == 0
    assert "1 passed" in capsys.readouterr().out
    assert main(["rules", "test", str(path), "--run", "^nothing$"]) == 2
    assert "no test matched --run" in capsys.readouterr().err
    assert main(["rules", "test", str(path), "--run", "("]) == 2


def test_the_documented_example_runs_as_documented(tmp_path, capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "rules-testing.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:]]
    for name in ("checkout-assistant.yaml", "checkout-assistant.test.yaml"):
        [text] = [b for b in blocks if b.startswith(f"# {name}\n")]
        (tmp_path / name).write_text(text)
    assert main(["rules", "test", str(tmp_path / "checkout-assistant.test.yaml")]) == 0
    shown = doc.split("$ rollguard rules test checkout-assistant.test.yaml\n", 1)[1].split("```", 1)[0]
    assert capsys.readouterr().out.replace(str(tmp_path) + "/", "") == shown


# ------------------------------------------------------------------------------------------------ the catalogue

CATALOG_TESTS = CATALOG / "tests"
PACKS = sorted(p.stem for p in CATALOG.glob("*.yaml"))


def test_every_catalogue_pack_has_a_cases_file():
    assert sorted(p.name.removesuffix(".test.yaml") for p in CATALOG_TESTS.glob("*.test.yaml")) == PACKS


@pytest.mark.parametrize("pack", PACKS)
def test_catalogue_cases_pass(pack):
    """The CI use: every rule pack's cases pass; each pack has a clean-traffic case, a case that pages, and a case
    for each kind of command (rollback, pause, a rule's own action) its enforced rules can send."""
    cf = load_cases(CATALOG_TESTS / f"{pack}.test.yaml")
    results = [run_case(cf, case) for case in cf.cases]
    failed = {r.name: r.failures for r in results if not r.passed}
    assert not failed, failed
    # a rule left without data by a short synthetic stream may page that it is starved: not a page about the feature
    clean = [c for c, r in zip(cf.cases, results) if c.exact == "all" and not r.outputs.commands
             and not [p for p in r.outputs.pages if not p["payload"]["class"].endswith(".starved")]]  # fmt: skip
    assert clean, "no clean-traffic case (exact: all, no command, no page but starved-rule pages)"
    assert any(p["event_action"] == "trigger" and not p["payload"]["class"].endswith(".starved")
               for r in results for p in r.outputs.pages), "nothing ever fires"  # fmt: skip
    actions = {"kill": "rollback", "pause": "pause_rollout"}
    enforced = {r.action or actions[r.tier] for rs in cf.rulesets for r in rs.rules
                if r.mode == "enforce" and r.tier in actions}  # fmt: skip
    assert enforced <= {c["action"] for r in results for c in r.outputs.commands}
