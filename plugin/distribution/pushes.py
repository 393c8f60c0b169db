"""Pushing recipients' codes to email/SMS providers as outbox jobs, with per-recipient status.

    enqueue_push   in the caller's transaction: a RecipientDelivery row (queued) for each assigned
                   code of the campaign the provider has not had yet, and one `distribution.push`
                   job (promise 4)
    handle_push    the worker: queued deliveries in the provider's batch size, through its
                   MessagingConnector (connectors/, which keeps inside the provider's rate
                   limits); each batch's results are written as soon as they come back

A re-run after a crash sends only what is not settled. A delivery becomes `sending` (with the
time) before its first attempt leaves; an attempt whose answer was lost (5xx, timeout, broken
connection, crash) leaves it `sending`, and the next run has the connector look for that message
before sending again (Twilio), so a code is sent once. What provably never reached the provider
(429, no connection) goes back to `queued`. Either way the job is retried with backoff (honouring
Retry-After); a rate limit or outage that raises out of the connector does the same.
A recipient the provider refused is `failed` with its message; `sent` means a synchronous provider
(Twilio, Mailchimp, Braze) took it. An asynchronous provider (Klaviyo, SendGrid) answers with an
import job: the recipient is `accepted` (`provider_id` holds the job id) until the follow-up job
`distribution.push_results` reads the finished job and makes it `delivered` or `failed`.

Provider credentials come from the settings: COUPONRY_<PROVIDER>_API_KEY (or _ACCESS_TOKEN) and
any other COUPONRY_<PROVIDER>_<OPTION> (e.g. COUPONRY_KLAVIYO_LIST_ID, COUPONRY_TWILIO_FROM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

import httpx
from sqlalchemy import Engine, insert, literal, or_, tuple_, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from connectors import MESSAGING_CONNECTORS, messaging_connector_class
from connectors.base import ConnectorConfig, Credentials, MessagingConnector, Recipient, RecipientResult
from connectors.errors import RateLimited, UpstreamError
from plugin import keyring
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claims as distribution
from plugin.errors import Conflict, InvalidInput
from plugin.rules.recipients import recipient_parts
from plugin.settings import Settings
from plugin.store import outbox
from plugin.store.db import read_cursor, run, session_scope
from plugin.store.jobstore import aware
from plugin.store.models import AuditEvent, Code, RecipientDelivery, Shop, utcnow

if TYPE_CHECKING:
    from plugin.store.jobcontext import Handler, JobContext

PUSH = "distribution.push"
_delivery = RecipientDelivery.__table__  # type: ignore[attr-defined]
_code = Code.__table__  # type: ignore[attr-defined]
# queued: not tried yet, or provably not sent; sending: tried, outcome unknown until looked up
UNSETTLED = ("queued", "sending")
# the field an expiry reminder sets (plugin.distribution.reminders): when it fell due
REMINDER_FIELD = "coupon_reminder_at"


def check_provider(provider: str) -> str:
    if provider not in MESSAGING_CONNECTORS:
        raise InvalidInput(f"unknown provider {provider!r}; one of {sorted(MESSAGING_CONNECTORS)}", reason="unknown_provider")
    return provider


def enqueue_push(
    session: Session, *, shop_id: int, campaign_id: int, provider: str, code_ids: Sequence[int] | None = None
) -> int:
    """Queue the campaign's assigned codes (or just `code_ids`) for the provider; returns how many
    recipients were newly queued. Codes already queued or sent to this provider are left alone."""
    check_provider(provider)
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    now = utcnow()
    pending = (
        core_select(
            _code.c.shop_id,
            _code.c.campaign_id,
            _code.c.id,
            _code.c.recipient,
            literal(provider, _delivery.c.provider.type),
            literal("queued", _delivery.c.status.type),
            literal(0, _delivery.c.attempts.type),
            literal(now, _delivery.c.updated_at.type),
        )
        .where(
            _code.c.shop_id == shop_id,
            _code.c.campaign_id == campaign_id,
            _code.c.recipient.is_not(None),
            _code.c.recipient.not_like("%" + distribution.REISSUED + "%"),
            ~core_select(_delivery.c.id)
            .where(_delivery.c.shop_id == shop_id, _delivery.c.provider == provider, _delivery.c.code_id == _code.c.id)
            .exists(),
        )
        .order_by(_code.c.id)
    )
    if code_ids is not None:
        pending = pending.where(_code.c.id.in_(list(code_ids)))
    columns = ["shop_id", "campaign_id", "code_id", "recipient", "provider", "status", "attempts", "updated_at"]
    result = session.connection().execute(insert(_delivery).from_select(columns, pending).returning(_delivery.c.id))
    queued = len(result.all())
    if queued:
        outbox.enqueue(
            session,
            PUSH,
            {"campaign_id": campaign_id, "provider": provider},
            shop_id,
            dedupe_key=f"{PUSH}:{shop_id}:{campaign_id}:{provider}",
        )
    return queued


def twilio_callback_url(settings: Settings, shop_id: int) -> str:
    """Where Twilio reports each message's delivery status for this shop."""
    return f"{settings.public_url}/callbacks/twilio/{shop_id}"


