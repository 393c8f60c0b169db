"""Peak memory of `couponry serve` while a client streams an unsigned 1 GB chunked POST to
/webhooks/shopify (issue 12: it took the server to 2 GB resident before the signature was
checked; the body limit refuses it 413 once 5 MB have arrived).

Starts a real `couponry serve` on 127.0.0.1 on a fresh SQLite database in a temporary
directory, streams the body from a generator with httpx (no Content-Length: chunked), and
reads the server's VmHWM (peak resident set) from /proc/PID/status before and after:

    .venv/bin/python bench/body_limit.py [--gigabytes 1] [--limit BYTES]

`--limit` sets COUPONRY_WEBHOOK_BODY_LIMIT for the server (default: the app's 5 MB).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

CHUNK = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def start(directory: Path, port: int, limit: int | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{directory / 'couponry.db'}",
        "COUPONRY_IN_PROCESS_WORKER": "false",
        "COUPONRY_LOG_LEVEL": "warning",
    }
    if limit is not None:
        env["COUPONRY_WEBHOOK_BODY_LIMIT"] = str(limit)
    couponry = Path(sys.executable).with_name("couponry")
    process = subprocess.Popen([str(couponry), "serve", "--port", str(port)], cwd=directory, env=env)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("couponry serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    total = int(args.gigabytes * 1024**3)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"x" * CHUNK
        while sent < total:
            sent += CHUNK
            yield chunk

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = start(Path(tmp), port, args.limit)
        try:
            before = peak_kib(process.pid)
            started = time.monotonic()
            headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create"}
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/webhooks/shopify", content=body(), headers=headers, timeout=600)
                answer = f"{response.status_code} {response.headers.get('content-type', '')}"
            except httpx.TransportError as exc:  # the server closed the connection after answering
                answer = f"connection closed ({type(exc).__name__})"
            elapsed = time.monotonic() - started
            after = peak_kib(process.pid)
        finally:
            process.terminate()
            process.wait(10)
    print(f"streamed {sent / 1024**2:,.0f} MiB of {total / 1024**2:,.0f} MiB in {elapsed:.1f} s: {answer}")
    print(f"server peak RSS (VmHWM): {before / 1024:,.1f} MiB after start-up, {after / 1024:,.1f} MiB after the POST")


if __name__ == "__main__":
    main()
