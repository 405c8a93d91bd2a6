"""Tabular inputs (a transaction log, an ESP export) as Segment messages, through a column mapping.

``--map user_id=CustomerID --map timestamp=InvoiceDate --event "Order Completed"`` names, for
each canonical field, the column that holds it. Rows that share an ``order_id`` of an order
event become one order whose lines are its ``products``; an order whose quantities add up to
less than zero is a cancellation and becomes ``Order Cancelled`` instead of being dropped. A
record without a mapped ``message_id`` gets a stable id derived from its content, so the same
order read twice (or from two overlapping exports) is one event.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import derive_message_id, identifier_text

# Canonical fields a column can be mapped to, and what each means.
TABULAR_FIELDS: dict[str, str] = {
    "message_id": "unique id of the record (else derived from its content)",
    "timestamp": "when it happened (ISO 8601; no offset means --timezone)",
    "event": "event name per row (else --event NAME for every row)",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "email": "email address",
    "phone": "phone number",
    "device_id": "device id",
    "order_id": "order id; rows sharing it become one order with products",
    "product_id": "product id / SKU",
    "name": "product name",
    "category": "product category",
    "quantity": "units",
    "price": "unit price",
    "revenue": "line or order value (else price x quantity)",
    "currency": "ISO 4217 currency code",
    "channel": "web, app, email, sms or push",
}
PROPERTY_PREFIX = "properties."
ORDER_EVENTS = frozenset({"Order Completed"})
_LINE_FIELDS = ("product_id", "name", "category", "quantity", "price")


class MappingError(ValueError):
    """The mapping names an unknown field or a column the file does not have."""


@dataclass(frozen=True)
class TabularMapping:
    """Canonical field -> column name, plus an event name for every row."""

    columns: dict[str, str]
    event: str | None = None

    def __post_init__(self) -> None:
        unknown = [
            f for f in self.columns if f not in TABULAR_FIELDS and not f.startswith(PROPERTY_PREFIX)
        ]
        if unknown:
            raise MappingError(
                f"unknown mapping field {unknown[0]!r}; known fields: "
                f"{', '.join(TABULAR_FIELDS)} (or properties.NAME for any property)"
            )
        if "timestamp" not in self.columns:
            raise MappingError("the mapping needs a timestamp column (--map timestamp=COLUMN)")
        if self.event is None and "event" not in self.columns:
            raise MappingError("tabular input needs --event NAME or --map event=COLUMN")


def parse_mapping(pairs: list[str], event: str | None = None) -> TabularMapping:
    """``["user_id=Customer ID", ...]`` -> TabularMapping; clear errors for malformed pairs."""
    columns: dict[str, str] = {}
    for pair in pairs:
        name, separator, column = pair.partition("=")
        if not separator or not name.strip() or not column.strip():
            raise MappingError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. user_id=CustomerID")
        if name.strip() in columns:
            raise MappingError(f"--map: field {name.strip()!r} is mapped twice")
        columns[name.strip()] = column.strip()
    return TabularMapping(columns=columns, event=event)


def read_tabular_messages(
    path: Path, fmt: str, mapping: TabularMapping
) -> tuple[Iterator[tuple[int, dict[str, Any]]], int]:
    """Read a CSV or Parquet file; return ((position, message) iterator, number of rows)."""
    frame = _read_frame(path, fmt)
    missing = [
        f"`{column}` (for {name})"
        for name, column in mapping.columns.items()
        if column not in frame.columns
    ]
    if missing:
        raise MappingError(
            f"{path}: column {', '.join(missing)} missing; "
            f"have: {', '.join(map(str, frame.columns))}"
        )
    values = {name: _python_values(frame[column]) for name, column in mapping.columns.items()}
    events = values.get("event") or [mapping.event] * len(frame)
    if "order_id" in values and (mapping.event in ORDER_EVENTS or "event" in values):
        return _order_messages(values, events), len(frame)
    return _row_messages(values, events), len(frame)


def _read_frame(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        separator = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=separator, dtype=str, keep_default_na=True)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise MappingError(f"{path}: cannot read as {fmt}: {error}") from None


def _python_values(column: pd.Series) -> list[Any]:
    values = column.astype(object).tolist()
    return [
        None if _is_missing(v) else v.to_pydatetime() if isinstance(v, pd.Timestamp) else v
        for v in values
    ]


def _is_missing(value: Any) -> bool:  # NaN, NaT and None are all "no value"
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _row_messages(values: dict[str, list], events: list) -> Iterator[tuple[int, dict[str, Any]]]:
    for index in range(len(events)):
        row = {name: column[index] for name, column in values.items()}
        message = _message(row, events[index])
        message["properties"].update(_line(row, with_revenue=True))
        yield index + 1, _with_message_id(message, row)


def _order_messages(values: dict[str, list], events: list) -> Iterator[tuple[int, dict[str, Any]]]:
    """One message per (event, order_id); rows without an order id stay single rows."""
    groups: dict[tuple, list[int]] = {}
    for index, order_id in enumerate(values["order_id"]):
        key = (events[index], order_id) if order_id is not None else (None, index)
        groups.setdefault(key, []).append(index)
    for (event, _), indices in groups.items():
        first = {name: column[indices[0]] for name, column in values.items()}
        event = event if event is not None else events[indices[0]]
        if event not in ORDER_EVENTS or first.get("order_id") is None:
            message = _message(first, event)
            message["properties"].update(_line(first, with_revenue=True))
            yield indices[0] + 1, _with_message_id(message, first)
            continue
        lines = [_line({n: c[i] for n, c in values.items()}) for i in indices]
        quantity = sum(_as_float(line.get("quantity")) or 0.0 for line in lines)
        if "revenue" in values:
            revenue = sum(_as_float(values["revenue"][i]) or 0.0 for i in indices)
        else:
            revenue = sum(
                (_as_float(line.get("price")) or 0.0) * (_as_float(line.get("quantity")) or 1.0)
                for line in lines
            )
        message = _message(first, "Order Cancelled" if quantity < 0 else event)
        message["properties"].update(
            {
                "order_id": identifier_text(first["order_id"], "order_id"),
                "revenue": round(revenue, 6),
                "products": lines,
            }
        )
        yield indices[0] + 1, _with_message_id(message, first)


def _message(row: dict[str, Any], event: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": event, "timestamp": row.get("timestamp")}
    for field, key in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        if row.get(field) is not None:
            message[key] = identifier_text(row[field], field)
    traits = {k: row[k] for k in ("email", "phone") if row.get(k) is not None}
    context: dict[str, Any] = {}
    if traits:
        context["traits"] = traits
    if row.get("device_id") is not None:
        context["device"] = {"id": identifier_text(row["device_id"], "device_id")}
    if context:
        message["context"] = context
    properties: dict[str, Any] = {
        name[len(PROPERTY_PREFIX) :]: value
        for name, value in row.items()
        if name.startswith(PROPERTY_PREFIX) and value is not None
    }
    for name in ("currency", "channel"):
        if row.get(name) is not None:
            properties[name] = row[name]
    message["properties"] = properties
    return message


def _line(row: dict[str, Any], with_revenue: bool = False) -> dict[str, Any]:
    line = {name: row[name] for name in _LINE_FIELDS if row.get(name) is not None}
    if "product_id" in line:
        line["product_id"] = identifier_text(line["product_id"], "product_id")
    for name in ("quantity", "price"):
        if name in line and _as_float(line[name]) is not None:
            line[name] = _as_float(line[name])
    if with_revenue and row.get("revenue") is not None:
        line["revenue"] = row["revenue"]
    if with_revenue and row.get("order_id") is not None:
        line["order_id"] = identifier_text(row["order_id"], "order_id")
    return line


def _with_message_id(message: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    if row.get("message_id") is not None:
        message["messageId"] = identifier_text(row["message_id"], "message_id")
    else:
        message["messageId"] = derive_message_id(message)
    return message


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
