"""Vectorised normalisation: the Segment event contract computed in DuckDB SQL, for whole batches.

``features.contract.normalise_message`` is the reference meaning of a message and costs ~20 µs per
event in Python. This module computes the same canonical rows for a whole Arrow batch of JSON lines
in DuckDB queries, but only *claims* the lines whose row it can compute with certainty: anything
unusual (malformed JSON, rejections, derived message ids, Python ``repr`` in a warning, ...) is
handed back unclaimed, for the reference path to normalise, reject or dead-letter. Exactness never
depends on covering every case; coverage only decides the speed.

Two queries: a lean one for the common shape of a line (plain text, flat properties, strings
where texts belong; 97% of a simulated stream) runs on every line, and the general one below on
the lines it leaves. Both claim only what they compute exactly; the lean one is about a quarter
cheaper per line because most of the general query's cases cannot occur in the common shape.

The common query's first step (screening a line, extracting ~25 JSON paths as text, checking keys
for duplicates) is done by a C scanner, features._jsonscan, when it is built: one pass per line
without the GIL, writing Arrow columns of exactly the JSON texts json_extract would have written,
for the lines whose raw text is already what yyjson writes (see features/_jsonscan.c). The lines
it refuses are read from their raw JSON as before, so the rows never depend on the scanner. For
most scanned lines it also computes the common query's verdict and row itself (the query's own
conditions and values, from the same JSON texts, at almost no cost over the scan against ~5 µs
a line in the query), and the query runs only on the scanned lines it leaves undecided
(timestamps in other forms). It also claims identify messages and properties with products,
total or value, which the common query leaves to the reference (~20 µs a line in Python).

Division of labour inside the general query:
- fields that differ on every line (message ids, timestamps, identifiers, property texts, revenue)
  are computed in SQL, under claim conditions that say when SQL and Python provably agree;
- fields whose meaning lives in Python libraries (phone numbers, odd emails, custom event names,
  unusual channels) are computed by the reference functions themselves, called from a vectorised
  UDF once per distinct value of a batch, so they are exact by construction.

JSON: DuckDB parses with yyjson, the reference with orjson. They agree on every document except
those ``kairos_parseable`` screens out (NaN/Infinity, trailing commas, integers of 19+ digits,
3-digit exponents, nesting near orjson's limit), and on duplicate keys, where yyjson keeps the
first value and orjson the last: lines with a duplicate key where we read or store are not claimed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from duckdb.sqltypes import BOOLEAN, VARCHAR, DuckDBPyType

from features.contract import (
    _APP_DEVICE_TYPES,
    _CHANNEL_SPECIFIC,
    CANONICAL_EVENTS,
    CHANNELS,
    NormaliseOptions,
    RejectedRecord,
    _channel,
    _email,
    _event_name,
    _phone,
)
from features.store import EVENT_SCHEMA

try:  # the C scanner (pyproject.toml builds it); without it the common query reads raw JSON
    from features import _jsonscan
except ImportError:  # pragma: no cover - a source tree that was never built
    _jsonscan = None

__all__ = ["CLAIMED_SCHEMA", "normalise_lines"]

CLAIMED_SCHEMA = pa.schema([pa.field("position", pa.int64()), *EVENT_SCHEMA])
_UNCLAIMED_SCHEMA = pa.schema([pa.field("position", pa.int64()), pa.field("raw", pa.string())])

# --- What one JSON parse extracts per line (name -> JSON path) --------------------------------
# json_extract returns each value as JSON text: SQL NULL when the key is absent and 'null' when
# it is present with null, which is how Python's ``dict.get(key, default)`` semantics survive.
# Every extracted value costs time, so keys that realistic messages rarely carry are looked up
# lazily in the ``properties`` text instead (RARE_PROPERTIES, see ``message`` below).
VALUE_PATHS: dict[str, str] = {
    "type": "$.type",
    "message_id": "$.messageId",
    "timestamp": "$.timestamp",
    "user_id": "$.userId",
    "anonymous_id": "$.anonymousId",
    "event": "$.event",
    "batch": "$.batch",
    "properties": "$.properties",
    "traits": "$.traits",
    "context_traits": "$.context.traits",
    "context_email": "$.context.traits.email",
    "context_phone": "$.context.traits.phone",
    "device_id": "$.context.device.id",
    "device_type": "$.context.device.type",
    "app": "$.context.app",
    "order_id": "$.properties.order_id",
    "product_id": "$.properties.product_id",
    "category": "$.properties.category",
    "currency": "$.properties.currency",
    "send_id": "$.properties.send_id",
    "campaign_id": "$.properties.campaign_id",
    "channel": "$.properties.channel",
    "revenue": "$.properties.revenue",
    "price": "$.properties.price",
    "quantity": "$.properties.quantity",
}
RARE_PROPERTIES = ("email", "phone", "sku", "email_id", "products", "total", "value")  # -> *_json
# Fields read as text (identifier_text() or _text()): output column -> its JSON source in the query.
TEXT_FIELDS = {
    "message_id": "message_id_json",
    "user_id": "user_id_json",
    "anonymous_id": "anonymous_id_json",
    "device_id": "device_id_json",
    "order_id": "order_id_json",
    "product_id": "product_json",
    "category": "category_source_json",
    "currency": "currency_json",
    "send_id": "send_json",
    "campaign_id": "campaign_id_json",
}
# Objects whose keys we look up; each must be free of duplicate keys (see the module docstring).
OBJECT_PATHS = (
    "$",
    "$.context",
    "$.context.device",
    "$.context.traits",
    "$.traits",
    "$.properties",
)

# Code points for which Python's str.isspace() is true, i.e. what str.strip() removes
# (tests/test_vectorised.py checks this list against Python).
PYTHON_WHITESPACE = (
    *range(9, 14), *range(28, 33), 133, 160, 5760, *range(8192, 8203), 8232, 8233, 8239, 8287, 12288
)  # fmt: skip


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Any) -> str:
    return ", ".join(_sql_text(value) for value in values)


def _filled(template: str, values: dict[str, str]) -> str:
    """``template`` with each @PLACEHOLDER@ replaced by its SQL text."""
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def _extraction(object_paths: tuple[str, ...]) -> dict[str, str]:
    """The placeholders of the one JSON parse both queries start with: the lines, the values
    extracted as JSON text (VALUE_PATHS, as ``<name>_json``), the key lists of
    ``object_paths``, and the test for rare property keys."""
    return {
        "@LINES@": _LINES_VIEW,
        "@VALUE_PATHS@": "[" + _sql_list(VALUE_PATHS.values()) + "]",
        "@OBJECT_PATHS@": "[" + _sql_list(object_paths) + "]",
        "@FIELDS@": ",\n        ".join(
            f"v[{i}] AS {name}_json" for i, name in enumerate(VALUE_PATHS, start=1)
        ),
        "@RARE_TEST@": " OR ".join(
            f"""contains(properties_json, '"{key}":')""" for key in RARE_PROPERTIES
        ),
    }


def _strings_or_absent(sources: Any) -> str:
    """SQL: every one of these JSON texts is a string or absent."""
    return " AND ".join(
        f"""({source} IS NULL OR starts_with({source}, '"'))""" for source in sources
    )


# --- SQL macros: each one states when SQL agrees with the reference ---------------------------
# @NAME@ placeholders are filled in from the contract below, so the SQL reads as plain SQL.
_MACROS_TEMPLATE = r"""
-- yyjson (DuckDB) accepts more than orjson: NaN/Infinity literals (in any case) and trailing
-- commas; it keeps integers of 19+ digits and overflowing exponents as raw text where orjson
-- makes a float or fails; orjson also refuses nesting 1024 deep (which needs 2048+ brackets).
-- Such a token follows ':', ',' or '[', and one pattern per separator lets the regex engine
-- jump from separator to separator. String content can trip them too: such a line is merely
-- left to Python.
CREATE OR REPLACE TEMP MACRO kairos_screened(raw) AS
    NOT regexp_matches(raw, ':@ODD_NUMBER@')
    AND NOT regexp_matches(raw, ',(?:@ODD_NUMBER@|\s*[}\]])')
    AND NOT regexp_matches(raw, '\[@ODD_NUMBER@')
    AND CASE WHEN strlen(raw) < 2048 THEN true
             ELSE strlen(raw) - strlen(replace(replace(raw, '{', ''), '[', '')) < 1000 END;
