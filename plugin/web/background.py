"""What runs beside the web app: webhook ingestion (plugin.orders.ingest), the in-process worker (embedded default)
and the sandbox store with its webhook deliverer. `create_app` builds one and enters
`running(client)` in its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import Engine
from starlette.routing import BaseRoute, Mount

from plugin.orders.ingest import Ingest
from plugin.orders.orders import Processor
from plugin.settings import Settings

if TYPE_CHECKING:
    from plugin.jobs.worker import Worker
    from plugin.sandbox.deliverer import Deliverer


class Background:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.processor = Processor(engine, settings)
        # webhook deliveries: group commit, then batch processing here or by the workers
        self.ingest = Ingest(self.processor, process_here=settings.webhook_processing == "web")
        self.deliverer: Deliverer | None = None
        self.worker: Worker | None = None
        if settings.sandbox_enabled:
            from plugin.sandbox.deliverer import Deliverer

            self.deliverer = Deliverer(engine, settings)

    def routes(self) -> list[BaseRoute]:
        from plugin.web import hooks

        routes: list[BaseRoute] = list(hooks.routes)
        if self.settings.sandbox_enabled:
            from plugin.sandbox.api import create_sandbox_app

            routes.append(Mount("/sandbox", app=create_sandbox_app(self.engine, self.settings, self.deliverer)))
        return routes

    @asynccontextmanager
    async def running(self, client: httpx.AsyncClient) -> AsyncIterator[None]:
        self.processor.http = client
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        self.ingest.start()
        if self.deliverer is not None:
            self.deliverer.client = client
            tasks.append(asyncio.create_task(self.deliverer.run(stop), name="sandbox-deliverer"))
        if self.settings.run_worker_in_process:
            from plugin.jobs.worker import Worker
            from plugin.store.jobcontext import JobContext

            worker = self.worker = Worker(
                JobContext(engine=self.engine, settings=self.settings, http=client),
                lease=timedelta(seconds=self.settings.worker_lease_seconds),
            )
            tasks.append(asyncio.create_task(worker.run(), name="worker"))
        try:
            yield
        finally:
            # graceful: stop claiming, let the running job and deliveries finish
            stop.set()
            await self.ingest.stop()  # commit and process what came in, answering its requests
            if self.worker is not None:
                self.worker.stop()
            if self.deliverer is not None:
                self.deliverer.wake()
            await asyncio.gather(*tasks, return_exceptions=True)
