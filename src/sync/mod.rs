//! The data sync: selected streams -> SCHEMA, RECORD, STATE and ACTIVATE_VERSION on stdout.
//!
//! Two phases. **Plan**: before anything is written, every selected stream is checked against
//! the live database (the table and each selected column still exist and are readable, their
//! types can be encoded, the state's bookmark fits the key's type) and gets its encoders, its
//! SCHEMA and its query. Catalog and state problems stop the run here with nothing written; a
//! stream whose table or column vanished or became unreadable is skipped with an error line and
//! the run exits non-zero after the other streams synced. **Sync**: each stream runs in its own
//! read-only REPEATABLE READ transaction, reading a server-side portal `itersize` rows per batch;
//! a reader thread fetches and parses the rows while this thread encodes them straight into the
//! output buffer, and STATE is written after each batch. Strategies: [`full_table`] and
//! [`incremental`].

mod full_table;
mod incremental;
mod physical;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use postgres::types::{FromSql, ToSql, Type};
use postgres::{Client, IsolationLevel};
use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, SelectedStream, select_streams};
use crate::config::{Config, FullTableOrder, ReplicationMethod};
use crate::connect::{Connector, classify};
use crate::discover::{self, Column, Scope};
use crate::encode::{self, NOTE_INFINITY_CLAMPED, NOTE_YEAR_CLAMPED, NOTE_YEAR_OUT_OF_RANGE, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};
use crate::query::{self, KeyColumn};
use crate::signals;
use crate::state::State;
use crate::typemap::{self, Encoder, TypeMap};
use physical::{BlockMark, BlockRead};

/// How often a progress line is logged during a long stream.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often singer-python's record_count METRIC is logged during a long stream.
const METRIC_INTERVAL: Duration = Duration::from_secs(60);
/// Most key columns a FULL_TABLE resume point can hold (wider keys sync without resume).
const MAX_TRACKED_COLUMNS: usize = 8;

/// One open session per database, with that database's types.
struct Session {
    /// The connection.
    client: Client,
    /// pg_type of that database.
    types: TypeMap,
}

/// One column to emit.
struct ColumnPlan {
    /// Column name.
    name: String,
    /// `"name":` rendered once.
    key: Vec<u8>,
    /// SELECT-list entry.
    select_item: String,
    /// Encoder of its wire value.
    encoder: Encoder,
    /// Special values met (see `encode::NOTE_*`), for one warning per column.
    notes: u8,
}

/// Everything needed to sync one stream, decided before any output.
pub struct StreamPlan {
    /// The catalog's view of the stream.
    selected: SelectedStream,
    /// Columns in SELECT order.
    columns: Vec<ColumnPlan>,
    /// SCHEMA message `schema`.
    schema: Value,
    /// Key columns for ordering/resuming a FULL_TABLE sync: (index into `columns`, cast type).
    order_keys: Vec<(usize, String)>,
    /// INCREMENTAL key: (index into `columns`, cast type).
    replication_key: Option<(usize, String)>,
    /// FULL_TABLE in block ranges ([`physical`]): the table's oid, when the config asks for it,
    /// the relation has storage (a table or materialized view) and the server has TID range
    /// scans (PostgreSQL 14+).
    block_reads: Option<u32>,
    /// The bookmark this run starts from (already adopted from a pipelinewise-style id).
    bookmark: Map<String, Value>,
    /// estimated rows (reltuples), for progress.
    row_estimate: i64,
    /// `search_path` for the stream's transaction: `public` plus the schemas of the key types'
    /// comparison operators (e.g. citext installed in `heroku_ext`), so that `>=` and `>` on
    /// the key are the type's own and agree with `order by`.
    search_path: String,
}

/// What bounds a run: the config (batch size, sslmode for messages) and `max_run_seconds`.
pub struct Limits<'a> {
    /// The validated config.
    config: &'a Config,
    /// When to stop between batches.
    deadline: Option<Instant>,
    /// For cancelling a running query when a signal arrives.
    connector: &'a Connector,
}

