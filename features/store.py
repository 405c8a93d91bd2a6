"""The event store: one DuckDB file per workspace, the only module that writes SQL for events.

Tables:
- ``events``        accepted canonical events (columns: ``features.contract.EVENT_COLUMNS`` plus
                    ``source`` and ``ingest_run``), unique by ``message_id``;
- ``dead_letters``  rejected records with their raw payload and the reason;
- ``ingest_runs``   one row per ingested input: counts and timing.

Every batch is appended in one transaction: a crash leaves either the whole batch or none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import EVENT_COLUMNS

logger = logging.getLogger(__name__)

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
    "DOUBLE": pa.float64(),
}
EVENT_SCHEMA = pa.schema([(name, _ARROW_TYPES[sql]) for name, sql, _ in EVENT_COLUMNS])
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("position", pa.int64()),
        ("raw", pa.string()),
        ("reason", pa.string()),
    ]
)

_SCHEMA_SQL = f"""
CREATE TABLE IF NOT EXISTS events (
    {", ".join(f"{name} {sql}" for name, sql, _ in EVENT_COLUMNS)},
    source VARCHAR,
    ingest_run VARCHAR
);
CREATE TABLE IF NOT EXISTS dead_letters (
    source VARCHAR,
    position BIGINT,      -- line number (JSON lines) or record number in the file
    raw VARCHAR,          -- the record as it arrived
    reason VARCHAR,
    ingest_run VARCHAR,
    rejected_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS ingest_runs (
    ingest_run VARCHAR PRIMARY KEY,
    source VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    read BIGINT,
    accepted BIGINT,
    duplicate BIGINT,
    rejected BIGINT
);
"""


@dataclass(frozen=True)
class AppendResult:
    accepted: int
    duplicate: int
    rejected: int


class EventStore:
    """A DuckDB event store. Use as a context manager so the file is closed."""

    def __init__(self, path: Path | str, read_only: bool = False):
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no event store at {self.path}; run `kairos ingest` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No DuckDB progress bars: Kairos draws its own, and scripts read our stdout.
        self.connection = duckdb.connect(str(self.path), read_only=read_only)
        self.connection.execute("SET enable_progress_bar = false")
        if not read_only:
            self.connection.execute(_SCHEMA_SQL)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def append(
        self,
        events: pa.Table,
        dead_letters: pa.Table,
        source: str,
        ingest_run: str,
    ) -> AppendResult:
        """Append one batch atomically; events whose message_id is already stored (or repeats
        earlier in the batch) are counted as duplicates and not written."""
        connection = self.connection
        connection.execute("BEGIN TRANSACTION")
        try:
            connection.register("batch_events", events)
            connection.register("batch_dead_letters", dead_letters)
            if self._all_new(events):
                # The usual case: no id repeats within the batch or is stored already, so the
                # batch goes in as it is, in order (no window, no join against the store).
                connection.execute(
                    "INSERT INTO events SELECT *, ? AS source, ? AS ingest_run FROM batch_events",
                    [source, ingest_run],
                )
                accepted = events.num_rows
            else:
                # First occurrence within the batch wins; then drop ids the store already holds.
                accepted = connection.execute(
                    """
                    INSERT INTO events
                    SELECT * EXCLUDE (position), ? AS source, ? AS ingest_run
                    FROM (
                        SELECT *, row_number() OVER () AS position FROM batch_events
                    ) AS batch
                    ANTI JOIN (
                        SELECT message_id FROM events
                        WHERE message_id IN (SELECT message_id FROM batch_events)
                    ) AS stored USING (message_id)
                    QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY position) = 1
                    ORDER BY position
                    """,
                    [source, ingest_run],
                ).fetchall()[0][0]
            connection.execute(
                "INSERT INTO dead_letters (source, position, raw, reason, ingest_run) "
                "SELECT source, position, raw, reason, ? FROM batch_dead_letters",
                [ingest_run],
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.unregister("batch_events")
            connection.unregister("batch_dead_letters")
        return AppendResult(
            accepted=accepted,
            duplicate=events.num_rows - accepted,
            rejected=dead_letters.num_rows,
        )

    def _all_new(self, events: pa.Table) -> bool:
        """True when no message_id of ``events`` repeats within it or is in the store.

        The store is probed with the batch's distinct ids only (a semi join that hashes the
        batch and streams the stored ids past it), never with a hash table of the whole store.
        """
        if events.num_rows == 0:
            return True
        ids = events.column("message_id")
        if ids.null_count or pc.count_distinct(ids).as_py() != events.num_rows:
            return False
        stored = self.connection.execute(
            "SELECT count(*) FROM events WHERE message_id IN (SELECT message_id FROM batch_events)"
        ).fetchall()[0][0]
        return stored == 0

    def record_run(
        self,
        ingest_run: str,
        source: str,
        started_at: datetime,
        finished_at: datetime,
        counts: AppendResult,
        read: int,
    ) -> None:
        self.connection.execute(
            "INSERT INTO ingest_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ingest_run,
                source,
                started_at,
                finished_at,
                read,
                counts.accepted,
                counts.duplicate,
                counts.rejected,
            ],
        )

    def count(self, table: str = "events") -> int:
        if table not in {"events", "dead_letters", "ingest_runs"}:
            raise ValueError(f"unknown table {table!r}")
        return self.connection.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        """Run a read query and return an Arrow table (for tests, exports and tools)."""
        return self.connection.sql(sql, params=parameters).to_arrow_table()
