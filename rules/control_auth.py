"""Who may resume: operator controls (``resume``, ``reload``, anything added later) are signed with an operator key.

A control is signed like a command (:mod:`rules.verify`): ``key_id`` names the operator key and ``signature`` is
the hex HMAC-SHA256 over the control without ``signature`` (UTF-8 JSON, keys sorted, no whitespace). Verifiers hold
several keys at once (``ROLLGUARD_OPERATOR_KEYS=id1:secret1,id2:secret2``), which is how operator keys rotate;
``rollguard resume`` and ``rules reload`` sign with one (``ROLLGUARD_OPERATOR_KEY`` / ``_KEY_ID``).

When operator keys are configured a control is refused — dead-lettered with the reason, counted, nothing applied,
a latch stays latched — when it is

* ``control_unsigned``: it has no ``signature``;
* ``control_unknown_key``: its ``key_id`` is not one of the operator keys;
* ``control_bad_signature``: the signature does not match (an edited field, or the wrong secret under a known id);
* ``control_replayed``: its ``ts`` is not later than that of the last control accepted for its feature (the same
  control again, or any older one: a feature's accepted controls are strictly increasing in ``ts``);
* ``control_stale``: its ``ts`` is more than :data:`CONTROL_MAX_AGE_MS` (24 h) behind the feature's event time, so a
  signed control captured long ago and never applied cannot be used later;
* ``control_on_input_topic``: it came on an input topic (interactions, feedback); only the control topic carries
  controls, whatever the keys (checked by the shell, which knows the topic).

The replay checks depend only on the control and the feature's state, never on a wall clock, so the live worker and
``rollguard replay`` decide them alike. Without operator keys (the ``dev`` profile only: ``production`` requires
them) controls are accepted unsigned and unchecked, as before signing existed, so old replay files replay unchanged.

>>> keys = {"op1": b"secret"}
>>> ctl = sign_control({"type": "control", "action": "resume", "event_id": "r1", "ts": 5, "feature": "f",
...                     "reason": "fixed"}, "op1", b"secret")
>>> check_signature(ctl, keys)
(None, '', 'op1')
>>> check_signature(dict(ctl, feature="g"), keys)[0]
'control_bad_signature'
>>> freshness(ts=5, last_ts=5, feature_time=10)
'control_replayed'
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from rules.exceptions import InvalidEvent
from rules.verify import sign

__all__ = ["CONTROL_MAX_AGE_MS", "CONTROL_REASONS", "sign_control", "check_signature", "freshness", "refusal",
           "is_control", "misplaced"]

CONTROL_MAX_AGE_MS = 24 * 3_600_000
CONTROL_REASONS = ("control_unsigned", "control_unknown_key", "control_bad_signature", "control_replayed",
                   "control_stale", "control_on_input_topic")  # fmt: skip


def sign_control(msg: Mapping[str, Any], key_id: str, key: bytes) -> dict:
    """``msg`` with ``key_id`` and its ``signature`` under ``key``."""
    body = {k: v for k, v in msg.items() if k != "signature"}
    body["key_id"] = key_id
    body["signature"] = sign(body, key)
    return body


def check_signature(obj: Mapping[str, Any], keys: Mapping[str, bytes]) -> tuple[str | None, str, str | None]:
    """``(reason, detail, key_id)``: reason None when ``obj`` (the control as received) is signed by one of
    ``keys``."""
    sig, key_id = obj.get("signature"), obj.get("key_id")
    if not isinstance(sig, str) or not sig:
        return "control_unsigned", "operator keys are configured and this control is not signed", None
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        shown = key_id if isinstance(key_id, str) and len(key_id) <= 64 else type(key_id).__name__
        return "control_unknown_key", f"key id {shown!r} is not one of the operator keys", None
    try:
        expected = sign(obj, key)
    except (TypeError, ValueError):  # not representable as canonical JSON: cannot be what was signed
        return "control_bad_signature", "the control cannot be serialised canonically", None
    if not hmac.compare_digest(expected, sig):
        return "control_bad_signature", f"the signature does not match under key {key_id!r}", None
    return None, "", key_id


def freshness(ts: int, last_ts: int | None, feature_time: int | None) -> str | None:
    """The replay rule: None when a signed control with time ``ts`` may be applied to a feature whose last accepted
    control had ``last_ts`` and whose highest event time is ``feature_time``."""
    if last_ts is not None and ts <= last_ts:
        return "control_replayed"
    if feature_time is not None and ts < feature_time - CONTROL_MAX_AGE_MS:
        return "control_stale"
    return None


def refusal(reason: str, control: Any, last_ts: int | None, feature_time: int | None) -> dict:
    """The dead letter of a control refused by :func:`freshness` (no free text: the operator's reason is left
    out)."""
    detail = (f"control time {control.ts} is not after the last accepted control of {control.feature!r} "
              f"({last_ts}): a control is applied once" if reason == "control_replayed" else
              f"control time {control.ts} is more than {CONTROL_MAX_AGE_MS // 3_600_000}h behind the feature's "
              f"event time {feature_time}")  # fmt: skip
    return {"reason": reason, "detail": detail, "source": control.origin, "key_id": control.key_id,
            "payload": control_payload(control)}


def control_payload(control: Any) -> dict:
    """A refused control as its dead letter shows it: names, ids and times; never the operator's reason."""
    payload = {"type": "control", "action": control.action, "event_id": control.event_id, "ts": control.ts,
               "feature": control.feature}  # fmt: skip
    if control.phase:
        payload["phase"] = control.phase
    if getattr(control, "role", None):
        payload["role"] = control.role
    if getattr(control, "revoke", False):
        payload["revoke"] = True
    from rules.events import redact  # late: rules.events imports this module

    return redact(payload, None)


def admit(control: Any, fs: Any, dead_letters: list) -> bool:
    """Whether a control may be applied to feature state ``fs`` (a ``rules.state.FeatureState``): an unsigned one
    always (no operator keys); a signed one once and never stale (:func:`freshness`), its time then recorded as the
    feature's last accepted control. A refused one goes to ``dead_letters``."""
    if control.key_id is None:
        return True
    why = freshness(control.ts, fs.control_ts, fs.max_ts)
    if why is not None:
        dead_letters.append(refusal(why, control, fs.control_ts, fs.max_ts))
        return False
    fs.control_ts = control.ts
    return True


def is_control(item: object) -> bool:
    """Whether a parsed item (event, control, or :class:`InvalidEvent` with its payload) is or was meant as a
    control."""
    if isinstance(item, InvalidEvent):
        payload = getattr(item, "payload", None)
        return isinstance(payload, dict) and payload.get("type") == "control"
    return getattr(item, "type", None) == "control"


def misplaced(item: object) -> InvalidEvent:
    """A control read from an input topic, as the :class:`InvalidEvent` that refuses it (``control_on_input_topic``):
    whoever can write an input topic must not be able to un-kill a feature."""
    err = InvalidEvent("control_on_input_topic", "controls are accepted only from the control topic; refused")
    if isinstance(item, InvalidEvent):
        err.payload = getattr(item, "payload", None)  # type: ignore[attr-defined]
    else:
        payload = {"type": "control", "action": item.action, "event_id": item.event_id,  # type: ignore[attr-defined]
                   "ts": item.ts, "feature": item.feature}  # type: ignore[attr-defined]
        if item.phase:  # type: ignore[attr-defined]
            payload["phase"] = item.phase  # type: ignore[attr-defined]
        err.payload = payload  # type: ignore[attr-defined]
    return err
