//! LOG_BASED through pgoutput (docs/sync.md, "LOG_BASED"): the first run's snapshot, then
//! inserts, updates (an unchanged TOASTed column left out, never null), deletes with
//! `_sdc_deleted_at`, key changes; a replayed state sends the same changes again, a confirmed
//! one advances the slot, a bookmark behind the slot is refused; interrupted runs lose nothing;
//! a big transaction keeps the tap's memory flat; a server or role not set up is refused before
//! any output; the streams of one database share one peek. The tests read as the REPLICATION role of tests/server.sh and drop their slots.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::activity::{QUERY_START_LIMIT, TAP_APPLICATION_NAME, terminate_backends_of, wait_for_query};
use crate::support::live::{Live, WATCHDOG};
use crate::support::output::log_lines;
use crate::support::{
    TapOutput, TestDb, admin_client, assert_records_match_schemas, discover, id, select, server, stream_mut, sync, write_json,
};

/// A test database read by the REPLICATION role (`tap_logical`), with the publication
/// `tap_heroku` created by the admin; drops the database's replication slots before the database.
struct LogicalDb {
    /// The database (dropped after the slots).
    db: TestDb,
    /// The REPLICATION role's config file (this database only).
    config: PathBuf,
}

impl LogicalDb {
    /// `sql` in a fresh database, SELECT on its tables for the REPLICATION role, and `publication`
    /// (SQL run as the admin, e.g. `create publication tap_heroku for table items`).
    fn new(sql: &str, publication: &str, extra: Value) -> LogicalDb {
        let db = TestDb::new();
        db.exec(sql);
        if !publication.is_empty() {
            db.exec(publication);
        }
        let s = server();
        let user = s.var("TAP_HEROKU_TEST_LOGICAL_USER").expect("tests/server.sh names the REPLICATION role");
        let password = s.var("TAP_HEROKU_TEST_LOGICAL_PASSWORD").expect("and its password");
        db.exec(&format!("grant connect on database {} to {user}; grant select on all tables in schema public to {user}", db.name));
        let mut config =
            json!({"host": s.host, "port": s.port, "user": user, "password": password, "dbname": db.name, "filter_dbs": db.name});
        for (k, v) in extra.as_object().expect("extra config is an object") {
            config[k] = v.clone();
        }
        LogicalDb { config: write_json(&config), db }
    }

    /// The config as JSON.
    fn config_value(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.config).expect("reading the config")).expect("the config is JSON")
    }

    /// The catalog with `table` selected as LOG_BASED.
    fn catalog(&self, table: &str) -> Value {
        let mut catalog = discover(&self.config);
        select(&mut catalog, table, "LOG_BASED", None);
        catalog
    }

    /// The slot's `confirmed_flush_lsn` as an integer.
    fn confirmed_flush_lsn(&self) -> u64 {
        let row = self
            .db
            .admin()
            .query_one(
                "select (confirmed_flush_lsn - '0/0'::pg_lsn)::text from pg_replication_slots where database = current_database()",
                &[],
            )
            .expect("the test's slot");
        row.get::<_, String>(0).parse().expect("an integer")
    }
}

impl Drop for LogicalDb {
    fn drop(&mut self) {
        // A database with a replication slot cannot be dropped, and a slot holds back WAL.
        let _ = self
            .db
            .admin()
            .batch_execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = current_database()");
    }
}

/// One run that must succeed: its messages (checked against their SCHEMA) and final state.
fn run(config: &Path, catalog: &Value, state: Option<&Value>) -> (Vec<Value>, Value, String) {
    let out: TapOutput = sync(config, catalog, state).success();
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    let state = out.last_state();
    (messages, state, out.stderr)
}

/// Applies change records in order (a record with `_sdc_deleted_at` deletes its key, which must
/// be `{"id": deleted}` alone) and checks the rows they leave equal `expected`, FULL_TABLE's.
fn assert_changes_end_as(changes: Vec<Value>, expected: &BTreeMap<i64, Value>, deleted: i64) {
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    for mut r in changes {
        let is_delete = r["_sdc_deleted_at"].is_string();
        r.as_object_mut().unwrap().remove("_sdc_deleted_at");
        let id = r["id"].as_i64().unwrap();
        if is_delete {
            assert_eq!(r, json!({"id": deleted}));
            last.remove(&id);
        } else {
            last.insert(id, r);
        }
    }
    assert_eq!(last.len(), expected.len());
    for (id, want) in expected {
        assert_eq!(last.get(id), Some(want), "row {id}: LOG_BASED and FULL_TABLE differ");
    }
}

/// The records of `stream` in message order.
fn records(messages: &[Value], stream: &str) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["record"].clone()).collect()
}

