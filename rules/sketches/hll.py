"""HyperLogLog: distinct-count sketch (Flajolet et al. 2007) with an exact sparse mode for small cardinalities.

Inputs are keys (the hex HMAC of a user id) reduced to a 64-bit hash by :func:`key_hash`. Up to
:data:`SPARSE_LIMIT` distinct hashes the sketch keeps the hashes themselves and counts exactly; past that it
switches, for good, to ``2**precision`` one-byte registers (``precision=14``: 16 kB, 0.81% standard error).

The dense estimate is Ertl's improved estimator ("New cardinality estimation algorithms for HyperLogLog sketches",
2017; also Redis's): the raw HLL harmonic mean with the small- and large-range corrections folded in analytically
through the register histogram. It replaces "raw estimate, or linear counting below 2.5 m" because that switch
carries the raw estimator's known bias right where it hands over: measured over 40 seeds at p=14, 40k distinct
gave a mean error of +2.0% (worst +3.8%) with the classic rule and 0.0% (worst 1.4%) with this one, which elsewhere
matches linear counting at small and the raw estimate at large cardinalities. No empirical bias tables are needed.
The error is statistical: a standard error of 1.04/sqrt(2**precision), so at p=14 an estimate lands within 2% with
about 98.6% probability (precision 16 makes that 2.5 standard errors 5, at 64 kB per dense sketch).

Which mode a sketch is in, and its registers, depend only on the *set* of hashes it has seen: the sparse set stays
sparse exactly while the union has at most ``SPARSE_LIMIT`` members, and a register is the maximum over that set.
Hence ``merge`` is commutative, associative and idempotent, and any partition of the same keys, added in any order
and merged in any order, yields a byte-identical ``to_state()``.

>>> u = HyperLogLog()
>>> for user in ("3f2a9c0d11e4b7a8", "77aa00ff12345678", "3f2a9c0d11e4b7a8"):
...     u.add(user)
>>> u.cardinality()
2
>>> HyperLogLog.from_state(u.to_state()) == u
True
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sized
from hashlib import blake2b
from typing import Any

import numpy as np

from rules.sketches.exceptions import SketchError
from rules.sketches.packing import Reader, pack_uints, put_uint

__all__ = ["HyperLogLog", "SPARSE_LIMIT", "key_hash"]

SPARSE_LIMIT = 1024
_FOLD_VECTORISED = 256  # hashes folded into registers with numpy from this many on (20,000: 1.45 -> 0.45 ms)
"""Most distinct hashes kept exactly; one more switches the sketch to registers. Fixed, not a parameter, because
two sketches with different limits would disagree on the mode of the same set and so not merge byte-identically."""

_HASH_BITS = 64
_MAX_HASH = (1 << _HASH_BITS) - 1
_MIN_PRECISION, _MAX_PRECISION = 4, 18


def key_hash(key: str) -> int:
    """The 64-bit hash of a key: BLAKE2b with an 8-byte digest over its UTF-8 bytes, read big-endian.

    Hashed even when the key is already a hex HMAC: reading its first 16 hex digits instead measured no faster
    (a strict hex check costs what BLAKE2b does), and would collapse hex ids that share leading digits.

    >>> key_hash("")
    16476032584258269876
    >>> key_hash("alice") == key_hash("alice") != key_hash("bob")
    True
    """
    if not isinstance(key, str):
        raise SketchError(f"key must be a str (the keyed user id), got {type(key).__name__}")
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


# Ertl's alpha_infinity = 1 / (2 ln 2): the raw estimator's constant in the limit of many registers.
_ALPHA_INF = 0.5 / math.log(2.0)


def _sigma(x: float) -> float:
    """Ertl's sigma(x) = x + sum_k x**(2**k) * 2**(k-1): the contribution of empty registers (``x`` = their share)."""
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        previous = z
        z += x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    """Ertl's tau(x): the contribution of saturated registers (``x`` = share of registers not saturated)."""
    if x == 0.0 or x == 1.0:
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == previous:
            return z / 3.0


