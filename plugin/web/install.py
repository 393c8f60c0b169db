"""Install routes, one flow per platform; the shop's credentials are stored by plugin.platforms.installs.

Shopify (authorization code grant, shared/research/shopify.md §5.1):
    GET /install/shopify            verify the query's HMAC and shop, then redirect to the grant
                                    screen with a signed `state` (also set as a cookie)
    GET /install/shopify/callback   verify HMAC, shop and state (cookie == query, signed, fresh),
                                    exchange the code, check the scopes, store; redirect to /admin
WooCommerce (/wc-auth/v1/authorize, platforms.md §1.1):
    GET  /install/woocommerce?store_url=   check the store (https, public address, a WooCommerce
                                           REST index), then a page naming it with the link to
                                           its key approval (a signed user_id inside)
    POST /install/woocommerce/callback     the keys, as JSON: user_id verified and spent once,
                                           keys tried, stored
    GET  /install/woocommerce/return       where the merchant's browser lands afterwards
BigCommerce (app callbacks, platforms.md §2.1):
    GET /install/bigcommerce/callback      exchange the code (before answering the browser)
    GET /install/bigcommerce/load          signed_payload_jwt verified; into the admin
    GET /install/bigcommerce/uninstall     signed_payload_jwt verified; the shop is uninstalled
    GET /install/bigcommerce/remove_user   signed_payload_jwt verified; recorded

Every signed value has its own itsdangerous salt and a `max_age`; the one-time ones (Shopify's
`state`, WooCommerce's `user_id`) carry a nonce spent in the database (`installs.spend_nonce`),
so a replayed callback is refused on every web process.

The WooCommerce store is the one host here a stranger chooses, so it is only ever reached
through `app.state.store_http` (connectors.egress: public addresses, checked again at connect
time), and our errors name the problem, never quote what the store answered.

The platforms call us back over HTTPS only: with an http COUPONRY_PUBLIC_URL an install is a
409 naming that setting (and start-up logs it once, `warn_insecure_public_url`).
"""

from __future__ import annotations

import html
import logging
import secrets
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from itsdangerous import BadSignature as BadItsdangerousSignature
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from connectors.base import Credentials
from connectors.bigcommerce import BigCommerceConnector
from connectors.egress import AddressPolicy, ForbiddenAddress
from connectors.errors import AuthError, BadSignature, ConnectorError, Rejected
from connectors.shopify import SessionToken, ShopifyConnector
from connectors.woocommerce import WooCommerceConnector
from plugin import keyring
from plugin.errors import Conflict
from plugin.platforms import installs
from plugin.platforms.connections import connector_config, normalise_store_url
from plugin.settings import Settings
from plugin.shops import users
from plugin.shops.shops import shop_on_platform
from plugin.store.models import Shop, utcnow
from plugin.store.units import in_thread, reading, transaction
from plugin.web.admin import context as admin_context
from plugin.web.admin.render import render_public
from plugin.web.problems import problem

log = logging.getLogger("couponry.install")

STATE_MAX_AGE = 600  # seconds between the redirect to the grant screen and the callback
WOO_USER_MAX_AGE = 3600  # seconds the merchant has to approve the keys
SHOPIFY_STATE_COOKIE = "couponry_shopify_state"

INSTALL_PATHS: dict[str, dict[str, str]] = {
    "shopify": {"install_url": "/install/shopify", "callback_url": "/install/shopify/callback"},
    "woocommerce": {"install_url": "/install/woocommerce", "callback_url": "/install/woocommerce/callback"},
    "bigcommerce": {"install_url": "/install/bigcommerce/callback", "callback_url": "/install/bigcommerce/callback"},
}


def _signer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(keyring.signing_keys(settings, utcnow()), salt=f"couponry.install.{purpose}")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


