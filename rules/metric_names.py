"""The names of the metrics a rule can test (CONTRACT §2), and how to split a name into base and parameter.

A metric name is a base name, optionally followed by ``:<param>`` for the parameterised families
(``flag_rate:pii_leak``, ``review_rate:offensive``, ``tickets:billing``). Parameters use the same charset as
event flags and labels: ``[a-z0-9_]{1,64}``.

>>> parse_metric("flag_rate:pii_leak")
('flag_rate', 'pii_leak')
>>> parse_metric("latency_p95")
('latency_p95', None)
>>> METRICS["error_rate"].is_rate
True
"""

from __future__ import annotations

import difflib
import re
from typing import NamedTuple

from rules.exceptions import RollguardError

__all__ = ["MetricInfo", "METRICS", "PARAM_OPTIONAL", "SHARE_FIELDS", "COHORT_METRICS", "cohort_span_ms",
           "MetricNameError", "parse_metric", "is_rate_metric", "share_of"]  # fmt: skip


class MetricInfo(NamedTuple):
    """``parameterised``: the name takes a ``:<param>`` suffix. ``is_rate``: the value is a fraction in [0, 1]
    of the metric's samples, so a Wilson confidence bound applies to it."""

    parameterised: bool
    is_rate: bool


METRICS: dict[str, MetricInfo] = {
    "requests": MetricInfo(False, False),
    "error_rate": MetricInfo(False, True),
    "timeout_rate": MetricInfo(False, True),
    "refusal_rate": MetricInfo(False, True),
    "latency_p50": MetricInfo(False, False),
    "latency_p95": MetricInfo(False, False),
    "latency_p99": MetricInfo(False, False),
    "latency_mean": MetricInfo(False, False),
    "cost_per_request": MetricInfo(False, False),
    "cost_total": MetricInfo(False, False),
    "tokens_out_mean": MetricInfo(False, False),
    "confidence_mean": MetricInfo(False, False),
    "flag_count": MetricInfo(True, False),
    "flag_rate": MetricInfo(True, True),
    "active_users": MetricInfo(False, False),
    "acceptance_rate": MetricInfo(False, True),
    "edit_rate": MetricInfo(False, True),
    "rejection_rate": MetricInfo(False, True),
    "thumbs_down_rate": MetricInfo(False, True),
    "review_rate": MetricInfo(True, True),
    "hallucination_rate": MetricInfo(False, True),
    "review_score_mean": MetricInfo(False, False),
    "tickets": MetricInfo(True, False),
    "tickets_per_1k_users": MetricInfo(True, False),
    "csat_mean": MetricInfo(False, False),
    "nps": MetricInfo(False, False),
    # the share of values of a field at or above (share_ge) / below (share_lt) a number: share_ge:review_score:4
    "share_ge": MetricInfo(True, True),
    "share_lt": MetricInfo(True, True),
    # offline evaluation runs (``type: eval`` events) of one suite: the mean score over the items evaluated, and the
    # share of items that passed
    "eval_score": MetricInfo(True, False),
    "eval_pass_rate": MetricInfo(True, True),
    # user cohorts (rules.cohort), from the distinct-users sketches of two adjacent windows: retention:7d is the share
    # of the window's users (the cohort, ending 7 days ago) active again in the 7 days since; returning_share:7d the
    # share of the window's users who were active in the 7 days before it (1 - it: the new users' share)
    "retention": MetricInfo(True, True),
    "returning_share": MetricInfo(True, True),
    "uses_per_user": MetricInfo(False, False),
    # user sessions (interactions that end one carry ``session_ms``): their mean length, and how many ended
    "session_length_mean": MetricInfo(False, False),
    "sessions": MetricInfo(False, False),
}
# the fields a share metric reads (their events): review scores, survey csat scores, output confidence
SHARE_FIELDS = ("review_score", "csat", "confidence")
_SHARE_PARAM = re.compile(r"(review_score|csat|confidence):([0-9]{1,6}(?:\.[0-9]{1,6})?)")

# cohort metrics take a span: whole days, hours or minutes (retention:7d, returning_share:48h)
COHORT_METRICS = frozenset({"retention", "returning_share"})
_SPAN_PARAM = re.compile(r"[1-9][0-9]{0,3}[dhm]")
_SPAN_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}

