//! LOG_BASED: change capture through a logical replication slot and pgoutput, read with the SQL
//! interface (`pg_logical_slot_peek_binary_changes`; rust-postgres has no replication protocol).
//!
//! **Plan time**, before any output ([`check_stream`], [`prepare_slot`]): PostgreSQL 14+ (for
//! pgoutput's `binary` values), `wal_level = logical`, a role with REPLICATION (or superuser),
//! the publication exists and holds the table; refusals name the command that fixes them. The
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
//! **Later runs**: one peek from the bookmark's `lsn` to the WAL flush position read at the start
//! (`upto`), rows streamed one at a time (the server spills a big result to disk; the tap holds
//! one message), in commit order. Transactions whose commit record starts before the bookmark
//! are skipped (a replayed older state sends them again). Inserts and updates are RECORDs of the
//! new row; an unchanged TOASTed value (`u`) is left out of the RECORD (never a false null);
//! deletes are RECORDs of the replica identity's columns with `_sdc_deleted_at` = the commit
//! time; an update that changes the key also deletes the old key; TRUNCATE is a warning. The
//! bookmark's `lsn` is the end of the last transaction written: a STATE follows the commit after
//! which `itersize` rows were written since the last one, and at the end `lsn` = `upto`. The run
//! stops at the first commit after `max_run_seconds`, or at once on a signal (the transaction in
//! progress is then sent again by the next run).
//!
//! Values: columns FULL_TABLE reads as they are (`Cast::None`) arrive in binary and go through
//! [`encode::encode_value`] with the column's encoder, as FULL_TABLE's do. Columns FULL_TABLE
//! casts (`::text` for ranges, xml, macaddr, composites...; `::numeric` for money) are refused at
//! plan time. A value pgoutput sends as text (a type without a binary send function) is written
//! for text columns and refused (an error, never a wrong value) for others.
//!
//! Known gaps: each LOG_BASED stream peeks (decodes the WAL) once per run; a lost connection
//! is not reconnected (the last STATE resumes); a partitioned table is refused (publish and
//! select its partitions).

use std::io::Write;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};
use tokio_postgres::types::{PgLsn, ToSql, Type};

use super::full_table;
use super::pipeline::Context;
use super::plan::{ColumnPlan, StreamPlan};
use super::sink::RowSink;
use super::{Outcome, now_version};
use crate::catalog::SelectedStream;
use crate::config::{Config, default_slot_name};
use crate::connect::classify;
use crate::discover::Relation;
use crate::encode::{self, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};
use crate::pg::Client;
use crate::pgoutput::{self, Datum, Message, OldKind};
use crate::query;
use crate::signals;
use crate::state::State;
use crate::typemap::{Cast, Encoder, OutOfRangeDates};

/// The column deletes carry their commit time in (singer-io's name).
pub const DELETED_AT: &str = "_sdc_deleted_at";
/// pgoutput's `binary` option needs PostgreSQL 14.
const MIN_SERVER_VERSION: i32 = 140_000;
/// Bytes in a MiB.
const BYTES_PER_MB: u64 = 1 << 20;
/// Messages between checks for SIGINT/SIGTERM inside a transaction.
const SIGNAL_CHECK_MESSAGES: u32 = 1024;
/// How often to look whether committed transactions still show as running.
const COMMITTED_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for them before giving up.
const COMMITTED_WAIT_LIMIT: Duration = Duration::from_secs(300);

/// The slot of `database`: the config's, or `tap_heroku_<dbname>`.
pub fn slot_name(config: &Config, database: &str) -> String {
    config.logical_slot.clone().unwrap_or_else(|| default_slot_name(database))
}

/// A bookmark's LSN field, when present and an integer.
fn bookmark_lsn(bookmark: &Map<String, Value>, key: &str) -> Option<u64> {
    bookmark.get(key).and_then(Value::as_u64)
}

/// The position the slot must keep for this bookmark: its `lsn`, or while the first read is
/// under way its `snapshot_lsn`.
fn needed_lsn(bookmark: &Map<String, Value>) -> Option<u64> {
    bookmark_lsn(bookmark, "lsn").or_else(|| bookmark_lsn(bookmark, "snapshot_lsn"))
}