-- Valid JSON that yyjson and orjson read alike.
CREATE OR REPLACE TEMP MACRO kairos_parseable(raw) AS json_valid(raw) AND kairos_screened(raw);

-- A line whose string values all need no work: no escapes (no backslash at all), ASCII only, and
-- no string starting or ending with a space ('" ' or ' "' never occurs). Then str.strip() changes
-- no value and dropping the quotes of a JSON string gives its value. Nearly all lines are plain.
CREATE OR REPLACE TEMP MACRO kairos_plain_line(raw) AS
    NOT contains(raw, '\') AND strlen(raw) = length(raw)
    AND NOT contains(raw, '" ') AND NOT contains(raw, ' "');
-- The same for one JSON string of another line: no escapes, visible ASCII at both ends.
CREATE OR REPLACE TEMP MACRO kairos_plain_string(j) AS
    regexp_full_match(j, '"[!#-\[\]-~](?:[^"\\]*[!#-\[\]-~])?"');
CREATE OR REPLACE TEMP MACRO kairos_unquoted(j) AS substr(j, 2, length(j) - 2);
-- str.strip() of any JSON string (empty is None): trim() removes exactly the characters Python
-- calls whitespace. It is slow, hence the plain cases.
CREATE OR REPLACE TEMP MACRO kairos_stripped(j, plain) AS
    CASE WHEN j = '""' THEN NULL
         WHEN plain THEN kairos_unquoted(j)
         WHEN kairos_plain_string(j) THEN kairos_unquoted(j)
         ELSE nullif(trim(json_extract_string(j, '$'), @WHITESPACE@), '') END;

-- A JSON integer. kairos_parseable keeps them under 19 digits, so Python's str(int) is the text.
CREATE OR REPLACE TEMP MACRO kairos_is_integer(j) AS regexp_full_match(j, '-?[0-9]+');

-- One JSON value read as text, as {kind, value}: kind is null, string, integer, boolean,
-- container (object/array) or float; value is str.strip() of a string (empty is None), the
-- digits of an integer and 'True'/'False' for booleans. identifier_text() and _text() agree
-- with it for every kind but float (repr), and identifier_text() rejects booleans and containers.
CREATE OR REPLACE TEMP MACRO kairos_json_text(j, plain) AS
    CASE WHEN j IS NULL OR j = 'null' THEN {'kind': 'null', 'value': NULL::VARCHAR}
         WHEN starts_with(j, '"') THEN {'kind': 'string', 'value': kairos_stripped(j, plain)}
         WHEN j = 'true' THEN {'kind': 'boolean', 'value': 'True'}
         WHEN j = 'false' THEN {'kind': 'boolean', 'value': 'False'}
         WHEN starts_with(j, '{') OR starts_with(j, '[')
             THEN {'kind': 'container', 'value': NULL::VARCHAR}
         WHEN kairos_is_integer(j) THEN {'kind': 'integer', 'value': j}
         ELSE {'kind': 'float', 'value': NULL::VARCHAR} END;

-- _number() as {known, value}: JSON numbers (their text is the shortest round trip of the same
-- double, so the cast is exact), strings in plain decimal notation (float() and DuckDB both
-- round correctly), and what it maps to None without a doubt (null, booleans, containers).
-- Other strings (' 1', '1_0', 'nan', '١') are not known.
CREATE OR REPLACE TEMP MACRO kairos_json_number(j) AS
    CASE WHEN j IS NULL OR j IN ('null', 'true', 'false') OR starts_with(j, '{')
              OR starts_with(j, '[') THEN {'known': true, 'value': NULL::DOUBLE}
         WHEN NOT starts_with(j, '"') THEN {'known': true, 'value': CAST(j AS DOUBLE)}
         WHEN regexp_full_match(j, '"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?"') THEN
             {'known': true,
              'value': CASE WHEN isfinite(CAST(kairos_unquoted(j) AS DOUBLE))
                            THEN CAST(kairos_unquoted(j) AS DOUBLE) END}
         ELSE {'known': false, 'value': NULL::DOUBLE} END;

-- A JSON number (on a parseable line: anything but a string, null, a boolean or a container).
CREATE OR REPLACE TEMP MACRO kairos_is_json_number(j) AS
    j IS NOT NULL AND j NOT IN ('null', 'true', 'false') AND NOT starts_with(j, '"')
    AND NOT starts_with(j, '{') AND NOT starts_with(j, '[');

-- _object_field(): an object, or null/absent meaning {}; anything else rejects the record.
CREATE OR REPLACE TEMP MACRO kairos_object_or_nothing(j) AS
    j IS NULL OR j = 'null' OR starts_with(j, '{');

-- orjson.dumps(value) if value else None, for an object (equal as parsed JSON).
CREATE OR REPLACE TEMP MACRO kairos_nonempty_object(j) AS
    CASE WHEN starts_with(j, '{') AND j <> '{}' THEN j END;

-- Python truthiness of context.get("app") (a JSON value).
CREATE OR REPLACE TEMP MACRO kairos_truthy(j) AS
    CASE WHEN j IS NULL OR j IN ('null', 'false', '{}', '[]', '""') THEN false
         WHEN j = 'true' OR starts_with(j, '"') OR starts_with(j, '{') OR starts_with(j, '[')
              THEN true
         ELSE CAST(j AS DOUBLE) <> 0 END;

-- parse_timestamp() for the ISO 8601 form sources send, with an explicit Z or +HH:MM offset so
-- the options' time zone never applies. DuckDB's TIMESTAMPTZ cast then agrees with Python's
-- fromisoformat() + astimezone(UTC): same calendar checks (02-30 fails), same offset, and both
-- keep the first 6 fractional digits, truncating the rest. NULL for any other form.
CREATE OR REPLACE TEMP MACRO kairos_utc_timestamp(j) AS
    CASE WHEN regexp_full_match(
        j,
        '"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]'
        || '(?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"'
    ) THEN make_timestamp(epoch_us(try_cast(kairos_unquoted(j) AS TIMESTAMPTZ))) END;

-- _email() of a plain ASCII address that passes its regex as it stands: strip() changes nothing
-- and lower() is ASCII lower-casing. No '"' or '\' either, so the JSON text is the value. Any
-- other value goes to the reference function.
CREATE OR REPLACE TEMP MACRO kairos_no_text() AS
    {'value': NULL::VARCHAR, 'warning': NULL::VARCHAR};
CREATE OR REPLACE TEMP MACRO kairos_email(j) AS
    CASE WHEN j IS NULL OR j IN ('null', '""') THEN kairos_no_text()
         WHEN regexp_full_match(j, '"[!#-?A-\[\]-~]+@[!#-?A-\[\]-~]+\.[!#-\-/-?A-\[\]-~]+"')
             THEN {'value': lower(kairos_unquoted(j)), 'warning': NULL::VARCHAR}
         ELSE kairos_email_reference(j) END;
-- _phone(): phonenumbers decides, through the reference function.
CREATE OR REPLACE TEMP MACRO kairos_phone(j, region) AS
    CASE WHEN j IS NULL OR j IN ('null', '""') THEN kairos_no_text()
         ELSE kairos_phone_reference(j, region) END;

-- _event_name() for the names that need no lookup: a canonical track event, or the fixed name of
-- a page, screen or identify message. NULL (ask the reference function) for anything else.
-- (list_contains rather than IN: DuckDB turns a long IN list into a join.)
CREATE OR REPLACE TEMP MACRO kairos_event_name(kind, j) AS
    CASE kind WHEN 'track'
                  THEN CASE WHEN list_contains([@CANONICAL_JSON@], j) THEN kairos_unquoted(j) END
              @EVENT_OF_KIND@ END;
-- CANONICAL_EVENTS.get(event): the channel a canonical name implies.
CREATE OR REPLACE TEMP MACRO kairos_implied_channel(event) AS
    CASE event @IMPLIED_CHANNEL@ END;
-- _channel(), for the usual inputs; NULL (ask the reference function) when properties.channel
-- would be normalised or warned about, or device.type is not plain ASCII.
CREATE OR REPLACE TEMP MACRO kairos_channel(kind, event, implied, stated, app, device_type) AS
    CASE WHEN list_contains([@CHANNEL_SPECIFIC@], event) THEN implied
         WHEN stated IS NOT NULL AND stated <> 'null' THEN
             CASE WHEN stated IN (@CHANNELS_JSON@) THEN kairos_unquoted(stated) END
         WHEN implied IS NOT NULL THEN implied
         WHEN kind = 'screen' OR kairos_truthy(app) THEN 'app'
         WHEN device_type IS NULL OR NOT starts_with(device_type, '"') THEN 'web'
         WHEN regexp_full_match(device_type, '"[ -!#-\[\]-~]*"') THEN
             CASE WHEN lower(kairos_unquoted(device_type)) IN (@APP_DEVICE_TYPES@) THEN 'app'
                  ELSE 'web' END
    END;
"""


def _implied_channels() -> dict[str, str]:
    """CANONICAL_EVENTS' names that imply a channel, with it."""
    return {name: channel.value for name, channel in CANONICAL_EVENTS.items() if channel}


def _fixed_event_names(kinds: tuple[str, ...] = ("page", "screen", "identify")) -> dict[str, str]:
    """The event name of each message type whose name does not depend on the message."""
    return {kind: _event_name(kind, {}) for kind in kinds}


def _channel_specific() -> list[str]:
    """The implied names whose channel wins over properties.channel (Email ..., SMS ...)."""
    return [name for name in _implied_channels() if name.split(" ", 1)[0] in _CHANNEL_SPECIFIC]


def _macros_sql() -> str:
    """The macros, with the contract's names and channels written in."""
    implied = _implied_channels()
    fixed = _fixed_event_names()
    channel_specific = _channel_specific()
    values = {
        "@WHITESPACE@": _sql_text("".join(map(chr, PYTHON_WHITESPACE))),
        "@ODD_NUMBER@": r"\s*-?(?:(?i:nan|inf)|[0-9]{19}|[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]{3})",
        "@CANONICAL_JSON@": _sql_list(orjson.dumps(name).decode() for name in CANONICAL_EVENTS),
        "@EVENT_OF_KIND@": " ".join(
            f"WHEN {_sql_text(kind)} THEN {_sql_text(name)}" for kind, name in fixed.items()
        ),
        "@IMPLIED_CHANNEL@": " ".join(
            f"WHEN {_sql_text(name)} THEN {_sql_text(channel)}" for name, channel in implied.items()
        ),
        "@CHANNEL_SPECIFIC@": _sql_list(channel_specific),
        "@CHANNELS_JSON@": _sql_list(f'"{channel}"' for channel in CHANNELS),
        "@APP_DEVICE_TYPES@": _sql_list(sorted(_APP_DEVICE_TYPES)),
    }
    return _filled(_MACROS_TEMPLATE, values)


# --- The query ---------------------------------------------------------------------------------
_LINES_VIEW = "kairos_vectorised_lines"
_QUERY_TEMPLATE = r"""
WITH parsed AS (
    -- One parse for the values, one for the key lists; only lines both parsers read alike.
    -- Values stay JSON text, typed VARCHAR so that string functions do not re-parse them.
    SELECT position, raw, parseable, kairos_plain_line(raw) AS plain,
        CASE WHEN parseable THEN CAST(json_extract(raw, @VALUE_PATHS@) AS VARCHAR[]) END AS v,
        CASE WHEN parseable THEN json_keys(raw, @OBJECT_PATHS@) END AS object_keys
    FROM (SELECT position, raw, kairos_parseable(raw) AS parseable FROM @LINES@)
),
fields AS (
    SELECT position, raw, parseable, plain, object_keys,
        @FIELDS@
    FROM parsed
),
message AS (
    SELECT *,
        -- Only the exact lowercase names; " Track " and alias messages go to Python.
        CASE WHEN type_json IN ('"track"', '"identify"', '"page"', '"screen"')
             THEN kairos_unquoted(type_json) END AS kind,
        -- identify reads its own traits, every other type context.traits.
        CASE WHEN type_json = '"identify"' THEN traits_json ELSE context_traits_json END
            AS person_traits_json,
        CASE WHEN type_json = '"identify"' THEN json_extract(traits_json, '$.email')::VARCHAR
             ELSE context_email_json END AS person_email_json,
        CASE WHEN type_json = '"identify"' THEN json_extract(traits_json, '$.phone')::VARCHAR
             ELSE context_phone_json END AS person_phone_json,
        -- yyjson writes every key as '"key":', so this test cannot miss a rare key.
        @RARE_TEST@ AS has_rare_properties
    FROM fields
),
rare AS (
    SELECT *,
        CASE WHEN has_rare_properties
             THEN json_extract(properties_json, @RARE_PATHS@)::VARCHAR[] END AS rare
    FROM message
),
rare_fields AS (
    SELECT *,
        @RARE_FIELDS@
    FROM rare
),
sources AS (
    SELECT *,
        kairos_event_name(kind, event_json) AS event_name,
        -- traits.get("email", properties.get("email")): a present key wins, even with null.
        coalesce(person_email_json, properties_email_json) AS email_json,
        coalesce(person_phone_json, properties_phone_json) AS phone_json,
        coalesce(product_id_json, sku_json) AS product_json,
        coalesce(send_id_json, email_id_json) AS send_json,
        -- properties.get("category", first_product.get("category")): the first product counts
        -- only when it is a dict; '$[0].category' is NULL for anything else.
        coalesce(category_json, CASE WHEN starts_with(products_json, '[') THEN
            json_extract(products_json, '$[0].category')::VARCHAR END) AS category_source_json,
        -- _revenue(): the first of revenue / total / value that is present and not null ...
        coalesce(nullif(revenue_json, 'null'), nullif(total_json, 'null'),
                 nullif(value_json, 'null')) AS stated_revenue_json,
        -- ... else price x quantity, where an absent quantity is 1 (a null one is None).
        coalesce(quantity_json, '1') AS price_quantity_json
    FROM rare_fields
),
normalised AS (
    SELECT *,
        CASE WHEN NOT parseable OR kind IS NULL THEN false ELSE
            batch_json IS NULL  -- a {"batch": [...]} envelope is unpacked by ingest
            AND kairos_object_or_nothing(properties_json)
            AND kairos_object_or_nothing(person_traits_json)
            -- context and context.device: a value inside proves an object, else ask json_type
            AND CASE WHEN device_id_json IS NOT NULL OR device_type_json IS NOT NULL THEN true
                     ELSE coalesce(json_type(raw, '$.context.device') IN ('OBJECT', 'NULL'),
                                   true) END
            AND CASE WHEN context_traits_json IS NOT NULL OR device_id_json IS NOT NULL
                          OR device_type_json IS NOT NULL OR app_json IS NOT NULL THEN true
                     ELSE coalesce(json_type(raw, '$.context') IN ('OBJECT', 'NULL'), true) END
        END AS well_formed,
        kairos_email(email_json) AS email_result,
        kairos_phone(phone_json, $phone_region) AS phone_result,
        kairos_implied_channel(event_name) AS implied_channel,
        -- No duplicate key anywhere we read, or anywhere in the JSON we store (nested objects):
        -- in every list of keys, each key's first position is its own.
        list_bool_and(list_transform(
            list_concat(
                object_keys,
                CASE WHEN properties_json LIKE '{%{%'
                     THEN json_keys(properties_json, '$..*') END,
                CASE WHEN person_traits_json LIKE '{%{%'
                     THEN json_keys(person_traits_json, '$..*') END),
            lambda keys: coalesce(list_bool_and(list_transform(
                keys, lambda key, i: list_position(keys, key) = i)), true)
        )) AS keys_unique,
        kairos_utc_timestamp(timestamp_json) AS utc_timestamp,
        -- The text fields (TEXT_FIELDS). Usually each is a plain string or absent, and its value
        -- is the JSON text without quotes; any other line reads them with one lambda.
        plain AND @ALL_TEXTS_PLAIN@ AS plain_texts,
        CASE WHEN NOT plain_texts THEN list_transform(
            [@TEXT_SOURCES@], lambda j: kairos_json_text(j, plain)) END AS texts,
        -- _revenue()'s numbers: the stated revenue, and price x quantity.
        list_transform([stated_revenue_json, price_json, price_quantity_json],
                       lambda j: kairos_json_number(j)) AS numbers
    FROM sources
),
decided AS (
    SELECT *,
        kairos_channel(kind, event_name, implied_channel, channel_json, app_json,
                       device_type_json) AS channel_name,
        CASE WHEN utc_timestamp >= TIMESTAMP '1970-01-01'
                  AND utc_timestamp < TIMESTAMP '2100-01-01' THEN utc_timestamp END
            AS event_timestamp,
        @TEXT_COLUMNS@,
        -- The products fallback: only without a stated revenue and a usable price x quantity.
        CASE WHEN stated_revenue_json IS NULL
                  AND (price_json IS NULL OR numbers[2].value IS NULL
                       OR numbers[3].value IS NULL)
                  AND starts_with(products_json, '[') AND products_json <> '[]'
             THEN list_transform(
                 from_json(products_json, '["JSON"]'),
                 lambda element: {
                     'is_dict': coalesce(starts_with(element, '{'), false),
                     'price': kairos_json_number(json_extract(element, '$.price')::VARCHAR),
                     'quantity': kairos_json_number(
                         coalesce(json_extract(element, '$.quantity')::VARCHAR, '1'))
                 }) END AS line_items
    FROM normalised
),
revenue AS (
    SELECT *,
        -- Names and channels the SQL above does not settle come from the reference functions,
        -- keyed by the JSON texts joined with U+001F (which JSON text never contains raw).
        CASE WHEN event_name IS NOT NULL AND channel_name IS NOT NULL
             THEN {'certain': true, 'event': event_name, 'channel': channel_name,
                   'warning': NULL::VARCHAR}
             WHEN well_formed THEN kairos_event_channel_reference(
                 kind || chr(31) || coalesce(event_json, '') || chr(31)
                 || coalesce(channel_json, '') || chr(31)
                 || CAST(kairos_truthy(app_json) AS VARCHAR) || chr(31)
                 || coalesce(device_type_json, ''))
        END AS event_result,
        -- price x quantity of the dicts whose price and quantity are both numbers
        list_filter(
            list_transform(line_items, lambda item:
                CASE WHEN item.is_dict THEN item.price.value * item.quantity.value END),
            lambda total: total IS NOT NULL) AS line_totals,
        CASE WHEN stated_revenue_json IS NOT NULL  -- anything but a number warns: left to Python
                 THEN numbers[1].known AND numbers[1].value IS NOT NULL
             ELSE (price_json IS NULL OR (numbers[2].known AND numbers[3].known))
                  AND coalesce(list_bool_and(list_transform(line_items, lambda item:
                      NOT item.is_dict OR (item.price.known AND item.quantity.known))), true)
        END AS revenue_known
    FROM decided
),
claimed AS (
    SELECT *,
        CASE WHEN stated_revenue_json IS NOT NULL THEN numbers[1].value
             WHEN price_json IS NOT NULL AND numbers[2].value IS NOT NULL
                  AND numbers[3].value IS NOT NULL THEN numbers[2].value * numbers[3].value
             WHEN len(line_totals) > 0  -- float(sum(totals)): a left fold from the integer 0
                 THEN list_reduce(list_prepend(CAST(0 AS DOUBLE), line_totals),
                                  lambda a, b: a + b)
        END AS revenue_amount,
        coalesce(
            well_formed AND keys_unique AND event_result.certain AND revenue_known
            AND event_timestamp IS NOT NULL
            -- _message_id(): a usable messageId (else the id is a content hash)
            AND message_id_text.kind IN ('string', 'integer') AND message_id_text.value IS NOT NULL
            -- identifier_text() rejects booleans and containers and repr()s floats
            AND user_id_text.kind IN ('null', 'string', 'integer')
            AND anonymous_id_text.kind IN ('null', 'string', 'integer')
            AND device_id_text.kind IN ('null', 'string', 'integer')
            -- _text() repr()s floats
            AND order_id_text.kind <> 'float' AND product_id_text.kind <> 'float'
            AND category_text.kind <> 'float' AND currency_text.kind <> 'float'
            AND send_id_text.kind <> 'float' AND campaign_id_text.kind <> 'float'
            -- no identifier at all rejects the record
            AND (user_id_text.value IS NOT NULL OR anonymous_id_text.value IS NOT NULL
                 OR device_id_text.value IS NOT NULL OR email_result.value IS NOT NULL
                 OR phone_result.value IS NOT NULL),
            false
        ) AS is_claimed
    FROM revenue
)
SELECT
    position,
    is_claimed,
    CASE WHEN NOT is_claimed THEN raw END AS raw,
    message_id_text.value AS message_id,
    kind AS type,
    event_result.event AS event,
    event_result.channel AS channel,
    event_timestamp AS timestamp,
    user_id_text.value AS user_id,
    anonymous_id_text.value AS anonymous_id,
    NULL::VARCHAR AS previous_id,
    email_result.value AS email,
    phone_result.value AS phone,
    device_id_text.value AS device_id,
    order_id_text.value AS order_id,
    product_id_text.value AS product_id,
    category_text.value AS category,
    revenue_amount AS revenue,
    currency_text.value AS currency,
    send_id_text.value AS send_id,
    campaign_id_text.value AS campaign_id,
    kairos_nonempty_object(properties_json) AS properties,
    kairos_nonempty_object(person_traits_json) AS traits,
    nullif(concat_ws('; ', email_result.warning, phone_result.warning, event_result.warning), '')
        AS warnings
FROM claimed
"""


_RARE_NAMES = {"email": "properties_email", "phone": "properties_phone"}


def _query_sql() -> str:
    values = {
        **_extraction(OBJECT_PATHS),
        "@RARE_PATHS@": "[" + _sql_list(f"$.{key}" for key in RARE_PROPERTIES) + "]",
        "@RARE_FIELDS@": ",\n        ".join(
            f"rare[{i}] AS {_RARE_NAMES.get(key, key)}_json"
            for i, key in enumerate(RARE_PROPERTIES, start=1)
        ),
        "@TEXT_SOURCES@": ", ".join(TEXT_FIELDS.values()),
        "@ALL_TEXTS_PLAIN@": _strings_or_absent(TEXT_FIELDS.values()),
        "@TEXT_COLUMNS@": ",\n        ".join(
            f"""CASE WHEN plain_texts THEN {{
                'kind': CASE WHEN {source} IS NULL THEN 'null' ELSE 'string' END,
                'value': CASE WHEN {source} <> '""' THEN kairos_unquoted({source}) END}}
            ELSE texts[{i}] END AS {name}_text"""
            for i, (name, source) in enumerate(TEXT_FIELDS.items(), start=1)
        ),
    }
    return _filled(_QUERY_TEMPLATE, values)


# --- The common shape: a leaner query tried first ----------------------------------------------
# Nearly every line a source sends has one shape: a plain line (kairos_plain_line) of a track,
# page or screen message whose texts are strings, whose properties and context.traits are flat
# objects without the rare keys, with a canonical event name and numbers where numbers belong.
# For such a line most of the general query's cases cannot occur, so this query computes its row
# with about a third less work; it claims a line only under conditions that imply the general
# query's claim with the same row (tests/test_vectorised.py checks both against the reference).
# Every line it does not claim goes on to the general query, then to Python.
# Same extraction as the general query; the keys of the objects the common shape reads.
_COMMON_OBJECT_PATHS = ("$", "$.context", "$.context.device", "$.context.traits", "$.properties")
_COMMON_TEXTS = {  # output column -> its JSON text (no sku / email_id / products: rare keys)
    "message_id": "message_id_json",
    "user_id": "user_id_json",
    "anonymous_id": "anonymous_id_json",
    "device_id": "device_id_json",
    "order_id": "order_id_json",
    "product_id": "product_id_json",
    "category": "category_json",
    "currency": "currency_json",
    "send_id": "send_id_json",
    "campaign_id": "campaign_id_json",
}
# The common query reads each line's values either from the raw JSON (_COMMON_FIELDS_RAW) or,
# for the lines features._jsonscan has scanned, from the columns it wrote (_COMMON_FIELDS_SCANNED):
# the same JSON texts, so the rest of the query (_COMMON_TEMPLATE) is shared.
_COMMON_FIELDS_RAW = r"""
    SELECT position, raw, object_keys, @FIELDS@
    FROM (
        -- try(): invalid JSON makes the extraction NULL (the line is not claimed), which spares
        -- the separate json_valid() parse of kairos_parseable (same parser, same verdict).
        SELECT position, raw,
            try(CAST(json_extract(raw, @VALUE_PATHS@) AS VARCHAR[])) AS v,
            try(json_keys(raw, @OBJECT_PATHS@)) AS object_keys
        FROM @LINES@
        WHERE kairos_plain_line(raw) AND kairos_screened(raw)
    )
"""
# No duplicate key in an object we read or store: in every list of keys, each key's first
# position is its own.
_COMMON_KEYS_UNIQUE_RAW = """list_bool_and(list_transform(object_keys, lambda keys: coalesce(
            list_bool_and(list_transform(keys, lambda key, i: list_position(keys, key) = i)),
            true)))"""
# features._jsonscan writes <name>_json for every VALUE_PATHS entry and mentions_<word> for
# every _MENTIONED word (contains(raw, '"<word>"')), and scans only lines that pass
# kairos_plain_line and kairos_screened and have no duplicate key in any object.
_MENTIONED = ("device", "context")
_COMMON_FIELDS_SCANNED = "SELECT * FROM @LINES@"
_COMMON_TEMPLATE = r"""
WITH fields AS (@COMMON_FIELDS@),
-- The conditions are columns, not WHERE clauses: DuckDB would push a filter down past the
-- projections and evaluate the extraction again inside every condition.
shaped AS (
    SELECT *,
        kairos_unquoted(type_json) AS kind,
        kairos_event_name(kairos_unquoted(type_json), event_json) AS event_name,
        -- parse_timestamp()'s fast path for '...Z' (fromisoformat of a naive time) is DuckDB's
        -- TIMESTAMP cast for up to 6 fractional digits; other forms take the general macro.
        CASE WHEN regexp_full_match(timestamp_json, '"[0-9]{4}-[0-9]{2}-[0-9]{2}T'
                 || '(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?Z"')
             THEN try_cast(substr(timestamp_json, 2, length(timestamp_json) - 3) AS TIMESTAMP)
             ELSE kairos_utc_timestamp(timestamp_json) END AS utc_timestamp,
        CASE WHEN context_email_json NOT IN ('null', '""')
             THEN lower(kairos_unquoted(context_email_json)) END AS email,
        coalesce(type_json IN ('"track"', '"page"', '"screen"')
            AND batch_json IS NULL
            -- properties and context.traits: absent or flat objects (no nested keys to check),
            -- properties without the rare keys, so that each field has exactly one source
            AND (properties_json IS NULL OR (starts_with(properties_json, '{')
                 AND NOT contains(substr(properties_json, 2), '{') AND NOT (@RARE_TEST@)))
            AND (context_traits_json IS NULL OR (starts_with(context_traits_json, '{')
                 AND NOT contains(substr(context_traits_json, 2), '{')))
            -- context and context.device: a value inside proves an object; else no such key
            AND (device_id_json IS NOT NULL OR device_type_json IS NOT NULL
                 OR NOT @MENTIONS_device@)
            AND (context_traits_json IS NOT NULL OR device_id_json IS NOT NULL
                 OR device_type_json IS NOT NULL OR app_json IS NOT NULL
                 OR NOT @MENTIONS_context@)
            -- every text a string or absent: on a plain line its value is what the quotes hold
            AND @ALL_TEXTS_STRINGS@
            AND message_id_json IS NOT NULL AND message_id_json <> '""'
            -- _email() of a plain address that passes its regex as it stands
            AND (context_email_json IS NULL OR context_email_json IN ('null', '""')
                 OR regexp_full_match(context_email_json,
                                      '"[!#-?A-\[\]-~]+@[!#-?A-\[\]-~]+\.[!#-\-/-?A-\[\]-~]+"'))
            -- _revenue(): a stated revenue that is a JSON number, else price x quantity of
            -- numbers (an absent quantity is 1)
            AND (revenue_json IS NULL OR kairos_is_json_number(revenue_json))
            AND (revenue_json IS NOT NULL OR price_json IS NULL
                 OR (kairos_is_json_number(price_json)
                     AND (quantity_json IS NULL OR kairos_is_json_number(quantity_json)))),
            false) AS shape_ok
    FROM fields
),
decided AS (
    SELECT *,
        kairos_channel(kind, event_name, kairos_implied_channel(event_name), channel_json,
                       app_json, device_type_json) AS channel_name,
        coalesce(user_id_json, '""') <> '""' OR coalesce(anonymous_id_json, '""') <> '""'
            OR coalesce(device_id_json, '""') <> '""' OR email IS NOT NULL AS other_identifier
    FROM shaped
)
SELECT
    position,
    coalesce(shape_ok AND event_name IS NOT NULL AND channel_name IS NOT NULL
        AND utc_timestamp >= TIMESTAMP '1970-01-01' AND utc_timestamp < TIMESTAMP '2100-01-01'
        -- at least one identifier (a phone counts once Python has read it: see _common_rows)
        AND (other_identifier OR context_phone_json NOT IN ('null', '""'))
        -- no duplicate key in an object we read or store
        AND @KEYS_UNIQUE@,
        false) AS is_claimed,
    kairos_unquoted(message_id_json) AS message_id,
    kind AS type,
    event_name AS event,
    channel_name AS channel,
    utc_timestamp AS timestamp,
    @TEXTS@,
    NULL::VARCHAR AS previous_id,
    email,
    -- the phone's JSON text, read by the reference function in _common_rows
    context_phone_json AS phone,
    other_identifier,
    -- (TRY_CAST: the cast is exact on claimed lines, and other lines must not stop the query)
    CASE WHEN revenue_json IS NOT NULL THEN TRY_CAST(revenue_json AS DOUBLE)
         WHEN price_json IS NOT NULL
             THEN TRY_CAST(price_json AS DOUBLE) * TRY_CAST(coalesce(quantity_json, '1') AS DOUBLE)
    END AS revenue,
    CASE WHEN properties_json <> '{}' THEN properties_json END AS properties,
    CASE WHEN context_traits_json <> '{}' THEN context_traits_json END AS traits,
    NULL::VARCHAR AS warnings
FROM decided
"""


def _common_sql(scanned: bool = False) -> str:
    """The common-shape query on raw JSON lines, or (``scanned``) on the scanner's columns."""
    texts = {name: source for name, source in _COMMON_TEXTS.items() if name != "message_id"}
    values = {
        "@COMMON_FIELDS@": _COMMON_FIELDS_SCANNED if scanned else _COMMON_FIELDS_RAW,
        "@KEYS_UNIQUE@": "true" if scanned else _COMMON_KEYS_UNIQUE_RAW,
        **{
            f"@MENTIONS_{word}@": f"mentions_{word}"
            if scanned
            else f"""contains(raw, '"{word}"')"""
            for word in _MENTIONED
        },
        **_extraction(_COMMON_OBJECT_PATHS),
        "@ALL_TEXTS_STRINGS@": _strings_or_absent(_COMMON_TEXTS.values()),
        "@TEXTS@": ",\n    ".join(
            f"""CASE WHEN {source} <> '""' THEN kairos_unquoted({source}) END AS {name}"""
            for name, source in texts.items()
        ),
    }
    return _filled(_COMMON_TEMPLATE, values)


# --- Reference functions over distinct values (vectorised UDFs) --------------------------------
# Every value reaches Python as the JSON text yyjson wrote for it; orjson reads that text back to
# exactly the value orjson reads from the raw line (strings, integers, and doubles, which yyjson
# writes as their shortest round trip), so calling the reference function on it is exact.

_TEXT_RESULT = pa.struct([("value", pa.string()), ("warning", pa.string())])
_EVENT_RESULT = pa.struct(
    [
        ("certain", pa.bool_()),
        ("event", pa.string()),
        ("channel", pa.string()),
        ("warning", pa.string()),
    ]
)
_CACHE_LIMIT = 1 << 17


def _decode(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _email_result(text: str | None) -> tuple[str | None, str | None]:
    warnings: list[str] = []
    return _email(_decode(text), warnings), (warnings[0] if warnings else None)


def _phone_result(key: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
    text, region = key
    warnings: list[str] = []
    return _phone(_decode(text), region, warnings), (warnings[0] if warnings else None)


def _event_channel_result(key: str | None) -> tuple[bool, str | None, str | None, str | None]:
    """(certain, event, channel, warning) from "kind␟event␟properties.channel␟app␟device.type"."""
    if key is None:
        return False, None, None, None
    kind, event, stated, app, device_type = key.split("\x1f")
    message = {"event": orjson.loads(event)} if event else {}
    try:
        event_name = _event_name(kind, message)
    except RejectedRecord:
        return False, None, None, None
    warnings: list[str] = []
    properties = {"channel": orjson.loads(stated)} if stated else {}
    context = {"app": True} if app == "true" else {}
    device = {"type": orjson.loads(device_type)} if device_type else {}
    channel = _channel(kind, event_name, properties, context, device, warnings)
    return True, event_name, channel, (warnings[0] if warnings else None)


def _distinct_udf(
    compute: Callable[[Any], Any], result_type: pa.DataType, with_region: bool = False
) -> Callable[..., pa.Array]:
    """An Arrow UDF that calls ``compute`` once per distinct input value of a batch (cached)."""
    cache: dict[Any, Any] = {}

    def mapped(values: pa.ChunkedArray, region: str | None) -> pa.Array:
        encoded = values.combine_chunks().dictionary_encode(null_encoding="encode")
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        results = []
        for value in encoded.dictionary.to_pylist():
            key = (value, region) if with_region else value
            result = cache.get(key)
            if result is None:
                result = cache[key] = compute(key)
            results.append(result)
        if pa.types.is_struct(result_type):
            columns = list(zip(*results, strict=True)) if results else [[]] * result_type.num_fields
            distinct = pa.StructArray.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, result_type, strict=True)],
                fields=list(result_type),
            )
        else:
            distinct = pa.array(results, type=result_type)
        return distinct.take(encoded.indices)

    # DuckDB reads the number of SQL arguments from the Python signature.
    if with_region:

        def udf_with_region(values: pa.ChunkedArray, regions: pa.ChunkedArray) -> pa.Array:
            return mapped(values, regions[0].as_py() if len(regions) else None)

        return udf_with_region

    def udf(values: pa.ChunkedArray) -> pa.Array:
        return mapped(values, None)

    return udf


