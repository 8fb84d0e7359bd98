"""Which input topic carries which events, and the dead letter for one found on the other (``wrong_topic``).

Interactions go to ``rollguard.interactions``; feedback and eval runs (which ride the feedback stream) to
``rollguard.feedback`` (docs/live.md, Topics; the producer SDK routes them so). An event of one stream read from
the other stream's topic is refused, in the live worker and in ``rollguard replay --from-kafka`` alike: applied,
its place among its own stream's events would depend on how the two topics interleave, so the late drops and the
decisions would differ between two reads of the same topics — and between the worker and a replay. It is a dead
letter with reason ``wrong_topic`` (counted like every other), never applied. Invalid items keep their own reason.

>>> from rules.events import Event
>>> ev = Event("feedback", "f1", 0, "f", "p", {}, "u-hash", None, None, kind="thumbs", label="up")
>>> err = misrouted(ev, "interaction", "rollguard.interactions")
>>> err.reason, err.payload["type"], "user" in err.payload
('wrong_topic', 'feedback', False)
>>> misrouted(ev, "feedback", "rollguard.feedback") is None
True
"""

from __future__ import annotations

from typing import Any

from rules.events import Event, row_event
from rules.exceptions import InvalidEvent

__all__ = ["input_streams", "misrouted"]


def input_streams(topics: Any) -> dict[str, str]:
    """``{topic: stream}`` of the two input topics of a :class:`streams.kafka.topics.Topics`."""
    return {topics.interactions: "interaction", topics.feedback: "feedback"}


def misrouted(item: Any, stream: str | None, topic: str) -> InvalidEvent | None:
    """The dead letter refusing ``item`` (a valid event or row) read from ``topic``, the input topic of ``stream``,
    when it belongs to the other stream; None when it is in its place (or the topic is not an input topic)."""
    typ = getattr(item, "type", None)
    if stream is None or typ is None or typ == stream or typ == "control":
        return None
    ev = item if type(item) is Event else row_event(item)
    err = InvalidEvent("wrong_topic", f"{'a feedback or eval' if typ == 'feedback' else 'an interaction'} event read from "
                       f"{topic}, the {stream} topic: send it to the {typ} topic (decisions would otherwise depend on "
                       f"how the two topics interleave); not applied")  # fmt: skip
    payload = ev.payload()
    payload.pop("user", None)  # already a pseudonym: the dead letter's redaction would key it again
    err.payload = payload  # type: ignore[attr-defined]
    return err
