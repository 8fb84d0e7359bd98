"""The command line as a user drives it: exit codes, files written, --compare, located rule errors."""

from pathlib import Path

import orjson
import pytest

from engine_kit import traffic
from streams.cli import main

RULES = """
version: 1
name: base
features: ["f"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
"""
STRICTER = RULES.replace("name: base", "name: strict").replace("threshold: 0.5", "threshold: 0.05").replace(
    "tier: kill", "tier: pause"
)


def write_events(path: Path, pattern: str) -> Path:
    with path.open("wb") as f:
        for e in traffic(pattern):
            d = {"type": "interaction", "event_id": e.event_id, "ts": e.ts, "feature": e.feature, "phase": e.phase,
                 "outcome": e.outcome, "latency_ms": e.latency_ms, "user": "alice@example.com"}  # fmt: skip
            f.write(orjson.dumps(d) + b"\n")
        f.write(b'{"type": "interaction", "event_id": "x", "ts": "soon", "feature": "f", "prompt": "secret text"}\n')
    return path


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "base.yaml").write_text(RULES)
    (tmp_path / "strict.yaml").write_text(STRICTER)
    write_events(tmp_path / "events.jsonl", "..x.....")
    return tmp_path


def test_replay_writes_every_output_and_exits_0(setup, capsys):
    out = setup / "out"
    code = main(["replay", "--rules", str(setup / "base.yaml"), "--events", str(setup / "events.jsonl"),
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    for f in ("decisions.jsonl", "commands.jsonl", "pages.jsonl", "deadletter.jsonl", "report.md"):
        assert (out / f).exists(), f
    (dead,) = [orjson.loads(x) for x in (out / "deadletter.jsonl").read_bytes().splitlines()]
    assert dead["source"]["line"] == 161 and dead["detail"].startswith("ts:")
    everything = b"".join((out / f).read_bytes() for f in ("decisions.jsonl", "pages.jsonl", "deadletter.jsonl"))
    assert b"alice@example.com" not in everything and b"secret text" not in everything
    assert "commands: 1" in capsys.readouterr().out


def test_compare_reports_what_the_candidate_changes(setup):
    out = setup / "cmp"
    code = main(["replay", "--rules", str(setup / "base.yaml"), "--compare", str(setup / "strict.yaml"),
                 "--events", str(setup / "events.jsonl"), "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert (out / "compare" / "commands.jsonl").read_bytes()
    report = (out / "report.md").read_text()
    assert "What changes if you ship" in report and "pause" in report


def test_invalid_rules_exit_2_with_located_errors(setup, capsys):
    bad = setup / "bad.yaml"
    bad.write_text(RULES.replace("error_rate", "eror_rate"))
    code = main(["replay", "--rules", str(bad), "--events", str(setup / "events.jsonl"), "--out", str(setup / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "errors" in err


def test_missing_events_file_and_bad_arguments_exit_2(setup):
    assert main(["replay", "--rules", str(setup / "base.yaml"), "--events", "nope.jsonl", "--out", "o"]) == 2
    assert main(["replay", "--rules", str(setup / "base.yaml")]) == 2
    assert main(["replay", "--rules", str(setup / "base.yaml"), "--events", str(setup / "events.jsonl"),
                 "--out", str(setup / "o"), "--allowed-lateness", "soon"]) == 2  # fmt: skip


def test_rules_validate_lists_every_error_and_exits_1(setup, capsys):
    assert main(["rules", "validate", str(setup / "base.yaml")]) == 0
    bad = setup / "bad.yaml"
    bad.write_text(RULES.replace("error_rate", "eror_rate").replace("tier: kill", "tier: nuke"))
    assert main(["rules", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("bad.yaml:") >= 2 and "2 error(s)" in err


def test_replay_reads_gzip_and_stdin(setup, monkeypatch):
    import gzip
    import io
    import sys

    raw = (setup / "events.jsonl").read_bytes()
    (setup / "events.jsonl.gz").write_bytes(gzip.compress(raw))
    assert main(["replay", "--rules", str(setup / "base.yaml"), "--events", str(setup / "events.jsonl.gz"),
                 "--out", str(setup / "gz"), "--no-progress"]) == 0  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["replay", "--rules", str(setup / "base.yaml"), "--events", "-", "--out", str(setup / "stdin"),
                 "--no-progress"]) == 0  # fmt: skip
    for f in ("decisions.jsonl", "commands.jsonl"):
        assert (setup / "gz" / f).read_bytes() == (setup / "stdin" / f).read_bytes()


def test_scenario_command_writes_jsonl(tmp_path):
    out = tmp_path / "s.jsonl"
    assert main(["scenario", "clean", "--out", str(out), "--days", "0.01", "--rate", "1"]) == 0
    assert out.read_bytes().count(b"\n") > 100
    assert main(["scenario", "nope", "--out", str(out)]) == 2


def test_scenario_help_shows_defaults_what_it_generates_and_when_each_incident_happens(capsys):
    from rules.outputs import iso
    from streams.offline.scenario import PRESETS, Scenario, scenario_from_args

    assert main(["scenario", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    d = Scenario()
    assert f"feature {d.feature!r}" in text and f"phase {d.phase!r}" in text and iso(d.start) in text
    for option, default in (("--seed SEED", d.seed), ("--days DAYS", d.duration_ms / 86_400_000),
                            ("--rate RATE", d.mean_rate_per_s)):  # fmt: skip
        assert f"(default: {default})" in text.split(option, 2)[2].split("--", 1)[0], option
    for preset in PRESETS:
        incidents = scenario_from_args(preset).incidents
        line = text.split(f" {preset}: ", 1)[1]
        shown = line.split(" UTC on the default run", 1)[0]
        for inc in incidents:  # the times the generator really uses, on the default run
            start, end = iso(inc.start)[11:16], iso(inc.start + inc.duration_ms)[11:16]
            assert f"({start}-{end}" in shown, (preset, shown)
        if not incidents:
            assert line.startswith("no incident")