def messaging_connector(settings: Settings, http: httpx.AsyncClient, provider: str, shop: Shop) -> MessagingConnector:
    options = dict(settings.connector_config.get(provider, {}))
    if provider == "twilio" and shop.id is not None:
        options.setdefault("status_callback", twilio_callback_url(settings, shop.id))
        if settings.redis_url:  # the account's concurrency limit, shared by every worker process
            options.setdefault("redis_url", settings.redis_url)
    config = ConnectorConfig(base_url=options.get("base_url"), extra=options)
    token = options.get("api_key") or options.get("access_token") or ""
    credentials = Credentials(shop_domain=shop.domain, access_token=token, extra=options)
    connector: MessagingConnector = messaging_connector_class(provider)(http, config, credentials)
    return connector


def _next_batch(
    engine: Engine, settings: Settings, shop_id: int, campaign_id: int, provider: str, size: int, after: int
) -> list[tuple[int, Recipient]]:
    """(delivery id, Recipient with merge fields) for the next unsettled deliveries after id
    `after`. Those still queued become `sending` before anything leaves, with the time, so an
    attempt whose outcome is lost (an ambiguous answer, a crash) is looked up, not repeated blindly."""
    with session_scope(engine) as session:
        rows = session.execute(
            core_select(
                _delivery.c.id, _delivery.c.recipient, _delivery.c.status, _delivery.c.updated_at, _delivery.c.reminded_at
            )
            .where(
                _delivery.c.shop_id == shop_id,
                _delivery.c.campaign_id == campaign_id,
                _delivery.c.provider == provider,
                _delivery.c.status.in_(UNSETTLED),
                _delivery.c.id > after,
            )
            .order_by(_delivery.c.id)
            .limit(size)
        ).all()
    batch: list[tuple[int, Recipient]] = []
    now = utcnow()
    for delivery_id, key, status, updated_at, reminded_at in rows:
        held = distribution.find_claim(engine, shop_id=shop_id, campaign_id=campaign_id, recipient=key)
        if held is None:  # the code was reissued meanwhile: the new code gets its own delivery
            _finish(engine, [(delivery_id, "failed", None, "the recipient no longer holds this code")])
            continue
        if reminded_at is not None and (why := _no_reminder(engine, held, now)) is not None:
            _finish(engine, [(delivery_id, "skipped", None, f"expiry reminder not sent: {why}")])
            continue
        parts = recipient_parts(key)
        fields = {
            "coupon_code": held.code,
            "coupon_display": held.display,
            "coupon_expires_at": held.expires_at.isoformat() if held.expires_at else "",
            "claim_url": distribution.claim_url(settings.public_url, keyring.signing_key(settings), shop_id=shop_id, claim_=held),
        }
        if reminded_at is not None:  # plugin.distribution.reminders: the same value on every attempt
            fields[REMINDER_FIELD] = reminded_at.isoformat()
        recipient = Recipient(
            key=key,
            email=parts["email"],
            phone=parts["phone"],
            external_id=parts["customer_id"],
            fields=fields,
            attempted_at=updated_at if status == "sending" else None,  # while sending: the first attempt's time
        )
        batch.append((delivery_id, recipient))
    queued = {delivery_id for delivery_id, _, status, _, _ in rows if status == "queued"}
    fresh = [(delivery_id, r.key) for delivery_id, r in batch if delivery_id in queued]
    if fresh:
        # only for the recipient it was read for: a reassign in between gave the delivery to
        # someone else (queued again for them), and this batch must not send it to the old one
        with session_scope(engine) as session:
            marked = set(
                session.execute(
                    update(_delivery)
                    .where(tuple_(_delivery.c.id, _delivery.c.recipient).in_(fresh), _delivery.c.status == "queued")
                    .values(status="sending", updated_at=utcnow())
                    .returning(_delivery.c.id)
                ).scalars()
            )
        batch = [(d, r) for d, r in batch if d not in queued or d in marked]
    return batch


