//! XMIN: change capture without replication slots. Every row version carries the id of the
//! transaction that wrote it (`xmin`); a run sends the rows whose `xmin` is not older than the
//! snapshot of the last complete run, so every row inserted or updated since arrives, with
//! nothing installed on the server and only SELECT granted.
//!
//! **First run** (and after a wraparound, below): every row, as FULL_TABLE reads it in storage
//! order, with ACTIVATE_VERSION before and after. **Later runs**: one pass over the table with
//! `age(xmin) between 0 and age(<horizon>)`, the server filtering, so an unchanged table costs a
//! scan and no rows on the wire; the version stays and no ACTIVATE_VERSION is sent (it would
//! tell the target to drop the rows this run did not send). The bookmark's `xmin_horizon` is the
//! epoch-qualified xmin of the snapshot that finished the last pass: every transaction below it
//! had ended, so every committed row version with an older `xmin` was visible to that pass, and
//! every newer one is read by the next. Rows written by transactions still running then, by
//! their subtransactions, or committed after, all have an `xmin` at or above it. The rule can
//! send a row twice (versions committed between the horizon and that snapshot's xmax), never
//! miss an insert or update. Freezing (`VACUUM FREEZE`, PostgreSQL 16's page freezing) sets
//! flag bits and keeps the raw `xmin`, which is what the `xmin` column shows, so frozen rows
//! keep their place on either side of the horizon. Rewrites (`VACUUM FULL`, `CLUSTER`) keep each
//! row's `xmin`; `TRUNCATE` and reloads write new ones. Deletes leave no row to see: they reach
//! the target only through FULL_TABLE's ACTIVATE_VERSION (or LOG_BASED).
//!
//! A pass is resumable like a storage-order FULL_TABLE ([`super::blocks`], `block_resume`).
//! Tables that cannot be read by blocks (partitioned tables, inheritance parents, servers before
//! 14) are read in one statement per run, starting over when interrupted. A horizon more than
//! 2^30 transactions old cannot be compared with 32-bit xmins: that run reads every row with a
//! new version, and says so.

use std::collections::HashMap;
use std::io::Write;

use super::blocks::{self, BlockRead, Tid};
use super::full_table::read_in_storage_order;
use super::pipeline::{self, Context, Event, Source};
use super::plan::{StreamPlan, key_search_path};
use super::reader::Opening;
use super::sink::RowSink;
use super::{Outcome, now_version};
use crate::catalog::{ReplicationMethod, SelectedStream};
use crate::connect::classify_query;
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::pg::Client;
use crate::query;
use crate::state::{Bookmark, State};
use crate::typemap::{self, Cast};

/// Syncs one XMIN stream.
pub(super) fn sync<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let stream = plan.selected.stream.clone();
    let mut bookmark = plan.bookmark.clone();
    let previous_version = bookmark.version;
    // A storage-order read takes the next horizon from its own snapshot, so the ids read with
    // the catalog serve (the wraparound check tolerates their age); a single statement's pass
    // starts from a snapshot taken now.
    let (next_xid, horizon_now) = match plan.block_reads {
        Some(_) => cx.session.transaction_ids,
        None => transaction_ids(cx)?,
    };
    let mut horizon = bookmark.xmin_horizon.filter(|_| previous_version.is_some());
    if let Some(h) = horizon
        && next_xid.checked_sub(h).is_none_or(|age| age >= blocks::MAX_RESUME_XID_AGE)
    {
        log::warn!(
            "stream {id}: the last XMIN run is more than 2^30 transactions ago (or ahead of the server), too old to compare 32-bit xmins with; every row is read again with a new version"
        );
        horizon = None;
    }
    let mut block_resume = match (plan.block_reads, bookmark.block_resume) {
        (Some(oid), Some(mark)) if previous_version.is_some() => Some((oid, mark)),
        _ => None,
    };
    if let Some((_, mark)) = block_resume
        && !blocks::resumable(&mark, plan.relfilenode, next_xid)
    {
        log::info!(
            "stream {id}: the table was rewritten or too many transactions passed since the interrupted run; this pass reads it from the start"
        );
        block_resume = None;
    }
    // A pass over every row is a new version (unless it resumes one), activated at its end.
    let full = horizon.is_none();
    let mut version = match previous_version {
        Some(v) if !full || block_resume.is_some() => v,
        _ => now_version(),
    };
    match horizon {
        Some(h) => log::info!("stream {id}: reading rows written since transaction {h}"),
        None => log::info!("stream {id}: reading every row (first XMIN run)"),
    }
    if block_resume.is_none() {
        bookmark.clear_block_resume();
    }
    bookmark.last_replication_method = Some("XMIN".to_string());
    bookmark.version = Some(version);
    state.set_bookmark(&id, &bookmark);
    writer.write_state(&state.to_value())?;
    if previous_version.is_none() {
        writer.write_activate_version(&stream, version)?;
    }

    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let (schema_name, table_name) = (plan.selected.schema_name.clone(), plan.selected.table_name.clone());
    let search_path = plan.search_path.clone();
    // The horizon the next run starts from: the snapshot xmin of the read that finishes this
    // pass (from its block marks), or, without blocks, one taken before the read began.
    let mut next_horizon = horizon_now;
    let outcome = if let Some(oid) = plan.block_reads {
        let lock = plan.lock.clone();
        let new_read = |resume| BlockRead::since(oid, (&schema_name, &table_name), lock.clone(), &items, resume, horizon);
        let resume = block_resume.map(|(_, mark)| mark.into());
        read_in_storage_order(
            cx,
            (plan, &search_path),
            writer,
            (state, &id, &mut bookmark),
            (new_read, resume),
            version,
            |event, sink, bookmark| {
                match event {
                    Event::Batch(Some(mark)) => next_horizon = mark.snapshot_xmin,
                    // A pass over every row read again is a new version; a pass over changes is not.
                    Event::StartOver if full => {
                        version = now_version();
                        bookmark.version = Some(version);
                        sink.set_version(version);
                    }
                    _ => {}
                }
            },
        )?
    } else {
        read_by_query(cx, plan, writer, (state, &id, &bookmark), horizon, version)?
    };
    if outcome == Outcome::Complete {
        bookmark.clear_block_resume();
        bookmark.xmin_horizon = Some(next_horizon);
        state.set_bookmark(&id, &bookmark);
        if full {
            writer.write_activate_version(&stream, version)?;
        }
        state.set_currently_syncing(None);
        writer.write_state(&state.to_value())?;
    }
    Ok(outcome)
}

