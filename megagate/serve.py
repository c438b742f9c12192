"""Running ASGI apps under hypercorn in-process: several apps on one event loop (the fake, the demo)."""

from __future__ import annotations

import contextlib
import socket
from functools import partial
from typing import Any

import anyio
import sniffio
from hypercorn.config import Config as HypercornConfig


def hypercorn_config(host: str, port: int, **settings: Any) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75  # longer than clients' and proxies' idle pools, as for hypercorn.toml
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def serve_together(apps: list[tuple[Any, str, int]], shutdown: anyio.Event | None = None) -> None:
    """Serve each `(app, host, port)` until `shutdown` is set, on whichever loop anyio runs (asyncio or trio).

    hypercorn stops cleanly through its shutdown trigger; cancelling it mid-serve is not clean on asyncio."""
    shutdown = shutdown or anyio.Event()
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    async with anyio.create_task_group() as group:
        for app, host, port in apps:
            group.start_soon(partial(serve, app, hypercorn_config(host, port), shutdown_trigger=shutdown.wait))


def serve_apps(apps: list[tuple[Any, str, int]], backend: str = "asyncio") -> None:
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve_together, apps, backend=backend)
