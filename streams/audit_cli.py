"""``rollguard verify`` (check signed commands as an actuator would), ``rollguard audit verify`` (check the hash
chains of decisions and commands) and ``rollguard audit head`` (the current chain heads, from Redis state).

The pure checks are ``rules.verify`` and ``rules.audit``; this module reads files, topics, Redis and the wall clock.
Exit codes: 0 everything valid, 1 a command was rejected or a chain is broken (or Redis cannot be read), 2 usage
error (arguments, keys, a state, head or input file that cannot be used; ``AuditCliError``, which ``streams.cli``
turns into exit 2 like every ``RollguardError``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from rules.audit import STREAMS, AuditReport, verify_chain
from rules.durations import parse_duration
from rules.exceptions import RollguardError
from rules.seal import DEFAULT_KEY_ID
from rules.verify import VerifierState, emission_from_headers, parse_keys, verify_command
from streams.offline.kafka_source import KafkaSource, time_arg
from streams.settings import Settings
from streams.kafka.topics import Topics

__all__ = ["add_audit_parsers", "load_keys", "read_heads", "read_records"]

_NOT_JSON = object()  # a line or message that is not a JSON object


class AuditCliError(RollguardError):
    """A ``verify`` / ``audit`` argument cannot be used (keys, state or head file, input); the message says which."""


# --- inputs ---------------------------------------------------------------------------------------------------------


def read_records(files: list[str], bootstrap: str | None, topics: list[str]) -> Iterator[tuple[str, Any]]:
    """``(origin, record)`` of every JSON line of ``files`` (origin ``file:line``) or every message of ``topics``
    (a snapshot read, origin ``topic/partition@offset``); a record that is not a JSON object is ``_NOT_JSON``."""
    for origin, rec, _ in read_records_with_headers(files, bootstrap, topics):
        yield origin, rec


def read_records_with_headers(files: list[str], bootstrap: str | None,
                              topics: list[str]) -> Iterator[tuple[str, Any, list]]:  # fmt: skip
    """:func:`read_records` with each Kafka record's headers (``[]`` for file lines)."""
    if bootstrap:
        from streams.security import kafka_python_config

        for m in KafkaSource(bootstrap, topics, consumer_config=kafka_python_config()).messages():
            yield f"{m.topic}/{m.partition}@{m.offset}", _decode(m.value), list(getattr(m, "headers", None) or [])
        return
    for path in files:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; read lazily
        except OSError as e:
            raise AuditCliError(f"cannot read {path}: {e.strerror}") from None
        with f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{n}", _decode(line), []


def _decode(raw: bytes) -> Any:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NOT_JSON
    return obj if isinstance(obj, dict) else _NOT_JSON


def load_keys(spec: str, settings: Settings) -> dict[str, bytes]:
    """``--keys``: a file of ``id:secret`` entries, or ``env`` for ROLLGUARD_VERIFY_KEYS (default: the signing key
    under its id)."""
    if spec == "env":
        if settings.verify_keys is not None:
            text = settings.verify_keys.get_secret_value()
        elif settings.signing_key is not None:
            return {settings.signing_key_id or DEFAULT_KEY_ID: settings.signing_key.get_secret_value().encode()}
        else:
            raise AuditCliError("no verification keys: set ROLLGUARD_VERIFY_KEYS (id1:secret1,id2:secret2) or "
                                "ROLLGUARD_SIGNING_KEY, or pass --keys FILE")  # fmt: skip
    else:
        try:
            text = Path(spec).read_text()
        except OSError as e:
            raise AuditCliError(f"cannot read the keys file {spec}: {e.strerror}") from None
    try:
        keys = parse_keys(text)
    except ValueError as e:
        raise AuditCliError(f"keys ({'ROLLGUARD_VERIFY_KEYS' if spec == 'env' else spec}): {e}") from None
    if not keys:
        raise AuditCliError("no verification keys given")
    return keys


def _topic_names(args: argparse.Namespace, default: tuple[str, ...]) -> list[str]:
    topics = Topics(args.topic_prefix if args.topic_prefix is not None else Settings().topic_prefix)
    names = args.topic or list(default)
    return [getattr(topics, n) if n in STREAMS else n for n in names]


def _inputs(args: argparse.Namespace) -> None:
    if bool(args.files) == bool(args.from_kafka):
        raise AuditCliError("give FILE(s) or --from-kafka BOOTSTRAP, not both and not neither")


