"""Who is asking: an AdminContext from the request, on one of three surfaces, or a refusal.

shopify       an App Bridge ID token (HS256 with the app secret, aud = client id, exp/nbf with
              10 s leeway, dest = the shop), on every request: `id_token` in a page load's
              query, `Authorization: Bearer` on partial requests. `shop`/`host` alone: a bounce
              page asks App Bridge for a token; never trusted on their own
bigcommerce   the signed `load` callback starts a short-lived signed token (BC_TOKEN_MAX_AGE),
              carried by each request as `?t=` or `Authorization: Bearer cbc_...`; no cookies
standalone    a signed session cookie (HttpOnly, SameSite=Lax, Secure on https) naming a user
              and their session epoch (plugin.shops.users)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from itsdangerous import BadSignature as BadItsdangerousSignature
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Engine
from starlette.requests import Request

from connectors.errors import BadSignature
from connectors.shopify import ShopifyConnector
from plugin import keyring, logs
from plugin.platforms.connections import connector_config
from plugin.settings import Settings
from plugin.shops import users
from plugin.shops.shops import get_shop, shop_on_platform
from plugin.store.models import Shop, utcnow
from plugin.store.units import in_thread, reading

Surface = Literal["shopify", "bigcommerce", "standalone"]
Role = Literal["owner", "staff"]

SESSION_COOKIE = "couponry_admin"
SESSION_MAX_AGE = 12 * 3600  # seconds a standalone sign-in lasts
BC_TOKEN_MAX_AGE = 3600  # seconds a BigCommerce page's token lasts; every page renders a fresh one
BC_TOKEN_PREFIX = "cbc_"  # tells our BigCommerce tokens from Shopify's JWTs in `Authorization`
SHOPIFY_ADMIN = "https://admin.shopify.com"


@dataclass(frozen=True)
class AdminContext:
    """The authenticated caller of an admin page. Everything a page needs to read, act and render."""

    shop_id: int
    shop_domain: str
    shop_name: str
    actor: str  # who, in the audit trail: "shopify:user:42", "bigcommerce:user:7", "user:3:ann@shop.example"
    role: Role
    surface: Surface
    csrf_token: str
    carry: Mapping[str, str] = field(default_factory=dict)  # query values every link of an embedded page keeps
    bearer: str | None = None  # the BigCommerce page token, for htmx requests (Shopify's comes from App Bridge)
    api_key: str | None = None  # Shopify's client id, for the <meta name="shopify-api-key">
    user_id: int | None = None  # the standalone user (plugin.shops.users); None when the platform signed them in

    def __post_init__(self) -> None:
        logs.bind_shop(self.shop_id)  # the rest of this request's log lines name the shop

    @property
    def embedded(self) -> bool:
        return self.surface != "standalone"

    @property
    def is_owner(self) -> bool:
        return self.role == "owner"

    @property
    def frame_ancestors(self) -> str:
        return frame_ancestors(self.surface, self.shop_domain)

    def url(self, path: str, **params: Any) -> str:
        """An admin address that keeps what this surface must carry (BigCommerce's token, Shopify's shop/host)."""
        query = {**self.carry, **{k: str(v) for k, v in params.items() if v is not None}}
        return f"{path}?{urlencode(query)}" if query else path


STORE_HASH = re.compile(r"[a-z0-9]{1,32}")  # a BigCommerce store hash, as its API paths carry it


def frame_ancestors(surface: Surface, shop_domain: str) -> str:
    """Who may frame the page: the shop's own admin only (no wildcard), or nobody."""
    if surface == "shopify":
        return f"https://{shop_domain} {SHOPIFY_ADMIN}"
    if surface == "bigcommerce" and STORE_HASH.fullmatch(shop_domain):
        # The control panel, whose iframe holds the app, is https://store-{hash}.mybigcommerce.com;
        # BigCommerce's own apps allow *.mybigcommerce.com there. Only this store's panel, no wildcard.
        return f"https://store-{shop_domain}.mybigcommerce.com"
    return "'none'"  # standalone, or a store hash that could not be a host name's label


