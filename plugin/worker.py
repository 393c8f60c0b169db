"""The worker: claim a job, run its kind's handler, complete or fail it; repeat.

One worker runs one job at a time and renews its lease while the job runs, so a long push
of a million codes is not taken over by another worker; if the worker dies, the lease runs
out and another worker claims the job (handlers are idempotent). When idle it runs the
sweeps (e.g. webhook deliveries stored but not processed because a process died right
after answering) and sleeps until the poll interval passes or someone wakes it.

With `webhook_processing = "worker"` (the Procfile), the worker also runs the webhook intake
beside its jobs: stored order webhooks turned into redemptions a batch at a time
(`plugin.ingest.intake`), so a long push never holds them up.

SIGTERM and SIGINT stop claiming; the running job finishes, then the worker exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from plugin import outbox
from plugin.db import make_engine, run
from plugin.errors import PluginError
from plugin.outbox import ClaimedJob
from plugin.runtime import settle_heap
from plugin.settings import Settings

log = logging.getLogger("couponry.worker")


@dataclass(frozen=True)
class JobContext:
    """What handlers get besides their job: the database, the settings, the shared HTTP client."""

    engine: Engine
    settings: Settings
    http: httpx.AsyncClient


Handler = Callable[[JobContext, ClaimedJob], Awaitable[None]]
Sweep = Callable[[JobContext], Awaitable[int]]


def default_handlers() -> dict[str, Handler]:
    from plugin import installs, klaviyopools, orders, poolhealth, pushes, reconcile, sync

    return {
        **sync.HANDLERS,
        **orders.HANDLERS,
        **installs.HANDLERS,
        **reconcile.HANDLERS,
        **pushes.HANDLERS,
        **poolhealth.HANDLERS,
        **klaviyopools.HANDLERS,
    }


def default_sweeps() -> list[Sweep]:
    from plugin import klaviyopools, orders, reconcile, webhooks

    return [orders.sweep_unprocessed, reconcile.schedule, webhooks.RetentionSweep(), klaviyopools.schedule_checks]


@dataclass
class Worker:
    ctx: JobContext
    handlers: Mapping[str, Handler] = field(default_factory=default_handlers)
    sweeps: Sequence[Sweep] = field(default_factory=default_sweeps)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}")
    lease: timedelta = timedelta(seconds=60)
    poll_interval: float = 1.0
    sweep_interval: float = 10.0
    # with `webhook_processing = "worker"`, how long the intake waits when no delivery waits
    intake_interval: float = 0.1
    # deliveries per intake batch, and how long a batch that came out short waits for more:
    # a batch's fixed cost (a dozen statements, a commit) is worth sharing, and its write
    # turn must stay short, as the web processes wait for it to store theirs
    intake_batch: int = 100
    intake_linger: float = 0.02

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._next_sweep = 0.0

    def stop(self) -> None:
        """Stop claiming; the running job, if any, finishes first."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        log.info("worker %s started", self.worker_id)
        intake = None
        if self.ctx.settings.webhook_processing == "worker":
            intake = asyncio.create_task(self._intake(), name="webhook-intake")
        try:
            await self._jobs()
        finally:
            if intake is not None:
                await intake  # it stops at its next batch boundary
        log.info("worker %s stopped", self.worker_id)

    async def _jobs(self) -> None:
        while not self.stopping:
            try:
                ran = await self.run_once()
                if not ran:
                    await self._maybe_sweep()
            except Exception:  # the loop must outlive a database hiccup
                log.exception("worker loop error")
                ran = False
            if not ran and not self.stopping:
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def _intake(self) -> None:
        """Turn stored order webhooks into redemptions, a batch at a time, beside the jobs: a
        long push must not hold up redemptions."""
        from plugin.ingest import intake
        from plugin.orders import Processor

        processor = Processor(self.ctx.engine, self.ctx.settings, self.ctx.http)
        while not self.stopping:
            try:
                took = await intake(processor, limit=self.intake_batch)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("webhook intake error")
                took = 0
            if took < self.intake_batch:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.intake_linger if took else self.intake_interval)

    async def run_once(self) -> bool:
        """Claim and run one job; False when none was due."""
        engine = self.ctx.engine
        jobs = await run(engine, lambda: outbox.claim(engine, self.worker_id, self.lease, limit=1))
        if not jobs:
            return False
        await self.execute(jobs[0])
        return True

    async def execute(self, job: ClaimedJob) -> None:
        engine = self.ctx.engine
        handler = self.handlers.get(job.kind)
        if handler is None:
            await run(engine, lambda: outbox.fail(engine, job, self.worker_id, f"no handler for {job.kind!r}", retryable=False))
            return
        heartbeat = asyncio.create_task(self._heartbeat(job, asyncio.current_task()))
        try:
            await handler(self.ctx, job)
        except asyncio.CancelledError:
            if heartbeat.done() and heartbeat.result() is False:
                log.warning("job %s: lease lost, left to its new worker", job.id)
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()  # this cancel was ours, not the caller's
                return
            raise
        except Exception as exc:
            retryable, retry_after = _classify(exc)
            message = f"{type(exc).__name__}: {exc}"
            status = await run(
                engine,
                lambda: outbox.fail(engine, job, self.worker_id, message, retry_after=retry_after, retryable=retryable),
            )
            log.warning("job %s (%s) attempt %s failed -> %s: %s", job.id, job.kind, job.attempts, status, message)
        else:
            await run(engine, lambda: outbox.complete(engine, job, self.worker_id))
        finally:
            heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, job: ClaimedJob, runner: asyncio.Task[object] | None) -> bool:
        engine = self.ctx.engine
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            if not await run(engine, lambda: outbox.renew(engine, job, self.worker_id, self.lease)):
                # Someone else holds the job now; two runners of one job at once is what the
                # lease exists to prevent, so this one gives way.
                if runner is not None:
                    runner.cancel()
                return False

    async def _maybe_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_sweep:
            return
        self._next_sweep = loop.time() + self.sweep_interval
        for sweep in self.sweeps:
            if self.stopping:
                return
            done = await sweep(self.ctx)
            if done:
                log.info("sweep %s handled %s item(s)", getattr(sweep, "__name__", sweep), done)


