"""Forms and actions: the CSRF check every POST passes, errors shown next to their field, and
actions run through services in one transaction with their audit event (who did it)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine, event
from sqlmodel import Session
from starlette.requests import Request

from plugin.errors import PluginError
from plugin.shops import audit
from plugin.store.models import AuditEvent
from plugin.store.units import in_thread, transaction
from plugin.web.admin.context import AdminContext

T = TypeVar("T")
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FIELD = 10_000  # characters kept of any one form value


@dataclass
class Form:
    """A form's values as sent and its errors by field name (`_form` for the form as a whole)."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def fail(self, exc: PluginError) -> Form:
        """Put a service's refusal next to the field it names (`details["field"]`)."""
        name = exc.details.get("field") if isinstance(exc.details.get("field"), str) else None
        self.errors[name or "_form"] = exc.message
        return self

    @property
    def ok(self) -> bool:
        return not self.errors


async def read_form(request: Request) -> Form:
    data = await request.form()
    values = {k: v[:MAX_FIELD] for k, v in data.items() if isinstance(v, str)}
    return Form(values=values)


def csrf_ok(request: Request, expected: str, form: Form) -> bool:
    """The token of the form field or the htmx header equals the caller's (constant time)."""
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
    return bool(sent) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


async def act(
    request: Request,
    ctx: AdminContext,
    work: Callable[[Session], T],
    *,
    action: str,
    subject: str | Callable[[T], str],
    details: dict[str, object] | None = None,
) -> T:
    """Run a service call and its audit event (actor = ctx.actor) in one transaction: exactly one
    row per action. A service that records the event itself, naming this actor (a dead job's
    retry, a rollback: the CLI and API need that row too), is not followed by a second row."""
    engine: Engine = request.app.state.engine
    actor = ctx.actor[:128]  # as audit.record stores it

    def run() -> T:
        with transaction(engine) as session:
            recorded: list[AuditEvent] = []

            def added(_session: Session, instance: object) -> None:
                if isinstance(instance, AuditEvent) and instance.actor == actor and instance.shop_id == ctx.shop_id:
                    recorded.append(instance)

            event.listen(session, "transient_to_pending", added)
            try:
                result = work(session)
            finally:
                event.remove(session, "transient_to_pending", added)
            if not recorded:
                named = subject(result) if callable(subject) else subject
                audit.record(
                    session, shop_id=ctx.shop_id, actor=ctx.actor, action=action, subject=named, details=dict(details or {})
                )
            return result

    return await in_thread(engine, run)
