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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import and_, update
from sqlmodel import Session, col, func, select

from plugin.errors import InvalidInput, NotFound, PluginError
from plugin.formats import codes
from plugin.metrics import REDEMPTIONS
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
    campaign_refusal,
    code_refusal,
    customer_refusal,
    evaluate,
    normalise_email,
)
from plugin.rules.refusals import refuse
from plugin.store import caches, eventlog
from plugin.store.db import Reader, session_reader
from plugin.store.models import AuditEvent, Campaign, Code, CustomerUsage, Redemption, Reservation

CancelPolicy = Literal["restore", "reissue", "keep"]
POOL_CHANNEL = "klaviyo"  # the channel of a code in a provider's pool; Klaviyo's are the only ones today


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


# The row types below are built on every validation: plain (not frozen) slots dataclasses,
# whose __init__ costs a fifth of a frozen one's; nothing changes them once built.
@dataclass(slots=True)
class CodeRow:
    """The columns of a stored code that checkout and redemptions use (no ORM object)."""

    id: int
    shop_id: int
    campaign_id: int
    batch_id: int | None
    code: str
    status: str
    uses: int
    customer_id: str | None
    email: str | None
    recipient: str | None
    partner_id: int | None
    assigned_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    pool_id: int | None = None  # a provider's pool (plugin.distribution.klaviyopools)


@dataclass(slots=True)
class CampaignRow:
    """A campaign's live status and counters, read with its code."""

    id: int
    status: str
    redemption_count: int
    discount_total: int
    code_format: codes.CodeFormat


@dataclass(slots=True)
class CodeContext:
    """A stored code with everything evaluation needs about it, read in one query."""

    code: CodeRow
    campaign: CampaignRow
    rules: CampaignRules | None  # effective rules (batch override applied); None: a draft
    state: CodeState
    customer_key: str | None  # whose uses `customer_uses` counts
    customer_uses: int
    detailed_refusals: bool | None  # the shop's choice for shopper messages (None: none made)


def customer_key(customer_id: str | None, email: str | None) -> str | None:
    """How per-customer limits count a customer: by id, else by normalised email."""
    if customer_id:
        return f"id:{customer_id}"
    email = normalise_email(email)
    return f"email:{email}" if email else None


# One statement reads the code, its campaign's status, counters, rules and format, its batch's
# override, the shop's preferences, other checkouts' live holds and the customer's uses.
_LOOKUP = """
SELECT c.id, c.shop_id, c.campaign_id, c.batch_id, c.code, c.status, c.uses, c.customer_id, c.email,
       c.recipient, c.partner_id, c.assigned_at, c.expires_at, c.created_at,
       k.status, k.redemption_count, k.discount_total, CAST(k.rules AS TEXT), CAST(k.code_format AS TEXT),
       CAST(b.rules_override AS TEXT), CAST(s.preferences AS TEXT),
       (SELECT count(*) FROM reservation r
         WHERE r.code_id = c.id AND r.released_at IS NULL AND r.expires_at > ?{other_checkout}),
       {customer_uses}, c.pool_id
FROM code c
JOIN campaign k ON k.id = c.campaign_id
JOIN shop s ON s.id = c.shop_id
LEFT JOIN batch b ON b.id = c.batch_id
WHERE c.shop_id = ? AND c.code IN ({candidates})
"""
_CUSTOMER_USES = (
    "(SELECT u.uses FROM customerusage u WHERE u.shop_id = c.shop_id AND u.campaign_id = c.campaign_id AND u.customer_key = ?)"
)


@lru_cache(maxsize=64)
def _lookup_sql(candidates: int, checkout: bool, customer: bool) -> str:
    return _LOOKUP.format(
        other_checkout=" AND r.checkout_id <> ?" if checkout else "",
        customer_uses=_CUSTOMER_USES if customer else "NULL",
        candidates=", ".join("?" * candidates),
    )