/// `X/Y`, as PostgreSQL prints an LSN (for logs and errors).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The plan-time checks of one LOG_BASED stream, in one round trip; a server or role that is not
/// set up is a `Config` error naming the command that fixes it.
///
/// # Errors
/// As above; a column read with a cast or a relation other than a table is a `Catalog` error, an
/// `lsn` that is not an integer a `State` error.
pub fn check_stream(
    client: &mut Client,
    (selected, relation): (&SelectedStream, &Relation),
    columns: &[ColumnPlan],
    bookmark: &Map<String, Value>,
    config: &Config,
) -> Result<()> {
    let table = query::qualified_name(&selected.schema_name, &selected.table_name);
    if relation.relkind != b'r' {
        let what = match relation.relkind {
            b'p' => "a partitioned table, whose changes are decoded per partition",
            b'v' => "a view, which has no changes of its own in the WAL",
            _ => "a materialized view, which publications cannot hold",
        };
        return Err(Error::new(ErrorKind::Catalog, format!("LOG_BASED reads the changes of tables, and {table} is {what}"))
            .with_hint("Use FULL_TABLE or XMIN for it (for a partitioned table: add its partitions to the publication and select them)."));
    }
    if let Some(column) = columns.iter().find(|c| c.cast != Cast::None) {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!("column {} is read through a cast by FULL_TABLE, which LOG_BASED cannot do yet", query::quote_ident(&column.name)),
        )
        .with_hint("Deselect the column, or use XMIN or FULL_TABLE for this stream."));
    }
    for key in ["lsn", "snapshot_lsn"] {
        if bookmark.get(key).is_some_and(|v| !v.is_null() && !v.is_u64()) {
            return Err(Error::new(ErrorKind::State, format!("the state's bookmark {key} is not a non-negative integer"))
                .with_hint("Remove this stream's bookmark from the state file (it will start with a new snapshot)."));
        }
    }
    let sql = "select current_setting('server_version_num')::int, current_setting('wal_level'), \
               coalesce((select rolreplication or rolsuper from pg_roles where rolname = current_user), false), \
               (select puballtables from pg_publication where pubname = $1), \
               exists (select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3), \
               current_user::text";
    let publication = &config.logical_publication;
    let params: [(&(dyn ToSql + Sync), Type); 3] =
        [(publication, Type::TEXT), (&selected.schema_name, Type::TEXT), (&selected.table_name, Type::TEXT)];
    let row = client
        .query_opt(sql, &params)
        .map_err(|e| classify(e, "checking the server's logical replication settings", config.sslmode))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "checking logical replication: no row"))?;
    let internal = |e| Error::new(ErrorKind::Internal, "reading the logical replication settings").with_source(e);
    let version: i32 = row.try_get(0).map_err(internal)?;
    let wal_level: String = row.try_get(1).map_err(internal)?;
    let replication: bool = row.try_get(2).map_err(internal)?;
    let all_tables: Option<bool> = row.try_get(3).map_err(internal)?;
    let in_publication: bool = row.try_get(4).map_err(internal)?;
    let user: String = row.try_get(5).map_err(internal)?;
    if version < MIN_SERVER_VERSION {
        return Err(Error::new(ErrorKind::Config, format!("LOG_BASED needs PostgreSQL 14 or later, and the server is version {version}"))
            .with_hint("Use XMIN (every insert and update, no slot needed) or FULL_TABLE on this server."));
    }
    if wal_level != "logical" {
        return Err(Error::new(ErrorKind::Config, format!("the server's wal_level is {wal_level}, and LOG_BASED needs logical")).with_hint(
            "As a superuser: ALTER SYSTEM SET wal_level = logical; then restart the server (RDS, Cloud SQL: turn on the instance's logical replication flag).",
        ));
    }
    let role = query::quote_ident(&user);
    if !replication {
        return Err(Error::new(
            ErrorKind::Config,
            format!("role {role} lacks the REPLICATION attribute that reading a replication slot needs"),
        )
        .with_hint(format!("As a superuser: ALTER ROLE {role} REPLICATION; (RDS: GRANT rds_replication TO {role};).")));
    }
    let quoted_publication = query::quote_ident(publication);
    match all_tables {
        None => Err(Error::new(ErrorKind::Config, format!("publication {quoted_publication} does not exist")).with_hint(format!(
            "As the table's owner or a superuser: CREATE PUBLICATION {quoted_publication} FOR TABLE {table}; (or set logical_publication to an existing one)."
        ))),
        Some(_) if !in_publication => {
            Err(Error::new(ErrorKind::Config, format!("table {table} is not in publication {quoted_publication}"))
                .with_hint(format!("As the table's owner or a superuser: ALTER PUBLICATION {quoted_publication} ADD TABLE {table};")))
        }
        Some(_) => Ok(()),
    }
}

