"""The usage ledger: one row per request that spends (chat, messages, responses, embeddings), and daily rollups per
(day, client, model, upstream), kept in a real database off the hot path.

A request never waits for the database: `LedgerWriter.record` puts the row on a bounded queue that one writer
thread drains in batches into a `Store` (`sqlite.SQLiteStore`, the embedded default, or `postgres.PostgresStore`
for several replicas). A database that is down or slow loses no row while the queue has room; past its bound rows
are counted as dropped (a metric, and one warning a minute). A clean shutdown flushes the queue. Rows hold ids,
names, counts and money: never message content, never a key.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class UsageRow(msgspec.Struct, frozen=True):
    """One request as the ledger keeps it."""

    time: float  # Unix seconds at the end of the request
    request_id: str
    client: str | None
    route: str
    requested_model: str
    served_model: str
    upstream: str | None
    key_id: str | None
    attempts: int
    status: int
    outcome: str
    stream: bool
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float | None  # None: the model has no price (or nothing was counted), never a silent 0
    ttft_ms: float | None
    duration_ms: float


COLUMNS = tuple(UsageRow.__struct_fields__)


class Store(Protocol):
    """Where rows end up; every method runs on the writer's thread (or, for `query`, a thread of its own)."""

    def open(self) -> None: ...

    def write(self, rows: list[UsageRow]) -> None: ...

    def prune(self, before: float) -> None: ...

    def close(self) -> None: ...
