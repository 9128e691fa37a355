//! Reading what a run printed: its messages per stream, RECORDs, STATEs and bookmarks, the
//! shape of the message sequence, the log lines of a level, and the assertions shared by the sync
//! and fault tests (the failure format, every id covered, the checks every sync output passes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{TapOutput, assert_records_match_schemas, sync};

/// True for `time_extracted` values shaped like `2024-06-01T12:00:00.123456Z`.
pub fn is_time_extracted(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The parsed messages of a run after the checks every sync output must pass: each RECORD
/// matches its SCHEMA and carries an integer `version` and a `time_extracted` in singer's format.
pub fn checked(out: &TapOutput) -> Vec<Value> {
    let messages = out.messages();
    assert_records_match_schemas(&messages);
    for m in messages.iter().filter(|m| m["type"] == "RECORD") {
        assert!(m["version"].as_i64().is_some(), "RECORD without an integer version: {m}");
        assert!(is_time_extracted(m["time_extracted"].as_str().unwrap_or("")), "bad time_extracted: {m}");
    }
    messages
}

/// Runs a sync that must succeed and returns its checked messages.
pub fn run_ok(config: &Path, catalog: &Value, state: Option<&Value>) -> Vec<Value> {
    checked(&sync(config, catalog, state).success())
}

/// The message types in order, each run of RECORDs folded into `RECORD*n`.
pub fn shape(messages: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut records = 0;
    for m in messages {
        let kind = m["type"].as_str().expect("a message type");
        if kind == "RECORD" {
            records += 1;
            continue;
        }
        if records > 0 {
            out.push(format!("RECORD*{records}"));
            records = 0;
        }
        out.push(kind.to_string());
    }
    if records > 0 {
        out.push(format!("RECORD*{records}"));
    }
    out
}

/// `&str`s as owned strings, to compare with [`shape`].
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The expected shape of one stream's messages: SCHEMA, STATE, an optional ACTIVATE_VERSION,
/// one `RECORD*n` + STATE per batch (a last, short or empty, batch included), then the end.
pub fn stream_shape(activate_first: bool, rows: usize, itersize: usize, full_table: bool) -> Vec<String> {
    let mut out = strings(&["SCHEMA", "STATE"]);
    if activate_first {
        out.push("ACTIVATE_VERSION".into());
    }
    let mut left = rows;
    loop {
        let batch = left.min(itersize);
        if batch > 0 {
            out.push(format!("RECORD*{batch}"));
        }
        out.push("STATE".into());
        left -= batch;
        if batch < itersize {
            break;
        }
    }
    if full_table {
        out.push("ACTIVATE_VERSION".into());
    }
    out.push("STATE".into());
    out
}

/// A run's messages split per stream (from each SCHEMA to the next), after checking that the
/// run ends with one STATE of its own, which is left out.
pub fn per_stream(messages: &[Value]) -> Vec<(String, Vec<Value>)> {
    let (last, body) = messages.split_last().expect("a run writes messages");
    assert_eq!(last["type"], "STATE", "a run ends with a STATE");
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in body {
        if m["type"] == "SCHEMA" {
            out.push((m["stream"].as_str().unwrap().to_string(), Vec::new()));
        }
        out.last_mut().expect("messages start with a SCHEMA").1.push(m.clone());
    }
    out
}

/// The messages of `stream` in a run (see [`per_stream`]).
pub fn segment(messages: &[Value], stream: &str) -> Vec<Value> {
    per_stream(messages).into_iter().find(|(s, _)| s == stream).unwrap_or_else(|| panic!("no messages of stream {stream}")).1
}

/// The `record`s of `stream`'s RECORD messages.
pub fn records(messages: &[Value], stream: &str) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["record"].clone()).collect()
}

/// The values of the STATE messages.
pub fn states(messages: &[Value]) -> Vec<Value> {
    messages.iter().filter(|m| m["type"] == "STATE").map(|m| m["value"].clone()).collect()
}

/// The `version`s of `stream`'s RECORD messages, deduplicated.
pub fn record_versions(messages: &[Value], stream: &str) -> Vec<i64> {
    let mut v: Vec<i64> =
        messages.iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["version"].as_i64().unwrap()).collect();
    v.dedup();
    v
}

/// The messages before the cut: stdout of a run that crashed right after its `n`th STATE line
/// (1-based), and that STATE's value.
pub fn cut_after_state(messages: &[Value], n: usize) -> (Vec<Value>, Value) {
    let at = messages.iter().enumerate().filter(|(_, m)| m["type"] == "STATE").nth(n - 1).unwrap_or_else(|| panic!("no STATE #{n}")).0;
    (messages[..=at].to_vec(), messages[at]["value"].clone())
}