#[test]
fn log_based_snapshot_then_changes_deletes_toast_replay_and_confirm() {
    let ldb = LogicalDb::new(
        "create table items (id int primary key, v text, big text, n numeric); \
         insert into items select g, 'v' || g, null, g from generate_series(1, 1000) g; \
         create table other (id int primary key)",
        "create publication tap_heroku for table items, other",
        json!({"itersize": 100}),
    );
    let catalog = ldb.catalog("items");
    let sid = id(&ldb.db, "public", "items");

    // First run: every row as FULL_TABLE sends it, ACTIVATE_VERSION around them, then an lsn.
    let (first, state1, stderr) = run(&ldb.config, &catalog, None);
    let schema = first.iter().find(|m| m["type"] == "SCHEMA").expect("a SCHEMA");
    assert_eq!(schema["schema"]["properties"]["_sdc_deleted_at"], json!({"type": ["null", "string"], "format": "date-time"}));
    assert_eq!(schema["bookmark_properties"], json!(["lsn"]));
    assert_eq!(records(&first, "items").len(), 1000);
    assert_eq!(first.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").count(), 2);
    let bookmark = &state1["bookmarks"][&sid];
    assert_eq!(bookmark["last_replication_method"], "LOG_BASED");
    let lsn1 = bookmark["lsn"].as_u64().unwrap_or_else(|| panic!("an integer lsn: {bookmark}"));
    assert!(bookmark.get("snapshot_lsn").is_none(), "{bookmark}");
    assert!(stderr.contains("creating logical replication slot"), "{stderr}");
    let version = bookmark["version"].clone();

    // Changes: an insert with a TOASTed value, an update leaving it unchanged, a key change, a
    // delete, a transaction of several changes, a change of another table, a TRUNCATE of it.
    // md5 digits do not compress: the value is stored out of line (TOAST).
    db_exec(&ldb, "insert into items values (2000, 'toasted', (select string_agg(md5(g::text), '') from generate_series(1, 1000) g), 2)");
    let big: String = ldb.db.admin().query_one("select big from items where id = 2000", &[]).expect("the big value").get(0);
    assert_eq!(big.len(), 32_000);
    db_exec(&ldb, "update items set v = 'touched' where id = 2000");
    db_exec(&ldb, "update items set id = 2001 where id = 5");
    db_exec(&ldb, "delete from items where id = 7");
    db_exec(&ldb, "begin; insert into items values (3000, 'a'); update items set n = 3 where id = 3000; commit");
    db_exec(&ldb, "insert into other values (1); truncate other");
    let (changes, state2, stderr) = run(&ldb.config, &catalog, Some(&state1));
    let got = records(&changes, "items");
    let want = vec![
        json!({"id": 2000, "v": "toasted", "big": big, "n": 2, "_sdc_deleted_at": null}),
        // The unchanged TOASTed column is left out, not null.
        json!({"id": 2000, "v": "touched", "n": 2, "_sdc_deleted_at": null}),
        json!({"id": 5, "_sdc_deleted_at": "*"}),
        json!({"id": 2001, "v": "v5", "big": null, "n": 5, "_sdc_deleted_at": null}),
        json!({"id": 7, "_sdc_deleted_at": "*"}),
        json!({"id": 3000, "v": "a", "big": null, "n": null, "_sdc_deleted_at": null}),
        json!({"id": 3000, "v": "a", "big": null, "n": 3, "_sdc_deleted_at": null}),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        let mut g = g.clone();
        if w["_sdc_deleted_at"] == "*" {
            let at = g["_sdc_deleted_at"].as_str().unwrap_or_else(|| panic!("a delete with its commit time: {g}"));
            assert!(crate::support::is_rfc3339_date_time(at), "{at}");
            g["_sdc_deleted_at"] = json!("*");
        }
        assert_eq!(&g, w);
    }
    assert!(records(&changes, "other").is_empty());
    assert!(!stderr.contains("truncated"), "another table's TRUNCATE is not this stream's: {stderr}");
    assert!(changes.iter().filter(|m| m["type"] == "RECORD").all(|m| m["version"] == version), "the version stays");
    assert!(changes.iter().all(|m| m["type"] != "ACTIVATE_VERSION"));
    let lsn2 = state2["bookmarks"][&sid]["lsn"].as_u64().expect("an integer lsn");
    assert!(lsn2 > lsn1);

    // The same state again: the same changes again (the slot kept them).
    let (replayed, _, _) = run(&ldb.config, &catalog, Some(&state1));
    assert_eq!(records(&replayed, "items").len(), want.len());
    for (a, b) in records(&replayed, "items").iter().zip(&got) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a.get("big"), b.get("big"));
    }

    // A run given the confirmed state advances the slot to it and sends nothing new; a TRUNCATE
    // of the table is a warning.
    db_exec(&ldb, "truncate items");
    let (idle, state3, stderr) = run(&ldb.config, &catalog, Some(&state2));
    assert!(records(&idle, "items").is_empty());
    assert!(stderr.contains("the table was truncated"), "{stderr}");
    assert!(ldb.confirmed_flush_lsn() >= lsn2, "the slot was advanced to the confirmed bookmark");
    assert!(state3["bookmarks"][&sid]["lsn"].as_u64().unwrap() > lsn2);

    // The older state now is behind the slot: refused for that stream, with the way out.
    let out = sync(&ldb.config, &catalog, Some(&state1));
    assert_eq!(out.code, 65, "{}", out.stderr);
    assert!(out.stderr.contains("is behind replication slot"), "{}", out.stderr);
    assert!(out.stderr.contains("Remove this stream's bookmark"), "{}", out.stderr);
    assert!(records(&out.messages(), "items").is_empty());

    // Switching to FULL_TABLE and back is a new snapshot.
    let mut full = catalog.clone();
    select(&mut full, "items", "FULL_TABLE", None);
    let (_, state4, _) = run(&ldb.config, &full, Some(&state3));
    let (again, state5, _) = run(&ldb.config, &catalog, Some(&state4));
    assert_eq!(again.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").count(), 2, "a new snapshot");
    assert!(state5["bookmarks"][&sid]["lsn"].as_u64().is_some());
}