/// Why a stream's sync ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
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
        log::warn!("no stream is selected in the catalog; nothing to sync");
    }
    let connector = Connector::new(config)?;
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut plans = Vec::with_capacity(selected.len());
    let mut skipped: Vec<Error> = Vec::new();
    for stream in selected {
        let session = match sessions.entry(stream.database.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut client = connector.connect(&stream.database)?;
                let types = discover::load_types(&mut client)?;
                e.insert(Session { client, types })
            }
        };
        let id = stream.tap_stream_id.clone();
        match plan_stream(session, stream, &mut state, config) {
            Ok(plan) => plans.push(plan),
            Err(e) if matches!(e.kind(), ErrorKind::Query | ErrorKind::Auth) => {
                let e = e.within(format!("stream {id}"));
                log::error!("skipping stream: {}", e.chain());
                if let Some(hint) = e.hint() {
                    log::error!("{hint}");
                }
                skipped.push(e);
            }
            Err(e) => return Err(e.within(format!("stream {id}"))),
        }
    }

    let limits = Limits {
        config,
        // Beyond what an Instant can hold means no deadline.
        deadline: config.max_run_seconds.and_then(|s| run_started.checked_add(Duration::from_secs(s))),
        connector: &connector,
    };
    signals::install();
    let stdout = std::io::stdout();
    let mut writer = MessageWriter::new(stdout.lock());
    let mut out_of_time = false;
    for plan in &mut plans {
        let session = sessions.get_mut(&plan.selected.database).expect("planned streams have a session");
        let id = plan.selected.tap_stream_id.clone();
        let outcome =
            sync_stream(&mut session.client, plan, &mut state, &mut writer, &limits).map_err(|e| e.within(format!("stream {id}")))?;
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
                return Err(Error::new(kind, format!("stopped by {name} during stream {id}"))
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

/// Checks one stream against the live table and decides its columns, query and SCHEMA.
fn plan_stream(session: &mut Session, selected: SelectedStream, state: &mut State, config: &Config) -> Result<StreamPlan> {
    let relations =
        discover::load_relations(&mut session.client, Scope::Table { schema: &selected.schema_name, name: &selected.table_name })?;
    let table = query::qualified_name(&selected.schema_name, &selected.table_name);
    let relation = relations.into_iter().next().ok_or_else(|| {
        Error::new(ErrorKind::Query, format!("table {table} no longer exists or the role cannot see it"))
            .with_hint("Run --discover again and update the catalog, or grant the role USAGE on the schema.")
    })?;
    if relation.columns.is_empty() {
        return Err(Error::new(ErrorKind::Auth, format!("the role cannot read table {table}"))
            .with_hint(format!("Grant it: GRANT SELECT ON {table} TO <role>; or deselect the stream.")));
    }
    if selected.columns.is_empty() {
        return Err(Error::new(ErrorKind::Query, "no column is selected")
            .with_hint("Select at least one column of the stream in the catalog, or deselect the stream."));
    }
    let live: HashMap<&str, &Column> = relation.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut columns = Vec::with_capacity(selected.columns.len());
    let mut properties = Map::new();
    let mut cast_types = Vec::with_capacity(selected.columns.len());
    for name in &selected.columns {
        let column = live.get(name.as_str()).ok_or_else(|| {
            // A lost privilege is the same failure whether it was the table's or the column's.
            if relation.unreadable.contains(name) {
                return Error::new(ErrorKind::Auth, format!("the role cannot read column {} of table {table}", query::quote_ident(name)))
                    .with_hint(format!(
                        "Grant it: GRANT SELECT ({}) ON {table} TO <role>; or deselect the column.",
                        query::quote_ident(name)
                    ));
            }
            Error::new(ErrorKind::Query, format!("selected column {} no longer exists", query::quote_ident(name)))
                .with_hint("Run --discover again and update the catalog.")
        })?;
        let mapped = discover::column_type(&session.types, column, config).ok_or_else(|| {
            Error::new(
                ErrorKind::Query,
                format!("column {} now has type {}, which tap-heroku cannot encode", query::quote_ident(name), column.sql_datatype),
            )
            .with_hint("Deselect the column, or run --discover again and update the catalog.")
        })?;
        if let Some(was) = selected.sql_datatypes.get(name)
            && *was != column.sql_datatype
        {
            log::warn!(
                "stream {}: column {name} was {was} at discovery and is {} now; the SCHEMA message follows the database",
                selected.tap_stream_id,
                column.sql_datatype
            );
        }
        // Only primary key columns are known never to be NULL (a view's key columns may be).
        let not_null = relation.primary_key.contains(name);
        properties.insert(name.clone(), Value::Object(discover::column_schema(mapped.schema, not_null)));
        let mut key = Vec::with_capacity(name.len() + 3);
        write_json_str(&mut key, name);
        key.push(b':');
        columns.push(ColumnPlan {
            name: name.clone(),
            key,
            select_item: query::select_item(name, mapped.cast),
            encoder: mapped.encoder,
            notes: 0,
        });
        cast_types.push(column.cast_type.clone());
    }
    let schema = json!({"type": "object", "properties": properties, "definitions": typemap::array_definitions()});
    let index_of = |name: &str| columns.iter().position(|c| c.name == name);

    let alias = format!("{}-{}", selected.schema_name, selected.table_name);
    let mut bookmark = state.take_bookmark(&selected.tap_stream_id, &alias);
    let mut order_keys = Vec::new();
    let mut replication_key = None;
    let mut block_reads = None;
    match selected.method {
        ReplicationMethod::FullTable => {
            if bookmark.get("last_replication_method").and_then(Value::as_str).is_some_and(|m| m != "FULL_TABLE") {
                bookmark = Map::new();
            }
            if !selected.is_view && !relation.primary_key.is_empty() {
                let keys: Option<Vec<usize>> = relation.primary_key.iter().map(|k| index_of(k)).collect();
                // A resume point must be a bookmark the server can read back.
                let keys = keys.filter(|k| k.len() <= MAX_TRACKED_COLUMNS && k.iter().all(|&i| bookmarkable(&columns[i].encoder)));
                if let Some(keys) = keys {
                    order_keys = keys.into_iter().map(|i| (i, cast_types[i].clone())).collect();
                }
            }
            if config.full_table_order == FullTableOrder::Physical && relation.relkind != b'v' {
                match block_reads_refused(&mut session.client, &relation)? {
                    None => block_reads = Some(relation.oid),
                    Some(reason) => log::info!(
                        "stream {}: {reason}; it is read {}",
                        selected.tap_stream_id,
                        if relation.primary_key.is_empty() { "without a resume point" } else { "in primary key order" }
                    ),
                }
            }
            if let Some(resume) = bookmark.get("block_resume").filter(|v| !v.is_null())
                && physical::BlockMark::from_value(resume).is_none()
            {
                return Err(Error::new(
                    ErrorKind::State,
                    "the state's bookmark block_resume is not an object of next_block, relfilenode and snapshot_xmin",
                )
                .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning)."));
            }
            if let Some(Value::Object(last)) = bookmark.get("last_pk_fetched") {
                for (i, cast_type) in &order_keys {
                    let column = &columns[*i];
                    let key = KeyColumn { name: &column.name, cast_type };
                    check_bookmark_value(&mut session.client, last.get(&column.name), &column.encoder, &key, "last_pk_fetched")?;
                }
            }
        }
        ReplicationMethod::Incremental => {
            let key = selected.replication_key.as_deref().expect("INCREMENTAL streams have a key");
            let i = index_of(key).expect("the replication key is a selected column");
            let changed_method = bookmark.get("last_replication_method").and_then(Value::as_str).is_some_and(|m| m != "INCREMENTAL");
            let changed_key = bookmark.get("replication_key").and_then(Value::as_str).is_some_and(|k| k != key);
            if changed_method || changed_key {
                log::info!("stream {}: replication method or key changed; starting from the beginning", selected.tap_stream_id);
                bookmark = Map::new();
            }
            let key_column = KeyColumn { name: key, cast_type: &cast_types[i] };
            if !bookmarkable(&columns[i].encoder) {
                return Err(Error::new(
                    ErrorKind::Catalog,
                    format!("replication-key {} is of a type whose values cannot be bookmarked", query::quote_ident(key)),
                )
                .with_hint(
                    "Choose a replication key of a scalar type (timestamp, date, integer, numeric, text, uuid, ...), or use FULL_TABLE.",
                ));
            }
            check_orderable(&mut session.client, &selected, &key_column)?;
            check_bookmark_value(
                &mut session.client,
                bookmark.get("replication_key_value"),
                &columns[i].encoder,
                &key_column,
                "replication_key_value",
            )?;
            if !selected.is_view && !has_leading_index(&mut session.client, relation.oid, key)? {
                log::warn!(
                    "stream {}: replication key {key} has no index; each sync scans the whole table. Create one: create index on {} ({})",
                    selected.tap_stream_id,
                    query::qualified_name(&selected.schema_name, &selected.table_name),
                    query::quote_ident(key)
                );
            }
            replication_key = Some((i, cast_types[i].clone()));
        }
        ReplicationMethod::LogBased => unreachable!("select_streams refuses LOG_BASED"),
    }
    let key_types: Vec<u32> = order_keys
        .iter()
        .map(|(i, _)| *i)
        .chain(replication_key.as_ref().map(|(i, _)| *i))
        .filter_map(|i| live.get(columns[i].name.as_str()).map(|c| session.types.base_type(c.typid)))
        .collect();
    let search_path = key_search_path(&mut session.client, &key_types)?;
    Ok(StreamPlan {
        selected,
        columns,
        schema,
        order_keys,
        replication_key,
        block_reads,
        bookmark,
        row_estimate: relation.row_count,
        search_path,
    })
}

/// Why a FULL_TABLE stream cannot be read in block ranges, or `None` when it can: the relation
/// needs storage of its own (a table or materialized view, not a partitioned table), no
/// inheritance children (whose blocks `ctid` ranges would mix in), table-wide SELECT (`ctid` and
/// `xmin` are not covered by column grants), and the server TID range scans (PostgreSQL 14).
fn block_reads_refused(client: &mut Client, relation: &discover::Relation) -> Result<Option<&'static str>> {
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, c.relhassubclass, has_table_privilege(c.oid, 'select') \
             from pg_class c where c.oid = $1",
            &[&relation.oid],
        )
        .map_err(|e| classify(e, "reading pg_class", crate::config::SslMode::Require))?;
    let (server_version, has_children, table_select): (i32, bool, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(if server_version < 140_000 {
        Some("reading by blocks needs PostgreSQL 14")
    } else if !matches!(relation.relkind, b'r' | b'm') {
        Some("a partitioned table has no blocks of its own")
    } else if has_children {
        Some("a table with inheritance children is not read by blocks")
    } else if !table_select {
        Some("the role may read only some columns, and reading by blocks needs SELECT on the whole table")
    } else {
        None
    })
}

/// Whether values of this encoder can serve as a bookmark that the server reads back.
fn bookmarkable(encoder: &Encoder) -> bool {
    !matches!(encoder, Encoder::Array(_) | Encoder::Hstore | Encoder::Json | Encoder::JsonDocument)
}

/// Refuses, before any output, a replication key the server cannot compare and order (json,
/// xml, point, ...), by preparing the query's comparison and ordering.
fn check_orderable(client: &mut Client, selected: &SelectedStream, key: &KeyColumn<'_>) -> Result<()> {
    let column = query::quote_ident(key.name);
    let sql = format!(
        "select 1 from {} where {column} >= cast($1::text as {}) order by {column}",
        query::qualified_name(&selected.schema_name, &selected.table_name),
        key.cast_type
    );
    match client.prepare_typed(&sql, &[Type::TEXT]) {
        Ok(_) => Ok(()),
        Err(e) if e.as_db_error().is_some() => {
            Err(Error::new(ErrorKind::Catalog, format!("replication-key {column} cannot be compared or ordered")).with_source(e).with_hint(
                "Choose a replication key of an ordered type (timestamp, date, integer, numeric, text, uuid, ...), or use FULL_TABLE.",
            ))
        }
        Err(e) => Err(classify(e, "checking the replication key", crate::config::SslMode::Require)),
    }
}

/// `public` plus, quoted, every schema (other than pg_catalog and public) that holds the default
/// btree comparison operators of the key types.
fn key_search_path(client: &mut Client, key_types: &[u32]) -> Result<String> {
    let mut path = String::from("public");
    if key_types.is_empty() {
        return Ok(path);
    }
    let rows = client
        .query(
            "select distinct n.nspname::text from pg_opclass c \
             join pg_am am on am.oid = c.opcmethod and am.amname = 'btree' \
             join pg_amop ao on ao.amopfamily = c.opcfamily and ao.amoplefttype = c.opcintype and ao.amoprighttype = c.opcintype \
             join pg_operator o on o.oid = ao.amopopr join pg_namespace n on n.oid = o.oprnamespace \
             where c.opcdefault and c.opcintype = any($1) and n.nspname not in ('pg_catalog', 'public') order by 1",
            &[&key_types],
        )
        .map_err(|e| classify(e, "reading pg_opclass", crate::config::SslMode::Require))?;
    for row in &rows {
        let schema: String = row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading pg_opclass").with_source(e))?;
        path.push_str(", ");
        path.push_str(&query::quote_ident(&schema));
    }
    Ok(path)
}

/// True when some index of the table starts with `column`.
fn has_leading_index(client: &mut Client, relid: u32, column: &str) -> Result<bool> {
    let row = client
        .query_one(
            "select exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0] \
             where i.indrelid = $1 and a.attname = $2)",
            &[&relid, &column],
        )
        .map_err(|e| classify(e, "reading pg_index", crate::config::SslMode::Require))?;
    row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading pg_index").with_source(e))
}

/// The JSON kinds a column's values take, to check a bookmark before it is sent to the server.
fn accepts_bookmark(encoder: &Encoder, value: &Value) -> bool {
    match encoder {
        Encoder::Int2 | Encoder::Int4 | Encoder::Int8 | Encoder::Oid => value.is_i64() || value.is_u64(),
        Encoder::Float4 | Encoder::Float8 | Encoder::Numeric => value.is_number() || value.is_string(),
        Encoder::Bool | Encoder::BitBool => value.is_boolean(),
        Encoder::Array(_) | Encoder::Hstore => false,
        Encoder::JsonDocument | Encoder::JsonbDocument => true,
        _ => value.is_string(),
    }
}

/// Refuses, before anything is written, a bookmark value that cannot be a value of the key
/// column: a JSON type the column's values never take, or text the server cannot cast to the
/// column's type (the cast the sync query will make).
fn check_bookmark_value(client: &mut Client, value: Option<&Value>, encoder: &Encoder, key: &KeyColumn<'_>, field: &str) -> Result<()> {
    let refuse = || {
        Error::new(ErrorKind::State, format!("the state's bookmark {field} does not fit the type of column {}", query::quote_ident(key.name)))
            .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning), or fix the value to one the column can hold.")
    };
    let value = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(v) if accepts_bookmark(encoder, v) => v,
        Some(_) => return Err(refuse()),
    };
    let param = bookmark_param(value, encoder);
    match client.query_one(&format!("select cast($1::text as {}) is not null", key.cast_type), &[&param]) {
        Ok(_) => Ok(()),
        // Class 22 is "data exception": invalid syntax, out of range, bad datetime format.
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Err(refuse().with_source(e)),
        Err(e) => Err(classify(e, "checking the state's bookmark", crate::config::SslMode::Require)),
    }
}

