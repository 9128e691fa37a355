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
//! progress is then sent again by the next run). A lost connection (reset, failover, a
//! terminated backend) is opened again as FULL_TABLE's are ([`super::pipeline`]'s reconnect: 1,
//! 4, 16 s, `reconnect_attempts` failures without a transaction written in between, one WARN per
//! retry), and the peek starts again after the last transaction written: one cut short is sent
//! again (at least once, never lost). When the attempts are spent, a STATE for the transactions
//! written, then exit 69 with the resume hint.
//!
//! Values: columns FULL_TABLE reads as they are (`Cast::None`) arrive in binary and go through
//! [`encode::encode_value`] with the column's encoder, as FULL_TABLE's do. Values of columns
//! FULL_TABLE casts (`::text` for ranges, xml, macaddr...; `::numeric` for money), and values
//! pgoutput sends as text (types without a binary send function) of columns that are not text,
//! are turned into FULL_TABLE's wire form by the server, on a second session opened when first
//! needed: rows wait (in order, at most [`PENDING_ROWS`] rows or [`PENDING_BYTES`]) until the
//! commit or a full batch, then one statement per such column converts the batch's values
//! (`select $1::text, $2::text, ...` with the values bound in binary as the column's type, or
//! `cast($n::text as <type>)` for text), so the values are exactly FULL_TABLE's.
//!
//! Known gaps: each LOG_BASED stream peeks (decodes the WAL) once per run, and once more per
//! reconnect; a partitioned table is refused (publish and
//! select its partitions). On PostgreSQL 15 the types without a binary send function (so sent as
//! text) are aclitem and contrib's seg, isn's and intarray's query_int (tested with aclitem,
//! seg, isbn and upc); an *array* of such a type has a send function (array_send) that fails
//! for its elements, so the server cannot decode a change of such a table in binary (the peek
//! would fail with "no binary output function available for type ..." on every run): a table
//! publishing such a column is refused at plan time. A domain over a domain over such an array
//! is not recognized (one level of domain is).

use std::io::Write;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_postgres::types::{PgLsn, ToSql, Type};

use super::full_table;
use super::pipeline::{Context, reconnect};
use super::plan::{ColumnPlan, StreamPlan};
use super::reader::ReadFailure;
use super::sink::{Raw, RowSink};
use super::{Outcome, now_version};
use crate::catalog::SelectedStream;
use crate::config::{Config, default_slot_name};
use crate::connect::classify_query;
use crate::discover::Relation;
use crate::encode::{self, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};
use crate::pg::Client;
use crate::pgoutput::{self, Datum, Message, OldKind};
use crate::query;
use crate::signals;
use crate::state::{Bookmark, State};
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
/// Rows that may wait for their values to be converted by the server.
const PENDING_ROWS: usize = 1024;
/// Bytes of values that may wait for the server's conversion.
const PENDING_BYTES: usize = 16 << 20;

/// The slot of `database`: the config's, or `tap_heroku_<dbname>`.
pub fn slot_name(config: &Config, database: &str) -> String {
    config.logical_slot.clone().unwrap_or_else(|| default_slot_name(database))
}

/// The position the slot must keep for this bookmark: its `lsn`, or while the first read is
/// under way its `snapshot_lsn`.
fn needed_lsn(bookmark: &Bookmark) -> Option<u64> {
    bookmark.lsn.or(bookmark.snapshot_lsn)
}