def _classify(exc: BaseException) -> tuple[bool, float | None]:
    """(worth retrying, seconds the remote asked us to wait)."""
    from connectors.errors import ConnectorError, RateLimited

    if isinstance(exc, RateLimited):
        return True, exc.retry_after
    if isinstance(exc, ConnectorError):
        return exc.retryable, None
    if isinstance(exc, PluginError):
        return False, None  # the request itself is wrong (a campaign gone, bad input)
    return True, None  # unknown: a database or network hiccup is worth another try


def make_http_client(settings: Settings | None = None) -> httpx.AsyncClient:
    """The worker's client: WooCommerce stores (hosts merchants name) reach public addresses
    only, loopback and private ones too with the COUPONRY_ALLOW_PRIVATE_STORES opt-in."""
    from connectors.egress import AddressPolicy, shared_client

    return shared_client(AddressPolicy(allow_private=settings is not None and settings.allow_private_stores))


async def serve_worker(settings: Settings, engine: Engine, *, poll_interval: float = 1.0) -> None:
    """Run a worker until SIGTERM or SIGINT."""
    async with make_http_client(settings) as http:
        worker = Worker(JobContext(engine=engine, settings=settings, http=http), poll_interval=poll_interval)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        try:
            await worker.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def run_worker(settings: Settings, engine: Engine | None = None, *, poll_interval: float = 1.0) -> None:
    """`couponry worker`: the loop in the foreground, with uvloop when available."""
    engine = engine or make_engine(settings.database_url)
    settle_heap()
    try:
        import uvloop

        uvloop.run(serve_worker(settings, engine, poll_interval=poll_interval))
    except ImportError:
        asyncio.run(serve_worker(settings, engine, poll_interval=poll_interval))
