"""The soak's load, in its own process on raw asyncio protocols (as `loadgen.py`), so its verdicts are megagate's.

python -m benchmarks.soak_load PORT CLIENTS SECONDS TALLY_FILE

Each of CLIENTS keep-alive connections loops over requests until SECONDS have passed: 85 % streamed, a tenth of
those left after three events (the connection closed, as a client that goes away), the model drawn from
`MODELS` (some of which the fake breaks, `FAULTS`). Every request is bounded by 30 s; one that takes longer is counted
as hung, by model. The tally is written to TALLY_FILE every few seconds and printed as JSON at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from benchmarks.loadgen import Client, request_bytes

HUNG_AFTER = 30.0
# model -> what the fake does with it (soak.py posts these rules at start); the rest answer normally
FAULTS = {"soak-drop": {"drop_after": 5}, "soak-limited": {"status": 429, "retry_after": 1},
          "soak-broken": {"status": 500}}  # fmt: skip
MODELS = ["soak"] * 7 + list(FAULTS)
TALLY = ["ok", "left", "error_answers", "failed_streams_told", "cut_streams", "hung", "transport_errors"]


class LeavingClient(Client):
    """A client that can leave a stream after `leave_after` events: it closes its connection then."""

    leave_after: int | None = None

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        leaving = self.leave_after is not None and b"".join(self.body).count(b"data: ") >= self.leave_after
        if leaving and self.done and not self.done.done():
            self.done.set_result(None)


async def client(port: int, deadline: float, tally: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random()
    connection: LeavingClient | None = None
    while time.monotonic() < deadline:
        model = rng.choice(MODELS)
        stream = rng.random() < 0.85
        leave_early = stream and rng.random() < 0.1
        try:
            if connection is None:
                _, connection = await loop.create_connection(LeavingClient, "127.0.0.1", port)
            connection.leave_after = 3 if leave_early else None
            await asyncio.wait_for(connection.start(request_bytes(port, model, stream)), HUNG_AFTER)
        except TimeoutError:
            tally["hung"] += 1
            name = f"hung {model}{' stream' if stream else ''}"
            tally[name] = tally.get(name, 0) + 1
            connection = _closed(connection)
            continue
        except (OSError, ConnectionError, ValueError):
            tally["transport_errors"] += 1
            connection = _closed(connection)
            continue
        body = b"".join(connection.body)
        if leave_early:
            tally["left"] += 1
            connection = _closed(connection)
            continue
        status = connection.status
        if not connection.keep_alive:
            connection = _closed(connection)
        if status != 200:
            tally["error_answers"] += 1
        elif stream and not body.endswith(b"data: [DONE]\n\n"):
            tally["cut_streams"] += 1  # ended with neither [DONE] nor our error event and [DONE]
        elif stream and b'"error"' in body:
            tally["failed_streams_told"] += 1
        else:
            tally["ok"] += 1
    _closed(connection)


def _closed(connection: LeavingClient | None) -> None:
    if connection is not None and connection.transport is not None:
        connection.transport.close()


async def main(port: int, clients: int, seconds: float, tally_file: Path) -> dict[str, int]:
    tally = dict.fromkeys(TALLY, 0)
    deadline = time.monotonic() + seconds
    load = asyncio.gather(*(client(port, deadline, tally) for _ in range(clients)))
    while not load.done():
        _write(tally_file, tally)
        await asyncio.wait([load], timeout=5.0)
    await load
    _write(tally_file, tally)
    return tally


def _write(tally_file: Path, tally: dict[str, int]) -> None:
    """Replaced whole (written aside, then renamed), so the sampler never reads a half-written file."""
    aside = tally_file.with_suffix(".part")
    aside.write_text(json.dumps(tally))
    aside.replace(tally_file)


if __name__ == "__main__":
    port, clients, seconds, tally_file = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(int(port), int(clients), float(seconds), Path(tally_file)))))
