"""Grafana: ``dashboards push`` and the ``annotate`` consumer, against a recording fake of Grafana's HTTP API that
checks every request's documented shape (tests/grafana_fake.py), and on the embedded broker for the consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine_kit import MIN, T0, resume, rules, run, traffic
from grafana_fake import FakeGrafana
from live_kit import ROOT, produce_raw
from rules.outputs import command, decision
from streams.grafana.annotations import AnnotationPlanner, InvalidRecord, annotation_for
from streams.cli import main
from streams.grafana.dashboard_push import folder_uid
from streams.kafka.topics import Topics, ensure_topics

TOKEN = "glsa_fake_0123456789abcdef"


@pytest.fixture
def grafana(monkeypatch):
    for name in ("GRAFANA_URL", "ROLLGUARD_KAFKA_BOOTSTRAP", "ROLLGUARD_TOPIC_PREFIX", "ROLLGUARD_APP_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with FakeGrafana(TOKEN) as fake:
        yield fake
    assert fake.violations == []


@pytest.fixture
def boards(tmp_path) -> Path:
    d = tmp_path / "dashboards"
    d.mkdir()
    write(d / "overview.json", {"uid": "rg-overview", "title": "rollguard overview", "schemaVersion": 39,
                                "panels": [{"id": 1, "type": "timeseries", "title": "decisions"}]})  # fmt: skip
    # Grafana's export wrapper is accepted too
    write(d / "rules.json", {"dashboard": {"uid": "rg-rules", "title": "rollguard rules", "panels": []}})
    return d


def write(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj))


def push(fake: FakeGrafana, folder: Path, *extra: str) -> int:
    return main(["dashboards", "push", "--url", fake.url, "--dir", str(folder), *extra])


# --- dashboards push --------------------------------------------------------------------------------------------


def test_push_creates_the_folder_and_every_dashboard(grafana, boards, capsys):
    assert push(grafana, boards, "--folder", "rollguard test") == 0
    uid = folder_uid("rollguard test")
    assert grafana.folders[uid]["title"] == "rollguard test"
    writes = grafana.calls("POST", "/api/dashboards/db")
    assert sorted(w.body["dashboard"]["uid"] for w in writes) == ["rg-overview", "rg-rules"]
    assert all(w.body["folderUid"] == uid and w.body["overwrite"] is True and w.body["message"] for w in writes)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in grafana.requests)
    assert grafana.dashboards["rg-overview"]["dashboard"]["panels"][0]["title"] == "decisions"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"folder     'rollguard test' (uid {uid}): created"
    assert [line.split()[:2] for line in lines[1:3]] == [["created", "rg-overview"], ["created", "rg-rules"]]
    assert lines[3].endswith(": 2 created")


def test_a_second_push_reports_unchanged_and_writes_nothing(grafana, boards, capsys):
    assert push(grafana, boards) == 0
    n_requests = len(grafana.requests)
    capsys.readouterr()
    assert push(grafana, boards) == 0
    again = grafana.requests[n_requests:]
    assert [r.method for r in again] == ["GET", "GET", "GET"]  # the folder and the two dashboards, read only
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("folder") and lines[0].endswith(": exists")
    assert [line.split()[0] for line in lines[1:3]] == ["unchanged", "unchanged"]
    assert lines[3].endswith(": 2 unchanged")


def test_a_changed_dashboard_is_updated_and_only_it(grafana, boards, capsys):
    assert push(grafana, boards) == 0
    model = json.loads((boards / "overview.json").read_text())
    model["panels"].append({"id": 2, "type": "stat", "title": "kills"})
    write(boards / "overview.json", model)
    capsys.readouterr()
    assert push(grafana, boards) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("updated") and "rg-overview" in line for line in lines)
    assert any(line.startswith("unchanged") and "rg-rules" in line for line in lines)
    writes = grafana.calls("POST", "/api/dashboards/db")
    assert [w.body["dashboard"]["uid"] for w in writes[2:]] == ["rg-overview"]
    assert grafana.dashboards["rg-overview"]["dashboard"]["version"] == 2
    assert len(grafana.dashboards["rg-overview"]["dashboard"]["panels"]) == 2


def test_a_dashboard_in_another_folder_is_moved(grafana, boards, capsys):
    assert push(grafana, boards) == 0
    assert push(grafana, boards, "--folder", "elsewhere") == 0
    assert {d["meta"]["folderUid"] for d in grafana.dashboards.values()} == {folder_uid("elsewhere")}
    assert "2 updated" in capsys.readouterr().out


def test_dry_run_reads_and_writes_nothing(grafana, boards, capsys):
    assert push(grafana, boards, "--dry-run") == 0
    assert {r.method for r in grafana.requests} == {"GET"}
    out = capsys.readouterr().out
    assert "would create" in out and "2 would create" in out and "nothing written" in out


def test_an_existing_folder_of_the_same_title_is_reused(monkeypatch, boards, capsys):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with FakeGrafana(TOKEN, unique_folder_titles=True) as fake:
        fake.folders["made-by-hand"] = {"id": 1, "uid": "made-by-hand", "title": "rollguard"}
        assert push(fake, boards) == 0
        assert {d["meta"]["folderUid"] for d in fake.dashboards.values()} == {"made-by-hand"}
        assert fake.violations == []


@pytest.mark.parametrize(
    "case, setup, argv, message",
    [
        ("wrong token", {"token": "glsa_wrong_secret_value"}, [], "HTTP 401"),
        ("no token", {"token": None}, [], "no Grafana token"),
        ("token lacks permission", {"fail": ("POST", "/api/dashboards/db", 403, "Access denied")}, [],
         "HTTP 403 to POST /api/dashboards/db: Access denied"),
        ("Grafana failing", {"fail": ("GET", "/api/dashboards/uid/rg-overview", 500, "database is locked")}, [],
         "HTTP 500"),
        ("URL is not Grafana's root", {"url": "{url}/not-grafana"}, [], "HTTP 404 to POST /api/folders"),
        ("unreachable", {"url": "http://127.0.0.1:1"}, [], "cannot reach Grafana at http://127.0.0.1:1"),
        ("not a URL", {"url": "grafana:3000"}, [], "invalid Grafana URL"),
        ("credentials in the URL", {"url": "http://admin:secret@127.0.0.1:1"}, [], "not in the Grafana URL"),
        ("bad folder uid", {}, ["--folder-uid", "has space"], "--folder-uid"),
    ],
)  # fmt: skip
def test_push_errors_exit_2_with_a_clear_message_and_never_the_token(grafana, boards, capsys, monkeypatch, case,
                                                                     setup, argv, message):  # fmt: skip
    token = setup.get("token", TOKEN)
    if token is None:
        monkeypatch.delenv("GRAFANA_TOKEN")
    else:
        monkeypatch.setenv("GRAFANA_TOKEN", token)
    if "fail" in setup:
        grafana.fail_next(*setup["fail"])
    url = setup.get("url", "{url}").format(url=grafana.url)
    assert main(["dashboards", "push", "--url", url, "--dir", str(boards), *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err
    assert "Traceback" not in err
    for secret in (TOKEN, "glsa_wrong_secret_value", "secret@"):
        assert secret not in out + err


def test_invalid_dashboard_files_are_all_reported_before_anything_is_sent(grafana, tmp_path, capsys):
    (tmp_path / "a.json").write_text("{not json")
    write(tmp_path / "b.json", {"title": "no uid"})
    write(tmp_path / "c.json", {"uid": "x" * 41, "title": "uid too long"})
    write(tmp_path / "d.json", {"uid": "dup", "title": "one"})
    write(tmp_path / "e.json", {"uid": "dup", "title": "two"})
    assert push(grafana, tmp_path) == 2
    err = capsys.readouterr().err
    assert all(f"{name}.json" in err for name in "abce")
    assert grafana.requests == []


def test_push_the_generated_dashboards_into_the_provisioned_folder(grafana, capsys):
    from dashboards.provisioning import GRAFANA_FOLDER_UID

    real = ROOT / "dashboards"
    files = sorted(real.glob("*.json"))
    assert folder_uid("rollguard") == GRAFANA_FOLDER_UID  # push and file provisioning share one folder
    assert push(grafana, real) == 0
    assert len(grafana.dashboards) == len(files) > 0
    assert {d["meta"]["folderUid"] for d in grafana.dashboards.values()} == {GRAFANA_FOLDER_UID}
    assert push(grafana, real) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f": {len(files)} unchanged")


# --- annotation_for ---------------------------------------------------------------------------------------------

RULES = """
version: 1
name: errs
features: ["f"]
defaults: {every: 1m, min_samples: 10}
rules:
  - {id: errors-investigate, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m,
     summary: "error rate {value:.0%} > {threshold:.0%}"}
  - {id: errors-kill, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, for: 2m,
     summary: "error rate {value:.0%} > {threshold:.0%} for 2m"}
  - {id: errors-late, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, for: 4m}
  - {id: errors-shadow, tier: pause, mode: shadow, metric: error_rate, op: ">", threshold: 0.5, window: 1m}
  - id: acceptance-drift
    tier: investigate
    drift: {detector: page_hinkley, signal: error}
