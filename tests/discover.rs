//! `--discover` against the fixture schema: the golden catalog, filters, several databases,
//! privileges, and stable output.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{TestDb, discover, tap};

/// The fixture schema (tests/fixtures/catalog_fixture.sql) with the reader's grants: all of
/// `public`, one table of the weird schema, nothing of `private` and `Weird "Schema".hidden`.
fn fixture_db() -> TestDb {
    let db = TestDb::new();
    db.exec(include_str!("fixtures/catalog_fixture.sql"));
    db.exec(&format!(
        "grant usage on schema public, \"Weird \"\"Schema\"\"\" to {r}; grant select on all tables in schema public to {r}; \
         grant select on \"Weird \"\"Schema\"\"\".\"Table; drop table x; --\" to {r}",
        r = db.role
    ));
    db
}

/// Replaces the per-test database name with `fixture` so the catalog compares with the golden one.
fn normalize(catalog: &Value, db: &str) -> String {
    let text = serde_json::to_string_pretty(catalog).unwrap();
    text.replace(&format!("\"{db}-"), "\"fixture-").replace(&format!("\"{db}\""), "\"fixture\"")
}

#[test]
fn fixture_catalog_matches_golden() {
    let db = fixture_db();
    let catalog = discover(&db.config_file(json!({})));
    let got = normalize(&catalog, &db.name);
    let golden_path = concat!(env!("CARGO_MANIFEST_DIR"), "/catalogs/fixture.json");
    if std::env::var("TAP_HEROKU_BLESS").is_ok() {
        std::fs::write(golden_path, format!("{got}\n")).unwrap();
    }
    let want = std::fs::read_to_string(golden_path).expect("catalogs/fixture.json exists (TAP_HEROKU_BLESS=1 writes it)");
    if got.trim_end() != want.trim_end() {
        // Kept for the diff below, in cargo's scratch directory for integration tests.
        let got_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tap-heroku-fixture-got.json");
        std::fs::write(&got_path, &got).unwrap();
        panic!(
            "discovered catalog differs from catalogs/fixture.json; got is in {}:\ndiff {golden_path} {}",
            got_path.display(),
            got_path.display()
        );
    }
}

#[test]
fn catalog_covers_views_partitions_and_privileges() {
    let db = fixture_db();
    let catalog = discover(&db.config_file(json!({})));
    let ids: Vec<&str> = catalog["streams"].as_array().unwrap().iter().map(|s| s["tap_stream_id"].as_str().unwrap()).collect();
    let id = |t: &str| format!("{}-public-{t}", db.name);
    for t in ["numbers", "texts", "times", "misc", "arrays", "no_key", "events", "events_2024", "events_2025", "texts_view", "numbers_mv"] {
        assert!(ids.contains(&id(t).as_str()), "{t} missing from {ids:?}");
    }
    assert!(ids.contains(&format!("{}-Weird \"Schema\"-Table; drop table x; --", db.name).as_str()));
    assert!(!ids.iter().any(|i| i.ends_with("-hidden") || i.contains("private")), "ungranted tables are not listed: {ids:?}");
    assert!(!ids.iter().any(|i| i.contains("pg_catalog") || i.contains("information_schema")));
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "streams are sorted by tap_stream_id");

    let root =
        |t: &str| catalog["streams"].as_array().unwrap().iter().find(|s| s["table_name"] == t).unwrap()["metadata"][0]["metadata"].clone();
    assert_eq!(root("texts_view")["is-view"], json!(true));
    assert_eq!(root("numbers_mv")["is-view"], json!(true));
    assert_eq!(root("events")["is-view"], json!(false));
    assert_eq!(root("events")["table-key-properties"], json!(["id", "created_at"]));
    assert_eq!(root("texts")["table-key-properties"], json!(["code", "seq"]));
    assert_eq!(root("no_key")["table-key-properties"], json!([]));
}