/// The text a bookmark value is bound as; the server casts it to the key's type, so it must be
/// in that type's input syntax: bytea as `\x` hex, bit(1) as `1`/`0`, and ISO 8601 expanded years
/// (`+20000-...`, `-0043-...`) in PostgreSQL's form (`20000-...`, `0044-... BC`).
fn bookmark_param(value: &Value, encoder: &Encoder) -> String {
    match (value, encoder) {
        (Value::String(s), Encoder::Bytea) => format!("\\x{s}"),
        (Value::Bool(b), Encoder::BitBool) => if *b { "1" } else { "0" }.to_string(),
        (Value::String(s), Encoder::Date(_) | Encoder::Timestamp(_) | Encoder::TimestampTz(_)) => postgres_year_syntax(s),
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

/// Rewrites an ISO 8601 expanded year (`+YYYYY` or a signed astronomical year) into PostgreSQL's
/// input syntax; other text is returned unchanged.
fn postgres_year_syntax(text: &str) -> String {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return text.to_string(),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Ok(year) = rest[..digits].parse::<i64>() else { return text.to_string() };
    let astronomical = sign * year;
    if astronomical >= 1 {
        format!("{}{}", &rest[..digits], &rest[digits..])
    } else {
        format!("{:04}{} BC", 1 - astronomical, &rest[digits..])
    }
}

/// Milliseconds since the Unix epoch: a new table version, as singer-io makes them.
fn now_version() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs one stream with its strategy.
fn sync_stream<W: Write>(
    client: &mut Client,
    plan: &mut StreamPlan,
    state: &mut State,
    writer: &mut MessageWriter<W>,
    limits: &Limits<'_>,
) -> Result<Outcome> {
    let id = plan.selected.tap_stream_id.clone();
    log::info!("beginning sync of stream {id} ({})", plan.selected.method.as_str());
    state.set_currently_syncing(Some(&id));
    let bookmark_properties: Vec<String> = plan.selected.replication_key.iter().cloned().collect();
    writer.write_schema(&plan.selected.stream, &plan.schema, &plan.selected.key_properties, &bookmark_properties)?;
    let outcome = match plan.selected.method {
        ReplicationMethod::FullTable => full_table::sync(client, plan, state, writer, limits),
        _ => incremental::sync(client, plan, state, writer, limits),
    }?;
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
    Ok(outcome)
}

/// Where the rows of one stream go and how the bookmark follows them.
struct RowSink {
    /// Envelope of this stream's RECORD lines.
    envelope: RecordEnvelope,
    /// Columns whose last value is tracked (replication key or primary key), indices into `columns`.
    tracked: Vec<usize>,
    /// The JSON text of the tracked columns' values in the last row where they were not null.
    last: Vec<Vec<u8>>,
    /// Rows written so far in this stream.
    row_count: u64,
    /// Rows written when the last STATE was (set by [`run_query`] after each `on_batch`).
    stated_row_count: u64,
    /// Rows counted into METRIC lines so far.
    metric_reported: u64,
    /// Stream start, for rates.
    started: Instant,
    /// Last progress line.
    last_progress: Instant,
    /// Last METRIC line.
    last_metric: Instant,
    /// Destination stream name, for logs.
    stream: String,
    /// Estimated total rows.
    row_estimate: i64,
}

/// A non-NULL wire value, borrowed from the row buffer, of any type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl RowSink {
    /// A sink for `plan`, tracking the given columns.
    fn new(plan: &StreamPlan, version: i64, tracked: Vec<usize>) -> RowSink {
        let time_extracted = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let now = Instant::now();
        RowSink {
            envelope: RecordEnvelope::new(&plan.selected.stream, version, &time_extracted),
            last: vec![Vec::new(); tracked.len()],
            tracked,
            row_count: 0,
            stated_row_count: 0,
            metric_reported: 0,
            started: now,
            last_progress: now,
            last_metric: now,
            stream: plan.selected.stream.clone(),
            row_estimate: plan.row_estimate,
        }
    }

    /// Encodes one row into a RECORD line and writes it.
    fn write_row<W: Write>(&mut self, row: &postgres::Row, columns: &mut [ColumnPlan], writer: &mut MessageWriter<W>) -> Result<()> {
        // The record is encoded straight into the writer's buffer; a failure cuts it off again,
        // so no partial line is ever written.
        let line = writer.line_buffer();
        let line_start = line.len();
        if let Err(e) = self.encode_row(row, columns, line) {
            line.truncate(line_start);
            return Err(e);
        }
        writer.end_line()?;
        self.row_count += 1;
        Ok(())
    }

    /// Appends one RECORD line for `row` to `line` and notes the tracked columns' values.
    fn encode_row(&mut self, row: &postgres::Row, columns: &mut [ColumnPlan], line: &mut Vec<u8>) -> Result<()> {
        line.extend_from_slice(&self.envelope.prefix);
        // Per tracked column: where its JSON text is in the line, and its notes: an infinity or
        // a clamped year was written as a sentinel, and the bookmark must keep the real value.
        let mut spans = [(0usize, 0usize, 0u8); MAX_TRACKED_COLUMNS];
        for (i, column) in columns.iter_mut().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(&column.key);
            let start = line.len();
            let raw: Option<Raw<'_>> =
                row.try_get(i).map_err(|e| Error::new(ErrorKind::Internal, format!("reading column {}", column.name)).with_source(e))?;
            let mut notes = 0;
            match raw {
                None => line.extend_from_slice(b"null"),
                Some(Raw(bytes)) => {
                    encode::encode_value(&column.encoder, bytes, line, &mut notes).map_err(|e| {
                        Error::new(ErrorKind::Encode, format!("encoding column {} ({:?})", column.name, column.encoder))
                            .with_source(e)
                            .with_hint("This value could not be encoded faithfully; please report it, or deselect the column.")
                    })?;
                    column.notes |= notes;
                }
            }
            if let Some(t) = self.tracked.iter().position(|&c| c == i) {
                spans[t] = (start, line.len(), notes);
            }
        }
        line.extend_from_slice(&self.envelope.suffix);
        for (t, &(start, end, notes)) in spans.iter().take(self.tracked.len()).enumerate() {
            let text = &line[start..end];
            if text != b"null" {
                self.last[t].clear();
                if notes & NOTE_INFINITY_CLAMPED != 0 {
                    let word: &[u8] = if text.starts_with(b"\"9999") { b"\"infinity\"" } else { b"\"-infinity\"" };
                    self.last[t].extend_from_slice(word);
                } else if notes & NOTE_YEAR_CLAMPED != 0 {
                    // Rare: the exact value again, in ISO 8601 expanded form (which
                    // `bookmark_param` turns back into PostgreSQL's syntax).
                    let i = self.tracked[t];
                    let raw: Option<Raw<'_>> = row.try_get(i).ok().flatten();
                    let exact = raw.map(|Raw(bytes)| encode::encode_exact(&columns[i].encoder, bytes, &mut self.last[t]));
                    if !matches!(exact, Some(Ok(()))) {
                        return Err(Error::new(ErrorKind::Internal, format!("re-encoding column {} for the bookmark", columns[i].name)));
                    }
                } else {
                    self.last[t].extend_from_slice(text);
                }
            }
        }
        Ok(())
    }

    /// The last non-null value of tracked column `t`, as JSON.
    fn last_value(&self, t: usize) -> Option<Value> {
        let text = self.last.get(t).filter(|v| !v.is_empty())?;
        serde_json::from_slice(text).ok()
    }

    /// Logs the final METRIC line and a summary: rows, seconds, rows/s.
    fn finish(&mut self, complete: bool) {
        self.report(true);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.row_count as f64 / secs.max(1e-9);
        if complete {
            log::info!("synced stream {}: {} rows in {secs:.2}s ({rate:.0} rows/s)", self.stream, self.row_count);
        } else {
            log::info!("stopped stream {} after {} rows in {secs:.2}s", self.stream, self.row_count);
        }
    }

    /// Logs progress and METRIC lines when their intervals have passed (METRIC always when `done`).
    fn report(&mut self, done: bool) {
        let now = Instant::now();
        if !done && now.duration_since(self.last_progress) >= PROGRESS_INTERVAL {
            self.last_progress = now;
            let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
            let of = if self.row_estimate > 0 {
                format!(" of ~{} ({:.0}%)", self.row_estimate, 100.0 * self.row_count as f64 / self.row_estimate as f64)
            } else {
                String::new()
            };
            log::info!("stream {}: {} rows{of}, {:.0} rows/s", self.stream, self.row_count, self.row_count as f64 / secs);
        }
        if done || now.duration_since(self.last_metric) >= METRIC_INTERVAL {
            self.last_metric = now;
            let value = self.row_count - self.metric_reported;
            self.metric_reported = self.row_count;
            let mut tags = Vec::new();
            write_json_str(&mut tags, &self.stream);
            log::info!(
                "METRIC: {{\"type\": \"counter\", \"metric\": \"record_count\", \"value\": {value}, \"tags\": {{\"endpoint\": {}}}}}",
                String::from_utf8_lossy(&tags)
            );
        }
    }
}

