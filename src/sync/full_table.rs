//! FULL_TABLE: every row every run, with ACTIVATE_VERSION as singer-io's tap-postgres does it.
//!
//! By default (`full_table_order: physical`) tables and materialized views are read in storage
//! order and resume at the next block ([`super::blocks`]). Otherwise (the config says
//! `primary_key`, the server predates PostgreSQL 14, a partitioned table, an inheritance
//! parent, or a role with column grants only) tables with a primary key are read `order by <pk>`
//! and the last key sent is kept in the bookmark as `last_pk_fetched`; an interrupted sync
//! resumes with `where (pk) > (last)` and the same table version, so nothing is sent twice and
//! nothing is skipped among rows that existed when the first run started; an inheritance parent,
//! whose children may repeat its keys, resumes at the last key (`>=`) instead, sending the rows
//! with that key again. Views, and tables without a primary key read that way, are read with
//! Stitch's plain `select cols from t` and start over (with a new version) when interrupted;
//! when their connection is lost inside a run they are read again from the start.

use std::io::Write;

use super::blocks::{self, BlockMark, BlockRead, Resume};
use super::bookmarks::bookmark_param;
use super::pipeline::{self, Context, Event, Reached, Source};
use super::plan::StreamPlan;
use super::sink::RowSink;
use super::{Outcome, now_version};
use crate::error::Result;
use crate::message::MessageWriter;
use crate::query::{self, KeyColumn, KeyStart};
use crate::state::{Bookmark, State};

/// Syncs one FULL_TABLE stream.
pub(super) fn sync<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    sync_as(cx, plan, state, writer, ("FULL_TABLE", |_| {}))
}

/// Reads every row as FULL_TABLE does, the bookmark saying `method` (LOG_BASED's snapshot
/// too); `finish` completes the bookmark before the STATE that ends a complete read (other
/// keys of the plan's bookmark are kept throughout).
pub(super) fn sync_as<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
    (method, finish): (&str, impl FnOnce(&mut Bookmark)),
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let stream = plan.selected.stream.clone();
    let mut bookmark = plan.bookmark.clone();
    let previous_version = bookmark.version;
    let ResumePoints { resume_from, block_reads, block_resume } = resume_points(cx, plan, &bookmark, previous_version)?;
    // tap-postgres's own resume point, which is not ours.
    if bookmark.extra.remove("xmin").is_some_and(|x| !x.is_null()) {
        log::info!("stream {id}: the state holds an xmin resume point from tap-postgres; the table is read again from the start");
    }
    let resuming = resume_from.is_some() || block_resume.is_some();
    let mut version = match previous_version {
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
        bookmark.clear_last_pk_fetched();
    }
    if block_resume.is_none() {
        bookmark.clear_block_resume();
    }
    bookmark.last_replication_method = Some(method.to_string());
    bookmark.version = Some(version);
    state.set_bookmark(&id, &bookmark);
    writer.write_state(&state.to_value())?;
    if previous_version.is_none() {
        writer.write_activate_version(&stream, version)?;
    }

    let outcome = if let Some(oid) = block_reads {
        let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
        let (schema_name, table_name) = (plan.selected.schema_name.clone(), plan.selected.table_name.clone());
        let search_path = plan.search_path.clone();
        let lock = plan.lock.clone();
        let new_read = |resume| BlockRead::new(oid, (&schema_name, &table_name), lock.clone(), &items, resume);
        let resume = block_resume.map(|(_, mark)| mark.into());
        read_in_storage_order(
            cx,
            (plan, &search_path),
            writer,
            (state, &id, &mut bookmark),
            (new_read, resume),
            version,
            |event, sink, bookmark| {
                if let Event::StartOver = event {
                    // Rewritten since the resume point: the rows sent before may be gone, so this
                    // read is a new version, which ACTIVATE_VERSION ends.
                    version = now_version();
                    bookmark.version = Some(version);
                    sink.set_version(version);
                }
            },
        )?
    } else {
        read_in_key_order(cx, plan, writer, (state, &id, &mut bookmark), resume_from, version)?
    };
    if outcome == Outcome::Complete {
        bookmark.clear_last_pk_fetched();
        bookmark.clear_block_resume();
        finish(&mut bookmark);
        state.set_bookmark(&id, &bookmark);
        writer.write_activate_version(&stream, version)?;
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}