def lookup_code(
    reader: Reader,
    *,
    shop_id: int,
    candidates: Sequence[str],
    checkout_id: str | None,
    customer: str | None,
    now: datetime,
) -> CodeContext | None:
    """The first of `candidates` (stored forms, in order of preference) that this shop has,
    with its context; None if none. `customer` is the `customer_key` whose uses to count."""
    if not candidates:
        return None
    params: list[Any] = [reader.instant(now)]
    if checkout_id is not None:
        params.append(checkout_id)
    if customer is not None:
        params.append(customer)
    params.append(shop_id)
    params.extend(candidates)
    rows = reader.rows(_lookup_sql(len(candidates), checkout_id is not None, customer is not None), params)
    if not rows:
        return None
    if len(rows) == 1:  # nearly always: a code is found in one of its forms
        row = rows[0]
    else:
        order = {code: i for i, code in enumerate(candidates)}
        row = min(rows, key=lambda r: order[r[4]])
    at = Reader.as_instant
    code = CodeRow(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
        at(row[11]), at(row[12]), at(row[13]) or now, row[23],
    )  # fmt: skip
    rules = caches.effective_rules(row[17], row[19])
    campaign = CampaignRow(row[2], row[14], row[15], row[16], caches.code_format(row[18]))
    limit = 1 if rules is None else rules.usage.uses_per_code
    holds = int(row[21])
    held = limit is not None and holds > 0 and code.uses + holds >= limit
    state = CodeState(
        code=code.code,
        issued_at=code.created_at,
        uses=code.uses,
        voided=code.status == "voided",
        bound_customer_id=code.customer_id,
        bound_email=code.email,
        assigned_at=code.assigned_at,
        expires_at=code.expires_at,
        held_by_other_checkout=held,
        override=None,  # `rules` already carry the batch's override
    )
    return CodeContext(code, campaign, rules, state, customer, int(row[22] or 0), caches.detailed_refusals(row[20]))


def load_code(
    session: Session, *, shop_id: int, code: str, checkout_id: str | None, now: datetime, customer: Customer | None = None
) -> CodeContext:
    """The code (stored form) of this shop with its context, read in the session's transaction."""
    key = customer_key(customer.id, customer.email) if customer is not None else None
    with session_reader(session) as reader:
        ctx = lookup_code(reader, shop_id=shop_id, candidates=(code,), checkout_id=checkout_id, customer=key, now=now)
    if ctx is None:
        raise UnknownCode("this code does not exist in this shop")
    return ctx


def uses_limit(ctx: CodeContext) -> int | None:
    return 1 if ctx.rules is None else ctx.rules.usage.uses_per_code


def active_holds(session: Session, *, code_id: int, now: datetime, except_checkout: str | None) -> int:
    stmt = (
        select(func.count())
        .select_from(Reservation)
        .where(
            col(Reservation.code_id) == code_id,
            col(Reservation.released_at).is_(None),
            col(Reservation.expires_at) > now,
        )
    )
    if except_checkout is not None:
        stmt = stmt.where(col(Reservation.checkout_id) != except_checkout)
    return int(session.exec(stmt).one())


# a stored status to its enum member by a dict lookup: `CampaignStatus(text)` goes through
# Enum's metaclass call, a noticeable part of each validation's rules stage
_STATUSES = {status.value: status for status in CampaignStatus}


def campaign_state(campaign: CampaignRow, rules: CampaignRules) -> CampaignState:
    status = _STATUSES.get(campaign.status)
    return CampaignState(
        rules=rules,
        status=CampaignStatus(campaign.status) if status is None else status,  # (an unknown one raises as before)
        redemptions=campaign.redemption_count,
        discount_given=campaign.discount_total,
    )


