"""Installs and what ends them: a shop's credentials in, webhooks registered, uninstalls (the
privacy requests platforms send are `plugin.orders.privacy`).

    save_install          create or update the Shop, store its credentials encrypted, and queue
                          the registration of its webhooks (outbox job `install.webhooks`)
    mark_uninstalled      app/uninstalled (Shopify) and /uninstall (BigCommerce): the token goes,
                          the shop's queued jobs stop
    spend_nonce           an install flow's one-time value (OAuth `state`, WooCommerce
                          `user_id`) is spent once: a replay is refused, on every process
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from connectors.base import Credentials
from plugin.errors import Conflict, InvalidInput
from plugin.platforms.connections import shop_connector, shop_credentials
from plugin.settings import Settings
from plugin.shops import timezones, tokens
from plugin.store import nonces, outbox
from plugin.store.db import run, session_scope
from plugin.store.models import (
    AuditEvent,
    Job,
    Shop,
    utcnow,
)

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

REGISTER_WEBHOOKS = "install.webhooks"
# the shop's time zone, read from the platform where it says (Shopify, BigCommerce; WooCommerce's
# REST API documents none), for results' days
FETCH_TIMEZONE = "install.timezone"


def new_webhook_secret() -> str:
    """A per-shop secret for platforms that sign deliveries with what we register (WooCommerce,
    BigCommerce's header): one shop's secret never verifies another shop's deliveries."""
    return secrets.token_urlsafe(32)


def webhook_url(settings: Settings, platform: str) -> str:
    return f"{settings.public_url}/webhooks/{platform}"


def spend_nonce(session: Session, purpose: str, nonce: str, *, expires_at: datetime) -> None:
    """Record `nonce` as spent, or raise Conflict (`state_used`) if it already was (plugin.store.nonces)."""
    if not nonces.spend(session, purpose, nonce, expires_at=expires_at):
        raise Conflict("this install link was already used; start the install again", reason="state_used")


def try_spend_nonce(session: Session, purpose: str, nonce: str, *, expires_at: datetime) -> bool:
    """Spend a one-time value; False (no error) when it already was."""
    return nonces.spend(session, purpose, nonce, expires_at=expires_at)


def nonce_spent(session: Session, purpose: str, nonce: str) -> bool:
    """Whether an install flow's one-time value was spent, e.g. by a callback that succeeded."""
    return nonces.is_spent(session, purpose, nonce)


def find_shop(session: Session, platform: str, domain: str) -> Shop | None:
    return session.exec(select(Shop).where(col(Shop.platform) == platform, col(Shop.domain) == domain)).first()


def save_install(
    session: Session,
    settings: Settings,
    *,
    platform: str,
    credentials: Credentials,
    name: str = "",
    actor: str = "install",
) -> Shop:
    """Create or update the shop for these credentials, encrypted at rest, and queue its webhooks."""
    if not credentials.shop_domain or not credentials.access_token:
        raise InvalidInput("an install needs the shop and its access token", reason="invalid_install")
    shop = find_shop(session, platform, credentials.shop_domain)
    reinstall = shop is not None
    if shop is None:
        shop = Shop(platform=platform, domain=credentials.shop_domain, name=name or credentials.shop_domain)
    elif name:
        shop.name = name
    shop.access_token_encrypted = tokens.encrypt(settings, credentials.access_token, credentials.extra)
    shop.scopes = " ".join(credentials.scopes)
    if shop.uninstalled_at is not None:
        shop.uninstalled_at = None
        shop.installed_at = utcnow()
    session.add(shop)
    session.flush()
    assert shop.id is not None
    session.add(
        AuditEvent(
            shop_id=shop.id,
            action="shop.reinstalled" if reinstall else "shop.installed",
            subject=f"shop:{shop.id}",
            actor=actor,
            details={"platform": platform, "scopes": list(credentials.scopes)},
        )
    )
    enqueue_webhook_registration(session, shop.id)
    if platform in TIMEZONE_PLATFORMS:
        outbox.enqueue(session, FETCH_TIMEZONE, {}, shop.id, dedupe_key=f"{FETCH_TIMEZONE}:{shop.id}")
    session.flush()
    return shop


def note_user_removed(session: Session, platform: str, domain: str, user_id: str, *, actor: str) -> bool:
    """A platform user lost access to the app (BigCommerce's remove_user): audited; False for a
    shop we don't know."""
    shop = find_shop(session, platform, domain)
    if shop is None or shop.id is None:
        return False
    session.add(AuditEvent(shop_id=shop.id, action="shop.user_removed", subject=f"{platform}:user:{user_id}", actor=actor))
    return True


def mark_uninstalled(session: Session, shop_id: int, *, actor: str) -> int:
    """The app was uninstalled: drop the token, stop the shop's queued jobs; return how many stopped."""
    shop = session.get_one(Shop, shop_id)
    now = utcnow()
    shop.uninstalled_at = shop.uninstalled_at or now
    shop.access_token_encrypted = None
    session.add(shop)
    result = session.execute(
        update(Job)
        .where(col(Job.shop_id) == shop_id, col(Job.status) == "queued")
        .values(status="dead", last_error="the shop uninstalled the app", finished_at=now, dedupe_key=None)
    )
    stopped = int(result.rowcount)  # type: ignore[attr-defined]
    session.add(
        AuditEvent(shop_id=shop_id, action="shop.uninstalled", subject=f"shop:{shop_id}", actor=actor, details={"jobs": stopped})
    )
    session.flush()
    return stopped


# --- worker ----------------------------------------------------------------------------------


def _shop(engine: Engine, shop_id: int | None) -> Shop:
    if shop_id is None:
        raise InvalidInput("an install job needs a shop")
    with session_scope(engine) as session:
        return session.get_one(Shop, shop_id)


def enqueue_webhook_registration(session: Session, shop_id: int) -> int | None:
    """Queue (once) the job that registers the shop's webhooks, re-enabling any the platform disabled."""
    return outbox.enqueue(session, REGISTER_WEBHOOKS, {}, shop_id, dedupe_key=f"{REGISTER_WEBHOOKS}:{shop_id}")


async def handle_register_webhooks(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """Subscribe the shop's order (and uninstall) webhooks; safe to repeat."""
    engine = ctx.engine
    shop = await run(engine, lambda: _shop(engine, job.shop_id))
    if shop.platform == "sandbox" or shop.uninstalled_at is not None:
        return
    connector: Any = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    url = webhook_url(ctx.settings, shop.platform)
    if shop.platform == "shopify":
        registered = await connector.register_webhooks(url)
        details: dict[str, Any] = {"topics": sorted(registered)}
    else:
        secret = shop_credentials(ctx.settings, shop).extra.get("webhook_secret", "")
        if not secret:
            raise InvalidInput(f"{shop.platform} shop {shop.domain} has no webhook secret; reinstall it")
        registrations = await connector.register_webhooks(url, secret)
        details = {"hooks": {r.topic: r.action for r in registrations}}

    def record() -> None:
        with session_scope(engine) as session:
            assert shop.id is not None
            session.add(AuditEvent(shop_id=shop.id, action="webhooks.registered", subject=f"shop:{shop.id}", details=details))

    await run(engine, record)


TIMEZONE_PLATFORMS = ("shopify", "bigcommerce")


async def handle_fetch_timezone(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """Take the shop's time zone from its platform (a read: safe to repeat). A name our tz
    database doesn't know is left alone (the shop keeps its zone; the audit trail says why)."""
    engine = ctx.engine
    shop = await run(engine, lambda: _shop(engine, job.shop_id))
    if shop.platform not in TIMEZONE_PLATFORMS or shop.uninstalled_at is not None:
        return
    connector: Any = shop_connector(ctx.settings, ctx.http, shop, engine=ctx.engine)
    zone = await connector.store_timezone()

    def record() -> None:
        assert shop.id is not None
        with session_scope(engine) as session:
            try:
                if zone is None:
                    raise InvalidInput("the platform named no time zone", reason="invalid_timezone")
                timezones.set_timezone(session, shop.id, zone)
                details: dict[str, Any] = {"timezone": zone, "from": shop.platform}
            except InvalidInput as exc:
                details = {"refused": str(zone), "reason": exc.message}
            session.add(AuditEvent(shop_id=shop.id, action="shop.timezone", subject=f"shop:{shop.id}", details=details))

    await run(engine, record)


HANDLERS: dict[str, Handler] = {REGISTER_WEBHOOKS: handle_register_webhooks, FETCH_TIMEZONE: handle_fetch_timezone}
