//! Structure sync: pg_catalog queries -> [`Catalog`].
//!
//! For every database the role may connect to (narrowed by `filter_dbs`), a fixed number of
//! queries (types, relations, columns, primary keys) reads pg_type, pg_class, pg_attribute,
//! pg_index and pg_namespace; tables, partitioned tables, partitions, views and materialized
//! views that the role can SELECT are turned into catalog entries, sorted by `tap_stream_id`.
//! `sync` reuses [`load_catalog`] to check its streams against the live tables.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use crate::pg::{Client, Param};
use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, CatalogStream, MetadataEntry};
use crate::config::Config;
use crate::connect::{Connector, classify_query};
use crate::error::{Error, ErrorKind, Result};
use crate::typemap::{self, TypeInfo, TypeMap};

/// Schemas never discovered.
const SYSTEM_SCHEMA_FILTER: &str = "n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// One column as pg_attribute describes it.
#[derive(Clone, Debug)]
pub struct Column {
    /// `attname`.
    pub name: String,
    /// `atttypid`.
    pub typid: u32,
    /// `atttypmod`.
    pub typmod: i32,
    /// `format_type(atttypid, NULL)` (singer-io's `sql-datatype`; `bit(n)` for bit columns).
    pub sql_datatype: String,
    /// `format_type(atttypid, atttypmod)`: the type a bookmark parameter is cast to.
    pub cast_type: String,
}

/// One table, view, materialized view or partition.
#[derive(Clone, Debug)]
pub struct Relation {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `nspname`.
    pub schema: String,
    /// `relname`.
    pub name: String,
    /// `relkind`: `r`, `p`, `v` or `m`.
    pub relkind: u8,
    /// `reltuples` (an estimate; -1 when never analyzed).
    pub row_count: i64,
    /// `relhassubclass`: the table has (or had) inheritance children or partitions.
    pub has_children: bool,
    /// The role may SELECT the whole table (not only some columns).
    pub table_select: bool,
    /// `server_version_num`.
    pub server_version: i32,
    /// `pg_relation_filenode` when the catalog was read: the table's storage (`None` for a
    /// relation without storage of its own), which a storage-order resume point must match.
    pub relfilenode: Option<u64>,
    /// Columns the role can SELECT, by `attnum`.
    pub columns: Vec<Column>,
    /// Names of the columns the role may not SELECT (neither table nor column privilege), so
    /// that a selected column the role lost is told apart from one that was dropped.
    pub unreadable: Vec<String>,
    /// Primary key columns in key order.
    pub primary_key: Vec<String>,
}

impl Relation {
    /// Views and materialized views (singer-io's `is-view`).
    pub fn is_view(&self) -> bool {
        matches!(self.relkind, b'v' | b'm')
    }
}

