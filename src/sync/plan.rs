//! Planning: a selected catalog stream checked against the live database and turned into a
//! [`StreamPlan`] before anything is written: the table and each selected column still exist and
//! are readable, their types can be encoded, the state's bookmark fits the key's type; then the
//! stream's encoders, SCHEMA, resume keys and whether it can be read in block ranges.
//!
//! Catalog and state problems are `Catalog`/`State` errors (the run stops before output); a
//! vanished or unreadable table or column is a `Query`/`Auth` error (the stream is skipped).

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tokio_postgres::types::Type;

use super::Session;
use crate::catalog::SelectedStream;
use crate::config::{Config, FullTableOrder, ReplicationMethod};
use crate::connect::classify;
use crate::discover::{self, Column, Relation};
use crate::encode::write_json_str;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::query::{self, KeyColumn};
use crate::state::State;
use crate::typemap::{self, Cast, Encoder};

/// Most key columns a FULL_TABLE resume point can hold (wider keys sync without resume).
pub const MAX_TRACKED_COLUMNS: usize = 8;

/// One column to emit.
pub struct ColumnPlan {
    /// Column name.
    pub name: String,
    /// `"name":` rendered once.
    pub key: Vec<u8>,
    /// SELECT-list entry.
    pub select_item: String,
    /// Encoder of its wire value.
    pub encoder: Encoder,
    /// Special values met (see `encode::NOTE_*`), for one warning per column.
    pub notes: u8,
    /// `atttypid`: LOG_BASED checks that the changes it decodes carry the type planned for.
    pub typid: u32,
    /// How the SELECT list reads the column (LOG_BASED has the server apply it to decoded values).
    pub cast: Cast,
    /// `format_type(atttypid, atttypmod)`.
    pub cast_type: String,
}

/// Everything needed to sync one stream, decided before any output.
pub struct StreamPlan {
    /// The catalog's view of the stream.
    pub selected: SelectedStream,
    /// Columns in SELECT order.
    pub columns: Vec<ColumnPlan>,
    /// SCHEMA message `schema`.
    pub schema: Value,
    /// Key columns for ordering/resuming a FULL_TABLE sync: (index into `columns`, cast type).
    pub order_keys: Vec<(usize, String)>,
    /// The order keys may repeat (an inheritance parent reads its children's rows too): a
    /// resumed key-order read starts at the last key sent (`>=`) instead of after it.
    pub order_keys_repeat: bool,
    /// `lock table ... in access share mode`, run before a key-order or INCREMENTAL read takes
    /// its snapshot, when the relation and the role allow it.
    pub lock: Option<String>,
    /// INCREMENTAL key: (index into `columns`, cast type).
    pub replication_key: Option<(usize, String)>,
    /// Storage order ([`super::blocks`]): the table's oid, when the method and the config ask for
    /// it, the relation has storage (a table or materialized view), the role table-wide SELECT
    /// and the server TID range scans (PostgreSQL 14+).
    pub block_reads: Option<u32>,
    /// The bookmark this run starts from (already adopted from a pipelinewise-style id).
    pub bookmark: Map<String, Value>,
    /// `pg_class.oid` of the relation (LOG_BASED matches decoded changes by it).
    pub relid: u32,
    /// estimated rows (reltuples), for progress.
    pub row_estimate: i64,
    /// `search_path` for the stream's transaction: `public` plus the schemas of the key types'
    /// comparison operators (e.g. citext installed in `heroku_ext`), so that `>=` and `>` on
    /// the key are the type's own and agree with `order by`.
    pub search_path: String,
}

