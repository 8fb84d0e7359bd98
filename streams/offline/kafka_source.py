"""Historical Kafka topics as a replay input (``rollguard replay --from-kafka``), read without touching live state.

:class:`KafkaSource` assigns every partition of its topics by hand (no consumer group, so no join, no rebalance and
no committed offsets) and reads a *snapshot*: from each partition's beginning to the end offset found when the read
starts; messages produced meanwhile are not read. Partitions are merged by (message timestamp, topic, partition,
offset), which keeps each partition's order (all events of a feature share one partition: they are keyed by
feature) and lets interactions and their feedback interleave as they arrived; the order depends only on what the
topics hold, so the same topics always replay the same way.

The time range is *not* sought on the broker: ``offsets_for_times`` cannot be trusted everywhere (tansu), and a
message's timestamp says when it was produced, not when its events happened. The replay filters on event time
(``replay(..., since_ms=, until_ms=)``), per event, after parsing.

End offsets are probed with a fetch (its high watermark) rather than taken from ListOffsets alone, because some
brokers (tansu) answer ListOffsets with the first offset of the last record batch + 1, which would cut off the
rest of that batch.

>>> src = KafkaSource("127.0.0.1:9092", ["rollguard.interactions"], since_ms=None, until_ms=None)  # doctest: +SKIP
>>> for origin, payload in src: ...  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import heapq
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import orjson

from rules.events import parse_ts
from rules.exceptions import RollguardError
from streams.kafka.routing import input_streams
from streams.kafka.topics import Topics

__all__ = ["KafkaMessage", "KafkaSource", "KafkaSourceError", "add_from_kafka_args", "source_from_args", "time_arg"]

_BUFFER = 20_000  # records buffered per partition before it is paused (memory bound of the merge)
_FORBIDDEN = ("group_id", "enable_auto_commit", "group_instance_id")


class KafkaSourceError(RollguardError):
    """The topics cannot be replayed: a topic is missing, or the broker stopped serving a partition. Check the
    bootstrap address and the topic names (``--topic-prefix``), then retry."""


class KafkaMessage(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes
    headers: tuple = ()  # [(name, bytes), ...]: e.g. a command's signed emission time (rules.verify)


class KafkaSource:
    """A snapshot of ``topics`` in merged order; see the module docstring.

    ``since_ms`` / ``until_ms`` are kept for the caller (the replay filters events by event time); the source itself
    reads every message. ``consumer_config`` is passed to ``kafka.KafkaConsumer`` (security settings and the like);
    it may not set a group. ``stall_timeout_s``: how long a partition may return nothing before the replay fails.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        since_ms: int | None = None,
        until_ms: int | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        *,
        stall_timeout_s: float = 30.0,
    ) -> None:
        bad = sorted(set(consumer_config or ()) & set(_FORBIDDEN))
        if bad:
            raise KafkaSourceError(f"consumer_config may not set {', '.join(bad)}: a replay never joins a group")
        if not topics:
            raise KafkaSourceError("no topics to replay")
        self.bootstrap, self.topics = bootstrap, list(topics)
        self.since_ms, self.until_ms = since_ms, until_ms
        self.consumer_config = dict(consumer_config or {})
        self.stall_timeout_s = stall_timeout_s
        self.labels = tuple(f"kafka://{bootstrap}/{t}" for t in self.topics)
        self.snapshot: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (begin, end), once read
        self._read = 0

    # --- the replay's Source protocol ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        for m in self.messages():
            if m.value.startswith(b"{") and b'"reload"' in m.value and _is_reload(m.value):
                continue  # a worker instruction (re-read the rules folder), not an input of the rules
            yield {"topic": m.topic, "partition": m.partition, "offset": m.offset}, m.value

    def progress(self) -> tuple[int, int]:
        return self._read, sum(end - begin for begin, end in self.snapshot.values())

    # --- reading ---------------------------------------------------------------------------------------------------

    def messages(self) -> Iterator[KafkaMessage]:
        """Every message of the snapshot, merged; a missing value (tombstone) is ``b""``."""
        from kafka.errors import KafkaError

        try:
            consumer = self._consumer()
        except KafkaError as e:
            raise KafkaSourceError(f"cannot read from Kafka at {self.bootstrap}: {e!r}") from e
        try:
            begin, end = self._snapshot(consumer)
            self.snapshot = {(tp.topic, tp.partition): (begin[tp], end[tp]) for tp in begin}
            self._read = 0
            live = sorted((tp for tp in begin if end[tp] > begin[tp]), key=lambda tp: (tp.topic, tp.partition))
            if not live:
                return
            consumer.assign(live)
            for tp in live:
                consumer.seek(tp, begin[tp])
            yield from self._merge(consumer, live, end)
        except KafkaError as e:
            raise KafkaSourceError(f"reading {', '.join(self.topics)} from {self.bootstrap} failed: {e!r}") from e
        finally:
            consumer.close()

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        config: dict[str, Any] = {"client_id": "rollguard-replay", "allow_auto_create_topics": False}
        config.update(self.consumer_config)
        config.update(group_id=None, enable_auto_commit=False)  # never a group, never a commit
        return KafkaConsumer(bootstrap_servers=self.bootstrap, **config)

    def _snapshot(self, consumer: Any) -> tuple[dict, dict]:
        """(beginning offsets, end offsets) of every partition of the topics, end = the fetch high watermark."""
        from kafka import TopicPartition

        tps, missing = [], []
        for topic in self.topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                missing.append(topic)
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if missing:
            raise KafkaSourceError(f"topic(s) not found on {self.bootstrap}: {', '.join(missing)}")
        begin, listed = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        end = dict(listed)
        probe = [tp for tp in tps if listed[tp] > begin[tp]]
        if probe:
            # Fetch from the last listed record: its response carries the high watermark (the true end).
            consumer.assign(probe)
            for tp in probe:
                consumer.seek(tp, listed[tp] - 1)
            waiting, deadline = set(probe), time.monotonic() + self.stall_timeout_s
            while waiting:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    if records:
                        end[tp] = max(end[tp], records[-1].offset + 1)
                for tp in list(waiting):
                    high = consumer.highwater(tp)
                    if high is not None:
                        end[tp] = max(end[tp], high)
                        waiting.discard(tp)
                if waiting and time.monotonic() > deadline:
                    raise KafkaSourceError(f"no fetch response for {_names(waiting)} within {self.stall_timeout_s}s")
            consumer.assign([])
        return begin, end

    def _merge(self, consumer: Any, live: list, end: dict) -> Iterator[KafkaMessage]:
        """k-way merge: a message is yielded only once every unfinished partition has a message at hand, so the
        order never depends on which fetch came back first."""
        buffers: dict[Any, deque] = {tp: deque() for tp in live}
        heap: list[tuple[int, str, int, int, KafkaMessage, Any]] = []
        starving, paused = set(live), set()  # starving: unfinished, and no head in the heap
        last_data = time.monotonic()

        def push(tp: Any) -> None:
            m = buffers[tp].popleft()
            heapq.heappush(heap, (m.timestamp_ms, m.topic, m.partition, m.offset, m, tp))

        while starving or heap:
            if starving:
                got = False
                for tp, records in consumer.poll(timeout_ms=200).items():
                    stop = end[tp]
                    buf = buffers[tp]
                    for r in records:
                        if r.offset < stop:
                            buf.append(KafkaMessage(r.topic, r.partition, r.offset, r.timestamp, r.value or b"",
                                                    tuple(r.headers or ())))
                    got = got or bool(records)
                for tp in list(starving):
                    if buffers[tp]:
                        push(tp)
                        starving.discard(tp)
                    elif consumer.position(tp) >= end[tp]:
                        starving.discard(tp)  # read to its snapshot end
                # Back-pressure, and no fetching past the snapshot end.
                for tp in live:
                    full = len(buffers[tp]) >= _BUFFER or consumer.position(tp) >= end[tp]
                    if full and tp not in paused:
                        consumer.pause(tp)
                        paused.add(tp)
                    elif not full and tp in paused and len(buffers[tp]) < _BUFFER // 2:
                        consumer.resume(tp)
                        paused.discard(tp)
                now = time.monotonic()
                if got:
                    last_data = now
                elif starving and now - last_data > self.stall_timeout_s:
                    where = ", ".join(f"{tp.topic}/{tp.partition} at {consumer.position(tp)} of {end[tp]}"
                                      for tp in sorted(starving))  # fmt: skip
                    raise KafkaSourceError(f"no data for {self.stall_timeout_s}s from {where}")
                continue
            *_, m, tp = heapq.heappop(heap)
            self._read += 1
            yield m
            if buffers[tp]:
                push(tp)
            elif consumer.position(tp) < end[tp]:
                starving.add(tp)


