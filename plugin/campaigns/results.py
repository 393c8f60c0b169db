"""What a campaign earned: codes issued and assigned, redemptions, revenue and discount per
currency, the median time from assignment to redemption, rollbacks and flagged uses — in total
and grouped by channel, partner, batch, distribution provider or day (in the shop's time zone).

Sums and counts come from the rollups kept by triggers (plugin.store.rollups: result_day,
assign_day; issued codes from campaign_stats); the median from `redemption.wait_seconds` in index
order. Money is never added across currencies: each figure row holds one `Money` per currency.
Revenue is the order's subtotal minus what refunds took back (what partners read since
plugin.distribution.partners.results); return per unit of discount is revenue / discount.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from plugin.campaigns.lookup import get_campaign
from plugin.errors import InvalidInput, NotFound
from plugin.store.db import read_session
from plugin.store.models import Partner, Redemption, Shop

DIMENSIONS = ("channel", "partner", "batch", "provider", "day")
MAX_GROUPS = 2  # group_by=day,channel: a chart's series over time
MAX_DAYS = 3700  # about ten years: a range longer is a typo
# the rollup column each dimension reads; assign_day has no channel (an order's, not a code's)
_RESULT_COLUMN = {"channel": "channel", "partner": "partner_key", "batch": "batch_key", "provider": "provider", "day": "day"}
_ASSIGN_DIMENSIONS = frozenset({"partner", "batch", "provider", "day"})

Key = tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    campaign_id: int
    group_by: tuple[str, ...] = ()
    start: date | None = None  # first day, shop time zone, inclusive
    end: date | None = None  # last day, inclusive
    partner_id: int | None = None
    medians: bool = True  # a chart needs none: skip the read of the rows


@dataclass
class Money:
    currency: str
    revenue: int = 0
    discount: int = 0

    @property
    def return_per_discount(self) -> float | None:
        return round(self.revenue / self.discount, 4) if self.discount else None


@dataclass
class Figures:
    key: dict[str, Any]
    issued: int | None = None  # known per campaign and per batch, for the whole campaign
    assigned: int | None = None  # None where the grouping has no meaning for codes (channel)
    redeemed: int = 0
    rolled_back: int = 0
    flagged: int = 0
    money: list[Money] = field(default_factory=list)
    median_wait_seconds: float | None = None

    @property
    def redemption_rate(self) -> float | None:
        return round(self.redeemed / self.assigned, 4) if self.assigned else None


@dataclass
class Report:
    campaign_id: int
    partner_id: int | None
    timezone: str
    group_by: tuple[str, ...]
    start: date | None
    end: date | None
    totals: Figures
    groups: list[Figures]


def parse_query(
    campaign_id: int, *, group_by: str | None, start: str | None, end: str | None, partner_id: str | int | None
) -> Query:
    """A Query from the strings of a request or a command line; InvalidInput names the field."""
    dims: tuple[str, ...] = ()
    if group_by is not None:
        dims = tuple(d.strip() for d in group_by.split(","))
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown or not dims:
            raise InvalidInput(
                f"group_by is one or two of {', '.join(DIMENSIONS)}, comma-separated",
                reason="invalid_group_by",
                details={"field": "group_by", "allowed": list(DIMENSIONS)},
            )
        if len(dims) > MAX_GROUPS or len(set(dims)) != len(dims):
            raise InvalidInput(
                f"group_by takes at most {MAX_GROUPS} different dimensions",
                reason="invalid_group_by",
                details={"field": "group_by"},
            )
    first, last = _day(start, "from"), _day(end, "to")
    if first and last and first > last:
        raise InvalidInput("from must be on or before to", reason="invalid_range", details={"field": "from"})
    if first and last and (last - first).days > MAX_DAYS:
        raise InvalidInput(f"a range spans at most {MAX_DAYS} days", reason="invalid_range", details={"field": "to"})
    partner: int | None = None
    if partner_id is not None and partner_id != "":
        try:
            partner = int(partner_id)
        except ValueError:
            partner = 0
        if partner < 1 or partner > 2**31 - 1:
            raise InvalidInput("partner_id is a partner's id", reason="invalid_partner_id", details={"field": "partner_id"})
    return Query(campaign_id, dims, first, last, partner)


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} is a day, YYYY-MM-DD", reason="invalid_date", details={"field": name}) from None


def results(session: Session, *, shop_id: int, query: Query) -> Report:
    """The campaign's figures for `query`, from the rollups (NotFound when not this shop's)."""
    get_campaign(session, shop_id=shop_id, campaign_id=query.campaign_id)
    if query.partner_id is not None:
        found = session.exec(select(Partner.id).where(col(Partner.id) == query.partner_id, col(Partner.shop_id) == shop_id))
        if found.first() is None:
            raise NotFound(f"partner {query.partner_id} does not exist in this shop", reason="partner_not_found")
    shop = session.get(Shop, shop_id)
    zone = shop.timezone if shop is not None else "UTC"
    reader = _Reader(session, shop_id, query, zone)
    totals = reader.figures(())[()]
    groups = list(reader.figures(query.group_by).values()) if query.group_by else []
    return Report(query.campaign_id, query.partner_id, zone, query.group_by, query.start, query.end, totals, groups)


class _Reader:
    def __init__(self, session: Session, shop_id: int, query: Query, zone: str) -> None:
        self.conn = session.connection()
        self.sqlite = self.conn.dialect.name == "sqlite"
        self.shop_id, self.query, self.zone = shop_id, query, zone

    def _filters(self, partner_column: str, day_column: str | None) -> tuple[str, dict[str, Any]]:
        q = self.query
        sql, params = "", dict[str, Any](shop=self.shop_id, campaign=q.campaign_id)
        if q.partner_id is not None:
            sql += f" AND {partner_column} = :partner"
            params["partner"] = q.partner_id
        if day_column is not None:
            if q.start is not None:
                sql += f" AND {day_column} >= :start"
                params["start"] = self._date(q.start)
            if q.end is not None:
                sql += f" AND {day_column} <= :end"
                params["end"] = self._date(q.end)
        return sql, params

    def _date(self, day: date) -> Any:
        return day.isoformat() if self.sqlite else day

    def figures(self, dims: Sequence[str]) -> dict[Key, Figures]:
        out: dict[Key, Figures] = {}
        self.waited: dict[Key, int] = {}  # per group: the active redemptions with a wait (the rollups say)

        def row(key: Key) -> Figures:
            if key not in out:
                out[key] = Figures(key=dict(zip(dims, key, strict=True)))
            return out[key]

        cols = [_RESULT_COLUMN[d] for d in dims]
        select_cols = "".join(f"{c}, " for c in cols)
        where, params = self._filters("partner_key", "day")
        money = self.conn.execute(
            text(
                f"SELECT {select_cols}currency, SUM(redeemed), SUM(rolled_back), SUM(flagged), SUM(revenue), SUM(discount), "
                "SUM(waited) "
                f"FROM result_day WHERE shop_id = :shop AND campaign_id = :campaign{where} "
                f"GROUP BY {select_cols}currency ORDER BY {select_cols}currency"
            ),
            params,
        ).all()
        for r in money:
            key = tuple(_value(d, v) for d, v in zip(dims, r[: len(dims)], strict=True))
            figures = row(key)
            currency, redeemed, rolled_back, flagged, revenue, discount, waited = r[len(dims) :]
            self.waited[key] = self.waited.get(key, 0) + int(waited)
            figures.redeemed += int(redeemed)
            figures.rolled_back += int(rolled_back)
            figures.flagged += int(flagged)
            if int(redeemed) or int(revenue) or int(discount):
                figures.money.append(Money(currency, int(revenue), int(discount)))
        if not dims:
            row(())
        if set(dims) <= _ASSIGN_DIMENSIONS:
            for r in self.conn.execute(
                text(
                    f"SELECT {select_cols}SUM(assigned) FROM assign_day WHERE shop_id = :shop AND campaign_id = :campaign{where} "
                    + (f"GROUP BY {', '.join(cols)}" if cols else "")
                ),
                params,
            ).all():
                if r[-1] is None:
                    continue
                row(tuple(_value(d, v) for d, v in zip(dims, r[: len(dims)], strict=True))).assigned = int(r[-1])
            for figures in out.values():
                figures.assigned = figures.assigned or 0
        self._issued(dims, out)
        if self.query.medians:
            self._medians(dims, out)
        return dict(sorted(out.items(), key=lambda kv: tuple(_sortable(v) for v in kv[0])))

    def _issued(self, dims: Sequence[str], out: dict[Key, Figures]) -> None:
        """Codes issued: per campaign and per batch, over the whole campaign (codes carry no day
        in the rollups, and a partner's block is allocated, not issued)."""
        q = self.query
        if q.partner_id is not None or q.start is not None or q.end is not None or tuple(dims) not in ((), ("batch",)):
            return
        rows = self.conn.execute(
            text("SELECT batch_key, codes FROM campaign_stats WHERE shop_id = :shop AND campaign_id = :campaign"),
            {"shop": self.shop_id, "campaign": q.campaign_id},
        ).all()
        if not dims:
            out[()].issued = sum(int(r[1]) for r in rows)
            return
        for batch_key, codes in rows:
            if (int(batch_key),) in out or int(codes):
                out.setdefault((int(batch_key),), Figures(key={"batch": int(batch_key)})).issued = int(codes)
        for figures in out.values():
            figures.issued = figures.issued or 0

    def _instant(self, day: date) -> Any:
        moment = datetime.combine(day, time(), ZoneInfo(self.zone)).astimezone(UTC)
        return moment.replace(tzinfo=None).isoformat(" ", "microseconds") if self.sqlite else moment

    def _wait_filters(self) -> tuple[str, dict[str, Any]]:
        """The conditions of the redemptions a query counts, on the columns the wait indexes carry.
        The campaign is this shop's (checked), so the shop needs no condition: the index answers alone."""
        q = self.query
        where = "r.campaign_id = :campaign AND r.status = 'active' AND r.wait_seconds IS NOT NULL"
        params: dict[str, Any] = {"campaign": q.campaign_id}
        if q.partner_id is not None:
            where += " AND r.partner_id = :partner"
            params["partner"] = q.partner_id
        if q.start is not None:
            where += " AND r.created_at >= :start"
            params["start"] = self._instant(q.start)
        if q.end is not None:
            where += " AND r.created_at < :end"
            params["end"] = self._instant(q.end + timedelta(days=1))
        return where, params

    def _medians(self, dims: Sequence[str], out: dict[Key, Figures]) -> None:
        """Medians of the waits of the active redemptions in each group: its count from the
        rollups and the middle one or two waits read at that OFFSET of an index in wait order
        (ix_redemption_*_wait: per campaign, channel, partner, batch, day or provider), so no row
        is sorted or sent."""
        where, params = self._wait_filters()
        for key, figures in out.items():
            n = self.waited.get(key, 0)
            if not n:
                continue
            condition = "".join(_group_condition(d, v, f"g{i}") for i, (d, v) in enumerate(zip(dims, key, strict=True)))
            groups = {f"g{i}": self._date(v) if isinstance(v, date) else v for i, v in enumerate(key)}
            middle = self.conn.execute(
                text(
                    f"SELECT r.wait_seconds FROM redemption AS r WHERE {where}{condition} "
                    "ORDER BY r.wait_seconds LIMIT :k OFFSET :o"
                ),
                {**params, **groups, "k": 2 - n % 2, "o": (n - 1) // 2},
            ).all()
            if middle:
                figures.median_wait_seconds = sum(float(m[0]) for m in middle) / len(middle)


_WAIT_INDEXED = {
    "channel": "r.channel",
    "partner": "r.partner_id",
    "batch": "r.batch_id",
    "day": "r.local_day",
    "provider": "r.provider",  # '' for none, as in the rollups
}


def _group_condition(dimension: str, value: Any, name: str) -> str:
    column = _WAIT_INDEXED[dimension]
    if dimension == "provider":
        return f" AND {column} = :{name}"
    if value in ("", 0):  # the rollups' "none" is NULL in the row (or, for a channel, also '')
        return f" AND ({column} IS NULL OR {column} = '')" if dimension == "channel" else f" AND {column} IS NULL"
    return f" AND {column} = :{name}"


def _value(dimension: str, value: Any) -> Any:
    if dimension == "day":
        return date.fromisoformat(value) if isinstance(value, str) else value
    if dimension in ("partner", "batch"):
        return int(value) if value is not None else 0
    return value if value is not None else ""


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value.isoformat()) if isinstance(value, date) else (1, value) if isinstance(value, int) else (2, str(value))


def figures_json(f: Figures) -> dict[str, Any]:
    return {
        "key": {k: v.isoformat() if isinstance(v, date) else v for k, v in f.key.items()},
        "issued": f.issued,
        "assigned": f.assigned,
        "redeemed": f.redeemed,
        "redemption_rate": f.redemption_rate,
        "rolled_back": f.rolled_back,
        "flagged": f.flagged,
        "money": [
            {"currency": m.currency, "revenue": m.revenue, "discount": m.discount, "return_per_discount": m.return_per_discount}
            for m in f.money
        ],
        "median_wait_seconds": f.median_wait_seconds,
    }


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON values (the API's ResultsReport, the CLI's output)."""
    return {
        "campaign_id": report.campaign_id,
        "partner_id": report.partner_id,
        "timezone": report.timezone,
        "group_by": list(report.group_by),
        "from": report.start.isoformat() if report.start else None,
        "to": report.end.isoformat() if report.end else None,
        "totals": figures_json(report.totals),
        "groups": [figures_json(g) for g in report.groups],
    }


# --- CSV ------------------------------------------------------------------------------------

FIGURE_COLUMNS = (
    "currency",
    "issued",
    "assigned",
    "redeemed",
    "redemption_rate",
    "rolled_back",
    "flagged",
    "revenue_minor",
    "discount_minor",
    "return_per_discount",
    "median_wait_seconds",
)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def report_csv(report: Report) -> str:
    """The report as CSV: one line per group and currency (no money: one line, no currency); the
    grouping's columns first, then the totals' line with those columns empty ("total")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*report.group_by, *FIGURE_COLUMNS])
    for figures, label in [*((g, None) for g in report.groups), (report.totals, "total")]:
        key = [label if label and i == 0 else "" if label else _cell(figures.key[d]) for i, d in enumerate(report.group_by)]
        counts = [
            _blank(figures.issued),
            _blank(figures.assigned),
            figures.redeemed,
            _blank(figures.redemption_rate),
            figures.rolled_back,
            figures.flagged,
        ]
        median = _blank(figures.median_wait_seconds)
        if not figures.money:
            writer.writerow([*key, "", *counts, "", "", "", median])
        for money in figures.money:
            rpd = _blank(money.return_per_discount)
            writer.writerow([*key, money.currency, *counts, money.revenue, money.discount, rpd, median])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


