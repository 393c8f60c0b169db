"""The app's Prometheus metrics (prometheus-client), recorded where things happen and served
at `/metrics` (plugin.web.metrics).

Every process counts its own. Where several processes share a host (`web` processes behind one
port, a `worker` beside them), set `PROMETHEUS_MULTIPROC_DIR` to an empty directory, the same
for all of them, before they start: each then writes its figures to files there and any one
of them answers `/metrics` with the sum (prometheus-client's multiprocess mode). Clear the
directory when the processes restart.

The job queue's gauges are not here: they are read from the database at scrape time
(plugin.web.metrics), so they are right whichever process answers.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

from connectors import throttling

__all__ = ["CONTENT_TYPE_LATEST", "exposition", "observe_request"]

# Fine at the low end, where the checkout calls live (ms); coarse up to the platforms' timeouts.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# One histogram for requests and their latency: its _count is the requests, per status
# (one observation per request, not a counter and a histogram).
REQUESTS = Histogram(
    "couponry_http_request_duration_seconds",
    "Requests and the time from their arrival to their answer, by route template, method and status",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
WEBHOOKS = Counter("couponry_webhooks", "Platform webhook deliveries, by what became of them on arrival", ["platform", "outcome"])
REDEMPTIONS = Counter("couponry_redemptions", "Redemptions recorded (repeats of an (order, code) not counted)", ["source"])
SYNC_FAILURES = Counter(
    "couponry_sync_failures",
    "Syncs to a shop platform that failed: codes the platform refused (kind=code) or calls that failed (kind=call)",
    ["platform", "kind"],
)
RATE_LIMIT_REFUSALS = Counter("couponry_rate_limit_refusals", "Checkout calls refused 429 for too many failed guesses", ["limit"])
PLATFORM_THROTTLED = Counter(
    "couponry_platform_throttled",
    "Times a platform held us back (HTTP 429, THROTTLED, cost-bucket waits)",
    ["platform", "signal"],
)
PLATFORM_THROTTLE_SECONDS = Counter(
    "couponry_platform_throttle_seconds",
    "Seconds a platform asked us to wait, or we waited for its cost bucket",
    ["platform", "signal"],
)
JOB_FAILURES = Counter("couponry_job_failures", "Jobs that failed an attempt, by kind and what follows", ["kind", "outcome"])

# labels() takes a lock and builds a tuple each call; a request looks its child up once
_request_children: dict[tuple[str, str, int], Histogram] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = REQUESTS.labels(route, method, str(status))
    child.observe(seconds)


def _on_throttled(platform: str, signal: str, seconds: float) -> None:
    PLATFORM_THROTTLED.labels(platform, signal).inc()
    if seconds > 0:
        PLATFORM_THROTTLE_SECONDS.labels(platform, signal).inc(seconds)


throttling.listen(_on_throttled)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(*extra: CollectorRegistry) -> bytes:
    """The text exposition: this process's metrics (or, in multiprocess mode, every process's
    summed), then `extra` registries' (collectors read at scrape time)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)  # ours plus the process's CPU, memory and file descriptors
    return output + b"".join(generate_latest(r) for r in extra)
