"""Codes: find one as a shopper typed it and read its whole story, void / extend / reassign it;
browse codes by filter (keyset pages); bulk deactivate by filter after a confirmation that names
the count (plugin.codes.bulkvoid); generate a batch with a live progress figure (htmx polling),
import a CSV with a row-by-row report, export a campaign's codes.

The per-code and bulk services write their own audit rows with the actor (`ctx.actor`), so they
run in a plain transaction here; generation and import go through `act()`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from plugin import keyring
from plugin.campaigns import issuing
from plugin.campaigns.lookup import get_batch, get_campaign
from plugin.codes import bulkvoid, listing, percode
from plugin.errors import NotFound, PluginError
from plugin.settings import Settings
from plugin.store.models import Batch, utcnow
from plugin.store.units import in_thread, reading, transaction
from plugin.web.admin.answers import not_found
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import page

NAV = "codes"
MAX_IMPORT_BYTES = 5 * 1024 * 1024  # what one upload may hold (the admin's body limit may be lower)
POLL = "1s"


async def _read(request: Request, work: Any) -> Any:
    engine = request.app.state.engine

    def run() -> Any:
        with reading(engine) as session:
            result = work(session)
            session.expunge_all()  # the page renders the rows after the session closes
            return result

    return await in_thread(engine, run)


async def _write(request: Request, work: Any) -> Any:
    """A service that records its own audit row (with `ctx.actor`), in one transaction."""
    engine = request.app.state.engine

    def run() -> Any:
        with transaction(engine) as session:
            return work(session)

    return await in_thread(engine, run)


def _secret(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return keyring.signing_key(settings)


# --- filters ------------------------------------------------------------------------------------


def _filter(form: Form) -> listing.CodeFilter | None:
    """The filter the form names (None with errors beside the fields that are wrong)."""
    values: dict[str, Any] = {}
    raw = form.get("campaign_id").strip()
    if raw:
        if raw.isdigit() and len(raw) < 12:
            values["campaign_id"] = int(raw)
        else:
            form.errors["campaign_id"] = "a campaign number"
    for name, choices in (("status", listing.STATUSES), ("sync_status", listing.SYNC_STATUSES)):
        raw = form.get(name).strip()
        if raw and raw not in choices:
            form.errors[name] = f"one of {', '.join(choices)}"
        elif raw:
            values[name] = raw
    if form.get("recipient").strip():
        values["recipient"] = form.get("recipient").strip()
    raw = form.get("expiring_before").strip()
    if raw:
        try:
            values["expiring_before"] = datetime.fromisoformat(raw).replace(tzinfo=UTC)
        except ValueError:
            form.errors["expiring_before"] = "a date like 2027-01-31"
    if form.errors:
        return None
    try:
        return listing.CodeFilter(**values)
    except PluginError as exc:
        form.fail(exc)
        return None


FILTER_FIELDS = ("campaign_id", "status", "sync_status", "recipient", "expiring_before")


def _filter_form(request: Request) -> Form:
    return Form(values={k: request.query_params.get(k, "") for k in (*FILTER_FIELDS, "q", "after")})


async def _list(request: Request, ctx: AdminContext, form: Form, **extra: Any) -> Response:
    f = _filter(form)
    found = None
    status_code = 422 if form.errors else 200
    if f is not None:
        try:
            cursor = form.get("after") or None
            found = await _read(request, lambda s: listing.list_codes(s, shop_id=ctx.shop_id, filter=f, cursor=cursor))
        except PluginError as exc:
            form.fail(exc)
            status_code = 422
    query = {k: form.get(k) for k in FILTER_FIELDS if form.get(k)}
    return render(
        request,
        ctx,
        "admin/codes.html",
        form=form,
        page=found,
        query=query,
        statuses=listing.STATUSES,
        sync_statuses=listing.SYNC_STATUSES,
        nav=NAV,
        status_code=extra.pop("status_code", status_code),
        **extra,
    )


async def index(request: Request, ctx: AdminContext) -> Response:
    return await _list(request, ctx, _filter_form(request))


# --- one code -----------------------------------------------------------------------------------


async def _code_page(
    request: Request, ctx: AdminContext, typed: str, form: Form | None = None, status_code: int = 200
) -> Response:
    def work(session: Any) -> tuple[percode.Found, list[percode.Event]]:
        found = percode.find(session, shop_id=ctx.shop_id, typed=typed)
        story = percode.story(session, found)
        session.expunge_all()
        return found, story

    try:
        found, story = await _read(request, work)
    except percode.CodeNotFound as exc:
        search = _filter_form(request)
        search.values["q"] = typed
        search.errors["q"] = exc.message
        return await _list(request, ctx, search, suggestion=exc.details.get("suggestion"), status_code=404)
    return render(
        request, ctx, "admin/code.html", found=found, story=story, form=form or Form(), nav=NAV, status_code=status_code
    )


async def find(request: Request, ctx: AdminContext) -> Response:
    typed = request.query_params.get("q", "")
    if not typed.strip() or len(typed) > 100:
        form = _filter_form(request)
        form.errors["q"] = "type a code (up to 100 characters)"
        return await _list(request, ctx, form, status_code=422)
    return await _code_page(request, ctx, typed)


def _after_change(ctx: AdminContext, found: percode.Found, done: str) -> Response:
    return RedirectResponse(ctx.url("/admin/codes/find", q=found.display, done=done), status_code=303)


async def _change(request: Request, ctx: AdminContext, form: Form, work: Any, done: str, field: str) -> Response:
    typed = form.get("code")
    try:
        found = await _write(request, work)
    except percode.CodeNotFound as exc:
        return not_found(request, ctx, exc, nav=NAV)
    except PluginError as exc:
        named = exc.details.get("field")
        form.errors[named if isinstance(named, str) else field] = exc.message
        return await _code_page(request, ctx, typed, form, status_code=exc.status if exc.status != 400 else 422)
    return _after_change(ctx, found, done)


async def void(request: Request, ctx: AdminContext, form: Form) -> Response:
    typed, reason = form.get("code"), form.get("reason")
    return await _change(
        request,
        ctx,
        form,
        lambda s: percode.void(s, shop_id=ctx.shop_id, typed=typed, actor=ctx.actor, now=utcnow(), reason=reason),
        "voided",
        "reason",
    )


async def extend(request: Request, ctx: AdminContext, form: Form) -> Response:
    typed, raw = form.get("code"), form.get("expires_at").strip()
    try:
        parsed = datetime.fromisoformat(raw)
        when = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        form.errors["expires_at"] = "a date and time like 2027-01-31T23:59"
        return await _code_page(request, ctx, typed, form, status_code=422)
    return await _change(
        request,
        ctx,
        form,
        lambda s: percode.extend(s, shop_id=ctx.shop_id, typed=typed, expires_at=when, actor=ctx.actor, now=utcnow()),
        "extended",
        "expires_at",
    )


async def reassign(request: Request, ctx: AdminContext, form: Form) -> Response:
    typed, recipient = form.get("code"), form.get("recipient").strip()
    if not recipient:
        form.errors["recipient"] = "an email, a +phone number or id:<customer id>"
        return await _code_page(request, ctx, typed, form, status_code=422)

    def work(session: Any) -> percode.Found:
        try:
            return percode.reassign(session, shop_id=ctx.shop_id, typed=typed, recipient=recipient, actor=ctx.actor, now=utcnow())
        except ValueError as exc:  # the recipient is not one (plugin.rules.recipients)
            raise PluginError(str(exc), reason="invalid_recipient", details={"field": "recipient"}) from None

    return await _change(request, ctx, form, work, "reassigned", "recipient")


# --- bulk deactivate ----------------------------------------------------------------------------


async def bulk_confirm(request: Request, ctx: AdminContext, form: Form) -> Response:
    """Count what the filter names and ask "void N codes?" (never "all": an empty filter is refused)."""
    f = _filter(form)
    if f is None:
        return await _list(request, ctx, form, status_code=422)
    try:
        confirmation = await _read(
            request, lambda s: bulkvoid.confirm_void(s, shop_id=ctx.shop_id, filter=f, secret=_secret(request))
        )
    except PluginError as exc:
        form.errors["bulk"] = exc.message
        return await _list(request, ctx, form, status_code=422)
    return await _list(request, ctx, form, confirmation=confirmation, max_bulk=bulkvoid.MAX_BULK_VOID)


async def bulk_void(request: Request, ctx: AdminContext, form: Form) -> Response:
    token, reason = form.get("token"), form.get("reason")
    try:
        voided = await _write(
            request,
            lambda s: bulkvoid.void_by_filter(
                s, shop_id=ctx.shop_id, token=token, secret=_secret(request), actor=ctx.actor, now=utcnow(), reason=reason
            ),
        )
    except PluginError as exc:
        form.errors["bulk"] = exc.message
        return await _list(request, ctx, form, status_code=409 if exc.status == 409 else 422)
    return RedirectResponse(ctx.url("/admin/codes", voided=voided), status_code=303)


# --- generate, import, export -------------------------------------------------------------------


def _campaign_id(request: Request) -> int:
    return int(request.path_params["campaign_id"])


async def generate(request: Request, ctx: AdminContext, form: Form) -> Response:
    campaign_id, raw = _campaign_id(request), form.get("count").replace(",", "").strip()
    count = int(raw) if raw.isdigit() and len(raw) < 10 else 0
    try:
        batch: Batch = await act(
            request,
            ctx,
            lambda s: issuing.start_batch(s, shop_id=ctx.shop_id, campaign_id=campaign_id, count=count),
            action="codes.generation_started",
            subject=lambda b: f"batch:{b.id}",
            details={"count": count},
        )
    except NotFound as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    except PluginError as exc:
        return render(
            request,
            ctx,
            "admin/issue_error.html",
            campaign_id=campaign_id,
            what="count",
            message=exc.message,
            nav="campaigns",
            status_code=422,
        )
    engine, shop_id, batch_id = request.app.state.engine, ctx.shop_id, batch.id or 0

    def run() -> None:
        try:
            issuing.run_batch(engine, shop_id=shop_id, batch_id=batch_id)
        except Exception:  # recorded on the batch (status failed, error), which the page shows
            return

    # Generation runs beside the web loop; the batch row is the progress the page polls. The
    # server reads no further request on this connection until the background task ends, so it
    # is closed: else the browser asks for the progress page on it and sees only "done".
    response = RedirectResponse(ctx.url(f"/admin/batches/{batch_id}"), status_code=303, headers={"Connection": "close"})
    # in a thread even on SQLite (whose page work runs on the event loop): a million codes on the
    # loop would hold every other page, this batch's progress page first, until the end
    response.background = BackgroundTask(anyio.to_thread.run_sync, run)
    return response


async def batch(request: Request, ctx: AdminContext) -> Response:
    batch_id = int(request.path_params["batch_id"])
    try:
        found: Batch = await _read(request, lambda s: _expunged(s, get_batch(s, shop_id=ctx.shop_id, batch_id=batch_id)))
    except NotFound as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    # only the figure's own poll gets the figure alone: a boosted link or form landing here is a page
    partial = request.headers.get("hx-request") == "true" and request.headers.get("hx-target") == "batch-progress"
    template = "admin/_batch_progress.html" if partial else "admin/batch.html"
    return render(request, ctx, template, batch=found, poll=POLL, nav="campaigns")


def _expunged(session: Any, row: Any) -> Any:
    session.expunge(row)
    return row


async def _upload(request: Request) -> bytes | None:
    data = await request.form()
    upload = data.get("file")
    if not isinstance(upload, UploadFile):
        return None
    return await upload.read(MAX_IMPORT_BYTES + 1)


async def import_csv(request: Request, ctx: AdminContext, form: Form) -> Response:
    campaign_id, engine = _campaign_id(request), request.app.state.engine
    raw = await _upload(request)

    def refuse(message: str, errors: list[issuing.RowError] | None = None) -> Response:
        return render(
            request,
            ctx,
            "admin/issue_error.html",
            campaign_id=campaign_id,
            what="file",
            message=message,
            rows=errors or [],
            nav="campaigns",
            status_code=422,
        )

    if not raw:
        return refuse("choose a CSV file with a code column")
    if len(raw) > MAX_IMPORT_BYTES:
        return refuse(f"the file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB: split it")
    try:
        await _read(request, lambda s: get_campaign(s, shop_id=ctx.shop_id, campaign_id=campaign_id) and None)
        decoded = issuing.decode_import(raw)
        done: Batch = await in_thread(
            engine,
            lambda: issuing.import_codes(
                engine, shop_id=ctx.shop_id, campaign_id=campaign_id, lines=issuing.import_lines(decoded.text)
            ),
        )
    except NotFound as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    except issuing.ImportRejected as exc:
        return refuse(f"{len(exc.errors):,} bad row(s): nothing was imported. Fix them and upload the file again.", exc.errors)
    except PluginError as exc:
        return refuse(exc.message)
    # the import is all-or-nothing in its own transaction; its audit row follows it
    await act(
        request,
        ctx,
        lambda s: done.id,
        action="codes.imported",
        subject=f"batch:{done.id}",
        details={"campaign_id": campaign_id, "codes": done.created, "encoding": decoded.encoding},
    )
    return RedirectResponse(ctx.url(f"/admin/batches/{done.id}"), status_code=303)


async def export_csv(request: Request, ctx: AdminContext) -> Response:
    campaign_id, engine = _campaign_id(request), request.app.state.engine
    chunks: Iterator[str] = issuing.export_codes(engine, shop_id=ctx.shop_id, campaign_id=campaign_id)
    try:
        header = await in_thread(engine, lambda: next(chunks))  # checks the campaign is this shop's
    except NotFound as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    await act(request, ctx, lambda s: None, action="codes.exported", subject=f"campaign:{campaign_id}")

    def body() -> Iterator[str]:
        yield header
        yield from chunks

    name = f"couponry-campaign-{campaign_id}-{utcnow():%Y%m%d}.csv"
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


routes = [
    page("/codes", index, name="admin_codes"),
    page("/codes/find", find, name="admin_code"),
    page("/codes/void", post=void, name="admin_code_void"),
    page("/codes/extend", post=extend, name="admin_code_extend"),
    page("/codes/reassign", post=reassign, name="admin_code_reassign"),
    page("/codes/bulk-void/confirm", post=bulk_confirm, name="admin_codes_bulk_confirm"),
    page("/codes/bulk-void", post=bulk_void, name="admin_codes_bulk_void"),
    page("/campaigns/{campaign_id:int}/generate", post=generate, name="admin_campaign_generate"),
    page("/campaigns/{campaign_id:int}/import", post=import_csv, name="admin_campaign_import"),
    page("/campaigns/{campaign_id:int}/export", export_csv, name="admin_campaign_export"),
    page("/batches/{batch_id:int}", batch, name="admin_batch"),
]
