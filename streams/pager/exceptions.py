"""Errors of the pager, under ``RollguardError``::

    RollguardError
    ├── InvalidPage     a record on the pages topic that is not a page: counted, logged by position, skipped
    └── DeliveryError   the receiver did not take a page
                        retryable=True   no answer, timeout, 408, 429, 5xx: the consumer backs off and retries
                        retryable=False  any other 4xx: counted as failed, skipped, its offset committed

Messages name the receiver by scheme and host only (a webhook URL's path often is its secret), the HTTP status and
the first 200 characters of the receiver's answer; never a credential or the page itself.
"""

from __future__ import annotations

from rules.exceptions import RollguardError

__all__ = ["DeliveryError", "InvalidPage"]


class InvalidPage(RollguardError):
    """Not a page: not JSON, or a field missing or of the wrong kind. The message says which field, never its value
    (a malformed record may hold anything)."""


class DeliveryError(RollguardError):
    """The receiver did not take the page. ``retryable``: the same request may succeed later; ``retry_after_s``: the
    receiver's Retry-After, if it sent one; ``status``: the HTTP status (None without an answer)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
