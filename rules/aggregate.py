"""Mergeable per-bucket aggregates: integer counters plus optional sketches.

Every quantity is kept as an integer (latency in µs, cost in nano-USD, confidence and scores in millionths and
thousandths), so adding events in any order or any batch split gives bit-identical buckets, and subtracting or merging
is exact. An event's contribution is computed once (:func:`contributions`) and added to every bucket it belongs to.

>>> b = Bucket.empty(needs_latency=True, needs_users=False)
>>> ev = type("E", (), dict(type="interaction", outcome="error", latency_ms=12.5, cost_usd=None, tokens_out=None,
...                         confidence=None, flags=("pii_leak",), user=None, session_ms=None))()
>>> b.add(contributions(ev), ev)
>>> sorted(b.c.items())
[('flag:pii_leak', 1), ('lat.n', 1), ('lat.s', 12500), ('n', 1), ('o:error', 1)]
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import orjson

from rules.sketches.ddsketch import DDSketch
from rules.sketches.exceptions import SketchError
from rules.sketches.hll import HyperLogLog
from rules.sketches.packing import Reader, put_uint

__all__ = ["Bucket", "contributions", "group_counters", "square_contributions", "group_squares", "share_key",
           "share_contributions", "group_shares", "LATENCY_SCALE", "COST_SCALE", "UNIT_SCALE", "SCORE_SCALE",
           "BUCKET_FORMAT",
           "StateFormatError"]  # fmt: skip

LATENCY_SCALE = 1_000  # ms -> µs
COST_SCALE = 1_000_000_000  # USD -> nano-USD
UNIT_SCALE = 1_000_000  # confidence in [0, 1] -> millionths
SCORE_SCALE = 1_000  # review / survey scores -> thousandths
DDSKETCH_ACCURACY = 0.005  # half of the contract's 1 % budget, leaving room for the index rounding

# --- the binary bucket state ----------------------------------------------------------------------------------
#
# Version 1 (``Bucket.to_bytes``), every integer a varint (rules.sketches.packing), signed ones zigzagged:
#
#   0x01                      format version (a JSON state, the format before it, starts with "{" = 0x7b)
#   flags                     one byte: bit 0 a latency sketch follows, bit 1 a distinct-users sketch; others 0
#   n                         the number of counters, then per counter, in name order:
#     code [len utf-8]        2*i: COUNTER_NAMES[i]; 2*j+1: COUNTER_PREFIXES[j] + the UTF-8 suffix that follows
#     value                   zigzag varint (any size)
#   DDSketch.write_to         when flag bit 0
#   HyperLogLog.write_to      when flag bit 1
#   crc32                     4 bytes, little-endian: zlib.crc32 of every byte before (a flipped bit in Redis, an
#                             edited or truncated value, is refused instead of read as another count)
#
# Names are only ever appended to the two tables (even and odd codes never collide, so either can grow): a reader
# older than a writer refuses a code it does not know instead of misreading it. Any other layout change takes a new
# version byte, and readers refuse versions they do not know.
BUCKET_FORMAT = 1
COUNTER_NAMES = ("n", "lat.n", "lat.s", "cost.n", "cost.s", "tok.n", "tok.s", "conf.n", "conf.s", "sug", "th", "rev",
                 "rs.n", "rs.s", "tk", "csat.n", "csat.s", "nps.n", "nps.p", "nps.d",
                 # sums of squares (of the scaled integers), kept only for rules that compare arms on a mean
                 "lat.q", "cost.q", "tok.q", "conf.q", "rs.q", "csat.q",
                 # user sessions (extension): interactions ending one, their summed length (µs), its squares
                 "ses.n", "ses.s", "ses.q")  # fmt: skip
COUNTER_PREFIXES = ("o:", "flag:", "sug:", "th:", "rev:", "tk:", "")  # "" last: any other name, spelled out
_NAME_CODE = {name: 2 * i for i, name in enumerate(COUNTER_NAMES)}
assert 2 * max(len(COUNTER_NAMES), len(COUNTER_PREFIXES)) < 0x80, "counter codes are written as one varint byte"
_LEGACY_JSON = 0x7B  # "{"
_NAME_BYTES: dict[str, bytes] = {}  # counter name -> its encoding (code, and the suffix of a prefixed name)


def _name_bytes(name: str) -> bytes:
    """The encoding of a counter's name in the binary state (cached: a worker writes the same names every batch;
    at most 65,536 kept, names being outcomes, flags and labels).

    >>> _name_bytes("n").hex(), _name_bytes("o:error").hex()
    ('00', '01056572726f72')
    """
    code = _NAME_CODE.get(name)
    if code is not None:
        b = bytes((code,))  # < 128: one varint byte
    else:
        j = next(j for j, p in enumerate(COUNTER_PREFIXES) if name.startswith(p))
        suffix = name[len(COUNTER_PREFIXES[j]) :].encode()
        out = bytearray((2 * j + 1,))
        put_uint(out, len(suffix))
        b = bytes(out + suffix)
    if len(_NAME_BYTES) < 65_536:
        _NAME_BYTES[name] = b
    return b


class StateFormatError(SketchError):
    """A stored bucket is neither a known binary version nor the JSON state written before it (corrupt, truncated,
    or written by a newer rollguard): refused rather than misread."""


def contributions(ev: Any) -> list[tuple[str, int]]:
    """The counter increments one event adds to a bucket (sketches are handled by :meth:`Bucket.add`)."""
    if ev.type == "interaction":
        out = [("n", 1)]
        if ev.outcome != "ok":
            out.append(("o:" + ev.outcome, 1))
        if ev.latency_ms is not None:
            out.append(("lat.n", 1))
            out.append(("lat.s", round(ev.latency_ms * LATENCY_SCALE)))
        if ev.cost_usd is not None:
            out.append(("cost.n", 1))
            out.append(("cost.s", round(ev.cost_usd * COST_SCALE)))
        if ev.tokens_out is not None:
            out.append(("tok.n", 1))
            out.append(("tok.s", ev.tokens_out))
        if ev.confidence is not None:
            out.append(("conf.n", 1))
            out.append(("conf.s", round(ev.confidence * UNIT_SCALE)))
        for f in ev.flags:
            out.append(("flag:" + f, 1))
        if ev.session_ms is not None:
            out.append(("ses.n", 1))
            out.append(("ses.s", round(ev.session_ms * LATENCY_SCALE)))
        return out
    kind = ev.kind
    if kind == "suggestion":
        return [("sug", 1), ("sug:" + ev.label, 1)]
    if kind == "thumbs":
        return [("th", 1), ("th:" + ev.label, 1)]
    if kind == "review":
        out = [("rev", 1), ("rev:" + ev.label, 1)]
        if ev.score is not None:
            out.append(("rs.n", 1))
            out.append(("rs.s", round(ev.score * SCORE_SCALE)))
        return out
    if kind == "ticket":
        return [("tk", 1), ("tk:" + ev.label, 1)] if ev.label else [("tk", 1)]
    if kind == "eval":  # an evaluation run of ev.n items of suite ev.label (rules.events): its mean score, passes
        suite, n = ev.label, ev.n
        out = []
        if ev.score is not None:
            out += [("ev.n:" + suite, n), ("ev.s:" + suite, round(ev.score * UNIT_SCALE) * n)]
        if ev.passed is not None:
            out += [("ev.t:" + suite, n), ("ev.p:" + suite, ev.passed)]
        return out
    # survey: label csat|nps with a score (validated upstream)
    if ev.label == "csat":
        return [("csat.n", 1), ("csat.s", round(ev.score * SCORE_SCALE))]
    out = [("nps.n", 1)]
    if ev.score >= 9:
        out.append(("nps.p", 1))
    elif ev.score <= 6:
        out.append(("nps.d", 1))
    return out


# (attribute, count counter, sum counter, sum-of-squares counter, scale) of an interaction's numeric fields
_SUMMED = (("latency_ms", "lat.n", "lat.s", "lat.q", LATENCY_SCALE),
           ("cost_usd", "cost.n", "cost.s", "cost.q", COST_SCALE),
           ("tokens_out", "tok.n", "tok.s", "tok.q", 1),
           ("confidence", "conf.n", "conf.s", "conf.q", UNIT_SCALE),
           ("session_ms", "ses.n", "ses.s", "ses.q", LATENCY_SCALE))  # fmt: skip


def group_counters(evs: list, squares: dict[str, int] | None = None) -> dict[str, int]:
    """The counters a run of events adds to a bucket: exactly the sum of :func:`contributions` over ``evs`` (the same
    keys, a key present even when its sum is 0), computed a column at a time. With a ``squares`` dict, the sums of
    squares (:func:`group_squares`) are added into it from the same columns.

    >>> evs = [type("E", (), dict(type="interaction", outcome=o, latency_ms=l, cost_usd=None, tokens_out=None,
    ...                           confidence=None, flags=("pii_leak",) * (o == "error"), session_ms=None))() for o, l in
    ...        (("ok", 12.5), ("error", None))]
    >>> sorted(group_counters(evs).items())
    [('flag:pii_leak', 1), ('lat.n', 1), ('lat.s', 12500), ('n', 2), ('o:error', 1)]
    """
    c: dict[str, int] = {}
    inter = [ev for ev in evs if ev.type == "interaction"]
    if inter:
        c["n"] = len(inter)
        for o in [o for ev in inter if (o := ev.outcome) != "ok"]:
            k = "o:" + o
            c[k] = c.get(k, 0) + 1
        for attr, kn, ks, kq, scale in _SUMMED:
            xs = [x for ev in inter if (x := getattr(ev, attr)) is not None]
            if xs:
                if scale != 1:
                    xs = [round(x * scale) for x in xs]
                c[kn] = len(xs)
                c[ks] = sum(xs)
                if squares is not None:
                    squares[kq] = squares.get(kq, 0) + sum([x * x for x in xs])
        for f in [f for ev in inter if ev.flags for f in ev.flags]:
            k = "flag:" + f
            c[k] = c.get(k, 0) + 1
    if len(inter) < len(evs):
        rest = []
        # suggestions and thumbs, most feedback, add one to their kind's counter and one to its label's: counted per
        # (kind, label) pair
        pairs = Counter([(ev.kind, ev.label) for ev in evs if ev.type != "interaction" and ev.kind in _LABEL_COUNTED])
        for (kind, label), n in pairs.items():
            total = _LABEL_COUNTED[kind]
            c[total] = c.get(total, 0) + n
            k = total + ":" + label
            c[k] = c.get(k, 0) + n
        for ev in evs:
            if ev.type != "interaction" and ev.kind not in _LABEL_COUNTED:
                rest.append(ev)
                for k, d in contributions(ev):
                    c[k] = c.get(k, 0) + d
        if squares is not None:
            for ev in rest:
                for k, d in square_contributions(ev):
                    squares[k] = squares.get(k, 0) + d
    return c


_LABEL_COUNTED = {"suggestion": "sug", "thumbs": "th"}  # feedback kinds whose contributions are their label's count


# (event type, attribute, counter, scale) of the quantities whose mean a comparison of arms can test: their sums of
# squares make the variance (rules.compare). Survey scores count for csat only (nps is a share, not a mean).
_SQUARED = (("interaction", "latency_ms", "lat.q", LATENCY_SCALE), ("interaction", "cost_usd", "cost.q", COST_SCALE),
            ("interaction", "tokens_out", "tok.q", 1), ("interaction", "confidence", "conf.q", UNIT_SCALE),
            ("interaction", "session_ms", "ses.q", LATENCY_SCALE))  # fmt: skip


def square_contributions(ev: Any) -> list[tuple[str, int]]:
    """The sum-of-squares counters one event adds (each the square of the integer its ``.s`` counter adds).

    >>> ev = type("E", (), dict(type="feedback", kind="review", label="ok", score=4.5))()
    >>> square_contributions(ev)
    [('rs.q', 20250000)]
    """
    if ev.type == "interaction":
        out = []
        for _, attr, key, scale in _SQUARED:
            x = getattr(ev, attr)
            if x is not None:
                out.append((key, (round(x * scale) if scale != 1 else x) ** 2))
        return out
    if ev.score is not None and (ev.kind == "review" or (ev.kind == "survey" and ev.label == "csat")):
        return [("rs.q" if ev.kind == "review" else "csat.q", round(ev.score * SCORE_SCALE) ** 2)]
    return []


def share_key(base: str, param: str) -> str:
    """The counter of a share metric (``share_ge:review_score:4`` -> ``sh:review_score:4:ge``)."""
    return f"sh:{param}:{'ge' if base == 'share_ge' else 'lt'}"


def _share_value(ev: Any, field: str) -> float | None:
    if field == "confidence":
        return ev.confidence if ev.type == "interaction" else None
    if ev.type != "feedback" or ev.score is None:
        return None
    if field == "review_score":
        return ev.score if ev.kind == "review" else None
    return ev.score if ev.kind == "survey" and ev.label == "csat" else None  # csat


def share_contributions(ev: Any, shares: tuple) -> list[tuple[str, int]]:
    """The share-metric counters one event adds: ``shares`` holds ``(counter, field, at_or_above, x)`` per metric
    the rules read (``rules.plan.Plan.shares``); the denominators are the fields' existing ``.n`` counters.

    >>> ev = type("E", (), dict(type="feedback", kind="review", label="ok", score=4.0))()
    >>> share_contributions(ev, (("sh:review_score:4:ge", "review_score", True, 4.0),
    ...                          ("sh:review_score:3:lt", "review_score", False, 3.0)))
    [('sh:review_score:4:ge', 1)]
    """
    out = []
    for key, field, ge, x in shares:
        v = _share_value(ev, field)
        if v is not None and (v >= x if ge else v < x):
            out.append((key, 1))
    return out


def group_shares(evs: list, shares: tuple) -> dict[str, int]:
    """The sum of :func:`share_contributions` over ``evs`` (only the keys some event adds), a column per field."""
    c: dict[str, int] = {}
    columns: dict[str, list] = {}
    for key, field, ge, x in shares:
        vs = columns.get(field)
        if vs is None:
            vs = columns[field] = [v for ev in evs if (v := _share_value(ev, field)) is not None]
        n = sum([v >= x for v in vs]) if ge else sum([v < x for v in vs])
        if n:
            c[key] = n
    return c


def group_squares(evs: list) -> dict[str, int]:
    """The sum of :func:`square_contributions` over ``evs`` (only the keys some event adds)."""
    squares: dict[str, int] = {}
    group_counters(evs, squares)
    return squares


class Bucket:
    """Counters of one (series, time bucket), with a latency sketch and a distinct-user sketch when rules need them."""

    __slots__ = ("c", "lat", "users")

    def __init__(self, c: dict[str, int], lat: DDSketch | None, users: HyperLogLog | None) -> None:
        self.c = c
        self.lat = lat
        self.users = users

    @classmethod
    def empty(cls, needs_latency: bool, needs_users: bool) -> Bucket:
        return cls(
            {},
            DDSketch(relative_accuracy=DDSKETCH_ACCURACY) if needs_latency else None,
            HyperLogLog() if needs_users else None,
        )

    def add(self, contrib: list[tuple[str, int]], ev: Any) -> None:
        c = self.c
        for k, d in contrib:
            c[k] = c.get(k, 0) + d
        if ev.type == "interaction":
            if self.lat is not None and ev.latency_ms is not None:
                self.lat.add(ev.latency_ms)
            if self.users is not None and ev.user is not None:
                self.users.add(ev.user)

    def merge(self, other: Bucket) -> None:
        c = self.c
        for k, v in other.c.items():
            c[k] = c.get(k, 0) + v
        if self.lat is not None and other.lat is not None:
            self.lat.merge(other.lat)
        if self.users is not None and other.users is not None:
            self.users.merge(other.users)

    def to_state(self) -> dict:
        out: dict[str, Any] = {"c": dict(sorted(self.c.items()))}
        if self.lat is not None:
            out["lat"] = self.lat.to_state()
        if self.users is not None:
            out["users"] = self.users.to_state()
        return out

    @classmethod
    def from_state(cls, d: dict) -> Bucket:
        return cls(
            dict(d["c"]),
            DDSketch.from_state(d["lat"]) if "lat" in d else None,
            HyperLogLog.from_state(d["users"]) if "users" in d else None,
        )

    def to_bytes(self) -> bytes:
        """The binary state, format version :data:`BUCKET_FORMAT` (layout above); deterministic for equal buckets.

        >>> b = Bucket({"n": 3, "o:error": 1, "lat.s": -2}, None, None)
        >>> b.to_bytes().hex()  # version 1, no sketches, 3 counters: lat.s -2, n 3, "o:" + "error" 1; crc32
        '0100030403000601056572726f7202180c1f0e'
        >>> Bucket.decode(b.to_bytes()) == b == Bucket.decode(b'{"c": {"n": 3, "o:error": 1, "lat.s": -2}}')
        True
        """
        out = bytearray((BUCKET_FORMAT, (self.lat is not None) | (self.users is not None) << 1))
        c = self.c
        put_uint(out, len(c))
        names = _NAME_BYTES
        for name in sorted(c):
            out += names.get(name) or _name_bytes(name)
            v = c[name]  # put_int, inlined: a bucket has ~20 counters and a worker writes its buckets every batch
            v = v << 1 if v >= 0 else ((-v) << 1) - 1
            while v >= 0x80:
                out.append((v & 0x7F) | 0x80)
                v >>= 7
            out.append(v)
        if self.lat is not None:
            self.lat.write_to(out)
        if self.users is not None:
            self.users.write_to(out)
        out += zlib.crc32(out).to_bytes(4, "little")
        return bytes(out)

    @classmethod
    def decode(cls, value: bytes) -> Bucket:
        """A stored bucket: the binary state of any known version, or the JSON state stored before binary states
        existed (migrated on read); anything else raises :class:`StateFormatError` naming what was found."""
        if not value:
            raise StateFormatError("stored bucket is empty; the state is corrupt (restore it from a backup)")
        version = value[0]
        if version == _LEGACY_JSON:
            try:
                return cls.from_state(orjson.loads(value))
            except (orjson.JSONDecodeError, KeyError, TypeError, SketchError) as exc:
                raise StateFormatError(f"stored bucket looks like a JSON state but is not a valid one ({exc})") from None
        if version != BUCKET_FORMAT:
            raise StateFormatError(
                f"stored bucket has binary format version {version}, this rollguard reads version {BUCKET_FORMAT} and"
                " JSON; it was written by a newer rollguard (upgrade this worker) or is corrupt"
            )
        if len(value) < 7 or zlib.crc32(value[:-4]) != int.from_bytes(value[-4:], "little"):
            raise StateFormatError(
                f"stored bucket (binary format version {version}, {len(value)} bytes) fails its checksum: it is"
                " corrupt or truncated; restore the state from a backup"
            )
        try:
            return cls._read_v1(Reader(value[:-4], "stored bucket", 1))
        except StateFormatError:
            raise
        except SketchError as exc:  # the reader's and the sketches' own checks
            raise StateFormatError(str(exc)) from None

    @classmethod
    def _read_v1(cls, r: Reader) -> Bucket:
        flags = r.byte()
        if flags & ~3:
            raise r.fail(f"unknown flags {flags:#x}")
        c: dict[str, int] = {}
        previous = None
        for _ in range(r.uint()):
            code = r.uint()
            i, prefixed = divmod(code, 2)
            table = COUNTER_PREFIXES if prefixed else COUNTER_NAMES
            if i >= len(table):
                raise r.fail(f"unknown counter code {code} (written by a newer rollguard?)")
            name = table[i]
            if prefixed:
                try:
                    name += r.take(r.uint()).decode()
                except UnicodeDecodeError:
                    raise r.fail("counter name is not UTF-8") from None
            if previous is not None and name <= previous:
                raise r.fail("counters must be in strictly increasing name order")
            previous = name
            c[name] = r.int()
        lat = DDSketch.read_from(r) if flags & 1 else None
        users = HyperLogLog.read_from(r) if flags & 2 else None
        r.end()
        return cls(c, lat, users)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bucket) and self.to_state() == other.to_state()