/// `X/Y`, as PostgreSQL prints an LSN (for logs and errors).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The plan-time checks of one LOG_BASED stream, in one round trip; a server or role that is not
/// set up is a `Config` error naming the command that fixes it.
///
/// # Errors
/// As above; a relation other than a table is a `Catalog` error, an `lsn` that is not an
/// integer a `State` error.
pub fn check_stream(
    client: &mut Client,
    (selected, relation): (&SelectedStream, &Relation),
    bookmark: &Bookmark,
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
    for key in ["lsn", "snapshot_lsn"] {
        if bookmark.misfit(key) {
            return Err(Error::new(ErrorKind::State, format!("the state's bookmark {key} is not a non-negative integer"))
                .with_hint("Remove this stream's bookmark from the state file (it will start with a new snapshot)."));
        }
    }
    let sql = "select current_setting('server_version_num')::int, current_setting('wal_level'), \
               coalesce((select rolreplication or rolsuper from pg_roles where rolname = current_user), false), \
               (select puballtables from pg_publication where pubname = $1), \
               exists (select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3), \
               current_user::text, \
               (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) \
                from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace \
                join pg_type t on t.oid = a.atttypid \
                join pg_type b on b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end \
                join pg_type e on e.oid = b.typelem and b.typsubscript = 'array_subscript_handler'::regproc \
                where n.nspname = $2 and c.relname = $3 and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' \
                and e.typsend = 0 \
                and not exists (select 1 from pg_publication_tables pt where pt.pubname = $1 and pt.schemaname = $2 \
                    and pt.tablename = $3 and jsonb_typeof(to_jsonb(pt) -> 'attnames') = 'array' \
                    and not (to_jsonb(pt) -> 'attnames') ? a.attname::text)), \
               (select array(select jsonb_array_elements_text(to_jsonb(pt) -> 'attnames')) from pg_publication_tables pt \
                where pt.pubname = $1 and pt.schemaname = $2 and pt.tablename = $3 \
                and jsonb_typeof(to_jsonb(pt) -> 'attnames') = 'array' limit 1)";
    let publication = &config.logical_publication;
    let params: [(&(dyn ToSql + Sync), Type); 3] =
        [(publication, Type::TEXT), (&selected.schema_name, Type::TEXT), (&selected.table_name, Type::TEXT)];
    let row = client
        .query_opt(sql, &params)
        .map_err(|e| classify_query(e, "checking the server's logical replication settings"))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "checking logical replication: no row"))?;
    let internal = |e| Error::new(ErrorKind::Internal, "reading the logical replication settings").with_source(e);
    let version: i32 = row.try_get(0).map_err(internal)?;
    let wal_level: String = row.try_get(1).map_err(internal)?;
    let replication: bool = row.try_get(2).map_err(internal)?;
    let all_tables: Option<bool> = row.try_get(3).map_err(internal)?;
    let in_publication: bool = row.try_get(4).map_err(internal)?;
    let user: String = row.try_get(5).map_err(internal)?;
    // Published columns (PostgreSQL 15's column lists: `attnames`) that are arrays of a type
    // without a binary send function: array_send fails for their elements, so the server cannot
    // decode a change of the table in binary.
    let unsendable: Option<String> = row.try_get(6).map_err(internal)?;
    // The columns the publication sends (all of them unless it has a column list; `None` before
    // PostgreSQL 15, which has no column lists).
    let published: Option<Vec<String>> = row.try_get(7).map_err(internal)?;
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
        // A selected column the publication's column list leaves out would be missing from every
        // change's RECORD (a target that upserts whole rows would null it).
        Some(_) => match (unsendable, unpublished(&selected.columns, published.as_deref())) {
            (None, Some(missing)) => Err(Error::new(
                ErrorKind::Config,
                format!("publication {quoted_publication} does not send column {missing} of {table} (its column list leaves it out)"),
            )
            .with_hint(format!(
                "Deselect the column in the catalog, or add it to the column list as the table's owner: ALTER PUBLICATION {quoted_publication} SET TABLE {table} (<every column to send>);"
            ))),
            (Some(columns), _) => Err(Error::new(
                ErrorKind::Catalog,
                format!(
                    "LOG_BASED cannot read {table}: the server cannot send column {columns} in binary (an array of a type without a binary send function, such as aclitem[] or seg[])"
                ),
            )
            .with_hint("Use XMIN or FULL_TABLE for it (or, on PostgreSQL 15 or later, a publication column list without that column, and the column deselected).")),
            (None, None) => Ok(()),
        },
    }
}

