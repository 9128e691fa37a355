//! The Singer catalog: its serde model (streams, breadcrumb metadata, JSON Schema), reading it
//! back, the replication methods a stream may name, and the selection rules that turn it into the
//! list of streams and columns to sync.
//!
//! Pure: no client, no stdout. Catalogs written by singer-io's tap-postgres, by Meltano (which
//! rewrites `selected`) and by our own `--discover` all read the same way. What the database
//! says now (a vanished column, a changed type) is checked later by `sync`, not here.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result, ResultExt};

/// The replication methods a stream may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMethod {
    /// Whole table every run (`SELECT cols FROM t`).
    FullTable,
    /// Key-based: `WHERE key >= bookmark ORDER BY key`.
    Incremental,
    /// Change capture by transaction id: rows whose `xmin` is newer than the last run's
    /// snapshot ([`crate::sync`]'s xmin method).
    Xmin,
    /// Logical replication (not implemented yet).
    LogBased,
}

impl ReplicationMethod {
    /// Parses Singer's spelling (upper case, as catalogs and configs write it).
    pub fn parse(text: &str) -> Option<ReplicationMethod> {
        Some(match text {
            "FULL_TABLE" => ReplicationMethod::FullTable,
            "INCREMENTAL" => ReplicationMethod::Incremental,
            "XMIN" => ReplicationMethod::Xmin,
            "LOG_BASED" => ReplicationMethod::LogBased,
            _ => return None,
        })
    }

    /// Singer's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMethod::FullTable => "FULL_TABLE",
            ReplicationMethod::Incremental => "INCREMENTAL",
            ReplicationMethod::Xmin => "XMIN",
            ReplicationMethod::LogBased => "LOG_BASED",
        }
    }
}

/// A whole catalog: `{"streams": [...]}`.
#[derive(Debug, Serialize)]
pub struct Catalog {
    /// The streams, in file order (discovery sorts them by `tap_stream_id`).
    pub streams: Vec<CatalogStream>,
}

/// One catalog entry, with singer-io's keys in singer-io's order.
#[derive(Debug, Serialize)]
pub struct CatalogStream {
    /// The table's own name.
    pub table_name: String,
    /// The destination stream name (`table`, or `schema_table`).
    pub stream: String,
    /// Breadcrumb metadata, `[]` first, then one entry per column.
    pub metadata: Vec<MetadataEntry>,
    /// `{db}-{schema}-{table}`.
    pub tap_stream_id: String,
    /// JSON Schema of a record, with singer-io's `definitions`.
    pub schema: Value,
}

/// One `{"breadcrumb": [...], "metadata": {...}}` entry.
#[derive(Debug, Serialize)]
pub struct MetadataEntry {
    /// `[]` for the stream, `["properties", column]` for a column.
    pub breadcrumb: Vec<String>,
    /// The keys at that breadcrumb.
    pub metadata: Map<String, Value>,
}

impl Catalog {
    /// Parses catalog JSON text.
    ///
    /// # Errors
    /// `Catalog` when the text is not JSON or not shaped like a Singer catalog.
    pub fn parse(text: &str) -> Result<Catalog> {
        let hint = "Pass a catalog written by `tap-heroku --discover` (or singer-io's tap-postgres), with selected streams.";
        let value: Value =
            serde_json::from_str(text).context(ErrorKind::Catalog, || "the catalog is not valid JSON").map_err(|e| e.with_hint(hint))?;
        let bad = |what: String| Error::new(ErrorKind::Catalog, what).with_hint(hint);
        let streams = value.get("streams").and_then(Value::as_array).ok_or_else(|| bad("the catalog has no \"streams\" array".into()))?;
        let mut out = Vec::with_capacity(streams.len());
        for (i, entry) in streams.iter().enumerate() {
            let text_field = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
            let tap_stream_id =
                text_field("tap_stream_id").ok_or_else(|| bad(format!("catalog stream #{} has no tap_stream_id", i + 1)))?;
            let table_name = text_field("table_name").or_else(|| text_field("stream")).unwrap_or_default();
            let stream = text_field("stream").unwrap_or_else(|| table_name.clone());
            let mut metadata = Vec::new();
            match entry.get("metadata") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        let breadcrumb = item
                            .get("breadcrumb")
                            .and_then(Value::as_array)
                            .and_then(|b| b.iter().map(|p| p.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                            .ok_or_else(|| bad(format!("stream {tap_stream_id}: a metadata entry has no breadcrumb list of strings")))?;
                        let map = match item.get("metadata") {
                            Some(Value::Object(m)) => m.clone(),
                            None | Some(Value::Null) => Map::new(),
                            Some(_) => return Err(bad(format!("stream {tap_stream_id}: metadata at {breadcrumb:?} is not an object"))),
                        };
                        metadata.push(MetadataEntry { breadcrumb, metadata: map });
                    }
                }
                Some(_) => return Err(bad(format!("stream {tap_stream_id}: metadata is not a list"))),
            }
            let schema = entry.get("schema").cloned().unwrap_or(Value::Null);
            out.push(CatalogStream { table_name, stream, metadata, tap_stream_id, schema });
        }
        Ok(Catalog { streams: out })
    }

    /// The catalog as pretty JSON text, as `--discover` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("catalog serializes")
    }
}