/// Before any output, for the LOG_BASED streams of one database: creates the slot when missing,
/// advances it to the smallest position the bookmarks the run started with still need (only
/// forward), and warns when it holds back much WAL. Returns the streams (indices into `plans`)
/// whose bookmark is behind the slot, with their errors.
///
/// # Errors
/// A slot of that name that is not a pgoutput slot of this database; failures to create or
/// advance it.
pub fn prepare_slot(client: &mut Client, config: &Config, database: &str, plans: &[&StreamPlan]) -> Result<Vec<(usize, Error)>> {
    let slot = slot_name(config, database);
    let fail = |what: &'static str| move |e| classify(e, what, config.sslmode);
    let internal = |e| Error::new(ErrorKind::Internal, "reading pg_replication_slots").with_source(e);
    let existing = client
        .query_opt(
            "select database::text, plugin::text, slot_type, confirmed_flush_lsn from pg_replication_slots where slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .map_err(fail("reading pg_replication_slots"))?;
    let mut confirmed: u64 = match existing {
        None => {
            log::info!("creating logical replication slot {slot} (pgoutput) in database {database}");
            let row = client
                .query_opt("select lsn from pg_create_logical_replication_slot($1, 'pgoutput')", &[(&slot, Type::TEXT)])
                .map_err(|e| {
                    classify(e, "creating the replication slot", config.sslmode).with_hint(
                        "A slot needs a free place under max_replication_slots and a role with REPLICATION; drop unused slots with SELECT pg_drop_replication_slot('name');",
                    )
                })?
                .ok_or_else(|| Error::new(ErrorKind::Internal, "creating the replication slot: no row"))?;
            u64::from(row.try_get::<_, PgLsn>(0).map_err(internal)?)
        }
        Some(row) => {
            let slot_database: Option<String> = row.try_get(0).map_err(internal)?;
            let plugin: Option<String> = row.try_get(1).map_err(internal)?;
            let slot_type: String = row.try_get(2).map_err(internal)?;
            if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") || slot_database.as_deref() != Some(database) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("replication slot {slot} exists, but is not a pgoutput slot of database {database}"),
                )
                .with_hint("Set logical_slot to another name (each database needs its own slot), or drop that slot if it is unused."));
            }
            row.try_get::<_, Option<PgLsn>>(3).map_err(internal)?.map_or(0, u64::from)
        }
    };
    let needed = plans.iter().filter_map(|p| needed_lsn(&p.bookmark)).min();
    if let Some(target) = needed
        && target > confirmed
    {
        let row = client
            .query_opt(
                "select end_lsn from pg_replication_slot_advance($1, $2)",
                &[(&slot, Type::TEXT), (&PgLsn::from(target), Type::PG_LSN)],
            )
            .map_err(fail("advancing the replication slot"))?
            .ok_or_else(|| Error::new(ErrorKind::Internal, "advancing the replication slot: no row"))?;
        let end = u64::from(row.try_get::<_, PgLsn>(0).map_err(internal)?);
        log::info!("advanced replication slot {slot} from {} to {} (the oldest bookmark of the state)", lsn_text(confirmed), lsn_text(end));
        confirmed = confirmed.max(end);
    }
    let mut behind = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        if let Some(lsn) = needed_lsn(&plan.bookmark)
            && lsn < confirmed
        {
            let e = Error::new(
                ErrorKind::State,
                format!(
                    "the bookmark's lsn {} is behind replication slot {slot}, which was confirmed up to {}: the changes in between were consumed by another reader of the slot",
                    lsn_text(lsn),
                    lsn_text(confirmed)
                ),
            )
            .with_hint("Remove this stream's bookmark from the state for a new snapshot, and give each tap its own logical_slot.");
            behind.push((i, e));
        }
    }
    let retained = client
        .query_opt(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint from pg_replication_slots where slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .map_err(fail("reading the WAL the slot retains"))?
        .and_then(|row| row.try_get::<_, Option<i64>>(0).ok().flatten())
        .unwrap_or(0);
    let retained_mb = retained.max(0) as u64 / BYTES_PER_MB;
    if retained_mb > config.logical_max_retained_wal_mb {
        log::warn!(
            "replication slot {slot} holds back {retained_mb} MiB of WAL on the server (more than logical_max_retained_wal_mb, {}); it advances only as far as the state a run is given: run the tap more often with the latest state, or drop the slot of a retired tap with SELECT pg_drop_replication_slot('{slot}');",
            config.logical_max_retained_wal_mb
        );
    }
    Ok(behind)
}

