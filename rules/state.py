"""Engine state: everything decisions depend on, per feature, plus the global kill breaker.

The state is plain data with a JSON-able ``to_state()`` (detector state travels as signed bytes, base64), so the
live pipeline can keep it in Redis and a worker can resume exactly where another stopped. For that, the state is
split into a small JSON *core* and one field per window bucket in the versioned binary format of
``rules.aggregate.Bucket.to_bytes`` (the buckets are nearly all of the bytes); buckets stored as JSON by earlier
versions are still read.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from detectors import DriftDetector
from rules.clock import StreamClock
from rules.lifecycle import Instance
from rules.windows import SeriesBuckets, SeriesKey

__all__ = ["FeatureState", "BreakerState", "InstanceKey"]

InstanceKey = tuple[str, str, str, tuple[str, ...]]  # (ruleset, rule id, phase, group values)
US = "\x1f"  # separates segment values inside one persisted field name


def bucket_field(store_name: str, key: SeriesKey, start: int) -> str:
    """The persisted field name of a bucket: its store's name (``Plan.store_names``), phase, start and segment
    values, joined by ``US``.

    >>> bucket_field("60000:platform", ("beta", ("ios",)), 120000).split(US)
    ['60000:platform', 'beta', '120000', 'ios']
    """
    return US.join((store_name, key[0], str(start), *key[1]))


def seen_field(version: int, max_ts: int) -> str:
    """The name of the field holding the dedup ids that the state write ``version`` added, the latest at
    ``max_ts``.

    >>> seen_field(12, 1764000000000), seen_field_order(seen_field(12, 1764000000000))
    ('12:1764000000000', (12, 1764000000000))
    """
    return f"{version}:{max_ts}"


def seen_field_order(name: str) -> tuple[int, int]:
    """(version, max_ts) of a dedup-id field's name."""
    version, max_ts = name.split(":")
    return int(version), int(max_ts)


