"""The worker: claim jobs, run each with its kind's handler, complete or fail it; repeat.

A worker runs up to `concurrency` jobs at once (COUPONRY_WORKER_CONCURRENCY), each in its own
task with its own lease, renewed while the job runs, so a long push is not taken over by
another worker; if the worker dies, the leases run out and other workers claim the jobs
(handlers are idempotent). The claim (plugin.store.jobstore) never hands out two jobs of one serial
key (one campaign's sync jobs) at once, nor more than COUPONRY_WORKER_SHOP_CONCURRENCY jobs of
one shop across all workers; the connectors' own rate limits still pace each platform. A big
push is cut into chunk jobs (plugin.platforms.sync), so a small sync of another campaign runs beside it
instead of behind it. When no job is due it runs the sweeps (e.g. webhook deliveries stored but
not processed because a process died right after answering) and sleeps until the poll interval
passes, a job finishes or someone wakes it.

With `webhook_processing = "worker"` (the Procfile), the worker also runs the webhook intake
beside its jobs: stored order webhooks turned into redemptions a batch at a time
(`plugin.orders.ingest.intake`), so a long push never holds them up.

SIGTERM and SIGINT stop claiming; the running jobs finish, then the worker exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from plugin import logs
from plugin.errors import PluginError
from plugin.metrics import JOB_FAILURES
from plugin.runtime import settle_heap
from plugin.settings import Settings
from plugin.store import outbox
from plugin.store.db import make_engine, run
from plugin.store.jobcontext import Handler, JobContext, Sweep
from plugin.store.outbox import ClaimedJob

log = logging.getLogger("couponry.worker")


def default_handlers() -> dict[str, Handler]:
    from plugin.distribution import klaviyopools, poolhealth, pushes
    from plugin.events import channels, delivery
    from plugin.orders import orders
    from plugin.platforms import expiry, installs, sync
    from plugin.reconciliation import reconcile

    return {
        **sync.HANDLERS,
        **expiry.HANDLERS,
        **orders.HANDLERS,
        **installs.HANDLERS,
        **reconcile.HANDLERS,
        **pushes.HANDLERS,
        **poolhealth.HANDLERS,
        **klaviyopools.HANDLERS,
        **delivery.HANDLERS,
        **channels.HANDLERS,
    }


def default_sweeps() -> list[Sweep]:
    from plugin.distribution import klaviyopools, reminders
    from plugin.orders import orders, retention
    from plugin.platforms import expiry
    from plugin.reconciliation import reconcile

    return [
        orders.sweep_unprocessed,
        reconcile.schedule,
        retention.RetentionSweep(),
        expiry.ExpirySweep(),
        klaviyopools.schedule_checks,
        reminders.ReminderSweep(),
    ]


@dataclass
class Worker:
    ctx: JobContext
    handlers: Mapping[str, Handler] = field(default_factory=default_handlers)
    sweeps: Sequence[Sweep] = field(default_factory=default_sweeps)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}")
    lease: timedelta = timedelta(seconds=60)
    # jobs at once in this worker, and of one shop across all workers (None: from the settings)
    concurrency: int | None = None
    shop_limit: int | None = None
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
        self.concurrency = max(1, self.concurrency or self.ctx.settings.worker_concurrency)
        self.shop_limit = self.shop_limit or self.ctx.settings.worker_shop_concurrency
        self._running: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Jobs running in this worker now."""
        return len(self._running)

    def stop(self) -> None:
        """Stop claiming; the running jobs finish first."""
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
        try:
            while not self.stopping:
                # cleared before the claim: a job that ends meanwhile wakes the wait below
                self._wake.clear()
                claimed = 0
                try:
                    claimed = await self._claim_and_start()
                    if not claimed:
                        await self._maybe_sweep()
                except Exception:  # the loop must outlive a database hiccup
                    log.exception("worker loop error")
                if not self.stopping:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
        finally:
            await self._drain()

    async def _claim_and_start(self) -> int:
        """Claim as many jobs as there are free slots and start each in its own task."""
        free = (self.concurrency or 1) - len(self._running)
        if free <= 0:
            return 0
        jobs = await self._claim(free)
        for job in jobs:
            task = asyncio.create_task(self.execute(job), name=f"job-{job.id}")
            self._running.add(task)
            task.add_done_callback(self._finished)
        return len(jobs)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("job task %s failed", task.get_name(), exc_info=exc)
        self._wake.set()  # a slot is free: claim again now

    async def _drain(self) -> None:
        """Wait for the running jobs (a graceful stop lets them finish)."""
        if self._running:
            log.info("worker %s waits for %s running job(s)", self.worker_id, len(self._running))
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        engine = self.ctx.engine
        return await run(
            engine, lambda: outbox.claim(engine, self.worker_id, self.lease, limit=limit, shop_limit=self.shop_limit)
        )

    async def _intake(self) -> None:
        """Turn stored order webhooks into redemptions, a batch at a time, beside the jobs: a
        long push must not hold up redemptions."""
        from plugin.orders.ingest import intake
        from plugin.orders.orders import Processor

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
        """Claim and run one job, here and now; False when none was due."""
        jobs = await self._claim(1)
        if not jobs:
            return False
        await self.execute(jobs[0])
        return True

    async def execute(self, job: ClaimedJob) -> None:
        # every record logged while the job runs names it and its shop
        with logs.request_scope(f"job-{job.id}"):
            logs.bind_shop(job.shop_id)
            await self._execute(job)

    async def _execute(self, job: ClaimedJob) -> None:
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
            JOB_FAILURES.labels(job.kind, status or "lease_lost").inc()
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
    if isinstance(exc, ConnectorError):  # some say how long to wait (plugin.events.delivery)
        return exc.retryable, getattr(exc, "retry_after", None)
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
        worker = Worker(
            JobContext(engine=engine, settings=settings, http=http),
            lease=timedelta(seconds=settings.worker_lease_seconds),
            poll_interval=poll_interval,
        )
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
    logs.configure(settings)
    settle_heap()
    try:
        import uvloop

        uvloop.run(serve_worker(settings, engine, poll_interval=poll_interval))
    except ImportError:
        asyncio.run(serve_worker(settings, engine, poll_interval=poll_interval))