/// Syncs one LOG_BASED stream: its first snapshot, or its changes since the bookmark.
pub(super) fn sync<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    match bookmark_lsn(&plan.bookmark, "lsn") {
        None => snapshot(cx, plan, state, writer),
        Some(lsn) => changes(cx, plan, state, writer, lsn),
    }
}

/// The first run: the WAL position, then the table read as FULL_TABLE reads it.
fn snapshot<W: Write>(cx: &mut Context<'_>, plan: &mut StreamPlan, state: &mut State, writer: &mut MessageWriter<W>) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    // An interrupted first read keeps its position: the older, the more changes sent twice.
    let snapshot_lsn = match bookmark_lsn(&plan.bookmark, "snapshot_lsn") {
        Some(lsn) => lsn,
        None => flush_lsn_after_commits(cx)?,
    };
    log::info!(
        "stream {id}: first LOG_BASED run: reading the table; its changes from WAL position {} on come through slot {}",
        lsn_text(snapshot_lsn),
        slot_name(cx.config, cx.database)
    );
    plan.bookmark.insert("snapshot_lsn".into(), json!(snapshot_lsn));
    full_table::sync_as(
        cx,
        plan,
        state,
        writer,
        ("LOG_BASED", move |bookmark: &mut Map<String, Value>| {
            bookmark.remove("snapshot_lsn");
            bookmark.insert("lsn".into(), json!(snapshot_lsn));
        }),
    )
}

/// The WAL flush position, once every transaction committed before it is visible to new
/// snapshots: a commit whose record is written (and flushed) may still show as running for a
/// while (waiting for a synchronous standby), and a snapshot taken then would miss it while the
/// slot skips it as committed before the position.
fn flush_lsn_after_commits(cx: &mut Context<'_>) -> Result<u64> {
    let sslmode = cx.config.sslmode;
    let client = &mut cx.session.client;
    let row = client
        .query_opt(
            "select pg_current_wal_flush_lsn(), array(select x::text from pg_snapshot_xip(pg_current_snapshot()) x \
             where pg_xact_status(x) = 'committed')",
            &[],
        )
        .map_err(|e| classify(e, "reading the WAL position", sslmode))?
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
            .map_err(|e| classify(e, "waiting for committed transactions", sslmode))?
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
        .map_err(|e| classify(e, "reading the WAL position", cx.config.sslmode))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "reading the WAL position: no row"))?;
    Ok(u64::from(row.try_get::<_, PgLsn>(0).map_err(|e| Error::new(ErrorKind::Internal, "reading the WAL position").with_source(e))?))
}

/// What the decoder says after a message.
enum Step {
    /// Read on.
    Continue,
    /// Stop here (the STATE is written).
    Stop(Outcome),
}

