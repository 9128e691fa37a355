//! Planning: a selected catalog stream checked against the live database and turned into a
//! [`StreamPlan`] before anything is written: the table and each selected column still exist and
//! are readable, their types can be encoded, the state's bookmark fits the key's type; then the
//! stream's encoders, SCHEMA, resume keys and whether it can be read in block ranges.
//!
//! Catalog and state problems are `Catalog`/`State` errors (the run stops before output); a
//! vanished or unreadable table or column is a `Query`/`Auth` error (the stream is skipped).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::Session;
use super::bookmarks::{bookmarkable, check_block_resume, check_bookmark_values, check_replication_key};
use crate::catalog::{ReplicationMethod, SelectedStream};
use crate::config::{Config, FullTableOrder};
use crate::discover::{self, Column, Relation};
use crate::encode::write_json_str;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::query::{self, KeyColumn};
use crate::state::{Bookmark, State};
use crate::typemap::{self, Cast, Encoder, TypeMap};

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
    pub bookmark: Bookmark,
    /// `pg_class.oid` of the relation (LOG_BASED matches decoded changes by it).
    pub relid: u32,
    /// The relation's storage when the catalog was read ([`Relation::relfilenode`]).
    pub relfilenode: Option<u64>,
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
    let (columns, schema, cast_types) = plan_columns(&session.types, &selected, relation, config, &table)?;
    let alias = format!("{}-{}", selected.schema_name, selected.table_name);
    let bookmark = state.take_bookmark(&selected.tap_stream_id, &alias);
    let facts = TableFacts::of(relation);
    // A rewrite (TRUNCATE + reload, VACUUM FULL, CLUSTER, a rewriting ALTER TABLE) that commits
    // while the read waits for the table would be read with a snapshot older than the new rows:
    // the read locks the table before its first statement takes the snapshot. LOCK TABLE takes
    // tables, partitioned tables and views (their tables too), and needs table-wide SELECT; a
    // materialized view's REFRESH writes frozen rows, which every snapshot sees.
    let lock = (facts.table_select && matches!(relation.relkind, b'r' | b'p' | b'v')).then(|| query::lock_table(&table));
    let mut plan = StreamPlan {
        selected,
        columns,
        schema,
        order_keys: Vec::new(),
        order_keys_repeat: false,
        lock,
        replication_key: None,
        block_reads: None,
        bookmark,
        relid: relation.oid,
        relfilenode: relation.relfilenode,
        row_estimate: relation.row_count,
        search_path: String::new(),
    };
    match plan.selected.method {
        // LOG_BASED reads the table as FULL_TABLE does the first time (and then its changes).
        ReplicationMethod::FullTable | ReplicationMethod::LogBased => {
            plan_full_table(&mut plan, &mut session.client, (relation, &facts), &cast_types, config)?
        }
        ReplicationMethod::Xmin => plan_xmin(&mut plan, (relation, &facts), &table)?,
        ReplicationMethod::Incremental => plan_incremental(&mut plan, &mut session.client, relation, &cast_types)?,
    }
    let key_types: Vec<u32> = plan
        .order_keys
        .iter()
        .map(|(i, _)| *i)
        .chain(plan.replication_key.as_ref().map(|(i, _)| *i))
        .filter_map(|i| relation.columns.iter().find(|c| c.name == plan.columns[i].name).map(|c| session.types.base_type(c.typid)))
        .collect();
    plan.search_path = key_search_path(&session.operator_schemas, &key_types);
    Ok(plan)
}