/// Checks one stream against the live table and decides its columns, query and SCHEMA.
/// `relation` is the live table as [`discover::load_catalog`] read it for every stream of the
/// database at once, `None` when it is gone.
pub fn plan_stream(
    session: &mut Session,
    (selected, relation): (SelectedStream, Option<&Relation>),
    state: &mut State,
    config: &Config,
) -> Result<StreamPlan> {
    let table = query::qualified_name(&selected.schema_name, &selected.table_name);
    let relation = relation.ok_or_else(|| {
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
            typid: column.typid,
            cast: mapped.cast,
            cast_type: column.cast_type.clone(),
        });
        cast_types.push(column.cast_type.clone());
    }
    if selected.method == ReplicationMethod::LogBased {
        // singer-io's column for deletes (a RECORD with the key and the commit time).
        properties.insert(super::log_based::DELETED_AT.into(), json!({"type": ["null", "string"], "format": "date-time"}));
    }
    let schema = json!({"type": "object", "properties": properties, "definitions": typemap::array_definitions()});
    let index_of = |name: &str| columns.iter().position(|c| c.name == name);

    let alias = format!("{}-{}", selected.schema_name, selected.table_name);
    let mut bookmark = state.take_bookmark(&selected.tap_stream_id, &alias);
    let mut order_keys = Vec::new();
    let mut replication_key = None;
    let mut block_reads = None;
    let mut order_keys_repeat = false;
    let facts = TableFacts::of(relation);
    // A rewrite (TRUNCATE + reload, VACUUM FULL, CLUSTER, a rewriting ALTER TABLE) that commits
    // while the read waits for the table would be read with a snapshot older than the new rows:
    // the read locks the table before its first statement takes the snapshot. LOCK TABLE takes
    // tables, partitioned tables and views (their tables too), and needs table-wide SELECT; a
    // materialized view's REFRESH writes frozen rows, which every snapshot sees.
    let lock =
        (facts.table_select && matches!(relation.relkind, b'r' | b'p' | b'v')).then(|| format!("lock table {table} in access share mode"));
    match selected.method {
        // LOG_BASED reads the table as FULL_TABLE does the first time (and then its changes).
        ReplicationMethod::FullTable | ReplicationMethod::LogBased => {
            let method = selected.method.as_str();
            if bookmark.get("last_replication_method").and_then(Value::as_str).is_some_and(|m| m != method) {
                if selected.method == ReplicationMethod::LogBased {
                    log::info!("stream {}: replication method changed; starting with a new snapshot", selected.tap_stream_id);
                }
                bookmark = Map::new();
            }
            if selected.method == ReplicationMethod::LogBased {
                super::log_based::check_stream(&mut session.client, (&selected, relation), &bookmark, config)?;
            }
            if !selected.is_view && !relation.primary_key.is_empty() {
                let keys: Option<Vec<usize>> = relation.primary_key.iter().map(|k| index_of(k)).collect();
                // A resume point must be a bookmark the server can read back.
                let keys = keys.filter(|k| k.len() <= MAX_TRACKED_COLUMNS && k.iter().all(|&i| bookmarkable(&columns[i].encoder)));
                if let Some(keys) = keys {
                    order_keys = keys.into_iter().map(|i| (i, cast_types[i].clone())).collect();
                }
            }
            // The primary key of an inheritance parent is not unique across its children, whose
            // rows the query reads too: a repeated key must not be skipped by `(pk) > (last)`.
            order_keys_repeat = facts.has_children && relation.relkind == b'r';
            if config.full_table_order == FullTableOrder::Physical && relation.relkind != b'v' {
                match facts.block_reads_refused(relation.relkind) {
                    None => block_reads = Some(relation.oid),
                    Some(reason) => log::info!(
                        "stream {}: {reason}; it is read {}",
                        selected.tap_stream_id,
                        if order_keys.is_empty() { "without a resume point" } else { "in primary key order" }
                    ),
                }
            }
            check_block_resume(&bookmark)?;
            if let Some(Value::Object(last)) = bookmark.get("last_pk_fetched") {
                for (i, cast_type) in &order_keys {
                    let column = &columns[*i];
                    let key = KeyColumn { name: &column.name, cast_type };
                    check_bookmark_value(&mut session.client, last.get(&column.name), &column.encoder, &key, "last_pk_fetched")?;
                }
            }
        }
        ReplicationMethod::Xmin => {
            if relation.relkind == b'v' {
                return Err(Error::new(ErrorKind::Catalog, "is a view, and XMIN needs the xmin of stored rows, which a view has not")
                    .with_hint("Use FULL_TABLE (or INCREMENTAL with a replication key) for views."));
            }
            if !facts.table_select {
                return Err(Error::new(
                    ErrorKind::Auth,
                    format!("XMIN reads the xmin system column of {table}, which needs SELECT on the whole table, not on some columns"),
                )
                .with_hint(format!("Grant it: GRANT SELECT ON {table} TO <role>; or use FULL_TABLE or INCREMENTAL.")));
            }
            if bookmark.get("last_replication_method").and_then(Value::as_str).is_some_and(|m| m != "XMIN") {
                log::info!("stream {}: replication method changed; starting from the beginning", selected.tap_stream_id);
                bookmark = Map::new();
            }
            match facts.block_reads_refused(relation.relkind) {
                None => block_reads = Some(relation.oid),
                Some(reason) => {
                    log::info!("stream {}: {reason}; each XMIN run reads it whole, without a resume point", selected.tap_stream_id)
                }
            }
            check_block_resume(&bookmark)?;
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
            let has_index = check_replication_key(
                &mut session.client,
                (&selected, relation.oid),
                &key_column,
                &columns[i].encoder,
                bookmark.get("replication_key_value"),
            )?;
            if !selected.is_view && !has_index {
                log::warn!(
                    "stream {}: replication key {key} has no index; each sync scans the whole table. Create one: create index on {} ({})",
                    selected.tap_stream_id,
                    query::qualified_name(&selected.schema_name, &selected.table_name),
                    query::quote_ident(key)
                );
            }
            replication_key = Some((i, cast_types[i].clone()));
        }
    }
    let key_types: Vec<u32> = order_keys
        .iter()
        .map(|(i, _)| *i)
        .chain(replication_key.as_ref().map(|(i, _)| *i))
        .filter_map(|i| live.get(columns[i].name.as_str()).map(|c| session.types.base_type(c.typid)))
        .collect();
    let search_path = key_search_path(&session.operator_schemas, &key_types);
    Ok(StreamPlan {
        selected,
        columns,
        schema,
        order_keys,
        order_keys_repeat,
        lock,
        replication_key,
        block_reads,
        bookmark,
        relid: relation.oid,
        row_estimate: relation.row_count,
        search_path,
    })
}

