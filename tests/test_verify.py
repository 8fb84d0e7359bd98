"""The actuator's check of signed commands (``rules.verify``), as a table of forgeries, replays and stale commands,
plus key rotation, state persistence and commands the engine really signed."""

from __future__ import annotations

import pytest

from engine_kit import MIN, T0, resume, rules, run, traffic
from rules.engine import EngineConfig
from rules.verify import VerifierState, parse_keys, sign, verify_command

KEYS = {"k1": b"old-secret", "k2": b"new-secret"}
ISSUED = T0 + 3 * MIN
NOW = ISSUED + 30_000
MAX_AGE = 5 * MIN


def command(key_id: str = "k2", secret: bytes | None = None, **fields) -> dict:
    c = {"command_id": "c-1", "ts": "2026-11-02T00:03:00Z", "feature": "f", "phase": "p", "action": "rollback",
         "ruleset": "t", "rule_id": "errors", "decision_id": "d-1", "reason": "errors > 50 %", "seq": 4,
         "issued_at": ISSUED, "key_id": key_id, "prev_hash": "0" * 64}  # fmt: skip
    c.update(fields)
    c["signature"] = sign(c, secret if secret is not None else KEYS.get(key_id, b"?"))
    c["hash"] = "f" * 64  # a chain hash is not signed; any value verifies
    return c


def edited(c: dict, **fields) -> dict:
    return {**c, **fields}


def without(c: dict, *names: str) -> dict:
    return {k: v for k, v in c.items() if k not in names}


def state(seen=None, last_seq=None) -> VerifierState:
    return VerifierState(seen=dict(seen or {}), last_seq=dict(last_seq or {}))


SIG = command()["signature"]

CASES = [
    # name, command, keys, now, state, expected reason (None: accepted)
    ("valid", command(), KEYS, NOW, state(), None),
    ("signed with the old key during a rotation", command("k1"), KEYS, NOW, state(), None),
    ("old key after the rotation finished", command("k1"), {"k2": KEYS["k2"]}, NOW, state(), "unknown_key"),
    ("forged: action edited", edited(command(), action="pause_rollout"), KEYS, NOW, state(), "bad_signature"),
    ("forged: feature edited", edited(command(), feature="g"), KEYS, NOW, state(), "bad_signature"),
    ("forged: seq raised", edited(command(), seq=99), KEYS, NOW, state(), "bad_signature"),
    ("forged: issued_at refreshed", edited(command(), issued_at=NOW), KEYS, NOW, state(), "bad_signature"),
    ("forged: relinked in the chain", edited(command(), prev_hash="1" * 64), KEYS, NOW, state(), "bad_signature"),
    ("forged: field added", edited(command(), extra="x"), KEYS, NOW, state(), "bad_signature"),
    ("wrong key under a known id", command("k2", secret=b"attacker"), KEYS, NOW, state(), "bad_signature"),
    ("unknown key id", command("k9", secret=b"k9-secret"), KEYS, NOW, state(), "unknown_key"),
    ("no key id", without(command(), "key_id"), KEYS, NOW, state(), "unknown_key"),
    ("unsigned", without(command(), "signature"), KEYS, NOW, state(), "missing_signature"),
    ("empty signature", edited(command(), signature=""), KEYS, NOW, state(), "missing_signature"),
    ("stale", command(), KEYS, ISSUED + MAX_AGE + 1, state(), "stale"),
    ("exactly max age", command(), KEYS, ISSUED + MAX_AGE, state(), None),
    ("from the future", command(), KEYS, ISSUED - 60_001, state(), "future"),
    ("within clock skew", command(), KEYS, ISSUED - 60_000, state(), None),
    ("replayed id with other content", command(), KEYS, NOW, state({"c-1": [ISSUED, "ab" * 32]}), "replayed"),
    ("re-delivered (same id, same signature)", command(), KEYS, NOW, state({"c-1": [ISSUED, SIG]}), "duplicate"),
    ("same seq as the last accepted", command(), KEYS, NOW, state(last_seq={"f": 4}), "sequence"),
    ("lower seq", command(), KEYS, NOW, state(last_seq={"f": 9}), "sequence"),
    ("higher seq of another feature does not matter", command(), KEYS, NOW, state(last_seq={"g": 9}), None),
    ("seq gap accepted", command(seq=7), KEYS, NOW, state(last_seq={"f": 4}), None),
    ("seq not an integer", command(seq="5"), KEYS, NOW, state(), "malformed"),
    ("seq a boolean", command(seq=True), KEYS, NOW, state(), "malformed"),
    ("no command_id", without(command(), "command_id"), KEYS, NOW, state(), "malformed"),
    ("not an object", ["rollback"], KEYS, NOW, state(), "malformed"),
]  # fmt: skip


@pytest.mark.parametrize("name, cmd, keys, now, st, reason", CASES, ids=[c[0] for c in CASES])
def test_verify_command(name, cmd, keys, now, st, reason):
    before = (dict(st.seen), dict(st.last_seq))
    v = verify_command(cmd, keys, now_ms=now, max_age_ms=MAX_AGE, state=st)
    assert (v.ok, v.reason) == (reason is None, reason), v.detail
    if reason is None:  # accepted: remembered, so the same command is never acted on twice
        assert st.seen[cmd["command_id"]] == [cmd["issued_at"], cmd["signature"]]
        assert st.last_seq[cmd["feature"]] == cmd["seq"]
        assert verify_command(cmd, keys, now_ms=now, max_age_ms=MAX_AGE, state=st).reason == "duplicate"
    else:  # rejected: the state is untouched
        assert (st.seen, st.last_seq) == before


