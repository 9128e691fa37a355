//! Data sync end to end, what a run writes: stream and column selection, the Singer message
//! sequence, `key_properties`, several databases in one catalog, views and materialized views,
//! weird identifiers, the hot standby, and vanished or unreadable streams skipped while the
//! others complete.
//!
//! Row sets are compared exactly (as multisets of records), never by count alone; every run's
//! RECORDs are checked against their SCHEMA.

use std::time::{Duration, Instant};

use postgres::NoTls;
use serde_json::{Value, json};

use crate::support::output::{
    assert_same_rows, bookmark, checked, cut_after_state, log_lines, named_rows, per_stream, record_versions, records, run_ok, segment,
    shape, states, stream_shape, strings,
};
use crate::support::{TestDb, discover, fixture, id, root, select, select_column, server, stream_mut, sync};

// ---- selection and message sequence -------------------------------------------------------

#[test]
fn full_table_messages_state_and_column_selection() {
    let (db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); \
         create table items (id int primary key, name text, secret text, comp pair); \
         insert into items select i, 'item ' || i, 'secret ' || i, row(i, 'x')::pair from generate_series(1, 7) i",
        json!({"full_table_order": "primary_key", "itersize": 3}),
    );
    select(&mut catalog, "items", "FULL_TABLE", None);
    select_column(&mut catalog, "items", "secret", false);
    select_column(&mut catalog, "items", "comp", true);
    let sid = id(&db, "public", "items");

    let first = run_ok(&config, &catalog, None);
    assert_eq!(shape(&first), [stream_shape(true, 7, 3, true), strings(&["STATE"])].concat());
    let schema = &first[0];
    assert_eq!(schema["stream"], "items");
    assert_eq!(schema["key_properties"], json!(["id"]));
    assert_eq!(schema["bookmark_properties"], json!([]));
    let mut props: Vec<&String> = schema["schema"]["properties"].as_object().unwrap().keys().collect();
    props.sort();
    assert_eq!(props, ["id", "name"], "deselected and unsupported columns are not in the SCHEMA");
    assert_eq!(records(&first, "items"), named_rows(1..=7, "item"), "all rows in primary key order, only selected columns");

    let version = first[2]["version"].as_i64().unwrap();
    assert_eq!(first[2], json!({"type": "ACTIVATE_VERSION", "stream": "items", "version": version}));
    assert_eq!(record_versions(&first, "items"), [version]);
    assert_eq!(first[first.len() - 3], json!({"type": "ACTIVATE_VERSION", "stream": "items", "version": version}));
    let done = json!({"currently_syncing": null, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}});
    let mut want_states =
        vec![json!({"currently_syncing": &sid, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": version}}})];
    for last in [3, 6, 7] {
        want_states.push(json!({"currently_syncing": &sid, "bookmarks": {&sid: {
            "last_replication_method": "FULL_TABLE", "version": version, "last_pk_fetched": {"id": last}}}}));
    }
    want_states.extend([done.clone(), done.clone()]);
    assert_eq!(states(&first), want_states);

    // A later full sync: no ACTIVATE_VERSION before its records, a new version activated after them.
    let second = run_ok(&config, &catalog, Some(&done));
    assert_eq!(shape(&second), [stream_shape(false, 7, 3, true), strings(&["STATE"])].concat());
    let new_version = record_versions(&second, "items");
    assert_eq!(new_version.len(), 1);
    assert!(new_version[0] > version, "a new table version: {new_version:?} after {version}");
    assert_eq!(second[second.len() - 3]["version"].as_i64(), Some(new_version[0]));
    assert_eq!(records(&second, "items"), named_rows(1..=7, "item"));
}

#[test]
fn selection_rules_for_singer_io_and_meltano_catalogs() {
    let (_db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); \
         create table sel (id int primary key, a text, b text, c text, d text, e text, comp pair, k int); \
         insert into sel select i, 'a' || i, 'b' || i, 'c' || i, 'd' || i, 'e' || i, row(i, 'x')::pair, 10 * i from generate_series(1, 3) i; \
         create table meltano (id int primary key, x text, y text); insert into meltano values (1, 'x1', 'y1'), (2, 'x2', 'y2'); \
         create table not_selected (id int primary key); insert into not_selected values (1); \
         create table selected_false (id int primary key); insert into selected_false values (1); \
         create table selected_text_false (id int primary key); insert into selected_text_false values (1)",
        json!({}),
    );
    // singer-io style: `[]` selected as the string "true", an INCREMENTAL key that is deselected.
    select(&mut catalog, "sel", "INCREMENTAL", Some("k"));
    root(&mut catalog, "sel")["selected"] = json!("true");
    select_column(&mut catalog, "sel", "id", false); // automatic: always emitted
    select_column(&mut catalog, "sel", "a", true);
    select_column(&mut catalog, "sel", "b", false);
    select_column(&mut catalog, "sel", "comp", true); // unsupported: never emitted
    select_column(&mut catalog, "sel", "k", false); // the replication key: always emitted
    {
        let stream = stream_mut(&mut catalog, "sel");
        let metadata = stream["metadata"].as_array_mut().unwrap();
        for m in metadata.iter_mut() {
            if m["breadcrumb"] == json!(["properties", "c"]) {
                m["metadata"]["selected-by-default"] = json!(false); // no `selected`: not by default
            }
        }
        // `d` keeps selected-by-default true; `e` has no metadata at all, only its schema.
        metadata.retain(|m| m["breadcrumb"] != json!(["properties", "e"]));
    }
    // Meltano style: `selected` on every breadcrumb.
    select(&mut catalog, "meltano", "FULL_TABLE", None);
    for (column, on) in [("id", true), ("x", false), ("y", true)] {
        select_column(&mut catalog, "meltano", column, on);
    }
    root(&mut catalog, "selected_false")["selected"] = json!(false);
    root(&mut catalog, "selected_false")["replication-method"] = json!("FULL_TABLE");
    root(&mut catalog, "selected_text_false")["selected"] = json!("false");
    root(&mut catalog, "selected_text_false")["replication-method"] = json!("FULL_TABLE");

    let messages = run_ok(&config, &catalog, None);
    let streams: Vec<&str> = messages.iter().filter(|m| m["type"] == "SCHEMA").map(|m| m["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["meltano", "sel"], "only selected streams, in catalog order");
    let props = |stream: &str| -> Vec<String> {
        let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == stream).unwrap();
        let mut p: Vec<String> = schema["schema"]["properties"].as_object().unwrap().keys().cloned().collect();
        p.sort();
        p
    };
    assert_eq!(props("sel"), ["a", "d", "e", "id", "k"]);
    assert_eq!(props("meltano"), ["id", "y"]);
    let want: Vec<Value> =
        (1..=3).map(|i| json!({"id": i, "a": format!("a{i}"), "d": format!("d{i}"), "e": format!("e{i}"), "k": 10 * i})).collect();
    assert_eq!(records(&messages, "sel"), want);
    assert_eq!(records(&messages, "meltano"), [json!({"id": 1, "y": "y1"}), json!({"id": 2, "y": "y2"})]);
    let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == "sel").unwrap();
    assert_eq!(schema["bookmark_properties"], json!(["k"]));
}

// ---- resuming ------------------------------------------------------------------------------

#[test]
fn currently_syncing_stream_goes_first() {
    let (db, config, mut catalog) = fixture(
        "create table first_t (id int primary key, name text); insert into first_t values (1, 'first 1'); \
         create table second_t (id int primary key, name text); insert into second_t values (1, 'second 1'), (2, 'second 2')",
        json!({}),
    );
    select(&mut catalog, "first_t", "FULL_TABLE", None);
    select(&mut catalog, "second_t", "INCREMENTAL", Some("id"));
    let order = |messages: &[Value]| -> Vec<String> { per_stream(messages).into_iter().map(|(s, _)| s).collect() };

    let plain = run_ok(&config, &catalog, None);
    assert_eq!(order(&plain), ["first_t", "second_t"]);
    let second = id(&db, "public", "second_t");
    let state = json!({"currently_syncing": &second, "bookmarks": {}});
    let resumed = run_ok(&config, &catalog, Some(&state));
    assert_eq!(order(&resumed), ["second_t", "first_t"]);
    assert_eq!(states(&resumed)[0]["currently_syncing"], json!(second));
    assert_same_rows(&records(&resumed, "second_t"), &named_rows(1..=2, "second"), "second_t");
    assert_same_rows(&records(&resumed, "first_t"), &named_rows(1..=1, "first"), "first_t");
    assert_eq!(states(&resumed).pop().unwrap()["currently_syncing"], Value::Null);
}

// ---- databases, views, names, servers -------------------------------------------------------

#[test]
fn two_databases_in_one_catalog() {
    let db = TestDb::new();
    let other = db.sibling("other");
    db.exec(
        "create table in_first (id int primary key, name text); insert into in_first select i, 'first ' || i from generate_series(1, 3) i",
    );
    other.exec(
        "create table in_other (id int primary key, name text); insert into in_other select i, 'other ' || i from generate_series(1, 4) i",
    );
    db.grant_reader();
    other.grant_reader();
    let config = db.config_file(json!({}));
    let mut catalog = discover(&config);
    let ids: Vec<&str> = catalog["streams"].as_array().unwrap().iter().map(|s| s["tap_stream_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id(&db, "public", "in_first"), id(&other, "public", "in_other")]);
    assert_eq!(root(&mut catalog, "in_other")["database-name"], json!(other.name));
    select(&mut catalog, "in_first", "FULL_TABLE", None);
    select(&mut catalog, "in_other", "INCREMENTAL", Some("id"));

    let messages = run_ok(&config, &catalog, None);
    assert_eq!(records(&messages, "in_first"), named_rows(1..=3, "first"));
    assert_eq!(records(&messages, "in_other"), named_rows(1..=4, "other"));
    let end = states(&messages).pop().unwrap();
    assert_eq!(bookmark(&end, &id(&db, "public", "in_first"))["last_replication_method"], "FULL_TABLE");
    assert_eq!(bookmark(&end, &id(&other, "public", "in_other"))["replication_key_value"], json!(4));
}

#[test]
fn views_and_materialized_views() {
    let (db, config, mut catalog) = fixture(
        "create table base (id int primary key, k int, name text); \
         insert into base select i, i / 2, 'base ' || i from generate_series(1, 6) i; \
         create view v_full as select id, name from base; \
         create view v_inc as select id, k from base; \
         create materialized view mv as select id, name from base",
        json!({"itersize": 4}),
    );
    for view in ["v_full", "v_inc", "mv"] {
        let r = root(&mut catalog, view);
        assert_eq!(r["is-view"], json!(true));
        r["view-key-properties"] = json!(["id"]);
    }
    select(&mut catalog, "v_full", "FULL_TABLE", None);
    select(&mut catalog, "mv", "FULL_TABLE", None);
    select(&mut catalog, "v_inc", "INCREMENTAL", Some("k"));

    let out = sync(&config, &catalog, None).success();
    let messages = checked(&out);
    for view in ["v_full", "v_inc", "mv"] {
        let seg = segment(&messages, view);
        assert_eq!(seg[0]["key_properties"], json!(["id"]), "{view}");
        // A view's key columns may hold NULL (only a table's primary key cannot), as in singer-io.
        assert_eq!(seg[0]["schema"]["properties"]["id"]["type"], json!(["null", "integer"]), "{view}: a view key stays nullable");
        assert!(states(&seg).iter().all(|s| !s["bookmarks"].to_string().contains("last_pk_fetched")), "{view}: views do not resume");
    }
    assert_same_rows(&records(&messages, "v_full"), &named_rows(1..=6, "base"), "v_full");
    assert_same_rows(&records(&messages, "mv"), &named_rows(1..=6, "base"), "mv");
    let inc: Vec<Value> = (1..=6).map(|i| json!({"id": i, "k": i / 2})).collect();
    assert_same_rows(&records(&messages, "v_inc"), &inc, "v_inc");
    assert!(log_lines(&out, "WARN", &["create index"]).is_empty(), "no index advice for views:\n{}", out.stderr);

    // INCREMENTAL on the view continues from its bookmark (k = 3): the ties and the new row.
    db.exec("insert into base values (7, 4, 'base 7'), (8, 1, 'base 8')");
    let state = states(&messages).pop().unwrap();
    let mut only_inc = catalog.clone();
    root(&mut only_inc, "v_full")["selected"] = json!(false);
    root(&mut only_inc, "mv")["selected"] = json!(false);
    let next = run_ok(&config, &only_inc, Some(&state));
    assert_same_rows(&records(&next, "v_inc"), &[json!({"id": 6, "k": 3}), json!({"id": 7, "k": 4})], "v_inc from its bookmark");
}

#[test]
fn weird_identifiers_replicate() {
    let schema = "Weird \"S\"; -- Ünï";
    let (t1, t2) = ("Select", "from; drop table x; --");
    let (db, _, mut catalog) = fixture(
        r#"create schema "Weird ""S""; -- Ünï";
           create table "Weird ""S""; -- Ünï"."Select" ("Key ""K""; --" int primary key, "from" text, "Ünï código" text, "CamelCase" int);
           insert into "Weird ""S""; -- Ünï"."Select" select i, 'from ' || i, 'ü ' || i, -i from generate_series(1, 5) i;
           create table "Weird ""S""; -- Ünï"."from; drop table x; --" ("Select" int primary key, "order by" timestamptz, "ÄÖ" text);
           create index on "Weird ""S""; -- Ünï"."from; drop table x; --" ("order by");
           insert into "Weird ""S""; -- Ünï"."from; drop table x; --"
             select i, timestamptz '2024-06-01 00:00:00+00' + i * interval '1 hour', 'äö ' || i from generate_series(1, 4) i"#,
        json!({"full_table_order": "primary_key", "itersize": 2}),
    );
    // The catalog names the streams after their tables; the sync's config asks for schema_table.
    assert_eq!(stream_mut(&mut catalog, t1)["stream"], json!(t1));
    let config =
        db.config_file(json!({"full_table_order": "primary_key", "itersize": 2, "include_schemas_in_destination_stream_name": true}));
    select(&mut catalog, t1, "FULL_TABLE", None);
    select(&mut catalog, t2, "INCREMENTAL", Some("order by"));
    let (s1, s2) = (format!("{schema}_{t1}"), format!("{schema}_{t2}"));
    let (id1, id2) = (id(&db, schema, t1), id(&db, schema, t2));
    let row1 = |i: i64| json!({"Key \"K\"; --": i, "from": format!("from {i}"), "Ünï código": format!("ü {i}"), "CamelCase": -i});
    let row2 = |i: i64| json!({"Select": i, "order by": format!("2024-06-01T{i:02}:00:00+00:00"), "ÄÖ": format!("äö {i}")});

    let out = sync(&config, &catalog, None).success();
    let first = checked(&out);
    assert_eq!(records(&first, &s1), (1..=5).map(row1).collect::<Vec<_>>());
    assert_eq!(records(&first, &s2), (1..=4).map(row2).collect::<Vec<_>>());
    assert!(log_lines(&out, "WARN", &["create index"]).is_empty(), "the weird key has an index:\n{}", out.stderr);
    let end = states(&first).pop().unwrap();
    assert_eq!(bookmark(&end, &id2)["replication_key"], json!("order by"));
    assert_eq!(bookmark(&end, &id2)["replication_key_value"], json!("2024-06-01T04:00:00+00:00"));

    // FULL_TABLE resumes after the weird primary key; INCREMENTAL continues after the weird key.
    let (before, mid) = cut_after_state(&first, 2);
    assert_eq!(bookmark(&mid, &id1)["last_pk_fetched"], json!({"Key \"K\"; --": 2}));
    assert_eq!(records(&before, &s1), (1..=2).map(row1).collect::<Vec<_>>());
    db.exec(r#"insert into "Weird ""S""; -- Ünï"."from; drop table x; --" values (9, '2024-06-01 09:00:00+00', 'äö 9')"#);
    let mut state = mid.clone();
    state["bookmarks"][&id2] = bookmark(&end, &id2).clone();
    let second = run_ok(&config, &catalog, Some(&state));
    assert_eq!(records(&second, &s1), (3..=5).map(row1).collect::<Vec<_>>());
    assert_eq!(records(&second, &s2), [row2(4), row2(9)]);

    // The same table read by block ranges (the default order), resumed from a block mark whose
    // snapshot is older than every row: the catch-up query sends block 0's rows.
    let physical = db.config_file(json!({"itersize": 2, "include_schemas_in_destination_stream_name": true}));
    root(&mut catalog, t2)["selected"] = json!(false);
    let whole = run_ok(&physical, &catalog, None);
    assert_same_rows(&records(&whole, &s1), &(1..=5).map(row1).collect::<Vec<_>>(), "by blocks");
    let (_, at_start) = cut_after_state(&whole, 1);
    let mut resume = at_start.clone();
    let relfilenode: i64 =
        db.admin().query_one(r#"select pg_relation_filenode('"Weird ""S""; -- Ünï"."Select"')::bigint"#, &[]).unwrap().get(0);
    resume["bookmarks"][&id1]["block_resume"] = json!({"next_block": 1, "relfilenode": relfilenode, "snapshot_xmin": 3});
    let out = sync(&physical, &catalog, Some(&resume)).success();
    assert!(out.stderr.contains("resuming an interrupted full table sync at block 1"), "{}", out.stderr);
    assert!(out.stderr.contains("sent 5 rows changed before block 1"), "{}", out.stderr);
    assert_same_rows(&records(&checked(&out), &s1), &(1..=5).map(row1).collect::<Vec<_>>(), "resumed by blocks");
}

/// A superuser session on the hot standby, or `None` while the database has not arrived there.
fn standby_client(dbname: &str) -> Option<postgres::Client> {
    let s = server();
    postgres::Config::new().host(&s.socket_dir).port(s.standby_port).user(&s.admin_user).dbname(dbname).connect(NoTls).ok()
}

#[test]
fn sync_from_the_hot_standby() {
    let db = TestDb::new();
    db.exec(
        "create table st_full (id int primary key, name text); insert into st_full select i, 'full ' || i from generate_series(1, 5) i; \
         create table st_inc (id int primary key, name text); insert into st_inc select i, 'inc ' || i from generate_series(1, 6) i",
    );
    db.grant_reader();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = standby_client(&db.name)
            .and_then(|mut c| {
                // The grants commit after the rows: wait for them too, or discovery sees nothing.
                c.query_one(
                    "select (select count(*) from st_full) + (select count(*) from st_inc), has_table_privilege($1, 'st_inc', 'SELECT')",
                    &[&db.role],
                )
                .ok()
            })
            .map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1)));
        if seen == Some((11, true)) {
            break;
        }
        assert!(Instant::now() < deadline, "the standby did not replay the test tables within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = db.config_file(json!({"port": server().standby_port, "itersize": 4}));
    let mut catalog = discover(&config);
    select(&mut catalog, "st_full", "FULL_TABLE", None);
    select(&mut catalog, "st_inc", "INCREMENTAL", Some("id"));
    let messages = run_ok(&config, &catalog, None);
    assert_eq!(records(&messages, "st_full"), named_rows(1..=5, "full"));
    assert_eq!(records(&messages, "st_inc"), named_rows(1..=6, "inc"));
}

// ---- failures and warnings -----------------------------------------------------------------

#[test]
fn vanished_or_unreadable_streams_are_skipped_and_the_others_complete() {
    let (db, config, mut catalog) = fixture(
        "create table a_ok (id int primary key, name text); insert into a_ok select i, 'a ' || i from generate_series(1, 4) i; \
         create table b_col (id int primary key, c text, d text); insert into b_col values (1, 'c', 'd'); \
         create table c_gone (id int primary key); insert into c_gone values (1); \
         create table d_revoked (id int primary key); insert into d_revoked values (1); \
         create table e_ok (id int primary key, name text); insert into e_ok select i, 'e ' || i from generate_series(1, 3) i",
        json!({"itersize": 2}),
    );
    for t in ["a_ok", "b_col", "c_gone", "d_revoked"] {
        select(&mut catalog, t, "FULL_TABLE", None);
    }
    select(&mut catalog, "e_ok", "INCREMENTAL", Some("id"));
    db.exec(&format!("alter table b_col drop column c; drop table c_gone; revoke select on d_revoked from {}", db.role));

    let out = sync(&config, &catalog, None).fails_with(65, &id(&db, "public", "b_col"));
    let messages = checked(&out);
    let streams: Vec<String> = per_stream(&messages).into_iter().map(|(s, _)| s).collect();
    assert_eq!(streams, ["a_ok", "e_ok"], "skipped streams write nothing");
    assert_eq!(records(&messages, "a_ok"), named_rows(1..=4, "a"));
    assert_eq!(records(&messages, "e_ok"), named_rows(1..=3, "e"));
    for (table, needle) in [("b_col", "column \"c\""), ("c_gone", "c_gone"), ("d_revoked", "cannot read table")] {
        let sid = id(&db, "public", table);
        assert_eq!(log_lines(&out, "ERROR", &[&sid, needle]).len(), 1, "one ERROR line names {sid} and {needle}:\n{}", out.stderr);
    }
    let end = states(&messages).pop().unwrap();
    assert_eq!(end["currently_syncing"], Value::Null);
    let mut ids: Vec<&String> = end["bookmarks"].as_object().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, [&id(&db, "public", "a_ok"), &id(&db, "public", "e_ok")]);
}

// ---- bookmarks of keys whose JSON form is not PostgreSQL's input syntax --------------------------

#[test]
fn key_properties_are_always_emitted() {
    let (_db, config, mut catalog) = fixture(
        "create type pair as (a int, b text); create table cp (p pair primary key, n int); insert into cp values (row(1, 'a'), 1)",
        json!({}),
    );
    select(&mut catalog, "cp", "FULL_TABLE", None);
    let out = sync(&config, &catalog, None);
    if out.code == 0 {
        let messages = checked(&out);
        let schema = &messages[0];
        for key in schema["key_properties"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            assert!(schema["schema"]["properties"].get(key).is_some(), "key property {key} is not in the SCHEMA: {schema}");
            assert!(records(&messages, "cp").iter().all(|r| r.get(key).is_some()), "key property {key} is not in the records");
        }
    }
}

// ---- keys of extension types, unorderable or unbookmarkable keys, view keys ------------------

/// A view key column that holds NULL stays nullable in the SCHEMA, so every record validates.
#[test]
fn view_key_columns_stay_nullable() {
    let (_db, config, mut catalog) = fixture(
        "create table base (id int primary key); insert into base values (1), (2); \
         create view vw as select id, case when id = 2 then null else 'k' || id end as code from base",
        json!({}),
    );
    select(&mut catalog, "vw", "FULL_TABLE", None);
    root(&mut catalog, "vw")["view-key-properties"] = json!(["code"]);
    let messages = run_ok(&config, &catalog, None);
    let schema = messages.iter().find(|m| m["type"] == "SCHEMA").unwrap();
    assert_eq!(schema["key_properties"], json!(["code"]));
    assert_eq!(schema["schema"]["properties"]["code"]["type"], json!(["null", "string"]));
    assert_eq!(records(&messages, "vw")[1]["code"], Value::Null);
}
