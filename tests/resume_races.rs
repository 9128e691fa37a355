//! Resume races (issue 14), made to happen deterministically, and a seeded property test of
//! docs/state-and-resume.md ("State and what a resume guarantees") over random schedules of writes, rewrites and
//! interruptions.
//!
//! No sleep decides an order here. A rewrite (TRUNCATE + reload, a rewriting ALTER TABLE, VACUUM
//! FULL, CLUSTER) is made to commit while the tap waits for the table: the test holds (or
//! queues) a lock, starts the tap, polls `pg_stat_activity` until the tap's backend waits on it
//! (`wait_event_type = 'Lock'`), and only then lets the rewrite commit. A statement that waits
//! there after its transaction's snapshot was taken reads the new storage with the old snapshot.
//!
//! The checks are that page's words. "So every row that exists when the resumed run starts arrives
//! as it is then (a target that upserts by key ends with the table)" for storage order, and
//! "every row that existed when the first run started and still exists is sent exactly once
//! across the two runs, and ACTIVATE_VERSION comes at the end" for primary key order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use postgres::Client;
use serde_json::{Value, json};

use crate::support::live::{Live, WATCHDOG};
use crate::support::output::cut_after_state;
use crate::support::{self, Rng, TapOutput, TestDb, assert_records_match_schemas, fixture, id, select, stream_mut};

/// Most a test waits for a backend to start waiting on a lock.
const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Pause between two looks at `pg_stat_activity` (polling, not timing).
const POLL: Duration = Duration::from_millis(5);

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