def test_freshness_can_be_switched_off_only_explicitly_for_audits():
    v = verify_command(command(), KEYS, now_ms=ISSUED + 365 * 24 * 60 * MIN, max_age_ms=None, state=state())
    assert v.ok


def test_record_false_leaves_the_state_to_the_caller():
    st = state()
    assert verify_command(command(), KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=st, record=False).ok
    assert st == state()
    st.accept(command())
    assert verify_command(command(), KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=st).reason == "duplicate"


def test_state_survives_a_restart_through_json():
    st = state()
    assert verify_command(command(), KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=st).ok
    restored = VerifierState.from_json(st.to_json())
    assert restored == st
    replay = command(command_id="c-2", seq=4)  # a new id, an old sequence number
    assert verify_command(replay, KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=restored).reason == "sequence"
    assert verify_command(command(), KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=restored).reason == "duplicate"


def test_prune_forgets_only_ids_that_would_be_stale_anyway():
    st = state()
    verify_command(command(), KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=st)
    assert st.prune(ISSUED + MAX_AGE, MAX_AGE) == 0 and "c-1" in st.seen
    assert st.prune(ISSUED + MAX_AGE + 1, MAX_AGE) == 1 and st.seen == {}
    assert st.last_seq == {"f": 4}
    # the forgotten command is still refused: it is stale now
    assert verify_command(command(), KEYS, now_ms=ISSUED + MAX_AGE + 1, max_age_ms=MAX_AGE, state=st).reason == "stale"


@pytest.mark.parametrize("text", ['{"seen": {}}', "[]", '{"version": 2}', "not json",
                                  '{"version": 1, "seen": {"c": [5]}}', '{"version": 1, "last_seq": {"f": "x"}}'])
def test_a_foreign_state_file_is_refused(text):
    with pytest.raises(ValueError):
        VerifierState.from_json(text)


KEY_SPECS = [
    ("one key", "k1:s1", {"k1": b"s1"}),
    ("rotation pair", "k1:s1,k2:s2", {"k1": b"s1", "k2": b"s2"}),
    ("lines, comments, blanks", "# keys\nk1:s1\n\n k2 : s2", {"k1": b"s1", "k2": b" s2"}),
    ("colon inside a secret", "k1:a:b", {"k1": b"a:b"}),
    ("empty", "", {}),
]


@pytest.mark.parametrize("name, text, keys", KEY_SPECS, ids=[c[0] for c in KEY_SPECS])
def test_parse_keys(name, text, keys):
    assert parse_keys(text) == keys


@pytest.mark.parametrize("text", ["no-colon-XYZ", ":XYZ", "k1:", "k1:XYZ,k1:XYZ2"])
def test_bad_key_specs_are_refused_without_echoing_secrets(text):
    with pytest.raises(ValueError) as e:
        parse_keys(text)
    assert "XYZ" not in str(e.value)


KILL_THEN_RESUME_THEN_KILL = rules("""
version: 1
name: t
features: ["f"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
""")  # fmt: skip


def engine_commands(key: bytes = b"new-secret", key_id: str = "k2") -> list[dict]:
    items = traffic("..xx.....") + [resume(9)] + traffic("_________..xx..", prefix="b")
    items.sort(key=lambda e: e.ts)
    cfg = EngineConfig(allowed_lateness_ms=0, signing_key=key, signing_key_id=key_id)
    return run(KILL_THEN_RESUME_THEN_KILL, items, cfg)[2]


def test_commands_the_engine_signs_verify_in_order_and_not_out_of_it():
    cmds = engine_commands()
    assert [(c["seq"], c["key_id"]) for c in cmds] == [(1, "k2"), (2, "k2")]
    now = cmds[-1]["issued_at"] + 1_000
    st = state()
    assert [verify_command(c, KEYS, now_ms=now, max_age_ms=MAX_AGE + 10 * MIN, state=st).reason for c in cmds] == [
        None, None]  # fmt: skip
    st = state()
    assert [verify_command(c, KEYS, now_ms=now, max_age_ms=MAX_AGE + 10 * MIN, state=st).reason
            for c in reversed(cmds)] == [None, "sequence"]  # fmt: skip


def test_a_key_the_verifier_does_not_hold_is_refused():
    cmds = engine_commands(key=b"unlisted", key_id="k3")
    v = verify_command(cmds[0], KEYS, now_ms=cmds[0]["issued_at"], max_age_ms=MAX_AGE, state=state())
    assert v.reason == "unknown_key"


def test_without_a_signing_key_commands_are_numbered_and_chained_but_unsigned():
    cfg = EngineConfig(allowed_lateness_ms=0)
    (c,) = run(KILL_THEN_RESUME_THEN_KILL, traffic("..xx.."), cfg)[2]
    assert c["seq"] == 1 and c["issued_at"] == ISSUED and "prev_hash" in c and "hash" in c
    assert "signature" not in c and "key_id" not in c
    assert verify_command(c, KEYS, now_ms=NOW, max_age_ms=MAX_AGE, state=state()).reason == "missing_signature"
