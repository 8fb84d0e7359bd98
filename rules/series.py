"""Synthetic event series for rule unit tests: promtool's expanding notation, laid out over evenly spaced events.

A series is a run of events of one type, feature and phase at evenly spaced event times (``every`` apart, or
``count`` of them, over ``[from, to)``). Each event field takes one of

* a **constant**: ``outcome: ok``, ``latency_ms: 240``, ``flags: [pii_leak]``;
* a **sequence** in promtool's expanding notation (numeric fields) or a YAML list (any field), spread evenly over
  the events — with K values and n events, event i takes value ``i * K // n``, so K = n is one value per event as
  in promtool and fewer values each cover an equal share of the series (``_`` leaves the field out);
* a **ratio** ``{error: 0.1, ok: 0.9}``: the values in those proportions, interleaved deterministically (smooth
  weighted round-robin: after any number of events every count is within one of its exact share, no randomness).

Expanding notation, as in ``promtool test rules``: ``a+bxN`` is ``a a+b ... a+N*b`` (N+1 values), ``a-bxN`` counts
down, ``axN`` is a N+1 times, ``_`` is one absent value and ``_xN`` N of them.

>>> expand("-2+4x3"), expand("1-2x4"), expand("1x4 _x2 7"), expand("0.1+0.1x2")
([-2, 2, 6, 10], [1, -1, -3, -5, -7], [1, 1, 1, 1, 1, None, None, 7], [0.1, 0.2, 0.3])
>>> list(lay_out_ratio({"error": 1, "ok": 3}, 8))
['ok', 'error', 'ok', 'ok', 'ok', 'error', 'ok', 'ok']
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from rules.exceptions import RollguardError

__all__ = [
    "NotationError", "MAX_VALUES", "NUMERIC_FIELDS", "Layout", "SeriesSpec", "expand", "lay_out_sequence",
    "lay_out_ratio", "parse_layout",
]  # fmt: skip

# A test's series expand to at most this many values each: bigger inputs are a typo (``every: 1ms``), not a test.
MAX_VALUES = 2_000_000
ABSENT = None

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TOKEN = re.compile(rf"(?:(?P<absent>_)|(?P<a>{_NUM}))(?:(?P<sign>[+-])(?P<b>{_NUM}))?(?:x(?P<n>\d+))?")

class NotationError(RollguardError):
    """A series value does not follow the expanding notation; the message names the token and the forms."""


def _number(text: str) -> int | Decimal:
    d = Decimal(text)
    return int(d) if d == d.to_integral_value() and not re.search(r"[.eE]", text) else d


def expand(notation: str) -> list[Any]:
    """The values of an expanding-notation string; None stands for ``_`` (the field is left out).

    Integers stay integers (``tokens_out`` must be one); decimals are computed exactly and returned as floats.

    >>> expand("200+0x2 1500")
    [200, 200, 200, 1500]
    >>> expand("5+x2")
    Traceback (most recent call last):
    ...
    rules.series.NotationError: '5+x2' is not a value: write a number, a+bxN, a-bxN, axN, _ or _xN
    """
    out: list[Any] = []
    for token in notation.split():
        m = _TOKEN.fullmatch(token)
        if m is None or (m["sign"] and m["n"] is None) or (m["absent"] and m["sign"]):
            hint = " (an increment needs a count: a+bxN)" if m is not None and m["sign"] and not m["n"] else ""
            raise NotationError(f"{token!r} is not a value: write a number, a+bxN, a-bxN, axN, _ or _xN{hint}")
        n = int(m["n"]) if m["n"] is not None else None
        if len(out) + (n or 0) + 1 > MAX_VALUES:
            raise NotationError(f"{notation[:40]!r} expands to more than {MAX_VALUES:,} values")
        if m["absent"]:
            out += [ABSENT] * (n if n is not None else 1)  # promtool: '_x3' is three missing samples
            continue
        try:
            a = _number(m["a"])
            b = _number(m["b"]) if m["b"] else 0
        except InvalidOperation:
            raise NotationError(f"{token!r}: not a number") from None
        if m["sign"] == "-":
            b = -b
        values = [a + k * b for k in range((n if n is not None else 0) + 1)]
        out += [float(v) if isinstance(v, Decimal) else v for v in values]
    if not out:
        raise NotationError("empty: write at least one value, e.g. '200' or '200+10x5'")
    return out


def lay_out_sequence(values: Sequence[Any], n: int) -> Iterator[Any]:
    """Event ``i`` of ``n`` takes ``values[i * K // n]``: each of the K values covers an equal share, in order.

    >>> list(lay_out_sequence([1, 2], 5))
    [1, 1, 1, 2, 2]
    """
    k = len(values)
    if k > n:
        raise NotationError(f"{k} values for {n} events: each event takes at most one value (use fewer values)")
    return (values[i * k // n] for i in range(n))


def lay_out_ratio(weights: dict[Any, float], n: int) -> Iterator[Any]:
    """``n`` values in proportion to their weights, evenly interleaved: smooth weighted round-robin in exact integer
    arithmetic (ties go to the value listed first), so after any number of events each count is within one of its
    share and nothing is random. The weights need not sum to 1: ``{error: 1, ok: 9}`` is 10 % errors.

    >>> from collections import Counter
    >>> Counter(lay_out_ratio({"error": 0.1, "ok": 0.9}, 1000))
    Counter({'ok': 900, 'error': 100})
    """
    fractions = [Fraction(str(w)) for w in weights.values()]
    scale = math.lcm(*(f.denominator for f in fractions))
    ints = [int(f * scale) for f in fractions]
    total = sum(ints)
    keys = list(weights)
    credit = [0] * len(keys)
    order = range(len(keys))
    for _ in range(n):
        for j in order:
            credit[j] += ints[j]
        best = max(order, key=lambda j: (credit[j], -j))
        credit[best] -= total
        yield keys[best]


NUMERIC_FIELDS = frozenset({"latency_ms", "tokens_in", "tokens_out", "cost_usd", "confidence", "score", "session_ms"})


@dataclass(frozen=True)
class Layout:
    """How one field's values are spread over a series: a ``constant``, a ``sequence`` or a ``ratio``."""

    kind: str
    values: Any  # the constant, the list of values, or the {value: weight} mapping

    def lay_out(self, n: int) -> Iterator[Any]:
        if self.kind == "constant":
            return itertools.repeat(self.values, n)
        if self.kind == "sequence":
            return lay_out_sequence(self.values, n)
        return lay_out_ratio(self.values, n)


def parse_layout(field: str, raw: Any) -> Layout:
    """The layout a series field's YAML value asks for; raises :class:`NotationError` saying what is accepted.

    >>> parse_layout("latency_ms", "200+100x2"), parse_layout("flags", {"pii_leak": 1, "_": 99}).values
    (Layout(kind='sequence', values=[200, 300, 400]), {('pii_leak',): 1, None: 99})
    """
    if isinstance(raw, dict):
        if not raw:
            raise NotationError("an empty ratio: give values and weights, e.g. {error: 0.1, ok: 0.9}")
        out = {}
        for key, weight in raw.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
                raise NotationError(f"ratio weight of {key!r} must be a positive number, got {weight!r}")
            out[_ratio_key(field, key)] = weight
        return Layout("ratio", out)
    if field == "flags":
        if isinstance(raw, list) and all(isinstance(f, str) for f in raw):
            return Layout("constant", tuple(raw))
        raise NotationError("expected a list of flags such as [pii_leak], or a ratio such as {pii_leak: 1, _: 99}")
    if isinstance(raw, list):
        if not raw:
            raise NotationError("an empty list: give at least one value")
        return Layout("sequence", [None if v == "_" else v for v in raw])
    if field in NUMERIC_FIELDS and isinstance(raw, str):
        values = expand(raw)
        return Layout("constant", values[0]) if len(values) == 1 else Layout("sequence", values)
    if raw is None or isinstance(raw, (list, dict)):
        raise NotationError(f"expected a value, a list of values or a ratio mapping, got {raw!r}")
    return Layout("constant", raw)


def _ratio_key(field: str, key: Any) -> Any:
    if key == "_":
        return None
    if field == "flags":
        if not isinstance(key, str):
            raise NotationError(f"ratio keys of flags are flag names or _, got {key!r}")
        return (key,)
    if field in NUMERIC_FIELDS and isinstance(key, str):
        try:
            [value] = expand(key)
        except (NotationError, ValueError):
            raise NotationError(f"ratio key {key!r} of {field} must be a number or _") from None
        return value
    return key


@dataclass(frozen=True)
class SeriesSpec:
    """A validated series: ``n`` events of one type from ``start_ms``, ``every_ms`` apart (or ``count`` spread over
    ``[start_ms, end_ms)``). ``users`` cycles that many user ids of its own (two series never share a user), or, with
    ``pool``, the first ``users`` ids of that pool: series naming the same pool share them (a cohort that comes back)."""

    type: str
    feature: str
    phase: str
    start_ms: int
    end_ms: int
    every_ms: int | None
    count: int | None
    users: int | None
    segment: dict[str, Layout]
    fields: dict[str, Layout]
    id_prefix: str
    pool: str | None = None

    @property
    def n(self) -> int:
        if self.count is not None:
            return self.count
        return -(-(self.end_ms - self.start_ms) // self.every_ms)

    def times(self) -> Iterator[int]:
        span, n = self.end_ms - self.start_ms, self.n
        if self.count is not None:
            return (self.start_ms + i * span // n for i in range(n))
        return (self.start_ms + i * self.every_ms for i in range(n))

    def events(self) -> Iterator[dict]:
        """The series as CONTRACT §1 event dicts, in time order (raises :class:`NotationError` on a bad layout)."""
        n = self.n
        seg_columns = [(k, lay.lay_out(n)) for k, lay in self.segment.items()]
        columns = [(k, lay.lay_out(n)) for k, lay in self.fields.items()]
        users_prefix = f"pool-{self.pool}" if self.pool else self.id_prefix
        for i, ts in enumerate(self.times()):
            ev = {"type": self.type, "event_id": f"{self.id_prefix}-{i}", "ts": ts, "feature": self.feature,
                  "phase": self.phase}  # fmt: skip
            if seg_columns:
                seg = {k: v for k, col in seg_columns if (v := next(col)) is not None}
                if seg:
                    ev["segment"] = seg
            if self.users:
                ev["user"] = f"{users_prefix}-u{i % self.users}"
            for k, col in columns:
                v = next(col)
                if v is not None:
                    ev[k] = list(v) if k == "flags" else v
            yield ev
