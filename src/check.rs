//! `--test`: a connection test, as Singer SDK taps have one. It connects as a sync would and,
//! with `--catalog`, reads one row of each selected stream (its selected columns, so column
//! privileges are checked too); without a catalog it runs discovery and counts the streams.
//! Writes nothing on stdout (nothing a target could take for data), a summary on stderr, and
//! ends with exit 0 or the exit code of the failure.
//!
//! Meltano's `meltano config <extractor> test` does not call this: it runs an ordinary sync and
//! passes once a RECORD arrives (docs/meltano.md).

use std::collections::HashMap;

use crate::pg::Client;

use crate::catalog::{Catalog, select_streams};
use crate::config::Config;
use crate::connect::{Connector, classify_query};
use crate::discover;
use crate::error::{Error, ErrorKind, Result};
use crate::query;

/// Runs the test; `catalog` is `--catalog`'s, when given.
///
/// # Errors
/// A connection failure as `--discover` or a sync reports it; with a catalog, the kind of the
/// first stream that could not be read (every failing stream is logged first), or `Catalog`
/// when no stream is selected.
pub fn run(config: &Config, catalog: Option<&Catalog>) -> Result<()> {
    let connector = Connector::new(config)?;
    let Some(catalog) = catalog else {
        let discovered = discover::discover(config, &connector)?;
        let mut per_database: Vec<(String, usize)> = Vec::new();
        for stream in &discovered.streams {
            let db = stream.root_metadata().get("database-name").and_then(|v| v.as_str()).unwrap_or(&config.dbname).to_string();
            match per_database.iter_mut().find(|(d, _)| *d == db) {
                Some((_, n)) => *n += 1,
                None => per_database.push((db, 1)),
            }
        }
        let listing: Vec<String> = per_database.iter().map(|(db, n)| format!("{db} ({n})")).collect();
        log::info!(
            "test passed: connected to {} and discovered {} streams{}{}",
            config.endpoint(),
            discovered.streams.len(),
            if listing.is_empty() { "" } else { " in " },
            listing.join(", ")
        );
        return Ok(());
    };
    let selected = select_streams(catalog, config, None)?;
    if selected.is_empty() {
        return Err(Error::new(ErrorKind::Catalog, "no stream is selected in the catalog; nothing to test").with_hint(
            "Set \"selected\": true and a \"replication-method\" in the metadata entry of a stream whose breadcrumb is [], or run --test without --catalog to test the connection alone.",
        ));
    }
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut failures: Vec<(String, Error)> = Vec::new();
    for stream in &selected {
        let id = &stream.tap_stream_id;
        if !clients.contains_key(&stream.database) {
            // A connection failure is the same for every stream of the database: stop here.
            let client = connector.connect(&stream.database)?;
            clients.insert(stream.database.clone(), client);
        }
        let Some(client) = clients.get_mut(&stream.database) else {
            continue;
        };
        let sql = one_row_query(&stream.columns, &stream.schema_name, &stream.table_name);
        match client.query(&sql, &[]) {
            Ok(rows) if rows.is_empty() => log::info!("test: stream {id}: readable, the table is empty"),
            Ok(_) => log::info!("test: stream {id}: read one row of {} columns", stream.columns.len()),
            Err(e) => {
                let err = classify_query(e, &format!("testing stream {id}"));
                log::error!("{}", err.chain());
                if let Some(hint) = err.hint() {
                    log::error!("{hint}");
                }
                failures.push((id.clone(), err));
            }
        }
    }
    match failures.first() {
        None => {
            log::info!("test passed: connected to {} and read {} selected streams", config.endpoint(), selected.len());
            Ok(())
        }
        Some((_, first)) => {
            let ids: Vec<&str> = failures.iter().map(|(id, _)| id.as_str()).collect();
            Err(Error::new(
                first.kind(),
                format!("{} of {} selected streams could not be read: {}", failures.len(), selected.len(), ids.join(", ")),
            )
            .with_hint("The error lines above say why for each stream."))
        }
    }
}

/// `select <columns> from <table> limit 1`, every identifier quoted.
fn one_row_query(columns: &[String], schema: &str, table: &str) -> String {
    let list: Vec<String> = columns.iter().map(|c| query::quote_ident(c)).collect();
    // A stream whose columns are all deselected still proves the table is readable.
    let list = if list.is_empty() { "1".to_string() } else { list.join(", ") };
    format!("select {list} from {} limit 1", query::qualified_name(schema, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_query_quotes_every_identifier() {
        let columns = vec!["id".to_string(), "Odd \"name\"".to_string()];
        assert_eq!(one_row_query(&columns, "public", "My Table"), r#"select "id", "Odd ""name""" from "public"."My Table" limit 1"#);
        assert_eq!(one_row_query(&[], "s", "t"), r#"select 1 from "s"."t" limit 1"#);
    }
}