class Refused(Exception):
    """The request carries no valid credential. `kind` says what to answer: `sign_in` (a
    standalone visitor: redirect), `bounce` (a Shopify page load without an ID token), or
    `denied` (a credential that is forged, expired, or for another shop: 401)."""

    def __init__(self, kind: Literal["sign_in", "bounce", "denied"], message: str, *, shop: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.shop = shop


# --- signing -----------------------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _signer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    # the signing key signs; retired ones still verify during their grace period (plugin.keyring)
    return URLSafeTimedSerializer(keyring.signing_keys(settings, utcnow()), salt=f"couponry.admin.{purpose}")


def embedded_csrf(settings: Settings, surface: Surface, shop_id: int, actor: str) -> str:
    """The CSRF token of an embedded caller: derived, so every fresh ID/page token keeps matching."""
    message = f"csrf|{surface}|{shop_id}|{actor}".encode()
    return hmac.new(keyring.signing_key(settings).encode(), message, hashlib.sha256).hexdigest()


def bigcommerce_token(settings: Settings, *, shop_id: int, user_id: str, owner: bool) -> str:
    """The short-lived token a BigCommerce page carries (started by the signed `load` callback)."""
    return BC_TOKEN_PREFIX + _signer(settings, "bigcommerce").dumps({"shop": shop_id, "user": user_id, "owner": owner})


def session_cookie_value(settings: Settings, user_id: int, epoch: int) -> str:
    """A standalone session: the user, their epoch (sign-out bumps it) and this session's CSRF token."""
    return _signer(settings, "session").dumps({"user": user_id, "epoch": epoch, "csrf": secrets.token_urlsafe(24)})


def set_session_cookie(response: Any, settings: Settings, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        secure=settings.public_url.startswith("https://"),
        samesite="lax",
        path="/admin",
    )


def clear_session_cookie(response: Any, settings: Settings) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/admin", httponly=True, secure=settings.public_url.startswith("https://"), samesite="lax"
    )


# --- the three surfaces ------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


async def _load_shop(request: Request, platform: str, domain: str) -> Shop | None:
    engine = _engine(request)

    def find() -> Shop | None:
        with reading(engine) as session:
            shop = shop_on_platform(session, platform, domain)
            if shop is not None:
                session.expunge(shop)
            return shop

    return await in_thread(engine, find)


async def _shopify(request: Request, token: str) -> AdminContext:
    settings = _settings(request)
    if "shopify" not in settings.connector_config:
        raise Refused("denied", "Shopify is not configured on this installation")
    connector = ShopifyConnector(request.app.state.http, connector_config(settings, "shopify"))
    try:
        verified = connector.verify_session_token(token)
    except BadSignature as exc:
        raise Refused("denied", exc.message) from None
    claimed = request.query_params.get("shop")
    if claimed and claimed != verified.shop:
        raise Refused("denied", "the session token is for another shop")
    shop = await _load_shop(request, "shopify", verified.shop)
    if shop is None or shop.id is None or shop.uninstalled_at is not None:
        raise Refused("denied", "Couponry is not installed on this shop")
    actor = f"shopify:user:{verified.user_id or 'unknown'}"
    carry = {k: v for k in ("shop", "host") if (v := request.query_params.get(k))}
    carry["shop"] = shop.domain
    return AdminContext(
        shop_id=shop.id,
        shop_domain=shop.domain,
        shop_name=shop.name or shop.domain,
        actor=actor,
        role="owner",  # Shopify decides which staff may open the app at all
        surface="shopify",
        csrf_token=embedded_csrf(settings, "shopify", shop.id, actor),
        carry=carry,
        api_key=connector.config.client_id,
    )