impl CatalogStream {
    /// The `[]` metadata (empty when absent).
    pub fn root_metadata(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.metadata.iter().find(|m| m.breadcrumb.is_empty()).map(|m| &m.metadata).unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    /// Column names with their metadata, in catalog order; columns that appear only in the
    /// schema's `properties` come after, with empty metadata.
    /// A column with several metadata entries is listed once, with its first entry.
    pub fn columns(&self) -> Vec<(&str, Option<&Map<String, Value>>)> {
        let mut out: Vec<(&str, Option<&Map<String, Value>>)> = Vec::new();
        for m in self.metadata.iter().filter(|m| m.breadcrumb.len() == 2 && m.breadcrumb[0] == "properties") {
            if !out.iter().any(|(n, _)| *n == m.breadcrumb[1]) {
                out.push((m.breadcrumb[1].as_str(), Some(&m.metadata)));
            }
        }
        if let Some(props) = self.schema.get("properties").and_then(Value::as_object) {
            for name in props.keys() {
                if !out.iter().any(|(n, _)| *n == name.as_str()) {
                    out.push((name.as_str(), None));
                }
            }
        }
        out
    }
}

/// Reads a Singer boolean: `true`/`false` or the strings `"true"`/`"false"`.
fn truthy(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A list of strings from metadata (`table-key-properties`, `view-key-properties`).
fn string_list(value: Option<&Value>) -> Option<Vec<String>> {
    value?.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// One stream to sync, as the catalog describes it, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectedStream {
    /// `{db}-{schema}-{table}` as in the catalog.
    pub tap_stream_id: String,
    /// Destination stream name for SCHEMA/RECORD/ACTIVATE_VERSION.
    pub stream: String,
    /// `database-name`.
    pub database: String,
    /// `schema-name`.
    pub schema_name: String,
    /// `table_name`.
    pub table_name: String,
    /// `is-view` (views and materialized views).
    pub is_view: bool,
    /// `table-key-properties`, or `view-key-properties` for views.
    pub key_properties: Vec<String>,
    /// FULL_TABLE or INCREMENTAL.
    pub method: ReplicationMethod,
    /// The INCREMENTAL key column.
    pub replication_key: Option<String>,
    /// Columns to emit, in catalog order (keys and the replication key always included).
    pub columns: Vec<String>,
    /// `sql-datatype` per column as the catalog recorded it, to spot retyped columns.
    pub sql_datatypes: HashMap<String, String>,
}

/// Turns the catalog into the streams to sync, in catalog order, with `currently_syncing`
/// (from state) moved to the front so an interrupted stream finishes first.
///
/// # Errors
/// `Catalog`, before anything is synced, when a selected stream has no usable replication
/// method or key, names an INCREMENTAL key that is not one of its columns, lacks the metadata a
/// sync needs, or shares its destination stream name with another selected stream.
pub fn select_streams(catalog: &Catalog, config: &Config, currently_syncing: Option<&str>) -> Result<Vec<SelectedStream>> {
    let mut selected = Vec::new();
    for entry in &catalog.streams {
        let root = entry.root_metadata();
        if truthy(root.get("selected")) != Some(true) {
            continue;
        }
        let id = &entry.tap_stream_id;
        let bad = |what: String, hint: &str| Error::new(ErrorKind::Catalog, format!("stream {id}: {what}")).with_hint(hint.to_string());
        let schema_name = root
            .get("schema-name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no schema-name metadata".into(), "Run --discover again and select the stream in the new catalog."))?
            .to_string();
        let database = root.get("database-name").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| config.dbname.clone());
        if entry.table_name.is_empty() {
            return Err(bad("has no table_name".into(), "Run --discover again and select the stream in the new catalog."));
        }
        let is_view = truthy(root.get("is-view")).unwrap_or(false);
        let method = replication_method(root, config, &bad)?;
        let catalog_columns = entry.columns();
        let unsupported = |name: &str| {
            catalog_columns
                .iter()
                .any(|(n, m)| *n == name && m.and_then(|m| m.get("inclusion")).and_then(Value::as_str) == Some("unsupported"))
        };
        let mut key_properties = if is_view {
            string_list(root.get("view-key-properties")).unwrap_or_default()
        } else {
            string_list(root.get("table-key-properties")).unwrap_or_default()
        };
        key_properties.retain(|k| {
            let keep = !unsupported(k);
            if !keep {
                log::warn!("stream {id}: key property {k} has a type tap-heroku cannot encode; it is left out of key_properties");
            }
            keep
        });
        let replication_key = replication_key(method, root, &catalog_columns, &bad)?;
        for key in &key_properties {
            if !catalog_columns.iter().any(|(n, _)| n == key) {
                return Err(bad(
                    format!("key property {key} is not a column of the stream"),
                    "Fix view-key-properties (or table-key-properties) to name existing columns.",
                ));
            }
        }
        let (columns, sql_datatypes) = selected_columns(&catalog_columns, &key_properties, replication_key.as_deref());
        // A `stream` that differs from the table name was chosen on purpose (renamed by the
        // user, or discovered with schema names) and wins.
        let stream = if entry.stream != entry.table_name || !config.include_schemas_in_destination_stream_name {
            entry.stream.clone()
        } else {
            format!("{}_{}", schema_name, entry.table_name)
        };
        selected.push(SelectedStream {
            tap_stream_id: id.clone(),
            stream,
            database,
            schema_name,
            table_name: entry.table_name.clone(),
            is_view,
            key_properties,
            method,
            replication_key,
            columns,
            sql_datatypes,
        });
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for s in &selected {
        if let Some(other) = seen.insert(s.stream.as_str(), s.tap_stream_id.as_str()) {
            return Err(Error::new(
                ErrorKind::Catalog,
                format!("streams {other} and {} are both selected with the destination stream name {}", s.tap_stream_id, s.stream),
            )
            .with_hint("Their rows would mix in one target table: change the \"stream\" value of one of them in the catalog, or set include_schemas_in_destination_stream_name to true."));
        }
    }
    if let Some(current) = currently_syncing
        && let Some(pos) = selected.iter().position(|s| s.tap_stream_id == current)
    {
        let s = selected.remove(pos);
        selected.insert(0, s);
    }
    Ok(selected)
}

/// The stream's replication method: its `replication-method` metadata, or the config's
/// `default_replication_method` when it names none.
fn replication_method(root: &Map<String, Value>, config: &Config, bad: &impl Fn(String, &str) -> Error) -> Result<ReplicationMethod> {
    match root.get("replication-method") {
        Some(Value::String(s)) if !s.is_empty() => ReplicationMethod::parse(s).ok_or_else(|| {
            bad(
                format!("replication-method {s:?} is not FULL_TABLE, INCREMENTAL, XMIN or LOG_BASED"),
                "Set \"replication-method\" to \"FULL_TABLE\", \"INCREMENTAL\", \"XMIN\" or \"LOG_BASED\" in the stream's [] metadata.",
            )
        }),
        None | Some(Value::Null) | Some(Value::String(_)) => config.default_replication_method.ok_or_else(|| {
            bad(
                "has no replication-method".into(),
                "Set \"replication-method\" in the stream's [] metadata, or default_replication_method in the config.",
            )
        }),
        Some(_) => {
            Err(bad("replication-method is not a string".into(), "Set \"replication-method\" to \"FULL_TABLE\" or \"INCREMENTAL\"."))
        }
    }
}

/// An INCREMENTAL stream's replication key: named in its metadata, one of its columns, of a
/// type that can be encoded; `None` for other methods.
fn replication_key(
    method: ReplicationMethod,
    root: &Map<String, Value>,
    catalog_columns: &[(&str, Option<&Map<String, Value>>)],
    bad: &impl Fn(String, &str) -> Error,
) -> Result<Option<String>> {
    match method {
        ReplicationMethod::Incremental => {
            let key = root.get("replication-key").and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or_else(|| {
                bad(
                    "is INCREMENTAL but has no replication-key".into(),
                    "Set \"replication-key\" to a column name in the stream's [] metadata, or use FULL_TABLE.",
                )
            })?;
            match catalog_columns.iter().find(|(n, _)| *n == key) {
                None => {
                    return Err(bad(
                        format!("replication-key {key} is not a column of the stream"),
                        "Set \"replication-key\" to one of the stream's columns.",
                    ));
                }
                Some((_, Some(m))) if m.get("inclusion").and_then(Value::as_str) == Some("unsupported") => {
                    return Err(bad(
                        format!("replication-key {key} has a type tap-heroku cannot encode"),
                        "Choose a replication key of a supported type (timestamp, integer, text, ...).",
                    ));
                }
                _ => {}
            }
            Ok(Some(key.to_string()))
        }
        _ => Ok(None),
    }
}

/// The columns to sync (selected, or automatic, or a key) with their discovered `sql-datatype`.
fn selected_columns(
    catalog_columns: &[(&str, Option<&Map<String, Value>>)],
    key_properties: &[String],
    replication_key: Option<&str>,
) -> (Vec<String>, HashMap<String, String>) {
    let mut columns = Vec::new();
    let mut sql_datatypes = HashMap::new();
    for (name, meta) in catalog_columns {
        let forced = key_properties.iter().any(|k| k == name) || replication_key == Some(*name);
        let meta_get = |k: &str| meta.and_then(|m| m.get(k));
        let inclusion = meta_get("inclusion").and_then(Value::as_str);
        let wanted = match inclusion {
            Some("unsupported") => false,
            Some("automatic") => true,
            _ => match truthy(meta_get("selected")) {
                Some(v) => v,
                None => truthy(meta_get("selected-by-default")).unwrap_or(true),
            },
        };
        if wanted || (forced && inclusion != Some("unsupported")) {
            columns.push(name.to_string());
            if let Some(t) = meta_get("sql-datatype").and_then(Value::as_str) {
                sql_datatypes.insert(name.to_string(), t.to_string());
            }
        }
    }
    (columns, sql_datatypes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A config with the given default method.
    fn config(default: Option<&str>, include_schemas: bool) -> Config {
        let mut map = json!({"host": "h", "user": "u", "dbname": "app"});
        if let Some(d) = default {
            map["default_replication_method"] = json!(d);
        }
        map["include_schemas_in_destination_stream_name"] = json!(include_schemas);
        Config::from_map(map.as_object().unwrap(), None).unwrap()
    }

    /// A singer-io style entry for `app.public.<table>` with the given root extras and columns.
    fn entry(table: &str, root: Value, cols: Value) -> Value {
        let mut metadata = vec![json!({"breadcrumb": [], "metadata": root})];
        for (name, meta) in cols.as_object().unwrap() {
            metadata.push(json!({"breadcrumb": ["properties", name], "metadata": meta}));
        }
        json!({"table_name": table, "stream": table, "tap_stream_id": format!("app-public-{table}"),
               "schema": {"type": "object", "properties": {}}, "metadata": metadata})
    }

    /// The usual columns: id (key), name, updated_at, blob (unsupported).
    fn cols() -> Value {
        json!({
            "id": {"sql-datatype": "integer", "inclusion": "automatic", "selected-by-default": true},
            "name": {"sql-datatype": "text", "inclusion": "available", "selected-by-default": true},
            "updated_at": {"sql-datatype": "timestamp with time zone", "inclusion": "available", "selected-by-default": true},
            "blob": {"sql-datatype": "pair", "inclusion": "unsupported", "selected-by-default": false}
        })
    }

    /// Parses a catalog from entries.
    fn catalog(entries: Vec<Value>) -> Catalog {
        Catalog::parse(&json!({"streams": entries}).to_string()).unwrap()
    }

    #[test]
    fn only_selected_streams_and_columns() {
        let mut c = cols();
        c["name"]["selected"] = json!(false);
        let cat = catalog(vec![
            entry(
                "a",
                json!({"selected": true, "replication-method": "FULL_TABLE", "schema-name": "public", "database-name": "app", "table-key-properties": ["id"]}),
                c,
            ),
            entry("b", json!({"schema-name": "public", "database-name": "app"}), cols()),
            entry("c", json!({"selected": "false", "schema-name": "public"}), cols()),
        ]);
        let s = select_streams(&cat, &config(None, false), None).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].columns, vec!["id", "updated_at"]);
        assert_eq!(s[0].key_properties, vec!["id"]);
        assert_eq!(s[0].method, ReplicationMethod::FullTable);
    }

