//! Resume races (issue 14), made to happen deterministically, and a seeded property test of
//! README's "State and what a resume guarantees" over random schedules of writes, rewrites and
//! interruptions.
//!
//! No sleep decides an order here. A rewrite is made to land between the tap's first statement
//! (which takes its snapshot) and its later ones by a lock the tap has to wait for: the test
//! holds (or queues) a lock, starts the tap, polls `pg_stat_activity` until the tap's backend
//! waits on it (`wait_event_type = 'Lock'`), and only then lets the rewrite commit.
//!
//! The checks are README's words. "So every row that exists when the resumed run starts arrives
//! as it is then (a target that upserts by key ends with the table)" for storage order, and
//! "every row that existed when the first run started and still exists is sent exactly once
//! across the two runs, and ACTIVATE_VERSION comes at the end" for primary key order.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::{Value, json};

use crate::support::{self, TapOutput, TestDb, assert_records_match_schemas, fixture, id, select, write_json};

/// A hung tap is killed after this long, so a bug fails the test instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(120);
/// Most a test waits for a backend to start waiting on a lock.
const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Pause between two looks at `pg_stat_activity` (polling, not timing).
const POLL: Duration = Duration::from_millis(5);

// ---- a tap run the test can hold, interrupt and read -----------------------------------------

/// A running tap-heroku: the test reads its stdout line by line (while it does not read, the tap
/// blocks on the full pipe), may signal it, and collects the rest at the end. A watchdog kills
/// it after [`WATCHDOG`].
struct Running {
    /// The process.
    child: Child,
    /// Its stdout.
    out: BufReader<ChildStdout>,
    /// The stdout bytes read so far.
    stdout: Vec<u8>,
    /// Collects stderr.
    stderr: Option<JoinHandle<String>>,
    /// Set once the process has been reaped (stops the watchdog).
    done: Arc<AtomicBool>,
}

impl Running {
    /// Starts a sync with `config`, `catalog` and `state`.
    fn start(config: &Path, catalog: &Value, state: Option<&Value>) -> Running {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-heroku"));
        cmd.arg("--config").arg(config).arg("--catalog").arg(write_json(catalog));
        if let Some(state) = state {
            cmd.arg("--state").arg(write_json(state));
        }
        cmd.env_remove("DATABASE_URL").env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
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
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        Running { child, out, stdout: Vec::new(), stderr: Some(stderr), done }
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        self.child.try_wait().expect("polling tap-heroku").is_some()
    }

    /// Reads stdout until `n` RECORDs were seen; false when stdout ended first.
    fn read_records(&mut self, n: usize) -> bool {
        let mut seen = 0;
        while seen < n {
            let mut line = Vec::new();
            let read = self.out.read_until(b'\n', &mut line).expect("reading the tap's stdout");
            self.stdout.extend_from_slice(&line);
            if read == 0 || line.last() != Some(&b'\n') {
                return false;
            }
            if line.starts_with(br#"{"type":"RECORD""#) {
                seen += 1;
            }
        }
        true
    }

    /// Sends `signal` (`TERM`, ...) with kill(1); the process may have exited already.
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).stderr(Stdio::null()).status();
    }

    /// Reads the rest of stdout and waits for the exit.
    fn finish(mut self) -> TapOutput {
        self.out.read_to_end(&mut self.stdout).expect("reading the tap's stdout");
        let status = self.child.wait().expect("waiting for tap-heroku");
        self.done.store(true, Ordering::SeqCst);
        let stderr = self.stderr.take().expect("stderr collector").join().expect("stderr collector thread");
        TapOutput {
            stdout: String::from_utf8(std::mem::take(&mut self.stdout)).expect("stdout is UTF-8"),
            stderr,
            code: status.code().unwrap_or(-1),
        }
    }
}

// ---- locks: making a rewrite land inside the tap's first statement -------------------------

/// Whether a tap-heroku backend of `role` waits on a heavyweight lock.
fn tap_waits_on_lock(admin: &mut Client, role: &str) -> bool {
    admin
        .query_one(
            "select count(*) > 0 from pg_stat_activity where usename = $1 and application_name = 'tap-heroku' and wait_event_type = 'Lock'",
            &[&role],
        )
        .expect("reading pg_stat_activity")
        .get(0)
}

