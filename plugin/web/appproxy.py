"""Shopify's App Proxy: the storefront script on a Shopify shop talks to us through the shop's own
domain, so the page holds no key and needs no CORS.

Shopify forwards `https://<shop>/apps/couponry/<rest>` to `<public url>/proxy/shopify/<rest>`
(manifest.json `platforms.shopify.app_proxy`), adding `shop`, `logged_in_customer_id`,
`path_prefix`, `timestamp` and `signature` to the query. Each request's signature (keyed with the
app's client secret) and freshness are checked before anything else, and the shop it names must
have the app installed; a claim link must then be one of that shop's.

    GET  /proxy/shopify/claims/{token}                   the link's code (claimed on first use)
    GET  /proxy/shopify/claims/{token}/check?basket=...  the link's code on this basket (JSON)
    POST /proxy/shopify/claims/{token}/check             the same, the basket in a JSON body

The script sends the basket in the query: the query is what Shopify signs, and reports differ
on whether the proxy forwards request bodies, so GET is the form that relies on nothing
undocumented; POST is accepted for callers that have more than a URL holds.

Nothing here takes a typed code, so the proxy is no oracle for guessing codes and counts no
guesses: a basket a live code does not meet yet is a nudge (`plugin.checkout.onsite`).
Answers are personal: `Cache-Control: no-store`.
"""

from __future__ import annotations

import time

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.errors import AuthError, BadSignature
from connectors.shopify import AppProxyRequest, ShopifyConnector
from plugin.checkout import onsite
from plugin.distribution.claimlinks import ClaimLink
from plugin.errors import InvalidInput, NotFound, PluginError
from plugin.platforms.connections import connector_config
from plugin.rules import Basket
from plugin.settings import Settings
from plugin.shops.shops import installed_shop_id
from plugin.store.models import utcnow
from plugin.store.units import in_thread
from plugin.web import schemas
from plugin.web.problems import problem
from plugin.web.storefront import no_store, shops_link

PREFIX = "/proxy/shopify"  # manifest.json platforms.shopify.app_proxy.url


class ShopNotInstalled(NotFound):
    reason = "shop_not_found"


async def _verified(request: Request) -> tuple[int, AppProxyRequest]:
    """The shop id and the request Shopify signed; BadSignature, AuthError or ShopNotInstalled."""
    settings: Settings = request.app.state.settings
    http: httpx.AsyncClient = request.app.state.http
    connector = ShopifyConnector(http, connector_config(settings, "shopify"))
    signed = connector.verify_app_proxy_query(request.query_params, now=time.time())
    engine = request.app.state.engine
    shop_id = await in_thread(engine, lambda: installed_shop_id(engine, "shopify", signed.shop))
    if shop_id is None:
        raise ShopNotInstalled("Couponry is not installed on this shop")
    return shop_id, signed


async def _link(request: Request) -> tuple[ClaimLink, AppProxyRequest]:
    shop_id, signed = await _verified(request)
    return shops_link(request.app.state.settings, request.path_params["token"], shop_id=shop_id), signed


def _answered(exc: Exception) -> Response:
    if isinstance(exc, BadSignature):
        return problem(401, "bad_signature", "This request was not signed by Shopify's App Proxy, or is too old.")
    if isinstance(exc, AuthError):
        return problem(503, "app_proxy_not_configured", "The app's Shopify client secret is not configured.")
    assert isinstance(exc, PluginError)
    return problem(exc.status, exc.reason, exc.message, details=exc.details or None, headers={"Cache-Control": "no-store"})


async def reveal(request: Request) -> Response:
    try:
        link, _ = await _link(request)
        engine = request.app.state.engine
        found = await in_thread(engine, lambda: onsite.reveal(engine, link))
    except (BadSignature, AuthError, PluginError) as exc:
        return _answered(exc)
    return no_store(onsite.revealed_json(found))


async def check(request: Request) -> Response:
    try:
        link, signed = await _link(request)  # before reading the body: nothing unsigned is parsed
        body = await _check_request(request)
        engine = request.app.state.engine
        decision = await in_thread(
            engine, lambda: onsite.check(engine, link, body.basket, now=utcnow(), signed_in=signed.customer_id)
        )
    except (BadSignature, AuthError, PluginError) as exc:
        return _answered(exc)
    return no_store(onsite.checked_json(decision))


MAX_QUERY_BASKET = 16 * 1024  # characters of JSON in the query (a URL, through Shopify, stays well under its limits)


async def _check_request(request: Request) -> schemas.ClaimCheckRequest:
    if request.method == "POST":
        return schemas.ClaimCheckRequest.model_validate_json(await request.body() or b"{}")
    raw = request.query_params.get("basket")
    if raw is None or len(raw) > MAX_QUERY_BASKET:
        raise InvalidInput(
            f"send the basket as JSON in the `basket` query parameter (at most {MAX_QUERY_BASKET} characters)",
            reason="invalid_basket",
            details={"field": "basket"},
        )
    return schemas.ClaimCheckRequest(basket=Basket.model_validate_json(raw))


def routes() -> list[Route]:
    return [
        Route(f"{PREFIX}/claims/{{token}}", reveal, methods=["GET"], name="appProxyReveal"),
        Route(f"{PREFIX}/claims/{{token}}/check", check, methods=["GET", "POST"], name="appProxyCheck"),
    ]
