"""Talking to Grafana's HTTP API through grafana-client, with errors an operator can act on.

Every request goes through :class:`Grafana` (sync, for ``dashboards push``) or :class:`AsyncGrafana` (asyncio, for
the ``annotate`` consumer). Both wrap the maintained ``grafana-client`` package and turn whatever it or its HTTP
library raises into one :class:`GrafanaError` that carries the HTTP status (``None`` when Grafana never answered),
Grafana's own message, and whether the same request may succeed later (``retryable``: no answer, timeouts, 408,
429, 5xx). The token is a ``SecretStr``: it never prints, and it is scrubbed from any message as a last resort.

>>> check_url("https://grafana.example.com/sub")
'https://grafana.example.com/sub/'
>>> check_url("grafana:3000")
Traceback (most recent call last):
...
streams.grafana.api.GrafanaError: invalid Grafana URL 'grafana:3000': use http(s)://host[:port][/sub-path]
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from rules.exceptions import RollguardError

__all__ = ["GrafanaError", "Grafana", "AsyncGrafana", "check_url", "resolve_token", "resolve_url", "TOKEN_ENV",
           "URL_ENV"]  # fmt: skip

TOKEN_ENV = "GRAFANA_TOKEN"
URL_ENV = "GRAFANA_URL"
DEFAULT_TIMEOUT_S = 10.0
_RETRYABLE_STATUS = frozenset({408, 429})


class GrafanaError(RollguardError):
    """A Grafana request failed, or Grafana is configured wrongly for rollguard.

    ``status``: the HTTP status, ``None`` when no HTTP answer came (unreachable, timeout, not Grafana);
    ``retryable``: the same request may succeed later (Grafana down or overloaded), so a consumer should back off
    and retry rather than give up. Anything else (401, 403, 404, 400...) needs a human: fix the token, the URL or
    the dashboard uid, then run again.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


def check_url(url: str | None) -> str:
    """Validate a Grafana base URL and normalise it for grafana-client (whose ``from_url`` appends ``api`` to the
    path as is, so a sub-path needs its trailing slash). Credentials in the URL are refused: they would print."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrafanaError(f"invalid Grafana URL {url!r}: use http(s)://host[:port][/sub-path]")
    if parts.username or parts.password:
        raise GrafanaError("put credentials in GRAFANA_TOKEN (or --token), not in the Grafana URL")
    path = parts.path.rstrip("/") + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def resolve_url(arg: str | None) -> str:
    return check_url(arg or os.environ.get(URL_ENV))


def resolve_token(arg: str | None) -> SecretStr:
    """The API token from ``--token`` or ``GRAFANA_TOKEN`` (preferred: a command line shows in ``ps``)."""
    token = arg or os.environ.get(TOKEN_ENV)
    if not token:
        raise GrafanaError(f"no Grafana token: set {TOKEN_ENV} (a service account token) or pass --token")
    return SecretStr(token)


class _Base:
    def __init__(self, url: str, token: SecretStr) -> None:
        self.url = url.rstrip("/")
        self._token = token

    def error(self, what: str, exc: BaseException) -> GrafanaError:
        """Map anything grafana-client or niquests raised during ``what`` (e.g. ``POST /api/annotations``)."""
        import niquests.exceptions
        from grafana_client.client import GrafanaException, GrafanaTimeoutError

        if isinstance(exc, GrafanaError):
            return exc
        where = f"Grafana at {self.url}"
        if isinstance(exc, GrafanaTimeoutError | niquests.exceptions.Timeout):
            return GrafanaError(f"{where} did not answer {what} in time", None, retryable=True)
        if isinstance(exc, GrafanaException) and exc.status_code:
            status = int(exc.status_code)
            msg = _grafana_message(exc.response) or str(exc.message)
            hint = _HINTS.get(status, "")
            retryable = status >= 500 or status in _RETRYABLE_STATUS
            text = self._scrub(f"{where} answered HTTP {status} to {what}: {msg}{hint}")
            return GrafanaError(text, status, retryable)
        if isinstance(exc, niquests.exceptions.JSONDecodeError):
            return GrafanaError(f"{where} did not answer {what} with JSON: is the URL Grafana's root URL?")
        if isinstance(exc, GrafanaException | niquests.exceptions.RequestException | OSError):
            return GrafanaError(self._scrub(f"cannot reach {where} ({what}): {_reason(exc)}"), None, retryable=True)
        raise exc

    def _scrub(self, text: str) -> str:
        secret = self._token.get_secret_value()
        return text.replace(secret, "[token]") if secret else text


class Grafana(_Base):
    """Synchronous grafana-client ``GrafanaApi`` behind :meth:`call`, which maps errors."""

    def __init__(self, url: str, token: SecretStr, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        from grafana_client import GrafanaApi

        super().__init__(url, token)
        self.api = GrafanaApi.from_url(url, credential=token.get_secret_value(), timeout=timeout)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return _json_object(fn(*args, **kwargs), what, self.url)
        except Exception as e:  # noqa: BLE001 - mapped, or re-raised when unknown
            raise self.error(what, e) from None


class AsyncGrafana(_Base):
    """grafana-client's ``AsyncGrafanaApi`` (niquests async session) behind :meth:`call`, which maps errors."""

    def __init__(self, url: str, token: SecretStr, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        from grafana_client import AsyncGrafanaApi

        super().__init__(url, token)
        self.api = AsyncGrafanaApi.from_url(url, credential=token.get_secret_value(), timeout=timeout)

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        try:
            return _json_object(await fn(*args, **kwargs), what, self.url)
        except Exception as e:  # noqa: BLE001 - mapped, or re-raised when unknown
            raise self.error(what, e) from None

    async def close(self) -> None:
        await self.api.client.s.close()


_HINTS = {
    401: " (the token is missing, wrong or expired: check GRAFANA_TOKEN / --token)",
    403: " (the token's service account lacks the permission: it needs the Editor role or the matching RBAC action)",
    404: " (is the URL Grafana's root URL, including any sub-path?)",
}


def _grafana_message(response: Any) -> str:
    """Grafana's error text: the JSON ``message`` (sometimes ``error``), else a trimmed body."""
    if isinstance(response, dict):
        for key in ("message", "error"):
            if isinstance(response.get(key), str) and response[key]:
                return response[key][:300]
        return ""
    return str(response or "").strip()[:300]


def _json_object(value: Any, what: str, url: str) -> Any:
    """Grafana answers these endpoints with a JSON object (or list, for folder listings); a text or HTML page means
    the URL reaches something else."""
    if isinstance(value, dict | list):
        return value
    raise GrafanaError(f"Grafana at {url} answered {what} with no JSON object: is the URL Grafana's root URL?")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _reason(exc: BaseException) -> str:
    """A short cause ('Connection refused', 'host name not found') instead of urllib3's nested repr."""
    text = str(exc)
    if "NameResolutionError" in text or "Failed to resolve" in text:
        return "host name not found"
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return "TLS handshake or certificate verification failed"
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip()
    return type(exc).__name__
