"""Incidents for the example scenario generator: what can go wrong, and how it bends the distributions.

An :class:`Incident` is a kind, an event-time window ``[start, start + duration_ms)``, a magnitude and an optional
segment restriction. :func:`incident_effects` turns the incidents overlapping one block of interactions into
per-interaction multipliers and probabilities that :mod:`streams.offline.scenario` applies. Effects never consume random
numbers, so a scenario with an incident is *identical* to the clean one outside the incident's window: golden tests
can attribute every difference to the incident.

Magnitude per kind (1.0 is always a valid, clearly visible incident; ranges are checked):

=======================  =============================================================  ===========
kind                     effect during the window                                       magnitude
=======================  =============================================================  ===========
latency_spike            ``latency_ms`` × (1 + m); more interactions hit the timeout    m > 0
acceptance_decline       P(accepted or edited) × (1 − m)                                0 < m ≤ 1
pii_leak                 P(flag ``pii_leak``) = m (absolute; 0.01 = 1% of interactions)  0 < m ≤ 1
hallucination_increase   P(output hallucinates) = m; seen by reviews, thumbs, tickets   0 < m ≤ 1
cost_runaway             ``tokens_out`` × (1 + m); ``cost_usd`` follows the tokens      m > 0
drift                    ramps from 0 at start to full at the end: ``confidence`` ×     0 < m ≤ 2
                         (1 − 0.35·m), ``latency_ms`` × (1 + 0.5·m); acceptance follows
                         confidence down
traffic_drop             interaction rate × (1 − m); 1.0 → no traffic                  0 < m ≤ 1
error_burst              P(outcome ``error``) = m (absolute)                            0 < m ≤ 1
=======================  =============================================================  ===========

Effects of a hallucination are seen by reviews hours later (reviews are emitted at their own time), exactly as a
real review queue would see them.

>>> Incident("latency_spike", start=0, duration_ms=60_000, magnitude=1.5).end
60000
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rules.exceptions import RollguardError

__all__ = [
    "Incident",
    "INCIDENT_KINDS",
    "PRESET_INCIDENTS",
    "ScenarioError",
    "Effects",
    "incident_effects",
    "incident_errors",
    "preset_incidents",
    "describe_presets",
]

# kind -> (lowest magnitude, lowest is inclusive, highest magnitude or inf)
_MAGNITUDE_RANGE: dict[str, tuple[float, bool, float]] = {
    "latency_spike": (0.0, False, math.inf),
    "acceptance_decline": (0.0, False, 1.0),
    "pii_leak": (0.0, False, 1.0),
    "hallucination_increase": (0.0, False, 1.0),
    "cost_runaway": (0.0, False, math.inf),
    "drift": (0.0, False, 2.0),
    "traffic_drop": (0.0, False, 1.0),
    "error_burst": (0.0, False, 1.0),
}
INCIDENT_KINDS: tuple[str, ...] = tuple(_MAGNITUDE_RANGE)

# Drift at full strength (m = 1): confidence loses 35%, latency gains 50%.
_DRIFT_CONFIDENCE = 0.35
_DRIFT_LATENCY = 0.5


class ScenarioError(RollguardError, ValueError):
    """A scenario or incident is inconsistent; the message names the field and the allowed values."""


@dataclass(frozen=True)
class Incident:
    """Something going wrong in ``[start, start + duration_ms)`` of event time (epoch ms).

    ``segment`` restricts the incident to interactions whose segment has all these values,
    e.g. ``{"platform": "mobile"}``; keys are ``platform``, ``region`` or ``plan``.
    """

    kind: str
    start: int
    duration_ms: int
    magnitude: float = 1.0
    segment: dict[str, str] | None = field(default=None)

    def __post_init__(self) -> None:
        where = f"Incident(kind={self.kind!r})"
        if self.kind not in _MAGNITUDE_RANGE:
            raise ScenarioError(f"{where}: unknown kind; use one of {', '.join(INCIDENT_KINDS)}")
        if type(self.start) is not int or type(self.duration_ms) is not int:
            raise ScenarioError(f"{where}: start and duration_ms must be integer epoch milliseconds")
        if self.duration_ms <= 0:
            raise ScenarioError(f"{where}: duration_ms must be > 0, got {self.duration_ms}")
        low, low_inclusive, high = _MAGNITUDE_RANGE[self.kind]
        m = self.magnitude
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m) \
                or m < low or (m == low and not low_inclusive) or m > high:
            upper = "" if high == math.inf else f" and <= {high:g}"
            raise ScenarioError(f"{where}: magnitude must be > {low:g}{upper}, got {m!r}")
        if self.segment is not None and (not isinstance(self.segment, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.segment.items())):
            raise ScenarioError(f"{where}: segment must be a dict of str to str, e.g. {{'platform': 'mobile'}}")

    @property
    def end(self) -> int:
        """First millisecond after the incident."""
        return self.start + self.duration_ms


@dataclass
class Effects:
    """Per-interaction parameters for one block: each field is a scalar or an array aligned with the block."""

    keep_prob: float | np.ndarray
    latency_mult: float | np.ndarray
    accept_mult: float | np.ndarray
    tokens_out_mult: float | np.ndarray
    confidence_mult: float | np.ndarray
    pii_prob: float | np.ndarray
    hallucination_prob: float | np.ndarray
    error_prob: float | np.ndarray


def incident_effects(
    incidents: tuple[Incident, ...],
    ts: np.ndarray,
    matches: Callable[[dict[str, str]], np.ndarray],
    *,
    pii_prob: float,
    hallucination_prob: float,
    error_prob: float,
) -> Effects:
    """Effects on interactions at times ``ts`` (sorted epoch ms); ``matches(segment)`` masks the block by segment.

    The base probabilities are what holds without incidents; incidents only ever raise ``pii_prob``,
    ``hallucination_prob`` and ``error_prob`` (the worse of base and magnitude wins).
    """
    fx = Effects(1.0, 1.0, 1.0, 1.0, 1.0, pii_prob, hallucination_prob, error_prob)
    if len(ts) == 0:
        return fx
    first, last = int(ts[0]), int(ts[-1])
    for inc in incidents:
        if inc.end <= first or inc.start > last:
            continue
        mask = (ts >= inc.start) & (ts < inc.end)
        if inc.segment:
            mask &= matches(inc.segment)
        m = inc.magnitude
        if inc.kind == "latency_spike":
            fx.latency_mult = np.where(mask, fx.latency_mult * (1.0 + m), fx.latency_mult)
        elif inc.kind == "acceptance_decline":
            fx.accept_mult = np.where(mask, fx.accept_mult * (1.0 - m), fx.accept_mult)
        elif inc.kind == "pii_leak":
            fx.pii_prob = np.where(mask, np.maximum(fx.pii_prob, m), fx.pii_prob)
        elif inc.kind == "hallucination_increase":
            fx.hallucination_prob = np.where(mask, np.maximum(fx.hallucination_prob, m), fx.hallucination_prob)
        elif inc.kind == "cost_runaway":
            fx.tokens_out_mult = np.where(mask, fx.tokens_out_mult * (1.0 + m), fx.tokens_out_mult)
        elif inc.kind == "drift":
            progress = np.clip((ts - inc.start) / inc.duration_ms, 0.0, 1.0)
            fx.confidence_mult = np.where(mask, fx.confidence_mult * (1.0 - _DRIFT_CONFIDENCE * m * progress),
                                          fx.confidence_mult)
            fx.latency_mult = np.where(mask, fx.latency_mult * (1.0 + _DRIFT_LATENCY * m * progress),
                                       fx.latency_mult)
        elif inc.kind == "traffic_drop":
            fx.keep_prob = np.where(mask, fx.keep_prob * (1.0 - m), fx.keep_prob)
        else:  # error_burst; kinds are validated at construction
            fx.error_prob = np.where(mask, np.maximum(fx.error_prob, m), fx.error_prob)
    return fx


def incident_errors(incidents: tuple[Incident, ...], start: int, end: int, dims: dict[str, list[str]]) -> list[str]:
    """Every way ``incidents`` do not fit a scenario spanning ``[start, end)`` with segment values ``dims``."""
    errors = []
    for i, inc in enumerate(incidents):
        if not isinstance(inc, Incident):
            errors.append(f"incidents[{i}]: must be an Incident, got {type(inc).__name__}")
            continue
        where = f"incidents[{i}] ({inc.kind})"
        if inc.end <= start or inc.start >= end:
            errors.append(f"{where}: window [{inc.start}, {inc.end}) lies outside the scenario [{start}, {end})")
        for key, value in (inc.segment or {}).items():
            if key not in dims:
                errors.append(f"{where}: segment key {key!r} unknown; use {', '.join(dims)}")
            elif value not in dims[key]:
                errors.append(f"{where}: segment {key}={value!r} unknown; the scenario has {', '.join(dims[key])}")
    return errors


# Named scenarios: (kind, start and length as fractions of the scenario, magnitude, segment). On the default day
# (00:00 UTC, users at UTC-5) the windows fall in US business hours, and the magnitudes cross the seed plan's
# thresholds: P95 ~650 ms -> ~1.6 s (> 1500 ms kill), acceptance 30% -> 12% (< 12% pause), hallucinations 1% -> 6%
# (> 5% rollback), mobile acceptance 27% -> 11% while desktop stays at 32% (< 14% vs > 17% investigate).
PRESET_INCIDENTS: dict[str, tuple[tuple[str, float, float, float, dict[str, str] | None], ...]] = {
    "clean": (),
    "latency_spike": (("latency_spike", 0.60, 0.15, 1.5, None),),
    "acceptance_decline": (("acceptance_decline", 0.45, 0.40, 0.6, None),),
    "pii_leak": (("pii_leak", 0.62, 0.03, 0.002, None),),
    "hallucination_increase": (("hallucination_increase", 0.55, 0.20, 0.06, None),),
    "cost_runaway": (("cost_runaway", 0.55, 0.20, 4.0, None),),
    "drift": (("drift", 0.30, 0.60, 1.0, None),),
    "traffic_drop": (("traffic_drop", 0.62, 0.05, 0.9, None),),
    "error_burst": (("error_burst", 0.62, 0.04, 0.08, None),),
    "mobile_gap": (("acceptance_decline", 0.25, 0.75, 0.6, {"platform": "mobile"}),),
}


def preset_incidents(name: str, start: int, duration_ms: int) -> tuple[Incident, ...]:
    """The incidents of preset ``name`` placed in a scenario of ``duration_ms`` from ``start``.

    >>> [(i.kind, i.start, i.duration_ms) for i in preset_incidents("traffic_drop", 0, 1_000_000)]
    [('traffic_drop', 620000, 50000)]
    """
    if name not in PRESET_INCIDENTS:
        raise ScenarioError(f"unknown preset {name!r}; use one of {', '.join(PRESET_INCIDENTS)}")
    return tuple(
        Incident(kind, start + round(at * duration_ms), max(1, round(length * duration_ms)), magnitude,
                 dict(segment) if segment else None)
        for kind, at, length, magnitude, segment in PRESET_INCIDENTS[name]
    )


def describe_presets(start: int, duration_ms: int) -> list[str]:
    """One line per preset: its incidents, when they happen as shares of the run, and the times they take in a run
    of ``duration_ms`` from ``start`` (what ``rollguard scenario --help`` lists).

    >>> describe_presets(0, 86_400_000)[1]
    'latency_spike: latency_spike (magnitude 1.5) from 60% to 75% of the run (14:24-18:00 UTC on the default run)'
    """
    lines = []
    for name, incidents in PRESET_INCIDENTS.items():
        parts = []
        for inc, (kind, at, length, magnitude, segment) in zip(preset_incidents(name, start, duration_ms), incidents):
            where = f", {', '.join(f'{k}={v}' for k, v in segment.items())} only" if segment else ""
            when = f"{_clock(inc.start, start)}-{_clock(inc.start + inc.duration_ms, start)}"
            parts.append(f"{kind} (magnitude {magnitude:g}{where}) from {at:.0%} to {at + length:.0%} of the run "
                         f"({when} UTC on the default run)")
        lines.append(f"{name}: " + ("; ".join(parts) or "no incident"))
    return lines


def _clock(ms: int, start: int) -> str:
    """``HH:MM`` of ``ms``, with ``(+Nd)`` when it falls N days after the day ``start`` is in."""
    minutes = (ms - (start - start % 86_400_000)) // 60_000
    return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}" + (f" (+{minutes // 1440}d)" if minutes >= 1440 else "")
