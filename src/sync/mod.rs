//! The data sync: selected streams -> SCHEMA, RECORD, STATE and ACTIVATE_VERSION on stdout.
//!
//! Two phases. **Plan** ([`plan`]): before anything is written, every selected stream is checked
//! against the live database and gets its encoders, its SCHEMA and its resume keys. Catalog and
//! state problems stop the run here with nothing written; a stream whose table or column
//! vanished or became unreadable is skipped with an error line and the run exits non-zero after
//! the other streams synced. **Sync**: each stream runs with its replication method
//! ([`full_table`], [`xmin`], [`incremental`]) on the shared data path ([`pipeline`]): a
//! statement streamed in a read-only REPEATABLE READ transaction by the [`reader`] thread, rows
//! encoded by the [`sink`] straight into the output buffer, a STATE after each batch
//! ([`batches`]). Bookmark values are checked against their key columns in [`bookmarks`]. The
//! LOG_BASED streams of one database past their first run run together, where the first of them
//! comes in the order: their changes come from one peek of the slot ([`log_based`]).

mod batches;
mod blocks;
mod bookmarks;
mod full_table;
mod incremental;
mod log_based;
mod pipeline;
mod plan;
mod reader;
mod sink;
mod xmin;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, ReplicationMethod, SelectedStream, select_streams};
use crate::config::Config;
use crate::connect::Connector;
use crate::discover::{self, Relation, Scope};
use crate::encode::{self, NOTE_INFINITY_CLAMPED, NOTE_YEAR_CLAMPED, NOTE_YEAR_OUT_OF_RANGE};
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::pg::Client;
use crate::signals;
use crate::state::State;
use crate::typemap::TypeMap;
use pipeline::Context;
use plan::{StreamPlan, plan_stream};

/// One open session per database, with that database's types.
pub struct Session {
    /// The connection; replaced when it is lost and opened again.
    pub client: Client,
    /// pg_type of that database.
    pub types: TypeMap,
    /// Schemas of the default btree operators of types outside pg_catalog and public.
    pub operator_schemas: HashMap<u32, Vec<String>>,
    /// The next transaction id and a snapshot's xmin when the session's catalog was read
    /// ([`discover::LiveCatalog::transaction_ids`]).
    pub transaction_ids: (u64, u64),
}

/// Why a stream's sync ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All rows were sent.
    Complete,
    /// `max_run_seconds` ran out; state is resumable.
    OutOfTime,
    /// SIGINT or SIGTERM arrived; state is resumable.
    Signalled(i32),
}

/// Runs the sync of every selected stream.
///
/// # Errors
/// Catalog/state problems before any output; connection or query failures during a stream
/// (after its last complete line); and, at the end, the first error of any skipped stream.
pub fn run(config: &Config, catalog: &Catalog, mut state: State) -> Result<()> {
    let run_started = Instant::now();
    let selected = select_streams(catalog, config, state.currently_syncing())?;
    if selected.is_empty() {
        log::warn!(
            "no stream is selected in the catalog; nothing to sync. To select one, set \"selected\": true and a \"replication-method\" in the metadata entry of the stream whose breadcrumb is [] (README, Quick start step 3; with Meltano: `meltano select`)"
        );
    }
    let connector = Connector::new(config)?;
    let (mut sessions, relations) = open_sessions(&connector, &selected, &state)?;
    let mut skipped: Vec<Error> = Vec::new();
    let mut plans = plan_streams(selected, (&mut sessions, &relations), &mut state, config, &mut skipped)?;
    prepare_slots(&mut plans, &mut sessions, config, &mut skipped)?;

    // Beyond what an Instant can hold means no deadline.
    let deadline = config.max_run_seconds.and_then(|s| run_started.checked_add(Duration::from_secs(s)));
    signals::install();
    let stdout = std::io::stdout();
    let mut writer = MessageWriter::new(stdout.lock());
    let mut out_of_time = false;
    let mut ran = vec![false; plans.len()];
    for i in 0..plans.len() {
        if ran[i] {
            continue;
        }
        let database = plans[i].selected.database.clone();
        let Some(session) = sessions.get_mut(&database) else {
            let id = &plans[i].selected.tap_stream_id;
            return Err(Error::new(ErrorKind::Internal, format!("stream {id} was planned without a session")));
        };
        let mut cx = Context { session, connector: &connector, database: &database, config, deadline };
        // A LOG_BASED stream past its first run brings all such streams of its database: their
        // changes come from one peek of the slot.
        let group: Vec<usize> = if reads_changes(&plans[i]) {
            (i..plans.len()).filter(|&j| !ran[j] && reads_changes(&plans[j]) && plans[j].selected.database == database).collect()
        } else {
            vec![i]
        };
        for &j in &group {
            ran[j] = true;
        }
        let ids: Vec<String> = group.iter().map(|&j| plans[j].selected.tap_stream_id.clone()).collect();
        let what = format!("stream {}", ids.join(", "));
        let outcome = if reads_changes(&plans[i]) {
            let members: Vec<&mut StreamPlan> =
                plans.iter_mut().enumerate().filter(|(j, _)| group.contains(j)).map(|(_, plan)| plan).collect();
            sync_changes(&mut cx, members, &mut state, &mut writer)
        } else {
            sync_stream(&mut cx, &mut plans[i], &mut state, &mut writer)
        }
        .map_err(|e| e.within(what.clone()))?;
        match outcome {
            Outcome::Complete => {}
            Outcome::OutOfTime => {
                log::info!("max_run_seconds reached; stopping with a resumable state");
                out_of_time = true;
                break;
            }
            Outcome::Signalled(signum) => {
                writer.write_state(&state.to_value())?;
                let (kind, name) =
                    if signum == signals::SIGINT { (ErrorKind::Interrupted, "SIGINT") } else { (ErrorKind::Terminated, "SIGTERM") };
                return Err(Error::new(kind, format!("stopped by {name} during {what}"))
                    .with_hint("The last STATE written is resumable: run again with it to continue where this run stopped."));
            }
        }
    }
    if !out_of_time {
        state.set_currently_syncing(None);
    }
    writer.write_state(&state.to_value())?;
    writer.flush()?;
    if let Some(first) = skipped.into_iter().next() {
        return Err(first);
    }
    Ok(())
}

