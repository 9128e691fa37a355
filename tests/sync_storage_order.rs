//! FULL_TABLE in storage order (block ranges, the default): a STATE with a block mark after each
//! range, a resume at every STATE, rows changed or moved into blocks already read, a rewrite
//! between runs, partitioned tables and the relations whose blocks cannot be read (key order).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::output::{
    assert_same_rows, bookmark, checked, cut_after_state, next_block, record_versions, records, run_ok, segment, shape, states, strings,
};
use crate::support::{self, discover, fixture, id, root, select, sync};

// ---- FULL_TABLE in storage order (block ranges, the default) -------------------------------

/// How often each `id` occurs in `records`.
fn id_counts(records: &[Value]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r["id"].as_i64().expect("an integer id")).or_default() += 1;
    }
    counts
}

#[test]
fn physical_full_table_reads_block_ranges_and_resumes_at_every_state() {
    // About 5 rows per 8 kB block (fillfactor 10) and no primary key: resumable all the same.
    let (db, config, mut catalog) = fixture(
        "create table blk (id int not null, pad text) with (fillfactor = 10); \
         insert into blk select i, repeat('p', 100) from generate_series(1, 60) i",
        json!({"itersize": 10}),
    );
    select(&mut catalog, "blk", "FULL_TABLE", None);
    let sid = id(&db, "public", "blk");
    let all: Vec<Value> = (1..=60).map(|i| json!({"id": i, "pad": "p".repeat(100)})).collect();
    let full = run_ok(&config, &catalog, None);
    assert_same_rows(&records(&full, "blk"), &all, "full run");
    let version = record_versions(&full, "blk")[0];
    let kinds = shape(&full);
    assert_eq!(kinds[..3], strings(&["SCHEMA", "STATE", "ACTIVATE_VERSION"]), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 3..], strings(&["ACTIVATE_VERSION", "STATE", "STATE"]), "{kinds:?}");

    // Each range's STATE says which rows came before it: exactly those stored before next_block.
    let mut marks = Vec::new();
    let mut sent = std::collections::BTreeSet::new();
    for m in &full {
        if m["type"] == "RECORD" {
            sent.insert(m["record"]["id"].as_i64().unwrap());
        } else if m["type"] == "STATE"
            && let Some(b) = next_block(&m["value"], &sid)
        {
            if b < u64::from(u32::MAX) {
                assert_eq!(sent, support::ids_before_block(&db, "blk", b), "the rows sent before the STATE with next_block {b}");
            } else {
                assert_eq!(sent.len(), 60, "the last, open-ended range ends the table");
            }
            marks.push(b);
        }
    }
    assert!(marks.len() >= 4 && marks.windows(2).all(|w| w[0] < w[1]), "several block ranges, in order: {marks:?}");
    let end = states(&full).pop().unwrap();
    assert_eq!(end, json!({"currently_syncing": null, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}}));

    // STATE #1 starts the stream; #2.. follow the ranges. Cut after each and resume.
    for n in 2..=marks.len() + 1 {
        let (before, state) = cut_after_state(&full, n);
        assert_eq!(state["currently_syncing"], json!(sid));
        let again = support::catch_up_ids(&db, "blk", bookmark(&state, &sid));
        let out = sync(&config, &catalog, Some(&state)).success();
        assert!(out.stderr.contains("resuming an interrupted full table sync at block"), "cut after STATE #{n}:\n{}", out.stderr);
        let after = checked(&out);
        let union: Vec<Value> = records(&before, "blk").into_iter().chain(records(&after, "blk")).collect();
        let counts = id_counts(&union);
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>(), "cut after STATE #{n}: every row");
        let twice: Vec<i64> = counts.iter().filter(|(_, c)| **c > 1).map(|(i, _)| *i).collect();
        assert!(
            twice.iter().all(|i| again.contains(i) && counts[i] == 2),
            "cut after STATE #{n}: sent twice {twice:?}, expected only {again:?}"
        );
        let activations: Vec<&Value> = after.iter().filter(|m| m["type"] == "ACTIVATE_VERSION").map(|m| &m["version"]).collect();
        assert_eq!(activations, [&json!(version)], "cut after STATE #{n}: the interrupted version is activated");
        assert!(record_versions(&after, "blk").iter().all(|v| *v == version), "cut after STATE #{n}: the resumed records keep the version");
        assert_eq!(states(&after).pop().unwrap(), end, "cut after STATE #{n}");
    }
}

