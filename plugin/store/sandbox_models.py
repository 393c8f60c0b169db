"""The sandbox store's own tables (prefix `sandbox_`): what a platform would keep on its side."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:  # not models.utcnow: models imports this module to register its tables
    return datetime.now(UTC)


class SandboxDiscount(SQLModel, table=True):
    __tablename__ = "sandbox_discount"

    id: int | None = Field(default=None, primary_key=True)
    shop: str = Field(max_length=255)
    title: str = Field(default="", max_length=255)
    kind: str = Field(default="percentage", max_length=32)  # percentage | fixed_amount | free_shipping
    value: int = Field(default=0)  # percent, or minor units of `currency`
    currency: str = Field(default="USD", max_length=3)
    uses_per_code: int | None = Field(default=1)
    ends_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    reference: str | None = Field(default=None, max_length=255)  # the caller's idempotency key
    # active | paused (its codes are refused at checkout until resumed) | deleted (refused for good)
    status: str = Field(default="active", max_length=16, sa_column_kwargs={"server_default": "active"})
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("shop", "reference", name="uq_sandbox_discount_reference"),)


class SandboxCode(SQLModel, table=True):
    __tablename__ = "sandbox_code"

    id: int | None = Field(default=None, primary_key=True)
    shop: str = Field(max_length=255)
    discount_id: int = Field(foreign_key="sandbox_discount.id", index=True)
    code: str = Field(max_length=255)  # as pushed (what shoppers type)
    code_key: str = Field(max_length=255)  # upper case: codes are case-insensitive, as on most platforms
    active: bool = Field(default=True)
    usage_count: int = Field(default=0)
    pushes: int = Field(default=1)  # how many times a client pushed it (1 + repeats): for tests and reports
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("shop", "code_key", name="uq_sandbox_code_key"),)


class SandboxOrder(SQLModel, table=True):
    __tablename__ = "sandbox_order"

    id: int | None = Field(default=None, primary_key=True)
    shop: str = Field(max_length=255)
    status: str = Field(default="paid", max_length=16)  # pending | paid | cancelled | refunded | failed
    email: str | None = Field(default=None, max_length=320)
    customer_id: str | None = Field(default=None, max_length=255)
    currency: str = Field(default="USD", max_length=3)
    subtotal: int = Field(default=0)  # minor units
    discount_total: int = Field(default=0)
    channel: str | None = Field(default=None, max_length=64)
    discount_codes: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # {"address1", "address2", "zip", "country_code"}: the sandbox is the platform, so it keeps it
    shipping_address: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


class SandboxDelivery(SQLModel, table=True):
    """One webhook event to deliver; retries and duplicates reuse its `delivery_id`."""

    __tablename__ = "sandbox_delivery"

    id: int | None = Field(default=None, primary_key=True)
    shop: str = Field(max_length=255)
    delivery_id: str = Field(max_length=64, unique=True)
    topic: str = Field(max_length=64)
    order_id: int | None = Field(default=None)
    body: str = Field(default="", sa_type=Text)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = Field(default=0)
    sends: int = Field(default=0)  # requests that reached the app, duplicates included
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))
    delivered_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    __table_args__ = (Index("ix_sandbox_delivery_due", "status", "next_attempt_at"),)


class SandboxSetting(SQLModel, table=True):
    """Per-shop test knobs (see plugin/sandbox/README.md)."""

    __tablename__ = "sandbox_setting"

    shop: str = Field(primary_key=True, max_length=255)
    knobs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