def _no_reminder(engine: Engine, held: distribution.Claim, now: datetime) -> str | None:
    """Why the code's expiry reminder must not go out any more (used, voided, expired), or None."""
    with read_cursor(engine) as reader:
        found = reader.rows("SELECT uses, status FROM code WHERE id = ?", (held.code_id,))
    uses, status = found[0] if found else (0, "gone")
    if status != "active":
        return f"the code is {status}"
    if uses:
        return "the code was used"
    if held.expires_at is not None and held.expires_at <= now:
        return "the code has expired"
    return None


def _finish(
    engine: Engine,
    outcomes: Sequence[tuple[int, str, str | None, str | None]],
    *,
    watch: tuple[int, int, str, Sequence[str]] | None = None,
) -> None:
    """Write a batch's results; with `watch` (shop, campaign, provider, job ids), also queue the
    follow-up that turns those asynchronous import jobs into per-recipient results, in the same
    transaction, so no accepted recipient is left without one."""
    now = utcnow()
    with session_scope(engine) as session:
        conn = session.connection()
        for delivery_id, status, provider_id, error in outcomes:
            values: dict[str, Any] = {
                "status": status,
                "provider_id": provider_id,
                "error": error[:1000] if error else None,
                "attempts": _delivery.c.attempts + 1,
            }
            if status != "sending":  # a delivery still sending keeps the time of its first attempt
                values["updated_at"] = now
            conn.execute(update(_delivery).where(_delivery.c.id == delivery_id).values(**values))
        if watch is not None:
            shop_id, campaign_id, provider, job_ids = watch
            for job_id in job_ids:
                outbox.enqueue(
                    session,
                    FOLLOW,
                    {"campaign_id": campaign_id, "provider": provider, "job_id": job_id},
                    shop_id,
                    dedupe_key=f"{FOLLOW}:{shop_id}:{provider}:{job_id}"[:255],
                    run_after=now + FOLLOW_AFTER,
                )