#[test]
fn physical_resume_sends_rows_changed_or_moved_into_blocks_already_read() {
    // About 89 rows per full block, 7 blocks; ranges of about 2 blocks.
    let (db, config, mut catalog) = fixture(
        "create table mv (id int primary key, v text); insert into mv select i, repeat('a', 50) from generate_series(1, 600) i",
        json!({"itersize": 100}),
    );
    select(&mut catalog, "mv", "FULL_TABLE", None);
    let sid = id(&db, "public", "mv");
    let full = run_ok(&config, &catalog, None);
    assert_eq!(records(&full, "mv").len(), 600);
    let n = (1..).find(|&n| next_block(&cut_after_state(&full, n).1, &sid).is_some_and(|b| b >= 3)).unwrap();
    let (before, state) = cut_after_state(&full, n);
    let b = next_block(&state, &sid).unwrap();
    let last_block: i64 = db.admin().query_one("select max((ctid::text::point)[0])::bigint from mv", &[]).unwrap().get(0);
    assert!((b as i64) < last_block, "the cut leaves full blocks unread (next_block {b}, last block {last_block})");

    // While the sync is interrupted: empty block 0 (vacuum records its free space), move an
    // unread row there by growing it, insert rows (once the last block is full they go to block
    // 0 too), change a row already read and one not yet read.
    let moved: i32 = db.admin().query_one(&format!("select id from mv where ctid >= '({b},0)' order by ctid limit 1"), &[]).unwrap().get(0);
    let early: i32 =
        db.admin().query_one("select id from mv where ctid >= '(1,0)' and ctid < '(2,0)' order by ctid limit 1", &[]).unwrap().get(0);
    db.exec("delete from mv where ctid < '(1,0)'");
    db.exec("vacuum mv");
    db.exec(&format!("update mv set v = repeat('z', 300) where id = {moved}"));
    db.exec("insert into mv select i, 'new ' || i from generate_series(1001, 1300) i");
    db.exec(&format!("update mv set v = 'changed early' where id = {early}"));
    db.exec("update mv set v = 'changed late' where id = 600");
    let in_block = |id: i64| -> i64 {
        db.admin().query_one("select (ctid::text::point)[0]::bigint from mv where id = $1", &[&(id as i32)]).unwrap().get(0)
    };
    assert!(in_block(i64::from(moved)) < b as i64, "the grown row {moved} moved into a block already read");
    assert!((1001..=1300).any(|i| in_block(i) < b as i64), "new rows went into blocks already read");

    let out = sync(&config, &catalog, Some(&state)).success();
    let after = checked(&out);
    assert_eq!(record_versions(&after, "mv"), [record_versions(&full, "mv")[0]], "the resume keeps the version");
    // A target that upserts by key ends with exactly the table: the last record of every id is
    // the row as it is now (and the deleted rows are not sent again).
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    for r in records(&before, "mv").into_iter().chain(records(&after, "mv")) {
        last.insert(r["id"].as_i64().unwrap(), r);
    }
    let now: BTreeMap<i64, Value> = db
        .admin()
        .query("select id, v from mv", &[])
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), json!({"id": r.get::<_, i32>(0), "v": r.get::<_, String>(1)})))
        .collect();
    for (i, row) in &now {
        assert_eq!(last.get(i), Some(row), "row {i} as it is now");
    }
    let after_ids = id_counts(&records(&after, "mv"));
    assert!(after_ids.keys().all(|i| now.contains_key(i)), "only live rows are sent");
    for i in [i64::from(moved), i64::from(early), 600, 1001, 1300] {
        assert!(after_ids.contains_key(&i), "row {i} changed in the gap is sent by the resumed run");
    }
}

