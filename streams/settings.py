"""Settings of the I/O shell: environment variables with the ``ROLLGUARD_`` prefix (and optionally a ``.env`` file).

Secrets are ``SecretStr`` and never print. The pure core never reads these: the shell passes values in.

>>> s = Settings(user_key="k", signing_key="s")
>>> s.user_key, s.signing_key
(SecretStr('**********'), SecretStr('**********'))
>>> "'k'" in repr(s) or "'s'" in repr(s)
False
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rules.durations import parse_duration
from rules.exceptions import RollguardError
from rules.engine import EngineConfig

__all__ = ["Settings", "DEV_USER_KEY", "clock_skew_ms"]

# Used only when no key is configured, so the demo works out of the box. Live and replay of one deployment must
# share a real key (ROLLGUARD_USER_KEY) to agree on pseudonyms; the CLI warns when this one is in use.
DEV_USER_KEY = "rollguard-development-key-do-not-use-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_", env_file=None, extra="forbid", frozen=True)

    user_key: SecretStr = Field(SecretStr(DEV_USER_KEY), description="HMAC key that re-keys user ids")
    signing_key: SecretStr | None = Field(None, description="HMAC-SHA256 key that signs commands")
    signing_key_id: str | None = Field(None, description="identifier of the signing key, published with commands")
    verify_keys: SecretStr | None = Field(
        None, description="keys `rollguard verify` accepts, id1:secret1,id2:secret2 (default: the signing key)"
    )
    operator_keys: SecretStr | None = Field(
        None, description="operator keys the worker and replay verify controls with, id1:secret1,id2:secret2 "
        "(unset: controls are accepted unsigned; the production profile requires them)")
    operator_key: SecretStr | None = Field(None, description="operator key `rollguard resume` / `rules reload` sign with")
    operator_key_id: str = Field("default", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                 description="identifier of the operator key, sent with each control")
    allowed_lateness: str = Field("30s", description="events older than watermark = max ts - this are late")
    max_kills_per_hour: int = Field(5, ge=0, description="kill breaker: rollbacks per event-time hour")
    max_clock_skew: str = Field(
        "10m", description="an event further than this ahead of its feature (or behind its stream) is held or "
        "quarantined as ts_outlier; 'off' trusts every producer clock")
    clock_skew_page_after: int = Field(
        10, ge=0, description="ts_outlier events in one hour of a feature's stream time that page investigate; 0 = never")

    # --- live pipeline (issue 3) -----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port]; unset = embedded stack (demo)")
    redis_url: str | None = Field(None, description="redis://host:port/db; unset = embedded stack (demo)")
    redis_cluster: bool = Field(False, description="redis_url names a node of a Redis Cluster (database 0 only)")
    topic_prefix: str = Field("", description="prefix of every rollguard topic (e.g. 'staging.')")
    app_id: str = Field("rollguard", pattern=r"^[A-Za-z0-9._-]+$", description="Kafka consumer group / Faust id")
    state_namespace: str = Field("rollguard", pattern=r"^[A-Za-z0-9._-]+$", description="Redis key prefix")
    state_key: SecretStr | None = Field(None, description="HMAC key of detector state in Redis (default: from user_key)")
    rules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="rule files/folders, comma-separated (or a JSON list); empty = catalogue"
    )
    partitions: int = Field(4, ge=1, le=1024, description="partitions of the input topics when rollguard creates them")
    replication_factor: int = Field(1, ge=1, le=16, description="replicas of each topic rollguard creates (3 in production)")
    batch_max: int = Field(2000, ge=1, description="messages per processed batch at most")
    batch_within: str = Field("100ms", description="wait at most this long to fill a batch")
    fetch_max_wait: str = Field("250ms", description="longest a Kafka fetch with no data is held (Faust: 1500ms)")
    idle_after: str | None = Field("2m", description="advance an idle feature's watermark after this wall time")
    session_timeout_s: float = Field(10.0, gt=1, le=300, description="Kafka group session/rebalance timeout")
    rules_poll: str = Field("5s", description="how often the rules folder is checked for changes")
    startup_timeout: str = Field(
        "5m", description="how long the worker waits for an unreachable Kafka or Redis at start-up before it gives "
        "up (exit 2); 0 = wait for ever")

    # --- transport security (see streams/security.py, docs/security.md) --------------------------------------
    profile: Literal["dev", "production"] = Field(
        "dev", description="production refuses to start with an insecure setting (plaintext Kafka/Redis, no auth, ...)"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="SASL_SSL (with SCRAM-SHA-512) or SSL with a client certificate (mTLS) in production"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism for SASL_SSL / SASL_PLAINTEXT"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates")
    kafka_ssl_certfile: str | None = Field(None, description="client certificate (PEM) for mTLS")
    kafka_ssl_keyfile: str | None = Field(None, description="client private key (PEM) for mTLS")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of the client private key")
    redis_username: str | None = Field(None, description="Redis ACL user")
    redis_password: SecretStr | None = Field(None, description="Redis ACL password (or requirepass)")
    redis_ssl_cafile: str | None = Field(None, description="CA bundle of the Redis server certificate (rediss://)")
    redis_ssl_certfile: str | None = Field(None, description="client certificate for Redis TLS client auth")
    redis_ssl_keyfile: str | None = Field(None, description="client private key for Redis TLS client auth")

    # --- observability (issue 4) -----------------------------------------------------------------------------
    metrics_port: int = Field(9464, ge=0, le=65535, description="/metrics, /healthz, /ready port; 0 = no metrics")
    metrics_host: str = Field("0.0.0.0", description="address the metrics endpoint listens on")
    metrics_max_groups: int = Field(50, ge=1, description="rule series per feature/phase/rule before __overflow__")

    # --- pager: the pages topic delivered to Alertmanager, PagerDuty or a webhook (issue 15, streams/pager/) ----
    pager_target: Literal["alertmanager", "pagerduty", "webhook"] = Field(
        "alertmanager", description="where `rollguard pager` delivers pages"
    )
    pager_url: str | None = Field(
        None, description="Alertmanager root URL, a webhook URL, or the PagerDuty Events v2 enqueue URL (default "
        "https://events.pagerduty.com/v2/enqueue)"
    )
    pager_routing_key: SecretStr | None = Field(None, description="PagerDuty integration (routing) key")
    pager_token: SecretStr | None = Field(None, description="bearer token for Alertmanager or the webhook")
    pager_username: str | None = Field(None, description="basic-auth user for Alertmanager or the webhook")
    pager_password: SecretStr | None = Field(None, description="basic-auth password for Alertmanager or the webhook")
    pager_timeout_s: float = Field(10.0, gt=0, le=300, description="per delivery request")
    pager_backoff: str = Field("500ms", description="first retry delay of a failed delivery (doubles, jittered)")
    pager_backoff_max: str = Field("30s", description="longest retry delay")
    pager_alert_ttl: str = Field("7d", description="Alertmanager: a trigger stays firing this long unless resolved")
    pager_metrics_port: int = Field(9465, ge=0, le=65535, description="`rollguard pager`'s /metrics port; 0 = off")
    pager_in_worker: bool = Field(False, description="run the pager inside each worker process instead")

    @field_validator("allowed_lateness", "batch_within", "rules_poll", "pager_backoff", "pager_backoff_max",
                     "pager_alert_ttl", "startup_timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        _check_duration(v)
        return v

    @field_validator("fetch_max_wait")
    @classmethod
    def _fetch_wait(cls, v: str) -> str:
        _check_duration(v)
        if not 1 <= parse_duration(v) <= 30_000:  # below the consumer's request timeout (40 s in Faust)
            raise ValueError(f"fetch_max_wait must be between 1ms and 30s, got {v}")
        return v

    @field_validator("max_clock_skew")
    @classmethod
    def _skew(cls, v: str) -> str:
        clock_skew_ms(v)
        return v

    @field_validator("pager_url")
    @classmethod
    def _pager_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        return v

    @model_validator(mode="after")
    def _cluster_url(self) -> Settings:
        if self.redis_cluster and self.redis_url:
            from urllib.parse import urlparse

            url = urlparse(self.redis_url)
            if url.scheme == "unix":
                raise ValueError("redis_cluster: a Redis Cluster is reached over redis:// or rediss://, not unix://")
            if url.path.strip("/") not in ("", "0"):
                raise ValueError("redis_cluster: a Redis Cluster has only database 0 (redis://host:port/0)")
        return self

    @model_validator(mode="after")
    def _client_cert_pairs(self) -> Settings:
        for cert, key in (("kafka_ssl_certfile", "kafka_ssl_keyfile"), ("redis_ssl_certfile", "redis_ssl_keyfile")):
            if bool(getattr(self, cert)) != bool(getattr(self, key)):
                raise ValueError(f"{key}: {cert} and {key} go together (a client certificate needs its key)")
        return self

    @field_validator("rules", mode="before")
    @classmethod
    def _paths(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("idle_after")
    @classmethod
    def _opt_duration(cls, v: str | None) -> str | None:
        if v in (None, "", "0", "off"):
            return None
        _check_duration(v)
        return v

    @field_validator("operator_keys")
    @classmethod
    def _operator_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            from rules.verify import parse_keys

            if not parse_keys(v.get_secret_value()):  # raises ValueError (named by pydantic) on a bad entry
                return None
        return v

    def operator_keys_map(self) -> dict[str, bytes] | None:
        """The operator keys (id -> secret) controls are verified with; None: controls are not checked."""
        if self.operator_keys is None:
            return None
        from rules.verify import parse_keys

        return parse_keys(self.operator_keys.get_secret_value()) or None

    def state_key_bytes(self) -> bytes:
        if self.state_key is not None:
            return self.state_key.get_secret_value().encode()
        return hmac.new(self.user_key.get_secret_value().encode(), b"rollguard-state", hashlib.sha256).digest()

    def rule_paths(self) -> list[str]:
        from rules.loader import CATALOG

        return list(self.rules) or [str(CATALOG)]

    def engine_config(self, allowed_lateness: str | None = None, max_clock_skew: str | None = None) -> EngineConfig:
        return EngineConfig(
            allowed_lateness_ms=parse_duration(allowed_lateness or self.allowed_lateness),
            max_kills_per_hour=self.max_kills_per_hour,
            max_clock_skew_ms=clock_skew_ms(max_clock_skew or self.max_clock_skew),
            clock_skew_page_after=self.clock_skew_page_after,
            signing_key=self.signing_key.get_secret_value().encode() if self.signing_key else None,
            signing_key_id=self.signing_key_id,
        )

    def user_key_bytes(self) -> bytes:
        key = self.user_key.get_secret_value()
        if key == DEV_USER_KEY:
            print("rollguard: warning: ROLLGUARD_USER_KEY is not set; using the development key", file=sys.stderr)
        return key.encode()


def clock_skew_ms(v: str) -> int | None:
    """``ROLLGUARD_MAX_CLOCK_SKEW`` / ``--max-clock-skew``: a duration of at least 1s, or ``off`` (None)."""
    if v.strip().lower() == "off":
        return None
    _check_duration(v)
    ms = parse_duration(v)
    if ms < 1000:
        raise ValueError(f"max clock skew {v!r} is below 1s: ordinary network delay would quarantine events; "
                         "give a duration such as 10m, or off")
    return ms


def _check_duration(v: str) -> None:
    try:
        parse_duration(v)
    except RollguardError as e:  # pydantic names the setting only for ValueError
        raise ValueError(str(e)) from None
