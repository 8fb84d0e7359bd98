"""Seeded example scenarios: a realistic, streaming source of CONTRACT §1 events for demos, golden tests, benchmarks.

The default scenario is the email reply suggestion feature of a B2B SaaS app in closed beta: a diurnal, Poisson
stream of interactions (60% desktop, 40% mobile; P95 latency ~650 ms; ~0.7% errors and timeouts; ~$0.002 a
request) and the feedback a real product would emit later at its own event time: the suggestion outcome seconds
later (~30% accepted or edited), thumbs minutes later, expert reviews on ~2% of outputs hours later, support tickets
and csat / nps surveys (drawn in :mod:`streams.offline.scenario_draws`). Incidents
(:mod:`streams.offline.scenario_incidents`) bend those distributions inside a window.

Events come out as a generator, sorted by arrival time (event time plus a transport delay of at most
``max_arrival_jitter_ms``), so a little out-of-order arrival exists but no event is ever more than that older than
an event before it. Same scenario, same bytes.

>>> events = list(generate(Scenario(duration_ms=600_000, seed=1)))
>>> events[0]["type"], events[0]["feature"], events[0]["segment"]["platform"] in ("desktop", "mobile")
('interaction', 'email-reply', True)
>>> events == list(generate(Scenario(duration_ms=600_000, seed=1)))
True
"""

from __future__ import annotations

import dataclasses
import gzip
import heapq
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from rules.durations import DurationError, parse_duration
from streams.offline.scenario_incidents import (
    INCIDENT_KINDS,
    PRESET_INCIDENTS,
    Incident,
    ScenarioError,
    incident_errors,
    preset_incidents,
)
from streams.offline.scenario_draws import _Emitter, _Population

__all__ = [
    "Incident",
    "INCIDENT_KINDS",
    "Platform",
    "Scenario",
    "ScenarioError",
    "PRESETS",
    "generate",
    "write_jsonl",
    "scenario_from_args",
]

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FLAG = re.compile(r"[a-z0-9_]{1,64}")
_DAY_MS = 86_400_000
_BLOCK_MS = 60_000  # interactions are drawn a minute at a time: rates change slowly, numpy wants batches


@dataclass(frozen=True)
class Platform:
    """A client platform: share of interactions, latency factor against the median, acceptance probability."""

    name: str
    weight: float
    latency_factor: float = 1.0
    acceptance: float = 0.30


