"""The production profile refuses a Redis whose ``default`` user is enabled (issue 12), checked against the real
redis-server: it serves unauthenticated connections out of the box; once ``ACL SETUSER default off`` it does not."""

from __future__ import annotations

import asyncio

import pytest
import redis

from streams.live.worker import preflight
from streams.security import redis_default_user_open
from streams.settings import Settings
from streams.live.store import StoreError
from streams.kafka.topics import TopicsError


def test_an_enabled_default_user_is_refused_in_production_only(stack):
    prod = Settings(profile="production", redis_url=stack.redis_url, kafka_bootstrap=stack.kafka_bootstrap,
                    redis_username="rg-test", redis_password="rg-test-password")  # fmt: skip
    admin = redis.Redis.from_url(stack.redis_url)
    admin.execute_command("ACL", "SETUSER", "rg-test", "on", ">rg-test-password", "~*", "+@all")
    try:
        assert asyncio.run(redis_default_user_open(prod)) is True
        with pytest.raises(StoreError, match="ACL SETUSER default off") as e:
            preflight(prod, create_topics=False)
        assert "rg-test-password" not in str(e.value)
        assert asyncio.run(redis_default_user_open(Settings(redis_url=stack.redis_url))) is True  # dev: only a fact

        admin.execute_command("ACL", "SETUSER", "default", "off")
        assert asyncio.run(redis_default_user_open(prod)) is False
        with pytest.raises(TopicsError):  # past every Redis check: it fails only on the (absent) topics
            preflight(prod.model_copy(update={"topic_prefix": "no-such-prefix."}), create_topics=False)
    finally:
        restore = redis.Redis.from_url(stack.redis_url, username="rg-test", password="rg-test-password")
        restore.execute_command("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
        restore.close()
        admin = redis.Redis.from_url(stack.redis_url)
        admin.execute_command("ACL", "DELUSER", "rg-test")
        admin.close()
