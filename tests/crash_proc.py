"""Processes for the crash and signal tests: `python -m tests.crash_proc app|worker ...`.

`couponry serve` and `couponry worker` migrate an embedded SQLite database on start; the tests
prepare their database with `create_all` instead, so they start these processes, which run the
same app and worker code on a database as it is, with settings from the arguments."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from datetime import timedelta

from plugin.settings import Secret, Settings
from plugin.store.db import make_engine

SECRET = "crash-test-secret-key-0123456789"


def settings(args: argparse.Namespace) -> Settings:
    return Settings(
        database_url=args.db,
        secret_key=Secret(SECRET),
        run_worker_in_process=args.in_process_worker,
        webhook_processing=args.webhook_processing,
        sandbox_enabled=args.sandbox,
        public_url=args.public_url or f"http://127.0.0.1:{args.port}",
        log_level="warning",
    )


def run_app(args: argparse.Namespace) -> None:
    import uvicorn

    from plugin.web.app import create_app

    config = settings(args)
    app = create_app(config, engine=make_engine(config.database_url))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


async def _worker(args: argparse.Namespace) -> None:
    from plugin.jobs.worker import Worker, default_handlers, make_http_client
    from plugin.store.jobcontext import JobContext

    config = settings(args)
    engine = make_engine(config.database_url)
    handlers = default_handlers()
    if args.slow_job:
        handlers["test.slow"] = _slow_job
    async with make_http_client() as http:
        worker = Worker(
            JobContext(engine=engine, settings=config, http=http),
            handlers=handlers,
            lease=timedelta(seconds=args.lease),
            poll_interval=0.05,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()


async def _slow_job(ctx: object, job: object) -> None:
    """A job that takes a while and says when it starts and ends (the graceful stop test)."""
    from plugin.store.jobcontext import JobContext
    from plugin.store.outbox import ClaimedJob

    assert isinstance(ctx, JobContext) and isinstance(job, ClaimedJob)
    print(f"started {job.id}", flush=True)
    await asyncio.sleep(float(job.payload.get("seconds", 1.0)))
    print(f"finished {job.id}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["app", "worker"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--public-url", default=None, help="where the sandbox API is (the worker pushes there)")
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--in-process-worker", action="store_true")
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--slow-job", action="store_true", help="add the test.slow job kind")
    parser.add_argument("--webhook-processing", choices=["web", "worker"], default="web")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.role == "app":
        run_app(args)
    else:
        asyncio.run(_worker(args))


if __name__ == "__main__":
    main()
