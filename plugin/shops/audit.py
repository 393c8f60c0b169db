"""The audit trail: who did what to which object of a shop (AuditEvent rows)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from plugin.store.models import AuditEvent


def record(
    session: Session, *, shop_id: int, actor: str, action: str, subject: str, details: dict[str, Any] | None = None
) -> None:
    """Add one event in the caller's transaction, so it commits (or not) with the change it describes."""
    session.add(AuditEvent(shop_id=shop_id, actor=actor[:128], action=action[:64], subject=subject[:128], details=details or {}))