/// Sends the opening of `stream`'s pass (its transaction, lock, storage check and filtered scan)
/// ahead with the session's catalog read ([`Opening::send_ahead`]), when it can be known without
/// the live catalog: an XMIN stream past its first run and not interrupted in a pass, of a table
/// (a materialized view is not locked), every selected column of a type read as it is
/// ([`typemap::reads_as_is`]). A run that finds nothing then costs one round trip less. The
/// plan builds its own opening from the live catalog, and the reader takes the one sent ahead
/// only when it is the same to the byte; otherwise it is dropped (its scan wasted) and rolled
/// back with the session's next request.
pub(super) fn send_ahead(client: &mut Client, stream: &SelectedStream, state: &State) {
    let Some(bookmark) = state.bookmark(&stream.tap_stream_id) else { return };
    let later_pass =
        bookmark.last_replication_method.as_deref() == Some("XMIN") && bookmark.version.is_some() && bookmark.block_resume.is_none();
    let (Some(horizon), true) = (bookmark.xmin_horizon, later_pass) else { return };
    if stream.method != ReplicationMethod::Xmin
        || stream.is_view
        || !stream.columns.iter().all(|c| stream.sql_datatypes.get(c).is_some_and(|t| typemap::reads_as_is(t)))
    {
        return;
    }
    let items: Vec<String> = stream.columns.iter().map(|c| query::select_item(c, Cast::None)).collect();
    let lock = query::lock_table(&query::qualified_name(&stream.schema_name, &stream.table_name));
    // The oid is not part of what is sent (the storage check returns it).
    let read = BlockRead::since(0, (&stream.schema_name, &stream.table_name), Some(lock), &items, None, Some(horizon));
    Opening::new(&read, &key_search_path(&HashMap::new(), &[]), Tid::block_start(0)).send_ahead(client);
}

/// Reads the pass as one query on the pipeline (a relation without blocks of its own): the rows
/// written since `horizon`, or every row; no resume point, so a lost connection reads the pass
/// again (its rows sent again).
fn read_by_query<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    writer: &mut MessageWriter<W>,
    (state, id, bookmark): (&mut State, &str, &Bookmark),
    horizon: Option<u64>,
    version: i64,
) -> Result<Outcome> {
    let items: Vec<String> = plan.columns.iter().map(|c| c.select_item.clone()).collect();
    let (schema_name, table_name) = (plan.selected.schema_name.clone(), plan.selected.table_name.clone());
    let search_path = plan.search_path.clone();
    let source = || match horizon {
        Some(h) => Source::Query {
            sql: query::xmin_query(&items, &schema_name, &table_name),
            params: vec![blocks::xid32(h)],
            lock: plan.lock.clone(),
        },
        None => Source::Query {
            sql: query::full_table(&items, &schema_name, &table_name, &[], query::KeyStart::First),
            params: Vec::new(),
            lock: plan.lock.clone(),
        },
    };
    let mut sink = RowSink::new(plan, version, Vec::new());
    pipeline::run(
        cx,
        (source(), &search_path),
        (&mut plan.columns, &mut sink),
        writer,
        // No resume point: the pass is read again (its rows sent again).
        |_| Some(source()),
        |_, writer, _| {
            state.set_bookmark(id, bookmark);
            writer.write_state(&state.to_value())
        },
    )
}

/// The next transaction id and the xmin of a snapshot taken now, both epoch-qualified.
fn transaction_ids(cx: &mut Context<'_>) -> Result<(u64, u64)> {
    let row = cx
        .session
        .client
        .query_opt("select txid_snapshot_xmax(s), txid_snapshot_xmin(s) from txid_current_snapshot() s", &[])
        .map_err(|e| classify_query(e, "reading the current transaction id"))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "reading the current transaction id: no row"))?;
    let internal = |e| Error::new(ErrorKind::Internal, "reading the current transaction id").with_source(e);
    let next: i64 = row.try_get(0).map_err(internal)?;
    let xmin: i64 = row.try_get(1).map_err(internal)?;
    Ok((next as u64, xmin as u64))
}
