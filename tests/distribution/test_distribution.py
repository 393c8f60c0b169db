"""Claims (promise 2), recipient keys, relative expiry from assignment, alerts, claim links and
the assignments export, through the services on the real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from plugin.distribution import claimlinks
from plugin.distribution import claims as distribution
from plugin.distribution.claims import PoolExhausted
from plugin.errors import InvalidInput
from plugin.rules.recipients import normalise_recipient
from plugin.store import caches
from plugin.store.db import session_scope
from plugin.store.models import Alert, Code, Redemption, Reservation, utcnow
from tests.web.conftest import make_campaign, rules

SECRET = "test-secret-key-0123456789"


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """PostgreSQL tests share one engine and reuse ids after each truncation: start each test
    without the previous test's cached rows (a real database never reuses an id)."""
    caches.bump()


def claim(engine: Engine, shop_id: int, campaign_id: int, recipient: str, **kw: object) -> distribution.Claim:
    with session_scope(engine) as session:
        return distribution.claim(session, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient, now=utcnow(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("+44 (0)20-7946 0958", "+442079460958"),  # the trunk 0 is dropped
        ("+020 7946 0958", None),  # no country code starts with 0
        ("+44 20 7946 0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
        ("id:cust-42", "id:cust-42"),
        ("ID: cust-42", "id:cust-42"),
        ("not an email@", None),
        ("12", None),
        ("", None),
    ],
)
def test_recipients_normalise_to_one_key(raw: str, key: str | None) -> None:
    if key is None:
        with pytest.raises(InvalidInput):
            normalise_recipient(raw)
    else:
        assert normalise_recipient(raw) == key


def test_typed_recipients() -> None:
    assert normalise_recipient(email=" A@B.io") == "a@b.io"
    assert normalise_recipient(phone="+1 555 555 0100") == "+15555550100"
    assert normalise_recipient(customer_id=" 7 ") == "id:7"
    with pytest.raises(InvalidInput):
        normalise_recipient(email="a@b.io", phone="+15555550100")


def test_the_same_recipient_gets_the_same_code(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=5)
    first = claim(engine, shop_id, campaign_id, "ann@example.com")
    again = claim(engine, shop_id, campaign_id, "ann@example.com")
    other = claim(engine, shop_id, campaign_id, "bob@example.com")
    assert first.created and not again.created
    assert (again.code, again.assigned_at) == (first.code, first.assigned_at)
    assert again.as_json() == first.as_json()
    assert other.code != first.code
    with Session(engine) as session:
        row = session.exec(select(Code).where(col(Code.code) == first.code)).one()
    assert row.recipient == "ann@example.com" and row.assigned_at == first.assigned_at


def test_an_exhausted_pool_answers_clearly_and_alerts(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    claim(engine, shop_id, campaign_id, "a@example.com")
    with Session(engine) as session:  # under the low-stock threshold after the first claim
        low = session.exec(select(Alert).where(col(Alert.kind) == "pool_low")).one()
    assert low.campaign_id == campaign_id and low.details["free"] == 1
    claim(engine, shop_id, campaign_id, "b@example.com")
    with pytest.raises(PoolExhausted) as caught:
        distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient="c@example.com")
    assert caught.value.reason == "pool_exhausted" and caught.value.status == 409
    with Session(engine) as session:
        empty = session.exec(select(Alert).where(col(Alert.kind) == "pool_empty")).one()
        low = session.exec(select(Alert).where(col(Alert.kind) == "pool_low")).one()
    assert empty.campaign_id == campaign_id and empty.resolved_at is None
    assert low.count == 2  # raised once, seen again: one open alert, counted
    # a recipient who already holds a code still gets it from an empty pool
    assert claim(engine, shop_id, campaign_id, "a@example.com").created is False


def _spoil_all_but_three(engine: Engine, shop_id: int, campaign_id: int) -> set[str]:
    """Leave 3 of the campaign's 8 codes free (one of them was held, but the hold lapsed): the
    others were used, are held, voided, expired, or were on an order later cancelled."""
    now = utcnow()
    with session_scope(engine) as session:
        codes = session.exec(select(Code).where(col(Code.campaign_id) == campaign_id).order_by(col(Code.id))).all()
        used, held, voided, expired, rolled_back, lapsed_hold, free, also_free = codes
        used.uses = 1
        voided.status = "voided"
        expired.expires_at = now - timedelta(minutes=1)
        session.add_all([used, voided, expired])
        session.add(Reservation(shop_id=shop_id, code_id=held.id or 0, checkout_id="c1", expires_at=now + timedelta(minutes=10)))
        session.add(
            Reservation(shop_id=shop_id, code_id=lapsed_hold.id or 0, checkout_id="c2", expires_at=now - timedelta(seconds=1))
        )
        session.add(
            Redemption(
                shop_id=shop_id,
                code=rolled_back.code,
                order_id="1001",
                code_id=rolled_back.id,
                campaign_id=campaign_id,
                status="rolled_back",
                rolled_back_at=now,
            )
        )
        return {lapsed_hold.code, free.code, also_free.code}


def test_only_live_codes_are_handed_out(engine: Engine, shop_id: int) -> None:
    """Promise 9: claims (and so pulls and pushes) hand out only codes nobody else can use."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=8)
    live = _spoil_all_but_three(engine, shop_id, campaign_id)
    with Session(engine) as session:
        assert distribution.pool_status(session, shop_id=shop_id, campaign_id=campaign_id).free == 3
    handed = {claim(engine, shop_id, campaign_id, f"r{i}@example.com").code for i in range(3)}
    assert handed == live
    with pytest.raises(PoolExhausted):
        distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient="late@example.com")


def test_partners_are_allocated_only_live_codes(engine: Engine, shop_id: int) -> None:
    from plugin.distribution import partners

    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=8)
    live = _spoil_all_but_three(engine, shop_id, campaign_id)
    with session_scope(engine) as session:
        partner_id = partners.create_partner(session, shop_id=shop_id, name="Blog").id or 0
        assert partners.allocate(session, shop_id=shop_id, campaign_id=campaign_id, partner_id=partner_id, count=8) == 3
    with Session(engine) as session:
        block = session.exec(select(Code.code).where(col(Code.partner_id) == partner_id)).all()
    assert set(block) == live


def test_relative_expiry_starts_at_assignment(engine: Engine, shop_id: int) -> None:
    expiry = {"relative_expiry": {"after": "assignment", "duration": 48, "unit": "hours"}}
    campaign_id, _ = make_campaign(engine, shop_id, rules(time=expiry), codes=2)
    before = utcnow()
    got = claim(engine, shop_id, campaign_id, "a@example.com")
    assert got.expires_at is not None
    assert got.expires_at == got.assigned_at + timedelta(hours=48)
    assert got.assigned_at >= before
    with Session(engine) as session:
        assert session.exec(select(Code.expires_at).where(col(Code.code) == got.code)).one() == got.expires_at


def test_inactive_campaigns_hand_out_nothing_new(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=2)
    held = claim(engine, shop_id, campaign_id, "a@example.com")
    from plugin.campaigns import campaigns

    with session_scope(engine) as session:
        campaigns.change_status(session, shop_id=shop_id, campaign_id=campaign_id, action="pause")
    assert claim(engine, shop_id, campaign_id, "a@example.com").code == held.code
    with pytest.raises(distribution.Conflict):
        claim(engine, shop_id, campaign_id, "b@example.com")


def test_claims_race_for_codes_and_recipients(engine: Engine, shop_id: int) -> None:
    """1,000 concurrent claims (some repeated recipients) for 500 codes, on threads."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=500)
    people = [f"person{i}@example.com" for i in range(800)]
    calls = people + people[:200]  # 200 people claim twice, at the same time as themselves
    barrier = threading.Barrier(16)
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def one(recipient: str) -> None:
        try:
            got = distribution.claim_or_alert(engine, shop_id=shop_id, campaign_id=campaign_id, recipient=recipient)
            answer: str | None = got.code
        except PoolExhausted:
            answer = None
        with lock:
            results.append((recipient, answer))

    def worker(chunk: list[str]) -> None:
        barrier.wait()
        for recipient in chunk:
            one(recipient)

    chunks = [calls[i::16] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, chunks))
    assert len(results) == 1000
    by_person: dict[str, set[str | None]] = {}
    for person, code in results:
        by_person.setdefault(person, set()).add(code)
    holders = {p: {c for c in codes if c} for p, codes in by_person.items()}
    winners = {p: next(iter(c)) for p, c in holders.items() if c}
    assert all(len(c) <= 1 for c in holders.values())  # nobody got two codes
    assert len(winners) == 500 and len(set(winners.values())) == 500  # every code to one person
    refused = Counter(code is None for _, code in results)[True]
    assert refused == 1000 - 500 - sum(1 for p in people[:200] if p in winners)
    with Session(engine) as session:
        assigned = session.exec(
            select(func.count(), func.count(func.distinct(Code.recipient))).where(col(Code.recipient).is_not(None))
        ).one()
        rows = dict(session.exec(select(Code.recipient, Code.code).where(col(Code.recipient).is_not(None))).all())
    assert tuple(assigned) == (500, 500)
    assert rows == winners