# --- rollguard verify -----------------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    _inputs(args)
    keys = load_keys(args.keys, Settings())
    max_age = None if args.max_age == "off" else parse_duration(args.max_age)
    max_future = parse_duration(args.max_future)
    now = args.now if args.now is not None else int(time.time() * 1000)
    state_path = Path(args.state) if args.state else None
    state = VerifierState()
    if state_path is not None and state_path.exists():
        try:
            state = VerifierState.from_json(state_path.read_text())
        except ValueError as e:  # json.JSONDecodeError included
            raise AuditCliError(f"cannot use the state file {state_path}: {e}") from None
    counts = {"accepted": 0, "rejected": 0, "duplicate": 0}
    records = read_records_with_headers(args.files, args.from_kafka,
                                        _topic_names(args, ("commands",)) if args.from_kafka else [])  # fmt: skip
    for origin, cmd, headers in records:
        if cmd is _NOT_JSON:
            print(f"REJECTED {origin}: malformed (not a JSON object)")
            counts["rejected"] += 1
            continue
        v = verify_command(cmd, keys, now_ms=now, max_age_ms=max_age, max_future_ms=max_future, state=state,
                           emission=emission_from_headers(headers), require_emission=args.require_emission)
        if v.ok:
            counts["accepted"] += 1
            continue
        what = f"command_id={cmd.get('command_id')} feature={cmd.get('feature')} seq={cmd.get('seq')}"
        if v.reason == "duplicate":  # a re-delivery of an accepted command: not acted on twice, and not an attack
            counts["duplicate"] += 1
            print(f"DUPLICATE {origin} {what}: {v.detail}")
            continue
        counts["rejected"] += 1
        print(f"REJECTED {origin} {what}: {v.reason} ({v.detail})")
    if state_path is not None:
        if max_age is not None:
            state.prune(now, max_age)
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, state_path)  # atomic: a crash never leaves half a state
    print(f"{counts['accepted']} accepted, {counts['rejected']} rejected, {counts['duplicate']} duplicate",
          file=sys.stderr)  # fmt: skip
    return 1 if counts["rejected"] else 0


# --- rollguard audit verify / head ----------------------------------------------------------------------------------


def _load_head(path: str) -> dict[str, dict[str, str]]:
    try:
        head = orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise AuditCliError(f"cannot read the head file {path}: {e.strerror}") from None
    except orjson.JSONDecodeError as e:
        raise AuditCliError(f"head file {path} is not JSON: {e}") from None
    ok = isinstance(head, dict) and set(head) <= set(STREAMS) and all(
        isinstance(v, dict) and all(isinstance(f, str) and isinstance(h, str) for f, h in v.items())
        for v in head.values()
    )  # fmt: skip
    if not ok:
        raise AuditCliError(f'head file {path}: expected {{"decisions": {{FEATURE: HASH}}, "commands": {{…}}}} '
                            "as `rollguard audit head` writes it")  # fmt: skip
    return head


def cmd_audit_verify(args: argparse.Namespace) -> int:
    _inputs(args)
    head = _load_head(args.head) if args.head else None
    origins: list[str] = []

    def records() -> Iterator[Any]:
        for origin, rec in read_records(args.files, args.from_kafka, _topic_names(args, STREAMS)
                                        if args.from_kafka else []):  # fmt: skip
            origins.append(origin)
            yield None if rec is _NOT_JSON else rec

    report = verify_chain(records(), head, from_genesis=not args.retained)
    print(render_audit(report, origins))
    return 0 if report.ok else 1


def render_audit(report: AuditReport, origins: list[str]) -> str:
    lines = []
    for p in report.problems:
        where = origins[p.index] if p.index < len(origins) else "end of log"
        rid = f" ({p.record_id})" if p.record_id else ""
        lines.append(f"BROKEN {p.kind:<10} {p.stream}/{p.feature} at {where}{rid}: {p.detail}")
    chains = report.chains.values()
    n = sum(c.records for c in chains)
    dup = sum(c.duplicates for c in chains)
    anchored = sum(c.anchored for c in chains)
    legacy = sum(c.legacy for c in chains)
    lines.append(
        f"{'ok' if report.ok else 'TAMPERED OR INCOMPLETE'}: {len(report.chains)} chain(s), {n} linked record(s)"
        + (f", {dup} re-delivered" if dup else "")
        + (f", {legacy} from before chaining" if legacy else "")
        + f", {anchored} anchored to a stored head"
    )
    return "\n".join(lines)


