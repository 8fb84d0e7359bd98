"""The wire schema of input events as msgspec Structs: raw message bytes to typed records at C speed.

The pydantic models in :mod:`rules.event_models` are the specification; these Structs restate their constraints so that
msgspec's decoder can check them while it parses. They may only ever be *stricter* than the models, never more
lenient: whatever they reject, the models decide (and word the located error). Two things msgspec cannot express
are checked afterwards by :class:`rules.events.EventParser`: an RFC 3339 string ``ts`` (parsed exactly as
:func:`rules.timestamps.parse_ts` does) and the cross-field feedback rules. One more is checked afterwards for speed:
the character sets of names (``feature``, ``phase``) and labels (``flags``, ``label``). msgspec checks a ``pattern``
by calling Python's ``re`` for each value, which was 1.3 µs of an event's 3; afterwards a set of the few names
already seen answers instead. A hypothesis test (tests/test_events.py) proves that the decoder and the models agree.

Where the two differ by construction, and why the Structs stay on the strict side:

* floats are bounded by ``±sys.float_info.max``, which also refuses infinities (the models say
  ``allow_inf_nan=False``); a NaN fails every bound;
* integers stay within int64: orjson, which the models see, turns an integer literal beyond 64 bits into a float,
  which ``StrictInt`` rejects (between 2**63 and 2**64 the models decide);
* :data:`MESSAGE` (raw bytes) forbids unknown fields: msgspec skips an unknown field's value without checking it
  fully (an out-of-range number or invalid UTF-8 inside it would pass, where orjson refuses the whole message), so a
  message with extra fields takes the orjson path. :func:`convert` (Python values that orjson or a caller already
  built) ignores unknown fields as the models do, and :func:`json_shaped` first makes sure the values are plain
  JSON types (msgspec would turn a tuple into a list or a ``Decimal`` into a float; strict pydantic would not).

>>> type(MESSAGE.decode(b'{"type":"interaction","event_id":"1","ts":0,"feature":"f"}')).__name__
'Interaction'
>>> [s.event_id for s in MESSAGE.decode(b'[{"type":"feedback","event_id":"2","ts":0,"feature":"f","kind":"ticket"}]')]
['2']
"""

from __future__ import annotations

import sys
from typing import Annotated, ClassVar, Literal, Union

import msgspec

from rules.timestamps import _MAX_TS

EVAL_SCORE_MAX = 1e6  # |score| of an eval run (rules.event_models.EvalIn)
EVAL_N_MAX = 1_000_000_000  # items in one eval run

__all__ = [
    "Interaction", "Feedback", "EvalRecord", "ControlRecord", "MESSAGE", "DecodeFailed", "convert", "json_shaped", "names",
    "AMOUNT_MAX",
    "seen_name", "seen_labels",
]  # fmt: skip

_FMAX = sys.float_info.max
_I64 = 2**63 - 1  # msgspec bounds fit in int64; orjson keeps integers as int up to 2**64 - 1, the models decide above

