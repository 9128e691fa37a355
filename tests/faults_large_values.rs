//! Faults made to happen for real: rows larger than usual (a 50 MB bytea, a 10 MB jsonb) pass
//! intact with bounded memory.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::live::{Live, sync_args};
use crate::support::output::records;
use crate::support::{fixture, select};

// ---- assertions ----------------------------------------------------------------------------

/// Lowercase hex md5 of `bytes`.
fn md5_hex(bytes: &[u8]) -> String {
    let digest = openssl::hash::hash(openssl::hash::MessageDigest::md5(), bytes).expect("md5");
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
