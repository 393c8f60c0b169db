"""A campaign's results: figures per group and currency, charts of redemptions and discount over
time and of revenue against discount by channel and partner (server-rendered SVG with a table
fallback), CSV of the table and of the redemption log. Reads through plugin.campaigns.results."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from plugin.campaigns import results
from plugin.campaigns.lookup import get_campaign
from plugin.distribution import partners
from plugin.errors import InvalidInput, NotFound
from plugin.rules.refusals import minor_unit_exponent
from plugin.store.units import in_thread, reading
from plugin.web.admin import charts
from plugin.web.admin.answers import not_found
from plugin.web.admin.context import AdminContext
from plugin.web.admin.forms import Form, act
from plugin.web.admin.render import render
from plugin.web.admin.routing import page

FIELDS = ("group_by", "from", "to", "partner_id")
GROUPINGS = [("", "No grouping"), ("day", "Day"), ("channel", "Channel"), ("partner", "Partner"), ("batch", "Batch")]
GROUPINGS += [("provider", "Distribution provider"), ("day,channel", "Day and channel"), ("day,partner", "Day and partner")]
_CSV_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass
class Chart:
    svg: Markup
    head: list[str]
    rows: list[list[str]]


def _query(request: Request, form: Form) -> results.Query:
    """The query the page's form asks for; a refusal goes next to its field and the page shows
    the campaign's whole results instead."""
    campaign_id = int(request.path_params["campaign_id"])
    try:
        return results.parse_query(
            campaign_id,
            group_by=form.get("group_by") or None,
            start=form.get("from") or None,
            end=form.get("to") or None,
            partner_id=form.get("partner_id") or None,
        )
    except InvalidInput as exc:
        form.fail(exc)
        return results.Query(campaign_id)


def _label(dimension: str, value: Any, partner_names: dict[int, str]) -> str:
    if dimension == "partner":
        return partner_names.get(int(value), f"partner {value}") if value else "no partner"
    if dimension == "batch":
        return f"batch {value}" if value else "no batch"
    if dimension in ("channel", "provider"):
        return str(value) or "none"
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _major(amount: int, currency: str) -> float:
    return amount / float(10 ** minor_unit_exponent(currency))


def _over_time(days: results.Report) -> list[Chart]:
    labels = [g.key["day"].isoformat() for g in days.groups]
    counts = charts.Series("Redemptions", [g.redeemed for g in days.groups], "s0")
    redemptions = Chart(
        charts.bars(
            "chart-redemptions", "Redemptions per day", f"Active redemptions per day ({days.timezone}).", labels, [counts]
        ),
        ["Day", "Redemptions"],
        [[label, f"{n:,}"] for label, n in zip(labels, counts.values, strict=True)],
    )
    currencies = sorted({m.currency for g in days.groups for m in g.money})
    per = [{m.currency: m.discount for m in g.money} for g in days.groups]
    series = [charts.Series(c, [_major(p.get(c, 0), c) for p in per], f"s{i % 6}") for i, c in enumerate(currencies)]
    discount = Chart(
        charts.lines("chart-discount", "Discount per day", "Discount given per day, one line per currency.", labels, series),
        ["Day", *currencies],
        [[label, *(f"{_major(p.get(c, 0), c):,.2f}" for c in currencies)] for label, p in zip(labels, per, strict=True)],
    )
    return [redemptions, discount]


def _revenue_against_discount(report: results.Report, dimension: str, names: dict[int, str], chart_id: str) -> list[Chart]:
    """One chart per currency: revenue and discount side by side per channel (or partner)."""
    out = []
    for currency in sorted({m.currency for g in report.groups for m in g.money}):
        rows = [(g, next((m for m in g.money if m.currency == currency), None)) for g in report.groups]
        rows = [(g, m) for g, m in rows if m is not None]
        labels = [_label(dimension, g.key[dimension], names) for g, _ in rows]
        revenue = charts.Series("Revenue", [_major(m.revenue, currency) for _, m in rows if m], "s0")
        discount = charts.Series("Discount", [_major(m.discount, currency) for _, m in rows if m], "s1")
        title = f"Revenue against discount by {dimension} ({currency})"
        out.append(
            Chart(
                charts.bars(
                    f"{chart_id}-{currency}",
                    title,
                    f"Revenue and discount in {currency} per {dimension}.",
                    labels,
                    [revenue, discount],
                    "{:,.2f}",
                ),
                [dimension.capitalize(), f"Revenue ({currency})", f"Discount ({currency})", "Return per unit of discount"],
                [
                    [label, f"{r:,.2f}", f"{d:,.2f}", f"{m.return_per_discount:.2f}" if m and m.return_per_discount else "—"]
                    for label, r, d, (_, m) in zip(labels, revenue.values, discount.values, rows, strict=True)
                ],
            )
        )
    return out