def _duckdb_type(arrow: pa.DataType) -> DuckDBPyType:
    if pa.types.is_struct(arrow):
        return duckdb.struct_type({field.name: _duckdb_type(field.type) for field in arrow})
    return {pa.string(): VARCHAR, pa.bool_(): BOOLEAN}[arrow]


def _register(connection: duckdb.DuckDBPyConnection) -> None:
    """Add the reference UDFs and the macros to ``connection`` (temporary: nothing is stored)."""
    functions = {
        "kairos_email_reference": (_distinct_udf(_email_result, _TEXT_RESULT), 1, _TEXT_RESULT),
        "kairos_phone_reference": (
            _distinct_udf(_phone_result, _TEXT_RESULT, with_region=True),
            2,
            _TEXT_RESULT,
        ),
        "kairos_event_channel_reference": (
            _distinct_udf(_event_channel_result, _EVENT_RESULT),
            1,
            _EVENT_RESULT,
        ),
    }
    for name, (function, arguments, result) in functions.items():
        connection.create_function(
            name,
            function,
            [VARCHAR] * arguments,
            _duckdb_type(result),
            type="arrow",
            null_handling="special",
            side_effects=False,
        )
    connection.execute(MACROS_SQL)


MACROS_SQL = _macros_sql()
NORMALISE_SQL = _query_sql()
COMMON_SQL = _common_sql()
COMMON_SCANNED_SQL = _common_sql(scanned=True)


