"""The job queue as an operator watches it: jobs waiting, running and dead per kind, and how
long the longest-waiting due job has waited (read at scrape time by plugin.web.metrics)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from plugin.store import jobstore
from plugin.store.db import connected
from plugin.store.jobstore import QueueFigure

__all__ = ["QueueFigure", "queue_figures"]


def queue_figures(engine: Engine, now: datetime) -> list[QueueFigure]:
    with connected(engine) as conn:
        return jobstore.queue_figures(conn, now=now)
