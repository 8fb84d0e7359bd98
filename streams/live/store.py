"""Engine state in Redis, written atomically together with the input offsets it reflects.

Layout (``ns`` is the namespace, default ``rollguard``; ``{…}`` is a Redis Cluster hash tag, so every key of one
feature lives in one slot and one Lua script can update them together):

* ``ns:{f:FEATURE}:core``    hash: ``state`` (the feature's core state, JSON), ``summary`` (for ``rollguard
  status``), ``off:TOPIC:PARTITION`` (highest input offset applied to this feature from that partition),
  ``updated_ms`` (wall clock of the write, for operators only);
* ``ns:{f:FEATURE}:buckets`` hash: one field per window bucket (see ``FeatureState.bucket_fields``), its value the
  bucket's versioned binary state (``rules.aggregate.Bucket.to_bytes``; JSON values of earlier versions are still
  read, and migrate as their buckets are next written);
* ``ns:{f:FEATURE}:ids``     hash: the dedup ids of the events within the allowed lateness, one field per state
  write that added some (``rules.state.seen_field``: the write's version and its latest event time; the value a
  JSON array of ``[event_id, ts]``), deleted once all its ids are older than the lateness allows (before this key,
  the ids were in the core state, rewritten whole at every write; such a core is still read);
* ``ns:{tp:TOPIC:PARTITION}`` string: the partition's processed offset (a lower bound: features may be ahead);
* ``ns:{breaker}``           hash: ``kill:HOUR:ID``, ``paged:HOUR`` and ``resolved:HOUR`` fields (the cross-feature kill breaker;
  set-like, so writing the same kill twice is harmless);
* ``ns:features``            set: the features with state (for status).

A batch's write has three steps, in this order: the breaker fields (and the features set); a Lua script per touched
feature that writes core, changed and deleted buckets and dedup-id fields, and offsets, refusing the write unless the feature's
stored version (``ver``, +1 per write) is the one this worker loaded or last wrote and no worker with a newer
epoch (``owner``) claimed it — a worker that lost the feature to another is fenced, whatever it writes (events,
idle advances, reloads); then the partition offsets.

Before that write, and before publishing anything, the processor *claims* the features whose outputs it is about
to publish (``claim``: the same version and epoch checks, one round trip, ``_CLAIM``), and it claims each feature
when it loads it. A worker takes a new epoch (``INCR ns:epoch``) at every partition assignment, so a worker that
was paused while its partitions moved (a zombie) holds an older epoch than their new owner and publishes nothing
for them when it wakes. ``ns:{f:FEATURE}:core`` has the field ``owner`` (the epoch of the last claim). The order makes every
prefix of the write safe: a kill recorded in the breaker is recognised by its id when the batch is re-processed, and
the partition offsets (a lower bound) come last. Recovery after a crash anywhere is exact: events at or below a
feature's stored offset are skipped, the rest are applied once.

On one Redis server the three steps are one pipelined round trip, run in order by the server. On a Redis Cluster
(``redis_client(url, cluster=True)``) a pipeline runs its nodes' commands in parallel, so each step is its own
pipeline, waited for before the next, and a failed step stops the later ones. Every command touches one slot (the
per-feature script two keys of one hash tag); reads across slots are pipelined GETs/HGETALLs, never multi-key
commands.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rules.exceptions import RollguardError
from rules.state import BreakerState

__all__ = ["RedisStore", "StoreError", "FeatureRecord", "FeatureWrite", "EVICTION_SAFE", "redis_client",
           "RedisUnavailable"]

EVICTION_SAFE = ("noeviction",)

# KEYS: core, buckets, ids.  ARGV: expected version, epoch, n_offsets, (field, offset)*, state, summary, updated_ms,
# then for buckets and for ids each: n_set, (field, value)*, n_del, field*.  Returns 1 when written, 0 when
# fenced: the stored version is not the one
# this worker loaded or last wrote, i.e. another worker wrote the feature since (this one is stale), or a worker
# with a newer epoch (a later partition assignment) claimed the feature.
_COMMIT = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
if cur ~= tonumber(ARGV[1]) then return 0 end
local owner = tonumber(redis.call('HGET', KEYS[1], 'owner') or '0')
local e = tonumber(ARGV[2])
if owner > e then return 0 end
if owner < e then redis.call('HSET', KEYS[1], 'owner', e) end
local i = 4
local n = tonumber(ARGV[3])
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'state', ARGV[i], 'summary', ARGV[i + 1], 'updated_ms', ARGV[i + 2], 'ver', cur + 1)
i = i + 3
for k = 2, 3 do
  local nset = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, nset do
    redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  local ndel = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, ndel do
    redis.call('HDEL', KEYS[k], ARGV[i])
    i = i + 1
  end
end
return 1
"""


