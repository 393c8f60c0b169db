"""In-memory code generation speed: our generator against a ``secrets.choice`` loop.

``bench_in_memory(n)`` is imported by ``bench/generate.py``; run this file to print the figures:
``.venv/bin/python bench/generate_memory.py [n]``.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from plugin.formats.codes import CodeFormat, generate

FORMATS = {
    "default": CodeFormat(),
    "pattern": CodeFormat(pattern="BF-####-####"),
    "check": CodeFormat(check_chars=1),
}


def _rate(make: Callable[[int], list[str]], n: int, repeat: int) -> float:
    """Best codes/s over ``repeat`` runs (the first run also warms the caches)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        codes = make(n)
        elapsed = time.perf_counter() - start
        assert len(codes) == n
        best = max(best, n / elapsed)
    return best


def _choice_loop(fmt: CodeFormat) -> Callable[[int], list[str]]:
    """The naive baseline: one ``secrets.choice`` call per symbol, a set for distinctness."""

    def make(n: int) -> list[str]:
        seen: set[str] = set()
        while len(seen) < n:
            seen.add("".join(secrets.choice(fmt.alphabet) for _ in range(fmt.length)))
        return list(seen)

    return make


def bench_in_memory(n: int = 1_000_000, *, repeat: int = 3) -> dict[str, Any]:
    """Codes per second generated in memory for the default format, a pattern format and a
    check-character format, and for a ``secrets.choice`` loop (on at most 50,000 codes)."""
    baseline = _rate(_choice_loop(FORMATS["default"]), min(n, 50_000), 1)
    result: dict[str, Any] = {"n": n, "baseline_secrets_choice_per_s": round(baseline)}
    for name, fmt in FORMATS.items():
        rate = _rate(partial(generate, fmt), n, repeat)
        result[f"{name}_per_s"] = round(rate)
        result[f"{name}_vs_baseline"] = round(rate / baseline, 1)
    return result


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    result = bench_in_memory(n)
    print(f"in-memory generation of {n:,} codes (best of 3), baseline secrets.choice loop:")
    print(f"  {'secrets.choice loop':<22} {result['baseline_secrets_choice_per_s']:>12,} codes/s")
    for name, fmt in FORMATS.items():
        label = f"{name} ({fmt.pattern or fmt.length}{', check' if fmt.check_chars else ''})"
        print(f"  {label:<22} {result[f'{name}_per_s']:>12,} codes/s  x{result[f'{name}_vs_baseline']}")


if __name__ == "__main__":
    main()