/// The SQL of `rewrite` on `table` (every table here has the columns `id int`, `v text`, `pad
/// text`): `index` is the one CLUSTER orders by, `reload` the insert of other rows after a
/// [`Rewrite::TruncateReload`]'s TRUNCATE.
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
/// backend waits on the table's lock, then lets the rewrite run and commit. The rewrite thus
/// commits while the tap waits where it first needs the table: inside a statement that has
/// already taken the transaction's snapshot (the race of issue 14), or at a LOCK TABLE before
/// any snapshot (its fix), after which the snapshot sees the rewrite.
///
/// `truncate` and `alter table` run in a transaction that took ACCESS EXCLUSIVE before the tap
/// started; `vacuum full` and `cluster` cannot run in a transaction block, so a second session
/// holds ACCESS SHARE, the rewrite queues behind it for ACCESS EXCLUSIVE, the tap queues behind
/// the rewrite, and the holder commits.
fn race(db: &TestDb, rewrite: Rewrite, table: &str, index: &str, reload: &str, start: impl FnOnce() -> Live) -> Live {
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

/// docs/state-and-resume.md, storage order: "every row that exists when the resumed run starts arrives as it is
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

    let tap = race(&db, rewrite, "t", "t_pkey", RACE_RELOAD_SQL, || Live::sync(&config, &catalog, Some(&state)));
    let out = tap.finish(WATCHDOG).out.success();
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

/// docs/state-and-resume.md: "When the table was rewritten meanwhile (`VACUUM FULL`, `CLUSTER`, `TRUNCATE`, a
/// rewriting `ALTER TABLE`: a new relfilenode) ... the sync starts over with a new version."
/// Also when the rewrite commits while the resumed run waits for its lock: the resumed run sends
/// the final table once, in a new version, whose ACTIVATE_VERSION lets a target drop the rows
/// the TRUNCATE removed.
#[test]
fn resume_racing_truncate_and_reload_starts_over_with_a_new_version() {
    let (db, config, mut catalog) = fixture(RACE_TABLE_SQL, json!({"itersize": 10}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    let sid = id(&db, "public", "t");
    let full = checked(&support::sync(&config, &catalog, None).success());
    let interrupted = activated_version(&full, "t", "full run");
    let (_, state) = cut_after_state(&full, 5);
    assert!(state["bookmarks"][&sid]["block_resume"].is_object(), "a block_resume bookmark: {state}");
    let tap = race(&db, Rewrite::TruncateReload, "t", "t_pkey", RACE_RELOAD_SQL, || Live::sync(&config, &catalog, Some(&state)));
    let out = tap.finish(WATCHDOG).out.success();
    let after = checked(&out);
    let version = activated_version(&after, "t", "resumed run");
    let sent: Vec<i64> = records_in_version(std::slice::from_ref(&after), "t", version).iter().map(|(_, r)| record_id(r)).collect();
    assert_eq!(sent, (1001..=1080).collect::<Vec<_>>(), "the resumed run sends the reloaded table once, in storage order");
    assert_ne!(version, interrupted, "a new version: the rows TRUNCATE removed would stay in the target otherwise\n{}", out.stderr);
}

/// Key order has the same race: the statement that waits for the lock has taken the snapshot
/// before (parse analysis of a SELECT needs one), and then reads the rewritten storage, whose
/// rows that snapshot cannot see. docs/state-and-resume.md, primary key order: "every row that existed when the
/// first run started and still exists is sent exactly once across the two runs" (a rewriting
/// ALTER TABLE keeps every row).
#[test]
fn key_order_resume_racing_a_rewriting_alter_column_type_sends_every_row_once() {
    let (db, config, mut catalog) = fixture(RACE_TABLE_SQL, json!({"itersize": 10, "full_table_order": "primary_key"}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    let sid = id(&db, "public", "t");
    let full = checked(&support::sync(&config, &catalog, None).success());
    let (before, state) = cut_after_state(&full, 5);
    assert_eq!(state["bookmarks"][&sid]["last_pk_fetched"], json!({"id": 40}), "cut after four batches");
    let tap = race(&db, Rewrite::AlterType, "t", "t_pkey", RACE_RELOAD_SQL, || Live::sync(&config, &catalog, Some(&state)));
    let out = tap.finish(WATCHDOG).out.success();
    let runs = vec![before, checked(&out)];
    let version = activated_version(&runs[1], "t", "resumed run");
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, r) in records_in_version(&runs, "t", version) {
        *count.entry(record_id(&r)).or_default() += 1;
    }
    let not_once: Vec<i64> = (1..=80).filter(|i| count.get(i) != Some(&1)).collect();
    assert!(
        not_once.is_empty(),
        "{} of 80 rows not sent exactly once ({} never; ids {})\nstderr of the resumed run:\n{}",
        not_once.len(),
        not_once.iter().filter(|i| !count.contains_key(i)).count(),
        few(&not_once),
        out.stderr
    );
}

/// A first (not resumed) sync of `t` in `order` racing `rewrite` in the same way must deliver
/// the table as it is at the end: the snapshot that a read takes before it waits for the lock
/// must not meet storage written after it.
fn first_read_racing(rewrite: Rewrite, order: &str) {
    let label = format!("first {order} read racing {rewrite:?}");
    let (db, config, mut catalog) = fixture(RACE_TABLE_SQL, json!({"itersize": 10, "full_table_order": order}));
    select(&mut catalog, "t", "FULL_TABLE", None);
    let tap = race(&db, rewrite, "t", "t_pkey", RACE_RELOAD_SQL, || Live::sync(&config, &catalog, None));
    let out = tap.finish(WATCHDOG).out.success();
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
/// when the resume keeps the version, exactly once across the two runs but for the rows with
/// the resume key, which may come twice (docs/state-and-resume.md, primary key order), and when it starts over
/// with a new version, in the new run alone, once.
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
        // docs/state-and-resume.md: an inheritance parent "resumes *at* the last key sent (`>=`): the rows with
        // that key are sent again, none is skipped".
        let resume_key = state["bookmarks"][id(&db, "public", "cities")]["last_pk_fetched"]["name"].as_str().map(|k| format!("{k}|"));
        let again = |k: &String| version == first_version && resume_key.as_ref().is_some_and(|p| k.starts_with(p.as_str()));
        let twice: Vec<&String> =
            got.iter().filter(|(k, n)| **n > all.get(*k).copied().unwrap_or(0) + usize::from(again(k))).map(|(k, _)| k).collect();
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

// ---- 3. random schedules of writes, rewrites and interruptions -------------------------------

/// Schedules run by default (times `TAP_HEROKU_FUZZ_SCALE`): about a minute on a 2-core machine.
const SCHEDULES: usize = 40;

/// The base seed: `TAP_HEROKU_FUZZ_SEED` (docs/testing.md) or a fixed one.
fn base_seed() -> u64 {
    std::env::var("TAP_HEROKU_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7A9_4E20_u64)
}

/// The seed of schedule `i`: independent of how many schedules run.
fn schedule_seed(base: u64, i: usize) -> u64 {
    format!("resume schedule {i}").bytes().fold(base, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// How a FULL_TABLE sync is configured to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// `full_table_order: physical` (the default).
    Physical,
    /// `full_table_order: primary_key`.
    PrimaryKey,
}

impl Order {
    /// The config value.
    fn name(self) -> &'static str {
        match self {
            Order::Physical => "physical",
            Order::PrimaryKey => "primary_key",
        }
    }
}

/// How a run that is not the last one ends early.
#[derive(Clone, Copy, Debug)]
enum Interrupt {
    /// `max_run_seconds: 0`: stops after the first batch.
    MaxRunSeconds,
    /// The run's stdout ends after a randomly chosen STATE (a crash there).
    CutAfterState,
    /// SIGTERM once this many records have been read from stdout.
    Sigterm(usize),
}

/// What the test knows of one run for the checks.
struct RunInfo {
    /// The messages a target received (up to the cut of a crash).
    delivered: Vec<Value>,
    /// `full_table_order` of its config.
    order: Order,
    /// The state it was given.
    given: Option<Value>,
    /// The ids the catch-up of a resumed storage-order read names (predicted before the run).
    catch_up: BTreeSet<i64>,
    /// The ids of rows changed since the given bookmark's snapshot (`xmin` not older than its
    /// `snapshot_xmin`, anywhere in the table): "rows changed in the gap".
    changed: BTreeSet<i64>,
    /// The ids of the range under way when a signal stopped it (sent again, as the docs say).
    partial: BTreeSet<i64>,
    /// Whether the table got new storage after the given bookmark's read (before or racing the run).
    rewritten: bool,
    /// The ids in the table when it started (after the gap's writes, before a racing rewrite).
    ids_at_start: BTreeSet<i64>,
}

/// One schedule: a table, interrupted runs with writes and rewrites between them (and racing
/// their start), and a last run that completes.
struct Schedule<'a> {
    /// The database of the property test.
    db: &'a TestDb,
    /// Its catalog with `table` selected.
    catalog: Value,
    /// `prop_pk` or `prop_nopk`.
    table: &'static str,
    /// The index `cluster` uses.
    index: &'static str,
    /// The stream id.
    sid: String,
    /// Random choices.
    rng: Rng,
    /// Next unused id (ids are never reused, so an id names one row for its whole life).
    next_id: i64,
    /// What happened, for the failure message.
    log: Vec<String>,
}

impl Schedule<'_> {
    /// Runs SQL as admin.
    fn exec(&mut self, sql: &str) {
        self.db.exec(sql);
    }

    /// The ids in the table.
    fn ids(&self) -> Vec<i64> {
        self.db
            .admin()
            .query(&format!("select id::bigint from {} order by id", self.table), &[])
            .expect("reading ids")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// SQL inserting `n` rows with fresh ids, `tag` in `v` and pads of varying length.
    fn insert_sql(&mut self, n: usize, tag: &str) -> String {
        let (first, last) = (self.next_id, self.next_id + n as i64 - 1);
        self.next_id += n as i64;
        let (mul, modulo) = (self.rng.between(1, 97), self.rng.pick(&[1, 50, 200, 600]));
        format!(
            "insert into {} select g, '{tag} ' || g, repeat('x', (g * {mul}) % {modulo}) from generate_series({first}, {last}) g",
            self.table
        )
    }

    /// Some random ids of the table (up to `n`).
    fn some_ids(&mut self, n: usize) -> Vec<i64> {
        let ids = self.ids();
        if ids.is_empty() {
            return ids;
        }
        (0..n).map(|_| ids[self.rng.below(ids.len())]).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// A rewrite: its SQL (for a race: run inside [`race`]) and a name.
    fn rewrite(&mut self) -> (Rewrite, String) {
        let kind = self.rng.pick(&[Rewrite::TruncateReload, Rewrite::AlterType, Rewrite::VacuumFull, Rewrite::Cluster]);
        let n = self.rng.between(0, 120);
        let reload = self.insert_sql(n, "reloaded");
        (kind, reload)
    }

    /// Writes and rewrites while no sync runs: inserts, updates that grow rows (so they move
    /// into other blocks), deletes, VACUUM (which lets later rows into earlier blocks), and the
    /// rewrites VACUUM FULL, CLUSTER, TRUNCATE + reload and a rewriting ALTER TABLE.
    fn gap(&mut self) {
        for _ in 0..self.rng.between(0, 4) {
            match self.rng.below(9) {
                0..=2 => {
                    let n = self.rng.between(1, 60);
                    let sql = self.insert_sql(n, "inserted");
                    self.exec(&sql);
                    self.log.push(format!("  insert {n} rows (ids up to {})", self.next_id - 1));
                }
                3 | 4 => {
                    let n = self.rng.between(1, 40);
                    let ids = self.some_ids(n);
                    let grow = self.rng.pick(&[1, 100, 900]);
                    let sql =
                        format!("update {} set v = v || '+', pad = pad || repeat('u', {grow}) where id = any($1::bigint[])", self.table);
                    self.db.admin().execute(&sql, &[&ids]).expect("updating");
                    self.log.push(format!("  update {} rows, growing them by {grow} bytes", ids.len()));
                }
                5 => {
                    let n = self.rng.between(1, 60);
                    let ids = self.some_ids(n);
                    self.db
                        .admin()
                        .execute(&format!("delete from {} where id = any($1::bigint[])", self.table), &[&ids])
                        .expect("deleting");
                    // Often vacuumed at once: the space freed in early blocks takes the next
                    // inserts and moved rows, which only the catch-up of a resume finds.
                    let vacuum = self.rng.one_in(2);
                    if vacuum {
                        self.exec(&format!("vacuum {}", self.table));
                    }
                    self.log.push(format!("  delete {} rows{}", ids.len(), if vacuum { ", vacuum" } else { "" }));
                }
                6 => {
                    // Empties the first blocks: what comes next (inserts, rows an update moves)
                    // lands before a resume point.
                    let blocks = self.rng.between(1, 3);
                    let gone =
                        self.db.admin().execute(&format!("delete from {} where ctid < '({blocks},0)'", self.table), &[]).expect("deleting");
                    self.exec(&format!("vacuum {}", self.table));
                    self.log.push(format!("  delete the {gone} rows of the first {blocks} blocks, vacuum"));
                }
                7 => {
                    self.exec(&format!("vacuum {}", self.table));
                    self.log.push("  vacuum".into());
                }
                _ => {
                    let (kind, reload) = self.rewrite();
                    self.exec(&rewrite_sql(kind, self.table, self.index, &reload));
                    self.log.push(format!("  {kind:?}"));
                }
            }
        }
    }
}

/// The `version` in `stream`'s bookmark in the last STATE of `messages` that has one.
fn bookmark_version(messages: &[Value], sid: &str) -> Option<i64> {
    messages.iter().rev().filter(|m| m["type"] == "STATE").find_map(|m| m["value"]["bookmarks"][sid]["version"].as_i64())
}

/// The ids of `table`'s rows changed since `bookmark`'s `block_resume.snapshot_xmin`, in any
/// block (the catch-up rule without its block bound), as admin.
fn changed_since(db: &TestDb, table: &str, bookmark: &Value) -> BTreeSet<i64> {
    let xid = (bookmark["block_resume"]["snapshot_xmin"].as_u64().expect("snapshot_xmin") % (1 << 32)).to_string();
    let sql = format!("select id::bigint from {table} where age(xmin) between 0 and age(cast($1::text as xid))");
    db.admin().query(&sql, &[&xid]).unwrap_or_else(|e| panic!("reading changed rows: {e}")).iter().map(|r| r.get::<_, i64>(0)).collect()
}

/// The value of the last STATE of `messages`, if any.
fn last_state(messages: &[Value]) -> Option<Value> {
    messages.iter().rfind(|m| m["type"] == "STATE").map(|m| m["value"].clone())
}

impl Schedule<'_> {
    /// Runs schedule `i` and returns what broke the documented guarantees (empty when nothing did).
    fn run(&mut self, i: usize, role: &str) -> Vec<String> {
        let has_pk = self.table == "prop_pk";
        let order = if (i / 2).is_multiple_of(2) { Order::Physical } else { Order::PrimaryKey };
        let fillfactor = self.rng.pick(&[10, 50, 100]);
        let itersize = self.rng.pick(&[3, 7, 20, 50]);
        let (table, index) = (self.table, self.index);
        let key = if has_pk { "primary key" } else { "not null" };
        let extra_index = if has_pk { String::new() } else { format!("create index {index} on {table} (id);") };
        self.exec(&format!(
            "drop table if exists {table}; \
             create table {table} (id int {key}, v text, pad text) with (fillfactor = {fillfactor}, autovacuum_enabled = false); \
             {extra_index} grant select on {table} to {role}"
        ));
        let rows = self.rng.between(20, 300);
        let sql = self.insert_sql(rows, "initial");
        self.exec(&sql);
        if self.rng.one_in(2) {
            self.exec(&format!("analyze {table}"));
        }
        let interrupted = self.rng.between(1, 3);
        let flip_at = (order == Order::PrimaryKey && has_pk && self.rng.one_in(3)).then(|| self.rng.between(1, interrupted));
        self.log.push(format!(
            "{table}: {rows} rows, fillfactor {fillfactor}, itersize {itersize}, full_table_order {}{}, {interrupted} interrupted runs",
            order.name(),
            flip_at.map(|f| format!(" (physical from run {f} on)")).unwrap_or_default()
        ));
        let config = |order: Order, max_run_seconds: bool| {
            let mut c = json!({"itersize": itersize, "full_table_order": order.name()});
            if max_run_seconds {
                c["max_run_seconds"] = json!(0);
            }
            self.db.config_file(c)
        };

        let mut runs: Vec<RunInfo> = Vec::new();
        let mut state: Option<Value> = None;
        for r in 0..=interrupted {
            if r > 0 {
                self.log.push("gap:".into());
                self.gap();
            }
            let run_order = if flip_at.is_some_and(|f| r >= f) { Order::Physical } else { order };
            let interrupt = (r < interrupted).then(|| match self.rng.below(3) {
                0 => Interrupt::MaxRunSeconds,
                1 => Interrupt::CutAfterState,
                _ => Interrupt::Sigterm(self.rng.between(1, 150)),
            });
            let racing = self.rng.one_in(4).then(|| self.rewrite());
            let mark = state.as_ref().map(|s| s["bookmarks"][&self.sid].clone()).filter(|b| b.get("block_resume").is_some());
            let catch_up = mark.as_ref().map(|b| support::catch_up_ids(self.db, table, b)).unwrap_or_default();
            let changed = mark.as_ref().map(|b| changed_since(self.db, table, b)).unwrap_or_default();
            let ids_at_start: BTreeSet<i64> = self.ids().into_iter().collect();
            let storage_before = relfilenode(self.db, table);
            let config_path = config(run_order, matches!(interrupt, Some(Interrupt::MaxRunSeconds)));
            let start = || Live::sync(&config_path, &self.catalog, state.as_ref());
            let mut tap = match racing.as_ref() {
                Some((kind, reload)) => race(self.db, *kind, table, index, reload, start),
                None => start(),
            };
            if let Some(Interrupt::Sigterm(n)) = interrupt
                && tap.try_read_records(n)
            {
                tap.signal_if_running("TERM");
            }
            let out = tap.finish(WATCHDOG).out;
            let signalled = matches!(interrupt, Some(Interrupt::Sigterm(_))) && out.code == 143;
            assert!(out.code == 0 || signalled, "run {r} ({interrupt:?}) exited {}:\n{}", out.code, out.stderr);
            let messages = checked(&out);
            let delivered = match interrupt {
                Some(Interrupt::CutAfterState) if state_count(&messages) >= 2 => {
                    let n = self.rng.between(1, state_count(&messages) - 1);
                    cut_after_state(&messages, n).0
                }
                _ => messages,
            };
            // The records after the first STATE equal to the last one: the range under way.
            let partial = match last_state(&delivered) {
                Some(last) if signalled => {
                    let from = delivered.iter().position(|m| m["type"] == "STATE" && m["value"] == last).expect("the last STATE");
                    delivered[from..].iter().filter(|m| m["type"] == "RECORD").map(|m| record_id(&m["record"])).collect()
                }
                _ => BTreeSet::new(),
            };
            let rewritten =
                racing.is_some() || mark.as_ref().is_some_and(|b| b["block_resume"]["relfilenode"].as_i64() != Some(storage_before));
            self.log.push(format!(
                "run {r}: order {}, {}{}: exit {}, {} records delivered of {}, last STATE {}",
                run_order.name(),
                interrupt.map(|i| format!("{i:?}")).unwrap_or_else(|| "to the end".into()),
                racing.as_ref().map(|(k, _)| format!(", racing {k:?}")).unwrap_or_default(),
                out.code,
                delivered.iter().filter(|m| m["type"] == "RECORD").count(),
                out.messages().iter().filter(|m| m["type"] == "RECORD").count(),
                last_state(&delivered).map(|s| s["bookmarks"][&self.sid].to_string()).unwrap_or_default()
            ));
            let given = state.clone();
            state = last_state(&delivered).or(state);
            runs.push(RunInfo { delivered, order: run_order, given, catch_up, changed, partial, rewritten, ids_at_start });
        }
        self.check(&runs, has_pk)
    }

    /// the documented guarantees for the sync that the last run completed.
    fn check(&self, runs: &[RunInfo], has_pk: bool) -> Vec<String> {
        let (table, sid) = (self.table, self.sid.as_str());
        let mut errors = Vec::new();
        let last = runs.len() - 1;
        let version = activated_version(&runs[last].delivered, table, "the last run");
        let versions: Vec<Option<i64>> = runs.iter().map(|r| bookmark_version(&r.delivered, sid)).collect();
        for (r, run) in runs.iter().enumerate() {
            let other: BTreeSet<i64> = run
                .delivered
                .iter()
                .filter(|m| m["type"] == "RECORD" && m["version"].as_i64() != versions[r])
                .filter_map(|m| m["version"].as_i64())
                .collect();
            if !other.is_empty() {
                errors.push(format!("run {r}: RECORDs of versions {other:?}, its STATEs say {:?}", versions[r]));
            }
        }
        if versions[last] != Some(version) {
            errors.push(format!("the last run activates {version} but its STATEs say {:?}", versions[last]));
        }
        // "A run interrupted after a STATE resumes with the same version" (both orders);
        // "When the table was rewritten meanwhile ... the sync starts over with a new version";
        // "FULL_TABLE ... in primary key order on tables without one, starts over with a new version".
        for r in 1..runs.len() {
            let Some(given) = runs[r].given.as_ref().filter(|s| s["currently_syncing"] == json!(sid)) else { continue };
            let bookmark = &given["bookmarks"][sid];
            // A run whose delivered output ends before its read began (cut right after its first
            // STATE, which repeats the given bookmark: a rewrite racing the run is not known yet)
            // decided nothing; the next run starts from the same state, and is checked.
            let decided_nothing = !runs[r].delivered.iter().any(|m| m["type"] == "RECORD")
                && last_state(&runs[r].delivered).is_some_and(|s| s["bookmarks"][sid] == *bookmark);
            if decided_nothing {
                continue;
            }
            let same = versions[r] == versions[r - 1];
            let (want_same, why) = if bookmark.get("last_pk_fetched").is_some() {
                (true, "resumes after that key with the same version")
            } else if bookmark.get("block_resume").is_some() {
                if runs[r].rewritten {
                    (false, "the table was rewritten meanwhile: the sync starts over with a new version")
                } else {
                    (true, "resumes with the same version")
                }
            } else {
                (false, "without a resume point the sync starts over with a new version")
            };
            if same != want_same {
                errors.push(format!(
                    "run {r} after {bookmark}: versions {:?} then {:?}, but docs/state-and-resume.md: {why}",
                    versions[r - 1],
                    versions[r]
                ));
            }
        }
        let first = (0..=last).rev().take_while(|&r| versions[r] == Some(version)).last().unwrap_or(last);
        let received = records_in_version(&runs.iter().map(|r| r.delivered.clone()).collect::<Vec<_>>(), table, version);
        let now = table_rows(self.db, table);
        let mut occurrences: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (r, record) in &received {
            occurrences.entry(record_id(record)).or_default().push(*r);
        }
        match (runs[first].order, has_pk) {
            (Order::Physical, _) => {
                // "every row that exists when the resumed run starts arrives as it is then (a
                // target that upserts by key ends with the table)".
                errors.extend(upsert_view_errors(&received, &now));
                // "Rows already sent are sent again only when that catch-up names them: rows
                // changed in the gap, and rows committed shortly before the interrupted run began
                // while an older transaction was still open. ... The records of a range under way
                // when a run is stopped by a signal or an error are sent again." (A row changed in
                // the gap may also have moved into a block not yet read.)
                let mut again = Vec::new();
                for (id, at) in &occurrences {
                    for (k, &r) in at.iter().enumerate().skip(1) {
                        // Changed in a gap since it was sent, or named by a catch-up since.
                        let named = (at[k - 1] + 1..=r)
                            .any(|j| !runs[j].rewritten && (runs[j].catch_up.contains(id) || runs[j].changed.contains(id)));
                        let under_way = runs[at[k - 1]].partial.contains(id);
                        if !named && !under_way {
                            again.push(*id);
                        }
                    }
                }
                if !again.is_empty() {
                    errors.push(format!(
                        "{} rows sent again in version {version} that neither the catch-up nor a range under way names (ids {})",
                        again.len(),
                        few(&again)
                    ));
                }
            }
            (Order::PrimaryKey, true) => {
                // "every row that existed when the first run started and still exists is sent
                // exactly once across the two runs".
                let not_once: Vec<i64> = runs[first]
                    .ids_at_start
                    .iter()
                    .filter(|i| now.contains_key(i) && occurrences.get(i).map_or(0, Vec::len) != 1)
                    .copied()
                    .collect();
                if !not_once.is_empty() {
                    let lost = not_once.iter().filter(|i| !occurrences.contains_key(i)).count();
                    errors.push(format!(
                        "{} rows that existed when the first run started and still exist were not sent exactly once ({lost} never) (ids {})",
                        not_once.len(),
                        few(&not_once)
                    ));
                }
                // Rows inserted later have keys above every resume point (ids are never
                // reused): "Rows inserted during the gap with a key below the resume point ...
                // arrive with the next full sync", so these arrive now.
                let missing: Vec<i64> =
                    now.keys().filter(|i| !runs[first].ids_at_start.contains(i) && !occurrences.contains_key(i)).copied().collect();
                if !missing.is_empty() {
                    errors.push(format!(
                        "{} rows inserted after the first run started, with keys above the resume point, never arrived (ids {})",
                        missing.len(),
                        few(&missing)
                    ));
                }
            }
            (Order::PrimaryKey, false) => {
                // "FULL_TABLE ... in primary key order on tables without one, starts over with a
                // new version": the last run alone sends the table, each row once, as it is.
                if first != last {
                    errors.push(format!("version {version} spans runs {first}..={last} though the table has no primary key"));
                }
                let sent: Vec<i64> = occurrences.iter().filter(|(_, at)| at.len() > 1).map(|(i, _)| *i).collect();
                if !sent.is_empty() {
                    errors.push(format!("{} rows sent more than once (ids {})", sent.len(), few(&sent)));
                }
                errors.extend(upsert_view_errors(&received, &now));
            }
        }
        errors
    }
}

/// Many random schedules, for both FULL_TABLE orders and tables with and without a primary key:
/// after the last run completes, the documented guarantees hold for the version it activated.
/// `TAP_HEROKU_FUZZ_SEED` varies the seed, `TAP_HEROKU_FUZZ_SCALE` multiplies the schedules.
#[test]
fn random_schedules_of_writes_rewrites_and_interruptions_keep_the_resume_guarantees() {
    let base = base_seed();
    let scale: usize = std::env::var("TAP_HEROKU_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let (db, _, mut catalog) = fixture(
        "create table prop_pk (id int primary key, v text, pad text); create table prop_nopk (id int not null, v text, pad text)",
        json!({}),
    );
    for table in ["prop_pk", "prop_nopk"] {
        select(&mut catalog, table, "FULL_TABLE", None);
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    let count = SCHEDULES * scale;
    for i in 0..count {
        let seed = schedule_seed(base, i);
        let (table, index) = if i % 2 == 0 { ("prop_pk", "prop_pk_pkey") } else { ("prop_nopk", "prop_nopk_id") };
        let mut one = catalog.clone();
        let other = if i % 2 == 0 { "prop_nopk" } else { "prop_pk" };
        stream_mut(&mut one, other)["metadata"][0]["metadata"]["selected"] = json!(false);
        let mut schedule = Schedule {
            db: &db,
            catalog: one,
            table,
            index,
            sid: id(&db, "public", table),
            rng: Rng::new(seed),
            next_id: 1,
            log: Vec::new(),
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| schedule.run(i, &db.role)));
        let errors = match outcome {
            Ok(errors) => errors,
            Err(cause) => vec![format!(
                "the schedule failed: {}",
                cause.downcast_ref::<String>().cloned().or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
            )],
        };
        if !errors.is_empty() {
            failures.push(format!("schedule {i}:\n{}\n  => {}", schedule.log.join("\n"), errors.join("\n  => ")));
        }
    }
    eprintln!("{count} schedules in {:?}, {} broke a guarantee", started.elapsed(), failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} schedules broke the resume guarantees of docs/state-and-resume.md (seed {base}; set TAP_HEROKU_FUZZ_SEED to vary it):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
