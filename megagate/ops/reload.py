"""Hot reload: what changed between two configurations (in words, key ids only), and `POST /admin/reload`.

The reload itself is the Gateway's (`Gateway.reload`): load and validate the file again; if it is invalid nothing
changes and the one-line reason is logged and returned; if valid, a new route table, middleware stack and set of
pools are built and swapped in between requests. Requests in flight finish on the snapshot they started with; each
pool adopts the one it replaces, so kept keys keep their windows, in-flight counts and cooldowns. A reload is
triggered by SIGHUP to a serving worker process (not hypercorn's parent, which restarts its workers on SIGHUP) or
by this route.

With several workers (`workers = N`, `megagate serve -w N`) the route reaches one of them, whichever accepted the
connection: after reloading itself it sends SIGHUP to its sibling workers, so that every worker serves the new
configuration. Siblings are found in /proc (Linux): the other processes multiprocessing spawned for the same
hypercorn parent. A SIGHUP-triggered reload does not pass itself on, so nothing echoes.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import anyio
import msgspec

from megagate.asgi import Receive, Scope, Send, send_json
from megagate.config import Config
from megagate.core.secrets import key_id

_encoder = msgspec.json.Encoder()
# What a reload cannot change in a running process (the Redis client and the transport are opened once).
NEEDS_RESTART = ("pool", "transport", "usage", "alerts")


class Reloadable(Protocol):
    async def reload(self) -> tuple[bool, str]: ...


def changes(old: Config, new: Config) -> list[str]:
    """What a reload from `old` to `new` changes, in words; keys appear as their ids."""
    said: list[str] = []
    before = {u.name: u for u in old.upstreams}
    after = {u.name: u for u in new.upstreams}
    said += [f"upstream {name} added" for name in after.keys() - before.keys()]
    said += [f"upstream {name} removed" for name in before.keys() - after.keys()]
    for name in before.keys() & after.keys():
        old_keys = {key_id(k.key) for k in before[name].key_configs}
        new_keys = {key_id(k.key) for k in after[name].key_configs}
        said += [f"{name}: key {k} added" for k in sorted(new_keys - old_keys)]
        said += [f"{name}: key {k} removed" for k in sorted(old_keys - new_keys)]
        if before[name] != after[name] and old_keys == new_keys:
            said.append(f"{name}: settings changed")
    for model in sorted(old.fallbacks.keys() | new.fallbacks.keys()):
        if old.fallbacks.get(model) != new.fallbacks.get(model):
            said.append(f"fallbacks of {model}: {new.fallbacks.get(model) or 'none'}")
    old_clients = {c.name for c in old.clients}
    new_clients = {c.name for c in new.clients}
    said += [f"client {c} added" for c in sorted(new_clients - old_clients)]
    said += [f"client {c} removed" for c in sorted(old_clients - new_clients)]
    for field in ("default_model", "aliases", "defaults", "timeouts", "rotation", "hedging", "admin_token", "watch",
                  "prices"):  # fmt: skip
        if getattr(old, field) != getattr(new, field):
            said.append(f"{field} changed")
    return said


def sibling_workers() -> list[int]:
    """The other worker processes of this hypercorn server: the children of our parent that multiprocessing spawned
    (hypercorn's workers), when the parent is hypercorn or `megagate serve`. [] elsewhere (one process, another
    server, no /proc)."""
    parent, me = os.getppid(), os.getpid()
    try:
        if not re.search(rb"hypercorn|megagate", Path(f"/proc/{parent}/cmdline").read_bytes()):
            return []
        children = [int(c) for task in Path(f"/proc/{parent}/task").iterdir()
                    for c in (task / "children").read_text().split()]  # fmt: skip
    except OSError:
        return []
    found = []
    for child in children:
        try:
            spawned = b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if spawned and child != me:
            found.append(child)
    return found


def restart_needed(old: Config, new: Config) -> str | None:
    """The field a reload cannot apply, if the new configuration changes one."""
    return next((field for field in NEEDS_RESTART if getattr(old, field) != getattr(new, field)), None)


class ReloadApp:
    """`POST /admin/reload` (behind the admin token): 200 with what changed and how many workers were told, or 400
    with the one-line reason (then no sibling is told: the same file would be refused there too)."""

    def __init__(self, gateway: Reloadable, siblings: Callable[[], list[int]] = sibling_workers) -> None:
        self.gateway = gateway
        self.siblings = siblings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok, told = await self.gateway.reload()
        body: dict[str, object] = {"reloaded": ok, "changes" if ok else "error": told}
        if ok:
            signalled = 0
            for pid in await anyio.to_thread.run_sync(self.siblings):
                try:
                    os.kill(pid, signal.SIGHUP)
                    signalled += 1
                except OSError:  # exited meanwhile
                    continue
            body["workers"] = 1 + signalled
        await send_json(send, 200 if ok else 400, _encoder.encode(body))
