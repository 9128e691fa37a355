//! XMIN change capture: every inserted or updated row arrives, deletes never do, the version
//! stays across runs, views are refused, and writers, freezing, rewrites and interruptions
//! (max_run_seconds, a cut stdout, SIGTERM, a terminated backend) during the syncs lose nothing
//! (docs/sync.md, "XMIN").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};

use crate::support::activity::{terminate_tap_backends, wait_for_tap_query};
use crate::support::live::{Live, WATCHDOG};
use crate::support::output::log_lines;
use crate::support::{Rng, TapOutput, TestDb, assert_records_match_schemas, fixture, id, select, sync, tap, write_json};

/// Rows of `stream`'s RECORDs as (id, v) in message order.
fn rows(messages: &[Value], stream: &str) -> Vec<(i64, String)> {
    messages
        .iter()
        .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
        .map(|m| (m["record"]["id"].as_i64().expect("an integer id"), m["record"]["v"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The table's rows as id -> v.
fn table(db: &TestDb, name: &str) -> BTreeMap<i64, String> {
    db.admin()
        .query(&format!("select id::bigint, v from {name}"), &[])
        .expect("reading the table")
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect()
}

/// The ids of `table`'s rows whose xmin is not older than the bookmark's horizon: the rows a run
/// from that bookmark may send again although they did not change (versions committed after the
/// oldest transaction still running when the horizon was taken: the suite's other tests share
/// the server and hold it back).
fn newer_than_horizon(db: &TestDb, table: &str, state: &Value, sid: &str) -> BTreeSet<i64> {
    let horizon = state["bookmarks"][sid]["xmin_horizon"].as_u64().expect("a horizon");
    db.admin()
        .query(
            &format!("select id::bigint from {table} where age(xmin) between 0 and age(cast($1::text as xid))"),
            &[&(horizon % (1 << 32)).to_string()],
        )
        .expect("reading xmin")
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// Asserts that `got` holds every row of `want` with its value, and otherwise only rows that
/// `may_repeat` names, with their current values.
fn assert_changes(
    got: &[(i64, String)],
    want: &BTreeMap<i64, String>,
    may_repeat: &BTreeSet<i64>,
    now: &BTreeMap<i64, String>,
    what: &str,
) {
    let got_map: BTreeMap<i64, String> = got.iter().cloned().collect();
    for (id, v) in want {
        assert_eq!(got_map.get(id), Some(v), "[{what}] row {id} with its new value");
    }
    let extra: Vec<&i64> = got_map.keys().filter(|id| !want.contains_key(id) && !may_repeat.contains(id)).take(5).collect();
    assert!(extra.is_empty(), "[{what}] rows sent that did not change since the horizon: {extra:?}");
    assert!(got_map.iter().all(|(id, v)| now.get(id) == Some(v)), "[{what}] every row sent has its current value");
}

/// One run that must succeed; its messages and final state.
fn run(config: &Path, catalog: &Value, state: Option<&Value>) -> (Vec<Value>, Value) {
    let out: TapOutput = sync(config, catalog, state).success();
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    let state = out.last_state();
    (messages, state)
}

#[test]
fn xmin_sends_every_insert_and_update_once_per_change_and_keeps_the_version() {
    let (db, config, mut catalog) = fixture(
        "create table items (id int primary key, v text not null); insert into items select g, 'v' || g from generate_series(1, 3000) g; \
         create view items_v as select * from items",
        json!({"itersize": 500}),
    );
    select(&mut catalog, "items", "XMIN", None);
    let sid = id(&db, "public", "items");

    // First run: every row, ACTIVATE_VERSION before and after, a horizon in the bookmark.
    let (first, state) = run(&config, &catalog, None);
    assert_eq!(rows(&first, "items").len(), 3000);
    let activations: Vec<&Value> = first.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").collect();
    assert_eq!(activations.len(), 2);
    let bookmark = &state["bookmarks"][&sid];
    assert_eq!(bookmark["last_replication_method"], "XMIN");
    assert!(bookmark["xmin_horizon"].as_u64().is_some(), "{bookmark}");
    assert!(bookmark.get("block_resume").is_none(), "a finished pass keeps no resume point: {bookmark}");
    let version = bookmark["version"].clone();

    // Nothing changed: nothing sent (but rows committed after the horizon), no ACTIVATE_VERSION
    // (it would drop the rows not sent).
    let may_repeat = newer_than_horizon(&db, "items", &state, &sid);
    let (idle, state) = run(&config, &catalog, Some(&state));
    assert_changes(&rows(&idle, "items"), &BTreeMap::new(), &may_repeat, &table(&db, "items"), "idle");
    assert!(idle.iter().all(|m| m["type"] != "ACTIVATE_VERSION"));

    // Inserts, HOT and non-HOT updates, an update in a subtransaction, an aborted insert, a
    // delete, then VACUUM (FREEZE): exactly the inserted and updated rows arrive.
    db.exec(
        "update items set v = 'hot ' || id where id % 100 = 0; \
         update items set v = repeat('wide ', 40) || id where id % 250 = 1; \
         insert into items select g, 'new ' || g from generate_series(3001, 3010) g; \
         delete from items where id between 11 and 20",
    );
    let mut admin = db.admin();
    let mut tx = admin.transaction().expect("begin");
    tx.batch_execute("savepoint s; update items set v = 'sub ' || id where id = 7; release savepoint s").expect("subtransaction");
    tx.commit().expect("commit");
    let mut tx = admin.transaction().expect("begin");
    tx.batch_execute("insert into items values (9999, 'aborted')").expect("insert");
    tx.rollback().expect("rollback");
    db.exec("vacuum (freeze) items");
    let (changed, state) = run(&config, &catalog, Some(&state));
    let got: BTreeMap<i64, String> = rows(&changed, "items").into_iter().collect();
    let now = table(&db, "items");
    let expected: BTreeMap<i64, String> = now
        .iter()
        .filter(|(id, v)| **id == 7 || **id > 3000 || v.starts_with("hot ") || v.starts_with("wide "))
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(got, expected, "exactly the inserted and updated rows, with their values");
    assert!(changed.iter().filter(|m| m["type"] == "RECORD").all(|m| m["version"] == version), "the version stays");
    assert!(changed.iter().all(|m| m["type"] != "ACTIVATE_VERSION"));

    // A rewrite keeps each row's xmin: after VACUUM FULL and CLUSTER only the row updated since.
    db.exec("vacuum full items");
    db.exec("cluster items using items_pkey");
    db.exec("update items set v = 'after rewrite' where id = 42");
    let may_repeat = newer_than_horizon(&db, "items", &state, &sid);
    let (rewritten, state) = run(&config, &catalog, Some(&state));
    let want = BTreeMap::from([(42, "after rewrite".to_string())]);
    assert_changes(&rows(&rewritten, "items"), &want, &may_repeat, &table(&db, "items"), "after VACUUM FULL and CLUSTER");

    // Moving to FULL_TABLE and back resets the stream: a full read with a new version.
    let mut full = catalog.clone();
    select(&mut full, "items", "FULL_TABLE", None);
    let (_, state) = run(&config, &full, Some(&state));
    let (again, _) = run(&config, &catalog, Some(&state));
    assert_eq!(rows(&again, "items").len(), now.len());
    assert_ne!(again.iter().find(|m| m["type"] == "RECORD").unwrap()["version"], version);
}

/// What the reader logs when it reads with the opening sent with the catalog, and what the
/// session logs when such an opening was not used (src/sync/reader.rs, src/pg.rs).
const USED_AHEAD: &str = "reading with the opening sent ahead with the catalog";
const DROPPED_AHEAD: &str = "requests sent ahead were not used";

/// A later XMIN pass of the run's only stream sends its opening (transaction, lock, storage
/// check, filtered scan) with the catalog read, one round trip less; the reader uses it only when
/// it is what the live catalog makes of the stream, and otherwise drops it and rolls its
/// transaction back before the session's next request. Either way the rows are the pass's.
#[test]
fn xmin_later_runs_read_with_the_opening_sent_with_the_catalog_only_when_it_is_the_planned_one() {
    let (db, config, mut catalog) = fixture(
        "create table items (id int primary key, v text not null, n integer); \
         insert into items select g, 'v' || g, g from generate_series(1, 200) g; \
         create table other (id int primary key, v text not null); insert into other values (1, 'o')",
        json!({}),
    );
    select(&mut catalog, "items", "XMIN", None);
    let sid = id(&db, "public", "items");
    let debug_run = |catalog: &Value, state: Option<&Value>| {
        let catalog = write_json(catalog);
        let mut args = vec!["--config".to_string(), config.display().to_string(), "--catalog".into(), catalog.display().to_string()];
        if let Some(state) = state {
            args.extend(["--state".to_string(), write_json(state).display().to_string()]);
        }
        args.extend(["--log-level".to_string(), "debug".to_string()]);
        let out = tap(&args.iter().map(String::as_str).collect::<Vec<_>>()).success();
        let messages = out.messages();
        assert_records_match_schemas(&messages);
        let state = out.last_state();
        (out, messages, state)
    };

    // A first run has no horizon to filter by: nothing is sent ahead.
    let (out, first, state) = debug_run(&catalog, None);
    assert_eq!(rows(&first, "items").len(), 200);
    assert!(!out.stderr.contains("sent ahead"), "{}", out.stderr);

    // A later run: the opening goes with the catalog and is used; only the changed row comes.
    db.exec("update items set v = 'changed' where id = 7");
    let may_repeat = newer_than_horizon(&db, "items", &state, &sid);
    let (out, later, state) = debug_run(&catalog, Some(&state));
    assert!(out.stderr.contains(USED_AHEAD) && !out.stderr.contains(DROPPED_AHEAD), "{}", out.stderr);
    let want = BTreeMap::from([(7, "changed".to_string())]);
    assert_changes(&rows(&later, "items"), &want, &may_repeat, &table(&db, "items"), "sent ahead");

    // Another stream of the same database in the run: nothing is sent ahead (planning it may
    // query the session, which would drop the opening after its scan).
    let mut two = catalog.clone();
    select(&mut two, "other", "FULL_TABLE", None);
    let (out, _, state) = debug_run(&two, Some(&state));
    assert!(!out.stderr.contains("sent ahead"), "{}", out.stderr);

    // The catalog says n is an integer, the table now has it as money, which is read through a
    // cast: the opening sent ahead selects "n", the planned one "n"::numeric. It is dropped,
    // the read runs after the rollback on the same session, and every row (the ALTER rewrote
    // them all) comes with its money value.
    db.exec("alter table items alter column n type money using n::numeric::money");
    let (out, retyped, _) = debug_run(&catalog, Some(&state));
    assert!(out.stderr.contains(DROPPED_AHEAD) && !out.stderr.contains(USED_AHEAD), "{}", out.stderr);
    let records: Vec<&Value> = retyped.iter().filter(|m| m["type"] == "RECORD").collect();
    assert_eq!(records.len(), 200);
    let seven = records.iter().find(|m| m["record"]["id"] == 7).expect("row 7");
    assert_eq!((seven["record"]["v"].as_str(), seven["record"]["n"].to_string()), (Some("changed"), "7.00".to_string()));
}

#[test]
fn xmin_horizon_too_old_or_ahead_reads_everything_with_a_warning_and_views_are_refused() {
    let (db, config, mut catalog) = fixture(
        "create table items (id int primary key, v text not null); insert into items select g, 'v' || g from generate_series(1, 50) g; \
         create view items_v as select * from items",
        json!({}),
    );
    select(&mut catalog, "items", "XMIN", None);
    let sid = id(&db, "public", "items");
    let (_, mut state) = run(&config, &catalog, None);
    let version = state["bookmarks"][&sid]["version"].clone();
    // A horizon ahead of the server (as after a restore from an older backup) cannot be compared.
    state["bookmarks"][&sid]["xmin_horizon"] = json!(1u64 << 40);
    let out = sync(&config, &catalog, Some(&state)).success();
    assert!(out.stderr.contains("too old to compare"), "{}", out.stderr);
    let messages = out.messages();
    assert_eq!(rows(&messages, "items").len(), 50);
    assert_ne!(messages.iter().find(|m| m["type"] == "RECORD").unwrap()["version"], version, "a new version");
    assert_eq!(messages.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").count(), 1, "activated at the end");

    // A view has no xmin: refused before any output, naming the stream.
    let mut views = catalog.clone();
    select(&mut views, "items", "FULL_TABLE", None);
    select(&mut views, "items_v", "XMIN", None);
    let out = sync(&config, &views, None).fails_with(65, "XMIN");
    assert!(out.stdout.is_empty(), "nothing written before the refusal: {}", out.stdout);
    assert!(out.stderr.contains(&id(&db, "public", "items_v")), "{}", out.stderr);
}

/// Rows of the schedules' table: more than the tap holds between the server and stdout (its
/// channel of row chunks, its 1 MiB stdout buffer, the pipe), so that after some records the
/// backend still waits on the tap and a terminated backend is one the run needs.
const W_ROWS: i64 = 60_000;

/// How a run of [`xmin_schedule`] is interrupted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Interrupt {
    /// `max_run_seconds` 0: one batch, then a clean stop.
    MaxRunSeconds,
    /// The run completes, but the target keeps only the messages up to a random STATE, as if
    /// the process had died there.
    CutAfterState,
    /// SIGTERM after this many records (exit 143, or 0 when the run ended first).
    Sigterm(usize),
    /// The tap's backend (found in `pg_stat_activity`) is terminated: with `after` 0 while it
    /// waits for the table lock the test holds (before its first row), else once `after`
    /// records were read and the backend waits on the tap (idle in its transaction, or blocked
    /// writing rows the tap does not read), if it still does. With `reconnects` the run
    /// reconnects and finishes (default `reconnect_attempts`); without, `reconnect_attempts` is
    /// 0 and it exits 69.
    Terminated { after: usize, reconnects: bool },
    /// None: the run completes.
    Complete,
}

/// What the interruptions of all schedules did, to show that each kind happened.
#[derive(Default, Debug)]
struct Seen {
    /// Runs that SIGTERM ended with exit 143.
    sigterm_exits: usize,
    /// Connections lost (backends terminated) that a run reconnected from and finished.
    reconnects: usize,
    /// Runs that a terminated backend ended with exit 69.
    terminated_exits: usize,
}

/// Writes of one round: inserts, updates (some growing the row, so it moves) and deletes.
fn xmin_writes(rng: &mut Rng, next_id: &mut i64, round: usize) -> String {
    let mut sql = String::new();
    for _ in 0..(1 + rng.below(4)) {
        match rng.below(4) {
            0 => {
                sql.push_str(&format!(
                    "insert into w select g, 'ins {round} ' || g from generate_series({}, {}) g;",
                    *next_id,
                    *next_id + 20
                ));
                *next_id += 21;
            }
            1 => sql.push_str(&format!("update w set v = 'upd {round} ' || id where id % 97 = {};", rng.below(97))),
            2 => sql.push_str(&format!("update w set v = repeat('grow ', 30) || id where id % 211 = {};", rng.below(211))),
            _ => sql.push_str(&format!("delete from w where id % 389 = {};", rng.below(389))),
        }
    }
    sql
}

/// Whether the tap's backend of `db` is (within 5 s) waiting on the tap: idle in its
/// transaction, or blocked writing rows into a socket the tap does not read. False when the
/// read has ended (the backend idle outside a transaction, or gone).
fn tap_waits_on_the_tap(db: &TestDb) -> bool {
    let mut admin = db.admin();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let row = admin
            .query_one(
                "select count(*) filter (where state = 'idle in transaction' or wait_event = 'ClientWrite'), \
                 count(*) filter (where state = 'active') from pg_stat_activity where usename = $1 and application_name = 'tap-heroku'",
                &[&db.role],
            )
            .expect("reading pg_stat_activity");
        let (waiting, active): (i64, i64) = (row.get(0), row.get(1));
        if waiting > 0 {
            return true;
        }
        if active == 0 {
            return false;
        }
        // Polling while the backend is still active (sending the rows the tap will block on).
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// One schedule: four interrupted or complete XMIN runs of `w` with writers between and during
/// them, then a complete run; the last record of every row of the table must carry its final
/// value. Interruption kinds that happened are counted in `seen`.
fn xmin_schedule(seed: u64, schedule: usize, seen: &mut Seen) {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (schedule as u64 + 1));
    let label = format!("seed {seed}, schedule {schedule}");
    let (db, _, mut catalog) = fixture(
        &format!(
            "create table w (id int primary key, v text not null) with (fillfactor = 70, autovacuum_enabled = off); \
         insert into w select g, 'v0 ' || g from generate_series(1, {W_ROWS}) g"
        ),
        json!({}),
    );
    select(&mut catalog, "w", "XMIN", None);
    let itersize = 100 + rng.below(900);
    let config = db.config_file(json!({"itersize": itersize}));
    let mut state: Option<Value> = None;
    let mut last: BTreeMap<i64, String> = BTreeMap::new();
    let mut next_id = W_ROWS + 1;
    for round in 0..4 {
        db.exec(&xmin_writes(&mut rng, &mut next_id, round));
        if rng.below(3) == 0 {
            db.exec(if rng.below(2) == 0 { "vacuum (freeze) w" } else { "vacuum full w" });
        }
        // Round 0 (a read of every row, long enough for an interruption after some records to
        // land) takes the kinds in turn across schedules, so every kind happens; later rounds
        // draw one.
        let after = 1 + rng.below(1000);
        let kinds = [
            Interrupt::Sigterm(after),
            Interrupt::Terminated { after, reconnects: true },
            Interrupt::Terminated { after: 0, reconnects: true },
            Interrupt::Terminated { after: 0, reconnects: false },
            Interrupt::Terminated { after, reconnects: false },
            Interrupt::MaxRunSeconds,
            Interrupt::CutAfterState,
            Interrupt::Complete,
        ];
        let interrupt = if round == 0 { kinds[schedule % kinds.len()] } else { rng.pick(&kinds) };
        let run_config = match interrupt {
            Interrupt::MaxRunSeconds => db.config_file(json!({"itersize": 100, "max_run_seconds": 0})),
            Interrupt::Terminated { reconnects: false, .. } => db.config_file(json!({"itersize": itersize, "reconnect_attempts": 0})),
            _ => config.clone(),
        };
        // From a second connection, writes while the run reads.
        let during = xmin_writes(&mut rng, &mut next_id, round);
        let writer = {
            let mut admin = db.admin();
            std::thread::spawn(move || admin.batch_execute(&during).expect("concurrent writes"))
        };
        let mut terminated = 0;
        let mut tap = match interrupt {
            Interrupt::Terminated { after: 0, .. } => {
                // The tap's `lock table` waits behind ours: its backend is ended there, then the
                // lock goes (the writer waits for it too).
                let mut holder = db.admin();
                holder.batch_execute("begin; lock table w in access exclusive mode").expect("locking w");
                let tap = Live::sync(&run_config, &catalog, state.as_ref());
                wait_for_tap_query(&db, "%lock table %");
                terminated = terminate_tap_backends(&db);
                holder.batch_execute("commit").expect("releasing the lock");
                tap
            }
            _ => Live::sync(&run_config, &catalog, state.as_ref()),
        };
        match interrupt {
            Interrupt::Sigterm(n) if tap.try_read_records(n) => tap.signal_if_running("TERM"),
            Interrupt::Terminated { after, .. } if after > 0 && tap.try_read_records(after) && tap_waits_on_the_tap(&db) => {
                terminated = terminate_tap_backends(&db);
            }
            _ => {}
        }
        let out = tap.finish(WATCHDOG).out;
        writer.join().expect("writer");
        let what = format!("[{label}] round {round} ({interrupt:?}, {terminated} backends terminated)");
        let lost = log_lines(&out, "WARN", &["lost the connection"]).len();
        match (interrupt, out.code) {
            (_, 0) => {}
            (Interrupt::Sigterm(_), 143) => seen.sigterm_exits += 1,
            (Interrupt::Terminated { reconnects: false, .. }, 69) if terminated > 0 => seen.terminated_exits += 1,
            _ => panic!("{what} exited {}:\n{}", out.code, out.stderr),
        }
        if let Interrupt::Terminated { reconnects: true, .. } = interrupt
            && terminated > 0
        {
            assert_eq!(out.code, 0, "{what}: the run reconnects and finishes:\n{}", out.stderr);
            assert!(lost <= 1, "{what}: one reconnect at most:\n{}", out.stderr);
            seen.reconnects += lost;
        }
        let mut messages = out.messages();
        assert_records_match_schemas(&messages);
        if interrupt == Interrupt::CutAfterState {
            let states: Vec<usize> = messages.iter().enumerate().filter(|(_, m)| m["type"] == "STATE").map(|(i, _)| i).collect();
            let at = states[rng.below(states.len())];
            messages.truncate(at + 1);
        }
        for (id, v) in rows(&messages, "w") {
            last.insert(id, v);
        }
        if let Some(m) = messages.iter().rev().find(|m| m["type"] == "STATE") {
            state = Some(m["value"].clone());
        }
    }
    // The final run completes with no writer.
    let (messages, _) = run(&config, &catalog, state.as_ref());
    for (id, v) in rows(&messages, "w") {
        last.insert(id, v);
    }
    let now = table(&db, "w");
    let wrong: Vec<(&i64, &String)> = now.iter().filter(|(id, v)| last.get(id) != Some(v)).take(5).collect();
    assert!(wrong.is_empty(), "[{label}] rows whose last record is not their final value: {wrong:?}");
}

/// Writers insert, update and delete while XMIN syncs run and are interrupted (max_run_seconds
/// 0, a cut after a STATE, SIGTERM, the tap's backend terminated with and without reconnects);
/// after a final complete run, the last record of every row of the table carries its final
/// value. Seeded: a failure names its seed (TAP_HEROKU_FUZZ_SEED reruns it).
#[test]
fn xmin_under_concurrent_writers_and_interruptions_ends_with_every_row_final() {
    let seed: u64 = std::env::var("TAP_HEROKU_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let schedules = 6 * std::env::var("TAP_HEROKU_FUZZ_SCALE").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(1);
    let mut seen = Seen::default();
    for schedule in 0..schedules {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| xmin_schedule(seed, schedule, &mut seen)));
        if let Err(panic) = result {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!(
                "XMIN schedule {schedule} of seed {seed} failed (rerun: TAP_HEROKU_FUZZ_SEED={seed} cargo test xmin_under_concurrent): {}",
                message.unwrap_or_default()
            );
        }
    }
    // Each kind of interruption happened (the first reads take them in turn), so a green run
    // says something about each.
    assert!(seen.sigterm_exits >= 1 && seen.reconnects >= 1 && seen.terminated_exits >= 1, "not every interruption happened: {seen:?}");
}

/// Tables that cannot be read by blocks (here a partitioned table: no blocks of its own) are
/// read in one statement per run, with the same rule: exactly the rows written since.
#[test]
fn xmin_on_a_partitioned_table_sends_the_rows_written_since() {
    let (db, config, mut catalog) = fixture(
        "create table parted (id int not null, v text not null) partition by range (id); \
         create table parted_low partition of parted for values from (0) to (1000); \
         create table parted_high partition of parted for values from (1000) to (3000); \
         insert into parted select g, 'v' || g from generate_series(1, 1999) g",
        json!({}),
    );
    select(&mut catalog, "parted", "XMIN", None);
    let sid = id(&db, "public", "parted");
    let (first, state) = run(&config, &catalog, None);
    assert_eq!(rows(&first, "parted").len(), 1999);
    let may_repeat = newer_than_horizon(&db, "parted", &state, &sid);
    let (idle, state) = run(&config, &catalog, Some(&state));
    assert!(
        rows(&idle, "parted").iter().all(|(id, _)| may_repeat.contains(id)),
        "nothing changed, nothing sent but rows after the horizon"
    );
    db.exec("update parted set v = 'changed' where id in (5, 1500); insert into parted values (2500, 'new')");
    db.exec("vacuum (freeze) parted_low");
    let may_repeat = newer_than_horizon(&db, "parted", &state, &sid);
    let (changed, _) = run(&config, &catalog, Some(&state));
    let want = BTreeMap::from([(5, "changed".to_string()), (1500, "changed".to_string()), (2500, "new".to_string())]);
    assert_changes(&rows(&changed, "parted"), &want, &may_repeat, &table(&db, "parted"), "partitioned");
}

/// A connection lost before a storage-order read has started (the backend terminated while its
/// `lock table` waits behind another session's lock) is retried like one lost mid-stream:
/// nothing was sent, so the read starts again (it once ended the run with exit 69).
#[test]
fn xmin_reconnects_after_its_backend_is_terminated_while_it_waits_for_the_table_lock() {
    let (db, config, mut catalog) = fixture(
        "create table l (id int primary key, v text not null); insert into l select g, 'v' || g from generate_series(1, 100) g",
        json!({}),
    );
    select(&mut catalog, "l", "XMIN", None);
    let mut holder = db.admin();
    holder.batch_execute("begin; lock table l in access exclusive mode").expect("locking l");
    let tap = Live::sync(&config, &catalog, None);
    wait_for_tap_query(&db, "%lock table %");
    assert_eq!(terminate_tap_backends(&db), 1, "the tap's backend, waiting for the lock");
    holder.batch_execute("commit").expect("releasing the lock");
    let out = tap.finish(WATCHDOG).out;
    assert_eq!(out.code, 0, "the run reconnects and finishes:\n{}", out.stderr);
    assert_eq!(log_lines(&out, "WARN", &["lost the connection", "attempt 1 of 3"]).len(), 1, "one retry:\n{}", out.stderr);
    assert_eq!(rows(&out.messages(), "l").len(), 100);
}
