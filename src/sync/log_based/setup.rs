//! LOG_BASED's plan-time side, before any output: the checks of a stream (server version,
//! `wal_level`, the role's REPLICATION, the publication and what it sends) and the slot (its name,
//! creating it, advancing it to what the state needs, the WAL it holds back). Reading the changes
//! is the parent module's; publications are never created or altered.

use tokio_postgres::types::{PgLsn, ToSql, Type};

use super::lsn_text;
use crate::catalog::SelectedStream;
use crate::config::{Config, default_slot_name};
use crate::connect::classify_query;
use crate::discover::Relation;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::query;
use crate::state::Bookmark;
use crate::sync::plan::StreamPlan;

/// pgoutput's `binary` option needs PostgreSQL 14.
const MIN_SERVER_VERSION: i32 = 140_000;
/// Bytes in a MiB.
const BYTES_PER_MB: u64 = 1 << 20;

/// The slot of `database`: the config's, or `tap_heroku_<dbname>`.
pub(super) fn slot_name(config: &Config, database: &str) -> String {
    config.logical_slot.clone().unwrap_or_else(|| default_slot_name(database))
}

/// The position the slot must keep for this bookmark: its `lsn`, or while the first read is
/// under way its `snapshot_lsn`.
fn needed_lsn(bookmark: &Bookmark) -> Option<u64> {
    bookmark.lsn.or(bookmark.snapshot_lsn)
}

/// The plan-time checks of one LOG_BASED stream, in one round trip; a server or role that is not
/// set up is a `Config` error naming the command that fixes it.
///
/// # Errors
/// As above; a relation other than a table is a `Catalog` error, an `lsn` that is not an
/// integer a `State` error.
pub(in crate::sync) fn check_stream(
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
    let publication = &config.logical_publication;
    let Settings { version, wal_level, replication, all_tables, in_publication, user, unsendable, published } =
        read_settings(client, publication, selected)?;
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

/// What [`check_stream`] checks, as the server reports it.
struct Settings {
    /// `server_version_num`.
    version: i32,
    /// `wal_level`.
    wal_level: String,
    /// The role may read a replication slot (REPLICATION or superuser).
    replication: bool,
    /// The publication's `puballtables`; `None`: it does not exist.
    all_tables: Option<bool>,
    /// The publication holds the table.
    in_publication: bool,
    /// `current_user`.
    user: String,
    /// Published columns (PostgreSQL 15's column lists: `attnames`) that are arrays of a type
    /// without a binary send function: array_send fails for their elements, so the server cannot
    /// decode a change of the table in binary.
    unsendable: Option<String>,
    /// The columns the publication sends (all of them unless it has a column list; `None` before
    /// PostgreSQL 15, which has no column lists).
    published: Option<Vec<String>>,
}

/// Reads the [`Settings`] of `publication` and `selected`'s table in one round trip.
fn read_settings(client: &mut Client, publication: &str, selected: &SelectedStream) -> Result<Settings> {
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
    let params: [(&(dyn ToSql + Sync), Type); 3] =
        [(&publication, Type::TEXT), (&selected.schema_name, Type::TEXT), (&selected.table_name, Type::TEXT)];
    let row = client
        .query_opt(sql, &params)
        .map_err(|e| classify_query(e, "checking the server's logical replication settings"))?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "checking logical replication: no row"))?;
    let internal = |e| Error::new(ErrorKind::Internal, "reading the logical replication settings").with_source(e);
    Ok(Settings {
        version: row.try_get(0).map_err(internal)?,
        wal_level: row.try_get(1).map_err(internal)?,
        replication: row.try_get(2).map_err(internal)?,
        all_tables: row.try_get(3).map_err(internal)?,
        in_publication: row.try_get(4).map_err(internal)?,
        user: row.try_get(5).map_err(internal)?,
        unsendable: row.try_get(6).map_err(internal)?,
        published: row.try_get(7).map_err(internal)?,
    })
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
pub(in crate::sync) fn prepare_slot(
    client: &mut Client,
    config: &Config,
    database: &str,
    plans: &[&StreamPlan],
) -> Result<Vec<(usize, Error)>> {
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

#[cfg(test)]
mod tests {
    use super::unpublished;

    /// Names as the catalog selects them.
    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unpublished_names_the_selected_columns_a_column_list_leaves_out() {
        let selected = names(&["id", "name", "note"]);
        assert_eq!(unpublished(&selected, None), None, "no column list sends every column");
        assert_eq!(unpublished(&selected, Some(&names(&["note", "id", "name", "extra"]))), None);
        assert_eq!(unpublished(&selected, Some(&names(&["id"]))).as_deref(), Some("name, note"));
        assert_eq!(unpublished(&selected, Some(&[])).as_deref(), Some("id, name, note"));
    }
}
