//! Data sync end to end: stream and column selection, the Singer message sequence, FULL_TABLE
//! and INCREMENTAL semantics (ties, NULL keys, collations, batching with `itersize`), resuming
//! from a cut stdout or `max_run_seconds` (FULL_TABLE by block ranges and in primary key
//! order), singer-io/pipelinewise state files, several databases, views, weird identifiers, the
//! hot standby, vanished or unreadable streams and the replication key index warning.
//!
//! Row sets are compared exactly (as multisets of records), never by count alone; every run's
//! RECORDs are checked against their SCHEMA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::NoTls;
use serde_json::{Value, json};

use crate::support::{
    self, TapOutput, TestDb, assert_records_match_schemas, discover, fixture, id, root, select, select_column, server, stream_mut, sync,
};

// ---- helpers -------------------------------------------------------------------------------

/// True for `time_extracted` values shaped like `2024-06-01T12:00:00.123456Z`.
fn is_time_extracted(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The parsed messages of a run after the checks every sync output must pass: each RECORD
/// matches its SCHEMA and carries an integer `version` and a `time_extracted` in singer's format.
fn checked(out: &TapOutput) -> Vec<Value> {
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    for m in messages.iter().filter(|m| m["type"] == "RECORD") {
        assert!(m["version"].as_i64().is_some(), "RECORD without an integer version: {m}");
        assert!(is_time_extracted(m["time_extracted"].as_str().unwrap_or("")), "bad time_extracted: {m}");
    }
    messages
}

/// Runs a sync that must succeed and returns its checked messages.
fn run_ok(config: &Path, catalog: &Value, state: Option<&Value>) -> Vec<Value> {
    checked(&sync(config, catalog, state).success())
}

/// The message types in order, each run of RECORDs folded into `RECORD*n`.
fn shape(messages: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut records = 0;
    for m in messages {
        let kind = m["type"].as_str().expect("a message type");
        if kind == "RECORD" {
            records += 1;
            continue;
        }
        if records > 0 {
            out.push(format!("RECORD*{records}"));
            records = 0;
        }
        out.push(kind.to_string());
    }
    if records > 0 {
        out.push(format!("RECORD*{records}"));
    }
    out
}

/// `&str`s as owned strings, to compare with [`shape`].
fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The expected shape of one stream's messages: SCHEMA, STATE, an optional ACTIVATE_VERSION,
/// one `RECORD*n` + STATE per batch (a last, short or empty, batch included), then the end.
fn stream_shape(activate_first: bool, rows: usize, itersize: usize, full_table: bool) -> Vec<String> {
    let mut out = strings(&["SCHEMA", "STATE"]);
    if activate_first {
        out.push("ACTIVATE_VERSION".into());
    }
    let mut left = rows;
    loop {
        let batch = left.min(itersize);
        if batch > 0 {
            out.push(format!("RECORD*{batch}"));
        }
        out.push("STATE".into());
        left -= batch;
        if batch < itersize {
            break;
        }
    }
    if full_table {
        out.push("ACTIVATE_VERSION".into());
    }
    out.push("STATE".into());
    out
}

/// A run's messages split per stream (from each SCHEMA to the next), after checking that the
/// run ends with one STATE of its own, which is left out.
fn per_stream(messages: &[Value]) -> Vec<(String, Vec<Value>)> {
    let (last, body) = messages.split_last().expect("a run writes messages");
    assert_eq!(last["type"], "STATE", "a run ends with a STATE");
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in body {
        if m["type"] == "SCHEMA" {
            out.push((m["stream"].as_str().unwrap().to_string(), Vec::new()));
        }
        out.last_mut().expect("messages start with a SCHEMA").1.push(m.clone());
    }
    out
}

/// The messages of `stream` in a run (see [`per_stream`]).
fn segment(messages: &[Value], stream: &str) -> Vec<Value> {
    per_stream(messages).into_iter().find(|(s, _)| s == stream).unwrap_or_else(|| panic!("no messages of stream {stream}")).1
}

/// The `record`s of `stream`'s RECORD messages.
fn records(messages: &[Value], stream: &str) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["record"].clone()).collect()
}

/// The values of the STATE messages.
fn states(messages: &[Value]) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "STATE").map(|m| m["value"].clone()).collect()
}

/// The `version`s of `stream`'s RECORD messages, deduplicated.
fn record_versions(messages: &[Value], stream: &str) -> Vec<i64> {
    let mut v: Vec<i64> =
        messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["version"].as_i64().unwrap()).collect();
    v.dedup();
    v
}

/// The messages before the cut: stdout of a run that crashed right after its `n`th STATE line
/// (1-based), and that STATE's value.
fn cut_after_state(messages: &[Value], n: usize) -> (Vec<Value>, Value) {
    let at = messages.iter().enumerate().filter(|(_, m)| m["type"] == "STATE").nth(n - 1).unwrap_or_else(|| panic!("no STATE #{n}")).0;
    (messages[..=at].to_vec(), messages[at]["value"].clone())
}

/// Asserts two multisets of records are equal (compared as sorted JSON text).
fn assert_same_rows(got: &[Value], want: &[Value], what: &str) {
    let sorted = |rows: &[Value]| {
        let mut v: Vec<String> = rows.iter().map(Value::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(got), sorted(want), "{what}");
}

/// `{"id": i, "name": "<prefix> i"}` for each `i`.
fn named_rows(ids: impl IntoIterator<Item = i64>, prefix: &str) -> Vec<Value> {
    ids.into_iter().map(|i| json!({"id": i, "name": format!("{prefix} {i}")})).collect()
}

/// The stderr lines starting with `level` (`WARN`, `ERROR`) that contain every `needles`.
fn log_lines<'a>(out: &'a TapOutput, level: &str, needles: &[&str]) -> Vec<&'a str> {
    out.stderr.lines().filter(|l| l.starts_with(level) && needles.iter().all(|n| l.contains(n))).collect()
}

/// The bookmark of `id` in a state value.
fn bookmark<'a>(state: &'a Value, id: &str) -> &'a Value {
    state["bookmarks"].get(id).unwrap_or_else(|| panic!("no bookmark for {id} in {state}"))
}

// ---- selection and message sequence -------------------------------------------------------

#[test]
fn full_table_messages_state_and_column_selection() {
    let (db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); \
         create table items (id int primary key, name text, secret text, comp pair); \
         insert into items select i, 'item ' || i, 'secret ' || i, row(i, 'x')::pair from generate_series(1, 7) i",
        json!({"full_table_order": "primary_key", "itersize": 3}),
    );
    select(&mut catalog, "items", "FULL_TABLE", None);
    select_column(&mut catalog, "items", "secret", false);
    select_column(&mut catalog, "items", "comp", true);
    let sid = id(&db, "public", "items");

    let first = run_ok(&config, &catalog, None);
    assert_eq!(shape(&first), [stream_shape(true, 7, 3, true), strings(&["STATE"])].concat());
    let schema = &first[0];
    assert_eq!(schema["stream"], "items");
    assert_eq!(schema["key_properties"], json!(["id"]));
    assert_eq!(schema["bookmark_properties"], json!([]));
    let mut props: Vec<&String> = schema["schema"]["properties"].as_object().unwrap().keys().collect();
    props.sort();
    assert_eq!(props, ["id", "name"], "deselected and unsupported columns are not in the SCHEMA");
    assert_eq!(records(&first, "items"), named_rows(1..=7, "item"), "all rows in primary key order, only selected columns");

    let version = first[2]["version"].as_i64().unwrap();
    assert_eq!(first[2], json!({"type": "ACTIVATE_VERSION", "stream": "items", "version": version}));
    assert_eq!(record_versions(&first, "items"), [version]);
    assert_eq!(first[first.len() - 3], json!({"type": "ACTIVATE_VERSION", "stream": "items", "version": version}));
    let done = json!({"currently_syncing": null, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}});
    let mut want_states =
        vec![json!({"currently_syncing": &sid, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}})];
    for last in [3, 6, 7] {
        want_states.push(json!({"currently_syncing": &sid, "bookmarks": {&sid: {
            "last_replication_method": "FULL_TABLE", "version": version, "last_pk_fetched": {"id": last}}}}));
    }
    want_states.extend([done.clone(), done.clone()]);
    assert_eq!(states(&first), want_states);

    // A later full sync: no ACTIVATE_VERSION before its records, a new version activated after them.
    let second = run_ok(&config, &catalog, Some(&done));
    assert_eq!(shape(&second), [stream_shape(false, 7, 3, true), strings(&["STATE"])].concat());
    let new_version = record_versions(&second, "items");
    assert_eq!(new_version.len(), 1);
    assert!(new_version[0] > version, "a new table version: {new_version:?} after {version}");
    assert_eq!(second[second.len() - 3]["version"].as_i64(), Some(new_version[0]));
    assert_eq!(records(&second, "items"), named_rows(1..=7, "item"));
}

