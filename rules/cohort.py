"""User cohorts: retention and returning users, from the distinct-users sketches of two adjacent windows.

Users are the keyed (HMAC) ids of interactions, reduced to 64-bit hashes by the distinct-users sketch
(``rules.sketches.hll``); nothing else is kept, so no raw id is stored.

* ``retention:<k>`` over a rule's ``window`` ``w`` at instant ``t``: the *cohort* is the users active in
  ``[t - k - w, t - k)``; the value is the share of them active again in ``[t - k, t)``. The seeds' "7-day feature
  retention" (users active in both week 1 and week 2) is ``retention:7d`` with ``window: 7d``; "the share of a day's
  users who come back within 7 days" is ``retention:7d`` with ``window: 1d``. Samples: the cohort's size.
* ``returning_share:<k>`` over ``w``: the share of the users of ``[t - w, t)`` who were also active in the ``k`` before,
  ``[t - w - k, t - w)``; ``1 -`` it is the share of new users (not seen for ``k``). Samples: the window's users.

Both are ``|X ∩ Y| / |X|`` for the denominator set ``X`` and the other window ``Y``. The intersection is exact while
both windows' sketches are (at most 1,024 distinct users each: the hashes themselves, a set intersection); past that
it is estimated by inclusion–exclusion, ``|X| + |Y| - |X ∪ Y|`` over the sketches and their merge (clamped to
``[0, min(|X|, |Y|)]``), whose error ``bench/cohort_error.py`` measures (docs/rules.md §3 gives the table): the
estimate is a deterministic function of the two sets, so replay and the live worker agree on it to the bit.

>>> from rules.sketches.hll import HyperLogLog
>>> week1, week2 = HyperLogLog(), HyperLogLog()
>>> for u in ("a", "b", "c", "d"):
...     week1.add(u)
>>> for u in ("b", "d", "e"):
...     week2.add(u)
>>> share_returning(week1, week2)
(0.5, 4, 2)
"""

from __future__ import annotations

from rules.metric_names import cohort_span_ms
from rules.sketches.hll import HyperLogLog

__all__ = ["cohort_windows", "shared_users", "share_returning"]


def cohort_windows(base: str, param: str, window_ms: int, t: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((end, length) of the denominator window, (end, length) of the other window)`` of a cohort metric at ``t``.

    >>> cohort_windows("retention", "1d", 3_600_000, 100 * 3_600_000)  # cohort [75h, 76h), back in [76h, 100h)
    ((273600000, 3600000), (360000000, 86400000))
    """
    k = cohort_span_ms(param)
    if base == "retention":
        return (t - k, window_ms), (t, k)
    return (t, window_ms), (t - window_ms, k)  # returning_share


def shared_users(x: HyperLogLog, y: HyperLogLog) -> int:
    """The number of users both sketches counted: exact when both are exact, else by inclusion–exclusion."""
    ex, ey = x.exact_hashes(), y.exact_hashes()
    if ex is not None and ey is not None:
        return len(ex & ey)
    nx, ny = x.cardinality(), y.cardinality()
    both = nx + ny - HyperLogLog.merged(x, y).cardinality()
    return max(0, min(nx, ny, both))


def share_returning(x: HyperLogLog | None, y: HyperLogLog | None) -> tuple[float | None, int, int]:
    """``(|x ∩ y| / |x|, |x|, |x ∩ y|)``: the share undefined (None) when ``x`` counted nobody."""
    n = x.cardinality() if x is not None else 0
    if not n:
        return None, 0, 0
    shared = shared_users(x, y) if y is not None else 0
    return shared / n, n, shared
