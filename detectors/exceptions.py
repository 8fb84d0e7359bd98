"""Errors raised by the drift detectors.

``detectors`` is the innermost package and must not import ``rules``, so it has its own root; callers in
``rules`` and ``streams`` catch :class:`DetectorError` at their boundary.

::

    DetectorError               a detector was asked for something it cannot do: an unknown name, bad
    │                           parameters, a value it does not accept, a malformed state key
    └── DetectorStateError      stored detector state cannot be restored (bad MAC, truncated, other format
                                or river version); discard it and let the detector start cold

Messages say what to do, not only what went wrong.
"""

__all__ = ["DetectorError", "DetectorStateError"]


class DetectorError(Exception):
    """A detector was built or fed wrongly; the message names the detector and the fix."""


class DetectorStateError(DetectorError):
    """Stored detector state was rejected and nothing from it was executed or applied.

    The safe reaction is to drop the stored state and build a fresh detector with ``make_detector``:
    the detector starts cold (it needs its warm-up again) but never runs on state it cannot trust.
    """
