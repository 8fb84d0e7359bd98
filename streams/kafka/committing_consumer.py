"""An at-least-once Kafka consumer: a record's offset is committed only after its handler returned.

Shared by the consumers that deliver rollguard's outputs somewhere else — ``rollguard annotate`` (Grafana) and
``rollguard pager`` (Alertmanager, PagerDuty, a webhook). An aiokafka consumer in its own group, manual commits:

* the handler returns: the record is done (delivered, or deliberately skipped: the handler decides what a bad
  record or a refused delivery means), and the partition's offset is committed past it after the batch;
* the handler raises a *retryable* error (its ``retryable`` attribute is true): every partition of the batch is
  sought back to its first unhandled record, and the loop waits an exponential backoff before fetching again — it
  keeps polling Kafka in between, so the group does not evict it during a long outage of the receiver;
* the handler raises any other error of ``errors``: what was handled before it is committed, and the error
  propagates (the command exits and says why).

A crash, a kill -9 or a rebalance between a delivery and its commit delivers that record again: receivers must
de-duplicate (Alertmanager by labels, PagerDuty by ``dedup_key``, Grafana annotations by nothing — see
streams/grafana/annotator.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.kafka.backoff import Backoff
from streams.security import aiokafka_config
from streams.settings import Settings
from streams.kafka.topics import TopicsError

__all__ = ["CommittingConsumer", "Handler"]

log = logging.getLogger("rollguard.consumer")

Handler = Callable[[Any, Any], Awaitable[None]]  # (TopicPartition, ConsumerRecord) -> None


class CommittingConsumer:
    """The consumer loop of group ``group`` over ``topics``. ``once`` stops when every assigned partition is read
    to its end; ``run(stop)`` ends cleanly when the ``asyncio.Event`` is set. ``on_retry`` is called with each
    retryable error before the backoff (for counters). ``assigned`` is true once partitions are assigned
    (readiness)."""

    def __init__(self, settings: Settings, *, group: str, client_id: str, topics: Sequence[str], handle: Handler,
                 errors: tuple[type[Exception], ...], backoff: Backoff | None = None, once: bool = False,
                 join_timeout_s: float = 60.0,
                 on_retry: Callable[[Exception], None] | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.group = group
        self.client_id = client_id
        self.topics = list(topics)
        self.handle = handle
        self.errors = errors
        self.backoff = backoff or Backoff()
        self.once = once
        self.join_timeout_s = join_timeout_s
        self.on_retry = on_retry
        self.assigned = False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        stop = stop or asyncio.Event()
        session_ms = int(self.settings.session_timeout_s * 1000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=self.group, client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3), fetch_max_wait_ms=500, **aiokafka_config(self.settings),
        )  # fmt: skip
        try:
            await consumer.start()
        except KafkaError as e:
            await consumer.stop()
            raise TopicsError(f"cannot use Kafka at {self.settings.kafka_bootstrap}: {e}") from e
        try:
            missing = set(self.topics) - await consumer.topics()
            if missing:
                raise TopicsError(f"topic(s) missing: {', '.join(sorted(missing))} (a worker started with "
                                  "--create-topics creates them)")  # fmt: skip
            consumer.subscribe(self.topics)
            await self._loop(consumer, stop)
        finally:
            self.assigned = False
            await consumer.stop()

    async def _loop(self, consumer, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            self.assigned = self.assigned or bool(consumer.assignment())
            if not batch:
                if not self.assigned and time.monotonic() - started > self.join_timeout_s:
                    raise TopicsError(f"no partitions assigned to group {self.group} within "
                                      f"{self.join_timeout_s:.0f}s: is the broker's group coordinator up?")  # fmt: skip
                if self.once and await self._drained(consumer):
                    return
                continue
            error = await self._process(consumer, batch, stop)
            if error is None:
                self.backoff.reset()
                continue
            if self.on_retry is not None:
                self.on_retry(error)
            # a receiver that says when to come back (429/503 Retry-After) is believed, within the backoff's cap
            after = min(getattr(error, "retry_after_s", None) or 0.0, self.backoff.max_s)
            await _sleep(stop, max(self.backoff.next_delay(), after))

    async def _process(self, consumer, batch: dict, stop: asyncio.Event) -> Exception | None:
        """Handle one fetched batch in order; the retryable error that interrupted it, if one did (every partition
        is then sought back to its first unhandled record, so nothing fetched is lost)."""
        pending = list(batch.items())
        while pending:
            tp, msgs = pending.pop(0)
            done, error = None, None
            for m in msgs:
                if stop.is_set():
                    break
                try:
                    await self.handle(tp, m)
                except self.errors as e:
                    if not getattr(e, "retryable", False):
                        await self._commit(consumer, tp, done)
                        raise
                    log.warning("%s; retrying from %s:%d:%d", e, tp.topic, tp.partition, m.offset)
                    _seek(consumer, tp, m.offset)
                    error = e
                    break
                done = m.offset + 1
            await self._commit(consumer, tp, done)
            if error is not None or stop.is_set():
                for other, rest in pending:
                    _seek(consumer, other, rest[0].offset)
                return error
        return None

    async def _commit(self, consumer, tp, offset: int | None) -> None:
        if offset is None:
            return
        from aiokafka.errors import KafkaError

        try:
            await consumer.commit({tp: offset})
        except KafkaError as e:  # rebalanced away, coordinator gone: delivered again later at worst (at-least-once)
            log.warning("offset commit for %s:%d failed (%s); its records may be delivered again",
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