/// Rows per message from the reader thread to the encoder.
const CHUNK_ROWS: usize = 1024;
/// Chunks in flight between the threads; with [`CHUNK_ROWS`] this bounds the rows held in memory.
const CHANNEL_CHUNKS: usize = 4;
/// How often the encoder checks for SIGINT/SIGTERM while it waits for rows.
const SIGNAL_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What the reader thread hands the encoder; a failure ends the channel and is the reader's result.
enum Fetched {
    /// Rows, in server order.
    Rows(Vec<postgres::Row>),
    /// A batch ended: `itersize` rows of a query, or one block range of a physical read. `full`
    /// when more may follow; the last message of a complete read has `full: false`. `mark`: for
    /// a block range, where the read stands after it.
    BatchEnd {
        /// More rows may follow.
        full: bool,
        /// The resume point after a block range.
        mark: Option<BlockMark>,
    },
    /// The catch-up of a resumed physical read is done (a STATE, but no place to stop).
    CaughtUp(BlockMark),
}

/// What a stream reads.
enum Source<'a> {
    /// One query with its text parameters, in batches of `itersize` rows.
    Query {
        /// The statement.
        sql: &'a str,
        /// Its `$n` parameters, sent as text.
        params: &'a [String],
    },
    /// A table in block ranges ([`physical`]).
    Blocks(BlockRead<'a>),
}

