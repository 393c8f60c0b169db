"""The storefront script's transfer size (issue 16: under 10 KB compressed): raw, gzip -9 (what
the app serves to browsers that accept gzip) and brotli when the `brotli` module is installed
(CDNs in front of the app, and Shopify's CDN for the theme extension's copy, may serve it), with
the ratio of each to the 10,000-byte budget (Shopify's theme-check threshold for an app block's
compressed JavaScript).

    .venv/bin/python bench/storefront_script.py
"""

from __future__ import annotations

import gzip
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "plugin" / "web" / "static" / "storefront" / "couponry.js"
BUDGET = 10_000


def main() -> None:
    body = SCRIPT.read_bytes()
    sizes = {"raw": len(body), "gzip -9": len(gzip.compress(body, 9))}
    try:
        import brotli  # type: ignore[import-not-found]

        sizes["brotli q11"] = len(brotli.compress(body, quality=11))
    except ImportError:
        sizes["brotli"] = -1
    for name, size in sizes.items():
        shown = "not installed (pip install brotli)" if size < 0 else f"{size:>6} bytes  {size / BUDGET:5.1%} of the budget"
        print(f"{name:<11} {shown}")


if __name__ == "__main__":
    main()