/// Refuses, before any output, a `block_resume` that is not a block mark.
fn check_block_resume(bookmark: &Map<String, Value>) -> Result<()> {
    match bookmark.get("block_resume").filter(|v| !v.is_null()) {
        Some(resume) if super::blocks::BlockMark::from_value(resume).is_none() => Err(Error::new(
            ErrorKind::State,
            "the state's bookmark block_resume is not an object of next_block, relfilenode and snapshot_xmin",
        )
        .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning).")),
        _ => Ok(()),
    }
}

/// What FULL_TABLE needs to know of a table beyond its columns, read in one query.
struct TableFacts {
    /// `server_version_num`.
    server_version: i32,
    /// `pg_class.relhassubclass`: the table has (or had) inheritance children or partitions.
    has_children: bool,
    /// The role may SELECT the whole table (not only some columns).
    table_select: bool,
}

impl TableFacts {
    /// The facts `load_catalog` read with the relation.
    fn of(relation: &Relation) -> TableFacts {
        TableFacts { server_version: relation.server_version, has_children: relation.has_children, table_select: relation.table_select }
    }

    /// Why the relation cannot be read in block ranges, or `None` when it can: it needs storage
    /// of its own (a table or materialized view, not a partitioned table), no inheritance
    /// children (whose blocks `ctid` ranges would mix in), table-wide SELECT (`ctid` and `xmin`
    /// are not covered by column grants), and TID range scans (PostgreSQL 14).
    fn block_reads_refused(&self, relkind: u8) -> Option<&'static str> {
        if self.server_version < 140_000 {
            Some("reading by blocks needs PostgreSQL 14")
        } else if !matches!(relkind, b'r' | b'm') {
            Some("a partitioned table has no blocks of its own")
        } else if self.has_children {
            Some("a table with inheritance children is not read by blocks")
        } else if !self.table_select {
            Some("the role may read only some columns, and reading by blocks needs SELECT on the whole table")
        } else {
            None
        }
    }
}

/// Whether values of this encoder can serve as a bookmark that the server reads back.
fn bookmarkable(encoder: &Encoder) -> bool {
    !matches!(encoder, Encoder::Array(_) | Encoder::Hstore | Encoder::Json | Encoder::JsonDocument)
}

