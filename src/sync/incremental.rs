//! Key-based INCREMENTAL: `where key >= bookmark order by key`, as Stitch documents it.
//!
//! The bookmark is the JSON value of the replication key in the last row sent where it was not
//! NULL, written to state after every batch. `>=` sends rows equal to the bookmark again on the
//! next run, so rows sharing the last key value are never skipped (at-least-once). Rows whose key
//! is NULL sort last and are sent on the first run only, as in tap-postgres (while every key is
//! NULL no bookmark exists, so they are sent again). A connection lost inside a run resumes the
//! same way from the last key written.

use std::io::Write;

use super::bookmarks::bookmark_param;
use super::pipeline::{self, Context, Reached, Source};
use super::plan::StreamPlan;
use super::sink::RowSink;
use super::{Outcome, now_version};
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::query::{self, KeyColumn};
use crate::state::State;

/// Syncs one INCREMENTAL stream.
pub(super) fn sync<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let stream = plan.selected.stream.clone();
    let Some((key_index, cast_type)) = plan.replication_key.clone() else {
        return Err(Error::new(ErrorKind::Internal, "an INCREMENTAL stream was planned without a replication key"));
    };
    let key_name = plan.columns[key_index].name.clone();
    let encoder = plan.columns[key_index].encoder.clone();
    let mut bookmark = plan.bookmark.clone();
    let version = bookmark.version.unwrap_or_else(now_version);
    let start_value = bookmark.replication_key_value.as_ref().map(|v| bookmark_param(v, &encoder));
    bookmark.last_replication_method = Some("INCREMENTAL".to_string());
    bookmark.replication_key = Some(key_name.clone());
    bookmark.version = Some(version);
    state.set_bookmark(&id, &bookmark);
    writer.write_state(&state.to_value())?;
    writer.write_activate_version(&stream, version)?;

    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let key = KeyColumn { name: &key_name, cast_type: &cast_type };
    let (schema_name, table_name) = (plan.selected.schema_name.clone(), plan.selected.table_name.clone());
    let lock = plan.lock.clone();
    let query_from = |value: Option<String>| Source::Query {
        sql: query::incremental(&items, &schema_name, &table_name, &key, value.is_some()),
        params: value.into_iter().collect(),
        lock: lock.clone(),
    };
    let search_path = plan.search_path.clone();
    let mut sink = RowSink::new(plan, version, vec![key_index]);
    let outcome = pipeline::run(
        cx,
        (query_from(start_value.clone()), &search_path),
        (&mut plan.columns, &mut sink),
        writer,
        |reached| {
            let Reached::Rows(sink) = reached else { return None };
            // From the last key written in this run (its rows again), or where the run began.
            let written = sink.last_value(0).map(|v| bookmark_param(&v, &encoder));
            Some(query_from(written.or_else(|| start_value.clone())))
        },
        |sink, writer, _| {
            if let Some(v) = sink.last_value(0) {
                bookmark.replication_key_value = Some(v);
            }
            state.set_bookmark(&id, &bookmark);
            writer.write_state(&state.to_value())
        },
    )?;
    if outcome == Outcome::Complete {
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}
