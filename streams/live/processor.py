"""The live batch processor: raw Kafka messages in, engine step, outputs published, state committed to Redis.

Independent of Faust (the agent in ``streams.live.app`` only hands batches over), so the exactly-once logic is plain
code:

1. parse every message (single event or batch envelope); invalid ones become dead letters with topic/partition/
   offset and a redacted payload;
2. load the state of features not cached yet from Redis (one round trip, with the kill breaker);
3. skip events at or below the feature's stored offset for their partition (already applied before a crash);
4. ``Engine.step`` — the same pure function replay uses;
5. claim the touched features (one round trip: no worker with a newer epoch owns them, their version is the one
   held — see ``streams.live.store``); a feature lost to another worker is dropped and the batch redone without it, so a
   zombie publishes nothing; then publish decisions, commands (with their signed emission time in record headers)
   pages and dead letters and wait for the broker's acknowledgement;
6. commit the touched features' state with their new offsets to Redis (atomic per feature), then the partition
   offsets.

(The records themselves — keys, headers, dead letters, the degraded page — are :mod:`streams.live.publishing`'s;
which bucket and dedup-id fields a state write sets and deletes, :mod:`streams.live.stored_fields`'.)

A crash between 5 and 6 re-runs the batch from the old state: the same outputs with the same ids are published
again (at-least-once delivery of deterministic records, never different content). Any Redis or Kafka failure in
2, 5 or 6 drops the touched features from memory, backs off, pages "monitor degraded" once and retries from 1: the
batch is never acknowledged before it is committed.

(Over 500 lines because the ordering argument — load and claim, step, claim, publish, commit — is one sequence
shared by batches, idle ticks and reloads; split across modules it could no longer be read in one place.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import orjson

from rules.control_auth import is_control, misplaced
from rules.engine import Engine
from rules.events import Control, Event, EventParser, InvalidEvent
from rules.policy import Outputs
from rules.state import BreakerState, FeatureState
from streams.live.publishing import command_headers, dead_letter, degraded_page, output_records
from streams.live.status_summary import summary_of
from streams.live.store import FeatureWrite, RedisStore
from streams.live.stored_fields import StoredFields
from streams.kafka.routing import input_streams, misrouted
from streams.kafka.topics import Topics

if TYPE_CHECKING:
    from streams.live.observability import WorkerMetrics

__all__ = ["Message", "Processor", "Publisher", "ProcessorStats"]

_NO_EVENTS = 1 << 62  # "since" of a write that applied no event: no bucket changed (expired ones are diffed)

log = logging.getLogger("rollguard.processor")


def _source_tp(dead: dict) -> str:
    return f"{dead['source']['topic']}:{dead['source']['partition']}"


class _Fenced(Exception):
    """A feature of this batch is owned by a worker with a newer epoch: redo the batch without it."""


class _EngineFailure(Exception):
    """The pure engine raised (a bug on some input), as opposed to Redis or Kafka being unavailable."""


class Message(NamedTuple):
    """One consumed Kafka record (a tuple: made once per message on the hot path, ~10x cheaper than a frozen
    dataclass)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None

    @property
    def tp(self) -> str:
        return f"{self.topic}:{self.partition}"


class Publisher(Protocol):
    def publish(self, records: Sequence[tuple[str, bytes, bytes]]) -> Awaitable[None]:
        """Send ``(topic, key, value)`` records in order; return once the broker acknowledged all of them. A publisher
        with ``carries_headers = True`` also takes ``headers=``: per record None or ``[(name, bytes), ...]``."""


@dataclass
class ProcessorStats:
    messages: int = 0
    events: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    skipped_replayed: int = 0  # events already applied before a restart (fenced by stored offsets)
    batches: int = 0
    retries: int = 0
    fenced: int = 0  # features found owned by a newer worker (at load, before publishing, or at the state write)
    skipped_fenced: int = 0  # events of such features this worker skipped
    published: dict[str, int] = field(default_factory=dict)


@dataclass
class _Cached:
    offsets: dict[str, int]  # tp -> highest offset applied to this feature
    stored: StoredFields  # the bucket and dedup-id fields present in Redis
    first_seen: float  # wall clock when this worker took the feature over
    version: int = 0  # the feature's version in Redis as of our last load or write (write fence)
    src_arrival: dict[str, float] = field(default_factory=dict)  # source -> wall clock of its last event