/// Runs SQL as the admin in the test's database, its commits flushed before it returns: the
/// test servers run with synchronous_commit off, and a run decodes the WAL flushed when it starts.
fn db_exec(ldb: &LogicalDb, sql: &str) {
    ldb.db.exec(&format!("set synchronous_commit = on; {sql}"));
}

#[test]
fn log_based_warns_when_the_slot_holds_back_more_wal_than_allowed() {
    let ldb = LogicalDb::new(
        "create table notes (id int primary key, v text)",
        "create publication tap_heroku for table notes",
        json!({"logical_max_retained_wal_mb": 1}),
    );
    let catalog = ldb.catalog("notes");
    let (_, state, _) = run(&ldb.config, &catalog, None);
    // About 4 MiB of WAL after the position the state confirms: the slot keeps all of it.
    db_exec(&ldb, "insert into notes select g, repeat(md5(g::text), 4) from generate_series(1, 20000) g");
    let (messages, _, stderr) = run(&ldb.config, &catalog, Some(&state));
    assert_eq!(records(&messages, "notes").len(), 20000);
    let warnings = log_lines_of(&stderr, "WARN", "holds back");
    assert_eq!(warnings.len(), 1, "one warning about the retained WAL:\n{stderr}");
    assert!(
        warnings[0].contains("logical_max_retained_wal_mb, 1") && warnings[0].contains("pg_drop_replication_slot('tap_heroku_"),
        "{}",
        warnings[0]
    );
    // The default limit (1,024 MiB) is far above what this test and its neighbours write.
    let mut quiet = ldb.config_value();
    quiet.as_object_mut().unwrap().remove("logical_max_retained_wal_mb");
    let (_, _, stderr) = run(&write_json(&quiet), &catalog, Some(&state));
    assert!(log_lines_of(&stderr, "WARN", "holds back").is_empty(), "{stderr}");
}

/// The lines of `stderr` at `level` that contain `text`.
fn log_lines_of<'a>(stderr: &'a str, level: &str, text: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(level) && l.contains(text)).collect()
}

#[test]
fn log_based_interrupted_runs_resume_without_loss() {
    let ldb = LogicalDb::new(
        "create table events (id int primary key, v text)",
        "create publication tap_heroku for table events",
        json!({"itersize": 1}),
    );
    let catalog = ldb.catalog("events");
    let (_, mut state, _) = run(&ldb.config, &catalog, None);
    for t in 0..20 {
        db_exec(&ldb, &format!("insert into events select g, 'v' || g from generate_series({0} * 10 + 1, {0} * 10 + 10) g", t));
    }
    db_exec(&ldb, "update events set v = 'u' || id where id % 10 = 0");
    db_exec(&ldb, "delete from events where id % 25 = 0");
    // max_run_seconds 0: each run stops at its first commit, with a resumable state.
    let mut limited = ldb.config.clone();
    limited.set_extension("limited.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&ldb.config).unwrap()).unwrap();
    config["max_run_seconds"] = json!(0);
    std::fs::write(&limited, config.to_string()).unwrap();
    let mut seen: BTreeMap<i64, Value> = BTreeMap::new();
    let mut runs = 0;
    loop {
        let (messages, next, _) = run(&limited, &catalog, Some(&state));
        let got = records(&messages, "events");
        for r in &got {
            seen.insert(r["id"].as_i64().unwrap(), r.clone());
        }
        runs += 1;
        assert!(runs < 60, "the runs make progress");
        // A run that stopped early leaves currently_syncing set.
        let done = next["currently_syncing"].is_null();
        state = next;
        if done {
            break;
        }
    }
    assert!(runs > 5, "max_run_seconds stopped the runs early ({runs} runs)");
    let (_, last, _) = run(&ldb.config, &catalog, Some(&state));
    assert_eq!(records(&sync(&ldb.config, &catalog, Some(&last)).messages(), "events").len(), 0);
    let expected: BTreeSet<i64> = (1..=200).collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), expected, "every row's last change arrived");
    for (id, r) in &seen {
        if id % 25 == 0 {
            assert!(r["_sdc_deleted_at"].is_string(), "row {id} deleted: {r}");
        } else if id % 10 == 0 {
            assert_eq!(r["v"], format!("u{id}"), "row {id} updated");
        } else {
            assert_eq!(r["v"], format!("v{id}"));
        }
    }
}

/// The ids of `stream`'s RECORDs in `messages`.
fn record_ids(messages: &[Value], stream: &str) -> Vec<i64> {
    records(messages, stream).iter().map(|r| r["id"].as_i64().expect("an integer id")).collect()
}

