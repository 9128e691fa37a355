//! Key-based INCREMENTAL: `where key >= bookmark order by key`, as Stitch documents it.
//!
//! The bookmark is the JSON value of the replication key in the last row sent where it was not
//! NULL, written to state after every batch. `>=` sends rows equal to the bookmark again on the
//! next run, so rows sharing the last key value are never skipped (at-least-once). Rows whose key
//! is NULL sort last and are sent on the first run only, as in tap-postgres (while every key is
//! NULL no bookmark exists, so they are sent again).

use std::io::Write;

use postgres::Client;
use serde_json::{Value, json};

use super::{Limits, Outcome, RowSink, Source, StreamPlan, bookmark_param, now_version, run_query};
use crate::error::Result;
use crate::message::MessageWriter;
use crate::query::{self, KeyColumn};
use crate::state::State;

/// Syncs one INCREMENTAL stream.
pub(super) fn sync<W: Write>(
    client: &mut Client,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
    limits: &Limits<'_>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let stream = plan.selected.stream.clone();
    let (key_index, cast_type) = plan.replication_key.clone().expect("INCREMENTAL plans have a key");
    let key_name = plan.columns[key_index].name.clone();
    let mut bookmark = plan.bookmark.clone();
    let version = bookmark.get("version").and_then(Value::as_i64).unwrap_or_else(now_version);
    let start_value =
        bookmark.get("replication_key_value").filter(|v| !v.is_null()).map(|v| bookmark_param(v, &plan.columns[key_index].encoder));
    bookmark.insert("last_replication_method".into(), json!("INCREMENTAL"));
    bookmark.insert("replication_key".into(), json!(key_name));
    bookmark.insert("version".into(), json!(version));
    state.set_bookmark(&id, bookmark.clone());
    writer.write_state(&state.to_value())?;
    writer.write_activate_version(&stream, version)?;

    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let key = KeyColumn { name: &key_name, cast_type: &cast_type };
    let sql = query::incremental(&items, &plan.selected.schema_name, &plan.selected.table_name, &key, start_value.is_some());
    let params: Vec<String> = start_value.into_iter().collect();
    let mut sink = RowSink::new(plan, version, vec![key_index]);
    let source = Source::Query { sql: &sql, params: &params };
    let outcome = run_query(client, (source, &plan.search_path), &mut plan.columns, &mut sink, writer, limits, |sink, writer, _| {
        if let Some(v) = sink.last_value(0) {
            bookmark.insert("replication_key_value".into(), v);
        }
        state.set_bookmark(&id, bookmark.clone());
        writer.write_state(&state.to_value())
    })?;
    if outcome == Outcome::Complete {
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}
