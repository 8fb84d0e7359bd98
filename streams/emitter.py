"""The producer SDK: services send CONTRACT §1 events to Kafka, and Kafka can neither slow them down nor break them.

``Emitter.emit(event)`` validates the event with the worker's own parser, serialises it, appends it to a bounded
in-memory queue and returns: it never raises and never waits (a full queue drops and counts). A background thread
connects the kafka-python producer lazily (so a dead broker cannot block the constructor), groups queued events per
(topic, feature) into batch envelopes (a JSON array; ``envelope_size=1`` sends single objects), keyed by feature so
a feature's events share one partition and keep their order, and sends them with ``acks=all`` and idempotence.

Every event ends in one counter of :class:`EmitStats`: ``rejected`` (invalid, by reason), ``dropped`` (queue full),
or accepted, and then ``sent_events`` or ``failed`` (delivery failed, or undelivered when ``close`` gave up).
Logs name reasons and counts only, never a payload, and are rate-limited (the 1st, 2nd, 4th, 8th... of a kind).

>>> with Emitter("127.0.0.1:9092") as em:  # doctest: +SKIP
...     em.emit({"type": "interaction", "event_id": "e1", "ts": 0, "feature": "email-reply"})
True

:func:`emit_events`, :func:`read_jsonl` and :func:`add_emit_parser` are the back end of ``rollguard emit``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from rules.events import KNOWN_FIELDS, EventParser, Pseudonymizer
from rules.exceptions import InvalidEvent, RollguardError
from streams.kafka.topics import Topics, ensure_topics

__all__ = ["EmitStats", "Emitter", "emit_events", "read_jsonl", "add_emit_parser", "cmd_emit"]

log = logging.getLogger(__name__)
_VALIDATION_KEY = b"rollguard-emitter: validation only"  # without a user_key the pseudonyms are thrown away
_MAX_ENVELOPE_BYTES = 512 * 1024  # well under the broker's default 1 MiB message limit
_WHERE_KEPT = 5  # source locations remembered per rejection reason
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",  # with idempotence (kafka-python's default): retries neither duplicate nor reorder
    "client_id": "rollguard-emitter",
    "linger_ms": 5,  # envelopes are batched here; this only packs envelopes of several features together
    "max_block_ms": 10_000,
    "bootstrap_timeout_ms": 5_000,
}


def _loggable(n: int) -> bool:
    return n & (n - 1) == 0


@dataclass
class EmitStats:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_at: dict[str, list[str]] = field(default_factory=dict)  # first few source locations per reason
    dropped: int = 0
    sent_events: int = 0
    sent_messages: int = 0
    failed: int = 0

    def summary(self) -> str:
        """One line: ``accepted 3, rejected 1 (invalid_json: 1 at line 2), dropped 0, sent 3 events in 1 messages,
        failed 0``."""
        why = []
        for reason, n in sorted(self.rejected.items()):
            at = self.rejected_at.get(reason, [])
            where = f" at {', '.join(at)}{', ...' if n > len(at) else ''}" if at else ""
            why.append(f"{reason}: {n:,}{where}")
        rejected = f"{sum(self.rejected.values()):,}" + (f" ({'; '.join(why)})" if why else "")
        return (
            f"accepted {self.accepted:,}, rejected {rejected}, dropped {self.dropped:,}, "
            f"sent {self.sent_events:,} events in {self.sent_messages:,} messages, failed {self.failed:,}"
        )


class _Envelope:
    __slots__ = ("since", "parts", "size")

    def __init__(self, since: float) -> None:
        self.since, self.parts, self.size = since, [], 0


class Emitter:
    """Validated, batched, never-blocking event producer; see the module docstring. Thread-safe."""

    def __init__(self, bootstrap_servers: str | list[str], topics: Topics = Topics(), envelope_size: int = 100,
                 linger_ms: float = 50, max_queue: int = 100_000, producer_config: dict[str, Any] | None = None,
                 user_key: bytes | None = None) -> None:  # fmt: skip
        if envelope_size < 1 or linger_ms < 0 or max_queue < 1:
            raise ValueError("envelope_size and max_queue must be >= 1 and linger_ms >= 0")
        self.bootstrap_servers, self.topics, self.envelope_size = bootstrap_servers, topics, envelope_size
        self.linger_ms, self.max_queue, self.producer_config = linger_ms, max_queue, dict(producer_config or {})
        self.broker_error: str | None = None  # why the producer could not be created, while that lasts
        self._parser = EventParser(Pseudonymizer(_VALIDATION_KEY if user_key is None else user_key))
        self._rekey = user_key is not None
        self._lock = threading.Lock()
        self._has_items = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)
        self._queue: deque[tuple[float, str, bytes, bytes]] = deque()
        self._stats = EmitStats()
        self._pending = 0  # accepted, neither sent nor failed yet
        self._flushers = 0
        self._idle = False  # the sender waits with no deadline: wake it for the first event
        self._stopping = False
        self._closed = False  # final accounting done: late delivery reports are ignored
        self._deadline = 0.0  # set by close()
        self._thread = threading.Thread(target=self._run, name="rollguard-emitter", daemon=True)
        self._thread.start()

    # --- caller side -------------------------------------------------------------------------------------------

    @property
    def stats(self) -> EmitStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return copy.deepcopy(self._stats)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def emit(self, event: dict[str, Any], *, where: str | None = None, wait: float = 0.0) -> bool:
        """Queue one event; False if it was rejected or dropped (counted and logged). ``where`` labels the source
        location in ``stats.rejected_at``; ``wait`` > 0 waits that long for queue room instead of dropping."""
        return self._offer(event, where, wait) is None

    def reject(self, reason: str, where: str | None = None) -> None:
        """Count an event the source already knows is bad (e.g. an unreadable line) among the rejections."""
        with self._lock:
            self._stats.rejected[reason] += 1
            n = self._stats.rejected[reason]
            if where is not None and len(at := self._stats.rejected_at.setdefault(reason, [])) < _WHERE_KEPT:
                at.append(where)
        if _loggable(n):
            log.warning("event rejected: %s%s (%d so far)", reason, f" at {where}" if where else "", n)

    def _offer(self, event: Any, where: str | None, wait: float) -> str | None:
        """None when queued, else why not: ``dropped`` or a rejection reason."""
        try:
            ev = self._parser.parse_obj(event)
            out = {k: v for k, v in event.items() if k in KNOWN_FIELDS}  # unknown fields may carry free text
            if self._rekey and ev.type != "control" and ev.user is not None:
                out["user"] = ev.user
            value = orjson.dumps(out)
        except InvalidEvent as e:
            reason = e.reason
        except Exception:  # noqa: BLE001 - an unencodable value (e.g. an int beyond 64 bits) must not reach the caller
            reason = "unencodable"
        else:
            topic = {"interaction": self.topics.interactions, "feedback": self.topics.feedback}.get(
                ev.type, self.topics.control
            )
            return self._enqueue(topic, ev.feature.encode(), value, wait)
        self.reject(reason, where)
        return reason

    def _enqueue(self, topic: str, key: bytes, value: bytes, wait: float) -> str | None:
        with self._lock:
            if wait > 0 and len(self._queue) >= self.max_queue:
                self._has_room.wait_for(lambda: self._stopping or len(self._queue) < self.max_queue, wait)
            if not self._stopping and len(self._queue) < self.max_queue:
                self._queue.append((time.monotonic(), topic, key, value))
                self._stats.accepted += 1
                self._pending += 1
                if self._idle or len(self._queue) % self.envelope_size == 0:
                    self._has_items.notify()
                return None
            self._stats.dropped += 1
            n, closed = self._stats.dropped, self._stopping
        if _loggable(n):
            why = "the emitter is closed" if closed else f"the queue is full ({self.max_queue:,} events)"
            log.warning("event dropped: %s (%d dropped so far)", why, n)
        return "dropped"

    def flush(self, timeout: float = 10.0) -> bool:
        """Send what is queued now, ignoring the linger; wait until nothing is pending. False on timeout."""
        with self._lock:
            self._flushers += 1
            self._has_items.notify()
            try:
                return self._settled.wait_for(lambda: self._pending == 0, timeout)
            finally:
                self._flushers -= 1

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is pending within ``timeout`` seconds, then stop; what is still undelivered counts as failed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return
            self._stopping, self._deadline = True, deadline
            self._has_items.notify()
            self._has_room.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left, self._pending, self._closed = self._pending, 0, True
            self._stats.failed += left
            self._settled.notify_all()
            self._has_items.notify()
        if left:
            log.error("%d event(s) not delivered to Kafka at %s before close; counted as failed", left,
                      self.bootstrap_servers)  # fmt: skip

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sender thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            producer = self._connect()
            if producer is not None:
                self._pump(producer)
        except Exception:  # a bug here must not pass silently: what is pending counts as failed at close()
            log.exception("rollguard emitter: the sender thread stopped; nothing more will be sent")

    def _pump(self, producer: Any) -> None:
        """Move queued events into per-(topic, feature) envelopes; send those that are full or lingered enough."""
        linger = self.linger_ms / 1000
        envelopes: dict[tuple[str, bytes], _Envelope] = {}
        while True:
            with self._lock:
                self._wait_for_work(envelopes, linger)
                if self._closed:  # close() gave up waiting and counted these as failed already
                    break
                items = list(self._queue)
                self._queue.clear()
                self._has_room.notify_all()
                urgent, stopping = self._flushers > 0 or self._stopping, self._stopping
            for since, topic, key, value in items:
                env = envelopes.get((topic, key))
                if env is not None and env.size + len(value) > _MAX_ENVELOPE_BYTES:
                    self._send(producer, topic, key, envelopes.pop((topic, key)).parts)
                    env = None
                if env is None:
                    env = envelopes[(topic, key)] = _Envelope(since)
                env.parts.append(value)
                env.size += len(value) + 1
                if len(env.parts) >= self.envelope_size:
                    self._send(producer, topic, key, envelopes.pop((topic, key)).parts)
            now = time.monotonic()
            for (topic, key), env in list(envelopes.items()):
                if urgent or env.since + linger <= now:
                    del envelopes[(topic, key)]
                    self._send(producer, topic, key, env.parts)
            if stopping:
                break
        with contextlib.suppress(Exception):
            producer.close(max(0.0, self._deadline - time.monotonic()))  # aborted batches report as failed

    def _wait_for_work(self, envelopes: dict[tuple[str, bytes], _Envelope], linger: float) -> None:
        """Under the lock: until a flush, a close, a queue of an envelope's worth, or the oldest event's linger."""
        while not self._stopping:
            if self._queue and (self._flushers or len(self._queue) >= self.envelope_size):
                return
            oldest = min((e.since for e in envelopes.values()), default=None)
            if self._queue and (oldest is None or self._queue[0][0] < oldest):
                oldest = self._queue[0][0]
            if oldest is None:
                self._idle = True
                self._has_items.wait()
                self._idle = False
                continue
            remaining = oldest + linger - time.monotonic()
            if (envelopes and self._flushers) or remaining <= 0:
                return
            self._has_items.wait(remaining)

    def _connect(self) -> Any:
        """The producer, once the broker answers; None if close() gave up first or the config is unusable."""
        from kafka import KafkaProducer
        from kafka.codec import has_lz4
        from kafka.errors import KafkaConfigurationError

        config = {**_PRODUCER_DEFAULTS, "compression_type": "lz4" if has_lz4() else "gzip", **self.producer_config}
        config["bootstrap_servers"] = self.bootstrap_servers
        backoff, failures = 0.5, 0
        while not self._closed:  # a closing emitter still connects: close() waits for delivery until its timeout
            try:
                producer = KafkaProducer(**config)
            except (ValueError, TypeError, KafkaConfigurationError) as e:
                self.broker_error = f"unusable producer config: {e}"
                log.error("rollguard emitter: %s; nothing will be sent", self.broker_error)
                return None
            except Exception as e:  # noqa: BLE001 - NoBrokersAvailable and friends: keep trying, never raise
                failures += 1
                self.broker_error = str(e) or type(e).__name__
                if _loggable(failures) and not self._closed:
                    log.warning("cannot reach Kafka at %s (%s); retrying", self.bootstrap_servers, self.broker_error)
                with self._lock:
                    self._has_items.wait_for(lambda: self._closed, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.broker_error = None
            if self._closed:
                producer.close(0)
                return None
            return producer
        return None

    def _send(self, producer: Any, topic: str, key: bytes, parts: list[bytes]) -> None:
        value = parts[0] if self.envelope_size == 1 else b"[" + b",".join(parts) + b"]"
        try:
            future = producer.send(topic, key=key, value=value)
        except Exception as e:  # noqa: BLE001 - e.g. KafkaTimeoutError: no metadata for the topic within max_block_ms
            self._failed(len(parts), topic, e)
            return
        future.add_callback(self._delivered, len(parts))
        future.add_errback(self._failed, len(parts), topic)

    def _delivered(self, n: int, _metadata: object) -> None:
        with self._lock:
            if self._closed:
                return
            self._stats.sent_events += n
            self._stats.sent_messages += 1
            self._pending -= n
            if self._pending == 0:
                self._settled.notify_all()

    def _failed(self, n: int, topic: str, error: BaseException) -> None:
        with self._lock:
            if self._closed:
                return
            before = self._stats.failed
            self._stats.failed += n
            self._pending -= n
            if self._pending == 0:
                self._settled.notify_all()
        if (before + n).bit_length() > before.bit_length():  # crossed a power of two: rate-limited
            log.error("delivery of %d event(s) to %s failed: %s (%d failed so far)", n, topic,
                      type(error).__name__, before + n)  # fmt: skip


# --- rollguard emit --------------------------------------------------------------------------------------------------


def emit_events(events: Iterable[Any], bootstrap: str | list[str], topics: Topics = Topics(), envelope_size: int = 100,
                rate: float | None = None, *, timeout: float = 30.0, **options: Any) -> EmitStats:  # fmt: skip
    """Send ``events`` and wait for delivery (at most ``timeout`` s after the last one); returns the final counters.

    Items are event dicts, or ``(where, item)`` pairs naming the source location; an :class:`InvalidEvent` item
    counts as a rejection. ``rate`` paces the sending in events/s. Unlike a service, this waits for queue room (up
    to ``timeout``) rather than dropping, and stops when the broker takes nothing for that long.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0 events per second")
    em = Emitter(bootstrap, topics, envelope_size, **options)
    try:
        start, n = time.monotonic(), 0
        for item in events:
            where = None
            if type(item) is tuple:
                where, item = item
            if isinstance(item, InvalidEvent):
                em.reject(item.reason, where)
                continue
            if rate is not None:
                delay = start + n / rate - time.monotonic()
                if delay > 0.001:
                    time.sleep(delay)
            n += 1
            if em._offer(item, where, timeout) == "dropped":
                log.error("Kafka at %s took no events for %.0f s (%s); stopping", bootstrap, timeout,
                          em.broker_error or "broker slow or down")  # fmt: skip
                break
    finally:
        em.close(timeout)
    return em.stats