def test_claim_links_reveal_only_their_recipient(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    got = claim(engine, shop_id, campaign_id, "a@example.com")
    url = distribution.claim_url("https://shop.test", SECRET, shop_id=shop_id, claim_=got)
    assert url == distribution.claim_url("https://shop.test", SECRET, shop_id=shop_id, claim_=got)  # deterministic
    token = url.rsplit("/", 1)[1]
    link = claimlinks.read_claim_token(SECRET, token, now=utcnow())
    assert (link.shop_id, link.campaign_id, link.recipient) == (shop_id, campaign_id, "a@example.com")
    with pytest.raises(claimlinks.BadLink):
        claimlinks.read_claim_token("another-secret-key-0123456789", token, now=utcnow())
    with pytest.raises(claimlinks.ExpiredLink):
        claimlinks.read_claim_token(SECRET, token, now=link.expires_at)
    _, _, signature = token.partition(".")
    swapped = claimlinks.claim_token(
        "attacker-secret", claimlinks.ClaimLink(shop_id, campaign_id, "b@example.com", link.expires_at)
    )
    with pytest.raises(claimlinks.BadLink):  # another recipient's payload under this signature
        claimlinks.read_claim_token(SECRET, swapped.partition(".")[0] + "." + signature, now=utcnow())


def test_assignments_export_streams_recipients_codes_links(engine: Engine, shop_id: int) -> None:
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=4)
    claims = [claim(engine, shop_id, campaign_id, r) for r in ("a@example.com", "+15555550100", "id:77")]
    text = "".join(
        distribution.export_assignments(
            engine, shop_id=shop_id, campaign_id=campaign_id, public_url="https://s.test", secret=SECRET
        )
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["recipient"] for r in rows] == ["a@example.com", "+15555550100", "id:77"]
    assert [r["code"] for r in rows] == [c.display for c in claims]
    assert (rows[1]["phone"], rows[2]["customer_id"], rows[0]["email"]) == ("+15555550100", "77", "a@example.com")
    for row, got in zip(rows, claims, strict=True):
        link = claimlinks.read_claim_token(SECRET, row["link"].rsplit("/", 1)[1], now=utcnow())
        assert link.recipient == got.recipient


@pytest.mark.postgres
def test_a_recipient_racing_themself_gets_the_winners_code(engine: Engine, shop_id: int) -> None:
    """Two first claims of one recipient at once: the loser's UPDATE meets the unique index,
    waits for the winner's commit, fails, and answers with the winner's code."""
    campaign_id, _ = make_campaign(engine, shop_id, rules(), codes=3)
    started = threading.Event()
    with session_scope(engine) as winner:
        first = distribution.claim(winner, shop_id=shop_id, campaign_id=campaign_id, recipient="a@example.com", now=utcnow())
        with ThreadPoolExecutor(1) as pool:
            loser = pool.submit(lambda: (started.set(), claim(engine, shop_id, campaign_id, "a@example.com"))[1])
            started.wait()
            time.sleep(0.3)  # the loser is now blocked on the winner's uncommitted row
            assert not loser.done()
            winner.commit()
            second = loser.result(timeout=10)
    assert (second.code, second.created) == (first.code, False)
    with Session(engine) as session:
        assert session.exec(select(func.count()).where(col(Code.recipient) == "a@example.com")).one() == 1
