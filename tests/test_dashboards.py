"""The generated Grafana dashboards and the deploy/ provisioning: structure, one panel per rule, staleness,
query expansion, metric names from the contract, PromQL that Prometheus parses, configs promtool accepts."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.launch import KEY_METRICS
from dashboards.provisioning import (
    DASHBOARDS_MOUNT,
    GRAFANA_FOLDER,
    GRAFANA_FOLDER_UID,
    METRICS_PATH,
    METRICS_PORT,
    PROMETHEUS_UID,
    SCRAPE_JOB,
)
from dashboards.queries import UnknownVariable, expand, panel_queries, validate_dashboard, variables
from dashboards.render import LAUNCH_FILE, OPERATIONS_FILE, rules_file, uid_for
from rules.loader import load_rules
from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
CATALOG = ROOT / "rules" / "catalog"
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")

# The metric contract (the worker's exposition; Prometheus adds job and instance). Histograms are listed by base
# name; their _bucket/_sum/_count series are allowed below.
METRIC_NAMES = frozenset(
    {
        "rollguard_rule_value",
        "rollguard_rule_compared",
        "rollguard_rule_threshold",
        "rollguard_rule_threshold_high",
        "rollguard_rule_resolve_threshold",
        "rollguard_rule_interval_low",
        "rollguard_rule_interval_high",
        "rollguard_rule_arm_value",
        "rollguard_rule_arm_samples",
        "rollguard_rule_condition_value",
        "rollguard_rule_condition_threshold",
        "rollguard_rule_samples",
        "rollguard_rule_state",
        "rollguard_rule_evaluated_timestamp_seconds",
        "rollguard_feature_tier",
        "rollguard_feature_latch",
        "rollguard_feature_firing_rules",
        "rollguard_promotion_verdict",
        "rollguard_promotion_signoffs_missing",
        "rollguard_watermark_delay_seconds",
        "rollguard_feature_watermark_timestamp_seconds",
        "rollguard_events_total",
        "rollguard_invalid_events_total",
        "rollguard_late_events_total",
        "rollguard_duplicate_events_total",
        "rollguard_messages_total",
        "rollguard_decisions_total",
        "rollguard_commands_total",
        "rollguard_pages_total",
        "rollguard_breaker_held_total",
        "rollguard_batches_total",
        "rollguard_batch_failures_total",
        "rollguard_batch_duration_seconds",
        "rollguard_redis_duration_seconds",
        "rollguard_consumer_lag",
        "rollguard_last_state_write_timestamp_seconds",
        "rollguard_rules_info",
        "rollguard_rules_loaded_timestamp_seconds",
        "rollguard_assigned_partitions",
        "rollguard_degraded",
        "rollguard_worker_info",
        "rollguard_metrics_series_dropped",
    }
)
HISTOGRAMS = ("rollguard_batch_duration_seconds", "rollguard_redis_duration_seconds")
ALLOWED_SERIES = METRIC_NAMES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
LABELS = frozenset(
    "feature phase ruleset rule tier metric group state latch type reason transition action severity op topic arm "
    "partition version app_id instance job le to verdict condition".split()
)
_PROMQL_WORDS = frozenset({"bool", "and", "or", "unless", "offset", "on", "ignoring", "group_left", "group_right"})


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


COMMITTED = sorted(DASHBOARDS.glob("*.json"))
RULESETS = load_rules([CATALOG])


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in COMMITTED}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


# --- structure -----------------------------------------------------------------------------------------------------


def test_there_is_a_dashboard_per_rule_pack_and_the_two_fixed_ones():
    expected = {LAUNCH_FILE, OPERATIONS_FILE} | {rules_file(rs) for rs in RULESETS}
    assert {p.name for p in COMMITTED} == expected


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_dashboard_validates(path):
    assert validate_dashboard(_load(path)) == []


def test_uids_are_unique_and_derived_from_names(dashboards):
    uids = {d["uid"] for d in dashboards.values()}
    assert len(uids) == len(dashboards)
    for rs in RULESETS:
        assert dashboards[rules_file(rs)]["uid"] == uid_for("rules", rs.name)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("safe-llm", "rollguard-rules-safe-llm"),
        ("email-reply-general-availability", "rollguard-rules-email-reply-gen-fb11e7ee"),  # too long: prefix + hash
        ("v1.2", "rollguard-rules-v1-2-0e4f5bce"),  # '.' is not allowed in a uid
    ],
)
def test_uid_for(name, expected):
    assert uid_for("rules", name) == expected
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", expected)


def test_uid_for_keeps_names_that_differ_only_in_punctuation_apart():
    assert uid_for("rules", "a.b") != uid_for("rules", "a-b")


def _valid() -> dict[str, Any]:
    return _load(DASHBOARDS / LAUNCH_FILE)


def _first_panel(d: dict[str, Any]) -> dict[str, Any]:
    return _panels(d)[0]


def _break_schema(d):
    d["schemaVersion"] = 30


def _break_uid(d):
    d["uid"] = "x" * 41


def _duplicate_id(d):
    _panels(d)[1]["id"] = _panels(d)[0]["id"]


def _drop_grid(d):
    del _first_panel(d)["gridPos"]


def _overlap(d):
    _panels(d)[1]["gridPos"] = dict(_panels(d)[0]["gridPos"])


def _empty_title(d):
    _first_panel(d)["title"] = ""


def _foreign_datasource(d):
    _first_panel(d)["targets"][0]["datasource"] = {"type": "prometheus", "uid": "someone-elses"}


def _undefined_variable(d):
    _first_panel(d)["targets"][0]["expr"] += ' + on() rollguard_degraded{instance=~"$host"}'


def _undefined_datasource_variable(d):
    d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "datasource"]


@pytest.mark.parametrize(
    "breaks, message",
    [
        (_break_schema, "schemaVersion 30"),
        (_break_uid, "uid 'xxxx"),
        (_duplicate_id, "is used twice"),
        (_drop_grid, "gridPos missing"),
        (_overlap, "overlap"),
        (_empty_title, "title is empty"),
        (_foreign_datasource, "'someone-elses' is neither"),
        (_undefined_variable, "undefined variable $host"),
        (_undefined_datasource_variable, "undefined variable $datasource"),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_validate_dashboard_reports_each_problem(breaks, message):
    dashboard = copy.deepcopy(_valid())
    breaks(dashboard)
    problems = validate_dashboard(dashboard)
    assert any(message in p for p in problems), problems


# --- one panel per rule --------------------------------------------------------------------------------------------


def _rule_cases():
    for rs in RULESETS:
        for rule in rs.rules:
            yield pytest.param(rs, rule, id=f"{rs.name}/{rule.id}")


@pytest.mark.parametrize("ruleset, rule", list(_rule_cases()))
def test_each_rule_has_exactly_one_panel_with_its_threshold(dashboards, ruleset, rule):
    dashboard = dashboards[rules_file(ruleset)]
    mine = [
        p for p in _panels(dashboard)
        if any(f'rule="{rule.id}"' in t["expr"] for t in p.get("targets", []))
    ]  # fmt: skip
    assert len(mine) == 1, [p["title"] for p in mine]
    [panel] = mine
    assert rule.tier.upper() in panel["title"] and rule.id in panel["title"]
    exprs = [t["expr"] for t in panel["targets"]]
    assert all(f'ruleset="{ruleset.name}"' in e for e in exprs)
    assert any('state="firing"' in e for e in exprs)
    defaults = panel["fieldConfig"]["defaults"]
    if rule.drift is not None:
        assert any(e.startswith("max by (feature, phase, group) (rollguard_rule_value{") for e in exprs)
        assert not any("rollguard_rule_threshold" in e for e in exprs)
        return
    if rule.conditions:  # all / any: each condition's value and line, no single threshold
        assert any(e.startswith("max by (feature, phase, group, condition) (rollguard_rule_condition_value{")
                   for e in exprs)  # fmt: skip
        assert any("rollguard_rule_condition_threshold{" in e for e in exprs)
        assert not any("rollguard_rule_threshold{" in e for e in exprs)
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "off"
        return
    assert any("rollguard_rule_compared{" in e for e in exprs)
    assert any("rollguard_rule_threshold{" in e for e in exprs)
    if rule.threshold_high is not None:  # a band: its two lines, red inside (between) or outside (outside)
        assert any("rollguard_rule_threshold_high{" in e for e in exprs)
        base, low, high = defaults["thresholds"]["steps"]
        assert (low["value"], high["value"]) == (rule.threshold, rule.threshold_high)
        red_inside = rule.op == "between"
        assert (base["color"], low["color"], high["color"]) == (
            ("transparent", "red", "transparent") if red_inside else ("red", "transparent", "red"))
        return
    base, step = defaults["thresholds"]["steps"]
    assert step["value"] == rule.threshold
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    # red on the side where the rule's condition holds
    bad_above = rule.op in (">", ">=")
    assert (step["color"], base["color"]) == (("red", "transparent") if bad_above else ("transparent", "red"))
    if rule.summary:
        assert rule.summary in panel["description"]


@pytest.mark.parametrize("ruleset", RULESETS, ids=lambda rs: rs.name)
def test_rule_panels_sit_in_rows_by_tier(dashboards, ruleset):
    order, current = [], None
    for panel in dashboards[rules_file(ruleset)]["panels"]:
        if panel["type"] == "row":
            current = panel["title"].split()[0].lower()
            order.append(current)
        elif current == "promotion":  # the promotion block's verdict, last (rules.md §4.14)
            assert panel["title"] == f"Promotion verdict → {ruleset.promotion.to}"
            assert "rollguard_promotion_verdict" in panel["targets"][0]["expr"]
        else:
            assert panel["title"].startswith(current.upper() + " ·"), (current, panel["title"])
    tiers = [t for t in ("kill", "pause", "investigate") if any(r.tier == t for r in ruleset.rules)]
    assert order == tiers + ["promotion"] * (ruleset.promotion is not None)


# --- staleness -----------------------------------------------------------------------------------------------------


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path, capsys):
    assert main(["dashboards", "build", "--rules", str(CATALOG), "--out", str(tmp_path)]) == 0
    built = sorted(p.name for p in tmp_path.glob("*.json"))
    assert built == [p.name for p in COMMITTED], "dashboards/ is stale: run `rollguard dashboards build`"
    stale = [p.name for p in COMMITTED if (tmp_path / p.name).read_bytes() != p.read_bytes()]
    assert not stale, f"stale dashboards {stale}: run `rollguard dashboards build` and commit the result"


def test_build_reports_rule_pack_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "rules-gone.json").write_text("{}")
    assert main(["dashboards", "build", "--rules", str(CATALOG / "safe-llm.yaml"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rules-gone.json was not regenerated" in out
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        LAUNCH_FILE, OPERATIONS_FILE, "rules-gone.json", "rules-safe-llm.json"
    ]  # fmt: skip


def test_build_with_invalid_rules_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nfeatures: ['*']\nrules:\n  - id: x\n    tier: nuke\n")
    assert main(["dashboards", "build", "--rules", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "invalid rules" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- expand --------------------------------------------------------------------------------------------------------

VALUES = {"feature": "email-reply", "phase": ".*", "segment": "platform=ios"}


@pytest.mark.parametrize(
    "expr, expected",
    [
        ('x{feature=~"$feature"}', 'x{feature=~"email-reply"}'),
        ('x{feature=~"${feature}"}', 'x{feature=~"email-reply"}'),
        ('x{group=~"${segment:regex}"}', 'x{group=~"platform=ios"}'),
        ('x{phase=~"[[phase]]"}', 'x{phase=~".*"}'),
        ("rate(x[$__rate_interval])", "rate(x[2m])"),
        ("avg_over_time(x[$__interval])", "avg_over_time(x[30s])"),
        ("increase(x[$__range])", "increase(x[6h])"),
        ('x{a="$feature",b="$phase"} > bool 0', 'x{a="email-reply",b=".*"} > bool 0'),
        ('x{a=~"^ok$"}', 'x{a=~"^ok$"}'),  # a regex anchor is not a variable
        ("up", "up"),
    ],
)
def test_expand(expr, expected):
    assert expand(expr, VALUES, rate_interval="2m", interval="30s", time_range="6h") == expected


@pytest.mark.parametrize(
    "expr, error",
    [
        ('x{a=~"$instance"}', UnknownVariable),
        ('x{a=~"${feature:csv}"}', ValueError),
        ('x{a=~"${feature.text}"}', ValueError),
    ],
)
def test_expand_refuses_what_it_cannot_substitute(expr, error):
    with pytest.raises(error):
        expand(expr, VALUES)


def test_every_query_expands_with_the_dashboards_own_variables(dashboards):
    for name, dashboard in dashboards.items():
        values = {v: ".*" for v in variables(dashboard)}
        for q in panel_queries(dashboard):
            assert "$" not in expand(q.expr, values), (name, q)


# --- metric names and PromQL ---------------------------------------------------------------------------------------


def _strip(expr: str) -> str:
    """The expression without string literals, matcher bodies, range/grouping contents."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    return re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)


