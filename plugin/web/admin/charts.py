"""Server-rendered SVG charts for the admin: no script, no library, nothing a strict CSP refuses
(colours come from classes in admin.css, never inline styles). Each chart is an `<svg role="img">`
with a <title> and <desc> naming what it shows; the page puts the same figures in a table next to
it, so nothing is only in a picture.

Pure functions of their figures: labels in, markup out (Markup, escaped here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 36


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    css: str  # the class that colours it (admin.css: .chart .s0 ... .s5)


def _nice_max(value: float) -> float:
    """A round axis top at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= value:
        power *= 10
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _axis(top: float, fmt: str) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt.format(value))}</text>')
    return parts


def _x_labels(labels: Sequence[str], x_of: list[float]) -> list[str]:
    every = max(1, len(labels) // 8)  # at most about eight labels under the axis
    return [
        f'<text class="tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>'
        for i, (label, x) in enumerate(zip(labels, x_of, strict=True))
        if i % every == 0
    ]


def _svg(chart_id: str, title: str, desc: str, body: list[str], legend: Sequence[Series] = ()) -> Markup:
    keys = "".join(
        f'<g transform="translate({LEFT + 140 * i},{HEIGHT - 6})"><rect class="{s.css}" width="10" height="10" y="-9"/>'
        f'<text class="tick" x="14">{escape(s.name)}</text></g>'
        for i, s in enumerate(legend)
    )
    return Markup(
        f'<svg class="chart" id="{escape(chart_id)}" role="img" viewBox="0 0 {WIDTH} {HEIGHT + (14 if legend else 0)}" '
        f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title><desc id="{escape(chart_id)}-d">{escape(desc)}</desc>'
        f"{''.join(body)}{keys}</svg>"
    )


def bars(chart_id: str, title: str, desc: str, labels: Sequence[str], series: Sequence[Series], fmt: str = "{:,.0f}") -> Markup:
    """Grouped vertical bars: one group per label, one bar per series."""
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(1, len(labels))
    bar = max(1.0, slot * 0.8 / max(1, len(series)))
    body = _axis(top, fmt)
    centres = []
    for i, label in enumerate(labels):
        x0 = LEFT + slot * i + slot * 0.1
        centres.append(LEFT + slot * i + slot / 2)
        for j, s in enumerate(series):
            value = s.values[i]
            h = inner_h * value / top
            body.append(
                f'<rect class="{s.css}" x="{x0 + bar * j:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{bar:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}, {escape(s.name)}: {escape(fmt.format(value))}</title></rect>"
            )
    body += _x_labels(labels, centres)
    return _svg(chart_id, title, desc, body, series if len(series) > 1 else ())


def lines(chart_id: str, title: str, desc: str, labels: Sequence[str], series: Sequence[Series], fmt: str = "{:,.2f}") -> Markup:
    """One polyline per series over the labels (days), with a dot per point."""
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(1, len(labels) - 1) if len(labels) > 1 else 0
    xs = [LEFT + step * i if len(labels) > 1 else LEFT + inner_w / 2 for i in range(len(labels))]
    body = _axis(top, fmt)
    for s in series:
        points = [(x, HEIGHT - BOTTOM - inner_h * v / top) for x, v in zip(xs, s.values, strict=True)]
        body.append(f'<polyline class="line {s.css}" fill="none" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        body += [
            f'<circle class="{s.css}" cx="{x:.1f}" cy="{y:.1f}" r="2.5"><title>{escape(label)}, {escape(s.name)}: '
            f"{escape(fmt.format(v))}</title></circle>"
            for (x, y), label, v in zip(points, labels, s.values, strict=True)
        ]
    body += _x_labels(labels, xs)
    return _svg(chart_id, title, desc, body, series)
