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
