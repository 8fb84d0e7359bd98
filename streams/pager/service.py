"""``rollguard pager``: the pages topic, delivered to Alertmanager, PagerDuty Events v2 or a webhook.

A :class:`~streams.kafka.committing_consumer.CommittingConsumer` in group ``<app_id>-pager`` reads the pages topic; each
record is validated (streams/pager/pages.py), turned into the receiver's request (receivers.py) and sent
(delivery.py). Delivery is **at-least-once**; the offset is committed only after the page was delivered or
deliberately skipped:

* delivered (2xx): counted (``rollguard_pager_delivered_total``) and committed;
* retryable failure (no answer, timeout, 408, 429, 5xx): counted (``rollguard_pager_retried_total``), the
  partition is rewound to the page and retried after an exponential, jittered backoff (``ROLLGUARD_PAGER_BACKOFF``
  doubling up to ``ROLLGUARD_PAGER_BACKOFF_MAX``); nothing behind it is delivered meanwhile, so pages keep their
  order (a resolve never overtakes its trigger);
* refused for good (any other 4xx: a bad routing key, a malformed alert): counted (``rollguard_pager_failed_total``),
  logged with the status, skipped and committed, so one bad page does not block every later one;
* not a page (not JSON, a field missing): counted (``rollguard_pager_invalid_total``), logged by position and the
  fields at fault (never the content), skipped.

Receivers de-duplicate what a crash re-delivers: PagerDuty by ``dedup_key``, Alertmanager by the alert's labels
(which include the ``dedup_key``); a webhook gets the ``dedup_key`` in the body.

It runs as its own process (``rollguard pager``, /metrics on ``ROLLGUARD_PAGER_METRICS_PORT``), or inside each worker
(``ROLLGUARD_PAGER_IN_WORKER=true``: same consumer group, so the workers share the pages partition between them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from rules.durations import parse_duration
from streams.kafka.backoff import Backoff
from streams.kafka.committing_consumer import CommittingConsumer
from streams.pager.delivery import Deliverer
from streams.pager.exceptions import DeliveryError, InvalidPage
from streams.pager.metrics import PagerMetrics
from streams.pager.pages import parse_page
from streams.settings import Settings
from streams.kafka.topics import Topics

__all__ = ["Pager", "PagerStats", "group_id", "serve", "supervise"]

log = logging.getLogger("rollguard.pager")


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-pager"


@dataclass
class PagerStats:
    delivered: int = 0
    failed: int = 0
    invalid: int = 0
    retries: int = 0

    def line(self) -> str:
        return (f"pager: {self.delivered} delivered, {self.failed} refused by the receiver (skipped), "
                f"{self.invalid} invalid record(s) (skipped), {self.retries} retried delivery(ies)")  # fmt: skip


class Pager:
    """The pages consumer. ``deliverer`` sends one page (streams/pager/delivery.py); ``metrics`` counts (default: in
    a registry of its own); ``rng`` jitters the backoff (default: an unseeded ``random.Random``; retry timing
    decides nothing). ``run(stop)`` until ``stop`` is set, or with ``once`` until the topic is read to its end."""

    def __init__(self, settings: Settings, deliverer: Deliverer, *, metrics: PagerMetrics | None = None,
                 once: bool = False, rng: random.Random | None = None, join_timeout_s: float = 60.0,
                 clock=time.time) -> None:  # fmt: skip
        self.settings = settings
        self.deliverer = deliverer
        self.target = deliverer.target
        self.metrics = metrics or PagerMetrics(CollectorRegistry(), self.target)
        self.stats = PagerStats()
        self.clock = clock
        backoff = Backoff(parse_duration(settings.pager_backoff) / 1000, parse_duration(settings.pager_backoff_max)
                          / 1000, rng=rng or random.Random())  # fmt: skip
        self.consumer = CommittingConsumer(
            settings, group=group_id(settings), client_id="rollguard-pager",
            topics=[Topics(settings.topic_prefix).pages], handle=self._handle, errors=(DeliveryError,),
            backoff=backoff, once=once, join_timeout_s=join_timeout_s, on_retry=self._retried,
        )  # fmt: skip

    @property
    def ready(self) -> bool:
        return self.consumer.assigned

    async def run(self, stop: asyncio.Event | None = None) -> PagerStats:
        try:
            await self.consumer.run(stop)
        finally:
            await self.deliverer.close()
        return self.stats

    def _retried(self, _: Exception) -> None:
        self.stats.retries += 1
        self.metrics.retried.labels(self.target).inc()

    async def _handle(self, tp, m) -> None:
        where = f"{tp.topic}:{tp.partition}:{m.offset}"
        try:
            page = parse_page(m.value)
        except InvalidPage as e:
            self.stats.invalid += 1
            self.metrics.invalid.inc()
            log.warning("invalid page record at %s skipped: %s", where, e)
            return
        try:
            await self.deliverer.deliver(page)
        except DeliveryError as e:
            if e.retryable:
                raise
            self.stats.failed += 1
            self.metrics.failed.labels(self.target).inc()
            log.error("page %s (%s) at %s refused, skipped: %s", page.dedup_key, page.event_action, where, e)
            return
        self.stats.delivered += 1
        self.metrics.delivered.labels(self.target, page.event_action).inc()
        if m.timestamp is not None and m.timestamp > 0:
            self.metrics.latency.labels(self.target).observe(max(0.0, self.clock() - m.timestamp / 1000))
        log.info("delivered page %s (%s) from %s", page.dedup_key, page.event_action, where)


async def supervise(settings: Settings, registry: CollectorRegistry, stop: asyncio.Event | None = None) -> None:
    """The pager inside a worker: restarted after any error (logged), so it never takes the worker down."""
    backoff = Backoff(1.0, 60.0, rng=random.Random())
    stop = stop or asyncio.Event()
    metrics = PagerMetrics(registry, settings.pager_target)  # one registration, kept across restarts
    while not stop.is_set():
        pager = Pager(settings, Deliverer.from_settings(settings), metrics=metrics)
        try:
            await pager.run(stop)
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the monitor matters more than its pager
            log.error("pager stopped (%s: %s); restarting", type(e).__name__, e)
            try:
                await asyncio.wait_for(stop.wait(), backoff.next_delay())
            except TimeoutError:
                pass


async def serve(settings: Settings, *, once: bool = False, stop: asyncio.Event | None = None,
                rng: random.Random | None = None) -> PagerStats:  # fmt: skip
    """``rollguard pager``: the pager with its own /metrics, /healthz and /ready (``ROLLGUARD_PAGER_METRICS_PORT``)."""
    from aiohttp import web
    from prometheus_client import generate_latest

    from streams.metrics_server import metrics_app

    registry = CollectorRegistry()
    pager = Pager(settings, Deliverer.from_settings(settings), metrics=PagerMetrics(registry, settings.pager_target),
                  once=once, rng=rng)  # fmt: skip
    runner = None
    if settings.pager_metrics_port:
        runner = web.AppRunner(metrics_app(lambda: generate_latest(registry), lambda: pager.ready), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.metrics_host, settings.pager_metrics_port).start()
            log.warning("pager metrics on port %d (/metrics, /healthz, /ready)", settings.pager_metrics_port)
        except OSError as e:
            await runner.cleanup()
            runner = None
            log.error("pager metrics endpoint disabled: cannot listen on %s:%d (%s)", settings.metrics_host,
                      settings.pager_metrics_port, e)  # fmt: skip
    try:
        log.warning("pager: %s -> %s", Topics(settings.topic_prefix).pages, pager.deliverer.name)
        return await pager.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
