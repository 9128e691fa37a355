//! LOG_BASED: change capture through a logical replication slot and pgoutput, read with the SQL
//! interface (`pg_logical_slot_peek_binary_changes`; rust-postgres has no replication protocol).
//!
//! **Plan time**, before any output ([`check_stream`], [`prepare_slot`]): PostgreSQL 14+ (for
//! pgoutput's `binary` values), `wal_level = logical`, a role with REPLICATION (or superuser),
//! the publication exists and holds the table, no published column is an array pgoutput cannot
//! send in binary; refusals name the command that fixes them. The
//! slot (`logical_slot`, default `tap_heroku_<dbname>`) is created when missing; publications
//! are never created or altered. Then, per database, the slot is advanced to the smallest `lsn`
//! (or `snapshot_lsn`) of the LOG_BASED bookmarks of the state the run was started with (what the
//! target confirmed), only forward; a bookmark behind the slot's `confirmed_flush_lsn` lost
//! changes to another reader of the slot and its stream is skipped with the way out.
//!
//! **First run** of a stream (no `lsn`): the WAL flush position is read (`snapshot_lsn`), then
//! the table is read exactly as FULL_TABLE reads it (resumable, ACTIVATE_VERSION), then
//! `snapshot_lsn` becomes the bookmark's `lsn`. A transaction whose commit record is before that
//! position but which still showed as running (committed, waiting for a synchronous standby) is
//! waited for before the read, so the read sees it: a change may be sent twice, never missed.
//!
//! **Later runs** ([`changes`]): one peek for all the database's LOG_BASED streams past their first
//! run, from the slot's position (the smallest bookmark) to the WAL flush position read at the
//! start (`upto`), rows streamed one at a time (the server spills a big result to disk; the tap
//! holds one message), in commit order; each change goes to its table's stream, so RECORDs of the
//! streams interleave. Each stream skips the transactions whose commit record starts before its
//! own bookmark (a replayed older state sends them again). Inserts and updates are RECORDs of the
//! new row; an unchanged TOASTed value (`u`) is left out of the RECORD (never a false null);
//! deletes are RECORDs of the replica identity's columns with `_sdc_deleted_at` = the commit
//! time; an update that changes the key also deletes the old key; TRUNCATE is a warning. Each
//! bookmark's `lsn` is the end of its stream's last transaction written; every STATE holds all of
//! them. A STATE follows the commit after which a stream wrote `itersize` rows since the last one,
//! and at the end every `lsn` = `upto`. The run
//! stops at the first commit after `max_run_seconds`, or at once on a signal (the transaction in
//! progress is then sent again by the next run). A lost connection (reset, failover, a
//! terminated backend) is opened again as FULL_TABLE's are ([`super::pipeline::Retries`]: 1,
//! 4, 16 s, `reconnect_attempts` failures without a transaction written in between, one WARN per
//! retry), and the peek starts again after the last transaction written: one cut short is sent
//! again (at least once, never lost). When the attempts are spent, a STATE for the transactions
//! written, then exit 69 with the resume hint.
//!
//! Values: columns FULL_TABLE reads as they are (`Cast::None`) arrive in binary and go through
//! [`crate::encode::encode_value`] with the column's encoder, as FULL_TABLE's do. Values of columns
//! FULL_TABLE casts (`::text` for ranges, xml, macaddr...; `::numeric` for money), and values
//! pgoutput sends as text (types without a binary send function) of columns that are not text,
//! are turned into FULL_TABLE's wire form by the server, on a second session opened when first
//! needed: rows wait (in order, at most [`convert::PENDING_ROWS`] rows or
//! [`convert::PENDING_BYTES`]) until the commit or a full batch, then one statement per such
//! column converts the batch's values (`select $1::text, $2::text, ...` with the values bound in
//! binary as the column's type, or `cast($n::text as <type>)` for text), so the values are
//! exactly FULL_TABLE's.
//!
//! Known gaps: the server decodes the WAL once per database per run, and once more per
//! reconnect; a partitioned table is refused (publish and
//! select its partitions). On PostgreSQL 15 the types without a binary send function (so sent as
//! text) are aclitem and contrib's seg, isn's and intarray's query_int (tested with aclitem,
//! seg, isbn and upc); an *array* of such a type has a send function (array_send) that fails
//! for its elements, so the server cannot decode a change of such a table in binary (the peek
//! would fail with "no binary output function available for type ..." on every run): a table
//! publishing such a column is refused at plan time. A domain over a domain over such an array
//! is not recognized (one level of domain is).
//!
//! This module is the method: the first snapshot, and the peeks of the slot with their reconnects
//! and the WAL positions they run between. The plan-time checks and the slot are [`setup`]'s,
//! routing the peek's messages to their streams and the STATE cadence [`decoder`]'s, one stream's
//! changes into RECORD lines [`stream`]'s, the server's conversion of values [`convert`]'s.

