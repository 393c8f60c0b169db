"""What a job handler is and what it gets: the contract between the worker (`plugin.jobs`) and the
services' handlers, kept here so that services write handlers without importing the worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from sqlalchemy import Engine

from plugin.settings import Settings
from plugin.store.jobstore import ClaimedJob


@dataclass(frozen=True)
class JobContext:
    """What handlers get besides their job: the database, the settings, the shared HTTP client."""

    engine: Engine
    settings: Settings
    http: httpx.AsyncClient


Handler = Callable[[JobContext, ClaimedJob], Awaitable[None]]
Sweep = Callable[[JobContext], Awaitable[int]]
