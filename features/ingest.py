"""Ingest: read event files, validate and normalise every record, append them to the store.

Every record read is accounted for: accepted, duplicate (its messageId is already stored or
repeats within the input) or rejected into the dead-letter table with its raw payload and the
reason. Formats: Segment Spec JSON lines (one message or one ``{"batch": [...]}`` envelope per
line), Segment JSON files (a message, an array or a batch envelope), and tabular CSV / Parquet
files read through a column mapping. Problems with a whole file (missing, binary, empty, a
mapping to a column that does not exist) raise :class:`InputError`; nothing is written then.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import logging
import multiprocessing
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import (
    MAX_RECORD_BYTES,
    NormaliseOptions,
    RejectedRecord,
    normalise_message,
)
from features.identity import update_identity
from features.store import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, AppendResult, EventStore
from features.tabular import MappingError, TabularMapping, read_tabular_messages
from features.vectorised import CLAIMED_SCHEMA, normalise_lines

logger = logging.getLogger(__name__)

FORMATS = ("segment", "csv", "parquet")
_SUFFIX_FORMATS = {
    ".jsonl": "segment",
    ".ndjson": "segment",
    ".json": "segment",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Records per append, at least: a block's normalised pieces are merged until they reach it, so
# with 32 MB blocks of simulated lines (~98k records each) an append holds two blocks (~193k).
# Appends of a DuckDB row group (122,880 rows) or more are written once rather than through the
# WAL first (100,000-record appends cost 6.8 µs CPU per event against 4.8 for 245,760). With the
# C scanner, 122,880 (two-block appends) did no worse than 245,760 (three blocks, then two): 8
# interleaved quiet pairs of the 481k-event bench world gave 7.8 vs 8.8 s of CPU (medians) and
# wall times within the spread; five benchmark runs each, 95,400 vs 93,200 events/s (medians).
# The first append starts a block earlier, so less of the run is spent waiting.
DEFAULT_BATCH_SIZE = 122_880
_DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
_PARALLEL_BYTES = 32 << 20
# Lines per DuckDB query on the vectorised path: planning one costs ~0.1 s, so blocks are big.
_VECTORISED_CHUNK_BYTES = 32 << 20
_VECTORISED_SCAN_ROWS = 8192
# Blocks normalised ahead of the one being appended: the helper thread keeps working while the
# caller appends (measured with two-row-group appends spanning 2-3 blocks of 32 MB: 1.1 of 2
# cores busy with one block ahead, against 1.9 with three).
_VECTORISED_BLOCKS_AHEAD = 3
# The lines of a block the common-shape query leaves go through the general query only when
# there are this many: planning it costs ~0.11 s of CPU, so a few thousand odd lines cost less
# in the reference path (measured on a 32 MB simulated block, 3% left: 0.88x the CPU per event).
_GENERAL_QUERY_MIN_LINES = 10_000
# Up to this many reference rows of a block are spliced into its claimed rows; more are sorted
# in (see _merged_by_position).
_SPLICED_ROWS = 1_000


class InputError(Exception):
    """A whole input cannot be read (the message says why); nothing from it was written."""


@dataclass(frozen=True)
class IngestOptions:
    """How inputs are read. ``mapping`` and ``event`` apply to tabular files only."""

    format: str | None = None  # None: from the file extension
    mapping: TabularMapping | None = None
    normalise: NormaliseOptions = field(default_factory=NormaliseOptions)
    batch_size: int = DEFAULT_BATCH_SIZE  # records per atomic append
    # Python path only: processes decoding JSON lines; None: 2 for files over 32 MB.
    workers: int | None = None
    # Normalise JSON lines in one DuckDB query per 32 MB block (same rows as the reference,
    # which takes the lines the query does not claim); False: the reference for every line.
    vectorised: bool = True


@dataclass
class IngestReport:
    """What happened to one input. Invariant: read == accepted + duplicate + rejected."""

    source: str
    read: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rows: int | None = None  # tabular inputs: file rows (orders group several rows into one)

    @property
    def events_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def add(self, counts: AppendResult) -> None:
        self.accepted += counts.accepted
        self.duplicate += counts.duplicate
        self.rejected += counts.rejected

    def as_dict(self) -> dict[str, Any]:
        result = {
            "source": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
        }
        if self.rows is not None:
            result["rows"] = self.rows
        return result


# A record as read: (position in the input, the decoded message or None, raw text, error).
Record = tuple[int, Any, str | None, str | None]
ProgressCallback = Callable[[int], None]  # called with the number of bytes just consumed


def detect_format(path: Path, explicit: str | None = None) -> str:
    """The input format: ``explicit`` if given, else from the extension (``.gz`` ignored)."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise InputError(f"unknown format {explicit!r}; choose one of {', '.join(FORMATS)}")
        return explicit
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = _SUFFIX_FORMATS.get(suffixes[-1].lower()) if suffixes else None
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"pass --format {'|'.join(FORMATS)}"
        )
    return fmt