# platforms whose install flows call us back over HTTPS only (Shopify's redirect URLs,
# BigCommerce's auth callback, WooCommerce's callback_url)
HTTPS_CALLBACK_PLATFORMS = ("shopify", "bigcommerce", "woocommerce")


def insecure_public_url(settings: Settings) -> str | None:
    """Why installs cannot work with these settings, or None."""
    if settings.public_url.startswith("https://"):
        return None
    return (
        f"COUPONRY_PUBLIC_URL is {settings.public_url}: platforms send install callbacks to HTTPS "
        "addresses only; set COUPONRY_PUBLIC_URL to this app's https:// address"
    )


def warn_insecure_public_url(settings: Settings) -> str | None:
    """At start-up: one log line when a platform needing HTTPS callbacks is configured and the
    public URL is not HTTPS. Start-up goes on: the API, the sandbox (the embedded default runs
    on http://127.0.0.1 with no platform configured) and webhooks work; only installs refuse,
    each with a 409 naming the setting."""
    configured = [name for name in HTTPS_CALLBACK_PLATFORMS if name in settings.connector_config]
    why = insecure_public_url(settings) if configured else None
    if why:
        log.warning("%s installs will be refused: %s", ", ".join(configured), why)
    return why


def _insecure_callback(settings: Settings) -> Response | None:
    why = insecure_public_url(settings)
    return problem(409, "insecure_callback", why, details={"setting": "COUPONRY_PUBLIC_URL"}) if why else None


async def _spend(request: Request, purpose: str, nonce: object, max_age: int) -> Response | None:
    """Spend a one-time value; a 401 problem when it is missing, a 409 when already spent."""
    if not isinstance(nonce, str) or not nonce:
        return problem(401, "bad_state", "the install state carries no nonce; start the install again")
    engine = _engine(request)
    expires_at = utcnow() + timedelta(seconds=max_age)

    def work() -> None:
        with transaction(engine) as session:
            installs.spend_nonce(session, purpose, nonce, expires_at=expires_at)

    try:
        await in_thread(engine, work)
    except Conflict as exc:
        return problem(exc.status, exc.reason, exc.message)
    return None


def _shopify_admin_url(settings: Settings, shop: Shop) -> str:
    """Where a Shopify install ends: the app inside the shop's admin, so it opens embedded (App
    Bridge then loads /admin with an ID token)."""
    client_id = connector_config(settings, "shopify").client_id
    return f"https://{shop.domain}/admin/apps/{client_id}"


def _bigcommerce_admin_url(settings: Settings, shop: Shop, *, user_id: str, owner: bool) -> str:
    """The admin inside BigCommerce's control panel iframe: a short-lived signed page token, no cookie."""
    assert shop.id is not None
    token = admin_context.bigcommerce_token(settings, shop_id=shop.id, user_id=user_id, owner=owner)
    return f"{settings.public_url}/admin/?{urlencode({'t': token})}"


async def _save(request: Request, platform: str, credentials: Any, *, name: str = "") -> Shop:
    settings, engine = _settings(request), _engine(request)

    def work() -> Shop:
        with transaction(engine) as session:
            shop = installs.save_install(session, settings, platform=platform, credentials=credentials, name=name)
            session.expunge(shop)
            return shop

    shop = await in_thread(engine, work)
    background = getattr(request.app.state, "background", None)
    worker = getattr(background, "worker", None)
    if worker is not None:
        worker.wake()  # register the webhooks now
    log.info("%s shop %s installed", platform, shop.domain)
    return shop


# --- Shopify ---------------------------------------------------------------------------------


def shopify(request: Request) -> ShopifyConnector:
    return ShopifyConnector(request.app.state.http, connector_config(_settings(request), "shopify"))


