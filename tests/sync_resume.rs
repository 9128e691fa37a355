//! Resuming a sync: from a cut stdout (a crash after any STATE) with the same table version, from
//! `max_run_seconds`, from singer-io tap-postgres and pipelinewise state files, with the
//! `currently_syncing` stream first, and a `max_run_seconds` too large to be a deadline.
//!
//! Row sets are compared exactly (as multisets of records), never by count alone; every run's
//! RECORDs are checked against their SCHEMA.

use serde_json::{Value, json};

use crate::support::output::{
    assert_same_rows, bookmark, cut_after_state, named_rows, record_versions, records, run_ok, segment, shape, states, stream_shape,
    strings,
};
use crate::support::{fixture, id, select};

// ---- resuming ------------------------------------------------------------------------------

#[test]
fn full_table_resumes_after_a_crash_with_the_same_version() {
    let (db, config, mut catalog) = fixture(
        "create table cpk (a int, b text collate \"en-x-icu\", v text, primary key (a, b)); \
         insert into cpk select i % 3, case when i % 2 = 0 then 'x' else 'X' end || i, 'v' || i from generate_series(1, 20) i",
        json!({"full_table_order": "primary_key", "itersize": 3}),
    );
    select(&mut catalog, "cpk", "FULL_TABLE", None);
    let sid = id(&db, "public", "cpk");
    let all: Vec<Value> =
        (1..=20).map(|i| json!({"a": i % 3, "b": format!("{}{i}", if i % 2 == 0 { "x" } else { "X" }), "v": format!("v{i}")})).collect();
    let full = run_ok(&config, &catalog, None);
    assert_same_rows(&records(&full, "cpk"), &all, "full run");
    assert_eq!(shape(&full), [stream_shape(true, 20, 3, true), strings(&["STATE"])].concat());
    let version = record_versions(&full, "cpk")[0];

    // STATE #1 is the stream's start; #2..=#8 follow the seven batches (3 * 6 + 2 rows).
    for n in 2..=8 {
        let (before, state) = cut_after_state(&full, n);
        assert_eq!(state["currently_syncing"], json!(sid));
        let last = &bookmark(&state, &sid)["last_pk_fetched"];
        let last_sent = records(&before, "cpk").last().cloned().unwrap();
        assert_eq!(*last, json!({"a": last_sent["a"], "b": last_sent["b"]}), "cut after STATE #{n}");

        let after = run_ok(&config, &catalog, Some(&state));
        let union: Vec<Value> = records(&before, "cpk").into_iter().chain(records(&after, "cpk")).collect();
        assert_same_rows(&union, &all, &format!("cut after STATE #{n}: every row exactly once"));
        let kinds = shape(&after);
        assert_eq!(kinds.iter().filter(|k| *k == "ACTIVATE_VERSION").count(), 1, "cut after STATE #{n}: {kinds:?}");
        let activate = after.iter().position(|m| m["type"] == "ACTIVATE_VERSION").unwrap();
        assert!(after[..activate].iter().all(|m| m["type"] != "ACTIVATE_VERSION"));
        assert!(
            after[activate..].iter().all(|m| m["type"] != "RECORD"),
            "cut after STATE #{n}: ACTIVATE_VERSION follows the records: {kinds:?}"
        );
        assert_eq!(after[activate]["version"].as_i64(), Some(version), "the interrupted version is activated");
        for v in record_versions(&after, "cpk") {
            assert_eq!(v, version, "cut after STATE #{n}: the resumed records keep the version");
        }
        let end = states(&after).pop().unwrap();
        assert_eq!(
            end,
            json!({"currently_syncing": null, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}})
        );
    }
}

