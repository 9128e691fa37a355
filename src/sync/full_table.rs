//! FULL_TABLE: every row every run, with ACTIVATE_VERSION as singer-io's tap-postgres does it.
//!
//! Tables with a primary key are read `order by <pk>` and the last key sent is kept in the
//! bookmark as `last_pk_fetched`; an interrupted sync resumes with `where (pk) > (last)` and the
//! same table version, so nothing is sent twice and nothing is skipped among rows that existed
//! when the first run started. Views and tables without a primary key are read with Stitch's
//! plain `select cols from t` and start over (with a new version) when interrupted.

use std::io::Write;

use postgres::Client;
use serde_json::{Map, Value, json};

use super::{Limits, Outcome, RowSink, StreamPlan, bookmark_param, now_version, run_query};
use crate::error::Result;
use crate::message::MessageWriter;
use crate::query::{self, KeyColumn};
use crate::state::State;

/// Syncs one FULL_TABLE stream.
pub(super) fn sync<W: Write>(
    client: &mut Client,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
    limits: &Limits<'_>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let stream = plan.selected.stream.clone();
    let mut bookmark = plan.bookmark.clone();
    let previous_version = bookmark.get("version").and_then(Value::as_i64);
    let resume_from: Option<Vec<String>> = match bookmark.get("last_pk_fetched") {
        Some(Value::Object(last)) if !plan.order_keys.is_empty() && previous_version.is_some() => plan
            .order_keys
            .iter()
            .map(|(i, _)| {
                let column = &plan.columns[*i];
                last.get(&column.name).filter(|v| !v.is_null()).map(|v| bookmark_param(v, &column.encoder))
            })
            .collect(),
        _ => None,
    };
    if bookmark.get("xmin").is_some_and(|x| !x.is_null()) {
        log::info!("stream {id}: the state holds an xmin resume point from tap-postgres; the table is read again from the start");
    }
    let version = match (&resume_from, previous_version) {
        (Some(_), Some(v)) => v,
        _ => now_version(),
    };
    if resume_from.is_some() {
        log::info!("stream {id}: resuming an interrupted full table sync after the last primary key sent");
    }
    if resume_from.is_none() {
        // Kept while resuming, so a run that dies before its first batch resumes at the same point.
        bookmark.remove("last_pk_fetched");
    }
    bookmark.remove("xmin");
    bookmark.insert("last_replication_method".into(), json!("FULL_TABLE"));
    bookmark.insert("version".into(), json!(version));
    state.set_bookmark(&id, bookmark.clone());
    writer.write_state(&state.to_value())?;
    if previous_version.is_none() {
        writer.write_activate_version(&stream, version)?;
    }

    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let key_names: Vec<String> = plan.order_keys.iter().map(|(i, _)| plan.columns[*i].name.clone()).collect();
    let keys: Vec<KeyColumn<'_>> =
        plan.order_keys.iter().zip(&key_names).map(|((_, cast_type), name)| KeyColumn { name, cast_type }).collect();
    let sql = query::full_table(&items, &plan.selected.schema_name, &plan.selected.table_name, &keys, resume_from.is_some());
    let params = resume_from.unwrap_or_default();
    let tracked: Vec<usize> = plan.order_keys.iter().map(|(i, _)| *i).collect();
    let mut sink = RowSink::new(plan, version, tracked);
    let outcome = run_query(client, (&sql, &params, &plan.search_path), &mut plan.columns, &mut sink, writer, limits, |sink, writer| {
        if !key_names.is_empty() {
            let mut last = Map::new();
            for (t, name) in key_names.iter().enumerate() {
                if let Some(v) = sink.last_value(t) {
                    last.insert(name.clone(), v);
                }
            }
            if last.len() == key_names.len() {
                bookmark.insert("last_pk_fetched".into(), Value::Object(last));
            }
        }
        state.set_bookmark(&id, bookmark.clone());
        writer.write_state(&state.to_value())
    })?;
    if outcome == Outcome::Complete {
        bookmark.remove("last_pk_fetched");
        state.set_bookmark(&id, bookmark);
        writer.write_activate_version(&stream, version)?;
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}
