//! Faults made to happen for real, end to end: the server ends our backend mid-stream, the
//! target stops reading, SIGTERM/SIGINT, tables and columns changed between discovery and sync,
//! a statement timeout on the role, 50 MB values, identifiers (and catalog/state text) built to
//! break SQL, and secrets at trace level.
//!
//! Each interrupted run is resumed from the last STATE it wrote and the union of both runs is
//! compared with the table, id by id: nothing may be missing, and duplicates are allowed only
//! where docs/state-and-resume.md's guarantees allow them (none for FULL_TABLE in primary key order; the records
//! of the block range under way, and what the catch-up rule names, for FULL_TABLE by block
//! ranges; the bookmark row for INCREMENTAL).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::link::Link;
use crate::support::{
    TapOutput, TestDb, assert_records_match_schemas, catch_up_ids, fixture, id, root, select, server, stream_mut, sync, write_json,
};

/// Rows of the tables interrupted mid-stream: enough that a sync is far from done when we act.
const BIG_ROWS: i64 = 100_000;
/// Most a fault test may wait for the tap to exit after the fault.
const EXIT_LIMIT: Duration = Duration::from_secs(30);
/// A hung child is killed after this long, so a bug fails the test instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(120);

// ---- fixtures ------------------------------------------------------------------------------

/// A table `name (id int primary key, v int)` holding ids 1..=BIG_ROWS.
fn big_table_sql(name: &str) -> String {
    format!(
        "create table {name} (id int primary key, v int not null); insert into {name} select g, g * 7 from generate_series(1, {BIG_ROWS}) g; analyze {name}"
    )
}

/// The command line of a sync.
fn sync_args(config: &Path, catalog: &Value, state: Option<&Value>) -> Vec<String> {
    let mut args = vec!["--config".into(), config.display().to_string(), "--catalog".into(), write_json(catalog).display().to_string()];
    if let Some(state) = state {
        args.push("--state".into());
        args.push(write_json(state).display().to_string());
    }
    args
}

// ---- a tap we can interrupt ----------------------------------------------------------------

/// A running tap-heroku whose stdout the test reads line by line, so that it can act (terminate
/// the backend, send a signal, close the pipe) at a chosen point of the stream. While the test
/// does not read, the tap blocks on the full pipe. A watchdog kills it after [`WATCHDOG`].
struct Live {
    /// The process.
    child: Child,
    /// Its stdout, until read to the end or closed.
    out: Option<BufReader<ChildStdout>>,
    /// Every byte read from stdout so far.
    stdout: Vec<u8>,
    /// Collects stderr.
    stderr: Option<JoinHandle<String>>,
    /// Set once the process has been reaped (stops the watchdog and the RSS sampler).
    done: Arc<AtomicBool>,
    /// Highest VmHWM (kB) seen in /proc/<pid>/status.
    peak_rss_kb: Arc<AtomicU64>,
    /// Samples VmHWM while the process runs.
    sampler: Option<JoinHandle<()>>,
}

/// What a [`Live`] run printed, with its peak RSS.
struct Finished {
    /// stdout, stderr and exit code.
    out: TapOutput,
    /// Peak resident set size in kB (VmHWM, sampled every few ms).
    peak_rss_kb: u64,
    /// From the end of the test's action to the exit.
    exit_after: Duration,
}

