"""Errors raised by the mergeable sketches.

::

    RollguardError                 (rules.exceptions)
    └── SketchError                a sketch was fed an invalid value, combined with an incompatible sketch,
                                   or restored from a malformed state
"""

from rules.exceptions import RollguardError

__all__ = ["SketchError"]


class SketchError(RollguardError):
    """A sketch operation cannot give a correct result; the message names the argument to fix.

    Typical causes: a negative or non-finite latency, merging sketches built with different accuracy or precision,
    subtracting a sketch that was never merged in, or a stored state that was edited or truncated (restore it from
    the writer that produced it instead).
    """