/// Asserts that `got` holds exactly the ids of `want`, naming the first few that differ.
fn assert_same_ids(got: &BTreeSet<i64>, want: &BTreeSet<i64>, what: &str) {
    let missing: Vec<_> = want.difference(got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: ids missing (first 5): {missing:?}, not expected: {extra:?}");
}

/// Starts a changes run of `config` from `state`, waits until `after` RECORDs were read (the tap
/// then reads the changes of a later transaction, blocked on the pipe), terminates the tap's
/// backends (the REPLICATION role's) and returns the run's output.
fn terminated_mid_changes(ldb: &LogicalDb, config: &Path, catalog: &Value, state: &Value, after: usize) -> TapOutput {
    let user = server().var("TAP_HEROKU_TEST_LOGICAL_USER").expect("tests/server.sh names the REPLICATION role");
    let mut tap = Live::sync(config, catalog, Some(state));
    assert!(tap.try_read_records(after), "the run sent {after} records");
    wait_for_query(&ldb.db, user, TAP_APPLICATION_NAME, "%pg_logical_slot_peek_binary_changes%", QUERY_START_LIMIT);
    assert!(terminate_backends_of(&ldb.db, user) >= 1, "the tap's backend was terminated");
    tap.finish(WATCHDOG).out
}

#[test]
fn log_based_reconnects_when_its_backend_is_terminated_mid_transaction() {
    // Ten transactions of 20,000 rows of 200 bytes. The server's socket buffers hold tens of
    // thousands of changes: the tap reads them after its backend was terminated, so there must
    // be many more changes than the test reads before it terminates the backend.
    const TRANSACTIONS: i64 = 10;
    const ROWS: i64 = 20_000;
    let ldb = LogicalDb::new(
        "create table big (id bigint primary key, v text)",
        "create publication tap_heroku for table big",
        json!({"itersize": 1000}),
    );
    let catalog = ldb.catalog("big");
    let sid = id(&ldb.db, "public", "big");
    let (_, state0, _) = run(&ldb.config, &catalog, None);
    let lsn0 = state0["bookmarks"][&sid]["lsn"].as_u64().expect("an integer lsn");
    for t in 0..TRANSACTIONS {
        db_exec(
            &ldb,
            &format!("insert into big select g, repeat('v', 200) || g from generate_series({} + 1, {} + {ROWS}) g", t * ROWS, t * ROWS),
        );
    }
    let all: BTreeSet<i64> = (1..=TRANSACTIONS * ROWS).collect();

    // Without reconnects: exit 69 with the resume hint, after a STATE for the transactions
    // written.
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&ldb.config).unwrap()).unwrap();
    config["reconnect_attempts"] = json!(0);
    let no_retry = write_json(&config);
    let out = terminated_mid_changes(&ldb, &no_retry, &catalog, &state0, (2 * ROWS + ROWS / 2) as usize);
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert!(out.stderr.contains("run again with the last STATE"), "{}", out.stderr);
    assert!(log_lines(&out, "WARN", &["lost the connection"]).is_empty(), "no retry:\n{}", out.stderr);
    let failed_ids: BTreeSet<i64> = record_ids(&out.messages(), "big").into_iter().collect();
    let failed_state = out.last_state();
    assert!(failed_state["bookmarks"][&sid]["lsn"].as_u64().unwrap() > lsn0, "{failed_state}");

    // From its STATE, with the default reconnect_attempts, terminated again in the middle of a
    // transaction: one WARN, a reconnect, and every change from the first transaction the failed
    // run did not finish, at least once (the transaction cut short is sent again).
    let out = terminated_mid_changes(&ldb, &ldb.config, &catalog, &failed_state, (ROWS / 2) as usize);
    assert_eq!(out.code, 0, "the run reconnects and finishes:\n{}", out.stderr);
    let lost = log_lines(&out, "WARN", &["lost the connection", "reconnecting in 1s, attempt 1 of"]);
    assert_eq!(lost.len(), 1, "one WARN for the one retry:\n{}", out.stderr);
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    let ids = record_ids(&messages, "big");
    let first = *ids.first().expect("the resumed run sends the rest");
    assert!(first > 2 * ROWS && (first - 1) % ROWS == 0, "the resumed run starts at a transaction boundary ({first})");
    assert!((1..first).all(|i| failed_ids.contains(&i)), "the failed run sent every change before {first}");
    let resumed: BTreeSet<i64> = ids.iter().copied().collect();
    assert_same_ids(&resumed, &(first..=TRANSACTIONS * ROWS).collect(), "the reconnecting run");
    assert!(ids.len() > resumed.len(), "the transaction cut short was sent again ({} records)", ids.len());
    let mut union = failed_ids;
    union.extend(resumed);
    assert_same_ids(&union, &all, "the two runs");
    let done = out.last_state();
    assert!(done["currently_syncing"].is_null(), "{done}");
    assert_eq!(records(&sync(&ldb.config, &catalog, Some(&done)).messages(), "big").len(), 0, "caught up");
}

