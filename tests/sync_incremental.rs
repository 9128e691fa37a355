//! INCREMENTAL end to end: key order with ties, NULL keys and collations, ties across batch
//! boundaries, keys of extension types (citext), keys that cannot be bookmarked or ordered, and
//! the warning for a replication key without an index.
//!
//! Row sets are compared exactly (as multisets of records), never by count alone; every run's
//! RECORDs are checked against their SCHEMA.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::output::{
    assert_same_rows, bookmark, checked, cut_after_state, log_lines, record_versions, records, run_ok, segment, shape, states, stream_shape,
};
use crate::support::{discover, fixture, id, select, sync};

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

// ---- failures and warnings -----------------------------------------------------------------

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