/// Whether backend `pid` waits on a heavyweight lock.
fn backend_waits_on_lock(admin: &mut Client, pid: i32) -> bool {
    admin
        .query_one("select count(*) > 0 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'", &[&pid])
        .expect("reading pg_stat_activity")
        .get(0)
}

/// Polls `waiting` until it holds; panics after [`LOCK_WAIT_LIMIT`] or when `gone` says the
/// waiter cannot wait any more (it exited).
fn wait_for(what: &str, mut waiting: impl FnMut() -> bool, mut gone: impl FnMut() -> bool) {
    let deadline = Instant::now() + LOCK_WAIT_LIMIT;
    while !waiting() {
        assert!(!gone(), "{what}: it ended instead of waiting on the lock");
        assert!(Instant::now() < deadline, "{what}: not waiting on a lock after {LOCK_WAIT_LIMIT:?}");
        std::thread::sleep(POLL);
    }
}

/// A change that gives `table` new storage (a new relfilenode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rewrite {
    /// `truncate` and an insert of other rows, in one transaction.
    TruncateReload,
    /// A rewriting `alter table ... alter column ... type` (same type, an expression).
    AlterType,
    /// `vacuum full`.
    VacuumFull,
    /// `cluster ... using` the id index.
    Cluster,
}

/// The columns every table of these tests has: `id int`, `v text`, `pad text`.
/// `reload` is the SQL that fills the table with other rows for [`Rewrite::TruncateReload`].
fn rewrite_sql(rewrite: Rewrite, table: &str, index: &str, reload: &str) -> String {
    match rewrite {
        Rewrite::TruncateReload => format!("truncate {table}; {reload}"),
        Rewrite::AlterType => format!("alter table {table} alter column v type text using v || ''"),
        Rewrite::VacuumFull => format!("vacuum full {table}"),
        Rewrite::Cluster => format!("cluster {table} using {index}"),
    }
}

/// `pg_relation_filenode` of `table`.
fn relfilenode(db: &TestDb, table: &str) -> i64 {
    db.admin().query_one("select pg_relation_filenode($1::text::regclass)::bigint", &[&table]).expect("reading the relfilenode").get(0)
}

/// Starts a tap with `start` while `rewrite` of `table` is blocked, waits until the tap's
/// backend waits on the table's lock, then lets the rewrite run and commit. The tap is then past
/// its first statement of the read: the rewrite commits between it and the rest.
///
/// `truncate` and `alter table` run in a transaction that took ACCESS EXCLUSIVE before the tap
/// started; `vacuum full` and `cluster` cannot run in a transaction block, so a second session
/// holds ACCESS SHARE, the rewrite queues behind it for ACCESS EXCLUSIVE, the tap queues behind
/// the rewrite, and the holder commits.
fn race(db: &TestDb, rewrite: Rewrite, table: &str, index: &str, reload: &str, start: impl FnOnce() -> Running) -> Running {
    let sql = rewrite_sql(rewrite, table, index, reload);
    let mut watcher = db.admin();
    let before = relfilenode(db, table);
    let mut holder = db.admin();
    let mut tap = match rewrite {
        Rewrite::TruncateReload | Rewrite::AlterType => {
            holder.batch_execute(&format!("begin; lock table {table} in access exclusive mode")).expect("locking the table");
            let mut tap = start();
            wait_for("the tap", || tap_waits_on_lock(&mut watcher, &db.role), || tap.exited());
            holder.batch_execute(&format!("{sql}; commit")).unwrap_or_else(|e| panic!("{sql}: {e}"));
            tap
        }
        Rewrite::VacuumFull | Rewrite::Cluster => {
            holder.batch_execute(&format!("begin; lock table {table} in access share mode")).expect("locking the table");
            let mut rewriter = db.admin();
            let pid: i32 = rewriter.query_one("select pg_backend_pid()", &[]).expect("backend pid").get(0);
            let worker = std::thread::spawn(move || rewriter.batch_execute(&sql).map_err(|e| format!("{sql}: {e}")));
            wait_for("the rewrite", || backend_waits_on_lock(&mut watcher, pid), || worker.is_finished());
            let mut tap = start();
            wait_for("the tap", || tap_waits_on_lock(&mut watcher, &db.role), || tap.exited());
            holder.batch_execute("commit").expect("releasing the lock");
            worker.join().expect("rewrite thread").unwrap_or_else(|e| panic!("{e}"));
            tap
        }
    };
    assert_ne!(relfilenode(db, table), before, "{rewrite:?} gave {table} new storage");
    let _ = tap.exited();
    tap
}

