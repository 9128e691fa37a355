//! Bookmark values end to end: for every orderable key type (and the keys whose JSON form is not
//! PostgreSQL's input syntax: bytea, years outside 1..9999, bit(1), infinite keys), the value a
//! run writes in its STATE resumes the next run at exactly the next row.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::output::{assert_same_rows, bookmark, cut_after_state, records, run_ok, segment, states};
use crate::support::{TestDb, fixture, id, select};

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
