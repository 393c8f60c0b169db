"""Reading a webhook's headers, whatever mapping the caller passes them in."""

from __future__ import annotations

from collections.abc import Mapping


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, its name matched without regard to case: as given, then in lower case
    (as ASGI servers give names), then by scanning (any other spelling)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    value = headers.get(wanted)
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == wanted), None)
