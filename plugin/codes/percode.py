"""Per-code operations: look a code up as a shopper typed it and tell its story; void it,
extend its expiry, give it to someone else.

Each change is one transaction: the code, its AuditEvent (with the actor) and, when the platform
must follow, the sync job (the outbox, `plugin.platforms.sync`). Voiding queues the sync's deactivation (the
same job that takes voided and expired codes off the platform); an extended expiry is sent by the
`sync.ends` job to platforms that hold a per-code end (the sandbox, WooCommerce; plugin.platforms.expiry),
and a code that was taken off when it expired is marked `pending` and pushed again with its new
end. Each change is idempotent: asking for the state the code is already
in changes and records nothing. The platform outcome per code is its sync status and error.
A reassigned code that its campaign pushed to a messaging provider is pushed to the new holder
once, and the old holder's merge fields are blanked (plugin.distribution.pushes.reassigned).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from plugin.campaigns import codeends, platform
from plugin.campaigns.lookup import campaign_format
from plugin.checkout.checkout import resolve_code
from plugin.distribution import pushes
from plugin.errors import Conflict, InvalidInput, NotFound
from plugin.formats import codes
from plugin.platforms import sync
from plugin.rules.recipients import normalise_recipient, recipient_parts
from plugin.store import eventlog
from plugin.store.jobstore import aware
from plugin.store.models import AuditEvent, Campaign, Code, RecipientDelivery, Redemption, Reservation, Shop

# one-edit neighbours of a typed code are looked up in chunks of this many
_NEAR_CHUNK = 500
_NEAR_MAX = 20_000


class CodeNotFound(NotFound):
    reason = "code_not_found"


class CodeVoided(Conflict):
    reason = "code_voided"


class CodeUsed(Conflict):
    reason = "code_used"


class CodeHeld(Conflict):
    reason = "code_held"


class RecipientHoldsCode(Conflict):
    reason = "recipient_has_code"


# --- finding a code -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    code: Code
    campaign: Campaign
    typed: str

    @property
    def display(self) -> str:
        return codes.display(campaign_format(self.campaign), self.code.code)


def find(session: Session, *, shop_id: int, typed: str, lock: bool = False) -> Found:
    """The shop's code that `typed` stands for (any spacing, case or look-alike characters);
    CodeNotFound, with a likely intended code when one is a single edit away."""
    stored, refusal = resolve_code(session, shop_id=shop_id, typed=typed)
    code = None
    if refusal is None:
        query = select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == stored)
        code = session.exec(query.with_for_update() if lock else query).first()
    if code is None:
        details: dict[str, Any] = {"typed": typed[:100], "normalised": stored}
        hint = _near(session, shop_id=shop_id, stored=stored) if stored else None
        if hint is not None:
            details["suggestion"] = hint
        tail = f"; did you mean {hint}?" if hint else ""
        raise CodeNotFound(f"no code {typed.strip()[:100]!r} in this shop{tail}", details=details)
    campaign = session.get_one(Campaign, code.campaign_id)
    return Found(code, campaign, typed)


def _near(session: Session, *, shop_id: int, stored: str) -> str | None:
    """The one code of the shop within one edit of `stored` (admins only: it reveals a code)."""
    rows = session.exec(select(Campaign.code_format).where(col(Campaign.shop_id) == shop_id)).all()
    formats = [codes.CodeFormat.from_dict(f) for f in rows]
    alphabet = "".join(sorted({ch for fmt in formats for ch in fmt.alphabet} | set(stored)))
    near = _one_edit(stored, alphabet)
    if len(near) > _NEAR_MAX:
        return None
    found: list[str] = []
    for start in range(0, len(near), _NEAR_CHUNK):
        chunk = near[start : start + _NEAR_CHUNK]
        found += session.exec(select(Code.code).where(col(Code.shop_id) == shop_id, col(Code.code).in_(chunk))).all()
    guess = codes.suggest(stored, found)
    if guess is None:
        return None
    campaign_id = session.exec(select(Code.campaign_id).where(col(Code.shop_id) == shop_id, col(Code.code) == guess)).one()
    return codes.display(campaign_format(session.get_one(Campaign, campaign_id)), guess)


def _one_edit(text: str, alphabet: str) -> list[str]:
    out: set[str] = set()
    for i in range(len(text) + 1):
        for ch in alphabet:
            out.add(text[:i] + ch + text[i:])
            if i < len(text):
                out.add(text[:i] + ch + text[i + 1 :])
        if i < len(text):
            out.add(text[:i] + text[i + 1 :])
        if i < len(text) - 1:
            out.add(text[:i] + text[i + 1] + text[i] + text[i + 2 :])
    out.discard(text)
    return sorted(out)


# --- changes ------------------------------------------------------------------------------------


def _audit(session: Session, found: Found, action: str, actor: str, now: datetime, **details: Any) -> AuditEvent:
    event = AuditEvent(
        shop_id=found.code.shop_id,
        action=action,
        subject=f"code:{found.code.id}",
        actor=actor,
        details={"code": found.code.code, **details},
        created_at=now,
    )
    session.add(event)
    return event


def _platform_holds(session: Session, found: Found) -> bool:
    """Whether a platform job can act for this code: the campaign has a platform discount and
    the shop still has the app (an uninstalled shop's change stays ours alone)."""
    return found.campaign.platform_discount_id is not None and platform.is_installed(session, found.code.shop_id)


def void(session: Session, *, shop_id: int, typed: str, actor: str, now: datetime, reason: str = "") -> Found:
    """Void a code: validation refuses it from now on, and the sync's deactivation takes it off
    the platform. Voiding a voided code changes nothing."""
    found = find(session, shop_id=shop_id, typed=typed, lock=True)
    code = found.code
    if code.status == "voided":
        return found
    code.status = "voided"
    session.add(code)
    _audit(session, found, "code.voided", actor, now, reason=reason[:500])
    eventlog.emit(
        session.connection(),
        shop_id=shop_id,
        type="code.voided",
        data={"campaign_id": code.campaign_id, "codes": [code.code], "reason": reason[:500]},
        now=now,
    )
    # queued whatever the code's sync status: a push in flight may mark it synced after us
    if _platform_holds(session, found):
        platform.enqueue_deactivate(session, shop_id=shop_id, campaign_id=code.campaign_id)
    session.flush()
    return found


def extend(session: Session, *, shop_id: int, typed: str, expires_at: datetime, actor: str, now: datetime) -> Found:
    """Give a code a later end. A code the platform holds (or held until it expired) is pushed
    again with its new end. The same end again changes nothing."""
    if expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a timezone, e.g. 2027-01-31T23:59:59Z", reason="invalid_expiry")
    if expires_at <= now:
        raise InvalidInput("expires_at must be in the future", reason="invalid_expiry")
    found = find(session, shop_id=shop_id, typed=typed, lock=True)
    code = found.code
    if code.status == "voided":
        raise CodeVoided("this code is voided: a voided code can't be extended")
    if found.campaign.status == "ended":
        raise Conflict("the campaign has ended: its codes can't be extended", reason="campaign_ended")
    before = aware(code.expires_at) if code.expires_at else None
    if before == expires_at:
        return found
    code.expires_at = expires_at
    if _platform_holds(session, found):
        if code.sync_status in ("deactivated", "failed"):
            # taken off when it expired (or never confirmed): pushed again, with its new end
            code.sync_status, code.sync_error = "pending", None
            sync.enqueue_push(session, shop_id=shop_id, campaign_id=code.campaign_id)
        else:
            # held (or being pushed): a platform with an end per code gets the new one; the
            # others hold none, and the expiry sweep no longer finds it lapsed
            assert code.id is not None
            codeends.note_end_change(session, shop_id=shop_id, campaign_id=code.campaign_id, code_id=code.id, now=now)
    session.add(code)
    _audit(
        session,
        found,
        "code.extended",
        actor,
        now,
        expires_at=expires_at.isoformat(),
        previous=before.isoformat() if before else None,
    )
    session.flush()
    return found


def reassign(session: Session, *, shop_id: int, typed: str, recipient: str, actor: str, now: datetime) -> Found:
    """Give a code to another recipient. Refused for a voided, used, expired or held code (only
    live codes are handed out, promise 9) and for a recipient who already holds a code of the
    campaign (one recipient, one code, promise 2). A binding to the old person moves to the new."""
    key = normalise_recipient(recipient)
    found = find(session, shop_id=shop_id, typed=typed, lock=True)
    code = found.code
    if code.recipient == key:
        return found
    if code.status == "voided":
        raise CodeVoided("this code is voided: give the recipient a live code instead")
    if code.pool_id is not None:
        raise Conflict("Klaviyo hands this code out from its coupon pool: give the recipient another code",
                       reason="code_in_klaviyo_pool")  # fmt: skip
    if code.uses > 0:
        raise CodeUsed("this code has been used: it can't be handed to someone else")
    if code.expires_at is not None and aware(code.expires_at) <= now:
        raise CodeUsed("this code has expired: extend it first, or give the recipient a live code", reason="code_expired")
    held = session.exec(
        select(Reservation.id).where(
            col(Reservation.code_id) == code.id, col(Reservation.released_at).is_(None), col(Reservation.expires_at) > now
        )
    ).first()
    if held is not None:
        raise CodeHeld("a checkout holds this code right now: try again when the hold ends")
    other = session.exec(select(Code.code).where(col(Code.campaign_id) == code.campaign_id, col(Code.recipient) == key)).first()
    if other is not None:
        raise RecipientHoldsCode(
            "this recipient already holds a code of this campaign (one recipient, one code)",
            details={"recipient": key},
        )
    previous = code.recipient
    code.recipient, code.assigned_at = key, now
    if code.email is not None or code.customer_id is not None:
        # the code was bound to the person it was given to: the binding follows the code
        parts = recipient_parts(key)
        code.email, code.customer_id = parts["email"], parts["customer_id"]
    session.add(code)
    audit = _audit(session, found, "code.reassigned", actor, now, recipient=key, previous=previous)
    session.flush()
    assert audit.id is not None
    # each provider the campaign pushes to sends the code to the new recipient once; the old
    # recipient's merge fields are blanked where they were set (plugin.distribution.pushes)
    pushes.reassigned(session, code=code, previous=previous, audit_id=audit.id, now=now)
    return found


# --- the story ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at: datetime
    event: str
    details: dict[str, Any]


def story(session: Session, found: Found) -> list[Event]:
    """Everything our records say happened to the code, oldest first."""
    code = found.code
    events: list[Event] = [Event(aware(code.created_at), "issued", {"campaign_id": code.campaign_id, "batch_id": code.batch_id})]
    audits = session.exec(
        select(AuditEvent)
        .where(col(AuditEvent.shop_id) == code.shop_id, col(AuditEvent.subject) == f"code:{code.id}")
        .order_by(col(AuditEvent.id))
    ).all()
    reassigned = any(a.action == "code.reassigned" for a in audits)
    if code.recipient is not None and code.assigned_at is not None and not reassigned:
        events.append(Event(aware(code.assigned_at), "assigned", {"recipient": code.recipient}))
    if code.synced_at is not None:
        shop = session.get(Shop, code.shop_id)
        events.append(
            Event(
                aware(code.synced_at),
                "deactivated" if code.sync_status == "deactivated" else "synced",
                {"platform": shop.platform if shop else None, "platform_id": code.platform_id},
            )
        )
    for d in session.exec(
        select(RecipientDelivery).where(col(RecipientDelivery.shop_id) == code.shop_id, col(RecipientDelivery.code_id) == code.id)
    ).all():
        sent = {"provider": d.provider, "recipient": d.recipient, "status": d.status}
        events.append(Event(aware(d.updated_at), "delivered", sent))
    for r in session.exec(
        select(Reservation).where(col(Reservation.shop_id) == code.shop_id, col(Reservation.code_id) == code.id)
    ).all():
        events.append(
            Event(aware(r.created_at), "reserved", {"checkout_id": r.checkout_id, "expires_at": aware(r.expires_at).isoformat()})
        )
        if r.released_at is not None:
            events.append(Event(aware(r.released_at), "released", {"checkout_id": r.checkout_id}))
    redeemed = session.exec(
        select(Redemption).where(col(Redemption.shop_id) == code.shop_id, col(Redemption.code_id) == code.id)
    ).all()
    rollbacks = {
        a.subject: a
        for a in session.exec(
            select(AuditEvent).where(
                col(AuditEvent.shop_id) == code.shop_id,
                col(AuditEvent.action) == "redemption.rolled_back",
                col(AuditEvent.subject).in_([f"redemption:{r.id}" for r in redeemed]),
            )
        ).all()
    }
    for red in redeemed:
        about = {"redemption_id": red.id, "order_id": red.order_id}
        events.append(
            Event(
                aware(red.created_at),
                "redeemed",
                {**about, "amount": red.amount, "currency": red.currency, "channel": red.channel, "source": red.source},
            )
        )
        if red.flagged_reason:
            events.append(Event(aware(red.created_at), "flagged", {**about, "reason": red.flagged_reason}))
        if red.rolled_back_at is not None:
            audit = rollbacks.get(f"redemption:{red.id}")
            extra = {"actor": audit.actor, **audit.details} if audit else {}
            events.append(Event(aware(red.rolled_back_at), "rolled_back", {**about, **extra}))
    names = {"code.voided": "voided", "code.extended": "extended", "code.reassigned": "assigned", "code.retracted": "retracted"}
    for a in audits:
        details = {k: v for k, v in a.details.items() if k != "code"}
        events.append(Event(aware(a.created_at), names.get(a.action, a.action), {"actor": a.actor, **details}))
    return sorted(events, key=lambda e: e.at)