#[test]
fn selection_rules_for_singer_io_and_meltano_catalogs() {
    let (_db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); \
         create table sel (id int primary key, a text, b text, c text, d text, e text, comp pair, k int); \
         insert into sel select i, 'a' || i, 'b' || i, 'c' || i, 'd' || i, 'e' || i, row(i, 'x')::pair, 10 * i from generate_series(1, 3) i; \
         create table meltano (id int primary key, x text, y text); insert into meltano values (1, 'x1', 'y1'), (2, 'x2', 'y2'); \
         create table not_selected (id int primary key); insert into not_selected values (1); \
         create table selected_false (id int primary key); insert into selected_false values (1); \
         create table selected_text_false (id int primary key); insert into selected_text_false values (1)",
        json!({}),
    );
    // singer-io style: `[]` selected as the string "true", an INCREMENTAL key that is deselected.
    select(&mut catalog, "sel", "INCREMENTAL", Some("k"));
    root(&mut catalog, "sel")["selected"] = json!("true");
    select_column(&mut catalog, "sel", "id", false); // automatic: always emitted
    select_column(&mut catalog, "sel", "a", true);
    select_column(&mut catalog, "sel", "b", false);
    select_column(&mut catalog, "sel", "comp", true); // unsupported: never emitted
    select_column(&mut catalog, "sel", "k", false); // the replication key: always emitted
    {
        let stream = stream_mut(&mut catalog, "sel");
        let metadata = stream["metadata"].as_array_mut().unwrap();
        for m in metadata.iter_mut() {
            if m["breadcrumb"] == json!(["properties", "c"]) {
                m["metadata"]["selected-by-default"] = json!(false); // no `selected`: not by default
            }
        }
        // `d` keeps selected-by-default true; `e` has no metadata at all, only its schema.
        metadata.retain(|m| m["breadcrumb"] != json!(["properties", "e"]));
    }
    // Meltano style: `selected` on every breadcrumb.
    select(&mut catalog, "meltano", "FULL_TABLE", None);
    for (column, on) in [("id", true), ("x", false), ("y", true)] {
        select_column(&mut catalog, "meltano", column, on);
    }
    root(&mut catalog, "selected_false")["selected"] = json!(false);
    root(&mut catalog, "selected_false")["replication-method"] = json!("FULL_TABLE");
    root(&mut catalog, "selected_text_false")["selected"] = json!("false");
    root(&mut catalog, "selected_text_false")["replication-method"] = json!("FULL_TABLE");

    let messages = run_ok(&config, &catalog, None);
    let streams: Vec<&str> = messages.iter().filter(|m| m["type"] == "SCHEMA").map(|m| m["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["meltano", "sel"], "only selected streams, in catalog order");
    let props = |stream: &str| -> Vec<String> {
        let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == stream).unwrap();
        let mut p: Vec<String> = schema["schema"]["properties"].as_object().unwrap().keys().cloned().collect();
        p.sort();
        p
    };
    assert_eq!(props("sel"), ["a", "d", "e", "id", "k"]);
    assert_eq!(props("meltano"), ["id", "y"]);
    let want: Vec<Value> =
        (1..=3).map(|i| json!({"id": i, "a": format!("a{i}"), "d": format!("d{i}"), "e": format!("e{i}"), "k": 10 * i})).collect();
    assert_eq!(records(&messages, "sel"), want);
    assert_eq!(records(&messages, "meltano"), [json!({"id": 1, "y": "y1"}), json!({"id": 2, "y": "y2"})]);
    let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == "sel").unwrap();
    assert_eq!(schema["bookmark_properties"], json!(["k"]));
}

// ---- INCREMENTAL -----------------------------------------------------------------------------