# --- Public entry ------------------------------------------------------------------------------

_prepared: weakref.WeakSet = weakref.WeakSet()
_default_connection: duckdb.DuckDBPyConnection | None = None
_lock = threading.Lock()


def normalise_lines(
    lines: pa.Table,
    options: NormaliseOptions | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
    general_min_lines: int = 0,
) -> tuple[pa.Table, pa.Table]:
    """Normalise JSON lines in DuckDB; return (claimed events, unclaimed lines).

    ``lines``: columns ``position`` (int64) and ``raw`` (string: one JSON line, non-blank and
    under ``MAX_RECORD_BYTES``). ``events`` has ``CLAIMED_SCHEMA`` (``position`` then the
    ``features.store.EVENT_SCHEMA`` columns), one row per claimed line, equal to
    ``normalise_message(orjson.loads(raw), options)`` (``properties``/``traits`` equal as parsed
    JSON), in input order. ``unclaimed`` has ``position, raw`` for every other line, in input
    order, for the reference path (which also produces rejections and dead-letter reasons).
    ``connection``: any DuckDB connection (only temporary functions are added to it); by default
    a private in-memory one. The common-shape query runs on every line, the general one on the
    lines it leaves when there are ``general_min_lines`` of them at least (else they are all
    unclaimed). Each query is planned afresh (~0.06 s common, ~0.11 s general), so pass large
    batches (100,000 lines or so).
    """
    _check_lines(lines)
    options = options or NormaliseOptions()
    raw = lines.column("raw")
    # The queries see each line's row number as its position (increasing, so that their output
    # can be put back in input order); the caller's positions are put back at the end.
    row_numbers, offset = [], 0
    for chunk in raw.chunks:
        row_numbers.append(np.arange(offset, offset + len(chunk), dtype=np.int64))
        offset += len(chunk)
    scanned = pa.table({"position": pa.chunked_array(row_numbers, pa.int64()), "raw": raw})
    with _lock:
        connection = _prepared_connection(connection)
        common = _common_shape(connection, scanned, options)
        left = np.ones(lines.num_rows, dtype=bool)
        left[common.column("position").to_numpy()] = False
        general = None
        if left.any() and left.sum() >= general_min_lines:
            general = _run(
                connection,
                NORMALISE_SQL,
                scanned.filter(pa.array(left)),
                {"phone_region": options.phone_region},
            )
    events = common
    unclaimed = _UNCLAIMED_SCHEMA.empty_table()
    if general is None and left.any():  # too few for the general query: all to the reference
        unclaimed = scanned.filter(pa.array(left)).cast(_UNCLAIMED_SCHEMA)
    if general is not None:
        is_claimed = general.column("is_claimed")
        if is_claimed.null_count == 0 and pc.all(is_claimed).as_py():
            claimed = general
        else:
            claimed = general.filter(is_claimed)
            unclaimed = (
                general.filter(pc.invert(is_claimed))
                .select(_UNCLAIMED_SCHEMA.names)
                .cast(_UNCLAIMED_SCHEMA)
            )
        if claimed.num_rows:
            events = pa.concat_tables(
                [events, claimed.select(CLAIMED_SCHEMA.names).cast(CLAIMED_SCHEMA)]
            )
    original = lines.column("position")
    return _with_positions(events, original), _with_positions(unclaimed, original)