@dataclass(frozen=True)
class Scenario:
    """Everything that shapes a generated event stream; validated on construction (:class:`ScenarioError`).

    Rates are per interaction unless said otherwise. ``mean_rate_per_s`` is the weekday average; the diurnal curve
    (local business hours at ``utc_offset_hours``, night ~15% of the peak) and ``weekend_factor`` shape it.
    Feedback due after ``start + duration_ms`` is not emitted.
    """

    feature: str = "email-reply"
    phase: str = "closed_beta"
    start: int = 1_793_577_600_000  # 2026-11-02T00:00:00Z, a Monday
    duration_ms: int = _DAY_MS
    mean_rate_per_s: float = 5.0
    seed: int = 7
    incidents: tuple[Incident, ...] = ()
    # who: a Zipf-ish population; region and plan belong to the user's account, platform to the interaction
    users: int = 15_000
    user_skew: float = 1.0
    platforms: tuple[Platform, ...] = (Platform("desktop", 0.6, 1.0, 0.32), Platform("mobile", 0.4, 1.15, 0.27))
    regions: tuple[tuple[str, float], ...] = (("us-east", 0.6), ("us-west", 0.4))
    plans: tuple[tuple[str, float], ...] = (("enterprise", 0.7), ("growth", 0.3))
    model_version: str = "reply-gen-2026-10"
    prompt_version: str = "p3"
    # a treatment arm (compare rules): this share of interactions, and their feedback, carry the treatment's model
    # version and variant (the others the control variant); its suggestions are accepted `treatment_accept_delta`
    # more (negative: less), its calls are `treatment_latency_mult` times as slow. Drawn from a random stream of
    # their own: with no treatment (share 0) the scenario is the same bytes as without these settings.
    treatment_share: float = 0.0
    treatment_model_version: str = "reply-gen-2026-12"
    treatment_variant: str = "model-upgrade"
    control_variant: str = "control"
    treatment_accept_delta: float = 0.0
    treatment_latency_mult: float = 1.0
    utc_offset_hours: float = -5.0
    weekend_factor: float = 0.3
    # interactions
    latency_median_ms: float = 300.0
    latency_sigma: float = 0.45
    timeout_ms: int = 3_000
    error_prob: float = 0.005
    timeout_prob: float = 0.002
    refusal_prob: float = 0.005
    tokens_in_median: float = 950.0
    tokens_out_median: float = 240.0
    usd_per_1k_tokens_in: float = 0.001
    usd_per_1k_tokens_out: float = 0.004
    hallucination_prob: float = 0.01
    flag_probs: tuple[tuple[str, float], ...] = (
        ("pii_leak", 0.0), ("confidential", 0.0), ("prompt_injection", 5e-5), ("toxicity", 1e-5),
        ("format_error", 1e-3),
    )
    # feedback: probabilities per interaction, delays are medians of lognormal delays
    suggestion_feedback_prob: float = 0.97
    edit_share: float = 0.4
    suggestion_delay_ms: int = 9_000
    thumbs_prob: float = 0.08
    thumbs_delay_ms: int = 180_000
    review_prob: float = 0.02
    review_delay_ms: int = 7_200_000
    ticket_prob: float = 8e-5
    ticket_delay_ms: int = 1_800_000
    survey_prob: float = 0.003
    survey_delay_ms: int = 60_000
    # how often a rejected suggestion leaves its user unhappy in the survey (NPS ~ -30 instead of ~ +46): at 0.4 the
    # feature's NPS is ~25, under the seed's bar of 40; a feature users like is nearer 0
    unhappy_after_rejection_prob: float = 0.4
    # transport
    max_arrival_jitter_ms: int = 5_000
    duplicate_prob: float = 0.0
    ts_format: str = "ms"

    def __post_init__(self) -> None:
        errors = _scenario_errors(self)
        if errors:
            raise ScenarioError("invalid scenario:\n  " + "\n  ".join(errors))

    @property
    def end(self) -> int:
        """First millisecond after the scenario."""
        return self.start + self.duration_ms


def _scenario_errors(s: Scenario) -> list[str]:
    errors = []
    for f in dataclasses.fields(s):
        value, name = getattr(s, f.name), f.name
        if f.type == "int" and (type(value) is not int or value < 0):
            errors.append(f"{name}: must be an integer >= 0, got {value!r}")
        elif name == "utc_offset_hours" and not (type(value) in (int, float) and -14 <= value <= 14):
            errors.append(f"{name}: must be a number of hours in [-14, 14], got {value!r}")
        elif name == "treatment_accept_delta" and not (type(value) in (int, float) and -1 <= value <= 1):
            errors.append(f"{name}: must be a number in [-1, 1] (a change of acceptance probability), got {value!r}")
        elif f.type == "float" and name not in ("utc_offset_hours", "treatment_accept_delta") and (
                type(value) not in (int, float) or not 0 <= value < math.inf):
            errors.append(f"{name}: must be a finite number >= 0, got {value!r}")
        elif f.type == "float" and value > 1 and (
                name.endswith("_prob") or name in ("edit_share", "weekend_factor", "treatment_share")):
            errors.append(f"{name}: must be a probability in [0, 1], got {value!r}")
        elif f.type == "str" and not (isinstance(value, str) and _NAME.fullmatch(value)):
            errors.append(f"{name}: must match [A-Za-z0-9._-]{{1,64}}, got {value!r}")
    if errors:
        return errors
    if s.duration_ms == 0 or s.users == 0 or s.timeout_ms == 0:
        errors.append("duration_ms, users and timeout_ms must be > 0")
    if s.max_arrival_jitter_ms > 20_000:
        errors.append("max_arrival_jitter_ms: must be <= 20000 (consumers allow 30 s of lateness)")
    if s.error_prob + s.timeout_prob + s.refusal_prob > 1.0:
        errors.append("error_prob + timeout_prob + refusal_prob must be <= 1")
    if len(f"{s.feature}-{s.phase}-{s.seed}-") > 110:
        errors.append("feature, phase and seed together must leave event ids within 128 characters")
    if s.ts_format not in ("ms", "rfc3339"):
        errors.append(f"ts_format: use 'ms' or 'rfc3339', got {s.ts_format!r}")
    dims = {"platform": [p.name for p in s.platforms], "region": [r for r, _ in s.regions],
            "plan": [p for p, _ in s.plans]}
    for dim, pairs in (("platform", [(p.name, p.weight) for p in s.platforms]), ("region", s.regions),
                       ("plan", s.plans)):
        names = [n for n, _ in pairs]
        if not pairs or len(set(names)) != len(names) or not all(isinstance(n, str) and _NAME.fullmatch(n)
                                                                 for n in names):
            errors.append(f"{dim}: need at least one value, unique names matching [A-Za-z0-9._-]{{1,64}}")
        if not all(w >= 0 for _, w in pairs) or not sum(w for _, w in pairs) > 0:
            errors.append(f"{dim}: weights must be >= 0 with a positive sum")
    for p in s.platforms:
        if not (0.0 <= p.acceptance <= 1.0 and p.latency_factor > 0):
            errors.append(f"platform {p.name!r}: acceptance in [0, 1] and latency_factor > 0 required")
    for name, prob in s.flag_probs:
        if not (isinstance(name, str) and _FLAG.fullmatch(name) and 0.0 <= prob <= 1.0):
            errors.append(f"flag_probs: {name!r} needs a name matching [a-z0-9_]{{1,64}} and a probability")
    errors.extend(incident_errors(s.incidents, s.start, s.end, dims))
    return errors