/// The live relations of the selected streams, by (database, schema, table).
type Relations = HashMap<(String, String, String), Relation>;

/// One session per database, and its types and the live state of all its selected tables,
/// read in one round trip before any stream is planned.
fn open_sessions(connector: &Connector, selected: &[SelectedStream], state: &State) -> Result<(HashMap<String, Session>, Relations)> {
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut relations = Relations::new();
    for stream in selected {
        if sessions.contains_key(&stream.database) {
            continue;
        }
        let tables: Vec<(String, String)> =
            selected.iter().filter(|s| s.database == stream.database).map(|s| (s.schema_name.clone(), s.table_name.clone())).collect();
        let mut client = connector.connect(&stream.database)?;
        // The run's first stream, when it is alone in its database, may have its read sent with
        // the catalog (XMIN; see xmin::send_ahead). Not a later database's: its transaction would
        // hold its lock and snapshot while the streams before it sync.
        if sessions.is_empty() && tables.len() == 1 {
            xmin::send_ahead(&mut client, stream, state);
        }
        let live = discover::load_catalog(&mut client, Scope::Tables(&tables))?;
        for relation in live.relations {
            relations.insert((stream.database.clone(), relation.schema.clone(), relation.name.clone()), relation);
        }
        sessions.insert(
            stream.database.clone(),
            Session { client, types: live.types, operator_schemas: live.operator_schemas, transaction_ids: live.transaction_ids },
        );
    }
    Ok((sessions, relations))
}

/// Plans every stream; a stream whose table, column or privilege is gone is skipped (its error
/// kept for the end of the run), any other problem stops the run before output.
fn plan_streams(
    selected: Vec<SelectedStream>,
    (sessions, relations): (&mut HashMap<String, Session>, &Relations),
    state: &mut State,
    config: &Config,
    skipped: &mut Vec<Error>,
) -> Result<Vec<StreamPlan>> {
    let mut plans = Vec::with_capacity(selected.len());
    for stream in selected {
        let Some(session) = sessions.get_mut(&stream.database) else {
            return Err(Error::new(ErrorKind::Internal, format!("stream {} has no session", stream.tap_stream_id)));
        };
        let id = stream.tap_stream_id.clone();
        let relation = relations.get(&(stream.database.clone(), stream.schema_name.clone(), stream.table_name.clone()));
        match plan_stream(session, (stream, relation), state, config) {
            Ok(plan) => plans.push(plan),
            Err(e) if matches!(e.kind(), ErrorKind::Query | ErrorKind::Auth) => skip(e, &id, skipped),
            Err(e) => return Err(e.within(format!("stream {id}"))),
        }
    }
    Ok(plans)
}

/// LOG_BASED: each database's slot, made ready before any output; a stream whose bookmark is
/// behind its slot is skipped.
fn prepare_slots(
    plans: &mut Vec<StreamPlan>,
    sessions: &mut HashMap<String, Session>,
    config: &Config,
    skipped: &mut Vec<Error>,
) -> Result<()> {
    let mut databases: Vec<String> =
        plans.iter().filter(|p| p.selected.method == ReplicationMethod::LogBased).map(|p| p.selected.database.clone()).collect();
    databases.sort();
    databases.dedup();
    for database in databases {
        let Some(session) = sessions.get_mut(&database) else {
            return Err(Error::new(ErrorKind::Internal, format!("database {database} has no session")));
        };
        let indices: Vec<usize> = (0..plans.len())
            .filter(|&i| plans[i].selected.method == ReplicationMethod::LogBased && plans[i].selected.database == database)
            .collect();
        let of_database: Vec<&StreamPlan> = indices.iter().map(|&i| &plans[i]).collect();
        let behind = log_based::prepare_slot(&mut session.client, config, &database, &of_database)?;
        let mut dropped: Vec<usize> = Vec::new();
        for (i, e) in behind {
            skip(e, &plans[indices[i]].selected.tap_stream_id, skipped);
            dropped.push(indices[i]);
        }
        dropped.sort_unstable();
        for i in dropped.into_iter().rev() {
            plans.remove(i);
        }
    }
    Ok(())
}