mod convert;
mod decoder;
mod setup;
mod stream;

pub(super) use setup::{check_stream, prepare_slot};

use std::io::Write;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_postgres::types::{PgLsn, ToSql, Type};

use self::decoder::{Decoder, Step};
use self::setup::slot_name;
use self::stream::StreamDecoder;
use super::full_table;
use super::pipeline::{Context, Retries};
use super::plan::StreamPlan;
use super::reader::ReadFailure;
use super::{Outcome, now_version};
use crate::connect::classify_query;
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::query;
use crate::state::{Bookmark, State};

/// The column deletes carry their commit time in (singer-io's name).
pub const DELETED_AT: &str = "_sdc_deleted_at";
/// How often to look whether committed transactions still show as running.
const COMMITTED_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for them before giving up.
const COMMITTED_WAIT_LIMIT: Duration = Duration::from_secs(300);

/// `X/Y`, as PostgreSQL prints an LSN (for logs and errors).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The first run of a stream (its bookmark has no `lsn`): the WAL position, then the table read
/// as FULL_TABLE reads it. Later runs are [`changes`], all streams of a database at once.
pub(super) fn snapshot<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    // An interrupted first read keeps its position: the older, the more changes sent twice.
    let snapshot_lsn = match plan.bookmark.snapshot_lsn {
        Some(lsn) => lsn,
        None => flush_lsn_after_commits(cx)?,
    };
    log::info!(
        "stream {id}: first LOG_BASED run: reading the table; its changes from WAL position {} on come through slot {}",
        lsn_text(snapshot_lsn),
        slot_name(cx.config, cx.database)
    );
    plan.bookmark.snapshot_lsn = Some(snapshot_lsn);
    full_table::sync_as(
        cx,
        plan,
        state,
        writer,
        ("LOG_BASED", move |bookmark: &mut Bookmark| {
            bookmark.clear_snapshot_lsn();
            bookmark.lsn = Some(snapshot_lsn);
        }),
    )
}

/// The WAL flush position, once every transaction committed before it is visible to new
/// snapshots: a commit whose record is written (and flushed) may still show as running for a
/// while (waiting for a synchronous standby), and a snapshot taken then would miss it while the
/// slot skips it as committed before the position.
fn flush_lsn_after_commits(cx: &mut Context<'_>) -> Result<u64> {
    let client = &mut cx.session.client;
    let row = client
        .query_opt(
            "select pg_current_wal_flush_lsn(), array(select x::text from pg_snapshot_xip(pg_current_snapshot()) x \
             where pg_xact_status(x) = 'committed')",
            &[],
        )
        .map_err(|e| classify_query(e, "reading the WAL position"))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "reading the WAL position: no row"))?;
    let internal = |e| Error::new(ErrorKind::Internal, "reading the WAL position").with_source(e);
    let lsn = u64::from(row.try_get::<_, PgLsn>(0).map_err(internal)?);
    let committed: Vec<String> = row.try_get(1).map_err(internal)?;
    let started = Instant::now();
    let mut waiting = committed;
    while !waiting.is_empty() {
        if started.elapsed() > COMMITTED_WAIT_LIMIT {
            return Err(Error::new(ErrorKind::Query, "committed transactions still show as running after 300 s")
                .with_hint("They wait for a synchronous standby (synchronous_standby_names); bring it back, then run the sync again."));
        }
        std::thread::sleep(COMMITTED_POLL_INTERVAL);
        let row = client
            .query_opt(
                "select array(select x::text from pg_snapshot_xip(pg_current_snapshot()) x where x::text = any($1))",
                &[(&waiting, Type::TEXT_ARRAY)],
            )
            .map_err(|e| classify_query(e, "waiting for committed transactions"))?
            .ok_or_else(|| Error::new(ErrorKind::Internal, "waiting for committed transactions: no row"))?;
        waiting = row.try_get(0).map_err(internal)?;
    }
    Ok(lsn)
}

/// The WAL flush position now.
fn flush_lsn(cx: &mut Context<'_>) -> Result<u64> {
    let row = cx
        .session
        .client
        .query_opt("select pg_current_wal_flush_lsn()", &[])
        .map_err(|e| classify_query(e, "reading the WAL position"))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "reading the WAL position: no row"))?;
    Ok(u64::from(row.try_get::<_, PgLsn>(0).map_err(|e| Error::new(ErrorKind::Internal, "reading the WAL position").with_source(e))?))
}

