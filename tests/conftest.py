"""Shared fixtures: a fresh workspace per test and the path to the real data, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace folder; KAIROS_HOME points at it so the CLI uses it by default."""
    root = tmp_path / "ws"
    monkeypatch.setenv("KAIROS_HOME", str(root))
    return root


@pytest.fixture
def real_data() -> Path:
    if not (SHARED_DATA / "online_retail_ii_2009_2010.parquet").exists():
        pytest.skip(f"real Online Retail data not found in {SHARED_DATA}")
    return SHARED_DATA