LOG_COLUMNS = (
    "id",
    "created_at",
    "order_id",
    "code",
    "status",
    "channel",
    "partner_id",
    "batch_id",
    "currency",
    "subtotal_minor",
    "revenue_minor",
    "refunded_minor",
    "discount_minor",
    "flagged_reason",
    "wait_seconds",
    "rolled_back_at",
)
LOG_PAGE = 2000


def redemption_log_csv(engine: Engine, *, shop_id: int, query: Query) -> Iterator[str]:
    """The campaign's redemptions as CSV, oldest first, page by page (keyset on the id), so a
    large log streams in constant memory. The first chunk (the header) is yielded once the
    campaign is known to be this shop's (NotFound otherwise)."""
    with read_session(engine) as session:
        get_campaign(session, shop_id=shop_id, campaign_id=query.campaign_id)
        shop = session.get(Shop, shop_id)
        zone = ZoneInfo(shop.timezone if shop is not None else "UTC")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LOG_COLUMNS)
    yield _drain(buffer)
    conditions = [col(Redemption.shop_id) == shop_id, col(Redemption.campaign_id) == query.campaign_id]
    if query.partner_id is not None:
        conditions.append(col(Redemption.partner_id) == query.partner_id)
    if query.start is not None:
        conditions.append(col(Redemption.created_at) >= datetime.combine(query.start, time(), zone))
    if query.end is not None:
        conditions.append(col(Redemption.created_at) < datetime.combine(query.end + timedelta(days=1), time(), zone))
    last = 0
    while True:
        with read_session(engine) as session:
            page = session.exec(
                select(Redemption).where(*conditions, col(Redemption.id) > last).order_by(col(Redemption.id)).limit(LOG_PAGE)
            ).all()
            if not page:
                return
            for r in page:
                writer.writerow(
                    (
                        r.id,
                        r.created_at.isoformat(),
                        r.order_id,
                        r.code,
                        r.status,
                        r.channel or "",
                        _blank(r.partner_id),
                        _blank(r.batch_id),
                        r.currency,
                        r.subtotal,
                        _blank(r.revenue),
                        r.refunded,
                        r.amount,
                        r.flagged_reason or "",
                        _blank(r.wait_seconds),
                        r.rolled_back_at.isoformat() if r.rolled_back_at else "",
                    )
                )
            last = page[-1].id or last
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    value = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return value
