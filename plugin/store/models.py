"""SQLModel tables. Every row that belongs to a merchant carries `shop_id` (promise 5)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlmodel import Field, SQLModel

from plugin.store import counters, rollups

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every dialect (SQLite would hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Shop(SQLModel, table=True):
    """A tenant: one merchant's store on one platform."""

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=32)
    domain: str = Field(max_length=255)
    name: str = Field(default="", max_length=255)
    access_token_encrypted: str | None = Field(default=None, max_length=2048)
    scopes: str = Field(default="", max_length=1024)
    # shop-level preferences, e.g. {"detailed_refusals": true}
    preferences: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # IANA zone the shop's days are counted in (results' days, plugin.campaigns.results); the
    # rollups' triggers read it, so changing it rebuilds them (plugin.shops.timezones)
    timezone: str = Field(default="UTC", max_length=64, sa_column_kwargs={"server_default": text("'UTC'")})
    installed_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    uninstalled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("platform", "domain", name="uq_shop_platform_domain"),)


class Campaign(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    name: str = Field(max_length=200)
    status: str = Field(default="active", max_length=16)
    currency: str = Field(default="USD", max_length=3)
    code_format: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    rules: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # the platform discount that holds this campaign's codes, once synced (unbounded: WooCommerce's
    # is the campaign's coupon template itself, which grows with its title and product lists)
    platform_discount_id: str | None = Field(default=None, sa_type=Text)
    # the platform discount's first code, chosen and stored before the discount is first created:
    # every retry sends the same one, and a create whose answer was lost is found again by it
    platform_discount_marker: str | None = Field(default=None, max_length=64)
    # running totals, updated atomically by redemptions and rollbacks (budgets)
    redemption_count: int = Field(default=0)
    discount_total: int = Field(default=0, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Batch(SQLModel, table=True):
    """One generation or import run into a campaign."""

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    campaign_id: int = Field(foreign_key="campaign.id", index=True)
    source: str = Field(default="generated", max_length=16)  # generated | imported
    requested: int = Field(default=0)
    created: int = Field(default=0)
    status: str = Field(default="running", max_length=16)  # queued | running | done | failed
    error: str | None = Field(default=None, max_length=2000)
    rules_override: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# pool_id: a code handed to a messaging provider's own pool (plugin.distribution.klaviyopools) is the provider's to give out
FREE_CODE_PREDICATE = "recipient IS NULL AND uses = 0 AND status = 'active' AND pool_id IS NULL"
# codes a sync push has yet to send; written literally in queries, so SQLite can use the index
PENDING_CODE_PREDICATE = "sync_status = 'pending'"


class Code(SQLModel, table=True):
    """One unique code, stored normalised; unique per shop."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    # No foreign keys here on purpose: PostgreSQL checks each one per row, which made a
    # million-code COPY several times slower. Codes are only written by issuing, which takes
    # these ids from rows it has just read in the same shop.
    shop_id: int
    campaign_id: int
    batch_id: int | None = Field(default=None)
    code: str = Field(sa_column=Column(String(64).with_variant(String(64, collation="C"), "postgresql"), nullable=False))
    status: str = Field(default="active", max_length=16)  # active | voided
    uses: int = Field(default=0)
    # binding and assignment: who may use it, who it was given to, when it lapses
    customer_id: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    recipient: str | None = Field(default=None, max_length=320)
    assigned_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    partner_id: int | None = Field(default=None)
    # the provider pool (CouponPool) the code was handed to: the provider, not we, gives it out
    pool_id: int | None = Field(default=None)
    platform_id: str | None = Field(default=None, max_length=255)
    sync_status: str = Field(default="pending", max_length=16)  # pending | synced | failed | deactivated
    sync_error: str | None = Field(default=None, max_length=1000)
    synced_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (
        UniqueConstraint("shop_id", "code", name="uq_code_shop_code"),
        # Few indexes on purpose: each one costs every bulk insert of a million codes.
        Index("ix_code_campaign_batch", "campaign_id", "batch_id"),
        # A campaign's codes newest first (the admin's Codes page, bulk void's count): without it
        # SQLite sorted the whole campaign for a page (816 ms on 1M codes; now ~1 ms, bench/admin_pages.py).
        # Ids only grow, so inserts append to it: ~12% more CPU for a bare SQLite insert of 1M codes,
        # within the noise of bench/generate.py's end-to-end ratio (measured 2026-12-16).
        Index("ix_code_campaign_id", "campaign_id", "id"),
        # Partial: most codes have no partner and cost this index nothing.
        Index(
            "ix_code_partner",
            "partner_id",
            postgresql_where=text("partner_id IS NOT NULL"),
            sqlite_where=text("partner_id IS NOT NULL"),
        ),
        # A campaign's claimed codes newest first (Distribution's claims, the "assigned" filter):
        # without it a page walked the campaign from its newest code down (590 ms on 1M codes).
        Index(
            "ix_code_claimed",
            "campaign_id",
            "id",
            postgresql_where=text("recipient IS NOT NULL"),
            sqlite_where=text("recipient IS NOT NULL"),
        ),
        # One recipient, one code (promise 2), held by the database; unassigned codes cost nothing.
        Index(
            "uq_code_campaign_recipient",
            "campaign_id",
            "recipient",
            unique=True,
            postgresql_where=text("recipient IS NOT NULL"),
            sqlite_where=text("recipient IS NOT NULL"),
        ),
        # Codes with an end of their own (a claim's relative expiry, an extension), by that end:
        # the expiry sweep reads only the ends that passed since its last run (plugin.platforms.expiry).
        # Partial: generated codes have none, so a million-code insert costs it nothing.
        Index(
            "ix_code_expiry",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
            sqlite_where=text("expires_at IS NOT NULL"),
        ),
        # A campaign's codes with an end of their own, by that end: the figures subtract the
        # ones whose end passed from the counters (plugin.campaigns.figures). Partial, as above.
        Index(
            "ix_code_campaign_expiry",
            "campaign_id",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
            sqlite_where=text("expires_at IS NOT NULL"),
        ),
        # Voided codes and codes whose sync failed, newest first (the admin's code filters and bulk
        # void): partial, so a generated code (active, pending) costs neither anything.
        Index(
            "ix_code_not_active",
            "campaign_id",
            "id",
            postgresql_where=text("status <> 'active'"),
            sqlite_where=text("status <> 'active'"),
        ),
        Index(
            "ix_code_sync_failed",
            "campaign_id",
            "id",
            postgresql_where=text("sync_status = 'failed'"),
            sqlite_where=text("sync_status = 'failed'"),
        ),
        # The next free code of a campaign in id order (claims); ids only grow, so inserts append.
        # A code leaves it when it is assigned, used or voided (plugin.distribution.claimstore: what "free" is).
        Index(
            "ix_code_unassigned",
            "campaign_id",
            "id",
            postgresql_where=text(FREE_CODE_PREDICATE),
            sqlite_where=text(FREE_CODE_PREDICATE),
        ),
        # The next codes a campaign's push sends, in id order: a chunk job of a million-code push
        # finds them at once instead of sorting the campaign. Codes leave it once sent.
        Index(
            "ix_code_pending",
            "campaign_id",
            "id",
            postgresql_where=text(PENDING_CODE_PREDICATE),
            sqlite_where=text(PENDING_CODE_PREDICATE),
        ),
    )


class CodeEndChange(SQLModel, table=True):
    """A code whose end changed after it may have reached its platform (a claim starting its
    relative expiry, an extension), waiting for the `sync.ends` job to carry the new end to a
    platform that holds one per code (plugin.platforms.expiry). One row per code; a later change moves
    `changed_at`, so a run that read an older one leaves the row for the next run."""

    __tablename__ = "code_end_change"

    code_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    shop_id: int
    campaign_id: int
    changed_at: datetime = Field(sa_type=UtcDateTime)

    __table_args__ = (Index("ix_code_end_change_campaign", "campaign_id", "code_id"),)


class ApiKey(SQLModel, table=True):
    """A per-shop API key; only its SHA-256 is stored, looked up by its public prefix."""

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=32, unique=True)
    key_hash: str = Field(max_length=64)
    scopes: str = Field(default="checkout", max_length=200)  # space-separated: admin checkout
    partner_id: int | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class Reservation(SQLModel, table=True):
    """A code held for one checkout until it expires, is released, or is redeemed."""

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id")
    code_id: int = Field(sa_type=BigInteger, foreign_key="code.id", index=True)
    checkout_id: str = Field(max_length=255)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    released_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "checkout_id", "code_id", name="uq_reservation_checkout_code"),)


class Redemption(SQLModel, table=True):
    """One use of a code on one order: unique per shop, order and code (promise 3)."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    code: str = Field(max_length=64)
    order_id: str = Field(max_length=255)
    code_id: int | None = Field(default=None, sa_type=BigInteger, foreign_key="code.id", index=True)
    campaign_id: int | None = Field(default=None, foreign_key="campaign.id", index=True)
    batch_id: int | None = Field(default=None)
    partner_id: int | None = Field(default=None)
    recipient: str | None = Field(default=None, max_length=320)
    customer_id: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    channel: str | None = Field(default=None, max_length=64)
    currency: str = Field(default="USD", max_length=3)
    subtotal: int = Field(default=0, sa_type=BigInteger)  # order revenue before the discount
    amount: int = Field(default=0, sa_type=BigInteger)  # discount given
    # the order's subtotal after all discounts, before shipping and tax, as the platform states it
    # (None: not stated; results then count subtotal - amount)
    revenue: int | None = Field(default=None, sa_type=BigInteger)
    # The order's total and units (sum of its lines' quantities; 0 unknown), what the refund
    # ledger compares refunds with (plugin.checkout.refunds); `refunded`: the part of `subtotal` partial
    # refunds took back (attributed revenue is subtotal - refunded).
    order_total: int = Field(default=0, sa_type=BigInteger)
    order_items: int = Field(default=0)
    refunded: int = Field(default=0, sa_type=BigInteger)
    source: str = Field(default="api", max_length=16)  # api | webhook
    status: str = Field(default="active", max_length=16)  # active | rolled_back
    flagged_reason: str | None = Field(default=None, max_length=64)
    # the order's shipping address as a keyed fingerprint (plugin.orders.addresses), never the address
    address_key: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    rolled_back_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # seconds from the code's assignment to this redemption (None: the code had no recipient),
    # set by a trigger when the row is written (plugin.store.rollups); results' median reads it
    wait_seconds: int | None = Field(default=None, sa_type=BigInteger)
    # the day of created_at in the shop's time zone, set with wait_seconds (rebuilt when the zone
    # changes): a day's median is an OFFSET into ix_redemption_day_wait
    local_day: date | None = Field(default=None)
    # its code's distribution provider ('' none), set with wait_seconds and moved with the code's
    # (plugin.store.rollups): a provider's median is an OFFSET into ix_redemption_provider_wait
    provider: str = Field(default="", max_length=32, sa_column_kwargs={"server_default": text("''")})

    __table_args__ = (
        UniqueConstraint("shop_id", "order_id", "code", name="uq_redemption_order_code"),
        # By time; it also holds what Home's week sums, so that range reads the index alone (no
        # lookup of each of the week's rows): Home's figures 225 -> 116 ms on SQLite, 100k redemptions
        # over 30 days, the same load in both runs (bench/admin_pages.py, 2026-12-07).
        Index("ix_redemption_shop_created", "shop_id", "created_at", "status", "currency", "amount"),
        # a campaign's waits in order, per campaign and per channel, partner or batch: a median is
        # an OFFSET into one index range, its count from result_day (plugin.campaigns.results); the
        # trailing columns answer a range or partner filter without reading the table
        Index("ix_redemption_campaign_wait", "campaign_id", "status", "wait_seconds", "created_at", "partner_id"),
        Index("ix_redemption_channel_wait", "campaign_id", "status", "channel", "wait_seconds", "created_at", "partner_id"),
        Index("ix_redemption_partner_wait", "campaign_id", "status", "partner_id", "wait_seconds", "created_at"),
        Index("ix_redemption_batch_wait", "campaign_id", "status", "batch_id", "wait_seconds", "created_at", "partner_id"),
        Index("ix_redemption_day_wait", "campaign_id", "status", "local_day", "wait_seconds", "partner_id", "channel"),
        Index("ix_redemption_provider_wait", "campaign_id", "status", "provider", "wait_seconds", "created_at", "partner_id"),
        # Self-referral by address: a referrer's orders to this address. Partial, so orders
        # without a shipping address (digital, pickup, API calls without one) cost it nothing.
        Index(
            "ix_redemption_shop_address",
            "shop_id",
            "address_key",
            postgresql_where=text("address_key IS NOT NULL"),
            sqlite_where=text("address_key IS NOT NULL"),
        ),
    )


class OrderRefund(SQLModel, table=True):
    """The refund ledger: one row per refund of an order of ours, unique by the platform's refund
    id, so a refund delivered twice counts once (plugin.checkout.refunds). A platform that states only the
    order's refunded sum (BigCommerce) has one row, `refund_id` "total", holding the largest sum
    seen; a platform's word that the whole order is refunded is a row with `whole`."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    order_id: str = Field(max_length=255)
    refund_id: str = Field(max_length=255)
    amount: int = Field(default=0, sa_type=BigInteger)  # money returned, minor units
    items: int = Field(default=0)  # units of the order's lines refunded
    cumulative: bool = Field(default=False)  # `amount` is the order's refunded sum so far
    whole: bool = Field(default=False)  # the platform says the whole order is refunded
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "order_id", "refund_id", name="uq_orderrefund_refund"),)


class CustomerUsage(SQLModel, table=True):
    """Redemptions per customer per campaign, bumped atomically to hold per-customer limits."""

    shop_id: int = Field(foreign_key="shop.id", primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    customer_key: str = Field(max_length=320, primary_key=True)
    uses: int = Field(default=0)


class WebhookEvent(SQLModel, table=True):
    """A verified webhook delivery, stored before we answer 2xx; deduplicated by delivery id."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int | None = Field(default=None, foreign_key="shop.id", index=True)
    platform: str = Field(max_length=32)
    delivery_id: str = Field(max_length=255)
    topic: str = Field(default="", max_length=128)
    payload: str = Field(default="", sa_type=Text)
    # the platform's own headers (topic, shop, ids; never the signature), needed to re-parse the payload
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="received", max_length=16)  # received | processed | deferred | failed | ignored
    error: str | None = Field(default=None, max_length=2000)
    flagged: bool = Field(default=False)
    campaign_id: int | None = Field(default=None, index=True)
    order_id: str | None = Field(default=None, max_length=255)
    # what processing did: {"redeemed": n, "duplicates": n, "rolled_back": n, "unknown_codes": [...], ...}
    outcome: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    unknown_codes: int = Field(default=0)  # generic codes of the shop: counted, not errors
    received_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    redacted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (
        UniqueConstraint("platform", "delivery_id", name="uq_webhook_delivery"),
        Index("ix_webhook_status", "status", "received_at"),
        Index("ix_webhook_shop_order", "shop_id", "order_id"),
    )


class Job(SQLModel, table=True):
    """The outbox: an effect to carry out, written in the same transaction as its cause (promise 4)."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int | None = Field(default=None, foreign_key="shop.id", index=True)
    kind: str = Field(max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    dedupe_key: str | None = Field(default=None, max_length=255, unique=True)
    # jobs with one serial key never run at once, in any worker (plugin.store.jobstore.claim_jobs)
    serial_key: str | None = Field(default=None, max_length=255)
    status: str = Field(default="queued", max_length=16)  # queued | running | done | dead
    attempts: int = Field(default=0)
    max_attempts: int = Field(default=10)
    run_after: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    locked_by: str | None = Field(default=None, max_length=128)
    last_error: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (Index("ix_job_claim", "status", "run_after"),)


class AuditEvent(SQLModel, table=True):
    """Who changed what and why: rollbacks, reissues, voids, retries by hand."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id", index=True)
    action: str = Field(max_length=64)
    subject: str = Field(max_length=128)  # e.g. "redemption:42", "code:1234"
    actor: str = Field(default="system", max_length=128)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class RateLimitState(SQLModel, table=True):
    """A platform rate limiter's state shared by the worker processes when there is no Redis,
    e.g. key "shopify:cost:{shop domain}" for Shopify's cost bucket (connectors.costbucket)."""

    __tablename__ = "rate_limit_state"

    key: str = Field(primary_key=True, max_length=255)
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Partner(SQLModel, table=True):
    """A reseller, affiliate or influencer with its own block of codes and its own API keys."""

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "name", name="uq_partner_shop_name"),)


