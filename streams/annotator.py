"""``rollguard annotate``: decisions and commands from Kafka, posted to Grafana as annotations.

An aiokafka consumer in group ``<app_id>-annotations`` reads the decisions and commands topics; each record goes
through :class:`streams.annotations.AnnotationPlanner` (pure) and, when it is worth a mark, to Grafana's
``POST /api/annotations``.

Delivery is **at-least-once**: a partition's offset is committed only after every record before it was posted
(or deliberately skipped), so a crash, a kill -9 or a Grafana outage never loses an annotation; a crash between
a post and its commit posts that annotation again on restart (Grafana has no idempotency key for annotations).
Identical records the worker re-publishes after its own crash are de-duplicated in memory by ``decision_id`` /
``command_id``.

Failures:

* Grafana unreachable, timing out, 408, 429 or 5xx (retryable): the consumer seeks back to the record that
  failed and tries again after an exponential backoff (``backoff_s`` doubling up to ``backoff_max_s``); it keeps
  polling Kafka in between, so the group does not evict it during a long outage.
* Any other Grafana answer (401 bad token, 403 permission, 404 URL or dashboard, 400): nothing retrying can fix,
  so it stops with a :class:`GrafanaError` (exit code 2), without committing the record: fix and run again.
* A record that is not JSON or not a valid decision/command: counted as bad, logged with its position (never its
  content), skipped and committed past. One bad record never blocks the topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from streams.annotations import AnnotationPlanner, InvalidRecord
from streams.grafana_http import AsyncGrafana, GrafanaError
from streams.security import aiokafka_config
from streams.settings import Settings
from streams.topics import Topics, TopicsError

__all__ = ["AnnotateStats", "Annotator", "grafana_poster", "group_id"]

log = logging.getLogger("rollguard.annotate")

Post = Callable[[dict], Awaitable[None]]


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-annotations"


@dataclass
class AnnotateStats:
    posted: int = 0
    not_annotated: int = 0  # pending / cleared decisions
    duplicates: int = 0
    bad: int = 0
    retries: int = 0

    def line(self) -> str:
        return (f"annotations: {self.posted} posted, {self.not_annotated} records not annotated (pending/cleared), "
                f"{self.duplicates} duplicate, {self.bad} bad (skipped), {self.retries} retried post(s)")  # fmt: skip


def grafana_poster(grafana: AsyncGrafana) -> Post:
    """Post one annotation body through grafana-client (the low-level ``client.POST``: the element helper
    ``annotations.add_annotation`` sends ``panelId``/``timeEnd`` as null when absent, this sends exactly the
    documented body)."""

    async def post(body: dict) -> None:
        await grafana.call("POST /api/annotations", grafana.api.client.POST, "/annotations", json=body)

    return post


class Annotator:
    """The consumer loop. ``post`` sends one annotation body (raising :class:`GrafanaError`); ``once`` stops when
    every assigned partition is read to its end; ``stop`` (an ``asyncio.Event``) ends a running loop cleanly."""

    def __init__(self, settings: Settings, post: Post, planner: AnnotationPlanner, *, once: bool = False,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 join_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.kinds = {self.topics.decisions: "decision", self.topics.commands: "command"}
        self.post = post
        self.planner = planner
        self.once = once
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.join_timeout_s = join_timeout_s
        self.stats = AnnotateStats()

    async def run(self, stop: asyncio.Event | None = None) -> AnnotateStats:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        stop = stop or asyncio.Event()
        session_ms = int(self.settings.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=group_id(self.settings),
            client_id="rollguard-annotate", enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=session_ms, heartbeat_interval_ms=max(100, session_ms // 3), fetch_max_wait_ms=500,
            **aiokafka_config(self.settings),
        )  # fmt: skip
        try:
            await consumer.start()
        except KafkaError as e:
            await consumer.stop()
            raise TopicsError(f"cannot use Kafka at {self.settings.kafka_bootstrap}: {e}") from e
        try:
            missing = set(self.kinds) - await consumer.topics()
            if missing:
                raise TopicsError(f"topic(s) missing: {', '.join(sorted(missing))} (a worker started with "
                                  "--create-topics creates them)")  # fmt: skip
            consumer.subscribe(list(self.kinds))
            await self._loop(consumer, stop)
        finally:
            await consumer.stop()
        return self.stats

    async def _loop(self, consumer, stop: asyncio.Event) -> None:
        delay = self.backoff_s
        started, joined = time.monotonic(), False
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            joined = joined or bool(consumer.assignment())
            if not batch:
                if not joined and time.monotonic() - started > self.join_timeout_s:
                    raise TopicsError(f"no partitions assigned to group {group_id(self.settings)} within "
                                      f"{self.join_timeout_s:.0f}s: is the broker's group coordinator up?")  # fmt: skip
                if self.once and await self._drained(consumer):
                    return
                continue
            if await self._process(consumer, batch, stop):
                delay = self.backoff_s
                continue
            self.stats.retries += 1
            await _sleep(stop, delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _process(self, consumer, batch: dict, stop: asyncio.Event) -> bool:
        """Handle one fetched batch in order; False when a retryable Grafana error interrupted it (every partition
        is then sought back to its first unhandled record, so nothing fetched is lost)."""
        pending = list(batch.items())
        while pending:
            tp, msgs = pending.pop(0)
            done, ok = None, True
            for m in msgs:
                if stop.is_set():
                    ok = False
                    break
                try:
                    await self._handle(tp, m)
                except GrafanaError as e:
                    if not e.retryable:
                        await self._commit(consumer, tp, done)
                        raise
                    log.warning("%s; retrying from %s:%d:%d", e, tp.topic, tp.partition, m.offset)
                    _seek(consumer, tp, m.offset)
                    ok = False
                    break
                done = m.offset + 1
            await self._commit(consumer, tp, done)
            if not ok:
                for other, rest in pending:
                    _seek(consumer, other, rest[0].offset)
                return stop.is_set()
        return True

    async def _handle(self, tp, m) -> None:
        kind = self.kinds[tp.topic]
        where = f"{tp.topic}:{tp.partition}:{m.offset}"
        try:
            record = orjson.loads(m.value) if m.value is not None else None
            if self.planner.is_duplicate(record, kind):
                self.stats.duplicates += 1
                return
            body = self.planner.plan(record, kind)
        except (orjson.JSONDecodeError, InvalidRecord) as e:
            self.stats.bad += 1
            reason = "not JSON" if isinstance(e, orjson.JSONDecodeError) else str(e)
            log.warning("bad record at %s skipped: %s", where, reason)
            return
        if body is None:
            self.stats.not_annotated += 1
            return
        await self.post(body)
        self.planner.posted(record, kind)
        self.stats.posted += 1
        log.info("annotated %s (%s)", where, body["tags"][4])

    async def _commit(self, consumer, tp, offset: int | None) -> None:
        if offset is None:
            return
        from aiokafka.errors import KafkaError

        try:
            await consumer.commit({tp: offset})
        except KafkaError as e:  # rebalanced away, coordinator gone: re-posted later at worst (at-least-once)
            log.warning("offset commit for %s:%d failed (%s); its records may be annotated again",
                        tp.topic, tp.partition, type(e).__name__)  # fmt: skip

    async def _drained(self, consumer) -> bool:
        """Every assigned partition read to its end offset (checked after a quiet fetch: on some brokers the end
        offset lags the last record batch, and the quiet fetch is what shows nothing more is there)."""
        assigned = consumer.assignment()
        if not assigned:
            return False
        ends = await consumer.end_offsets(list(assigned))
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True


def _seek(consumer, tp, offset: int) -> None:
    """Rewind ``tp`` to ``offset``; a partition revoked meanwhile resumes from its committed offset elsewhere."""
    from aiokafka.errors import IllegalStateError

    try:
        consumer.seek(tp, offset)
    except IllegalStateError:
        log.info("%s:%d was revoked before its rewind; its new owner resumes from the committed offset",
                 tp.topic, tp.partition)  # fmt: skip


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