/// Runs a sync and returns its output and the peak resident memory (VmHWM, kB) of the tap.
fn sync_measured(config: &Path, catalog: &Value, state: &Value) -> (TapOutput, u64) {
    let catalog_path = write_json(catalog);
    let state_path = write_json(state);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tap-heroku"))
        .args(["--config", config.to_str().unwrap(), "--catalog", catalog_path.to_str().unwrap(), "--state", state_path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tap-heroku");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while let Ok(status) = std::fs::read_to_string(&path) {
                if let Some(kb) =
                    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                {
                    peak.fetch_max(kb, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    // Keep only the last line: the test must not hold the output either.
    let mut buf = vec![0u8; 1 << 16];
    let mut line = Vec::new();
    let mut last_line = Vec::new();
    loop {
        let n = stdout.read(&mut buf).expect("reading stdout");
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            line.push(b);
            if b == b'\n' {
                std::mem::swap(&mut line, &mut last_line);
                line.clear();
            }
        }
    }
    let status = child.wait().expect("waiting for tap-heroku");
    watcher.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let output = TapOutput { stdout: String::from_utf8(last_line).unwrap(), stderr, code: status.code().unwrap_or(-1) };
    (output, peak.load(std::sync::atomic::Ordering::SeqCst))
}

#[test]
fn log_based_big_transaction_keeps_memory_flat() {
    // 300,000 rows against 30,000 (1,000,000 takes about a minute with the debug build on this
    // machine; docs/performance.md has the release figures).
    const SMALL: i64 = 30_000;
    const BIG: i64 = 300_000;
    let ldb = LogicalDb::new(
        "create table bulk (id bigint primary key, v text, t timestamptz)",
        "create publication tap_heroku for table bulk",
        json!({}),
    );
    let catalog = ldb.catalog("bulk");
    let (_, state, _) = run(&ldb.config, &catalog, None);
    let insert = |from: i64, to: i64| {
        db_exec(&ldb, &format!("insert into bulk select g, repeat('x', 100) || g, now() from generate_series({from}, {to}) g"))
    };
    insert(1, SMALL);
    let (small, small_kb) = sync_measured(&ldb.config, &catalog, &state);
    assert_eq!(small.code, 0, "{}", small.stderr);
    assert!(small.stderr.contains(&format!("synced stream bulk: {SMALL} rows")), "{}", small.stderr);
    let state = small.last_state();
    insert(SMALL + 1, SMALL + BIG);
    let (big, big_kb) = sync_measured(&ldb.config, &catalog, &state);
    assert_eq!(big.code, 0, "{}", big.stderr);
    assert!(big.stderr.contains(&format!("synced stream bulk: {BIG} rows")), "{}", big.stderr);
    assert!(small_kb > 0 && big_kb > 0, "VmHWM was read");
    eprintln!("peak RSS: {SMALL} rows {small_kb} kB, {BIG} rows {big_kb} kB");
    // Ten times the rows: the same memory, give or take allocator noise (each row is ~150 bytes:
    // holding them would add 45 MB).
    assert!(big_kb < small_kb + 8 * 1024, "peak RSS grew from {small_kb} kB to {big_kb} kB");
}

#[test]
fn log_based_refuses_servers_and_roles_not_set_up_before_any_output() {
    // No publication.
    let ldb = LogicalDb::new("create table items (id int primary key)", "", json!({}));
    let catalog = ldb.catalog("items");
    let out = sync(&ldb.config, &catalog, None).fails_with(78, "publication \"tap_heroku\" does not exist");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("CREATE PUBLICATION \"tap_heroku\" FOR TABLE \"public\".\"items\";"), "{}", out.stderr);

    // The table is outside the publication.
    ldb.db.exec("create table elsewhere (id int primary key); create publication tap_heroku for table elsewhere");
    let out = sync(&ldb.config, &catalog, None).fails_with(78, "is not in publication");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("ALTER PUBLICATION \"tap_heroku\" ADD TABLE \"public\".\"items\";"), "{}", out.stderr);

    // Another publication named in the config, holding the table.
    ldb.db.exec("create publication mine for table items");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&ldb.config).unwrap()).unwrap();
    config["logical_publication"] = json!("mine");
    let mine = write_json(&config);
    run(&mine, &catalog, None);

    // A role without REPLICATION (the test's read-only role).
    ldb.db.grant_reader();
    let reader = ldb.db.config_file(json!({"filter_dbs": ldb.db.name, "logical_publication": "mine"}));
    let out = sync(&reader, &catalog, None).fails_with(78, "lacks the REPLICATION attribute");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains(&format!("ALTER ROLE \"{}\" REPLICATION;", ldb.db.role)), "{}", out.stderr);

    // A view cannot be read LOG_BASED.
    ldb.db.exec("create view items_v as select * from items; grant select on items_v to public");
    let mut catalog = discover(&ldb.config);
    select(&mut catalog, "items_v", "LOG_BASED", None);
    let out = sync(&ldb.config, &catalog, None).fails_with(65, "is a view");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn log_based_refuses_a_server_whose_wal_level_is_not_logical_before_any_output() {
    // tests/server.sh's server without SSL runs with wal_level = replica; the REPLICATION role
    // exists there too.
    let s = server();
    let user = s.var("TAP_HEROKU_TEST_LOGICAL_USER").expect("tests/server.sh names the REPLICATION role");
    let password = s.var("TAP_HEROKU_TEST_LOGICAL_PASSWORD").expect("and its password");
    let dbname = format!("tap_replica_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_client(s.plain_port, "postgres");
    let level: String = admin.query_one("show wal_level", &[]).expect("reading wal_level").get(0);
    assert_eq!(level, "replica", "tests/server.sh's plain server");
    admin.batch_execute(&format!("create database {dbname}")).expect("creating the database");
    /// Drops the database when the test ends.
    struct Dropped(String);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ =
                admin_client(server().plain_port, "postgres").batch_execute(&format!("drop database if exists {} with (force)", self.0));
        }
    }
    let _dropped = Dropped(dbname.clone());
    admin_client(s.plain_port, &dbname)
        .batch_execute(&format!(
            "create table items (id int primary key); create publication tap_heroku for table items; grant select on items to {user}"
        ))
        .expect("creating the table");
    let config = write_json(&json!({"host": s.host, "port": s.plain_port, "user": user, "password": password, "dbname": dbname,
                                    "filter_dbs": dbname, "sslmode": "disable"}));
    let mut catalog = discover(&config);
    select(&mut catalog, "items", "LOG_BASED", None);
    let out = sync(&config, &catalog, None).fails_with(78, "the server's wal_level is replica, and LOG_BASED needs logical");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("ALTER SYSTEM SET wal_level = logical; then restart the server"), "{}", out.stderr);
    let slots: i64 = admin.query_one("select count(*) from pg_replication_slots", &[]).expect("reading the slots").get(0);
    assert_eq!(slots, 0, "no slot was created");
}

