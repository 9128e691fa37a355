//! `--test`: the connection test reads one row of each selected stream (or discovers without a
//! catalog), writes nothing on stdout, and exits 0 or with the code of the failure.

use serde_json::json;

use crate::support::{self, TestDb, fixture, tap, write_json};

/// A database with `items` (two rows), `empty` (none) and `secrets` (a column the role may not read).
fn shop() -> (TestDb, std::path::PathBuf, serde_json::Value) {
    fixture(
        "create table items (id int primary key, note text); insert into items values (1, 'a'), (2, 'b'); \
         create table empty (id int primary key); \
         create table secrets (id int primary key, public_note text, hidden text); insert into secrets values (1, 'p', 'h');",
        json!({}),
    )
}

/// Runs `--test` with `args` after `--config config`.
fn test_run(config: &std::path::Path, args: &[&str]) -> support::TapOutput {
    let mut all = vec!["--config", config.to_str().expect("UTF-8 path"), "--test"];
    all.extend_from_slice(args);
    tap(&all)
}

#[test]
fn selected_streams_are_read_and_nothing_is_written_to_stdout() {
    let (db, config, mut catalog) = shop();
    support::select(&mut catalog, "items", "INCREMENTAL", Some("id"));
    support::select(&mut catalog, "empty", "FULL_TABLE", None);
    let out = test_run(&config, &["--catalog", write_json(&catalog).to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "--test writes nothing on stdout");
    let items = support::id(&db, "public", "items");
    let empty = support::id(&db, "public", "empty");
    assert!(out.stderr.contains(&format!("test: stream {items}: read one row of 2 columns")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("test: stream {empty}: readable, the table is empty")), "{}", out.stderr);
    assert!(out.stderr.contains("test passed") && out.stderr.contains("read 2 selected streams"), "{}", out.stderr);
    // Only selected streams are read: secrets is not selected and not mentioned.
    assert!(!out.stderr.contains("secrets"), "{}", out.stderr);
}

#[test]
fn without_a_catalog_it_discovers() {
    let (db, config, _) = shop();
    let out = test_run(&config, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains(&format!("discovered 3 streams in {} (3)", db.name)), "{}", out.stderr);
}

#[test]
fn an_unreadable_stream_or_column_fails_with_the_permission_code() {
    let (db, config, mut catalog) = shop();
    support::select(&mut catalog, "items", "FULL_TABLE", None);
    support::select(&mut catalog, "secrets", "FULL_TABLE", None);
    // The role may read only some columns of secrets, and no longer items.
    db.exec(&format!("revoke select on secrets, items from {0}; grant select (id, public_note) on secrets to {0}", db.role));
    let out = test_run(&config, &["--catalog", write_json(&catalog).to_str().unwrap()]);
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let items = support::id(&db, "public", "items");
    let secrets = support::id(&db, "public", "secrets");
    // One ERROR line per stream, then the final error naming both.
    assert!(out.stderr.lines().any(|l| l.starts_with("ERROR") && l.contains(&items) && l.contains("permission denied")), "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.starts_with("ERROR") && l.contains(&secrets) && l.contains("permission denied")),
        "{}",
        out.stderr
    );
    let last = out.stderr.lines().find(|l| l.starts_with("tap-heroku: error: ")).expect("an error line");
    assert!(last.contains("2 of 2 selected streams could not be read") && last.contains(&items) && last.contains(&secrets), "{last}");

    // Deselecting the hidden column makes secrets readable again.
    support::select_column(&mut catalog, "secrets", "hidden", false);
    support::stream_mut(&mut catalog, "items")["metadata"][0]["metadata"]["selected"] = json!(false);
    let out = test_run(&config, &["--catalog", write_json(&catalog).to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("test: stream {secrets}: read one row of 2 columns")), "{}", out.stderr);
}

#[test]
fn failures_before_reading_keep_their_exit_codes() {
    let (_db, config, catalog) = shop();
    // Nothing selected.
    let out = test_run(&config, &["--catalog", write_json(&catalog).to_str().unwrap()]);
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(out.stderr.contains("no stream is selected in the catalog; nothing to test"), "{}", out.stderr);
    // A wrong password.
    let mut bad: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    bad["password"] = json!("not-the-password-4711");
    let out = test_run(&write_json(&bad), &[]);
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert!(!out.stderr.contains("not-the-password-4711"), "{}", out.stderr);
    // --test and --discover together are a usage error.
    let out = tap(&["--config", config.to_str().unwrap(), "--test", "--discover"]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert_eq!(out.stdout, "");
}
