"""An unparsable `X-WC-Webhook-Source` is refused with a reason, never a 500."""

from __future__ import annotations

from sqlalchemy import Engine

from plugin.platforms.connections import normalise_store_url
from plugin.settings import Settings
from tests.web.conftest import TestClient, make_app


def test_unparsable_store_urls_are_not_urls() -> None:
    for bad in ("http://[::1", "https://shop.example:99999", "https://[fe80::1%25eth0", "http://:80"):
        assert normalise_store_url(bad) is None


def test_woocommerce_webhook_with_an_unparsable_source_is_a_4xx(engine: Engine, settings: Settings) -> None:
    with TestClient(make_app(settings, engine), raise_server_exceptions=False) as client:
        for source in ("http://[::1", "https://shop.example:99999"):
            answer = client.post(
                "/webhooks/woocommerce",
                content=b'{"id": 1}',
                headers={"X-WC-Webhook-Source": source, "X-WC-Webhook-Signature": "x", "X-WC-Webhook-Topic": "order.created"},
            )
            assert 400 <= answer.status_code < 500, answer.text[:200]
            assert answer.json()["reason"]
