"""What the engine outputs about producer clocks (``rules.clock`` decides what to hold, apply or reject): the
``ts_outlier`` dead letter of a rejected event, worded against what the event was judged by when it came, and the
``clock-skew`` page — ``clock_skew_page_after`` outliers in an hour of the feature's stream time page
``investigate``, resolved after an hour with fewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rules.clock import approx_duration
from rules.events import Event
from rules.outputs import SEVERITY, iso, stable_id
from rules.policy import HOUR_MS, Outputs
from rules.state import FeatureState

if TYPE_CHECKING:  # the engine imports this module
    from rules.engine import EngineConfig, EngineStats

__all__ = ["quarantine", "skew_count", "skew_hour", "skew_page"]


def quarantine(config: EngineConfig, stats: EngineStats, out: Outputs, feature: str, fs: FeatureState, ev: Event,
               why: str, judged: tuple | None = None) -> None:  # fmt: skip
    """A ``ts_outlier`` dead letter: how far off the event's time was, relative to what, and why. ``judged`` is
    what the event was compared with when it came: (time, "stream" | "feature" | "first"). Its own stream's
    time when it has one — one partition's order — so the dead letter reads the same live and in replay."""
    skew = config.max_clock_skew_ms or 0
    ref, kind = judged if judged is not None else (fs.src_max.get(ev.type), "stream")
    if ref is None:
        ref, kind = fs.max_ts, "feature"
    where = {"stream": f"the {ev.type} stream of feature {feature!r}", "feature": f"feature {feature!r}",
             "first": f"the first events of feature {feature!r}"}[kind]  # fmt: skip
    direction = "ahead" if ref is None or ev.ts > ref else "behind"
    if ref is None:
        off = None
        head = f"event time {iso(ev.ts)} disagrees with the first events of {where}"
    else:
        off = ev.ts - ref
        rel = "ahead of" if direction == "ahead" else "behind"
        head = f"event time {iso(ev.ts)} is {approx_duration(off)} {rel} {where} (at {iso(ref)})"
    tail = {
        "behind": f"more than the maximum clock skew of {approx_duration(skew)} behind it",
        "contradicted": f"held, then contradicted by {config.clock_quorum} or more messages at the "
                        "stream's own time",
        "unconfirmed": f"held, and the input ended before {config.clock_quorum} messages confirmed it",
        "hold_full": "held events of this stream at their limit",
    }[why]  # fmt: skip
    stats.outliers[direction] += 1
    fs.outliers[direction] = fs.outliers.get(direction, 0) + 1
    out.dead_letters.append({
        "reason": "ts_outlier",
        "detail": f"{head}: {tail}",
        "source": ev.origin,
        "payload": ev.payload(),
        "outlier": {"stream": ev.type, "direction": direction, "offset_ms": off,
                    "stream_time": None if ref is None else iso(ref), "max_clock_skew_ms": skew, "why": why},
    })  # fmt: skip
    skew_count(config, out, feature, fs, ev, off)


def skew_count(config: EngineConfig, out: Outputs, feature: str, fs: FeatureState, ev: Event, off: int | None) -> None:
    """Outliers per hour of the feature's stream time; ``clock_skew_page_after`` of them in one hour page
    ``investigate`` ("producer clock skew"), resolved after an hour of stream time with fewer."""
    limit = config.clock_skew_page_after
    if limit <= 0:
        return
    hour = (fs.max_ts if fs.max_ts is not None else 0) // HOUR_MS
    if fs.skew is not None and fs.skew[0] != hour:
        skew_hour(config, out, feature, fs, hour)
    if fs.skew is None:
        fs.skew = [hour, 0, None, 0]
    sk = fs.skew
    sk[1] += 1
    if off is not None and abs(off) > abs(sk[3]):
        sk[3] = off
    if sk[1] >= limit and sk[2] is None:
        sk[2] = hour
        out.pages.append(skew_page(config, "trigger", feature, fs, ev.phase, hour))


def skew_hour(config: EngineConfig, out: Outputs, feature: str, fs: FeatureState, hour: int) -> None:
    """The feature's stream time entered ``hour``. A paged run ends (resolve) once an hour closes with fewer
    outliers than the limit, or hours with none were skipped."""
    sk = fs.skew  # [hour, outliers in it, hour the page went out (None: not paged), worst offset]
    if sk[2] is not None and (sk[1] < config.clock_skew_page_after or hour > sk[0] + 1):
        out.pages.append(skew_page(config, "resolve", feature, fs, None, sk[2]))
        sk[2] = None
    if sk[2] is None:
        fs.skew = None  # nothing to remember: the next outlier starts a new count
    else:
        sk[0], sk[1], sk[3] = hour, 0, 0


def skew_page(config: EngineConfig, action: str, feature: str, fs: FeatureState, phase: str | None, since: int) -> dict:
    sk = fs.skew
    n, worst = sk[1], sk[3]
    summary = (
        f"Producer clock skew on feature {feature}: {n} events quarantined (ts_outlier) in the hour from "
        f"{iso(since * HOUR_MS)}, up to {approx_duration(worst)} {'ahead of' if worst >= 0 else 'behind'} "
        "their stream. They are in the dead-letter topic and decided nothing; check the producers' clocks "
        "(NTP) and time zones." if action == "trigger" else
        f"Producer clock skew on feature {feature}: an hour of stream time with fewer than "
        f"{config.clock_skew_page_after} outliers"
    )  # fmt: skip
    return {
        "event_action": action,
        "dedup_key": "rollguard-clock-skew-" + stable_id("clock_skew", feature, since),
        "payload": {
            "summary": summary,
            "source": "rollguard",
            "severity": SEVERITY["investigate"],
            "timestamp": iso(max(fs.max_ts or 0, since * HOUR_MS)),
            "component": feature,
            "group": phase or "*",
            "class": "clock-skew",
            "custom_details": {
                "outliers_this_hour": n,
                "worst_offset_ms": worst,
                "outliers_total": dict(sorted(fs.outliers.items())),
                "max_clock_skew_ms": config.max_clock_skew_ms,
            },
        },
    }
