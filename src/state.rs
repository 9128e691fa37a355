//! Singer state: `{"currently_syncing": id|null, "bookmarks": {tap_stream_id: {...}}}` in
//! singer-io tap-postgres's shape, so its state files resume here and ours there.
//!
//! A stream's bookmark is a [`Bookmark`]: tap-postgres's keys `last_replication_method`,
//! `version`, `replication_key`, `replication_key_value` (INCREMENTAL) and `lsn` (LOG_BASED), and
//! ours: `last_pk_fetched` (an object of primary key column -> value, for resuming a FULL_TABLE
//! read in key order), `block_resume` (a [`BlockMark`], for resuming one in storage order),
//! `xmin_horizon` (XMIN) and `snapshot_lsn` (LOG_BASED's first read). Unknown top-level keys and
//! bookmark keys are kept as they are. Pure: no I/O.

use serde_json::{Map, Value, json};

use crate::error::{Error, ErrorKind, Result, ResultExt};

/// The mark after the last block: past every block a table can have.
pub const END_BLOCK: u64 = u32::MAX as u64;

/// The whole state document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The bookmarks object, by tap_stream_id, as read (a stream this run does not sync keeps
    /// its bookmark untouched).
    bookmarks: Map<String, Value>,
    /// Every other top-level key (`currently_syncing` and unknown ones).
    other: Map<String, Value>,
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
        let Value::Object(mut other) = value else {
            return Err(bad("the state is not a JSON object".into()));
        };
        let bookmarks = match other.remove("bookmarks") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(bookmarks)) => bookmarks,
            Some(_) => return Err(bad("the state's bookmarks is not an object".into())),
        };
        for (id, bookmark) in &bookmarks {
            let problem = match bookmark {
                Value::Object(b) => {
                    let bookmark = Bookmark::from_map(b.clone());
                    if bookmark.misfit("version") {
                        Some("has a version that is not a whole number")
                    } else if bookmark.misfit("last_pk_fetched") {
                        Some("has a last_pk_fetched that is not an object")
                    } else if bookmark.misfit("replication_key") {
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
        match other.get("currently_syncing") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(bad("the state's currently_syncing is not a string".into())),
        }
        Ok(State { bookmarks, other })
    }

    /// The stream being synced when the previous run stopped.
    pub fn currently_syncing(&self) -> Option<&str> {
        self.other.get("currently_syncing").and_then(Value::as_str)
    }

    /// Sets or clears `currently_syncing`.
    pub fn set_currently_syncing(&mut self, id: Option<&str>) {
        self.other.insert("currently_syncing".into(), id.map_or(Value::Null, |s| json!(s)));
    }

    /// The bookmark stored under `id`, if any (without the fallbacks of [`State::take_bookmark`]).
    pub fn bookmark(&self, id: &str) -> Option<Bookmark> {
        match self.bookmarks.get(id) {
            Some(Value::Object(b)) => Some(Bookmark::from_map(b.clone())),
            _ => None,
        }
    }

    /// The bookmark of `id`; falls back to pipelinewise's and Meltano's `{schema}-{table}` id,
    /// and moves such a bookmark to `id` so that our STATE continues it.
    pub fn take_bookmark(&mut self, id: &str, alias: &str) -> Bookmark {
        if let Some(bookmark) = self.bookmark(id) {
            return bookmark;
        }
        match self.bookmarks.remove(alias) {
            Some(Value::Object(b)) => {
                log::info!("stream {id}: resuming from the bookmark stored as {alias}");
                let bookmark = Bookmark::from_map(b.clone());
                self.bookmarks.insert(id.to_string(), Value::Object(b));
                bookmark
            }
            _ => Bookmark::default(),
        }
    }

    /// Replaces the bookmark of `id`.
    pub fn set_bookmark(&mut self, id: &str, bookmark: &Bookmark) {
        self.bookmarks.insert(id.to_string(), Value::Object(bookmark.to_map()));
    }

    /// The state as the JSON object a STATE message carries.
    pub fn to_value(&self) -> Value {
        let mut value = self.other.clone();
        value.insert("bookmarks".into(), Value::Object(self.bookmarks.clone()));
        Value::Object(value)
    }
}

/// One stream's bookmark: every replication method's resume point, typed. A key of these fields
/// whose value is null or not of the field's type is read as absent and kept in `extra` as it
/// was (so it is written back unchanged until the field is set; [`State::parse`] refuses the
/// misfits it always refused, planning those of the method it runs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bookmark {
    /// `last_replication_method`: the method that wrote the bookmark (`FULL_TABLE`, ...).
    pub last_replication_method: Option<String>,
    /// `version`: the table version (singer-io's milliseconds since the epoch).
    pub version: Option<i64>,
    /// `replication_key`: INCREMENTAL's key column.
    pub replication_key: Option<String>,
    /// `replication_key_value`: INCREMENTAL's key value of the last row sent, exact as read
    /// (serde_json's arbitrary precision keeps numbers' digits).
    pub replication_key_value: Option<Value>,
    /// `last_pk_fetched`: primary key column -> value of the last row sent by a key-order read.
    pub last_pk_fetched: Option<Map<String, Value>>,
    /// `block_resume`: where a storage-order read stands.
    pub block_resume: Option<BlockMark>,
    /// `xmin_horizon`: XMIN's epoch-qualified horizon.
    pub xmin_horizon: Option<u64>,
    /// `lsn`: LOG_BASED's WAL position; every transaction that commits before it was sent.
    pub lsn: Option<u64>,
    /// `snapshot_lsn`: LOG_BASED's position while its first table read is under way.
    pub snapshot_lsn: Option<u64>,
    /// Every other key as read (tap-postgres's `xmin`, keys of other taps), and the known keys
    /// whose value does not fit their field.
    pub extra: Map<String, Value>,
}

