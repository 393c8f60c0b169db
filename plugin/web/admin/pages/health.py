"""Sync health: the shop's platform and provider jobs with the platform's own message for each
failure, retry a dead job (plugin.store.outbox.retry_dead) or run a failing one now
(retry_now), the reconciliation results (its audit reports) and the alerts, resolved by hand."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from plugin.errors import Conflict, PluginError
from plugin.reconciliation import health
from plugin.store import outbox
from plugin.store.models import Job, utcnow
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.pages.syncs import read
from plugin.web.admin.render import render
from plugin.web.admin.routing import PREFIX, page
from plugin.web.problems import problem

# job families a merchant tells apart (the kind's first part); labels in their words
FAMILIES = {
    "sync": "Platform: codes and discounts",
    "install": "Platform: webhook set-up",
    "reconcile": "Reconciliation",
    "distribution": "Email/SMS pushes",
    "klaviyo": "Klaviyo coupon pools",
    "customer": "Customer data requests",
}
PAGE_SIZE = 50


async def show(request: Request, ctx: AdminContext) -> Response:
    form = Form(values={k: v for k, v in request.query_params.items() if isinstance(v, str)})
    if form.get("family") and form.get("family") not in FAMILIES:
        form.errors["family"] = "choose one of the listed kinds of job"
    if form.get("status") and form.get("status") not in health.JOB_STATUSES:
        form.errors["status"] = f"status must be one of {', '.join(health.JOB_STATUSES)}"
    facts: dict[str, Any] = {}
    if form.ok:
        try:
            facts = await read(request, lambda s: _facts(s, ctx.shop_id, form))
        except PluginError as exc:
            form.fail(exc)
    return render(
        request, ctx, "admin/health.html", status_code=200 if form.ok else 422, nav="health", form=form, **facts,
        family_options=list(FAMILIES.items()), status_options=[(s, s.capitalize()) for s in health.JOB_STATUSES],
        family_of=lambda kind: FAMILIES.get(kind.split(".")[0], kind), query=_query(form),
    )  # fmt: skip


def _query(form: Form) -> dict[str, str]:
    return {k: form.get(k) for k in ("family", "status", "failing", "open") if form.get(k)}


def _facts(session: Session, shop_id: int, form: Form) -> dict[str, Any]:
    job_filter = health.JobFilter(
        kind=form.get("family") or None, status=form.get("status") or None, failing=form.get("failing") == "1"
    )
    return {
        "jobs": health.list_jobs(session, shop_id=shop_id, filter=job_filter, cursor=form.get("cursor") or None, limit=PAGE_SIZE),
        "dead": health.list_jobs(session, shop_id=shop_id, filter=health.JobFilter(status="dead"), limit=10),
        "alerts": health.list_alerts(
            session, shop_id=shop_id, open_only=form.get("open") != "all", cursor=form.get("alerts_cursor") or None, limit=20
        ),
        "reports": health.list_reconcile_reports(session, shop_id=shop_id, cursor=form.get("reports_cursor") or None, limit=5),
    }


async def retry(request: Request, ctx: AdminContext, form: Form) -> Response:
    job_id = int(request.path_params["job_id"])

    def work(session: Session) -> Job:
        job = health.get_job(session, shop_id=ctx.shop_id, job_id=job_id)  # another shop's: 404
        if job.status == "dead":
            return outbox.retry_dead(session, job_id, actor=ctx.actor, shop_id=ctx.shop_id)
        return outbox.retry_now(session, job_id, shop_id=ctx.shop_id)

    try:
        # a dead job's retry is audited by outbox.retry_dead itself (job.retry, with this actor): one row either way
        await act(request, ctx, work, action="job.retry", subject=f"job:{job_id}")
    except Conflict as exc:
        if exc.reason != "job_not_waiting":
            return problem(exc.status, exc.reason, exc.message)
        # the worker took the job between the page and the click (its own retry came due): say so
        # on the page, where the job's row shows how that went
        return RedirectResponse(ctx.url(f"{PREFIX}/health", not_waiting=job_id), status_code=303)
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return RedirectResponse(ctx.url(f"{PREFIX}/health", retried=job_id), status_code=303)


async def resolve(request: Request, ctx: AdminContext, form: Form) -> Response:
    alert_id = int(request.path_params["alert_id"])
    try:
        await act(
            request, ctx, lambda s: health.resolve_alert(s, shop_id=ctx.shop_id, alert_id=alert_id, now=utcnow()),
            action="alert.resolved", subject=f"alert:{alert_id}",
        )  # fmt: skip
    except PluginError as exc:
        return problem(exc.status, exc.reason, exc.message)
    return RedirectResponse(ctx.url(f"{PREFIX}/health", resolved=alert_id), status_code=303)


routes = [
    page("/health", show, name="admin_health"),
    page("/health/jobs/{job_id:int}/retry", post=retry, name="admin_job_retry"),
    page("/health/alerts/{alert_id:int}/resolve", post=resolve, name="admin_alert_resolve"),
]