/// The selected columns (comma-separated) that a publication's column list leaves out; `None`
/// when it sends them all or has no list.
fn unpublished(selected: &[String], published: Option<&[String]>) -> Option<String> {
    let published = published?;
    let missing: Vec<&str> = selected.iter().filter(|c| !published.contains(c)).map(String::as_str).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
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
    let fail = |what: &'static str| move |e| classify_query(e, what);
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
                    classify_query(e, "creating the replication slot").with_hint(
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
    match plan.bookmark.lsn {
        None => snapshot(cx, plan, state, writer),
        Some(lsn) => changes(cx, plan, state, writer, lsn),
    }
}

/// The first run: the WAL position, then the table read as FULL_TABLE reads it.
fn snapshot<W: Write>(cx: &mut Context<'_>, plan: &mut StreamPlan, state: &mut State, writer: &mut MessageWriter<W>) -> Result<Outcome> {
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
    let version = bookmark.version.unwrap_or_else(now_version);
    bookmark.last_replication_method = Some("LOG_BASED".to_string());
    bookmark.version = Some(version);
    state.set_bookmark(&id, &bookmark);
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
        pending: Vec::new(),
        pending_bytes: 0,
        converter: None,
        connector: cx.connector,
        database: cx.database,
    };
    let publication = query::quote_ident(&cx.config.logical_publication);
    let mut attempt = 0;
    // The bookmark's lsn when the last reconnect was made: attempts count failures without a
    // transaction written in between (rows of a transaction cut short are sent again, so they
    // are no progress).
    let mut lsn_at_reconnect = decoder.lsn;
    let outcome = loop {
        let failure = match peek(cx, &mut decoder, (state, writer), (&slot, upto, &publication)) {
            Ok(outcome) => break outcome,
            Err(failure) => failure,
        };
        if decoder.lsn > lsn_at_reconnect {
            attempt = 0;
        }
        if !(failure.transient && attempt < cx.config.reconnect_attempts) {
            decoder.fail(state, writer);
            return Err(failure.error);
        }
        attempt += 1;
        if let Err(e) = reconnect(cx, attempt, &failure.error) {
            decoder.fail(state, writer);
            return Err(e);
        }
        lsn_at_reconnect = decoder.lsn;
        decoder.restart();
    };
    if outcome != Outcome::Complete {
        // Stopped early: the statement may still be running.
        cx.connector.cancel(&cx.session.client.cancel_token());
        decoder.sink.finish(false);
        return Ok(outcome);
    }
    // Every transaction that commits before `upto` was decoded.
    decoder.lsn = decoder.lsn.max(upto);
    decoder.sink.finish(true);
    decoder.bookmark.lsn = Some(decoder.lsn);
    state.set_bookmark(&id, &decoder.bookmark);
    state.set_currently_syncing(None);
    writer.write_state(&state.to_value())?;
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

/// The table as the last Relation message described it.
struct RelationMap {
    /// For each column of the relation, its index in the plan's columns (`None`: not selected).
    columns: Vec<Option<usize>>,
    /// For each column of the relation, whether it is in the replica identity.
    key: Vec<bool>,
    /// For each column of the relation, its type's oid.
    types: Vec<u32>,
}

/// A column value owned by a row that waits for the server's conversion.
enum OwnedDatum {
    /// See [`Datum::Null`].
    Null,
    /// See [`Datum::UnchangedToast`].
    UnchangedToast,
    /// See [`Datum::Text`].
    Text(Vec<u8>),
    /// See [`Datum::Binary`].
    Binary(Vec<u8>),
}

impl OwnedDatum {
    /// A copy of `datum`.
    fn of(datum: &Datum<'_>) -> OwnedDatum {
        match datum {
            Datum::Null => OwnedDatum::Null,
            Datum::UnchangedToast => OwnedDatum::UnchangedToast,
            Datum::Text(t) => OwnedDatum::Text(t.to_vec()),
            Datum::Binary(b) => OwnedDatum::Binary(b.to_vec()),
        }
    }

    /// The value borrowed again.
    fn datum(&self) -> Datum<'_> {
        match self {
            OwnedDatum::Null => Datum::Null,
            OwnedDatum::UnchangedToast => Datum::UnchangedToast,
            OwnedDatum::Text(t) => Datum::Text(t),
            OwnedDatum::Binary(b) => Datum::Binary(b),
        }
    }

    /// Bytes held.
    fn len(&self) -> usize {
        match self {
            OwnedDatum::Text(b) | OwnedDatum::Binary(b) => b.len(),
            OwnedDatum::Null | OwnedDatum::UnchangedToast => 0,
        }
    }
}