async def show(request: Request, ctx: AdminContext) -> Response:
    engine = request.app.state.engine
    form = Form(values={k: request.query_params.get(k, "") for k in FIELDS})
    query = _query(request, form)

    def read() -> dict[str, Any]:
        with reading(engine) as session:
            campaign = get_campaign(session, shop_id=ctx.shop_id, campaign_id=query.campaign_id)
            names = {p.id or 0: p.name for p in partners.list_partners(session, shop_id=ctx.shop_id)}
            try:
                report = results.results(session, shop_id=ctx.shop_id, query=query)
                chosen = query
            except NotFound as exc:  # another shop's partner, or none: said next to the field
                form.fail(replace_field(exc, "partner_id"))
                chosen = replace(query, partner_id=None)
                report = results.results(session, shop_id=ctx.shop_id, query=chosen)

            def quick(*dims: str) -> results.Report:
                return results.results(session, shop_id=ctx.shop_id, query=replace(chosen, group_by=dims, medians=False))

            return {
                "campaign": {"id": campaign.id, "name": campaign.name},
                "names": names,
                "report": report,
                "charts": [
                    *_over_time(quick("day")),
                    *_revenue_against_discount(quick("channel"), "channel", names, "chart-channel"),
                    *_revenue_against_discount(quick("partner"), "partner", names, "chart-partner"),
                ],
            }

    try:
        found = await in_thread(engine, read)
    except NotFound as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    report: results.Report = found["report"]
    groups = [(", ".join(_label(d, g.key[d], found["names"]) for d in report.group_by), g) for g in report.groups]
    return render(
        request,
        ctx,
        "admin/results.html",
        nav="campaigns",
        c=found["campaign"],
        form=form,
        report=report,
        groups=groups,
        charts=found["charts"],
        groupings=GROUPINGS,
        partner_options=[("", "All partners"), *((str(i), n) for i, n in sorted(found["names"].items()))],
        csv_query={k: v for k, v in form.values.items() if v and k not in form.errors},
        status_code=422 if form.errors else 200,
    )


def replace_field(exc: NotFound, name: str) -> NotFound:
    exc.details = {**exc.details, "field": name}
    return exc


async def _csv(request: Request, ctx: AdminContext, name: str, chunks: Iterator[str], action: str) -> Response:
    engine = request.app.state.engine
    try:
        header = await in_thread(engine, lambda: next(chunks))  # the campaign is this shop's
    except (NotFound, InvalidInput) as exc:
        return not_found(request, ctx, exc, nav="campaigns")
    await act(request, ctx, lambda s: None, action=action, subject=f"campaign:{request.path_params['campaign_id']}")

    def body() -> Iterator[str]:
        yield header
        yield from chunks

    headers = {"Content-Disposition": f'attachment; filename="{name}"', **_CSV_HEADERS}
    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers=headers)


async def table_csv(request: Request, ctx: AdminContext) -> Response:
    engine = request.app.state.engine
    form = Form(values={k: request.query_params.get(k, "") for k in FIELDS})
    query = _query(request, form)

    if form.errors:
        return Response("; ".join(form.errors.values()), status_code=422, media_type="text/plain; charset=utf-8")

    def chunks() -> Iterator[str]:
        with reading(engine) as session:
            report = results.results(session, shop_id=ctx.shop_id, query=query)
        yield results.report_csv(report)

    return await _csv(request, ctx, f"results-{query.campaign_id}.csv", chunks(), "results.exported")


async def log_csv(request: Request, ctx: AdminContext) -> Response:
    form = Form(values={k: request.query_params.get(k, "") for k in FIELDS if k != "group_by"})
    query = _query(request, form)
    chunks = results.redemption_log_csv(request.app.state.engine, shop_id=ctx.shop_id, query=query)
    return await _csv(request, ctx, f"redemptions-{query.campaign_id}.csv", chunks, "redemptions.exported")


routes = [
    page("/campaigns/{campaign_id:int}/results", show, name="admin_campaign_results"),
    page("/campaigns/{campaign_id:int}/results.csv", table_csv),
    page("/campaigns/{campaign_id:int}/redemptions.csv", log_csv),
]