async def shopify_install(request: Request) -> Response:
    settings = _settings(request)
    insecure = _insecure_callback(settings)
    if insecure is not None:
        return insecure
    connector = shopify(request)
    try:
        shop = connector.verify_oauth_query(request.query_params.multi_items())
    except (BadSignature, AuthError) as exc:
        return problem(401, "bad_signature", exc.message)
    # Shopify loads the App URL (this address) each time a merchant opens the app, inside its
    # admin: once installed with every scope, that is the embedded admin, not a new grant.
    if await _shopify_granted(request, connector, shop):
        return RedirectResponse(f"{settings.public_url}/admin?{request.url.query}", status_code=302)
    if request.headers.get("sec-fetch-dest") == "iframe":
        # The grant screen refuses to be framed, and the state cookie set in a frame is a
        # third-party cookie browsers drop: reload this same signed address in the top window.
        again = f"{settings.public_url}/install/shopify?{request.url.query}"
        page, api_key = "admin/exit_iframe.html", connector.config.client_id
        return render_public(request, page, surface="shopify", shop_domain=shop, api_key=api_key, target=again)
    state = _signer(settings, "shopify-state").dumps({"shop": shop, "nonce": secrets.token_urlsafe(16)})
    target = connector.authorize_url(shop, redirect_uri=f"{settings.public_url}/install/shopify/callback", state=state)
    response = RedirectResponse(target, status_code=302)
    response.set_cookie(
        SHOPIFY_STATE_COOKIE,
        state,
        max_age=STATE_MAX_AGE,
        httponly=True,
        secure=settings.public_url.startswith("https://"),
        samesite="lax",
        path="/install/shopify",
    )
    return response


async def shopify_callback(request: Request) -> Response:
    settings = _settings(request)
    connector = shopify(request)
    cookie = request.cookies.get(SHOPIFY_STATE_COOKIE, "")
    try:
        shop, code = connector.verify_callback(request.query_params.multi_items(), expected_state=cookie)
        state = _signer(settings, "shopify-state").loads(cookie, max_age=STATE_MAX_AGE)
    except (BadSignature, AuthError) as exc:
        return problem(401, "bad_signature", exc.message)
    except BadItsdangerousSignature:
        return problem(401, "bad_state", "the install state is invalid or expired; start the install again")
    if not isinstance(state, dict) or state.get("shop") != shop:
        return problem(401, "bad_state", "the install state was issued for another shop")
    replayed = await _spend(request, "shopify-state", state.get("nonce"), STATE_MAX_AGE)
    if replayed is not None:  # before the code is exchanged: of two identical callbacks, one goes on
        return replayed
    try:
        credentials = await connector.exchange_code(shop, code)
    except AuthError as exc:
        return problem(403, "token_exchange_failed", f"Shopify refused the code (HTTP {exc.status or 403})")
    except ConnectorError as exc:
        return problem(502, "token_exchange_failed", f"Shopify did not exchange the code (HTTP {exc.status or 'none'})")
    missing = connector.missing_scopes(credentials)
    if missing:
        return problem(403, "missing_scopes", f"the app needs these scopes: {', '.join(missing)}", details={"missing": missing})
    saved = await _save(request, "shopify", credentials)
    response = RedirectResponse(_shopify_admin_url(settings, saved), status_code=302)
    response.delete_cookie(SHOPIFY_STATE_COOKIE, path="/install/shopify")
    return response


async def _shopify_granted(request: Request, connector: ShopifyConnector, domain: str) -> bool:
    """The shop has the app installed, with a token and every scope it needs."""
    engine = _engine(request)

    def granted() -> tuple[str, ...] | None:
        with reading(engine) as session:
            shop = shop_on_platform(session, "shopify", domain)
            if shop is None or shop.uninstalled_at is not None or not shop.access_token_encrypted:
                return None
            return tuple(shop.scopes.split())

    scopes = await in_thread(engine, granted)
    return scopes is not None and not connector.missing_scopes(Credentials(domain, scopes=scopes))


