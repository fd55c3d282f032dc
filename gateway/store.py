"""Stored Responses: what `previous_response_id`, `GET /v1/responses/{id}` and friends read.

Embedded SQLite, one file (mode 0600), bounded by age and size with the oldest evicted first. Every
database call runs on one dedicated thread, so the event loop never blocks, and calls run in the
order they were submitted. Writes wait up to BATCH_SECONDS to go together; a read hands over what
is queued first, so an answer is visible to the client's next request. The store belongs to one
process; replicas need the shared store to come.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("gateway.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    previous_id TEXT,
    connection TEXT NOT NULL,
    native INTEGER NOT NULL,
    input_items BLOB NOT NULL,
    response BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""
MAX_CHAIN = 1000  # a conversation longer than this is almost certainly a loop
AGE_CHECK_SECONDS = 10.0
ROWS_PER_STATEMENT = 64  # the most in one statement (8 parameters a row: SQLite allows 32,766)
BATCH_SECONDS = 0.05  # the longest a stored answer waits before it is written (reads never wait for it)


@dataclass(slots=True)
class StoredResponse:
    id: str
    connection: str  # the connection that produced it
    native: bool  # produced by a native Responses upstream (which knows the id itself)
    previous_id: str | None
    input_items: list[dict[str, Any]]
    response: dict[str, Any]
    created_at: float = 0.0


class ResponseStore:
    def __init__(self, path: str, max_age_days: float, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_age = max_age_days * 86400
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="response-store")
        self._db: sqlite3.Connection | None = None
        self._bytes = 0
        self._next_age_check = 0.0  # time.time() of the next look for expired responses
        self._pending: set[Future[Any]] = set()
        self._queued: list[StoredResponse] = []  # writes not yet handed over (touched on the loop only)
        self._hand_over: asyncio.TimerHandle | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)  # also when the file already existed with looser bits
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._bytes = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]

    async def close(self) -> None:
        self._write_queued()
        for future in list(self._pending):
            await asyncio.wrap_future(future)
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn, *args: Any) -> Any:
        self._write_queued()  # writes submitted earlier go first
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db

    # --- writes ------------------------------------------------------------------------------

    def submit(self, stored: StoredResponse) -> None:
        """Queue a write and return at once. Writes go to the store's thread together, BATCH_SECONDS
        after the first of them (or before any read, which so sees them), in one transaction: every
        hand-over to that thread costs the event loop a wake-up and the GIL, so under load one
        carries many answers."""
        self._queued.append(stored)
        if self._hand_over is None:
            self._hand_over = asyncio.get_running_loop().call_later(BATCH_SECONDS, self._write_queued)

    def _write_queued(self) -> None:
        if self._hand_over is not None:
            self._hand_over.cancel()
            self._hand_over = None
        batch, self._queued = self._queued, []
        if batch:
            future = self._executor.submit(self._write, batch)
            self._pending.add(future)
            future.add_done_callback(self._written)

    def _written(self, future: Future[Any]) -> None:
        self._pending.discard(future)
        if future.exception() is not None:
            log.error("storing a response failed: %s", future.exception())

    def _write(self, batch: list[StoredResponse]) -> None:
        """One transaction for a batch: its rows in a few statements (a row's size is what its JSON
        takes), then eviction. Python here holds the GIL the event loop needs, so it is kept short."""
        now = time.time()
        rows = []
        for stored in {stored.id: stored for stored in batch}.values():  # an id written twice: the last
            items, response = orjson.dumps(stored.input_items), orjson.dumps(stored.response)
            # The JSON goes in as text: sqlite3 binds a str as it is, but looks for adapters for bytes
            # (two failed attribute lookups each).
            rows.append((stored.id, stored.created_at or now, stored.previous_id, stored.connection,
                         int(stored.native), items.decode(), response.decode(),
                         len(items) + len(response)))  # fmt: skip
        with self.db:
            start = 0
            while start < len(rows):
                # Statements of 64, 32, ... 1 rows: few distinct texts for sqlite3's statement cache
                # (each cached one holds its compiled program; one per batch size took megabytes).
                size = min(ROWS_PER_STATEMENT, 1 << ((len(rows) - start).bit_length() - 1))
                self._insert(rows[start : start + size])
                start += size
            self._evict(now)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows in one statement: sqlite3 lets go of the GIL for every statement it steps, and each
        time the event loop's thread must hand it back (executemany: once a row)."""
        ids = [row[0] for row in rows]
        replaced = self.db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM responses WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchone()[0]  # ids are new but for a rewrite of the same answer
        values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        self.db.execute(f"INSERT OR REPLACE INTO responses VALUES {values}", [v for row in rows for v in row])
        self._bytes += sum(row[7] for row in rows) - replaced

    def _evict(self, now: float) -> None:
        """Drop what is older than max_age (looked for at most every AGE_CHECK_SECONDS: reads skip
        what has expired anyway), then the oldest until the total fits max_bytes (within the caller's
        transaction)."""
        if now >= self._next_age_check:
            self._next_age_check = now + AGE_CHECK_SECONDS
            cutoff = now - self.max_age
            size, count = self.db.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM responses WHERE created_at < ?", (cutoff,)
            ).fetchone()
            if count:
                self.db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))
                self._bytes -= size
        while self._bytes > self.max_bytes:
            oldest = self.db.execute("SELECT id, size FROM responses ORDER BY created_at LIMIT 1").fetchone()
            if oldest is None:
                self._bytes = 0
                break
            self.db.execute("DELETE FROM responses WHERE id = ?", (oldest[0],))
            self._bytes -= oldest[1]

    async def delete(self, response_id: str) -> bool:
        return await self._run(self._delete, response_id)

    def _delete(self, response_id: str) -> bool:
        with self.db:
            row = self.db.execute("SELECT size FROM responses WHERE id = ?", (response_id,)).fetchone()
            if row is None:
                return False
            self.db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        self._bytes -= row[0]
        return True

    # --- reads -------------------------------------------------------------------------------

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._run(self._get, response_id)

    def _get(self, response_id: str) -> StoredResponse | None:
        row = self.db.execute(
            "SELECT id, connection, native, previous_id, input_items, response, created_at FROM responses "
            "WHERE id = ? AND created_at >= ?",
            (response_id, time.time() - self.max_age),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], bool(row[2]), row[3], orjson.loads(row[4]), orjson.loads(row[5]), row[6])

    async def chain(self, response_id: str) -> list[StoredResponse] | None:
        """The conversation ending at `response_id`, oldest first; None if any link is gone."""
        return await self._run(self._chain, response_id)

    def _chain(self, response_id: str) -> list[StoredResponse] | None:
        chain: list[StoredResponse] = []
        current: str | None = response_id
        while current is not None and len(chain) < MAX_CHAIN:
            stored = self._get(current)
            if stored is None:
                return None
            chain.append(stored)
            current = stored.previous_id
        chain.reverse()
        return chain
