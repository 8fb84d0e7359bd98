"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/ready`` (Kubernetes probes).

It runs on the worker's own asyncio loop (an aiohttp server inside a ``mode.Service`` the Faust app starts), not
in a thread like ``prometheus_client.start_http_server``: the collector reads engine state, which only the loop may
touch, and a scrape then always sees the state between two batch steps, never in the middle of one.

* ``/metrics``  ``exposition()`` (``WorkerMetrics.exposition``: the Prometheus text format);
* ``/healthz``  200 while the process and its loop answer (liveness);
* ``/ready``    200 once input partitions are assigned and the last batch reached Redis, else 503 (readiness).

A port that cannot be bound (another worker on the same host) is logged as an error and the worker goes on without
the endpoint: the monitor matters more than its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["MetricsServer", "metrics_app"]

log = logging.getLogger("rollguard.metrics")


def metrics_app(exposition: Callable[[], bytes], ready: Callable[[], bool]) -> web.Application:
    """The aiohttp application (routes only), separate from the service so tests can drive it directly."""

    async def metrics(_: web.Request) -> web.Response:
        body = exposition()  # synchronous: no batch step can interleave with the collection
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", readyz)
    return app


class MetricsServer(Service):
    """Serves :func:`metrics_app` on ``host:port`` while the Faust app runs."""

    def __init__(self, exposition: Callable[[], bytes], host: str, port: int, ready: Callable[[], bool],
                 **kw) -> None:  # fmt: skip
        super().__init__(**kw)
        self.exposition = exposition
        self.host = host
        self.port = port
        self.ready = ready
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    async def on_start(self) -> None:
        runner = web.AppRunner(metrics_app(self.exposition, self.ready), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as e:
            await runner.cleanup()
            log.error("metrics endpoint disabled: cannot listen on %s:%d (%s)", self.host, self.port, e)
            return
        self._runner = runner
        log.info("metrics on %s (probes: /healthz, /ready)", self.url)  # news, not a problem: info

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