def _diurnal_profile(weekend_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative rate per minute of a local weekday and weekend day; the weekday mean is 1.

    A sinusoid plus business hours over a night floor of ~15% of the peak; weekends scale the daytime part only,
    so Sunday night runs into Monday morning without a step.
    """
    hour = np.arange(1440) / 60.0
    wave = 0.5 * (1.0 - np.cos(2 * np.pi * (hour - 3.5) / 24.0))  # low at 03:30, high at 15:30
    office = 1.0 / (1.0 + np.exp(-2.0 * (hour - 8.5))) / (1.0 + np.exp(2.0 * (hour - 17.5)))
    day = 0.85 * (0.45 * wave + 0.55 * office)
    norm = (0.15 + day).mean()
    return (0.15 + day) / norm, (0.15 + weekend_factor * day) / norm


def generate(scenario: Scenario) -> Iterator[dict[str, Any]]:
    """Yield the scenario's events (dicts, CONTRACT §1) in arrival order; lazily, a minute of event time at a time."""
    s = scenario
    pop = _Population(s, np.random.default_rng([s.seed, 0]))
    rng = np.random.default_rng([s.seed, 1])
    dup_rng = np.random.default_rng([s.seed, 2])  # separate stream: duplicates must not shift anything else
    weekday, weekend = _diurnal_profile(s.weekend_factor)
    offset_ms = int(s.utc_offset_hours * 3_600_000)
    emitter = _Emitter(s, pop, np.random.default_rng([s.seed, 3]))  # its own stream: the treatment arm
    pending: list[tuple[int, int, dict[str, Any]]] = []  # heap of (arrival ms, seq, event) due in later blocks
    seq = 0  # tie-breaker in the heap: equal arrival times never compare the dicts
    to_rfc3339 = s.ts_format == "rfc3339"
    for block_start in range(s.start, s.end, _BLOCK_MS):
        block_end = min(block_start + _BLOCK_MS, s.end)
        local = (block_start + block_end) // 2 + offset_ms
        profile = weekend if (local // _DAY_MS + 3) % 7 >= 5 else weekday  # 1970-01-01 was a Thursday
        rate = s.mean_rate_per_s * profile[(local // 60_000) % 1440]
        n = int(rng.poisson(rate * (block_end - block_start) / 1000.0))
        ts = block_start + np.sort(rng.integers(0, block_end - block_start, n))
        events, arrival = emitter.block(ts, rng)
        if s.duplicate_prob > 0.0 and events:
            # at-least-once producers resend: the same event again, arriving within the jitter bound
            resend = np.nonzero(dup_rng.random(len(events)) < s.duplicate_prob)[0].tolist()
            copies = [orjson.loads(orjson.dumps(events[i])) for i in resend]
            resent_at = [e["ts"] for e in copies] + dup_rng.integers(0, s.max_arrival_jitter_ms + 1, len(copies))
            events, arrival = events + copies, np.concatenate([arrival, resent_at])
        # everything arriving before block_end is known now (later blocks only add later event times); the rest
        # waits in the heap. Stable sorts keep creation order on equal arrival times: same seed, same bytes.
        order = np.argsort(arrival, kind="stable")
        arrival = arrival[order]
        due = int(np.searchsorted(arrival, block_end))
        ready = [events[i] for i in order[:due].tolist()]
        for at, i in zip(arrival[due:].tolist(), order[due:].tolist()):
            seq += 1
            heapq.heappush(pending, (at, seq, events[i]))
        if pending and pending[0][0] < block_end:
            earlier = []
            while pending and pending[0][0] < block_end:
                earlier.append(heapq.heappop(pending))
            merged = np.argsort(np.concatenate([[at for at, _, _ in earlier], arrival[:due]]), kind="stable")
            both = [event for _, _, event in earlier] + ready
            ready = [both[i] for i in merged.tolist()]
        if to_rfc3339:
            for event in ready:
                event["ts"] = _rfc3339(event["ts"])
        yield from ready
    while pending:
        event = heapq.heappop(pending)[2]
        if to_rfc3339:
            event["ts"] = _rfc3339(event["ts"])
        yield event


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_jsonl(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write events as JSON Lines (gzip if ``path`` ends with ``.gz``; ``-`` is stdout); return how many.

    The gzip header carries no name and no time, so the same events always give the same bytes.
    """
    target = str(path)
    if target == "-":
        return _write(events, sys.stdout.buffer)
    with open(target, "wb") as raw:
        if not target.endswith(".gz"):
            return _write(events, raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            return _write(events, gz)


def _write(events: Iterable[dict[str, Any]], stream: Any) -> int:
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    count, buffer = 0, []
    for event in events:
        buffer.append(dumps(event, option=option))
        if len(buffer) == 8192:
            stream.write(b"".join(buffer))
            count += len(buffer)
            buffer.clear()
    stream.write(b"".join(buffer))
    stream.flush()
    return count + len(buffer)


def _preset(name: str, **overrides: Any) -> Scenario:
    """Scenario ``name`` with ``overrides``; its incidents are placed relative to the final start and duration."""
    scenario = Scenario(**overrides)
    if "incidents" in overrides:
        return scenario
    return dataclasses.replace(scenario, incidents=preset_incidents(name, scenario.start, scenario.duration_ms))


PRESETS: dict[str, Callable[..., Scenario]] = {name: partial(_preset, name) for name in PRESET_INCIDENTS}


def scenario_from_args(preset: str, **overrides: Any) -> Scenario:
    """Preset ``preset`` with command-line overrides: text is read as the field's type.

    ``start`` also takes RFC 3339 (``2026-11-02T00:00:00Z``), ``*_ms`` fields also take durations (``90s``, ``2h``).

    >>> s = scenario_from_args("latency_spike", duration_ms="2h", seed="3", mean_rate_per_s="1.5")
    >>> s.duration_ms, s.seed, s.mean_rate_per_s, s.incidents[0].kind
    (7200000, 3, 1.5, 'latency_spike')
    """
    if preset not in PRESETS:
        raise ScenarioError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    fields = {f.name: f for f in dataclasses.fields(Scenario)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ScenarioError(f"unknown scenario setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {}
    for name, value in overrides.items():
        kind = type(fields[name].default)
        if not isinstance(value, str) or kind is str:
            values[name] = value
        elif kind not in (int, float):
            raise ScenarioError(f"{name}: cannot be set from text; build a Scenario in Python instead")
        else:
            values[name] = _from_text(name, value.strip(), kind)
    try:
        return PRESETS[preset](**values)
    except TypeError as exc:  # a wrongly typed value that slipped past the conversion above
        raise ScenarioError(f"preset {preset!r}: {exc}") from None


def _from_text(name: str, text: str, kind: type) -> int | float:
    try:
        if name == "start" and not text.isdigit():
            ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if ts.tzinfo is None:
                raise ValueError
            return int(ts.timestamp() * 1000)
        if name.endswith("_ms") and not text.isdigit():
            return parse_duration(text)
        return kind(text)
    except (ValueError, DurationError):
        hint = ("epoch ms or RFC 3339 with an offset" if name == "start"
                else "an integer or a duration such as 90s, 5m, 2h, 1d" if name.endswith("_ms")
                else {int: "an integer", float: "a number"}[kind])
        raise ScenarioError(f"{name}: cannot read {text!r}; expected {hint}") from None
