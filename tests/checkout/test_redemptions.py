"""Service-level cases of recording redemptions that the API tests can't stage deterministically."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from plugin.checkout import checkout, redemptions
from plugin.rules import Basket
from plugin.store.db import session_scope
from plugin.store.models import Redemption, utcnow
from tests.web.conftest import BASKET, make_campaign, rules


def _redeem(engine: Engine, shop_id: int, code: str, order_id: str) -> redemptions.RedeemOutcome:
    with session_scope(engine) as session:
        return checkout.redeem(
            session,
            shop_id=shop_id,
            typed=code,
            order_id=order_id,
            basket=Basket.model_validate(BASKET),
            customer=None,
            channel=None,
            checkout_id=None,
            now=utcnow(),
        )


def test_a_retry_that_lost_the_race_answers_with_the_first_row(
    engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry looked for its order before the first request committed, then saw the code
    used up: it must answer with the first request's row, not refuse its own order."""
    _, codes = make_campaign(engine, shop_id, rules(), codes=1)
    first = _redeem(engine, shop_id, codes[0], "order-1")
    original = redemptions.find_redemption
    calls: list[str] = []

    def missed_first_time(session: Session, *, shop_id: int, order_id: str, code: str) -> Redemption | None:
        calls.append(order_id)
        return None if len(calls) == 1 else original(session, shop_id=shop_id, order_id=order_id, code=code)

    monkeypatch.setattr(redemptions, "find_redemption", missed_first_time)
    retry = _redeem(engine, shop_id, codes[0], "order-1")
    assert retry.duplicate is True and retry.redemption.id == first.redemption.id
    with pytest.raises(redemptions.RedemptionRefused) as refused:  # another order is still refused
        _redeem(engine, shop_id, codes[0], "order-2")
    assert refused.value.reason == "already_redeemed"
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Redemption)).one() == 1


def test_an_unknown_code_is_not_found(engine: Engine, shop_id: int) -> None:
    with pytest.raises(redemptions.UnknownCode) as missing:
        _redeem(engine, shop_id, "NO-SUCH-CODE", "order-1")
    assert missing.value.status == 404 and missing.value.reason == "unknown_code"


def test_an_over_limit_webhook_use_is_flagged_counted_and_rolled_back_symmetrically(engine: Engine, shop_id: int) -> None:
    from plugin.store.models import Campaign

    campaign_id, codes = make_campaign(engine, shop_id, rules(), codes=1)
    recorded = []
    for order in ("order-1", "order-2"):  # the platform let a single-use code through twice
        with session_scope(engine) as session:
            outcome = redemptions.record_redemption(
                session, shop_id=shop_id, code=codes[0], order_id=order, now=utcnow(), amount=500, customer_id="c1"
            )
            recorded.append((outcome.redemption.id, outcome.redemption.flagged_reason))
    assert [flag for _, flag in recorded] == [None, "already_redeemed"]
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (campaign.redemption_count, campaign.discount_total) == (2, 1000)
    for redemption_id, _ in recorded:
        with session_scope(engine) as session:
            redemptions.rollback_redemption(session, shop_id=shop_id, redemption_id=redemption_id or 0, now=utcnow())
    with Session(engine) as session:
        campaign = session.get_one(Campaign, campaign_id)
        assert (campaign.redemption_count, campaign.discount_total) == (0, 0)
