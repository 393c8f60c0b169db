"""Recording and rolling back redemptions: the atomic heart of promises 1 and 3.

A redemption is claimed by inserting its row first (unique per shop, order and code), so a
repeated request finds the row and changes nothing. The counters that limits depend on (the
code's uses, the campaign's budget, the customer's uses) then move with conditional UPDATEs
that only succeed while the limit holds — never read-then-write — inside one savepoint, so a
refusal leaves nothing behind.

Two modes:
- enforce=True (the checkout API): a broken rule refuses the redemption.
- enforce=False (order webhooks): the platform already gave the discount, so the use is
  recorded whatever it broke, and the broken rule is flagged on the row for review.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from plugin import codes
from plugin.errors import InvalidInput, NotFound, PluginError
from plugin.models import AuditEvent, Batch, Campaign, Code, CustomerUsage, Redemption, Reservation
from plugin.refusals import refuse
from plugin.rules import (
    Basket,
    CampaignRules,
    CampaignState,
    CampaignStatus,
    CodeState,
    Customer,
    DiscountResult,
    Reason,
    Refusal,
    RulesOverride,
    apply_override,
    campaign_refusal,
    code_refusal,
    customer_refusal,
    evaluate,
    normalise_email,
)

CancelPolicy = Literal["restore", "reissue", "keep"]


class UnknownCode(PluginError):
    status = 404
    reason = "unknown_code"


class RedemptionRefused(PluginError):
    """A rule refused the redemption; `refusal` says which and why."""

    status = 409

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message, reason=refusal.reason.value, details=dict(refusal.details))
        self.refusal = refusal


@dataclass(frozen=True)
class RedeemOutcome:
    redemption: Redemption
    duplicate: bool = False
    flagged: Refusal | None = None


@dataclass(frozen=True)
class CodeContext:
    """A stored code with everything evaluation needs about it."""

    code: Code
    campaign: Campaign
    rules: CampaignRules | None  # None: the campaign has no rules yet (a draft)
    state: CodeState


def customer_key(customer_id: str | None, email: str | None) -> str | None:
    """How per-customer limits count a customer: by id, else by normalised email."""
    if customer_id:
        return f"id:{customer_id}"
    email = normalise_email(email)
    return f"email:{email}" if email else None


def load_code(session: Session, *, shop_id: int, code: str, checkout_id: str | None, now: datetime) -> CodeContext:
    """The code (stored form) of this shop with its campaign, rules and hold state."""
    row = session.exec(select(Code).where(col(Code.shop_id) == shop_id, col(Code.code) == code)).first()
    if row is None:
        raise UnknownCode("this code does not exist in this shop")
    campaign = session.get_one(Campaign, row.campaign_id)
    override = None
    if row.batch_id is not None:
        batch = session.get(Batch, row.batch_id)
        if batch is not None and batch.rules_override:
            override = RulesOverride.model_validate(batch.rules_override)
    rules = CampaignRules.model_validate(campaign.rules) if campaign.rules else None
    held = _held_by_others(session, row, checkout_id, now, rules, override)
    state = CodeState(
        code=row.code,
        issued_at=row.created_at,
        uses=row.uses,
        voided=row.status == "voided",
        bound_customer_id=row.customer_id,
        bound_email=row.email,
        assigned_at=row.assigned_at,
        expires_at=row.expires_at,
        held_by_other_checkout=held,
        override=override,
    )
    return CodeContext(row, campaign, rules, state)


def uses_limit(ctx: CodeContext) -> int | None:
    if ctx.rules is None:
        return 1
    return apply_override(ctx.rules, ctx.state.override).usage.uses_per_code


def active_holds(session: Session, *, code_id: int, now: datetime, except_checkout: str | None) -> int:
    stmt = select(Reservation).where(
        col(Reservation.code_id) == code_id,
        col(Reservation.released_at).is_(None),
        col(Reservation.expires_at) > now,
    )
    if except_checkout is not None:
        stmt = stmt.where(col(Reservation.checkout_id) != except_checkout)
    return len(session.exec(stmt).all())


def _held_by_others(
    session: Session,
    row: Code,
    checkout_id: str | None,
    now: datetime,
    rules: CampaignRules | None,
    override: RulesOverride | None,
) -> bool:
    limit = 1 if rules is None else apply_override(rules, override).usage.uses_per_code
    if limit is None:
        return False
    assert row.id is not None
    holds = active_holds(session, code_id=row.id, now=now, except_checkout=checkout_id)
    return holds > 0 and row.uses + holds >= limit


def campaign_state(campaign: Campaign, rules: CampaignRules) -> CampaignState:
    return CampaignState(
        rules=rules,
        status=CampaignStatus(campaign.status),
        redemptions=campaign.redemption_count,
        discount_given=campaign.discount_total,
    )


def customer_uses(session: Session, *, shop_id: int, campaign_id: int, key: str | None) -> int:
    if key is None:
        return 0
    usage = session.get(CustomerUsage, (shop_id, campaign_id, key))
    return usage.uses if usage else 0


def check_rules(
    session: Session,
    ctx: CodeContext,
    *,
    customer: Customer | None,
    basket: Basket | None,
    channel: str | None,
    now: datetime,
) -> DiscountResult | Refusal | None:
    """Evaluate the code. With a basket: the full decision. Without one (a webhook, where the
    platform computed the discount): only the code, campaign and customer stages, None if fine."""
    if ctx.rules is None:
        return refuse(Reason.CAMPAIGN_DRAFT)
    if customer is not None:
        key = customer_key(customer.id, customer.email)
        uses = customer_uses(session, shop_id=ctx.code.shop_id, campaign_id=ctx.campaign.id or 0, key=key)
        customer = customer.model_copy(update={"campaign_uses": uses})
    state = campaign_state(ctx.campaign, ctx.rules)
    if basket is not None:
        return evaluate(code=ctx.state, campaign=state, customer=customer, basket=basket, channel=channel, now=now)
    rules = apply_override(ctx.rules, ctx.state.override)
    return (
        code_refusal(ctx.state, rules, now)
        or campaign_refusal(state.status, rules, channel, now)
        or customer_refusal(ctx.state, rules, customer)
    )


def find_redemption(session: Session, *, shop_id: int, order_id: str, code: str) -> Redemption | None:
    return session.exec(
        select(Redemption).where(
            col(Redemption.shop_id) == shop_id, col(Redemption.order_id) == order_id, col(Redemption.code) == code
        )
    ).first()


def record_redemption(
    session: Session,
    *,
    shop_id: int,
    code: str,
    order_id: str,
    now: datetime,
    amount: int | None = None,
    subtotal: int = 0,
    currency: str = "USD",
    customer_id: str | None = None,
    email: str | None = None,
    channel: str | None = None,
    source: Literal["api", "webhook"] = "webhook",
    enforce: bool = False,
    basket: Basket | None = None,
    customer: Customer | None = None,
    checkout_id: str | None = None,
) -> RedeemOutcome:
    """Record one use of `code` (stored form) on `order_id`, exactly once.

    Raises UnknownCode for a code the shop doesn't have, RedemptionRefused when enforcing and
    a rule (or a race for the last use) says no. A repeat returns the first row, duplicate=True.
    """
    order_id = order_id.strip()
    if not order_id or len(order_id) > 255:
        raise InvalidInput("order_id must be 1 to 255 characters", reason="invalid_order_id")
    existing = find_redemption(session, shop_id=shop_id, order_id=order_id, code=code)
    if existing is not None:
        return RedeemOutcome(existing, duplicate=True)
    ctx = load_code(session, shop_id=shop_id, code=code, checkout_id=checkout_id, now=now)
    if customer is None:
        customer = Customer(id=customer_id, email=email)
    decision = check_rules(session, ctx, customer=customer, basket=basket, channel=channel, now=now)
    if isinstance(decision, Refusal) and enforce:
        # A retry of this same (order, code) may have committed since we first looked, and its
        # use is what refuses us now: answer with that row, as for any retry.
        existing = find_redemption(session, shop_id=shop_id, order_id=order_id, code=code)
        if existing is not None:
            return RedeemOutcome(existing, duplicate=True)
        raise RedemptionRefused(decision)
    if isinstance(decision, DiscountResult):
        amount = decision.amount if amount is None else amount
        currency = decision.currency or currency
        if basket is not None and not subtotal:
            subtotal = sum(line.total for line in basket.lines)
    flagged = decision if isinstance(decision, Refusal) else None
    row = ctx.code
    assert row.id is not None and ctx.campaign.id is not None
    redemption = Redemption(
        shop_id=shop_id,
        code=code,
        order_id=order_id,
        code_id=row.id,
        campaign_id=ctx.campaign.id,
        batch_id=row.batch_id,
        partner_id=row.partner_id,
        recipient=row.recipient,
        customer_id=customer.id if customer else customer_id,
        email=(customer.email if customer else None) or normalise_email(email),
        channel=channel,
        currency=currency.upper(),
        subtotal=subtotal,
        amount=amount or 0,
        source=source,
        flagged_reason=flagged.reason.value if flagged else None,
        created_at=now,
    )
    savepoint = session.begin_nested()
    try:
        session.add(redemption)
        session.flush()
    except IntegrityError:
        # a concurrent request recorded the same (order, code) first: answer with its row
        savepoint.rollback()
        first = find_redemption(session, shop_id=shop_id, order_id=order_id, code=code)
        assert first is not None
        return RedeemOutcome(first, duplicate=True)
    race = _claim_counters(session, ctx, redemption, customer, enforce=enforce)
    if race is not None:
        if enforce:
            savepoint.rollback()
            raise RedemptionRefused(race)
        flagged = flagged or race
        redemption.flagged_reason = race.reason.value if redemption.flagged_reason is None else redemption.flagged_reason
    if checkout_id is not None:
        session.execute(
            update(Reservation)
            .where(
                col(Reservation.code_id) == row.id,
                col(Reservation.checkout_id) == checkout_id,
                col(Reservation.released_at).is_(None),
            )
            .values(released_at=now)
        )
    savepoint.commit()
    return RedeemOutcome(redemption, flagged=flagged)


def _claim_counters(
    session: Session, ctx: CodeContext, redemption: Redemption, customer: Customer | None, *, enforce: bool
) -> Refusal | None:
    """Move the code, campaign and customer counters, each only while its limit holds.

    Returns the refusal of the first limit a concurrent redemption took, or None. When not
    enforcing, the counters move anyway (the platform already gave the discount).
    """
    rules = apply_override(ctx.rules, ctx.state.override) if ctx.rules else None
    limit = rules.usage.uses_per_code if rules else 1
    code_update = update(Code).where(col(Code.id) == ctx.code.id, col(Code.status) == "active")
    if limit is not None and enforce:
        code_update = code_update.where(col(Code.uses) < limit)
    if _rowcount(session, code_update.values(uses=Code.uses + 1)) == 0:
        if enforce:
            return refuse(Reason.ALREADY_REDEEMED) if limit == 1 else refuse(Reason.USAGE_LIMIT_REACHED, limit=limit)
        session.execute(update(Code).where(col(Code.id) == ctx.code.id).values(uses=Code.uses + 1))
    elif limit is not None and not enforce:
        uses = session.exec(select(Code.uses).where(col(Code.id) == ctx.code.id)).one()
        if uses > limit:
            return refuse(Reason.USAGE_LIMIT_REACHED, limit=limit, uses=uses)

    budget = rules.budget if rules else None
    campaign_update = update(Campaign).where(col(Campaign.id) == ctx.campaign.id)
    if budget is not None and enforce:
        if budget.max_redemptions is not None:
            campaign_update = campaign_update.where(col(Campaign.redemption_count) < budget.max_redemptions)
        if budget.max_discount is not None:
            campaign_update = campaign_update.where(col(Campaign.discount_total) + redemption.amount <= budget.max_discount)
    values: dict[str, Any] = {
        "redemption_count": Campaign.redemption_count + 1,
        "discount_total": Campaign.discount_total + redemption.amount,
    }
    if _rowcount(session, campaign_update.values(**values)) == 0:
        return refuse(Reason.BUDGET_EXHAUSTED)

    key = customer_key(redemption.customer_id, redemption.email)
    per_customer = rules.usage.uses_per_customer if rules else None
    if key is not None:
        limit_for_customer = per_customer if enforce else None
        if not _bump_customer(session, ctx, key, limit_for_customer) and per_customer is not None:
            return refuse(Reason.CUSTOMER_LIMIT_REACHED, limit=per_customer)
    return None


def _rowcount(session: Session, stmt: Any) -> int:
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def _bump_customer(session: Session, ctx: CodeContext, key: str, limit: int | None) -> bool:
    """Add one use for the customer, only while under `limit`: an atomic upsert."""
    table = CustomerUsage.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(table).values(shop_id=ctx.code.shop_id, campaign_id=ctx.campaign.id, customer_key=key, uses=1)
    where = None if limit is None else table.c.uses < limit
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.shop_id, table.c.campaign_id, table.c.customer_key],
        set_={"uses": table.c.uses + 1},
        where=where,
    ).returning(table.c.uses)
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT through SQLAlchemy
    return session.execute(upsert).first() is not None


# --- rollback -------------------------------------------------------------------------------


def rollback_redemption(
    session: Session,
    *,
    shop_id: int,
    redemption_id: int,
    now: datetime,
    policy: CancelPolicy | None = None,
    actor: str = "system",
    reason: str = "",
) -> Redemption:
    """Undo a redemption (cancelled, refunded or failed order), exactly once.

    The campaign's budget gets the use back in every case. `policy` (default: the campaign's
    `on_cancel` rule, else restore) decides the code: restore gives the code its use back,
    reissue gives the same recipient a fresh code, keep leaves the code consumed.
    """
    redemption = session.exec(
        select(Redemption).where(col(Redemption.id) == redemption_id, col(Redemption.shop_id) == shop_id)
    ).first()
    if redemption is None:
        raise NotFound(f"redemption {redemption_id} does not exist in this shop", reason="redemption_not_found")
    claimed = _rowcount(
        session,
        update(Redemption)
        .where(and_(col(Redemption.id) == redemption_id, col(Redemption.status) == "active"))
        .values(status="rolled_back", rolled_back_at=now),
    )
    if claimed == 0:
        session.refresh(redemption)
        return redemption  # already rolled back: nothing more to do
    campaign = session.get(Campaign, redemption.campaign_id) if redemption.campaign_id else None
    if policy is None:
        policy = _campaign_policy(campaign)
    details: dict[str, Any] = {"policy": policy, "reason": reason, "order_id": redemption.order_id, "code": redemption.code}
    if campaign is not None:
        session.execute(
            update(Campaign)
            .where(col(Campaign.id) == campaign.id)
            .values(
                redemption_count=Campaign.redemption_count - 1,
                discount_total=Campaign.discount_total - redemption.amount,
            )
        )
        key = customer_key(redemption.customer_id, redemption.email)
        if key is not None and policy != "keep":
            table = CustomerUsage.__table__  # type: ignore[attr-defined]
            session.execute(
                table.update()
                .where(
                    table.c.shop_id == shop_id,
                    table.c.campaign_id == campaign.id,
                    table.c.customer_key == key,
                    table.c.uses > 0,
                )
                .values(uses=table.c.uses - 1)
            )
    if redemption.code_id is not None and policy == "restore":
        session.execute(update(Code).where(col(Code.id) == redemption.code_id, col(Code.uses) > 0).values(uses=Code.uses - 1))
    elif redemption.code_id is not None and policy == "reissue":
        fresh = reissue_code(session, code_id=redemption.code_id, now=now)
        details["reissued_code"] = fresh.code
    session.add(
        AuditEvent(
            shop_id=shop_id,
            action="redemption.rolled_back",
            subject=f"redemption:{redemption_id}",
            actor=actor,
            details=details,
            created_at=now,
        )
    )
    session.flush()
    session.refresh(redemption)
    return redemption


def _campaign_policy(campaign: Campaign | None) -> CancelPolicy:
    if campaign is None or not campaign.rules:
        return "restore"
    policy: CancelPolicy = CampaignRules.model_validate(campaign.rules).on_cancel
    return policy


def reissue_code(session: Session, *, code_id: int, now: datetime) -> Code:
    """A fresh code of the same campaign for the same recipient and binding."""
    old = session.get_one(Code, code_id)
    campaign = session.get_one(Campaign, old.campaign_id)
    fmt = codes.CodeFormat.from_dict(campaign.code_format)
    for _ in range(10):
        candidate = codes.generate(fmt, 1)[0]
        taken = session.exec(select(Code.id).where(col(Code.shop_id) == old.shop_id, col(Code.code) == candidate)).first()
        if taken is None:
            break
    else:  # pragma: no cover - a safe format makes this astronomically unlikely
        raise PluginError("could not find a free code to reissue", reason="reissue_failed")
    fresh = Code(
        shop_id=old.shop_id,
        campaign_id=old.campaign_id,
        batch_id=old.batch_id,
        code=candidate,
        customer_id=old.customer_id,
        email=old.email,
        recipient=old.recipient,
        assigned_at=now if old.recipient else None,
        partner_id=old.partner_id,
        created_at=now,
    )
    session.add(fresh)
    session.flush()
    return fresh