# names and labels: their character sets are checked afterwards (seen_name, seen_labels below), see the module docstring
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Short = Annotated[str, msgspec.Meta(max_length=128)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
SegKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Segment = Annotated[dict[SegKey, Short], msgspec.Meta(max_length=16)]
Flags = Annotated[tuple[Label, ...], msgspec.Meta(max_length=64)]
# amounts (latency_ms, cost_usd, session_ms) are kept as scaled integers (rules.aggregate: ms -> µs, USD -> nano-USD):
# bounded so that the scaled value stays finite (1e308 ms made an infinity and crashed the aggregation)
AMOUNT_MAX = 1e12
NonNeg = Annotated[float, msgspec.Meta(ge=0.0, le=AMOUNT_MAX)]
Finite = Annotated[float, msgspec.Meta(ge=-_FMAX, le=_FMAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_I64)]
# an RFC 3339 string is checked afterwards (rules.timestamps.rfc3339_ms); an integer is epoch ms within 1970..9999
Ts = Union[Annotated[int, msgspec.Meta(ge=0, lt=_MAX_TS)], str]


class _Common(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, gc=False):
    event_id: EventId
    ts: Ts
    feature: Name


class Interaction(_Common, tag="interaction"):
    """CONTRACT §1 interaction, as ``rules.event_models.InteractionIn``.

    The class attributes make a checked record read like a ``rules.events.Event`` (a *row*, see
    ``EventParser.parse_rows``): the type, and None for the fields only feedback has."""

    type: ClassVar[str] = "interaction"
    kind: ClassVar[None] = None
    label: ClassVar[None] = None
    score: ClassVar[None] = None
    interaction_id: ClassVar[None] = None
    n: ClassVar[None] = None
    passed: ClassVar[None] = None

    phase: Name = "default"
    segment: Segment = msgspec.field(default_factory=dict)
    user: Short | None = None
    model_version: Short | None = None
    prompt_version: Short | None = None
    variant: Short | None = None
    outcome: Literal["ok", "error", "timeout", "refused"] = "ok"
    latency_ms: NonNeg | None = None
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    cost_usd: NonNeg | None = None
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    flags: Flags = ()
    session_ms: NonNeg | None = None


class Feedback(_Common, tag="feedback"):
    """CONTRACT §1 feedback, as ``rules.event_models.FeedbackIn`` (its cross-field rules are checked afterwards). Reads
    like a ``rules.events.Event`` too: None for the fields only interactions have, no flags."""

    type: ClassVar[str] = "feedback"
    outcome: ClassVar[None] = None
    latency_ms: ClassVar[None] = None
    tokens_in: ClassVar[None] = None
    tokens_out: ClassVar[None] = None
    cost_usd: ClassVar[None] = None
    confidence: ClassVar[None] = None
    flags: ClassVar[tuple] = ()
    n: ClassVar[None] = None
    passed: ClassVar[None] = None
    session_ms: ClassVar[None] = None

    kind: Literal["suggestion", "thumbs", "review", "ticket", "survey"]
    phase: Name = "default"
    segment: Segment = msgspec.field(default_factory=dict)
    user: Short | None = None
    model_version: Short | None = None
    prompt_version: Short | None = None
    variant: Short | None = None
    label: Label | None = None
    score: Finite | None = None
    interaction_id: Short | None = None


class EvalRecord(_Common, tag="eval"):
    """An evaluation run, as ``rules.event_models.EvalIn``: ``n`` items of suite ``suite`` (read as ``label``), their
    mean ``score`` and how many ``passed``. It reads like a feedback row of kind ``eval`` (``type`` is the stream it
    rides: the feedback stream's clock, like an expert review's)."""

    type: ClassVar[str] = "feedback"
    kind: ClassVar[str] = "eval"
    outcome: ClassVar[None] = None
    latency_ms: ClassVar[None] = None
    tokens_in: ClassVar[None] = None
    tokens_out: ClassVar[None] = None
    cost_usd: ClassVar[None] = None
    session_ms: ClassVar[None] = None
    confidence: ClassVar[None] = None
    flags: ClassVar[tuple] = ()
    interaction_id: ClassVar[None] = None

    label: Label = msgspec.field(name="suite")
    phase: Name = "default"
    segment: Segment = msgspec.field(default_factory=dict)
    user: Short | None = None
    model_version: Short | None = None
    prompt_version: Short | None = None
    variant: Short | None = None
    score: Annotated[float, msgspec.Meta(ge=-EVAL_SCORE_MAX, le=EVAL_SCORE_MAX)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=EVAL_N_MAX)] = 1
    passed: Annotated[int, msgspec.Meta(ge=0, le=EVAL_N_MAX)] | None = None


class ControlRecord(_Common, tag="control"):
    """An operator control input, as ``rules.event_models.ControlIn``."""

    type: ClassVar[str] = "control"

    action: Literal["resume", "signoff"]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    phase: Name | None = None
    operator: Short | None = None
    role: Annotated[str, msgspec.Meta(pattern="^[a-z0-9][a-z0-9_-]{0,63}$")] | None = None
    revoke: bool = False


# Lenient twins for values already decoded (unknown fields ignored, as the models' extra="ignore")
class _InteractionLax(Interaction, forbid_unknown_fields=False):
    pass


