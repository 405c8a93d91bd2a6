"""Dirty lines mixed into the clean stream, to exercise ingest's duplicate and dead-letter paths.

Each dirty line is derived from a clean line written earlier the same day and uses its own
random generator and messageId prefix, so the clean lines (and the truth) are the same whatever
the rate.
"""

from __future__ import annotations

import numpy as np
import orjson

from features.simulator.wire import Stamper

# Kinds of dirty line, in the order their codes are drawn.
DIRTY_KINDS = (
    "duplicate",  # an exact re-send of an earlier line (same messageId): at-least-once delivery
    "malformed_json",  # a line cut in half
    "missing_timestamp",
    "unknown_type",
    "no_identifier",  # no userId, anonymousId, previousId, email, phone or device id
    "unparseable_timestamp",
)
_UNKNOWN_TYPES = ("trak", "purchase", "event", "Track Event")
_BAD_TIMESTAMPS = ("31/02/2026 25:61", "yesterday", "2026-13-45T99:00:00Z", "not a date")


def add_dirty_lines(
    lines: list[bytes], rate: float, rng: np.random.Generator, stamper: Stamper
) -> tuple[list[bytes], int]:
    """``lines`` (newline-terminated) with about ``rate`` dirty lines per clean one mixed in.

    Returns the lines and the number of dirty ones. A dirty line goes somewhere after the clean
    line it is derived from.
    """
    if rate <= 0 or not lines:
        return lines, 0
    n_dirty = int(rng.binomial(len(lines), rate))
    if n_dirty == 0:
        return lines, 0
    # Insert before clean line `position` (1..len: never before the first one) ...
    position = np.sort(rng.integers(1, len(lines) + 1, size=n_dirty))
    # ... a line derived from a clean line before it.
    source = (rng.random(n_dirty) * position).astype(np.int64)
    kind = rng.integers(len(DIRTY_KINDS), size=n_dirty)
    ids = stamper.message_ids(n_dirty)
    out: list[bytes] = []
    previous = 0
    for pos, src, k, mid in zip(
        position.tolist(), source.tolist(), kind.tolist(), ids, strict=True
    ):
        out.extend(lines[previous:pos])
        previous = pos
        out.append(_dirty_line(lines[src], DIRTY_KINDS[k], mid, rng))
    out.extend(lines[previous:])
    return out, n_dirty


def _dirty_line(line: bytes, kind: str, message_id: str, rng: np.random.Generator) -> bytes:
    if kind == "duplicate":
        return line  # the very same bytes: same messageId
    if kind == "malformed_json":
        return line[: len(line) // 2] + b"\n"
    message = orjson.loads(line)
    message["messageId"] = message_id
    if kind == "missing_timestamp":
        del message["timestamp"]
    elif kind == "unknown_type":
        message["type"] = _UNKNOWN_TYPES[int(rng.integers(len(_UNKNOWN_TYPES)))]
    elif kind == "no_identifier":
        for field in ("userId", "anonymousId", "previousId", "traits", "context"):
            message.pop(field, None)
        if message["type"] in ("alias", "identify"):
            message["type"] = "track"
            message["event"] = "Product Viewed"
    else:
        message["timestamp"] = _BAD_TIMESTAMPS[int(rng.integers(len(_BAD_TIMESTAMPS)))]
    return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
