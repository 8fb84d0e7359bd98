"""Waiting for Kafka and Redis at start-up (issue 12): an outage is waited out, a configuration error is not.

A worker started before its broker or Redis (a node reboot, a rollout that starts everything at once) retries the
pre-flight checks with bounded exponential backoff (``streams.kafka.backoff.Backoff``, jittered) until they pass,
or gives up after ``ROLLGUARD_STARTUP_TIMEOUT`` (default ``5m``; ``0`` waits for ever) with ``StartupTimeout``,
which the CLI turns into exit code 2 and the last error. Only ``KafkaUnavailable`` and ``RedisUnavailable`` are
waited for; everything else the checks raise (an evicting Redis, the production profile's refusals, wrong
credentials, topics that are not co-partitioned) is a configuration error and stops the worker at once.

While it waits, the worker's metrics port answers the probes: ``/healthz`` 200 (the process is alive: restarting
it would not bring the broker back) and ``/ready`` 503 (it processes nothing). ``/metrics`` is empty until the
Faust app, which owns the real endpoint, starts. Each attempt is logged with the error, which names the broker
list or the Redis URL without its password.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from rules.durations import parse_duration
from rules.exceptions import RollguardError
from streams.kafka.backoff import Backoff
from streams.kafka.topics import KafkaUnavailable
from streams.live.store import RedisUnavailable
from streams.settings import Settings

__all__ = ["StartupTimeout", "wait_for_dependencies", "retry_until"]

log = logging.getLogger("rollguard.startup")
T = TypeVar("T")
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 15.0


class StartupTimeout(RollguardError):
    """Kafka or Redis stayed unreachable for the whole ``ROLLGUARD_STARTUP_TIMEOUT``."""


def retry_until(attempt: Callable[[], T], timeout_s: float, backoff: Backoff | None = None,
                sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                on_first_wait: Callable[[], None] | None = None) -> T:  # fmt: skip
    """``attempt()`` until it returns, retrying ``KafkaUnavailable``/``RedisUnavailable`` with ``backoff`` for at
    most ``timeout_s`` seconds (0: for ever); any other exception propagates at once. ``on_first_wait`` runs once,
    before the first wait (a start-up that finds everything up does nothing more than one attempt).

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise KafkaUnavailable("cannot use Kafka at k:9092: KafkaTimeoutError")
    ...     return "ok"
    >>> waits = []
    >>> retry_until(flaky, 60, Backoff(0.5, 4.0), sleep=waits.append), waits
    ('ok', [0.5, 1.0])
    """
    backoff = backoff or Backoff(BACKOFF_BASE_S, BACKOFF_MAX_S, rng=random.Random())
    start = clock()
    n = 0
    while True:
        n += 1
        try:
            result = attempt()
        except (KafkaUnavailable, RedisUnavailable) as e:
            waited = clock() - start
            if timeout_s and waited >= timeout_s:
                raise StartupTimeout(
                    f"gave up after waiting {waited:.0f}s ({n} attempts; ROLLGUARD_STARTUP_TIMEOUT="
                    f"{timeout_s:g}s) for the worker's dependencies: {e}") from e  # fmt: skip
            delay = backoff.next_delay()
            if timeout_s:
                delay = max(0.0, min(delay, timeout_s - waited))
            log.warning("start-up attempt %d: %s; retrying in %.1fs (waited %.0fs%s)", n, e, delay, waited,
                        f" of {timeout_s:g}s" if timeout_s else ", no limit")  # fmt: skip
            if n == 1 and on_first_wait is not None:
                on_first_wait()
            sleep(delay)
            continue
        if n > 1:
            log.warning("start-up: Kafka and Redis reachable after %d attempts (%.1fs)", n, clock() - start)
        return result


def wait_for_dependencies(settings: Settings, attempt: Callable[[], T]) -> T:
    """``retry_until(attempt, ROLLGUARD_STARTUP_TIMEOUT)``, serving the probes (``/healthz`` alive, ``/ready`` not
    ready) from the first failed attempt until the last, when the worker has a metrics port."""
    timeout_s = parse_duration(settings.startup_timeout) / 1000
    probes = _Probes(settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
    try:
        return retry_until(attempt, timeout_s, on_first_wait=probes.start if probes else None)
    finally:
        if probes is not None:
            probes.stop()


class _Probes:
    """``/healthz`` 200, ``/ready`` 503 and an empty ``/metrics`` on the worker's port, from a thread of its own
    (the checks block); stopped before the Faust app binds the same port for the real endpoint."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="rollguard-startup-probes",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        from aiohttp import web

        from streams.metrics_server import metrics_app

        loop = self._loop = asyncio.new_event_loop()
        runner = web.AppRunner(metrics_app(lambda: b"", lambda: False), access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            try:
                loop.run_until_complete(web.TCPSite(runner, self.host, self.port).start())
                log.info("start-up probes on %s:%d: /healthz alive, /ready not ready", self.host, self.port)
            except OSError as e:  # as the worker's own endpoint: the monitor matters more than its probes
                log.error("start-up probes disabled: cannot listen on %s:%d (%s)", self.host, self.port, e)
            started.set()
            loop.run_forever()  # until stop()
            loop.run_until_complete(runner.cleanup())
        finally:
            started.set()
            loop.close()
            self._stopped.set()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # the loop already closed (it failed to set up)
            pass
        self._stopped.wait(10)
        self._thread.join(10)