class HyperLogLog:
    """Distinct counter over 64-bit hashes: exact up to ``SPARSE_LIMIT``, then ``2**precision`` registers.

    ``precision`` (4..18) is the public constructor argument; the hash set or registers are private state.
    """

    __slots__ = ("precision", "_sparse", "_registers", "_width")

    def __init__(self, precision: int = 14) -> None:
        if isinstance(precision, bool) or not isinstance(precision, int):
            raise SketchError(f"precision must be an int between 4 and 18 (14 is 0.81% error), got {precision!r}")
        if not _MIN_PRECISION <= precision <= _MAX_PRECISION:
            raise SketchError(f"precision must be between 4 and 18 (14 is 0.81% error), got {precision}")
        self.precision = precision
        # Bits of the hash left after the register index; a register holds 1 + their leading zeros, at most width+1.
        self._width = _HASH_BITS - precision
        self._sparse: set[int] | None = set()
        self._registers: bytearray | None = None

    # -- updating ------------------------------------------------------------------------------------------------

    def add(self, key: str) -> None:
        """Count ``key``, a keyed user id (see :func:`key_hash`)."""
        self.add_hash(key_hash(key))

    def add_hash(self, h: int) -> None:
        """Count the 64-bit hash ``h`` (``0 <= h < 2**64``)."""
        if type(h) is not int or not 0 <= h <= _MAX_HASH:
            raise SketchError(f"hash must be an int in [0, 2**64), got {h!r}")
        sparse = self._sparse
        if sparse is not None:
            sparse.add(h)
            if len(sparse) > SPARSE_LIMIT:
                self._densify()
            return
        registers = self._registers
        width = self._width
        index = h >> width
        rank = width + 1 - (h & ((1 << width) - 1)).bit_length()
        if rank > registers[index]:
            registers[index] = rank

    def merge(self, other: HyperLogLog) -> None:
        """Count every key ``other`` counted (in place; ``other`` is unchanged)."""
        if not isinstance(other, HyperLogLog):
            raise SketchError(f"can only merge a HyperLogLog, got {type(other).__name__}")
        if other.precision != self.precision:
            raise SketchError(
                f"cannot merge HyperLogLogs of precision {self.precision} and {other.precision};"
                " build both with the same precision"
            )
        if other._sparse is not None:
            if self._sparse is not None:
                self._sparse |= other._sparse
                if len(self._sparse) > SPARSE_LIMIT:
                    self._densify()
            else:
                self._fold(other._sparse)
            return
        if self._sparse is not None:
            hashes = self._sparse
            self._sparse = None
            self._registers = bytearray(other._registers)
            self._fold(hashes)
            return
        mine = np.frombuffer(self._registers, dtype=np.uint8)
        np.maximum(mine, np.frombuffer(other._registers, dtype=np.uint8), out=mine)

    @classmethod
    def merged(cls, *hlls: HyperLogLog) -> HyperLogLog:
        """A new sketch counting the union of all ``hlls`` (an empty default sketch when none are given)."""
        if not hlls:
            return cls()
        out = hlls[0].copy()
        for hll in hlls[1:]:
            out.merge(hll)
        return out

    @classmethod
    def from_hashes(cls, hashes: Iterable[int], precision: int = 14) -> HyperLogLog:
        """The sketch that counted exactly the set ``hashes`` (each ``0 <= h < 2**64``, not checked): sparse while
        it has at most :data:`SPARSE_LIMIT` members, else dense registers folded from them. Since a sketch's mode
        and registers depend only on the set of hashes it saw, this equals (``to_state``) any merge of sketches
        whose exact hashes make up that set — what a sliding window keeping a multiset of hashes needs.

        >>> a, b = HyperLogLog(), HyperLogLog()
        >>> for i in range(800):
        ...     a.add_hash(i * 7919); b.add_hash(i * 104729)
        >>> HyperLogLog.from_hashes(a.exact_hashes() | b.exact_hashes()) == HyperLogLog.merged(a, b)
        True
        """
        out = cls(precision)
        members = hashes if isinstance(hashes, (set, frozenset)) else set(hashes)
        if len(members) <= SPARSE_LIMIT:
            out._sparse = set(members)
        else:
            out._sparse = None
            out._registers = bytearray(1 << precision)
            out._fold(members)
        return out

    def exact_hashes(self) -> frozenset[int] | None:
        """The hashes counted while the sketch is exact (``is_exact``), else None (registers cannot tell them)."""
        return frozenset(self._sparse) if self._sparse is not None else None

    def copy(self) -> HyperLogLog:
        """An independent sketch equal to this one."""
        out = HyperLogLog(self.precision)
        if self._sparse is not None:
            out._sparse = set(self._sparse)
        else:
            out._sparse = None
            out._registers = bytearray(self._registers)
        return out

    def _densify(self) -> None:
        hashes = self._sparse
        self._sparse = None
        self._registers = bytearray(1 << self.precision)
        self._fold(hashes)

    def _fold(self, hashes: Iterable[int]) -> None:
        """Raise each hash's register to its rank (the leading zeros of its low bits, plus one)."""
        registers = self._registers
        width = self._width
        if width <= 53 and isinstance(hashes, Sized) and len(hashes) >= _FOLD_VECTORISED:
            h = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
            # bit_length of the low bits: frexp's exponent, exact while they fit a float64's 53-bit mantissa
            # (precision >= 11; the default 14 leaves 50)
            _, bits = np.frexp((h & np.uint64((1 << width) - 1)).astype(np.float64))
            ranks = (width + 1 - bits).astype(np.uint8)
            np.maximum.at(np.frombuffer(registers, dtype=np.uint8), (h >> np.uint64(width)).astype(np.intp), ranks)
            return
        low = (1 << width) - 1
        for h in hashes:
            index = h >> width
            rank = width + 1 - (h & low).bit_length()
            if rank > registers[index]:
                registers[index] = rank

    # -- reading -------------------------------------------------------------------------------------------------

    @property
    def is_exact(self) -> bool:
        """True while the sketch still holds the hashes themselves (at most ``SPARSE_LIMIT``) and counts exactly."""
        return self._sparse is not None

    def cardinality(self) -> int:
        """Number of distinct keys: exact in sparse mode, else estimated with standard error 1.04/sqrt(2**precision)."""
        if self._sparse is not None:
            return len(self._sparse)
        m = 1 << self.precision
        top = self._width + 1
        counts = np.bincount(np.frombuffer(self._registers, dtype=np.uint8), minlength=top + 1).tolist()
        # A fixed-order loop over a few dozen floats: the estimate is bit-for-bit reproducible.
        z = m * _tau(1.0 - counts[top] / m)
        for rank in range(top - 1, 0, -1):
            z = 0.5 * (z + counts[rank])
        z += m * _sigma(counts[0] / m)
        return int(round(_ALPHA_INF * m * m / z))

    # -- state ---------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: ``{"p": precision, "s": [sorted hashes]}``, or ``{"p": precision, "d": "<base64>"}``
        holding the registers once dense."""
        if self._sparse is not None:
            return {"p": self.precision, "s": sorted(self._sparse)}
        return {"p": self.precision, "d": base64.b64encode(self._registers).decode("ascii")}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HyperLogLog:
        """Rebuild a sketch from :meth:`to_state` output (e.g. after ``json.loads``); strict about its shape."""
        if not isinstance(state, Mapping) or set(state) not in ({"p", "s"}, {"p", "d"}):
            raise SketchError(f"HyperLogLog state must be a mapping with keys p and s or d; got {state!r:.200}")
        try:
            hll = cls(state["p"])
        except SketchError as exc:
            raise SketchError(f"HyperLogLog state: p: {exc}") from None
        if "s" in state:
            hashes = state["s"]
            if not isinstance(hashes, (list, tuple)) or len(hashes) > SPARSE_LIMIT:
                raise SketchError(f"HyperLogLog state: s: must be a list of at most {SPARSE_LIMIT} hashes")
            previous = -1
            for pos, h in enumerate(hashes):
                if type(h) is not int or not previous < h <= _MAX_HASH:
                    raise SketchError(
                        f"HyperLogLog state: s[{pos}]: must be an int in [0, 2**64) greater than the one before,"
                        f" got {h!r:.100}"
                    )
                previous = h
            hll._sparse = set(hashes)
            return hll
        encoded = state["d"]
        try:
            registers = bytearray(base64.b64decode(encoded, validate=True))
        except (TypeError, ValueError, binascii.Error):
            raise SketchError("HyperLogLog state: d: must be a base64 string of registers") from None
        if len(registers) != 1 << hll.precision or max(registers) > hll._width + 1:
            raise SketchError(
                f"HyperLogLog state: d: must decode to {1 << hll.precision} registers each <= {hll._width + 1}"
            )
        hll._sparse = None
        hll._registers = registers
        return hll

    # binary state: precision, then one mode byte
    _EXACT, _PAIRS, _DENSE = 0, 1, 2

    def write_to(self, out: bytearray) -> None:
        """Append the binary state: one byte of precision, one of mode, then

        - exact (mode 0): the number of hashes, then the sorted hashes as little-endian uint64 (8 bytes each: 64
          random bits do not compress);
        - dense as pairs (mode 1): the number ``n`` of non-zero registers, then one byte per non-zero register,
          in index order, ``gap << 3 | rank``: ``gap`` (1..31) its index minus the previous one's (the first's
          index + 1), ``rank`` (1..7) its value, either 0 when it does not fit; then the gaps that did not fit, as
          varints, and the ranks that did not fit, one byte each. Once dense, most gaps are below 32 and ranks below
          8 (a rank is 1 + leading zeros: P(rank >= 8) = 1/128), so about one byte per non-zero register;
        - dense (mode 2): every register, one byte each (``2**precision`` bytes).

        A dense sketch is written in whichever of modes 1 and 2 is shorter, a choice that depends on the registers
        alone.

        >>> u = HyperLogLog(4); u.add_hash(0); out = bytearray(); u.write_to(out); bytes(out).hex()  # p 4, exact, 1
        '0400010000000000000000'
        >>> HyperLogLog.read_from(Reader(bytes(out), "users")) == u
        True
        >>> u._densify(); out = bytearray(); u.write_to(out); bytes(out).hex()  # p 4, pairs, 1: gap 1, rank 61 (0x3d)
        '040101083d'
        """
        out.append(self.precision)
        if self._sparse is not None:
            out.append(self._EXACT)
            put_uint(out, len(self._sparse))
            hashes = np.fromiter(self._sparse, dtype=np.uint64, count=len(self._sparse))
            out += np.sort(hashes).astype("<u8", copy=False).tobytes()  # 3x sorted() on a list of ints
            return
        registers = np.frombuffer(self._registers, dtype=np.uint8)
        index = np.flatnonzero(registers)
        gaps = np.diff(index, prepend=-1)
        ranks = registers[index]
        big_gaps = gaps[gaps > 31].astype(np.uint64)
        big_ranks = ranks[ranks > 7]
        packed = pack_uints(big_gaps)
        if 3 + len(index) + len(packed) + len(big_ranks) < len(registers):
            codes = (np.where(gaps > 31, 0, gaps) << 3 | np.where(ranks > 7, 0, ranks)).astype(np.uint8)
            out.append(self._PAIRS)
            put_uint(out, len(index))
            out += codes.tobytes()
            out += packed
            out += big_ranks.tobytes()
        else:
            out.append(self._DENSE)
            out += self._registers

    @classmethod
    def read_from(cls, r: Reader) -> HyperLogLog:
        """Inverse of :meth:`write_to`, reading from ``r``; refuses a malformed state with ``SketchError``."""
        try:
            hll = cls(r.byte())
        except SketchError as exc:
            raise r.fail(f"HyperLogLog precision: {exc}") from None
        mode = r.byte()
        m = 1 << hll.precision
        if mode == cls._EXACT:
            n = r.uint()
            if n > SPARSE_LIMIT:
                raise r.fail(f"HyperLogLog holds {n} exact hashes, more than {SPARSE_LIMIT}")
            hashes = np.frombuffer(r.take(8 * n), dtype="<u8")
            if n > 1 and not (np.diff(hashes) > 0).all():
                raise r.fail("HyperLogLog hashes must be strictly increasing")
            hll._sparse = set(hashes.tolist())
            return hll
        if mode == cls._PAIRS:
            n = r.uint()
            if n > m:
                raise r.fail(f"HyperLogLog claims {n} non-zero registers of {m}")
            codes = np.frombuffer(r.take(n), dtype=np.uint8)
            gaps = (codes >> 3).astype(np.int64)
            ranks = codes & 7
            gap_escapes = gaps == 0
            rank_escapes = ranks == 0
            big_gaps = r.uints(int(gap_escapes.sum()))
            big_ranks = np.frombuffer(r.take(int(rank_escapes.sum())), dtype=np.uint8)
            if (big_gaps < 32).any() or (big_gaps >= m).any() or (big_ranks < 8).any():
                raise r.fail("HyperLogLog register pairs: an escaped gap below 32 or beyond the registers, or an"
                             " escaped rank below 8")  # fmt: skip
            gaps[gap_escapes] = big_gaps.astype(np.int64)
            ranks = ranks.copy()
            ranks[rank_escapes] = big_ranks
            index = np.cumsum(gaps) - 1
            if n and index[-1] >= m:
                raise r.fail("HyperLogLog register pairs run past the last register")
            registers = np.zeros(m, dtype=np.uint8)
            registers[index] = ranks
        elif mode == cls._DENSE:
            registers = np.frombuffer(r.take(m), dtype=np.uint8)
        else:
            raise r.fail(f"unknown HyperLogLog mode {mode}")
        if registers.max() > hll._width + 1:
            raise r.fail(f"HyperLogLog registers must be <= {hll._width + 1}")
        hll._sparse = None
        hll._registers = bytearray(registers.tobytes())
        return hll

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HyperLogLog):
            return NotImplemented
        return (
            self.precision == other.precision
            and self._sparse == other._sparse
            and self._registers == other._registers
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        mode = "exact" if self._sparse is not None else "dense"
        return f"HyperLogLog(precision={self.precision}, mode={mode}, cardinality~{self.cardinality()})"
