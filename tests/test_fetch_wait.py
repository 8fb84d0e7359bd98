"""The worker's Kafka fetch wait (``FETCH_MAX_WAIT``, streams.kafka.faust_fetch): Faust hard-codes 1.5 s, which on a
broker that holds empty fetches delayed every record the worker read (detection latency p99 0.8-1.5 s before, 0.24 s
after, ``./dev bench worker``)."""

from __future__ import annotations

import asyncio

import faust
import pytest
from pydantic import ValidationError

from streams.kafka.faust_fetch import fetch_max_wait_of, set_fetch_max_wait
from streams.live.app import faust_settings
from streams.settings import Settings


def built_wait(**settings: str) -> int | None:
    """The fetch wait of the consumer the worker's Faust app builds (nothing is connected: built, read, stopped)."""

    async def run() -> int | None:
        s = Settings(kafka_bootstrap="127.0.0.1:9", **settings)
        app = faust.App(f"t-fetch-{len(settings)}", **faust_settings(s))
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return fetch_max_wait_of(consumer)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_the_worker_consumer_waits_what_the_setting_says():
    assert Settings().fetch_max_wait == "250ms"
    assert built_wait() == 250
    assert built_wait(fetch_max_wait="40ms") == 40
    assert built_wait(fetch_max_wait="1500ms") == 1500  # Faust's own wait, if an operator wants it back


def test_setting_it_again_replaces_it_instead_of_wrapping_the_factory_twice():
    set_fetch_max_wait(100)
    set_fetch_max_wait(200)
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    factory = AIOKafkaConsumerThread._create_worker_consumer
    original = factory.__rollguard_original__
    assert not hasattr(original, "__rollguard_original__")
    assert built_wait(fetch_max_wait="200ms") == 200
    with pytest.raises(ValueError):
        set_fetch_max_wait(0)


@pytest.mark.parametrize("value", ["0ms", "31s", "soon", "-5ms"])
def test_an_unusable_fetch_wait_is_refused_with_the_setting_named(value):
    with pytest.raises(ValidationError, match="fetch_max_wait"):
        Settings(fetch_max_wait=value)
