"""The real-Prometheus test kit against a tiny exposition server: scraping, instant and range queries, Prometheus's
own error messages, and a clean stop. If these fail, the dashboard test's failures say nothing about dashboards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.prometheus_kit import PrometheusQueryError, PrometheusServer, process_exists, require_prometheus


class _Exposition(BaseHTTPRequestHandler):
    """Serves a fixed gauge and a counter that grows by 5 per scrape (Prometheus text format 0.0.4)."""

    scrapes = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != "/metrics":
            self.send_error(404)
            return
        type(self).scrapes += 1
        body = (
            "# TYPE kit_fixed gauge\n"
            "kit_fixed{colour=\"blue\"} 42\n"
            "# TYPE kit_scrapes_total counter\n"
            f"kit_scrapes_total {5 * type(self).scrapes}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prom(target, tmp_path_factory) -> Iterator[PrometheusServer]:
    require_prometheus()
    with PrometheusServer([target], tmp_path_factory.mktemp("prometheus")) as p:
        p.wait_targets_up(timeout=20)
        yield p


def test_target_is_scraped_and_up(prom, target):
    [t] = prom.targets()
    assert t["health"] == "up"
    assert t["scrapeUrl"] == f"http://{target}/metrics"
    assert t["labels"]["job"] == "rollguard"


def test_instant_query_returns_the_exposed_value(prom, target):
    [sample] = prom.query('kit_fixed{colour="blue"}')
    assert sample["metric"] == {"__name__": "kit_fixed", "colour": "blue", "instance": target, "job": "rollguard"}
    assert float(sample["value"][1]) == 42.0


def test_scalar_results_come_back_as_one_item(prom):
    assert [float(v) for _, v in (r["value"] for r in prom.query("scalar(kit_fixed) * 2"))] == [84.0]


def test_rate_over_the_scrape_window_has_data(prom):
    [rate] = prom.wait_for("rate(kit_scrapes_total[5s])", lambda r: len(r) == 1, timeout=15)
    assert float(rate["value"][1]) > 0
    now = time.time()
    [series] = prom.query_range("kit_scrapes_total", now - 10, now, 1)
    values = [float(v) for _, v in series["values"]]
    assert len(values) >= 2 and values == sorted(values) and values[-1] > values[0]


def test_an_absent_series_is_an_empty_result(prom):
    assert prom.query("kit_never_exposed") == []


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        pytest.param("rate(kit_scrapes_total[5s]", "1:27: parse error: unclosed left parenthesis",
                     id="syntax"),
        pytest.param("rate(kit_fixed)", 'expected type range vector in call to function "rate", got instant vector',
                     id="type"),
        pytest.param("sum by (colour) (kit_fixed) + on(nope) group_left kit_fixed[1m]",
                     "binary expression must contain only scalar and instant vector types", id="range-in-binop"),
    ],
)  # fmt: skip
def test_bad_query_raises_with_prometheus_message(prom, expr, message):
    with pytest.raises(PrometheusQueryError) as err:
        prom.query(expr)
    assert str(err.value).startswith('bad_data: invalid parameter "query": ')  # Prometheus's type and wording
    assert message in str(err.value)
    assert expr in str(err.value)


def test_bad_range_query_raises_too(prom):
    now = time.time()
    with pytest.raises(PrometheusQueryError, match="parse error"):
        prom.query_range("sum(", now - 10, now, 1)


def test_stop_leaves_no_process(target, tmp_path):
    require_prometheus()
    with PrometheusServer([target], tmp_path / "prometheus") as p:
        pid = p.proc.pid
        assert process_exists(pid)
    assert not p.running()
    assert p.proc.returncode == 0  # SIGTERM is a clean shutdown for Prometheus
    assert not process_exists(pid)
    assert "See you next time!" in p.log_path.read_text()
