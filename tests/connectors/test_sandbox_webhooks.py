"""Sandbox webhook parsing (the hot path of `POST /webhooks/sandbox`), and the orjson-with-json
fallback every shop connector parses webhook bodies with."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import json_body
from connectors.base import CodeUse, ConnectorConfig, Delivery, OrderEvent, ShippingAddress
from connectors.errors import Rejected
from connectors.sandbox import SandboxConnector

ORDER = {
    "id": 100001,
    "status": "paid",
    "email": "shopper1@example.com",
    "customer_id": "c1",
    "currency": "USD",
    "subtotal": "80.00",
    "total": "72.00",
    "channel": "web",
    "discount_codes": [{"code": "SAVE-1", "amount": "8.00"}],
    "created_at": "2025-01-01T00:00:00+00:00",
}
HEADERS = {"X-Sandbox-Topic": "orders/paid", "X-Sandbox-Shop-Domain": "local.couponry.test", "X-Sandbox-Delivery-Id": "d-1"}


def connector() -> SandboxConnector:
    return SandboxConnector(httpx.AsyncClient(), ConnectorConfig(webhook_secret="hush"))


def test_an_order_delivery_becomes_one_event() -> None:
    delivery = connector().parse_webhook(HEADERS, json.dumps(ORDER).encode())
    event = OrderEvent(
        platform="sandbox",
        shop="local.couponry.test",
        kind="paid",
        order_id="100001",
        codes=(CodeUse(code="SAVE-1", amount=800),),
        customer_id="c1",
        email="shopper1@example.com",
        subtotal=8000,
        total=7200,
        net_subtotal=7200,  # after the discount; the sandbox charges no shipping or tax
        currency="USD",
        channel="web",
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
        delivery_id="d-1",
    )
    assert delivery == Delivery(delivery_id="d-1", topic="orders/paid", shop="local.couponry.test", kind="order", events=(event,))


def test_lower_case_headers_and_a_shipping_address() -> None:
    headers = {name.lower(): value for name, value in HEADERS.items()}
    address = {"address1": "1 Main St", "address2": None, "zip": "10001", "country_code": "US"}
    delivery = connector().parse_webhook(headers, json.dumps({**ORDER, "currency": "jpy", "shipping_address": address}).encode())
    (event,) = delivery.events
    assert (delivery.delivery_id, delivery.shop, event.currency, event.subtotal) == ("d-1", "local.couponry.test", "JPY", 80)
    assert event.shipping_address == ShippingAddress("1 Main St", "", "10001", "US")


def test_identifying_agrees_with_parsing() -> None:
    body = json.dumps(ORDER).encode()
    head, parsed = connector().identify_webhook(HEADERS, body), connector().parse_webhook(HEADERS, body)
    assert head == Delivery(delivery_id="d-1", topic="orders/paid", shop="local.couponry.test", kind="order")
    assert (parsed.delivery_id, parsed.topic, parsed.shop, parsed.kind) == (head.delivery_id, head.topic, head.shop, head.kind)


def test_other_topics_are_not_parsed() -> None:
    headers = {**HEADERS, "X-Sandbox-Topic": "shop/update"}
    expected = Delivery(delivery_id="d-1", topic="shop/update", shop="local.couponry.test", kind="other")
    assert connector().parse_webhook(headers, b"not json") == expected == connector().identify_webhook(headers, b"not json")


@pytest.mark.parametrize("read", ["parse_webhook", "identify_webhook"])
def test_a_delivery_without_an_id_is_rejected(read: str) -> None:
    headers = {name: value for name, value in HEADERS.items() if name != "X-Sandbox-Delivery-Id"}
    with pytest.raises(Rejected, match="missing X-Sandbox-Delivery-Id header"):
        getattr(connector(), read)(headers, json.dumps(ORDER).encode())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "webhook body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"{nope", "webhook body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b'{"id": 1} x', "webhook body is not JSON: Extra data: line 1 column 11 (char 10)"),
        (b'"\xff"', "webhook body is not JSON: 'utf-8' codec can't decode byte 0xff in position 1: invalid start byte"),
    ],
)
def test_a_body_that_is_not_json_is_rejected_as_before(body: bytes, message: str) -> None:
    with pytest.raises(Rejected) as caught:
        connector().parse_webhook(HEADERS, body)
    assert str(caught.value) == message  # json's own words, as before orjson


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": 1, "total": "5.00"}',
        b'{"id": 1, "total": "5.00", "total": "6.00"}',
        b'{"id": 1, "email": "caf\\u00e9 \\ud83d\\ude00 \\u0000"}',
        b'{"id": 1, "email": "\\ud800"}',  # a lone surrogate: orjson refuses it, json takes it
        b'\xef\xbb\xbf{"id": 1}',  # a UTF-8 byte order mark: the same
        '{"id": 1}'.encode("utf-16"),  # the same
        b'{"id": 1, "weight": 1e400, "n": -0.0}',  # past a double: the same
        b'{"id": 18446744073709551615, "x": -9223372036854775808}',
        b'{"id": NaN}',
        b'  {"id": 1}\n',
        b"[]",
        b'"text"',
    ],
)
def test_bodies_read_as_json_reads_them(body: bytes) -> None:
    assert repr(json_body.loads(body)) == repr(json.loads(body))  # repr: nan != nan


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_random_documents_read_as_json_reads_them(value: Any, ensure_ascii: bool) -> None:
    body = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    assert repr(json_body.loads(body)) == repr(json.loads(body))
