"""Event time (CONTRACT §1 ``ts``): an RFC 3339 string with an offset, or integer epoch ms, to epoch ms (UTC).

:func:`parse_ts` is the specification (the pydantic models call it); :func:`rfc3339_ms` gives the same result for
any string, faster for the shapes producers send (it falls back to :func:`parse_ts` for the rest).

>>> parse_ts("2026-11-02T10:00:00.250Z"), rfc3339_ms("2026-11-02T12:00:00.250+02:00")
(1793613600250, 1793613600250)
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["parse_ts", "rfc3339_ms"]

_MAX_TS = 253_402_300_800_000  # 10000-01-01T00:00:00Z in ms: beyond that RFC 3339 cannot express it
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(value: Any) -> int:
    """Normalise an event time to epoch milliseconds (UTC).

    >>> parse_ts("2026-11-02T10:00:00+02:00")
    1793606400000
    >>> parse_ts(1793606400000)
    1793606400000
    """
    if type(value) is int:
        ms = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be RFC 3339 with an offset, e.g. 2026-11-02T10:00:00Z, or integer epoch ms") from None
        if dt.tzinfo is None or len(value) < 20:
            raise ValueError("RFC 3339 time needs a date, a time and an offset (Z or +hh:mm)")
        ms = (dt - _EPOCH) // _MS
    else:
        raise ValueError("must be an RFC 3339 string or integer epoch milliseconds")
    if not 0 <= ms < _MAX_TS:
        raise ValueError("epoch milliseconds out of range (1970 .. 9999)")
    return ms


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc) - _EPOCH


def _iso_ms(ms: int) -> str:
    dt = _EPOCH + ms * _MS
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


# The common RFC 3339 shapes: date, time to the second, 1-6 fraction digits, Z or ±hh:mm. Anything else goes to
# parse_ts. Within this shape the minute (date, hour, minute, offset) carries all of fromisoformat's checks but the
# second's, so its epoch ms is cached and the seconds are added: parse_ts floors microseconds to ms, which is the
# first three fraction digits. A minute-aligned base in [0, _MAX_TS) plus < 60 s stays in range (the bound is
# minute-aligned too), so the range check holds as well. A minute enters the cache only through the full pattern;
# a string that finds its minute there needs only its seconds and fraction checked, by table look-ups.
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}):([0-5][0-9])(?:\.([0-9]{1,6}))?"
                      r"(Z|[+-][0-9]{2}:[0-9]{2})\Z")  # fmt: skip
_SECOND_MS = {f"{s:02d}": s * 1000 for s in range(60)}
_FRACTION_MS = {"": 0} | {
    "." + f"{i:0{n}d}": int(f"{i:0{n}d}".ljust(3, "0")) for n in (1, 2, 3) for i in range(10**n)
}  # fmt: skip
_minutes: dict[str, int] = {}
_MINUTES_MAX = 4096


def rfc3339_ms(value: str) -> int:
    """:func:`parse_ts` for a string, fast for the common shapes (a bounded cache of minutes); raises ValueError.

    >>> rfc3339_ms("2026-11-02T12:00:59.2509+02:00") == parse_ts("2026-11-02T12:00:59.2509+02:00") == 1793613659250
    True
    """
    n = len(value)
    if 20 <= n <= 32:
        end = n - 1 if value[-1] == "Z" else n - 6 if value[-6] in "+-" else 0
        base = _minutes.get(value[:16] + value[end:]) if end else None
        if base is not None and value[16] == ":":
            sec = _SECOND_MS.get(value[17:19])
            frac = value[19:end]
            ms = _FRACTION_MS.get(frac[:4])
            if sec is not None and ms is not None:
                rest = frac[4:]
                if not rest or (len(rest) <= 3 and rest.isascii() and rest.isdigit()):
                    return base + sec + ms
    m = _RFC3339.match(value)
    if m is None:
        return parse_ts(value)
    minute, sec, frac, off = m.groups()
    key = minute + off
    base = _minutes.get(key)
    if base is None:
        base = parse_ts(f"{minute}:00{off}")
        if len(_minutes) >= _MINUTES_MAX:
            _minutes.clear()
        _minutes[key] = base
    return base + int(sec) * 1000 + (int((frac + "00")[:3]) if frac else 0)
