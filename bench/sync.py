"""Push many codes through ShopifyConnector to a local fake Shopify and compare with the bucket's bound.

    .venv/bin/python -m bench.sync [--codes 100000] [--concurrency 16] [--bucket 1000] [--restore-rate 100] [--no-ids]

The fake (bench/fake_shopify.py, its own process on 127.0.0.1 and a free port) enforces the
leaky bucket in real time. Each batch of BATCH_SIZE codes needs one discountRedeemCodeBulkAdd
(10 points), at least one discountRedeemCodeBulkCreation poll (1 point) and one read of its
codes' redeem-code ids (1 + 2 + 2 x 100 = 203 points, kept so a later removal needs no search),
so no client can finish sooner than

    bound = max(0, batches x (10 + 1 + 203) - bucket) / restore_rate

(without the 203 with --no-ids). Measured on this machine, 20,000 codes, Standard plan
figures: 418.0 s against a bound of 418.0 s with the ids, 12.4 s against 12.0 s without.

seconds. We print the elapsed time against that bound, the throttled answers Shopify would
have sent and the codes that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.fake_shopify import DISCOUNT_ID, IDS_COST, MUTATION_COST, STATUS_COST
from connectors.base import CodeSpec, ConnectorConfig, Credentials
from connectors.shopify import ShopifyConnector

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def make_codes(n: int) -> list[CodeSpec]:
    seen: set[str] = set()
    while len(seen) < n:
        seen.add("".join(secrets.choice(ALPHABET) for _ in range(12)))
    return [CodeSpec(code=c, display=f"{c[:4]}-{c[4:8]}-{c[8:]}") for c in sorted(seen)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_up(client: httpx.AsyncClient, url: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if server.poll() is not None:
            raise SystemExit(f"fake Shopify exited with {server.returncode}")
        try:
            await client.get(url)
            return
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    raise SystemExit("fake Shopify did not start")


async def run(args: argparse.Namespace) -> int:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench.fake_shopify",
        f"--port={port}",
        f"--bucket={args.bucket}",
        f"--restore-rate={args.restore_rate}",
        f"--job-latency={args.job_latency}",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
            await wait_until_up(client, f"{base}/stats", server)
            config = ConnectorConfig(
                base_url=f"{base}/admin/api/{{version}}/graphql.json",
                client_id="bench",
                client_secret="bench",
                extra={"redeem_code_ids": "off" if args.no_ids else "on"},
            )
            credentials = Credentials(shop_domain="bench.myshopify.com", access_token="shpat_bench")
            connector = ShopifyConnector(client, config, credentials)
            codes = make_codes(args.codes)
            batches = [codes[i : i + connector.BATCH_SIZE] for i in range(0, len(codes), connector.BATCH_SIZE)]
            queue: asyncio.Queue[list[CodeSpec]] = asyncio.Queue()
            for batch in batches:
                queue.put_nowait(batch)
            failed: list[str] = []
            errors: list[str] = []

            async def worker() -> None:
                while not queue.empty():
                    batch = queue.get_nowait()
                    try:
                        results = await connector.push_codes(DISCOUNT_ID, batch)
                    except Exception as exc:  # a whole batch lost: count its codes as failed
                        errors.append(repr(exc))
                        failed.extend(c.code for c in batch)
                        continue
                    failed.extend(r.code for r in results if not r.ok)

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.monotonic() - started
            stats = (await client.get(f"{base}/stats")).json()
    finally:
        server.terminate()
        server.wait(timeout=10)

    spent = len(batches) * (MUTATION_COST + STATUS_COST + (0 if args.no_ids else IDS_COST))
    bound = max(0.0, spent - args.bucket) / args.restore_rate
    without_ids = max(0.0, len(batches) * (MUTATION_COST + STATUS_COST) - args.bucket) / args.restore_rate
    adds_only = max(0.0, len(batches) * MUTATION_COST - args.bucket) / args.restore_rate
    ratio = elapsed / bound if bound else math.nan
    size, workers = ShopifyConnector.BATCH_SIZE, args.concurrency
    print(f"codes pushed            {args.codes:,} in {len(batches):,} batches of {size}, {workers} workers")
    print(f"bucket                  {args.bucket:g} points, restoring {args.restore_rate:g}/s")
    print(f"elapsed                 {elapsed:.2f} s")
    print(
        f"lower bound             {bound:.2f} s  (batches x (add {MUTATION_COST} + poll {STATUS_COST}"
        f" + ids {0 if args.no_ids else IDS_COST})"
        " - bucket) / restore rate"
    )
    print(f"bound without the ids   {without_ids:.2f} s  (what reading the redeem-code ids costs on top)")
    print(f"elapsed / bound         {ratio:.3f}  (target <= 1.05)")
    print(f"bound, adds alone       {adds_only:.2f} s  (if polls were free)")
    print(f"throttled answers       {stats['throttled']:g}")
    print(f"failed codes            {len(failed):,}  (batches lost: {len(errors)})")
    requests, adds, polls, early = (stats[k] for k in ("requests", "bulk_adds", "polls", "polls_not_done"))
    print(f"requests                {requests:g}  (adds {adds:g}, polls and id reads {polls:g}, polls before done {early:g})")
    print(f"points spent            {stats['cost_spent']:g}  (client waited {connector.bucket.waited:.2f} s for the bucket)")
    print(f"codes stored by fake    {stats['codes_stored']:,}")
    if errors:
        print("first error:", errors[0])
    return 0 if not failed and stats["throttled"] == 0 and (bound == 0 or ratio <= 1.05) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bucket", type=float, default=1000.0, help="maximumAvailable (Standard plan per research: 1000)")
    parser.add_argument("--restore-rate", type=float, default=100.0, help="restoreRate points/s (Standard plan: 100)")
    parser.add_argument(
        "--job-latency", type=float, default=0.2, help="seconds the fake takes per bulk creation, plus 2 ms a code"
    )
    parser.add_argument("--no-ids", action="store_true", help="COUPONRY_SHOPIFY_REDEEM_CODE_IDS=off: skip reading the ids")
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
