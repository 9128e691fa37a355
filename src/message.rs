//! `MessageWriter<W: Write>`: the Singer envelopes (SCHEMA, RECORD, STATE, ACTIVATE_VERSION), one
//! JSON object per line, into one buffer that goes to the writer in large blocks: when it passes
//! [`STDOUT_BUFFER_BYTES`] after a whole line, and at each STATE.
//!
//! It knows the envelope, not how a value is encoded: `sync` encodes each record straight into
//! the buffer through [`MessageWriter::write_record_with`], which cuts a line off again when its
//! row fails, so only whole lines ever reach stdout.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use crate::encode::write_json_str;
use crate::error::{ErrorKind, Result, ResultExt};

/// Bytes buffered before stdout is written (also flushed at every STATE).
pub const STDOUT_BUFFER_BYTES: usize = 1 << 20;

/// Writes Singer messages.
pub struct MessageWriter<W: Write> {
    /// Whole lines not yet written.
    buf: Vec<u8>,
    /// stdout (or a `Vec` in tests).
    out: W,
}

/// The fixed parts of one stream's RECORD lines, rendered once per stream.
pub struct RecordEnvelope {
    /// `{"type":"RECORD","stream":"...","record":{`
    pub prefix: Vec<u8>,
    /// `},"version":V,"time_extracted":"..."}` and a newline.
    pub suffix: Vec<u8>,
}

impl RecordEnvelope {
    /// Renders the envelope of `stream` for `version` and `time_extracted`.
    pub fn new(stream: &str, version: i64, time_extracted: &str) -> RecordEnvelope {
        let mut prefix = b"{\"type\":\"RECORD\",\"stream\":".to_vec();
        write_json_str(&mut prefix, stream);
        prefix.extend_from_slice(b",\"record\":{");
        let mut suffix = format!("}},\"version\":{version},\"time_extracted\":").into_bytes();
        write_json_str(&mut suffix, time_extracted);
        suffix.extend_from_slice(b"}\n");
        RecordEnvelope { prefix, suffix }
    }
}

impl<W: Write> MessageWriter<W> {
    /// A writer over `inner` with a [`STDOUT_BUFFER_BYTES`] buffer.
    pub fn new(inner: W) -> MessageWriter<W> {
        MessageWriter { buf: Vec::with_capacity(STDOUT_BUFFER_BYTES + (64 << 10)), out: inner }
    }

    /// Writes a SCHEMA message.
    pub fn write_schema(&mut self, stream: &str, schema: &Value, key_properties: &[String], bookmark_properties: &[String]) -> Result<()> {
        self.write_message(&Message::Schema { stream, schema, key_properties, bookmark_properties })
    }

    /// Writes a STATE message and flushes, so the target sees every record before the state.
    pub fn write_state(&mut self, state: &Value) -> Result<()> {
        self.write_message(&Message::State { value: state })?;
        self.flush()
    }

    /// Writes an ACTIVATE_VERSION message.
    pub fn write_activate_version(&mut self, stream: &str, version: i64) -> Result<()> {
        self.write_message(&Message::ActivateVersion { stream, version })
    }

    /// Appends one complete line (newline included).
    pub fn write_line(&mut self, line: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(line);
        self.end_line()
    }

    /// Encodes one RECORD line straight into the buffer: `fill` appends one whole line (built
    /// with a [`RecordEnvelope`]). When it fails, what it appended is cut off again, so only
    /// whole lines are ever buffered, and its error is returned.
    ///
    /// # Errors
    /// `fill`'s error, or an output failure when the full buffer is written out.
    pub fn write_record_with(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        let line_start = self.buf.len();
        if let Err(e) = fill(&mut self.buf) {
            self.buf.truncate(line_start);
            return Err(e);
        }
        self.end_line()
    }

    /// Marks the end of a whole line; writes the buffer out once it is large.
    fn end_line(&mut self) -> Result<()> {
        if self.buf.len() >= STDOUT_BUFFER_BYTES { self.write_out() } else { Ok(()) }
    }

    /// Writes buffered messages to the underlying writer and flushes it.
    pub fn flush(&mut self) -> Result<()> {
        self.write_out()?;
        self.out.flush().context(ErrorKind::Output, || "writing to stdout").map_err(with_output_hint)
    }