def common_shape_rows(
    lines: pa.Table,
    options: NormaliseOptions | None = None,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The rows the common-shape query alone claims (``CLAIMED_SCHEMA``, input order), so that
    tests can hold it to the reference on its own; ``normalise_lines`` is the entry to use."""
    _check_lines(lines)
    options = options or NormaliseOptions()
    with _lock:
        return _common_shape(
            _prepared_connection(connection), lines.select(["position", "raw"]), options
        )


# features._jsonscan's verdict on a line (see features/_jsonscan.c)
_SKIPPED, _SCANNED, _REFUSED, _CLAIMED, _LEFT = 0, 1, 2, 3, 4


def _common_shape(
    connection: duckdb.DuckDBPyConnection, lines: pa.Table, options: NormaliseOptions
) -> pa.Table:
    """The common-shape query's claimed rows (``CLAIMED_SCHEMA``, input order).

    With the C scanner, most lines' rows are built by the scanner itself (the query's own
    conditions and values, see common_row in features/_jsonscan.c); the other lines it scans
    are read from its columns (COMMON_SCANNED_SQL), the lines it refuses from their raw JSON as
    before (COMMON_SQL), and the lines it skips or leaves are left out: the common query claims
    none of them. Either way each line gets the same row."""
    if _jsonscan is None:
        return _common_rows(connection, lines, options, COMMON_SQL)
    categories, fields, built = scan_lines(lines)
    refused = categories == _REFUSED
    parts = [
        _common_rows(connection, part, options, sql)
        for part, sql in [
            (fields, COMMON_SCANNED_SQL),
            (lines.filter(pa.array(refused)) if refused.any() else None, COMMON_SQL),
        ]
        if part is not None and part.num_rows  # (planning a query costs ~0.06 s)
    ]
    if built.num_rows:
        parts.append(_with_phones(built, options))
    if not parts:
        return CLAIMED_SCHEMA.empty_table()
    return _by_position(pa.concat_tables(parts))


# The VALUE_PATHS entries the scanner's row builder reads, in the order of its F_* enum, and the
# string columns it writes, in the order of its R_* enum (features/_jsonscan.c).
_ROW_FIELDS = (
    "type", "message_id", "timestamp", "user_id", "anonymous_id", "event", "batch",
    "properties", "context_traits", "context_email", "context_phone", "device_id",
    "device_type", "app", "order_id", "product_id", "category", "currency", "send_id",
    "campaign_id", "channel", "revenue", "price", "quantity",
    # and, after the VALUE_PATHS ones, paths the row builder reads for itself (_ROW_PATHS)
    "traits", "traits_email", "traits_phone", "total", "value", "products",
)  # fmt: skip
# Paths only the row builder reads (identify's own traits, and the rare properties it reads);
# the other rare properties still leave a line to the general query or the reference.
_ROW_PATHS = {
    "traits_email": "$.traits.email",
    "traits_phone": "$.traits.phone",
    "total": "$.properties.total",
    "value": "$.properties.value",
    "products": "$.properties.products",
}
_ROW_STRINGS = (
    "message_id", "type", "event", "channel", "user_id", "anonymous_id", "email", "phone",
    "device_id", "order_id", "product_id", "category", "currency", "send_id", "campaign_id",
    "properties", "traits",
)  # fmt: skip
# The scanner's rows: CLAIMED_SCHEMA with the phone's JSON text (read by _with_phones) and
# whether the line has another identifier, as the common query returns them.
_BUILT_SCHEMA = pa.schema([*CLAIMED_SCHEMA, pa.field("other_identifier", pa.bool_())])


@lru_cache(maxsize=1)
def _scan_contract() -> tuple:
    """What the scanner's row builder needs of the contract: the same lists the macros are
    written from (see the scan() docstring in features/_jsonscan.c)."""
    implied = _implied_channels()
    specific = set(_channel_specific())
    fixed = _fixed_event_names()
    paths = [*VALUE_PATHS, *_ROW_PATHS]
    return (
        list(_ROW_PATHS.values()),
        [paths.index(name) for name in _ROW_FIELDS],
        list(CANONICAL_EVENTS),
        [implied.get(name) for name in CANONICAL_EVENTS],
        bytes(name in specific for name in CANONICAL_EVENTS),
        list(fixed),
        list(fixed.values()),
        list(CHANNELS),
        sorted(_APP_DEVICE_TYPES),
        [key for key in RARE_PROPERTIES if key not in _ROW_PATHS],
        _MENTIONED.index("device"),
        _MENTIONED.index("context"),
    )


def scan_lines(lines: pa.Table, build_rows: bool = True) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """features._jsonscan over ``lines`` (``position``, ``raw``): each line's verdict (uint8:
    0 skipped, 1 scanned, 2 refused, 3 claimed with its row built, 4 left: the common query
    would not claim it), for the scanned lines in input order a table of ``position``,
    ``<name>_json`` for every VALUE_PATHS entry (the JSON text json_extract writes; null when
    absent) and ``mentions_<word>`` for every _MENTIONED word, and the built rows
    (``_BUILT_SCHEMA``, input order). ``build_rows=False``: no rows, no verdicts 3 or 4.
    One record batch per chunk of ``raw``, so that DuckDB's threads share the scan."""
    names = [f"{name}_json" for name in VALUE_PATHS]
    schema = pa.schema(
        [
            pa.field("position", pa.int64()),
            *(pa.field(name, pa.string()) for name in names),
            *(pa.field(f"mentions_{word}", pa.bool_()) for word in _MENTIONED),
        ]
    )
    paths = list(VALUE_PATHS.values())
    needles = [f'"{word}"' for word in _MENTIONED]
    contract = _scan_contract() if build_rows else None
    positions = lines.column("position")

    def strings(count: int, value_offsets: bytes, values: bytes, valid: bytes, nulls: int):
        return pa.StringArray.from_buffers(
            count, pa.py_buffer(value_offsets), pa.py_buffer(values), pa.py_buffer(valid), nulls
        )

    def scan_chunk(chunk: pa.Array, start: int) -> tuple:
        count = len(chunk)
        wide = pa.types.is_large_string(chunk.type)
        if chunk.null_count or not (wide or pa.types.is_string(chunk.type)):
            return np.full(count, _REFUSED, dtype=np.uint8), None, None  # the SQL path decides
        offsets = np.frombuffer(chunk.buffers()[1], np.int64 if wide else np.int32)
        offsets = offsets[chunk.offset : chunk.offset + count + 1]
        data = chunk.buffers()[2] or b""
        categories, scanned, columns, mentions, rows = _jsonscan.scan(
            offsets, data, paths, wide, needles, contract
        )
        categories = np.frombuffer(categories, np.uint8)
        at = np.flatnonzero(categories == _SCANNED) + start
        arrays = [positions.take(pa.array(at)).combine_chunks()]
        arrays += [strings(scanned, *column) for column in columns]
        arrays += [pa.array(np.frombuffer(flags, np.bool_)) for flags in mentions]
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        if rows is None:
            return categories, batch, None
        built, texts, timestamps, revenue, revenue_valid, revenue_nulls, other = rows
        at = np.flatnonzero(categories == _CLAIMED) + start
        by_name = dict(zip(_ROW_STRINGS, (strings(built, *c) for c in texts), strict=True))
        by_name["position"] = positions.take(pa.array(at)).combine_chunks()
        by_name["timestamp"] = pa.Array.from_buffers(
            pa.timestamp("us"), built, [None, pa.py_buffer(timestamps)]
        )
        by_name["revenue"] = pa.Array.from_buffers(
            pa.float64(),
            built,
            [pa.py_buffer(revenue_valid), pa.py_buffer(revenue)],
            null_count=revenue_nulls,
        )
        by_name["other_identifier"] = pa.array(np.frombuffer(other, np.bool_))
        arrays = [
            by_name[field.name] if field.name in by_name else pa.nulls(built, field.type)
            for field in _BUILT_SCHEMA
        ]
        return categories, batch, pa.RecordBatch.from_arrays(arrays, schema=_BUILT_SCHEMA)

    # The scan releases the GIL, so the chunks are shared by two threads: while it runs, DuckDB
    # is idle and the second core would otherwise wait.
    chunks = lines.column("raw").chunks
    starts = np.cumsum([0] + [len(chunk) for chunk in chunks[:-1]]).tolist()
    results = list(_scan_pool().map(scan_chunk, chunks, starts))
    verdicts = [categories for categories, _, _ in results]
    verdict = np.concatenate(verdicts) if verdicts else np.zeros(0, np.uint8)
    fields = pa.Table.from_batches([b for _, b, _ in results if b is not None], schema=schema)
    built = pa.Table.from_batches([b for _, _, b in results if b is not None], schema=_BUILT_SCHEMA)
    return verdict, fields, built