def check_rules(
    ctx: CodeContext,
    *,
    customer: Customer | None,
    basket: Basket | None,
    channel: str | None,
    now: datetime,
) -> DiscountResult | Refusal | None:
    """Evaluate the code. With a basket: the full decision. Without one (a webhook, where the
    platform computed the discount): only the code, campaign and customer stages, None if fine.

    The customer's campaign uses come from the context (loaded for the same customer)."""
    if ctx.rules is None:
        return refuse(Reason.CAMPAIGN_DRAFT)
    if customer is not None:
        key = customer_key(customer.id, customer.email)
        assert key == ctx.customer_key, "load the code for the customer being checked"
        if customer.campaign_uses != ctx.customer_uses:
            customer = customer.model_copy(update={"campaign_uses": ctx.customer_uses})
    state = campaign_state(ctx.campaign, ctx.rules)
    if basket is not None:
        return evaluate(code=ctx.state, campaign=state, customer=customer, basket=basket, channel=channel, now=now)
    rules = ctx.rules
    return (
        code_refusal(ctx.state, rules, now)
        or campaign_refusal(state.status, rules, channel, now)
        or customer_refusal(ctx.state, rules, customer)
    )


def find_redemption(session: Session, *, shop_id: int, order_id: str, code: str) -> Redemption | None:
    with session_reader(session) as reader:
        rows = reader.rows("SELECT id FROM redemption WHERE shop_id = ? AND order_id = ? AND code = ?", (shop_id, order_id, code))
    return session.get(Redemption, rows[0][0]) if rows else None


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
    address_key: str | None = None,
    order_total: int = 0,
    order_items: int = 0,
    revenue: int | None = None,
) -> RedeemOutcome:
    """Record one use of `code` (stored form) on `order_id`, exactly once; `address_key` is the
    order's shipping-address fingerprint (plugin.orders.addresses), kept for self-referral checks.

    Raises UnknownCode for a code the shop doesn't have, RedemptionRefused when enforcing and
    a rule (or a race for the last use) says no. A repeat returns the first row, duplicate=True.
    """
    order_id = order_id.strip()
    if not order_id or len(order_id) > 255:
        raise InvalidInput("order_id must be 1 to 255 characters", reason="invalid_order_id")
    existing = find_redemption(session, shop_id=shop_id, order_id=order_id, code=code)
    if existing is not None:
        return RedeemOutcome(existing, duplicate=True)
    if customer is None:
        customer = Customer(id=customer_id, email=email)
    ctx = load_code(session, shop_id=shop_id, code=code, checkout_id=checkout_id, now=now, customer=customer)
    decision = check_rules(ctx, customer=customer, basket=basket, channel=channel, now=now)
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
        # Klaviyo handed out a code of its pool: the redemption is its channel's (the order's
        # own channel was still what the rules checked)
        channel=POOL_CHANNEL if row.pool_id is not None else channel,
        currency=currency.upper(),
        subtotal=subtotal,
        amount=amount or 0,
        source=source,
        flagged_reason=flagged.reason.value if flagged else None,
        address_key=address_key,
        order_total=order_total,
        order_items=order_items,
        revenue=revenue,
        created_at=now,
    )
    # The row first (the (shop, order, code) unique index makes a repeat insert nothing), then
    # the counters, all inside a savepoint so that a refusal leaves nothing behind. Raw SQL on
    # the session's connection: this is the hot write path (see DESIGN.md, performance facts).
    session.flush()  # nothing of the ORM may be pending inside the savepoint below
    with session_reader(session) as writer:
        writer.execute("SAVEPOINT redeem", ())
        redemption.id = writer.insert(
            Redemption.__table__,  # type: ignore[attr-defined]
            _columns(redemption),
            unique=("shop_id", "order_id", "code"),
        )
        if redemption.id is None:
            # a concurrent request recorded the same (order, code) first: answer with its row
            writer.execute("ROLLBACK TO SAVEPOINT redeem", ())
            writer.execute("RELEASE SAVEPOINT redeem", ())
            first = find_redemption(session, shop_id=shop_id, order_id=order_id, code=code)
            assert first is not None
            return RedeemOutcome(first, duplicate=True)
        race = _claim_counters(writer, ctx, redemption, enforce=enforce)
        if race is not None:
            if enforce:
                writer.execute("ROLLBACK TO SAVEPOINT redeem", ())
                writer.execute("RELEASE SAVEPOINT redeem", ())
                raise RedemptionRefused(race)
            flagged = flagged or race
            if redemption.flagged_reason is None:
                redemption.flagged_reason = race.reason.value
                writer.execute(
                    "UPDATE redemption SET flagged_reason = ? WHERE id = ?", (redemption.flagged_reason, redemption.id)
                )
        if checkout_id is not None:
            writer.execute(
                "UPDATE reservation SET released_at = ? WHERE code_id = ? AND checkout_id = ? AND released_at IS NULL",
                (writer.instant(now), row.id, checkout_id),
            )
        writer.execute("RELEASE SAVEPOINT redeem", ())
    eventlog.emit(session.connection(), shop_id=shop_id, type="redemption.created", data=redemption_data(redemption), now=now)
    REDEMPTIONS.labels(source).inc()  # recorded in this transaction (one rolled back later still counts)
    return RedeemOutcome(redemption, flagged=flagged)


