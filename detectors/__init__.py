"""River drift detectors behind one small contract.

``make_detector(name, params, seed)`` builds one of ``DETECTORS`` (after ``validate_params``); the result's
``update(x) -> bool`` says whether that value flagged drift, and ``to_state(key)`` / ``DriftDetector.from_state``
store and restore it exactly, signed so that stored state never runs code. This package imports nothing from
``rules`` or ``streams`` and reads no clock, environment or unseeded randomness.
"""

from detectors.base import DriftDetector
from detectors.exceptions import DetectorError, DetectorStateError
from detectors.registry import BINARY_DETECTORS, DETECTORS, make_detector, validate_params

__all__ = [
    "BINARY_DETECTORS",
    "DETECTORS",
    "DetectorError",
    "DetectorStateError",
    "DriftDetector",
    "make_detector",
    "validate_params",
]