class RecipientDelivery(SQLModel, table=True):
    """Where one assigned code stands with one messaging provider (per-recipient push status)."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    campaign_id: int = Field(index=True)
    code_id: int = Field(sa_type=BigInteger)
    recipient: str = Field(max_length=320)
    provider: str = Field(max_length=32)
    # queued | sending (tried, outcome unknown; updated_at = first attempt) | sent | accepted | delivered | failed
    status: str = Field(default="queued", max_length=16)
    provider_id: str | None = Field(default=None, max_length=255)
    error: str | None = Field(default=None, max_length=1000)
    attempts: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    # when the code's expiry reminder fell due and the delivery was queued again to carry it
    # (plugin.distribution.reminders); the value it carries, so every retry sends the same
    reminded_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (
        UniqueConstraint("shop_id", "provider", "code_id", name="uq_delivery_provider_code"),
        # a code's first delivery names its distribution provider in results (plugin.store.rollups)
        Index("ix_delivery_code", "code_id", "id"),
    )


class Alert(SQLModel, table=True):
    """Something a merchant should act on, e.g. a pool running low; one open alert per `open_key`."""

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    campaign_id: int | None = Field(default=None)
    partner_id: int | None = Field(default=None)
    kind: str = Field(max_length=32)  # pool_low | pool_empty | webhook_too_large
    message: str = Field(default="", max_length=500)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    count: int = Field(default=1)
    # set while the alert is open, so raising it again only counts; cleared when resolved
    open_key: str | None = Field(default=None, max_length=128, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class PoolPolicy(SQLModel, table=True):
    """A campaign's pool health settings: when to alert, and when and by how much to top up."""

    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    alert_below: int = Field(default=100)
    topup_below: int | None = Field(default=None)  # None: no automatic top-up
    topup_count: int = Field(default=0)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class CouponPool(SQLModel, table=True):
    """A messaging provider's own coupon pool fed with a campaign's codes (today Klaviyo's Coupons
    API): the provider assigns the codes to its recipients at send time, so we never know who
    holds one. Thresholds as PoolPolicy's, counted on the provider's unassigned codes."""

    __tablename__ = "coupon_pool"

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id")
    campaign_id: int = Field(foreign_key="campaign.id", index=True)
    provider: str = Field(default="klaviyo", max_length=32)
    coupon_id: str = Field(max_length=64)  # the provider's coupon (Klaviyo: its external_id)
    description: str = Field(default="", max_length=500)
    alert_below: int = Field(default=100)
    topup_below: int | None = Field(default=None)  # None: no automatic top-up
    topup_count: int = Field(default=0)
    unassigned: int | None = Field(default=None)  # the provider's unassigned codes at the last check (counted up to a bound)
    checked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "provider", "coupon_id", name="uq_coupon_pool_coupon"),)


