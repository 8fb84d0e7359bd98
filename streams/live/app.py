"""The Faust application: agents on the input topics, a control-topic reader, idle and rule-reload timers.

``create_app(settings)`` builds a worker; the module-level ``app`` (built from the environment on first access)
is what ``faust -A streams.live.app worker`` needs. ``rollguard worker`` is the usual way to run it.

One agent consumes the interaction and feedback topics together: Faust's assignor gives co-partitioned topics (same
partition count) to the same worker, and producers key both by feature, so every event of one feature is processed
by one worker, in order. Batches come from ``take_events``; the ``Processor`` commits their effect to Redis before
the batch is acknowledged. On a new assignment the first batch of each partition is checked against the offset
stored in Redis: if Kafka's committed offset ran ahead of Redis (a crash after an ack but before the state write),
the worker seeks back to Redis' offset — Redis, not Kafka, is the source of truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka.partitioner import DefaultPartitioner
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CollectorRegistry

from rules.control_auth import check_signature
from rules.durations import parse_duration
from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from rules.loader import RulesInvalid, load_rules
from streams.metrics_server import MetricsServer
from streams.live.observability import WorkerMetrics
from streams.live.processor import Message, Processor
from streams.security import aiokafka_config, faust_credentials, redis_kwargs
from streams.settings import Settings
from streams.live.store import RedisStore
from streams.live.store import redis_client as store_client
from streams.kafka.faust_fetch import set_fetch_max_wait
from streams.kafka.topics import Topics

__all__ = ["create_app", "Worker", "rules_fingerprint", "faust_settings"]

log = logging.getLogger("rollguard.worker")


class FaustPublisher:
    carries_headers = True  # Kafka record headers: the processor adds signed emission times to commands

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def publish(self, records, headers=None) -> None:
        producer = self.app.producer
        hs = headers or [None] * len(records)
        futs = [await producer.send(t, k, v, None, None, h) for (t, k, v), h in zip(records, hs)]
        await asyncio.gather(*futs)


def rules_fingerprint(paths: list[str]) -> str:
    """sha256 over the names and contents of every rule file under ``paths`` (detects any change)."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for f in files:
            h.update(str(f).encode())
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(b"<missing>")
    return h.hexdigest()


def faust_settings(s: Settings) -> dict[str, Any]:
    """The Faust configuration of a rollguard worker (shared with bench/bare_agent.py, so both measure alike); it
    also sets the consumer's fetch wait, which Faust has no setting for (``streams.kafka.faust_fetch``)."""
    set_fetch_max_wait(parse_duration(s.fetch_max_wait))
    datadir = os.path.join(tempfile.gettempdir(), "rollguard-faust")
    os.makedirs(datadir, exist_ok=True)  # Faust creates only the last level
    return dict(
        broker=f"kafka://{s.kafka_bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=s.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        stream_wait_empty=True,
        web_enabled=False,
        autodiscover=False,
        # Faust keeps table files in its data dir; rollguard has no Faust tables (state is in Redis), so keep the
        # empty dir out of the working directory
        datadir=os.path.join(datadir, s.app_id),
        # the group join waits up to the rebalance timeout for members; keep it short so a worker that starts or
        # takes over after a crash does so in seconds (the session timeout bounds crash detection)
        broker_credentials=faust_credentials(s),  # SASL_SSL / mTLS (None for PLAINTEXT)
        broker_session_timeout=s.session_timeout_s,
        broker_rebalance_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(0.5, s.session_timeout_s / 5),
    )


