"""Which ProfileSource the pipeline uses: the one place that decides how events map to profiles.

With an identity graph in the workspace, profiles come from identity resolution: inputs at a
cutoff use profiles formed only from links made at or before it (``profiles_as_of``), labels
use the final graph. Without one, each event's first identifier is its profile.
"""

from __future__ import annotations

import itertools
from datetime import datetime

import duckdb

from features.aggregates import timestamp_literal
from features.examples import IdentifierProfiles, ProfileKeys, ProfileSource
from features.identity import ProfilesAsOf, event_profiles_sql, tables

_names = itertools.count()
_KEEP_AS_OF = 2  # as-of identifier tables kept registered (the current cutoff and one before)
# Identity's profile ids are "p-" and 16 hex digits (features.identity.profile_id_for): the
# 64-bit number they spell is the key, and fixed-width hex sorts as the numbers do.
HEX_PROFILE_KEYS = ProfileKeys(
    encode="('0x' || substr({}, 3))::UBIGINT", decode="printf('p-%016x', {})"
)


class IdentityProfiles:
    """Profiles of the identity graph, as of each cutoff for inputs, final for labels."""

    profile_keys = HEX_PROFILE_KEYS

    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        until: datetime | None = None,
        reuse_stored: bool = True,
    ):
        self.connection = connection
        self.until = until
        self.reuse_stored = reuse_stored  # False: always rebuild (tests compare the two)
        self._as_of: dict[datetime, str] = {}
        self._graphs: ProfilesAsOf | None = None  # one graph, advanced cutoff by cutoff

    def _as_of_identifiers(self, at: datetime) -> str:
        """Register the identifier -> profile table formed by links at or before ``at``."""
        if at not in self._as_of:
            if self.reuse_stored and self._stored_graph_is_as_of(at):
                self._as_of[at] = "identity_identifiers"
            else:
                if self._graphs is None:
                    self._graphs = ProfilesAsOf(self.connection)
                name = f"identity_as_of_{next(_names)}"
                self.connection.register(name, self._graphs.at(at))
                self._as_of[at] = name
                self._forget_all_but_latest(_KEEP_AS_OF)
        return self._as_of[at]

    def _forget_all_but_latest(self, keep: int) -> None:
        """Unregister all but the ``keep`` most recently made as-of tables: cutoffs are read one
        after another, and each table holds every identifier."""
        for at in list(self._as_of)[:-keep]:
            name = self._as_of.pop(at)
            if name != "identity_identifiers":
                self.connection.unregister(name)

    def _stored_graph_is_as_of(self, at: datetime) -> bool:
        """At or after the last event, with every stored event resolved, the stored graph is
        the graph as of ``at`` (batch equals incremental), so the Python rebuild is skipped."""
        last_rowid, covered = self.connection.sql(
            f"SELECT max(rowid), max(timestamp) <= {timestamp_literal(at)} FROM events"
        ).fetchall()[0]
        resolved = tables.read_state(self.connection).get("events_rowid")
        return bool(covered) and resolved is not None and int(resolved) == last_rowid

    def _limit(self) -> str:
        return f"e.timestamp <= {timestamp_literal(self.until)}" if self.until else ""

    def events_as_of(
        self, connection: duckdb.DuckDBPyConnection, at: datetime, keyed: bool = False
    ) -> str:
        where = f"e.timestamp <= {timestamp_literal(at)}"
        identifiers = self._as_of_identifiers(at)
        if keyed:  # encoded once per identifier, so the six joins carry integers
            key = self.profile_keys.encode.format("profile_id")
            identifiers = (
                f"(SELECT identifier_type, identifier, {key} AS profile_id FROM {identifiers})"
            )
        mapped = event_profiles_sql(where=where, identifiers=identifiers, columns="e.*")
        return f"(SELECT * FROM ({mapped}) WHERE profile_id IS NOT NULL)"

    def label_profiles(self, connection: duckdb.DuckDBPyConnection, at: datetime) -> str:
        # The final profile holding most of an as-of profile's identifiers.
        return f"""(
            SELECT a.profile_id, mode(f.profile_id) AS label_profile_id
            FROM {self._as_of_identifiers(at)} AS a
            JOIN identity_identifiers AS f USING (identifier_type, identifier)
            WHERE a.profile_id IS NOT NULL AND f.profile_id IS NOT NULL
            GROUP BY a.profile_id
        )"""

    def label_events(self, connection: duckdb.DuckDBPyConnection) -> str:
        mapped = event_profiles_sql(where=self._limit(), columns="e.*")
        return (
            f"(SELECT * EXCLUDE (profile_id), profile_id AS label_profile_id FROM ({mapped})"
            " WHERE profile_id IS NOT NULL)"
        )


def default_profile_source(
    connection: duckdb.DuckDBPyConnection, until: datetime | None = None
) -> ProfileSource:
    """Identity's profiles when the workspace has an identity graph, else first identifiers."""
    if tables.has_state(connection):
        return IdentityProfiles(connection, until)
    return IdentifierProfiles("events", until)
