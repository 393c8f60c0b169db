"""Process-wide tuning for the long-running processes: `couponry serve` and `couponry worker`."""

from __future__ import annotations

import gc

# Net allocations between two collections of the young generation (CPython's default: 700)
YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Tune CPython's cyclic garbage collector for a server, once its app is built.

    With the defaults, the collector cost ~40 µs per webhook under load (bench/webhooks.py), a
    tenth of the process's CPU: it walks the young objects every 700 allocations, and every
    full collection walks the whole heap, mostly modules, models and caches built at start
    that never become garbage. Freezing that heap takes it out of every collection, and a
    higher young threshold makes collections ~70x rarer. Cycles are still collected, a little
    later (a few MB of them at most).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