    #[test]
    fn meltano_style_selection_and_defaults() {
        let mut c = cols();
        c["name"] = json!({"inclusion": "available", "selected": true});
        c["updated_at"] = json!({"inclusion": "available"});
        c["id"]["selected"] = json!(false);
        let cat = catalog(vec![entry("a", json!({"selected": "true", "schema-name": "public", "table-key-properties": ["id"]}), c)]);
        let s = select_streams(&cat, &config(Some("FULL_TABLE"), true), None).unwrap();
        assert_eq!(s[0].columns, vec!["id", "name", "updated_at"]);
        assert_eq!(s[0].database, "app");
        assert_eq!(s[0].stream, "public_a");
    }

    #[test]
    fn incremental_key_is_always_emitted() {
        let mut c = cols();
        c["updated_at"]["selected"] = json!(false);
        let cat = catalog(vec![entry(
            "a",
            json!({"selected": true, "replication-method": "INCREMENTAL", "replication-key": "updated_at", "schema-name": "public"}),
            c,
        )]);
        let s = select_streams(&cat, &config(None, false), None).unwrap();
        assert_eq!(s[0].replication_key.as_deref(), Some("updated_at"));
        assert!(s[0].columns.contains(&"updated_at".to_string()));
    }

    #[test]
    fn views_take_view_key_properties() {
        let mut c = cols();
        c["id"]["inclusion"] = json!("available");
        c["id"]["selected"] = json!(false);
        let cat = catalog(vec![entry(
            "v",
            json!({"selected": true, "replication-method": "FULL_TABLE", "schema-name": "public", "is-view": true, "view-key-properties": ["id"], "table-key-properties": []}),
            c,
        )]);
        let s = select_streams(&cat, &config(None, false), None).unwrap();
        assert_eq!(s[0].key_properties, vec!["id"]);
        assert_eq!(s[0].columns[0], "id");
    }

