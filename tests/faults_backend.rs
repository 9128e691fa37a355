//! Faults made to happen for real: the server ends our backend. Terminated mid-stream (without
//! reconnects: exit 69 and a resume without loss; with them: the run finishes), a link that
//! resets the connection every megabyte, a standby that cancels the read for recovery
//! conflicts, and a backend terminated while its query runs.
//!
//! Each interrupted run is resumed from the last STATE it wrote and the union of both runs is
//! compared with the table, id by id: nothing may be missing, and duplicates are allowed only
//! where docs/state-and-resume.md's guarantees allow them (none for FULL_TABLE in primary key
//! order; the records of the block range under way, and what the catch-up rule names, for
//! FULL_TABLE by block ranges; the bookmark row for INCREMENTAL).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::activity::{terminate_tap_backends, wait_for_tap_query};
use crate::support::link::Link;
use crate::support::live::{BIG_ROWS, EXIT_LIMIT, Live, big_table_sql, slow_view_sql, sync_args};
use crate::support::output::{assert_covers, assert_failure, last_state_at, log_lines, record_ids};
use crate::support::{TestDb, assert_records_match_schemas, fixture, id, select, server, sync};

// ---- 1. the server ends our backend mid-stream -----------------------------------------------

/// Waits until the tap's backend is blocked on the tap for 200 ms: idle in its transaction, or
/// streaming rows into a socket the tap does not read (`ClientWrite`), because the tap is
/// blocked on the pipe and its reader thread on the full channel.
fn wait_until_backend_blocked(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut admin = db.admin();
    let mut blocked_since: Option<Instant> = None;
    loop {
        let blocked: bool = admin
            .query_one(
                "select coalesce(bool_and(state = 'idle in transaction' or wait_event = 'ClientWrite'), false) \
                 from pg_stat_activity where usename = $1 and application_name = 'tap-heroku'",
                &[&db.role],
            )
            .expect("reading pg_stat_activity")
            .get(0);
        match (blocked, blocked_since) {
            (true, Some(since)) if since.elapsed() >= Duration::from_millis(200) => return,
            (true, None) => blocked_since = Some(Instant::now()),
            (true, Some(_)) => {}
            (false, _) => blocked_since = None,
        }
        assert!(Instant::now() < deadline, "the tap's backend never blocked on the tap");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn backend_terminated_mid_stream_exits_69_and_resumes_without_loss() {
    // Without reconnects, so the run ends with the failure (with them: reconnect_after_terminated_backend).
    let (db, config, mut catalog) =
        fixture(&big_table_sql("big"), json!({"full_table_order": "primary_key", "itersize": 1000, "reconnect_attempts": 0}));
    select(&mut catalog, "big", "FULL_TABLE", None);
    let sid = id(&db, "public", "big");

    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    live.read_records(5_000);
    // We stopped reading: the tap blocks writing into the full pipe (its reader thread on the
    // full channel), its backend blocked writing rows to the tap.
    wait_until_backend_blocked(&db);
    assert_eq!(terminate_tap_backends(&db), 1, "one tap-heroku backend to terminate");
    let first = live.finish(EXIT_LIMIT).out;

    // Connection lost: exit 69, one error line naming the stream, a hint; whole lines only.
    // Idle between fetches ("connection closed") or busy in one ("terminating connection due to
    // administrator command"), depending on where the reader thread was.
    assert_failure(&first, "terminated backend", 69, &[&sid, "reading rows"], true);
    let messages = first.messages();
    assert_records_match_schemas(&messages);
    let at = last_state_at(&messages);
    let state = messages[at]["value"].clone();
    assert_eq!(state["currently_syncing"], json!(sid));
    let before: Vec<i64> = record_ids(&messages[..at], "big");
    let after_state: Vec<i64> = record_ids(&messages[at..], "big");
    assert!(before.len() >= 5_000 && (before.len() as i64) < BIG_ROWS, "the run was cut mid-stream: {} records", before.len());
    assert_eq!(
        state["bookmarks"][&sid]["last_pk_fetched"],
        json!({"id": before.last().unwrap()}),
        "the last STATE covers the last record before it"
    );
    // A failure writes a STATE for the records already written, so nothing follows the last STATE.
    assert!(after_state.is_empty(), "{} records after the last STATE would be sent again on resume", after_state.len());

    let second = sync(&config, &catalog, Some(&state)).success();
    let resumed = second.messages();
    assert_records_match_schemas(&resumed);
    let union: Vec<i64> = before.iter().chain(&after_state).copied().chain(record_ids(&resumed, "big")).collect();
    assert_covers(&union, BIG_ROWS, &BTreeSet::new(), "terminated backend + resume");
    let version = state["bookmarks"][&sid]["version"].clone();
    assert!(resumed.iter().filter(|m| m["type"] == "RECORD").all(|m| m["version"] == version), "the resume keeps the interrupted version");
    assert_eq!(resumed.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").count(), 1);
}

/// Terminates the tap's backend mid-stream, with the tap blocked on the pipe, and lets the tap
/// reconnect (the default `reconnect_attempts`): the run finishes with exit 0 and the same
/// version, and every row arrives exactly once (FULL_TABLE in either order) or with at most
/// the row of the key being read again (INCREMENTAL).
fn reconnect_after_terminated_backend(method: &str) {
    let table = format!("reconnect_{}", method.to_lowercase());
    let order = if method == "PHYSICAL" { "physical" } else { "primary_key" };
    let (db, config, mut catalog) = fixture(&big_table_sql(&table), json!({"full_table_order": order, "itersize": 1000}));
    let catalog_method = if method == "INCREMENTAL" { "INCREMENTAL" } else { "FULL_TABLE" };
    select(&mut catalog, &table, catalog_method, (method == "INCREMENTAL").then_some("id"));
    let label = format!("reconnect during {method}");

    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    live.read_records(5_000);
    wait_until_backend_blocked(&db);
    assert_eq!(terminate_tap_backends(&db), 1, "[{label}] one tap-heroku backend to terminate");
    let out = live.finish(EXIT_LIMIT).out;
    assert_eq!(out.code, 0, "[{label}] the run reconnects and finishes: {}", out.stderr);
    assert_eq!(log_lines(&out, "WARN", &["lost the connection", "attempt 1 of 3"]).len(), 1, "[{label}] one retry line: {}", out.stderr);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    let ids = record_ids(&messages, &table);
    let versions: BTreeSet<String> = messages.iter().filter(|m| m["type"] == "RECORD").map(|m| m["version"].to_string()).collect();
    assert_eq!(versions.len(), 1, "[{label}] one table version across the reconnect");
    let may_repeat: BTreeSet<i64> = if method == "INCREMENTAL" {
        // `>=` from the last key written: that row again, nothing else.
        let counts = ids.iter().fold(BTreeMap::<i64, usize>::new(), |mut m, i| {
            *m.entry(*i).or_default() += 1;
            m
        });
        let repeated: Vec<i64> = counts.iter().filter(|(_, n)| **n > 1).map(|(i, _)| *i).collect();
        assert!(repeated.len() <= 1, "[{label}] only the bookmark row may repeat: {repeated:?}");
        repeated.into_iter().collect()
    } else {
        BTreeSet::new()
    };
    assert_covers(&ids, BIG_ROWS, &may_repeat, &label);
    if method != "INCREMENTAL" {
        let activations: Vec<&Value> = messages.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").collect();
        assert_eq!(activations.len(), 2, "[{label}] ACTIVATE_VERSION first and last, none in between");
    }
}

#[test]
fn reconnects_after_a_terminated_backend_in_storage_order_without_repeats() {
    reconnect_after_terminated_backend("PHYSICAL");
}

#[test]
fn reconnects_after_a_terminated_backend_in_key_order_without_repeats() {
    reconnect_after_terminated_backend("FULL_TABLE");
}

#[test]
fn reconnects_after_a_terminated_backend_in_incremental_repeating_at_most_the_bookmark_row() {
    reconnect_after_terminated_backend("INCREMENTAL");
}

#[test]
fn syncs_finish_through_a_link_that_resets_every_megabyte() {
    let rows = 100_000;
    let sql = format!(
        "create table keyed (id int primary key, v int not null); insert into keyed select g, g * 7 from generate_series(1, {rows}) g; \
         create table heap (id int not null, v int not null); insert into heap select g, g * 7 from generate_series(1, {rows}) g; \
         create table events (id int primary key, v int not null); insert into events select g, g * 7 from generate_series(1, {rows}) g; \
         analyze"
    );
    let (db, _, mut catalog) = fixture(&sql, json!({}));
    // Each connection is cut once 1 MB has come from the server: every stream (about 2.5 MB
    // on the wire each) loses its connection a few times mid-stream.
    let link = Link::start(server().port, &["--reset-every-bytes", "1000000"]);
    let config = db.config_file(json!({"port": link.port, "itersize": 5000}));
    select(&mut catalog, "keyed", "FULL_TABLE", None);
    select(&mut catalog, "heap", "FULL_TABLE", None);
    select(&mut catalog, "events", "INCREMENTAL", Some("id"));
    let out = sync(&config, &catalog, None);
    assert_eq!(out.code, 0, "the syncs reconnect and finish: {}", out.stderr);
    let resets = log_lines(&out, "WARN", &["lost the connection"]).len();
    assert!(resets >= 6, "the link cut the streams mid-stream ({resets} reconnects):\n{}", out.stderr);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    // FULL_TABLE, with and without a primary key: every row exactly once.
    assert_covers(&record_ids(&messages, "keyed"), rows, &BTreeSet::new(), "keyed through resets");
    assert_covers(&record_ids(&messages, "heap"), rows, &BTreeSet::new(), "heap through resets");
    // INCREMENTAL resumes at the last key written: that row again per reconnect, nothing else.
    let events = record_ids(&messages, "events");
    let repeated = events.len() as i64 - rows;
    let event_resets = log_lines(&out, "WARN", &["lost the connection"]).len() as i64;
    assert!((0..=event_resets).contains(&repeated), "events: {repeated} repeats for {event_resets} reconnects");
    let may_repeat: BTreeSet<i64> = events.windows(2).filter(|w| w[0] >= w[1]).map(|w| w[1]).collect();
    assert_covers(&events, rows, &may_repeat, "events through resets");
}

#[test]
fn a_slow_sync_from_a_standby_that_cancels_it_for_recovery_conflicts_finishes() {
    let rows: i64 = 30_000;
    let db = TestDb::new();
    db.exec(&format!(
        "create table busy (id int primary key, v int not null); insert into busy select g, 0 from generate_series(1, {rows}) g; analyze busy"
    ));
    db.grant_reader();
    let standby = || {
        let s = server();
        postgres::Config::new().host(&s.socket_dir).port(s.standby_port).user(&s.admin_user).dbname(&db.name).connect(postgres::NoTls)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replayed = standby().ok().and_then(|mut c| {
            c.query_one("select count(*) = $2 and has_table_privilege($1, 'busy', 'SELECT') from busy", &[&db.role, &rows]).ok()
        });
        if replayed.is_some_and(|r| r.get::<_, bool>(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "the standby did not replay the table within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = db.config_file(json!({"port": server().standby_port, "itersize": 2000}));
    let mut catalog = crate::support::discover(&config);
    select(&mut catalog, "busy", "FULL_TABLE", None);

    // On the primary, updates and VACUUM remove row versions the standby's long read still
    // sees: after 1 s (max_standby_streaming_delay) replay cancels the read.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut admin) = (Arc::clone(&stop), db.admin());
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) && round < 600 {
                admin.batch_execute(&format!("update busy set v = v + 1 where id % 500 = {}", round % 500)).expect("updating");
                admin.batch_execute("vacuum busy").expect("vacuuming");
                round += 1;
                // A pause, on purpose: a steady trickle of conflicts over the read's whole length.
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // The target reads slowly (about 10,000 records a second), so the read lasts long enough.
    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    let mut seen = 0;
    while live.next_message().is_some() {
        seen += 1;
        if seen % 1000 == 0 {
            // A delay, on purpose: the slow target that keeps the read open.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = live.finish(EXIT_LIMIT).out;
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer thread");
    assert_eq!(out.code, 0, "the sync reconnects and finishes: {}", out.stderr);
    let conflicts = log_lines(&out, "WARN", &["lost the connection", "conflict with recovery"]).len();
    assert!(conflicts >= 1, "the standby cancelled the read at least once:\n{}", out.stderr);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    // Rows updated while the read was away come again (the catch-up); none is missing.
    let ids = record_ids(&messages, "busy");
    let may_repeat: BTreeSet<i64> = (1..=rows).collect();
    assert_covers(&ids, rows, &may_repeat, "standby with recovery conflicts");
}

#[test]
fn backend_terminated_while_the_query_runs_exits_69_with_a_hint() {
    let (db, config, mut catalog) = fixture(&slow_view_sql("slow_v", 100, 0.05), json!({"itersize": 1000, "reconnect_attempts": 0}));
    select(&mut catalog, "slow_v", "FULL_TABLE", None);
    let sid = id(&db, "public", "slow_v");
    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    // SCHEMA and STATE are flushed; then the tap waits 5 s for its first batch.
    for _ in 0..2 {
        live.next_message().expect("the stream's first messages");
    }
    wait_for_tap_query(&db, "%slow_v%");
    assert_eq!(terminate_tap_backends(&db), 1, "one tap-heroku backend, busy in its query");
    let out = live.finish(EXIT_LIMIT).out;
    let messages = out.messages();
    let kinds: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SCHEMA", "STATE", "ACTIVATE_VERSION"], "no record was sent");
    // A backend the administrator ends while its statement runs is a lost connection like an
    // idle one: exit 69 (not 65, as if the query were at fault), the stream named, and the hint
    // to run again from the last STATE; reconnect_attempts 0, so no retry hides it.
    assert_failure(&out, "terminated during a query", 69, &[&sid], true);
}