def read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    """``(where, event dict or InvalidEvent)`` per non-blank line of a ``.jsonl`` / ``.jsonl.gz`` file or ``-``
    (stdin); a file that breaks off mid-way (truncated gzip, I/O error) ends with an ``unreadable_file`` item."""
    with contextlib.ExitStack() as stack:
        src: Any = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        if path.endswith(".gz"):
            src = stack.enter_context(gzip.GzipFile(fileobj=src))
        n = 0
        try:
            for n, line in enumerate(src, 1):
                if line.strip():
                    try:
                        yield f"line {n}", orjson.loads(line)
                    except orjson.JSONDecodeError:
                        yield f"line {n}", InvalidEvent("invalid_json", f"line {n}")
        except (OSError, EOFError) as e:
            yield f"line {n + 1}", InvalidEvent("unreadable_file", type(e).__name__)


def _fail(msg: str, code: int = 2) -> int:
    print(f"rollguard: error: {msg}", file=sys.stderr)
    return code


def cmd_emit(args: argparse.Namespace) -> int:
    from streams.offline.scenario import generate, scenario_from_args

    bootstrap = args.bootstrap or os.environ.get("ROLLGUARD_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
    if args.envelope_size < 1:
        return _fail("--envelope-size must be >= 1")
    if args.rate is not None and args.rate <= 0:
        return _fail("--rate must be > 0 events per second")
    if args.timeout <= 0:
        return _fail("--timeout must be > 0 seconds")
    if args.events is not None:
        if (args.seed, args.days, args.scenario_rate) != (None, None, None):
            return _fail("--seed, --days and --scenario-rate go with --scenario, not --events")
        if args.events != "-" and not os.path.isfile(args.events):
            return _fail(f"events file not found: {args.events}")
        events: Iterable[Any] = read_jsonl(args.events)
    else:
        given = {"seed": args.seed, "mean_rate_per_s": args.scenario_rate}
        overrides = {k: v for k, v in given.items() if v is not None}
        if args.days is not None:
            if args.days <= 0:
                return _fail("--days must be > 0")
            overrides["duration_ms"] = int(args.days * 86_400_000)
        try:
            events = generate(scenario_from_args(args.scenario, **overrides))
        except (RollguardError, ValueError, TypeError) as e:
            return _fail(str(e))
    from streams.security import kafka_python_config

    client = kafka_python_config()  # SASL/TLS from ROLLGUARD_KAFKA_* like every rollguard client
    topics = Topics(prefix=args.topic_prefix)
    if args.create_topics:
        try:
            ensure_topics(bootstrap, topics, **client)
        except Exception as e:  # noqa: BLE001 - NoBrokersAvailable, KafkaError, ...: operational, not a bad argument
            return _fail(f"cannot create topics at {bootstrap}: {type(e).__name__}: {e}", 1)
    stats = emit_events(events, bootstrap, topics, args.envelope_size, args.rate, timeout=args.timeout,
                        producer_config=client)  # fmt: skip
    print(stats.summary())
    if stats.rejected.get("unreadable_file"):
        return _fail(f"{args.events} could not be read to the end ({', '.join(stats.rejected_at['unreadable_file'])})")
    return 1 if stats.failed or stats.dropped else 0


def add_emit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``rollguard emit`` on an argparse subparsers object; returns its parser."""
    e = subparsers.add_parser("emit", help="send events from a JSONL file or the scenario generator to Kafka")
    e.add_argument("--bootstrap", metavar="HOST:PORT", help="default: $ROLLGUARD_KAFKA_BOOTSTRAP or 127.0.0.1:9092")
    e.add_argument("--topic-prefix", default="", metavar="PREFIX")
    e.add_argument("--envelope-size", type=int, default=100, metavar="N", help="events per message (1: no arrays)")
    e.add_argument("--rate", type=float, metavar="EVENTS_PER_S", help="pace the sending (default: as fast as possible)")
    e.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="delivery timeout (default 30)")
    e.add_argument("--create-topics", action="store_true", help="create the rollguard topics that do not exist")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--events", metavar="PATH", help=".jsonl / .jsonl.gz file, or - for stdin")
    src.add_argument("--scenario", metavar="PRESET", help="generate events: clean, latency_spike, pii_leak, ...")
    e.add_argument("--seed", type=int, help="with --scenario")
    e.add_argument("--days", type=float, help="with --scenario: scenario length in days")
    e.add_argument("--scenario-rate", type=float, metavar="R", help="with --scenario: mean interactions per second")
    e.set_defaults(func=cmd_emit)
    return e