impl Bookmark {
    /// Reads a bookmark object; never fails (see the type's doc for what does not fit).
    pub fn from_map(mut extra: Map<String, Value>) -> Bookmark {
        Bookmark {
            last_replication_method: take(&mut extra, "last_replication_method", |v| v.as_str().map(str::to_string)),
            version: take(&mut extra, "version", Value::as_i64),
            replication_key: take(&mut extra, "replication_key", |v| v.as_str().map(str::to_string)),
            replication_key_value: take(&mut extra, "replication_key_value", |v| (!v.is_null()).then(|| v.clone())),
            last_pk_fetched: take(&mut extra, "last_pk_fetched", |v| v.as_object().cloned()),
            block_resume: take(&mut extra, "block_resume", BlockMark::from_value),
            xmin_horizon: take(&mut extra, "xmin_horizon", Value::as_u64),
            lsn: take(&mut extra, "lsn", Value::as_u64),
            snapshot_lsn: take(&mut extra, "snapshot_lsn", Value::as_u64),
            extra,
        }
    }

    /// The bookmark object: `extra`, and every field that is set.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = self.extra.clone();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        put("last_replication_method", self.last_replication_method.as_ref().map(|m| json!(m)));
        put("version", self.version.map(|v| json!(v)));
        put("replication_key", self.replication_key.as_ref().map(|k| json!(k)));
        put("replication_key_value", self.replication_key_value.clone());
        put("last_pk_fetched", self.last_pk_fetched.clone().map(Value::Object));
        put("block_resume", self.block_resume.map(BlockMark::to_value));
        put("xmin_horizon", self.xmin_horizon.map(|x| json!(x)));
        put("lsn", self.lsn.map(|l| json!(l)));
        put("snapshot_lsn", self.snapshot_lsn.map(|l| json!(l)));
        map
    }

    /// Whether the state gave `key` (one of the fields) a value other than null that does not
    /// fit its field (kept in `extra`).
    pub fn misfit(&self, key: &str) -> bool {
        self.extra.get(key).is_some_and(|v| !v.is_null())
    }

    /// Drops `last_pk_fetched`, also a null one kept as read.
    pub fn clear_last_pk_fetched(&mut self) {
        self.last_pk_fetched = None;
        self.extra.remove("last_pk_fetched");
    }

    /// Drops `block_resume`, also a null one kept as read.
    pub fn clear_block_resume(&mut self) {
        self.block_resume = None;
        self.extra.remove("block_resume");
    }

    /// Drops `snapshot_lsn`, also a null one kept as read.
    pub fn clear_snapshot_lsn(&mut self) {
        self.snapshot_lsn = None;
        self.extra.remove("snapshot_lsn");
    }
}

/// Moves `key` out of `extra` when `read` makes a field's value of it (not null, of the type).
fn take<T>(extra: &mut Map<String, Value>, key: &str, read: impl FnOnce(&Value) -> Option<T>) -> Option<T> {
    let value = extra.get(key).filter(|v| !v.is_null()).and_then(read)?;
    extra.remove(key);
    Some(value)
}