def verify_shopify_session(request: Request) -> SessionToken:
    """For embedded admin routes: the App Bridge session token of `Authorization: Bearer ...`,
    verified (HS256 with the client secret, aud = client id, iss/dest the same shop); raises
    connectors.errors.BadSignature otherwise."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise BadSignature("no session token")
    return shopify(request).verify_session_token(header[7:])


# --- WooCommerce -----------------------------------------------------------------------------


def woocommerce(request: Request, credentials: Any = None) -> WooCommerceConnector:
    """The connector on the client for third-party hosts (public addresses only)."""
    http: httpx.AsyncClient = request.app.state.store_http
    return WooCommerceConnector(http, connector_config(_settings(request), "woocommerce"), credentials)


def store_policy(request: Request) -> AddressPolicy:
    policy: AddressPolicy = request.app.state.store_policy
    return policy


async def woocommerce_install(request: Request) -> Response:
    """Check the store, then show a page naming it, with the link to its key approval.

    Not a redirect: this URL is a GET anyone can link to, and a redirect would let a third party
    bounce a merchant from our domain to any site that answers like a WooCommerce store (anyone
    can run one). The page says which host the merchant is about to trust; they follow the link
    themselves. Before that, the store must be https, resolve to public addresses only (checked
    again when we connect: connectors.egress) and serve a WordPress REST index with WooCommerce's
    `wc/v3` namespace; what it answered is never shown."""
    settings = _settings(request)
    store_url = normalise_store_url(request.query_params.get("store_url", ""))
    if store_url is None:
        return problem(422, "invalid_store_url", "store_url must be the store's address, e.g. https://shop.example")
    if not store_url.startswith("https://"):
        return problem(422, "insecure_store_url", "store_url must be an https:// address: the keys travel only over HTTPS")
    insecure = _insecure_callback(settings)
    if insecure is not None:
        return insecure
    parts = urlsplit(store_url)
    host = parts.hostname or ""
    try:
        await store_policy(request).check(host, parts.port or 443)
        await woocommerce(request).verify_store(store_url)
    except ForbiddenAddress as exc:
        private = exc.reason == "private_address"
        return problem(422, exc.reason, f"{host} is not a public address we may connect to" if private else exc.message)
    except Rejected as exc:
        return problem(422, "not_woocommerce", f"{host} does not answer as a WooCommerce store: {exc.message}")
    except ConnectorError:
        return problem(502, "store_unreachable", f"could not reach {host}; check the address and try again")
    user_id = _signer(settings, "woocommerce-user").dumps({"store_url": store_url, "nonce": secrets.token_urlsafe(16)})
    target = woocommerce(request).authorize_url(
        store_url,
        app_name="Couponry",
        user_id=user_id,
        return_url=f"{settings.public_url}/install/woocommerce/return",
        callback_url=f"{settings.public_url}/install/woocommerce/callback",
    )
    return _continue_page(host, store_url, target)


def _continue_page(host: str, store_url: str, target: str) -> HTMLResponse:
    """The interstitial: the host in plain words, a link the merchant chooses to follow; never framed."""
    body = (
        "<!doctype html><meta charset=utf-8><title>Connect Couponry to your store</title>"
        "<h1>Connect Couponry to your WooCommerce store</h1>"
        f"<p>You are about to go to <strong>{html.escape(host)}</strong> ({html.escape(store_url)}) "
        "to let Couponry create and manage coupons there.</p>"
        "<p>Continue only if this is your store. If you did not start this, close this page.</p>"
        f'<p><a href="{html.escape(target, quote=True)}" rel="noreferrer">Continue to {html.escape(host)}</a></p>'
    )
    headers = {
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(body, headers=headers)


async def woocommerce_callback(request: Request) -> Response:
    settings = _settings(request)
    try:
        keys = WooCommerceConnector.parse_auth_callback(await request.body())
        state = _signer(settings, "woocommerce-user").loads(keys.user_id, max_age=WOO_USER_MAX_AGE)
    except ConnectorError as exc:
        return problem(400, "invalid_callback", exc.message)
    except BadItsdangerousSignature:
        return problem(401, "bad_state", "the install reference is invalid or expired; start the install again")
    store_url = state.get("store_url") if isinstance(state, dict) else None
    if not isinstance(store_url, str):
        return problem(401, "bad_state", "the install reference names no store")
    if keys.key_permissions and keys.key_permissions != "read_write":
        return problem(403, "missing_scopes", "the keys must allow read_write")
    credentials = WooCommerceConnector.credentials(store_url, keys, webhook_secret=installs.new_webhook_secret())
    try:
        await woocommerce(request, credentials).verify_credentials()
    except ForbiddenAddress as exc:
        return problem(422, exc.reason, "the store's address is no longer a public address we may connect to")
    except AuthError as exc:
        return problem(403, "credentials_refused", f"the store refused the keys (HTTP {exc.status or 401})")
    except ConnectorError as exc:
        return problem(502, "credentials_refused", f"the store did not answer the key check (HTTP {exc.status or 'none'})")
    # spent once the keys proved good: a forged callback with garbage keys cannot burn the
    # merchant's reference, and a replay of a good one is refused
    replayed = await _spend(request, "woocommerce-user", state.get("nonce"), WOO_USER_MAX_AGE)
    if replayed is not None:
        return replayed
    await _save(request, "woocommerce", credentials)
    return JSONResponse({"ok": True})


async def woocommerce_return(request: Request) -> Response:
    """Where the merchant's browser lands after approving the keys: `?success=1&user_id=<our signed
    reference>`. A signed one-time link: it leads to setting up the shop's owner login only if
    the callback with the same reference stored good keys (so only the person who approved them
    on the store gets here), and only once; later the merchant signs in."""
    settings, engine = _settings(request), _engine(request)
    if request.query_params.get("success") != "1":
        return _page("Couponry was not connected", "The store did not approve the keys: start the install again.", 400)
    try:
        state = _signer(settings, "woocommerce-user").loads(request.query_params.get("user_id", ""), max_age=WOO_USER_MAX_AGE)
    except BadItsdangerousSignature:
        return _page("This link is not valid", "It is forged or has expired: start the install again from your store.", 401)
    nonce, store_url = (state.get("nonce"), state.get("store_url")) if isinstance(state, dict) else (None, None)
    if not isinstance(nonce, str) or not isinstance(store_url, str):
        return _page("This link is not valid", "It names no install: start the install again from your store.", 401)

    def work() -> str:
        with transaction(engine) as session:
            if not installs.nonce_spent(session, "woocommerce-user", nonce):
                raise Conflict("the store has not sent the keys for this install yet", reason="not_connected")
            shop = installs.find_shop(session, "woocommerce", store_url)
            if shop is None or shop.id is None:
                raise Conflict("the store has not sent the keys for this install yet", reason="not_connected")
            expires_at = utcnow() + timedelta(seconds=WOO_USER_MAX_AGE)
            first = installs.try_spend_nonce(session, "woocommerce-return", nonce, expires_at=expires_at)
            if not first or users.has_owner(session, shop.id):
                return f"{settings.public_url}/admin/sign-in?{urlencode({'shop': shop.domain})}"
            return users.setup_link(settings, shop.id)

    try:
        target = await in_thread(engine, work)
    except Conflict as exc:
        return _page("Still connecting", f"{exc.message}: reload this page in a moment.", 409)
    return RedirectResponse(target, status_code=303, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})


# --- BigCommerce -----------------------------------------------------------------------------


def bigcommerce(request: Request) -> BigCommerceConnector:
    return BigCommerceConnector(request.app.state.http, connector_config(_settings(request), "bigcommerce"))


def _page(title: str, text: str, status: int = 200) -> HTMLResponse:
    body = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    return HTMLResponse(body, status_code=status)


async def bigcommerce_callback(request: Request) -> Response:
    settings = _settings(request)
    q = request.query_params
    code, scope, context = q.get("code", ""), q.get("scope", ""), q.get("context", "")
    if not (code and context.startswith("stores/")):
        return problem(400, "invalid_callback", "the callback needs code, scope and context")
    redirect_uri = f"{settings.public_url}/install/bigcommerce/callback"
    try:
        credentials = await bigcommerce(request).exchange_code(code=code, scope=scope, context=context, redirect_uri=redirect_uri)
    except AuthError as exc:
        return problem(403, "install_refused", exc.message)
    except ConnectorError as exc:
        return problem(502, "token_exchange_failed", exc.message)
    extra = {**credentials.extra, "webhook_secret": installs.new_webhook_secret()}
    shop = await _save(request, "bigcommerce", replace(credentials, extra=extra))
    user_id, owner_id = credentials.extra.get("user_id", ""), credentials.extra.get("owner_id", "")
    target = _bigcommerce_admin_url(settings, shop, user_id=user_id, owner=bool(user_id) and user_id == owner_id)
    return RedirectResponse(target, status_code=302)


async def _signed_payload(request: Request) -> Any:
    return bigcommerce(request).parse_callback(dict(request.query_params))


async def bigcommerce_load(request: Request) -> Response:
    settings, engine = _settings(request), _engine(request)
    try:
        payload = await _signed_payload(request)
    except BadSignature as exc:
        return problem(401, "bad_signature", exc.message)

    def find() -> Shop | None:
        with transaction(engine) as session:
            shop = installs.find_shop(session, "bigcommerce", payload.store_hash)
            if shop is not None:
                session.expunge(shop)
            return shop

    shop = await in_thread(engine, find)
    if shop is None or shop.uninstalled_at is not None:
        return _page("Couponry is not installed", "Install the app from the BigCommerce control panel first.", 404)
    target = _bigcommerce_admin_url(settings, shop, user_id=payload.user_id, owner=payload.is_owner)
    return RedirectResponse(target, status_code=302)


async def bigcommerce_uninstall(request: Request) -> Response:
    engine = _engine(request)
    try:
        payload = await _signed_payload(request)
    except BadSignature as exc:
        return problem(401, "bad_signature", exc.message)

    def work() -> int | None:
        with transaction(engine) as session:
            shop = installs.find_shop(session, "bigcommerce", payload.store_hash)
            if shop is None or shop.id is None:
                return None
            return installs.mark_uninstalled(session, shop.id, actor=f"bigcommerce:user:{payload.user_id}")

    stopped = await in_thread(engine, work)
    return JSONResponse({"ok": stopped is not None})


async def bigcommerce_remove_user(request: Request) -> Response:
    engine = _engine(request)
    try:
        payload = await _signed_payload(request)
    except BadSignature as exc:
        return problem(401, "bad_signature", exc.message)

    def work() -> bool:
        with transaction(engine) as session:
            return installs.note_user_removed(
                session, "bigcommerce", payload.store_hash, str(payload.user_id), actor="bigcommerce"
            )

    return JSONResponse({"ok": await in_thread(engine, work)})


routes = [
    Route("/install/shopify", shopify_install, methods=["GET"]),
    Route("/install/shopify/callback", shopify_callback, methods=["GET"]),
    Route("/install/woocommerce", woocommerce_install, methods=["GET"]),
    Route("/install/woocommerce/callback", woocommerce_callback, methods=["POST"]),
    Route("/install/woocommerce/return", woocommerce_return, methods=["GET"]),
    Route("/install/bigcommerce/callback", bigcommerce_callback, methods=["GET"]),
    Route("/install/bigcommerce/load", bigcommerce_load, methods=["GET"]),
    Route("/install/bigcommerce/uninstall", bigcommerce_uninstall, methods=["GET"]),
    Route("/install/bigcommerce/remove_user", bigcommerce_remove_user, methods=["GET"]),
]