class FeatureState:
    """State of one feature: watermark, dedup ids, windows, rule instances, detectors and latches."""

    __slots__ = ("max_ts", "src_max", "src_first", "seen", "stores", "next_eval", "instances", "detectors",
                 "drift_pending", "drift_last", "latches", "phases", "chain", "command_seq", "clocks", "outliers",
                 "skew", "applied_min", "control_ts", "starving", "phase_first", "promotions", "signoffs", "windows",
                 "touched", "dropped", "seen_new", "seen_pruned", "due")  # fmt: skip

    def __init__(self) -> None:
        self.max_ts: int | None = None  # highest event time of any source
        self.src_max: dict[str, int] = {}  # source ("interaction" | "feedback") -> highest event time seen
        self.src_first: dict[str, int] = {}  # source -> time of its first applied event (clock origin)
        self.seen: dict[str, int] = {}  # event_id -> ts, kept until the watermark passes ts
        self.stores: dict[int, dict[SeriesKey, SeriesBuckets]] = {}
        self.next_eval: dict[int, int] = {}  # every_ms -> next instant to evaluate
        self.instances: dict[InstanceKey, Instance] = {}
        self.detectors: dict[InstanceKey, DriftDetector] = {}
        # detector updates not yet evaluated, per bucket of the rule's `every` their event time falls in:
        # [flags, estimation, n_updates] after the latest update; an instant t takes the buckets starting before t,
        # so what it sees does not depend on how two sources interleave
        self.drift_pending: dict[InstanceKey, dict[int, list]] = {}
        self.drift_last: dict[InstanceKey, list] = {}  # [estimation, n_updates] of the last evaluated update
        self.latches: dict[str, str] = {}  # phase -> "pause" | "kill"
        self.phases: set[str] = set()
        # the audit trail (rules.seal): hash of the last decision / command of this feature, and its command counter
        self.chain: dict[str, str] = {}  # "decisions" | "commands" -> hash
        self.command_seq = 0
        # producer clocks (rules.clock): events held per source, quarantined counts, the clock-skew page's hour
        self.clocks: dict[str, StreamClock] = {}
        self.outliers: dict[str, int] = {}  # "ahead" | "behind" -> ts_outlier dead letters
        self.skew: list | None = None  # [hour, outliers in it, hour paged or None, worst offset ms]
        self.applied_min: int | None = None  # in memory: earliest event time applied since the shell last looked
        self.control_ts: int | None = None  # time of the last signed control accepted (rules.control_auth)
        # rules insufficient while their window holds data (rules.starvation): instance key -> [since, flagged]
        self.starving: dict[InstanceKey, list] = {}
        # promotion verdicts (rules.promotion), only for phases a rule set's promotion block names: the phase's first
        # event time, the last verdict per (rule set, phase), and the sign-offs per phase and role
        self.phase_first: dict[str, int] = {}
        self.promotions: dict[tuple[str, str], dict] = {}
        self.signoffs: dict[str, dict[str, dict]] = {}
        # transient, never persisted: the running windows (rules.windows.RunningWindows) the engine keeps to move
        # windows along instead of merging them afresh; None after a load, rebuilt from the buckets on first use
        self.windows = None
        # transient, never persisted: the buckets written to — (store id, series key, start) — and dropped by expiry
        # since the live shell last wrote this feature (``track_changes``, ``bucket_changes``); None: not recorded
        self.touched: set[tuple] | None = None
        self.dropped: list[tuple] | None = None
        # transient: (next_eval, a lower bound of its next instant), for the engine's per-event "is an instant due?"
        # (min over a few clocks per event was ~7% of the light pack). Valid for that dict only: its values only
        # grow, and a reload or a load replaces the dict
        self.due: tuple[dict, int] | None = None
        # transient, likewise: dedup ids added since that write, and whether expiry pruned ``seen`` since (then the
        # shell rewrites the stored ids whole; ``seen_changes``)
        self.seen_new: list[str] | None = None
        self.seen_pruned = False

    def to_state(self, detector_key: bytes, with_stores: bool = True, with_seen: bool = True) -> dict[str, Any]:
        def ik(k: InstanceKey) -> str:
            return "\x1f".join((k[0], k[1], k[2], *k[3]))

        return {
            "max_ts": self.max_ts,
            "src_max": dict(sorted(self.src_max.items())),
            "src_first": dict(sorted(self.src_first.items())),
            **({"seen": dict(sorted(self.seen.items()))} if with_seen else {}),
            "stores": {
                str(sid): {"\x1f".join((k[0], *k[1])): s.to_state() for k, s in sorted(series.items())}
                for sid, series in sorted(self.stores.items())
            }
            if with_stores
            else {},
            "next_eval": {str(e): t for e, t in sorted(self.next_eval.items())},
            "instances": {ik(k): i.to_state() for k, i in sorted(self.instances.items())},
            "detectors": {
                ik(k): base64.b64encode(d.to_state(detector_key)).decode() for k, d in sorted(self.detectors.items())
            },
            "drift_pending": {
                ik(k): {str(b): x for b, x in sorted(v.items())} for k, v in sorted(self.drift_pending.items()) if v
            },
            "drift_last": {ik(k): v for k, v in sorted(self.drift_last.items())},
            "latches": dict(sorted(self.latches.items())),
            "phases": sorted(self.phases),
            "chain": dict(sorted(self.chain.items())),
            "command_seq": self.command_seq,
            "clocks": {src: c.to_state() for src, c in sorted(self.clocks.items()) if c},
            "outliers": dict(sorted(self.outliers.items())),
            "skew": self.skew,
            # only once a signed control was accepted: states of unsigned deployments are unchanged
            **({"control_ts": self.control_ts} if self.control_ts is not None else {}),
            # only while a rule is starved: states without one are unchanged
            **({"starving": {ik(k): v for k, v in sorted(self.starving.items())}} if self.starving else {}),
            # only with a promotion block: states without one are unchanged
            **({"phase_first": dict(sorted(self.phase_first.items()))} if self.phase_first else {}),
            **({"promotions": {US.join(k): v for k, v in sorted(self.promotions.items())}} if self.promotions else {}),
            **({"signoffs": {p: dict(sorted(r.items())) for p, r in sorted(self.signoffs.items())}}
               if self.signoffs else {}),
        }

    # --- split form for incremental persistence: a small "core" plus one entry per window bucket --------------

    def core_state(self, detector_key: bytes, lateness_ms: int, with_seen: bool = True) -> dict[str, Any]:
        """Everything but the window buckets (those persist one by one, see ``bucket_fields``). Dedup ids of events
        older than every source's late bound (``seen_floor``) are left out: any event that old is late before it is
        looked up. Without ``with_seen`` the ids are left out altogether (``seen`` kept, empty, so that a reader of
        the format before still loads it): the live worker stores them in fields of their own (``seen_changes``)."""
        d = self.to_state(detector_key, with_stores=False, with_seen=False)
        floor = self.seen_floor(lateness_ms)
        # in the order the ids came (deterministic: the input's order), not sorted
        d["seen"] = {} if not with_seen else {i: ts for i, ts in self.seen.items() if floor is None or ts >= floor}
        if not with_seen and floor is not None:
            d["seen_floor"] = floor  # the id fields may hold older ids: from_parts leaves them out
        return d

    def seen_floor(self, lateness_ms: int) -> int | None:
        """The event time below which dedup ids need not persist: an event older than every source's late bound is
        late before its id is looked up. None while no source was seen."""
        return min(self.src_max.values()) - lateness_ms if self.src_max else None

    def seen_changes(self, lateness_ms: int) -> tuple[list[list], bool]:
        """``(ids, whole)``: the dedup ids to store as ``[event_id, ts]`` pairs, in the order they came, those at or
        above :meth:`seen_floor`; ``whole`` when they are every id held (nothing recorded since
        :meth:`track_changes`, or expiry pruned ``seen`` since: the stored ids are then replaced), else only those
        added since (the stored ones are kept, and dropped once all of a field's ids are below the floor). Either
        way, the ids stored afterwards, above the floor, are exactly those held: a write costs the ids added, not
        every id within the allowed lateness (at 1,000 events/s and 30 s, 30,000 ids per batch)."""
        floor = self.seen_floor(lateness_ms)
        seen = self.seen
        if self.seen_new is None or self.seen_pruned:
            return [[i, ts] for i, ts in seen.items() if floor is None or ts >= floor], True
        pairs = []
        for i in self.seen_new:
            ts = seen.get(i)
            if ts is not None and (floor is None or ts >= floor):
                pairs.append([i, ts])
        return pairs, False

    def bucket_fields(self, plan: Any, since: int | None) -> tuple[dict[str, bytes], set[str]]:
        """``(changed, present)``: the binary state (``Bucket.to_bytes``) of every bucket that can hold an event at
        or after ``since`` (all when None), and the field names of every bucket held. A field is the store's name
        (its ``every`` and segment keys, stable across rule reloads; ``plan`` is a ``rules.plan.Plan``), phase,
        bucket start and segment values, joined by ``US``."""
        changed: dict[str, bytes] = {}
        present: set[str] = set()
        names = plan.store_names
        for sid, series in self.stores.items():
            sk = names[sid]
            low = None if since is None else since - plan.store_by_id[sid].every_ms
            for key, s in series.items():
                for start, b in s.buckets.items():
                    f = bucket_field(sk, key, start)
                    present.add(f)
                    if low is None or start > low:
                        changed[f] = b.to_bytes()
        return changed, present

    def track_changes(self) -> None:
        """Start (or restart) recording the buckets written to and dropped, for :meth:`bucket_changes`, and the
        dedup ids added, for :meth:`seen_changes`."""
        self.touched = set()
        self.dropped = []
        self.seen_new = []
        self.seen_pruned = False

    def bucket_changes(self, plan: Any) -> tuple[dict[str, bytes], set[str]]:
        """``(changed, gone)`` since :meth:`track_changes`: the binary state of every bucket written to that still
        exists, and the field names of the buckets dropped since that do not exist now; field names as in
        :meth:`bucket_fields`. With the fields stored at ``track_changes`` time, the stored fields updated by these
        are the ones ``bucket_fields`` would give now, at a cost proportional to what changed rather than to every
        bucket held (a feature in steady state holds thousands: ~1-2 ms per write, per feature)."""
        names = plan.store_names
        changed: dict[str, bytes] = {}
        for sid, key, start in self.touched or ():
            b = self.stores.get(sid, {}).get(key)
            b = None if b is None else b.buckets.get(start)
            if b is not None:
                changed[bucket_field(names[sid], key, start)] = b.to_bytes()
        gone = set()
        for sid, key, start in self.dropped or ():
            s = self.stores.get(sid, {}).get(key)
            if s is None or start not in s.buckets:
                gone.add(bucket_field(names[sid], key, start))
        return changed, gone

    @classmethod
    def from_parts(cls, core: dict[str, Any], buckets: dict[str, bytes | dict], plan: Any,
                   detector_key: bytes, ids: dict[str, bytes] | None = None) -> FeatureState:  # fmt: skip
        """Inverse of ``core_state`` + ``bucket_fields`` + the dedup-id fields ``ids`` (``seen_field``) under ``plan`` (a
        ``rules.plan.Plan``): buckets of stores it no longer has, or that lack a sketch its rules now need, are
        dropped. A bucket is its stored value (binary, or the JSON of earlier versions: ``Bucket.decode``, which
        refuses anything else with ``StateFormatError``) or an already parsed JSON state. Dedup ids come from the
        core (the format before) and the id fields, those below the floor of the write that stored the core left
        out (the ids a core with ``with_seen`` would have held)."""
        from rules.aggregate import Bucket

        fs = cls.from_state(core, detector_key)
        for _, f in sorted((seen_field_order(f), f) for f in ids or ()):
            for i, ts in orjson.loads(ids[f]):
                fs.seen[i] = ts
        floor = core.get("seen_floor")
        if floor is not None:
            fs.seen = {i: ts for i, ts in fs.seen.items() if ts >= floor}
        for f, st in buckets.items():
            sk, phase, start, *seg = f.split(US)
            sid = plan.store_ids.get(sk)
            if sid is None:
                continue
            spec = plan.store_by_id[sid]
            b = Bucket.from_state(st) if isinstance(st, dict) else Bucket.decode(st)
            if (spec.needs_latency and b.lat is None) or (spec.needs_users and b.users is None):
                continue
            key = (phase, tuple(seg))
            series = fs.stores.setdefault(sid, {})
            s = series.get(key)
            if s is None:
                s = series[key] = SeriesBuckets()
            s.buckets[int(start)] = b
        return fs

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
        fs.src_max = dict(d["src_max"])
        fs.src_first = dict(d["src_first"])
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
        fs.drift_pending = {ik(k): {int(b): list(x) for b, x in v.items()} for k, v in d["drift_pending"].items()}
        fs.drift_last = {ik(k): list(v) for k, v in d["drift_last"].items()}
        fs.latches = dict(d["latches"])
        fs.phases = set(d["phases"])
        fs.chain = dict(d.get("chain", {}))  # absent in states stored before the audit trail: chains start at genesis
        fs.command_seq = int(d.get("command_seq", 0))
        # absent in states stored before producer clocks were checked: nothing held, nothing counted
        fs.clocks = {src: StreamClock.from_state(c) for src, c in d.get("clocks", {}).items()}
        fs.outliers = dict(d.get("outliers", {}))
        fs.skew = d.get("skew")
        fs.control_ts = d.get("control_ts")
        fs.starving = {ik(k): list(v) for k, v in d.get("starving", {}).items()}  # absent before max_starved
        fs.phase_first = dict(d.get("phase_first", {}))  # these three: absent before promotion blocks
        fs.promotions = {tuple(k.split(US, 1)): dict(v) for k, v in d.get("promotions", {}).items()}
        fs.signoffs = {p: {r: dict(s) for r, s in roles.items()} for p, roles in d.get("signoffs", {}).items()}
        return fs


