"""`LedgerWriter`: a bounded queue in front of one writer thread, so that no request waits for the database.

The event loop only calls `record` (a `put_nowait`, under a microsecond, which wakes nobody). The thread wakes
every `flush_every` seconds and writes what has queued (up to `batch` rows) in one transaction: waiting on the
queue instead would wake it for every row as requests trickle in, and a transaction per row cost about 70 µs of
CPU per request in `benchmarks.stack` where a batch costs 8. A batch that failed is kept and retried with a growing
pause while new rows wait in the queue; once the queue is full, new rows are dropped and counted.
A thread, not a task: the stdlib `sqlite3` and psycopg's sync connection block, and the async drivers do not run
on trio (aiosqlite, psycopg's async connection, asyncpg: measured).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from megagate.ledger import Store, UsageRow

logger = logging.getLogger("megagate.ledger")
_STOP = None  # put on the queue by close()
WARN_EVERY = 60.0  # seconds between warnings about the same trouble
PRUNE_EVERY = 3600.0


class LedgerWriter:
    def __init__(
        self,
        store: Store,
        *,
        bound: int = 10_000,
        batch: int = 500,
        flush_every: float = 0.5,
        retention_days: float | None = None,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.queue: queue.Queue[UsageRow | None] = queue.Queue(maxsize=bound)
        self.batch = batch
        self.flush_every = flush_every
        self.retention_days = retention_days
        self.on_drop = on_drop
        self.dropped = 0
        self.written = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # set by close(): flush now instead of at the next tick
        self._warned: dict[str, float] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="megagate-ledger", daemon=True)
        self._thread.start()

    def record(self, row: UsageRow) -> None:
        """Queue a row; never blocks. A full queue drops it (counted, and said once a minute)."""
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            self.on_drop()
            self._warn("full", "usage ledger: the queue is full (the database is down or slow); %d rows dropped "
                       "so far", self.dropped)  # fmt: skip

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within `timeout`), then stop the thread. Blocks: call it from a worker thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning("usage ledger: %d rows were still queued at shutdown and are lost", self.queue.qsize())

    def _run(self) -> None:
        pending: list[UsageRow] = []
        stopping, pause, opened, pruned = False, 0.1, False, 0.0
        while True:
            if not stopping and len(pending) < self.batch:
                stopping = self._take(pending)
            if pending or not opened:
                try:
                    if not opened:
                        self.store.open()
                        opened = True
                    if pending:
                        self.store.write(pending)
                        self.written += len(pending)
                        pending, pause = [], 0.1
                except Exception as exc:  # noqa: BLE001 -- whatever the driver raises: keep the rows, try again
                    self._warn("write", "usage ledger: writing to the database failed (%s: %s); %d rows wait",
                               type(exc).__name__, exc, len(pending) + self.queue.qsize())  # fmt: skip
                    if stopping and pause > 2.0:
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
            if opened and self.retention_days and time.monotonic() - pruned > PRUNE_EVERY:
                pruned = time.monotonic()
                try:
                    self.store.prune(time.time() - self.retention_days * 86400)
                except Exception as exc:  # noqa: BLE001 -- pruning is housekeeping: the next hour tries again
                    self._warn("prune", "usage ledger: pruning old rows failed (%s)", exc)
            if stopping and not pending:
                break
        if opened:
            self.store.close()

    def _take(self, pending: list[UsageRow]) -> bool:
        """After the tick, move what has queued (up to a batch) to `pending`; whether close() asked to stop."""
        if self.queue.qsize() < self.batch:  # a full batch is written at once; a trickle waits for the tick
            self._wake.wait(self.flush_every)
        while len(pending) < self.batch:
            try:
                row = self.queue.get_nowait()
            except queue.Empty:
                return False
            if row is _STOP:
                return True
            pending.append(row)
        return False

    def _warn(self, topic: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned.get(topic, -WARN_EVERY) >= WARN_EVERY:
            self._warned[topic] = now
            logger.warning(message, *args)
