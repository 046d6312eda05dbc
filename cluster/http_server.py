"""Running a sanic app inside our own event loop: bind (port 0 allowed), report the real
address, serve until SIGTERM/SIGINT, then close in order. Used by every tandem server."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

from sanic import Sanic


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket; with ``reuse_port`` several processes may listen on the same
    address (``SO_REUSEPORT``: the kernel spreads new connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(
    app: Sanic[Any, Any],
    sock: socket.socket,
    on_ready: Callable[[str], None],
    stop: asyncio.Event | None = None,
    protocol: type[asyncio.Protocol] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT (or ``stop`` is set), with sanic's
    HTTP protocol or a subclass of it (``protocol``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await app.create_server(
        sock=sock, return_asyncio_server=True, access_log=False, protocol=protocol
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    host, port = sock.getsockname()[:2]
    on_ready(f"http://{host}:{port}")
    try:
        await stop.wait()
    finally:
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
