"""Errors raised by connectors, as one small hierarchy.

    ConnectorError                 any failure talking to a platform or provider
    ├── AuthError                  credentials missing, revoked or refused (401/403)
    ├── RateLimited                the platform asked us to slow down; carries retry_after
    ├── NotFound                   the remote object does not exist (404)
    ├── Rejected                   the platform refused our request as invalid (4xx); retrying won't help
    ├── UpstreamError              5xx, timeouts, broken responses; worth retrying
    └── BadSignature               a webhook or callback whose signature does not verify

The worker retries RateLimited and UpstreamError (honouring retry_after) and records the
others as failures with their message.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every connector failure; `message` is safe to show to a merchant."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"


class AuthError(ConnectorError):
    pass


class RateLimited(ConnectorError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class NotFound(ConnectorError):
    pass


class Rejected(ConnectorError):
    pass


class UpstreamError(ConnectorError):
    retryable = True


class BadSignature(ConnectorError):
    pass