async def _bigcommerce(request: Request, token: str) -> AdminContext:
    settings = _settings(request)
    try:
        data: Any = _signer(settings, "bigcommerce").loads(token.removeprefix(BC_TOKEN_PREFIX), max_age=BC_TOKEN_MAX_AGE)
    except BadItsdangerousSignature:
        raise Refused("denied", "the page token is invalid or expired: open Couponry again from the control panel") from None
    if not isinstance(data, dict) or not isinstance(data.get("shop"), int):
        raise Refused("denied", "the page token names no shop")
    engine = _engine(request)

    def find() -> Shop:
        with reading(engine) as session:
            shop = get_shop(session, data["shop"])
            session.expunge(shop)
            return shop

    shop = await in_thread(engine, find)
    if shop.platform != "bigcommerce" or shop.id is None or shop.uninstalled_at is not None:
        raise Refused("denied", "Couponry is not installed on this store")
    owner = bool(data.get("owner"))
    actor = f"bigcommerce:user:{data.get('user') or 'unknown'}"
    fresh = bigcommerce_token(settings, shop_id=shop.id, user_id=str(data.get("user") or ""), owner=owner)
    return AdminContext(
        shop_id=shop.id,
        shop_domain=shop.domain,
        shop_name=shop.name or shop.domain,
        actor=actor,
        role="owner" if owner else "staff",
        surface="bigcommerce",
        csrf_token=embedded_csrf(settings, "bigcommerce", shop.id, actor),
        carry={"t": fresh},
        bearer=fresh,
    )


async def _standalone(request: Request, cookie: str) -> AdminContext:
    settings = _settings(request)
    try:
        data: Any = _signer(settings, "session").loads(cookie, max_age=SESSION_MAX_AGE)
    except BadItsdangerousSignature:
        raise Refused("sign_in", "your session has expired: sign in again") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), int) or not isinstance(data.get("csrf"), str):
        raise Refused("sign_in", "sign in again")
    engine = _engine(request)

    def find() -> tuple[Any, Shop] | None:
        with reading(engine) as session:
            user = users.session_user(session, user_id=data["user"], epoch=int(data.get("epoch", -1)))
            if user is None:
                return None
            shop = get_shop(session, user.shop_id)
            session.expunge_all()
            return user, shop

    found = await in_thread(engine, find)
    if found is None:
        raise Refused("sign_in", "you were signed out: sign in again")
    user, shop = found
    assert shop.id is not None
    return AdminContext(
        shop_id=shop.id,
        shop_domain=shop.domain,
        shop_name=shop.name or shop.domain,
        actor=users.actor_name(user),
        role="owner" if user.role == "owner" else "staff",
        surface="standalone",
        csrf_token=data["csrf"],
        user_id=user.id,
    )


def _looks_shopify_embedded(request: Request) -> bool:
    q = request.query_params
    return bool(q.get("host") or q.get("embedded") == "1" or (q.get("shop") or "").endswith(".myshopify.com"))


async def admin_context(request: Request) -> AdminContext:
    """The caller of an admin page, or Refused. An embedded credential (header or query) wins
    over a cookie: embedded pages never rely on cookies, and a stale standalone cookie in the same
    browser must not decide which shop an embedded page shows."""
    bearer = _bearer(request)
    if bearer:
        return await (_bigcommerce(request, bearer) if bearer.startswith(BC_TOKEN_PREFIX) else _shopify(request, bearer))
    if id_token := request.query_params.get("id_token"):
        return await _shopify(request, id_token)
    if page_token := request.query_params.get("t"):
        return await _bigcommerce(request, page_token)
    if _looks_shopify_embedded(request):
        raise Refused("bounce", "this page needs a Shopify session token", shop=request.query_params.get("shop"))
    if cookie := request.cookies.get(SESSION_COOKIE):
        return await _standalone(request, cookie)
    raise Refused("sign_in", "sign in to continue")
