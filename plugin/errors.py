"""Domain errors raised by the services; only the web layer and the CLI turn them into answers.

PluginError                 base; carries a stable `reason` key and an HTTP status hint
├── InvalidInput            the request is malformed or breaks a constraint (422)
├── NotFound                no such object in this shop (404)
├── Conflict                the object's state forbids the change (409)
└── CapacityError           a code format cannot safely hold the requested codes (422)

ConfigError                 the installation is misconfigured (the CLI prints its one line and exits 1)
"""

from __future__ import annotations

from typing import Any


class PluginError(Exception):
    status = 400
    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class InvalidInput(PluginError):
    status = 422
    reason = "invalid_input"


class NotFound(PluginError):
    status = 404
    reason = "not_found"


class Forbidden(PluginError):
    status = 403
    reason = "forbidden"


class Conflict(PluginError):
    status = 409
    reason = "conflict"


class CapacityError(PluginError):
    status = 422
    reason = "format_capacity_exceeded"


class ConfigError(ValueError):
    """A configuration mistake found at start-up: an unusable DATABASE_URL, an unreachable or
    unmigrated database, a port in use. Its message is one line for the operator, saying what
    is wrong and how to fix it, and never holds a secret; the CLI's entry point prints it."""
