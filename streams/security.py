"""Transport security: Kafka (SASL_SSL with SCRAM, or mTLS) and Redis (TLS + ACL user) from settings, and the
``production`` profile that refuses to start on an insecure setting.

One place turns the settings into each client library's keywords — Faust (``broker_credentials``), aiokafka,
kafka-python and redis-py — so the worker, the admin client, the control reader, the emitter and the operator
commands connect the same way. Secrets stay ``SecretStr`` until the moment a client needs them.

>>> from streams.settings import Settings
>>> s = Settings(profile="production", kafka_bootstrap="k:9092", redis_url="redis://r:6379/0")
>>> for p in production_problems(s):
...     print(p.split(":")[0])
kafka_security_protocol
redis_url
redis_password
signing_key
operator_keys
user_key
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["aiokafka_config", "faust_credentials", "kafka_python_config", "production_problems", "redis_kwargs",
           "ssl_context"]  # fmt: skip


def _secret(v: Any) -> str | None:
    return None if v is None else v.get_secret_value()


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context for Kafka: server verification with the CA file (or the system store), and a client
    certificate when one is configured (mTLS). None for the plaintext protocols."""
    if s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=s.kafka_ssl_cafile)
    if s.kafka_ssl_certfile:
        ctx.load_cert_chain(s.kafka_ssl_certfile, s.kafka_ssl_keyfile, _secret(s.kafka_ssl_key_password))
    return ctx


def faust_credentials(s: Settings) -> Any:
    """``broker_credentials`` for Faust (None for PLAINTEXT)."""
    import faust

    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context(s))
    return faust.SASLCredentials(username=s.kafka_sasl_username, password=_secret(s.kafka_sasl_password),
                                 ssl_context=ssl_context(s), mechanism=s.kafka_sasl_mechanism)  # fmt: skip


def aiokafka_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (the control-topic reader, the annotation consumer)."""
    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return {}
    cfg: dict[str, Any] = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL"):
        cfg["ssl_context"] = ssl_context(s)
    if proto.startswith("SASL"):
        cfg.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=_secret(s.kafka_sasl_password))  # fmt: skip
    return cfg


def kafka_python_config(s: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (admin, emitter, ``replay --from-kafka``, operator commands);
    without ``s``, from the ``ROLLGUARD_*`` environment (commands that take the broker as an argument)."""
    if s is None:
        from streams.settings import Settings

        s = Settings()
    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        return {}
    cfg: dict[str, Any] = {"security_protocol": proto}
    if proto in ("SSL", "SASL_SSL"):
        cfg.update(ssl_cafile=s.kafka_ssl_cafile, ssl_certfile=s.kafka_ssl_certfile, ssl_keyfile=s.kafka_ssl_keyfile,
                   ssl_password=_secret(s.kafka_ssl_key_password), ssl_check_hostname=True)  # fmt: skip
        cfg = {k: v for k, v in cfg.items() if v is not None}
    if proto.startswith("SASL"):
        cfg.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=_secret(s.kafka_sasl_password))  # fmt: skip
    return cfg


def redis_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments for redis-py next to the URL: ACL user and password, and TLS files for ``rediss://``."""
    kw: dict[str, Any] = {}
    if s.redis_username:
        kw["username"] = s.redis_username
    if s.redis_password is not None:
        kw["password"] = _secret(s.redis_password)
    if s.redis_url and s.redis_url.startswith("rediss://"):
        if s.redis_ssl_cafile:
            kw["ssl_ca_certs"] = s.redis_ssl_cafile
        if s.redis_ssl_certfile:
            kw.update(ssl_certfile=s.redis_ssl_certfile, ssl_keyfile=s.redis_ssl_keyfile)
    return kw