/// One INCREMENTAL key type: table, column type, the first rows' keys in ascending key order
/// (`(sql literal, json)`, a NULL last), the bookmark they leave, and rows inserted afterwards
/// with whether the next run must send them.
struct KeyCase {
    /// Table name.
    table: &'static str,
    /// Type of the key column `k`.
    ty: &'static str,
    /// First rows' keys, ascending.
    initial: Vec<(&'static str, Value)>,
    /// The replication_key_value after the first run.
    bookmark: Value,
    /// Keys inserted after the first run, and whether the second run sends them (in key order).
    inserted: Vec<(&'static str, Value, bool)>,
}

#[test]
fn incremental_key_order_ties_nulls_and_collation() {
    let cases = [
        KeyCase {
            table: "inc_ts",
            ty: "timestamptz",
            initial: vec![
                ("'2024-06-01 12:00:00+00'", json!("2024-06-01T12:00:00+00:00")),
                ("'2024-06-01 14:00:01.5+02'", json!("2024-06-01T12:00:01.500000+00:00")),
                ("'2024-06-01 12:00:01.5+00'", json!("2024-06-01T12:00:01.500000+00:00")),
                ("'2024-06-01 12:00:02.123456+00'", json!("2024-06-01T12:00:02.123456+00:00")),
                ("null", Value::Null),
            ],
            bookmark: json!("2024-06-01T12:00:02.123456+00:00"),
            inserted: vec![
                ("'2024-06-01 12:00:02.123455+00'", json!("2024-06-01T12:00:02.123455+00:00"), false),
                ("'2024-06-01 14:00:02.123456+02'", json!("2024-06-01T12:00:02.123456+00:00"), true),
                ("'2024-06-02 00:00:00+00'", json!("2024-06-02T00:00:00+00:00"), true),
                ("null", Value::Null, false),
            ],
        },
        KeyCase {
            table: "inc_int",
            ty: "bigint",
            initial: vec![("-3", json!(-3)), ("2", json!(2)), ("2", json!(2)), ("5", json!(5)), ("null", Value::Null)],
            bookmark: json!(5),
            inserted: vec![("4", json!(4), false), ("5", json!(5), true), ("7", json!(7), true), ("-10", json!(-10), false)],
        },
        KeyCase {
            // ICU orders a < b < B; bytewise (C) it is B < a < b, so 'b' is below the bookmark 'B'
            // only when the comparison uses the column's collation.
            table: "inc_text",
            ty: "text collate \"en-x-icu\"",
            initial: vec![("'a'", json!("a")), ("'b'", json!("b")), ("'b'", json!("b")), ("'B'", json!("B")), ("null", Value::Null)],
            bookmark: json!("B"),
            inserted: vec![("'b'", json!("b"), false), ("'A'", json!("A"), false), ("'B'", json!("B"), true), ("'c'", json!("c"), true)],
        },
    ];
    let mut sql = String::new();
    for c in &cases {
        sql.push_str(&format!("create table {t} (id int primary key, k {ty}); create index on {t} (k);", t = c.table, ty = c.ty));
        for (i, (literal, _)) in c.initial.iter().enumerate() {
            sql.push_str(&format!("insert into {} values ({}, {literal});", c.table, i + 1));
        }
    }
    let (db, config, mut catalog) = fixture(&sql, json!({"itersize": "2"}));
    for c in &cases {
        select(&mut catalog, c.table, "INCREMENTAL", Some("k"));
    }

    let first = run_ok(&config, &catalog, None);
    let first_state = states(&first).pop().unwrap();
    assert_eq!(first_state["currently_syncing"], Value::Null);
    let mut versions = BTreeMap::new();
    for c in &cases {
        let sid = id(&db, "public", c.table);
        let seg = segment(&first, c.table);
        assert_eq!(shape(&seg), stream_shape(true, c.initial.len(), 2, false), "{}: one STATE per batch of 2", c.table);
        assert_eq!(seg[0]["bookmark_properties"], json!(["k"]));
        let got = records(&first, c.table);
        let keys: Vec<Value> = got.iter().map(|r| r["k"].clone()).collect();
        let want_keys: Vec<Value> = c.initial.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(keys, want_keys, "{}: key order, NULL last", c.table);
        let want: Vec<Value> = c.initial.iter().enumerate().map(|(i, (_, k))| json!({"id": i + 1, "k": k})).collect();
        assert_same_rows(&got, &want, c.table);
        let version = seg[2]["version"].as_i64().unwrap();
        assert_eq!(
            *bookmark(&first_state, &sid),
            json!({"last_replication_method": "INCREMENTAL", "replication_key": "k", "version": version, "replication_key_value": c.bookmark}),
            "{}",
            c.table
        );
        versions.insert(c.table, version);
        for (i, (literal, _, _)) in c.inserted.iter().enumerate() {
            db.exec(&format!("insert into {} values ({}, {literal})", c.table, 100 + i));
        }
    }

    let second = run_ok(&config, &catalog, Some(&first_state));
    for c in &cases {
        let seg = segment(&second, c.table);
        assert_eq!(seg[2], json!({"type": "ACTIVATE_VERSION", "stream": c.table, "version": versions[c.table]}), "same version every run");
        let mut want: Vec<Value> =
            c.initial.iter().enumerate().filter(|(_, (_, k))| *k == c.bookmark).map(|(i, (_, k))| json!({"id": i + 1, "k": k})).collect();
        want.extend(c.inserted.iter().enumerate().filter(|(_, (_, _, sent))| *sent).map(|(i, (_, k, _))| json!({"id": 100 + i, "k": k})));
        let got = records(&second, c.table);
        assert_same_rows(&got, &want, &format!("{}: exactly the rows with key >= the bookmark", c.table));
        let keys: Vec<&Value> = got.iter().map(|r| &r["k"]).collect();
        let want_keys: Vec<&Value> = want.iter().map(|r| &r["k"]).collect();
        assert_eq!(keys, want_keys, "{}: key order", c.table);
        assert_eq!(record_versions(&second, c.table), [versions[c.table]]);
    }
}

#[test]
fn incremental_ties_across_batch_boundaries_are_never_skipped() {
    let (db, config, mut catalog) = fixture(
        "create table ties (id int primary key, k int); create index on ties (k); \
         insert into ties values (1, 1), (2, 5), (3, 5), (4, 5), (5, 5), (6, 5), (7, 5), (8, 9)",
        json!({"itersize": 2}),
    );
    select(&mut catalog, "ties", "INCREMENTAL", Some("k"));
    let sid = id(&db, "public", "ties");
    let all: Vec<Value> =
        [(1, 1), (2, 5), (3, 5), (4, 5), (5, 5), (6, 5), (7, 5), (8, 9)].iter().map(|(i, k)| json!({"id": i, "k": k})).collect();
    let full = run_ok(&config, &catalog, None);
    assert_same_rows(&records(&full, "ties"), &all, "first run");

    let mut cuts = 0;
    for n in 1..=states(&full).len() {
        let (before, state) = cut_after_state(&full, n);
        let Some(value) = bookmark(&state, &sid).get("replication_key_value").cloned() else { continue };
        if records(&before, "ties").is_empty() {
            continue;
        }
        cuts += 1;
        let after = run_ok(&config, &catalog, Some(&state));
        let resent: Vec<Value> = all.iter().filter(|r| r["k"].as_i64() >= value.as_i64()).cloned().collect();
        assert_same_rows(&records(&after, "ties"), &resent, &format!("cut after STATE #{n} (bookmark {value}): rows with k >= bookmark"));
        let mut union: Vec<i64> =
            records(&before, "ties").iter().chain(records(&after, "ties").iter()).map(|r| r["id"].as_i64().unwrap()).collect();
        union.sort();
        union.dedup();
        assert_eq!(union, (1..=8).collect::<Vec<_>>(), "cut after STATE #{n}: nothing skipped");
    }
    assert!(cuts >= 4, "every batch boundary was tried ({cuts})");
}

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

#[test]
fn currently_syncing_stream_goes_first() {
    let (db, config, mut catalog) = fixture(
        "create table first_t (id int primary key, name text); insert into first_t values (1, 'first 1'); \
         create table second_t (id int primary key, name text); insert into second_t values (1, 'second 1'), (2, 'second 2')",
        json!({}),
    );
    select(&mut catalog, "first_t", "FULL_TABLE", None);
    select(&mut catalog, "second_t", "INCREMENTAL", Some("id"));
    let order = |messages: &[Value]| -> Vec<String> { per_stream(messages).into_iter().map(|(s, _)| s).collect() };

    let plain = run_ok(&config, &catalog, None);
    assert_eq!(order(&plain), ["first_t", "second_t"]);
    let second = id(&db, "public", "second_t");
    let state = json!({"currently_syncing": &second, "bookmarks": {}});
    let resumed = run_ok(&config, &catalog, Some(&state));
    assert_eq!(order(&resumed), ["second_t", "first_t"]);
    assert_eq!(states(&resumed)[0]["currently_syncing"], json!(second));
    assert_same_rows(&records(&resumed, "second_t"), &named_rows(1..=2, "second"), "second_t");
    assert_same_rows(&records(&resumed, "first_t"), &named_rows(1..=1, "first"), "first_t");
    assert_eq!(states(&resumed).pop().unwrap()["currently_syncing"], Value::Null);
}

// ---- databases, views, names, servers -------------------------------------------------------

#[test]
fn two_databases_in_one_catalog() {
    let db = TestDb::new();
    let other = db.sibling("other");
    db.exec(
        "create table in_first (id int primary key, name text); insert into in_first select i, 'first ' || i from generate_series(1, 3) i",
    );
    other.exec(
        "create table in_other (id int primary key, name text); insert into in_other select i, 'other ' || i from generate_series(1, 4) i",
    );
    db.grant_reader();
    other.grant_reader();
    let config = db.config_file(json!({}));
    let mut catalog = discover(&config);
    let ids: Vec<&str> = catalog["streams"].as_array().unwrap().iter().map(|s| s["tap_stream_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id(&db, "public", "in_first"), id(&other, "public", "in_other")]);
    assert_eq!(root(&mut catalog, "in_other")["database-name"], json!(other.name));
    select(&mut catalog, "in_first", "FULL_TABLE", None);
    select(&mut catalog, "in_other", "INCREMENTAL", Some("id"));

    let messages = run_ok(&config, &catalog, None);
    assert_eq!(records(&messages, "in_first"), named_rows(1..=3, "first"));
    assert_eq!(records(&messages, "in_other"), named_rows(1..=4, "other"));
    let end = states(&messages).pop().unwrap();
    assert_eq!(bookmark(&end, &id(&db, "public", "in_first"))["last_replication_method"], "FULL_TABLE");
    assert_eq!(bookmark(&end, &id(&other, "public", "in_other"))["replication_key_value"], json!(4));
}

#[test]
fn views_and_materialized_views() {
    let (db, config, mut catalog) = fixture(
        "create table base (id int primary key, k int, name text); \
         insert into base select i, i / 2, 'base ' || i from generate_series(1, 6) i; \
         create view v_full as select id, name from base; \
         create view v_inc as select id, k from base; \
         create materialized view mv as select id, name from base",
        json!({"itersize": 4}),
    );
    for view in ["v_full", "v_inc", "mv"] {
        let r = root(&mut catalog, view);
        assert_eq!(r["is-view"], json!(true));
        r["view-key-properties"] = json!(["id"]);
    }
    select(&mut catalog, "v_full", "FULL_TABLE", None);
    select(&mut catalog, "mv", "FULL_TABLE", None);
    select(&mut catalog, "v_inc", "INCREMENTAL", Some("k"));

    let out = sync(&config, &catalog, None).success();
    let messages = checked(&out);
    for view in ["v_full", "v_inc", "mv"] {
        let seg = segment(&messages, view);
        assert_eq!(seg[0]["key_properties"], json!(["id"]), "{view}");
        // A view's key columns may hold NULL (only a table's primary key cannot), as in singer-io.
        assert_eq!(seg[0]["schema"]["properties"]["id"]["type"], json!(["null", "integer"]), "{view}: a view key stays nullable");
        assert!(states(&seg).iter().all(|s| !s["bookmarks"].to_string().contains("last_pk_fetched")), "{view}: views do not resume");
    }
    assert_same_rows(&records(&messages, "v_full"), &named_rows(1..=6, "base"), "v_full");
    assert_same_rows(&records(&messages, "mv"), &named_rows(1..=6, "base"), "mv");
    let inc: Vec<Value> = (1..=6).map(|i| json!({"id": i, "k": i / 2})).collect();
    assert_same_rows(&records(&messages, "v_inc"), &inc, "v_inc");
    assert!(log_lines(&out, "WARN", &["create index"]).is_empty(), "no index advice for views:\n{}", out.stderr);

    // INCREMENTAL on the view continues from its bookmark (k = 3): the ties and the new row.
    db.exec("insert into base values (7, 4, 'base 7'), (8, 1, 'base 8')");
    let state = states(&messages).pop().unwrap();
    let mut only_inc = catalog.clone();
    root(&mut only_inc, "v_full")["selected"] = json!(false);
    root(&mut only_inc, "mv")["selected"] = json!(false);
    let next = run_ok(&config, &only_inc, Some(&state));
    assert_same_rows(&records(&next, "v_inc"), &[json!({"id": 6, "k": 3}), json!({"id": 7, "k": 4})], "v_inc from its bookmark");
}

#[test]
fn weird_identifiers_replicate() {
    let schema = "Weird \"S\"; -- Ünï";
    let (t1, t2) = ("Select", "from; drop table x; --");
    let (db, _, mut catalog) = fixture(
        r#"create schema "Weird ""S""; -- Ünï";
           create table "Weird ""S""; -- Ünï"."Select" ("Key ""K""; --" int primary key, "from" text, "Ünï código" text, "CamelCase" int);
           insert into "Weird ""S""; -- Ünï"."Select" select i, 'from ' || i, 'ü ' || i, -i from generate_series(1, 5) i;
           create table "Weird ""S""; -- Ünï"."from; drop table x; --" ("Select" int primary key, "order by" timestamptz, "ÄÖ" text);
           create index on "Weird ""S""; -- Ünï"."from; drop table x; --" ("order by");
           insert into "Weird ""S""; -- Ünï"."from; drop table x; --"
             select i, timestamptz '2024-06-01 00:00:00+00' + i * interval '1 hour', 'äö ' || i from generate_series(1, 4) i"#,
        json!({"full_table_order": "primary_key", "itersize": 2}),
    );
    // The catalog names the streams after their tables; the sync's config asks for schema_table.
    assert_eq!(stream_mut(&mut catalog, t1)["stream"], json!(t1));
    let config =
        db.config_file(json!({"full_table_order": "primary_key", "itersize": 2, "include_schemas_in_destination_stream_name": true}));
    select(&mut catalog, t1, "FULL_TABLE", None);
    select(&mut catalog, t2, "INCREMENTAL", Some("order by"));
    let (s1, s2) = (format!("{schema}_{t1}"), format!("{schema}_{t2}"));
    let (id1, id2) = (id(&db, schema, t1), id(&db, schema, t2));
    let row1 = |i: i64| json!({"Key \"K\"; --": i, "from": format!("from {i}"), "Ünï código": format!("ü {i}"), "CamelCase": -i});
    let row2 = |i: i64| json!({"Select": i, "order by": format!("2024-06-01T{i:02}:00:00+00:00"), "ÄÖ": format!("äö {i}")});

    let out = sync(&config, &catalog, None).success();
    let first = checked(&out);
    assert_eq!(records(&first, &s1), (1..=5).map(row1).collect::<Vec<_>>());
    assert_eq!(records(&first, &s2), (1..=4).map(row2).collect::<Vec<_>>());
    assert!(log_lines(&out, "WARN", &["create index"]).is_empty(), "the weird key has an index:\n{}", out.stderr);
    let end = states(&first).pop().unwrap();
    assert_eq!(bookmark(&end, &id2)["replication_key"], json!("order by"));
    assert_eq!(bookmark(&end, &id2)["replication_key_value"], json!("2024-06-01T04:00:00+00:00"));

    // FULL_TABLE resumes after the weird primary key; INCREMENTAL continues after the weird key.
    let (before, mid) = cut_after_state(&first, 2);
    assert_eq!(bookmark(&mid, &id1)["last_pk_fetched"], json!({"Key \"K\"; --": 2}));
    assert_eq!(records(&before, &s1), (1..=2).map(row1).collect::<Vec<_>>());
    db.exec(r#"insert into "Weird ""S""; -- Ünï"."from; drop table x; --" values (9, '2024-06-01 09:00:00+00', 'äö 9')"#);
    let mut state = mid.clone();
    state["bookmarks"][&id2] = bookmark(&end, &id2).clone();
    let second = run_ok(&config, &catalog, Some(&state));
    assert_eq!(records(&second, &s1), (3..=5).map(row1).collect::<Vec<_>>());
    assert_eq!(records(&second, &s2), [row2(4), row2(9)]);

    // The same table read by block ranges (the default order), resumed from a block mark whose
    // snapshot is older than every row: the catch-up query sends block 0's rows.
    let physical = db.config_file(json!({"itersize": 2, "include_schemas_in_destination_stream_name": true}));
    root(&mut catalog, t2)["selected"] = json!(false);
    let whole = run_ok(&physical, &catalog, None);
    assert_same_rows(&records(&whole, &s1), &(1..=5).map(row1).collect::<Vec<_>>(), "by blocks");
    let (_, at_start) = cut_after_state(&whole, 1);
    let mut resume = at_start.clone();
    let relfilenode: i64 =
        db.admin().query_one(r#"select pg_relation_filenode('"Weird ""S""; -- Ünï"."Select"')::bigint"#, &[]).unwrap().get(0);
    resume["bookmarks"][&id1]["block_resume"] = json!({"next_block": 1, "relfilenode": relfilenode, "snapshot_xmin": 3});
    let out = sync(&physical, &catalog, Some(&resume)).success();
    assert!(out.stderr.contains("resuming an interrupted full table sync at block 1"), "{}", out.stderr);
    assert!(out.stderr.contains("sent 5 rows changed before block 1"), "{}", out.stderr);
    assert_same_rows(&records(&checked(&out), &s1), &(1..=5).map(row1).collect::<Vec<_>>(), "resumed by blocks");
}

/// A superuser session on the hot standby, or `None` while the database has not arrived there.
fn standby_client(dbname: &str) -> Option<postgres::Client> {
    let s = server();
    postgres::Config::new().host(&s.socket_dir).port(s.standby_port).user(&s.admin_user).dbname(dbname).connect(NoTls).ok()
}

#[test]
fn sync_from_the_hot_standby() {
    let db = TestDb::new();
    db.exec(
        "create table st_full (id int primary key, name text); insert into st_full select i, 'full ' || i from generate_series(1, 5) i; \
         create table st_inc (id int primary key, name text); insert into st_inc select i, 'inc ' || i from generate_series(1, 6) i",
    );
    db.grant_reader();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = standby_client(&db.name)
            .and_then(|mut c| {
                // The grants commit after the rows: wait for them too, or discovery sees nothing.
                c.query_one(
                    "select (select count(*) from st_full) + (select count(*) from st_inc), has_table_privilege($1, 'st_inc', 'SELECT')",
                    &[&db.role],
                )
                .ok()
            })
            .map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1)));
        if seen == Some((11, true)) {
            break;
        }
        assert!(Instant::now() < deadline, "the standby did not replay the test tables within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = db.config_file(json!({"port": server().standby_port, "itersize": 4}));
    let mut catalog = discover(&config);
    select(&mut catalog, "st_full", "FULL_TABLE", None);
    select(&mut catalog, "st_inc", "INCREMENTAL", Some("id"));
    let messages = run_ok(&config, &catalog, None);
    assert_eq!(records(&messages, "st_full"), named_rows(1..=5, "full"));
    assert_eq!(records(&messages, "st_inc"), named_rows(1..=6, "inc"));
}

// ---- failures and warnings -----------------------------------------------------------------

#[test]
fn vanished_or_unreadable_streams_are_skipped_and_the_others_complete() {
    let (db, config, mut catalog) = fixture(
        "create table a_ok (id int primary key, name text); insert into a_ok select i, 'a ' || i from generate_series(1, 4) i; \
         create table b_col (id int primary key, c text, d text); insert into b_col values (1, 'c', 'd'); \
         create table c_gone (id int primary key); insert into c_gone values (1); \
         create table d_revoked (id int primary key); insert into d_revoked values (1); \
         create table e_ok (id int primary key, name text); insert into e_ok select i, 'e ' || i from generate_series(1, 3) i",
        json!({"itersize": 2}),
    );
    for t in ["a_ok", "b_col", "c_gone", "d_revoked"] {
        select(&mut catalog, t, "FULL_TABLE", None);
    }
    select(&mut catalog, "e_ok", "INCREMENTAL", Some("id"));
    db.exec(&format!("alter table b_col drop column c; drop table c_gone; revoke select on d_revoked from {}", db.role));

    let out = sync(&config, &catalog, None).fails_with(65, &id(&db, "public", "b_col"));
    let messages = checked(&out);
    let streams: Vec<String> = per_stream(&messages).into_iter().map(|(s, _)| s).collect();
    assert_eq!(streams, ["a_ok", "e_ok"], "skipped streams write nothing");
    assert_eq!(records(&messages, "a_ok"), named_rows(1..=4, "a"));
    assert_eq!(records(&messages, "e_ok"), named_rows(1..=3, "e"));
    for (table, needle) in [("b_col", "column \"c\""), ("c_gone", "c_gone"), ("d_revoked", "cannot read table")] {
        let sid = id(&db, "public", table);
        assert_eq!(log_lines(&out, "ERROR", &[&sid, needle]).len(), 1, "one ERROR line names {sid} and {needle}:\n{}", out.stderr);
    }
    let end = states(&messages).pop().unwrap();
    assert_eq!(end["currently_syncing"], Value::Null);
    let mut ids: Vec<&String> = end["bookmarks"].as_object().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, [&id(&db, "public", "a_ok"), &id(&db, "public", "e_ok")]);
}

#[test]
fn replication_key_without_an_index_is_warned_about() {
    let (db, config, mut catalog) = fixture(
        "create table idx_yes (id int primary key, k int); create index on idx_yes (k); \
         create table idx_pk (k int primary key); \
         create table idx_no (id int primary key, k int); \
         create table idx_second (id int primary key, k int); create index on idx_second (id, k); \
         insert into idx_yes values (1, 1); insert into idx_pk values (1); insert into idx_no values (1, 1); insert into idx_second values (1, 1)",
        json!({}),
    );
    for t in ["idx_yes", "idx_pk", "idx_no", "idx_second"] {
        select(&mut catalog, t, "INCREMENTAL", Some("k"));
    }
    let out = sync(&config, &catalog, None).success();
    checked(&out);
    for (table, warned) in [("idx_yes", false), ("idx_pk", false), ("idx_no", true), ("idx_second", true)] {
        let advice = format!("create index on \"public\".\"{table}\" (\"k\")");
        let lines = log_lines(&out, "WARN", &[&id(&db, "public", table), "create index"]);
        assert_eq!(lines.len(), usize::from(warned), "{table}:\n{}", out.stderr);
        assert!(lines.iter().all(|l| l.contains(&advice)), "{table}: {lines:?}");
    }
}

// ---- bookmark values of every orderable key type ----------------------------------------------

/// Key types whose values go through JSON and back as a bookmark: (table suffix, type, three
/// ascending literals, or two for boolean).
const KEY_TYPES: &[(&str, &str, &[&str])] = &[
    ("int2", "smallint", &["-5", "0", "7"]),
    ("int8", "bigint", &["-9000000000", "1", "9000000000"]),
    ("numeric", "numeric", &["-1.5", "0.10", "12345678901234567890.123456789"]),
    ("real", "real", &["-1.5", "0.1", "3.4e38"]),
    ("float8", "double precision", &["-1e300", "0.1", "1e300"]),
    ("money", "money", &["-1.50", "0.10", "1000.25"]),
    ("varchar", "varchar(10)", &["'ab'", "'b\"c'", "'zz'"]),
    ("bpchar", "char(4)", &["'a'", "'b b'", "'c'"]),
    ("citext", "citext", &["'a'", "'B'", "'c'"]),
    (
        "uuid",
        "uuid",
        &["'00000000-0000-0000-0000-000000000001'", "'00000000-0000-0000-0000-0000000000aa'", "'ffffffff-0000-0000-0000-000000000000'"],
    ),
    ("date", "date", &["'2024-01-01'", "'2024-06-01'", "'9999-12-31'"]),
    ("ts", "timestamp", &["'2024-06-01 12:00:00'", "'2024-06-01 12:00:00.000001'", "'2024-06-02 00:00:00'"]),
    ("tstz", "timestamptz", &["'2024-06-01 12:00:00+00'", "'2024-06-01 12:00:00.000001+00'", "'2024-06-02 00:00:00+05'"]),
    ("time", "time", &["'00:00:00'", "'12:00:00.5'", "'23:59:59.999999'"]),
    ("timetz", "timetz", &["'12:00:00+02'", "'12:00:00+00'", "'12:00:00-02'"]),
    ("interval", "interval", &["'1 day'", "'1 mon'", "'1 year 2 mons 3 days 04:05:06.7'"]),
    ("bool", "boolean", &["false", "true"]),
    ("inet", "inet", &["'10.0.0.1'", "'10.0.0.2'", "'192.168.0.1/24'"]),
    ("mood", "mood", &["'sad'", "'ok'", "'happy'"]),
    ("bit8", "bit(8)", &["B'00000001'", "B'00000010'", "B'10000000'"]),
    ("oid", "oid", &["1", "2", "4000000000"]),
    ("jsonb", "jsonb", &["'\"a\"'", "'1'", "'{\"a\": 1}'"]),
    ("posint", "posint", &["1", "2", "30"]),
];

/// A database with one table `kt_<suffix> (id int, k <type> primary key)` per key type, rows
/// with ids 1.. in key order, and its config and catalog.
fn key_type_fixture(types: &[(&str, &str, &[&str])]) -> (TestDb, PathBuf, Value) {
    let mut sql = String::from(
        "create extension if not exists citext; create type mood as enum ('sad', 'ok', 'happy'); \
                                create domain posint as int check (value > 0);",
    );
    for (suffix, ty, values) in types {
        sql.push_str(&format!("create table kt_{suffix} (id int, k {ty} primary key);"));
        for (i, v) in values.iter().enumerate() {
            sql.push_str(&format!("insert into kt_{suffix} values ({}, {v});", i + 1));
        }
    }
    fixture(&sql, json!({"full_table_order": "primary_key", "itersize": 1}))
}

/// Syncs every `kt_*` table twice and checks the bookmarks round-trip: INCREMENTAL's second
/// run sends exactly the last row again; a FULL_TABLE resumed after its first row sends the others.
fn assert_bookmarks_round_trip(types: &[(&str, &str, &[&str])]) {
    let (db, config, catalog) = key_type_fixture(types);
    let ids =
        |messages: &[Value], table: &str| -> Vec<i64> { records(messages, table).iter().map(|r| r["id"].as_i64().unwrap()).collect() };

    let mut incremental = catalog.clone();
    for (suffix, _, _) in types {
        select(&mut incremental, &format!("kt_{suffix}"), "INCREMENTAL", Some("k"));
    }
    let first = run_ok(&config, &incremental, None);
    let second = run_ok(&config, &incremental, Some(&states(&first).pop().unwrap()));
    let mut full = catalog.clone();
    for (suffix, _, _) in types {
        select(&mut full, &format!("kt_{suffix}"), "FULL_TABLE", None);
    }
    let whole = run_ok(&config, &full, None);
    // The state right after each table's first record, all in one state file.
    let mut bookmarks = serde_json::Map::new();
    for (suffix, _, _) in types {
        let table = format!("kt_{suffix}");
        let seg = segment(&whole, &table);
        let after_first = seg.iter().skip_while(|m| m["type"] != "RECORD").find(|m| m["type"] == "STATE").unwrap();
        let sid = id(&db, "public", &table);
        bookmarks.insert(sid.clone(), bookmark(&after_first["value"], &sid).clone());
    }
    let resumed = run_ok(&config, &full, Some(&json!({"bookmarks": bookmarks})));

    let mut failures = Vec::new();
    for (suffix, ty, values) in types {
        let table = format!("kt_{suffix}");
        let n = values.len() as i64;
        let all: Vec<i64> = (1..=n).collect();
        for (what, got, want) in [
            ("incremental first run", ids(&first, &table), all.clone()),
            ("incremental second run", ids(&second, &table), vec![n]),
            ("full table", ids(&whole, &table), all.clone()),
            ("full table resumed after the first row", ids(&resumed, &table), (2..=n).collect()),
        ] {
            if got != want {
                failures.push(format!("{ty}: {what}: got ids {got:?}, want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "bookmarks do not round-trip:\n{}", failures.join("\n"));
}

#[test]
fn bookmarks_round_trip_for_every_orderable_key_type() {
    assert_bookmarks_round_trip(KEY_TYPES);
}

// ---- bookmarks of keys whose JSON form is not PostgreSQL's input syntax --------------------------

#[test]
fn bytea_key_bookmarks_round_trip() {
    assert_bookmarks_round_trip(&[("bytea", "bytea", &["'\\x01'", "'\\x02'", "'\\x10'"])]);
}

#[test]
fn key_years_outside_1_to_9999_round_trip() {
    assert_bookmarks_round_trip(&[
        ("date_big", "date", &["'2024-01-01'", "'10000-01-01'", "'20000-01-01'"]),
        ("ts_bc", "timestamp", &["'0044-03-15 00:00:00 BC'", "'0001-01-01 00:00:00 BC'", "'2024-01-01 00:00:00'"]),
    ]);
}

#[test]
fn bit1_key_bookmarks_round_trip() {
    assert_bookmarks_round_trip(&[("bit1", "bit(1)", &["B'0'", "B'1'"])]);
}

#[test]
fn full_table_resume_after_an_infinite_primary_key_sends_nothing_twice() {
    let (db, config, mut catalog) = fixture(
        "create table inf (k timestamptz primary key, n int); insert into inf values ('2024-01-01 00:00:00+00', 1), ('infinity', 2)",
        json!({"full_table_order": "primary_key", "itersize": 1}),
    );
    select(&mut catalog, "inf", "FULL_TABLE", None);
    let full = run_ok(&config, &catalog, None);
    // STATE #3 follows the batch holding the infinity row.
    let (before, state) = cut_after_state(&full, 3);
    assert_eq!(
        bookmark(&state, &id(&db, "public", "inf"))["last_pk_fetched"],
        json!({"k": "infinity"}),
        "the bookmark keeps the real value, not the sentinel"
    );
    let after = run_ok(&config, &catalog, Some(&state));
    let union: Vec<Value> = records(&before, "inf").into_iter().chain(records(&after, "inf")).collect();
    assert_same_rows(&union, &records(&full, "inf"), "every row exactly once");
}

#[test]
fn key_properties_are_always_emitted() {
    let (_db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); create table cp (p pair primary key, n int); insert into cp values (row(1, 'a'), 1)",
        json!({}),
    );
    select(&mut catalog, "cp", "FULL_TABLE", None);
    let out = sync(&config, &catalog, None);
    if out.code == 0 {
        let messages = checked(&out);
        let schema = &messages[0];
        for key in schema["key_properties"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            assert!(schema["schema"]["properties"].get(key).is_some(), "key property {key} is not in the SCHEMA: {schema}");
            assert!(records(&messages, "cp").iter().all(|r| r.get(key).is_some()), "key property {key} is not in the records");
        }
    }
}

// ---- keys of extension types, unorderable or unbookmarkable keys, view keys ------------------

/// citext installed in its own schema (as Heroku installs extensions in `heroku_ext`): the
/// bookmark comparison must use citext's own case-insensitive operators, as `order by` does, or
/// rows are skipped (INCREMENTAL) or resumed past (FULL_TABLE).
#[test]
fn citext_keys_from_an_extension_schema_compare_as_citext() {
    let (db, config, mut catalog) = fixture(
        "create schema ext; grant usage on schema ext to public; create extension citext schema ext; \
         create table ci (id int primary key, code ext.citext); insert into ci values (1, 'a'), (2, 'B'), (3, 'c'); \
         create table cipk (code ext.citext primary key, n int); insert into cipk values ('a', 1), ('B', 2), ('c', 3)",
        json!({"full_table_order": "primary_key", "itersize": 1, "max_run_seconds": 0}),
    );
    select(&mut catalog, "ci", "INCREMENTAL", Some("code"));
    // Run 1 stops after one row, bookmark "a"; run 2 must send a (again), B and c.
    let first = run_ok(&config, &catalog, None);
    assert_eq!(records(&first, "ci").iter().map(|r| r["code"].clone()).collect::<Vec<_>>(), [json!("a")]);
    let state = states(&first).pop().unwrap();
    let unlimited = db.config_file(json!({"full_table_order": "primary_key"}));
    let second = run_ok(&unlimited, &catalog, Some(&state));
    assert_eq!(records(&second, "ci").iter().map(|r| r["code"].clone()).collect::<Vec<_>>(), [json!("a"), json!("B"), json!("c")]);

    let mut catalog = discover(&config);
    select(&mut catalog, "cipk", "FULL_TABLE", None);
    let first = run_ok(&config, &catalog, None);
    let state = states(&first).pop().unwrap();
    assert_eq!(bookmark(&state, &id(&db, "public", "cipk"))["last_pk_fetched"], json!({"code": "a"}));
    let second = run_ok(&unlimited, &catalog, Some(&state));
    assert_eq!(records(&second, "cipk").iter().map(|r| r["code"].clone()).collect::<Vec<_>>(), [json!("B"), json!("c")]);
}

/// An array primary key cannot be a resume point: the table is read without one (and a later
/// run does not trip over its own state). An array, hstore or json replication key, or one the
/// server cannot order, is refused before any output.
#[test]
fn unbookmarkable_and_unorderable_keys() {
    let (_db, config, mut catalog) = fixture(
        "create extension hstore; \
         create table arrpk (k int[] primary key, v text); insert into arrpk select array[i, i + 1], 'v' || i from generate_series(1, 5) i; \
         create table ak (id int primary key, tags int[]); insert into ak values (1, '{1}'); \
         create table jk (id int primary key, doc json); insert into jk values (1, '{}'); \
         create table pk_point (id int primary key, p point); insert into pk_point values (1, '(1,2)')",
        json!({"itersize": 2}),
    );
    select(&mut catalog, "arrpk", "FULL_TABLE", None);
    let first = run_ok(&config, &catalog, None);
    assert_eq!(records(&first, "arrpk").len(), 5);
    let mid = cut_after_state(&first, 2).1;
    assert!(bookmark(&mid, &bookmark_id(&first, "arrpk")).get("last_pk_fetched").is_none(), "no resume point for an array key");
    let again = run_ok(&config, &catalog, Some(&states(&first).pop().unwrap()));
    assert_eq!(records(&again, "arrpk").len(), 5);

    for (table, key) in [("ak", "tags"), ("jk", "doc"), ("pk_point", "p")] {
        let mut catalog = discover(&config);
        select(&mut catalog, table, "INCREMENTAL", Some(key));
        let out = sync(&config, &catalog, None);
        assert_eq!(out.code, 65, "{table}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{table}: nothing is written before the refusal");
        assert!(out.stderr.contains(&format!("replication-key \"{key}\"")), "{table}: {}", out.stderr);
    }
}

/// The tap_stream_id of the only stream in a run's messages whose SCHEMA names `stream`.
fn bookmark_id(messages: &[Value], stream: &str) -> String {
    let state = states(messages).pop().unwrap();
    state["bookmarks"].as_object().unwrap().keys().find(|k| k.ends_with(&format!("-{stream}"))).unwrap().clone()
}

/// A view key column that holds NULL stays nullable in the SCHEMA, so every record validates.
#[test]
fn view_key_columns_stay_nullable() {
    let (_db, config, mut catalog) = fixture(
        "create table base (id int primary key); insert into base values (1), (2); \
         create view vw as select id, case when id = 2 then null else 'k' || id end as code from base",
        json!({}),
    );
    select(&mut catalog, "vw", "FULL_TABLE", None);
    root(&mut catalog, "vw")["view-key-properties"] = json!(["code"]);
    let messages = run_ok(&config, &catalog, None);
    let schema = messages.iter().find(|m| m["type"] == "SCHEMA").unwrap();
    assert_eq!(schema["key_properties"], json!(["code"]));
    assert_eq!(schema["schema"]["properties"]["code"]["type"], json!(["null", "string"]));
    assert_eq!(records(&messages, "vw")[1]["code"], Value::Null);
}

/// A max_run_seconds too large for the clock means no deadline, not a panic.
#[test]
fn huge_max_run_seconds_is_no_deadline() {
    let (_db, config, mut catalog) =
        fixture("create table t (id int primary key); insert into t values (1), (2)", json!({"max_run_seconds": 9223372036854775000u64}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    assert_eq!(records(&run_ok(&config, &catalog, None), "t").len(), 2);
}

// ---- FULL_TABLE in storage order (block ranges, the default) -------------------------------

/// `block_resume.next_block` of `id`'s bookmark in a STATE value, if there is one.
fn next_block(state: &Value, id: &str) -> Option<u64> {
    bookmark(state, id).get("block_resume").map(|m| m["next_block"].as_u64().expect("an integer next_block"))
}

/// How often each `id` occurs in `records`.
fn id_counts(records: &[Value]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r["id"].as_i64().expect("an integer id")).or_default() += 1;
    }
    counts
}

#[test]
fn physical_full_table_reads_block_ranges_and_resumes_at_every_state() {
    // About 5 rows per 8 kB block (fillfactor 10) and no primary key: resumable all the same.
    let (db, config, mut catalog) = fixture(
        "create table blk (id int not null, pad text) with (fillfactor = 10); \
         insert into blk select i, repeat('p', 100) from generate_series(1, 60) i",
        json!({"itersize": 10}),
    );
    select(&mut catalog, "blk", "FULL_TABLE", None);
    let sid = id(&db, "public", "blk");
    let all: Vec<Value> = (1..=60).map(|i| json!({"id": i, "pad": "p".repeat(100)})).collect();
    let full = run_ok(&config, &catalog, None);
    assert_same_rows(&records(&full, "blk"), &all, "full run");
    let version = record_versions(&full, "blk")[0];
    let kinds = shape(&full);
    assert_eq!(kinds[..3], strings(&["SCHEMA", "STATE", "ACTIVATE_VERSION"]), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 3..], strings(&["ACTIVATE_VERSION", "STATE", "STATE"]), "{kinds:?}");

    // Each range's STATE says which rows came before it: exactly those stored before next_block.
    let mut marks = Vec::new();
    let mut sent = std::collections::BTreeSet::new();
    for m in &full {
        if m["type"] == "RECORD" {
            sent.insert(m["record"]["id"].as_i64().unwrap());
        } else if m["type"] == "STATE"
            && let Some(b) = next_block(&m["value"], &sid)
        {
            if b < u64::from(u32::MAX) {
                assert_eq!(sent, support::ids_before_block(&db, "blk", b), "the rows sent before the STATE with next_block {b}");
            } else {
                assert_eq!(sent.len(), 60, "the last, open-ended range ends the table");
            }
            marks.push(b);
        }
    }
    assert!(marks.len() >= 4 && marks.windows(2).all(|w| w[0] < w[1]), "several block ranges, in order: {marks:?}");
    let end = states(&full).pop().unwrap();
    assert_eq!(end, json!({"currently_syncing": null, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}}));

    // STATE #1 starts the stream; #2.. follow the ranges. Cut after each and resume.
    for n in 2..=marks.len() + 1 {
        let (before, state) = cut_after_state(&full, n);
        assert_eq!(state["currently_syncing"], json!(sid));
        let again = support::catch_up_ids(&db, "blk", bookmark(&state, &sid));
        let out = sync(&config, &catalog, Some(&state)).success();
        assert!(out.stderr.contains("resuming an interrupted full table sync at block"), "cut after STATE #{n}:\n{}", out.stderr);
        let after = checked(&out);
        let union: Vec<Value> = records(&before, "blk").into_iter().chain(records(&after, "blk")).collect();
        let counts = id_counts(&union);
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>(), "cut after STATE #{n}: every row");
        let twice: Vec<i64> = counts.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).collect();
        assert!(
            twice.iter().all(|i| again.contains(i) && counts[i] == 2),
            "cut after STATE #{n}: sent twice {twice:?}, expected only {again:?}"
        );
        let activations: Vec<&Value> = after.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").map(|m| &m["version"]).collect();
        assert_eq!(activations, [&json!(version)], "cut after STATE #{n}: the interrupted version is activated");
        assert!(record_versions(&after, "blk").iter().all(|v| *v == version), "cut after STATE #{n}: the resumed records keep the version");
        assert_eq!(states(&after).pop().unwrap(), end, "cut after STATE #{n}");
    }
}

#[test]
fn physical_resume_sends_rows_changed_or_moved_into_blocks_already_read() {
    // About 89 rows per full block, 7 blocks; ranges of about 2 blocks.
    let (db, config, mut catalog) = fixture(
        "create table mv (id int primary key, v text); insert into mv select i, repeat('a', 50) from generate_series(1, 600) i",
        json!({"itersize": 100}),
    );
    select(&mut catalog, "mv", "FULL_TABLE", None);
    let sid = id(&db, "public", "mv");
    let full = run_ok(&config, &catalog, None);
    assert_eq!(records(&full, "mv").len(), 600);
    let n = (1..).find(|&n| next_block(&cut_after_state(&full, n).1, &sid).is_some_and(|b| b >= 3)).unwrap();
    let (before, state) = cut_after_state(&full, n);
    let b = next_block(&state, &sid).unwrap();
    let last_block: i64 = db.admin().query_one("select max((ctid::text::point)[0])::bigint from mv", &[]).unwrap().get(0);
    assert!((b as i64) < last_block, "the cut leaves full blocks unread (next_block {b}, last block {last_block})");

    // While the sync is interrupted: empty block 0 (vacuum records its free space), move an
    // unread row there by growing it, insert rows (once the last block is full they go to block
    // 0 too), change a row already read and one not yet read.
    let moved: i32 = db.admin().query_one(&format!("select id from mv where ctid >= '({b},0)' order by ctid limit 1"), &[]).unwrap().get(0);
    let early: i32 =
        db.admin().query_one("select id from mv where ctid >= '(1,0)' and ctid < '(2,0)' order by ctid limit 1", &[]).unwrap().get(0);
    db.exec("delete from mv where ctid < '(1,0)'");
    db.exec("vacuum mv");
    db.exec(&format!("update mv set v = repeat('z', 300) where id = {moved}"));
    db.exec("insert into mv select i, 'new ' || i from generate_series(1001, 1300) i");
    db.exec(&format!("update mv set v = 'changed early' where id = {early}"));
    db.exec("update mv set v = 'changed late' where id = 600");
    let in_block = |id: i64| -> i64 {
        db.admin().query_one("select (ctid::text::point)[0]::bigint from mv where id = $1", &[&(id as i32)]).unwrap().get(0)
    };
    assert!(in_block(i64::from(moved)) < b as i64, "the grown row {moved} moved into a block already read");
    assert!((1001..=1300).any(|i| in_block(i) < b as i64), "new rows went into blocks already read");

    let out = sync(&config, &catalog, Some(&state)).success();
    let after = checked(&out);
    assert_eq!(record_versions(&after, "mv"), [record_versions(&full, "mv")[0]], "the resume keeps the version");
    // A target that upserts by key ends with exactly the table: the last record of every id is
    // the row as it is now (and the deleted rows are not sent again).
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    for r in records(&before, "mv").into_iter().chain(records(&after, "mv")) {
        last.insert(r["id"].as_i64().unwrap(), r);
    }
    let now: BTreeMap<i64, Value> = db
        .admin()
        .query("select id, v from mv", &[])
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), json!({"id": r.get::<_, i32>(0), "v": r.get::<_, String>(1)})))
        .collect();
    for (i, row) in &now {
        assert_eq!(last.get(i), Some(row), "row {i} as it is now");
    }
    let after_ids = id_counts(&records(&after, "mv"));
    assert!(after_ids.keys().all(|i| now.contains_key(i)), "only live rows are sent");
    for i in [i64::from(moved), i64::from(early), 600, 1001, 1300] {
        assert!(after_ids.contains_key(&i), "row {i} changed in the gap is sent by the resumed run");
    }
}