def _names(tps: Any) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps))


# --- command line --------------------------------------------------------------------------------------------------


def time_arg(text: str) -> int:
    """``--since`` / ``--until``: RFC 3339 with an offset, or epoch milliseconds.

    >>> time_arg("2026-11-02T01:00:00Z"), time_arg("1793581200000")
    (1793581200000, 1793581200000)
    """
    text = text.strip()
    try:
        return parse_ts(int(text) if text.isdigit() else text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def add_from_kafka_args(parser: argparse.ArgumentParser, source_group: Any = None) -> None:
    """Add ``--from-kafka``, ``--topic-prefix``, ``--since`` and ``--until`` to the replay parser. Give
    ``source_group`` (a required mutually exclusive group holding ``--events``) to have argparse insist on exactly
    one input."""
    (source_group or parser).add_argument(
        "--from-kafka", metavar="BOOTSTRAP", help="replay the input topics of this Kafka cluster (host:port,...)"
    )
    parser.add_argument("--topic-prefix", metavar="PREFIX", help="topic name prefix (default: ROLLGUARD_TOPIC_PREFIX)")
    parser.add_argument("--since", type=time_arg, metavar="TIME", help="first event time replayed (RFC 3339 or ms)")
    parser.add_argument("--until", type=time_arg, metavar="TIME", help="event time replay stops before (exclusive)")


def source_from_args(args: argparse.Namespace, default_prefix: str = "") -> KafkaSource | None:
    """The :class:`KafkaSource` that ``--from-kafka`` asks for (interactions, feedback and control topics, named
    with ``--topic-prefix`` or else ``default_prefix``), or None for a replay of ``--events`` files. Raises
    :class:`KafkaSourceError` on a bad combination."""
    events, bootstrap = getattr(args, "events", None), getattr(args, "from_kafka", None)
    if bool(events) == bool(bootstrap):
        raise KafkaSourceError("give exactly one of --events and --from-kafka")
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise KafkaSourceError("--since must be before --until")
    if not bootstrap:
        return None
    topics = Topics(prefix=default_prefix if args.topic_prefix is None else args.topic_prefix)
    from streams.security import kafka_python_config

    src = KafkaSource(bootstrap, [*topics.inputs(), topics.control], since_ms=args.since, until_ms=args.until,
                      consumer_config=kafka_python_config())  # fmt: skip
    src.control_topic = topics.control  # replay refuses controls read from any other topic, as the worker does
    src.input_streams = input_streams(topics)  # and an event read from the other stream's topic (wrong_topic)
    return src


def _is_reload(value: bytes) -> bool:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("action") == "reload" and "feature" not in obj
