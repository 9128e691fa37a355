//! Singer state: `{"currently_syncing": id|null, "bookmarks": {tap_stream_id: {...}}}` in
//! singer-io tap-postgres's shape, so its state files resume here and ours there.
//!
//! Bookmark keys: `last_replication_method`, `version`, `replication_key`,
//! `replication_key_value` (INCREMENTAL), and ours `last_pk_fetched` (an object of primary key
//! column -> value, for resuming an interrupted FULL_TABLE sync). Unknown top-level keys and
//! bookmark keys are kept as they are. Pure: no I/O.

use serde_json::{Map, Value, json};

use crate::error::{Error, ErrorKind, Result, ResultExt};

/// The whole state document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The state object (always has a `bookmarks` object once touched).
    value: Map<String, Value>,
}

impl State {
    /// Parses and checks a state file's text. An empty file or `{}` is an empty state.
    ///
    /// # Errors
    /// `State` when the text is not JSON, not an object, or a bookmark is not an object, or its
    /// `version` is not a whole number.
    pub fn parse(text: &str) -> Result<State> {
        let hint = "Pass a state file written by tap-heroku (or tap-postgres): the value of a STATE message, e.g. {\"bookmarks\": {}}.";
        if text.trim().is_empty() {
            return Ok(State::default());
        }
        let value: Value =
            serde_json::from_str(text).context(ErrorKind::State, || "the state is not valid JSON").map_err(|e| e.with_hint(hint))?;
        let bad = |what: String| Error::new(ErrorKind::State, what).with_hint(hint);
        // Some runners store the whole STATE message; accept its value.
        let value = match value {
            Value::Object(mut m) if m.get("type").and_then(Value::as_str) == Some("STATE") && m.contains_key("value") => {
                m.remove("value").unwrap_or(Value::Null)
            }
            other => other,
        };
        let Value::Object(map) = value else {
            return Err(bad("the state is not a JSON object".into()));
        };
        match map.get("bookmarks") {
            None | Some(Value::Null) => {}
            Some(Value::Object(bookmarks)) => {
                for (id, bookmark) in bookmarks {
                    let problem = match bookmark {
                        Value::Object(b) => {
                            let is = |key: &str, ok: fn(&Value) -> bool| b.get(key).is_none_or(|v| v.is_null() || ok(v));
                            if !is("version", |v| v.as_i64().is_some()) {
                                Some("has a version that is not a whole number")
                            } else if !is("last_pk_fetched", Value::is_object) {
                                Some("has a last_pk_fetched that is not an object")
                            } else if !is("replication_key", Value::is_string) {
                                Some("has a replication_key that is not a string")
                            } else {
                                None
                            }
                        }
                        _ => Some("is not an object"),
                    };
                    if let Some(problem) = problem {
                        return Err(Error::new(ErrorKind::State, format!("the bookmark of stream {id} {problem}")).with_hint(format!(
                            "Fix the bookmark of {id} in the state file, or remove it to sync that stream from the beginning."
                        )));
                    }
                }
            }
            Some(_) => return Err(bad("the state's bookmarks is not an object".into())),
        }
        match map.get("currently_syncing") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(bad("the state's currently_syncing is not a string".into())),
        }
        Ok(State { value: map })
    }

    /// The stream being synced when the previous run stopped.
    pub fn currently_syncing(&self) -> Option<&str> {
        self.value.get("currently_syncing").and_then(Value::as_str)
    }

    /// Sets or clears `currently_syncing`.
    pub fn set_currently_syncing(&mut self, id: Option<&str>) {
        self.value.insert("currently_syncing".into(), id.map_or(Value::Null, |s| json!(s)));
    }

    /// The bookmark of `id`; falls back to pipelinewise's and Meltano's `{schema}-{table}` id,
    /// and moves such a bookmark to `id` so that our STATE continues it.
    pub fn take_bookmark(&mut self, id: &str, alias: &str) -> Map<String, Value> {
        let bookmarks = self.bookmarks_mut();
        if let Some(Value::Object(b)) = bookmarks.get(id) {
            return b.clone();
        }
        match bookmarks.remove(alias) {
            Some(Value::Object(b)) => {
                log::info!("stream {id}: resuming from the bookmark stored as {alias}");
                bookmarks.insert(id.to_string(), Value::Object(b.clone()));
                b
            }
            _ => Map::new(),
        }
    }

    /// Replaces the bookmark of `id`.
    pub fn set_bookmark(&mut self, id: &str, bookmark: Map<String, Value>) {
        self.bookmarks_mut().insert(id.to_string(), Value::Object(bookmark));
    }

    /// The `bookmarks` object, created when absent.
    fn bookmarks_mut(&mut self) -> &mut Map<String, Value> {
        let entry = self.value.entry("bookmarks").or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        entry.as_object_mut().expect("bookmarks is an object")
    }

    /// The state as the JSON object a STATE message carries.
    pub fn to_value(&self) -> Value {
        let mut value = self.value.clone();
        let bookmarks = value.entry("bookmarks").or_insert_with(|| Value::Object(Map::new()));
        if !bookmarks.is_object() {
            *bookmarks = Value::Object(Map::new());
        }
        Value::Object(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_postgres_state_parses_and_round_trips() {
        let text = r#"{"currently_syncing": "app-public-orders", "bookmarks": {
            "app-public-users": {"last_replication_method": "FULL_TABLE", "version": 1717243200123, "xmin": null},
            "app-public-orders": {"last_replication_method": "INCREMENTAL", "replication_key": "updated_at",
              "version": 1717243200456, "replication_key_value": "2024-06-01T11:59:58.123456+00:00"},
            "app-public-big": {"replication_key_value": 123456789012345678901234567890.123456789}}}"#;
        let mut s = State::parse(text).unwrap();
        assert_eq!(s.currently_syncing(), Some("app-public-orders"));
        let b = s.take_bookmark("app-public-orders", "public-orders");
        assert_eq!(b["replication_key"], json!("updated_at"));
        let round = s.to_value().to_string();
        assert!(round.contains("123456789012345678901234567890.123456789"), "numbers stay exact: {round}");
    }

    #[test]
    fn pipelinewise_ids_are_adopted() {
        let mut s = State::parse(r#"{"bookmarks": {"public-orders": {"replication_key_value": 5}}}"#).unwrap();
        let b = s.take_bookmark("app-public-orders", "public-orders");
        assert_eq!(b["replication_key_value"], json!(5));
        assert!(s.to_value()["bookmarks"].get("app-public-orders").is_some());
        assert!(s.to_value()["bookmarks"].get("public-orders").is_none());
    }

    #[test]
    fn empty_and_message_forms() {
        assert_eq!(State::parse("").unwrap(), State::default());
        assert_eq!(State::parse("{}").unwrap().to_value(), json!({"bookmarks": {}}));
        let s = State::parse(r#"{"type": "STATE", "value": {"bookmarks": {"a": {"version": 1}}}}"#).unwrap();
        assert_eq!(s.to_value()["bookmarks"]["a"]["version"], json!(1));
    }

    #[test]
    fn malformed_states_are_state_errors() {
        for text in [
            "not json",
            "[]",
            r#"{"bookmarks": []}"#,
            r#"{"bookmarks": {"a": 5}}"#,
            r#"{"bookmarks": {"a": {"version": "soon"}}}"#,
            r#"{"bookmarks": {"a": {"version": 1.5}}}"#,
            r#"{"bookmarks": {"a": {"last_pk_fetched": 3}}}"#,
            r#"{"currently_syncing": 4}"#,
        ] {
            let e = State::parse(text).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::State, "{text}");
            assert!(e.hint().is_some());
        }
    }

    #[test]
    fn currently_syncing_and_bookmarks_update() {
        let mut s = State::default();
        s.set_currently_syncing(Some("x"));
        let mut b = Map::new();
        b.insert("version".into(), json!(7));
        s.set_bookmark("x", b);
        assert_eq!(s.to_value(), json!({"currently_syncing": "x", "bookmarks": {"x": {"version": 7}}}));
        s.set_currently_syncing(None);
        assert_eq!(s.to_value()["currently_syncing"], Value::Null);
    }
}