class PoolUpload(SQLModel, table=True):
    """Where one code stands in its upload to a provider's pool.

    queued → sending (a request left with it; outcome unknown until looked up) → submitted (in
    the provider's job `job_id`) → uploaded | failed."""

    __tablename__ = "pool_upload"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    pool_id: int = Field(foreign_key="coupon_pool.id")
    code_id: int = Field(sa_type=BigInteger, unique=True)
    status: str = Field(default="queued", max_length=16)
    job_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=1000)
    attempts: int = Field(default=0)
    attempted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (Index("ix_pool_upload_pool_status", "pool_id", "status"),)


class ReferralProgram(SQLModel, table=True):
    """A campaign of shareable referral codes (one per referrer) and the campaign its rewards come from."""

    campaign_id: int = Field(foreign_key="campaign.id", primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    reward_campaign_id: int = Field(foreign_key="campaign.id")
    provider: str | None = Field(default=None, max_length=32)  # messaging provider the reward is pushed through
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class Referral(SQLModel, table=True):
    """A friend's qualifying order with a referrer's code, and the reward it earned (once per friend)."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    campaign_id: int = Field(index=True)
    referrer: str = Field(max_length=320)
    friend: str = Field(max_length=320)
    order_id: str = Field(max_length=255)
    redemption_id: int = Field(sa_type=BigInteger)
    reward_code_id: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "campaign_id", "friend", name="uq_referral_friend"),)


class ReferrerAddress(SQLModel, table=True):
    """A shipping address a referrer gave when claiming their referral code, as a keyed
    fingerprint (plugin.orders.addresses): a friend's order to it is a self-referral. Per shop, not per
    program: it is the person's address."""

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    referrer: str = Field(max_length=320)
    address_key: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "referrer", "address_key", name="uq_referrer_address"),)


