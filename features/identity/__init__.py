"""Identity resolution: one profile per person, guarded against over-merging, explainable and
reversible.

Every identifier an event carries (userId, anonymousId, alias previousId, email, phone, device
id) is a node; two identifiers in one message are a link attempt. Attempts are decided in
(timestamp, message_id) order under the rules of ``features/identity_rules.yaml``: per-type
limits in priority order, a blocklist of junk values, detection of shared identifiers (family
tablets, kiosks), and manual unmerges. The answer is a function of the events alone, so the
batch path (``resolve_identities``) and the incremental path (``update_identity``, any order,
any batching) give identical profiles; ``profiles_as_of`` rebuilds the profiles the events up to
a cutoff define, for point-in-time features (``ProfilesAsOf`` for a series of cutoffs).
``features.identity.graph`` explains the process.
"""

from features.identity.api import (
    IdentityError,
    ProfilesAsOf,
    ResolveReport,
    assignments_table,
    event_profiles_as_of,
    event_profiles_sql,
    explain,
    export_identities,
    find_identifier,
    identity_stats,
    load_graph,
    parse_identifier,
    profiles_as_of,
    resolve_identities,
    unmerge,
    update_identity,
)
from features.identity.graph import IdentityGraph, Override, profile_id_for
from features.identity.rules import (
    DEFAULT_RULES_PATH,
    IDENTIFIER_TYPES,
    IdentityRules,
    RulesError,
    load_rules,
)

__all__ = [
    "DEFAULT_RULES_PATH",
    "IDENTIFIER_TYPES",
    "IdentityError",
    "IdentityGraph",
    "IdentityRules",
    "Override",
    "ProfilesAsOf",
    "ResolveReport",
    "RulesError",
    "assignments_table",
    "event_profiles_as_of",
    "event_profiles_sql",
    "explain",
    "export_identities",
    "find_identifier",
    "identity_stats",
    "load_graph",
    "load_rules",
    "parse_identifier",
    "profile_id_for",
    "profiles_as_of",
    "resolve_identities",
    "unmerge",
    "update_identity",
]