/// Runs `source` in a read-only REPEATABLE READ transaction and writes every row; after each
/// batch calls `on_batch` (which writes STATE) with the block mark of a physical read. A reader
/// thread fetches and parses rows while this thread encodes and writes them, so the server, the
/// TLS and protocol work and the JSON encoding overlap; at most [`CHANNEL_CHUNKS`] chunks of
/// [`CHUNK_ROWS`] rows wait between them. Stops early with [`Outcome::OutOfTime`] when the
/// deadline passes between batches, and with [`Outcome::Signalled`] right after the record being
/// written when SIGINT or SIGTERM arrives (then `on_batch` gets no mark).
fn run_query<W: Write>(
    client: &mut Client,
    (source, search_path): (Source<'_>, &str),
    columns: &mut [ColumnPlan],
    sink: &mut RowSink,
    writer: &mut MessageWriter<W>,
    limits: &Limits<'_>,
    mut on_batch: impl FnMut(&RowSink, &mut MessageWriter<W>, Option<BlockMark>) -> Result<()>,
) -> Result<Outcome> {
    match &source {
        Source::Query { sql, .. } => log::debug!("query: {sql}"),
        Source::Blocks(read) => log::debug!("query by block ranges: {}", read.range_sql),
    }
    let batch = i32::try_from(limits.config.itersize).unwrap_or(i32::MAX);
    let sslmode = limits.config.sslmode;
    let cancel_token = client.cancel_token();
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Fetched>(CHANNEL_CHUNKS);
        // Written chunks go back to the reader, which frees their rows: rows are then allocated
        // and freed by one thread, which glibc's malloc does cheaply.
        let (recycler, recycled) = std::sync::mpsc::sync_channel::<Vec<postgres::Row>>(CHANNEL_CHUNKS + 1);
        let reader = std::thread::Builder::new()
            .name("reader".into())
            .spawn_scoped(scope, move || {
                let query_error = |e: postgres::Error| classify(e, "reading rows", sslmode);
                let target = FetchTarget { sender: &sender, recycled: &recycled, query_error: &query_error };
                read_source(client, &source, search_path, batch, &target)
            })
            .map_err(|e| Error::new(ErrorKind::Internal, "starting the reader thread").with_source(e))?;
        // `Ok(None)`: the reader stopped early; its own result says why.
        let outcome: Result<Option<Outcome>> = (|| {
            loop {
                // Wake up now and then while the server is busy, so a signal is honoured even
                // when no row arrives (a slow sort, a long statement).
                let fetched = match receiver.recv_timeout(SIGNAL_POLL_INTERVAL) {
                    Ok(fetched) => fetched,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(signum) = signals::received() {
                            limits.connector.cancel(&cancel_token);
                            on_batch(sink, writer, None)?;
                            return Ok(Some(Outcome::Signalled(signum)));
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
                };
                match fetched {
                    Fetched::Rows(rows) => {
                        let recycle = RecycleOnDrop(Some(rows), &recycler);
                        for row in recycle.0.iter().flatten() {
                            sink.write_row(row, columns, writer)?;
                            if let Some(signum) = signals::received() {
                                limits.connector.cancel(&cancel_token);
                                on_batch(sink, writer, None)?;
                                return Ok(Some(Outcome::Signalled(signum)));
                            }
                        }
                    }
                    Fetched::CaughtUp(mark) => {
                        on_batch(sink, writer, Some(mark))?;
                        sink.stated_row_count = sink.row_count;
                    }
                    Fetched::BatchEnd { full, mark } => {
                        on_batch(sink, writer, mark)?;
                        sink.stated_row_count = sink.row_count;
                        sink.report(false);
                        if !full {
                            return Ok(Some(Outcome::Complete));
                        }
                        if limits.deadline.is_some_and(|d| Instant::now() >= d) {
                            return Ok(Some(Outcome::OutOfTime));
                        }
                    }
                }
            }
        })();
        // Stopping early drops the receiver, so the reader's next send fails and it rolls back.
        drop(receiver);
        let read = reader.join().unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "the reader thread panicked")));
        sink.finish(matches!(outcome, Ok(Some(Outcome::Complete))));
        match (outcome, read) {
            (Ok(Some(outcome)), _) => Ok(outcome),
            // The encoder's own error (an encode or output failure) explains more than the
            // reader's, which then only saw a closed channel.
            (Err(e), _) => Err(e),
            (Ok(None), Err(e)) => {
                // The server or the connection failed: a STATE for the records already written
                // keeps them from being sent again on resume.
                if sink.row_count > sink.stated_row_count
                    && let Err(state_error) = on_batch(sink, writer, None)
                {
                    log::warn!("could not write a STATE after the failure: {}", state_error.chain());
                }
                Err(e)
            }
            (Ok(None), Ok(())) => Err(Error::new(ErrorKind::Internal, "the reader thread stopped without finishing")),
        }
    })
}