// ---- reading outputs -----------------------------------------------------------------------

/// The messages before a crash right after the `n`th STATE line (1-based), and that STATE's value.
fn cut_after_state(messages: &[Value], n: usize) -> (Vec<Value>, Value) {
    let at = messages.iter().enumerate().filter(|(_, m)| m["type"] == "STATE").nth(n - 1).unwrap_or_else(|| panic!("no STATE #{n}")).0;
    (messages[..=at].to_vec(), messages[at]["value"].clone())
}

/// How many STATE messages there are.
fn state_count(messages: &[Value]) -> usize {
    messages.iter().filter(|m| m["type"] == "STATE").count()
}

/// The messages of a run after the checks every output must pass (whole JSON lines, RECORDs
/// matching their SCHEMA).
fn checked(out: &TapOutput) -> Vec<Value> {
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    messages
}

/// The integer `id` of a record.
fn record_id(record: &Value) -> i64 {
    record["id"].as_i64().unwrap_or_else(|| panic!("a record without an integer id: {record}"))
}

/// The version that the last run's last ACTIVATE_VERSION of `stream` activates, after checking
/// that it comes after that run's records of the stream ("ACTIVATE_VERSION comes at the end").
fn activated_version(last_run: &[Value], stream: &str, label: &str) -> i64 {
    let at = last_run
        .iter()
        .rposition(|m| m["type"] == "ACTIVATE_VERSION" && m["stream"] == stream)
        .unwrap_or_else(|| panic!("[{label}] the completing run activates no version of {stream}"));
    assert!(
        last_run[at..].iter().all(|m| !(m["type"] == "RECORD" && m["stream"] == stream)),
        "[{label}] a RECORD follows the ACTIVATE_VERSION that ends the sync"
    );
    last_run[at]["version"].as_i64().expect("an integer version")
}

/// The records of `stream` in `version`, in the order a target receives them across `runs`,
/// each with the index of its run.
fn records_in_version(runs: &[Vec<Value>], stream: &str, version: i64) -> Vec<(usize, Value)> {
    runs.iter()
        .enumerate()
        .flat_map(|(r, run)| {
            run.iter()
                .filter(move |m| m["type"] == "RECORD" && m["stream"] == stream && m["version"].as_i64() == Some(version))
                .map(move |m| (r, m["record"].clone()))
        })
        .collect()
}

/// `table`'s rows as records (`id`, `v`, `pad`) by id, read as admin.
fn table_rows(db: &TestDb, table: &str) -> BTreeMap<i64, Value> {
    db.admin()
        .query(&format!("select id::bigint, v, pad from {table}"), &[])
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            (id, json!({"id": id, "v": r.get::<_, Option<String>>(1), "pad": r.get::<_, Option<String>>(2)}))
        })
        .collect()
}

/// A few ids for a failure message.
fn few(ids: &[i64]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(i64::to_string).collect();
    format!("{}{}", shown.join(", "), if ids.len() > 10 { ", ..." } else { "" })
}

/// README, storage order: "every row that exists when the resumed run starts arrives as it is
/// then (a target that upserts by key ends with the table)". Returns what is wrong: the rows of
/// `now` whose last record in the activated version is missing or differs.
fn upsert_view_errors(received: &[(usize, Value)], now: &BTreeMap<i64, Value>) -> Vec<String> {
    let mut last: BTreeMap<i64, &Value> = BTreeMap::new();
    for (_, r) in received {
        last.insert(record_id(r), r);
    }
    let missing: Vec<i64> = now.keys().copied().filter(|i| !last.contains_key(i)).collect();
    let stale: Vec<i64> = now.iter().filter(|(i, row)| last.get(i).is_some_and(|got| got != row)).map(|(i, _)| *i).collect();
    let mut errors = Vec::new();
    if !missing.is_empty() {
        errors.push(format!("{} of {} rows of the table never arrived (ids {})", missing.len(), now.len(), few(&missing)));
    }
    if !stale.is_empty() {
        errors.push(format!("{} rows arrived last in another form than the table holds (ids {})", stale.len(), few(&stale)));
    }
    errors
}

// ---- 1. a resumed storage-order read while the table is rewritten ------------------------------

