"""Writing result tables: Parquet or CSV, chosen by the file extension."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

OUTPUT_SUFFIXES = (".parquet", ".csv")


class OutputError(ValueError):
    """The output path cannot be written as asked."""


def check_output_path(path: Path) -> Path:
    """Fail before any work when the extension is not one we write."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(
            f"{path}: output must end in {' or '.join(OUTPUT_SUFFIXES)} (got {path.suffix!r})"
        )
    return path


def write_table(table: pa.Table | pd.DataFrame, path: Path) -> Path:
    """Write ``table`` to ``path`` as Parquet or CSV; parent folders are created."""
    path = check_output_path(path)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        pq.write_table(table, path)
    else:
        pa_csv.write_csv(table, path)
    return path