#[test]
fn physical_resume_restarts_after_a_rewrite_and_partitioned_tables_use_the_key() {
    let (db, config, mut catalog) = fixture(
        "create table rw (id int primary key, pad text) with (fillfactor = 10); \
         insert into rw select i, repeat('r', 100) from generate_series(1, 40) i; \
         create table parted (id int primary key, v text) partition by range (id); \
         create table parted_1 partition of parted for values from (1) to (100); \
         create table parted_2 partition of parted for values from (100) to (200); \
         insert into parted select i, 'v' || i from generate_series(1, 150) i",
        json!({"itersize": 10}),
    );
    select(&mut catalog, "rw", "FULL_TABLE", None);
    let sid = id(&db, "public", "rw");
    let full = run_ok(&config, &catalog, None);
    let version = record_versions(&full, "rw")[0];
    let (_, state) = cut_after_state(&full, 3);
    assert!(next_block(&state, &sid).is_some());

    // VACUUM FULL gives the table new storage: block numbers mean nothing now.
    db.exec("vacuum full rw");
    let out = sync(&config, &catalog, Some(&state)).success();
    assert!(out.stderr.contains("was rewritten"), "{}", out.stderr);
    let after = checked(&out);
    assert_eq!(id_counts(&records(&after, "rw")), (1..=40).map(|i| (i, 1)).collect::<BTreeMap<_, _>>(), "every row once");
    let new_version = record_versions(&after, "rw");
    assert_eq!(new_version.len(), 1);
    assert_ne!(new_version[0], version, "a new version");

    // A mark from a snapshot the server has not reached (a state from another server, say)
    // cannot be trusted either.
    let mut future = state.clone();
    future["bookmarks"][&sid]["block_resume"]["snapshot_xmin"] = json!(1u64 << 40);
    let again = checked(&sync(&config, &catalog, Some(&future)).success());
    assert_eq!(records(&again, "rw").len(), 40);
    assert_ne!(record_versions(&again, "rw"), [version]);

    // A block_resume of another shape is refused before any output.
    let mut bad = state.clone();
    bad["bookmarks"][&sid]["block_resume"] = json!("12");
    let refused = sync(&config, &catalog, Some(&bad)).fails_with(65, "block_resume");
    assert!(refused.stdout.is_empty());
    bad["bookmarks"][&sid]["block_resume"] = json!({"next_block": 1u64 << 32, "relfilenode": 1, "snapshot_xmin": 1});
    let refused = sync(&config, &catalog, Some(&bad)).fails_with(65, "block_resume");
    assert!(refused.stdout.is_empty(), "block numbers are 32-bit");

    // A partitioned table has no blocks of its own: it is read in primary key order.
    select(&mut catalog, "parted", "FULL_TABLE", None);
    root(&mut catalog, "rw")["selected"] = json!(false);
    let out = sync(&config, &catalog, None).success();
    assert!(out.stderr.contains("partitioned table"), "{}", out.stderr);
    let parted = checked(&out);
    let pid = id(&db, "public", "parted");
    assert_eq!(records(&parted, "parted").iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), (1..=150).collect::<Vec<_>>());
    assert_eq!(bookmark(&cut_after_state(&parted, 2).1, &pid)["last_pk_fetched"], json!({"id": 10}));
}