#[test]
fn two_discoveries_are_identical() {
    let db = fixture_db();
    let config = db.config_file(json!({}));
    let a = tap(&["--config", config.to_str().unwrap(), "--discover"]).success();
    let b = tap(&["--config", config.to_str().unwrap(), "--discover"]).success();
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn every_database_the_role_may_connect_to_with_filters() {
    let db = TestDb::new();
    let other = db.sibling("other");
    let third = db.sibling("third");
    for (d, table) in [(&db, "in_first"), (&other, "in_other"), (&third, "in_third")] {
        d.exec(&format!("create table public.{table} (id int primary key); create schema extra; create table extra.{table}_x (id int)"));
        d.grant_reader();
    }
    // A template database must never be discovered, even if the role could connect to it.
    let tables_of = |catalog: &Value| -> Vec<String> {
        catalog["streams"].as_array().unwrap().iter().map(|s| s["tap_stream_id"].as_str().unwrap().to_string()).collect()
    };

    let all = discover(&db.config_file(json!({})));
    assert_eq!(
        tables_of(&all),
        vec![
            format!("{}-extra-in_first_x", db.name),
            format!("{}-public-in_first", db.name),
            format!("{}-extra-in_other_x", other.name),
            format!("{}-public-in_other", other.name),
            format!("{}-extra-in_third_x", third.name),
            format!("{}-public-in_third", third.name),
        ]
    );
    let other_entry = all["streams"].as_array().unwrap().iter().find(|s| s["table_name"] == "in_other").unwrap();
    assert_eq!(other_entry["metadata"][0]["metadata"]["database-name"], json!(other.name));

    let filtered = discover(&db.config_file(json!({"filter_dbs": format!("{}, {}", db.name, other.name), "filter_schemas": "public"})));
    assert_eq!(tables_of(&filtered), vec![format!("{}-public-in_first", db.name), format!("{}-public-in_other", other.name)]);

    let schemas_array = discover(&db.config_file(json!({"filter_dbs": other.name, "filter_schemas": ["extra"]})));
    assert_eq!(tables_of(&schemas_array), vec![format!("{}-extra-in_other_x", other.name)]);

    let named = discover(&db.config_file(json!({"include_schemas_in_destination_stream_name": "true", "filter_dbs": db.name})));
    let streams: Vec<&str> = named["streams"].as_array().unwrap().iter().map(|s| s["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, vec!["extra_in_first_x", "public_in_first"]);
}

#[test]
fn discover_writes_only_json_on_stdout() {
    let db = fixture_db();
    let out = tap(&["--config", db.config_file(json!({})).to_str().unwrap(), "--discover"]).success();
    let catalog: Value = serde_json::from_str(&out.stdout).expect("stdout is exactly one JSON document");
    assert!(catalog["streams"].as_array().unwrap().len() > 5);
    assert!(out.stderr.contains("INFO discovered database"), "progress goes to stderr: {}", out.stderr);
}

/// Where a user chooses the method, the catalog says what each one sends, and that XMIN (and
/// INCREMENTAL) never see deleted rows (issue 11); a view is told XMIN is not available.
#[test]
fn replication_notes_say_what_each_method_sends_and_misses() {
    let db = fixture_db();
    let catalog = discover(&db.config_file(json!({})));
    let notes = |table: &str| -> Value {
        let stream = catalog["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["table_name"] == table && s["tap_stream_id"].as_str().unwrap().contains("-public-"))
            .unwrap_or_else(|| panic!("no stream {table}"));
        let root = stream["metadata"].as_array().unwrap().iter().find(|m| m["breadcrumb"] == json!([])).expect("[] metadata");
        root["metadata"]["tap-heroku-replication-notes"].clone()
    };
    for table in ["numbers", "events", "events_2024", "numbers_mv", "texts_view"] {
        let n = notes(table);
        let methods: Vec<&String> = n.as_object().unwrap_or_else(|| panic!("{table}: notes are an object: {n}")).keys().collect();
        assert_eq!(methods, ["FULL_TABLE", "INCREMENTAL", "LOG_BASED", "XMIN"], "{table}: one note per method");
        assert!(n["INCREMENTAL"].as_str().unwrap().contains("deleted rows are not seen"), "{table}: {n}");
        assert!(n["FULL_TABLE"].as_str().unwrap().contains("ACTIVATE_VERSION"), "{table}: {n}");
    }
    // Tables, partitions and materialized views: XMIN works and misses deletes.
    for table in ["numbers", "events", "events_2024", "numbers_mv"] {
        let xmin = notes(table)["XMIN"].as_str().unwrap().to_string();
        assert!(xmin.contains("deleted rows are not seen") && xmin.contains("FULL_TABLE"), "{table}: {xmin}");
    }
    // A view: the sync refuses XMIN, and the catalog says so first.
    let xmin = notes("texts_view")["XMIN"].as_str().unwrap().to_string();
    assert!(xmin.starts_with("not available"), "texts_view: {xmin}");
    // LOG_BASED: tables and partitions have their own rows published; a partitioned table,
    // a materialized view and a view do not (the sync refuses them).
    for table in ["numbers", "events_2024"] {
        let log_based = notes(table)["LOG_BASED"].as_str().unwrap().to_string();
        assert!(log_based.contains("_sdc_deleted_at") && log_based.contains("REPLICATION"), "{table}: {log_based}");
    }
    for table in ["events", "numbers_mv", "texts_view"] {
        let log_based = notes(table)["LOG_BASED"].as_str().unwrap().to_string();
        assert!(log_based.starts_with("not available"), "{table}: {log_based}");
    }
}