# The sandbox store's tables share the metadata, so create_all and migrations include them.
from plugin.store import sandbox_models as _sandbox_models  # noqa: E402, F401


class UsedNonce(SQLModel, table=True):
    """An install flow's one-time value (a Shopify OAuth `state`, a WooCommerce `user_id`),
    recorded when it is spent: the primary key makes a replay fail atomically on every process
    and database; rows past `expires_at` (when the signed value could no longer verify anyway)
    are pruned."""

    __tablename__ = "used_nonce"

    key: str = Field(primary_key=True, max_length=160)  # "<purpose>:<nonce>"
    expires_at: datetime = Field(sa_type=UtcDateTime, index=True)


class AdminUser(SQLModel, table=True):
    """A person who signs in to a shop's standalone admin (plugin.shops.users): an `owner` or
    `staff`; the password is stored only as an argon2id hash. `session_epoch` is part of every
    session cookie: signing out bumps it, so every earlier cookie of the user stops working."""

    __tablename__ = "admin_user"

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    email: str = Field(max_length=320)
    password_hash: str = Field(max_length=255)
    role: str = Field(default="staff", max_length=16)  # owner | staff
    session_epoch: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    last_sign_in_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (UniqueConstraint("shop_id", "email", name="uq_admin_user_shop_email"),)


