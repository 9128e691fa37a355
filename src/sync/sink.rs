//! The row sink: one stream's rows encoded straight into the output buffer as RECORD lines,
//! the values of the tracked columns (the key a resume point is made of) noted on the way, and
//! the progress and METRIC lines logged while it runs. One value is encoded by [`encode_column`],
//! which LOG_BASED's decoder calls too.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::types::{FromSql, Type};

use super::plan::{ColumnPlan, MAX_TRACKED_COLUMNS, StreamPlan};
use crate::encode::{self, NOTE_INFINITY_CLAMPED, NOTE_YEAR_CLAMPED, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};

/// How often a progress line is logged during a long stream.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How often singer-python's record_count METRIC is logged during a long stream.
const METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// Where the rows of one stream go and how the bookmark follows them.
pub struct RowSink {
    /// Envelope of this stream's RECORD lines.
    envelope: RecordEnvelope,
    /// Columns whose last value is tracked (replication key or primary key), indices into `columns`.
    tracked: Vec<usize>,
    /// The JSON text of the tracked columns' values in the last row where they were not null.
    last: Vec<Vec<u8>>,
    /// Rows written so far in this stream.
    pub row_count: u64,
    /// Rows written when the last STATE was (set by the pipeline after each `on_batch`).
    pub stated_row_count: u64,
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
    /// `time_extracted` of this stream's records.
    time_extracted: String,
    /// Estimated total rows.
    row_estimate: i64,
    /// Row columns before the first emitted one (a block-range read selects `ctid` first).
    first_column: usize,
}

/// A non-NULL wire value, borrowed from the row buffer, of any type.
pub struct Raw<'a>(pub &'a [u8]);

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
    pub fn new(plan: &StreamPlan, version: i64, tracked: Vec<usize>) -> RowSink {
        let time_extracted = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let now = Instant::now();
        RowSink {
            envelope: RecordEnvelope::new(&plan.selected.stream, version, &time_extracted),
            time_extracted,
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
            first_column: 0,
        }
    }

    /// Writes the records that follow with table version `version` (a read that starts over).
    pub fn set_version(&mut self, version: i64) {
        self.envelope = RecordEnvelope::new(&self.stream, version, &self.time_extracted);
    }

    /// The destination stream name, for log lines.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The sink reads emitted columns from row column `first_column` on (earlier ones are the
    /// pipeline's, like `ctid`).
    pub fn skip_columns(mut self, first_column: usize) -> RowSink {
        self.first_column = first_column;
        self
    }

    /// Encodes one row into a RECORD line and writes it.
    pub fn write_row<W: Write>(
        &mut self,
        row: &tokio_postgres::Row,
        columns: &mut [ColumnPlan],
        writer: &mut MessageWriter<W>,
    ) -> Result<()> {
        // The record is encoded straight into the writer's buffer; a failure cuts it off again,
        // so no partial line is ever written.
        writer.write_record_with(|line| self.encode_row(row, columns, line))?;
        self.row_count += 1;
        Ok(())
    }

    /// Appends one RECORD line for `row` to `line` and notes the tracked columns' values.
    fn encode_row(&mut self, row: &tokio_postgres::Row, columns: &mut [ColumnPlan], line: &mut Vec<u8>) -> Result<()> {
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
            let raw: Option<Raw<'_>> = row
                .try_get(self.first_column + i)
                .map_err(|e| Error::new(ErrorKind::Internal, format!("reading column {}", column.name)).with_source(e))?;
            let notes = match raw {
                None => {
                    line.extend_from_slice(b"null");
                    0
                }
                Some(Raw(bytes)) => encode_column(column, bytes, line)?,
            };
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
                    let raw: Option<Raw<'_>> = row.try_get(self.first_column + i).ok().flatten();
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
    pub fn last_value(&self, t: usize) -> Option<Value> {
        let text = self.last.get(t).filter(|v| !v.is_empty())?;
        serde_json::from_slice(text).ok()
    }

    /// Logs the final METRIC line and a summary: rows, seconds, rows/s.
    pub fn finish(&mut self, complete: bool) {
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
    pub fn report(&mut self, done: bool) {
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

/// Appends the JSON text of one value of `column` to `line` and adds the special values met to
/// the column's notes (for one warning per column); returns them (see `encode::NOTE_*`).
///
/// # Errors
/// A value that cannot be encoded faithfully: an `Encode` error naming the column.
#[inline]
pub(super) fn encode_column(column: &mut ColumnPlan, bytes: &[u8], line: &mut Vec<u8>) -> Result<u8> {
    let mut notes = 0;
    encode::encode_value(&column.encoder, bytes, line, &mut notes).map_err(|e| {
        Error::new(ErrorKind::Encode, format!("encoding column {} ({:?})", column.name, column.encoder))
            .with_source(e)
            .with_hint("This value could not be encoded faithfully; please report it, or deselect the column.")
    })?;
    column.notes |= notes;
    Ok(notes)
}