impl Live {
    /// Starts the binary with `args` and extra environment (no `DATABASE_URL`, no `RUST_LOG`).
    fn spawn(args: &[String], env: &[(&str, &str)]) -> Live {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-heroku"));
        cmd.args(args).env_remove("DATABASE_URL").env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting tap-heroku");
        let pid = child.id();
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let done = Arc::new(AtomicBool::new(false));
        let watchdog_done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < WATCHDOG {
                if watchdog_done.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !watchdog_done.load(Ordering::SeqCst) {
                eprintln!("watchdog: tap-heroku (pid {pid}) still runs after {WATCHDOG:?}; killing it");
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        });
        let peak_rss_kb = Arc::new(AtomicU64::new(0));
        let (sampler_done, peak) = (Arc::clone(&done), Arc::clone(&peak_rss_kb));
        let sampler = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !sampler_done.load(Ordering::SeqCst) {
                if let Some(kb) = std::fs::read_to_string(&path).ok().as_deref().and_then(vm_hwm_kb) {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let out = Some(BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped stdout")));
        Live { child, out, stdout: Vec::new(), stderr: Some(stderr), done, peak_rss_kb, sampler: Some(sampler) }
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the next stdout line as a message; `None` at the end of stdout (or after a
    /// partial last line, which [`Live::finish`]'s output then shows).
    fn next_message(&mut self) -> Option<Value> {
        let out = self.out.as_mut().expect("stdout is open");
        let mut line = Vec::new();
        let n = out.read_until(b'\n', &mut line).expect("reading the tap's stdout");
        self.stdout.extend_from_slice(&line);
        if n == 0 || line.last() != Some(&b'\n') {
            return None;
        }
        Some(serde_json::from_slice(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {}", String::from_utf8_lossy(&line))))
    }

    /// Reads messages until `n` RECORDs were seen; panics when stdout ends first.
    fn read_records(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let m = self.next_message().unwrap_or_else(|| panic!("stdout ended after {seen} records, before {n}"));
            if m["type"] == "RECORD" {
                seen += 1;
            }
        }
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with kill(1).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Closes our end of stdout: the tap's next write fails with EPIPE.
    fn close_stdout(&mut self) {
        self.out = None;
    }

    /// Reads the rest of stdout and waits (at most `limit`) for the exit.
    fn finish(mut self, limit: Duration) -> Finished {
        let acted = Instant::now();
        if let Some(mut out) = self.out.take() {
            out.read_to_end(&mut self.stdout).expect("reading the tap's stdout");
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tap-heroku") {
                break status;
            }
            if acted.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.done.store(true, Ordering::SeqCst);
                panic!("tap-heroku did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exit_after = acted.elapsed();
        self.done.store(true, Ordering::SeqCst);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let stderr = self.stderr.take().expect("stderr collector").join().expect("stderr collector thread");
        Finished {
            out: TapOutput {
                stdout: String::from_utf8(std::mem::take(&mut self.stdout)).expect("stdout is UTF-8"),
                stderr,
                code: status.code().unwrap_or(-1),
            },
            peak_rss_kb: self.peak_rss_kb.load(Ordering::SeqCst),
            exit_after,
        }
    }
}

/// `VmHWM` (peak resident set, kB) from the text of /proc/<pid>/status.
fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()
}

// ---- assertions ----------------------------------------------------------------------------

/// The `tap-heroku: error: ` lines of stderr.
fn error_lines(out: &TapOutput) -> Vec<&str> {
    out.stderr.lines().filter(|l| l.starts_with("tap-heroku: error: ")).collect()
}

/// Asserts the failure format: exit `code`, no panic, exactly one error line containing every
/// `needles`, followed by a hint sentence when `hint` (which must be the last stderr line).
fn assert_failure(out: &TapOutput, label: &str, code: i32, needles: &[&str], hint: bool) {
    let ctx = || format!("[{label}] exit {}\nstderr:\n{}", out.code, out.stderr);
    assert_eq!(out.code, code, "wrong exit code, expected {code}: {}", ctx());
    assert!(!out.stderr.contains("panicked"), "panic text in stderr: {}", ctx());
    let errors = error_lines(out);
    assert_eq!(errors.len(), 1, "expected exactly one error line: {}", ctx());
    for n in needles {
        assert!(errors[0].contains(n), "the error line does not mention {n:?}: {}", ctx());
    }
    if hint {
        let lines: Vec<&str> = out.stderr.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("tap-heroku: error: ")).unwrap();
        let hint = lines.get(at + 1).unwrap_or_else(|| panic!("no hint line after the error line: {}", ctx()));
        assert_eq!(at + 2, lines.len(), "the hint must be the last stderr line: {}", ctx());
        assert!(
            hint.len() > 10 && hint.trim_end().ends_with('.') && !hint.starts_with("tap-heroku:"),
            "hint is not a sentence: {hint:?}: {}",
            ctx()
        );
    }
}

/// The `id`s of `stream`'s RECORDs.
fn record_ids(messages: &[Value], stream: &str) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
        .map(|m| m["record"]["id"].as_i64().unwrap_or_else(|| panic!("record without an integer id: {m}")))
        .collect()
}

/// Index of the last STATE message.
fn last_state_at(messages: &[Value]) -> usize {
    messages.iter().rposition(|m| m["type"] == "STATE").expect("a STATE message")
}

/// Asserts that `ids` holds every id of 1..=rows, nothing else, and more than once only the ids
/// in `may_repeat`. Reports counts (and a few examples), not 200,000 numbers.
fn assert_covers(ids: &[i64], rows: i64, may_repeat: &BTreeSet<i64>, label: &str) {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for &i in ids {
        *count.entry(i).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=rows).filter(|i| !count.contains_key(i)).collect();
    let extra: Vec<i64> = count.keys().copied().filter(|i| !(1..=rows).contains(i)).collect();
    let repeated: Vec<i64> = count.iter().filter(|(i, n)| **n > 1 && !may_repeat.contains(i)).map(|(i, _)| *i).collect();
    let few = |v: &[i64]| v.iter().take(10).map(i64::to_string).collect::<Vec<_>>().join(", ");
    assert!(missing.is_empty(), "[{label}] {} ids never sent, e.g. {}", missing.len(), few(&missing));
    assert!(extra.is_empty(), "[{label}] ids not in the table: {}", few(&extra));
    assert!(repeated.is_empty(), "[{label}] {} ids sent twice, e.g. {}", repeated.len(), few(&repeated));
}

/// The stderr lines starting with `level` (`WARN`, `ERROR`) that contain every `needles`.
fn log_lines<'a>(out: &'a TapOutput, level: &str, needles: &[&str]) -> Vec<&'a str> {
    out.stderr.lines().filter(|l| l.starts_with(level) && needles.iter().all(|n| l.contains(n))).collect()
}

/// The streams that have a SCHEMA message, in order.
fn schema_streams(messages: &[Value]) -> Vec<String> {
    messages.iter().filter(|m| m["type"] == "SCHEMA").map(|m| m["stream"].as_str().unwrap().to_string()).collect()
}

/// The `record`s of `stream`'s RECORDs.
fn records(messages: &[Value], stream: &str) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["record"].clone()).collect()
}

/// Lowercase hex md5 of `bytes`.
fn md5_hex(bytes: &[u8]) -> String {
    let digest = openssl::hash::hash(openssl::hash::MessageDigest::md5(), bytes).expect("md5");
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- 1. the server ends our backend mid-stream -----------------------------------------------

/// Terminates every tap-heroku backend of `db`'s role; returns how many were ended.
fn terminate_tap_backends(db: &TestDb) -> i64 {
    db.admin()
        .query_one(
            "select count(*) from (select pg_terminate_backend(pid) as ok from pg_stat_activity \
             where usename = $1 and application_name = 'tap-heroku') t where ok",
            &[&db.role],
        )
        .expect("terminating the tap's backend")
        .get(0)
}

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
    // Without reconnects, so the run ends with the failure (reconnects: tests/reconnect.rs).
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

/// A view whose rows each take `per_row` seconds: the tap is waiting for the server, not for
/// the pipe, when the fault hits.
fn slow_view_sql(name: &str, rows: i64, per_row: f64) -> String {
    format!(
        "create function {name}_slow(i int) returns int language plpgsql as $$ begin perform pg_sleep({per_row}); return i; end $$; \
         create view {name} as select {name}_slow(g) as id from generate_series(1, {rows}) g"
    )
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
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(terminate_tap_backends(&db), 1, "one tap-heroku backend, busy in its query");
    let out = live.finish(EXIT_LIMIT).out;
    let messages = out.messages();
    let kinds: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["SCHEMA", "STATE", "ACTIVATE_VERSION"], "no record was sent");
    // Today: exit 65, `... reading rows: db error: FATAL: terminating connection due to
    // administrator command` and no hint line (an idle backend gives "connection closed", 69).
    assert_failure(&out, "terminated during a query", 69, &[&sid], true);
}

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

// ---- 3. SIGTERM and SIGINT -----------------------------------------------------------------

/// Interrupts a sync of a BIG_ROWS table with `signal` after 3,000 records, checks the exit and
/// the output, resumes from the last STATE and checks the union of both runs. `method`:
/// `FULL_TABLE` (in primary key order), `PHYSICAL` (FULL_TABLE in block ranges) or `INCREMENTAL`.
fn interrupt_and_resume(signal: &str, code: i32, method: &str) {
    let table = format!("sig_{}_{}", signal.to_lowercase(), method.to_lowercase());
    let order = if method == "PHYSICAL" { "physical" } else { "primary_key" };
    let (db, config, mut catalog) = fixture(&big_table_sql(&table), json!({"full_table_order": order, "itersize": 1000}));
    let catalog_method = if method == "INCREMENTAL" { "INCREMENTAL" } else { "FULL_TABLE" };
    select(&mut catalog, &table, catalog_method, (method == "INCREMENTAL").then_some("id"));
    let sid = id(&db, "public", &table);
    let label = format!("SIG{signal} during {method}");

    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    live.read_records(3_000);
    live.signal(signal);
    let first = live.finish(EXIT_LIMIT).out;
    assert_failure(&first, &label, code, &[&format!("SIG{signal}"), &sid], true);
    let messages = first.messages(); // also: stdout ends with a full line
    assert_records_match_schemas(&messages);
    let last = messages.last().expect("messages");
    assert_eq!(last["type"], "STATE", "[{label}] the last message is a STATE: {last}");
    let state = last["value"].clone();
    assert_eq!(state["currently_syncing"], json!(sid), "[{label}]");
    let before = record_ids(&messages, &table);
    assert!(before.len() >= 3_000 && (before.len() as i64) < BIG_ROWS, "[{label}] cut mid-stream: {} records", before.len());
    let bookmark = &state["bookmarks"][&sid];
    let last_sent = *before.last().unwrap();
    let may_repeat: BTreeSet<i64> = match method {
        "FULL_TABLE" => {
            assert_eq!(bookmark["last_pk_fetched"], json!({"id": last_sent}), "[{label}] the STATE covers the last record");
            BTreeSet::new()
        }
        "PHYSICAL" => {
            // The STATEs written on the signal repeat the last block range's: the records after
            // it (of the range under way) come again, and whatever the catch-up rule names.
            let range_start =
                messages.iter().position(|m| m["type"] == "STATE" && m["value"] == state).expect("the final STATE's first occurrence");
            assert!(bookmark["block_resume"]["next_block"].as_u64().is_some_and(|b| b > 0), "[{label}] a block mark: {bookmark}");
            let partial = record_ids(&messages[range_start..], &table);
            partial.into_iter().chain(catch_up_ids(&db, &table, bookmark)).collect()
        }
        _ => {
            // INCREMENTAL resumes with `>=`: the bookmark row is sent again, nothing else.
            assert_eq!(bookmark["replication_key_value"], json!(last_sent), "[{label}] the STATE covers the last record");
            BTreeSet::from([last_sent])
        }
    };

    let second = sync(&config, &catalog, Some(&state)).success();
    let resumed = second.messages();
    assert_records_match_schemas(&resumed);
    let union: Vec<i64> = before.iter().copied().chain(record_ids(&resumed, &table)).collect();
    assert_covers(&union, BIG_ROWS, &may_repeat, &label);
    if method == "INCREMENTAL" {
        assert_eq!(record_ids(&resumed, &table)[0], last_sent, "[{label}] the bookmark row comes again first");
    }
}

#[test]
fn sigterm_while_the_server_computes_a_batch_exits_promptly() {
    let (db, config, mut catalog) = fixture("create view slow_one as select 1 as id from (select pg_sleep(6)) s", json!({}));
    select(&mut catalog, "slow_one", "FULL_TABLE", None);
    let mut live = Live::spawn(&sync_args(&config, &catalog, None), &[]);
    for _ in 0..2 {
        live.next_message().expect("SCHEMA and STATE");
    }
    std::thread::sleep(Duration::from_millis(300));
    live.signal("TERM");
    let finished = live.finish(EXIT_LIMIT);
    // Today: exit 143 only once the 6 s query returned its row (about 5.7 s after the signal).
    assert!(finished.exit_after < Duration::from_secs(2), "SIGTERM took {:?} to stop the tap", finished.exit_after);
    assert_failure(&finished.out, "SIGTERM while waiting", 143, &["SIGTERM", &id(&db, "public", "slow_one")], true);
    assert_eq!(finished.out.messages().last().unwrap()["type"], "STATE");
}

#[test]
fn sigterm_mid_full_table_in_key_order_exits_143_and_resumes_exactly_once() {
    interrupt_and_resume("TERM", 143, "FULL_TABLE");
}

#[test]
fn sigterm_mid_physical_full_table_exits_143_and_resumes_without_loss() {
    interrupt_and_resume("TERM", 143, "PHYSICAL");
}

#[test]
fn sigint_mid_full_table_in_key_order_exits_130_and_resumes_exactly_once() {
    interrupt_and_resume("INT", 130, "FULL_TABLE");
}

#[test]
fn sigint_mid_incremental_exits_130_and_resumes_repeating_only_the_bookmark_row() {
    interrupt_and_resume("INT", 130, "INCREMENTAL");
}

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
    // Today: a_first syncs, then `stream ...ts_key: reading rows: db error: ERROR: invalid input
    // syntax for type timestamp with time zone: "yesterday-ish"`, exit 65, no hint line.
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

// ---- 5. rows larger than usual ---------------------------------------------------------------

/// One row of `wide` as the server measures it: id, bytea length and md5, jsonb text length and md5.
type ServerRow = (i32, Option<i32>, Option<String>, Option<i32>, Option<String>);

#[test]
fn fifty_megabyte_bytea_and_ten_megabyte_jsonb_pass_with_bounded_memory() {
    let (db, config, mut catalog) = fixture(
        "create table wide (id int primary key, b bytea, j jsonb); \
         alter table wide alter column b set storage external; \
         insert into wide select 1, string_agg(sha512(int4send(g)), ''::bytea), null from generate_series(1, 819200) g; \
         insert into wide select 2, null, jsonb_agg(jsonb_build_object('i', g, 's', md5(g::text) || E' \"q\" \\\\ \\n ü')) from generate_series(1, 180000) g; \
         insert into wide values (3, '\\x00ff', '{\"small\": true}')",
        json!({"itersize": 1}),
    );
    select(&mut catalog, "wide", "FULL_TABLE", None);
    let want: Vec<ServerRow> = db
        .admin()
        .query("select id, octet_length(b), md5(b), octet_length(j::text), md5(j::text) from wide order by id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(want[0].1, Some(50 << 20), "a 50 MiB bytea");
    assert!(want[1].3.unwrap() >= 10 << 20, "a jsonb of at least 10 MiB: {:?}", want[1].3);

    let started = Instant::now();
    let finished = Live::spawn(&sync_args(&config, &catalog, None), &[]).finish(Duration::from_secs(90));
    let elapsed = started.elapsed();
    let out = finished.out.success();
    let messages = out.messages();
    let rows = records(&messages, "wide");
    assert_eq!(rows.len(), 3);
    for (row, (id, b_len, b_md5, j_len, j_md5)) in rows.iter().zip(&want) {
        assert_eq!(row["id"], json!(id));
        match (b_len, b_md5) {
            (Some(len), Some(md5)) => {
                let hex = row["b"].as_str().expect("bytea as a hex string");
                assert_eq!(hex.len(), 2 * *len as usize, "row {id}: bytea length");
                let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
                assert_eq!(&md5_hex(&bytes), md5, "row {id}: bytea content");
            }
            _ => assert_eq!(row["b"], Value::Null),
        }
        match (j_len, j_md5) {
            (Some(len), Some(md5)) => {
                let text = row["j"].as_str().expect("jsonb as a string");
                assert_eq!(text.len(), *len as usize, "row {id}: jsonb length");
                assert_eq!(&md5_hex(text.as_bytes()), md5, "row {id}: jsonb text");
            }
            _ => assert_eq!(row["j"], Value::Null),
        }
    }
    let peak_mb = finished.peak_rss_kb / 1024;
    eprintln!(
        "PEAK RSS of tap-heroku with a 50 MiB bytea and a {} MiB jsonb, itersize 1: {peak_mb} MiB ({elapsed:?})",
        want[1].3.unwrap() >> 20
    );
    assert!(finished.peak_rss_kb > 0, "VmHWM was sampled");
    assert!(peak_mb < 400, "peak RSS {peak_mb} MiB for a 50 MiB row");
}

// ---- 6. identifiers made to break SQL --------------------------------------------------------

/// Reads the statements the server logged for a role with `log_statement = 'all'`
/// (tests/server.sh writes the primary's log next to its sockets).
struct StatementLog {
    /// The log file.
    path: PathBuf,
    /// Its length when logging was switched on.
    start: u64,
}

impl StatementLog {
    /// Logs every statement of `db`'s role from now on.
    fn start(db: &TestDb) -> StatementLog {
        let path = PathBuf::from(&server().socket_dir).join("primary.log");
        let start =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("the server log {} ({e}): tests/server.sh writes it", path.display())).len();
        db.exec(&format!("alter role {} set log_statement = 'all'", db.role));
        StatementLog { path, start }
    }

    /// The SQL text of every statement logged since [`StatementLog::start`] (log entries
    /// `LOG:  execute ...`, `LOG:  statement: ...` and the `STATEMENT:` of an error), with
    /// continuation lines (identifiers with newlines) joined back.
    fn statements(&self) -> Vec<String> {
        let bytes = std::fs::read(&self.path).expect("reading the server log");
        let text = String::from_utf8_lossy(&bytes[self.start as usize..]).into_owned();
        let starts_entry = |l: &str| {
            let b = l.as_bytes();
            b.len() > 24 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b' ' && b[13] == b':'
        };
        let mut entries: Vec<String> = Vec::new();
        for line in text.split('\n') {
            if starts_entry(line) || entries.is_empty() {
                entries.push(line.to_string());
            } else {
                let last = entries.last_mut().unwrap();
                last.push('\n');
                last.push_str(line);
            }
        }
        entries
            .into_iter()
            .filter_map(|e| {
                ["] LOG:  execute ", "] LOG:  statement: ", "] STATEMENT:  "]
                    .iter()
                    .find_map(|tag| e.find(tag).map(|at| e[at + tag.len()..].to_string()))
            })
            .collect()
    }
}

/// Asserts that `payload` (which contains `marker` and a `"`) reached the server only inside
/// quoted identifiers: in every logged statement, once each `""`-doubled copy of it is taken out,
/// `marker` is gone. Also asserts that some statement did name it (the check is not vacuous).
fn assert_only_quoted(log: &StatementLog, payload: &str, marker: &str) {
    let quoted = payload.replace('"', "\"\"");
    let statements = log.statements();
    assert!(statements.iter().any(|s| s.contains(&quoted)), "no logged statement names the payload; is log_statement working?");
    for s in &statements {
        let rest = s.replace(&quoted, "");
        assert!(!rest.contains(marker), "the payload reached SQL text unquoted:\n{s}");
    }
}

/// Payload, marker and canary table name for one test.
fn payload() -> (String, String) {
    let canary = format!("canary_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    (format!("q'\"; drop table {canary}; -- \\"), canary)
}

#[test]
fn hostile_identifiers_replicate_and_never_reach_sql_unquoted() {
    let (p, canary) = payload();
    let q = |s: &str| s.replace('"', "\"\"");
    let schema = format!("Sch {p}");
    let (full, inc) = (p.clone(), format!("order {p}"));
    let (pk, key) = (format!("id {p}"), format!("updated at {p}"));
    let domain = format!("ts {p}");
    let cols = [format!("Sel{p}"), "select".to_string(), "MiXeD Case".to_string(), format!("ünï 😀 {p}"), "new\nline".to_string()];
    let sql = format!(
        r#"create table {canary} (id int);
           create schema "{s}";
           create domain "{s}"."{dom}" as timestamptz;
           create table "{s}"."{full}" ("{pk}" int primary key, "{c0}" text, "{c1}" text, "{c2}" int, "{c3}" text, "{c4}" text);
           insert into "{s}"."{full}" select g, 'sel ' || g, 'select ' || g, -g, 'ü ' || g, E'nl\n' || g from generate_series(1, 7) g;
           create table "{s}"."{inc}" (id int primary key, "{key}" "{s}"."{dom}");
           create index on "{s}"."{inc}" ("{key}");
           insert into "{s}"."{inc}" select g, timestamptz '2024-06-01 00:00:00+00' + g * interval '1 hour' from generate_series(1, 6) g"#,
        s = q(&schema),
        dom = q(&domain),
        full = q(&full),
        inc = q(&inc),
        pk = q(&pk),
        key = q(&key),
        c0 = q(&cols[0]),
        c1 = q(&cols[1]),
        c2 = q(&cols[2]),
        c3 = q(&cols[3]),
        c4 = q(&cols[4]),
    );
    let (db, config, mut catalog) = fixture(&sql, json!({"itersize": 3}));
    db.exec(&format!("alter table {canary} owner to {}", db.role));
    let log = StatementLog::start(&db);
    select(&mut catalog, &full, "FULL_TABLE", None);
    select(&mut catalog, &inc, "INCREMENTAL", Some(&key));
    let (id_full, id_inc) = (id(&db, &schema, &full), id(&db, &schema, &inc));
    let row_full = |g: i64| json!({&pk: g, &cols[0]: format!("sel {g}"), &cols[1]: format!("select {g}"), &cols[2]: -g, &cols[3]: format!("ü {g}"), &cols[4]: format!("nl\n{g}")});
    let row_inc = |g: i64| json!({"id": g, &key: format!("2024-06-01T{g:02}:00:00+00:00")});

    let first = sync(&config, &catalog, None).success();
    let messages = first.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(records(&messages, &full), (1..=7).map(row_full).collect::<Vec<_>>());
    assert_eq!(records(&messages, &inc), (1..=6).map(row_inc).collect::<Vec<_>>());
    let schema_msg = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == json!(full)).unwrap();
    assert_eq!(schema_msg["key_properties"], json!([pk]));
    let end = messages.last().unwrap()["value"].clone();
    assert_eq!(end["bookmarks"][&id_inc]["replication_key"], json!(key));
    assert_eq!(end["bookmarks"][&id_inc]["replication_key_value"], json!("2024-06-01T06:00:00+00:00"));

    // Resume both: FULL_TABLE after a hostile primary key, INCREMENTAL from a bookmark cast to
    // the hostile domain type.
    let version = end["bookmarks"][&id_full]["version"].clone();
    db.exec(&format!(r#"insert into "{}"."{}" values (7, '2024-06-01 09:00:00+00')"#, q(&schema), q(&inc)));
    let mut state = end.clone();
    state["currently_syncing"] = json!(id_full);
    state["bookmarks"][&id_full] = json!({"last_replication_method": "FULL_TABLE", "version": version, "last_pk_fetched": {&pk: 4}});
    let second = sync(&config, &catalog, Some(&state)).success();
    let messages = second.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(records(&messages, &full), (5..=7).map(row_full).collect::<Vec<_>>());
    assert_eq!(records(&messages, &inc), [row_inc(6), json!({"id": 7, &key: "2024-06-01T09:00:00+00:00"})]);

    assert_only_quoted(&log, &p, &canary);
    let exists: bool = db.admin().query_one("select to_regclass($1) is not null", &[&canary]).unwrap().get(0);
    assert!(exists, "the canary table still exists");
}

#[test]
fn hostile_catalog_and_state_text_is_skipped_or_bound_never_executed() {
    let (p, canary) = payload();
    let q = |s: &str| s.replace('"', "\"\"");
    let text_table = format!("t{p}");
    let text_key = format!("k{p}");
    let sql = format!(
        r#"create table {canary} (id int);
           create table a_ok (id int primary key, n int); insert into a_ok select g, g from generate_series(1, 3) g;
           create table "{t}" ("{k}" text primary key, n int);
           insert into "{t}" select v, ord::int from unnest(array['a', 'q', 'q''', 'q''"', $x${pp}$x$, 'r', 'zz', '', ' ']) with ordinality u(v, ord)"#,
        t = q(&text_table),
        k = q(&text_key),
        pp = p,
    );
    let (db, config, catalog) = fixture(&sql, json!({}));
    db.exec(&format!("alter table {canary} owner to {}", db.role));
    let log = StatementLog::start(&db);

    // Catalog entries whose metadata carries the payload, next to a real stream.
    let mut cat = catalog.clone();
    select(&mut cat, "a_ok", "FULL_TABLE", None);
    let base = stream_mut(&mut cat, "a_ok").clone();
    let fake = |n: usize, edit: &dyn Fn(&mut Value)| {
        let mut s = base.clone();
        s["tap_stream_id"] = json!(format!("fake-{n}"));
        s["stream"] = json!(format!("fake_{n}"));
        edit(&mut s);
        s
    };
    let set_root = |s: &mut Value, k: &str, v: Value| s["metadata"][0]["metadata"][k] = v;
    let fakes = vec![
        fake(1, &|s| set_root(s, "schema-name", json!(p))),
        fake(2, &|s| s["table_name"] = json!(p)),
        fake(3, &|s| {
            s["metadata"]
                .as_array_mut()
                .unwrap()
                .push(json!({"breadcrumb": ["properties", text_key], "metadata": {"inclusion": "available"}}));
            set_root(s, "replication-method", json!("INCREMENTAL"));
            set_root(s, "replication-key", json!(text_key));
        }),
        fake(4, &|s| {
            s["metadata"]
                .as_array_mut()
                .unwrap()
                .push(json!({"breadcrumb": ["properties", format!("c{p}")], "metadata": {"selected": true}}));
        }),
    ];
    cat["streams"].as_array_mut().unwrap().extend(fakes);
    let out = sync(&config, &cat, None);
    assert_failure(&out, "hostile catalog", 65, &["fake-1", "no longer exists"], true);
    let messages = out.messages();
    assert_eq!(schema_streams(&messages), ["a_ok"], "only the real stream syncs");
    assert_eq!(record_ids(&messages, "a_ok"), [1, 2, 3]);
    for (fake_id, needle) in
        [("fake-1", "no longer exists"), ("fake-2", "no longer exists"), ("fake-3", "no longer exists"), ("fake-4", "no longer exists")]
    {
        assert_eq!(log_lines(&out, "ERROR", &[fake_id, needle]).len(), 1, "{fake_id}:\n{}", out.stderr);
    }

    // A database-name carrying the payload is a connection to a database that does not exist.
    let mut cat = catalog.clone();
    select(&mut cat, "a_ok", "FULL_TABLE", None);
    root(&mut cat, "a_ok")["database-name"] = json!(p);
    let out = sync(&config, &cat, None);
    assert_failure(&out, "hostile database-name", 78, &["does not exist"], true);
    assert!(out.stdout.is_empty());

    // State values are bound parameters: a text key's bookmark equal to the payload selects the
    // rows at or after it, exactly as the server compares them.
    let sid = id(&db, "public", &text_table);
    let want = |op: &str| -> Vec<String> {
        db.admin()
            .query(&format!(r#"select "{k}" from "{t}" where "{k}" {op} $1 order by "{k}""#, k = q(&text_key), t = q(&text_table)), &[&p])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let keys = |messages: &[Value]| -> Vec<String> {
        records(messages, &text_table).iter().map(|r| r[&text_key].as_str().unwrap().to_string()).collect()
    };
    let mut cat = catalog.clone();
    select(&mut cat, &text_table, "INCREMENTAL", Some(&text_key));
    let state = json!({"bookmarks": {&sid: {"replication_key": text_key, "replication_key_value": p, "version": 1}}});
    let messages = sync(&config, &cat, Some(&state)).success().messages();
    let got = keys(&messages);
    assert_eq!(got, want(">="), "INCREMENTAL from a hostile bookmark");
    assert_eq!(got.first(), Some(&p), "the row equal to the bookmark comes first");

    let mut cat = catalog.clone();
    select(&mut cat, &text_table, "FULL_TABLE", None);
    let state = json!({"currently_syncing": sid, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": 1, "last_pk_fetched": {&text_key: p}}}});
    let messages = sync(&config, &cat, Some(&state)).success().messages();
    let mut got = keys(&messages);
    got.sort();
    let mut after = want(">");
    after.sort();
    assert_eq!(got, after, "FULL_TABLE resumed after a hostile last_pk_fetched");

    assert_only_quoted(&log, &p, &canary);
    let exists: bool = db.admin().query_one("select to_regclass($1) is not null", &[&canary]).unwrap().get(0);
    assert!(exists, "the canary table still exists");
}

// ---- 7. no secret leaks --------------------------------------------------------------------

/// Arguments and extra environment of one run.
type Invocation = (Vec<String>, Vec<(&'static str, String)>);

/// `text` with every byte that is not alphanumeric percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn secrets_stay_hidden_at_trace_level_in_failures_and_successes() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("Pw-{}-@:/%?#&x", &tag[..16]);
    let wrong = format!("Wrong-{}-@:/", &tag[16..]);
    let (db, _, catalog) = fixture(
        "create table items (id int primary key, note text); insert into items select g, 'n' || g from generate_series(1, 5) g; \
         create table doomed (id int primary key); insert into doomed values (1)",
        json!({}),
    );
    db.exec(&format!("alter role {} password '{secret}'", db.role));
    let s = server();
    let url = |port: u16, dbname: &str| format!("postgres://{}:{}@{}:{port}/{dbname}", db.role, percent_encode(&secret), s.host);
    let good_url = url(s.port, &db.name);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_url = |u: &str, extra: Value| {
        let mut c = json!({"database_url": u});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(&c)
    };
    let discrete = |extra: Value| {
        let mut c = db.config();
        c["password"] = json!(secret);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(&c)
    };
    let mut items = catalog.clone();
    select(&mut items, "items", "FULL_TABLE", None);
    let mut both = items.clone();
    select(&mut both, "doomed", "FULL_TABLE", None);
    let catalog_path = |c: &Value| write_json(c).display().to_string();
    let run = |config: PathBuf, catalog: Option<&Value>, env: Vec<(&'static str, String)>| -> Invocation {
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        match catalog {
            Some(c) => args.extend(["--catalog".to_string(), catalog_path(c)]),
            None => args.push("--discover".into()),
        }
        (args, env)
    };

    // (label, expected exit code, args and env); all at RUST_LOG=trace.
    let runs: Vec<(&str, i32, Invocation)> = vec![
        ("discover, database_url", 0, run(config_url(&good_url, json!({})), None, vec![])),
        ("sync, database_url", 0, run(config_url(&good_url, json!({"itersize": 2})), Some(&items), vec![])),
        ("sync, discrete keys", 0, run(discrete(json!({})), Some(&items), vec![])),
        ("sync, DATABASE_URL", 0, run(write_json(&json!({})), Some(&items), vec![("DATABASE_URL", good_url.clone())])),
        ("closed port", 69, run(config_url(&url(closed, &db.name), json!({"connect_timeout": 5})), Some(&items), vec![])),
        ("unknown database", 78, run(config_url(&url(s.port, "no_such_db_x"), json!({})), None, vec![])),
        ("sslmode disable", 69, run(config_url(&format!("{good_url}?sslmode=disable"), json!({})), Some(&items), vec![])),
        ("wrong password", 77, run(discrete(json!({"password": wrong})), Some(&items), vec![])),
        (
            "port out of range in the URL",
            78,
            run(config_url(&url(s.port, &db.name).replace(&format!(":{}/", s.port), ":99999/"), json!({})), Some(&items), vec![]),
        ),
        ("bad percent escape after the password", 78, run(config_url(&format!("{good_url}%zz"), json!({})), Some(&items), vec![])),
        ("about", 0, (vec!["--about".into(), "--config".into(), config_url(&good_url, json!({})).display().to_string()], vec![])),
    ];
    let mut failing_sync = run(config_url(&good_url, json!({})), Some(&both), vec![]);
    failing_sync.1.push(("RUST_LOG", "trace".into()));

    let secrets = [secret.clone(), percent_encode(&secret), tag[..16].to_string(), wrong.clone(), tag[16..].to_string(), good_url.clone()];
    let check = |label: &str, out: &TapOutput| {
        for sec in &secrets {
            assert!(!out.stdout.contains(sec.as_str()), "[{label}] stdout contains {sec:?}");
            assert!(!out.stderr.contains(sec.as_str()), "[{label}] stderr contains {sec:?}:\n{}", out.stderr);
        }
        assert!(!out.stderr.contains("panicked"), "[{label}] {}", out.stderr);
    };
    for (label, code, (args, mut env)) in runs {
        env.push(("RUST_LOG", "trace".into()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = crate::support::tap_env(&args, &env);
        assert_eq!(out.code, code, "[{label}] exit code; stderr:\n{}", out.stderr);
        assert!(
            code != 0 || label == "about" || out.stderr.lines().any(|l| l.starts_with("TRACE") || l.starts_with("DEBUG")),
            "[{label}] trace logging is on:\n{}",
            out.stderr
        );
        check(label, &out);
    }

    // A sync that fails after output (a selected table dropped), at trace level.
    db.exec("drop table doomed");
    let (args, env) = failing_sync;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = crate::support::tap_env(&args, &env);
    assert_failure(&out, "table gone", 65, &["doomed"], true);
    assert_eq!(record_ids(&out.messages(), "items"), [1, 2, 3, 4, 5]);
    check("table gone", &out);

    // A sync killed by SIGTERM mid-stream, at trace level.
    let mut live = Live::spawn(&sync_args(&config_url(&good_url, json!({"itersize": 1})), &items, None), &[("RUST_LOG", "trace")]);
    live.read_records(1);
    live.signal("TERM");
    let out = live.finish(EXIT_LIMIT).out;
    assert!(out.code == 143 || out.code == 0, "SIGTERM: {}\n{}", out.code, out.stderr);
    check("SIGTERM", &out);
}
