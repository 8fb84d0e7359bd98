"""Settings of the I/O shell: environment variables with the ``ROLLGUARD_`` prefix (and optionally a ``.env`` file).

Secrets are ``SecretStr`` and never print. The pure core never reads these: the shell passes values in.

>>> s = Settings(user_key="k")
>>> s
Settings(user_key=SecretStr('**********'), signing_key=None, signing_key_id=None, allowed_lateness='30s', max_kills_per_hour=5)
"""

from __future__ import annotations

import sys

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rules.durations import parse_duration
from rules.engine import EngineConfig

__all__ = ["Settings", "DEV_USER_KEY"]

# Used only when no key is configured, so the demo works out of the box. Live and replay of one deployment must
# share a real key (ROLLGUARD_USER_KEY) to agree on pseudonyms; the CLI warns when this one is in use.
DEV_USER_KEY = "rollguard-development-key-do-not-use-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLGUARD_", env_file=None, extra="forbid", frozen=True)

    user_key: SecretStr = Field(SecretStr(DEV_USER_KEY), description="HMAC key that re-keys user ids")
    signing_key: SecretStr | None = Field(None, description="HMAC-SHA256 key that signs commands")
    signing_key_id: str | None = Field(None, description="identifier of the signing key, published with commands")
    allowed_lateness: str = Field("30s", description="events older than watermark = max ts - this are late")
    max_kills_per_hour: int = Field(5, ge=0, description="kill breaker: rollbacks per event-time hour")

    @field_validator("allowed_lateness")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    def engine_config(self, allowed_lateness: str | None = None) -> EngineConfig:
        return EngineConfig(
            allowed_lateness_ms=parse_duration(allowed_lateness or self.allowed_lateness),
            max_kills_per_hour=self.max_kills_per_hour,
            signing_key=self.signing_key.get_secret_value().encode() if self.signing_key else None,
            signing_key_id=self.signing_key_id,
        )

    def user_key_bytes(self) -> bytes:
        key = self.user_key.get_secret_value()
        if key == DEV_USER_KEY:
            print("rollguard: warning: ROLLGUARD_USER_KEY is not set; using the development key", file=sys.stderr)
        return key.encode()
