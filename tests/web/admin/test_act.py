"""act(): one audit row per admin action. A service that records the action itself with the
same actor and shop is not followed by a second row; rows the service writes for someone else
(the worker, another shop) leave act's own row in place."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.shops import audit
from plugin.store.models import AuditEvent
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import act

ACTOR = "user:7:ann@shop.example"


def _ctx(shop_id: int) -> AdminContext:
    return AdminContext(shop_id=shop_id, shop_domain="s", shop_name="s", actor=ACTOR, role="owner", surface="standalone",
                        csrf_token="c", user_id=7)  # fmt: skip


def _rows(engine: Engine, subject: str) -> list[tuple[int, str, str]]:
    with Session(engine) as session:
        found = session.exec(select(AuditEvent).where(col(AuditEvent.subject) == subject).order_by(col(AuditEvent.id))).all()
        return [(e.shop_id, e.actor, e.action) for e in found]


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        ("nobody", lambda shop, other: [(shop, ACTOR, "thing.done")]),
        ("same actor", lambda shop, other: [(shop, ACTOR, "service.did")]),
        ("worker", lambda shop, other: [(shop, "worker", "service.did"), (shop, ACTOR, "thing.done")]),
        ("other shop", lambda shop, other: [(other, ACTOR, "service.did"), (shop, ACTOR, "thing.done")]),
    ],
)
def test_one_row_per_action(engine: Engine, shop_id: int, other_shop_id: int, writer: str, expected: Any) -> None:
    subject = f"thing:{writer}"

    def work(session: Session) -> None:
        if writer == "same actor":
            audit.record(session, shop_id=shop_id, actor=ACTOR, action="service.did", subject=subject)
        elif writer == "worker":
            audit.record(session, shop_id=shop_id, actor="worker", action="service.did", subject=subject)
        elif writer == "other shop":
            session.add(AuditEvent(shop_id=other_shop_id, actor=ACTOR, action="service.did", subject=subject))

    request: Any = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(engine=engine)))
    asyncio.run(act(request, _ctx(shop_id), work, action="thing.done", subject=subject))
    assert _rows(engine, subject) == expected(shop_id, other_shop_id)
