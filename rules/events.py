"""Input events (CONTRACT §1): validation, normalisation and pseudonymisation.

Two validators share one definition of "valid":

* the pydantic models of :mod:`rules.event_models` are the specification and produce the located error messages;
* the msgspec Structs of :mod:`rules.decode` restate them for a decoder that validates while it parses, in C.
  Post-checks here cover what msgspec cannot express (an RFC 3339 ``ts``, the feedback cross-field rules) or
  would check slowly (the character sets of names and labels). The typed path only ever *accepts* what the models
  accept: on any refusal the models decide for that item, and hypothesis tests check that both give the same
  :class:`Event` whenever the typed path accepts.

Whatever path validates, ``user`` is re-keyed with HMAC-SHA256 before the event leaves this module, so no raw user id
reaches windows, state or outputs.

>>> p = EventParser(Pseudonymizer(b"k"))
>>> [e.feature for e in p.parse_message(b'{"type":"interaction","event_id":"1","ts":0,"feature":"f"}')]
['f']
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from rules.control_auth import check_signature
from rules.decode import MESSAGE, ControlRecord, DecodeFailed, Feedback, Interaction, convert, json_shaped
from rules.decode import names, seen_labels, seen_name
from rules.event_models import ANY as _ANY
from rules.event_models import ControlIn, EvalIn, InteractionIn
from rules.event_models import feedback_problem as _feedback_problem
from rules.event_models import control_problem as _control_problem
from rules.event_models import eval_problem as _eval_problem
from rules.event_models import is_name as _is_name
from rules.event_models import located as _located
from rules.exceptions import InvalidEvent
from rules.timestamps import _iso_ms, parse_ts, rfc3339_ms

__all__ = [
    "Event",
    "Control",
    "Pseudonymizer",
    "EventParser",
    "parse_ts",
    "rfc3339_ms",
    "redact",
    "dead_letter",
    "KNOWN_FIELDS",
]



class Pseudonymizer:
    """Re-keys user ids with HMAC-SHA256 so the raw id is never stored.

    Live workers and replay of one deployment share the key, so they compute the same pseudonyms.
    A bounded cache keeps the per-event cost low; it lives only in process memory. A hit is one dict lookup (no
    per-hit bookkeeping, as an LRU would add); when the cache holds ``cache_max`` ids the older half (in insertion
    order) is dropped, so ids still in use soon come back. Measured: ~190 bytes per entry with its key (~38 MB at the
    200,000 default), ~0.1 µs per hit, ~1.2 µs per miss.

    >>> Pseudonymizer(b"secret")("u-1") == Pseudonymizer(b"secret")("u-1")
    True
    """

    __slots__ = ("_keyed", "_cache", "cache_max")

    def __init__(self, key: bytes, cache_max: int = 200_000) -> None:
        if not key:
            raise ValueError("the user pseudonymisation key must not be empty")
        # the HMAC state after the key: a copy per miss skips re-keying (1.2 µs instead of 1.7 per miss)
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._cache: dict[str, str] = {}
        self.cache_max = max(2, cache_max)

    def __call__(self, user: str) -> str:
        out = self._cache.get(user)
        if out is None:
            h = self._keyed.copy()
            h.update(user.encode("utf-8", "surrogatepass"))  # a lone surrogate (Python input) must not crash
            out = h.hexdigest()[:32]
            cache = self._cache
            if len(cache) >= self.cache_max:
                for old in list(islice(cache, len(cache) // 2)):
                    del cache[old]
            cache[user] = out
        return out


class Event:
    """A validated, normalised input event. ``ts`` is epoch ms; ``user`` is already pseudonymised."""

    FIELDS = (
        "type", "event_id", "ts", "feature", "phase", "segment", "user", "model_version", "prompt_version",
        "outcome", "latency_ms", "tokens_in", "tokens_out", "cost_usd", "confidence", "flags",
        "kind", "label", "score", "interaction_id", "variant", "n", "passed", "session_ms",
    )  # fmt: skip
    # ``origin`` is where the event came from ({"file", "line"} or {"topic", "partition", "offset"}), set by the
    # shell: a held event that is later quarantined (rules.clock) names it in its dead letter. Not part of equality.
    __slots__ = FIELDS + ("origin",)

    def __init__(self, type, event_id, ts, feature, phase, segment, user, model_version, prompt_version,
                 outcome=None, latency_ms=None, tokens_in=None, tokens_out=None, cost_usd=None, confidence=None,
                 flags=(), kind=None, label=None, score=None, interaction_id=None, variant=None, n=None,
                 passed=None, session_ms=None):  # fmt: skip
        self.type = type
        self.event_id = event_id
        self.ts = ts
        self.feature = feature
        self.phase = phase
        self.segment = segment
        self.user = user
        self.model_version = model_version
        self.prompt_version = prompt_version
        self.outcome = outcome
        self.latency_ms = latency_ms
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.cost_usd = cost_usd
        self.confidence = confidence
        self.flags = flags
        self.kind = kind
        self.label = label
        self.score = score
        self.interaction_id = interaction_id
        self.variant = variant
        self.n = n  # an eval run (kind "eval", label its suite): the items evaluated and how many passed
        self.passed = passed
        self.session_ms = session_ms  # an interaction that ends a user session: its length (extension)
        self.origin: dict | None = None

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.FIELDS)

    def to_state(self) -> list:
        """JSON-able form (a held event persists with its feature's state): the fields up to ``interaction_id``,
        the origin, then ``variant``, ``n``, ``passed`` and ``session_ms`` as far as one is set (so a state written
        before they existed reads the same)."""
        t = list(self.as_tuple())
        t[15] = list(t[15])  # flags
        tail = [self.variant, self.n, self.passed, self.session_ms]
        while tail and tail[-1] is None:
            tail.pop()
        return t[:20] + [self.origin] + tail

    @classmethod
    def from_state(cls, s: list) -> Event:
        tail = s[21:] + [None] * (25 - len(s))
        ev = cls(*s[:15], tuple(s[15]), *s[16:20], variant=tail[0], n=tail[1], passed=tail[2], session_ms=tail[3])
        ev.origin = s[20]
        return ev

    def payload(self) -> dict:
        """The normalised event as a dead letter shows it: ``user`` is already a pseudonym, ``ts`` is RFC 3339; an eval
        run as it was sent (``type: eval``, ``suite``)."""
        d: dict = {}
        if self.kind == "eval":
            d["type"] = "eval"
        for k in self.FIELDS:
            if k in d:
                continue
            v = getattr(self, k)
            if v is None or (k in ("flags", "segment") and not v):
                continue
            if k == "ts":
                d[k] = _iso_ms(v)
            elif k == "user":
                d[k] = v
            elif k == "segment":
                d[k] = {sk: _safe(sv) for sk, sv in v.items()}
            elif k == "flags":
                d[k] = [_safe(f) for f in v]
            elif self.kind == "eval" and k in ("kind", "label"):
                if k == "label":
                    d["suite"] = _safe(v)
            else:
                d[k] = _safe(v)
        return d

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.as_tuple() == other.as_tuple()

    def __repr__(self) -> str:
        return f"Event({self.type}, {self.event_id!r}, ts={self.ts}, {self.feature}/{self.phase})"


class Control:
    """An operator control input carried in the event stream (extension of CONTRACT §1).

    ``{"type": "control", "action": "resume", "feature": "f", "phase": "p"|null, "ts": ..., "event_id": ...,
    "reason": "..."}`` clears the pause/kill latches of the feature (one phase, or all when ``phase`` is absent).

    ``key_id`` is the operator key that signed it, when operator keys are configured and the signature was verified
    (:mod:`rules.control_auth`); ``origin`` is where it was read (topic/partition/offset or file:line), for a dead
    letter if it is refused.
    """

    __slots__ = ("event_id", "ts", "action", "feature", "phase", "reason", "operator", "key_id", "origin", "role",
                 "revoke")  # fmt: skip
    type = "control"

    def __init__(self, event_id: str, ts: int, action: str, feature: str, phase: str | None, reason: str,
                 operator: str | None = None, key_id: str | None = None, role: str | None = None,
                 revoke: bool = False) -> None:  # fmt: skip
        self.event_id, self.ts, self.action, self.feature = event_id, ts, action, feature
        self.phase, self.reason, self.operator, self.key_id = phase, reason, operator, key_id
        self.role, self.revoke = role, revoke  # a signoff's role, and whether it withdraws it
        self.origin: dict | None = None


# --- events from the typed decoder's records (rules.decode), checked for what msgspec cannot express ----------------

_COMMON_KEYS = ("type", "event_id", "ts", "feature", "phase", "segment", "user", "model_version", "prompt_version",
               "variant")  # fmt: skip
KNOWN_FIELDS = frozenset(
    _COMMON_KEYS + ("outcome", "latency_ms", "tokens_in", "tokens_out", "cost_usd", "confidence", "flags", "session_ms")
    + ("kind", "label", "score", "interaction_id") + ("action", "reason", "operator", "role", "revoke")
    + ("suite", "n", "passed")
)  # fmt: skip



def _check_row(r: Interaction | Feedback | ControlRecord, pseudo: Pseudonymizer) -> bool:
    """Finish a record the typed decoder accepted, in place, into a *row*: ``ts`` as epoch ms, ``user`` re-keyed.
    False when a post-check fails (the models then decide). Call it once per record: it re-keys the user. A
    control record gets the same time and name checks (its phase may be absent)."""
    ts = r.ts
    if type(ts) is str:
        try:
            r.ts = rfc3339_ms(ts)
        except ValueError:
            return False
    feature, phase = r.feature, r.phase
    if (feature not in names and not seen_name(feature)) or (
        phase not in names and phase is not None and not seen_name(phase)
    ):
        return False
    t = r.type
    if t == "interaction":
        flags = r.flags
        if flags and not seen_labels(flags):
            return False
    elif t == "feedback":
        label = r.label
        if r.kind == "eval":
            if not seen_labels((label,)) or _eval_problem(r.score, r.passed, r.n):
                return False
        elif (label is not None and not seen_labels((label,))) or _feedback_problem(r.kind, label, r.score):
            return False
    else:  # a control: no labels, no user
        return _control_problem(r.action, phase, r.role, r.revoke) is None
    user = r.user
    if user is not None:
        r.user = pseudo._cache.get(user) or pseudo(user)  # a hit without the call
    return True


def row_event(r: Interaction | Feedback) -> Event:
    """The :class:`Event` of a row (a checked record, see :meth:`EventParser.parse_rows`); its ``origin`` is unset."""
    return Event(
        r.type, r.event_id, r.ts, r.feature, r.phase, r.segment, r.user, r.model_version, r.prompt_version,
        r.outcome, r.latency_ms, r.tokens_in, r.tokens_out, r.cost_usd, r.confidence, r.flags, r.kind, r.label,
        r.score, r.interaction_id, r.variant, r.n, r.passed, r.session_ms,
    )  # fmt: skip


def _from_record(r: Interaction | Feedback | ControlRecord, pseudo: Pseudonymizer) -> Event | Control | None:
    """The event of a record the typed decoder accepted; None when the post-checks fail (the models then decide)."""
    if not _check_row(r, pseudo):
        return None
    if r.type == "control":
        return Control(r.event_id, r.ts, r.action, r.feature, r.phase, r.reason, r.operator, role=r.role,
                       revoke=r.revoke)  # fmt: skip
    return row_event(r)


def _from_model(m: BaseModel, pseudo: Pseudonymizer) -> Event | Control:
    if isinstance(m, ControlIn):
        return Control(m.event_id, m.ts, m.action, m.feature, m.phase, m.reason, m.operator, role=m.role,
                       revoke=m.revoke)  # fmt: skip
    user = None if m.user is None else pseudo(m.user)
    common = (m.event_id, m.ts, m.feature, m.phase, dict(m.segment), user, m.model_version, m.prompt_version)
    if isinstance(m, InteractionIn):
        return Event(
            "interaction", *common, m.outcome, m.latency_ms, m.tokens_in, m.tokens_out, m.cost_usd, m.confidence,
            tuple(m.flags), variant=m.variant, session_ms=m.session_ms,
        )  # fmt: skip
    if isinstance(m, EvalIn):  # rides the feedback stream (rules.decode.EvalRecord)
        return Event("feedback", *common, kind="eval", label=m.suite, score=m.score, variant=m.variant, n=m.n,
                     passed=m.passed)  # fmt: skip
    return Event("feedback", *common, kind=m.kind, label=m.label, score=m.score, interaction_id=m.interaction_id,
                 variant=m.variant)  # fmt: skip


class EventParser:
    """Turns raw message bytes (one object or a batch array) into events or :class:`InvalidEvent` errors.

    A message is decoded and validated in one pass by the typed decoder (:data:`rules.decode.MESSAGE`). When it
    refuses the message, or a record fails the post-checks, the message is decoded again with orjson and each item
    validated on its own: the typed decoder again where it can, the pydantic models for the rest, which either
    accept the item or name what is wrong with it.
    """

    def __init__(self, pseudonymizer: Pseudonymizer, operator_keys: Mapping[str, bytes] | None = None) -> None:
        self.pseudo = pseudonymizer
        # with operator keys every control must carry a valid signature (rules.control_auth); without, none is checked
        self.operator_keys = dict(operator_keys) if operator_keys else None

    def parse_obj(self, obj: Any) -> Event | Control:
        """Validate one decoded JSON value; raises :class:`InvalidEvent`."""
        if type(obj) is dict:
            if json_shaped(obj):
                try:
                    ev = _from_record(convert(obj), self.pseudo)
                except DecodeFailed:
                    ev = None
                if ev is not None and (ev.type != "control" or self.operator_keys is None):
                    return ev  # a control to authenticate goes the long way, below
        elif not isinstance(obj, dict):
            raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        try:
            item = _from_model(_ANY.validate_python(obj), self.pseudo)
        except ValidationError as e:
            raise InvalidEvent("schema", _located(e)) from None
        if item.type == "control" and self.operator_keys is not None:
            reason, detail, key_id = check_signature(obj, self.operator_keys)
            if reason is not None:
                raise InvalidEvent(reason, detail)
            item.key_id = key_id
        return item

    def parse_message(self, data: bytes | str) -> Iterator[Event | Control | InvalidEvent]:
        """Yield each event of a message; invalid ones are yielded as :class:`InvalidEvent` (never raised)."""
        typed = self._typed(data)
        if typed is not None:
            yield from typed
        else:
            yield from self._parse_each(data)

    def parse_items(self, data: bytes | str) -> list[Event | Control | InvalidEvent]:
        """:meth:`parse_message` as a list (the hot path of replay: no generator per message)."""
        typed = self._typed(data)
        return typed if typed is not None else list(self._parse_each(data))

    def parse_rows(self, data: bytes | str) -> list | None:
        """The hot path of replay and the worker: the events of a message as *rows* — the typed decoder's records,
        checked and finished in place (:func:`_check_row`), which read like :class:`Event` (same attributes and
        values, :func:`row_event` gives the Event) but cost no object of their own — and its controls as
        :class:`Control`. None when the typed path refuses any item of the message: :meth:`parse_items` then
        decides, item by item. A row has no ``origin`` attribute: the caller keeps where it came from
        (``rules.engine.Engine.step``'s ``origins``)."""
        try:
            decoded = MESSAGE.decode(data)
        except DecodeFailed:
            return None
        pseudo = self.pseudo
        if type(decoded) is not list:
            decoded = [decoded]
        elif not decoded:
            return None  # an empty envelope is a dead letter: the long way names it
        out = []
        for r in decoded:
            if r.type == "control":
                if self.operator_keys is not None:
                    return None  # its signature is checked the long way
                c = _from_record(r, pseudo)
                if c is None:
                    return None
                out.append(c)
            elif _check_row(r, pseudo):
                out.append(r)
            else:
                return None
        return out

    def _typed(self, data: bytes | str) -> list[Event | Control] | None:
        """All the events of a message from the typed decoder (:meth:`parse_rows`, each row as its Event); None
        when it or a post-check refuses any of them."""
        rows = self.parse_rows(data)
        return None if rows is None else [r if type(r) is Control else row_event(r) for r in rows]

    def _parse_each(self, data: bytes | str) -> Iterator[Event | Control | InvalidEvent]:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            yield InvalidEvent("invalid_json", _json_error_detail(e))
            return
        items = obj if type(obj) is list else (obj,)
        if not items:  # an envelope of nothing: say so, never let a message vanish uncounted
            e = InvalidEvent("empty_envelope", "a batch envelope with no events ([])")
            e.payload = obj  # type: ignore[attr-defined]
            yield e
            return
        for i, item in enumerate(items):
            try:
                yield self.parse_obj(item)
            except InvalidEvent as e:
                if type(obj) is list:
                    e = InvalidEvent(e.reason, f"[{i}] {e.detail}")
                e.payload = item  # type: ignore[attr-defined]  # for the dead letter, redacted by the writer
                yield e


_NON_JSON_NUMBER = re.compile(r"(?:nan|infinity|inf)(?![A-Za-z0-9_])", re.IGNORECASE)


def _json_error_detail(e: orjson.JSONDecodeError) -> str:
    """orjson's complaint without its position; named when the culprit is a NaN or Infinity literal (Python's
    ``json.dumps`` writes them, JSON has none), which orjson only calls an "unexpected character"."""
    doc, pos = getattr(e, "doc", None), getattr(e, "pos", None)
    if isinstance(doc, str) and isinstance(pos, int) and _NON_JSON_NUMBER.match(doc, pos):
        return "NaN/Infinity is not valid JSON; send null or omit the field"
    return str(e).split(":")[0]


def redact(payload: Any, pseudo: Pseudonymizer) -> Any:
    """The dead-letter view of a rejected payload: known fields only, user re-keyed, no free text.

    Strings that are not short identifiers are replaced by a length marker, so a rejected event that carried a
    prompt or a reply in the wrong field cannot leak it.

    >>> redact({"type": "interaction", "user": "alice", "prompt": "hello", "feature": "x y"}, Pseudonymizer(b"k"))
    {'type': 'interaction', 'user': 'ec631a55bb81f5b9dc96aa930a45628d', 'feature': '<redacted 3 chars>'}
    """
    if not isinstance(payload, dict):
        return {"_payload": f"<redacted {type(payload).__name__}>"}
    out: dict[str, Any] = {}
    for k, v in payload.items():
        if k not in KNOWN_FIELDS or k == "reason":
            continue
        if k == "user":
            out[k] = pseudo(v) if isinstance(v, str) else "<redacted>"
        elif k == "segment" and isinstance(v, dict):
            out[k] = {str(sk)[:64]: _safe(sv) for sk, sv in list(v.items())[:16] if _is_name(sk)}
        elif k == "flags" and isinstance(v, list):
            out[k] = [_safe(f) for f in v[:64]]
        else:
            out[k] = _safe(v)
    return out


def dead_letter(err: InvalidEvent, source: dict | None, size: int, pseudo: Pseudonymizer) -> dict:
    """The dead-letter record of an invalid input read at ``source`` (``{"file", "line"}`` or ``{"topic",
    "partition", "offset"}``): its reason and detail, and the rejected item :func:`redact`-ed — or, when nothing
    could be decoded, only the raw message's ``size`` in bytes."""
    return {
        "reason": err.reason,
        "detail": err.detail,
        "source": source,
        "payload": redact(getattr(err, "payload", None), pseudo)
        if hasattr(err, "payload")
        else {"_payload": f"<redacted {size} bytes>"},
    }


def _safe(v: Any) -> Any:
    if v is None or isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v)):
        return v
    if isinstance(v, str) and (_is_name(v) or _is_ts_like(v)):
        return v
    if isinstance(v, str):
        return f"<redacted {len(v)} chars>"
    return f"<redacted {type(v).__name__}>"


def _is_ts_like(s: str) -> bool:
    return len(s) <= 40 and set(s) <= set("0123456789-:.TZtz+ ")
