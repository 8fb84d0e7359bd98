"""The worker's log is plain text off a terminal, and its start-up news is logged at INFO, not as a warning.

The demo (and any container) writes the worker's output to a file: Faust's progress spinner, active at the warning
level, would put cursor hide/show escape codes into it.
"""

from __future__ import annotations

import asyncio
import io
import logging

import faust

from streams.live.worker import faust_worker
from streams.metrics_server import MetricsServer


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _startup_output(stdout: io.StringIO) -> str:
    """What Faust writes to ``stdout`` around start-up at the worker's default (warning) level."""
    app = faust.App("rollguard-log-test", broker="kafka://127.0.0.1:1", autodiscover=False)
    worker = faust_worker(app, "warning", stdout)
    root = logging.getLogger("rollguard-log-test")
    root.addHandler(logging.NullHandler())
    try:
        worker.on_setup_root_logger(root, logging.WARNING)  # attaches the spinner to the log
        root.warning("something worth a warning")
        worker._on_startup_end_spinner()  # what Faust calls once the worker is up
    finally:
        root.handlers.clear()
    return stdout.getvalue()


def test_the_worker_writes_no_escape_codes_when_its_output_is_not_a_terminal():
    assert "\x1b" not in _startup_output(io.StringIO())


def test_on_a_terminal_faust_keeps_its_spinner():
    # the other side of the switch: the spinner (and its escape codes) stays where a person watches
    assert "\x1b[?25l" in _startup_output(_Terminal())


def test_metrics_address_is_logged_at_info(caplog):
    server = MetricsServer(lambda: b"", "127.0.0.1", 0, lambda: True)

    async def start_and_stop() -> None:
        await server.on_start()
        await server.on_stop()

    with caplog.at_level(logging.INFO, logger="rollguard.metrics"):
        asyncio.run(start_and_stop())
    [record] = [r for r in caplog.records if r.getMessage().startswith("metrics on ")]
    assert record.levelno == logging.INFO