/// Later runs: the changes since the bookmark's `lsn`, up to the flush position now.
fn changes<W: Write>(
    cx: &mut Context<'_>,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
    lsn: u64,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    let slot = slot_name(cx.config, cx.database);
    let upto = flush_lsn(cx)?;
    let mut bookmark = plan.bookmark.clone();
    let version = bookmark.get("version").and_then(Value::as_i64).unwrap_or_else(now_version);
    bookmark.insert("last_replication_method".into(), json!("LOG_BASED"));
    bookmark.insert("version".into(), json!(version));
    state.set_bookmark(&id, bookmark.clone());
    writer.write_state(&state.to_value())?;
    log::info!("stream {id}: reading changes from WAL position {} to {} through slot {slot}", lsn_text(lsn), lsn_text(upto));

    let sink = RowSink::new(plan, version, Vec::new());
    let time_extracted = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let mut decoder = Decoder {
        relid: plan.relid,
        stream: plan.selected.stream.clone(),
        envelope: RecordEnvelope::new(&plan.selected.stream, version, &time_extracted),
        columns: &mut plan.columns,
        relation: None,
        skip: false,
        commit_time: 0,
        start_lsn: lsn,
        lsn,
        rows_since_state: 0,
        itersize: u64::from(cx.config.itersize),
        deadline: cx.deadline,
        messages: 0,
        sink,
        id: id.clone(),
        bookmark,
        truncated: false,
    };
    let sslmode = cx.config.sslmode;
    let cancel_token = cx.session.client.cancel_token();
    let publication = query::quote_ident(&cx.config.logical_publication);
    let sql = "select data from pg_logical_slot_peek_binary_changes($1::text::name, $2, NULL, \
               'proto_version', '1', 'publication_names', $3::text, 'binary', 'true')";
    let result = cx.session.client.run(|c| {
        let decoder = &mut decoder;
        let state = &mut *state;
        let writer = &mut *writer;
        async move {
            let params: [(&(dyn ToSql + Sync), Type); 3] =
                [(&slot, Type::TEXT), (&PgLsn::from(upto), Type::PG_LSN), (&publication, Type::TEXT)];
            let rows = c.query_typed_raw(sql, params).await.map_err(|e| classify(e, "reading changes from the slot", sslmode))?;
            let mut rows = pin!(rows);
            while let Some(row) = rows.try_next().await.map_err(|e| classify(e, "reading changes from the slot", sslmode))? {
                let data: &[u8] = row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading a change's data").with_source(e))?;
                if let Step::Stop(outcome) = decoder.message(data, state, writer)? {
                    return Ok(outcome);
                }
            }
            Ok(Outcome::Complete)
        }
    });
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            cx.connector.cancel(&cancel_token);
            decoder.fail(state, writer);
            return Err(e);
        }
        Err(e) => {
            decoder.fail(state, writer);
            return Err(classify(e, "reading changes from the slot", sslmode));
        }
    };
    if outcome != Outcome::Complete {
        // Stopped early: the statement may still be running.
        cx.connector.cancel(&cancel_token);
        decoder.sink.finish(false);
        return Ok(outcome);
    }
    // Every transaction that commits before `upto` was decoded.
    decoder.lsn = decoder.lsn.max(upto);
    decoder.sink.finish(true);
    decoder.bookmark.insert("lsn".into(), json!(decoder.lsn));
    state.set_bookmark(&id, decoder.bookmark.clone());
    state.set_currently_syncing(None);
    writer.write_state(&state.to_value())?;
    Ok(Outcome::Complete)
}

/// The table as the last Relation message described it.
struct RelationMap {
    /// For each column of the relation, its index in the plan's columns (`None`: not selected).
    columns: Vec<Option<usize>>,
    /// For each column of the relation, whether it is in the replica identity.
    key: Vec<bool>,
}

