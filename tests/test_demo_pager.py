"""`rollguard demo` says where its pages went: with a pager target configured, the pager inside the demo's worker
delivers them (here to a recording webhook) and the demo prints how many; with none, it stays self-contained."""

from __future__ import annotations

import io
import json
import threading
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streams.demo import _pages_went, pager_target, run_demo
from streams.settings import Settings


def test_without_a_pager_the_demo_says_its_pages_stay_on_the_topic():
    assert pager_target(Settings()) is None
    line = _pages_went(None, 0, 3, "rollguard.pages")
    assert line.startswith("pages: 3 on topic rollguard.pages only (self-contained")


def test_the_target_is_named_by_scheme_and_host_never_path_or_credentials():
    s = Settings(pager_target="webhook", pager_url="https://bob:pw@hooks.example:8443/T0/secret-path")
    assert pager_target(s) == "webhook at https://hooks.example:8443"


@pytest.mark.slow
def test_demo_delivers_its_pages_to_a_configured_webhook(tmp_path, monkeypatch):
    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("ROLLGUARD_PAGER_TARGET", "webhook")
    monkeypatch.setenv("ROLLGUARD_PAGER_URL", f"http://127.0.0.1:{srv.server_port}/hook")
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            assert run_demo(tmp_path / "demo") == 0
    finally:
        srv.shutdown()
    out = buf.getvalue()
    line = next(ln for ln in out.splitlines() if ln.startswith("pages: "))
    produced = int(line.split()[1])
    assert f"delivered to webhook at http://127.0.0.1:{srv.server_port} by the pager in the worker: {produced} " \
           "delivered" in line  # fmt: skip
    assert produced >= 1 and len(got) >= produced
    assert any(p["payload"]["severity"] == "critical" for p in got)  # the rollback's page reached the receiver
