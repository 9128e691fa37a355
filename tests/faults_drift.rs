//! Faults made to happen for real: tables, columns and replication keys changed between
//! discovery and sync, bookmarks the key's type cannot take, and a statement timeout on the
//! role.

use serde_json::{Value, json};

use crate::support::live::slow_view_sql;
use crate::support::output::{assert_failure, error_lines, log_lines, record_ids, records, schema_streams};
use crate::support::{assert_records_match_schemas, fixture, id, select, sync};

// ---- 4. changes between discovery and sync ---------------------------------------------------

#[test]
fn tables_and_columns_changed_after_discovery() {
    let (db, config, mut catalog) = fixture(
        "create type pair as (a int, b int); \
         create table a_ok (id int primary key, n int); insert into a_ok select g, g from generate_series(1, 3) g; \
         create table b_dropped (id int primary key); insert into b_dropped values (1); \
         create table c_coldrop (id int primary key, gone text, kept text); insert into c_coldrop values (1, 'g', 'k'); \
         create table d_retyped (id int primary key, n int); insert into d_retyped select g, g * 10 from generate_series(1, 3) g; \
         create table e_renamed (id int primary key); insert into e_renamed values (1); \
         create table f_revoked (id int primary key); insert into f_revoked values (1); \
         create table g_unsupported (id int primary key, n int); insert into g_unsupported values (1, 1); \
         create table z_ok (id int primary key, n int); insert into z_ok select g, g from generate_series(1, 4) g",
        json!({"itersize": 2}),
    );
    for t in ["a_ok", "b_dropped", "c_coldrop", "d_retyped", "e_renamed", "f_revoked", "g_unsupported"] {
        select(&mut catalog, t, "FULL_TABLE", None);
    }
    select(&mut catalog, "z_ok", "INCREMENTAL", Some("id"));
    db.exec(&format!(
        "drop table b_dropped; \
         alter table c_coldrop drop column gone; \
         alter table d_retyped alter column n type text using 'n=' || n; \
         alter table e_renamed rename to e_renamed_now; \
         revoke select on f_revoked from {role}; \
         alter table g_unsupported alter column n type pair using row(n, n)::pair",
        role = db.role
    ));

    let out = sync(&config, &catalog, None);
    // The first skipped stream is the one reported; every skipped one has its ERROR line.
    assert_failure(&out, "drift", 65, &[&id(&db, "public", "b_dropped"), "no longer exists"], true);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(schema_streams(&messages), ["a_ok", "d_retyped", "z_ok"], "skipped streams write nothing; the others sync");
    assert_eq!(record_ids(&messages, "a_ok"), [1, 2, 3]);
    assert_eq!(record_ids(&messages, "z_ok"), [1, 2, 3, 4]);
    for (table, needles) in [
        ("b_dropped", vec!["table \"public\".\"b_dropped\" no longer exists"]),
        ("c_coldrop", vec!["column \"gone\" no longer exists"]),
        ("e_renamed", vec!["table \"public\".\"e_renamed\" no longer exists"]),
        ("f_revoked", vec!["the role cannot read table \"public\".\"f_revoked\""]),
        ("g_unsupported", vec!["column \"n\" now has type pair"]),
    ] {
        let sid = id(&db, "public", table);
        let mut all = vec![sid.as_str()];
        all.extend(needles);
        assert_eq!(log_lines(&out, "ERROR", &all).len(), 1, "one ERROR line with {all:?}:\n{}", out.stderr);
    }
    // Retyped int -> text: the SCHEMA follows the database, a WARN names stream and column.
    let sid = id(&db, "public", "d_retyped");
    assert_eq!(log_lines(&out, "WARN", &[&sid, "column n was integer", "is text now"]).len(), 1, "{}", out.stderr);
    let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == "d_retyped").unwrap();
    assert_eq!(schema["schema"]["properties"]["n"]["type"], json!(["null", "string"]), "{schema}");
    let values: Vec<Value> = records(&messages, "d_retyped").iter().map(|r| r["n"].clone()).collect();
    assert_eq!(values, [json!("n=10"), json!("n=20"), json!("n=30")]);
    let end = &messages.last().unwrap()["value"];
    assert_eq!(end["currently_syncing"], Value::Null);
    let mut ids: Vec<&String> = end["bookmarks"].as_object().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, [&id(&db, "public", "a_ok"), &id(&db, "public", "d_retyped"), &id(&db, "public", "z_ok")]);
}

