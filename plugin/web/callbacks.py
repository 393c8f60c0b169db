"""Providers' status callbacks: Twilio reports each SMS's fate to /callbacks/twilio/{shop_id}.

The X-Twilio-Signature is checked against the public URL Twilio was given (not the URL this
process saw, which differs behind a proxy); an unsigned or forged callback changes nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.errors import BadSignature, ConnectorError
from plugin.distribution import pushes
from plugin.settings import Settings
from plugin.shops.shops import get_shop
from plugin.store.models import Shop
from plugin.store.units import in_thread
from plugin.web.problems import problem

MAX_ID_DIGITS = 10  # shop.id is a 32-bit integer column


async def twilio_status(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    shop_id = _shop_id(request.path_params["shop_id"])
    if shop_id is None:
        return problem(404, "not_found", "no shop has this id")
    shop = await in_thread(engine, lambda: _shop(engine, shop_id))  # an unknown shop is a 404 problem
    form = await request.form()
    params = {key: str(value) for key, value in form.multi_items()}
    try:
        sid, status, error = pushes.read_twilio_callback(
            settings, request.app.state.http, shop, params, request.headers.get("x-twilio-signature", "")
        )
    except BadSignature:
        return problem(401, "bad_signature", "the X-Twilio-Signature does not match")
    except ConnectorError as exc:
        return problem(422, "invalid_callback", str(exc))
    if status is not None:
        await in_thread(
            engine,
            lambda: pushes.record_provider_status(
                engine, shop_id=shop_id, provider="twilio", provider_id=sid, status=status, error=error
            ),
        )
    return Response(status_code=204)


def _shop_id(raw: str) -> int | None:
    """Our shop id from the path: ASCII digits that fit the column (PostgreSQL's INTEGER). The route takes a string so
    that a 100 KB run of digits is a 404 here instead of a 500 in Starlette's int convertor
    (Python refuses to parse integers of more than 4300 digits)."""
    if not (0 < len(raw) <= MAX_ID_DIGITS and raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value < 2**31 else None


def _shop(engine: Engine, shop_id: int) -> Shop:
    with Session(engine) as session:
        return get_shop(session, shop_id)


routes = [Route("/callbacks/twilio/{shop_id}", twilio_status, methods=["POST"])]
