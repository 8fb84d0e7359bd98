"""Engine state in Redis, written atomically together with the input offsets it reflects.

Layout (``ns`` is the namespace, default ``rollguard``; ``{…}`` is a Redis Cluster hash tag, so every key of one
feature lives in one slot and one Lua script can update them together):

* ``ns:{f:FEATURE}:core``    hash: ``state`` (the feature's core state, JSON), ``summary`` (for ``rollguard
  status``), ``off:TOPIC:PARTITION`` (highest input offset applied to this feature from that partition),
  ``updated_ms`` (wall clock of the write, for operators only);
* ``ns:{f:FEATURE}:buckets`` hash: one field per window bucket (see ``FeatureState.bucket_fields``);
* ``ns:{tp:TOPIC:PARTITION}`` string: the partition's processed offset (a lower bound: features may be ahead);
* ``ns:{breaker}``           hash: ``kill:HOUR:ID`` and ``paged:HOUR`` fields (the cross-feature kill breaker;
  set-like, so writing the same kill twice is harmless);
* ``ns:features``            set: the features with state (for status).

One pipelined round trip per batch: a Lua script per touched feature writes core, changed buckets, deleted buckets
and offsets, refusing the write when the stored offsets are already at or past the batch's (a fenced, stale worker);
then the breaker fields and the partition offsets. Recovery after a crash anywhere is exact: events at or below a
feature's stored offset are skipped, the rest are applied once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from rules.exceptions import RollguardError
from rules.state import BreakerState

__all__ = ["RedisStore", "StoreError", "FeatureRecord", "FeatureWrite", "EVICTION_SAFE"]

EVICTION_SAFE = ("noeviction",)

# KEYS: core, buckets.  ARGV: n_offsets, (field, offset)*, state, summary, updated_ms, n_set, (field, value)*,
# n_del, field*.  Returns 1 when written, 0 when fenced (a stored offset is already >= the new one).
_COMMIT = """
local i = 2
local n = tonumber(ARGV[1])
for _ = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and tonumber(cur) >= tonumber(ARGV[i + 1]) then return 0 end
  i = i + 2