def production_problems(s: Settings) -> list[str]:
    """What the ``production`` profile refuses, each as ``setting: what is wrong — what to do``. Empty = fine.
    (An evicting Redis is refused in every profile, by the worker's preflight.)"""
    problems: list[str] = []
    proto = s.kafka_security_protocol
    if proto == "PLAINTEXT":
        problems.append("kafka_security_protocol: PLAINTEXT sends events and commands unauthenticated and in clear "
                        "— set ROLLGUARD_KAFKA_SECURITY_PROTOCOL=SASL_SSL with ROLLGUARD_KAFKA_SASL_MECHANISM="
                        "SCRAM-SHA-512, or SSL with a client certificate (mTLS)")  # fmt: skip
    elif proto == "SASL_PLAINTEXT":
        problems.append("kafka_security_protocol: SASL_PLAINTEXT sends credentials and data without TLS — use "
                        "SASL_SSL")  # fmt: skip
    elif proto == "SSL" and not (s.kafka_ssl_certfile and s.kafka_ssl_keyfile):
        problems.append("kafka_ssl_certfile: SSL without a client certificate does not authenticate rollguard — "
                        "set ROLLGUARD_KAFKA_SSL_CERTFILE and ROLLGUARD_KAFKA_SSL_KEYFILE (mTLS), or use SASL_SSL")
    if proto == "SASL_SSL":
        if s.kafka_sasl_mechanism == "PLAIN":
            problems.append("kafka_sasl_mechanism: PLAIN sends the password itself to the broker — use "
                            "SCRAM-SHA-512")  # fmt: skip
        if not s.kafka_sasl_username or s.kafka_sasl_password is None:
            problems.append("kafka_sasl_username: SASL_SSL needs ROLLGUARD_KAFKA_SASL_USERNAME and "
                            "ROLLGUARD_KAFKA_SASL_PASSWORD")  # fmt: skip
    url = s.redis_url or ""
    if not url.startswith(("rediss://", "unix://")):
        problems.append("redis_url: Redis over plain TCP is unencrypted — use rediss:// (TLS; CA file in "
                        "ROLLGUARD_REDIS_SSL_CAFILE if private)")  # fmt: skip
    if s.redis_password is None and "@" not in url:
        problems.append("redis_password: Redis without authentication — create an ACL user for rollguard and set "
                        "ROLLGUARD_REDIS_USERNAME and ROLLGUARD_REDIS_PASSWORD")  # fmt: skip
    if s.signing_key is None:
        problems.append("signing_key: commands would go out unsigned, so an actuator cannot tell them from forgeries "
                        "— set ROLLGUARD_SIGNING_KEY and ROLLGUARD_SIGNING_KEY_ID (see docs/security.md)")
    if s.operator_keys_map() is None:
        problems.append("operator_keys: controls (resume, reload) would be accepted unsigned, so anyone who can write "
                        "the control topic could un-kill a feature — set ROLLGUARD_OPERATOR_KEYS=id:secret (and "
                        "ROLLGUARD_OPERATOR_KEY / _KEY_ID where operators run rollguard resume; see docs/security.md)")
    from streams.settings import DEV_USER_KEY

    if s.user_key.get_secret_value() == DEV_USER_KEY:
        problems.append("user_key: the development pseudonymisation key is public — set ROLLGUARD_USER_KEY to a "
                        "secret of 32+ random bytes")  # fmt: skip
    return problems


async def redis_default_user_open(s: Settings) -> bool:
    """Whether Redis serves a connection that presents no credentials — its ``default`` user is enabled (the
    out-of-the-box ``nopass``), so anyone who reaches the port can rewrite rollguard's state. Checked from outside,
    with a PING on a connection without username and password (same host and TLS): it needs no ACL privileges."""
    from urllib.parse import urlsplit, urlunsplit

    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, ResponseError

    url = urlsplit(s.redis_url or "")
    bare = urlunsplit(url._replace(netloc=url.hostname + (f":{url.port}" if url.port else ""))) if url.hostname \
        else s.redis_url  # fmt: skip
    kw = {k: v for k, v in redis_kwargs(s).items() if k not in ("username", "password")}
    r = aioredis.Redis.from_url(bare, **kw)
    try:
        await r.ping()
        return True
    except (AuthenticationError, ResponseError) as e:  # NOAUTH / WRONGPASS: the default user is off or has a password
        if "NOAUTH" in str(e).upper() or "AUTH" in type(e).__name__.upper() or "WRONGPASS" in str(e).upper():
            return False
        raise
    finally:
        await r.aclose()