/// The selected columns checked against the live ones (still there, readable, of a type that
/// can be encoded): their plans, the SCHEMA message's `schema`, and each one's cast type.
fn plan_columns(
    types: &TypeMap,
    selected: &SelectedStream,
    relation: &Relation,
    config: &Config,
    table: &str,
) -> Result<(Vec<ColumnPlan>, Value, Vec<String>)> {
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
        let mapped = discover::column_type(types, column, config).ok_or_else(|| {
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
    Ok((columns, schema, cast_types))
}

/// FULL_TABLE's part of the plan (also LOG_BASED's, whose first run is a FULL_TABLE read, after
/// its own checks): the primary key as order keys (when every key column can be a
/// bookmark), block reads when the config and the table allow them, and the resume point checked.
fn plan_full_table(
    plan: &mut StreamPlan,
    client: &mut Client,
    (relation, facts): (&Relation, &TableFacts),
    cast_types: &[String],
    config: &Config,
) -> Result<()> {
    let (selected, columns) = (&plan.selected, &plan.columns);
    let index_of = |name: &str| columns.iter().position(|c| c.name == name);
    let method = selected.method.as_str();
    if plan.bookmark.last_replication_method.as_deref().is_some_and(|m| m != method) {
        if selected.method == ReplicationMethod::LogBased {
            log::info!("stream {}: replication method changed; starting with a new snapshot", selected.tap_stream_id);
        }
        plan.bookmark = Bookmark::default();
    }
    if selected.method == ReplicationMethod::LogBased {
        super::log_based::check_stream(client, (selected, relation), &plan.bookmark, config)?;
    }
    if !selected.is_view && !relation.primary_key.is_empty() {
        let keys: Option<Vec<usize>> = relation.primary_key.iter().map(|k| index_of(k)).collect();
        // A resume point must be a bookmark the server can read back.
        let keys = keys.filter(|k| k.len() <= MAX_TRACKED_COLUMNS && k.iter().all(|&i| bookmarkable(&columns[i].encoder)));
        if let Some(keys) = keys {
            plan.order_keys = keys.into_iter().map(|i| (i, cast_types[i].clone())).collect();
        }
    }
    // The primary key of an inheritance parent is not unique across its children, whose
    // rows the query reads too: a repeated key must not be skipped by `(pk) > (last)`.
    plan.order_keys_repeat = facts.has_children && relation.relkind == b'r';
    if config.full_table_order == FullTableOrder::Physical && relation.relkind != b'v' {
        match facts.block_reads_refused(relation.relkind) {
            None => plan.block_reads = Some(relation.oid),
            Some(reason) => log::info!(
                "stream {}: {reason}; it is read {}",
                selected.tap_stream_id,
                if plan.order_keys.is_empty() { "without a resume point" } else { "in primary key order" }
            ),
        }
    }
    check_block_resume(&plan.bookmark)?;
    if let Some(last) = &plan.bookmark.last_pk_fetched {
        let keys: Vec<_> = plan
            .order_keys
            .iter()
            .map(|(i, cast_type)| {
                let column = &columns[*i];
                (last.get(&column.name), &column.encoder, KeyColumn { name: &column.name, cast_type })
            })
            .collect();
        check_bookmark_values(client, &keys, "last_pk_fetched")?;
    }
    Ok(())
}

/// XMIN's part of the plan: a stored relation the role may read whole, block reads when it has
/// blocks of its own, and the resume point checked.
fn plan_xmin(plan: &mut StreamPlan, (relation, facts): (&Relation, &TableFacts), table: &str) -> Result<()> {
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
    if plan.bookmark.last_replication_method.as_deref().is_some_and(|m| m != "XMIN") {
        log::info!("stream {}: replication method changed; starting from the beginning", plan.selected.tap_stream_id);
        plan.bookmark = Bookmark::default();
    }
    match facts.block_reads_refused(relation.relkind) {
        None => plan.block_reads = Some(relation.oid),
        Some(reason) => {
            log::info!("stream {}: {reason}; each XMIN run reads it whole, without a resume point", plan.selected.tap_stream_id)
        }
    }
    check_block_resume(&plan.bookmark)
}

/// INCREMENTAL's part of the plan: the replication key checked (a type that can be bookmarked,
/// compared and ordered; the state's value fits it) and a warning when no index leads with it.
fn plan_incremental(plan: &mut StreamPlan, client: &mut Client, relation: &Relation, cast_types: &[String]) -> Result<()> {
    let selected = &plan.selected;
    let key = selected.replication_key.as_deref().expect("INCREMENTAL streams have a key");
    let i = plan.columns.iter().position(|c| c.name == key).expect("the replication key is a selected column");
    let changed_method = plan.bookmark.last_replication_method.as_deref().is_some_and(|m| m != "INCREMENTAL");
    let changed_key = plan.bookmark.replication_key.as_deref().is_some_and(|k| k != key);
    if changed_method || changed_key {
        log::info!("stream {}: replication method or key changed; starting from the beginning", selected.tap_stream_id);
        plan.bookmark = Bookmark::default();
    }
    let key_column = KeyColumn { name: key, cast_type: &cast_types[i] };
    if !bookmarkable(&plan.columns[i].encoder) {
        return Err(Error::new(
            ErrorKind::Catalog,
            format!("replication-key {} is of a type whose values cannot be bookmarked", query::quote_ident(key)),
        )
        .with_hint("Choose a replication key of a scalar type (timestamp, date, integer, numeric, text, uuid, ...), or use FULL_TABLE."));
    }
    let has_index = check_replication_key(
        client,
        (selected, relation.oid),
        &key_column,
        &plan.columns[i].encoder,
        plan.bookmark.replication_key_value.as_ref(),
    )?;
    if !selected.is_view && !has_index {
        log::warn!(
            "stream {}: replication key {key} has no index; each sync scans the whole table. Create one: create index on {} ({})",
            selected.tap_stream_id,
            query::qualified_name(&selected.schema_name, &selected.table_name),
            query::quote_ident(key)
        );
    }
    plan.replication_key = Some((i, cast_types[i].clone()));
    Ok(())
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

/// `public` plus, quoted, every schema (other than pg_catalog and public) that holds the default
/// btree comparison operators of the key types.
pub(super) fn key_search_path(operator_schemas: &HashMap<u32, Vec<String>>, key_types: &[u32]) -> String {
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