/// Hands a written chunk back to the reader thread when dropped (also on early return).
struct RecycleOnDrop<'a>(Option<Vec<postgres::Row>>, &'a std::sync::mpsc::SyncSender<Vec<postgres::Row>>);

impl Drop for RecycleOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(rows) = self.0.take() {
            // A full or closed channel: the rows are freed here instead.
            let _ = self.1.try_send(rows);
        }
    }
}

/// The reader thread's ends of the channels and how it reports a failed query.
struct FetchTarget<'a> {
    /// To the encoder.
    sender: &'a std::sync::mpsc::SyncSender<Fetched>,
    /// Written chunks coming back, to be freed here.
    recycled: &'a std::sync::mpsc::Receiver<Vec<postgres::Row>>,
    /// Turns a failed query into our error.
    query_error: &'a dyn Fn(postgres::Error) -> Error,
}

impl FetchTarget<'_> {
    /// Sends `fetched` on; `false` when the encoder has stopped listening.
    fn send(&self, fetched: Fetched) -> bool {
        self.sender.send(fetched).is_ok()
    }
}

/// The reader thread: the stream's transaction, then its source read to the end. Returns early
/// (rolling back) when the encoder has stopped listening; a failure closes the channel and is
/// returned.
fn read_source(client: &mut Client, source: &Source<'_>, search_path: &str, batch: i32, target: &FetchTarget<'_>) -> Result<()> {
    let query_error = target.query_error;
    let mut tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().map_err(query_error)?;
    tx.batch_execute(&format!("set local search_path = {search_path}")).map_err(query_error)?;
    let complete = match source {
        Source::Query { sql, params } => read_query(&mut tx, sql, params, batch, target)?,
        Source::Blocks(read) => physical::read(&mut tx, read, target)?,
    };
    if complete { tx.commit().map_err(query_error) } else { Ok(()) }
}