#[test]
fn log_based_values_equal_full_tables_also_for_columns_read_through_a_cast() {
    // Ranges, xml, macaddr, "char" (read ::text by FULL_TABLE), money (::numeric), arrays of
    // them, beside columns read as they are; 2,500 rows in one transaction (more than a batch of
    // rows waiting for the server's conversion), rows without a value to convert among them.
    let ldb = LogicalDb::new(
        "create table vals (id int primary key, r int4range, tr tstzrange, x xml, m macaddr, mo money, ra int4range[], \
         moa money[], c \"char\", n numeric, t text, ts timestamptz, j jsonb, a int[])",
        "create publication tap_heroku for table vals",
        json!({}),
    );
    let catalog = ldb.catalog("vals");
    let (_, state, _) = run(&ldb.config, &catalog, None);
    db_exec(
        &ldb,
        "insert into vals select g, \
           case when g % 3 = 0 then null else int4range(g, g + 10) end, \
           case when g % 5 = 0 then null else tstzrange('2024-01-01 12:00+02', '2024-01-01 12:00+02'::timestamptz + g * interval '1 hour') end, \
           case when g % 7 = 0 then null else ('<a>' || g || '</a>')::xml end, \
           ('08:00:2b:01:02:' || lpad(to_hex(g % 256), 2, '0'))::macaddr, \
           case when g % 11 = 0 then null else (g * 1.25)::money end, \
           array[int4range(1, g), null], array[g::money], chr(65 + g % 26)::\"char\", g / 7.0, 'é' || g, \
           '2024-03-01 10:00+00'::timestamptz + g * interval '1 minute', jsonb_build_object('g', g), array[g, null] \
         from generate_series(1, 2500) g where g % 13 <> 0; \
         insert into vals (id) select g from generate_series(1, 2500) g where g % 13 = 0",
    );
    db_exec(&ldb, "update vals set r = null, mo = 2.5 where id = 5; delete from vals where id = 6");
    let (changes, _, _) = run(&ldb.config, &catalog, Some(&state));
    let mut full = catalog.clone();
    select(&mut full, "vals", "FULL_TABLE", None);
    let (snapshot, _, _) = run(&ldb.config, &full, None);
    let expected: BTreeMap<i64, Value> = records(&snapshot, "vals").into_iter().map(|r| (r["id"].as_i64().unwrap(), r)).collect();
    assert_eq!(expected.len(), 2499);
    let got = records(&changes, "vals");
    // Commit order, and in a transaction the order of its changes.
    let ids: Vec<i64> = got.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let mut want_ids: Vec<i64> = (1..=2500).filter(|g| g % 13 != 0).collect();
    want_ids.extend((1..=2500).filter(|g| g % 13 == 0));
    want_ids.extend([5, 6]);
    assert_eq!(ids, want_ids);
    assert_changes_end_as(got, &expected, 6);
    assert_eq!(expected[&1]["r"], json!("[1,11)"), "a range as its text");
    assert_eq!(expected[&5]["mo"].to_string(), "2.50", "money as a number");
}

#[test]
fn log_based_values_pgoutput_sends_as_text_equal_full_tables() {
    // pgoutput sends a value in binary only when its type has a send function; on PostgreSQL 15
    // aclitem (core), seg and isn's types (contrib) have none and arrive as text ('t'), to be
    // converted by the server into FULL_TABLE's form. 1,500 rows in one transaction: more than a
    // batch of rows waiting for the conversion.
    let admin = &server().admin_user;
    let user = server().var("TAP_HEROKU_TEST_LOGICAL_USER").expect("tests/server.sh names the REPLICATION role");
    let ldb = LogicalDb::new(
        "create extension seg; create extension isn; \
         create table texts (id int primary key, a aclitem, s seg, i isbn, u upc, t text)",
        "create publication tap_heroku for table texts",
        json!({}),
    );
    let catalog = ldb.catalog("texts");
    let (_, state, _) = run(&ldb.config, &catalog, None);
    db_exec(
        &ldb,
        &format!(
            "insert into texts select g, \
               case g % 3 when 0 then '=r/{admin}'::aclitem when 1 then '{user}=ar*w/{admin}'::aclitem end, \
               case when g % 4 <> 0 then (g || ' .. ' || (g * 2.5))::seg end, \
               case when g % 5 <> 0 then '978-0-393-04002-9'::isbn end, \
               case when g % 7 <> 0 then '036000291452'::upc end, 'x' || g \
             from generate_series(1, 1500) g"
        ),
    );
    db_exec(&ldb, "update texts set s = '-1.5e3 .. 2'::seg, a = null where id = 5; delete from texts where id = 6");
    let (changes, _, _) = run(&ldb.config, &catalog, Some(&state));
    let mut full = catalog.clone();
    select(&mut full, "texts", "FULL_TABLE", None);
    let (snapshot, _, _) = run(&ldb.config, &full, None);
    let expected: BTreeMap<i64, Value> = records(&snapshot, "texts").into_iter().map(|r| (r["id"].as_i64().unwrap(), r)).collect();
    assert_eq!(expected.len(), 1499);
    let got = records(&changes, "texts");
    assert_eq!(got.len(), 1502, "1,500 inserts, an update, a delete");
    assert_changes_end_as(got, &expected, 6);
    assert_eq!(expected[&1]["a"], json!(format!("{user}=ar*w/{admin}")), "an aclitem as its text");
    assert_eq!(expected[&3]["a"], json!(format!("=r/{admin}")));
    assert_eq!(expected[&5]["s"], json!("-1.5e3 .. 2"), "a seg as its text");
    assert_eq!(expected[&1]["i"], json!("0-393-04002-X"), "an isbn as its text");
}

