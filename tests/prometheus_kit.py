"""A real Prometheus server for tests: Debian's ``prometheus`` scraping local targets, queried over its HTTP API.

The observability tests check dashboards against the real query engine rather than a reimplementation of PromQL:
a panel query that parses, type-checks and returns data here is one Grafana will draw. The server runs from a
temporary directory (config, TSDB, log), listens on 127.0.0.1 on a free port, scrapes every second and is stopped
with SIGTERM (then SIGKILL) so no process outlives the test.

>>> render_config(["127.0.0.1:9000"], "1s").splitlines()[:3]
['global:', '  scrape_interval: 1s', '  evaluation_interval: 1s']
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "PrometheusServer",
    "PrometheusQueryError",
    "free_port",
    "process_exists",
    "prometheus_binary",
    "render_config",
    "require_prometheus",
]

JOB = "rollguard"
_MISSING = (
    "the `prometheus` binary is not on PATH: install Debian's `prometheus` package "
    "(`apt-get install prometheus`; .ci/run does this in CI) to run the real-Prometheus tests"
)


class PrometheusQueryError(AssertionError):
    """Prometheus answered ``status: error``; the message is Prometheus's own (error type, error, the query)."""


def prometheus_binary() -> str | None:
    """Path of the ``prometheus`` executable, or None when it is not installed."""
    return shutil.which("prometheus")


def require_prometheus() -> str:
    """The binary's path, or skip the calling test with a reason that says how to install it."""
    path = prometheus_binary()
    if path is None:
        pytest.skip(_MISSING)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_config(targets: Sequence[str], interval: str) -> str:
    """Prometheus YAML for one job ``rollguard`` scraping ``targets`` (``host:port``) at ``/metrics``.

    JSON is valid YAML, so the target list is rendered with ``json.dumps`` and needs no quoting rules.
    """
    return "\n".join([
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        f"  scrape_timeout: {interval}",
        "scrape_configs:",
        f"  - job_name: {JOB}",
        "    metrics_path: /metrics",
        f"    static_configs: [{{targets: {json.dumps(list(targets))}}}]",
        "",
    ])  # fmt: skip


class PrometheusServer:
    """``prometheus`` in a subprocess scraping ``targets`` every ``interval``; a context manager.

    ``workdir`` holds ``prometheus.yml``, the TSDB (``data/``) and ``prometheus.log``; give each server its own
    (``tmp_path / "prometheus"``). Entering waits for ``/-/ready``; errors carry the tail of the log.
    """

    def __init__(self, targets: Sequence[str], workdir: Path, interval: str = "1s", binary: str | None = None,
                 ready_timeout: float = 30.0) -> None:  # fmt: skip
        self.scrape_targets = list(targets)
        self.workdir = Path(workdir)
        self.interval = interval
        self.binary = binary or prometheus_binary()
        self.ready_timeout = ready_timeout
        self.port = 0
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.binary is None:
            raise FileNotFoundError(_MISSING)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(render_config(self.scrape_targets, self.interval))
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                 "--storage.tsdb.retention.time=1h", "--log.level=info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"prometheus exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready within {self.ready_timeout:.0f}s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Prometheus flushes its head block and exits), SIGKILL after ``timeout``; always reaps."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return "(no prometheus log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # --- HTTP API ----------------------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """``data`` of a Prometheus API answer; ``status: error`` raises :class:`PrometheusQueryError`."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 bad_data, 422 execution, 503 timeout: the body says why
            raw = e.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise PrometheusQueryError(f"HTTP {e.code} from {path}: {raw[:500]!r}") from None
        if body.get("status") != "success":
            query = f" (query: {params['query']})" if params and "query" in params else ""
            raise PrometheusQueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}{query}")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result list. A scalar or string result comes back as one item with empty labels,
        so every answer is a list whose emptiness means "no data"."""
        params = {"query": expr} | ({"time": f"{time:.3f}"} if time is not None else {})
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query: one item per series with ``values`` = [[ts, "value"], ...]."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return self._get("/api/v1/query_range", params)["result"]

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``health`` is ``up``, ``down`` or ``unknown`` before the first scrape)."""
        return self._get("/api/v1/targets", {"state": "active"})["activeTargets"]

    def wait_for(self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0,
                 interval: float = 0.5) -> list[dict[str, Any]]:  # fmt: skip
        """Poll the instant query ``expr`` until ``predicate(result)`` holds; return that result.

        A query error is not retried: a broken expression will not heal by waiting.
        """
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(interval)
        raise TimeoutError(f"{expr!r}: condition not met within {timeout:.0f}s; last result {result}\n"
                           f"{self.log_tail(10)}")  # fmt: skip

    def wait_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until every configured target has been scraped successfully; returns the targets."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if len(targets) == len(self.scrape_targets) and all(t["health"] == "up" for t in targets):
                return targets
            time.sleep(0.25)
        state = [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in targets]
        raise TimeoutError(f"targets not up within {timeout:.0f}s: {state}")


def process_exists(pid: int) -> bool:
    """Whether a process with ``pid`` exists (a zombie counts: it has not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