    #[test]
    fn invalid_selections_fail_with_the_stream_named() {
        let cases = [
            (json!({"selected": true, "schema-name": "public"}), "has no replication-method"),
            (
                json!({"selected": true, "schema-name": "public", "replication-method": "SOMETIMES"}),
                "is not FULL_TABLE, INCREMENTAL, XMIN or LOG_BASED",
            ),
            (json!({"selected": true, "schema-name": "public", "replication-method": "INCREMENTAL"}), "has no replication-key"),
            (
                json!({"selected": true, "schema-name": "public", "replication-method": "INCREMENTAL", "replication-key": "nope"}),
                "replication-key nope is not a column",
            ),
            (
                json!({"selected": true, "schema-name": "public", "replication-method": "INCREMENTAL", "replication-key": "blob"}),
                "cannot encode",
            ),
            (json!({"selected": true, "replication-method": "FULL_TABLE"}), "has no schema-name"),
            (
                json!({"selected": true, "schema-name": "public", "replication-method": "FULL_TABLE", "is-view": true, "view-key-properties": ["nope"]}),
                "key property nope",
            ),
        ];
        for (root, want) in cases {
            let cat = catalog(vec![entry("a", root.clone(), cols())]);
            let err = select_streams(&cat, &config(None, false), None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Catalog);
            assert!(err.context().contains("app-public-a") && err.context().contains(want), "{root}: {}", err.context());
            assert!(err.hint().is_some());
        }
    }