def Counter() -> Any:
    """A counter column moved by triggers, which insert rows naming only the counters they move."""
    return Field(default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")})


class CampaignStats(SQLModel, table=True):
    """What one batch of a campaign's codes adds up to (batch 0: codes without a batch), kept by
    triggers in the same transaction as each write to `code` and `redemption`
    (plugin.store.counters, which defines every column); a campaign's figures are the sum of its rows."""

    __tablename__ = "campaign_stats"

    campaign_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    batch_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    shop_id: int = Field(index=True)
    codes: int = Counter()
    active: int = Counter()
    active_uses: int = Counter()
    unused: int = Counter()
    used: int = Counter()
    assigned: int = Counter()
    sync_pending: int = Counter()
    sync_synced: int = Counter()
    sync_failed: int = Counter()
    sync_deactivated: int = Counter()
    rolled_back: int = Counter()
    last_redemption_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ShopDayStats(SQLModel, table=True):
    """A shop's redemptions still active and the discount they gave, per UTC day of the
    redemption, kept by triggers (plugin.store.counters)."""

    __tablename__ = "shop_day_stats"

    shop_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    day: date = Field(primary_key=True)
    redemptions: int = Counter()
    discount: int = Counter()


class ResultDay(SQLModel, table=True):
    """A campaign's redemptions per day in the shop's time zone and per channel, partner, batch,
    distribution provider and currency (`''`/0: none), kept by triggers with each write to
    `redemption` (plugin.store.rollups); money counts active redemptions only."""

    __tablename__ = "result_day"

    shop_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    campaign_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    day: date = Field(primary_key=True)
    channel: str = Field(primary_key=True, max_length=64)
    partner_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    batch_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    provider: str = Field(primary_key=True, max_length=32)
    currency: str = Field(primary_key=True, max_length=3)
    redeemed: int = Counter()
    rolled_back: int = Counter()
    flagged: int = Counter()
    revenue: int = Counter()
    discount: int = Counter()
    waited: int = Counter()  # active redemptions with a wait_seconds: the median's count
    gross: int = Counter()  # subtotal - refunded of active redemptions (partners' totals, plugin.distribution.partners)


class AssignDay(SQLModel, table=True):
    """A campaign's codes assigned to a recipient per day (of the assignment, shop time zone),
    partner, batch and distribution provider, kept by triggers on `code` (plugin.store.rollups)."""

    __tablename__ = "assign_day"

    shop_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    campaign_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    day: date = Field(primary_key=True)
    partner_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    batch_key: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    provider: str = Field(primary_key=True, max_length=32)
    assigned: int = Counter()


class CodeBulkInsert(SQLModel, table=True):
    """A batch whose codes a bulk insert is writing in the open transaction (SQLite): the counters'
    insert trigger skips them and the insert counts them once (plugin.store.counters). A row never
    outlives its transaction; unused on PostgreSQL, whose statement trigger counts a COPY once."""

    __tablename__ = "code_bulk_insert"

    batch_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))


