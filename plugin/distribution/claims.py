"""Distribution: giving each recipient one code of a campaign (promise 2), and what follows.

    normalise_recipient  an email, a phone number or a customer id → one stable recipient key
    claim                the recipient's code: the one they hold, else the next free one
    claim_link           a signed link that reveals a recipient's code (plugin.distribution.claimlinks)
    export_assignments   recipient, code, link and expiry as CSV, streamed
    pool_status          free, assigned and total codes; alerts when the pool runs low

A claim is idempotent: the same recipient gets the same code on every call, whichever
process answers, because the database holds at most one code per (campaign, recipient). A
campaign whose relative expiry starts at assignment gets its clock started by the claim.
"""

from __future__ import annotations

import csv
import io
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlmodel import Session, col, func, select

from plugin.campaigns import codeends
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import claimstore, poolhealth
from plugin.distribution.claimlinks import DEFAULT_LINK_AGE, ClaimLink, claim_token
from plugin.distribution.claimstore import AssignedCode, CampaignInfo
from plugin.errors import Conflict, NotFound, PluginError
from plugin.formats import codes
from plugin.rules import code_expires_at
from plugin.rules.recipients import recipient_parts
from plugin.store import caches, eventlog
from plugin.store.db import read_cursor, session_reader, session_scope
from plugin.store.models import Code, ReferralProgram, utcnow


class PoolExhausted(PluginError):
    """No free code is left for this recipient; a clear answer, never an empty code.

    409, not 404: Braze renders a 404 as an empty string. Templates test the status and abort
    the message (README). Not a 5xx either: nothing is broken, and retrying won't help until
    the pool is topped up."""

    status = 409
    reason = "pool_exhausted"


class RecipientTaken(Conflict):
    """The recipient already holds a code of this campaign outside the caller's block."""

    reason = "recipient_has_other_code"


# --- claims -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A recipient's code as every caller sees it; `created` is true for the first claim only."""

    code_id: int
    campaign_id: int
    recipient: str
    code: str  # stored form
    display: str
    assigned_at: datetime
    expires_at: datetime | None
    partner_id: int | None
    created: bool
    # The campaign's policy ("claim" or "shareable") and whether the code is in fact bound to
    # one person (a phone recipient binds nothing a checkout can check): the claim page says so.
    binding: str = "shareable"
    bound: bool = False

    @cached_property
    def body(self) -> bytes:
        """The pull endpoint's body: the same bytes on every call for this recipient."""
        return json.dumps(self.as_json(), separators=(",", ":")).encode()

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.display,
            "stored_code": self.code,
            "campaign_id": self.campaign_id,
            "recipient": self.recipient,
            "assigned_at": self.assigned_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def _display(fmt: codes.CodeFormat, stored: str) -> str:
    return codes.display(fmt, stored) if codes.check(fmt, stored) is codes.CodeCheck.OK else stored


def _claim_of(campaign: CampaignInfo, row: AssignedCode, override_text: str | None, created: bool) -> Claim:
    rules = caches.effective_rules(campaign.rules_text, override_text)
    expires = code_expires_at(rules, row.created_at, row.assigned_at, row.expires_at) if rules else row.expires_at
    return Claim(
        code_id=row.id,
        campaign_id=row.campaign_id,
        recipient=row.recipient,
        code=row.code,
        display=_display(caches.code_format(campaign.format_text), row.code),
        assigned_at=row.assigned_at,
        expires_at=expires,
        partner_id=row.partner_id,
        created=created,
        binding=rules.distribution.binding if rules else "shareable",
        bound=row.bound,
    )


def _held(found: tuple[AssignedCode, CampaignInfo, str | None], partner_id: int | None) -> Claim:
    row, campaign, override_text = found
    if partner_id is not None and row.partner_id != partner_id:
        raise RecipientTaken("this recipient already holds a code of this campaign from another pool")
    return _claim_of(campaign, row, override_text, created=False)


# Held codes per process, for the repeat calls an email platform makes per recipient (each part
# of a message, retries). An assignment only changes when a reissue replaces the code; a flush of
# a Code row in this process empties the cache at once (below), and other processes see a change
# within caches.TTL_SECONDS (5 s), as for the other row caches.
_held_codes: weakref.WeakKeyDictionary[Engine, caches.TTLCache[tuple[int, int, str], Claim]] = weakref.WeakKeyDictionary()
HELD_CACHE_SIZE = 50_000


def _held_cache(engine: Engine) -> caches.TTLCache[tuple[int, int, str], Claim]:
    found = _held_codes.get(engine)
    if found is None:
        found = _held_codes[engine] = caches.TTLCache(HELD_CACHE_SIZE)
    return found


@event.listens_for(Session, "after_flush")
def _code_flushed(session: Session, _context: Any) -> None:
    if any(isinstance(obj, Code) for obj in chain(session.new, session.dirty)):
        caches.bump()


