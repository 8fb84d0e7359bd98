"""DDSketch: a quantile sketch with a relative-accuracy guarantee (Masson, Rim & Lee, VLDB 2019).

A positive value ``x`` falls in bucket ``i = ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``, i.e. bucket
``i`` holds ``(gamma**(i-1), gamma**i]``, and the bucket is reported as ``2 * gamma**i / (gamma + 1)``, which is
within relative error ``a`` of every value in it. Zero gets its own counter.

Counts are Python ints in a ``dict[int, int]`` and the bucket of a value depends on the value alone, so ``add``,
``merge`` and ``subtract`` are exact and order-independent: any partition of the same values, merged in any order,
gives an equal sketch, and ``subtract`` undoes ``merge`` exactly (what a sliding window made of sub-windows needs).

There is deliberately no cap on the number of buckets (the paper's "collapse lowest buckets" variant) because it
would break that exactness. Latencies span a bounded range: at the default ``a = 0.005`` every value in
1 ms .. 60 s lands in one of 1102 buckets (indices 0 .. ``ceil(ln(60000) / ln(gamma))`` = 1101), so a sketch
stays below ~100 kB in memory and ~15 kB as JSON however many values it holds.

>>> s = DDSketch()
>>> for ms in (120, 80, 95, 3000, 0):
...     s.add(ms)
>>> s.count
5
>>> round(s.quantile(0.5))
95
>>> DDSketch.from_state(s.to_state()) == s
True
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from rules.sketches.exceptions import SketchError
from rules.sketches.packing import Reader, pack_uints, put_uint, unzigzag, zigzag

__all__ = ["DDSketch"]

# Beyond this, exp(index * ln(gamma)) overflows a float when the bucket is reported; no latency comes near it.
_MAX_VALUE = 1e300
_STATE_KEYS = frozenset({"a", "z", "b"})


def _check_accuracy(relative_accuracy: Any) -> float:
    if (
        isinstance(relative_accuracy, bool)
        or not isinstance(relative_accuracy, (int, float))
        or not 0.0 < relative_accuracy < 1.0
    ):
        raise SketchError(
            f"relative_accuracy must be a number strictly between 0 and 1 (e.g. 0.005), got {relative_accuracy!r}"
        )
    return float(relative_accuracy)


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SketchError(f"count must be a positive int, got {count!r}")
    return count


class DDSketch:
    """Relative-accuracy quantile sketch over non-negative values (latencies in ms).

    ``relative_accuracy`` is the guaranteed relative error of ``quantile`` against the exact rank-``q*(n-1)``
    (rounded down) element; the public attribute keeps the constructor argument, the buckets are private state.
    """

    __slots__ = ("relative_accuracy", "_gamma", "_log_gamma", "_multiplier", "_zero", "_buckets", "_count")

    def __init__(self, relative_accuracy: float = 0.005) -> None:
        self.relative_accuracy = _check_accuracy(relative_accuracy)
        self._gamma = (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._multiplier = 1.0 / self._log_gamma
        self._zero = 0
        self._buckets: dict[int, int] = {}
        self._count = 0

    # -- updating ------------------------------------------------------------------------------------------------

    def add(self, value: float, count: int = 1) -> None:
        """Record ``value`` (finite, ``0 <= value <= 1e300``) ``count`` times."""
        if count != 1:
            count = _check_count(count)
        if 0.0 < value <= _MAX_VALUE:
            key = math.ceil(math.log(value) * self._multiplier)
            buckets = self._buckets
            buckets[key] = buckets.get(key, 0) + count
        elif value == 0.0:
            self._zero += count
        else:
            raise SketchError(f"value must be a finite number between 0 and 1e300 (a latency), got {value!r}")
        self._count += count

    def add_many(self, values: list[float]) -> None:
        """``add`` each of ``values`` once, in one loop (the same buckets as adding them one by one). Checked
        before anything changes: on an invalid value this sketch is left as it was."""
        if not all(0.0 <= v <= _MAX_VALUE for v in values):  # also refuses NaN
            bad = next(v for v in values if not 0.0 <= v <= _MAX_VALUE)
            raise SketchError(f"value must be a finite number between 0 and 1e300 (a latency), got {bad!r}")
        buckets = self._buckets
        mult = self._multiplier
        log, ceil = math.log, math.ceil
        zero = 0
        for v in values:
            if v > 0.0:
                key = ceil(log(v) * mult)
                buckets[key] = buckets.get(key, 0) + 1
            else:
                zero += 1
        self._zero += zero
        self._count += len(values)

    def merge(self, other: DDSketch) -> None:
        """Add every value recorded in ``other`` to this sketch (in place; ``other`` is unchanged)."""
        self._check_compatible(other, "merge")
        buckets = self._buckets
        for key, n in other._buckets.items():
            buckets[key] = buckets.get(key, 0) + n
        self._zero += other._zero
        self._count += other._count

    def subtract(self, other: DDSketch) -> None:
        """Remove the values of ``other``, which must have been merged (or added) into this sketch before.

        The exact inverse of :meth:`merge`; buckets that reach zero are dropped so the state equals the one that
        never saw ``other``. Checked before anything changes: on error this sketch is left as it was.
        """
        self._check_compatible(other, "subtract")
        buckets = self._buckets
        if other._zero > self._zero or any(n > buckets.get(key, 0) for key, n in other._buckets.items()):
            raise SketchError(
                "cannot subtract a sketch holding values this sketch never had; subtract only what was merged in"
            )
        for key, n in other._buckets.items():
            left = buckets[key] - n
            if left:
                buckets[key] = left
            else:
                del buckets[key]
        self._zero -= other._zero
        self._count -= other._count

    @classmethod
    def merged(cls, *sketches: DDSketch) -> DDSketch:
        """A new sketch holding the values of all ``sketches`` (an empty default sketch when none are given)."""
        if not sketches:
            return cls()
        out = sketches[0].copy()
        for sketch in sketches[1:]:
            out.merge(sketch)
        return out

    def copy(self) -> DDSketch:
        """An independent sketch equal to this one."""
        out = DDSketch(self.relative_accuracy)
        out._zero = self._zero
        out._buckets = dict(self._buckets)
        out._count = self._count
        return out

    # -- reading -------------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of values recorded."""
        return self._count

    @property
    def bucket_count(self) -> int:
        """Number of non-empty buckets (the zero counter excluded): the sketch's size."""
        return len(self._buckets)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (``0 <= q <= 1``), ``None`` when the sketch is empty.

        Estimates the element of 0-based rank ``floor(q * (count - 1))`` in sorted order (numpy's ``"lower"``
        method) within relative error ``relative_accuracy``.
        """
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise SketchError(f"q must be a number between 0 and 1 (e.g. 0.95), got {q!r}")
        if not self._count:
            return None
        rank = q * (self._count - 1)
        seen = self._zero
        if seen > rank:
            return 0.0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if seen > rank:
                return self._bucket_value(key)
        # Unreachable while counts are consistent (seen ends at count > rank); keep the highest bucket as a guard.
        return self._bucket_value(max(self._buckets))

    def count_beyond(self, value: float, above: bool) -> int:
        """How many recorded values lie certainly above (``above``) or below ``value``: those in buckets wholly on
        that side of the bucket ``value`` falls in (values sharing its bucket, within the relative accuracy of it,
        are counted on neither side).

        >>> s = DDSketch(); s.add_many([100.0, 200.0, 300.0, 0.0])
        >>> s.count_beyond(200.0, above=True), s.count_beyond(200.0, above=False), s.count_beyond(0.0, above=True)
        (1, 2, 3)
        """
        if value <= 0.0:
            return self._count - self._zero if above else 0
        key = math.ceil(math.log(value) * self._multiplier)
        if above:
            return sum(n for k, n in self._buckets.items() if k > key)
        return self._zero + sum(n for k, n in self._buckets.items() if k < key)

    def _bucket_value(self, key: int) -> float:
        return 2.0 * math.exp(key * self._log_gamma) / (self._gamma + 1.0)

    # -- state ---------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: ``{"a": accuracy, "z": zero count, "b": [[bucket, count], ...]}`` sorted by bucket."""
        return {
            "a": self.relative_accuracy,
            "z": self._zero,
            "b": [[key, self._buckets[key]] for key in sorted(self._buckets)],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DDSketch:
        """Rebuild a sketch from :meth:`to_state` output (e.g. after ``json.loads``); strict about its shape."""
        if not isinstance(state, Mapping) or set(state) != _STATE_KEYS:
            raise SketchError(f"DDSketch state must be a mapping with keys a, z, b; got {state!r:.200}")
        try:
            sketch = cls(state["a"])
        except SketchError as exc:
            raise SketchError(f"DDSketch state: a: {exc}") from None
        zero = state["z"]
        if isinstance(zero, bool) or not isinstance(zero, int) or zero < 0:
            raise SketchError(f"DDSketch state: z: must be an int >= 0, got {zero!r}")
        pairs = state["b"]
        if not isinstance(pairs, (list, tuple)):
            raise SketchError(f"DDSketch state: b: must be a list of [bucket, count] pairs, got {pairs!r:.200}")
        buckets: dict[int, int] = {}
        previous = None
        for pos, pair in enumerate(pairs):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)
                or pair[1] < 1
                or (previous is not None and pair[0] <= previous)
            ):
                raise SketchError(
                    f"DDSketch state: b[{pos}]: must be [int bucket, int count >= 1] with buckets strictly"
                    f" increasing, got {pair!r:.200}"
                )
            previous = pair[0]
            buckets[pair[0]] = pair[1]
        sketch._zero = zero
        sketch._buckets = buckets
        sketch._count = zero + sum(buckets.values())
        return sketch

    def write_to(self, out: bytearray) -> None:
        """Append the binary state: the accuracy (float64, little-endian), the zero count, the number of bins, then
        the bins' varints — the first index zigzagged, each next one as its distance from the one before (>= 1),
        then the counts. ~2-3 bytes per bin instead of ~12 in JSON.

        >>> s = DDSketch(); s.add(0); s.add(1.0, 3); s.add(2.0)
        >>> out = bytearray(); s.write_to(out); bytes(out[8:]).hex()  # zero 1, 2 bins: at 0 and 0 + 70, counts 3, 1
        '010200460301'
        >>> DDSketch.read_from(Reader(bytes(out), "latency")) == s
        True
        """
        out += struct.pack("<d", self.relative_accuracy)
        put_uint(out, self._zero)
        keys = sorted(self._buckets)
        put_uint(out, len(keys))
        if not keys:
            return
        counts = [self._buckets[k] for k in keys]
        if max(counts) >= 1 << 64:
            raise SketchError("a DDSketch bin count reached 2**64, beyond what its binary state holds")
        steps = [zigzag(keys[0])] + [b - a for a, b in zip(keys, keys[1:])]
        out += pack_uints(steps + counts)

    @classmethod
    def read_from(cls, r: Reader) -> DDSketch:
        """Inverse of :meth:`write_to`, reading from ``r``; refuses a malformed state with ``SketchError``."""
        (accuracy,) = struct.unpack("<d", r.take(8))
        try:
            sketch = cls(accuracy)
        except SketchError as exc:
            raise r.fail(f"DDSketch accuracy: {exc}") from None
        zero = r.uint()
        n = r.uint()
        if n > len(r.buf) - r.pos:  # every bin takes at least two bytes: refuse a length no value can back
            raise r.fail(f"DDSketch claims {n} bins")
        values = r.uints(2 * n).tolist()
        steps, counts = values[:n], values[n:]
        if n and (min(counts) < 1 or min(steps[1:], default=1) < 1):
            raise r.fail("DDSketch bins must have counts >= 1 and strictly increasing indices")
        keys = []
        key = 0
        for i, step in enumerate(steps):
            key = unzigzag(step) if i == 0 else key + step
            keys.append(key)
        sketch._zero = zero
        sketch._buckets = dict(zip(keys, counts))
        sketch._count = zero + sum(counts)
        return sketch

    def _check_compatible(self, other: Any, action: str) -> None:
        if not isinstance(other, DDSketch):
            raise SketchError(f"can only {action} a DDSketch, got {type(other).__name__}")
        if other.relative_accuracy != self.relative_accuracy:
            raise SketchError(
                f"cannot {action} sketches with different relative_accuracy"
                f" ({self.relative_accuracy} vs {other.relative_accuracy}); build both with the same value"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DDSketch):
            return NotImplemented
        return (
            self.relative_accuracy == other.relative_accuracy
            and self._zero == other._zero
            and self._buckets == other._buckets
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        accuracy, count, buckets = self.relative_accuracy, self._count, len(self._buckets)
        return f"DDSketch(relative_accuracy={accuracy}, count={count}, buckets={buckets})"
