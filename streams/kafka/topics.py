"""Kafka topic names (CONTRACT §4 outputs, issue 3 inputs) and their creation.

>>> Topics().outputs()
('rollguard.decisions', 'rollguard.commands', 'rollguard.pages', 'rollguard.deadletter')
>>> Topics(prefix="staging.").interactions
'staging.rollguard.interactions'
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.exceptions import RollguardError

__all__ = ["Topics", "ensure_topics", "input_partitions", "TopicsError", "KafkaUnavailable"]


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _t(self, name: str) -> str:
        return f"{self.prefix}rollguard.{name}"

    @property
    def interactions(self) -> str:
        return self._t("interactions")

    @property
    def feedback(self) -> str:
        return self._t("feedback")

    @property
    def control(self) -> str:
        return self._t("control")

    @property
    def decisions(self) -> str:
        return self._t("decisions")

    @property
    def commands(self) -> str:
        return self._t("commands")

    @property
    def pages(self) -> str:
        return self._t("pages")

    @property
    def deadletter(self) -> str:
        return self._t("deadletter")

    def inputs(self) -> tuple[str, str]:
        return (self.interactions, self.feedback)

    def outputs(self) -> tuple[str, str, str, str]:
        return (self.decisions, self.commands, self.pages, self.deadletter)

    def all(self) -> tuple[str, ...]:
        return (*self.inputs(), self.control, *self.outputs())


def ensure_topics(bootstrap: str, topics: Topics, partitions: int = 4, replication: int = 1,
                  **client: object) -> list[str]:  # fmt: skip
    """Create the topics that do not exist yet (input topics with ``partitions``; control and outputs with 1
    partition each, so their order is total), each with ``replication`` replicas (3 on a production cluster).
    Returns the names created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rollguard-admin", **client)
    try:
        existing = set(admin.list_topics())
        want = [NewTopic(t, partitions if t in topics.inputs() else 1, replication)
                for t in topics.all() if t not in existing]  # fmt: skip
        if want:
            try:
                admin.create_topics(want)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in want]
    finally:
        admin.close()


def input_partitions(bootstrap: str, topics: Topics, **client: object) -> int:
    """The partition count the input topics share; raises ``TopicsError`` when they differ (events of one feature
    would then land on different workers) or do not exist."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap, client_id="rollguard-check", **client)
    try:
        counts = {t: len(c.partitions_for_topic(t) or ()) for t in topics.inputs()}
    finally:
        c.close()
    missing = [t for t, n in counts.items() if n == 0]
    if missing:
        raise TopicsError(f"input topic(s) missing: {', '.join(missing)} (run the worker with --create-topics)")
    if len(set(counts.values())) != 1:
        raise TopicsError(
            "input topics must have the same partition count so one worker gets all events of a feature: "
            + ", ".join(f"{t}={n}" for t, n in counts.items())
        )
    return next(iter(counts.values()))


class TopicsError(RollguardError):
    """The Kafka topics are missing or inconsistent."""


class KafkaUnavailable(TopicsError):
    """The broker cannot be reached (an outage, not a configuration error: the worker waits for it at start-up)."""