def ingest_file(
    store: EventStore,
    path: Path,
    options: IngestOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest one file into ``store`` and return its report."""
    options = options or IngestOptions()
    path = Path(path)
    fmt = detect_format(path, options.format)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass the files inside it")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty, nothing to ingest")

    report = IngestReport(source=str(path))
    source = str(path)
    if fmt == "segment":
        batches = _segment_batches(path, options, source, on_progress)
    else:
        if options.mapping is None:
            raise InputError(
                f"{path}: tabular input needs a column mapping "
                "(--map FIELD=COLUMN ... and --event NAME or --map event=COLUMN)"
            )
        try:
            messages, report.rows = read_tabular_messages(path, fmt, options.mapping)
        except MappingError as error:
            raise InputError(str(error)) from None
        records = ((position, message, None, None) for position, message in messages)
        batches = _normalise_in_batches(records, options, source, options.batch_size)
    started = time.perf_counter()
    started_at = datetime.now()
    run_id = f"{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    for events, dead_letters, read in _rebatch(batches, options.batch_size):
        report.read += read
        report.add(store.append(events, dead_letters, source=source, ingest_run=run_id))
    report.seconds = time.perf_counter() - started
    if report.read == 0:
        raise InputError(f"{path}: no records found (only blank lines)")
    counts = AppendResult(report.accepted, report.duplicate, report.rejected)
    store.record_run(run_id, source, started_at, datetime.now(), counts, report.read)
    # Ingest runs identity resolution's incremental path, so profiles follow every ingest.
    update_identity(store)
    logger.info("ingested %s: %s", path, report.as_dict())
    return report


def normalise_chunk(
    first_line: int, chunk: bytes, options: IngestOptions, source: str
) -> list[tuple[pa.Table, pa.Table, int]]:
    """Normalise a block of whole JSON lines into pieces of at most ``options.batch_size``
    lines; a pure function, so worker processes can run it."""
    # Decoding allocates millions of short-lived dicts that reference counting frees; the
    # cyclic collector only slows this down (measured several-fold on the simulator's output).
    collecting = gc.isenabled()
    gc.disable()
    try:
        if options.vectorised:
            return _normalise_chunk_vectorised(first_line, chunk, options, source)
        lines = chunk.split(b"\n")
        pieces = []
        for start in range(0, len(lines), options.batch_size):
            numbered = enumerate(
                lines[start : start + options.batch_size], start=first_line + start
            )
            piece = _normalise_numbered_lines(list(numbered), options, source)
            if piece[2]:
                pieces.append(piece)
        return pieces
    finally:
        if collecting:
            gc.enable()


def _normalise_chunk_vectorised(
    first_line: int, chunk: bytes, options: IngestOptions, source: str
) -> list[tuple[pa.Table, pa.Table, int]]:
    """``normalise_chunk`` with one DuckDB query for the whole block (planning a query costs
    ~0.1 s, so blocks are large); the lines it does not claim go through the reference path.

    The block's lines become an Arrow string column straight from its bytes (no Python object
    per line); pieces of ``options.batch_size`` lines are cut from the result afterwards.
    """
    # One C++ pass splits the block at its newlines into the lines' text without the newline
    # bytes (measured 0.33 µs a line, against 0.83 for numpy's newline search and np.delete).
    bounds = pa.py_buffer(np.array([0, len(chunk)], dtype=np.int32))
    whole = pa.Array.from_buffers(pa.binary(), 1, [None, bounds, pa.py_buffer(chunk)])
    split = pc.split_pattern(whole, "\n").values
    if not chunk or chunk.endswith(b"\n"):  # no line after the last newline
        split = split.slice(0, len(split) - 1)
    lengths = pc.binary_length(split).to_numpy(zero_copy_only=False).astype(np.int64)
    # Where each line starts and ends in ``chunk``: the lines before it and their newlines.
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    ends = starts + lengths
    raw = split.view(pa.string())
    positions = np.arange(first_line, first_line + len(lengths), dtype=np.int64)
    candidate = (lengths > 0) & (lengths <= MAX_RECORD_BYTES)
    try:
        raw.validate(full=True)  # UTF-8 throughout; otherwise decide line by line
    except pa.ArrowInvalid:
        for index in np.flatnonzero(candidate):
            if _fast_candidate(chunk[starts[index] : ends[index]]) is None:
                candidate[index] = False
        raw = pa.array(
            [
                chunk[a:b].decode("utf-8") if ok else ""
                for a, b, ok in zip(starts, ends, candidate, strict=True)
            ],
            pa.string(),
        )
    lines = pa.table({"position": positions, "raw": raw})
    if not candidate.all():
        lines = lines.filter(pa.array(candidate))
    # Several record batches, so that DuckDB's threads share the scan (one batch is one thread).
    lines = pa.Table.from_batches(
        lines.to_batches(max_chunksize=_VECTORISED_SCAN_ROWS), schema=lines.schema
    )
    if lines.num_rows:
        claimed, _ = normalise_lines(
            lines, options.normalise, general_min_lines=_GENERAL_QUERY_MIN_LINES
        )
    else:
        claimed = CLAIMED_SCHEMA.empty_table()
    claimed_positions = claimed.column("position").to_numpy()
    by_python = np.ones(len(lengths), dtype=bool)
    by_python[claimed_positions - first_line] = False
    python_lines = np.flatnonzero(by_python & (lengths > 0))

    pieces = []
    for start in range(0, len(lengths), options.batch_size):
        stop = min(start + options.batch_size, len(lengths))
        low, high = np.searchsorted(claimed_positions, [first_line + start, first_line + stop])
        piece_claimed = claimed.slice(low, high - low)
        chosen = python_lines[
            np.searchsorted(python_lines, start) : np.searchsorted(python_lines, stop)
        ]
        numbered = [(first_line + int(i), chunk[starts[i] : ends[i]]) for i in chosen]
        records = list(_json_lines(numbered))
        rows, row_positions, dead = _normalise_records(records, options, source)
        read = len(records) + piece_claimed.num_rows
        if not read:
            continue
        if rows:
            events = _events_table(rows)
            events = events.add_column(0, "position", pa.array(row_positions, pa.int64()))
            merged = _merged_by_position(piece_claimed, events)
        else:
            merged = piece_claimed
        pieces.append((merged.drop_columns(["position"]), _dead_letter_table(dead), read))
    return pieces


def _merged_by_position(claimed: pa.Table, events: pa.Table) -> pa.Table:
    """Two tables in ``position`` order (no position in both) as one table in that order.

    A few rows (the lines the reference normalised) are spliced in between slices of the
    others and the result copied once into one chunk: 15 against 33 ms of CPU for sorting the
    concatenation, measured on a 32 MB simulated block with 59 such rows. One chunk, because
    the store appends a table of hundreds of slices more slowly than the copy costs."""
    if events.num_rows > _SPLICED_ROWS:
        return pa.concat_tables([claimed, events]).sort_by("position")
    cuts = np.searchsorted(
        claimed.column("position").to_numpy(), events.column("position").to_numpy()
    ).tolist()
    parts, start = [], 0
    for row, cut in enumerate(cuts):
        parts += [claimed.slice(start, cut - start), events.slice(row, 1)]
        start = cut
    parts.append(claimed.slice(start))
    return pa.concat_tables(parts).combine_chunks()


def _normalise_numbered_lines(
    numbered: list[tuple[int, bytes]], options: IngestOptions, source: str
) -> tuple[pa.Table, pa.Table, int]:
    """(events, dead letters, records read) for numbered JSON lines, in line order, through
    ``normalise_message`` one by one (which also writes the dead-letter reasons)."""
    records = list(_json_lines(numbered))
    rows, _, dead = _normalise_records(records, options, source)
    return _events_table(rows), _dead_letter_table(dead), len(records)


def _fast_candidate(line: bytes) -> str | None:
    """The line as text if the vectorised path may try it (non-blank, within limits, UTF-8)."""
    if len(line) > MAX_RECORD_BYTES or not line.strip():
        return None
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _segment_batches(
    path: Path, options: IngestOptions, source: str, on_progress: ProgressCallback | None
) -> Iterator[tuple[pa.Table, pa.Table, int]]:
    with _open(path) as stream:
        head = stream.peek(8192)[:8192]
        if b"\x00" in head:
            raise InputError(
                f"{path}: not a text file (binary content); for Parquet files use --format parquet"
            )
        if [s for s in path.suffixes if s != ".gz"][-1:] == [".json"]:
            whole = stream.read()
            if on_progress:
                on_progress(len(whole))
            try:
                document = orjson.loads(whole)
            except orjson.JSONDecodeError:
                # Many exports are JSON lines under a .json name.
                yield from normalise_chunk(1, whole, options, source)
                return
            records = _document_records(document)
            yield from _normalise_in_batches(records, options, source, options.batch_size)
            return
        if options.vectorised:
            size = None if path.suffix == ".gz" else _size(path)
            yield from _vectorised_pipeline(stream, options, source, on_progress, size)
            return
        chunks = _line_chunks(stream)
        workers = options.workers or (_DEFAULT_WORKERS if _size(path) > _PARALLEL_BYTES else 1)
        if workers <= 1:
            for first_line, chunk in chunks:
                yield from normalise_chunk(first_line, chunk, options, source)
                if on_progress:
                    on_progress(len(chunk))
            return
        # JSON decoding and normalisation are CPU-bound Python; spread chunks over processes
        # and keep their order, with a bounded number in flight so memory stays flat.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            in_flight: deque = deque()
            for first_line, chunk in chunks:
                in_flight.append(
                    (len(chunk), pool.submit(normalise_chunk, first_line, chunk, options, source))
                )
                if len(in_flight) >= 2 * workers:
                    yield from _collect(in_flight.popleft(), on_progress)
            while in_flight:
                yield from _collect(in_flight.popleft(), on_progress)


def _vectorised_pipeline(
    stream: BinaryIO,
    options: IngestOptions,
    source: str,
    on_progress: ProgressCallback | None,
    size: int | None = None,
) -> Iterator[tuple[pa.Table, pa.Table, int]]:
    """Normalise large blocks in DuckDB on a helper thread while the caller appends the block
    before: DuckDB runs without the GIL, so reading/normalising and appending overlap. Up to
    ``_VECTORISED_BLOCKS_AHEAD`` blocks are submitted ahead, so that the helper keeps working
    while the caller appends a batch that spans several blocks.

    ``size``: the file's size when known; blocks are then of equal size (a 40 MB file is two
    blocks of 20 MB, not 32 MB and a tail that costs a query of its own), and a file over half
    a block is two blocks at least, so that its second half is normalised during the first's
    append."""
    block = _VECTORISED_CHUNK_BYTES
    if size:
        blocks = max(-(-size // block), 2 if 2 * size > block else 1)
        block = -(-size // blocks)
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight: deque = deque()
        for first_line, chunk in _line_chunks(stream, block):
            in_flight.append(
                (len(chunk), pool.submit(normalise_chunk, first_line, chunk, options, source))
            )
            if len(in_flight) > _VECTORISED_BLOCKS_AHEAD:
                yield from _collect(in_flight.popleft(), on_progress)
        while in_flight:
            yield from _collect(in_flight.popleft(), on_progress)


def _collect(
    entry: tuple[int, Future], on_progress: ProgressCallback | None
) -> list[tuple[pa.Table, pa.Table, int]]:
    size, future = entry
    result = future.result()
    if on_progress:
        on_progress(size)
    return result


def _line_chunks(stream: BinaryIO, chunk_bytes: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
    """Blocks of whole lines with the number of their first line."""
    line_number = 1
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            return
        if not chunk.endswith(b"\n"):
            chunk += stream.readline()
        yield line_number, chunk
        line_number += chunk.count(b"\n")


def _json_lines(numbered: Iterable[tuple[int, bytes]]) -> Iterator[Record]:
    """Records of (line number, line) pairs: decoded, or with the reason they cannot be."""
    for line_number, line in numbered:
        if not line.strip():
            continue
        if len(line) > MAX_RECORD_BYTES:
            reason = f"record is {len(line):,} bytes, over the {MAX_RECORD_BYTES // 1024} KiB limit"
            yield line_number, None, _raw_text(line[:MAX_RECORD_BYTES]), reason
            continue
        try:
            decoded = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            yield line_number, None, _raw_text(line), f"malformed JSON: {error}"
            continue
        if isinstance(decoded, dict) and "batch" in decoded:
            yield from _batch_records(decoded, line_number)
        else:
            yield line_number, decoded, None, None


def _document_records(document: Any) -> Iterator[Record]:
    if isinstance(document, list):
        for index, message in enumerate(document, start=1):
            yield index, message, None, None
    elif isinstance(document, dict) and "batch" in document:
        yield from _batch_records(document, None)
    else:
        yield 1, document, None, None


def _batch_records(envelope: dict[str, Any], line_number: int | None) -> Iterator[Record]:
    messages = envelope.get("batch")
    if not isinstance(messages, list):
        yield line_number or 1, None, _raw_text(orjson.dumps(envelope)), "batch must be an array"
        return
    shared_context = envelope.get("context")
    for index, message in enumerate(messages, start=1):
        if isinstance(message, dict) and isinstance(shared_context, dict):
            # The envelope's context is a default each message may override.
            message = {**message, "context": {**shared_context, **(message.get("context") or {})}}
        yield line_number or index, message, None, None


def _normalise_in_batches(
    records: Iterable[Record],
    options: IngestOptions,
    source: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[pa.Table, pa.Table, int]]:
    """Normalise records into (events, dead letters, records read) per ``batch_size`` records."""
    records = iter(records)
    while batch := list(itertools.islice(records, batch_size)):
        rows, _, dead = _normalise_records(batch, options, source)
        yield _events_table(rows), _dead_letter_table(dead), len(batch)


def _normalise_records(
    records: Iterable[Record], options: IngestOptions, source: str
) -> tuple[list[tuple], list[int], list[tuple]]:
    """(canonical rows, their positions, dead letters) through the reference normaliser."""
    rows, positions, dead = [], [], []
    for position, message, raw, error in records:
        if error is None:
            try:
                rows.append(normalise_message(message, options.normalise))
                positions.append(position)
                continue
            except RejectedRecord as rejection:
                error = str(rejection)
        dead.append((source, position, raw if raw is not None else _dump(message), error))
    return rows, positions, dead


def _rebatch(
    batches: Iterable[tuple[pa.Table, pa.Table, int]], batch_size: int
) -> Iterator[tuple[pa.Table, pa.Table, int]]:
    """Merge small normalised pieces into appends of about ``batch_size`` records."""
    pending: list[tuple[pa.Table, pa.Table, int]] = []
    pending_read = 0
    for piece in batches:
        pending.append(piece)
        pending_read += piece[2]
        if pending_read >= batch_size:
            yield _concat(pending)
            pending, pending_read = [], 0
    if pending:
        yield _concat(pending)


def _concat(pieces: list[tuple[pa.Table, pa.Table, int]]) -> tuple[pa.Table, pa.Table, int]:
    if len(pieces) == 1:
        return pieces[0]
    return (
        pa.concat_tables([p[0] for p in pieces]),
        pa.concat_tables([p[1] for p in pieces]),
        sum(p[2] for p in pieces),
    )


def _events_table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in EVENT_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(values, type=f.type) for values, f in zip(columns, EVENT_SCHEMA, strict=True)],
        schema=EVENT_SCHEMA,
    )


def _dead_letter_table(dead: list[tuple]) -> pa.Table:
    columns = list(zip(*dead, strict=True)) if dead else [[] for _ in DEAD_LETTER_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(v, type=f.type) for v, f in zip(columns, DEAD_LETTER_SCHEMA, strict=True)],
        schema=DEAD_LETTER_SCHEMA,
    )


def _dump(message: Any) -> str:
    return orjson.dumps(message, default=str).decode()


def _raw_text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _size(path: Path) -> int:
    return path.stat().st_size


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)
