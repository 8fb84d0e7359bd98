"""The one contract every drift detector meets: a river detector behind a small, strict wrapper.

The wrapper adds what the engine needs and river leaves out: ``update`` returns whether *this* value flagged
drift, inputs are checked before they can poison the detector (NaN, text, 0.7 fed to a 0/1 detector), updates
are counted, and the state can be stored and restored exactly (``to_state`` / ``from_state``).

Build detectors with :func:`detectors.registry.make_detector`, which validates the parameters.

>>> from river.drift.binary import DDM
>>> detector = DriftDetector("ddm", {}, DDM())
>>> [detector.update(x) for x in (0, 1, 0)]
[False, False, False]
>>> detector.n_updates
3
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from river.base import BinaryDriftDetector

from detectors import batch, state
from detectors.exceptions import DetectorError

__all__ = ["DriftDetector"]

# Read-outs river offers on some detectors; describe() reports those a detector has.
_READOUTS = {
    "width": int,  # ADWIN: window length
    "n_detections": int,  # ADWIN: detections since the start
    "p_value": float,  # KSWIN: last Kolmogorov-Smirnov p-value
    "warning_detected": bool,  # DDM, EDDM, HDDM-A, HDDM-W
}


class DriftDetector:
    """A river drift detector with a checked input, an update counter and signed state.

    ``name`` and ``params`` are kept as given (``params`` without the injected seed); the river detector is
    private. Binary detectors (river's ``BinaryDriftDetector``) take only 0 and 1 (``True``/``False``,
    ``0.0``/``1.0`` included); the others take any finite real number.
    """

    __slots__ = ("name", "params", "_detector", "_binary", "_n_updates", "_run")

    def __init__(
        self,
        name: str,
        params: Mapping[str, Any],
        detector: Any,
        *,
        n_updates: int = 0,
        run: tuple[int, float] = (0, 0.0),
    ) -> None:
        self.name = name
        self.params = dict(params)
        self._detector = detector
        self._binary = isinstance(detector, BinaryDriftDetector)
        self._n_updates = n_updates
        # (count, mean) of the values since river last (re)started the detector: the estimation of detectors
        # that expose none. river resets on the update after a drift, and so does this.
        self._run = run

    @property
    def binary(self) -> bool:
        """Whether this detector accepts only 0 and 1."""
        return self._binary

    @property
    def drift_detected(self) -> bool:
        """Whether the last update flagged drift (river resets the detector on the next update)."""
        return self._detector.drift_detected

    @property
    def n_updates(self) -> int:
        """Values accepted so far, across state round trips; rejected values are not counted."""
        return self._n_updates

    @property
    def estimation(self) -> float | None:
        """The level the detector currently sees; None before the first value.

        ADWIN's own estimate (the mean of its adaptive window) where river has one, otherwise the mean of the
        values since the detector last started afresh (at creation or on the update after a drift).
        """
        if hasattr(self._detector, "estimation"):
            return float(self._detector.estimation) if self._n_updates else None
        count, mean = self._run
        return mean if count else None

    def update(self, x: float) -> bool:
        """Feed one value; return True when this value flagged drift.

        Raises ``DetectorError`` (and leaves the detector untouched) for a value it cannot take.
        """
        value = self._accept(x)
        count, mean = (0, 0.0) if self._detector.drift_detected else self._run
        self._detector.update(value)
        self._n_updates += 1
        count += 1
        self._run = (count, mean + (value - mean) / count)
        return self._detector.drift_detected

    def update_many(self, values: Sequence[Any], slots: Sequence[int]) -> dict[int, list]:
        """Feed a batch of values in arrival order; ``slots[i]`` is the slot (a small int) of ``values[i]``.

        Returns ``{slot: [flags, estimation, n_updates]}`` for every slot present: the number of its values
        that flagged drift, and ``estimation`` / ``n_updates`` as read right after its last value. Results and
        the detector's state are exactly those of calling :meth:`update` on each value in order (the detector
        runs one loop over the batch, see :mod:`detectors.batch`). Slots may interleave in any order.

        The whole batch is checked first: a value :meth:`update` would reject raises ``DetectorError`` and
        leaves the detector untouched, with no value of the batch applied.

        >>> from river.drift import PageHinkley
        >>> detector = DriftDetector("page_hinkley", {}, PageHinkley())
        >>> detector.update_many([1.0, 5.0, 3.0], [7, 2, 7])
        {2: [0, 3.0, 2], 7: [0, 3.0, 3]}
        """
        n = len(values)
        if len(slots) != n:
            raise DetectorError(
                f"detector {self.name!r} got {n} values but {len(slots)} slots: give one slot per value"
            )
        if not n:
            return {}
        accepted = self._accept_many(values)
        last = dict(zip(slots, range(n)))  # slot -> index of its last value
        stops = sorted(last.values())
        flagged, estimations, run = batch.kernel_for(self._detector)(self._detector, accepted, stops, self._run)
        self._run = run
        before = self._n_updates
        self._n_updates = before + n
        out = {slots[stop]: [0, estimation, before + stop + 1] for stop, estimation in zip(stops, estimations)}
        for i in flagged:
            out[slots[i]][0] += 1
        return out

    def _accept_many(self, values: Sequence[Any]) -> list:
        """``[self._accept(x) for x in values]``, with fast paths for plain Python numbers."""
        kinds = set(map(type, values))
        if kinds <= {float, int, bool}:
            if self._binary:
                if set(values) <= {0, 1}:  # 0, 0.0, False / 1, 1.0, True hash alike
                    # river's arithmetic on 1.0 or True equals that on 1; 0/1 ints keep update's exact inputs.
                    return values if kinds == {int} and type(values) is list else [1 if x == 1 else 0 for x in values]
            else:
                try:
                    accepted = values if kinds == {float} and type(values) is list else list(map(float, values))
                except OverflowError:  # an int beyond float range: let _accept name it
                    pass
                else:
                    # A sum is finite only if every term is (inf and NaN propagate); a finite sum that overflows
                    # merely sends us down the exact path.
                    if math.isfinite(sum(accepted)):
                        return accepted
        return [self._accept(x) for x in values]

    def _accept(self, x: Any) -> float | int:
        # bool is an int subclass; exact-type checks first keep the common case fast.
        if type(x) not in (float, int, bool) and not isinstance(x, numbers.Real):
            raise DetectorError(
                f"detector {self.name!r} takes numbers, got {type(x).__name__} {x!r}: convert the signal to a "
                "number before feeding it"
            )
        if self._binary:
            # river's binary detectors compare x == 1 and average it; an int keeps their arithmetic unchanged.
            if x == 1:
                return 1
            if x == 0:
                return 0
            raise DetectorError(
                f"detector {self.name!r} takes only 0 or 1, got {x!r}: feed it a 0/1 signal (acceptance, error, "
                "thumbs_down) or use a detector for continuous values (adwin, page_hinkley, kswin)"
            )
        try:
            value = float(x)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise DetectorError(
                f"detector {self.name!r} got {value!r}: a non-finite value would corrupt its statistics for good; "
                "drop such values before the detector"
            )
        return value

    def describe(self) -> dict[str, Any]:
        """A JSON-able snapshot for debugging and status output (never used to restore state).

        >>> from river.drift import ADWIN
        >>> detector = DriftDetector("adwin", {"delta": 0.01}, ADWIN(delta=0.01))
        >>> _ = detector.update(2.0)
        >>> detector.describe()["n_updates"], detector.describe()["estimation"]
        (1, 2.0)
        """
        out: dict[str, Any] = {
            "name": self.name,
            "params": dict(self.params),
            "n_updates": self._n_updates,
            "drift_detected": bool(self._detector.drift_detected),
            "estimation": self.estimation,
        }
        for attribute, kind in _READOUTS.items():
            if hasattr(self._detector, attribute):
                out[attribute] = kind(getattr(self._detector, attribute))
        return out

    def to_state(self, key: bytes) -> bytes:
        """The detector's full state, pickled and signed with ``key`` (see :mod:`detectors.state`).

        >>> from river.drift import PageHinkley
        >>> key = b"0123456789abcdef"
        >>> detector = DriftDetector("page_hinkley", {}, PageHinkley())
        >>> _ = detector.update(1.5)
        >>> DriftDetector.from_state(detector.to_state(key), key).n_updates
        1
        """
        return state.encode_state(self.name, self.params, self._n_updates, self._run, self._detector, key)

    @classmethod
    def from_state(cls, data: bytes, key: bytes) -> DriftDetector:
        """Restore a detector from :meth:`to_state` output; it continues exactly where the original was.

        Raises ``DetectorStateError`` when the state cannot be trusted or read: drop it and start cold.
        """
        stored = state.decode_state(data, key)
        return cls(stored.name, stored.params, stored.detector, n_updates=stored.n_updates, run=stored.run)

    def __repr__(self) -> str:
        return f"DriftDetector(name={self.name!r}, params={self.params!r}, n_updates={self._n_updates})"
