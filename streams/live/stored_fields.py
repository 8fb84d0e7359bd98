"""What Redis holds of a feature beside its core state — one field per window bucket, one per batch of dedup ids
(``streams.live.store``) — and what the next write must set and delete there.

After a feature's first successful write since it was loaded (or created, or the rules reloaded), only the buckets
written to and dropped since the last write are looked at (``FeatureState.bucket_changes``); before it, every bucket
held (``FeatureState.bucket_fields``: those that can hold an event at or after ``since``, all after a reload). Dedup
ids (``FeatureState.seen_changes``): the ids added since the last write go into a field of the write's own, fields
whose ids are all below the floor are deleted, and when the ids are written whole one field replaces every other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from rules.state import FeatureState, seen_field, seen_field_order

__all__ = ["StoredFields", "FieldChanges"]


class FieldChanges(NamedTuple):
    changed: dict[str, bytes]  # bucket fields to set
    deleted: list[str]  # bucket fields to delete
    ids_changed: dict[str, bytes]  # dedup-id fields to set
    ids_deleted: list[str]  # dedup-id fields to delete


@dataclass
class StoredFields:
    buckets: set[str] = field(default_factory=set)  # bucket fields present in Redis
    ids: dict[str, int] = field(default_factory=dict)  # dedup-id fields in Redis -> their latest event time

    @classmethod
    def loaded(cls, buckets: Any, ids: Any) -> StoredFields:
        """The fields of a loaded record (``FeatureRecord.buckets`` and ``.ids``)."""
        return cls(set(buckets), {k: seen_field_order(k)[1] for k in ids})

    def changes(self, fs: FeatureState, plan: Any, lateness_ms: int, version: int, since: int | None,
                full: bool) -> tuple[FieldChanges, StoredFields]:  # fmt: skip
        """What the write ``version`` of ``fs`` must set and delete, and the fields stored once it succeeds. ``full``:
        look at every bucket held (those that can hold an event at or after ``since``; all when None)."""
        if full:
            changed, present = fs.bucket_fields(plan, since)
            deleted = sorted(self.buckets - present)
        else:
            changed, gone = fs.bucket_changes(plan)
            deleted = sorted(gone & self.buckets)
            present = (self.buckets - gone) | changed.keys()
        pairs, whole = fs.seen_changes(lateness_ms)
        floor = fs.seen_floor(lateness_ms)
        drop = set(self.ids) if whole else {k for k, top in self.ids.items() if floor is not None and top < floor}
        ids = {k: top for k, top in self.ids.items() if k not in drop}
        ids_changed = {}
        if pairs:
            top = max(ts for _, ts in pairs)
            name = seen_field(version, top)
            ids_changed[name] = orjson.dumps(pairs)
            ids[name] = top
            drop.discard(name)  # a write retried after a failure rewrites its own field
        return FieldChanges(changed, deleted, ids_changed, sorted(drop)), StoredFields(present, ids)