"""
RS = rules(RULES)[0]
RULE = {r.id: r for r in RS.rules}
TS = T0 + 5 * MIN  # 2026-11-02T00:05:00Z


def dec(rule_id: str = "errors-kill", transition: str = "firing", value: float | None = 0.8, **extra) -> dict:
    return decision(t=TS, ruleset=RS, rule=RULE[rule_id], feature="email-reply", phase="beta", group={},
                    transition=transition, metric="error_rate", value=value, samples=40, window_start=TS - MIN,
                    window_end=TS, extra=extra or None)  # fmt: skip


def cmd(tier: str = "kill") -> dict:
    return command(tier=tier, dec=dec(), incident=TS - 2 * MIN)


def tags(tier: str, what: str, rule_id: str = "errors-kill", mode: str | None = "enforce") -> list[str]:
    base = ["rollguard", "feature:email-reply", "phase:beta", f"tier:{tier}", what, "ruleset:errs", f"rule:{rule_id}"]
    return base + ([f"mode:{mode}"] if mode else [])


@pytest.mark.parametrize(
    "case, record, kind, kw, expected",
    [
        ("kill firing", dec(), "decision", {},
         {"time": TS, "tags": tags("kill", "transition:firing"),
          "text": "kill firing: error rate 80% > 50% for 2m (value 0.8 > threshold 0.5)"}),
        ("held by the kill breaker", dec(transition="held"), "decision", {},
         {"time": TS, "tags": tags("kill", "transition:held"),
          "text": "kill held: error rate 80% > 50% for 2m (value 0.8 > threshold 0.5)"}),
        ("inhibited by a kill", dec("errors-investigate", "inhibited"), "decision", {},
         {"time": TS, "tags": tags("investigate", "transition:inhibited", "errors-investigate"),
          "text": "investigate inhibited: error rate 80% > 50% (value 0.8 > threshold 0.5)"}),
        ("resolved, start known: a region", dec("errors-investigate", "resolved", 0.1), "decision",
         {"since_ms": TS - 3 * MIN},
         {"time": TS - 3 * MIN, "timeEnd": TS, "tags": tags("investigate", "transition:resolved", "errors-investigate"),
          "text": "investigate resolved: error rate 10% > 50% (value 0.1 > threshold 0.5)"}),
        ("resolved, start unknown: a point", dec("errors-investigate", "resolved", 0.1), "decision", {},
         {"time": TS, "tags": tags("investigate", "transition:resolved", "errors-investigate"),
          "text": "investigate resolved: error rate 10% > 50% (value 0.1 > threshold 0.5)"}),
        ("resolved by an operator: no operator, no reason",
         dec("errors-kill", "resolved", None, cause="operator_resume", resume_id="r1", reason="ask jane@example.com",
             operator="jane"), "decision", {"since_ms": TS - MIN},
         {"time": TS - MIN, "timeEnd": TS, "tags": tags("kill", "transition:resolved"),
          "text": "kill resolved: kill: errs/errors-kill on email-reply/beta: error_rate = n/a > 0.5 "
                  "(operator resume)"}),
        ("shadow rule", dec("errors-shadow"), "decision", {},
         {"time": TS, "tags": tags("pause", "transition:firing", "errors-shadow", "shadow"),
          "text": "pause firing: pause: errs/errors-shadow on email-reply/beta: error_rate = 0.8 > 0.5 "
                  "(value 0.8 > threshold 0.5)"}),
        ("drift rule: no threshold", dec("acceptance-drift", value=1.0), "decision", {},
         {"time": TS, "tags": tags("investigate", "transition:firing", "acceptance-drift"),
          "text": "investigate firing: investigate: errs/acceptance-drift on email-reply/beta: error_rate = 1 "
                  "(value 1)"}),
        ("on a dashboard", dec(), "decision", {"dashboard_uid": "rg-overview"},
         {"time": TS, "tags": tags("kill", "transition:firing"), "dashboardUID": "rg-overview",
          "text": "kill firing: error rate 80% > 50% for 2m (value 0.8 > threshold 0.5)"}),
        ("pending: not annotated", dec(transition="pending"), "decision", {}, None),
        ("cleared: not annotated", dec(transition="cleared"), "decision", {}, None),
        ("rollback command", cmd("kill"), "command", {},
         {"time": TS, "tags": tags("kill", "command:rollback", mode=None),
          "text": "rollback email-reply/beta: error rate 80% > 50% for 2m"}),
        ("pause command", cmd("pause"), "command", {},
         {"time": TS, "tags": tags("pause", "command:pause_rollout", mode=None),
          "text": "pause_rollout email-reply/beta: error rate 80% > 50% for 2m"}),
    ],
)  # fmt: skip
def test_annotation_for(case, record, kind, kw, expected):
    assert annotation_for(record, kind, **kw) == expected


@pytest.mark.parametrize(
    "case, record, kind, message",
    [
        ("not an object", [1, 2], "decision", "not a JSON object"),
        ("no feature", {k: v for k, v in dec().items() if k != "feature"}, "decision", "feature missing"),
        ("a feature that would forge a tag", dict(dec(), feature="f,tier:ok"), "decision", "feature missing"),
        ("bad time", dict(dec(), ts="yesterday"), "decision", "ts missing"),
        ("epoch seconds as text", dict(dec(), ts="1793577600"), "decision", "ts missing"),
        ("unknown transition", dict(dec(), transition="exploded"), "decision", "transition must be one of"),
        ("unknown tier", dict(dec(), tier="panic"), "decision", "tier must be one of"),
        ("value not a number", dict(dec(), value="0.8"), "decision", "value must be a number"),
        ("summary not text", dict(dec(), summary=None), "decision", "summary missing"),
        ("unknown action", dict(cmd(), action="resume"), "command", "action must be one of"),
        ("command without reason", {k: v for k, v in cmd().items() if k != "reason"}, "command", "reason missing"),
    ],
)  # fmt: skip
def test_annotation_for_rejects_malformed_records(case, record, kind, message):
    with pytest.raises(InvalidRecord, match=message):
        annotation_for(record, kind)


def test_annotation_text_is_one_line_and_bounded():
    body = annotation_for(dict(dec(), summary="line one\nline two " + "x" * 5000), "decision")
    assert "\n" not in body["text"] and len(body["text"]) == 1024


def test_planner_makes_regions_skips_duplicates_and_changes_only_after_a_post():
    planner = AnnotationPlanner()
    firing, resolved = dec("errors-investigate"), dec("errors-investigate", "resolved", 0.1)
    resolved["ts"] = "2026-11-02T00:09:00Z"
    assert planner.plan(firing, "decision")["time"] == TS
    assert "timeEnd" not in planner.plan(resolved, "decision")  # the firing was planned, not yet posted
    planner.posted(firing, "decision")
    assert planner.plan(firing, "decision") is None and planner.is_duplicate(firing, "decision")
    assert planner.plan(resolved, "decision") == {
        "time": TS, "timeEnd": T0 + 9 * MIN, "tags": tags("investigate", "transition:resolved", "errors-investigate"),
        "text": "investigate resolved: error rate 10% > 50% (value 0.1 > threshold 0.5)"}  # fmt: skip
    planner.posted(resolved, "decision")
    again = dict(firing, decision_id="another-incident", ts="2026-11-02T00:20:00Z")
    assert planner.plan(again, "decision")["time"] == T0 + 20 * MIN  # a new incident



def test_a_resolved_decision_carrying_its_incident_start_is_a_region_without_memory():
    resolved = dict(dec("errors-investigate", "resolved", 0.1), ts="2026-11-02T00:09:00Z",
                    incident_start="2026-11-02T00:03:00Z")  # fmt: skip
    body = AnnotationPlanner().plan(resolved, "decision")  # a fresh annotator that saw no firing
    assert (body["time"], body["timeEnd"]) == (T0 + 3 * MIN, T0 + 9 * MIN)


def test_the_engine_says_when_a_resolved_incident_began():
    decisions, _ = kill_scenario()
    resolved = [d for d in decisions if d["transition"] == "resolved"]
    assert resolved and all("incident_start" in d for d in resolved)
    for d in resolved:  # the incident began with the first decision of its run: pending, or firing / inhibited
        began = [f["ts"] for f in decisions if f["rule_id"] == d["rule_id"] and f["ts"] <= d["ts"]
                 and f["transition"] in ("pending", "firing", "inhibited", "held")]  # fmt: skip
        assert d["incident_start"] in began, (d, began)


# --- annotate, end to end on the embedded broker ----------------------------------------------------------------


def kill_scenario() -> tuple[list[dict], list[dict]]:
    """The engine on a little traffic: an investigate rule fires and resolves, a kill fires (rollback command) and
    inhibits a slower investigate rule, and an operator resume (with free-text reason) resolves the kill."""
    items = sorted(traffic("..xxxxxx....") + [resume(13)] + traffic("_" * 14 + ".."), key=lambda e: e.ts)
    _, decisions, commands, _ = run(rules(RULES), items)
    return decisions, commands


def settings_file(path: Path, stack, prefix: str) -> Path:
    path.write_text(f"ROLLGUARD_KAFKA_BOOTSTRAP={stack.kafka_bootstrap}\nROLLGUARD_TOPIC_PREFIX={prefix}\n"
                    f"ROLLGUARD_APP_ID={prefix}rollguard\nROLLGUARD_SESSION_TIMEOUT_S=2\n")  # fmt: skip
    return path


def expected_annotations(decisions: list[dict], commands: list[dict], dashboard_uid: str) -> list[dict]:
    planner = AnnotationPlanner(dashboard_uid)
    out = []
    for kind, records in (("decision", decisions), ("command", commands)):
        for r in records:
            body = planner.plan(r, kind)
            if body is not None:
                out.append(body)
                planner.posted(r, kind)
    return out


def key(a: dict) -> tuple:
    return a["time"], a.get("timeEnd", 0), a["tags"]


def test_annotate_posts_each_record_once_commits_only_after_posting_and_survives_bad_input(
    grafana, stack, topic_prefix, tmp_path, capsys, monkeypatch
):
    decisions, commands = kill_scenario()
    assert {d["transition"] for d in decisions} >= {"pending", "firing", "inhibited", "resolved"} and commands
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    bad = [b"{not json", orjson.dumps({"ts": "2026-11-02T00:05:00Z", "transition": "firing"})]
    # the worker re-publishes after a crash: same id, same content
    duplicate = orjson.dumps(next(d for d in decisions if d["transition"] == "firing"))
    produce_raw(stack, topics.decisions, b"f", [orjson.dumps(d) for d in decisions] + bad + [duplicate])
    produce_raw(stack, topics.commands, b"f", [orjson.dumps(c) for c in commands])
    grafana.add_dashboard("rg-overview", "rollguard overview")
    argv = ["annotate", "--url", grafana.url, "--config", str(settings_file(tmp_path / "s.env", stack, topic_prefix)),
            "--dashboard-uid", "rg-overview", "--once"]  # fmt: skip

    # a wrong token stops the consumer with exit 2 and commits nothing ...
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_wrong_secret_value")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "HTTP 401" in err and "glsa_wrong_secret_value" not in out + err
    assert grafana.annotations == []

    # ... so the next run, through two Grafana 503s, still annotates every record exactly once
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    grafana.fail_next("POST", "/api/annotations", 503, "Service Unavailable", times=2)
    assert main(argv) == 0
    out = capsys.readouterr().out
    want = expected_annotations(decisions, commands, "rg-overview")
    assert sorted(grafana.annotations, key=key) == sorted(want, key=key)
    assert f"{len(want)} posted" in out and "1 duplicate" in out and "2 bad" in out and "2 retried" in out
    by_rule = {(a["tags"][4], a["tags"][6]): a for a in grafana.annotations}
    assert by_rule["command:rollback", "rule:errors-kill"]["time"] == T0 + 5 * MIN
    investigate = by_rule["transition:resolved", "rule:errors-investigate"]
    assert (investigate["time"], investigate["timeEnd"]) == (T0 + 3 * MIN, T0 + 9 * MIN)  # a region
    assert by_rule["transition:resolved", "rule:errors-kill"]["timeEnd"] == T0 + 13 * MIN  # the operator resume
    assert "fixed upstream" not in json.dumps(grafana.annotations)  # the resume's free-text reason

    # offsets were committed: a rerun posts nothing
    assert main(argv) == 0
    assert "0 posted" in capsys.readouterr().out
    assert len(grafana.annotations) == len(want)


@pytest.mark.parametrize(
    "case, env, argv, message",
    [
        ("no broker configured", {}, [], "ROLLGUARD_KAFKA_BOOTSTRAP"),
        ("no token", {"GRAFANA_TOKEN": None, "ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, [], "no Grafana token"),
        ("unknown dashboard", {"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, ["--dashboard-uid", "nope"],
         "no dashboard with uid 'nope'"),
        ("malformed dashboard uid", {"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, ["--dashboard-uid", "a/b"],
         "--dashboard-uid"),
        ("broker unreachable", {"ROLLGUARD_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, [], "cannot use Kafka at 127.0.0.1:1"),
    ],
)  # fmt: skip
def test_annotate_errors_exit_2_with_a_clear_message(grafana, capsys, monkeypatch, case, env, argv, message):
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    assert main(["annotate", "--url", grafana.url, "--once", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and TOKEN not in err


def test_annotate_without_the_topics_says_so(grafana, stack, topic_prefix, tmp_path, capsys):
    cfg = settings_file(tmp_path / "s.env", stack, topic_prefix)
    assert main(["annotate", "--url", grafana.url, "--config", str(cfg), "--once"]) == 2
    assert f"topic(s) missing: {topic_prefix}rollguard.commands, {topic_prefix}rollguard.decisions" in (
        capsys.readouterr().err)


def test_annotate_runs_until_sigterm(grafana, stack, topic_prefix, tmp_path):
    decisions, commands = kill_scenario()
    topics = Topics(topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, 1)
    produce_raw(stack, topics.commands, b"f", [orjson.dumps(c) for c in commands])
    env = dict(os.environ, GRAFANA_TOKEN=TOKEN)
    cfg = settings_file(tmp_path / "s.env", stack, topic_prefix)
    argv = [sys.executable, "-m", "streams.cli", "annotate", "--url", grafana.url, "--config", str(cfg)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        want = len(expected_annotations(decisions, commands, ""))
        produce_raw(stack, topics.decisions, b"f", [orjson.dumps(d) for d in decisions])  # while it runs
        deadline = time.monotonic() + 60
        while len(grafana.annotations) < want and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(grafana.annotations) == want
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert f"{want} posted" in out.decode()
    assert TOKEN not in (out + err).decode()