#[test]
fn log_based_refuses_a_published_array_column_pgoutput_cannot_send_before_any_output() {
    // aclitem has no binary send function: pgoutput's binary mode fails for an aclitem[] value.
    let admin = &server().admin_user;
    let ldb = LogicalDb::new(
        "create domain acls as aclitem[]; \
         create table perms (id int primary key, v text, a aclitem[], d acls, ok aclitem)",
        "create publication tap_heroku for table perms",
        json!({}),
    );
    let catalog = ldb.catalog("perms");
    let out = sync(&ldb.config, &catalog, None).fails_with(65, "cannot send column a, d in binary");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("Use XMIN or FULL_TABLE for it"), "{}", out.stderr);

    // A publication column list without those columns (PostgreSQL 15): refused while they are
    // selected (their values would be missing from every change), then the changes arrive.
    ldb.db.exec("drop publication tap_heroku; create publication tap_heroku for table perms (id, v, ok)");
    let out = sync(&ldb.config, &catalog, None).fails_with(78, "does not send column a, d of");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("Deselect the column in the catalog"), "{}", out.stderr);
    let mut catalog = catalog;
    for stream in catalog["streams"].as_array_mut().unwrap() {
        for entry in stream["metadata"].as_array_mut().unwrap() {
            if entry["breadcrumb"] == json!(["properties", "a"]) || entry["breadcrumb"] == json!(["properties", "d"]) {
                entry["metadata"]["selected"] = json!(false);
            }
        }
    }
    let (_, state, _) = run(&ldb.config, &catalog, None);
    db_exec(&ldb, &format!("insert into perms values (1, 'x', array['=r/{admin}'::aclitem], null, '=r/{admin}')"));
    let (changes, _, _) = run(&ldb.config, &catalog, Some(&state));
    assert_eq!(records(&changes, "perms"), vec![json!({"id": 1, "v": "x", "ok": format!("=r/{admin}"), "_sdc_deleted_at": null})]);
}

/// The slot's decoding statistics: `total_txns` and `total_bytes` of pg_stat_replication_slots.
fn decoded(ldb: &LogicalDb) -> (i64, i64) {
    let row = ldb
        .db
        .admin()
        .query_one(
            "select s.total_txns, s.total_bytes from pg_stat_replication_slots s join pg_replication_slots r using (slot_name) \
             where r.database = current_database()",
            &[],
        )
        .expect("the test's slot's statistics");
    (row.get(0), row.get(1))
}