/// One stream's decoding state: the messages of one peek in order.
struct Decoder<'p> {
    /// The table's oid.
    relid: u32,
    /// Destination stream name (for warnings).
    stream: String,
    /// This stream's RECORD envelope.
    envelope: RecordEnvelope,
    /// The plan's columns.
    columns: &'p mut [ColumnPlan],
    /// The table's columns, once its Relation message arrived.
    relation: Option<RelationMap>,
    /// The transaction under way was written by an earlier run.
    skip: bool,
    /// The commit time of the transaction under way (microseconds since 2000-01-01).
    commit_time: i64,
    /// The bookmark's `lsn` when the run began: transactions whose commit starts before it are
    /// skipped.
    start_lsn: u64,
    /// The end of the last transaction written (the bookmark's `lsn`).
    lsn: u64,
    /// Rows written since the last STATE.
    rows_since_state: u64,
    /// Rows between STATEs.
    itersize: u64,
    /// `max_run_seconds`.
    deadline: Option<Instant>,
    /// Messages since the last signal check.
    messages: u32,
    /// Counts rows and logs progress and METRIC lines.
    sink: RowSink,
    /// tap_stream_id.
    id: String,
    /// The stream's bookmark.
    bookmark: Map<String, Value>,
    /// A TRUNCATE of the table was warned about in this run.
    truncated: bool,
}