async def read_heads(redis_url: str, namespace: str, cluster: bool = False, **client: Any) -> dict[str, dict[str, str]]:
    """The chain heads of every feature as the workers last committed them (``FeatureState.chain`` in Redis)."""
    from streams.live.store import RedisStore, redis_client

    r = redis_client(redis_url, cluster, **client)
    try:
        store = RedisStore(r, namespace)
        features = await store.features()
        pipe = r.pipeline(transaction=False)
        for f in features:
            pipe.hget(store.core_key(f), "state")
        states = await pipe.execute() if features else []
    finally:
        await r.aclose()
    heads: dict[str, dict[str, str]] = {s: {} for s in STREAMS}
    for f, raw in zip(features, states):
        if raw is not None:
            for stream, h in orjson.loads(raw).get("chain", {}).items():
                heads.setdefault(stream, {})[f] = h
    return heads


def cmd_audit_head(args: argparse.Namespace) -> int:
    s = Settings()
    url = args.redis_url or s.redis_url
    if not url:
        raise AuditCliError("set ROLLGUARD_REDIS_URL or --redis-url")
    try:
        from streams.security import redis_kwargs

        heads = asyncio.run(read_heads(url, args.namespace or s.state_namespace, s.redis_cluster, **redis_kwargs(s)))
    except Exception as e:  # noqa: BLE001 - redis errors are not OSError subclasses
        print(f"rollguard: error: cannot read Redis at {url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    text = orjson.dumps(heads, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"heads of {sum(len(v) for v in heads.values())} chain(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --- parsers --------------------------------------------------------------------------------------------------------


def _input_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help=f"JSON Lines files of {what}")
    p.add_argument("--from-kafka", metavar="BOOTSTRAP", help="read the topic(s) instead (a snapshot, from the start)")
    p.add_argument("--topic", action="append", metavar="NAME",
                   help="topic to read: decisions, commands or a full name (repeatable)")  # fmt: skip
    p.add_argument("--topic-prefix", metavar="PREFIX", help="default: ROLLGUARD_TOPIC_PREFIX")


def add_audit_parsers(sub: Any) -> None:
    v = sub.add_parser("verify", help="verify signed commands as an actuator would (signature, key, age, replay, seq)")
    _input_args(v, "commands (or --from-kafka: the commands topic)")
    v.add_argument("--keys", default="env", metavar="FILE|env",
                   help="id:secret entries (default env: ROLLGUARD_VERIFY_KEYS, else the signing key)")  # fmt: skip
    v.add_argument("--max-age", default="5m", metavar="DURATION",
                   help="reject commands emitted (without emission headers: issued) longer ago (default 5m; 'off' "
                   "for an audit of stored commands)")
    v.add_argument("--require-emission", action="store_true",
                   help="reject commands without the worker's signed emission time (Kafka headers; files have none)")
    v.add_argument("--max-future", default="1m", metavar="DURATION", help="tolerated clock skew (default 1m)")
    v.add_argument("--state", metavar="FILE", help="verifier state (accepted ids, last seq per feature), updated")
    v.add_argument("--now", type=time_arg, metavar="TIME", help="verify as of this time (default: the wall clock)")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("audit", help="tamper-evident audit log: verify the hash chains, read the chain heads")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="verify the hash chains of decisions and commands (files or topics)")
    _input_args(av, "decisions and/or commands")
    av.add_argument("--head", metavar="HEADS.json", help="chain heads saved with `rollguard audit head`: detects "
                    "records cut off the end")  # fmt: skip
    av.add_argument("--retained", action="store_true",
                    help="the log may start mid-chain (a topic whose retention dropped its oldest records)")
    av.set_defaults(func=cmd_audit_verify)
    ah = asub.add_parser("head", help="print the current chain heads (from Redis state) as JSON; store them elsewhere")
    ah.add_argument("--redis-url", help="default: ROLLGUARD_REDIS_URL")
    ah.add_argument("--namespace", help="default: ROLLGUARD_STATE_NAMESPACE")
    ah.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    ah.set_defaults(func=cmd_audit_head)