@lru_cache(maxsize=1)
def _scan_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="kairos-jsonscan")


def _common_rows(
    connection: duckdb.DuckDBPyConnection, lines: pa.Table, options: NormaliseOptions, sql: str
) -> pa.Table:
    """The common-shape query's claimed rows (``CLAIMED_SCHEMA``), phones read in Python.

    Phones are read here rather than in the query: a Python UDF inside the query is called
    once per vector of 2,048 lines (measured ~1.5 µs a line though few lines carry a phone),
    here once per distinct phone of the batch. A line whose only identifier is a phone that
    does not read as one is rejected by the reference, so it is not claimed."""
    return _with_phones(_claimed_in_order(_run(connection, sql, lines, None)), options)


def _with_phones(rows: pa.Table, options: NormaliseOptions) -> pa.Table:
    """The common query's claimed ``rows`` (the phone as its JSON text, ``other_identifier``)
    as ``CLAIMED_SCHEMA`` rows: phones read by the reference, lines left without an identifier
    dropped (see _common_rows)."""
    texts = rows.column("phone")
    if texts.null_count < len(texts):
        encoded = texts.combine_chunks().dictionary_encode()
        distinct = [
            _cached_phone(text, options.phone_region) for text in encoded.dictionary.to_pylist()
        ]
        phones = pa.array([phone for phone, _ in distinct], pa.string()).take(encoded.indices)
        warnings = pa.array([warning for _, warning in distinct], pa.string()).take(encoded.indices)
        rows = rows.set_column(rows.schema.get_field_index("phone"), "phone", phones)
        rows = rows.set_column(rows.schema.get_field_index("warnings"), "warnings", warnings)
        identified = pc.or_(rows.column("other_identifier"), pc.is_valid(phones))
        if not pc.all(identified).as_py():
            rows = rows.filter(identified)
    return rows.select(CLAIMED_SCHEMA.names).cast(CLAIMED_SCHEMA)


