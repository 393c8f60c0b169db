"""Privacy requests and the app's lifecycle as platforms deliver them (webhooks): uninstall, and the
requests sent on the merchant's and customers' behalf.

    apply_lifecycle       a stored app/uninstalled or privacy delivery, applied
    redact_customer       customers/redact: that customer's PII leaves redemptions, codes,
                          usage counters, referrals, address fingerprints, referral audit
                          notes, earlier data-request reports and stored deliveries (the
                          request's own too); counts and amounts stay
    redact_shop           shop/redact (48 h after an uninstall): every row of the shop goes
    customer_data         customers/data_request: what we hold about a customer, kept as an
                          audit record for the merchant to hand over
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, delete, func, literal, or_, update
from sqlmodel import Session, SQLModel, col, select

from connectors.base import Delivery
from plugin.checkout.redemptions import customer_key
from plugin.distribution.referrals import REWARD_MARK
from plugin.errors import InvalidInput
from plugin.orders import webhooks
from plugin.platforms.installs import mark_uninstalled
from plugin.store.models import (
    AuditEvent,
    Code,
    CustomerUsage,
    EventMessage,
    RecipientDelivery,
    Redemption,
    Referral,
    ReferrerAddress,
    Shop,
    WebhookEvent,
    utcnow,
)

LIFECYCLE_KINDS = frozenset({"app_uninstalled", "customers_redact", "shop_redact", "customers_data_request"})
# what a data request says of an address: we hold keyed fingerprints (HMACs), never the address
ADDRESS_HELD = "address fingerprint held"
DATA_REQUEST = "customer.data_request"  # the audit action holding a data request's report


def _who(email: str | None, customer_id: str | None) -> tuple[str | None, str | None]:
    email = email.strip().lower() if email and email.strip() else None
    customer_id = customer_id.strip() if customer_id and customer_id.strip() else None
    return email, customer_id


def _person_keys(email: str | None, customer_id: str | None) -> list[str]:
    """The keys the person has as a referrer or friend (distribution.normalise_recipient's forms
    `id:<customer id>` and a lower-cased email; a privacy request names no phone)."""
    return [k for k in (email, f"id:{customer_id}" if customer_id else None) if k]


def _redemption_match(email: str | None, customer_id: str | None, order_ids: tuple[str, ...], *, recipient: bool) -> list[Any]:
    match: list[Any] = []
    if email:
        match.append(func.lower(col(Redemption.email)) == email)
        if recipient:
            match.append(func.lower(col(Redemption.recipient)) == email)
    if customer_id:
        match.append(col(Redemption.customer_id) == customer_id)
    if order_ids:
        match.append(col(Redemption.order_id).in_(order_ids))
    return match


def _code_match(email: str | None, customer_id: str | None) -> list[Any]:
    """Codes bound to the person: by the code's email or customer id, as its recipient (a
    referrer's own referral code is a claim for `id:<customer id>` or the email), and the
    referral rewards assigned to `<referrer>#referral:<id>` (plugin.distribution.referrals, which cuts the
    referrer to 290 characters). A prefix by substr, not LIKE: exact and case-sensitive on both
    dialects (SQLite's LIKE ignores case), and an email's `_` needs no escaping."""
    match = _recipient_match(col(Code.recipient), email, customer_id)
    if email:
        match.append(func.lower(col(Code.email)) == email)
    if customer_id:
        match.append(col(Code.customer_id) == customer_id)
    return match


def _recipient_match(recipient: Any, email: str | None, customer_id: str | None) -> list[Any]:
    """A recipient column naming the person (see `_code_match`): their email, `id:<customer id>`,
    or a referral reward of theirs (`<key>#referral:<id>`)."""
    match: list[Any] = []
    for key, column in ((email, func.lower(recipient)), (f"id:{customer_id}" if customer_id else None, recipient)):
        if key:
            reward = f"{key[:290]}{REWARD_MARK}"
            match += [column == key, func.substr(column, 1, len(reward)) == reward]
    return match


def _referral_match(shop_id: int, keys: list[str], redemption_match: list[Any]) -> tuple[Any, Any]:
    """(as referrer, as friend). A friend is keyed by customer id when the order had one, so a
    request naming only the email finds their referrals through their own redemptions."""
    as_referrer = col(Referral.referrer).in_(keys)
    friend: list[Any] = [col(Referral.friend).in_(keys)]
    if redemption_match:
        theirs = select(Redemption.id).where(col(Redemption.shop_id) == shop_id, or_(*redemption_match))
        friend.append(col(Referral.redemption_id).in_(theirs))
    return as_referrer, or_(*friend)


def redact_customer(
    session: Session,
    shop_id: int,
    *,
    email: str | None,
    customer_id: str | None,
    order_ids: tuple[str, ...] = (),
    actor: str,
) -> dict[str, int]:
    """Erase a customer's PII in this shop; what each table lost is returned (and audited)."""
    email, customer_id = _who(email, customer_id)
    deliveries = webhooks.redact_customer(
        session, shop_id, email=email, customer_id=customer_id, order_ids=order_ids, actor=actor
    )
    match = _redemption_match(email, customer_id, order_ids, recipient=True)
    keys = _person_keys(email, customer_id)
    # Referrals before redemptions: a friend's are found through their redemptions. The rows stay
    # (rewards given, counts) with the person's key replaced by one naming the row only, which
    # links nobody and keeps uq_referral_friend unique. A redacted friend is then unknown: a later
    # order of theirs with a referral code may count as a first order again.
    placeholder = literal("redacted:") + cast(col(Referral.id), String)
    as_referrer, as_friend = _referral_match(shop_id, keys, match)
    referrals = 0
    for where, values in ((as_referrer, {"referrer": placeholder}), (as_friend, {"friend": placeholder})):
        result = session.execute(
            update(Referral)
            .where(col(Referral.shop_id) == shop_id, where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        referrals += int(result.rowcount)  # type: ignore[attr-defined]
    redemptions = session.execute(
        update(Redemption)
        .where(col(Redemption.shop_id) == shop_id, or_(*match))
        .values(email=None, customer_id=None, recipient=None, address_key=None)  # the address fingerprint too
        .execution_options(synchronize_session=False)
    )
    code_match = _code_match(email, customer_id)
    codes = (
        session.execute(
            update(Code)
            .where(col(Code.shop_id) == shop_id, or_(*code_match))
            .values(email=None, customer_id=None, recipient=None)
            .execution_options(synchronize_session=False)
        )
        if code_match
        else None
    )
    # per-customer limits count them as `id:<customer id>` or `email:<email>` (redemptions.customer_key)
    usage_keys = [k for k in (customer_key(customer_id, None), customer_key(None, email)) if k]
    usage = (
        session.execute(
            delete(CustomerUsage).where(col(CustomerUsage.shop_id) == shop_id, col(CustomerUsage.customer_key).in_(usage_keys))
        )
        if usage_keys
        else None
    )
    # the addresses they gave as a referrer (keyed like referral codes' recipients)
    addresses = (
        session.execute(
            delete(ReferrerAddress).where(col(ReferrerAddress.shop_id) == shop_id, col(ReferrerAddress.referrer).in_(keys))
        )
        if keys
        else None
    )
    # plugin.distribution.referrals notes the referrer's key in its audit events (rewarded, self-referral, ...)
    noted = (
        session.exec(
            select(AuditEvent).where(
                col(AuditEvent.shop_id) == shop_id, col(AuditEvent.details)["referrer"].as_string().in_(keys)
            )
        ).all()
        if keys
        else []
    )
    for event in noted:
        event.details = {**event.details, "referrer": "redacted"}  # a new dict: the JSON column sees the change
        session.add(event)
    # plugin.codes.percode notes a reassigned code's new and previous recipient in its audit events
    reassigned = (
        session.exec(
            select(AuditEvent).where(
                col(AuditEvent.shop_id) == shop_id,
                col(AuditEvent.action) == "code.reassigned",
                or_(
                    col(AuditEvent.details)["recipient"].as_string().in_(keys),
                    col(AuditEvent.details)["previous"].as_string().in_(keys),
                ),
            )
        ).all()
        if keys
        else []
    )
    for event in reassigned:
        event.details = {**event.details, **{k: "redacted" for k in ("recipient", "previous") if event.details.get(k) in keys}}
        session.add(event)
    # `code.assigned` events name the recipient (plugin.store.eventlog); one not delivered yet goes out redacted
    named = (
        session.exec(
            select(EventMessage).where(
                col(EventMessage.shop_id) == shop_id,
                col(EventMessage.type) == "code.assigned",
                col(EventMessage.payload)["data"]["recipient"].as_string().in_(keys),
            )
        ).all()
        if keys
        else []
    )
    for message in named:
        message.payload = {**message.payload, "data": {**message.payload["data"], "recipient": "redacted"}}
        session.add(message)
    # pushes to providers name them as the recipient (plugin.distribution.pushes); a queued one then finds no
    # holder for its code and fails, so nothing is sent to someone who asked to be forgotten
    pushed = _recipient_match(col(RecipientDelivery.recipient), email, customer_id)
    pushes = (
        session.execute(
            update(RecipientDelivery)
            .where(col(RecipientDelivery.shop_id) == shop_id, or_(*pushed))
            .values(recipient=literal("redacted:") + cast(col(RecipientDelivery.id), String))
            .execution_options(synchronize_session=False)
        )
        if pushed
        else None
    )
    reports = _forget_data_requests(session, shop_id, email, customer_id, order_ids, actor=actor)
    counts = {
        "deliveries": deliveries,
        "redemptions": int(redemptions.rowcount),  # type: ignore[attr-defined]
        "codes": int(codes.rowcount) if codes is not None else 0,  # type: ignore[attr-defined]
        "usage_counters": int(usage.rowcount) if usage is not None else 0,  # type: ignore[attr-defined]
        "referrals": referrals,
        "referrer_addresses": int(addresses.rowcount) if addresses is not None else 0,  # type: ignore[attr-defined]
        "audit_events": len(noted) + len(reassigned),
        "pushes": int(pushes.rowcount) if pushes is not None else 0,  # type: ignore[attr-defined]
        "data_requests": reports,
    }
    session.add(AuditEvent(shop_id=shop_id, action="customer.redacted", subject="customer", actor=actor, details=counts))
    session.flush()
    return counts


def _names_person(report: dict[str, Any], email: str | None, customer_id: str | None, order_ids: tuple[str, ...]) -> bool:
    """Whether a data-request report (customer_data's shape) is about this person: asked for by
    their email or id, or listing their redemptions, bound codes or orders (a request may have
    named them by email only and the redaction by id only)."""
    entries = [report.get("customer") or {}, *report.get("redemptions", []), *report.get("codes", [])]
    for entry in entries:
        if email and (entry.get("email") or "").lower() == email:
            return True
        if customer_id and entry.get("customer_id") == customer_id:
            return True
    return any(r.get("order_id") in order_ids for r in report.get("redemptions", []))


def _forget_data_requests(
    session: Session, shop_id: int, email: str | None, customer_id: str | None, order_ids: tuple[str, ...], *, actor: str
) -> int:
    """Earlier `customer.data_request` reports about the person hold everything we held about
    them: each keeps only its counts, and the delivery that asked for it (its subject,
    `webhook:<id>`) loses its payload, which names them too. Data requests are rare: the shop's
    reports are read and matched here rather than by dialect-specific JSON queries."""
    reports = session.exec(
        select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action) == DATA_REQUEST)
    ).all()
    forgotten = [r for r in reports if "customer" in r.details and _names_person(r.details, email, customer_id, order_ids)]
    deliveries: list[int] = []
    for report in forgotten:
        report.details = {"redacted": True, **{k: len(v) for k, v in report.details.items() if isinstance(v, list)}}
        session.add(report)
        kind, _, event_id = report.subject.partition(":")
        if kind == "webhook" and event_id.isdigit():
            deliveries.append(int(event_id))
    webhooks.redact_deliveries(session, shop_id, deliveries, actor=actor, why="customer redaction")
    return len(forgotten)


def customer_data(
    session: Session, shop_id: int, *, email: str | None, customer_id: str | None, order_ids: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Everything we hold about a customer in this shop (for a data request)."""
    email, customer_id = _who(email, customer_id)
    match = _redemption_match(email, customer_id, order_ids, recipient=False)
    redemptions = (
        session.exec(select(Redemption).where(col(Redemption.shop_id) == shop_id, or_(*match)).order_by(col(Redemption.id))).all()
        if match
        else []
    )
    code_match = _code_match(email, customer_id)
    bound = (
        session.exec(select(Code).where(col(Code.shop_id) == shop_id, or_(*code_match)).order_by(col(Code.id))).all()
        if code_match
        else []
    )
    keys = _person_keys(email, customer_id)
    as_referrer, as_friend = _referral_match(shop_id, keys, match)
    referral_rows = (
        session.exec(
            select(Referral, Code.code)
            .join(Code, col(Code.id) == col(Referral.reward_code_id), isouter=True)
            .where(col(Referral.shop_id) == shop_id, or_(as_referrer, as_friend))
            .order_by(col(Referral.id))
        ).all()
        if keys or match
        else []
    )
    given = (
        session.exec(
            select(ReferrerAddress)
            .where(col(ReferrerAddress.shop_id) == shop_id, col(ReferrerAddress.referrer).in_(keys))
            .order_by(col(ReferrerAddress.id))
        ).all()
        if keys
        else []
    )
    return {
        "customer": {"email": email, "customer_id": customer_id},
        "redemptions": [
            {
                "code": r.code,
                "order_id": r.order_id,
                "email": r.email,
                "customer_id": r.customer_id,
                "amount": r.amount,
                "currency": r.currency,
                "status": r.status,
                "shipping_address": ADDRESS_HELD if r.address_key else None,
                "created_at": r.created_at.isoformat(),
            }
            for r in redemptions
        ],
        "codes": [
            {
                "code": c.code,
                "campaign_id": c.campaign_id,
                "email": c.email,
                "customer_id": c.customer_id,
                "recipient": c.recipient,
                "assigned_at": c.assigned_at.isoformat() if c.assigned_at else None,
            }
            for c in bound
        ],
        "referrals": [_referral_entry(r, reward, keys) for r, reward in referral_rows],
        "referrer_addresses": [{"address": ADDRESS_HELD, "created_at": a.created_at.isoformat()} for a in given],
    }


def _referral_entry(referral: Referral, reward: str | None, keys: list[str]) -> dict[str, Any]:
    """One referral the customer is part of, told from their side only: the other person (and,
    for a referrer, the friend's order) is someone else's data."""
    entry: dict[str, Any] = {"campaign_id": referral.campaign_id, "created_at": referral.created_at.isoformat()}
    if referral.referrer in keys:
        return {**entry, "role": "referrer", "reward_code": reward}
    return {**entry, "role": "friend", "order_id": referral.order_id}


def redact_shop(session: Session, shop_id: int, *, keep_event_id: int | None, actor: str) -> dict[str, int]:
    """Delete every row of the shop (its tenant data), keeping the Shop row as an anonymous
    tombstone and the delivery being processed. Only for a shop that uninstalled the app."""
    shop = session.get_one(Shop, shop_id)
    if shop.uninstalled_at is None:
        raise InvalidInput("the shop has the app installed; its data stays", reason="shop_installed")
    counts: dict[str, int] = {}
    for table in reversed(SQLModel.metadata.sorted_tables):  # dependants first
        if "shop_id" not in table.c or table.name == Shop.__tablename__:
            continue
        stmt = delete(table).where(table.c.shop_id == shop_id)
        if table.name == WebhookEvent.__tablename__ and keep_event_id is not None:
            stmt = stmt.where(table.c.id != keep_event_id)
        counts[table.name] = int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
    shop.name, shop.scopes, shop.preferences, shop.access_token_encrypted = "", "", {}, None
    session.add(shop)
    session.add(AuditEvent(shop_id=shop_id, action="shop.redacted", subject=f"shop:{shop_id}", actor=actor, details=counts))
    session.flush()
    return counts


def apply_lifecycle(session: Session, shop_id: int, event: WebhookEvent, delivery: Delivery) -> str:
    """A stored app/uninstalled or privacy delivery, applied; returns the delivery's new status."""
    actor = f"webhook:{event.platform}"
    if delivery.kind == "app_uninstalled":
        mark_uninstalled(session, shop_id, actor=actor)
    elif delivery.kind == "customers_redact":
        redact_customer(
            session, shop_id, email=delivery.email, customer_id=delivery.customer_id, order_ids=delivery.order_ids, actor=actor
        )
        event.payload = ""  # the request names the customer too
        event.redacted_at = event.redacted_at or utcnow()
    elif delivery.kind == "customers_data_request":
        data = customer_data(
            session, shop_id, email=delivery.email, customer_id=delivery.customer_id, order_ids=delivery.order_ids
        )
        session.add(AuditEvent(shop_id=shop_id, action=DATA_REQUEST, subject=f"webhook:{event.id}", actor=actor, details=data))
    elif delivery.kind == "shop_redact":
        shop = session.get_one(Shop, shop_id)
        if shop.uninstalled_at is None:
            return "ignored"  # reinstalled since: Shopify's request is moot
        redact_shop(session, shop_id, keep_event_id=event.id, actor=actor)
        event.payload = ""
        event.redacted_at = utcnow()
    else:
        return "ignored"
    return "processed"
