"""``rollguard verify`` and ``rollguard audit verify`` on files, as an operator runs them: exit 0 when everything
is valid, 1 with one line per rejected command or broken chain, 2 on unusable arguments. The last test runs the
actuator example of docs/security.md, so the documentation cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from engine_kit import MIN, T0, resume, rules, run, traffic
from rules.engine import EngineConfig
from rules.outputs import iso
from rules.verify import emission_headers, sign
from streams.cli import main

RULES = rules("""
version: 1
name: t
features: ["*"]
rules:
  - {id: errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
  - {id: outage, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 2m, min_samples: 10}
""")  # fmt: skip
CFG = EngineConfig(allowed_lateness_ms=0, signing_key=b"new-secret", signing_key_id="k2")
ENV = ("ROLLGUARD_VERIFY_KEYS", "ROLLGUARD_SIGNING_KEY", "ROLLGUARD_SIGNING_KEY_ID", "ROLLGUARD_TOPIC_PREFIX")


@pytest.fixture
def files(tmp_path, monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    evs = sorted(traffic("..xx..x.x....xx..") + [resume(9)], key=lambda e: e.ts)
    _, decisions, commands, _ = run(RULES, evs, CFG)
    assert len(commands) == 2 and len(decisions) >= 6
    write(tmp_path / "decisions.jsonl", decisions)
    write(tmp_path / "commands.jsonl", commands)
    (tmp_path / "keys.txt").write_text("# rotation in progress\nk1:old-secret\nk2:new-secret\n")
    (tmp_path / "bad-keys.txt").write_text("k1 old-secret\n")
    return tmp_path


def write(path: Path, records: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records))
    return path


def read(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def fresh(files: Path) -> str:
    """--now just after the last command was issued."""
    return iso(max(c["issued_at"] for c in read(files / "commands.jsonl")) + 30_000)


def verify(files: Path, *extra: str, path: str = "commands.jsonl") -> int:
    return main(["verify", str(files / path), "--keys", str(files / "keys.txt"), *extra])


def test_valid_commands_exit_0(files, capsys):
    assert verify(files, "--now", fresh(files), "--max-age", "30m") == 0
    assert "2 accepted, 0 rejected" in capsys.readouterr().err


def _tamper_line(files: Path, i: int, **fields) -> None:
    cmds = read(files / "commands.jsonl")
    cmds[i].update(fields)
    write(files / "commands.jsonl", cmds)


CASES = [
    # name, change to the files, extra arguments, reason printed
    ("stale", lambda f: None, ["--max-age", "5m", "--now", iso(T0 + 600 * MIN)], "stale"),
    ("forged action", lambda f: _tamper_line(f, 1, action="pause_rollout"), [], "bad_signature"),
    ("unknown key id", lambda f: _tamper_line(f, 0, key_id="k7"), [], "unknown_key"),
    ("not JSON", lambda f: write(f / "commands.jsonl", [b"{oops"]), [], "malformed"),
    ("old key retired", lambda f: (f / "keys.txt").write_text("k1:old-secret"), [], "unknown_key"),
    ("replayed out of order", lambda f: write(f / "commands.jsonl", read(f / "commands.jsonl")[::-1]), [],
     "sequence"),
]  # fmt: skip


@pytest.mark.parametrize("name, change, extra, reason", CASES, ids=[c[0] for c in CASES])
def test_rejected_commands_exit_1_with_a_line_each(files, capsys, name, change, extra, reason):
    args = extra if "--now" in extra else ["--now", fresh(files), "--max-age", "30m", *extra]
    change(files)
    assert verify(files, *args) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^REJECTED {re.escape(str(files))}/commands.jsonl:\d.*: {reason}", out, re.M), out


def test_the_state_file_remembers_across_runs(files, capsys):
    state = files / "verifier.json"
    args = ["--now", fresh(files), "--max-age", "30m", "--state", str(state)]
    assert verify(files, *args) == 0 and state.exists()
    capsys.readouterr()
    assert verify(files, *args) == 0  # the same commands again: re-deliveries, not acted on, not an attack
    assert capsys.readouterr().out.count("DUPLICATE") == 2
    first = read(files / "commands.jsonl")[0]
    replay = dict(first, command_id="other", signature=None)
    replay["signature"] = sign(replay, b"new-secret")  # validly signed by the real key, but an old seq
    write(files / "commands.jsonl", [replay])
    assert verify(files, *args) == 1
    assert ": sequence" in capsys.readouterr().out


def test_keys_from_the_environment(files, monkeypatch):
    args = ["verify", str(files / "commands.jsonl"), "--now", fresh(files), "--max-age", "30m"]
    assert main(args) == 2  # no key anywhere
    monkeypatch.setenv("ROLLGUARD_SIGNING_KEY", "new-secret")
    monkeypatch.setenv("ROLLGUARD_SIGNING_KEY_ID", "k2")
    assert main(args) == 0  # the worker's own key
    monkeypatch.setenv("ROLLGUARD_VERIFY_KEYS", "k1:old-secret")
    assert main(args) == 1  # the verification keys win: k2 is not among them


USAGE = [
    ("no input", ["verify", "--keys", "{d}/keys.txt"]),
    ("file and topic", ["verify", "{d}/commands.jsonl", "--from-kafka", "localhost:1", "--keys", "{d}/keys.txt"]),
    ("missing keys file", ["verify", "{d}/commands.jsonl", "--keys", "{d}/nope.txt"]),
    ("bad keys file", ["verify", "{d}/commands.jsonl", "--keys", "{d}/bad-keys.txt"]),
    ("bad max age", ["verify", "{d}/commands.jsonl", "--keys", "{d}/keys.txt", "--max-age", "5 minutes"]),
    ("corrupt state", ["verify", "{d}/commands.jsonl", "--keys", "{d}/keys.txt", "--state", "{d}/decisions.jsonl"]),
    ("missing input file", ["verify", "{d}/nope.jsonl", "--keys", "{d}/keys.txt"]),
    ("audit without input", ["audit", "verify"]),
    ("audit head file missing", ["audit", "verify", "{d}/decisions.jsonl", "--head", "{d}/nope.json"]),
    ("audit head file of another shape", ["audit", "verify", "{d}/decisions.jsonl", "--head", "{d}/keys.txt"]),
    ("unknown option", ["audit", "verify", "{d}/decisions.jsonl", "--hed", "x"]),
]  # fmt: skip


@pytest.mark.parametrize("name, argv", USAGE, ids=[c[0] for c in USAGE])
def test_usage_errors_exit_2(files, name, argv):
    assert main([a.format(d=files) for a in argv]) == 2


# --- audit verify -----------------------------------------------------------------------------------------------


def audit(files: Path, *extra: str) -> int:
    return main(["audit", "verify", str(files / "decisions.jsonl"), str(files / "commands.jsonl"), *extra])


def heads(files: Path) -> Path:
    last = {s: read(files / f"{s}.jsonl")[-1] for s in ("decisions", "commands")}
    path = files / "heads.json"
    path.write_bytes(orjson.dumps({s: {r["feature"]: r["hash"]} for s, r in last.items()}))
    return path


def test_an_intact_log_exits_0(files, capsys):
    assert audit(files, "--head", str(heads(files))) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 2 chain(s)") and "2 anchored" in out


def _drop(files: Path, name: str, i: int) -> None:
    recs = read(files / name)
    del recs[i]
    write(files / name, recs)


def _edit(files: Path, name: str, i: int, **fields) -> None:
    recs = read(files / name)
    recs[i].update(fields)
    write(files / name, recs)


def _swap(files: Path, name: str, i: int) -> None:
    recs = read(files / name)
    recs[i], recs[i + 1] = recs[i + 1], recs[i]
    write(files / name, recs)


TAMPERED = [
    # name, tamper, where the break is reported, kind
    ("edited", lambda f: _edit(f, "decisions.jsonl", 2, samples=-1), "decisions.jsonl:3", "edit"),
    ("deleted", lambda f: _drop(f, "decisions.jsonl", 2), "decisions.jsonl:3", "deletion"),
    ("reordered", lambda f: _swap(f, "decisions.jsonl", 1), "decisions.jsonl:2", "reorder"),
    ("truncated", lambda f: _drop(f, "commands.jsonl", -1), "end of log", "truncation"),
    ("command edited", lambda f: _edit(f, "commands.jsonl", 1, phase="ga"), "commands.jsonl:2", "edit"),
]  # fmt: skip


@pytest.mark.parametrize("name, tamper, where, kind", TAMPERED, ids=[c[0] for c in TAMPERED])
def test_a_tampered_log_exits_1_naming_the_first_broken_link(files, capsys, name, tamper, where, kind):
    head = heads(files)
    tamper(files)
    assert audit(files, "--head", str(head)) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^BROKEN {kind} +\w+/f at .*{re.escape(where)}", out, re.M), out
    assert "TAMPERED OR INCOMPLETE" in out


def test_the_actuator_example_in_the_docs_runs(files, tmp_path, monkeypatch):
    """docs/security.md's example, executed: a command is applied once, its re-delivery and a forgery are not."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    (code,) = re.findall(r"<!-- actuator-example -->\n```python\n(.*?)```", doc, re.S)
    monkeypatch.setenv("ROLLGUARD_VERIFY_KEYS", "k1:old-secret,k2:new-secret")
    monkeypatch.setenv("FLAGS_VERIFIER_STATE", str(tmp_path / "verifier.json"))
    namespace: dict = {}
    exec(compile(code, "docs/security.md", "exec"), namespace)  # noqa: S102 - our own documentation

    class Flags:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def disable(self, feature, cohort):
            self.calls.append(("disable", feature, cohort))

        def freeze_rollout(self, feature, cohort):
            self.calls.append(("freeze", feature, cohort))

        def promote(self, feature, cohort, to):
            self.calls.append(("promote", feature, cohort, to))

        def shadow_only(self, feature, cohort):
            self.calls.append(("shadow", feature, cohort))

        def revert_model(self, feature, cohort):
            self.calls.append(("revert", feature, cohort))

    import time

    now = int(time.time() * 1000)
    cmd = {"command_id": "c9", "ts": iso(now), "feature": "email-reply", "phase": "ga", "action": "rollback",
           "ruleset": "t", "rule_id": "errors", "decision_id": "d9", "reason": "errors", "seq": 1, "issued_at": now,
           "key_id": "k2", "prev_hash": "0" * 64}  # fmt: skip
    cmd["signature"] = sign(cmd, b"new-secret")
    headers = emission_headers(cmd, now, b"new-secret")
    flags = Flags()
    on_command = namespace["on_command"]
    assert on_command(orjson.dumps(cmd), headers, flags) is True
    assert on_command(orjson.dumps(cmd), headers, flags) is False  # re-delivered
    forged = dict(cmd, command_id="c10", seq=2, phase="eu")
    assert on_command(orjson.dumps(forged), emission_headers(forged, now, b"new-secret"), flags) is False
    assert on_command(orjson.dumps(dict(cmd, command_id="c11", seq=3)), [], flags) is False  # no emission time
    promote = dict(cmd, command_id="c12", seq=4, action="promote_rollout", phase="closed_beta",
                   to="regional_expansion", rule_id="promotion")  # fmt: skip
    promote["signature"] = sign(promote, b"new-secret")
    assert on_command(orjson.dumps(promote), emission_headers(promote, now, b"new-secret"), flags) is True
    unknown = dict(cmd, command_id="c13", seq=5, action="reboot_everything")
    unknown["signature"] = sign(unknown, b"new-secret")
    assert on_command(orjson.dumps(unknown), emission_headers(unknown, now, b"new-secret"), flags) is False
    for seq, action in ((6, "shadow_only"), (7, "revert_model")):  # a rule's own action (rules.outputs.RULE_ACTIONS)
        other = dict(cmd, command_id=f"c{seq + 8}", seq=seq, action=action)
        other["signature"] = sign(other, b"new-secret")
        assert on_command(orjson.dumps(other), emission_headers(other, now, b"new-secret"), flags) is True
    assert flags.calls == [("disable", "email-reply", "ga"), ("promote", "email-reply", "closed_beta",
                                                              "regional_expansion"),
                           ("shadow", "email-reply", "ga"), ("revert", "email-reply", "ga"),
                           ("freeze", "email-reply", "ga")]  # fmt: skip