/// 80 rows of about 5 per block (fillfactor 10): 16 blocks.
const RACE_TABLE_SQL: &str = "create table t (id int primary key, v text, pad text) with (fillfactor = 10); \
     insert into t select i, 'old ' || i, repeat('p', 100) from generate_series(1, 80) i";
/// The other row set a [`Rewrite::TruncateReload`] leaves (as many rows, other ids and values).
const RACE_RELOAD_SQL: &str = "insert into t select i, 'reloaded ' || i, repeat('q', 100) from generate_series(1001, 1080) i";

/// An interrupted storage-order sync of `t`, cut after its 5th STATE (four block ranges sent),
/// is resumed while `rewrite` commits inside the resumed run's first statement. The resumed run
/// must deliver every row of the table as it is at the end, in the version it activates.
fn resumed_read_racing(rewrite: Rewrite) {
    let label = format!("resume racing {rewrite:?}");
    let (db, config, mut catalog) = fixture(RACE_TABLE_SQL, json!({"itersize": 10}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    let sid = id(&db, "public", "t");
    let full = checked(&support::sync(&config, &catalog, None).success());
    let (before, state) = cut_after_state(&full, 5);
    let mark = &state["bookmarks"][&sid]["block_resume"];
    let next_block = mark["next_block"].as_u64().unwrap_or_else(|| panic!("[{label}] a block_resume bookmark: {state}"));
    assert!((2..16).contains(&next_block), "[{label}] the cut is mid-table: {mark}");
    if matches!(rewrite, Rewrite::VacuumFull | Rewrite::Cluster) {
        // The rows already sent go; compacting moves unsent rows into the blocks before the mark.
        db.exec(&format!("delete from t where ctid < '({next_block},0)'"));
    }

    let tap = race(&db, rewrite, "t", "t_pkey", RACE_RELOAD_SQL, || Running::start(&config, &catalog, Some(&state)));
    let out = tap.finish().success();
    let after = checked(&out);
    let runs = vec![before, after];
    let version = activated_version(&runs[1], "t", &label);
    let received = records_in_version(&runs, "t", version);
    let now = table_rows(&db, "t");
    let errors = upsert_view_errors(&received, &now);
    assert!(
        errors.is_empty(),
        "[{label}] after the resumed run (activating version {version}, {} records in it): {}\nstderr of the resumed run:\n{}",
        received.len(),
        errors.join("; "),
        out.stderr
    );
}

#[test]
fn resume_racing_truncate_and_reload_delivers_the_final_table() {
    resumed_read_racing(Rewrite::TruncateReload);
}

#[test]
fn resume_racing_a_rewriting_alter_column_type_delivers_the_final_table() {
    resumed_read_racing(Rewrite::AlterType);
}

#[test]
fn resume_racing_vacuum_full_delivers_the_final_table() {
    resumed_read_racing(Rewrite::VacuumFull);
}

#[test]
fn resume_racing_cluster_delivers_the_final_table() {
    resumed_read_racing(Rewrite::Cluster);
}

/// A first (not resumed) sync of `t` in `order` racing `rewrite` in the same way must deliver
/// the table as it is at the end: the snapshot that a read takes before it waits for the lock
/// must not meet storage written after it.
fn first_read_racing(rewrite: Rewrite, order: &str) {
    let label = format!("first {order} read racing {rewrite:?}");
    let (db, config, mut catalog) = fixture(RACE_TABLE_SQL, json!({"itersize": 10, "full_table_order": order}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    let tap = race(&db, rewrite, "t", "t_pkey", RACE_RELOAD_SQL, || Running::start(&config, &catalog, None));
    let out = tap.finish().success();
    let runs = vec![checked(&out)];
    let version = activated_version(&runs[0], "t", &label);
    let received = records_in_version(&runs, "t", version);
    let errors = upsert_view_errors(&received, &table_rows(&db, "t"));
    assert!(errors.is_empty(), "[{label}] {} records: {}\nstderr:\n{}", received.len(), errors.join("; "), out.stderr);
}

#[test]
fn first_physical_read_racing_truncate_and_reload_delivers_the_final_table() {
    first_read_racing(Rewrite::TruncateReload, "physical");
}

#[test]
fn first_key_order_read_racing_truncate_and_reload_delivers_the_final_table() {
    first_read_racing(Rewrite::TruncateReload, "primary_key");
}

// ---- 2. key-order resume of an inheritance parent whose key repeats in a child ----------------

/// PostgreSQL's inheritance example (`cities`, and `capitals` inheriting it), with a primary
/// key on `cities.name` that `capitals` does not inherit: 200 cities, and 50 capitals named as
/// every 4th city. The stream `cities` reads 250 rows, 50 names twice.
const CITIES_SQL: &str = "create table cities (name text primary key, population real, elevation int); \
     create table capitals (state char(2) unique not null) inherits (cities); \
     insert into cities select 'city ' || lpad(i::text, 3, '0'), i * 1000, i from generate_series(1, 200) i; \
     insert into capitals select 'city ' || lpad(i::text, 3, '0'), i * 1000 + 1, -i, lpad((i / 4)::text, 2, '0') \
       from generate_series(4, 200, 4) i";

/// Cuts a sync of `cities` (itersize 7) after every STATE and resumes it: each row must arrive;
/// when the resume keeps the version, exactly once across the two runs (README, primary key
/// order), and when it starts over with a new version, in the new run alone.
fn repeated_keys_resume(order: &str) {
    let (db, config, mut catalog) = fixture(CITIES_SQL, json!({"itersize": 7, "full_table_order": order}));
    select(&mut catalog, "cities", "FULL_TABLE", None);
    // A row is told by name and elevation (a capital's elevation is its city's, negated).
    let row = |r: &Value| format!("{}|{}", r["name"].as_str().unwrap_or("?"), r["elevation"]);
    let all: BTreeMap<String, usize> = db
        .admin()
        .query("select name, elevation from cities", &[])
        .expect("reading cities")
        .iter()
        .map(|r| format!("{}|{}", r.get::<_, String>(0), r.get::<_, i32>(1)))
        .fold(BTreeMap::new(), |mut m, k| {
            *m.entry(k).or_default() += 1;
            m
        });
    assert_eq!(all.values().sum::<usize>(), 250);
    let full = checked(&support::sync(&config, &catalog, None).success());
    let count = |records: &[(usize, Value)]| {
        records.iter().fold(BTreeMap::<String, usize>::new(), |mut m, (_, r)| {
            *m.entry(row(r)).or_default() += 1;
            m
        })
    };
    let first_version = activated_version(&full, "cities", "full run");
    assert_eq!(count(&records_in_version(std::slice::from_ref(&full), "cities", first_version)), all, "the full run sends every row once");

    let mut failures = Vec::new();
    let mut lost_total = 0;
    let cuts = state_count(&full) - 1;
    for n in 2..cuts {
        let (before, state) = cut_after_state(&full, n);
        let after = checked(&support::sync(&config, &catalog, Some(&state)).success());
        let runs = vec![before, after];
        let version = activated_version(&runs[1], "cities", &format!("cut after STATE #{n}"));
        let received = records_in_version(&runs, "cities", version);
        let got = if version == first_version {
            count(&received)
        } else {
            count(&received.iter().filter(|(r, _)| *r == 1).cloned().collect::<Vec<_>>())
        };
        let lost: Vec<&String> = all.keys().filter(|k| got.get(*k).copied().unwrap_or(0) < all[*k]).collect();
        let twice: Vec<&String> = got.iter().filter(|(k, n)| **n > all.get(*k).copied().unwrap_or(0)).map(|(k, _)| k).collect();
        if !lost.is_empty() || !twice.is_empty() {
            lost_total += lost.len();
            failures.push(format!(
                "cut after STATE #{n} (resume point {}): {} rows lost {:?}, {} sent twice {:?}",
                state["bookmarks"][id(&db, "public", "cities")]["last_pk_fetched"],
                lost.len(),
                lost.iter().take(3).collect::<Vec<_>>(),
                twice.len(),
                twice.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "[{order} order] {} of {} resumes lost or repeated rows ({lost_total} rows lost in all):\n{}",
        failures.len(),
        cuts - 2,
        failures.join("\n")
    );
}

#[test]
fn key_order_resume_of_an_inheritance_parent_with_repeated_keys_loses_nothing() {
    repeated_keys_resume("primary_key");
}

#[test]
fn default_order_resume_of_an_inheritance_parent_with_repeated_keys_loses_nothing() {
    repeated_keys_resume("physical");
}
