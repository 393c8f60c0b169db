"""Sandbox page: test orders placed, cancelled and refunded through the sandbox store's own
operations (each queues its signed webhook), only for a sandbox shop where the store is
mounted; another shop's orders answer 404; a refused code is shown beside its field."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.sandbox import store as sandbox
from plugin.settings import Settings
from plugin.store.models import AuditEvent
from plugin.store.sandbox_models import SandboxCode, SandboxDelivery, SandboxOrder
from tests.web.admin.conftest import add_shop, form_token, session_token, set_up_owner
from tests.web.conftest import make_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

DOMAIN = "local.couponry.test"


@pytest.fixture
def sandboxed(admin_settings: Settings, engine: Engine) -> Iterator[TestClient]:
    settings = replace(admin_settings, sandbox_enabled=True)
    with TestClient(make_app(settings, engine), base_url="http://127.0.0.1:8000", follow_redirects=False) as client:
        yield client


def sandbox_code(engine: Engine, shop: str, code: str) -> None:
    with Session(engine) as session:
        discount, _ = sandbox.save_discount(session, shop, {"title": "t", "kind": "percentage", "value": 10, "uses_per_code": 1})
        assert discount.id is not None
        sandbox.add_codes(session, shop, discount.id, [{"code": code}], 250)
        session.commit()


def test_place_cancel_and_refund_test_orders(
    sandboxed: TestClient, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(sandboxed, admin_settings, shop_id)
    sandbox_code(engine, DOMAIN, "SAVE10A")
    page = sandboxed.get("/admin/sandbox")
    assert (
        page.status_code == 200 and "No test orders yet" in page.text and 'href="/admin/sandbox" aria-current="page"' in page.text
    )
    token = form_token(page.text)
    placed = sandboxed.post(
        "/admin/sandbox/orders", data={"csrf_token": token, "codes": "save10a", "subtotal": "80.00", "currency": "usd"}
    )
    assert placed.status_code == 303
    used = sandboxed.post(
        "/admin/sandbox/orders", data={"csrf_token": token, "codes": "SAVE10A", "subtotal": "80.00", "currency": "USD"}
    )
    assert used.status_code == 422 and re.search(
        r'id="e-codes" role="alert">discount code \S+SAVE10A\S+ has reached its usage limit', used.text
    )
    with Session(engine) as session:
        order = session.exec(select(SandboxOrder).where(col(SandboxOrder.shop) == DOMAIN)).one()
        assert (order.subtotal, order.discount_total, order.currency) == (8000, 800, "USD")
    listing = sandboxed.get("/admin/sandbox").text
    assert re.search(rf'id="order-{order.id}">.*?paid.*?SAVE10A.*?USD 80.00.*?USD 8.00', listing, re.S)
    assert sandboxed.post(f"/admin/sandbox/orders/{order.id}/refund", data={"csrf_token": "forged"}).status_code == 403
    assert sandboxed.post(f"/admin/sandbox/orders/{order.id}/refund", data={"csrf_token": token}).status_code == 303
    again = sandboxed.post(f"/admin/sandbox/orders/{order.id}/cancel", data={"csrf_token": token})
    assert again.status_code == 409 and "already refunded" in again.text
    assert sandboxed.post(f"/admin/sandbox/orders/{order.id}/explode", data={"csrf_token": token}).status_code == 404
    with Session(engine) as session:
        topics = session.exec(
            select(SandboxDelivery.topic).where(col(SandboxDelivery.shop) == DOMAIN).order_by(col(SandboxDelivery.id))
        ).all()
        assert topics == ["orders/create", "orders/refunded"]
        assert session.exec(select(SandboxCode.usage_count)).one() == 0  # the use came back
        actions = session.exec(select(AuditEvent.action).where(col(AuditEvent.shop_id) == shop_id)).all()
        assert "sandbox.order_placed" in actions and "sandbox.order_refund" in actions


def test_bad_order_input_is_shown_beside_its_field(sandboxed: TestClient, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(sandboxed, admin_settings, shop_id)
    token = form_token(sandboxed.get("/admin/sandbox").text)
    bad = sandboxed.post("/admin/sandbox/orders", data={"csrf_token": token, "codes": "", "subtotal": "lots", "currency": "USD"})
    assert bad.status_code == 422 and 'id="e-subtotal"' in bad.text and 'value="lots"' in bad.text
    cur = sandboxed.post("/admin/sandbox/orders", data={"csrf_token": token, "codes": "", "subtotal": "5", "currency": "dollars"})
    assert cur.status_code == 422 and 'id="e-currency"' in cur.text
    unknown = sandboxed.post(
        "/admin/sandbox/orders", data={"csrf_token": token, "codes": "NOPE", "subtotal": "5", "currency": "USD"}
    )
    assert unknown.status_code == 422 and "is not valid" in unknown.text


def test_another_shops_orders_answer_404(
    sandboxed: TestClient, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    with Session(engine) as session:
        theirs = sandbox.place_order(session, "other.couponry.test", codes=[], subtotal=1000)
        session.commit()
        assert theirs.id is not None
        their_id = theirs.id
    set_up_owner(sandboxed, admin_settings, shop_id)
    token = form_token(sandboxed.get("/admin/sandbox").text)
    assert f'id="order-{their_id}"' not in sandboxed.get("/admin/sandbox").text
    assert sandboxed.post(f"/admin/sandbox/orders/{their_id}/cancel", data={"csrf_token": token}).status_code == 404
    with Session(engine) as session:
        assert session.get_one(SandboxOrder, their_id).status == "paid"


def test_the_list_pages_by_keyset(
    sandboxed: TestClient, engine: Engine, admin_settings: Settings, shop_id: int, monkeypatch
) -> None:
    from plugin.web.admin.pages import sandbox as page

    monkeypatch.setattr(page, "PAGE_SIZE", 2)
    with Session(engine) as session:
        ids = [sandbox.place_order(session, DOMAIN, codes=[], subtotal=100 * n).id for n in range(1, 4)]
        session.commit()
    set_up_owner(sandboxed, admin_settings, shop_id)
    first = sandboxed.get("/admin/sandbox").text
    assert f'id="order-{ids[2]}"' in first and f'id="order-{ids[0]}"' not in first
    link = re.search(r'href="([^"]+)" rel="next"', first)
    assert link and f"before={ids[1]}" in link[1]
    second = sandboxed.get(link[1].replace("&amp;", "&")).text
    assert f'id="order-{ids[0]}"' in second and f'id="order-{ids[1]}"' not in second and 'rel="next"' not in second


def test_not_mounted_or_not_a_sandbox_shop_answers_404(web, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id)  # admin_settings: the sandbox store is off
    page = web.get("/admin/")
    assert 'href="/admin/sandbox"' not in page.text
    assert web.get("/admin/sandbox").status_code == 404
    assert web.post("/admin/sandbox/orders", data={"csrf_token": form_token(page.text), "subtotal": "1"}).status_code == 404


def test_a_shopify_shop_has_no_sandbox(sandboxed: TestClient, engine: Engine) -> None:
    add_shop(engine, "shopify", "test-shop.myshopify.com")
    answer = sandboxed.get("/admin/sandbox", params={"id_token": session_token(), "shop": "test-shop.myshopify.com"})
    assert answer.status_code == 404
    assert sandboxed.get("/admin/sandbox").status_code == 303  # no credential: to sign in