    #[test]
    fn same_destination_name_is_refused() {
        let root = json!({"selected": true, "schema-name": "public", "replication-method": "FULL_TABLE"});
        let a = entry("users", root.clone(), cols());
        let mut b = entry("users", root, cols());
        b["tap_stream_id"] = json!("app-other-users");
        let cat = catalog(vec![a, b]);
        let err = select_streams(&cat, &config(None, false), None).unwrap_err();
        assert!(err.context().contains("destination stream name users"));
        assert!(select_streams(&cat, &config(None, true), None).is_err(), "both schemas are public here");
    }

    #[test]
    fn currently_syncing_goes_first() {
        let root = json!({"selected": true, "schema-name": "public", "replication-method": "FULL_TABLE"});
        let cat = catalog(vec![entry("a", root.clone(), cols()), entry("b", root, cols())]);
        let s = select_streams(&cat, &config(None, false), Some("app-public-b")).unwrap();
        assert_eq!(s[0].table_name, "b");
    }

    #[test]
    fn malformed_catalogs_are_catalog_errors() {
        for text in [
            "not json",
            "{}",
            r#"{"streams": [{"stream": "x"}]}"#,
            r#"{"streams": [{"tap_stream_id": "x", "metadata": [{"metadata": {}}]}]}"#,
        ] {
            assert_eq!(Catalog::parse(text).unwrap_err().kind(), ErrorKind::Catalog, "{text}");
        }
    }
}
