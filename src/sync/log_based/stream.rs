//! One LOG_BASED stream inside a peek ([`super::decoder`] routes each change to it): which
//! columns of the table's Relation message it sends, the transactions its bookmark says an
//! earlier run wrote, and its changes as RECORD lines (inserts and updates as the new row, an
//! unchanged TOASTed value left out, deletes as the key or old row with `_sdc_deleted_at`), with
//! the rows whose values the server converts held back in order.

use std::io::Write;

use super::DELETED_AT;
use super::convert::{Converted, Converter, OwnedDatum, PENDING_BYTES, PENDING_ROWS, PendingRow, needs_conversion};
use crate::encode::{self, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};
use crate::pgoutput::{self, Datum, OldKind};
use crate::query;
use crate::state::Bookmark;
use crate::sync::plan::{ColumnPlan, StreamPlan};
use crate::sync::sink::{RowSink, encode_column};
use crate::typemap::{Encoder, OutOfRangeDates};

/// The table as the last Relation message described it.
pub(super) struct RelationMap {
    /// For each column of the relation, its index in the plan's columns (`None`: not selected).
    columns: Vec<Option<usize>>,
    /// For each column of the relation, whether it is in the replica identity.
    key: Vec<bool>,
    /// For each column of the relation, its type's oid.
    types: Vec<u32>,
}

/// One stream's decoding state: its changes of the peek in order.
pub(super) struct StreamDecoder<'p> {
    /// The table's oid.
    pub(super) relid: u32,
    /// Destination stream name (for warnings).
    pub(super) stream: String,
    /// This stream's RECORD envelope.
    pub(super) envelope: RecordEnvelope,
    /// The plan's columns.
    pub(super) columns: &'p mut [ColumnPlan],
    /// The table's columns, once its Relation message arrived.
    pub(super) relation: Option<RelationMap>,
    /// The transaction under way was written by an earlier run.
    pub(super) skip: bool,
    /// The commit time of the transaction under way (microseconds since 2000-01-01).
    pub(super) commit_time: i64,
    /// The bookmark's `lsn` when the run began: transactions whose commit starts before it are
    /// skipped.
    pub(super) start_lsn: u64,
    /// The end of the last transaction written (the bookmark's `lsn`).
    pub(super) lsn: u64,
    /// Rows written since the last STATE.
    pub(super) rows_since_state: u64,
    /// Counts rows and logs progress and METRIC lines.
    pub(super) sink: RowSink,
    /// tap_stream_id.
    pub(super) id: String,
    /// The stream's bookmark.
    pub(super) bookmark: Bookmark,
    /// A TRUNCATE of the table was warned about in this run.
    pub(super) truncated: bool,
    /// Rows waiting for the server to convert some of their values, in order.
    pub(super) pending: Vec<PendingRow>,
    /// Bytes of the values in `pending`.
    pub(super) pending_bytes: usize,
}

