"""`GET /metrics`: the Prometheus text exposition (plugin.metrics), plus the job queue read from
the database at scrape time, so the figures are right whichever process answers.

With `COUPONRY_METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <token>`; without
it the endpoint is open, and should be kept from the internet by the reverse proxy (docs/deploy.md).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from plugin.jobs.queue import queue_figures
from plugin.metrics import CONTENT_TYPE_LATEST, exposition
from plugin.settings import Settings
from plugin.store.models import utcnow
from plugin.store.units import in_thread
from plugin.web.problems import problem

log = logging.getLogger(__name__)


class JobQueue(Collector):
    """couponry_jobs{kind,status} (queued, running, dead) and couponry_job_oldest_due_seconds{kind}:
    how long the longest-waiting due job of each kind has waited (0: none is due)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readable = GaugeMetricFamily("couponry_job_queue_readable", "1 when the job queue could be read at this scrape")
        try:
            now = utcnow()
            figures = queue_figures(self.engine, now)
        except Exception:  # the other metrics are still worth answering
            log.exception("could not read the job queue for /metrics")
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        jobs = GaugeMetricFamily("couponry_jobs", "Jobs in the queue, by kind and status", labels=["kind", "status"])
        oldest = GaugeMetricFamily(
            "couponry_job_oldest_due_seconds", "Seconds the longest-waiting due job of a kind has waited", labels=["kind"]
        )
        for figure in figures:
            jobs.add_metric([figure.kind, figure.status], figure.count)
            if figure.status == "queued":
                waited = (now - figure.oldest_due).total_seconds() if figure.oldest_due is not None else 0.0
                oldest.add_metric([figure.kind], max(0.0, waited))
        yield readable
        yield jobs
        yield oldest


def queue_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)  # nothing is read until a scrape
    registry.register(JobQueue(engine))
    return registry


async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if settings.metrics_token is not None:
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {settings.metrics_token}".encode()):
            return problem(
                401, "metrics_token_required", "Send the metrics token: Authorization: Bearer <COUPONRY_METRICS_TOKEN>.",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
    engine: Engine = request.app.state.engine
    registry: CollectorRegistry = request.app.state.queue_metrics
    body = await in_thread(engine, lambda: exposition(registry))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