/// Logs why stream `id` is skipped and keeps its error for the end of the run.
fn skip(e: Error, id: &str, skipped: &mut Vec<Error>) {
    let e = e.within(format!("stream {id}"));
    log::error!("skipping stream: {}", e.chain());
    if let Some(hint) = e.hint() {
        log::error!("{hint}");
    }
    skipped.push(e);
}

/// Milliseconds since the Unix epoch: a new table version, as singer-io makes them.
fn now_version() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether `plan` is a LOG_BASED stream past its first run: it reads changes from the slot.
fn reads_changes(plan: &StreamPlan) -> bool {
    plan.selected.method == ReplicationMethod::LogBased && plan.bookmark.lsn.is_some()
}

/// Runs one stream with its strategy (a LOG_BASED one: its first snapshot).
fn sync_stream<W: Write>(cx: &mut Context<'_>, plan: &mut StreamPlan, state: &mut State, writer: &mut MessageWriter<W>) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    log::info!("beginning sync of stream {id} ({})", plan.selected.method.as_str());
    state.set_currently_syncing(Some(&id));
    write_schema(plan, writer)?;
    let outcome = match plan.selected.method {
        ReplicationMethod::FullTable => full_table::sync(cx, plan, state, writer),
        ReplicationMethod::Xmin => xmin::sync(cx, plan, state, writer),
        ReplicationMethod::Incremental => incremental::sync(cx, plan, state, writer),
        ReplicationMethod::LogBased => log_based::snapshot(cx, plan, state, writer),
    }?;
    warn_notes(plan);
    Ok(outcome)
}

/// Runs the LOG_BASED streams of one database past their first run, in one peek: every SCHEMA
/// first, then their changes interleaved in commit order. `currently_syncing` names the first of
/// them while they run (an interrupted run resumes with it first, and so with all of them).
fn sync_changes<W: Write>(
    cx: &mut Context<'_>,
    mut plans: Vec<&mut StreamPlan>,
    state: &mut State,
    writer: &mut MessageWriter<W>,
) -> Result<Outcome> {
    for plan in &plans {
        log::info!("beginning sync of stream {} (LOG_BASED)", plan.selected.tap_stream_id);
        write_schema(plan, writer)?;
    }
    state.set_currently_syncing(plans.first().map(|p| p.selected.tap_stream_id.as_str()));
    let outcome = log_based::changes(cx, plans.iter_mut().map(|p| &mut **p).collect(), state, writer)?;
    for plan in &plans {
        warn_notes(plan);
    }
    Ok(outcome)
}

/// Writes the SCHEMA of `plan`'s stream.
fn write_schema<W: Write>(plan: &StreamPlan, writer: &mut MessageWriter<W>) -> Result<()> {
    let bookmark_properties: Vec<String> = match plan.selected.method {
        // singer-io's tap-postgres names the bookmark's lsn for LOG_BASED streams.
        ReplicationMethod::LogBased => vec!["lsn".to_string()],
        _ => plan.selected.replication_key.iter().cloned().collect(),
    };
    writer.write_schema(&plan.selected.stream, &plan.schema, &plan.selected.key_properties, &bookmark_properties)
}

/// Warns about the values of `plan`'s columns that were written clamped or in expanded form.
fn warn_notes(plan: &StreamPlan) {
    let id = &plan.selected.tap_stream_id;
    for column in &plan.columns {
        let (min, max) = encode::sentinels(&column.encoder);
        if column.notes & NOTE_INFINITY_CLAMPED != 0 {
            log::warn!("stream {id}: column {} holds infinity, written as {max} / {min}", column.name);
        }
        if column.notes & NOTE_YEAR_CLAMPED != 0 {
            log::warn!(
                "stream {id}: column {} holds years outside 1..9999, written as {min} / {max} (bookmarks keep the exact value); set \"out_of_range_dates\": \"expanded\" for the exact values in ISO 8601 expanded form",
                column.name
            );
        }
        if column.notes & NOTE_YEAR_OUT_OF_RANGE != 0 {
            log::warn!(
                "stream {id}: column {} holds years outside 1..9999, written with ISO 8601 expanded years (e.g. -0043-03-15) that some targets reject",
                column.name
            );
        }
    }
}