# The claim before publishing. KEYS: core.  ARGV: epoch, expected version ('' at load: no version yet).  Returns 1
# when this worker may go on with the feature — no newer epoch owns it and (unless '') its version is the one this
# worker holds — and records the epoch as the owner; 0 when fenced. At load a feature without state is not
# created (its first publish claims it).
_CLAIM = """
if ARGV[2] == '' and redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local owner = tonumber(redis.call('HGET', KEYS[1], 'owner') or '0')
local e = tonumber(ARGV[1])
if owner > e then return 0 end
if ARGV[2] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[1], 'ver') or '0')
  if cur ~= tonumber(ARGV[2]) then return 0 end
end
if owner < e then redis.call('HSET', KEYS[1], 'owner', e) end
return 1
"""


class StoreError(RollguardError):
    """Redis is unusable for rollguard state (e.g. it may evict keys)."""


class RedisUnavailable(StoreError):
    """Redis cannot be reached (an outage, not a configuration error: the worker waits for it at start-up)."""


def redis_client(url: str, cluster: bool = False, **kwargs: Any) -> Any:
    """The async client rollguard uses: ``redis.asyncio.Redis`` for one server, or
    ``redis.asyncio.cluster.RedisCluster`` when ``cluster`` (``url`` names any node; the others are discovered).
    ``kwargs`` (ACL user, password, TLS files: ``streams.security.redis_kwargs``) go to ``from_url``."""
    if not cluster:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(url, **kwargs)
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

    try:
        return RedisCluster.from_url(url, **kwargs)
    except RedisClusterException as e:  # e.g. a unix socket or a database other than 0
        raise StoreError(f"cannot use {url} as a Redis Cluster: {e}") from e


def _is_cluster(client: Any) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


@dataclass
class FeatureRecord:
    """What Redis holds for one feature."""

    core: dict[str, Any] | None
    buckets: dict[str, bytes]  # field -> stored value, decoded by FeatureState.from_parts (Bucket.decode)
    offsets: dict[str, int]  # "topic:partition" -> highest offset applied
    version: int = 0  # incremented by every write; a write must name the version it read
    claimed: bool = True  # False: a worker with a newer epoch owns the feature (``load(..., epoch=)``)
    ids: dict[str, bytes] = field(default_factory=dict)  # dedup-id fields (rules.state.seen_field) -> their ids


@dataclass
class FeatureWrite:
    feature: str
    core: bytes
    summary: bytes
    offsets: dict[str, int]
    version: int = 0  # the stored version this worker loaded or last wrote (the fence)
    epoch: int = 0  # the writer's epoch (``RedisStore.new_epoch``); 0: no epoch fencing
    changed: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    ids_changed: dict[str, bytes] = field(default_factory=dict)  # dedup-id fields written, and deleted
    ids_deleted: list[str] = field(default_factory=list)