class Processor:
    """Owns the engine's in-memory state for the features of the partitions this worker holds."""

    def __init__(self, engine: Engine, store: RedisStore, parser: EventParser, publisher: Publisher, *,
                 topics: Topics, detector_key: bytes, clock: Callable[[], float] = time.time,
                 max_backoff_s: float = 5.0, metrics: WorkerMetrics | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.store = store
        self.parser = parser
        self.publisher = publisher
        self.topics = topics
        self._streams = input_streams(topics)  # input topic -> the stream it carries (streams.kafka.routing)
        self.key = detector_key
        self.clock = clock
        self.max_backoff_s = max_backoff_s
        self.cache: dict[str, _Cached] = {}
        self.stats = ProcessorStats()
        self.lock = asyncio.Lock()  # batches, idle ticks and reloads never interleave
        self.degraded = False  # a "monitor degraded" page went out and was not resolved yet
        self.full_rewrite: set[str] = set()  # features whose buckets must all be rewritten (after a reload)
        self.metrics = metrics  # per batch only (durations, outputs, offsets); None: no metrics
        # fencing before publishing (streams.live.store): this worker's epoch since its last partition assignment (0: no
        # epoch fencing, e.g. in tests; None: take a new one before the next batch), and the features a worker
        # with a newer epoch owns — their events are skipped and nothing is published for them until reassignment
        self.epoch: int | None = 0
        self.fenced: set[str] = set()

    async def reassigned(self, epoch: int | None) -> None:
        """A new partition assignment: a fresh epoch (None: taken from Redis before the next batch)."""
        async with self.lock:
            self.epoch = epoch
            self.fenced.clear()

    async def _ensure_epoch(self) -> int:
        if self.epoch is None:
            self.epoch = await self.store.new_epoch()
        return self.epoch

    async def _claim(self, features) -> list[str]:
        """Claim the features whose outputs are about to be published (one round trip); the ones lost to a newer
        worker are forgotten, remembered as fenced, and returned."""
        versions = {f: self.cache[f].version for f in features if f in self.cache and f in self.engine.features}
        if not versions or not self.epoch:
            return []
        with self._redis_timer("claim"):
            owned = await self.store.claim(versions, self.epoch)
        lost = sorted(f for f, ok in owned.items() if not ok)
        if lost:
            self.stats.fenced += len(lost)
            self.fenced |= set(lost)
            log.warning("features %s are owned by a newer worker; publishing nothing for them", lost)
        return lost

    # --- batches ------------------------------------------------------------------------------------------------

    async def process(self, messages: Sequence[Message], owns: Callable[[str], bool] | None = None,
                      dead_letters: bool = True) -> None:  # fmt: skip
        """Process one batch until it is committed. Returns only on success (or cancellation). ``owns`` keeps
        only the features this worker owns (control topic, read by every worker)."""
        async with self.lock:
            delay = 0.1
            while True:
                try:
                    try:
                        await self._process_once(messages, owns, dead_letters)
                    except _Fenced:
                        continue  # redo at once without the fenced features (each round fences one more)
                    except _EngineFailure:
                        self.forget(set(self.cache))
                        await self._isolate(messages, owns, dead_letters)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - Redis/Kafka unavailable or a bug: never ack, never die
                    self.stats.retries += 1
                    if self.metrics is not None:
                        self.metrics.batch_failed()
                    log.warning("batch of %d messages failed (%s: %s); retrying in %.1fs",
                                len(messages), type(e).__name__, e, delay)  # fmt: skip
                    self.forget(set(self.cache))
                    await self._page_degraded(e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
            if self.degraded:
                await self._resolve_degraded()

    async def _process_once(self, messages: Sequence[Message], owns, dead_letters: bool) -> None:
        started = time.perf_counter()
        await self._ensure_epoch()
        parsed: list[tuple[Message, list]] = []
        dead: list[dict] = []
        features: set[str] = set()
        for m in messages:
            items = []
            on_input = m.topic != self.topics.control
            stream = self._streams.get(m.topic)
            value = m.value or b"null"
            rows = self.parser.parse_rows(value)  # the hot path: every item valid (rules.events rows)
            if rows is None:
                rows = self.parser.parse_items(value)  # item by item, invalid ones named
            origin = None  # a held event names its message if it is quarantined later; a refused control its own
            for item in rows:
                if on_input and is_control(item):  # whoever writes an input topic must not un-kill anything
                    item = misplaced(item)
                elif stream is not None and not isinstance(item, InvalidEvent) and item.type != stream:
                    item = misrouted(item, stream, m.topic) or item  # on the other stream's topic (routing.py)
                if isinstance(item, InvalidEvent):
                    if dead_letters:
                        dead.append(dead_letter(m, item, self.parser.pseudo))
                elif owns is None or owns(item.feature):
                    if origin is None:
                        origin = {"topic": m.topic, "partition": m.partition, "offset": m.offset}
                    if type(item) is Event or type(item) is Control:
                        item.origin = origin
                    items.append(item)
                    features.add(item.feature)
            parsed.append((m, items, origin))
        await self._ensure_loaded(sorted(features - self.fenced))
        with self._redis_timer("load"):
            breaker = await self.store.load_breaker()
        self.engine.breaker.merge(breaker)

        eng = self.engine
        min_ts: dict[str, int] = {}  # earliest event time applied per feature: buckets from there on changed
        applied: dict[str, dict[str, int]] = {}
        arrived: set[tuple[str, str]] = set()  # (feature, source) with an event in this batch
        batch = []
        origins = []  # where each item of ``batch`` came from (a row has no attribute for it)
        part_off: dict[str, int] = {}
        skipped = False  # events of fenced features: the partition offsets must not claim them processed
        for m, items, origin in parsed:
            tp = m.tp
            part_off[tp] = max(part_off.get(tp, -1), m.offset)
            for item in items:
                f = item.feature
                if f in self.fenced:
                    self.stats.skipped_fenced += 1
                    skipped = True
                    continue
                c = self.cache.get(f)
                if c is not None and m.offset <= c.offsets.get(tp, -1):
                    self.stats.skipped_replayed += 1
                    continue
                batch.append(item)
                origins.append(origin)
                applied.setdefault(f, {})[tp] = m.offset
                if item.type != "control":
                    arrived.add((f, item.type))
        for f in applied:
            if f in eng.features:
                eng.features[f].applied_min = None
        try:
            out = eng.step(batch, origins)
        except Exception as e:  # noqa: BLE001 - a bug on some input: find the message, dead-letter it, go on
            raise _EngineFailure(e) from e
        for f in applied:  # buckets changed from the earliest event applied, this batch's or one held before it
            fs = eng.features.get(f)
            if fs is not None and fs.applied_min is not None:
                min_ts[f] = fs.applied_min
        if await self._claim(sorted(applied)):  # fenced before publishing: nothing of theirs goes out
            self.forget(set(applied))
            raise _Fenced()
        if dead:  # dead letters of messages a previous run already committed are not sent twice
            stored = await self.store.partition_offsets(sorted(part_off))
            dead = [d for d in dead if d["source"]["offset"] > (stored[_source_tp(d)] or -1)]
        await self._publish(out, dead)
        now = self.clock()
        for f, source in arrived:
            self.cache[f].src_arrival[source] = now
        # the partition offset marks dead letters as published: only the worker that publishes them may set it
        await self._commit(applied, min_ts, part_off if dead_letters and not skipped else {})
        self.stats.messages += len(messages)
        self.stats.events += len(batch) - sum(d["reason"] == "processing_error" for d in out.dead_letters)
        self.stats.batches += 1
        for d in dead + out.dead_letters:
            self.stats.invalid[d["reason"]] = self.stats.invalid.get(d["reason"], 0) + 1
        if self.metrics is not None:
            self.metrics.batch_done(time.perf_counter() - started, part_off)

    async def _isolate(self, messages: Sequence[Message], owns, dead_letters: bool) -> None:
        """The engine raised on this batch: redo it message by message; one that still fails is dead-lettered
        (reason ``processing_error``) and skipped, so one bad event never blocks its partition. I/O errors
        propagate to the caller's retry."""
        for m in messages:
            try:
                while True:
                    try:
                        await self._process_once([m], owns, dead_letters)
                        break
                    except _Fenced:
                        continue
            except _EngineFailure as e:
                self.forget(set(self.cache))
                log.error("message %s@%d makes the engine fail (%s); dead-lettered", m.tp, m.offset, e.__cause__)
                err = InvalidEvent("processing_error", f"{type(e.__cause__).__name__} while applying this message")
                try:
                    err.payload = orjson.loads(m.value or b"null")  # type: ignore[attr-defined]  # redacted below
                except orjson.JSONDecodeError:
                    pass
                await self._publish(Outputs(), [dead_letter(m, err, self.parser.pseudo)])
                await self.store.commit([], None, {m.tp: m.offset})
                self.stats.invalid["processing_error"] = self.stats.invalid.get("processing_error", 0) + 1

    # --- state --------------------------------------------------------------------------------------------------

    async def _ensure_loaded(self, features: list[str]) -> None:
        missing = [f for f in features if f not in self.cache]
        if not missing:
            return
        with self._redis_timer("load"):
            records = await self.store.load(missing, self.epoch or None)
        now = self.clock()
        for f in missing:
            rec = records[f]
            if not rec.claimed:  # a worker with a newer epoch owns it: this one lost its partition
                self.stats.fenced += 1
                self.fenced.add(f)
                log.warning("state of %s is owned by a newer worker; skipping its events", f)
                continue
            if rec.core is not None:
                self.engine.features[f] = FeatureState.from_parts(rec.core, rec.buckets, self.engine.plan, self.key,
                                                                  rec.ids)  # fmt: skip
                if any(v[:1] == b"{" for v in rec.buckets.values()):  # JSON of an earlier version: migrate it all
                    self.full_rewrite.add(f)
            else:
                self.engine.features.pop(f, None)
            self.cache[f] = _Cached(dict(rec.offsets), StoredFields.loaded(rec.buckets, rec.ids), now,
                                    version=rec.version)  # fmt: skip

    def forget(self, features: set[str]) -> None:
        """Drop in-memory state (it is reloaded from Redis on next use): after a failure or a revocation."""
        for f in features:
            self.cache.pop(f, None)
            self.engine.features.pop(f, None)
        self.engine.breaker = BreakerState()

    async def _commit(self, applied: dict[str, dict[str, int]], since: dict[str, int | None],
                      part_off: dict[str, int]) -> None:  # fmt: skip
        """``since``: per feature, the earliest event time applied (None: every bucket may have changed)."""
        # a control message for a feature without state changes nothing (the engine ignores it)
        writes, stored = [], {}
        for f, offs in sorted(applied.items()):
            if f in self.engine.features:
                w, stored[f] = self._write(f, offs, since.get(f, _NO_EVENTS))
                writes.append(w)
        with self._redis_timer("commit"):
            result = await self.store.commit(writes, self.engine.breaker, part_off)
        if self.metrics is not None:
            self.metrics.state_written()
        for f, ok in result.items():
            if ok:
                c = self.cache[f]
                c.offsets.update(applied[f])
                c.version += 1
                c.stored = stored[f]
                self.engine.features[f].track_changes()  # the next write sends what changes from here
            else:
                self.stats.fenced += 1
                log.warning("state of %s was written by another worker; dropping the local copy", f)
                self.forget({f})

    def _redis_timer(self, op: str) -> AbstractContextManager:
        return self.metrics.redis_timer(op) if self.metrics is not None else nullcontext()

    def _write(self, f: str, offsets: dict[str, int], since: int | None) -> tuple[FeatureWrite, StoredFields]:
        """The write of feature ``f``'s state, and its fields as stored once it succeeds (``StoredFields``)."""
        eng = self.engine
        fs = eng.features[f]
        c = self.cache[f]
        full = f in self.full_rewrite or fs.touched is None
        if f in self.full_rewrite:
            since = None
            self.full_rewrite.discard(f)
        lateness = eng.config.allowed_lateness_ms
        ch, stored = c.stored.changes(fs, eng.plan, lateness, c.version + 1, since, full)
        return FeatureWrite(
            feature=f,
            core=orjson.dumps(fs.core_state(self.key, lateness, with_seen=False)),
            summary=orjson.dumps(summary_of(eng, f, fs)),
            offsets=offsets,
            version=c.version,
            epoch=self.epoch or 0,
            changed=ch.changed,
            deleted=ch.deleted,
            ids_changed=ch.ids_changed,
            ids_deleted=ch.ids_deleted,
        ), stored

    # --- outputs ------------------------------------------------------------------------------------------------

    async def _publish(self, out: Outputs, dead: list[dict]) -> None:
        recs = output_records(self.topics, out, dead)
        if recs:
            key = self.engine.config.signing_key
            if out.commands and key is not None and getattr(self.publisher, "carries_headers", False):
                headers = command_headers(out, len(recs), key, int(self.clock() * 1000))
                await self.publisher.publish(recs, headers=headers)
            else:
                await self.publisher.publish(recs)
            for topic, _, _ in recs:
                self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
            if self.metrics is not None:
                self.metrics.published(out)

    async def _page_degraded(self, err: Exception) -> None:
        if self.degraded:
            return
        try:
            await self._publish(Outputs(pages=[self._degraded_page(
                "trigger", f"rollguard monitor degraded: {type(err).__name__}: {str(err)[:200]}; "
                "batches are retried, nothing is acknowledged until state is saved")]), [])  # fmt: skip
            self.degraded = True
        except Exception as e:  # noqa: BLE001 - Kafka itself may be what is down; keep retrying the batch
            log.error("cannot page 'monitor degraded' (%s); will try again", e)

    async def _resolve_degraded(self) -> None:
        try:
            await self._publish(Outputs(pages=[self._degraded_page("resolve", "rollguard monitor recovered")]), [])
            self.degraded = False
        except Exception as e:  # noqa: BLE001
            log.error("cannot resolve the 'monitor degraded' page (%s)", e)

    def _degraded_page(self, action: str, summary: str) -> dict:
        return degraded_page(action, summary, self.topics.prefix, self.clock())

    # --- idle watermarks ----------------------------------------------------------------------------------------

    async def idle_tick(self, idle_after_s: float) -> int:
        """Live mode only: a source of a feature (interactions or feedback) silent for ``idle_after_s`` of wall time
        no longer holds the feature's watermark back. If the other source is flowing, the silent one is brought
        level with it; if the whole feature is silent, its event time is assumed to have kept pace with the wall
        clock since its last event. Returns how many features advanced."""
        async with self.lock:
            now = self.clock()
            eng = self.engine
            out = Outputs()
            if self.epoch is None:  # no epoch since the last assignment yet: the next batch takes one
                return 0
            touched: dict[str, dict[str, int]] = {}
            for f, c in sorted(self.cache.items()):
                fs = eng.features.get(f)
                if fs is None or fs.max_ts is None:
                    continue
                fs.applied_min = None
                sources = eng.plan.profile(f).sources
                silent = [s for s in sorted(sources) if now - c.src_arrival.get(s, c.first_seen) >= idle_after_s]
                if not silent:
                    continue
                if len(silent) == len(sources):  # the whole feature is quiet
                    quiet = now - max(c.src_arrival.values(), default=c.first_seen)
                    target = fs.max_ts + int(quiet * 1000)
                else:
                    target = fs.max_ts
                produced = Outputs()
                for s in silent:
                    produced.extend(eng.advance_idle(f, s, target))
                    c.src_arrival[s] = now if len(silent) == len(sources) else c.src_arrival.get(s, c.first_seen)
                if produced or len(silent) == len(sources):
                    out.extend(produced)
                    touched[f] = {}
            if not touched:
                return 0
            # held events the advance made plausible were applied: their buckets changed
            since = {f: eng.features[f].applied_min for f in touched if eng.features[f].applied_min is not None}
            try:
                if await self._claim(sorted(touched)):  # a zombie's idle timer: publish nothing, reload later
                    self.forget(set(touched))
                    return 0
                await self._publish(out, [])
                await self._commit(touched, since, {})
            except Exception as e:  # noqa: BLE001 - the next tick recomputes from Redis
                log.warning("idle watermark advance failed (%s); state reloads from Redis", e)
                self.forget(set(touched))
                await self._page_degraded(e)
            return len(touched)

    # --- control ------------------------------------------------------------------------------------------------

    async def refuse_control(self, m: Message, payload: dict, reason: str, detail: str) -> None:
        """Dead-letter a control the shell refused before the engine (a reload that is not signed as it must be)."""
        err = InvalidEvent(reason, detail)
        err.payload = payload  # type: ignore[attr-defined]  # redacted by dead_letter
        async with self.lock:
            await self._publish(Outputs(), [dead_letter(m, err, self.parser.pseudo)])
            self.stats.invalid[reason] = self.stats.invalid.get(reason, 0) + 1

    async def reload(self, rulesets: tuple) -> None:
        async with self.lock:
            if self.epoch is None:
                self.forget(set(self.cache))  # reloaded from Redis, under the new plan, by the next batch
            elif lost := await self._claim(sorted(self.cache)):
                self.forget(set(lost))
            out = self.engine.reload(rulesets)
            self.full_rewrite |= set(self.cache)
            if out:
                await self._publish(out, [])
            writes = sorted(self.cache)
            if writes:
                await self._commit({f: {} for f in writes}, {f: None for f in writes}, {})

