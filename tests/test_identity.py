"""Identity resolution on tiny hand-written event stores: rules, profiles, merge log, explain,
unmerge, incremental updates, as-of views, export and stats."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.identity import (
    IdentityError,
    IdentityGraph,
    IdentityRules,
    RulesError,
    event_profiles_as_of,
    event_profiles_sql,
    explain,
    export_identities,
    identity_stats,
    load_rules,
    profile_id_for,
    profiles_as_of,
    resolve_identities,
    unmerge,
    update_identity,
)
from features.identity import api as identity_api
from features.store import DEAD_LETTER_SCHEMA, EVENT_SCHEMA, EventStore

T0 = datetime(2026, 1, 5, 9, 0)


def event(message_id: str, minute: float, kind: str = "track", **identifiers: str) -> dict:
    return {
        "message_id": message_id,
        "type": kind,
        "event": "Product Viewed",
        "timestamp": T0 + timedelta(minutes=minute),
        **identifiers,
    }


def events_table(events: list[dict]) -> pa.Table:
    return pa.table(
        {f.name: pa.array([e.get(f.name) for e in events], f.type) for f in EVENT_SCHEMA}
    )


def append(store: EventStore, events: list[dict]) -> None:
    empty = pa.table({f.name: pa.array([], f.type) for f in DEAD_LETTER_SCHEMA})
    store.append(events_table(events), empty, source="test", ingest_run="run")


@pytest.fixture
def make_store(tmp_path: Path):
    stores = []

    def make(events: list[dict] | None = None) -> EventStore:
        store = EventStore(tmp_path / f"store{len(stores)}" / "events.duckdb")
        stores.append(store)
        if events:
            append(store, events)
        return store

    yield make
    for store in stores:
        store.close()
    identity_api._GRAPHS.clear()


def groups(store: EventStore) -> set[frozenset[str]]:
    """Profiles as sets of TYPE:VALUE (independent of the ids)."""
    rows = store.connection.sql(
        "SELECT profile_id, identifier_type || ':' || identifier FROM identity_identifiers "
        "WHERE profile_id IS NOT NULL"
    ).fetchall()
    by_profile: dict[str, set[str]] = {}
    for profile, label in rows:
        by_profile.setdefault(profile, set()).add(label)
    return {frozenset(members) for members in by_profile.values()}


def assignments(store: EventStore) -> set[tuple]:
    return set(
        store.connection.sql(
            "SELECT identifier_type, identifier, profile_id, shared FROM identity_identifiers"
        ).fetchall()
    )


def links(store: EventStore) -> set[tuple]:
    return set(
        store.connection.sql(
            "SELECT identifier_type_a, identifier_a, identifier_type_b, identifier_b, timestamp, "
            "message_id FROM identity_links"
        ).fetchall()
    )


def profile_of(store: EventStore, label: str) -> str | None:
    kind, value = label.split(":", 1)
    rows = store.connection.execute(
        "SELECT profile_id FROM identity_identifiers WHERE identifier_type = ? AND identifier = ?",
        [kind, value],
    ).fetchall()
    assert rows, f"{label} not in the graph"
    return rows[0][0]


def rules_with(**changes) -> IdentityRules:
    document = load_rules().model_dump(mode="json")
    for path, value in changes.items():
        target = document
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[keys[-1]] = value
    return IdentityRules.model_validate(document)


# --- rules --------------------------------------------------------------------------------------


def test_default_rules_cover_every_type_in_priority_order():
    rules = load_rules()
    assert rules.types == ("user_id", "email", "phone", "device_id", "anonymous_id")
    assert rules.limits == (1, 3, 2, 10, 100)
    assert rules.shared == {"anonymous_id": 1, "device_id": 1, "email": 2, "phone": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("identifiers:\n  - {type: fax, limit: 1}\n", r"unknown identifier type 'fax'"),
        ("identifiers:\n  - {type: user_id, limt: 1}\n", r"identifiers\.0\.limt: unknown key"),
        ("identifiers:\n  - {type: user_id, limit: 0}\n", r"greater than or equal to 1"),
        ("identifiers:\n  - {type: user_id, limit: 1}\n", r"missing email, phone, device_id"),
        ("colour: blue\n", r"colour: unknown key"),
        ("shared: {user_id: 2}\n", r"a userId is one person by definition"),
        ("shared: {fax: 2}\n", r"shared\.fax"),
        ("shared: {email: 0}\n", r"at least 1 person"),
        ("blocklist: {email_patterns: ['(']}\n", r"not a regular expression"),
        ("- just\n- a list\n", r"expected a mapping at the top level"),
        ("identifiers: [\n", r"not valid YAML"),
    ],
    ids=[
        "unknown-type",
        "unknown-key",
        "zero-limit",
        "missing-types",
        "top-level-key",
        "shared-user-id",
        "shared-unknown-type",
        "shared-zero",
        "bad-pattern",
        "not-a-mapping",
        "not-yaml",
    ],
)
def test_bad_rules_fail_on_load_with_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError, match=message):
        load_rules(path)


def test_duplicate_identifier_type_is_refused(tmp_path: Path):
    rules = "\n".join(
        f"  - {{type: {t}, limit: 1}}"
        for t in ("user_id", "email", "email", "phone", "device_id", "anonymous_id")
    )
    path = tmp_path / "rules.yaml"
    path.write_text("identifiers:\n" + rules + "\n")
    with pytest.raises(RulesError, match="email listed more than once"):
        load_rules(path)


def test_missing_rules_file(tmp_path: Path):
    with pytest.raises(RulesError, match="no such rules file"):
        load_rules(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("email", "ann@example.org", None),
        ("email", "TEST@test.com", "blocklisted value"),
        ("email", "noreply@shop.example", "blocklisted pattern"),
        ("email", "not-an-email", "not an email address"),
        ("phone", "+447911123456", None),
        ("phone", "+447000000000", "blocklisted value"),
        ("phone", "+441111111111", "blocklisted pattern"),
        ("phone", "07911 123456", "not an E.164 phone number"),
        ("anonymous_id", "undefined", "blocklisted value"),
        ("anonymous_id", " NULL ", "blocklisted value"),
        ("device_id", "00000000-0000-0000-0000-000000000000", "blocklisted value"),
        ("user_id", "u-1", None),
        ("user_id", "", "blocklisted value"),
    ],
    ids=lambda v: str(v) if v is not None else "ok",
)
def test_block_reason(kind: str, value: str, reason: str | None):
    rules = load_rules()
    got = rules.block_reason(rules.rank(kind), value)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


# --- profiles -----------------------------------------------------------------------------------


def test_anonymous_browsing_joins_the_account_after_login(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="a1", device_id="d1"),
            event("m2", 1, "identify", anonymous_id="a1", user_id="u1", email="ann@x.org"),
            event("m3", 2, anonymous_id="a2", email="ann@x.org"),
            event("m4", 3, anonymous_id="a9"),
        ]
    )
    report = resolve_identities(store)
    assert groups(store) == {
        frozenset(
            {"device_id:d1", "anonymous_id:a1", "user_id:u1", "email:ann@x.org", "anonymous_id:a2"}
        ),
        frozenset({"anonymous_id:a9"}),
    }
    # The founder (first seen; the device id outranks the anonymous id of the same message).
    assert profile_of(store, "email:ann@x.org") == profile_id_for("device_id", "d1")
    assert (report.path, report.profiles, report.merges) == ("batch", 2, 4)


def test_a_limit_refuses_the_merge_and_says_which(make_store):
    store = make_store(
        [
            event("m1", 0, "identify", user_id="u1", email="e1@x.org"),
            event("m2", 1, "identify", user_id="u1", email="e2@x.org"),
        ]
    )
    resolve_identities(store, rules_with(identifiers__1__limit=1))
    assert groups(store) == {
        frozenset({"user_id:u1", "email:e1@x.org"}),
        frozenset({"email:e2@x.org"}),
    }
    assert identity_stats(store)["refused_by_rule"] == {"limit:email": 1}


def test_two_accounts_never_share_a_profile(make_store):
    store = make_store(
        [
            event("m1", 0, "identify", user_id="u1", email="family@x.org"),
            event("m2", 1, "identify", user_id="u2", email="family@x.org"),
        ]
    )
    resolve_identities(store)
    assert groups(store) == {
        frozenset({"user_id:u1", "email:family@x.org"}),
        frozenset({"user_id:u2"}),
    }
    assert identity_stats(store)["refused_by_rule"] == {"limit:user_id": 1}


def test_a_shared_device_links_nothing_and_belongs_to_no_one(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="kiosk", user_id="u1"),
            event("m2", 5, anonymous_id="a1", user_id="u1"),
            event("m3", 9, anonymous_id="kiosk", user_id="u2"),
            event("m4", 10, anonymous_id="kiosk"),
        ]
    )
    resolve_identities(store)
    assert groups(store) == {
        frozenset({"user_id:u1", "anonymous_id:a1"}),
        frozenset({"user_id:u2"}),
    }
    assert profile_of(store, "anonymous_id:kiosk") is None
    result = explain(store, "anonymous_id:kiosk")
    assert result["profile_id"] is None
    assert "seen beside 2 people" in result["shared_reason"]
    assert identity_stats(store)["shared_identifiers"] == {"anonymous_id (detected)": 1}


def test_a_device_beside_two_addresses_of_one_person_is_not_shared(make_store):
    events = [
        event("m1", 0, device_id="d1", email="home@x.org"),
        event("m2", 1, device_id="d1", email="work@x.org"),
    ]
    store = make_store(events)
    resolve_identities(store)
    assert profile_of(store, "device_id:d1") is None  # two unconnected addresses: two people
    # Later the account shows both addresses are one person's: the device is no longer shared.
    append(
        store,
        [
            event("m3", 2, "identify", user_id="u1", email="home@x.org"),
            event("m4", 3, user_id="u1", email="work@x.org"),
        ],
    )
    update_identity(store)
    incremental = assignments(store)
    assert groups(store) == {
        frozenset({"device_id:d1", "email:home@x.org", "email:work@x.org", "user_id:u1"})
    }
    resolve_identities(store)
    assert assignments(store) == incremental


def test_junk_values_never_link(make_store):
    store = make_store(
        [
            event("m1", 0, user_id="u1", email="test@test.com", anonymous_id="undefined"),
            event("m2", 1, user_id="u2", email="test@test.com", anonymous_id="undefined"),
            event("m3", 2, user_id="u3", email="not-an-email"),
        ]
    )
    resolve_identities(store)
    assert groups(store) == {
        frozenset({"user_id:u1"}),
        frozenset({"user_id:u2"}),
        frozenset({"user_id:u3"}),
    }
    assert identity_stats(store)["blocked_values"] == {
        "blocklisted value": 2,
        "not an email address": 1,
    }
    assert explain(store, "email:test@test.com")["blocked_reason"] == "blocklisted value"


def test_aliases_self_links_and_cycles(make_store):
    store = make_store(
        [
            event("m1", 0, "alias", previous_id="anon-1", user_id="u1"),
            event("m2", 1, "alias", previous_id="u2", user_id="u2"),  # a self-link: a no-op
            event("m3", 2, "alias", previous_id="x", user_id="y"),  # a cycle of aliases
            event("m4", 3, "alias", previous_id="y", user_id="z"),
            event("m5", 4, "alias", previous_id="z", user_id="x"),
        ]
    )
    resolve_identities(store)
    assert groups(store) == {
        frozenset({"anonymous_id:anon-1", "user_id:u1"}),
        frozenset({"user_id:u2"}),
        frozenset({"anonymous_id:x", "user_id:y"}),
        frozenset({"anonymous_id:y", "user_id:z"}),
        frozenset({"anonymous_id:z", "user_id:x"}),
    }
    assert identity_stats(store)["issues"] == {
        "alias previousId equals userId: self-link ignored": 1
    }


def test_a_hub_identifier_never_makes_a_giant_profile(make_store):
    hub = [
        event(f"m{k}", k, user_id=f"u{k}", anonymous_id="hub", email=f"p{k}@x.org")
        for k in range(30)
    ]
    store = make_store(hub)
    resolve_identities(store)
    stats = identity_stats(store)
    assert stats["profiles"] == 30
    assert stats["identifiers_per_profile"]["max"] == 2


def test_unknown_identifier_type_is_a_clear_reason_not_a_crash():
    graph = IdentityGraph(load_rules())
    problems = graph.observe(0, "m1", "track", [("fax", "123"), ("user_id", "u1")])
    assert problems == [
        "unknown identifier type 'fax' (expected one of user_id, email, phone, device_id, "
        "anonymous_id); message not linked"
    ]
    assert graph.node_count == 0
    assert graph.observe(1, "m2", "track", [("email", "test@test.com"), ("user_id", "u1")]) == [
        "email 'test@test.com': blocklisted value; not linked"
    ]


# --- merge log and explain ----------------------------------------------------------------------


def test_every_merge_is_logged_with_its_message_time_and_rule(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="a1", device_id="d1"),
            event("m2", 1, "identify", anonymous_id="a1", user_id="u1"),
            event("m3", 2, "alias", previous_id="a2", user_id="u1"),
        ]
    )
    resolve_identities(store)
    rows = store.connection.sql(
        "SELECT action, message_id, timestamp, identifier_a, identifier_b, rule FROM merge_log "
        "WHERE action = 'merge' ORDER BY seq"
    ).fetchall()
    assert rows == [
        ("merge", "m1", T0, "d1", "a1", "same track message"),
        ("merge", "m2", T0 + timedelta(minutes=1), "u1", "a1", "identify"),
        ("merge", "m3", T0 + timedelta(minutes=2), "u1", "a2", "alias"),
    ]
    detail = store.connection.sql(
        "SELECT detail FROM merge_log WHERE message_id = 'm2'"
    ).fetchall()[0][0]
    assert detail == "within limits: user_id 1/1, device_id 1/10, anonymous_id 1/100"


def test_explain_prints_the_chain_of_links(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="a1", device_id="d1"),
            event("m2", 1, "identify", anonymous_id="a1", user_id="u1"),
            event("m3", 2, user_id="u1", email="ann@x.org"),
            event("m4", 3, anonymous_id="a2"),
        ]
    )
    resolve_identities(store)
    result = explain(store, "ann@x.org")
    assert result["profile_id"] == profile_id_for("device_id", "d1")
    assert result["founder"] == "device_id:d1"
    assert [(s["identifier_a"], s["identifier_b"], s["message_id"]) for s in result["path"]] == [
        ("device_id:d1", "anonymous_id:a1", "m1"),
        ("user_id:u1", "anonymous_id:a1", "m2"),
        ("user_id:u1", "email:ann@x.org", "m3"),
    ]
    assert [m["identifier"] for m in result["identifiers"]] == ["a1", "d1", "u1", "ann@x.org"]
    assert len(result["links"]) == 3


@pytest.mark.parametrize(
    ("query", "message"),
    [("nobody", r"no identifier 'nobody'"), ("same", r"'same' is ambiguous; say which")],
    ids=["unknown", "ambiguous"],
)
def test_explain_failures(make_store, query: str, message: str):
    store = make_store([event("m1", 0, user_id="same", anonymous_id="same")])
    resolve_identities(store)
    with pytest.raises(IdentityError, match=message):
        explain(store, query)


def test_explain_before_resolve_says_what_to_run(make_store):
    store = make_store([event("m1", 0, user_id="u1")])
    with pytest.raises(IdentityError, match="run `kairos identity resolve`"):
        explain(store, "u1")


# --- unmerge ------------------------------------------------------------------------------------

HOUSEHOLD = [
    event("m1", 0, anonymous_id="tablet", device_id="tablet-hw"),
    event("m2", 1, "identify", anonymous_id="tablet", user_id="u1", email="ann@x.org"),
    event("m3", 2, anonymous_id="phone-a", user_id="u1"),
    event("m4", 3, anonymous_id="tablet"),  # Bob browsing, whom nothing identifies
]


def test_unmerge_an_identifier_splits_its_profile_and_survives_a_rebuild(make_store):
    store = make_store(HOUSEHOLD)
    resolve_identities(store)
    # Ann and Bob share the tablet, but only Ann ever identified on it: one profile, and the
    # tablet's browsing counts as Ann's until a person says otherwise.
    assert len(groups(store)) == 1
    before = profile_of(store, "user_id:u1")
    result = unmerge(store, identifier="anonymous_id:tablet", note="family tablet")
    assert result["profile_before"] == before
    assert groups(store) == {
        frozenset({"user_id:u1", "email:ann@x.org", "anonymous_id:phone-a"}),
        frozenset({"device_id:tablet-hw"}),
    }
    assert profile_of(store, "anonymous_id:tablet") is None
    # The piece holding the old founder keeps its id; the others are new profiles.
    assert profile_of(store, "device_id:tablet-hw") == before
    assert profile_of(store, "user_id:u1") == profile_id_for("user_id", "u1")
    actions = store.connection.sql(
        "SELECT action, rule FROM merge_log WHERE action IN ('split', 'unmerge') ORDER BY seq"
    ).fetchall()
    assert actions == [("unmerge", "manual unmerge"), ("split", "manual unmerge of an identifier")]
    after = assignments(store)
    resolve_identities(store)  # the override is applied by every rebuild
    assert assignments(store) == after


def test_unmerge_a_link_keeps_two_identifiers_apart(make_store):
    store = make_store(HOUSEHOLD)
    resolve_identities(store)
    unmerge(store, link=("email:ann@x.org", "device_id:tablet-hw"))
    assert groups(store) == {
        frozenset({"user_id:u1", "email:ann@x.org", "anonymous_id:phone-a"}),
        frozenset({"device_id:tablet-hw", "anonymous_id:tablet"}),
    }
    assert identity_stats(store)["refused_by_rule"] == {"manual_split": 2}
    after = assignments(store)
    resolve_identities(store)
    assert assignments(store) == after
    assert identity_stats(store)["overrides"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identifier": "email:nobody@x.org"}, r"no identifier 'email:nobody@x.org'.*nothing to"),
        ({"link": ("user_id:u1", "user_id:u2")}, r"not in the same profile; nothing to unmerge"),
        ({"identifier": "anonymous_id:kiosk"}, r"already shared"),
        ({"identifier": "test@test.com"}, r"is blocked \(blocklisted value\)"),
        ({}, r"either an identifier or a link"),
        ({"link": ("user_id:u1", "user_id:u1")}, r"two different identifiers"),
    ],
    ids=["missing", "different-profiles", "already-shared", "blocked", "neither", "same"],
)
def test_unmerge_failures(make_store, kwargs: dict, message: str):
    store = make_store(
        [
            event("m1", 0, user_id="u1", anonymous_id="kiosk", email="test@test.com"),
            event("m2", 1, user_id="u2", anonymous_id="kiosk"),
        ]
    )
    resolve_identities(store)
    with pytest.raises(IdentityError, match=message):
        unmerge(store, **kwargs)


# --- incremental == batch -----------------------------------------------------------------------


def test_first_update_runs_the_batch_path_then_incremental(make_store):
    store = make_store([event("m1", 0, anonymous_id="a1", user_id="u1")])
    assert update_identity(store).path == "batch"
    append(store, [event("m2", 1, anonymous_id="a2", user_id="u1")])
    report = update_identity(store)
    assert (report.path, report.events, report.profiles) == ("incremental", 1, 1)


def test_a_late_event_converges_to_the_batch_answer(make_store):
    store = make_store(
        [
            event("m2", 2, "identify", user_id="u1", email="e@x.org"),
            event("m3", 3, anonymous_id="a1", email="e@x.org"),
        ]
    )
    resolve_identities(store)
    # An older message gave the address to u2 first: u1 must lose it, and a1 follows.
    append(store, [event("m1", 1, "identify", user_id="u2", email="e@x.org")])
    update_identity(store)
    assert groups(store) == {
        frozenset({"user_id:u2", "email:e@x.org", "anonymous_id:a1"}),
        frozenset({"user_id:u1"}),
    }
    incremental, incremental_links = assignments(store), links(store)
    identity_api._GRAPHS.clear()
    resolve_identities(store)
    assert (assignments(store), links(store)) == (incremental, incremental_links)


def test_update_with_a_table_and_observing_twice_changes_nothing(make_store):
    first = [event("m1", 0, anonymous_id="a1", user_id="u1")]
    later = [event("m2", 1, anonymous_id="a2", user_id="u1"), event("m3", 2, user_id="u3")]
    store = make_store(first)
    resolve_identities(store)
    append(store, later)
    update_identity(store, events_table(later))
    once = assignments(store)
    update_identity(store, events_table(later))
    update_identity(store)  # catches up from the store: the same events again
    assert assignments(store) == once
    resolve_identities(store)
    assert assignments(store) == once


def test_update_rejects_a_table_without_the_event_columns(make_store):
    store = make_store([event("m1", 0, user_id="u1")])
    resolve_identities(store)
    with pytest.raises(IdentityError, match=r"column\(s\) .*message_id.* missing; have: user_id"):
        update_identity(store, pa.table({"user_id": ["u1"]}))


# --- as of a cutoff -----------------------------------------------------------------------------


def test_a_later_login_does_not_enrich_a_past_profile(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="a1"),
            event("m2", 60, "identify", anonymous_id="a1", user_id="u1"),
        ]
    )
    before = profiles_as_of(store, T0 + timedelta(minutes=30))
    assert before.to_pylist() == [
        {
            "identifier_type": "anonymous_id",
            "identifier": "a1",
            "profile_id": profile_id_for("anonymous_id", "a1"),
        }
    ]
    after = profiles_as_of(store, T0 + timedelta(minutes=60))
    assert {r["profile_id"] for r in after.to_pylist()} == {profile_id_for("anonymous_id", "a1")}
    assert after.num_rows == 2
    events = event_profiles_as_of(store, T0 + timedelta(minutes=30))
    assert events.to_pylist() == [
        {"message_id": "m1", "profile_id": profile_id_for("anonymous_id", "a1")}
    ]


def test_events_get_the_profile_of_their_best_identifier(make_store):
    store = make_store(
        [
            event("m1", 0, anonymous_id="kiosk", user_id="u1"),
            event("m2", 1, anonymous_id="kiosk", user_id="u2"),
            event("m3", 2, anonymous_id="kiosk"),
        ]
    )
    resolve_identities(store)
    rows = dict(store.connection.sql(event_profiles_sql() + " ORDER BY 1").fetchall())
    assert rows == {
        "m1": profile_id_for("user_id", "u1"),
        "m2": profile_id_for("user_id", "u2"),
        "m3": None,  # only a shared identifier: no one's
    }


# --- export and stats ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_writes_the_contract_columns(make_store, tmp_path: Path, suffix: str):
    store = make_store(
        [
            event("m1", 0, anonymous_id="kiosk", user_id="u1"),
            event("m2", 1, anonymous_id="kiosk", user_id="u2", email="b@x.org"),
        ]
    )
    resolve_identities(store)
    out = tmp_path / f"ids{suffix}"
    assert export_identities(store, out) == 3
    if suffix == ".parquet":
        table = pq.read_table(out)
    else:
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(out)
    assert table.column_names == ["identifier_type", "identifier", "profile_id"]
    assert sorted(table.to_pylist(), key=lambda r: r["identifier"]) == [
        {
            "identifier_type": "email",
            "identifier": "b@x.org",
            "profile_id": profile_id_for("user_id", "u2"),
        },
        {
            "identifier_type": "user_id",
            "identifier": "u1",
            "profile_id": profile_id_for("user_id", "u1"),
        },
        {
            "identifier_type": "user_id",
            "identifier": "u2",
            "profile_id": profile_id_for("user_id", "u2"),
        },
    ]
    assert export_identities(store, out, include_shared=True) == 4


def test_export_refuses_an_unknown_format(make_store, tmp_path: Path):
    store = make_store([event("m1", 0, user_id="u1")])
    resolve_identities(store)
    with pytest.raises(IdentityError, match=r"unknown output format '\.xlsx'"):
        export_identities(store, tmp_path / "ids.xlsx")


def test_stats_counts(make_store):
    store = make_store(
        [
            event("m1", 0, "identify", user_id="u1", email="a@x.org", anonymous_id="a1"),
            event("m2", 1, user_id="u1", anonymous_id="a2"),
            event("m3", 2, user_id="u2", anonymous_id="a2"),
            event("m4", 3, user_id="u3"),
        ]
    )
    resolve_identities(store)
    stats = identity_stats(store)
    assert {k: stats[k] for k in ("profiles", "identifiers", "merges", "refused_by_rule")} == {
        "profiles": 3,
        "identifiers": 6,
        "merges": 2,
        "refused_by_rule": {"shared_identifier": 2},
    }
    assert stats["identifiers_per_profile"] == {"mean": 1.667, "median": 1.0, "p99": 3.0, "max": 3}
    assert stats["largest_profile"]["profile_id"] == profile_id_for("user_id", "u1")
