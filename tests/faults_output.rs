//! Faults made to happen for real: the target stops reading (a closed pipe exits 74 promptly),
//! and a stdout closed before the start.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::live::{Live, big_table_sql, sync_args};
use crate::support::output::assert_failure;
use crate::support::{TapOutput, fixture, id, select};

// ---- 2. the target stops reading -----------------------------------------------------------

#[test]
fn closed_pipe_exits_74_promptly_without_panic() {
    let (db, config, mut catalog) = fixture(&big_table_sql("piped"), json!({"itersize": 1000}));
    select(&mut catalog, "piped", "FULL_TABLE", None);
    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    let first = live.next_message().expect("a first line");
    assert_eq!(first["type"], "SCHEMA");
    live.close_stdout();
    let finished = live.finish(Duration::from_secs(10));
    let out = &finished.out;
    assert!(finished.exit_after < Duration::from_secs(10), "exit took {:?}", finished.exit_after);
    // One line, no hint: there is nothing to fix in the tap when its reader goes away.
    assert_failure(out, "closed pipe", 74, &[&id(&db, "public", "piped"), "writing to stdout", "Broken pipe"], false);
    assert!(out.stderr.lines().all(|l| !l.starts_with("ERROR")), "no other error output:\n{}", out.stderr);
}

/// A stdout closed before start (`>&-`) is reopened on /dev/null by the Rust runtime before
/// `main` runs (so no socket or file can take descriptor 1 and receive records): the sync runs
/// as into /dev/null. Documented in docs/sync.md ("Exit codes").
#[test]
fn closed_stdout_descriptor_behaves_as_dev_null() {
    let (_db, config, mut catalog) = fixture("create table few (id int primary key); insert into few values (1), (2)", json!({}));
    select(&mut catalog, "few", "FULL_TABLE", None);
    let args = sync_args(&config, &catalog, None);
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" >&-")
        .arg(env!("CARGO_BIN_EXE_tap-heroku"))
        .args(&args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running tap-heroku with stdout closed");
    let out = TapOutput {
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    };
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("synced stream few: 2 rows"), "the sync itself ran normally:\n{}", out.stderr);
}
