"""Logging for `couponry serve` and `couponry worker`: one line per record, JSON in production
and readable text in development (`COUPONRY_LOG_FORMAT`), each with the request's id and the
shop when known, and never a secret.

    configure(settings)      the root logger and uvicorn's, via dictConfig (`logging_config`)
    request_scope(id)        the request id every record logged meanwhile carries
    bind_shop(shop_id)       the shop every record logged for this request carries from now on
    redactor(settings)       what `Redacted` formatters mask: the configured secrets' values,
                             bearer and platform tokens, token-bearing URL parts and fields

Records are redacted as they are formatted, whole (message, arguments and traceback), so no
call site has to remember to.
"""

from __future__ import annotations

import copy
import logging
import logging.config
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from plugin.settings import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("couponry_request_id", default=None)
SHOP: ContextVar[int | None] = ContextVar("couponry_shop", default=None)
REDACTED = "[redacted]"

_PATTERNS = [
    # Authorization headers and the like
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"),
    # Shopify access tokens and secrets (shpat_, shpca_, shppa_, shpss_), Slack/GitHub-like tokens
    re.compile(r"\bshp(?:at|ca|pa|ss)_[A-Za-z0-9]+"),
    # signed pull URLs and claim links carry their token in the path
    re.compile(r"(?<=/pull/)[^/?#\s\"'\\]+|(?<=/claim/)[^/?#\s\"'\\]+"),
    # query values and fields that name a secret: token=..., "access_token": "...", password: ...
    re.compile(
        r"(?i)((?:access_token|refresh_token|id_token|client_secret|secret|password|api_key|apikey|token|"
        r"signed_payload_jwt|signature|sig)\\?[\"']?\s*[:=]\s*\\?[\"']?)[^\"'\\&\s,;}]+"
    ),
]


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.lastindex else "") + REDACTED, text)
        return text


def redactor(settings: Settings) -> Redactor:
    """The configured secrets (the key, earlier keys, connectors' secrets and tokens) plus patterns."""
    keys = [settings.secret_key, settings.token_key, settings.signing_key, *settings.old_token_keys]
    values: list[str] = [str(k) for k in keys if k] + [str(r.key) for r in settings.old_signing_keys]
    for options in settings.connector_config.values():
        values += [value for name, value in options.items() if any(w in name for w in ("secret", "token", "key", "password"))]
    return Redactor(values)


class RequestContext(logging.Filter):
    """Puts the request id and shop (when known) on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.shop = SHOP.get()
        return True


class _Redacting(logging.Formatter):
    redact: Redactor = Redactor()

    def format(self, record: logging.LogRecord) -> str:
        # the message is redacted before it is encoded (JSON escapes would hide a secret's
        # surroundings from the patterns), the whole line once more after (extras, uvicorn's)
        record = copy.copy(record)  # other handlers see the record as it was
        record.msg, record.args = self.redact(record.getMessage()), None
        return self.redact(super().format(record))

    def formatException(self, ei: Any) -> str:
        return self.redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self.redact(super().formatStack(stack_info))


class TextFormatter(_Redacting):
    """`2026-12-07 10:00:00,123 INFO couponry.orders [req=ab12 shop=3] message`"""

    def format(self, record: logging.LogRecord) -> str:
        rid, shop = getattr(record, "request_id", None), getattr(record, "shop", None)
        context = " ".join(part for part in (f"req={rid}" if rid else "", f"shop={shop}" if shop is not None else "") if part)
        record.context = f" [{context}]" if context else ""
        return super().format(record)


class JsonLines(_Redacting, JsonFormatter):
    """One JSON object per line: time, level, logger, message, request_id, shop, and any `extra`."""


def resolve_format(settings: Settings) -> str:
    """`auto`: JSON on a shared database (the Procfile's production topology), text on the
    embedded SQLite default."""
    if settings.log_format != "auto":
        return settings.log_format
    return "text" if settings.is_sqlite else "json"


def logging_config(settings: Settings) -> dict[str, Any]:
    """A dictConfig for the root logger and uvicorn's loggers, through one redacting handler."""
    level = settings.log_level.upper()
    redact = redactor(settings)
    formatters: dict[str, Any] = {
        "text": {
            "()": _with(TextFormatter, redact),
            "format": "%(asctime)s %(levelname)s %(name)s%(context)s %(message)s",
        },
        "json": {
            "()": _with(JsonLines, redact),
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(shop)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    }
    chosen = resolve_format(settings)
    handler = {"class": "logging.StreamHandler", "formatter": chosen, "filters": ["context"], "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": RequestContext}},
        "formatters": formatters,
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            # uvicorn's own loggers write through the same handler (and the access log's path
            # through the same redaction); they must not propagate to the root twice
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }


def _with(cls: type[_Redacting], redact: Redactor) -> type[_Redacting]:
    return type(cls.__name__, (cls,), {"redact": redact})


def configure(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings))


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    request_token = REQUEST_ID.set(request_id)
    shop_token = SHOP.set(None)
    try:
        yield
    finally:
        SHOP.reset(shop_token)
        REQUEST_ID.reset(request_token)


def bind_shop(shop_id: int | None) -> None:
    """From here to the end of the request (or job), records name this shop."""
    SHOP.set(shop_id)