#[test]
fn physical_reads_fall_back_to_key_order_where_blocks_cannot_be_read() {
    let (db, config, _) = fixture(
        "create table colg (id int primary key, secret text); insert into colg select i, 's' from generate_series(1, 5) i; \
         create table inh_parent (id int primary key, v text); create table inh_child () inherits (inh_parent); \
         insert into inh_parent select i, 'p' from generate_series(1, 3) i; \
         insert into inh_child select i, 'c' from generate_series(4, 6) i",
        json!({"itersize": 2}),
    );
    // ctid and xmin are not covered by column grants; an inheritance parent's query reads its
    // children too, whose blocks are not the parent's.
    db.exec(&format!("revoke select on colg from {role}; grant select (id) on colg to {role}", role = db.role));
    let mut catalog = discover(&config);
    select(&mut catalog, "colg", "FULL_TABLE", None);
    select(&mut catalog, "inh_parent", "FULL_TABLE", None);
    let out = sync(&config, &catalog, None).success();
    assert!(out.stderr.contains("only some columns"), "{}", out.stderr);
    assert!(out.stderr.contains("inheritance children"), "{}", out.stderr);
    let messages = checked(&out);
    let ids = |stream: &str| records(&messages, stream).iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids("colg"), (1..=5).collect::<Vec<_>>(), "in key order");
    assert_eq!(ids("inh_parent"), (1..=6).collect::<Vec<_>>(), "the children's rows too, in key order");
    for (table, first_batch_end) in [("colg", 2), ("inh_parent", 2)] {
        let seg = segment(&messages, table);
        let (_, state) = cut_after_state(&seg, 2);
        assert_eq!(bookmark(&state, &id(&db, "public", table))["last_pk_fetched"], json!({"id": first_batch_end}), "{table}");
    }
}
