"""Slow clients against a real `couponry serve`: N connections trickling one byte every few
seconds (issue 12: 300 of them, a byte every 5 s, were all held open). With the request
deadline (COUPONRY_REQUEST_TIMEOUT) each is closed once it has had that long to send a
complete request; a normal client is answered meanwhile.

    .venv/bin/python bench/slow_clients.py [--connections 300] [--every 5] [--timeout 20] [--margin 10]

Runs for timeout + margin seconds, then reports how many connections the server closed and when.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.body_limit import free_port, start

REQUEST = b"POST /webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n"


async def trickle(port: int, every: float, until: float) -> float | None:
    """Seconds from opening until the server closed the connection; None if it stayed open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    try:
        position = 0
        while time.monotonic() < until:
            writer.write(REQUEST[position : position + 1] if position < len(REQUEST) else b"x")
            position += 1
            try:
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), timeout=every)
            except TimeoutError:
                continue  # nothing from the server: still open
            except ConnectionError:
                return time.monotonic() - opened
            if data == b"":
                return time.monotonic() - opened
        return None
    finally:
        writer.close()


async def run(port: int, connections: int, every: float, duration: float) -> tuple[list[float | None], list[int]]:
    started = time.monotonic()
    until = started + duration
    tasks = [asyncio.create_task(trickle(port, every, until)) for _ in range(connections)]
    statuses = []
    async with httpx.AsyncClient() as client:
        for _ in range(3):  # a normal client, while they trickle
            await asyncio.sleep(duration / 4)
            statuses.append((await client.get(f"http://127.0.0.1:{port}/healthz")).status_code)
    return list(await asyncio.gather(*tasks)), statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=None, help="COUPONRY_REQUEST_TIMEOUT for the server (default: its own)")
    parser.add_argument("--margin", type=float, default=10.0)
    args = parser.parse_args()
    timeout = args.timeout if args.timeout is not None else 20.0
    if args.timeout is not None:
        os.environ["COUPONRY_REQUEST_TIMEOUT"] = str(args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = start(Path(tmp), port, None)
        try:
            closed, statuses = asyncio.run(run(port, args.connections, args.every, timeout + args.margin))
        finally:
            process.terminate()
            process.wait(10)
    times = sorted(t for t in closed if t is not None)
    print(
        f"{args.connections} connections trickling a byte every {args.every:g} s for {timeout + args.margin:g} s"
        f" (request timeout {timeout:g} s):"
    )
    print(f"  closed by the server: {len(times)}; still open at the end: {len(closed) - len(times)}")
    if times:
        print(f"  closed after: min {times[0]:.1f} s, median {statistics.median(times):.1f} s, max {times[-1]:.1f} s")
    print(f"  a normal client meanwhile (GET /healthz): {statuses}")


if __name__ == "__main__":
    main()