end
i = 2
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'state', ARGV[i], 'summary', ARGV[i + 1], 'updated_ms', ARGV[i + 2])
i = i + 3
local nset = tonumber(ARGV[i])
i = i + 1
for _ = 1, nset do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local ndel = tonumber(ARGV[i])
i = i + 1
for _ = 1, ndel do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
return 1
"""


class StoreError(RollguardError):
    """Redis is unusable for rollguard state (e.g. it may evict keys)."""


@dataclass
class FeatureRecord:
    """What Redis holds for one feature."""

    core: dict[str, Any] | None
    buckets: dict[str, dict]
    offsets: dict[str, int]  # "topic:partition" -> highest offset applied


@dataclass
class FeatureWrite:
    feature: str
    core: bytes
    summary: bytes
    offsets: dict[str, int]
    changed: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


class RedisStore:
    """Async access to rollguard's keys. ``client`` is a ``redis.asyncio.Redis`` (``decode_responses=False``)."""

    def __init__(self, client: Any, namespace: str = "rollguard") -> None:
        self.r = client
        self.ns = namespace
        self._commit = client.register_script(_COMMIT)

    # --- keys ---------------------------------------------------------------------------------------------------

    def core_key(self, feature: str) -> str:
        return f"{self.ns}:{{f:{feature}}}:core"

    def buckets_key(self, feature: str) -> str:
        return f"{self.ns}:{{f:{feature}}}:buckets"

    def tp_key(self, tp: str) -> str:
        return f"{self.ns}:{{tp:{tp}}}"

    @property
    def breaker_key(self) -> str:
        return f"{self.ns}:{{breaker}}"

    @property
    def features_key(self) -> str:
        return f"{self.ns}:features"

    # --- checks -------------------------------------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse a Redis that may evict keys: losing state silently would lose or double-count events."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            cfg = await self.r.config_get("maxmemory-policy")
            policy = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                      for k, v in cfg.items()}.get("maxmemory-policy", "")  # fmt: skip
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreError(f"cannot reach Redis: {e}") from e
        except Exception as e:  # noqa: BLE001 - managed Redis may forbid CONFIG; say what to do
            raise StoreError(
                f"cannot read Redis maxmemory-policy ({e}); rollguard needs 'noeviction' — set it, or allow CONFIG GET"
            ) from e
        if policy not in EVICTION_SAFE:
            raise StoreError(
                f"Redis maxmemory-policy is {policy!r}, which may evict rollguard's state keys; "
                "set 'maxmemory-policy noeviction' (and appendonly yes) on this Redis"
            )

    # --- reads --------------------------------------------------------------------------------------------------

    async def load(self, features: list[str]) -> tuple[dict[str, FeatureRecord], BreakerState]:
        """The stored records of ``features`` and the breaker, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for f in features:
            pipe.hgetall(self.core_key(f))
            pipe.hgetall(self.buckets_key(f))
        pipe.hgetall(self.breaker_key)
        res = await pipe.execute()
        out: dict[str, FeatureRecord] = {}
        for i, f in enumerate(features):
            core, buckets = res[2 * i], res[2 * i + 1]
            offsets = {k[4:].decode(): int(v) for k, v in core.items() if k.startswith(b"off:")}
            state = orjson.loads(core[b"state"]) if b"state" in core else None
            out[f] = FeatureRecord(state, {k.decode(): orjson.loads(v) for k, v in buckets.items()}, offsets)
        return out, self._breaker(res[-1])

    async def load_breaker(self) -> BreakerState:
        return self._breaker(await self.r.hgetall(self.breaker_key))

    @staticmethod
    def _breaker(h: dict[bytes, bytes]) -> BreakerState:
        b = BreakerState()
        for k in h:
            parts = k.decode().split(":", 2)
            if parts[0] == "kill":
                b.kills.setdefault(int(parts[1]), set()).add(parts[2])
            elif parts[0] == "paged":
                b.paged.add(int(parts[1]))
        return b

    async def partition_offsets(self, tps: list[str]) -> dict[str, int | None]:
        vals = await self.r.mget([self.tp_key(tp) for tp in tps]) if tps else []
        return {tp: int(v) if v is not None else None for tp, v in zip(tps, vals)}

    async def features(self) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(self.features_key))

    async def summaries(self, features: list[str]) -> dict[str, dict]:
        pipe = self.r.pipeline(transaction=False)
        for f in features:
            pipe.hmget(self.core_key(f), "summary", "updated_ms")
        out = {}
        for f, (summary, updated) in zip(features, await pipe.execute()):
            if summary is not None:
                out[f] = dict(orjson.loads(summary), updated_ms=int(updated or 0))
        return out

    # --- the write ----------------------------------------------------------------------------------------------

    async def commit(self, writes: list[FeatureWrite], breaker: BreakerState | None,
                     partition_offsets: dict[str, int]) -> dict[str, bool]:  # fmt: skip
        """Write every feature (atomically each, with its offsets), then the breaker and partition offsets, in one
        round trip. Returns feature -> written (False: fenced by a newer writer; drop the cached state)."""
        pipe = self.r.pipeline(transaction=False)
        now = str(int(time.time() * 1000))
        for w in writes:
            args: list[Any] = [len(w.offsets)]
            for tp, off in sorted(w.offsets.items()):
                args += [f"off:{tp}", off]
            args += [w.core, w.summary, now, len(w.changed)]
            for k, v in w.changed.items():
                args += [k, v]
            args += [len(w.deleted), *w.deleted]
            await self._commit(keys=[self.core_key(w.feature), self.buckets_key(w.feature)], args=args, client=pipe)
        if writes:
            pipe.sadd(self.features_key, *[w.feature for w in writes])
        if breaker is not None and (breaker.kills or breaker.paged):
            fields: dict[str, str] = {}
            for h, ids in breaker.kills.items():
                for i in ids:
                    fields[f"kill:{h}:{i}"] = "1"
            for h in breaker.paged:
                fields[f"paged:{h}"] = "1"
            pipe.hset(self.breaker_key, mapping=fields)
        for tp, off in partition_offsets.items():
            pipe.set(self.tp_key(tp), off)
        res = await pipe.execute()
        return {w.feature: bool(r) for w, r in zip(writes, res)}
