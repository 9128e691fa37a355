//! FULL_TABLE: every row every run, with ACTIVATE_VERSION as singer-io's tap-postgres does it.
//!
//! By default (`full_table_order: physical`) tables and materialized views are read in storage
//! order in ranges of blocks and resume at the next block ([`super::physical`]). Otherwise (the
//! config says `primary_key`, the server predates PostgreSQL 14, or a partitioned table) tables
//! with a primary key are read `order by <pk>` and the last key sent is kept in the bookmark as
//! `last_pk_fetched`; an interrupted sync resumes with `where (pk) > (last)` and the same table
//! version, so nothing is sent twice and nothing is skipped among rows that existed when the
//! first run started; an inheritance parent, whose children may repeat its keys, resumes at the
//! last key (`>=`) instead, sending the rows with that key again. Views, and tables without a
//! primary key read that way, are read with
//! Stitch's plain `select cols from t` and start over (with a new version) when interrupted.

use std::io::Write;

use postgres::Client;
use serde_json::{Map, Value, json};

use super::physical::{self, BlockMark, BlockRead};
use super::{Limits, Outcome, RowSink, Source, StreamPlan, bookmark_param, now_version, run_query};
use crate::error::Result;
use crate::message::MessageWriter;
use crate::query::{self, KeyColumn, KeyStart};
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
    // A sync interrupted in primary key order is finished that way, whatever the config says now.
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
    let block_reads = plan.block_reads.filter(|_| resume_from.is_none());
    let mut block_resume = match (block_reads, bookmark.get("block_resume").and_then(BlockMark::from_value)) {
        (Some((oid, _)), Some(mark)) if previous_version.is_some() => Some((oid, mark)),
        _ => None,
    };
    if let Some((oid, mark)) = block_resume
        && !physical::resumable(client, oid, &mark)?
    {
        log::info!(
            "stream {id}: the table was rewritten (VACUUM FULL, CLUSTER, TRUNCATE, ...) or too many transactions passed since the interrupted sync; it is read again from the start"
        );
        block_resume = None;
    }
    if bookmark.get("xmin").is_some_and(|x| !x.is_null()) {
        log::info!("stream {id}: the state holds an xmin resume point from tap-postgres; the table is read again from the start");
    }
    let resuming = resume_from.is_some() || block_resume.is_some();
    let version = match previous_version {
        Some(v) if resuming => v,
        _ => now_version(),
    };
    if resume_from.is_some() {
        log::info!("stream {id}: resuming an interrupted full table sync after the last primary key sent");
    }
    if let Some((_, mark)) = block_resume {
        log::info!(
            "stream {id}: resuming an interrupted full table sync at block {}, after the rows changed in earlier blocks since it began",
            mark.next_block
        );
    }
    // Resume points are kept while resuming, so a run that dies before its first batch resumes
    // at the same point.
    if resume_from.is_none() {
        bookmark.remove("last_pk_fetched");
    }
    if block_resume.is_none() {
        bookmark.remove("block_resume");
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
    let (schema_name, table_name) = (&plan.selected.schema_name, &plan.selected.table_name);
    let outcome = if let Some((oid, lockable)) = block_reads {
        let range_sql = query::full_table_blocks(&items, schema_name, table_name);
        let catch_up_sql = query::full_table_catch_up(&items, schema_name, table_name);
        let table = query::qualified_name(schema_name, table_name);
        let read = BlockRead {
            stream_id: &id,
            oid,
            table: &table,
            lockable,
            range_sql: &range_sql,
            catch_up_sql: &catch_up_sql,
            resume: block_resume.map(|(_, mark)| mark),
            itersize: limits.config.itersize,
        };
        let mut sink = RowSink::new(plan, version, Vec::new());
        run_query(client, (Source::Blocks(read), &plan.search_path), &mut plan.columns, &mut sink, writer, limits, |_, writer, mark| {
            if let Some(mark) = mark {
                bookmark.insert("block_resume".into(), mark.to_value());
            }
            state.set_bookmark(&id, bookmark.clone());
            writer.write_state(&state.to_value())
        })?
    } else {
        let key_names: Vec<String> = plan.order_keys.iter().map(|(i, _)| plan.columns[*i].name.clone()).collect();
        let keys: Vec<KeyColumn<'_>> =
            plan.order_keys.iter().zip(&key_names).map(|((_, cast_type), name)| KeyColumn { name, cast_type }).collect();
        let start = match (&resume_from, plan.order_keys_repeat) {
            (None, _) => KeyStart::First,
            (Some(_), false) => KeyStart::After,
            (Some(_), true) => KeyStart::AtOrAfter,
        };
        let sql = query::full_table(&items, schema_name, table_name, &keys, start);
        let params = resume_from.unwrap_or_default();
        let tracked: Vec<usize> = plan.order_keys.iter().map(|(i, _)| *i).collect();
        let mut sink = RowSink::new(plan, version, tracked);
        let source = Source::Query { sql: &sql, params: &params };
        run_query(client, (source, &plan.search_path), &mut plan.columns, &mut sink, writer, limits, |sink, writer, _| {
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
        })?
    };
    if outcome == Outcome::Complete {
        bookmark.remove("last_pk_fetched");
        bookmark.remove("block_resume");
        state.set_bookmark(&id, bookmark);
        writer.write_activate_version(&stream, version)?;
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}
