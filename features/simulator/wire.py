"""Segment Spec wire format: message ids, ISO 8601 timestamps, messages, JSON lines.

Generators hand over columns (lists of equal length); the ``*_messages`` helpers turn them into
one message dict per row (fields that are None are left out), and ``Batch.serialise`` turns
those into newline-terminated JSON (orjson) at once, while they are still in cache. A batch
keeps its lines packed in a few large buffers plus offsets: the day writer sorts offsets, not
millions of small objects, which is several times faster at 10^5 people.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from typing import Any

import numpy as np
import orjson

from features.simulator.config import DEVICE_TYPES
from features.simulator.world import World

SHOP_URL = "https://shop.example"
CURRENCY = "GBP"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# Offsets some sources write instead of Z (same instant): +01:00, +02:00, -05:00, +05:30.
_OFFSET_MINUTES = np.array([60, 120, -300, 330])
_OFFSET_SUFFIX = np.array(["+01:00", "+02:00", "-05:00", "+05:30"], dtype=object)


Message = dict[str, Any]


@dataclass
class Batch:
    """Serialised messages (JSON lines) with their instants (ms since the epoch, UTC).

    Line i is ``buffers[buffer[i]][start[i]:end[i]]``, newline included. Lines stay packed in
    a few large buffers; reordering them moves offsets, not millions of small objects.
    """

    t_ms: np.ndarray  # (M,) int64
    buffers: list[bytes]
    buffer: np.ndarray  # (M,) int64, index into buffers
    start: np.ndarray  # (M,) int64
    end: np.ndarray  # (M,) int64

    def __len__(self) -> int:
        return len(self.t_ms)

    @staticmethod
    def empty() -> Batch:
        none = np.empty(0, dtype=np.int64)
        return Batch(none, [], none, none, none)

    @staticmethod
    def serialise(t_ms: np.ndarray, messages: Iterable[Message]) -> Batch:
        """Serialise ``messages`` (best a generator: each dict is serialised while in cache)."""
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        chunks, lengths = [], []
        messages = iter(messages)
        # Small chunks: each orjson output holds a 4 KiB buffer until the chunk is joined.
        while lines := [dumps(m, option=newline) for m in islice(messages, _SERIALISE_CHUNK)]:
            lengths.extend(map(len, lines))
            chunks.append(b"".join(lines))
        end = np.cumsum(np.array(lengths, dtype=np.int64))
        start = end - np.array(lengths, dtype=np.int64)
        buffer = np.zeros(len(end), np.int64)
        return Batch(np.asarray(t_ms, np.int64), [b"".join(chunks)], buffer, start, end)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        buffers: list[bytes] = []
        shifted = []
        for b in batches:
            shifted.append(b.buffer + len(buffers))
            buffers.extend(b.buffers)
        return Batch(
            np.concatenate([b.t_ms for b in batches]).astype(np.int64),
            buffers,
            np.concatenate(shifted).astype(np.int64),
            np.concatenate([b.start for b in batches]).astype(np.int64),
            np.concatenate([b.end for b in batches]).astype(np.int64),
        )

    def select(self, index: np.ndarray) -> Batch:
        """The lines at ``index``, in that order (buffers no line uses are let go)."""
        used, buffer = np.unique(self.buffer[index], return_inverse=True)
        return Batch(
            self.t_ms[index],
            [self.buffers[i] for i in used.tolist()],
            buffer.astype(np.int64),
            self.start[index],
            self.end[index],
        )

    def chunks(self) -> Iterator[bytes]:
        """The lines in order, joined a few thousand at a time."""
        views = [memoryview(b) for b in self.buffers]
        buffer, start, end = self.buffer.tolist(), self.start.tolist(), self.end.tolist()
        for lo in range(0, len(buffer), _WRITE_CHUNK):
            hi = lo + _WRITE_CHUNK
            yield b"".join(
                [
                    views[b][s:e]
                    for b, s, e in zip(buffer[lo:hi], start[lo:hi], end[lo:hi], strict=True)
                ]
            )

    def lines(self) -> list[bytes]:
        return [
            bytes(self.buffers[b][s:e])
            for b, s, e in zip(
                self.buffer.tolist(), self.start.tolist(), self.end.tolist(), strict=True
            )
        ]


_SERIALISE_CHUNK = 256  # messages serialised before their lines are joined
_WRITE_CHUNK = 4096  # lines joined per write


class Stamper:
    """Deterministic messageIds (a run prefix plus a counter) and ISO 8601 timestamps."""

    def __init__(self, rng: np.random.Generator, non_utc_share: float, prefix: str) -> None:
        self.rng = rng
        self.non_utc_share = non_utc_share
        self.prefix = prefix + "-"
        self.issued = 0

    def message_ids(self, n: int) -> list[str]:
        prefix = self.prefix
        ids = [prefix + str(i) for i in range(self.issued, self.issued + n)]
        self.issued += n
        return ids

    def timestamps(self, t_ms: np.ndarray) -> list[str]:
        """Mostly ``...Z``; a share written in another offset that names the same instant."""
        text = iso_utc(t_ms)
        shifted = np.flatnonzero(self.rng.random(len(t_ms)) < self.non_utc_share)
        if len(shifted):
            which = self.rng.integers(len(_OFFSET_MINUTES), size=len(shifted))
            local = iso_utc(t_ms[shifted] + _OFFSET_MINUTES[which] * MINUTE_MS)
            for i, local_text, suffix in zip(
                shifted.tolist(), local, _OFFSET_SUFFIX[which], strict=True
            ):
                text[i] = local_text[:-1] + suffix
        return text

    def stamp(self, t_ms: np.ndarray) -> tuple[list[str], list[str]]:
        return self.message_ids(len(t_ms)), self.timestamps(t_ms)


def iso_utc(t_ms: np.ndarray) -> list[str]:
    """ms since the epoch -> "YYYY-MM-DDTHH:MM:SS.mmmZ", built as bytes (numpy's own is slow)."""
    t_ms = np.asarray(t_ms, dtype=np.int64)
    if len(t_ms) == 0:
        return []
    day, ms = np.divmod(t_ms, DAY_MS)
    days, which = np.unique(day, return_inverse=True)
    dates = np.datetime_as_string(days.astype("datetime64[D]")).astype("S10")
    out = np.empty((25, len(t_ms)), dtype=np.uint8)  # one row per character: fast writes
    out[:10] = dates.view(np.uint8).reshape(-1, 10)[which].T
    ms = ms.astype(np.int32)
    for row, value in ((11, ms // HOUR_MS), (14, ms // MINUTE_MS % 60), (17, ms // 1000 % 60)):
        out[row] = 48 + value // 10
        out[row + 1] = 48 + value % 10
    millis = ms % 1000
    out[20], out[21], out[22] = 48 + millis // 100, 48 + millis // 10 % 10, 48 + millis % 10
    for row, char in ((10, "T"), (13, ":"), (16, ":"), (19, "."), (23, "Z"), (24, "\n")):
        out[row] = ord(char)
    text = np.ascontiguousarray(out.T).tobytes().decode("ascii").split("\n")
    text.pop()  # after the last newline
    return text


def _column(values: Sequence[Any] | None, n: int) -> Any:
    return repeat(None, n) if values is None else values


def track_messages(
    event: str,
    message_ids: Sequence[str],
    timestamps: Sequence[str],
    anonymous_ids: Sequence[str | None] | None,
    user_ids: Sequence[str | None] | None,
    properties: Sequence[dict[str, Any]],
    contexts: Sequence[dict[str, Any] | None] | None,
) -> Iterator[Message]:
    n = len(message_ids)
    for mid, ts, anon, uid, props, ctx in zip(
        message_ids,
        timestamps,
        _column(anonymous_ids, n),
        _column(user_ids, n),
        properties,
        _column(contexts, n),
        strict=False,
    ):
        message = {"type": "track", "event": event, "messageId": mid, "timestamp": ts}
        if anon is not None:
            message["anonymousId"] = anon
        if uid is not None:
            message["userId"] = uid
        message["properties"] = props
        if ctx is not None:
            message["context"] = ctx
        yield message


def view_messages(
    kinds: Sequence[str],
    name: str,
    message_ids: Sequence[str],
    timestamps: Sequence[str],
    anonymous_ids: Sequence[str],
    user_ids: Sequence[str | None],
    properties: Sequence[dict[str, Any]],
    contexts: Sequence[dict[str, Any]],
) -> Iterator[Message]:
    """``page`` (web) or ``screen`` (app) messages, per row's kind."""
    for kind, mid, ts, anon, uid, props, ctx in zip(
        kinds, message_ids, timestamps, anonymous_ids, user_ids, properties, contexts, strict=True
    ):
        message = {"type": kind, "name": name, "messageId": mid, "timestamp": ts}
        message["anonymousId"] = anon
        if uid is not None:
            message["userId"] = uid
        message["properties"] = props
        message["context"] = ctx
        yield message


def identify_messages(
    message_ids: Sequence[str],
    timestamps: Sequence[str],
    anonymous_ids: Sequence[str],
    user_ids: Sequence[str | None],
    traits: Sequence[dict[str, Any]],
    contexts: Sequence[dict[str, Any]],
) -> Iterator[Message]:
    for mid, ts, anon, uid, tr, ctx in zip(
        message_ids, timestamps, anonymous_ids, user_ids, traits, contexts, strict=True
    ):
        message = {"type": "identify", "messageId": mid, "timestamp": ts, "anonymousId": anon}
        if uid is not None:
            message["userId"] = uid
        message["traits"] = tr
        message["context"] = ctx
        yield message


def alias_messages(
    message_ids: Sequence[str],
    timestamps: Sequence[str],
    previous_ids: Sequence[str],
    user_ids: Sequence[str],
    contexts: Sequence[dict[str, Any]],
) -> Iterator[Message]:
    for mid, ts, prev, uid, ctx in zip(
        message_ids, timestamps, previous_ids, user_ids, contexts, strict=True
    ):
        yield {
            "type": "alias",
            "messageId": mid,
            "timestamp": ts,
            "previousId": prev,
            "userId": uid,
            "context": ctx,
        }


def noisy_email(email: str) -> str:
    """The same address as a person might type it: mixed case."""
    return email.title()


def noisy_phone(phone: str) -> str:
    """The same E.164 number with spaces, as a form might store it: +44 7123 456789."""
    return f"{phone[:3]} {phone[3:7]} {phone[7:]}"


def maybe_noisy(
    values: np.ndarray, rng: np.random.Generator, share: float, noise: Any
) -> np.ndarray:
    """``values`` (object array) with a random ``share`` of non-None entries reformatted."""
    out = values.copy()
    for i in np.flatnonzero(rng.random(len(values)) < share).tolist():
        if out[i] is not None:
            out[i] = noise(out[i])
    return out


class WireObjects:
    """Properties and contexts shared by many messages, built once per world.

    Most are pre-serialised ``orjson.Fragment`` objects: serialising a message then copies
    their bytes instead of walking a nested dict again (about a third of the time saved).
    The plain dicts ``device`` and ``product`` are for building bigger objects.
    """

    def __init__(self, world: World) -> None:
        cat = world.catalogue
        names = cat.category_names
        slugs = [n.lower() for n in names]
        self.device = np.array(
            [
                {"id": did, "type": DEVICE_TYPES[t]}
                for did, t in zip(world.device_ids, world.device_types.tolist(), strict=True)
            ],
            dtype=object,
        )
        self.device_context = _fragments({"device": d} for d in self.device)
        self.category_page = _fragments(
            {"category": n, "url": f"{SHOP_URL}/c/{s}", "path": f"/c/{s}"}
            for n, s in zip(names, slugs, strict=True)
        )
        self.category_screen = _fragments({"category": n} for n in names)
        self.list_viewed = _fragments(
            {"list_id": s, "category": n} for n, s in zip(names, slugs, strict=True)
        )
        pids, cats, prices = cat.product_ids, cat.category.tolist(), cat.price.tolist()
        self.product = [
            {"product_id": p, "category": names[c], "price": pr}
            for p, c, pr in zip(pids, cats, prices, strict=True)
        ]
        self.product_viewed = _fragments({**p, "currency": CURRENCY} for p in self.product)
        self.product_page = _fragments(
            {
                "category": p["category"],
                "url": f"{SHOP_URL}/p/{p['product_id']}",
                "path": f"/p/{p['product_id']}",
            }
            for p in self.product
        )
        self.product_screen = _fragments(
            {"category": p["category"], "product_id": p["product_id"]} for p in self.product
        )
        self.page = {  # page properties by page name
            name: fragment({"url": f"{SHOP_URL}{path}", "path": path})
            for name, path in (("Home", "/"), ("Cart", "/cart"), ("Checkout", "/checkout"))
        }


def fragment(value: dict[str, Any]) -> orjson.Fragment:
    """``value`` serialised once, for objects that many messages carry.

    Copied to a right-sized bytes: orjson's own output keeps a 4 KiB buffer alive.
    """
    return orjson.Fragment(memoryview(orjson.dumps(value)).tobytes())


def _fragments(objects: Iterable[dict[str, Any]]) -> np.ndarray:
    return np.array([fragment(o) for o in objects], dtype=object)
