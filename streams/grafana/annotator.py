"""``rollguard annotate``: decisions and commands from Kafka, posted to Grafana as annotations.

An aiokafka consumer in group ``<app_id>-annotations`` (streams.kafka.committing_consumer, shared with ``rollguard
pager``) reads the decisions and commands topics; each record goes through
:class:`streams.grafana.annotations.AnnotationPlanner` (pure) and, when it is worth a mark, to Grafana's
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from streams.grafana.annotations import AnnotationPlanner, InvalidRecord
from streams.kafka.backoff import Backoff
from streams.kafka.committing_consumer import CommittingConsumer
from streams.grafana.api import AsyncGrafana, GrafanaError
from streams.settings import Settings
from streams.kafka.topics import Topics

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
    """The consumer loop (a :class:`~streams.kafka.committing_consumer.CommittingConsumer`). ``post`` sends one
    annotation body (raising :class:`GrafanaError`); ``once`` stops when every assigned partition is read to its end;
    ``stop`` (an ``asyncio.Event``) ends a running loop cleanly."""

    def __init__(self, settings: Settings, post: Post, planner: AnnotationPlanner, *, once: bool = False,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 join_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.kinds = {self.topics.decisions: "decision", self.topics.commands: "command"}
        self.post = post
        self.planner = planner
        self.stats = AnnotateStats()
        self.consumer = CommittingConsumer(
            settings, group=group_id(settings), client_id="rollguard-annotate", topics=list(self.kinds),
            handle=self._handle, errors=(GrafanaError,), backoff=Backoff(backoff_s, backoff_max_s), once=once,
            join_timeout_s=join_timeout_s, on_retry=self._retried,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event | None = None) -> AnnotateStats:
        await self.consumer.run(stop)
        return self.stats

    def _retried(self, _: Exception) -> None:
        self.stats.retries += 1

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
