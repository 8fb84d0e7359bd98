"""The Faust app wiring (no broker needed to build it): agent, topics, timers, settings."""

from __future__ import annotations

import faust

from streams.live.app import Worker, create_app, rules_fingerprint
from streams.settings import Settings


def settings(**kw) -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0", user_key="k" * 20, **kw)


def test_the_app_has_one_agent_over_both_input_topics_and_the_worker_timers():
    w = Worker(settings(topic_prefix="staging.", app_id="rg-test", partitions=6))
    app = w.app
    assert isinstance(app, faust.App) and app.conf.id == "rg-test"
    [agent] = app.agents.values()
    assert set(agent.channel.topics) == {"staging.rollguard.interactions", "staging.rollguard.feedback"}
    assert app.conf.topic_partitions == 6 and app.conf.consumer_auto_offset_reset == "earliest"
    # background tasks: the control-topic reader, the rules watcher and the idle-watermark timer
    assert len(app._app_tasks) == 3
    assert len(Worker(settings(idle_after="off")).app._app_tasks) == 2


def test_module_level_app_for_the_faust_cli(monkeypatch):
    monkeypatch.setenv("ROLLGUARD_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("ROLLGUARD_REDIS_URL", "redis://127.0.0.1:1/0")
    import streams.live.app as module

    assert isinstance(module.app, faust.App)
    assert isinstance(create_app(settings()), faust.App)


def test_rules_fingerprint_sees_any_change(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\n")
    before = rules_fingerprint([str(tmp_path)])
    assert rules_fingerprint([str(tmp_path)]) == before
    (tmp_path / "a.yaml").write_text("x: 2\n")
    changed = rules_fingerprint([str(tmp_path)])
    assert changed != before
    (tmp_path / "b.yml").write_text("y: 1\n")
    assert rules_fingerprint([str(tmp_path)]) != changed
