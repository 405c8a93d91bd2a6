"""Which ProfileSource the pipeline uses: the one place that decides how events map to profiles.

Until the identity graph exists in a workspace, profiles are keyed by each event's first
identifier (``IdentifierProfiles``); identity resolution replaces this in one place.
"""

from __future__ import annotations

import duckdb

from features.examples import IdentifierProfiles, ProfileSource


def default_profile_source(connection: duckdb.DuckDBPyConnection) -> ProfileSource:
    return IdentifierProfiles("events")
