"""How long the worker's Kafka consumer lets the broker hold a fetch that has no data (``FETCH_MAX_WAIT``).

Faust's aiokafka driver builds its consumer with ``fetch_max_wait_ms=1500`` written into the code, no setting. A
broker that holds an empty fetch for the whole wait even when records arrive meanwhile (tansu, the embedded broker,
does; Apache Kafka answers as soon as ``fetch_min_bytes`` are there) then delays a record by up to that long before
the worker sees it: detection latency. :func:`set_fetch_max_wait` wraps the driver's consumer factory so the
consumer it builds waits ``ms`` instead; the cost is more empty fetch requests on an idle partition set (4 a second
at 250 ms, per worker).

The driver is pinned (faust-streaming 0.15, aiokafka 0.14, pyproject.toml); if a later one no longer has the
factory or the consumer attribute, the worker logs that the setting is not applied and runs with Faust's wait.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rollguard.kafka")

__all__ = ["set_fetch_max_wait", "fetch_max_wait_of"]


def set_fetch_max_wait(ms: int) -> bool:
    """Make the consumers Faust's aiokafka driver builds from now on wait at most ``ms`` for a fetch. True when
    applied; idempotent (the last call wins)."""
    if ms < 1:
        raise ValueError(f"fetch max wait must be at least 1 ms, got {ms}")
    try:
        from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as Thread
    except ImportError:  # pragma: no cover - the pinned Faust has it
        log.warning("FETCH_MAX_WAIT not applied: Faust's aiokafka driver has no AIOKafkaConsumerThread")
        return False
    build = getattr(Thread, "_create_worker_consumer", None)
    if build is None:  # pragma: no cover - the pinned Faust has it
        log.warning("FETCH_MAX_WAIT not applied: Faust's consumer factory is not where it was")
        return False
    original = getattr(build, "__rollguard_original__", build)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        if hasattr(consumer, "_fetch_max_wait_ms"):  # read when the consumer starts its fetcher
            consumer._fetch_max_wait_ms = ms
        else:  # pragma: no cover - the pinned aiokafka has it
            log.warning("FETCH_MAX_WAIT not applied: the aiokafka consumer keeps its fetch wait elsewhere")
        return consumer

    create_worker_consumer.__rollguard_original__ = original  # type: ignore[attr-defined]
    Thread._create_worker_consumer = create_worker_consumer
    return True


def fetch_max_wait_of(consumer: Any) -> int | None:
    """The fetch wait a built aiokafka consumer will use (for tests and the worker's start-up log)."""
    return getattr(consumer, "_fetch_max_wait_ms", None)