#[test]
fn max_run_seconds_zero_stops_after_one_batch_and_resumes() {
    let (db, config, mut catalog) = fixture(
        "create table a_pk (id int primary key, name text); insert into a_pk select i, 'pk ' || i from generate_series(1, 10) i; \
         create table b_nopk (id int, name text); insert into b_nopk select i, 'nopk ' || i from generate_series(1, 5) i",
        json!({"full_table_order": "primary_key", "itersize": 3, "max_run_seconds": 0}),
    );
    let unlimited = db.config_file(json!({"full_table_order": "primary_key", "itersize": 3}));
    select(&mut catalog, "a_pk", "FULL_TABLE", None);
    select(&mut catalog, "b_nopk", "FULL_TABLE", None);
    let (a, b) = (id(&db, "public", "a_pk"), id(&db, "public", "b_nopk"));

    // a_pk takes four runs of one batch each (3 + 3 + 3 + 1); b_nopk then starts and is cut.
    let mut state: Option<Value> = None;
    let mut a_records = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let messages = run_ok(&config, &catalog, state.as_ref());
        a_records.extend(records(&messages, "a_pk"));
        state = states(&messages).pop();
        runs.push(messages);
    }
    assert_eq!(a_records, named_rows(1..=10, "pk"), "no duplicates, no gaps, in key order");
    for (i, run) in runs.iter().enumerate().take(3) {
        assert_eq!(records(run, "a_pk").len(), 3, "run {i} stops after one batch");
        let end = states(run).pop().unwrap();
        assert_eq!(end["currently_syncing"], json!(a), "run {i}: still syncing a_pk");
        assert_eq!(bookmark(&end, &a)["last_pk_fetched"], json!({"id": 3 * (i + 1)}));
        assert!(records(run, "b_nopk").is_empty());
    }
    let version = record_versions(&runs[0], "a_pk")[0];
    let activations: Vec<(usize, Value)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.iter().filter(|m| m["type"] == "ACTIVATE_VERSION" && m["stream"] == "a_pk").map(move |m| (i, m["version"].clone()))
        })
        .collect();
    assert_eq!(activations, [(0, json!(version)), (3, json!(version))], "activated when first seen and when complete");
    for run in &runs {
        assert!(record_versions(run, "a_pk").iter().all(|v| *v == version));
    }
    assert_eq!(shape(&segment(&runs[3], "a_pk")), stream_shape(false, 1, 3, true));

    // b_nopk (no primary key) was cut after 3 rows; it restarts from its first row with a new version.
    let cut = state.unwrap();
    assert_eq!(cut["currently_syncing"], json!(b));
    assert!(bookmark(&cut, &b).get("last_pk_fetched").is_none());
    let cut_version = record_versions(&runs[3], "b_nopk");
    assert_eq!(records(&runs[3], "b_nopk").len(), 3);
    let last = run_ok(&unlimited, &catalog, Some(&cut));
    let streams: Vec<&str> = last.iter().filter(|m| m["type"] == "SCHEMA").map(|m| m["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["b_nopk", "a_pk"], "the interrupted stream goes first");
    assert_same_rows(&records(&last, "b_nopk"), &named_rows(1..=5, "nopk"), "b_nopk restarts");
    assert_eq!(shape(&segment(&last, "b_nopk")), stream_shape(false, 5, 3, true));
    let new_version = record_versions(&last, "b_nopk");
    assert_eq!(new_version.len(), 1);
    assert_ne!(new_version, cut_version);
}

#[test]
fn tap_postgres_and_pipelinewise_states() {
    let (db, config, mut catalog) = fixture(
        "create table orders (id int primary key, updated_at timestamptz); create index on orders (updated_at); \
         insert into orders values (1, '2024-06-01 11:59:57+00'), (2, '2024-06-01 11:59:58.123456+00'), \
           (3, '2024-06-01 13:59:58.123456+02'), (4, '2024-06-01 11:59:59+00'), (5, null); \
         create table users (id int primary key, name text); insert into users values (1, 'user 1'), (2, 'user 2')",
        json!({}),
    );
    select(&mut catalog, "orders", "INCREMENTAL", Some("updated_at"));
    select(&mut catalog, "users", "FULL_TABLE", None);
    let (orders, users) = (id(&db, "public", "orders"), id(&db, "public", "users"));
    let tap_postgres = json!({"last_replication_method": "INCREMENTAL", "replication_key": "updated_at",
        "version": 1717243200456i64, "replication_key_value": "2024-06-01T11:59:58.123456+00:00"});
    let with = |edit: Value| {
        let mut b = tap_postgres.clone();
        for (k, v) in edit.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let ts = |id: i64| match id {
        1 => json!("2024-06-01T11:59:57+00:00"),
        2 | 3 => json!("2024-06-01T11:59:58.123456+00:00"),
        4 => json!("2024-06-01T11:59:59+00:00"),
        _ => Value::Null,
    };
    // (label, bookmarks, orders ids sent, orders version kept, users ACTIVATE_VERSION before its records)
    let cases = [
        (
            "tap-postgres",
            json!({&orders: tap_postgres.clone(), &users: {"last_replication_method": "FULL_TABLE", "version": 1717243200123i64, "xmin": null}}),
            vec![2, 3, 4],
            true,
            false,
        ),
        ("pipelinewise id", json!({"public-orders": tap_postgres.clone()}), vec![2, 3, 4], true, true),
        (
            "other method",
            json!({&orders: with(json!({"last_replication_method": "FULL_TABLE"})),
                   &users: {"last_replication_method": "INCREMENTAL", "replication_key": "id", "version": 1717243200123i64, "replication_key_value": 2}}),
            vec![1, 2, 3, 4, 5],
            false,
            true,
        ),
        (
            "other key",
            json!({&orders: with(json!({"replication_key": "id", "replication_key_value": 4}))}),
            vec![1, 2, 3, 4, 5],
            false,
            true,
        ),
    ];
    for (label, bookmarks, ids, kept, users_activate_first) in cases {
        let state = json!({"currently_syncing": null, "bookmarks": bookmarks});
        let messages = run_ok(&config, &catalog, Some(&state));
        let want: Vec<Value> = ids.iter().map(|&i| json!({"id": i, "updated_at": ts(i)})).collect();
        assert_same_rows(&records(&messages, "orders"), &want, label);
        let seg = segment(&messages, "orders");
        let version = seg[2]["version"].as_i64().unwrap();
        assert_eq!(seg[2]["type"], "ACTIVATE_VERSION", "{label}");
        assert_eq!(version == 1717243200456, kept, "{label}: version {version}");
        assert_eq!(record_versions(&messages, "orders"), [version], "{label}");
        let end = states(&messages).pop().unwrap();
        assert_eq!(
            *bookmark(&end, &orders),
            json!({"last_replication_method": "INCREMENTAL", "replication_key": "updated_at", "version": version,
                   "replication_key_value": "2024-06-01T11:59:59+00:00"}),
            "{label}"
        );
        assert!(end["bookmarks"].get("public-orders").is_none(), "{label}: the pipelinewise id is taken over: {end}");
        // users: a FULL_TABLE bookmark (tap-postgres's, with xmin) means the table was seen, so no
        // ACTIVATE_VERSION before its records; an INCREMENTAL bookmark is dropped like none at all.
        let users_seg = segment(&messages, "users");
        assert_eq!(shape(&users_seg), stream_shape(users_activate_first, 2, 20000, true), "{label}");
        assert_same_rows(&records(&messages, "users"), &named_rows(1..=2, "user"), label);
        let users_version = record_versions(&messages, "users")[0];
        assert_ne!(users_version, 1717243200123, "{label}");
        assert_eq!(*bookmark(&end, &users), json!({"last_replication_method": "FULL_TABLE", "version": users_version}), "{label}");
    }
}

// ---- keys of extension types, unorderable or unbookmarkable keys, view keys ------------------

/// A max_run_seconds too large for the clock means no deadline, not a panic.
#[test]
fn huge_max_run_seconds_is_no_deadline() {
    let (_db, config, mut catalog) =
        fixture("create table t (id int primary key); insert into t values (1), (2)", json!({"max_run_seconds": 9223372036854775000u64}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    assert_eq!(records(&run_ok(&config, &catalog, None), "t").len(), 2);
}