class Worker:
    """Everything one worker process holds; the Faust app's agents and timers call into it."""

    def __init__(self, settings: Settings, redis_client: Any | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.rule_paths = settings.rule_paths()
        self.rulesets = load_rules(self.rule_paths)
        self.fingerprint = rules_fingerprint(self.rule_paths)
        self.redis = redis_client or store_client(settings.redis_url, settings.redis_cluster, **redis_kwargs(settings))
        self.store = RedisStore(self.redis, settings.state_namespace)
        self.engine = Engine(self.rulesets, settings.engine_config())
        self.parser = EventParser(Pseudonymizer(settings.user_key_bytes()), settings.operator_keys_map())
        self.registry = CollectorRegistry()  # this worker's own: no global registry
        self.metrics = self._build_metrics() if settings.metrics_port else None
        self.app = self._build_app()
        self.processor = Processor(self.engine, self.store, self.parser, FaustPublisher(self.app), topics=self.topics,
                                   detector_key=settings.state_key_bytes(), metrics=self.metrics)  # fmt: skip
        if self.metrics is not None:
            self.metrics.processor_stats = self.processor.stats
        self.started_ms = int(time.time() * 1000)  # operator-facing only: which reload requests are history
        self.verified: set[str] = set()  # partitions whose position was checked against Redis since assignment
        self.assigned: set[tuple[str, int]] = set()
        self._partitioner = DefaultPartitioner()

    # --- the Faust app ------------------------------------------------------------------------------------------

    def _build_metrics(self) -> WorkerMetrics:
        s = self.settings
        m = WorkerMetrics(self.registry, self.engine, max_groups=s.metrics_max_groups, app_id=s.app_id)
        self.engine.observer = m.observe
        m.assigned = self.input_partitions
        m.highwater = self._highwater
        return m

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(s.app_id, **faust_settings(s))
        source = app.topic(*self.topics.inputs(), value_serializer="raw", key_serializer="raw",
                           partitions=s.partitions)  # fmt: skip
        batch_max = s.batch_max
        within = parse_duration(s.batch_within) / 1000

        @app.agent(source, name=f"{s.app_id}.process", concurrency=1)
        async def process(stream):
            async for events in stream.take_events(batch_max, within):
                msgs = [Message(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                        for e in events]  # fmt: skip
                msgs = await self._check_positions(msgs)
                if msgs:
                    await self.processor.process(msgs)

        @app.task
        async def control_reader() -> None:
            await self._read_control()

        if s.pager_in_worker:  # the pages consumer in this loop (streams/pager/); its metrics join the worker's

            @app.task
            async def pager() -> None:
                from streams.pager import supervise

                await supervise(s, self.registry)

        if s.idle_after:
            idle_s = parse_duration(s.idle_after) / 1000

            @app.timer(interval=max(1.0, idle_s / 4))
            async def idle() -> None:
                await self.processor.idle_tick(idle_s)

        @app.timer(interval=parse_duration(s.rules_poll) / 1000)
        async def watch_rules() -> None:
            if rules_fingerprint(self.rule_paths) != self.fingerprint:
                await self.reload("rules folder changed")

        @app.on_partitions_revoked.connect
        async def on_revoked(app, revoked, **kw) -> None:  # noqa: ARG001
            async with self.processor.lock:
                self.processor.forget(set(self.processor.cache))
            self.verified.clear()

        @app.on_partitions_assigned.connect
        async def on_assigned(app, assigned, **kw) -> None:  # noqa: ARG001
            self.assigned = {(tp.topic, tp.partition) for tp in assigned}
            self.verified.clear()
            # a new epoch per assignment: a worker paused while its partitions moved keeps its older one and is
            # fenced before it publishes (streams/store.py); taken before the next batch if Redis is slow now
            try:
                epoch = await asyncio.wait_for(self.store.new_epoch(), 2.0)
            except Exception as e:  # noqa: BLE001
                log.warning("cannot take a new epoch now (%s); the next batch takes one", e)
                epoch = None
            await self.processor.reassigned(epoch)
            if self.metrics is not None:
                self.metrics.forget({f for f in self.metrics.features() if not self.owns(f)})
                await self._load_positions()

        if self.metrics is not None:
            app.service(MetricsServer(self.metrics.exposition, s.metrics_host, s.metrics_port, self.metrics.ready))
        return app

    # --- metrics sources ----------------------------------------------------------------------------------------

    def input_partitions(self) -> set[tuple[str, int]]:
        """Assigned partitions of the input topics (Faust also assigns its internal leader topic)."""
        inputs = self.topics.inputs()
        return {tp for tp in self.assigned if tp[0] in inputs}

    def _highwater(self, topic: str, partition: int) -> int | None:
        """The consumer's last known high watermark of an assigned partition (from fetch responses; no I/O)."""
        try:
            return self.app.consumer.highwater(faust.types.TP(topic, partition))
        except (ConsumerNotStarted, AssertionError, KeyError):  # not started, or not assigned (any more)
            return None

    async def _load_positions(self) -> None:
        """Consumer lag needs each assigned partition's next offset before its first batch: Redis has it. Bounded
        in time: it runs inside the rebalance, which a slow Redis must not hold up."""
        tps = sorted(self.input_partitions())
        try:
            stored = await asyncio.wait_for(self.store.partition_offsets([f"{t}:{p}" for t, p in tps]), 2.0)
        except Exception as e:  # noqa: BLE001 - lag stays unknown until the partition's first batch
            log.warning("cannot read partition offsets for the lag metric (%s)", e)
            return
        self.metrics.set_positions({(t, p): off + 1 for (t, p) in tps if (off := stored[f"{t}:{p}"]) is not None})

    # --- positions ----------------------------------------------------------------------------------------------

    async def _check_positions(self, msgs: list[Message]) -> list[Message]:
        """First batch of a partition since assignment: Kafka ahead of Redis means an ack outran a state write."""
        first: dict[str, int] = {}
        for m in msgs:
            if m.tp not in self.verified and m.tp not in first:
                first[m.tp] = m.offset
        if not first:
            return msgs
        stored = await self.store.partition_offsets(sorted(first))
        rewind: set[str] = set()
        for tp, off in first.items():
            want = stored[tp] + 1 if stored[tp] is not None else None
            if want is not None and off > want:
                topic, part = tp.rsplit(":", 1)
                log.warning("%s: Kafka position %d is ahead of the state in Redis (%d); seeking back", tp, off, want)
                await self.app.consumer.seek(faust.types.TP(topic, int(part)), want)
                rewind.add(tp)
            else:
                self.verified.add(tp)
        return [m for m in msgs if m.tp not in rewind]

    # --- control topic ------------------------------------------------------------------------------------------

    def owns(self, feature: str) -> bool:
        parts = sorted(p for t, p in self.assigned if t == self.topics.interactions)
        if not parts:
            return False
        n = self.settings.partitions
        return self._partitioner(feature.encode(), list(range(n)), list(range(n))) in parts

    async def _read_control(self) -> None:
        """Every worker reads the whole control topic (no consumer group): reloads apply everywhere, a resume is
        applied by the worker owning the feature, exactly once thanks to the per-feature offsets in Redis."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", group_id=None, **aiokafka_config(s))  # fmt: skip
        await consumer.start()
        try:
            tp = TopicPartition(self.topics.control, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for m in msgs:
                        # before this worker started: by position at start, or by the producer's timestamp (the
                        # broker's end offset can lag behind the last record on some brokers)
                        old = m.offset < end or (m.timestamp is not None and m.timestamp < self.started_ms)
                        await self._on_control(m.topic, m.partition, m.offset, m.value, historical=old)
        finally:
            await consumer.stop()

    async def _on_control(self, topic: str, partition: int, offset: int, value: bytes, historical: bool) -> None:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        msg = Message(topic, partition, offset, value)
        if isinstance(obj, dict) and obj.get("action") == "reload":
            if historical:  # a reload before this worker started is already in the rules it loaded
                return
            keys = self.parser.operator_keys
            reason, detail, _ = check_signature(obj, keys) if keys is not None else (None, "", None)
            if reason is None:
                await self.reload("control message")
            else:
                log.warning("reload control at %s:%d:%d refused: %s (%s)", topic, partition, offset, reason, detail)
                if self.owns(""):  # one worker dead-letters what every worker reads
                    await self.processor.refuse_control(msg, obj, reason, detail)
            return
        try:
            await self.processor.process([msg], owns=self.owns, dead_letters=self.owns(""))
        except Exception:  # noqa: BLE001 - a control message must never stop the reader
            log.exception("control message at %s:%d:%d failed", topic, partition, offset)

    # --- reload -------------------------------------------------------------------------------------------------

    async def reload(self, why: str) -> bool:
        fingerprint = rules_fingerprint(self.rule_paths)
        try:
            rulesets = load_rules(self.rule_paths)
        except RulesInvalid as e:
            self.fingerprint = fingerprint  # do not retry the same broken files every poll
            log.error("rules reload (%s) rejected, keeping version %s:\n%s", why, self.engine.plan.version[:12], e)
            return False
        try:
            await self.processor.reload(rulesets)
        except Exception:  # noqa: BLE001 - state reloads from Redis under the new plan on next use
            log.exception("rules reload: saving migrated state failed")
            async with self.processor.lock:
                self.processor.forget(set(self.processor.cache))
        self.rulesets = rulesets
        self.fingerprint = fingerprint
        if self.metrics is not None:
            self.metrics.rules_loaded(self.engine.plan)
        log.warning("rules reloaded (%s): plan version %s", why, self.engine.plan.version[:12])
        return True


def create_app(settings: Settings | None = None) -> faust.App:
    return Worker(settings or Settings()).app


def __getattr__(name: str) -> Any:  # the module-level ``app`` for ``faust -A streams.live.app``, built on first access
    if name == "app":
        return create_app()
    raise AttributeError(name)