/// A row waiting for some of its values to be converted by the server.
struct PendingRow {
    /// Its values, in the relation's column order.
    values: Vec<OwnedDatum>,
    /// An old key or row (a delete) or `None` (a new row).
    old: Option<OldKind>,
    /// Its transaction's commit time.
    commit_time: i64,
}

/// Per relation column of a row: `Some(value)` when the server converted it (`None` inside:
/// NULL), `None` when it is written as it arrived.
type Converted = Vec<Option<Option<Vec<u8>>>>;

/// A conversion statement: its text, its parameters, and the (row, relation column) each of its
/// result columns is for.
type Conversion<'a> = (String, Vec<(Box<dyn ToSql + Sync + 'a>, Type)>, Vec<(usize, usize)>);

/// A value bound in binary as the type the statement was prepared with.
#[derive(Debug)]
struct RawParam<'a>(&'a [u8]);

impl ToSql for RawParam<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Whether a value of `column` must be converted by the server before it is encoded.
fn needs_conversion(column: &ColumnPlan, datum: &Datum<'_>) -> bool {
    match datum {
        Datum::Binary(_) => column.cast != Cast::None,
        Datum::Text(_) => column.cast != Cast::None || column.encoder != Encoder::Text,
        Datum::Null | Datum::UnchangedToast => false,
    }
}