@lru_cache(maxsize=1 << 17)
def _cached_phone(text: str, region: str | None) -> tuple[str | None, str | None]:
    return _phone_result((text, region))


def _prepared_connection(
    connection: duckdb.DuckDBPyConnection | None,
) -> duckdb.DuckDBPyConnection:
    """``connection`` (default: a private in-memory one) with the macros and UDFs added."""
    global _default_connection
    if connection is None:
        if _default_connection is None:
            # Everything used is built in; never reach for an extension download.
            _default_connection = duckdb.connect(
                config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
            )
            _default_connection.execute("SET enable_progress_bar = false")
        connection = _default_connection
    if connection not in _prepared:
        _register(connection)
        _prepared.add(connection)
    return connection


def _run(
    connection: duckdb.DuckDBPyConnection, sql: str, lines: pa.Table, params: dict[str, Any]
) -> pa.Table:
    connection.register(_LINES_VIEW, lines)
    try:
        return connection.sql(sql, params=params).to_arrow_table()
    finally:
        connection.unregister(_LINES_VIEW)


def _claimed_in_order(result: pa.Table) -> pa.Table:
    """The claimed rows of a query's result (``is_claimed`` is never NULL) in position order.

    One take does both: DuckDB returns its scan batches out of order, so filtering and then
    sorting (in ``_with_positions``) would copy every row twice (measured 0.3 + 0.4 µs a line
    on a 32 MB block)."""
    claimed = np.flatnonzero(result.column("is_claimed").to_numpy(zero_copy_only=False))
    positions = result.column("position").to_numpy()[claimed]
    if len(claimed) == result.num_rows and (positions[1:] > positions[:-1]).all():
        return result
    return result.take(claimed[np.argsort(positions, kind="stable")])


