"""Loading a drift rule's ``drift:`` block (detector, signal, params), with located errors like the rest of
``rules.loader``; each detector checks its own parameters (``detectors.validate_params``).

::

    drift: {detector: page_hinkley, signal: latency_ms, params: {delta: 10, threshold: 2000, mode: up}}
"""

from __future__ import annotations

from typing import Any, get_args

from detectors import BINARY_DETECTORS, DETECTORS, validate_params
from rules.loader_scope import Scope
from rules.located_yaml import LocatedMap, describe, line_of
from rules.model import DriftSpec, Signal

__all__ = ["load_drift", "DRIFT_KEYS"]

DRIFT_KEYS = ("detector", "signal", "params")
_BINARY_SIGNALS = ("acceptance", "error", "thumbs_down")


def load_drift(scope: Scope, item: LocatedMap) -> DriftSpec | None:
    d = item["drift"]
    if not isinstance(d, LocatedMap):
        message = f"drift: expected a mapping with detector, signal and params, got {describe(d)}"
        scope.error(line_of(item, "drift"), message)
        return None
    before = len(scope.checker.errors)
    scope.keys(d, DRIFT_KEYS, "drift: ")
    for key in ("detector", "signal"):
        if key not in d:
            scope.error(d.line, f"drift: missing required key {key!r}")
    detector = scope.choice(d, "detector", "drift.detector", DETECTORS) if "detector" in d else None
    signal = scope.choice(d, "signal", "drift.signal", get_args(Signal)) if "signal" in d else None
    if detector in BINARY_DETECTORS and signal is not None and signal not in _BINARY_SIGNALS:
        message = f"detector {detector!r} needs a 0/1 signal ({', '.join(_BINARY_SIGNALS)}); {signal!r} is not"
        scope.error(line_of(d, "signal"), f"drift.signal: {message}")
    params = _params(scope, d)
    if detector is not None and params is not None:
        try:
            problems = validate_params(detector, params)
        except Exception as exc:  # noqa: BLE001 - a detector's own check must not crash a validation run
            problems = [f"params: {type(exc).__name__}: {exc}"]
        for problem in problems:
            # detectors locates problems relative to the drift block ("params.delta: ..."): point at that key.
            key = problem.partition(":")[0].removeprefix("params.")
            scope.error(line_of(d["params"], key) if key in params else line_of(d, "params"), f"drift.{problem}")
    if len(scope.checker.errors) > before:
        return None
    return DriftSpec(detector=detector, signal=signal, params=params)


def _params(scope: Scope, d: LocatedMap) -> dict[str, Any] | None:
    """The detector parameters as a plain dict of YAML scalars (or lists of them), or None if malformed."""
    params = d.get("params")
    if params is None:
        return {}
    if not isinstance(params, LocatedMap):
        message = f"expected a mapping such as {{delta: 0.002}}, got {describe(params)}"
        scope.error(line_of(d, "params"), f"drift.params: {message}")
        return None
    scope.keys(params, tuple(params), "drift.params: ")
    scalar = (str, int, float, bool, type(None))
    ok = not params.duplicates
    for key, value in params.items():
        if not isinstance(key, str):
            scope.error(line_of(params, key), f"drift.params: keys must be strings, got {describe(key)}")
            ok = False
        elif not isinstance(value, scalar) and not (
            isinstance(value, list) and all(isinstance(x, scalar) for x in value)
        ):
            message = f"expected a number, string, boolean or null (or a list of them), got {describe(value)}"
            scope.error(line_of(params, key), f"drift.params.{key}: {message}")
            ok = False
    return {key: list(value) if isinstance(value, list) else value for key, value in params.items()} if ok else None