    /// Writes the buffered whole lines out.
    fn write_out(&mut self) -> Result<()> {
        let result = self.out.write_all(&self.buf);
        self.buf.clear();
        result.context(ErrorKind::Output, || "writing to stdout").map_err(with_output_hint)
    }

    /// The underlying writer (tests read what was written).
    #[cfg(test)]
    pub fn into_inner(mut self) -> W
    where
        W: Default,
    {
        self.flush().expect("flush to a Vec succeeds");
        std::mem::take(&mut self.out)
    }

    /// Serializes `message` as one line.
    fn write_message(&mut self, message: &Message<'_>) -> Result<()> {
        let mut line = serde_json::to_vec(message).expect("messages serialize");
        line.push(b'\n');
        self.write_line(&line)
    }
}

impl<W: Write> Drop for MessageWriter<W> {
    /// Writes out what is buffered (only whole lines are ever buffered), as `BufWriter` does,
    /// so that a run ending in an error still delivers the messages before it.
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.out.write_all(&self.buf);
            let _ = self.out.flush();
        }
    }
}

/// The hint of every stdout failure.
fn with_output_hint(e: crate::error::Error) -> crate::error::Error {
    e.with_hint(
        "The program reading tap-heroku's output (the target) stopped or failed; check its log. The last STATE it received is resumable.",
    )
}

/// The non-RECORD messages, serialized with `type` first as singer-python writes them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum Message<'a> {
    /// SCHEMA.
    Schema {
        /// Destination stream name.
        stream: &'a str,
        /// JSON Schema of its records.
        schema: &'a Value,
        /// Primary key columns.
        key_properties: &'a [String],
        /// The replication key, if any.
        bookmark_properties: &'a [String],
    },
    /// STATE.
    State {
        /// The state document.
        value: &'a Value,
    },
    /// ACTIVATE_VERSION.
    ActivateVersion {
        /// Destination stream name.
        stream: &'a str,
        /// The table version to activate.
        version: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelopes_are_one_line_each() {
        let mut w = MessageWriter::new(Vec::new());
        w.write_schema("users", &json!({"type": "object", "properties": {}}), &["id".into()], &[]).unwrap();
        let env = RecordEnvelope::new("us\"ers", 17, "2024-06-01T12:00:00.000000Z");
        let mut line = env.prefix.clone();
        line.extend_from_slice(b"\"id\":1");
        line.extend_from_slice(&env.suffix);
        w.write_line(&line).unwrap();
        w.write_activate_version("users", 17).unwrap();
        w.write_state(&json!({"bookmarks": {}})).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert!(text.starts_with("{\"type\":\"SCHEMA\",\"stream\":\"users\""), "{text}");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["key_properties"], json!(["id"]));
        assert_eq!(lines[0]["bookmark_properties"], json!([]));
        assert_eq!(
            lines[1],
            json!({"type": "RECORD", "stream": "us\"ers", "record": {"id": 1}, "version": 17, "time_extracted": "2024-06-01T12:00:00.000000Z"})
        );
        assert_eq!(lines[2], json!({"type": "ACTIVATE_VERSION", "stream": "users", "version": 17}));
        assert_eq!(lines[3], json!({"type": "STATE", "value": {"bookmarks": {}}}));
    }

    #[test]
    fn a_failed_record_leaves_no_partial_line() {
        let mut w = MessageWriter::new(Vec::new());
        let env = RecordEnvelope::new("users", 1, "2024-06-01T12:00:00.000000Z");
        w.write_record_with(|line| {
            line.extend_from_slice(&env.prefix);
            line.extend_from_slice(b"\"id\":1");
            line.extend_from_slice(&env.suffix);
            Ok(())
        })
        .unwrap();
        let failed = w.write_record_with(|line| {
            line.extend_from_slice(&env.prefix);
            line.extend_from_slice(b"\"id\":");
            Err(crate::error::Error::new(ErrorKind::Encode, "encoding column id"))
        });
        assert_eq!(failed.unwrap_err().kind(), ErrorKind::Encode);
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with("}\n"), "{text}");
    }
}