/// Where a block-range read stands: rows visible to the snapshot whose xmin horizon is
/// `snapshot_xmin` in blocks before `next_block` have been sent; the table's storage is
/// `relfilenode`. Kept in the bookmark as `block_resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMark {
    /// First block not yet read.
    pub next_block: u64,
    /// `pg_relation_filenode` of the table when it was read.
    pub relfilenode: u64,
    /// `txid_snapshot_xmin` (epoch-qualified) of that run's snapshot.
    pub snapshot_xmin: u64,
}

impl BlockMark {
    /// The bookmark form.
    pub fn to_value(self) -> Value {
        json!({"next_block": self.next_block, "relfilenode": self.relfilenode, "snapshot_xmin": self.snapshot_xmin})
    }

    /// Reads the bookmark form; `None` when it is not one.
    pub fn from_value(value: &Value) -> Option<BlockMark> {
        let field = |name: &str| value.get(name).and_then(Value::as_u64);
        // Block numbers are 32-bit; END_BLOCK is the mark after the last block.
        let next_block = field("next_block").filter(|&b| b <= END_BLOCK)?;
        Some(BlockMark { next_block, relfilenode: field("relfilenode")?, snapshot_xmin: field("snapshot_xmin")? })
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
        assert_eq!(b.replication_key.as_deref(), Some("updated_at"));
        let round = s.to_value().to_string();
        assert!(round.contains("123456789012345678901234567890.123456789"), "numbers stay exact: {round}");
    }