def _labels(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        found |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found |= {label.strip() for label in body.split(",") if label.strip()}
    return found


def _series_names(expr: str) -> set[str]:
    stripped = re.sub(r"\{[^}]*\}", "", _strip(expr))
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", stripped):
        following = stripped[m.end() :].lstrip()
        if following.startswith("(") or m.group() in _PROMQL_WORDS:
            continue  # a function or aggregation, or an operator keyword
        names.add(m.group())
    return names


def _all_exprs(dashboards) -> list[tuple[str, str]]:
    exprs = []
    for name, dashboard in dashboards.items():
        exprs += [(f"{name} {q.panel}/{q.ref_id}", q.expr) for q in panel_queries(dashboard)]
        for var in variables(dashboard).values():
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"])
                assert m, var["query"]
                exprs.append((f"{name} ${var['name']}", f"max by ({m.group(2)}) ({m.group(1)})"))
    return exprs


@pytest.mark.parametrize(
    "expr, names, labels",
    [
        ('sum by (le, op) (rate(a_bucket{x="}"}[5m]))', {"a_bucket"}, {"le", "op", "x"}),
        ('time() - max by (instance) (b{feature=~"$f"}) > bool 0', {"b"}, {"instance", "feature"}),
        ("up", {"up"}, set()),
    ],
)
def test_the_metric_name_reader(expr, names, labels):
    assert _series_names(expr) == names
    assert _labels(expr) == labels


def test_queries_use_only_metric_names_and_labels_of_the_contract(dashboards):
    unknown = []
    for where, expr in _all_exprs(dashboards):
        unknown += [f"{where}: metric {n}" for n in _series_names(expr) - ALLOWED_SERIES]
        unknown += [f"{where}: label {n}" for n in _labels(expr) - LABELS]
    assert not unknown, "\n".join(unknown)


def test_launch_guardrails_reads_the_runbooks_key_metrics(dashboards):
    exprs = [q.expr for q in panel_queries(dashboards[LAUNCH_FILE])]
    for _, metric, _ in KEY_METRICS:
        op = "=~" if metric.endswith(".*") else "="
        assert any('rollguard_rule_value{' in e and f'metric{op}"{metric}"' in e for e in exprs), metric
    assert any('rollguard_rule_state{state="firing"' in e and e.endswith("> 0") for e in exprs)
    assert any("rollguard_feature_latch" in e for e in exprs)


def test_launch_guardrails_tier_stat_maps_values_to_tiers(dashboards):
    [stat] = [p for p in _panels(dashboards[LAUNCH_FILE]) if p["title"] == "Current tier"]
    [mapping] = stat["fieldConfig"]["defaults"]["mappings"]
    shown = {k: (v["text"], v["color"]) for k, v in mapping["options"].items()}
    assert shown == {"0": ("OK", "green"), "1": ("INVESTIGATE", "yellow"), "2": ("PAUSE", "orange"),
                     "3": ("KILL", "red")}  # fmt: skip
    assert "rollguard_feature_tier" in stat["targets"][0]["expr"]


@pytest.mark.parametrize("name", [LAUNCH_FILE] + [rules_file(rs) for rs in RULESETS])
def test_feature_phase_and_segment_variables(dashboards, name):
    found = variables(dashboards[name])
    assert list(found) == ["datasource", "feature", "phase", "segment"]
    for var in ("feature", "phase", "segment"):
        assert found[var]["includeAll"] and found[var]["multi"] and found[var]["allValue"] == ".*"
    assert found["segment"]["query"].endswith(", group)")
    rule_state = [q.expr for q in panel_queries(dashboards[name]) if "rollguard_rule_state" in q.expr]
    assert rule_state and all('group=~"$segment"' in e for e in rule_state)


@pytest.mark.parametrize(
    "needle",
    [
        "rate(rollguard_events_total{",
        "rollguard_messages_total",
        "rollguard_consumer_lag",
        "sum by (reason) (rate(rollguard_invalid_events_total",
        "histogram_quantile(0.5, sum by (le) (rate(rollguard_batch_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(rollguard_batch_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, op) (rate(rollguard_redis_duration_seconds_bucket",
        "count(rollguard_worker_info",
        "rollguard_assigned_partitions",
        "rollguard_breaker_held_total",
        "rollguard_commands_total",
        "rollguard_pages_total",
        "rollguard_degraded",
        "rollguard_watermark_delay_seconds",
        "time() - max by (instance) (rollguard_last_state_write_timestamp_seconds",
        "rollguard_rules_info",
    ],
)
def test_operations_dashboard_covers(dashboards, needle):
    assert any(needle in q.expr for q in panel_queries(dashboards[OPERATIONS_FILE])), needle


@needs_promtool
def test_every_query_is_promql_that_prometheus_parses(dashboards, tmp_path):
    """promtool parses each query (variables expanded) as the expression of a recording rule."""
    rules = [
        {"record": f"rollguard_check:q{i}", "expr": expand(expr, _ALL)}
        for i, (_, expr) in enumerate(_all_exprs(dashboards))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout


_ALL = {"feature": ".*", "phase": ".*", "segment": ".*", "instance": ".*", "datasource": PROMETHEUS_UID}


# --- provisioning --------------------------------------------------------------------------------------------------


def _yaml(rel: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / rel).read_text())


def test_datasource_provisioning_has_the_uid_the_dashboards_default_to(dashboards):
    [ds] = _yaml("grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert (ds["type"], ds["uid"]) == ("prometheus", PROMETHEUS_UID)
    assert ds["jsonData"]["timeInterval"] == _yaml("prometheus/prometheus.yml")["scrape_configs"][0]["scrape_interval"]
    for name, dashboard in dashboards.items():
        var = variables(dashboard)["datasource"]
        assert (var["type"], var["query"], var["current"]["value"]) == ("datasource", "prometheus", PROMETHEUS_UID)


def test_dashboard_provider_loads_the_dashboards_folder():
    from streams.grafana.dashboard_push import folder_uid

    [provider] = _yaml("grafana/provisioning/dashboards/rollguard.yaml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    assert (provider["folder"], provider["folderUid"]) == (GRAFANA_FOLDER, GRAFANA_FOLDER_UID)
    assert folder_uid(GRAFANA_FOLDER) == GRAFANA_FOLDER_UID  # `dashboards push` lands in the same folder


def test_prometheus_scrapes_the_workers():
    config = _yaml("prometheus/prometheus.yml")
    [job] = config["scrape_configs"]
    assert (job["job_name"], job["scrape_interval"], job["metrics_path"]) == (SCRAPE_JOB, "15s", METRICS_PATH)
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    for sd in job["file_sd_configs"]:
        for pattern in sd["files"]:
            files = sorted((DEPLOY / "prometheus").glob(pattern))
            assert files, pattern
            targets += [t for f in files for group in json.loads(f.read_text()) for t in group["targets"]]
    assert targets and all(t.endswith(f":{METRICS_PORT}") for t in targets), targets


def test_metrics_port_matches_the_worker_setting():
    from streams.settings import Settings

    assert Settings.model_fields["metrics_port"].default == METRICS_PORT


@needs_promtool
def test_promtool_accepts_the_prometheus_config():
    res = subprocess.run(
        [PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