#[test]
fn log_based_streams_of_one_database_share_one_peek_in_commit_order() {
    let ldb = LogicalDb::new(
        "create table a (id int primary key, v text); create table b (id int primary key, v text, m macaddr); \
         create table c (id int primary key); insert into a values (1, 'a1'); insert into b values (1, 'b1')",
        "create publication tap_heroku for table a, b, c",
        json!({}),
    );
    let mut catalog = ldb.catalog("a");
    select(&mut catalog, "b", "LOG_BASED", None);
    select(&mut catalog, "c", "LOG_BASED", None);
    let (sa, sb, sc) = (id(&ldb.db, "public", "a"), id(&ldb.db, "public", "b"), id(&ldb.db, "public", "c"));
    let lsn_of = |state: &Value, sid: &str| state["bookmarks"][sid]["lsn"].as_u64().unwrap_or_else(|| panic!("an lsn: {state}"));

    // First run: three snapshots, as before.
    let (_, state1, _) = run(&ldb.config, &catalog, None);

    // A run of a and b alone moves their bookmarks past a change c has not read yet.
    db_exec(&ldb, "insert into c values (1)");
    db_exec(&ldb, "insert into a values (100, 'early')");
    let mut ab = catalog.clone();
    stream_mut(&mut ab, "c")["metadata"][0]["metadata"]["selected"] = json!(false);
    let (early, state2, _) = run(&ldb.config, &ab, Some(&state1));
    assert_eq!(record_ids(&early, "a"), vec![100]);
    assert!(lsn_of(&state2, &sa) > lsn_of(&state1, &sa));
    assert_eq!(lsn_of(&state2, &sc), lsn_of(&state1, &sc), "c was not run");

    // Interleaved transactions of a, b and c.
    db_exec(&ldb, "begin; insert into a values (101, 'x'); insert into b values (201, 'x'); commit");
    db_exec(&ldb, "insert into b values (202, 'x')");
    db_exec(&ldb, "insert into a values (102, 'x')");
    db_exec(&ldb, "begin; insert into b values (203, 'x'); update a set v = 'y' where id = 101; insert into c values (2); commit");
    db_exec(&ldb, "delete from b where id = 1");
    // b's macaddr is converted by the server (FULL_TABLE reads it as text): its row waits, and a's
    // after it still comes after it.
    db_exec(&ldb, "begin; insert into b values (204, 'x', '08:00:2b:01:02:03'); insert into a values (103, 'x'); commit");

    // One peek's worth of decoding: c alone reads from the same slot position (the smallest
    // bookmark, c's) to the same end.
    let mut c_only = catalog.clone();
    for table in ["a", "b"] {
        stream_mut(&mut c_only, table)["metadata"][0]["metadata"]["selected"] = json!(false);
    }
    let before = decoded(&ldb);
    let (alone, _, _) = run(&ldb.config, &c_only, Some(&state2));
    assert_eq!(record_ids(&alone, "c"), vec![1, 2]);
    let one_peek = decoded(&ldb);
    let (one_txns, one_bytes) = (one_peek.0 - before.0, one_peek.1 - before.1);
    assert!(one_txns >= 8 && one_bytes > 0, "a peek decodes the changes: {before:?} -> {one_peek:?}");

    // All three: one peek, each stream from its own bookmark, RECORDs in commit order.
    let out: TapOutput = sync(&ldb.config, &catalog, Some(&state2)).success();
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    let after = decoded(&ldb);
    let (txns, bytes) = (after.0 - one_peek.0, after.1 - one_peek.1);
    assert_eq!(log_lines(&out, "INFO", &["in one peek of slot"]).len(), 1, "{}", out.stderr);
    // Three peeks would decode three times as much; a transaction of another session (autovacuum's)
    // may slip in between the two runs.
    assert!(
        txns < 2 * one_txns && bytes < 2 * one_bytes,
        "decoded once ({one_txns} txns, {one_bytes} bytes), not per stream: {txns} txns, {bytes} bytes"
    );
    let order: Vec<(String, i64)> = messages
        .iter()
        .filter(|m| m["type"] == "RECORD")
        .map(|m| (m["stream"].as_str().unwrap().to_string(), m["record"]["id"].as_i64().unwrap()))
        .collect();
    let want: Vec<(String, i64)> =
        [("c", 1), ("a", 101), ("b", 201), ("b", 202), ("a", 102), ("b", 203), ("a", 101), ("c", 2), ("b", 1), ("b", 204), ("a", 103)]
            .into_iter()
            .map(|(s, i)| (s.to_string(), i))
            .collect();
    assert_eq!(order, want, "each stream's own changes, in commit order; a's 100 is not sent again");
    for stream in ["a", "b", "c"] {
        let schema = messages.iter().position(|m| m["type"] == "SCHEMA" && m["stream"] == stream).expect("a SCHEMA");
        let first = messages.iter().position(|m| m["type"] == "RECORD" && m["stream"] == stream).expect("a RECORD");
        assert!(schema < first, "{stream}: the SCHEMA comes before its first RECORD");
    }
    let state3 = out.last_state();
    for sid in [&sa, &sb, &sc] {
        assert!(lsn_of(&state3, sid) > lsn_of(&state2, sid), "{sid}: its bookmark advanced");
    }
    assert_eq!(records(&messages, "b").last().unwrap()["m"], "08:00:2b:01:02:03");
    assert_eq!(state3["currently_syncing"], Value::Null);
    // Every STATE is the whole state.
    for m in messages.iter().filter(|m| m["type"] == "STATE") {
        for sid in [&sa, &sb, &sc] {
            assert!(m["value"]["bookmarks"][sid]["lsn"].is_u64(), "{m}");
        }
    }

    // Runs cut by max_run_seconds (0: each stops at its first commit) resume the three streams
    // from the STATE they left, currently_syncing naming the first of them, and lose nothing.
    for k in 0..12 {
        let table = ["a", "b", "c"][k % 3];
        let values = if table == "c" { format!("({})", 300 + k) } else { format!("({}, 'z')", 300 + k) };
        db_exec(&ldb, &format!("insert into {table} values {values}"));
    }
    let mut limited = ldb.config.clone();
    limited.set_extension("limited.json");
    let mut config = ldb.config_value();
    config["max_run_seconds"] = json!(0);
    std::fs::write(&limited, config.to_string()).unwrap();
    let (mut state, mut seen, mut runs) = (state3, Vec::new(), 0);
    loop {
        let (messages, next, _) = run(&limited, &catalog, Some(&state));
        seen.extend(messages.iter().filter(|m| m["type"] == "RECORD").map(|m| (m["stream"].clone(), m["record"]["id"].clone())));
        runs += 1;
        assert!(runs < 30, "the runs make progress");
        let done = next["currently_syncing"].is_null();
        if !done {
            assert!([&sa, &sb, &sc].iter().any(|sid| next["currently_syncing"] == sid.as_str()), "{next}");
        }
        state = next;
        if done {
            break;
        }
    }
    assert!(runs > 5, "max_run_seconds stopped the runs early ({runs} runs)");
    let want: Vec<(Value, Value)> = (0..12).map(|k| (json!(["a", "b", "c"][k % 3]), json!(300 + k))).collect();
    assert_eq!(seen, want, "every change once, in commit order");
}
