"""A small test storefront for the storefront script's browser test: an HTTPS site (self-signed,
on loopback) whose pages are served under a strict Content-Security-Policy, in two flavours.

- `/` : a shop on any platform. It loads the script from the app with a `storefront` key and
  hands its basket over (`couponry:basket` events from its own /shop.js).
- `/shopify` : a Shopify shop. It loads the theme app extension's copy of the script from its own
  origin (as Shopify's CDN would serve it), keeps a cart behind Shopify's Ajax endpoints
  (`/cart.js`, `/cart/add.js`), applies codes at `/discount/<code>`, and forwards `/apps/couponry/*`
  to the app's `/proxy/shopify/*` the way Shopify's App Proxy does: cookies dropped, `shop`,
  `logged_in_customer_id`, `path_prefix` and `timestamp` added, signed with the app's secret.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.browser.harness import free_port

EXTENSION_SCRIPT = Path(__file__).resolve().parents[2] / "extensions" / "couponry-storefront" / "assets" / "couponry.js"
SOCK = {"product_id": 11, "variant_id": 111, "sku": "SOCK", "price": 2500}  # £25.00

# The page's own script: records CSP violations where the test can read them, and drives the basket.
SHOP_JS = """
document.addEventListener("securitypolicyviolation", function (e) {
  document.documentElement.dataset.violations =
    (document.documentElement.dataset.violations || "") + e.violatedDirective + " " + e.blockedURI + ";";
});
var socks = 2;
function basket() {
  return { currency: "GBP", lines: [{ product_id: "11", quantity: socks, unit_price: 2500 }] };
}
document.addEventListener("DOMContentLoaded", function () {
  var add = document.getElementById("add"), remove = document.getElementById("remove");
  if (document.body.dataset.platform === "shopify") {
    add.addEventListener("click", function () {
      fetch("/cart/add.js", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ items: [{ id: 111, quantity: 1 }] }) });
    });
    remove.addEventListener("click", function () {
      fetch("/cart/change.js", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: "111", quantity: 1 }) });
    });
    return;
  }
  function tell() { document.dispatchEvent(new CustomEvent("couponry:basket", { detail: basket() })); }
  add.addEventListener("click", function () { socks += 1; tell(); });
  remove.addEventListener("click", function () { socks = Math.max(0, socks - 1); tell(); });
  window.addEventListener("load", tell);
});
"""

PAGE = """<!doctype html>
<html lang="en-GB"><head><meta charset="utf-8"><title>Sock shop</title>
<script src="/shop.js" defer></script>
{script}
</head><body data-platform="{platform}"><h1>Sock shop</h1>
<button id="add" type="button">Add a sock</button> <button id="remove" type="button">Remove a sock</button>
</body></html>"""


@dataclass
class SockShop:
    url: str
    app_url: str
    proxy_secret: str
    shopify_domain: str
    key: str = ""
    cart: dict[str, int] = field(default_factory=lambda: {"111": 2})
    applied: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)  # what our "App Proxy" forwarded, signed

    def csp(self, *, script: str, connect: str) -> str:
        return (
            f"default-src 'none'; script-src {script}; connect-src {connect}; style-src 'none'; img-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'"
        )

    def signed(self, query: list[tuple[str, str]]) -> str:
        params = [
            *query,
            ("shop", self.shopify_domain),
            ("logged_in_customer_id", ""),
            ("path_prefix", "/apps/couponry"),
            ("timestamp", str(int(time.time()))),
        ]
        joined: dict[str, list[str]] = {}
        for key, value in params:
            joined.setdefault(key, []).append(value)
        message = "".join(sorted(f"{k}={','.join(v)}" for k, v in joined.items()))
        signature = hmac.new(self.proxy_secret.encode(), message.encode(), hashlib.sha256).hexdigest()
        return urlencode([*params, ("signature", signature)])


def _app(shop: SockShop) -> Starlette:
    async def any_shop(request: Request) -> Response:
        tag = f'<script src="{shop.app_url}/storefront/couponry.js" data-key="{shop.key}" defer></script>'
        html = PAGE.format(script=tag, platform="custom")
        return HTMLResponse(
            html, headers={"Content-Security-Policy": shop.csp(script=f"'self' {shop.app_url}", connect=shop.app_url)}
        )

    async def shopify_page(request: Request) -> Response:
        tag = (
            '<script src="/cdn/couponry.js" data-proxy="/apps/couponry" data-platform="shopify"'
            ' data-position="bottom" defer></script>'
        )
        html = PAGE.format(script=tag, platform="shopify")
        return HTMLResponse(html, headers={"Content-Security-Policy": shop.csp(script="'self'", connect="'self'")})

    async def shop_js(request: Request) -> Response:
        return Response(SHOP_JS, media_type="text/javascript")

    async def cdn_script(request: Request) -> Response:
        return Response(EXTENSION_SCRIPT.read_bytes(), media_type="text/javascript")

    async def cart(request: Request) -> Response:
        items = [{**SOCK, "quantity": q, "id": int(v)} for v, q in shop.cart.items() if q > 0]
        return JSONResponse({"currency": "GBP", "item_count": sum(shop.cart.values()), "items": items})

    async def cart_add(request: Request) -> Response:
        for item in (await request.json())["items"]:
            shop.cart[str(item["id"])] = shop.cart.get(str(item["id"]), 0) + int(item["quantity"])
        return JSONResponse({"items": []})

    async def cart_change(request: Request) -> Response:
        body = await request.json()
        shop.cart[str(body["id"])] = int(body["quantity"])
        return await cart(request)

    async def discount(request: Request) -> Response:
        shop.applied.append(request.path_params["code"])
        return RedirectResponse(request.query_params.get("redirect", "/"), 302)

    async def app_proxy(request: Request) -> Response:
        query = shop.signed(list(request.query_params.multi_items()))
        target = f"{shop.app_url}/proxy/shopify/{request.path_params['rest']}?{query}"
        shop.forwarded.append(f"{request.method} {request.path_params['rest']}")
        headers = {"Content-Type": request.headers.get("content-type", "application/json")}  # no cookies
        async with httpx.AsyncClient() as client:
            answer = await client.request(request.method, target, content=await request.body(), headers=headers)
        keep = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "cache-control")}
        return Response(answer.content, status_code=answer.status_code, headers=keep)

    return Starlette(
        routes=[
            Route("/", any_shop),
            Route("/shopify", shopify_page),
            Route("/shop.js", shop_js),
            Route("/cdn/couponry.js", cdn_script),
            Route("/cart.js", cart),
            Route("/cart/add.js", cart_add, methods=["POST"]),
            Route("/cart/change.js", cart_change, methods=["POST"]),
            Route("/discount/{code}", discount),
            Route("/apps/couponry/{rest:path}", app_proxy, methods=["GET", "POST"]),
        ]
    )


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "shop.key", directory / "shop.crt"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@contextmanager
def running_shop(tmp: Path, *, app_url: str, proxy_secret: str, shopify_domain: str) -> Iterator[SockShop]:
    """The storefront on https://127.0.0.1:<port> (storefront keys' origins are https only)."""
    port = free_port()
    shop = SockShop(url=f"https://127.0.0.1:{port}", app_url=app_url, proxy_secret=proxy_secret, shopify_domain=shopify_domain)
    key_path, cert_path = _self_signed(tmp)
    config = uvicorn.Config(
        _app(shop), host="127.0.0.1", port=port, log_level="warning", ssl_keyfile=str(key_path), ssl_certfile=str(cert_path)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="browser-shop", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test shop did not start")
        time.sleep(0.05)
    try:
        yield shop
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def violations(page: Any) -> str:
    return str(page.evaluate("document.documentElement.dataset.violations || ''"))
