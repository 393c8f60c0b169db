"""Pool health: per-campaign thresholds for low-stock alerts and automatic top-up.

    set_policy      alert under `alert_below` free codes; top up by `topup_count` new codes when
                    the free codes fall under `topup_below` (None: never)
    after_claim     called in a claim's transaction: raises the pool_low alert and queues one
                    `distribution.topup` job (deduplicated while queued) when due
    handle_topup    the worker: generates the codes, queues their push to the shop platform when
                    the campaign is synced there, and resolves the pool's open alerts

Only the campaign's own pool (codes without a partner) is topped up: a partner's block is
allocated by the merchant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.campaigns import issuing, platform
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claimstore
from plugin.errors import InvalidInput
from plugin.store import eventlog, outbox
from plugin.store.db import Reader, run, session_reader, session_scope
from plugin.store.models import Alert, PoolPolicy, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

TOPUP = "distribution.topup"
DEFAULT_ALERT_BELOW = 100


@dataclass(frozen=True)
class Policy:
    alert_below: int = DEFAULT_ALERT_BELOW
    topup_below: int | None = None
    topup_count: int = 0


def set_policy(
    session: Session, *, shop_id: int, campaign_id: int, alert_below: int, topup_below: int | None, topup_count: int
) -> PoolPolicy:
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    if alert_below < 0 or (topup_below is not None and topup_below < 1) or topup_count < 0:
        raise InvalidInput("thresholds and counts must not be negative", reason="invalid_policy")
    if topup_below is not None and not 1 <= topup_count <= issuing.MAX_BATCH:
        raise InvalidInput(f"a top-up needs a count between 1 and {issuing.MAX_BATCH:,}", reason="invalid_policy")
    policy = session.get(PoolPolicy, campaign_id) or PoolPolicy(campaign_id=campaign_id, shop_id=shop_id)
    policy.alert_below, policy.topup_below, policy.topup_count, policy.updated_at = (
        alert_below,
        topup_below,
        topup_count,
        utcnow(),
    )
    session.add(policy)
    session.flush()
    return policy


def policy_of(reader: Reader, campaign_id: int) -> Policy:
    rows = reader.rows("SELECT alert_below, topup_below, topup_count FROM poolpolicy WHERE campaign_id = ?", (campaign_id,))
    return Policy(*rows[0]) if rows else Policy()


def campaign_policy(session: Session, *, shop_id: int, campaign_id: int) -> Policy:
    """The campaign's thresholds (the defaults when none were set)."""
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    with session_reader(session) as reader:
        return policy_of(reader, campaign_id)


def alert_key(kind: str, shop_id: int, campaign_id: int, partner_id: int | None) -> str:
    return f"{kind}:{shop_id}:{campaign_id}:{partner_id or 0}"


def after_claim(session: Session, *, shop_id: int, campaign_id: int, name: str, partner_id: int | None, now: datetime) -> None:
    """In the claim's transaction: alert and queue a top-up when the pool has run low."""
    with session_reader(session) as reader:
        policy = policy_of(reader, campaign_id)
    topup_below = policy.topup_below if partner_id is None else None
    watch = max(policy.alert_below, topup_below or 0)
    if watch <= 0:
        return
    conn = session.connection()
    free = claimstore.free_codes(conn, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, upto=watch, now=now)
    if topup_below is not None and free < topup_below:
        queue_topup(session, shop_id=shop_id, campaign_id=campaign_id, count=policy.topup_count)
    if free < policy.alert_below:
        opened = claimstore.raise_alert(
            conn,
            {
                "shop_id": shop_id,
                "campaign_id": campaign_id,
                "partner_id": partner_id,
                "kind": "pool_low",
                "message": f"campaign {name!r}: {free} free code(s) left",
                "details": {"free": free, "threshold": policy.alert_below},
                "open_key": alert_key("pool_low", shop_id, campaign_id, partner_id),
            },
            now,
        )
        if opened:  # once per low spell, not on every claim below the threshold
            eventlog.emit(
                conn,
                shop_id=shop_id,
                type="pool.low",
                data={"campaign_id": campaign_id, "partner_id": partner_id, "free": free, "threshold": policy.alert_below},
                now=now,
            )


def queue_topup(session: Session, *, shop_id: int, campaign_id: int, count: int) -> int | None:
    return outbox.enqueue(
        session, TOPUP, {"campaign_id": campaign_id, "count": count}, shop_id, dedupe_key=f"{TOPUP}:{campaign_id}"
    )


def wants_topup_when_empty(session: Session, *, campaign_id: int) -> int:
    with session_reader(session) as reader:
        policy = policy_of(reader, campaign_id)
    return policy.topup_count if policy.topup_below is not None else 0


def _topup(engine: Engine, shop_id: int, campaign_id: int, count: int) -> None:
    # A re-run after a crash tops up again only if the pool is still low.
    with session_scope(engine) as session:
        with session_reader(session) as reader:
            policy = policy_of(reader, campaign_id)
        if policy.topup_below is None:
            return
        free = claimstore.free_codes(session.connection(), shop_id=shop_id, campaign_id=campaign_id, partner_id=None,
                                     upto=policy.topup_below, now=utcnow())  # fmt: skip
    if free >= policy.topup_below:
        return
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=count)
    with session_scope(engine) as session:
        campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
        if campaign.platform_discount_id and platform.is_installed(session, shop_id):
            platform.enqueue_push(session, shop_id=shop_id, campaign_id=campaign_id)
        conn, now = session.connection(), utcnow()
        for kind in ("pool_low", "pool_empty"):
            claimstore.resolve_alert(conn, open_key=alert_key(kind, shop_id, campaign_id, None), now=now)


async def handle_topup(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    assert job.shop_id is not None
    shop_id, campaign_id, count = job.shop_id, int(job.payload["campaign_id"]), int(job.payload["count"])
    await run(ctx.engine, lambda: _topup(ctx.engine, shop_id, campaign_id, count))


HANDLERS: dict[str, Handler] = {TOPUP: handle_topup}


def list_alerts(session: Session, *, shop_id: int, partner_id: int | None = None, limit: int = 200) -> list[Alert]:
    """The shop's alerts, newest first; a partner sees only its own."""
    stmt = select(Alert).where(col(Alert.shop_id) == shop_id).order_by(col(Alert.id).desc()).limit(limit)
    if partner_id is not None:
        stmt = stmt.where(col(Alert.partner_id) == partner_id)
    return list(session.exec(stmt).all())
