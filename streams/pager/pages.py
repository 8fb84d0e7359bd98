"""A page as it travels on the pages topic (PagerDuty Events v2 shape), validated once on the way in.

Pages come from ``rules.outputs.page()``, the kill breaker (``rules.policy``) and the monitor-degraded page
(``streams.live.processor``). :func:`parse_page` checks a record against the model and keeps only the modelled fields:
whatever else a record carries is dropped, so the pager never forwards anything it does not know.

>>> p = parse_page(b'{"event_action": "trigger", "dedup_key": "rollguard-1", "payload": {"summary": "s", '
...                b'"source": "rollguard", "severity": "critical", "timestamp": "2026-11-02T10:00:00Z", '
...                b'"component": "email-reply", "group": "ga", "class": "errors"}, "user": "alice"}')
>>> p.payload.class_, p.payload.time.isoformat(), "user" in p.as_json()
('errors', '2026-11-02T10:00:00+00:00', False)
>>> parse_page(b'{"event_action": "ack", "dedup_key": "k"}')
Traceback (most recent call last):
...
streams.pager.exceptions.InvalidPage: event_action: Input should be 'trigger' or 'resolve'; payload: Field required
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.pager.exceptions import InvalidPage

__all__ = ["Page", "Payload", "Link", "parse_page", "rfc3339"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Payload(_Model):
    summary: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1, max_length=255)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: str  # RFC 3339 with a zone: event time of the decision (the monitor pages: wall time); kept as sent
    component: str | None = Field(None, max_length=255)  # the feature (or "rollguard")
    group: str | None = Field(None, max_length=255)  # the phase (or "monitor", "breaker")
    class_: str | None = Field(None, alias="class", max_length=255)  # the rule id (or kill-breaker, monitor-degraded)
    custom_details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("an RFC 3339 time such as 2026-11-02T10:00:00Z is expected") from None
        if t.tzinfo is None:
            raise ValueError("the time needs a zone (Z or +hh:mm)")
        return v

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))


class Link(_Model):
    href: str = Field(min_length=1)
    text: str | None = None


class Page(_Model):
    event_action: Literal["trigger", "resolve"]
    dedup_key: str = Field(min_length=1, max_length=255)  # PagerDuty's limit
    payload: Payload
    links: list[Link] = Field(default_factory=list)

    @property
    def runbook(self) -> str | None:
        return next((link.href for link in self.links if link.text == "runbook"), None)

    def as_json(self) -> dict[str, Any]:
        """The page as JSON: the modelled fields that were set, as they were sent (what the generic webhook gets)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def parse_page(value: bytes | None) -> Page:
    """The page in a record's value, or :class:`InvalidPage` saying which fields are wrong (never their values)."""
    try:
        obj = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        raise InvalidPage("not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidPage(f"a JSON object expected, got {type(obj).__name__}")
    try:
        return Page.model_validate(obj)
    except ValidationError as e:
        raise InvalidPage("; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'page'}: {err['msg']}"
                                    for err in e.errors(include_input=False))) from None  # fmt: skip


def rfc3339(dt: datetime) -> str:
    """UTC, millisecond precision, ``Z`` (what Alertmanager and PagerDuty parse)."""
    from datetime import timezone

    s = dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    return s + "Z"
