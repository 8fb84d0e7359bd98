"""The embedded stack's readiness checks (the stack itself is exercised by every live test)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from streams.live.embedded import StackError, _wait_redis_loaded


def serve(replies: list[bytes]) -> tuple[int, threading.Thread]:
    """A loopback server answering each connection's first command with the next reply (the last one repeats)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]

    def run() -> None:
        with srv:
            for i in range(50):
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(64)
                    conn.sendall(replies[min(i, len(replies) - 1)])
                    if replies[min(i, len(replies) - 1)].startswith(b"+PONG"):
                        return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


def alive() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_waits_while_redis_replays_its_aof(tmp_path):
    # a restarted Redis listens before it has loaded its AOF and answers -LOADING meanwhile (the flake CI hit)
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    port, t = serve([loading, loading, loading, b"+PONG\r\n"])
    proc = alive()
    try:
        _wait_redis_loaded(port, proc, tmp_path / "redis.log", timeout=10)
    finally:
        proc.kill()
    t.join(5)
    assert not t.is_alive()  # it got to the PONG


def test_gives_up_with_what_redis_said(tmp_path):
    port, _ = serve([b"-LOADING Redis is loading the dataset in memory\r\n"])
    proc = alive()
    try:
        with pytest.raises(StackError, match="still not ready.*LOADING"):
            _wait_redis_loaded(port, proc, tmp_path / "redis.log", timeout=0.5)
    finally:
        proc.kill()


def test_a_dead_redis_is_reported_with_its_log(tmp_path):
    log = tmp_path / "redis.log"
    log.write_text("Bad directive or wrong number of arguments\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    proc.wait()
    with pytest.raises(StackError, match="exited with code 1: Bad directive"):
        _wait_redis_loaded(free_port_closed(), proc, log, timeout=5)


def free_port_closed() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
