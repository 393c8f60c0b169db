"""RFC 9457 problem details: every refusal of the API says why, with a stable `reason` key."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from plugin.errors import PluginError

PROBLEM = "application/problem+json"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM


def problem(
    status: int, reason: str, detail: str, *, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": f"https://couponry.dev/problems/{reason}",
        "title": reason.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "reason": reason,
    }
    if details:
        body["details"] = details
    return ProblemResponse(body, status_code=status, headers=headers)


def validation_problem(exc: ValidationError) -> ProblemResponse:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    first = errors[0] if errors else {"field": "", "message": "invalid input"}
    where = f"{first['field']}: " if first["field"] else ""
    return problem(422, "invalid_input", f"{where}{first['message']}", details={"errors": errors})


async def plugin_error_handler(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, PluginError)
    return problem(exc.status, exc.reason, exc.message, details=exc.details or None)


async def validation_error_handler(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ValidationError)
    return validation_problem(exc)


async def http_error_handler(request: Request, exc: Exception) -> ProblemResponse:
    """Starlette's own 404/405s as problem+json too, so every error has one shape."""
    assert isinstance(exc, HTTPException)
    reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, reason, str(exc.detail), headers=dict(exc.headers) if exc.headers else None)
