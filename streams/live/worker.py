"""Starting a live worker: pre-flight checks (topics, Redis eviction policy), then the Faust worker loop."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO, Any

from streams.runtime import tune_gc
from streams.settings import Settings
from streams.kafka.topics import KafkaUnavailable, Topics, TopicsError, ensure_topics, input_partitions

__all__ = ["run_worker", "preflight", "faust_worker", "redacted_url"]


def preflight(settings: Settings, create_topics: bool = True) -> Settings:
    """Check once, with a clear message: Redis must not evict (nor, in the production profile, serve connections
    without credentials), the input topics must exist and be co-partitioned. An unreachable Kafka or Redis raises
    ``KafkaUnavailable`` or ``RedisUnavailable`` (an outage, which ``run_worker`` waits out); the rest are
    configuration errors, raised at once.
    Returns the settings with ``partitions`` set to the input topics' actual count."""
    from streams.security import kafka_python_config, redis_default_user_open, redis_kwargs
    from streams.live.store import RedisStore, RedisUnavailable, StoreError, redis_client

    from kafka.errors import KafkaConnectionError, KafkaError
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def check() -> None:
        r = redis_client(settings.redis_url, settings.redis_cluster, **redis_kwargs(settings))
        try:
            await RedisStore(r, settings.state_namespace).check()
        finally:
            await r.aclose()
        if settings.profile == "production" and await redis_default_user_open(settings):
            raise StoreError("the production profile refuses a Redis that serves unauthenticated connections (its "
                             "'default' user is enabled): anyone who reaches it could rewrite rollguard's state and "
                             "latches — run ACL SETUSER default off (after creating rollguard's own ACL user; see "
                             "docs/deploy.md)")  # fmt: skip

    try:
        asyncio.run(check())
    except AuthenticationError as e:  # a RedisError (a ConnectionError even), but a configuration error
        raise StoreError(f"Redis at {redacted_url(settings.redis_url)} refused rollguard's credentials: {e}") from e
    except (RedisConnectionError, RedisTimeoutError, OSError) as e:
        raise RedisUnavailable(f"cannot reach Redis at {redacted_url(settings.redis_url)}: {e}") from e
    except RedisError as e:  # an answer, not an outage (e.g. a command the ACL user may not run)
        raise StoreError(f"Redis at {redacted_url(settings.redis_url)} refused a start-up check: {e}") from e
    topics = Topics(settings.topic_prefix)
    try:
        if create_topics:
            ensure_topics(settings.kafka_bootstrap, topics, settings.partitions, settings.replication_factor,
                          bootstrap_timeout_ms=10_000,
                          **kafka_python_config(settings))  # fmt: skip
        n = input_partitions(settings.kafka_bootstrap, topics, **kafka_python_config(settings))
    except KafkaError as e:
        outage = getattr(e, "retriable", False) or isinstance(e, KafkaConnectionError)
        raise (KafkaUnavailable if outage else TopicsError)(
            f"cannot use Kafka at {settings.kafka_bootstrap}: {e}") from e
    return settings.model_copy(update={"partitions": n})


def redacted_url(url: str | None) -> str:
    """``url`` without its password (``redis://user:***@host:port/0``): error messages and logs carry no secret.

    >>> redacted_url("rediss://rollguard:s3cret@redis:6380/0"), redacted_url("redis://127.0.0.1:6379/0")
    ('rediss://rollguard:***@redis:6380/0', 'redis://127.0.0.1:6379/0')
    """
    if not url:
        return str(url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user + ':' if user else ''}***@{host}"


def run_worker(settings: Settings, create_topics: bool = True, log_level: str = "warning") -> int:
    from streams.live.app import Worker

    from streams.live.startup import wait_for_dependencies

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = wait_for_dependencies(settings, lambda: preflight(settings, create_topics))
    worker = Worker(settings)
    tune_gc()
    faust_worker(worker.app, log_level).execute_from_commandline()
    return 0


def faust_worker(app: Any, log_level: str, stdout: IO[str] | None = None) -> Any:
    """The Faust worker that runs ``app``, writing to ``stdout`` (default ``sys.stdout``).

    Faust draws a progress spinner at the warning level and below, and writes its cursor hide/show escape codes
    even when the output is not a terminal; so off a terminal (a log file, a container's log) the spinner is
    removed, and the log holds plain text. Faust's coloured log formatter already checks for a terminal itself.
    """
    from faust.worker import Worker as FaustWorker

    out = stdout if stdout is not None else sys.stdout
    worker = FaustWorker(app, loglevel=log_level, quiet=True, stdout=out)
    if not _is_terminal(out):
        worker.spinner = None
    return worker


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # a closed or unusual stream is not a terminal
        return False