/// Reads one query's portal in batches of `batch` rows, each followed by a batch end. Returns
/// `false` when the encoder stopped listening.
fn read_query(tx: &mut postgres::Transaction<'_>, sql: &str, params: &[String], batch: i32, target: &FetchTarget<'_>) -> Result<bool> {
    let statement = tx.prepare_typed(sql, &vec![Type::TEXT; params.len()]).map_err(target.query_error)?;
    let bound: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let portal = tx.bind(&statement, &bound).map_err(target.query_error)?;
    loop {
        let Some(fetched) = pump(tx, &portal, i64::from(batch), target)? else { return Ok(false) };
        let full = fetched == i64::from(batch);
        if !target.send(Fetched::BatchEnd { full, mark: None }) {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Fetches up to `limit` rows of `portal` in pieces of at most [`CHUNK_ROWS`] and sends them on:
/// one runtime entry per piece (`query_portal`) instead of one per row (`query_portal_raw`'s
/// iterator, which was most of this thread's time), while memory stays a few chunks. Returns
/// the rows fetched (fewer than `limit` when the portal ran out), or `None` when the encoder
/// stopped listening.
fn pump(tx: &mut postgres::Transaction<'_>, portal: &postgres::Portal, limit: i64, target: &FetchTarget<'_>) -> Result<Option<i64>> {
    let mut total = 0i64;
    while total < limit {
        // Free the rows the encoder has written here, where they were allocated.
        while target.recycled.try_recv().is_ok() {}
        let want = (limit - total).min(CHUNK_ROWS as i64);
        let rows = tx.query_portal(portal, want as i32).map_err(target.query_error)?;
        let fetched = rows.len() as i64;
        total += fetched;
        if fetched > 0 && !target.send(Fetched::Rows(rows)) {
            return Ok(None);
        }
        if fetched < want {
            break;
        }
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmark_params_use_postgres_input_syntax() {
        assert_eq!(bookmark_param(&json!("00ff"), &Encoder::Bytea), "\\x00ff");
        assert_eq!(bookmark_param(&json!(true), &Encoder::BitBool), "1");
        assert_eq!(bookmark_param(&json!(false), &Encoder::BitBool), "0");
        assert_eq!(bookmark_param(&json!(12), &Encoder::Int4), "12");
        assert_eq!(bookmark_param(&json!("abc"), &Encoder::Text), "abc");
        let ts = |s: &str| bookmark_param(&json!(s), &Encoder::TimestampTz(crate::typemap::OutOfRangeDates::Clamp));
        assert_eq!(ts("2024-01-01T00:00:00+00:00"), "2024-01-01T00:00:00+00:00");
        assert_eq!(ts("+20000-01-01T00:00:00+00:00"), "20000-01-01T00:00:00+00:00");
        assert_eq!(ts("-0043-03-15T12:00:00+00:00"), "0044-03-15T12:00:00+00:00 BC");
        assert_eq!(ts("+0000-01-01T00:00:00+00:00"), "0001-01-01T00:00:00+00:00 BC");
        assert_eq!(ts("infinity"), "infinity");
        assert_eq!(ts("-infinity"), "-infinity");
    }
}
