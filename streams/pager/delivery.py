"""The HTTP shell: one ``POST`` per page to the configured receiver, its answer classified.

``Deliverer.deliver(page)`` returns when the receiver took the page (2xx) and raises
:class:`~streams.pager.exceptions.DeliveryError` otherwise: *retryable* for no answer, a timeout, 408, 429 and 5xx
(with the receiver's ``Retry-After`` when it sent one), not retryable for any other status. Retrying is the
consumer's job (streams/kafka/committing_consumer.py), not this module's: a delivery is one attempt.

Credentials are ``SecretStr`` settings opened only here, when a request is built: the PagerDuty routing key goes in
the event body (PagerDuty's API has no header for it), a bearer token or basic auth in the ``Authorization`` header
for Alertmanager and the webhook. Errors and logs name the receiver by scheme, host and port only.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from rules.durations import parse_duration
from streams.pager.exceptions import DeliveryError
from streams.pager.pages import Page
from streams.pager.receivers import alertmanager_alert, pagerduty_event, webhook_body

if TYPE_CHECKING:
    from streams.settings import Settings

__all__ = ["Deliverer", "PAGERDUTY_URL", "pager_problems", "receiver_name"]

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
RETRYABLE = frozenset({408, 429})
NAMES = {"alertmanager": "Alertmanager", "pagerduty": "PagerDuty", "webhook": "webhook"}


def receiver_name(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: never its path, query or user info, which may be secrets."""
    u = urlsplit(url)
    host = u.hostname or "?"
    return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "")


def pager_problems(s: Settings) -> list[str]:
    """What keeps the pager from starting with these settings, each as ``setting: problem — what to do``."""
    problems = []
    if s.pager_target in ("alertmanager", "webhook") and not s.pager_url:
        problems.append(f"pager_url: the {s.pager_target} target needs a URL — set ROLLGUARD_PAGER_URL"
                        + (" to Alertmanager's root, e.g. http://alertmanager:9093" if s.pager_target ==
                           "alertmanager" else ""))  # fmt: skip
    if s.pager_target == "pagerduty" and s.pager_routing_key is None:
        problems.append("pager_routing_key: PagerDuty needs the integration's routing key — set "
                        "ROLLGUARD_PAGER_ROUTING_KEY")  # fmt: skip
    if (s.pager_username is None) != (s.pager_password is None):
        problems.append("pager_username: basic auth needs ROLLGUARD_PAGER_USERNAME and ROLLGUARD_PAGER_PASSWORD")
    if s.pager_token is not None and s.pager_username is not None:
        problems.append("pager_token: set a bearer token or basic auth, not both")
    url = s.pager_url or (PAGERDUTY_URL if s.pager_target == "pagerduty" else "")
    secret = s.pager_token or s.pager_password or (s.pager_routing_key if s.pager_target == "pagerduty" else None)
    if s.profile == "production" and url.startswith("http://") and secret is not None:
        problems.append("pager_url: credentials would travel in clear over http:// — use https://")
    if parse_duration(s.pager_backoff) > parse_duration(s.pager_backoff_max):
        problems.append("pager_backoff: longer than ROLLGUARD_PAGER_BACKOFF_MAX")
    if parse_duration(s.pager_backoff) == 0:
        problems.append("pager_backoff: must be more than 0")
    return problems


class Deliverer:
    """Sends pages to one receiver (``target``: alertmanager, pagerduty or webhook) over one aiohttp session,
    created on first use in the running loop. ``clock`` (wall seconds) dates an Alertmanager trigger's end."""

    def __init__(self, target: str, url: str, *, routing_key: Any = None, token: Any = None,
                 username: str | None = None, password: Any = None, timeout_s: float = 10.0,
                 alert_ttl_ms: int = 7 * 86_400_000, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        if target not in NAMES:
            raise ValueError(f"unknown pager target {target!r}")
        self.target = target
        self.url = url.rstrip("/") + "/api/v2/alerts" if target == "alertmanager" else url
        self.name = f"{NAMES[target]} at {receiver_name(url)}"
        self._routing_key = routing_key  # SecretStr, opened per request
        self._token = token
        self._basic = (username, password) if username is not None and password is not None else None
        self.timeout_s = timeout_s
        self.alert_ttl_ms = alert_ttl_ms
        self.clock = clock
        self._session = None

    @classmethod
    def from_settings(cls, s: Settings) -> Deliverer:
        return cls(s.pager_target, s.pager_url or PAGERDUTY_URL, routing_key=s.pager_routing_key, token=s.pager_token,
                   username=s.pager_username, password=s.pager_password, timeout_s=s.pager_timeout_s,
                   alert_ttl_ms=parse_duration(s.pager_alert_ttl))  # fmt: skip

    def __repr__(self) -> str:  # no secret, ever
        return f"Deliverer({self.name})"

    def body(self, page: Page) -> Any:
        if self.target == "alertmanager":
            return [alertmanager_alert(page, now_ms=int(self.clock() * 1000), ttl_ms=self.alert_ttl_ms)]
        if self.target == "pagerduty":
            return pagerduty_event(page, self._routing_key.get_secret_value())
        return webhook_body(page)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "User-Agent": "rollguard-pager"}
        if self.target != "pagerduty":
            if self._token is not None:
                h["Authorization"] = "Bearer " + self._token.get_secret_value()
            elif self._basic is not None:
                user_pass = f"{self._basic[0]}:{self._basic[1].get_secret_value()}".encode()
                h["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
        return h

    def _redact(self, text: str) -> str:
        """A receiver that echoes the request in its error must not put a credential into our logs."""
        for secret in (self._routing_key, self._token, self._basic[1] if self._basic else None):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "**********")
        return text

    async def deliver(self, page: Page) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        data = orjson.dumps(self.body(page))
        try:
            async with self._session.post(self.url, data=data, headers=self._headers(), allow_redirects=False) as r:
                if 200 <= r.status < 300:
                    return
                text = self._redact((await r.text(errors="replace"))[:200].strip())
                retry_after = _seconds(r.headers.get("Retry-After"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise DeliveryError(f"cannot reach {self.name}: {type(e).__name__}", retryable=True) from None
        status = r.status
        raise DeliveryError(f"{self.name} answered HTTP {status}" + (f": {text}" if text else ""), status=status,
                            retryable=status in RETRYABLE or status >= 500, retry_after_s=retry_after)  # fmt: skip

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is ignored: the backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