/// The SQL suffix that turns a value of the column's type into FULL_TABLE's wire form.
fn cast_suffix(cast: Cast) -> &'static str {
    match cast {
        Cast::None => "",
        Cast::Text => "::text",
        Cast::TextArray => "::text[]",
        Cast::Numeric => "::numeric",
        Cast::NumericArray => "::numeric[]",
    }
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
    bookmark: Bookmark,
    /// A TRUNCATE of the table was warned about in this run.
    truncated: bool,
    /// Rows waiting for the server to convert some of their values, in order.
    pending: Vec<PendingRow>,
    /// Bytes of the values in `pending`.
    pending_bytes: usize,
    /// The second session, which converts values (opened when first needed).
    converter: Option<Client>,
    /// Opens the second session.
    connector: &'p crate::connect::Connector,
    /// The stream's database.
    database: &'p str,
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
                self.flush(writer)?;
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
        Ok(RelationMap {
            columns,
            key: relation.columns.iter().map(|c| c.is_key).collect(),
            types: relation.columns.iter().map(|c| c.type_oid).collect(),
        })
    }

    /// The table's columns, or an error when a change came before its Relation message.
    fn relation(&self) -> Result<&RelationMap> {
        self.relation.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::Query, "a change of the table came before its Relation message")
                .with_hint("Please report this with the server's version.")
        })
    }

    /// Writes one RECORD: the new row, or (with `old`) a delete with the old key or row; a row
    /// with values the server must convert (and every row after it, to keep the order) waits.
    fn write_row<W: Write>(&mut self, tuple: &[Datum<'_>], old: Option<OldKind>, writer: &mut MessageWriter<W>) -> Result<()> {
        let relation = self.relation()?;
        let convert = tuple.iter().zip(&relation.columns).any(|(datum, c)| c.is_some_and(|c| needs_conversion(&self.columns[c], datum)));
        if !convert && self.pending.is_empty() {
            return self.write_line(tuple, (old, self.commit_time), None, writer);
        }
        let values: Vec<OwnedDatum> = tuple.iter().map(OwnedDatum::of).collect();
        self.pending_bytes += values.iter().map(OwnedDatum::len).sum::<usize>();
        self.pending.push(PendingRow { values, old, commit_time: self.commit_time });
        if self.pending.len() >= PENDING_ROWS || self.pending_bytes >= PENDING_BYTES {
            self.flush(writer)?;
        }
        Ok(())
    }

    /// Converts the waiting rows' values on the server and writes the rows, in order.
    fn flush<W: Write>(&mut self, writer: &mut MessageWriter<W>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let converted = self.convert(&pending)?;
        for (row, converted) in pending.iter().zip(&converted) {
            let tuple: Vec<Datum<'_>> = row.values.iter().map(OwnedDatum::datum).collect();
            self.write_line(&tuple, (row.old, row.commit_time), Some(converted), writer)?;
        }
        Ok(())
    }

    /// Has the server turn the values of `rows` that need it into FULL_TABLE's wire form: per
    /// column and form, one statement of one row with a result column per value.
    fn convert(&mut self, rows: &[PendingRow]) -> Result<Vec<Converted>> {
        let relation = self.relation()?;
        let mut out: Vec<Converted> = rows.iter().map(|r| (0..r.values.len()).map(|_| None).collect()).collect();
        let mut statements: Vec<Conversion<'_>> = Vec::new();
        for (i, planned) in relation.columns.iter().enumerate() {
            let Some(c) = *planned else { continue };
            let column = &self.columns[c];
            let suffix = cast_suffix(column.cast);
            // Only the oid goes to the server (as the parameter's type in Parse).
            let value_type = Type::new(column.cast_type.clone(), relation.types[i], tokio_postgres::types::Kind::Simple, String::new());
            let mut binary: Conversion<'_> = (String::from("select "), Vec::new(), Vec::new());
            let mut text: Conversion<'_> = (String::from("select "), Vec::new(), Vec::new());
            for (r, row) in rows.iter().enumerate() {
                let datum = row.values[i].datum();
                if !needs_conversion(column, &datum) {
                    continue;
                }
                match datum {
                    Datum::Binary(bytes) => {
                        let n = binary.1.len() + 1;
                        let comma = if n > 1 { ", " } else { "" };
                        binary.0.push_str(&format!("{comma}${n}{suffix}"));
                        binary.1.push((Box::new(RawParam(bytes)), value_type.clone()));
                        binary.2.push((r, i));
                    }
                    Datum::Text(bytes) => {
                        let value = std::str::from_utf8(bytes).map_err(|e| {
                            Error::new(
                                ErrorKind::Encode,
                                format!("column {} arrived as text that is not UTF-8", query::quote_ident(&column.name)),
                            )
                            .with_source(e)
                            .with_hint("Deselect the column, or use XMIN or FULL_TABLE for this stream.")
                        })?;
                        let n = text.1.len() + 1;
                        let comma = if n > 1 { ", " } else { "" };
                        text.0.push_str(&format!("{comma}cast(${n}::text as {}){suffix}", column.cast_type));
                        text.1.push((Box::new(value), Type::TEXT));
                        text.2.push((r, i));
                    }
                    Datum::Null | Datum::UnchangedToast => {}
                }
            }
            statements.extend([binary, text].into_iter().filter(|s| !s.1.is_empty()));
        }
        if statements.is_empty() {
            return Ok(out);
        }
        // The stream's session is busy with the peek, and this thread inside its runtime: the
        // second session runs on a thread of its own.
        let (connector, database) = (self.connector, self.database);
        let mut converter = self.converter.take();
        let results = std::thread::scope(|scope| {
            let work = scope.spawn(|| -> Result<Vec<Vec<Option<Vec<u8>>>>> {
                let client = match &mut converter {
                    Some(client) => client,
                    None => converter.insert(connector.connect(database)?),
                };
                let mut results = Vec::with_capacity(statements.len());
                for (sql, params, _) in &statements {
                    let params: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(|(p, t)| (p.as_ref(), t.clone())).collect();
                    let row = client
                        .query_opt(sql, &params)
                        .map_err(|e| classify_query(e, "converting values to their FULL_TABLE form"))?
                        .ok_or_else(|| Error::new(ErrorKind::Internal, "converting values: no row"))?;
                    let mut values = Vec::with_capacity(params.len());
                    for k in 0..params.len() {
                        let value: Option<Raw<'_>> =
                            row.try_get(k).map_err(|e| Error::new(ErrorKind::Internal, "reading converted values").with_source(e))?;
                        values.push(value.map(|Raw(bytes)| bytes.to_vec()));
                    }
                    results.push(values);
                }
                Ok(results)
            });
            work.join().unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "the conversion thread panicked")))
        });
        self.converter = converter;
        for ((_, _, places), values) in statements.iter().zip(results?) {
            for (&(r, i), value) in places.iter().zip(values) {
                out[r][i] = Some(value);
            }
        }
        Ok(out)
    }

    /// Encodes one row into a RECORD line and writes it.
    fn write_line<W: Write>(
        &mut self,
        tuple: &[Datum<'_>],
        (old, commit_time): (Option<OldKind>, i64),
        converted: Option<&Converted>,
        writer: &mut MessageWriter<W>,
    ) -> Result<()> {
        writer.write_record_with(|line| self.encode_row(tuple, (old, commit_time), converted, line))?;
        self.sink.row_count += 1;
        self.rows_since_state += 1;
        Ok(())
    }

    /// Appends the RECORD line of `tuple` to `line`, with the values the server converted.
    fn encode_row(
        &mut self,
        tuple: &[Datum<'_>],
        (old, commit_time): (Option<OldKind>, i64),
        converted: Option<&Converted>,
        line: &mut Vec<u8>,
    ) -> Result<()> {
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
            let bytes: Option<&[u8]> = match (converted.and_then(|v| v[i].as_ref()), datum) {
                (Some(value), _) => value.as_deref(),
                (None, Datum::UnchangedToast) => continue,
                (None, Datum::Null) => None,
                (None, datum) if needs_conversion(column, datum) => {
                    return Err(Error::new(ErrorKind::Internal, format!("a value of column {} was not converted", column.name)));
                }
                (None, Datum::Binary(bytes) | Datum::Text(bytes)) => Some(bytes),
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
            encode::encode_value(&Encoder::TimestampTz(OutOfRangeDates::Clamp), &commit_time.to_be_bytes(), line, &mut notes)
                .map_err(|e| Error::new(ErrorKind::Internal, "encoding a commit time").with_source(e))?;
        } else {
            line.extend_from_slice(b"null");
        }
        line.extend_from_slice(&self.envelope.suffix);
        Ok(())
    }

    /// Writes a STATE with the bookmark at the last transaction written.
    fn write_state<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) -> Result<()> {
        self.bookmark.lsn = Some(self.lsn);
        state.set_bookmark(&self.id, &self.bookmark);
        writer.write_state(&state.to_value())?;
        self.rows_since_state = 0;
        self.sink.stated_row_count = self.sink.row_count;
        Ok(())
    }

    /// After a reconnect, before the next peek: it starts after the last transaction written
    /// (one cut short is sent again), and describes the table again.
    fn restart(&mut self) {
        self.start_lsn = self.lsn;
        self.skip = false;
        self.relation = None;
        self.pending.clear();
        self.pending_bytes = 0;
        // It may have been ended with the stream's session; opened again when needed.
        self.converter = None;
    }

    /// After a failure: a STATE for the transactions written, when it says more than the last.
    fn fail<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) {
        if self.bookmark.lsn != Some(self.lsn)
            && let Err(e) = self.write_state(state, writer)
        {
            log::warn!("could not write a STATE after the failure: {}", e.chain());
        }
        self.sink.finish(false);
    }
}