/// Asserts two multisets of records are equal (compared as sorted JSON text).
pub fn assert_same_rows(got: &[Value], want: &[Value], what: &str) {
    let sorted = |rows: &[Value]| {
        let mut v: Vec<String> = rows.iter().map(Value::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(got), sorted(want), "{what}");
}

/// `{"id": i, "name": "<prefix> i"}` for each `i`.
pub fn named_rows(ids: impl IntoIterator<Item = i64>, prefix: &str) -> Vec<Value> {
    ids.into_iter().map(|i| json!({"id": i, "name": format!("{prefix} {i}")})).collect()
}

/// The stderr lines starting with `level` (`WARN`, `ERROR`) that contain every `needles`.
pub fn log_lines<'a>(out: &'a TapOutput, level: &str, needles: &[&str]) -> Vec<&'a str> {
    out.stderr.lines().filter(|l| l.starts_with(level) && needles.iter().all(|n| l.contains(n))).collect()
}

/// The bookmark of `id` in a state value.
pub fn bookmark<'a>(state: &'a Value, id: &str) -> &'a Value {
    state["bookmarks"].get(id).unwrap_or_else(|| panic!("no bookmark for {id} in {state}"))
}

/// `block_resume.next_block` of `id`'s bookmark in a STATE value, if there is one.
pub fn next_block(state: &Value, id: &str) -> Option<u64> {
    bookmark(state, id).get("block_resume").map(|m| m["next_block"].as_u64().expect("an integer next_block"))
}

/// The `tap-heroku: error: ` lines of stderr.
pub fn error_lines(out: &TapOutput) -> Vec<&str> {
    out.stderr.lines().filter(|l| l.starts_with("tap-heroku: error: ")).collect()
}

/// Asserts the failure format: exit `code`, no panic, exactly one error line containing every
/// `needles`, followed by a hint sentence when `hint` (which must be the last stderr line).
pub fn assert_failure(out: &TapOutput, label: &str, code: i32, needles: &[&str], hint: bool) {
    let ctx = || format!("[{label}] exit {}\nstderr:\n{}", out.code, out.stderr);
    assert_eq!(out.code, code, "wrong exit code, expected {code}: {}", ctx());
    assert!(!out.stderr.contains("panicked"), "panic text in stderr: {}", ctx());
    let errors = error_lines(out);
    assert_eq!(errors.len(), 1, "expected exactly one error line: {}", ctx());
    for n in needles {
        assert!(errors[0].contains(n), "the error line does not mention {n:?}: {}", ctx());
    }
    if hint {
        let lines: Vec<&str> = out.stderr.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("tap-heroku: error: ")).unwrap();
        let hint = lines.get(at + 1).unwrap_or_else(|| panic!("no hint line after the error line: {}", ctx()));
        assert_eq!(at + 2, lines.len(), "the hint must be the last stderr line: {}", ctx());
        assert!(
            hint.len() > 10 && hint.trim_end().ends_with('.') && !hint.starts_with("tap-heroku:"),
            "hint is not a sentence: {hint:?}: {}",
            ctx()
        );
    }
}

/// The `id`s of `stream`'s RECORDs.
pub fn record_ids(messages: &[Value], stream: &str) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m["type"] == "RECORD" && m["stream"] == stream)
        .map(|m| m["record"]["id"].as_i64().unwrap_or_else(|| panic!("record without an integer id: {m}")))
        .collect()
}

/// Index of the last STATE message.
pub fn last_state_at(messages: &[Value]) -> usize {
    messages.iter().rposition(|m| m["type"] == "STATE").expect("a STATE message")
}

/// Asserts that `ids` holds every id of 1..=rows, nothing else, and more than once only the ids
/// in `may_repeat`. Reports counts (and a few examples), not 200,000 numbers.
pub fn assert_covers(ids: &[i64], rows: i64, may_repeat: &BTreeSet<i64>, label: &str) {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for &i in ids {
        *count.entry(i).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=rows).filter(|i| !count.contains_key(i)).collect();
    let extra: Vec<i64> = count.keys().copied().filter(|i| !(1..=rows).contains(i)).collect();
    let repeated: Vec<i64> = count.iter().filter(|(i, n)| **n > 1 && !may_repeat.contains(i)).map(|(i, _)| *i).collect();
    let few = |v: &[i64]| v.iter().take(10).map(i64::to_string).collect::<Vec<_>>().join(", ");
    assert!(missing.is_empty(), "[{label}] {} ids never sent, e.g. {}", missing.len(), few(&missing));
    assert!(extra.is_empty(), "[{label}] ids not in the table: {}", few(&extra));
    assert!(repeated.is_empty(), "[{label}] {} ids sent twice, e.g. {}", repeated.len(), few(&repeated));
}

/// The streams that have a SCHEMA message, in order.
pub fn schema_streams(messages: &[Value]) -> Vec<String> {
    messages.iter().filter(|m| m["type"] == "SCHEMA").map(|m| m["stream"].as_str().unwrap().to_string()).collect()
}