#[test]
fn retyped_replication_key_with_a_bookmark_stops_before_any_output() {
    let (db, config, mut catalog) = fixture(
        "create table k_retyped (id int primary key, k int); insert into k_retyped select g, g from generate_series(1, 3) g; \
         create table other (id int primary key); insert into other values (1)",
        json!({}),
    );
    select(&mut catalog, "k_retyped", "INCREMENTAL", Some("k"));
    select(&mut catalog, "other", "FULL_TABLE", None);
    let sid = id(&db, "public", "k_retyped");
    let state = json!({"bookmarks": {&sid: {"last_replication_method": "INCREMENTAL", "replication_key": "k", "replication_key_value": 2, "version": 1}}});
    db.exec("alter table k_retyped alter column k type text");
    // A numeric bookmark cannot be a text key (and text order is not integer order): the whole
    // run stops before any output, as for any bookmark of the wrong type.
    let out = sync(&config, &catalog, Some(&state));
    assert_failure(&out, "retyped key", 65, &[&sid, "replication_key_value", "column \"k\""], true);
    assert!(out.stdout.is_empty(), "nothing is written:\n{}", out.stdout);
}

#[test]
fn unparsable_bookmark_for_a_timestamp_key_stops_before_any_output() {
    let (db, config, mut catalog) = fixture(
        "create table a_first (id int primary key); insert into a_first values (1); \
         create table ts_key (id int primary key, at timestamptz); insert into ts_key values (1, now())",
        json!({}),
    );
    select(&mut catalog, "a_first", "FULL_TABLE", None);
    select(&mut catalog, "ts_key", "INCREMENTAL", Some("at"));
    let sid = id(&db, "public", "ts_key");
    let state = json!({"bookmarks": {&sid: {"replication_key": "at", "replication_key_value": "yesterday-ish"}}});
    let out = sync(&config, &catalog, Some(&state));
    // The bookmark is checked against the key's type before any output, so a_first, which comes
    // first, writes nothing either: exit 65 naming the stream and replication_key_value, with a
    // hint, rather than the server's "invalid input syntax" halfway through the run.
    assert_failure(&out, "bad timestamp bookmark", 65, &[&sid, "replication_key_value"], true);
    assert!(out.stdout.is_empty(), "nothing is written:\n{}", out.stdout);
}

#[test]
fn statement_timeout_on_the_role() {
    let (db, config, mut catalog) = fixture(
        &format!(
            "create table a_ok (id int primary key); insert into a_ok values (1), (2); \
             {}; \
             create table z_ok (id int primary key); insert into z_ok values (1), (2), (3)",
            slow_view_sql("m_slow", 8, 0.25)
        ),
        json!({}),
    );
    for t in ["a_ok", "m_slow", "z_ok"] {
        select(&mut catalog, t, "FULL_TABLE", None);
    }
    db.exec(&format!("alter role {} set statement_timeout = '500ms'", db.role));
    let sid = id(&db, "public", "m_slow");

    let out = sync(&config, &catalog, None);
    // A query failure mid-stream ends the run there (docs/sync.md: exit 65): streams before it are
    // complete, the failed one ends after its last STATE, later ones do not run.
    assert_failure(&out, "statement timeout", 65, &[&sid, "statement timeout"], true);
    assert!(out.stderr.contains("statement_timeout"), "the hint names statement_timeout:\n{}", out.stderr);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(record_ids(&messages, "a_ok"), [1, 2], "the stream before it completed");
    assert!(records(&messages, "m_slow").is_empty());
    // Its SCHEMA, STATE and (first full sync) ACTIVATE_VERSION were written before the query failed.
    let kinds: Vec<&str> = messages.iter().skip_while(|m| m["stream"] != "m_slow").map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SCHEMA", "STATE", "ACTIVATE_VERSION"]);
    assert_eq!(schema_streams(&messages), ["a_ok", "m_slow"], "the run stops at the failed stream");

    // 1 ms: the run fails at whatever statement the timeout hits first (often reading pg_type,
    // before any stream). Rarely the cancel lands just after START TRANSACTION and the next
    // statement only reports "current transaction is aborted" (no hint).
    db.exec(&format!("alter role {} set statement_timeout = '1ms'", db.role));
    let out = sync(&config, &catalog, None);
    if out.code != 0 {
        let line = error_lines(&out).first().map(|l| l.to_string()).unwrap_or_default();
        let timeout = line.contains("statement timeout");
        assert!(timeout || line.contains("current transaction is aborted"), "unexpected error:\n{}", out.stderr);
        assert_failure(&out, "statement timeout 1ms", 65, &[], timeout);
        let _ = out.messages();
    }
}
