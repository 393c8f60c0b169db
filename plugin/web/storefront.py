"""The storefront script (plugin/web/static/storefront/couponry.js) and the storefront-key side
of onsite reveal; the Shopify App Proxy side is plugin.web.appproxy.

    GET /storefront/couponry.js               302 to the current version (cached 5 minutes)
    GET /storefront/{version}/couponry.js     the script; `version` is its content hash, so the
                                              answer never changes: cached a year, immutable
    GET /api/v1/storefront/claims/{token}     (API table, `storefront` keys) a claim link's code

The script is read once at import and precompressed (gzip) for browsers that accept it. It is
public and the same for every shop, so any page may load it (`Access-Control-Allow-Origin: *`
lets a page pin it with Subresource Integrity; `Cross-Origin-Resource-Policy: cross-origin` lets
pages that require it embed it).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from plugin import keyring
from plugin.checkout import onsite
from plugin.distribution.claimlinks import ClaimLink, read_claim_token
from plugin.errors import NotFound
from plugin.settings import Settings
from plugin.store.models import utcnow
from plugin.store.units import in_thread
from plugin.web.call import Call

SCRIPT_PATH = Path(__file__).with_name("static") / "storefront" / "couponry.js"
IMMUTABLE = "public, max-age=31536000, immutable"
LATEST = "public, max-age=300"  # how long a page may keep following an old redirect after a release
MAX_TOKEN = 1024  # a claim token is ~100-200 characters; anything far longer is not one


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    version: str
    media_type: str

    @classmethod
    def load(cls, path: Path, media_type: str) -> Asset:
        body = path.read_bytes()
        return cls(body, gzip.compress(body, 9, mtime=0), hashlib.sha256(body).hexdigest()[:16], media_type)

    def response(self, request: Request) -> Response:
        headers = {
            "Cache-Control": IMMUTABLE,
            "ETag": f'"{self.version}"',
            "Vary": "Accept-Encoding",
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(self.gzipped, media_type=self.media_type, headers={**headers, "Content-Encoding": "gzip"})
        return Response(self.body, media_type=self.media_type, headers=headers)


SCRIPT = Asset.load(SCRIPT_PATH, "text/javascript; charset=utf-8")


def script_url(public_url: str) -> str:
    """The versioned URL of the current script (for the README's script tag and the admin)."""
    return f"{public_url}/storefront/{SCRIPT.version}/couponry.js"


async def latest_script(request: Request) -> Response:
    return RedirectResponse(f"/storefront/{SCRIPT.version}/couponry.js", 302, headers={"Cache-Control": LATEST})


async def versioned_script(request: Request) -> Response:
    version = request.path_params["version"]
    if version == SCRIPT.version:
        return SCRIPT.response(request)
    # A page cached with an older version's URL after a release: send it to the current one,
    # briefly (never the immutable answer, which would pin this URL to other content).
    if len(version) == len(SCRIPT.version) and all(c in "0123456789abcdef" for c in version):
        return RedirectResponse(f"/storefront/{SCRIPT.version}/couponry.js", 302, headers={"Cache-Control": "no-cache"})
    return Response("Not found", status_code=404, media_type="text/plain", headers={"Cache-Control": "no-cache"})


def routes() -> list[Route]:
    return [
        Route("/storefront/couponry.js", latest_script, methods=["GET", "HEAD"], name="storefrontScriptLatest"),
        Route("/storefront/{version}/couponry.js", versioned_script, methods=["GET", "HEAD"], name="storefrontScript"),
    ]


# --- the storefront-key reveal ------------------------------------------------------------------


class LinkNotHere(NotFound):
    """A valid link of another shop (or another partner's): answered like no link at all."""

    reason = "link_not_found"


def shops_link(settings: Settings, token: str, *, shop_id: int, partner_id: int | None = None) -> ClaimLink:
    """The claim link `token` stands for, when it is one of this shop's; BadLink / ExpiredLink
    otherwise (plugin.distribution.claimlinks), LinkNotHere for another shop's link."""
    if len(token) > MAX_TOKEN:
        raise LinkNotHere("no such claim link")
    now = utcnow()
    link = read_claim_token(keyring.signing_keys(settings, now), token, now=now)
    if link.shop_id != shop_id or (partner_id is not None and link.partner_id != partner_id):
        raise LinkNotHere("no such claim link")
    return link


def no_store(body: object, status: int = 200) -> JSONResponse:
    """A personal answer: never kept by a browser or a shared cache."""
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


async def reveal_claim(call: Call) -> Response:
    settings: Settings = call.request.app.state.settings
    link = shops_link(settings, call.request.path_params["token"], shop_id=call.shop_id, partner_id=call.key.partner_id)
    engine = call.engine
    found = await in_thread(engine, lambda: onsite.reveal(engine, link))
    return no_store(onsite.revealed_json(found))
