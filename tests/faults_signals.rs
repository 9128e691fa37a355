//! Faults made to happen for real: SIGTERM and SIGINT, while the server computes a batch and
//! mid-stream. Each interrupted run is resumed from the last STATE it wrote and the union of
//! both runs is compared with the table, id by id (see docs/state-and-resume.md for the
//! duplicates each method allows).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::support::activity::wait_for_tap_query;
use crate::support::live::{BIG_ROWS, EXIT_LIMIT, Live, big_table_sql, sync_args};
use crate::support::output::{assert_covers, assert_failure, record_ids};
use crate::support::{assert_records_match_schemas, catch_up_ids, fixture, id, select, sync};

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
    wait_for_tap_query(&db, "%slow_one%");
    live.signal("TERM");
    let finished = live.finish(EXIT_LIMIT);
    // The signal does not wait for the server: the 6 s statement is still running, and the tap
    // exits 143 within 2 s, its last message the STATE it wrote before the statement.
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