impl<'p> StreamDecoder<'p> {
    /// A decoder of `plan`'s changes from `lsn` on (the bookmark's), into RECORDs of table
    /// version `version`.
    pub(super) fn new(plan: &'p mut StreamPlan, bookmark: Bookmark, (version, lsn): (i64, u64)) -> StreamDecoder<'p> {
        let sink = RowSink::new(plan, version, Vec::new());
        let time_extracted = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let envelope = RecordEnvelope::new(&plan.selected.stream, version, &time_extracted);
        StreamDecoder {
            relid: plan.relid,
            stream: plan.selected.stream.clone(),
            envelope,
            id: plan.selected.tap_stream_id.clone(),
            columns: &mut plan.columns,
            relation: None,
            skip: false,
            commit_time: 0,
            start_lsn: lsn,
            lsn,
            rows_since_state: 0,
            sink,
            bookmark,
            truncated: false,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// The mapping of a Relation message's columns to the plan's, checking their types.
    pub(super) fn map_relation(&self, relation: &pgoutput::Relation) -> Result<RelationMap> {
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let planned = self.columns.iter().position(|c| c.name == column.name);
            if let Some(i) = planned
                && self.columns[i].typid != column.type_oid
            {
                return Err(Error::new(
                    ErrorKind::Query,
                    format!("column {} changed type since the run was planned", query::quote_ident(&column.name)),
                )
                .with_hint("Run the sync again: it plans with the column's new type (and --discover, for the catalog to follow)."));
            }
            columns.push(planned);
        }
        Ok(RelationMap {
            columns,
            key: relation.columns.iter().map(|c| c.is_key).collect(),
            types: relation.columns.iter().map(|c| c.type_oid).collect(),
        })
    }

    /// The table's columns, or an error when a change came before its Relation message.
    fn relation(&self) -> Result<&RelationMap> {
        self.relation.as_ref().ok_or_else(no_relation)
    }

    /// Writes one RECORD: the new row, or (with `old`) a delete with the old key or row; a row
    /// with values the server must convert (and every row after it, to keep the order) waits.
    pub(super) fn write_row<W: Write>(
        &mut self,
        tuple: &[Datum<'_>],
        old: Option<OldKind>,
        converter: &mut Converter<'_>,
        writer: &mut MessageWriter<W>,
    ) -> Result<()> {
        let relation = self.relation()?;
        let convert = tuple.iter().zip(&relation.columns).any(|(datum, c)| c.is_some_and(|c| needs_conversion(&self.columns[c], datum)));
        if !convert && self.pending.is_empty() {
            return self.write_line(tuple, (old, self.commit_time), None, writer);
        }
        let values: Vec<OwnedDatum> = tuple.iter().map(OwnedDatum::of).collect();
        self.pending_bytes += values.iter().map(OwnedDatum::len).sum::<usize>();
        self.pending.push(PendingRow { values, old, commit_time: self.commit_time });
        if self.pending.len() >= PENDING_ROWS || self.pending_bytes >= PENDING_BYTES {
            self.flush(converter, writer)?;
        }
        Ok(())
    }

    /// Converts the waiting rows' values on the server and writes the rows, in order.
    pub(super) fn flush<W: Write>(&mut self, converter: &mut Converter<'_>, writer: &mut MessageWriter<W>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let relation = self.relation.as_ref().ok_or_else(no_relation)?;
        let converted = converter.convert((&relation.columns, &relation.types), self.columns, &pending)?;
        for (row, converted) in pending.iter().zip(&converted) {
            let tuple: Vec<Datum<'_>> = row.values.iter().map(OwnedDatum::datum).collect();
            self.write_line(&tuple, (row.old, row.commit_time), Some(converted), writer)?;
        }
        Ok(())
    }

    /// Encodes one row into a RECORD line and writes it.
    fn write_line<W: Write>(
        &mut self,
        tuple: &[Datum<'_>],
        (old, commit_time): (Option<OldKind>, i64),
        converted: Option<&Converted>,
        writer: &mut MessageWriter<W>,
    ) -> Result<()> {
        writer.write_record_with(|line| self.encode_row(tuple, (old, commit_time), converted, line))?;
        self.sink.row_count += 1;
        self.rows_since_state += 1;
        Ok(())
    }

    /// Appends the RECORD line of `tuple` to `line`, with the values the server converted.
    fn encode_row(
        &mut self,
        tuple: &[Datum<'_>],
        (old, commit_time): (Option<OldKind>, i64),
        converted: Option<&Converted>,
        line: &mut Vec<u8>,
    ) -> Result<()> {
        let Some(relation) = &self.relation else {
            return Err(no_relation());
        };
        if tuple.len() != relation.columns.len() {
            return Err(Error::new(
                ErrorKind::Query,
                format!("a change has {} columns and the table's Relation message {}", tuple.len(), relation.columns.len()),
            )
            .with_hint("Please report this with the server's version."));
        }
        line.extend_from_slice(&self.envelope.prefix);
        let mut first = true;
        for (i, datum) in tuple.iter().enumerate() {
            let Some(c) = relation.columns[i] else { continue };
            // A key tuple holds the identity's columns; its other columns are not values.
            if old == Some(OldKind::Key) && !relation.key[i] {
                continue;
            }
            let column = &mut self.columns[c];
            let bytes: Option<&[u8]> = match (converted.and_then(|v| v[i].as_ref()), datum) {
                (Some(value), _) => value.as_deref(),
                (None, Datum::UnchangedToast) => continue,
                (None, Datum::Null) => None,
                (None, datum) if needs_conversion(column, datum) => {
                    return Err(Error::new(ErrorKind::Internal, format!("a value of column {} was not converted", column.name)));
                }
                (None, Datum::Binary(bytes) | Datum::Text(bytes)) => Some(bytes),
            };
            if !first {
                line.push(b',');
            }
            first = false;
            line.extend_from_slice(&column.key);
            match bytes {
                None => line.extend_from_slice(b"null"),
                Some(bytes) => {
                    encode_column(column, bytes, line)?;
                }
            }
        }
        if !first {
            line.push(b',');
        }
        write_json_str(line, DELETED_AT);
        line.push(b':');
        if old.is_some() {
            let mut notes = 0;
            encode::encode_value(&Encoder::TimestampTz(OutOfRangeDates::Clamp), &commit_time.to_be_bytes(), line, &mut notes)
                .map_err(|e| Error::new(ErrorKind::Internal, "encoding a commit time").with_source(e))?;
        } else {
            line.extend_from_slice(b"null");
        }
        line.extend_from_slice(&self.envelope.suffix);
        Ok(())
    }
}

/// The error for a change that came before its table's Relation message.
fn no_relation() -> Error {
    Error::new(ErrorKind::Query, "a change of the table came before its Relation message")
        .with_hint("Please report this with the server's version.")
}