#[test]
fn physical_resume_restarts_after_a_rewrite_and_partitioned_tables_use_the_key() {
    let (db, config, mut catalog) = fixture(
        "create table rw (id int primary key, pad text) with (fillfactor = 10); \
         insert into rw select i, repeat('r', 100) from generate_series(1, 40) i; \
         create table parted (id int primary key, v text) partition by range (id); \
         create table parted_1 partition of parted for values from (1) to (100); \
         create table parted_2 partition of parted for values from (100) to (200); \
         insert into parted select i, 'v' || i from generate_series(1, 150) i",
        json!({"itersize": 10}),
    );
    select(&mut catalog, "rw", "FULL_TABLE", None);
    let sid = id(&db, "public", "rw");
    let full = run_ok(&config, &catalog, None);
    let version = record_versions(&full, "rw")[0];
    let (_, state) = cut_after_state(&full, 3);
    assert!(next_block(&state, &sid).is_some());

    // VACUUM FULL gives the table new storage: block numbers mean nothing now.
    db.exec("vacuum full rw");
    let out = sync(&config, &catalog, Some(&state)).success();
    assert!(out.stderr.contains("was rewritten"), "{}", out.stderr);
    let after = checked(&out);
    assert_eq!(id_counts(&records(&after, "rw")), (1..=40).map(|i| (i, 1)).collect::<BTreeMap<_, _>>(), "every row once");
    let new_version = record_versions(&after, "rw");
    assert_eq!(new_version.len(), 1);
    assert_ne!(new_version[0], version, "a new version");

    // A mark from a snapshot the server has not reached (a state from another server, say)
    // cannot be trusted either.
    let mut future = state.clone();
    future["bookmarks"][&sid]["block_resume"]["snapshot_xmin"] = json!(1u64 << 40);
    let again = checked(&sync(&config, &catalog, Some(&future)).success());
    assert_eq!(records(&again, "rw").len(), 40);
    assert_ne!(record_versions(&again, "rw"), [version]);

    // A block_resume of another shape is refused before any output.
    let mut bad = state.clone();
    bad["bookmarks"][&sid]["block_resume"] = json!("12");
    let refused = sync(&config, &catalog, Some(&bad)).fails_with(65, "block_resume");
    assert!(refused.stdout.is_empty());
    bad["bookmarks"][&sid]["block_resume"] = json!({"next_block": 1u64 << 32, "relfilenode": 1, "snapshot_xmin": 1});
    let refused = sync(&config, &catalog, Some(&bad)).fails_with(65, "block_resume");
    assert!(refused.stdout.is_empty(), "block numbers are 32-bit");

    // A partitioned table has no blocks of its own: it is read in primary key order.
    select(&mut catalog, "parted", "FULL_TABLE", None);
    root(&mut catalog, "rw")["selected"] = json!(false);
    let out = sync(&config, &catalog, None).success();
    assert!(out.stderr.contains("partitioned table"), "{}", out.stderr);
    let parted = checked(&out);
    let pid = id(&db, "public", "parted");
    assert_eq!(records(&parted, "parted").iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), (1..=150).collect::<Vec<_>>());
    assert_eq!(bookmark(&cut_after_state(&parted, 2).1, &pid)["last_pk_fetched"], json!({"id": 10}));
}

#[test]
fn physical_reads_fall_back_to_key_order_where_blocks_cannot_be_read() {
    let (db, config, _) = fixture(
        "create table colg (id int primary key, secret text); insert into colg select i, 's' from generate_series(1, 5) i; \
         create table inh_parent (id int primary key, v text); create table inh_child () inherits (inh_parent); \
         insert into inh_parent select i, 'p' from generate_series(1, 3) i; \
         insert into inh_child select i, 'c' from generate_series(4, 6) i",
        json!({"itersize": 2}),
    );
    // ctid and xmin are not covered by column grants; an inheritance parent's query reads its
    // children too, whose blocks are not the parent's.
    db.exec(&format!("revoke select on colg from {role}; grant select (id) on colg to {role}", role = db.role));
    let mut catalog = discover(&config);
    select(&mut catalog, "colg", "FULL_TABLE", None);
    select(&mut catalog, "inh_parent", "FULL_TABLE", None);
    let out = sync(&config, &catalog, None).success();
    assert!(out.stderr.contains("only some columns"), "{}", out.stderr);
    assert!(out.stderr.contains("inheritance children"), "{}", out.stderr);
    let messages = checked(&out);
    let ids = |stream: &str| records(&messages, stream).iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids("colg"), (1..=5).collect::<Vec<_>>(), "in key order");
    assert_eq!(ids("inh_parent"), (1..=6).collect::<Vec<_>>(), "the children's rows too, in key order");
    for (table, first_batch_end) in [("colg", 2), ("inh_parent", 2)] {
        let seg = segment(&messages, table);
        let (_, state) = cut_after_state(&seg, 2);
        assert_eq!(bookmark(&state, &id(&db, "public", table))["last_pk_fetched"], json!({"id": first_batch_end}), "{table}");
    }
}