impl Decoder<'_> {
    /// Handles one pgoutput message.
    fn message<W: Write>(&mut self, data: &[u8], state: &mut State, writer: &mut MessageWriter<W>) -> Result<Step> {
        let message = pgoutput::parse(data).map_err(|e| {
            Error::new(ErrorKind::Query, "decoding a pgoutput message")
                .with_source(e)
                .with_hint("Please report this with the server's version.")
        })?;
        self.messages += 1;
        if self.messages >= SIGNAL_CHECK_MESSAGES {
            self.messages = 0;
            if let Some(signum) = signals::received() {
                // The transaction under way is sent again by the next run.
                self.write_state(state, writer)?;
                return Ok(Step::Stop(Outcome::Signalled(signum)));
            }
            self.sink.report(false);
        }
        match message {
            Message::Begin { final_lsn, commit_time, .. } => {
                self.skip = final_lsn < self.start_lsn;
                self.commit_time = commit_time;
            }
            Message::Commit { end_lsn, .. } => {
                if !self.skip {
                    self.lsn = self.lsn.max(end_lsn);
                }
                if self.rows_since_state >= self.itersize {
                    self.write_state(state, writer)?;
                }
                // Only after progress: a run always gets at least one transaction further.
                if !self.skip && self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.write_state(state, writer)?;
                    return Ok(Step::Stop(Outcome::OutOfTime));
                }
            }
            Message::Relation(relation) if relation.relid == self.relid => self.relation = Some(self.map_relation(&relation)?),
            Message::Insert { relid, new } if relid == self.relid && !self.skip => self.write_row(&new, None, writer)?,
            Message::Update { relid, old, new } if relid == self.relid && !self.skip => {
                // A changed key deletes the row under the old key.
                if let Some((OldKind::Key, old)) = old {
                    self.write_row(&old, Some(OldKind::Key), writer)?;
                }
                self.write_row(&new, None, writer)?;
            }
            Message::Delete { relid, old_kind, old } if relid == self.relid && !self.skip => {
                self.write_row(&old, Some(old_kind), writer)?
            }
            Message::Truncate { relids, .. } if relids.contains(&self.relid) && !self.skip && !self.truncated => {
                self.truncated = true;
                log::warn!(
                    "stream {}: the table was truncated; the rows TRUNCATE deleted are not sent as deletes (a FULL_TABLE run, or removing the stream's bookmark for a new snapshot, brings the target in line)",
                    self.stream
                );
            }
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// The mapping of a Relation message's columns to the plan's, checking their types.
    fn map_relation(&self, relation: &pgoutput::Relation) -> Result<RelationMap> {
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let planned = self.columns.iter().position(|c| c.name == column.name);
            if let Some(i) = planned
                && self.columns[i].typid != column.type_oid
            {
                return Err(Error::new(
                    ErrorKind::Query,
                    format!("column {} changed type since the run was planned", query::quote_ident(&column.name)),
                )
                .with_hint("Run the sync again: it plans with the column's new type (and --discover, for the catalog to follow)."));
            }
            columns.push(planned);
        }
        Ok(RelationMap { columns, key: relation.columns.iter().map(|c| c.is_key).collect() })
    }

    /// Writes one RECORD: the new row, or (with `old`) a delete with the old key or row.
    fn write_row<W: Write>(&mut self, tuple: &[Datum<'_>], old: Option<OldKind>, writer: &mut MessageWriter<W>) -> Result<()> {
        let line = writer.line_buffer();
        let start = line.len();
        if let Err(e) = self.encode_row(tuple, old, line) {
            line.truncate(start);
            return Err(e);
        }
        writer.end_line()?;
        self.sink.row_count += 1;
        self.rows_since_state += 1;
        Ok(())
    }

    /// Appends the RECORD line of `tuple` to `line`.
    fn encode_row(&mut self, tuple: &[Datum<'_>], old: Option<OldKind>, line: &mut Vec<u8>) -> Result<()> {
        let Some(relation) = &self.relation else {
            return Err(Error::new(ErrorKind::Query, "a change of the table came before its Relation message")
                .with_hint("Please report this with the server's version."));
        };
        if tuple.len() != relation.columns.len() {
            return Err(Error::new(
                ErrorKind::Query,
                format!("a change has {} columns and the table's Relation message {}", tuple.len(), relation.columns.len()),
            )
            .with_hint("Please report this with the server's version."));
        }
        line.extend_from_slice(&self.envelope.prefix);
        let mut first = true;
        for (i, datum) in tuple.iter().enumerate() {
            let Some(c) = relation.columns[i] else { continue };
            // A key tuple holds the identity's columns; its other columns are not values.
            if old == Some(OldKind::Key) && !relation.key[i] {
                continue;
            }
            let column = &mut self.columns[c];
            let bytes = match datum {
                Datum::UnchangedToast => continue,
                Datum::Null => None,
                Datum::Binary(bytes) => Some(bytes),
                Datum::Text(text) => {
                    if column.encoder != Encoder::Text {
                        return Err(Error::new(
                            ErrorKind::Encode,
                            format!(
                                "column {} arrived in text form, which tap-heroku cannot encode for its type",
                                query::quote_ident(&column.name)
                            ),
                        )
                        .with_hint("Deselect the column, or use XMIN or FULL_TABLE for this stream."));
                    }
                    Some(text)
                }
            };
            if !first {
                line.push(b',');
            }
            first = false;
            line.extend_from_slice(&column.key);
            match bytes {
                None => line.extend_from_slice(b"null"),
                Some(bytes) => {
                    let mut notes = 0;
                    encode::encode_value(&column.encoder, bytes, line, &mut notes).map_err(|e| {
                        Error::new(ErrorKind::Encode, format!("encoding column {} ({:?})", column.name, column.encoder))
                            .with_source(e)
                            .with_hint("This value could not be encoded faithfully; please report it, or deselect the column.")
                    })?;
                    column.notes |= notes;
                }
            }
        }
        if !first {
            line.push(b',');
        }
        write_json_str(line, DELETED_AT);
        line.push(b':');
        if old.is_some() {
            let mut notes = 0;
            encode::encode_value(&Encoder::TimestampTz(OutOfRangeDates::Clamp), &self.commit_time.to_be_bytes(), line, &mut notes)
                .map_err(|e| Error::new(ErrorKind::Internal, "encoding a commit time").with_source(e))?;
        } else {
            line.extend_from_slice(b"null");
        }
        line.extend_from_slice(&self.envelope.suffix);
        Ok(())
    }

    /// Writes a STATE with the bookmark at the last transaction written.
    fn write_state<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) -> Result<()> {
        self.bookmark.insert("lsn".into(), json!(self.lsn));
        state.set_bookmark(&self.id, self.bookmark.clone());
        writer.write_state(&state.to_value())?;
        self.rows_since_state = 0;
        self.sink.stated_row_count = self.sink.row_count;
        Ok(())
    }

    /// After a failure: a STATE for the transactions written, when it says more than the last.
    fn fail<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) {
        if bookmark_lsn(&self.bookmark, "lsn") != Some(self.lsn)
            && let Err(e) = self.write_state(state, writer)
        {
            log::warn!("could not write a STATE after the failure: {}", e.chain());
        }
        self.sink.finish(false);
    }
}