def redemption_data(redemption: Redemption) -> dict[str, Any]:
    """The `redemption.created` event's data."""
    return {
        "redemption_id": redemption.id,
        "campaign_id": redemption.campaign_id,
        "code": redemption.code,
        "order_id": redemption.order_id,
        "amount": redemption.amount,
        "subtotal": redemption.subtotal,
        "currency": redemption.currency,
        "source": redemption.source,
        "channel": redemption.channel,
        "flagged_reason": redemption.flagged_reason,
    }


def _columns(redemption: Redemption) -> dict[str, Any]:
    table = Redemption.__table__  # type: ignore[attr-defined]
    return {c.name: getattr(redemption, c.name) for c in table.columns if c.name != "id"}


def _claim_counters(writer: Reader, ctx: CodeContext, redemption: Redemption, *, enforce: bool) -> Refusal | None:
    """Move the code, campaign and customer counters, each only while its limit holds.

    Returns the refusal of the first limit a concurrent redemption took, or None. When not
    enforcing, the counters move anyway (the platform already gave the discount).
    """
    rules = ctx.rules
    limit = rules.usage.uses_per_code if rules else 1
    code_id = ctx.code.id
    if limit is not None and enforce:
        moved = writer.execute(
            "UPDATE code SET uses = uses + 1 WHERE id = ? AND status = 'active' AND uses < ?", (code_id, limit)
        )
    else:
        moved = writer.execute("UPDATE code SET uses = uses + 1 WHERE id = ? AND status = 'active'", (code_id,))
    if moved == 0:
        if enforce:
            return refuse(Reason.ALREADY_REDEEMED) if limit == 1 else refuse(Reason.USAGE_LIMIT_REACHED, limit=limit)
        writer.execute("UPDATE code SET uses = uses + 1 WHERE id = ?", (code_id,))
    over_limit: Refusal | None = None
    if moved and limit is not None and not enforce:
        uses = int(writer.rows("SELECT uses FROM code WHERE id = ?", (code_id,))[0][0])
        if uses > limit:
            # the platform gave it anyway: flag it, but count it like any other use, so the
            # campaign and customer totals match what a rollback will later take away
            over_limit = refuse(Reason.USAGE_LIMIT_REACHED, limit=limit, uses=uses)

    budget = rules.budget if rules else None
    sql = "UPDATE campaign SET redemption_count = redemption_count + 1, discount_total = discount_total + ? WHERE id = ?"
    params: list[Any] = [redemption.amount, ctx.campaign.id]
    if budget is not None and enforce:
        if budget.max_redemptions is not None:
            sql += " AND redemption_count < ?"
            params.append(budget.max_redemptions)
        if budget.max_discount is not None:
            sql += " AND discount_total + ? <= ?"
            params += [redemption.amount, budget.max_discount]
    if writer.execute(sql, params) == 0:
        return refuse(Reason.BUDGET_EXHAUSTED)

    key = customer_key(redemption.customer_id, redemption.email)
    per_customer = rules.usage.uses_per_customer if rules else None
    if key is not None:
        limit_for_customer = per_customer if enforce else None
        if not _bump_customer(writer, ctx, key, limit_for_customer) and per_customer is not None:
            return refuse(Reason.CUSTOMER_LIMIT_REACHED, limit=per_customer)
    return over_limit


