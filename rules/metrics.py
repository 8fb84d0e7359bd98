"""Metric values from a (merged) bucket: the definitions of CONTRACT §2.

Each metric yields ``(value, samples)``; ``value`` is ``None`` when it is undefined (no denominator), and
``samples`` is the denominator ``min_samples`` is checked against. Rate metrics also expose ``(successes, trials)``
for the Wilson bound.

>>> from rules.aggregate import Bucket
>>> b = Bucket({"n": 200, "o:error": 3, "o:timeout": 1}, None, None)
>>> metric_value("error_rate", None, b)
(0.02, 200)
>>> rate_counts("error_rate", None, b)
(4, 200)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rules.aggregate import COST_SCALE, LATENCY_SCALE, SCORE_SCALE, UNIT_SCALE, Bucket, share_key

__all__ = ["metric_value", "rate_counts", "needs_latency_sketch", "needs_users", "COUNT_METRICS", "signal_value",
           "metric_sources", "signal_sources"]

# metrics whose value is a count: zero is a real observation, not "no data"
COUNT_METRICS = frozenset({"requests", "cost_total", "flag_count", "active_users", "tickets", "sessions"})
_QUANTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _rate(c: dict[str, int], base: str, param: str | None) -> tuple[int, int]:
    """(successes, trials) of a rate metric."""
    n = c.get("n", 0)
    if base == "error_rate":
        return c.get("o:error", 0) + c.get("o:timeout", 0), n
    if base == "timeout_rate":
        return c.get("o:timeout", 0), n
    if base == "refusal_rate":
        return c.get("o:refused", 0), n
    if base == "flag_rate":
        return c.get("flag:" + param, 0), n
    sug = c.get("sug", 0)
    if base == "acceptance_rate":
        return c.get("sug:accepted", 0) + c.get("sug:edited", 0), sug
    if base == "edit_rate":
        return c.get("sug:edited", 0), sug
    if base == "rejection_rate":
        return c.get("sug:rejected", 0), sug
    if base == "thumbs_down_rate":
        return c.get("th:down", 0), c.get("th", 0)
    if base == "review_rate":
        return c.get("rev:" + param, 0), c.get("rev", 0)
    if base == "hallucination_rate":
        return c.get("rev:hallucination", 0), c.get("rev", 0)
    if base in ("share_ge", "share_lt"):
        return c.get(share_key(base, param), 0), c.get(_SHARE_DENOMINATOR[param.partition(":")[0]], 0)
    if base == "eval_pass_rate":
        return c.get("ev.p:" + param, 0), c.get("ev.t:" + param, 0)
    raise KeyError(base)


_SHARE_DENOMINATOR = {"review_score": "rs.n", "csat": "csat.n", "confidence": "conf.n"}


def rate_counts(base: str, param: str | None, b: Bucket) -> tuple[int, int]:
    """``(successes, trials)`` of a rate metric (for the Wilson bound)."""
    return _rate(b.c, base, param)


def _mean(c: dict[str, int], key: str, scale: int) -> tuple[float | None, int]:
    n = c.get(key + ".n", 0)
    return (c.get(key + ".s", 0) / scale / n if n else None), n


def _latency_quantile(q: float) -> Callable[[Bucket, str | None], tuple[float | None, int]]:
    def f(b: Bucket, _p: str | None) -> tuple[float | None, int]:
        n = b.c.get("lat.n", 0)
        return (b.lat.quantile(q) if n and b.lat is not None else None), n

    return f


def _users(b: Bucket) -> int:
    """Distinct users of the window (0 without a users sketch)."""
    return b.users.cardinality() if b.users is not None else 0


def _active_users(b: Bucket, _p: str | None) -> tuple[float | None, int]:
    n = _users(b)
    return float(n), n


def _tickets_per_1k(b: Bucket, p: str | None) -> tuple[float | None, int]:
    """Tickets (of tag ``p``, or all) per 1,000 distinct users of the window; samples: the users."""
    users = _users(b)
    return (b.c.get("tk:" + p if p else "tk", 0) / users * 1000 if users else None), users


def _uses_per_user(b: Bucket, _p: str | None) -> tuple[float | None, int]:
    """Requests per distinct user of the window; samples: the users."""
    users = _users(b)
    return (b.c.get("n", 0) / users if users else None), users


def _nps(b: Bucket, _p: str | None) -> tuple[float | None, int]:
    c = b.c
    n = c.get("nps.n", 0)
    return ((c.get("nps.p", 0) - c.get("nps.d", 0)) * 100 / n if n else None), n


def _eval_score(b: Bucket, p: str | None) -> tuple[float | None, int]:
    """The mean score of suite ``p`` over the items its eval runs scored (a run of n items weighs n)."""
    n = b.c.get("ev.n:" + p, 0)
    return (b.c.get("ev.s:" + p, 0) / UNIT_SCALE / n if n else None), n


def _cost_total(b: Bucket, _p: str | None) -> tuple[float | None, int]:
    return b.c.get("cost.s", 0) / COST_SCALE, b.c.get("n", 0)


def _rate_metric(base: str) -> Callable[[Bucket, str | None], tuple[float | None, int]]:
    def f(b: Bucket, p: str | None) -> tuple[float | None, int]:
        k, n = _rate(b.c, base, p)
        return _ratio(k, n), n

    return f


_METRICS: dict[str, Callable[[Bucket, str | None], tuple[float | None, int]]] = {
    "requests": lambda b, _p: (float(b.c.get("n", 0)), b.c.get("n", 0)),
    "latency_mean": lambda b, _p: _mean(b.c, "lat", LATENCY_SCALE),
    "cost_per_request": lambda b, _p: _mean(b.c, "cost", COST_SCALE),
    "cost_total": _cost_total,
    "tokens_out_mean": lambda b, _p: _mean(b.c, "tok", 1),
    "session_length_mean": lambda b, _p: _mean(b.c, "ses", LATENCY_SCALE),
    "sessions": lambda b, _p: (float(b.c.get("ses.n", 0)), b.c.get("n", 0)),
    "confidence_mean": lambda b, _p: _mean(b.c, "conf", UNIT_SCALE),
    "flag_count": lambda b, p: (float(b.c.get("flag:" + p, 0)), b.c.get("n", 0)),
    "active_users": _active_users,
    "review_score_mean": lambda b, _p: _mean(b.c, "rs", SCORE_SCALE),
    "tickets": lambda b, p: (float(b.c.get("tk:" + p if p else "tk", 0)), b.c.get("tk", 0)),
    "tickets_per_1k_users": _tickets_per_1k,
    "uses_per_user": _uses_per_user,
    "csat_mean": lambda b, _p: _mean(b.c, "csat", SCORE_SCALE),
    "nps": _nps,
    "eval_score": _eval_score,
    **{q: _latency_quantile(v) for q, v in _QUANTILES.items()},
    **{
        r: _rate_metric(r)
        for r in (
            "error_rate", "timeout_rate", "refusal_rate", "flag_rate", "acceptance_rate", "edit_rate",
            "rejection_rate", "thumbs_down_rate", "review_rate", "hallucination_rate", "share_ge", "share_lt",
            "eval_pass_rate",
        )  # fmt: skip
    },
}


def metric_value(base: str, param: str | None, b: Bucket) -> tuple[float | None, int]:
    """``(value, samples)`` of metric ``base[:param]`` over bucket ``b``."""
    return _METRICS[base](b, param)


_FEEDBACK_METRICS = frozenset({
    "acceptance_rate", "edit_rate", "rejection_rate", "thumbs_down_rate", "review_rate", "hallucination_rate",
    "review_score_mean", "tickets", "csat_mean", "nps", "eval_score", "eval_pass_rate",
})  # fmt: skip


def metric_sources(base: str, param: str | None = None) -> frozenset[str]:
    """The event types (``interaction``, ``feedback``) a metric reads: its rules wait for their watermarks."""
    if base == "tickets_per_1k_users":
        return frozenset({"interaction", "feedback"})
    if base in ("share_ge", "share_lt"):
        return frozenset({"interaction" if (param or "").startswith("confidence:") else "feedback"})
    return frozenset({"feedback" if base in _FEEDBACK_METRICS else "interaction"})


def signal_sources(signal: str) -> frozenset[str]:
    return frozenset({"feedback" if signal in ("acceptance", "thumbs_down") else "interaction"})


def needs_latency_sketch(base: str) -> bool:
    return base in _QUANTILES


def needs_users(base: str) -> bool:
    return base in ("active_users", "tickets_per_1k_users", "uses_per_user", "retention", "returning_share")


def signal_value(signal: str, ev: Any) -> float | None:
    """The value a drift detector sees for one event, or None when the event carries no such signal."""
    if ev.type == "interaction":
        if signal == "error":
            return 1.0 if ev.outcome in ("error", "timeout") else 0.0
        if signal == "latency_ms":
            return ev.latency_ms
        if signal == "cost_usd":
            return ev.cost_usd
        if signal == "confidence":
            return ev.confidence
        if signal == "tokens_in":  # the prompt's length: input drift
            return None if ev.tokens_in is None else float(ev.tokens_in)
        if signal == "tokens_out":  # the response's length: output drift
            return None if ev.tokens_out is None else float(ev.tokens_out)
        return None
    if signal == "acceptance" and ev.kind == "suggestion":
        return 1.0 if ev.label in ("accepted", "edited") else 0.0
    if signal == "thumbs_down" and ev.kind == "thumbs":
        return 1.0 if ev.label == "down" else 0.0
    return None
