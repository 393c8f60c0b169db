"""What the HTTP benchmarks share: a free port, a server subprocess, wrk runs and their report."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = 50
# One wrk thread, the server on one core and wrk on the other: on a 2-core machine, two wrk
# threads and the server are three busy threads on two cores, and how the scheduler shared them
# moved a run's figures by 10-20 % from one run to the next.
THREADS = 1
SERVER_CPU, CLIENT_CPU = 0, 1
PINNED = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
# The event loop the servers run on: the one `couponry serve` uses (see plugin/cli). Measured
# here at 50 connections, uvloop and asyncio give the bare route the same throughput, but once
# a request costs a few hundred µs uvloop answers some connections 10x later than the rest
# (p99 180-360 ms against 28-36 ms with asyncio, at the same throughput).
LOOP = "asyncio"


# The parts of every wrk script: each thread numbers itself (so requests can be made unique),
# and done() prints the figures as one JSON line for run_wrk.
LUA_SETUP = r"""
local counter, thread_id = 0, 0
local threads = {}
function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end
"""
LUA_DONE = r"""
function done(summary, latency, requests)
  io.write(string.format('{"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server(str):
    """A running server's base URL, which also knows the server's process id."""

    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user and system, from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextmanager
def server(script: str, *args: str) -> Iterator[Server]:
    """Run `python -c script port *args` and yield its base URL once /healthz answers."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", script, *args[:1], str(port), *args[1:]], cwd=ROOT, env=env)
    if PINNED:  # before the server starts any thread of its own: they inherit it
        os.sched_setaffinity(process.pid, {SERVER_CPU})
    running = Server(base)
    running.pid = process.pid
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_wrk(script: Path, base: str, key: str, seconds: int) -> dict[str, Any]:
    """One wrk run with a Lua script whose `done` prints one JSON line of figures."""
    pin = ["taskset", "-c", str(CLIENT_CPU)] if PINNED else []
    cmd = [*pin, "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    cmd += [base, "--", key]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


def show(name: str, f: dict[str, Any], width: int = 26) -> None:
    print(
        f"{name:<{width}} {f['rps']:>9,.0f} req/s   p50 {f['p50_us'] / 1000:6.2f} ms   p99 {f['p99_us'] / 1000:6.2f} ms"
        f"   ({f['requests']:,} requests, {f['non2xx']} non-2xx, {f['errors']} socket errors)"
    )


def header() -> str:
    pinned = f", server on CPU {SERVER_CPU} and wrk on CPU {CLIENT_CPU}" if PINNED else ""
    return f"uvicorn httptools+{LOOP}, 1 worker, SQLite; wrk -t{THREADS} -c{CONNECTIONS}; {os.cpu_count()} CPUs{pinned}"
