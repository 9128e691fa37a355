//! XMIN change capture: every inserted or updated row arrives, deletes never do, the version
//! stays across runs, views are refused, and writers, freezing, rewrites and interruptions
//! during the syncs lose nothing (docs/sync.md, "XMIN").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Rng, TapOutput, TestDb, assert_records_match_schemas, fixture, id, select, sync};

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

/// Writers insert, update and delete while XMIN syncs run and are interrupted (max_run_seconds
/// 0, a cut after a STATE, a terminated backend that the run reconnects from); after a final
/// complete run, the last record of every row of the table carries its final value.
#[test]
fn xmin_under_concurrent_writers_and_interruptions_ends_with_every_row_final() {
    let seed: u64 = std::env::var("TAP_HEROKU_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let schedules = 6 * std::env::var("TAP_HEROKU_FUZZ_SCALE").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(1);
    for schedule in 0..schedules {
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (schedule as u64 + 1));
        let label = format!("seed {seed}, schedule {schedule}");
        let (db, _, mut catalog) = fixture(
            "create table w (id int primary key, v text not null) with (fillfactor = 70, autovacuum_enabled = off); \
             insert into w select g, 'v0 ' || g from generate_series(1, 4000) g",
            json!({}),
        );
        select(&mut catalog, "w", "XMIN", None);
        let config = db.config_file(json!({"itersize": 100 + rng.below(900)}));
        let mut state: Option<Value> = None;
        let mut last: BTreeMap<i64, String> = BTreeMap::new();
        let mut next_id = 4001;
        for round in 0..4 {
            // Writes between runs and, from a second connection, during the run.
            let writes = |rng: &mut Rng, next_id: &mut i64| -> String {
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
            };
            db.exec(&writes(&mut rng, &mut next_id));
            if rng.below(3) == 0 {
                db.exec(if rng.below(2) == 0 { "vacuum (freeze) w" } else { "vacuum full w" });
            }
            let during = writes(&mut rng, &mut next_id);
            let writer = {
                let mut admin = db.admin();
                std::thread::spawn(move || admin.batch_execute(&during).expect("concurrent writes"))
            };
            let mode = rng.below(3);
            let run_config = if mode == 0 { db.config_file(json!({"itersize": 100, "max_run_seconds": 0})) } else { config.clone() };
            let out = sync(&run_config, &catalog, state.as_ref());
            writer.join().expect("writer");
            assert!(out.code == 0, "[{label}] round {round}: {}", out.stderr);
            let mut messages = out.messages();
            if mode == 1 {
                // Cut after a random STATE, as if the process died there.
                let states: Vec<usize> = messages.iter().enumerate().filter(|(_, m)| m["type"] == "STATE").map(|(i, _)| i).collect();
                let at = states[rng.below(states.len())];
                messages.truncate(at + 1);
            }
            for (id, v) in rows(&messages, "w") {
                last.insert(id, v);
            }
            state = Some(messages.iter().rev().find(|m| m["type"] == "STATE").expect("a STATE")["value"].clone());
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