/// Which relations to load.
pub enum Scope<'a> {
    /// Every relation, or those in these schemas.
    Schemas(Option<&'a [String]>),
    /// Exactly these relations: (schema, name) pairs.
    Tables(&'a [(String, String)]),
}

/// Runs `--discover`: every database the role may connect to, narrowed by `filter_dbs`.
///
/// # Errors
/// Connection failures to the configured database are fatal; a database among several that
/// refuses the connection is skipped with a warning (as singer-io does).
pub fn discover(config: &Config, connector: &Connector) -> Result<Catalog> {
    let mut first = connector.connect(&config.dbname)?;
    let databases = list_databases(&mut first, config)?;
    if databases.is_empty() {
        return Err(Error::new(ErrorKind::Config, "no database to discover")
            .with_hint("filter_dbs names no database this role may connect to; fix filter_dbs or grant CONNECT."));
    }
    let mut streams = Vec::new();
    for db in &databases {
        let started = std::time::Instant::now();
        let found = if *db == config.dbname {
            discover_database(&mut first, db, config)?
        } else {
            match connector.connect(db) {
                Ok(mut client) => discover_database(&mut client, db, config)?,
                Err(e) if databases.len() > 1 => {
                    log::warn!("skipping database {db}: {}", e.chain());
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        log::info!("discovered database {db}: {} streams in {:.2}s", found.len(), started.elapsed().as_secs_f64());
        streams.extend(found);
    }
    streams.sort_by(|a, b| a.tap_stream_id.cmp(&b.tap_stream_id));
    if streams.is_empty() {
        log::warn!("discovered no tables or views the role can SELECT");
    }
    Ok(Catalog { streams })
}

/// Databases that are not templates, allow connections, and grant this role CONNECT, filtered
/// by `filter_dbs`, sorted by name.
pub fn list_databases(client: &mut Client, config: &Config) -> Result<Vec<String>> {
    let rows = client
        .query(
            "select datname::text from pg_database \
             where not datistemplate and datallowconn and has_database_privilege(oid, 'CONNECT') \
               and ($1::text[] is null or datname = any($1)) and datname <> 'rdsadmin' \
             order by datname",
            &[(&config.filter_dbs, Type::TEXT_ARRAY)],
        )
        .map_err(|e| classify_query(e, "listing databases"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(|e| Error::new(ErrorKind::Internal, "reading pg_database").with_source(e)))
        .collect()
}

/// The catalog entries of one database.
fn discover_database(client: &mut Client, db: &str, config: &Config) -> Result<Vec<CatalogStream>> {
    let LiveCatalog { types, relations, .. } = load_catalog(client, Scope::Schemas(config.filter_schemas.as_deref()))?;
    Ok(relations.iter().filter(|r| !r.columns.is_empty()).map(|r| catalog_entry(db, r, &types, config)).collect())
}

/// All of pg_type.
const TYPES_SQL: &str = "select oid, typname::text, typtype, typcategory, typelem, typbasetype, typtypmod from pg_type";

/// The [`TypeMap`] of pg_type's rows ([`TYPES_SQL`]).
fn types_from_rows(rows: &[tokio_postgres::Row]) -> Result<TypeMap> {
    let mut types = Vec::with_capacity(rows.len());
    for row in rows {
        let byte = |i: usize| -> Result<u8> { Ok(get::<i8>(row, i, "pg_type")? as u8) };
        types.push(TypeInfo {
            oid: get::<u32>(row, 0, "pg_type")?,
            typname: get::<String>(row, 1, "pg_type")?,
            typtype: byte(2)?,
            typcategory: byte(3)?,
            typelem: get::<u32>(row, 4, "pg_type")?,
            typbasetype: get::<u32>(row, 5, "pg_type")?,
            typtypmod: get::<i32>(row, 6, "pg_type")?,
        });
    }
    Ok(TypeMap::new(types))
}

/// What [`load_catalog`] reads: pg_type, the relations, and the schemas (other than
/// pg_catalog and public) holding the default btree operators of a type, by type oid (e.g.
/// citext's in `heroku_ext`), so that key comparisons use the type's own operators.
pub struct LiveCatalog {
    /// pg_type.
    pub types: TypeMap,
    /// The relations of the scope.
    pub relations: Vec<Relation>,
    /// Type oid -> schemas of its default btree comparison operators, outside pg_catalog/public.
    pub operator_schemas: HashMap<u32, Vec<String>>,
    /// The next transaction id and the xmin of a snapshot taken with the catalog read, both
    /// epoch-qualified (XMIN's starting points, and the age a storage-order resume point is
    /// checked against, read here to save a round trip per stream).
    pub transaction_ids: (u64, u64),
}

/// The next transaction id and the current snapshot's xmin (see [`LiveCatalog::transaction_ids`]).
const TRANSACTION_IDS_SQL: &str = "select txid_snapshot_xmax(s), txid_snapshot_xmin(s) from txid_current_snapshot() s";

/// The schemas of default btree operators outside pg_catalog and public, per type.
const OPERATOR_SCHEMAS_SQL: &str = "select distinct c.opcintype, n.nspname::text from pg_opclass c \
     join pg_am am on am.oid = c.opcmethod and am.amname = 'btree' \
     join pg_amop ao on ao.amopfamily = c.opcfamily and ao.amoplefttype = c.opcintype and ao.amoprighttype = c.opcintype \
     join pg_operator o on o.oid = ao.amopopr join pg_namespace n on n.oid = o.oprnamespace \
     where c.opcdefault and n.nspname not in ('pg_catalog', 'public') order by 1, 2";

/// Loads pg_type and the relations of `scope` with their readable columns (and the names of the
/// others), primary keys and what a sync needs to know of them: five queries whatever the number
/// of tables, sent together in one round trip. Relations are sorted by schema and name.
pub fn load_catalog(client: &mut Client, scope: Scope<'_>) -> Result<LiveCatalog> {
    let schemas: Option<Vec<String>> = match scope {
        Scope::Schemas(s) => s.map(<[String]>::to_vec),
        Scope::Tables(_) => None,
    };
    let tables = match scope {
        Scope::Tables(pairs) => Some(pairs),
        Scope::Schemas(_) => None,
    };
    let exact_schemas: Option<Vec<String>> = tables.map(|t| t.iter().map(|(s, _)| s.clone()).collect());
    let exact_names: Option<Vec<String>> = tables.map(|t| t.iter().map(|(_, n)| n.clone()).collect());
    let relation_filter = format!(
        "c.relkind in ('r', 'p', 'v', 'm') and {SYSTEM_SCHEMA_FILTER} \
         and ($1::text[] is null or n.nspname = any($1)) \
         and ($2::text[] is null or (n.nspname, c.relname) in (select * from unnest($2::text[], $3::text[]))) \
         and has_schema_privilege(n.oid, 'USAGE')"
    );
    let rel_sql = format!(
        "select c.oid, n.nspname::text, c.relname::text, c.relkind, c.reltuples::float8, \
           c.relhassubclass, has_table_privilege(c.oid, 'select'), current_setting('server_version_num')::int, \
           pg_relation_filenode(c.oid)::bigint \
         from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where {relation_filter} order by n.nspname, c.relname"
    );
    let col_sql = format!(
        "select a.attrelid, a.attname::text, a.atttypid, a.atttypmod, \
           case when a.atttypid = 'bit'::regtype and a.atttypmod > 1 then 'bit(' || a.atttypmod || ')' \
                else format_type(a.atttypid, null) end, \
           format_type(a.atttypid, a.atttypmod), has_column_privilege(c.oid, a.attnum, 'SELECT') \
         from pg_attribute a join pg_class c on c.oid = a.attrelid \
           join pg_namespace n on n.oid = c.relnamespace \
         where {relation_filter} and a.attnum > 0 and not a.attisdropped \
         order by a.attrelid, a.attnum"
    );
    let key_sql = format!(
        "select i.indrelid, a.attname::text \
         from pg_index i join pg_class c on c.oid = i.indrelid \
           join pg_namespace n on n.oid = c.relnamespace \
           cross join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, ord) \
           join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
         where i.indisprimary and {relation_filter} \
         order by i.indrelid, k.ord"
    );
    let params: [Param<'_>; 3] = [(&schemas, Type::TEXT_ARRAY), (&exact_schemas, Type::TEXT_ARRAY), (&exact_names, Type::TEXT_ARRAY)];
    // One round trip for the six catalog reads.
    let mut answers = client
        .query_pipelined(&[
            (TYPES_SQL, &[]),
            (&rel_sql, &params),
            (&col_sql, &params),
            (&key_sql, &params),
            (OPERATOR_SCHEMAS_SQL, &[]),
            (TRANSACTION_IDS_SQL, &[]),
        ])
        .map_err(|e| classify_query(e, "reading pg_type, pg_class, pg_attribute and pg_index"))?
        .into_iter();
    let (type_rows, rel_rows, col_rows, key_rows, operator_rows, xid_rows) =
        match (answers.next(), answers.next(), answers.next(), answers.next(), answers.next(), answers.next()) {
            (Some(t), Some(r), Some(c), Some(k), Some(o), Some(x)) => (t, r, c, k, o, x),
            _ => return Err(Error::new(ErrorKind::Internal, "reading the catalog: an answer is missing")),
        };
    let transaction_ids = match xid_rows.first() {
        Some(row) => (get::<i64>(row, 0, "txid_current_snapshot")? as u64, get::<i64>(row, 1, "txid_current_snapshot")? as u64),
        None => return Err(Error::new(ErrorKind::Internal, "reading the current transaction ids: no row")),
    };
    let mut operator_schemas: HashMap<u32, Vec<String>> = HashMap::new();
    for row in &operator_rows {
        operator_schemas.entry(get(row, 0, "pg_opclass")?).or_default().push(get(row, 1, "pg_opclass")?);
    }
    let types = types_from_rows(&type_rows)?;
    let relations = relations_from_rows(&rel_rows, &col_rows, &key_rows)?;
    Ok(LiveCatalog { types, relations, operator_schemas, transaction_ids })
}

/// The relations of `pg_class` rows, with their readable columns (`pg_attribute`), the names of
/// those the role may not read, and their primary keys (`pg_index`), as [`load_catalog`] reads
/// them.
fn relations_from_rows(
    rel_rows: &[tokio_postgres::Row],
    col_rows: &[tokio_postgres::Row],
    key_rows: &[tokio_postgres::Row],
) -> Result<Vec<Relation>> {
    let mut relations = Vec::with_capacity(rel_rows.len());
    let mut index_of: HashMap<u32, usize> = HashMap::with_capacity(rel_rows.len());
    for row in rel_rows {
        let oid = get::<u32>(row, 0, "pg_class")?;
        index_of.insert(oid, relations.len());
        relations.push(Relation {
            oid,
            schema: get(row, 1, "pg_class")?,
            name: get(row, 2, "pg_class")?,
            relkind: get::<i8>(row, 3, "pg_class")? as u8,
            row_count: get::<f64>(row, 4, "pg_class")? as i64,
            has_children: get(row, 5, "pg_class")?,
            table_select: get(row, 6, "pg_class")?,
            server_version: get(row, 7, "pg_class")?,
            relfilenode: get::<Option<i64>>(row, 8, "pg_class")?.map(|f| f as u64),
            columns: Vec::new(),
            unreadable: Vec::new(),
            primary_key: Vec::new(),
        });
    }
    for row in col_rows {
        let Some(&i) = index_of.get(&get::<u32>(row, 0, "pg_attribute")?) else { continue };
        if !get::<bool>(row, 6, "pg_attribute")? {
            relations[i].unreadable.push(get(row, 1, "pg_attribute")?);
            continue;
        }
        relations[i].columns.push(Column {
            name: get(row, 1, "pg_attribute")?,
            typid: get(row, 2, "pg_attribute")?,
            typmod: get(row, 3, "pg_attribute")?,
            sql_datatype: get(row, 4, "pg_attribute")?,
            cast_type: get(row, 5, "pg_attribute")?,
        });
    }
    for row in key_rows {
        if let Some(&i) = index_of.get(&get::<u32>(row, 0, "pg_index")?) {
            relations[i].primary_key.push(get(row, 1, "pg_index")?);
        }
    }
    Ok(relations)
}

/// Reads column `i` of a catalog row; a type mismatch is a bug, not bad input.
fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a tokio_postgres::Row, i: usize, what: &str) -> Result<T> {
    row.try_get(i).map_err(|e| Error::new(ErrorKind::Internal, format!("reading {what} column {i}")).with_source(e))
}

/// The singer-io `tap_stream_id`: `{db}-{schema}-{table}`.
pub fn tap_stream_id(db: &str, schema: &str, table: &str) -> String {
    format!("{db}-{schema}-{table}")
}

/// The `[]` metadata key whose object says, per replication method, what that method sends
/// for this relation: read where a user chooses the method (a catalog editor, Meltano's
/// `meltano select --list`), not by the sync.
pub const REPLICATION_NOTES_KEY: &str = "tap-heroku-replication-notes";

/// What each replication method sends, one sentence each. Deletes are what users miss: XMIN and
/// INCREMENTAL never see them, and only FULL_TABLE's ACTIVATE_VERSION lets a target drop them.
const FULL_TABLE_NOTE: &str = "every row on every run; its ACTIVATE_VERSION lets the target drop rows deleted since the last run";
/// See [`FULL_TABLE_NOTE`].
const INCREMENTAL_NOTE: &str = "rows whose replication-key value is at or after the bookmark; needs a column every writer keeps current (such as updated_at); deleted rows are not seen";
/// See [`FULL_TABLE_NOTE`].
const XMIN_NOTE: &str = "rows inserted or updated since the last run, with no key column and no replication slot (SELECT only); deleted rows are not seen: use FULL_TABLE (or LOG_BASED where the server allows it) where the target must drop them";
/// See [`FULL_TABLE_NOTE`]; the sync refuses XMIN for a view (src/sync/plan.rs).
const XMIN_VIEW_NOTE: &str = "not available: a view has no stored rows whose xmin could be read; use FULL_TABLE or INCREMENTAL";

/// See [`FULL_TABLE_NOTE`].
const LOG_BASED_NOTE: &str = "inserts, updates and deletes (a record with the key and _sdc_deleted_at) in commit order, from a logical replication slot (pgoutput); needs wal_level = logical, a role with REPLICATION and a publication that holds the table (Heroku's classic plans allow no slots)";
/// See [`FULL_TABLE_NOTE`]; the sync refuses LOG_BASED for these (src/sync/log_based/setup.rs).
const LOG_BASED_UNAVAILABLE_NOTE: &str = "not available: only tables with storage of their own are published row by row (for a partitioned table, select and publish its partitions); use FULL_TABLE, INCREMENTAL or XMIN";

/// The [`REPLICATION_NOTES_KEY`] object for a relation of `relkind`.
fn replication_notes(relkind: u8) -> Value {
    let xmin = if relkind == b'v' { XMIN_VIEW_NOTE } else { XMIN_NOTE };
    let log_based = if relkind == b'r' { LOG_BASED_NOTE } else { LOG_BASED_UNAVAILABLE_NOTE };
    json!({"FULL_TABLE": FULL_TABLE_NOTE, "INCREMENTAL": INCREMENTAL_NOTE, "LOG_BASED": log_based, "XMIN": xmin})
}

/// Builds one catalog entry (schema with `definitions`, `[]` and per-column metadata).
pub fn catalog_entry(db: &str, relation: &Relation, types: &TypeMap, config: &Config) -> CatalogStream {
    let mut properties = Map::new();
    let mut metadata = Vec::with_capacity(relation.columns.len() + 1);
    let mut root = Map::new();
    let mapped: Vec<_> = relation.columns.iter().map(|c| column_type(types, c, config)).collect();
    // A key column we cannot encode would name a field no record has; leave it out.
    let keys: Vec<String> = relation
        .primary_key
        .iter()
        .filter(|k| relation.columns.iter().zip(&mapped).any(|(c, m)| &c.name == *k && m.is_some()))
        .cloned()
        .collect();
    root.insert("table-key-properties".into(), json!(keys));
    root.insert("schema-name".into(), json!(relation.schema));
    root.insert("database-name".into(), json!(db));
    root.insert("row-count".into(), json!(relation.row_count));
    root.insert("is-view".into(), json!(relation.is_view()));
    root.insert("selected-by-default".into(), json!(false));
    root.insert(REPLICATION_NOTES_KEY.into(), replication_notes(relation.relkind));
    metadata.push(MetadataEntry { breadcrumb: vec![], metadata: root });
    for (column, mapped) in relation.columns.iter().zip(mapped) {
        let is_key = keys.contains(&column.name);
        let mut meta = Map::new();
        meta.insert("sql-datatype".into(), json!(column.sql_datatype));
        let schema = match mapped {
            Some(mapped) => {
                meta.insert("inclusion".into(), json!(if is_key { "automatic" } else { "available" }));
                meta.insert("selected-by-default".into(), json!(true));
                Value::Object(column_schema(mapped.schema, is_key))
            }
            None => {
                meta.insert("inclusion".into(), json!("unsupported"));
                meta.insert("selected-by-default".into(), json!(false));
                json!({})
            }
        };
        properties.insert(column.name.clone(), schema);
        metadata.push(MetadataEntry { breadcrumb: vec!["properties".into(), column.name.clone()], metadata: meta });
    }
    let stream = if config.include_schemas_in_destination_stream_name {
        format!("{}_{}", relation.schema, relation.name)
    } else {
        relation.name.clone()
    };
    CatalogStream {
        table_name: relation.name.clone(),
        stream,
        metadata,
        tap_stream_id: tap_stream_id(db, &relation.schema, &relation.name),
        schema: json!({"type": "object", "properties": properties, "definitions": typemap::array_definitions()}),
    }
}

/// What a column maps to under this config (`None`: unsupported).
pub fn column_type(types: &TypeMap, column: &Column, config: &Config) -> Option<typemap::ColumnType> {
    let mut mapped = typemap::map_column(types, column.typid, column.typmod)?;
    if config.json_as_object {
        mapped = typemap::json_as_object(mapped);
    }
    if config.out_of_range_dates == typemap::OutOfRangeDates::Expanded {
        mapped = typemap::expanded_dates(mapped);
    }
    Some(mapped)
}

/// A column's schema with `"null"` prepended to its types unless it is a key column.
pub fn column_schema(mut schema: Map<String, Value>, is_key: bool) -> Map<String, Value> {
    if !is_key && let Some(Value::Array(types)) = schema.get_mut("type") {
        types.insert(0, json!("null"));
    }
    schema
}
