"""Durations as rule authors write them (``30s``, ``5m``, ``1h30m``) and as the engine uses them (milliseconds).

Grammar: one or more ``<digits><unit>`` terms, units ``d h m s ms`` each used at most once and in that
(decreasing) order, no sign, no spaces, no fractions. ``0`` alone is accepted as a convenience for "zero".

Fractions such as ``1.5h`` are rejected on purpose: ``1h30m`` says the same thing exactly, and a decimal
invites rounding questions (is ``0.1s`` 100 ms?) that a guardrail should not have. Upper-case units are
rejected because ``5M`` could mean minutes or months.

>>> parse_duration("1h30m")
5400000
>>> format_duration(90_000)
'1m30s'
>>> format_duration(parse_duration("90s"))
'1m30s'
"""

from __future__ import annotations

import re

from rules.exceptions import RollguardError

__all__ = ["DurationError", "MAX_DURATION_MS", "parse_duration", "format_duration"]

_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
# ``ms`` must be tried before ``m`` so that ``500ms`` is not read as ``500m`` followed by junk.
_TERM = re.compile(r"([0-9]+)(ms|d|h|m|s)")
_ORDER = ("d", "h", "m", "s", "ms")

# Ten years: anything longer is a typo, and keeping durations small keeps epoch-millisecond arithmetic
# (window starts, baselines) far away from datetime's limits.
MAX_DURATION_MS = 3650 * 86_400_000
_MAX_TEXT = "3650d"


class DurationError(RollguardError):
    """A duration string could not be parsed; the message shows the accepted forms."""


def parse_duration(s: str) -> int:
    """Parse a duration such as ``5m``, ``1h30m`` or ``500ms`` into whole milliseconds.

    >>> [parse_duration(x) for x in ("30s", "5m", "2h", "1d", "0s", "0", "500ms")]
    [30000, 300000, 7200000, 86400000, 0, 0, 500]
    >>> parse_duration("1.5h")
    Traceback (most recent call last):
    ...
    rules.durations.DurationError: invalid duration '1.5h': fractions are not allowed; write e.g. '1h30m'
    >>> parse_duration("-5m")
    Traceback (most recent call last):
    ...
    rules.durations.DurationError: invalid duration '-5m': durations cannot be negative
    """
    if not isinstance(s, str):
        raise DurationError(f"invalid duration {s!r}: expected a string such as '30s', '5m', '2h' or '1d'")
    if s == "0":
        return 0
    if s == "":
        raise DurationError("invalid duration '': empty; write e.g. '30s', '5m', '2h' or '1d'")
    if s.startswith("-"):
        raise DurationError(f"invalid duration {s!r}: durations cannot be negative")
    if re.fullmatch(r"[0-9]+", s):
        raise DurationError(f"invalid duration {s!r}: missing unit; write e.g. '{s}s' or '{s}ms' (units: d h m s ms)")
    if re.search(r"[0-9]\.[0-9]", s):
        raise DurationError(f"invalid duration {s!r}: fractions are not allowed; write e.g. '1h30m'")
    total = 0
    pos = 0
    last_unit = -1
    while pos < len(s):
        term = _TERM.match(s, pos)
        if term is None:
            if _TERM.match(s.lower(), pos):
                raise DurationError(f"invalid duration {s!r}: units are lower-case (d h m s ms), e.g. {s.lower()!r}")
            raise DurationError(f"invalid duration {s!r}: {_what_is_wrong(s, pos)}; {_EXPECTED}")
        if len(term.group(1)) > 15:
            # Also keeps int() below away from Python's limit on very long digit strings.
            raise DurationError(f"invalid duration {s!r}: longer than the maximum of {_MAX_TEXT}")
        unit = _ORDER.index(term.group(2))
        if unit <= last_unit:
            raise DurationError(
                f"invalid duration {s!r}: units must appear once each, largest first (d h m s ms), e.g. '1h30m'"
            )
        last_unit = unit
        total += int(term.group(1)) * _UNIT_MS[term.group(2)]
        pos = term.end()
    if total > MAX_DURATION_MS:
        raise DurationError(f"invalid duration {s!r}: longer than the maximum of {_MAX_TEXT}")
    return total


_EXPECTED = "expected a number followed by ms, s, m, h or d, e.g. 30s, 5m or 1h30m"
# Unit words people write, and the unit (or the whole term, for weeks) rollguard's grammar spells them with.
_UNIT_WORDS = {
    **dict.fromkeys(("msec", "msecs", "millis", "millisecond", "milliseconds"), "ms"),
    **dict.fromkeys(("sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("day", "days"), "d"),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), "w"),
}  # fmt: skip
_WORD_TERM = re.compile(r"\s*([0-9]+)\s*([A-Za-z]+)\s*")


def _what_is_wrong(s: str, pos: int) -> str:
    """Why ``s`` stops being a duration at ``pos``, with the spelling rollguard reads when one is evident.

    >>> _what_is_wrong("5min", 2)
    "'min' is not a unit (did you mean '5m'?)"
    >>> _what_is_wrong("1h 30m", 2)
    "spaces are not allowed (did you mean '1h30m'?)"
    >>> _what_is_wrong("2weeks", 0)
    "'weeks' is not a unit (did you mean '14d'?)"
    >>> _what_is_wrong("5x", 0), _what_is_wrong("1h30", 2)
    ("'x' is not a unit", "'30' has no unit")
    >>> _what_is_wrong("soon", 0)
    "'soon' is not a number followed by a unit"
    """
    terms, at, spelled = [], 0, True
    while at < len(s) and spelled:
        m = _WORD_TERM.match(s, at)
        word = m and (m.group(2) if m.group(2) in _UNIT_MS else _UNIT_WORDS.get(m.group(2).lower()))
        if not word:
            spelled = False
            break
        count = int(m.group(1)[:15])
        terms.append(f"{count * 7}d" if word == "w" else f"{count}{word}")
        at = m.end()
    hint = f" (did you mean {''.join(terms)!r}?)" if spelled and terms and "".join(terms) != s else ""
    if any(c.isspace() for c in s):
        return f"spaces are not allowed{hint}"
    rest = s[pos:]
    word = re.match(r"[A-Za-z]+", rest)
    if word and pos > 0 and s[pos - 1].isalpha():  # the unit letter read so far starts a longer word: 5min, 2hours
        start = pos - 1 if s[pos - 2 : pos] != "ms" else pos - 2
        return f"{s[start : pos + word.end()]!r} is not a unit{hint}"
    term = re.match(r"[0-9]+([A-Za-z]+)", rest)
    if term:  # digits then letters that are no unit: 5w, 3y
        return f"{term.group(1)!r} is not a unit{hint}"
    if rest.isdigit():
        return f"{rest!r} has no unit{hint}"
    return f"{rest!r} is not a number followed by a unit{hint}"


def format_duration(ms: int) -> str:
    """Format milliseconds in the shortest canonical form; the inverse of :func:`parse_duration`.

    >>> [format_duration(x) for x in (0, 500, 1_500, 60_000, 90_000, 86_400_000, 93_784_005)]
    ['0s', '500ms', '1s500ms', '1m', '1m30s', '1d', '1d2h3m4s5ms']
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise DurationError(f"cannot format duration {ms!r}: expected whole milliseconds (an int)")
    if ms < 0:
        raise DurationError(f"cannot format duration {ms}: durations cannot be negative")
    if ms == 0:
        return "0s"
    parts = []
    for unit in _ORDER:
        count, ms = divmod(ms, _UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
