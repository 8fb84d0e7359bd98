"""What each receiver is sent for one page: pure functions, no I/O (the HTTP shell is streams/pager/http.py).

* **Alertmanager** (API v2, ``POST /api/v2/alerts``, a list of alerts): one alert per page. Its labels are the
  page's identity, so Alertmanager's de-duplication, grouping, inhibition and silences act on them:

  ============ =====================================================================================
  ``alertname`` ``rollguard_<class>`` (the rule id, or ``kill_breaker`` / ``monitor_degraded``; ``-`` → ``_``)
  ``dedup_key`` the page's ``dedup_key``: one alert per incident, the resolve matches its trigger
  ``severity``  ``critical`` (kill, breaker) / ``error`` (pause, monitor) / ``warning`` (investigate)
  ``feature``   ``payload.component`` (``rollguard`` for the breaker and the monitor)
  ``phase``     ``payload.group`` (``breaker`` / ``monitor`` for those)
  ``tier``      ``custom_details.tier`` (rule pages only)
  ``ruleset``   ``custom_details.ruleset`` (rule pages only)
  ``rule``      ``<ruleset>/<rule id>`` (rule pages only)
  ``class``     ``payload.class`` as sent
  ``segment``   ``custom_details.segment_group`` as ``key=value,…`` (rules with ``group_by`` only)
  ============ =====================================================================================

  Annotations: ``summary``, ``runbook_url`` (when the rule has one), ``description`` (metric, value, threshold,
  window). ``startsAt`` is the page's event time. A trigger's ``endsAt`` is ``now + ttl`` (Alertmanager resolves an
  alert whose end passed, and rollguard does not re-send a firing page); a resolve's ``startsAt`` and ``endsAt`` are
  both its event time, which Alertmanager merges into the firing alert of the same labels as "resolved".
* **PagerDuty Events v2** (``POST /v2/enqueue``): ``routing_key``, ``event_action``, ``dedup_key``, and for a trigger
  ``payload`` (summary, source, severity, timestamp, component, group, class, custom_details), ``links`` and
  ``client``; a resolve carries no payload (PagerDuty ignores it).
* **Webhook**: the page itself (modelled fields only, see streams/pager/pages.py).

>>> from streams.pager.pages import parse_page
>>> p = parse_page(b'{"event_action": "trigger", "dedup_key": "rollguard-1", "payload": {"summary": "s", '
...                b'"source": "rollguard", "severity": "critical", "timestamp": "2026-11-02T10:00:00Z", '
...                b'"component": "email-reply", "group": "ga", "class": "error-rate-kill", '
...                b'"custom_details": {"tier": "kill", "ruleset": "safe-llm", "segment_group": {"platform": "ios"}}}}')
>>> alert = alertmanager_alert(p, now_ms=1793613600000, ttl_ms=3600000)
>>> alert["labels"]["alertname"], alert["labels"]["rule"], alert["labels"]["segment"], alert["endsAt"]
('rollguard_error_rate_kill', 'safe-llm/error-rate-kill', 'platform=ios', '2026-11-02T11:00:00.000Z')
>>> sorted(pagerduty_event(p.model_copy(update={"event_action": "resolve"}), "R0UT1NG"))
['dedup_key', 'event_action', 'routing_key']
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from streams.pager.pages import Page, rfc3339

__all__ = ["alertmanager_alert", "pagerduty_event", "webhook_body", "alertname"]

_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def alertname(page: Page) -> str:
    return "rollguard_" + _NOT_NAME.sub("_", page.payload.class_ or "page")


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def alertmanager_alert(page: Page, *, now_ms: int, ttl_ms: int) -> dict[str, Any]:
    """The Alertmanager alert for ``page``; ``now_ms`` (wall clock, read by the caller) + ``ttl_ms`` ends a trigger."""
    pl = page.payload
    details = pl.custom_details
    labels = {"alertname": alertname(page), "dedup_key": page.dedup_key, "severity": pl.severity}
    optional = {
        "feature": pl.component,
        "phase": pl.group,
        "class": pl.class_,
        "tier": _text(details.get("tier")),
        "ruleset": _text(details.get("ruleset")),
    }
    labels.update({k: v for k, v in optional.items() if v})
    if "ruleset" in labels and pl.class_:
        labels["rule"] = f"{labels['ruleset']}/{pl.class_}"
    segment = details.get("segment_group")
    if isinstance(segment, dict) and segment:
        labels["segment"] = ",".join(f"{k}={v}" for k, v in sorted(segment.items()))
    annotations = {"summary": pl.summary}
    if page.runbook:
        annotations["runbook_url"] = page.runbook
    if details.get("metric"):
        line = details.get("threshold")
        if details.get("threshold_high") is not None:  # op between / outside: a band
            line = f"[{line}, {details['threshold_high']}]"
        annotations["description"] = (f"{details['metric']} = {details.get('value')} {details.get('op') or ''} "
                                      f"{line} over {details.get('window', '?')}")  # fmt: skip
    at = rfc3339(pl.time)
    if page.event_action == "resolve":
        return {"labels": labels, "annotations": annotations, "startsAt": at, "endsAt": at}
    ends = datetime.fromtimestamp((now_ms + ttl_ms) / 1000, tz=timezone.utc)
    return {"labels": labels, "annotations": annotations, "startsAt": at, "endsAt": rfc3339(ends)}


def pagerduty_event(page: Page, routing_key: str) -> dict[str, Any]:
    """The PagerDuty Events API v2 event for ``page``."""
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": page.event_action,
                             "dedup_key": page.dedup_key}  # fmt: skip
    if page.event_action == "resolve":
        return event
    pl = page.payload
    payload: dict[str, Any] = {"summary": pl.summary, "source": pl.source, "severity": pl.severity,
                               "timestamp": pl.timestamp}  # fmt: skip
    for key, value in (("component", pl.component), ("group", pl.group), ("class", pl.class_)):
        if value:
            payload[key] = value
    if pl.custom_details:
        payload["custom_details"] = pl.custom_details
    event["payload"] = payload
    if page.links:
        event["links"] = [link.model_dump(exclude_none=True) for link in page.links]
    event["client"] = "rollguard"
    return event


def webhook_body(page: Page) -> dict[str, Any]:
    return page.as_json()