/// Where an interrupted sync resumes: after the last primary key sent (a sync interrupted in key
/// order is finished that way, whatever the config says now), or at a block mark that still
/// holds; with the table's oid when it is read in storage order.
fn resume_points(cx: &mut Context<'_>, plan: &StreamPlan, bookmark: &Bookmark, previous_version: Option<i64>) -> Result<ResumePoints> {
    // A sync interrupted in primary key order is finished that way, whatever the config says now.
    let resume_from: Option<Vec<String>> = match &bookmark.last_pk_fetched {
        Some(last) if !plan.order_keys.is_empty() && previous_version.is_some() => plan
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
    let mut block_resume = match (block_reads, bookmark.block_resume) {
        (Some(oid), Some(mark)) if previous_version.is_some() => Some((oid, mark)),
        _ => None,
    };
    if let Some((_, mark)) = block_resume
        && !blocks::resumable(&mark, plan.relfilenode, cx.session.transaction_ids.0)
    {
        log::info!(
            "stream {}: the table was rewritten (VACUUM FULL, CLUSTER, TRUNCATE, ...) or too many transactions passed since the interrupted sync; it is read again from the start",
            plan.selected.tap_stream_id
        );
        block_resume = None;
    }
    Ok(ResumePoints { resume_from, block_reads, block_resume })
}

/// What [`resume_points`] found.
struct ResumePoints {
    /// The last primary key sent, as bookmark text, to read after.
    resume_from: Option<Vec<String>>,
    /// The table's oid when it is read in storage order.
    block_reads: Option<u32>,
    /// The oid and the block mark a storage-order read resumes at.
    block_resume: Option<(u32, BlockMark)>,
}

/// Reads `plan`'s table `order by` its primary key on the pipeline, after `resume_from` (the
/// last key sent, as bookmark text) when there is one, keeping the last key written in
/// `last_pk_fetched`; a table without order keys is read unordered, and again from the start
/// when its connection is lost.
fn read_in_key_order<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    writer: &mut MessageWriter<W>,
    (state, id, bookmark): (&mut State, &str, &mut Bookmark),
    resume_from: Option<Vec<String>>,
    version: i64,
) -> Result<Outcome> {
    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let (schema_name, table_name) = (plan.selected.schema_name.clone(), plan.selected.table_name.clone());
    let search_path = plan.search_path.clone();
    let key_names: Vec<String> = plan.order_keys.iter().map(|(i, _)| plan.columns[*i].name.clone()).collect();
    let key_casts: Vec<String> = plan.order_keys.iter().map(|(_, cast_type)| cast_type.clone()).collect();
    let keys: Vec<KeyColumn<'_>> = key_names.iter().zip(&key_casts).map(|(name, cast_type)| KeyColumn { name, cast_type }).collect();
    let repeat = plan.order_keys_repeat;
    let lock = plan.lock.clone();
    let query_from = |last: Option<Vec<String>>| {
        let start = match &last {
            None => KeyStart::First,
            Some(_) if repeat => KeyStart::AtOrAfter,
            Some(_) => KeyStart::After,
        };
        Source::Query {
            sql: query::full_table(&items, &schema_name, &table_name, &keys, start),
            params: last.unwrap_or_default(),
            lock: lock.clone(),
        }
    };
    let tracked: Vec<usize> = plan.order_keys.iter().map(|(i, _)| *i).collect();
    let encoders: Vec<_> = tracked.iter().map(|&i| plan.columns[i].encoder.clone()).collect();
    let mut sink = RowSink::new(plan, version, tracked);
    let source = query_from(resume_from.clone());
    pipeline::run(
        cx,
        (source, &search_path),
        (&mut plan.columns, &mut sink),
        writer,
        |reached| {
            let Reached::Rows(sink) = reached else { return None };
            if keys.is_empty() {
                // No resume point: read again from the start (the rows are sent again).
                return Some(query_from(None));
            }
            // After the last key written in this run, or where the run began.
            let written: Option<Vec<String>> =
                encoders.iter().enumerate().map(|(t, encoder)| sink.last_value(t).map(|v| bookmark_param(&v, encoder))).collect();
            Some(query_from(written.or_else(|| resume_from.clone())))
        },
        |sink, writer, _| {
            if !key_names.is_empty() {
                let mut last = serde_json::Map::new();
                for (t, name) in key_names.iter().enumerate() {
                    if let Some(v) = sink.last_value(t) {
                        last.insert(name.clone(), v);
                    }
                }
                if last.len() == key_names.len() {
                    bookmark.last_pk_fetched = Some(last);
                }
            }
            state.set_bookmark(id, bookmark);
            writer.write_state(&state.to_value())
        },
    )
}

/// Reads `plan`'s table in storage order on the pipeline, the first read from `resume` and any
/// read after a lost connection from where it got to (`new_read` makes each), writing a STATE
/// after every batch with the batch's mark as the bookmark's `block_resume` (dropped when the
/// read starts over on a rewritten table). `on_event` sees each event first, with the sink and
/// the bookmark, for what the method adds (a new version, XMIN's horizon). Shared by FULL_TABLE
/// and XMIN.
pub(super) fn read_in_storage_order<W: Write>(
    cx: &mut Context<'_>,
    (plan, search_path): (&mut StreamPlan, &str),
    writer: &mut MessageWriter<W>,
    (state, id, bookmark): (&mut State, &str, &mut Bookmark),
    (new_read, resume): (impl Fn(Option<Resume>) -> BlockRead, Option<Resume>),
    version: i64,
    mut on_event: impl FnMut(&Event, &mut RowSink, &mut Bookmark),
) -> Result<Outcome> {
    let mut sink = RowSink::new(plan, version, Vec::new()).skip_columns(1);
    pipeline::run(
        cx,
        (Source::Blocks(new_read(resume)), search_path),
        (&mut plan.columns, &mut sink),
        writer,
        |reached| match reached {
            Reached::Blocks(resume) => Some(Source::Blocks(new_read(Some(resume)))),
            Reached::Rows(_) => None,
        },
        |sink, writer, event| {
            on_event(&event, sink, bookmark);
            match event {
                Event::Batch(Some(mark)) => bookmark.block_resume = Some(mark),
                Event::StartOver => bookmark.clear_block_resume(),
                Event::Batch(None) => {}
            }
            state.set_bookmark(id, bookmark);
            writer.write_state(&state.to_value())
        },
    )
}
