"""Twilio's delivery-status callbacks update the recipient's delivery, only when signed."""

from __future__ import annotations

import dataclasses

from sqlalchemy import Engine
from sqlmodel import Session, select

from connectors.twilio import compute_signature
from plugin.distribution import pushes
from plugin.settings import Settings
from plugin.store.db import session_scope
from plugin.store.models import RecipientDelivery
from tests.web.conftest import TestClient, make_app

TOKEN = "auth-token"
SID = "AC" + "0" * 32


def _settings(settings: Settings) -> Settings:
    config = {"twilio": {"api_key": TOKEN, "account_sid": SID, "from": "+15005550006"}}
    return dataclasses.replace(settings, connector_config=config, public_url="https://coupons.example.com")


def _delivery(engine: Engine, shop_id: int, message_sid: str) -> None:
    with session_scope(engine) as session:
        session.add(
            RecipientDelivery(
                shop_id=shop_id, campaign_id=1, code_id=1, recipient="+15555550100", provider="twilio",
                status="sent", provider_id=message_sid,
            )
        )  # fmt: skip


def _status(engine: Engine) -> tuple[str, str | None]:
    with Session(engine) as session:
        row = session.exec(select(RecipientDelivery)).one()
        return row.status, row.error


def _post(client: TestClient, settings: Settings, shop_id: int, params: dict[str, str], signature: str | None = None):  # type: ignore[no-untyped-def]
    url = pushes.twilio_callback_url(settings, shop_id)
    sig = signature if signature is not None else compute_signature(TOKEN, url, params)
    return client.post(f"/callbacks/twilio/{shop_id}", data=params, headers={"X-Twilio-Signature": sig})


def test_signed_callbacks_update_the_delivery_and_final_states_stick(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = _settings(settings)
    _delivery(engine, shop_id, "SM" + "1" * 32)
    with TestClient(make_app(settings, engine)) as client:
        delivered = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "AccountSid": SID}
        assert _post(client, settings, shop_id, delivered).status_code == 204
        assert _status(engine) == ("delivered", None)
        late = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "sent", "AccountSid": SID}
        assert _post(client, settings, shop_id, late).status_code == 204
        assert _status(engine) == ("delivered", None)  # a late "sent" doesn't undo delivery


def test_undelivered_records_twilios_error_code(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = _settings(settings)
    _delivery(engine, shop_id, "SM" + "2" * 32)
    with TestClient(make_app(settings, engine)) as client:
        params = {"MessageSid": "SM" + "2" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003"}
        assert _post(client, settings, shop_id, params).status_code == 204
    assert _status(engine) == ("failed", "Twilio error 30003")


def test_forged_or_unsigned_callbacks_change_nothing(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = _settings(settings)
    _delivery(engine, shop_id, "SM" + "3" * 32)
    params = {"MessageSid": "SM" + "3" * 32, "MessageStatus": "failed"}
    with TestClient(make_app(settings, engine)) as client:
        forged = _post(client, settings, shop_id, params, signature="bm90IGEgc2lnbmF0dXJl")
        assert forged.status_code == 401 and forged.json()["reason"] == "bad_signature"
        assert _post(client, settings, shop_id, params, signature="").status_code == 401
        # signed for another shop's URL: refused here
        other_url_sig = compute_signature(TOKEN, pushes.twilio_callback_url(settings, shop_id + 1), params)
        assert _post(client, settings, shop_id, params, signature=other_url_sig).status_code == 401
        assert client.post(f"/callbacks/twilio/{shop_id + 999}", data=params).status_code == 404
    assert _status(engine) == ("sent", None)


def test_an_absurd_shop_id_is_a_404_not_a_500(engine: Engine, shop_id: int, settings: Settings) -> None:
    settings = _settings(settings)
    with TestClient(make_app(settings, engine), raise_server_exceptions=False) as client:
        for bad in ("9" * 60_000, "2147483648", "١٢"):  # 60 KB of digits (httpx caps URLs at 64 KB), past the column, non-ASCII
            answer = client.post(f"/callbacks/twilio/{bad}", data={"MessageSid": "SM" + "1" * 32})
            assert answer.status_code == 404, answer.text[:200]
            assert answer.json()["reason"] == "not_found"  # as for any unknown shop