/// An INCREMENTAL key's checks, before any output, in one round trip: the server can compare and
/// order it (the query's comparison and ordering are prepared: json, xml, point, ... fail), the
/// state's bookmark is a value of its type ([`check_bookmark_value`]'s rule), and whether some
/// index of the table starts with it (the answer).
fn check_replication_key(
    client: &mut Client,
    (selected, relid): (&SelectedStream, u32),
    key: &KeyColumn<'_>,
    encoder: &Encoder,
    bookmark: Option<&Value>,
) -> Result<bool> {
    let column = query::quote_ident(key.name);
    let ordered_sql = format!(
        "select 1 from {} where {column} >= cast($1::text as {}) order by {column}",
        query::qualified_name(&selected.schema_name, &selected.table_name),
        key.cast_type
    );
    let param = bookmark_text(bookmark, encoder, key, "replication_key_value")?;
    let cast_sql = format!("select cast($1::text as {}) is not null", key.cast_type);
    let index_sql = "select exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0] \
                     where i.indrelid = $1 and a.attname = $2)";
    let (ordered, cast, index) = client
        .run(|c| async move {
            let cast = async {
                match &param {
                    Some(p) => c.query_typed(&cast_sql, &[(p, Type::TEXT)]).await.map(Some),
                    None => Ok(None),
                }
            };
            let index_params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] = [(&relid, Type::OID), (&key.name, Type::TEXT)];
            let index = c.query_typed(index_sql, &index_params);
            Ok::<_, std::convert::Infallible>(futures_util::future::join3(c.prepare_typed(&ordered_sql, &[Type::TEXT]), cast, index).await)
        })
        .map_err(|e| classify(e, "checking the replication key", crate::config::SslMode::Require))?
        .unwrap_or_else(|never| match never {});
    match ordered {
        Ok(_) => {}
        Err(e) if e.as_db_error().is_some() => {
            return Err(Error::new(ErrorKind::Catalog, format!("replication-key {column} cannot be compared or ordered"))
                .with_source(e)
                .with_hint(
                    "Choose a replication key of an ordered type (timestamp, date, integer, numeric, text, uuid, ...), or use FULL_TABLE.",
                ));
        }
        Err(e) => return Err(classify(e, "checking the replication key", crate::config::SslMode::Require)),
    }
    cast_answer(cast.map(|_| ()), key, "replication_key_value")?;
    let rows = index.map_err(|e| classify(e, "reading pg_index", crate::config::SslMode::Require))?;
    match rows.first() {
        Some(row) => row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading pg_index").with_source(e)),
        None => Ok(false),
    }
}

/// `public` plus, quoted, every schema (other than pg_catalog and public) that holds the default
/// btree comparison operators of the key types.
fn key_search_path(operator_schemas: &HashMap<u32, Vec<String>>, key_types: &[u32]) -> String {
    let mut schemas: Vec<&String> = key_types.iter().filter_map(|t| operator_schemas.get(t)).flatten().collect();
    schemas.sort();
    schemas.dedup();
    let mut path = String::from("public");
    for schema in schemas {
        path.push_str(", ");
        path.push_str(&query::quote_ident(schema));
    }
    path
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

/// The refusal of a bookmark that does not fit its key column.
fn bookmark_refused(key: &KeyColumn<'_>, field: &str) -> Error {
    Error::new(ErrorKind::State, format!("the state's bookmark {field} does not fit the type of column {}", query::quote_ident(key.name)))
        .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning), or fix the value to one the column can hold.")
}

/// The text a bookmark is bound as, or `None` without a bookmark; refuses a JSON kind the
/// column's values never take.
fn bookmark_text(value: Option<&Value>, encoder: &Encoder, key: &KeyColumn<'_>, field: &str) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) if accepts_bookmark(encoder, v) => Ok(Some(bookmark_param(v, encoder))),
        Some(_) => Err(bookmark_refused(key, field)),
    }
}

/// The server's answer to `select cast($1::text as <type>)`: a data exception (class 22: invalid
/// syntax, out of range, bad datetime format) means the bookmark does not fit the column.
fn cast_answer(answer: std::result::Result<(), tokio_postgres::Error>, key: &KeyColumn<'_>, field: &str) -> Result<()> {
    match answer {
        Ok(()) => Ok(()),
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Err(bookmark_refused(key, field).with_source(e)),
        Err(e) => Err(classify(e, "checking the state's bookmark", crate::config::SslMode::Require)),
    }
}

/// Refuses, before anything is written, a bookmark value that cannot be a value of the key
/// column: a JSON type the column's values never take, or text the server cannot cast to the
/// column's type (the cast the sync query will make).
fn check_bookmark_value(client: &mut Client, value: Option<&Value>, encoder: &Encoder, key: &KeyColumn<'_>, field: &str) -> Result<()> {
    let Some(param) = bookmark_text(value, encoder, key, field)? else { return Ok(()) };
    let answer = client.query(&format!("select cast($1::text as {}) is not null", key.cast_type), &[(&param, Type::TEXT)]);
    cast_answer(answer.map(|_| ()), key, field)
}

/// The text a bookmark value is bound as; the server casts it to the key's type, so it must be
/// in that type's input syntax: bytea as `\x` hex, bit(1) as `1`/`0`, and ISO 8601 expanded years
/// (`+20000-...`, `-0043-...`) in PostgreSQL's form (`20000-...`, `0044-... BC`).
pub fn bookmark_param(value: &Value, encoder: &Encoder) -> String {
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
