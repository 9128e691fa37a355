//! The tap across a network: tests/link.py (tests/support/link.rs) between the tap and the
//! test server, adding latency to every message.

use std::time::Instant;

use serde_json::json;

use crate::support::link::Link;
use crate::support::{fixture, select, server, sync};

/// A FULL_TABLE sync through a link with a 10 ms round trip sends the same records as one
/// straight to the server: nothing in the data path depends on replies arriving at once.
#[test]
fn full_table_through_a_delaying_link_matches_a_direct_sync() {
    let (db, config, mut catalog) = fixture(
        "create table t (id int primary key, v text); insert into t select i, 'v' || i from generate_series(1, 5000) i;",
        json!({}),
    );
    select(&mut catalog, "t", "FULL_TABLE", None);
    let direct = sync(&config, &catalog, None).success().records("t");
    assert_eq!(direct.len(), 5000);

    let link = Link::start(server().port, &["--delay-ms", "5", "-v"]);
    let linked_config = db.config_file(json!({"port": link.port}));
    let started = Instant::now();
    let linked = sync(&linked_config, &catalog, None).success().records("t");
    let elapsed = started.elapsed();
    assert_eq!(linked, direct);
    // The sync went through the link: it opened a connection, and the TCP handshake, TLS and
    // scram exchanges alone take several 10 ms round trips.
    assert!(link.log().contains("link: connection 1 opened"), "link log:\n{}", link.log());
    assert!(elapsed.as_millis() >= 50, "a sync through a 10 ms round trip link took only {elapsed:?}");
}

/// A batch holds about `itersize` rows whatever the statistics say: on a table that was never
/// analysed (`reltuples = -1`), every storage-order batch ends at the first block boundary after
/// `itersize` rows, so no batch exceeds it by more than one block's rows, and a small table still
/// gets its resume points.
#[test]
fn storage_order_batches_are_the_size_they_claim_on_a_table_never_analysed() {
    let (db, config, mut catalog) = fixture(
        "create table fresh (id int primary key, v int not null) with (autovacuum_enabled = off); \
         insert into fresh select g, g from generate_series(1, 30000) g",
        json!({"itersize": 1000}),
    );
    let never_analysed: f64 = db.admin().query_one("select reltuples::float8 from pg_class where relname = 'fresh'", &[]).unwrap().get(0);
    assert!(never_analysed < 0.0, "the table has no statistics: reltuples {never_analysed}");
    let per_block: i64 =
        db.admin().query_one("select max(n) from (select count(*) n from fresh group by (ctid::text::point)[0]) b", &[]).unwrap().get(0);
    select(&mut catalog, "fresh", "FULL_TABLE", None);
    let messages = sync(&config, &catalog, None).success().messages();
    let mut batch = 0i64;
    let mut batches = Vec::new();
    for m in &messages {
        match m["type"].as_str() {
            Some("RECORD") => batch += 1,
            Some("STATE") if batch > 0 => {
                batches.push(batch);
                batch = 0;
            }
            _ => {}
        }
    }
    assert_eq!(batches.iter().sum::<i64>(), 30000);
    assert!(batches.len() >= 25, "a resume point about every 1,000 rows: {batches:?}");
    assert!(batches.iter().all(|&b| b <= 1000 + per_block), "no batch over itersize plus one block ({per_block} rows): {batches:?}");
}