def _rowcount(session: Session, stmt: Any) -> int:
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def _bump_customer(writer: Reader, ctx: CodeContext, key: str, limit: int | None) -> bool:
    """Add one use for the customer, only while under `limit`: an atomic upsert."""
    sql = (
        "INSERT INTO customerusage (shop_id, campaign_id, customer_key, uses) VALUES (?, ?, ?, 1)"
        " ON CONFLICT (shop_id, campaign_id, customer_key) DO UPDATE SET uses = customerusage.uses + 1"
    )
    params: list[Any] = [ctx.code.shop_id, ctx.campaign.id, key]
    if limit is not None:
        sql += " WHERE customerusage.uses < ?"
        params.append(limit)
    # RETURNING, not rowcount: drivers disagree on the rowcount of an upsert
    return bool(writer.rows(sql + " RETURNING uses", params))


# --- listing --------------------------------------------------------------------------------

REDEMPTION_STATUSES = ("active", "rolled_back")


@dataclass(frozen=True)
class RedemptionPage:
    items: Sequence[Redemption]
    next_cursor: str | None


def list_redemptions(
    session: Session,
    shop_id: int,
    *,
    campaign_id: int | None = None,
    flagged: bool | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: int | None = None,
) -> RedemptionPage:
    """The shop's redemptions, newest first, filtered; `cursor` is the previous page's
    `next_cursor` (the id the page stopped before). `flagged`: broke a rule (webhooks) or not."""
    if status is not None and status not in REDEMPTION_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(REDEMPTION_STATUSES)}", reason="invalid_status")
    limit = max(1, min(limit, 500))
    stmt = select(Redemption).where(col(Redemption.shop_id) == shop_id)
    if campaign_id is not None:
        stmt = stmt.where(col(Redemption.campaign_id) == campaign_id)
    if flagged is not None:
        stmt = stmt.where(col(Redemption.flagged_reason).is_not(None) if flagged else col(Redemption.flagged_reason).is_(None))
    if status is not None:
        stmt = stmt.where(col(Redemption.status) == status)
    if cursor is not None:
        stmt = stmt.where(col(Redemption.id) < cursor)
    rows = session.exec(stmt.order_by(col(Redemption.id).desc()).limit(limit + 1)).all()
    items = rows[:limit]
    return RedemptionPage(items, str(items[-1].id) if len(rows) > limit and items else None)


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
    eventlog.emit(
        session.connection(),
        shop_id=shop_id,
        type="redemption.rolled_back",
        data={
            "redemption_id": redemption_id,
            "campaign_id": redemption.campaign_id,
            "code": redemption.code,
            "order_id": redemption.order_id,
            "policy": policy,
            "reason": reason,
            "reissued_code": details.get("reissued_code"),
        },
        now=now,
    )
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
    recipient = old.recipient
    campaign = session.get_one(Campaign, old.campaign_id)
    fmt = codes.CodeFormat.from_dict(campaign.code_format)
    for _ in range(10):
        candidate = codes.generate(fmt, 1)[0]
        taken = session.exec(select(Code.id).where(col(Code.shop_id) == old.shop_id, col(Code.code) == candidate)).first()
        if taken is None:
            break
    else:  # pragma: no cover - a safe format makes this astronomically unlikely
        raise PluginError("could not find a free code to reissue", reason="reissue_failed")
    if old.recipient is not None:
        # The recipient's code is now the fresh one (one recipient, one code: a unique index).
        # The consumed code keeps a marked key, so it never returns to the free pool.
        old.recipient = f"{old.recipient[:300]}#reissued:{old.id}"
        session.add(old)
        session.flush()
    fresh = Code(
        shop_id=old.shop_id,
        campaign_id=old.campaign_id,
        batch_id=old.batch_id,
        code=candidate,
        customer_id=old.customer_id,
        email=old.email,
        recipient=recipient,
        assigned_at=now if recipient else None,
        partner_id=old.partner_id,
        created_at=now,
    )
    session.add(fresh)
    session.flush()
    return fresh
