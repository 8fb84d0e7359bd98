"""Engine state: everything decisions depend on, per feature, plus the global kill breaker.

The state is plain data with a JSON-able ``to_state()`` (detector state travels as signed bytes, base64), so the
live pipeline can keep it in Redis and a worker can resume exactly where another stopped.
"""

from __future__ import annotations

import base64
from typing import Any

from detectors import DriftDetector
from rules.lifecycle import Instance
from rules.windows import SeriesBuckets, SeriesKey

__all__ = ["FeatureState", "BreakerState", "InstanceKey"]

InstanceKey = tuple[str, str, str, tuple[str, ...]]  # (ruleset, rule id, phase, group values)


class FeatureState:
    """State of one feature: watermark, dedup ids, windows, rule instances, detectors and latches."""

    __slots__ = ("max_ts", "seen", "stores", "next_eval", "instances", "detectors", "drift_flag", "latches", "phases")

    def __init__(self) -> None:
        self.max_ts: int | None = None
        self.seen: dict[str, int] = {}  # event_id -> ts, kept until the watermark passes ts
        self.stores: dict[int, dict[SeriesKey, SeriesBuckets]] = {}
        self.next_eval: dict[int, int] = {}  # every_ms -> next instant to evaluate
        self.instances: dict[InstanceKey, Instance] = {}
        self.detectors: dict[InstanceKey, DriftDetector] = {}
        self.drift_flag: dict[InstanceKey, int] = {}  # drift flagged since the last evaluation: count of flags
        self.latches: dict[str, str] = {}  # phase -> "pause" | "kill"
        self.phases: set[str] = set()

    def watermark(self, lateness_ms: int) -> int | None:
        return None if self.max_ts is None else self.max_ts - lateness_ms

    def to_state(self, detector_key: bytes) -> dict[str, Any]:
        def ik(k: InstanceKey) -> str:
            return "\x1f".join((k[0], k[1], k[2], *k[3]))

        return {
            "max_ts": self.max_ts,
            "seen": dict(sorted(self.seen.items())),
            "stores": {
                str(sid): {"\x1f".join((k[0], *k[1])): s.to_state() for k, s in sorted(series.items())}
                for sid, series in sorted(self.stores.items())
            },
            "next_eval": {str(e): t for e, t in sorted(self.next_eval.items())},
            "instances": {ik(k): i.to_state() for k, i in sorted(self.instances.items())},
            "detectors": {
                ik(k): base64.b64encode(d.to_state(detector_key)).decode() for k, d in sorted(self.detectors.items())
            },
            "drift_flag": {ik(k): v for k, v in sorted(self.drift_flag.items())},
            "latches": dict(sorted(self.latches.items())),
            "phases": sorted(self.phases),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], detector_key: bytes) -> FeatureState:
        def ik(s: str) -> InstanceKey:
            p = s.split("\x1f")
            return (p[0], p[1], p[2], tuple(p[3:]))

        def sk(s: str) -> SeriesKey:
            p = s.split("\x1f")
            return (p[0], tuple(p[1:]))

        fs = cls()
        fs.max_ts = d["max_ts"]
        fs.seen = dict(d["seen"])
        fs.stores = {
            int(sid): {sk(k): SeriesBuckets.from_state(v) for k, v in series.items()}
            for sid, series in d["stores"].items()
        }
        fs.next_eval = {int(e): t for e, t in d["next_eval"].items()}
        fs.instances = {ik(k): Instance.from_state(v) for k, v in d["instances"].items()}
        fs.detectors = {
            ik(k): DriftDetector.from_state(base64.b64decode(v), detector_key) for k, v in d["detectors"].items()
        }
        fs.drift_flag = {ik(k): v for k, v in d["drift_flag"].items()}
        fs.latches = dict(d["latches"])
        fs.phases = set(d["phases"])
        return fs


class BreakerState:
    """Kill commands issued per event-time hour across all features, and the hours already paged about."""

    __slots__ = ("kills", "paged")

    def __init__(self) -> None:
        self.kills: dict[int, int] = {}  # hour index (ts // 3600000) -> kill commands issued
        self.paged: set[int] = set()

    def to_state(self) -> dict[str, Any]:
        return {"kills": {str(h): n for h, n in sorted(self.kills.items())}, "paged": sorted(self.paged)}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> BreakerState:
        b = cls()
        b.kills = {int(h): n for h, n in d["kills"].items()}
        b.paged = set(d["paged"])
        return b
