"""Push recipients' codes through KlaviyoConnector into a local fake Klaviyo (bench/fake_klaviyo.py)
that enforces the bulk import endpoint's documented limits, and compare the elapsed time with the
lower bound those limits allow.

    .venv/bin/python bench/distribution_push.py [--recipients 100000] [--per-call 10000,1000] [--concurrency 20] [--unpaced]

Each `--per-call` value is one run against a fresh fake: the recipients go out in
push_recipients calls of that many (a worker's outbox batches), `--concurrency` calls at a time,
all through one connector (one account, so one set of pacers). The bound: with fixed windows of
10 requests a second and 150 a minute starting with the first job, each job sent as early as
they allow (the 100th job at 9 s; the 200th at 64 s: 150 in the first minute, then 10 a second).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from connectors.base import ConnectorConfig, Credentials, Recipient
from connectors.http import RatePacer
from connectors.klaviyo import KlaviyoConnector

FAKE = Path(__file__).with_name("fake_klaviyo.py")
LIMITS = ((10, 1.0), (150, 60.0))


def lower_bound(jobs: int) -> float:
    """When the last job can start, at best: each job as early as the fixed windows allow."""
    t = 0.0
    counts: dict[tuple[int, int], int] = {}
    for _ in range(jobs):
        while True:
            full = [(n, span) for n, (limit, span) in enumerate(LIMITS) if counts.get((n, int(t // span)), 0) >= limit]
            if not full:
                break
            t = max((int(t // span) + 1) * span for _, span in full)
        for n, (_, span) in enumerate(LIMITS):
            counts[n, int(t // span)] = counts.get((n, int(t // span)), 0) + 1
    return t


def recipients(n: int) -> list[Recipient]:
    return [
        Recipient(
            key=f"customer{i}@example.com",
            email=f"customer{i}@example.com",
            fields={
                "coupon_code": f"SPRING{i:08d}",
                "coupon_display": f"SPRING-{i:04d}-{i % 10_000:04d}",
                "coupon_expires_at": "2026-12-31T23:59:59+00:00",
                "claim_url": f"https://shop.example.com/claim/{i:022d}",
            },
        )
        for i in range(n)
    ]


def start_fake() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, str(FAKE), "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"fake Klaviyo did not start: {line!r}")
    base = f"http://127.0.0.1:{line.split()[1]}"
    for _ in range(100):  # until uvicorn accepts connections
        try:
            httpx.get(base + "/_stats", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("fake Klaviyo is not answering")


async def run(people: list[Recipient], per_call: int, concurrency: int, base: str, unpaced: bool) -> tuple[float, int, int]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        # --unpaced: pacers that never wait, to see the fake enforce its limits and the retries cope
        pacers = {key: RatePacer([(10**9, 1.0)]) for key in KlaviyoConnector.LIMITS} if unpaced else None
        klaviyo = KlaviyoConnector(
            client,
            ConnectorConfig(base_url=base),
            Credentials(shop_domain="bench.example", access_token="pk_bench"),
            attempts=20 if unpaced else 5,
            pacers=pacers,
        )
        gate = asyncio.Semaphore(concurrency)
        calls = [people[i : i + per_call] for i in range(0, len(people), per_call)]
        failures = exceptions = 0

        async def push(batch: list[Recipient]) -> None:
            nonlocal failures, exceptions
            async with gate:
                try:
                    results = await klaviyo.push_recipients(batch)
                except Exception as exc:
                    exceptions += 1
                    failures += len(batch)
                    print(f"  call failed: {exc!r}")
                    return
                failures += sum(not r.ok for r in results)

        start = time.perf_counter()
        await asyncio.gather(*(push(batch) for batch in calls))
        return time.perf_counter() - start, failures, exceptions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--per-call", default=f"{KlaviyoConnector.BATCH_SIZE},1000", help="comma-separated: one run per value")
    parser.add_argument("--concurrency", type=int, default=20, help="push_recipients calls at once")
    parser.add_argument("--unpaced", action="store_true", help="switch the connector's pacing off (429s expected)")
    args = parser.parse_args(argv)
    people = recipients(args.recipients)

    print(f"Klaviyo bulk profile import, {args.recipients:,} recipients; limits: burst 10/s, steady 150/m (fixed windows)")
    for per_call in (int(v) for v in args.per_call.split(",")):
        process, base = start_fake()
        try:
            elapsed, failures, exceptions = asyncio.run(run(people, per_call, args.concurrency, base, args.unpaced))
            stats = httpx.get(base + "/_stats").json()
        finally:
            process.terminate()
            process.wait(timeout=10)
        jobs = stats["accepted"]
        bound = lower_bound(jobs)
        ratio = f"{elapsed / bound:.3f} x bound" if bound else "bound is 0: every job fits in the first burst window"
        print(
            f"\nper call {per_call:,}: {jobs} jobs (largest request {stats['max_bytes'] / 1e6:.2f} MB), "
            f"{stats['profiles']:,} profiles accepted\n"
            f"  elapsed {elapsed:.2f} s; rate-limit lower bound {bound:.2f} s; {ratio}\n"
            f"  429s received: {stats['throttled']}; other rejections: {stats['rejected']}; "
            f"failed recipients: {failures} (calls raising: {exceptions})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