def _with_positions(table: pa.Table, original: pa.ChunkedArray) -> pa.Table:
    """``table`` (positions are row numbers) in input order, with the caller's positions.

    Sorting is needed because DuckDB scans the batches of the input on several threads and may
    return them out of order, and because two queries claim the lines."""
    if table.num_rows == 0:
        return table
    table = _by_position(table)
    rows = pa.array(table.column("position").to_numpy())
    return table.set_column(0, "position", original.take(rows))


def _by_position(table: pa.Table) -> pa.Table:
    """``table`` sorted by its ``position`` column (a copy only when it is out of order)."""
    positions = table.column("position").to_numpy()
    if len(positions) > 1 and not (positions[1:] > positions[:-1]).all():
        return table.take(np.argsort(positions, kind="stable"))
    return table


def _check_lines(lines: Any) -> None:
    if not isinstance(lines, pa.Table):
        raise TypeError(f"lines must be a pyarrow.Table, got {type(lines).__name__}")
    expected = {"position": pa.int64(), "raw": pa.string()}
    for name, kind in expected.items():
        if name not in lines.column_names:
            raise ValueError(f"column `{name}` missing; have: {', '.join(lines.column_names)}")
        if lines.schema.field(name).type != kind:
            raise ValueError(f"column `{name}` must be {kind}, got {lines.schema.field(name).type}")