class RedisStore:
    """Async access to rollguard's keys. ``client`` is a ``redis.asyncio.Redis`` or a
    ``redis.asyncio.cluster.RedisCluster`` (``decode_responses=False``), e.g. from ``redis_client``."""

    def __init__(self, client: Any, namespace: str = "rollguard") -> None:
        self.r = client
        self.ns = namespace
        self.cluster = _is_cluster(client)
        # cluster pipelines refuse EVALSHA (no script preloading per node): they send the script with EVAL
        self._commit = None if self.cluster else client.register_script(_COMMIT)
        self._claim = None if self.cluster else client.register_script(_CLAIM)

    # --- keys ---------------------------------------------------------------------------------------------------

    def core_key(self, feature: str) -> str:
        return f"{self.ns}:{{f:{feature}}}:core"

    def buckets_key(self, feature: str) -> str:
        return f"{self.ns}:{{f:{feature}}}:buckets"

    def ids_key(self, feature: str) -> str:
        return f"{self.ns}:{{f:{feature}}}:ids"

    def tp_key(self, tp: str) -> str:
        return f"{self.ns}:{{tp:{tp}}}"

    @property
    def breaker_key(self) -> str:
        return f"{self.ns}:{{breaker}}"

    @property
    def features_key(self) -> str:
        return f"{self.ns}:features"

    @property
    def epoch_key(self) -> str:
        return f"{self.ns}:epoch"

    # --- checks -------------------------------------------------------------------------------------------------

    async def check(self) -> None:
        """Refuse a Redis that may evict keys: losing state silently would lose or double-count events. On a
        cluster every node is checked (any of them may hold, or after a failover serve, a feature's keys)."""
        from redis.exceptions import AuthenticationError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        nodes: list[Any] = [None]
        if self.cluster:
            try:
                await self.r.initialize()
            except Exception as e:  # noqa: BLE001 - RedisClusterException is no RedisError
                raise RedisUnavailable(f"cannot reach the Redis cluster: {e}") from e
            nodes = self.r.get_nodes()
        for node in nodes:
            where = "Redis" if node is None else f"Redis node {node.name}"
            try:
                cfg = await (self.r.config_get("maxmemory-policy") if node is None
                             else self.r.config_get("maxmemory-policy", target_nodes=node))  # fmt: skip
                policy = {_str(k): _str(v) for k, v in cfg.items()}.get("maxmemory-policy", "")
            except AuthenticationError as e:  # a ConnectionError, but a configuration error: not waited for
                raise StoreError(f"{where} refused rollguard's credentials: {e}") from e
            except (RedisConnectionError, RedisTimeoutError) as e:
                raise RedisUnavailable(f"cannot reach {where}: {e}") from e
            except Exception as e:  # noqa: BLE001 - managed Redis may forbid CONFIG; say what to do
                raise StoreError(
                    f"cannot read {where} maxmemory-policy ({e}); rollguard needs 'noeviction' — set it, or allow "
                    "CONFIG GET"
                ) from e
            if policy not in EVICTION_SAFE:
                scope = "this Redis" if node is None else "every node"
                raise StoreError(
                    f"{where} maxmemory-policy is {policy!r}, which may evict rollguard's state keys; "
                    f"set 'maxmemory-policy noeviction' (and appendonly yes) on {scope}"
                )
        if not self.cluster and await self._is_cluster_node():
            raise StoreError("this Redis is a Redis Cluster node; set ROLLGUARD_REDIS_CLUSTER=true")

    async def _is_cluster_node(self) -> bool:
        from redis.exceptions import ResponseError

        try:
            info = await self.r.info("cluster")
        except ResponseError:  # INFO forbidden (some managed Redis): keys in other slots would fail loudly anyway
            return False
        return bool(info.get("cluster_enabled"))

    # --- reads --------------------------------------------------------------------------------------------------

    async def load(self, features: list[str], epoch: int | None = None) -> dict[str, FeatureRecord]:
        """The stored records of ``features``, in one round trip (the breaker: ``load_breaker``). With ``epoch``
        each feature is claimed first, in the same round trip (``FeatureRecord.claimed``)."""
        pipe = self.r.pipeline(transaction=False)
        per = 3 if epoch is None else 4
        for f in features:
            if epoch is not None:
                await self._queue_claim(pipe, f, epoch, "")
            pipe.hgetall(self.core_key(f))
            pipe.hgetall(self.buckets_key(f))
            pipe.hgetall(self.ids_key(f))
        res = await pipe.execute()
        out: dict[str, FeatureRecord] = {}
        for i, f in enumerate(features):
            core, buckets, ids = res[per * i + per - 3 : per * i + per]
            offsets = {k[4:].decode(): int(v) for k, v in core.items() if k.startswith(b"off:")}
            state = orjson.loads(core[b"state"]) if b"state" in core else None
            out[f] = FeatureRecord(state, {k.decode(): v for k, v in buckets.items()}, offsets,
                                   int(core.get(b"ver", 0)), claimed=epoch is None or bool(res[per * i]),
                                   ids={k.decode(): v for k, v in ids.items()})  # fmt: skip
        return out

    async def new_epoch(self) -> int:
        """A number greater than every epoch handed out before: a worker takes one per partition assignment, so a
        worker that lost its partitions (a zombie) holds an older one than their new owner."""
        return int(await self.r.incr(self.epoch_key))

    async def claim(self, versions: dict[str, int], epoch: int) -> dict[str, bool]:
        """Claim ``features`` (feature -> the version this worker holds) for ``epoch`` before publishing their
        outputs: feature -> True when this worker still owns it (see ``_CLAIM``). One round trip (a read) for the
        features this epoch already owns, one more (the script) for the others."""
        if not versions:
            return {}
        names = sorted(versions)
        # a feature this epoch already owns needs no write to stay claimed: reading owner and version is the same
        # check (and, unlike any script, still answers while Redis refuses writes: the batch is published and
        # waits at its state write, as before fencing). Only a first claim in this epoch runs the writing script.
        pipe = self.r.pipeline(transaction=False)
        for f in names:
            pipe.hmget(self.core_key(f), "owner", "ver")
        out: dict[str, bool] = {}
        first: list[str] = []
        for f, (owner, ver) in zip(names, await pipe.execute()):
            if owner is not None and int(owner) == epoch:
                out[f] = int(ver or 0) == versions[f]
            else:
                first.append(f)
        if first:
            pipe = self.r.pipeline(transaction=False)
            for f in first:
                await self._queue_claim(pipe, f, epoch, str(versions[f]))
            out.update({f: bool(r) for f, r in zip(first, await pipe.execute())})
        return out

    async def _queue_claim(self, pipe: Any, feature: str, epoch: int, version: str) -> None:
        keys, args = [self.core_key(feature)], [epoch, version]
        if self._claim is None:
            pipe.eval(_CLAIM, 1, *keys, *args)
        else:
            await self._claim(keys=keys, args=args, client=pipe)

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
            elif parts[0] == "resolved":
                b.resolved.add(int(parts[1]))
        return b

    async def partition_offsets(self, tps: list[str]) -> dict[str, int | None]:
        # pipelined GETs, not MGET: the partition keys are in different cluster slots
        pipe = self.r.pipeline(transaction=False)
        for tp in tps:
            pipe.get(self.tp_key(tp))
        vals = await pipe.execute() if tps else []
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
        """Write the breaker, then every feature (atomically each, with its offsets), then the partition offsets (see
        the module docstring for why in this order). Returns feature -> written (False: fenced by a newer writer;
        drop the cached state)."""
        now = str(int(time.time() * 1000))

        async def breaker_step(pipe: Any) -> None:
            if breaker is not None and (breaker.kills or breaker.paged):
                fields: dict[str, str] = {}
                for h, ids in breaker.kills.items():
                    for i in ids:
                        fields[f"kill:{h}:{i}"] = "1"
                for h in breaker.paged:
                    fields[f"paged:{h}"] = "1"
                for h in breaker.resolved:
                    fields[f"resolved:{h}"] = "1"
                pipe.hset(self.breaker_key, mapping=fields)
            if writes:
                pipe.sadd(self.features_key, *[w.feature for w in writes])

        async def features_step(pipe: Any) -> None:
            for w in writes:
                keys = [self.core_key(w.feature), self.buckets_key(w.feature), self.ids_key(w.feature)]
                args = self._commit_args(w, now)
                if self._commit is None:
                    pipe.eval(_COMMIT, len(keys), *keys, *args)
                else:
                    await self._commit(keys=keys, args=args, client=pipe)

        async def offsets_step(pipe: Any) -> None:
            for tp, off in partition_offsets.items():
                pipe.set(self.tp_key(tp), off)

        _, written, _ = await self._in_order([breaker_step, features_step, offsets_step])
        return {w.feature: bool(r) for w, r in zip(writes, written)}

    @staticmethod
    def _commit_args(w: FeatureWrite, now: str) -> list[Any]:
        args: list[Any] = [w.version, w.epoch, len(w.offsets)]
        for tp, off in sorted(w.offsets.items()):
            args += [f"off:{tp}", off]
        args += [w.core, w.summary, now]
        for changed, deleted in ((w.changed, w.deleted), (w.ids_changed, w.ids_deleted)):
            args.append(len(changed))
            for k, v in changed.items():
                args += [k, v]
            args += [len(deleted), *deleted]
        return args

    async def _in_order(self, steps: list[Callable[[Any], Awaitable[None]]]) -> list[list[Any]]:
        """Run the steps (each queues commands on a pipeline) so that each takes effect before the next; the
        results per step. One server runs one pipeline in order; a cluster pipeline runs its nodes in parallel,
        so there each step is its own pipeline."""
        if self.cluster:
            out = []
            for step in steps:
                pipe = self.r.pipeline(transaction=False)
                await step(pipe)
                out.append(await pipe.execute() if len(pipe) else [])
            return out
        pipe = self.r.pipeline(transaction=False)
        sizes = []
        for step in steps:
            before = len(pipe)
            await step(pipe)
            sizes.append(len(pipe) - before)
        res = await pipe.execute() if len(pipe) else []
        out, i = [], 0
        for n in sizes:
            out.append(res[i : i + n])
            i += n
        return out


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else v
