"""The catalogue of drift detectors a rule may name, their parameters, and the one way to build them.

Rule files say ``drift: {detector: adwin, params: {delta: 0.002}}``; ``params`` go to the river constructor
unchanged. Every parameter has a checked type and range here because river checks few of them and ADWIN's Rust
core *panics* on some (``clock: 0``, ``max_buckets: 0`` or ``1``), which must surface as a located validation error,
not a crash at the first event.

Facts a rule author needs (also in the error messages):

- ``page_hinkley``: ``threshold`` is in the signal's own units (ms for ``latency_ms``); two-sided by
  default, ``mode: up`` or ``down`` for one direction.
- ``ddm``, ``eddm``, ``hddm_a``, ``hddm_w`` take only 0/1 and watch for *increases* of the rate of 1s
  (``hddm_a`` / ``hddm_w`` also decreases with ``two_sided_test: true``).
- ``kswin`` samples at random: it is seeded by rollguard (a ``seed`` in params wins) and costs about
  200 µs per update, far more than the others.

>>> validate_params("page_hinkley", {"treshold": 80, "mode": "up"})[0].split(";")[0]
"params.treshold: unknown parameter for page_hinkley (did you mean 'threshold'?)"
>>> make_detector("kswin", {"alpha": 0.001}, seed=7).update(0.5)
False
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from river import drift
from river.drift import binary

from detectors import fast
from detectors.base import DriftDetector
from detectors.exceptions import DetectorError

__all__ = ["BINARY_DETECTORS", "DETECTORS", "make_detector", "validate_params"]


@dataclass(frozen=True)
class _Param:
    """What one constructor parameter accepts: a kind and, for numbers, a range."""

    kind: str  # "int" | "real" | "bool" | "choice" | "seed" | "numbers"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """None when ``value`` fits, otherwise what was expected."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "expected true or false"
        if self.kind == "choice":
            return None if value in self.choices else f"expected one of {', '.join(self.choices)}"
        if self.kind == "seed":
            # None would mean an unseeded generator: runs would stop being reproducible.
            return None if _is_int(value) else "expected an integer seed"
        if self.kind == "numbers":
            if isinstance(value, (list, tuple)) and all(_is_finite_real(v) for v in value):
                return None
            return "expected a list of finite numbers"
        is_number = _is_int(value) if self.kind == "int" else _is_finite_real(value)
        if not is_number or not self._in_range(value):
            return f"expected {'an integer' if self.kind == 'int' else 'a number'}{self._range_text()}"
        return None

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {self.low:g}"
        return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_real(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400 from YAML
        return False


_PROBABILITY = _Param("real", 0, 1, low_open=True, high_open=True)
_FRACTION = _Param("real", 0, 1, low_open=True)
_POSITIVE = _Param("real", 0, low_open=True)
_COUNT = _Param("int", 0)
_AT_LEAST_ONE = _Param("int", 1)
# ADWIN keeps at least two buckets per row: river's core (Rust) panics with max_buckets 1 once a window is cut, and
# a panic is a BaseException that no error handling of a worker catches, so the rule file is refused instead.
_AT_LEAST_TWO = _Param("int", 2)


@dataclass(frozen=True)
class _Detector:
    river_class: type
    binary: bool
    params: dict[str, _Param] = field(default_factory=dict)


_CATALOGUE: dict[str, _Detector] = {
    "adwin": _Detector(
        drift.ADWIN,
        binary=False,
        params={
            "delta": _PROBABILITY,
            "clock": _AT_LEAST_ONE,
            "max_buckets": _AT_LEAST_TWO,
            "min_window_length": _AT_LEAST_ONE,
            "grace_period": _COUNT,
        },
    ),
    "page_hinkley": _Detector(
        drift.PageHinkley,
        binary=False,
        params={
            "min_instances": _AT_LEAST_ONE,
            "delta": _Param("real", 0),
            "threshold": _POSITIVE,
            "alpha": _FRACTION,
            "mode": _Param("choice", choices=("both", "up", "down")),
        },
    ),
    "kswin": _Detector(
        drift.KSWIN,
        binary=False,
        params={
            "alpha": _PROBABILITY,
            "window_size": _Param("int", 2),
            "stat_size": _AT_LEAST_ONE,
            "seed": _Param("seed"),
            "window": _Param("numbers"),
        },
    ),
    "ddm": _Detector(
        binary.DDM,
        binary=True,
        params={"warm_start": _COUNT, "warning_threshold": _POSITIVE, "drift_threshold": _POSITIVE},
    ),
    "eddm": _Detector(
        binary.EDDM,
        binary=True,
        params={"warm_start": _COUNT, "alpha": _FRACTION, "beta": _FRACTION},
    ),
    "hddm_a": _Detector(
        fast.HDDMA,
        binary=True,
        params={
            "drift_confidence": _PROBABILITY,
            "warning_confidence": _PROBABILITY,
            "two_sided_test": _Param("bool"),
        },
    ),
    "hddm_w": _Detector(
        binary.HDDMW,
        binary=True,
        params={
            "drift_confidence": _PROBABILITY,
            "warning_confidence": _PROBABILITY,
            "lambda_val": _FRACTION,
            "two_sided_test": _Param("bool"),
        },
    ),
}

DETECTORS: tuple[str, ...] = tuple(_CATALOGUE)
"""Detector names a rule may use, in the order of the contract."""

BINARY_DETECTORS: frozenset[str] = frozenset(name for name, spec in _CATALOGUE.items() if spec.binary)
"""Detectors that accept only 0 and 1."""


def _accepted_names(river_class: type) -> list[str]:
    return sorted(name for name in inspect.signature(river_class).parameters if name != "self")


def _takes_seed(river_class: type) -> bool:
    return "seed" in inspect.signature(river_class).parameters


def _cross_errors(name: str, params: Mapping[str, Any]) -> list[str]:
    """Constraints between parameters that river would only hit at the first update."""
    if name == "kswin":
        window_size = params.get("window_size", 100)
        stat_size = params.get("stat_size", 30)
        # KSWIN draws stat_size values without replacement from the window_size - stat_size older ones.
        if 2 * stat_size > window_size:
            return [
                f"params.stat_size: kswin needs stat_size <= window_size / 2 (got stat_size {stat_size}, "
                f"window_size {window_size}); raise window_size or lower stat_size"
            ]
    return []


def _construct(name: str, params: Mapping[str, Any], seed: int) -> Any:
    river_class = _CATALOGUE[name].river_class
    kwargs = dict(params)
    if _takes_seed(river_class):
        kwargs.setdefault("seed", seed)  # the rule author's seed wins
    return river_class(**kwargs)


def validate_params(name: str, params: Any) -> list[str]:
    """Every problem with ``drift: {detector: name, params: params}``, as located messages; [] when fine.

    Never raises for bad input. Locations are relative to the ``drift`` block (``detector``, ``params.x``).
    """
    if not isinstance(name, str) or name not in _CATALOGUE:
        close = difflib.get_close_matches(str(name), DETECTORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [f"detector: unknown detector {name!r}{hint}; expected one of: {', '.join(DETECTORS)}"]
    if not isinstance(params, Mapping):
        return [f"params: expected a mapping of parameter names to values, got {type(params).__name__}"]
    spec = _CATALOGUE[name]
    accepted = _accepted_names(spec.river_class)
    errors: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str) or key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"params.{key}: unknown parameter for {name}{hint}; valid: {', '.join(accepted)}")
            continue
        param = spec.params.get(key)
        problem = param.check(value) if param is not None else None
        if problem is not None:
            errors.append(f"params.{key}: {problem} for {name}, got {value!r}")
    if errors:
        return errors
    errors = _cross_errors(name, params)
    if errors:
        return errors
    try:
        _construct(name, params, seed=0)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException (from ADWIN's Rust core) derives from BaseException
        return [f"params: river rejected these parameters for {name}: {exc}"]
    return []


def make_detector(name: str, params: Mapping[str, Any], seed: int) -> DriftDetector:
    """Build the named detector; ``seed`` is passed to detectors that draw random numbers (kswin).

    Raises ``DetectorError`` listing every problem when ``validate_params`` finds any.
    """
    if not _is_int(seed):
        raise DetectorError(f"detector seed must be an integer, got {seed!r}: derive it from the rule's identity")
    errors = validate_params(name, params)
    if errors:
        raise DetectorError(f"cannot build drift detector {name!r}: " + "; ".join(errors))
    return DriftDetector(name, params, _construct(name, params, seed))