class BreakerState:
    """Kill commands issued per event-time hour across all features, the hours already paged about, and the hours
    whose page was resolved since (every part only grows, so two workers' views merge by union)."""

    __slots__ = ("kills", "paged", "resolved")

    def __init__(self) -> None:
        self.kills: dict[int, set[str]] = {}  # hour index (ts // 3600000) -> ids of the kills issued in it
        self.paged: set[int] = set()  # hours whose breaker page went out
        self.resolved: set[int] = set()  # paged hours whose page was resolved

    def open_hours(self, before: int | None = None) -> list[int]:
        """Paged hours not resolved yet (only those before hour ``before`` when given), oldest first."""
        return sorted(h for h in self.paged - self.resolved if before is None or h < before)

    def merge(self, other: BreakerState) -> None:
        """Union with another worker's view (both only ever grow within an hour)."""
        for h, ids in other.kills.items():
            self.kills.setdefault(h, set()).update(ids)
        self.paged |= other.paged
        self.resolved |= other.resolved

    def to_state(self) -> dict[str, Any]:
        return {"kills": {str(h): sorted(ids) for h, ids in sorted(self.kills.items())}, "paged": sorted(self.paged),
                "resolved": sorted(self.resolved)}  # fmt: skip

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> BreakerState:
        b = cls()
        b.kills = {int(h): set(ids) for h, ids in d["kills"].items()}
        b.paged = set(d["paged"])
        b.resolved = set(d.get("resolved", ()))  # absent in states written before breaker pages resolved
        return b