def find_claim(engine: Engine, *, shop_id: int, campaign_id: int, recipient: str, partner_id: int | None = None) -> Claim | None:
    """The code the recipient already holds (cached, else one read without a write lock), or None.

    Raises RecipientTaken when a partner asks about a recipient who holds another pool's code."""
    cache = _held_cache(engine)
    key = (shop_id, campaign_id, recipient)
    held = cache.get(key)
    if held is None:
        gen = caches.generation()
        with read_cursor(engine) as reader:
            found = claimstore.lookup_assigned(reader, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient)
        if found is None:
            return None
        row, campaign, override_text = found
        held = _claim_of(campaign, row, override_text, created=False)
        cache.put(key, held, gen)
    if partner_id is not None and held.partner_id != partner_id:
        raise RecipientTaken("this recipient already holds a code of this campaign from another pool")
    return held


def claim(
    session: Session,
    *,
    shop_id: int,
    campaign_id: int,
    recipient: str,
    partner_id: int | None = None,
    now: datetime,
) -> Claim:
    """The recipient's code of the campaign: the one they already hold, else the next free one.

    `recipient` is a normalised key (normalise_recipient). With `partner_id`, only that partner's
    block is drawn from. Under the campaign's `distribution.binding: "claim"` a new claim binds
    the code to the recipient (never a referral program's: a referrer's code is made to be
    passed on). Raises PoolExhausted when no free code is left, RecipientTaken when the recipient holds a
    code of the campaign outside that block."""
    conn = session.connection()
    for _ in range(3):
        with session_reader(session) as reader:
            found = claimstore.lookup_assigned(reader, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient)
            campaign = None if found else claimstore.campaign_info(reader, shop_id=shop_id, campaign_id=campaign_id)
        if found is not None:
            return _held(found, partner_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist in this shop", reason="campaign_not_found")
        if campaign.status != "active":
            raise Conflict(f"campaign {campaign_id} is {campaign.status}; only an active campaign hands out codes",
                           reason="campaign_not_active")  # fmt: skip
        try:
            row = claimstore.take_free_code(
                conn, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, recipient=recipient, now=now
            )
        except claimstore.IntegrityError:
            continue  # the same recipient's racing claim won: answer with its code
        if row is None:
            raise PoolExhausted(
                "no codes are left in this pool",
                details={"campaign_id": campaign_id, "partner_id": partner_id},
            )
        with session_reader(session) as reader:
            override_text = claimstore.batch_override(reader, row.batch_id)
        rules = caches.effective_rules(campaign.rules_text, override_text)
        relative = rules.time.relative_expiry if rules else None
        if relative is not None and relative.after == "assignment":
            expires = now + relative.delta()
            if row.expires_at is None or expires < row.expires_at:
                claimstore.set_expiry(conn, code_id=row.id, expires_at=expires)
                row = replace(row, expires_at=expires)
                # a platform holding an end per code gets this one (the code may be there already)
                codeends.note_end_change(session, shop_id=shop_id, campaign_id=campaign_id, code_id=row.id, now=now)
        if rules is not None and rules.distribution.binding == "claim" and session.get(ReferralProgram, campaign_id) is None:
            row = _bind(conn, row)
        poolhealth.after_claim(
            session, shop_id=shop_id, campaign_id=campaign_id, name=campaign.name, partner_id=partner_id, now=now
        )
        claimed = _claim_of(campaign, row, override_text, created=True)
        eventlog.emit(
            conn,
            shop_id=shop_id,
            type="code.assigned",
            data={"campaign_id": campaign_id, "code": claimed.code, "recipient": recipient, "partner_id": partner_id},
            now=now,
        )
        return claimed
    raise Conflict("the claim kept colliding with another claim; try again", reason="claim_conflict")


def _bind(conn: Connection, row: AssignedCode) -> AssignedCode:
    """Bind a newly claimed code to what a checkout can check of its recipient: an email binds
    the email, `id:<customer>` the customer id; a phone (or a partner's slot) binds nothing."""
    who = recipient_parts(row.recipient)
    if who["email"] is None and who["customer_id"] is None:
        return row
    claimstore.bind(conn, code_id=row.id, email=who["email"], customer_id=who["customer_id"])
    return replace(row, email=who["email"], customer_id=who["customer_id"])


# --- alerts -----------------------------------------------------------------------------------


EMPTY_ALERT_EVERY = timedelta(seconds=30)  # an empty pool answers many calls; count them in batches


def record_exhausted(session: Session, *, shop_id: int, campaign_id: int, partner_id: int | None, now: datetime) -> bool:
    """Raise the pool_empty alert, or count it again if it was last seen over EMPTY_ALERT_EVERY ago.

    A read first, so the calls an empty pool keeps answering don't each write; True if written."""
    key = poolhealth.alert_key("pool_empty", shop_id, campaign_id, partner_id)
    if claimstore.alert_seen_since(session.connection(), open_key=key, since=now - EMPTY_ALERT_EVERY):
        return False
    claimstore.raise_alert(
        session.connection(),
        {
            "shop_id": shop_id,
            "campaign_id": campaign_id,
            "partner_id": partner_id,
            "kind": "pool_empty",
            "message": f"campaign {campaign_id}: a recipient asked for a code and none was left",
            "details": {},
            "open_key": key,
        },
        now,
    )
    if partner_id is None and (count := poolhealth.wants_topup_when_empty(session, campaign_id=campaign_id)):
        poolhealth.queue_topup(session, shop_id=shop_id, campaign_id=campaign_id, count=count)
    return True


def claim_or_alert(engine: Engine, *, shop_id: int, campaign_id: int, recipient: str, partner_id: int | None = None) -> Claim:
    """The recipient's code: a read when they hold one (most pulls), else claim() in its own
    write transaction; an exhausted pool also records its alert, then raises."""
    held = find_claim(engine, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient, partner_id=partner_id)
    if held is not None:
        return held
    try:
        with session_scope(engine) as session:
            return claim(
                session, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient, partner_id=partner_id, now=utcnow()
            )
    except PoolExhausted:
        with session_scope(engine) as session:
            record_exhausted(session, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, now=utcnow())
        raise


# --- pool status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolStatus:
    campaign_id: int
    partner_id: int | None
    total: int
    assigned: int
    free: int


def pool_status(session: Session, *, shop_id: int, campaign_id: int, partner_id: int | None = None) -> PoolStatus:
    get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    stmt = select(func.count(), func.count(col(Code.recipient))).where(
        col(Code.shop_id) == shop_id, col(Code.campaign_id) == campaign_id, col(Code.status) == "active"
    )
    if partner_id is not None:
        stmt = stmt.where(col(Code.partner_id) == partner_id)
    total, assigned = session.exec(stmt).one()
    free = claimstore.free_codes(
        session.connection(), shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, upto=int(total) + 1, now=utcnow()
    )
    return PoolStatus(campaign_id=campaign_id, partner_id=partner_id, total=int(total), assigned=int(assigned), free=free)


# --- links and exports ------------------------------------------------------------------------


def link_expiry(assigned_at: datetime, code_expires: datetime | None) -> datetime:
    """A recipient's claim link lasts as long as their code, and at most DEFAULT_LINK_AGE."""
    latest = assigned_at + DEFAULT_LINK_AGE
    return min(latest, code_expires) if code_expires is not None else latest


def claim_url(public_url: str, secret: str, *, shop_id: int, claim_: Claim) -> str:
    token = claim_token(
        secret,
        ClaimLink(
            shop_id=shop_id,
            campaign_id=claim_.campaign_id,
            recipient=claim_.recipient,
            expires_at=link_expiry(claim_.assigned_at, claim_.expires_at),
            partner_id=claim_.partner_id,
        ),
    )
    return f"{public_url}/claim/{token}"


def slot_links(
    public_url: str, secret: str, *, shop_id: int, campaign_id: int, partner_id: int, slots: range, expires_at: datetime
) -> Iterator[tuple[str, str]]:
    """(slot recipient, link) for a partner's numbered slots: whoever opens slot n gets its code."""
    for n in slots:
        recipient = f"slot:{partner_id}:{n}"
        link = ClaimLink(
            shop_id=shop_id, campaign_id=campaign_id, recipient=recipient, expires_at=expires_at, partner_id=partner_id
        )
        yield recipient, f"{public_url}/claim/{claim_token(secret, link)}"


EXPORT_COLUMNS = ("recipient", "email", "phone", "customer_id", "code", "link", "assigned_at", "expires_at", "partner_id")
EXPORT_PAGE = 5_000
REISSUED = "#reissued:"  # how plugin.checkout.redemptions.reissue_code marks the recipient of the code it replaced


def export_assignments(
    engine: Engine, *, shop_id: int, campaign_id: int, public_url: str, secret: str, partner_id: int | None = None
) -> Iterator[str]:
    """Every recipient's current code in the campaign as CSV text, page by page (keyset on the
    code id). Codes a reissue replaced are left out."""
    with read_cursor(engine) as reader:
        campaign = claimstore.campaign_info(reader, shop_id=shop_id, campaign_id=campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist in this shop", reason="campaign_not_found")
    overrides: dict[int | None, str | None] = {None: None}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield _drain(buffer)
    last_id = 0
    while True:
        with read_cursor(engine) as reader:
            page = claimstore.assigned_page(reader, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id,
                                            after_id=last_id, limit=EXPORT_PAGE)  # fmt: skip
            for row in page:
                if row.batch_id not in overrides:
                    overrides[row.batch_id] = claimstore.batch_override(reader, row.batch_id)
        if not page:
            return
        for row in page:
            if REISSUED in row.recipient:
                continue
            found = _claim_of(campaign, row, overrides[row.batch_id], created=False)
            parts = recipient_parts(found.recipient)
            writer.writerow(
                (
                    found.recipient,
                    parts["email"] or "",
                    parts["phone"] or "",
                    parts["customer_id"] or "",
                    found.display,
                    claim_url(public_url, secret, shop_id=shop_id, claim_=found),
                    found.assigned_at.isoformat(),
                    found.expires_at.isoformat() if found.expires_at else "",
                    found.partner_id or "",
                )
            )
        last_id = page[-1].id
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def default_link_expiry(now: datetime) -> datetime:
    return now + timedelta(days=30)