/// Later runs: the changes of `plans` (the database's LOG_BASED streams whose bookmarks hold an
/// `lsn`) since their bookmarks, up to the flush position now, in one peek of the slot.
pub(super) fn changes<W: Write>(
    cx: &mut Context<'_>,
    plans: Vec<&mut StreamPlan>,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    let slot = slot_name(cx.config, cx.database);
    let upto = flush_lsn(cx)?;
    let mut streams = Vec::with_capacity(plans.len());
    for plan in plans {
        let id = plan.selected.tap_stream_id.clone();
        let Some(lsn) = plan.bookmark.lsn else {
            return Err(Error::new(ErrorKind::Internal, format!("stream {id} reads changes without an lsn")));
        };
        let mut bookmark = plan.bookmark.clone();
        let version = bookmark.version.unwrap_or_else(now_version);
        bookmark.last_replication_method = Some("LOG_BASED".to_string());
        bookmark.version = Some(version);
        state.set_bookmark(&id, &bookmark);
        log::info!("stream {id}: changes from WAL position {} to {}", lsn_text(lsn), lsn_text(upto));
        streams.push(StreamDecoder::new(plan, bookmark, (version, lsn)));
    }
    writer.write_state(&state.to_value())?;
    let ids: Vec<&str> = streams.iter().map(|s| s.id.as_str()).collect();
    log::info!("reading the changes of {} stream(s) ({}) in one peek of slot {slot}", ids.len(), ids.join(", "));

    let mut decoder = Decoder::new(cx, streams);
    let publication = query::quote_ident(&cx.config.logical_publication);
    // Progress is the furthest-behind bookmark's lsn: a transaction written (rows of one cut
    // short are sent again, so they are none).
    let mut retries = Retries::new(cx.config.reconnect_attempts, decoder.lsn());
    let outcome = loop {
        let failure = match peek(cx, &mut decoder, (state, writer), (&slot, upto, &publication)) {
            Ok(outcome) => break outcome,
            Err(failure) => failure,
        };
        if !retries.allow(&failure, decoder.lsn()) {
            decoder.fail(state, writer);
            return Err(failure.error);
        }
        if let Err(e) = retries.reconnect(cx, &failure.error, decoder.lsn()) {
            decoder.fail(state, writer);
            return Err(e);
        }
        decoder.restart();
    };
    if outcome != Outcome::Complete {
        // Stopped early: the statement may still be running.
        cx.connector.cancel(&cx.session.client.cancel_token());
        for stream in &mut decoder.streams {
            stream.sink.finish(false);
        }
        return Ok(outcome);
    }
    // Every transaction that commits before `upto` was decoded.
    for stream in &mut decoder.streams {
        stream.lsn = stream.lsn.max(upto);
        stream.sink.finish(true);
    }
    state.set_currently_syncing(None);
    decoder.write_state(state, writer)?;
    Ok(Outcome::Complete)
}

/// One peek of the changes from the slot up to `upto`, each handed to `decoder`. A failure of
/// the decoder cancels the statement; a lost connection (or a conversion session lost) is
/// transient.
fn peek<W: Write>(
    cx: &mut Context<'_>,
    decoder: &mut Decoder<'_>,
    (state, writer): (&mut State, &mut MessageWriter<W>),
    (slot, upto, publication): (&str, u64, &str),
) -> std::result::Result<Outcome, ReadFailure> {
    const WHAT: &str = "reading changes from the slot";
    let cancel_token = cx.session.client.cancel_token();
    let sql = "select data from pg_logical_slot_peek_binary_changes($1::text::name, $2, NULL, \
               'proto_version', '1', 'publication_names', $3::text, 'binary', 'true')";
    let result = cx.session.client.run(|c| async move {
        let params: [(&(dyn ToSql + Sync), Type); 3] =
            [(&slot, Type::TEXT), (&PgLsn::from(upto), Type::PG_LSN), (&publication, Type::TEXT)];
        let rows = c.query_typed_raw(sql, params).await.map_err(|e| ReadFailure::of(e, WHAT))?;
        let mut rows = pin!(rows);
        while let Some(row) = rows.try_next().await.map_err(|e| ReadFailure::of(e, WHAT))? {
            let data: &[u8] = row.try_get(0).map_err(|e| ReadFailure {
                error: Error::new(ErrorKind::Internal, "reading a change's data").with_source(e),
                transient: false,
            })?;
            // The decoder's only connection is the conversion session: its `Connect` errors are
            // that session lost.
            match decoder.message(data, state, writer) {
                Ok(Step::Continue) => {}
                Ok(Step::Stop(outcome)) => return Ok(outcome),
                Err(error) => return Err(ReadFailure { transient: error.kind() == ErrorKind::Connect, error }),
            }
        }
        Ok(Outcome::Complete)
    });
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(failure)) => {
            // The statement may still be running.
            cx.connector.cancel(&cancel_token);
            Err(failure)
        }
        Err(e) => Err(ReadFailure::of(e, WHAT)),
    }
}

#[cfg(test)]
mod tests {
    use super::lsn_text;

    #[test]
    fn lsn_text_is_postgresqls_form() {
        assert_eq!(lsn_text(0), "0/0");
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_text(u64::MAX), "FFFFFFFF/FFFFFFFF");
    }
}
