"""Sandbox: place, cancel and refund test orders in the built-in sandbox store (only where it is
mounted, and only for a sandbox shop). Orders go through the sandbox's own operations
(plugin.sandbox.store), which queue the same signed webhooks a real platform sends: the
redemption then arrives through the real ingestion path, as it would in production."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.sandbox import store as sandbox
from plugin.sandbox.store import SandboxError
from plugin.settings import Settings
from plugin.shops.shops import LOCAL_PLATFORM, get_shop
from plugin.store.sandbox_models import SandboxOrder
from plugin.store.units import in_thread, reading
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

PATH = f"{PREFIX}/sandbox"
PAGE_SIZE = 25
ACTIONS = ("cancel", "refund")


async def _sandbox_shop(request: Request, ctx: AdminContext) -> bool:
    """The sandbox store is mounted and this shop lives in it (its codes are synced there)."""
    settings: Settings = request.app.state.settings
    if not settings.sandbox_enabled:
        return False
    engine = request.app.state.engine

    def platform() -> str:
        with reading(engine) as session:
            return get_shop(session, ctx.shop_id).platform

    return await in_thread(engine, platform) == LOCAL_PLATFORM


def _not_here() -> Response:
    return problem(404, "not_found", "the sandbox store is not mounted here, or this shop is not a sandbox shop")


def _before(request: Request) -> int | None:
    text = request.query_params.get("before", "")
    return int(text) if text.isdigit() else None


async def _page(request: Request, ctx: AdminContext, *, form: Form | None = None, status_code: int = 200) -> Response:
    engine, before = request.app.state.engine, _before(request)

    def read() -> list[dict[str, Any]]:
        with reading(engine) as session:
            return [_row(o) for o in sandbox.recent_orders(session, ctx.shop_domain, before=before, limit=PAGE_SIZE + 1)]

    rows = await in_thread(engine, read)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_url = ctx.url(PATH, before=rows[-1]["id"]) if more else None
    values = {"orders": rows, "next_url": next_url, "form": form or Form(values={"subtotal": "80.00", "currency": "USD"})}
    return render(request, ctx, "admin/sandbox.html", nav="sandbox", status_code=status_code, **values)


def _row(order: SandboxOrder) -> dict[str, Any]:
    return {
        **sandbox.order_json(order),
        "codes": ", ".join(str(d["code"]) for d in order.discount_codes) or "—",
        "final": order.status in ("cancelled", "refunded", "failed"),
    }


def _wake(request: Request) -> None:
    """Deliver the queued webhook now rather than at the deliverer's next poll."""
    deliverer = getattr(request.app.state.background, "deliverer", None)
    if deliverer is not None:
        deliverer.wake()


async def show(request: Request, ctx: AdminContext) -> Response:
    if not await _sandbox_shop(request, ctx):
        return _not_here()
    return await _page(request, ctx)


async def place(request: Request, ctx: AdminContext, form: Form) -> Response:
    if not await _sandbox_shop(request, ctx):
        return _not_here()
    codes = [c for c in form.get("codes").replace(",", " ").split() if c]
    currency = form.get("currency", "USD").strip().upper() or "USD"
    if len(currency) != 3 or not currency.isalpha():
        form.errors["currency"] = "a three-letter ISO 4217 code, e.g. USD"
    try:
        subtotal = sandbox.to_minor(form.get("subtotal").strip() or "x", currency) if form.ok else 0
        if subtotal <= 0 and form.ok:
            form.errors["subtotal"] = "the order's subtotal, above zero, e.g. 80.00"
    except SandboxError:
        form.errors["subtotal"] = "an amount like 80.00"
    if not form.ok:
        return await _page(request, ctx, form=form, status_code=422)
    email = form.get("email").strip() or None
    try:
        await act(
            request,
            ctx,
            lambda s: sandbox.place_order(s, ctx.shop_domain, codes=codes, subtotal=subtotal, currency=currency, email=email),
            action="sandbox.order_placed",
            subject=lambda order: f"sandbox_order:{order.id}",
            details={"codes": codes, "subtotal": subtotal, "currency": currency},
        )
    except SandboxError as exc:  # the platform refused a code, as a checkout would
        form.errors["codes"] = exc.message
        return await _page(request, ctx, form=form, status_code=422)
    _wake(request)
    return RedirectResponse(ctx.url(PATH), status_code=303)


async def change(request: Request, ctx: AdminContext, form: Form) -> Response:
    if not await _sandbox_shop(request, ctx):
        return _not_here()
    order_id, action = int(request.path_params["id"]), str(request.path_params["action"])
    if action not in ACTIONS:
        return problem(404, "not_found", f"no order action {action!r}")
    try:
        await act(
            request,
            ctx,
            lambda s: sandbox.change_order(s, ctx.shop_domain, order_id, action),
            action=f"sandbox.order_{action}",
            subject=f"sandbox_order:{order_id}",
        )
    except SandboxError as exc:
        if exc.status == 404:  # another shop's order, or none
            return problem(404, "not_found", exc.message)
        form.errors["_form"] = exc.message
        return await _page(request, ctx, form=form, status_code=409)
    _wake(request)
    return RedirectResponse(ctx.url(PATH), status_code=303)


routes = [
    page("/sandbox", show, name="admin_sandbox"),
    page("/sandbox/orders", post=place),
    page("/sandbox/orders/{id:int}/{action:str}", post=change),
]