class EventEndpoint(SQLModel, table=True):
    """A merchant's URL that receives the events it subscribed to, signed per Standard Webhooks
    with its own secret (plugin.events). Disabled by hand or after failing too long."""

    __tablename__ = "event_endpoint"

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(foreign_key="shop.id", index=True)
    url: str = Field(max_length=2000)
    description: str = Field(default="", max_length=200)
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret_encrypted: str = Field(sa_column=Column(Text, nullable=False))  # Fernet (plugin.shops.tokens)
    enabled: bool = Field(default=True)
    disabled_reason: str | None = Field(default=None, max_length=300)
    # failed attempts in a row and since when (cleared by a success): what disables the endpoint
    consecutive_failures: int = Field(default=0)
    failing_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class EventMessage(SQLModel, table=True):
    """One event that happened in a shop, written in the transaction of its cause; `msg_id` is the
    `webhook-id` every delivery and retry of it carries (receivers dedupe by it)."""

    __tablename__ = "event_message"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id", index=True)
    msg_id: str = Field(max_length=64, unique=True)
    type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class EventDelivery(SQLModel, table=True):
    """One event on its way to one endpoint (its attempts in EventAttempt)."""

    __tablename__ = "event_delivery"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id", index=True)
    endpoint_id: int = Field(foreign_key="event_endpoint.id")
    message_id: int = Field(sa_column=Column(BigId, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed | halted
    attempts: int = Field(default=0)
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)

    __table_args__ = (Index("ix_event_delivery_endpoint", "endpoint_id", "id"),)


class EventAttempt(SQLModel, table=True):
    """One HTTP attempt of a delivery: what the receiver answered, how fast, or what went wrong."""

    __tablename__ = "event_attempt"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    shop_id: int = Field(foreign_key="shop.id")
    delivery_id: int = Field(sa_column=Column(BigId, nullable=False, index=True))
    status_code: int | None = Field(default=None)
    latency_ms: int = Field(default=0)
    error: str | None = Field(default=None, max_length=500)
    response_snippet: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


class AlertChannel(SQLModel, table=True):
    """Where a shop's alerts go besides the admin: an email address (through the SMTP server
    given here) and a Slack incoming webhook. Secrets (SMTP password, Slack URL) are encrypted."""

    __tablename__ = "alert_channel"

    shop_id: int = Field(foreign_key="shop.id", primary_key=True)
    email_to: str | None = Field(default=None, max_length=254)
    email_from: str | None = Field(default=None, max_length=254)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None)
    smtp_security: str = Field(default="starttls", max_length=16)  # starttls | ssl | none
    smtp_user: str | None = Field(default=None, max_length=255)
    smtp_password_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    slack_url_encrypted: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UtcDateTime)


def _install_counters(target: Any, connection: Any, **kw: Any) -> None:
    counters.install(connection)
    rollups.install(connection)


# The counters' triggers come with the tables, on both databases (migrations call it too).
event.listen(SQLModel.metadata, "after_create", _install_counters)