class _FeedbackLax(Feedback, forbid_unknown_fields=False):
    pass


class _EvalLax(EvalRecord, forbid_unknown_fields=False):
    pass


class _ControlLax(ControlRecord, forbid_unknown_fields=False):
    pass


Record = Union[Interaction, Feedback, EvalRecord, ControlRecord]
_LAX = Union[_InteractionLax, _FeedbackLax, _EvalLax, _ControlLax]

#: Decodes one message: an event object or a batch envelope (an array of them).
MESSAGE = msgspec.json.Decoder(Union[Interaction, Feedback, EvalRecord, ControlRecord, list[Record]])

#: What msgspec raises when it refuses a message or a value (the caller then asks the models). UnicodeError: a
#: ``str`` message with a lone surrogate cannot be encoded, and msgspec 0.19 raised UnicodeDecodeError, not
#: DecodeError, for invalid UTF-8 in a string.
DecodeFailed = (msgspec.ValidationError, msgspec.DecodeError, UnicodeError)


def convert(obj: dict) -> Interaction | Feedback | EvalRecord | ControlRecord:
    """Validate an already-decoded JSON object; raises one of :data:`DecodeFailed`. Call :func:`json_shaped` first.

    >>> convert({"type": "control", "event_id": "c", "ts": 1, "feature": "f", "action": "resume", "reason": "ok"}).action
    'resume'
    """
    return msgspec.convert(obj, _LAX)


_SCALARS = frozenset((int, float, bool, type(None)))


def json_shaped(obj: dict) -> bool:
    """True when every value is a plain JSON type (``str``, ``int``, ``float``, ``bool``, ``None``, or a ``list`` or
    a ``dict`` with ``str`` keys of those), the values on which :func:`convert` is exactly as strict as the models.
    A string must be valid Unicode too: the models refuse a lone surrogate, which msgspec would keep.

    >>> json_shaped({"flags": ["a"], "segment": {"k": "v"}}), json_shaped({"flags": ("a",)}), json_shaped({"u": "\\ud800"})
    (True, False, False)
    """
    for v in obj.values():
        t = type(v)
        if t is str:
            if not (v.isascii() or _unicode(v)):
                return False
        elif t in _SCALARS:
            continue
        elif t is list:
            for x in v:
                if not (type(x) in _SCALARS or (type(x) is str and (x.isascii() or _unicode(x)))):
                    return False
        elif t is dict:
            for k, x in v.items():
                if not (type(k) is str and (k.isascii() or _unicode(k))):
                    return False
                if not (type(x) in _SCALARS or (type(x) is str and (x.isascii() or _unicode(x)))):
                    return False
        else:
            return False
    return True


def _unicode(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


# Names and labels that matched their pattern (rules.event_models._NAME / _LABEL, the pydantic patterns: [A-Za-z0-9._-]
# and [a-z0-9_], whose $ is the end of the text, so "f\n" does not match). A handful of distinct values in practice,
# bounded all the same: an event that brings a new one pays one character-set check.
names: set[str] = set()
_labels: set[str] = set()
_SEEN_MAX = 4096
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def seen_name(s: str) -> bool:
    """Whether ``s`` (1..128 characters already) is a valid name; a valid one joins :data:`names`.

    >>> seen_name("email-reply"), "email-reply" in names, seen_name("email reply"), seen_name("f\\n")
    (True, True, False, False)
    """
    if not _NAME_CHARS.issuperset(s) or not 0 < len(s) <= 128:
        return False
    if len(names) >= _SEEN_MAX:
        names.clear()
    names.add(s)
    return True


def seen_labels(labels: tuple[str, ...]) -> bool:
    """Whether every one of ``labels`` is a valid label (``[a-z0-9_]{1,64}``).

    >>> seen_labels(("pii_leak", "up")), seen_labels(("PII",))
    (True, False)
    """
    for s in labels:
        if s not in _labels:
            if not _LABEL_CHARS.issuperset(s) or not 0 < len(s) <= 64:
                return False
            if len(_labels) >= _SEEN_MAX:
                _labels.clear()
            _labels.add(s)
    return True
