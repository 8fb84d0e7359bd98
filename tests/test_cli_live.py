"""Command-line errors of the live commands: clear messages and exit codes, never a traceback."""

from __future__ import annotations

import pytest

from streams.cli import main

NOWHERE = "127.0.0.1:1"


@pytest.fixture
def env(monkeypatch):
    for k in ("KAFKA_BOOTSTRAP", "REDIS_URL", "TOPIC_PREFIX", "RULES"):
        monkeypatch.delenv(f"ROLLGUARD_{k}", raising=False)
    monkeypatch.setenv("ROLLGUARD_STARTUP_TIMEOUT", "1s")  # an unreachable broker or Redis: give up soon
    monkeypatch.setenv("ROLLGUARD_METRICS_PORT", "0")
    return monkeypatch


@pytest.mark.parametrize(
    "argv, env_vars, code, message",
    [
        (["worker"], {}, 2, "ROLLGUARD_KAFKA_BOOTSTRAP"),
        (["worker", "--config", "/nonexistent.env"], {}, 2, "settings file not found"),
        (["worker"], {"KAFKA_BOOTSTRAP": NOWHERE, "REDIS_URL": f"redis://{NOWHERE}"}, 2, "cannot reach Redis"),
        (["worker"], {"KAFKA_BOOTSTRAP": NOWHERE, "REDIS_URL": f"redis://{NOWHERE}", "BATCH_WITHIN": "soon"}, 2,
         "invalid settings"),
        (["worker"], {"KAFKA_BOOTSTRAP": "x", "REDIS_URL": "y"}, 2, "redis_url"),
        (["worker"], {"KAFKA_BOOTSTRAP": "x", "REDIS_URL": "redis://y", "RULES": "/nonexistent-rules"}, 2,
         "nonexistent-rules"),
        (["status"], {}, 2, "ROLLGUARD_REDIS_URL"),
        (["status", "--redis-url", f"redis://{NOWHERE}"], {}, 1, "cannot read Redis"),
        (["resume", "f", "--reason", "x"], {}, 2, "ROLLGUARD_KAFKA_BOOTSTRAP"),
        (["resume", "f", "--reason", "  ", "--bootstrap", NOWHERE], {}, 2, "--reason"),
        (["resume", "bad feature!", "--reason", "ok", "--bootstrap", NOWHERE], {}, 2, "invalid resume"),
        (["rules", "reload"], {}, 2, "ROLLGUARD_KAFKA_BOOTSTRAP"),
    ],
)  # fmt: skip
def test_live_command_errors(env, capsys, argv, env_vars, code, message):
    for k, v in env_vars.items():
        env.setenv(f"ROLLGUARD_{k}", v)
    assert main(argv) == code
    assert message in capsys.readouterr().err


def test_worker_with_the_embedded_redis_but_no_broker_says_so(env, capsys, stack):
    env.setenv("ROLLGUARD_KAFKA_BOOTSTRAP", NOWHERE)
    env.setenv("ROLLGUARD_REDIS_URL", stack.redis_url)
    assert main(["worker"]) == 2
    assert "cannot use Kafka" in capsys.readouterr().err


def test_status_of_an_empty_deployment(env, capsys, stack, redis_client):
    assert main(["status", "--redis-url", stack.redis_url]) == 0
    assert "no feature state yet" in capsys.readouterr().out
    assert main(["status", "--json", "--redis-url", stack.redis_url]) == 0
    assert capsys.readouterr().out.strip() == "[]"