async def handle_push(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    engine = ctx.engine
    shop_id = job.shop_id
    assert shop_id is not None
    campaign_id, provider = int(job.payload["campaign_id"]), str(job.payload["provider"])
    shop = await run(engine, lambda: _shop(engine, shop_id))
    connector = messaging_connector(ctx.settings, ctx.http, provider, shop)
    asynchronous = callable(getattr(connector, "job_results", None))  # Klaviyo, SendGrid: import jobs
    after, unsettled = 0, []
    while True:
        batch = await run(
            engine, partial(_next_batch, engine, ctx.settings, shop_id, campaign_id, provider, connector.BATCH_SIZE, after)
        )
        if not batch:
            break
        after = batch[-1][0]
        results = await connector.push_recipients([r for _, r in batch])
        accepted = "accepted" if asynchronous else "sent"
        outcomes = [
            (delivery_id, _status(result, accepted), result.provider_id, result.error)
            for (delivery_id, _), result in zip(batch, results, strict=True)
        ]
        unsettled += [r for r in results if r.pending]
        jobs = sorted({r.provider_id for r in results if r.ok and r.provider_id}) if asynchronous else []
        watch = (shop_id, campaign_id, provider, jobs) if jobs else None
        await run(engine, partial(_finish, engine, outcomes, watch=watch))
    if unsettled:
        # The job is retried with backoff (at least what the provider asked): the unknown ones are
        # looked up first, the unsent ones sent.
        message = f"{len(unsettled)} recipient(s) not settled yet, e.g. {unsettled[0].error}"
        waits = [r.retry_after for r in unsettled if r.retry_after is not None]
        if waits:
            raise RateLimited(message, retry_after=max(waits))
        raise UpstreamError(message)


def _status(result: RecipientResult, accepted: str) -> str:
    if result.ok:
        return accepted
    return {"unknown": "sending", "unsent": "queued", None: "failed"}[result.pending]


class ImportRunning(Exception):
    """The provider's import job has not finished; the follow-up is retried with backoff."""


async def handle_follow(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """An asynchronous provider's import job finished: each accepted recipient becomes
    `delivered` or `failed` with the provider's message."""
    engine = ctx.engine
    shop_id = job.shop_id
    assert shop_id is not None
    provider, job_id = str(job.payload["provider"]), str(job.payload["job_id"])
    rows = await run(engine, lambda: _accepted(engine, shop_id, provider, job_id))
    if not rows:
        return
    shop = await run(engine, lambda: _shop(engine, shop_id))
    connector: Any = messaging_connector(ctx.settings, ctx.http, provider, shop)
    recipients = [_identity(key) for _, key in rows]
    results = await connector.job_results(job_id, recipients)
    if results is None:
        raise ImportRunning(f"{provider} import job {job_id} is still running")
    outcomes = [
        (delivery_id, "delivered" if result.ok else "failed", job_id, result.error)
        for (delivery_id, _), result in zip(rows, results, strict=True)
    ]
    await run(engine, partial(_finish, engine, outcomes))


def _identity(key: str) -> Recipient:
    """The recipient as the provider knows them (the identifiers its results are matched on)."""
    parts = recipient_parts(key)
    return Recipient(key=key, email=parts["email"], phone=parts["phone"], external_id=parts["customer_id"])


def _accepted(engine: Engine, shop_id: int, provider: str, job_id: str) -> list[tuple[int, str]]:
    with read_cursor(engine) as reader:
        rows = reader.rows(
            "SELECT id, recipient FROM recipientdelivery WHERE shop_id = ? AND provider = ? AND provider_id = ?"
            " AND status = 'accepted' ORDER BY id",
            (shop_id, provider, job_id),
        )
    return [(int(i), str(r)) for i, r in rows]


FOLLOW = "distribution.push_results"
FOLLOW_AFTER = timedelta(seconds=10)

# --- a code given to someone else (plugin.codes.percode.reassign) ----------------------------------

RETRACT = "distribution.retract"
# providers whose push sends a message (nothing stays with the provider that could be cleared)
SENDS_MESSAGES = frozenset({"twilio"})
MERGE_FIELDS = ("coupon_code", "coupon_display", "coupon_expires_at", "claim_url")
REACHED = ("sent", "accepted", "delivered")


class CodeBeingSent(Conflict):
    reason = "code_being_sent"


def reassigned(session: Session, *, code: Code, previous: str | None, audit_id: int, now: datetime) -> list[str]:
    """After `code` went from `previous` to `code.recipient`, in the caller's transaction: each
    provider the campaign pushes to gets exactly one push of the code for the new recipient
    (the code's delivery record moves to them, queued); where the old recipient was reached and
    the provider keeps merge fields, one `distribution.retract` job blanks theirs. Refused while
    a push of the code is in flight (its outcome unknown): the old recipient may be getting it.
    Returns the providers queued."""
    assert code.id is not None and code.recipient is not None
    rows = session.exec(
        select(RecipientDelivery)
        .where(col(RecipientDelivery.shop_id) == code.shop_id, col(RecipientDelivery.code_id) == code.id)
        .with_for_update()
    ).all()
    if busy := [d.provider for d in rows if d.status == "sending"]:
        raise CodeBeingSent(
            f"a push of this code to {busy[0]} is in flight: try again once it has settled", details={"provider": busy[0]}
        )
    for delivery in rows:
        if delivery.status in REACHED and previous and delivery.provider not in SENDS_MESSAGES:
            payload = {
                "audit_id": audit_id,
                "code_id": code.id,
                "provider": delivery.provider,
                "sent_at": aware(delivery.updated_at).isoformat(),
            }
            outbox.enqueue(session, RETRACT, payload, code.shop_id)
        delivery.recipient, delivery.status, delivery.provider_id, delivery.error = code.recipient, "queued", None, None
        delivery.attempts, delivery.updated_at = 0, now
        session.add(delivery)
        queue_push_job(session, code.shop_id, code.campaign_id, delivery.provider)
    session.flush()
    held = {d.provider for d in rows}
    others = session.exec(
        select(RecipientDelivery.provider)
        .where(col(RecipientDelivery.shop_id) == code.shop_id, col(RecipientDelivery.campaign_id) == code.campaign_id)
        .distinct()
    ).all()
    for provider in sorted(set(others) - held):  # the campaign pushes there: the new recipient too
        enqueue_push(session, shop_id=code.shop_id, campaign_id=code.campaign_id, provider=provider, code_ids=[code.id])
    return sorted(held | set(others))


def queue_push_job(session: Session, shop_id: int, campaign_id: int, provider: str) -> None:
    """The push job that sends the campaign's queued deliveries to the provider (in the caller's transaction)."""
    outbox.enqueue(
        session,
        PUSH,
        {"campaign_id": campaign_id, "provider": provider},
        shop_id,
        dedupe_key=f"{PUSH}:{shop_id}:{campaign_id}:{provider}",
    )


async def handle_retract(ctx: JobContext, job: outbox.ClaimedJob) -> None:
    """Blank the merge fields of the person a code was taken from, at one provider. Nothing is
    sent when our records no longer name them (redacted) or when the provider has had another
    code for them since (their fields hold that one now, or will). Blanking twice is harmless,
    so a retry after a lost answer is safe; an unsettled answer retries the job."""
    engine, shop_id = ctx.engine, job.shop_id
    assert shop_id is not None
    provider, code_id = str(job.payload["provider"]), int(job.payload["code_id"])
    previous = await run(engine, lambda: _retract_target(engine, shop_id, job.payload))
    if previous is None:
        return
    shop = await run(engine, lambda: _shop(engine, shop_id))
    connector = messaging_connector(ctx.settings, ctx.http, provider, shop)
    parts = recipient_parts(previous)
    blank = Recipient(
        key=previous,
        email=parts["email"],
        phone=parts["phone"],
        external_id=parts["customer_id"],
        fields=dict.fromkeys(MERGE_FIELDS, ""),
    )
    (result,) = await connector.push_recipients([blank])
    if result.pending:
        message = f"{provider} did not settle the blanking of a reassigned code's merge fields: {result.error}"
        if result.retry_after is not None:
            raise RateLimited(message, retry_after=result.retry_after)
        raise UpstreamError(message)
    outcome = {"provider": provider, "ok": result.ok, "error": result.error}
    await run(engine, lambda: _record_retract(engine, shop_id, code_id, outcome))


def _retract_target(engine: Engine, shop_id: int, payload: Mapping[str, Any]) -> str | None:
    """The recipient whose fields to blank, or None when there is nothing to do."""
    with session_scope(engine) as session:
        audit = session.get(AuditEvent, int(payload["audit_id"]))
        if audit is None or audit.shop_id != shop_id:
            return None
        previous = audit.details.get("previous")
        if not isinstance(previous, str) or not previous or distribution.REISSUED in previous:
            return None
        since = datetime.fromisoformat(str(payload["sent_at"]))
        newer = session.exec(
            select(RecipientDelivery.id).where(
                col(RecipientDelivery.shop_id) == shop_id,
                col(RecipientDelivery.provider) == str(payload["provider"]),
                col(RecipientDelivery.recipient) == previous,
                col(RecipientDelivery.code_id) != int(payload["code_id"]),
                col(RecipientDelivery.status) != "failed",
                or_(col(RecipientDelivery.status).in_(UNSETTLED), col(RecipientDelivery.updated_at) >= since),
            )
        ).first()
        return None if newer is not None else previous


def _record_retract(engine: Engine, shop_id: int, code_id: int, outcome: dict[str, Any]) -> None:
    with session_scope(engine) as session:
        session.add(
            AuditEvent(shop_id=shop_id, action="code.retracted", subject=f"code:{code_id}", actor="worker", details=outcome)
        )


def _shop(engine: Engine, shop_id: int) -> Shop:
    with session_scope(engine) as session:
        return session.get_one(Shop, shop_id)


def delivery_counts(engine: Engine, *, shop_id: int, campaign_id: int) -> dict[str, dict[str, int]]:
    """{provider: {status: count}} for the campaign."""
    with read_cursor(engine) as reader:
        rows = reader.rows(
            "SELECT provider, status, count(*) FROM recipientdelivery WHERE shop_id = ? AND campaign_id = ?"
            " GROUP BY provider, status",
            (shop_id, campaign_id),
        )
    out: dict[str, dict[str, int]] = {}
    for provider, status, count in rows:
        out.setdefault(provider, {})[status] = int(count)
    return out


def list_deliveries(
    session: Session,
    *,
    shop_id: int,
    campaign_id: int,
    status: str | None = None,
    limit: int = 100,
    partner_id: int | None = None,
) -> Sequence[RecipientDelivery]:
    stmt = (
        select(RecipientDelivery)
        .where(col(RecipientDelivery.shop_id) == shop_id, col(RecipientDelivery.campaign_id) == campaign_id)
        .order_by(col(RecipientDelivery.id))
        .limit(limit)
    )
    if status is not None:
        stmt = stmt.where(col(RecipientDelivery.status) == status)
    if partner_id is not None:
        stmt = stmt.where(col(RecipientDelivery.code_id).in_(core_select(_code.c.id).where(_code.c.partner_id == partner_id)))
    return session.exec(stmt).all()


HANDLERS: dict[str, Handler] = {PUSH: handle_push, FOLLOW: handle_follow, RETRACT: handle_retract}


# Twilio's MessageStatus values, as our per-recipient statuses
TWILIO_STATUSES = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}


def record_provider_status(
    engine: Engine, *, shop_id: int, provider: str, provider_id: str, status: str, error: str | None
) -> int:
    """A provider's later word on one message; returns how many deliveries it updated (0 or 1).

    A final status (delivered, failed) is never overwritten by a late "sent": callbacks can
    arrive out of order."""
    stmt = update(RecipientDelivery).where(
        col(RecipientDelivery.shop_id) == shop_id,
        col(RecipientDelivery.provider) == provider,
        col(RecipientDelivery.provider_id) == provider_id,
    )
    if status == "sent":
        stmt = stmt.where(col(RecipientDelivery.status).not_in(("delivered", "failed")))
    with session_scope(engine) as session:
        result = session.execute(stmt.values(status=status, error=error, updated_at=utcnow()))
        return int(result.rowcount)  # type: ignore[attr-defined]


class _SignedStatusCallbacks(Protocol):
    """What a provider that reports message status by signed callback offers (Twilio)."""

    def verify_signature(self, url: str, params: Mapping[str, str], signature: str) -> None: ...

    def parse_status_callback(self, params: Mapping[str, str]) -> tuple[str, str, str | None]: ...


def read_twilio_callback(
    settings: Settings, http: httpx.AsyncClient, shop: Shop, params: Mapping[str, str], signature: str
) -> tuple[str, str | None, str | None]:
    """(message id, our status or None if Twilio's isn't one we track, error) of a verified
    callback; raises BadSignature for a forged one and ConnectorError for a malformed one."""
    assert shop.id is not None
    connector = cast(_SignedStatusCallbacks, messaging_connector(settings, http, "twilio", shop))
    connector.verify_signature(twilio_callback_url(settings, shop.id), params, signature)
    sid, status, error_code = connector.parse_status_callback(params)
    return sid, TWILIO_STATUSES.get(status), f"Twilio error {error_code}" if error_code else None