# Parameterised bases that may also be used bare: ``tickets`` counts all tickets, ``tickets:<tag>`` one tag; the same
# for ``tickets_per_1k_users`` (``tickets_per_1k_users:escalation``: one tag's tickets per 1,000 active users).
PARAM_OPTIONAL: frozenset[str] = frozenset({"tickets", "tickets_per_1k_users"})

_PARAM = re.compile(r"[a-z0-9_]{1,64}")


class MetricNameError(RollguardError):
    """A metric name is not one of CONTRACT §2; the message lists the closest known names."""


def _spellings() -> list[str]:
    names = []
    for base, info in METRICS.items():
        if not info.parameterised or base in PARAM_OPTIONAL:
            names.append(base)
        if info.parameterised:
            names.append(f"{base}:<param>")
    return names


def parse_metric(name: str) -> tuple[str, str | None]:
    """Split a metric name into ``(base, param)``; raise :class:`MetricNameError` if it is not a known metric.

    ``hallucination_rate`` is its own base here, although CONTRACT defines it as ``review_rate:hallucination``.

    >>> parse_metric("tickets")
    ('tickets', None)
    >>> parse_metric("eror_rate")
    Traceback (most recent call last):
    ...
    rules.metric_names.MetricNameError: unknown metric 'eror_rate' (did you mean 'error_rate'?)
    """
    if not isinstance(name, str):
        raise MetricNameError(f"metric must be a string, got {type(name).__name__}")
    base, sep, param = name.partition(":")
    info = METRICS.get(base)
    if info is None:
        close = difflib.get_close_matches(name, _spellings(), n=1)
        close = close or difflib.get_close_matches(base, list(METRICS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (see CONTRACT §2 for the metric names)"
        raise MetricNameError(f"unknown metric {name!r}{hint}")
    if not sep:
        if info.parameterised and base not in PARAM_OPTIONAL:
            example = "7d" if base in COHORT_METRICS else "pii_leak"
            raise MetricNameError(f"metric {base!r} needs a parameter, e.g. '{base}:{example}' ({base}:<param>)")
        return base, None
    if not info.parameterised:
        raise MetricNameError(f"metric {base!r} takes no parameter; remove ':{param}'")
    if base in ("share_ge", "share_lt"):
        if not _SHARE_PARAM.fullmatch(param):
            raise MetricNameError(f"metric {name!r}: write {base}:<field>:<number> with a field of "
                                  f"{', '.join(SHARE_FIELDS)} (e.g. {base}:review_score:4)")  # fmt: skip
        return base, param
    if base in COHORT_METRICS:
        if not _SPAN_PARAM.fullmatch(param):
            raise MetricNameError(f"metric {name!r}: write {base}:<span> with a span of whole days, hours or minutes (e.g. "
                                  f"{base}:7d, {base}:48h)")  # fmt: skip
        return base, param
    if not _PARAM.fullmatch(param):
        raise MetricNameError(f"metric {name!r}: parameter {param!r} must match [a-z0-9_]{{1,64}}")
    return base, param


def is_rate_metric(name: str) -> bool:
    """True if ``name`` (a valid metric name) is a fraction of its samples.

    >>> is_rate_metric("flag_rate:toxicity"), is_rate_metric("flag_count:toxicity")
    (True, False)
    """
    return METRICS[parse_metric(name)[0]].is_rate


def share_of(base: str, param: str) -> tuple[str, bool, float]:
    """``(field, at_or_above, x)`` of a share metric: ``share_ge:review_score:4`` is ``("review_score", True, 4.0)``.

    >>> share_of("share_lt", "confidence:0.7")
    ('confidence', False, 0.7)
    """
    field, _, x = param.partition(":")
    return field, base == "share_ge", float(x)


def cohort_span_ms(param: str) -> int:
    """The span of a cohort metric's parameter, in milliseconds.

    >>> cohort_span_ms("7d"), cohort_span_ms("48h"), cohort_span_ms("90m")
    (604800000, 172800000, 5400000)
    """
    return int(param[:-1]) * _SPAN_UNIT_MS[param[-1]]
