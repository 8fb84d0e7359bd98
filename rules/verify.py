"""The actuator's side of command signing: check a rollguard command before acting on it.

Standard library only, so a feature-flag service can vendor this one file. A command is accepted only if

1. it is signed (``signature``) with a key id (``key_id``) the verifier holds — several keys may be held at once,
   which is how keys rotate;
2. the HMAC-SHA256 over :func:`signing_bytes` (the command without ``signature`` and ``hash``) matches;
3. it is fresh: *emitted* at most ``max_age_ms`` ago and not more than ``max_future_ms`` ahead of the verifier's
   clock. The emission time is the wall clock of the worker that published the command, carried in two Kafka record
   headers (``rollguard-emitted-at``, ``rollguard-emit-signature``: an HMAC under the same key over the command's
   id, key id, signature and that time), so a kill decided late — after a backlog, when ``issued_at``, the event
   time, is long past — is still fresh, while the same record re-sent later is not. Without the headers (a command
   read from a file, or an older worker) freshness falls back to ``issued_at``; ``require_emission=True`` refuses
   such a command (``missing_emission``);
4. its ``command_id`` was not accepted before (replay), and
5. its ``seq`` is greater than the last one accepted for its feature (rollguard numbers each feature's commands
   1, 2, 3, … and never reuses a number).

Checks 4 and 5 need memory: :class:`VerifierState`, which serialises to JSON so the actuator can keep it across
restarts. Verdict reasons, in the order checked: ``malformed``, ``missing_signature``, ``unknown_key``,
``bad_signature``, ``missing_emission``, ``bad_emission`` (the emission headers do not match the command),
``stale``, ``future``, ``duplicate`` (this very command was accepted already: a re-delivery, safe
to drop), ``replayed`` (an accepted ``command_id`` with other content), ``sequence``.

>>> keys = {"k2": b"new-secret"}
>>> cmd = {"command_id": "c1", "feature": "email-reply", "phase": "ga", "action": "rollback", "seq": 1,
...        "issued_at": 1_793_613_600_000, "key_id": "k2"}
>>> cmd["signature"] = sign(cmd, b"new-secret")
>>> state = VerifierState()
>>> verify_command(cmd, keys, now_ms=1_793_613_630_000, max_age_ms=300_000, state=state)
Verdict(ok=True, reason=None, detail='')
>>> verify_command(cmd, keys, now_ms=1_793_613_631_000, max_age_ms=300_000, state=state).reason
'duplicate'
>>> forged = dict(cmd, action="pause_rollout", seq=2, command_id="c2")
>>> verify_command(forged, keys, now_ms=1_793_613_631_000, max_age_ms=300_000, state=state).reason
'bad_signature'
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Verdict", "VerifierState", "verify_command", "signing_bytes", "sign", "parse_keys", "UNSIGNED_FIELDS",
           "REASONS", "EMITTED_AT_HEADER", "EMIT_SIGNATURE_HEADER", "emission_bytes", "emission_headers",
           "emission_from_headers"]  # fmt: skip

UNSIGNED_FIELDS = ("signature", "hash")  # the signature cannot cover itself, nor the chain hash computed after it
REASONS = ("malformed", "missing_signature", "unknown_key", "bad_signature", "missing_emission", "bad_emission",
           "stale", "future", "duplicate", "replayed", "sequence")  # fmt: skip
EMITTED_AT_HEADER = "rollguard-emitted-at"  # Kafka record header: epoch ms (decimal ASCII) the worker published at
EMIT_SIGNATURE_HEADER = "rollguard-emit-signature"  # hex HMAC-SHA256 of emission_bytes under the command's key
_REQUIRED = {"command_id": str, "feature": str, "seq": int, "issued_at": int}


def signing_bytes(cmd: Mapping[str, Any]) -> bytes:
    """What the signature covers: the command without ``signature`` and ``hash``, as UTF-8 JSON with sorted keys
    and no whitespace. (Commands hold only strings and integers, which every JSON library writes the same way.)

    >>> signing_bytes({"seq": 3, "action": "rollback", "signature": "ab", "reason": "p95 > 1.2 s"})
    b'{"action":"rollback","reason":"p95 > 1.2 s","seq":3}'
    """
    body = {k: v for k, v in cmd.items() if k not in UNSIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(cmd: Mapping[str, Any], key: bytes) -> str:
    """The hex HMAC-SHA256 of :func:`signing_bytes` under ``key``."""
    return hmac.new(key, signing_bytes(cmd), hashlib.sha256).hexdigest()


def emission_bytes(cmd: Mapping[str, Any], emitted_at: int) -> bytes:
    """What the emission signature covers: the command's id, key id and signature (so, through the signature, all of
    its content) and the emission time, as canonical JSON.

    >>> emission_bytes({"command_id": "c1", "key_id": "k2", "signature": "ab", "seq": 1}, 1_793_613_600_000)
    b'{"command_id":"c1","emitted_at":1793613600000,"key_id":"k2","signature":"ab"}'
    """
    body = {"command_id": cmd.get("command_id"), "key_id": cmd.get("key_id"), "signature": cmd.get("signature"),
            "emitted_at": emitted_at}  # fmt: skip
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def emission_headers(cmd: Mapping[str, Any], emitted_at: int, key: bytes) -> list[tuple[str, bytes]]:
    """The Kafka record headers a worker publishes a signed command with."""
    sig = hmac.new(key, emission_bytes(cmd, emitted_at), hashlib.sha256).hexdigest()
    return [(EMITTED_AT_HEADER, str(emitted_at).encode()), (EMIT_SIGNATURE_HEADER, sig.encode())]


def emission_from_headers(headers: Any) -> tuple[Any, Any] | None:
    """``(emitted_at, signature)`` from a Kafka record's headers (``[(name, bytes), ...]``, as kafka-python and
    aiokafka give them), or None when the record carries no emission headers. Values are returned undecoded when
    they are not what a worker writes; :func:`verify_command` then refuses them as ``bad_emission``."""
    found = {}
    for name, value in headers or ():
        if name in (EMITTED_AT_HEADER, EMIT_SIGNATURE_HEADER):
            found[name] = value
    if not found:
        return None
    at, sig = found.get(EMITTED_AT_HEADER), found.get(EMIT_SIGNATURE_HEADER)
    try:
        at = int(at.decode("ascii")) if isinstance(at, bytes) and at.isdigit() else at
        sig = sig.decode("ascii") if isinstance(sig, bytes) else sig
    except UnicodeDecodeError:
        pass
    return at, sig


@dataclass(frozen=True)
class Verdict:
    """``ok``, or the ``reason`` (one of :data:`REASONS`) and a human ``detail`` for the log."""

    ok: bool
    reason: str | None = None
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class VerifierState:
    """What the verifier remembers: accepted command ids (with issue time and signature, to tell a re-delivery from
    a replay) and the last accepted ``seq`` per feature. Persist it with :meth:`to_json` after acting on a command.

    >>> s = VerifierState(seen={"c1": [5, "ab"]}, last_seq={"f": 3})
    >>> VerifierState.from_json(s.to_json()) == s
    True
    """

    seen: dict[str, list] = field(default_factory=dict)  # command_id -> [emitted_at (else issued_at), signature]
    last_seq: dict[str, int] = field(default_factory=dict)  # feature -> highest accepted seq

    def to_json(self) -> str:
        return json.dumps({"version": 1, "seen": self.seen, "last_seq": self.last_seq}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VerifierState:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError("not a rollguard verifier state (version 1)")
        try:
            seen = {str(k): [int(v[0]), str(v[1])] for k, v in d.get("seen", {}).items()}
            return cls(seen=seen, last_seq={str(k): int(v) for k, v in d.get("last_seq", {}).items()})
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"corrupt rollguard verifier state: {e}") from None

    def prune(self, now_ms: int, max_age_ms: int) -> int:
        """Forget accepted ids emitted (else issued) more than ``max_age_ms`` ago: such a command is rejected as stale
        before its id is looked up, so remembering it changes nothing. ``last_seq`` is never pruned. Returns how many
        were dropped."""
        old = [i for i, (issued, _) in self.seen.items() if now_ms - issued > max_age_ms]
        for i in old:
            del self.seen[i]
        return len(old)

    def accept(self, cmd: Mapping[str, Any], emitted_at: int | None = None) -> None:
        """Record ``cmd`` as acted upon (``verify_command`` does this itself unless ``record=False``); pass the
        emission time it was verified with, if any."""
        self.seen[cmd["command_id"]] = [cmd["issued_at"] if emitted_at is None else emitted_at, cmd["signature"]]
        self.last_seq[cmd["feature"]] = max(self.last_seq.get(cmd["feature"], 0), cmd["seq"])


def verify_command(cmd: Any, keys: Mapping[str, bytes], *, now_ms: int, max_age_ms: int | None,
                   state: VerifierState, max_future_ms: int = 60_000, record: bool = True,
                   emission: tuple[Any, Any] | None = None, require_emission: bool = False) -> Verdict:  # fmt: skip
    """Check ``cmd`` (a parsed command) against ``keys`` (key id -> secret) and ``state``; see the module docstring.
    ``emission``: ``(emitted_at, signature)`` from the record's headers (:func:`emission_from_headers`).

    ``now_ms`` is the verifier's wall clock in epoch milliseconds. ``max_age_ms`` None skips the freshness checks:
    only for auditing stored commands, never in an actuator. On acceptance ``state`` records the command, unless
    ``record`` is False (then call ``state.accept(cmd)`` once the action succeeded)."""
    if not isinstance(cmd, Mapping):
        return Verdict(False, "malformed", "not a JSON object")
    for name, typ in _REQUIRED.items():
        v = cmd.get(name)
        if not isinstance(v, typ) or isinstance(v, bool):
            return Verdict(False, "malformed", f"{name}: missing or not a {typ.__name__}")
    sig, key_id = cmd.get("signature"), cmd.get("key_id")
    if not isinstance(sig, str) or not sig:
        return Verdict(False, "missing_signature", "the command is not signed")
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        return Verdict(False, "unknown_key", f"key id {key_id!r} is not one of the verification keys")
    try:
        expected = sign(cmd, key)
    except ValueError as e:  # e.g. a NaN smuggled into a field
        return Verdict(False, "malformed", str(e))
    if not hmac.compare_digest(sig, expected):
        return Verdict(False, "bad_signature", f"signature does not match the content under key {key_id!r}")
    issued, what = cmd["issued_at"], "issued"
    if emission is not None:
        at, esig = emission
        if not isinstance(at, int) or isinstance(at, bool) or not isinstance(esig, str):
            return Verdict(False, "bad_emission", "emission headers present but not an epoch-ms time and a signature")
        expected = hmac.new(key, emission_bytes(cmd, at), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(esig, expected):
            return Verdict(False, "bad_emission", "the emission signature does not match this command and time")
        issued, what = at, "emitted"
    elif require_emission:
        return Verdict(False, "missing_emission", "no emission headers: cannot tell a fresh command from an old one")
    if max_age_ms is not None:
        if now_ms - issued > max_age_ms:
            return Verdict(False, "stale", f"{what} {(now_ms - issued) / 1000:.0f}s ago (max {max_age_ms / 1000:.0f}s)")
        if issued - now_ms > max_future_ms:
            return Verdict(False, "future", f"{what} {(issued - now_ms) / 1000:.0f}s in the future (clock skew?)")
    prior = state.seen.get(cmd["command_id"])
    if prior is not None:
        if hmac.compare_digest(str(prior[1]), sig):
            return Verdict(False, "duplicate", "already accepted (a re-delivery): do not act again")
        return Verdict(False, "replayed", "command_id already accepted with other content")
    last = state.last_seq.get(cmd["feature"], 0)
    if cmd["seq"] <= last:
        return Verdict(False, "sequence", f"seq {cmd['seq']} is not above {last}, the last accepted for the feature")
    if record:
        state.accept(cmd, issued if emission is not None else None)
    return Verdict(True)


def parse_keys(text: str) -> dict[str, bytes]:
    """Verification keys from ``id1:secret1,id2:secret2`` (commas or newlines; blank lines and ``#`` comments are
    skipped; a secret may itself contain ``:``).

    >>> sorted(parse_keys("k1:old,k2:new:er"))
    ['k1', 'k2']
    >>> parse_keys("k2:new:er")["k2"]
    b'new:er'
    """
    keys: dict[str, bytes] = {}
    for raw in text.replace("\n", ",").split(","):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, sep, secret = entry.partition(":")
        if not sep or not key_id.strip() or not secret:
            raise ValueError("verification keys are id:secret entries, e.g. k1:old-secret,k2:new-secret")
        if key_id.strip() in keys:
            raise ValueError(f"key id {key_id.strip()!r} is given twice")
        keys[key_id.strip()] = secret.encode()
    return keys
