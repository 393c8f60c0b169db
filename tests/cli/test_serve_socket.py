"""The socket `couponry serve` listens on: its connections answer without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

from plugin.cli import listening_socket


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted on `sock` by asyncio, as uvicorn accepts them."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

    server = await loop.create_server(Accept, sock=sock)
    host, port = sock.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    transport = await accepted
    try:
        return int(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    finally:
        writer.close()
        transport.close()
        server.close()
        await server.wait_closed()


def test_served_connections_turn_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets whose protocol says TCP; a listening
    socket made with protocol 0 left every keep-alive answer after the first ~40 ms late (Nagle
    against the client's delayed ACK, as uvicorn writes an answer's head and body apart)."""
    sock = listening_socket("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    assert asyncio.run(_accepted_nodelay(sock)) == 1