    #[test]
    fn pipelinewise_ids_are_adopted() {
        let mut s = State::parse(r#"{"bookmarks": {"public-orders": {"replication_key_value": 5}}}"#).unwrap();
        let b = s.take_bookmark("app-public-orders", "public-orders");
        assert_eq!(b.replication_key_value, Some(json!(5)));
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
        s.set_bookmark("x", &Bookmark { version: Some(7), ..Bookmark::default() });
        assert_eq!(s.to_value(), json!({"currently_syncing": "x", "bookmarks": {"x": {"version": 7}}}));
        s.set_currently_syncing(None);
        assert_eq!(s.to_value()["currently_syncing"], Value::Null);
    }

    /// Takes and sets back every bookmark of `text`'s state: the state must not change.
    fn assert_bookmarks_round_trip(text: &str) -> Vec<Bookmark> {
        let before = State::parse(text).unwrap();
        let mut after = before.clone();
        let ids: Vec<String> = before.bookmarks.keys().cloned().collect();
        let mut taken = Vec::new();
        for id in &ids {
            let bookmark = after.take_bookmark(id, "unused-alias");
            after.set_bookmark(id, &bookmark);
            taken.push(bookmark);
        }
        assert_eq!(after.to_value(), before.to_value(), "{text}");
        assert_eq!(after.to_value().to_string(), before.to_value().to_string(), "{text}");
        taken
    }

    #[test]
    fn tap_postgres_bookmarks_round_trip() {
        let taken = assert_bookmarks_round_trip(
            r#"{"currently_syncing": null, "bookmarks": {
            "app-public-users": {"last_replication_method": "FULL_TABLE", "version": 1717243200123, "xmin": null},
            "app-public-orders": {"last_replication_method": "INCREMENTAL", "replication_key": "updated_at",
              "version": 1717243200456, "replication_key_value": "2024-06-01T11:59:58.123456+00:00"},
            "app-public-events": {"last_replication_method": "LOG_BASED", "version": 1717243200789, "lsn": 108197216, "xmin": 5021},
            "app-public-big": {"replication_key_value": 123456789012345678901234567890.123456789}}}"#,
        );
        // Sorted by id: big, events, orders, users.
        assert_eq!(
            taken[0].replication_key_value.as_ref().map(Value::to_string).as_deref(),
            Some("123456789012345678901234567890.123456789")
        );
        assert_eq!((taken[1].lsn, taken[1].extra.get("xmin")), (Some(108_197_216), Some(&json!(5021))));
        assert_eq!(taken[2].version, Some(1_717_243_200_456));
        assert_eq!(taken[3].last_replication_method.as_deref(), Some("FULL_TABLE"));
        assert_eq!(taken[3].extra, Map::from_iter([("xmin".to_string(), Value::Null)]));
    }

    #[test]
    fn our_bookmarks_with_every_key_round_trip() {
        let taken = assert_bookmarks_round_trip(
            r#"{"bookmarks": {"a": {"last_replication_method": "LOG_BASED", "version": 1, "replication_key": "updated_at",
              "replication_key_value": 12.50, "last_pk_fetched": {"id": 1042, "region": "eu"},
              "block_resume": {"next_block": 4521, "relfilenode": 16388, "snapshot_xmin": 4294967300},
              "xmin_horizon": 4294967301, "lsn": 18446744073709551615, "snapshot_lsn": 7}}}"#,
        );
        let b = &taken[0];
        assert_eq!(b.extra, Map::new(), "every key is a field");
        assert_eq!(b.replication_key_value.as_ref().map(Value::to_string).as_deref(), Some("12.50"));
        assert_eq!(b.block_resume, Some(BlockMark { next_block: 4521, relfilenode: 16388, snapshot_xmin: 4_294_967_300 }));
        assert_eq!((b.xmin_horizon, b.lsn, b.snapshot_lsn), (Some(4_294_967_301), Some(u64::MAX), Some(7)));
        assert_eq!(b.last_pk_fetched.as_ref().map(Map::len), Some(2));
    }

    #[test]
    fn unknown_null_and_misfit_keys_are_kept() {
        let taken = assert_bookmarks_round_trip(
            r#"{"other_top_level": [1, 2], "bookmarks": {"a": {"last_replication_method": 3, "version": null,
              "replication_key": null, "replication_key_value": null, "last_pk_fetched": null,
              "block_resume": {"next_block": -1}, "xmin_horizon": "soon", "lsn": "0/16B3748", "snapshot_lsn": -5,
              "tap_x_cursor": {"page": 2}}}}"#,
        );
        let b = &taken[0];
        assert_eq!(b.to_map().len(), 10);
        assert_eq!(Bookmark { extra: b.extra.clone(), ..Bookmark::default() }, *b, "nothing is read as a field");
        for key in ["last_replication_method", "block_resume", "xmin_horizon", "lsn", "snapshot_lsn", "tap_x_cursor"] {
            assert!(b.misfit(key), "{key}");
        }
        for key in ["version", "replication_key", "replication_key_value", "last_pk_fetched"] {
            assert!(!b.misfit(key), "{key} is null");
        }
    }

    #[test]
    fn setting_and_clearing_fields_replace_what_was_read() {
        let mut s = State::parse(
            r#"{"bookmarks": {"a": {"block_resume": null, "snapshot_lsn": null, "last_pk_fetched": null, "lsn": "x", "z": 1}}}"#,
        )
        .unwrap();
        let mut b = s.take_bookmark("a", "");
        b.clear_block_resume();
        b.clear_snapshot_lsn();
        b.clear_last_pk_fetched();
        b.lsn = Some(9);
        b.version = Some(3);
        s.set_bookmark("a", &b);
        assert_eq!(s.to_value()["bookmarks"]["a"], json!({"lsn": 9, "version": 3, "z": 1}));
        b.block_resume = Some(BlockMark { next_block: 1, relfilenode: 2, snapshot_xmin: 3 });
        s.set_bookmark("a", &b);
        assert_eq!(s.to_value()["bookmarks"]["a"]["block_resume"], json!({"next_block": 1, "relfilenode": 2, "snapshot_xmin": 3}));
    }

    #[test]
    fn block_marks_round_trip_and_reject_other_shapes() {
        let mark = BlockMark { next_block: 12, relfilenode: 16388, snapshot_xmin: 4_294_967_300 };
        assert_eq!(BlockMark::from_value(&mark.to_value()), Some(mark));
        assert_eq!(BlockMark::from_value(&json!({"next_block": 1, "relfilenode": 2})), None);
        assert_eq!(BlockMark::from_value(&json!({"next_block": -1, "relfilenode": 2, "snapshot_xmin": 3})), None);
        assert_eq!(BlockMark::from_value(&json!("12")), None);
        let end = BlockMark { next_block: END_BLOCK, ..mark };
        assert_eq!(BlockMark::from_value(&end.to_value()), Some(end));
        assert_eq!(BlockMark::from_value(&json!({"next_block": END_BLOCK + 1, "relfilenode": 2, "snapshot_xmin": 3})), None);
    }
}
