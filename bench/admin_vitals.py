"""Web vitals of the admin in headless Chromium (Debian's /usr/bin/chromium via Playwright):
LCP, CLS and an interaction's INP-like delay (event timing: input to next paint) on Home and
on a list page (Sandbox orders), measured with the browser's PerformanceObserver against a real
server. Targets: LCP <= 2.5 s, CLS <= 0.1, interaction <= 200 ms. Also saves screenshots of
the main pages to docs/screenshots/ (--screenshots).

    .venv/bin/python bench/admin_vitals.py [--runs 5] [--orders 60] [--screenshots]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin.sandbox import store as sandbox
from plugin.shops import users
from plugin.store.db import session_scope
from tests.browser.harness import chromium, running_app

OBSERVE = """
window.__vitals = {lcp: 0, cls: 0, inp: 0};
new PerformanceObserver(l => { for (const e of l.getEntries()) window.__vitals.lcp = e.startTime; })
  .observe({type: 'largest-contentful-paint', buffered: true});
new PerformanceObserver(l => { for (const e of l.getEntries()) if (!e.hadRecentInput) window.__vitals.cls += e.value; })
  .observe({type: 'layout-shift', buffered: true});
new PerformanceObserver(l => { for (const e of l.getEntries()) window.__vitals.inp = Math.max(window.__vitals.inp, e.duration); })
  .observe({type: 'event', buffered: true, durationThreshold: 16});
"""
PASSWORD = "correct horse battery staple"


def measure(page: Any, url: str, click: str) -> dict[str, float]:
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)
    page.click(click)  # an interaction that paints without leaving the page
    page.wait_for_timeout(300)
    return dict(page.evaluate("window.__vitals"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--screenshots", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_app(Path(tmp)) as app, chromium() as browser:
        with session_scope(app.engine) as session:
            for n in range(args.orders):
                sandbox.place_order(session, app.settings.default_shop_domain, codes=[], subtotal=1000 + n)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(OBSERVE)
        page = context.new_page()
        page.goto(users.setup_link(app.settings, app.shop_id))
        page.fill("#f-email", "owner@shop.example")
        page.fill("#f-password", PASSWORD)
        page.fill("#f-confirm", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{app.url}/admin/")
        pages = {"home": (f"{app.url}/admin/", "#figures-h"), "sandbox orders": (f"{app.url}/admin/sandbox", "#f-codes")}
        print(f"{'page':16} {'LCP ms p50/max':>16} {'CLS max':>8} {'interaction ms p50/max':>24}")
        for name, (url, click) in pages.items():
            runs = [measure(page, url, click) for _ in range(args.runs)]
            lcp = [r["lcp"] for r in runs]
            inp = [r["inp"] for r in runs]
            print(
                f"{name:16} {statistics.median(lcp):7.0f}/{max(lcp):<7.0f}  {max(r['cls'] for r in runs):7.3f}"
                f" {statistics.median(inp):11.0f}/{max(inp):<11.0f}"
            )
        if args.screenshots:
            out = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
            out.mkdir(parents=True, exist_ok=True)
            for name, path in (("home", "/admin/"), ("settings", "/admin/settings"), ("sandbox", "/admin/sandbox")):
                page.goto(app.url + path)
                page.screenshot(path=str(out / f"{name}.png"), full_page=False)
            print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
