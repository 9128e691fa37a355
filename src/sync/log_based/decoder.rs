//! The decoder of the LOG_BASED streams of one database: the pgoutput messages of one peek, in
//! order, routed by relation oid to their stream's [`StreamDecoder`] and written as RECORD lines
//! (inserts and updates as the new row, deletes as the old key or row with `_sdc_deleted_at`).
//! Each stream skips the transactions its own bookmark says an earlier run wrote; one STATE (all
//! bookmarks) follows the commit after which a stream wrote `itersize` rows since the last one;
//! the run stops at the deadline or on a signal. Rows with values the server must convert wait in
//! order for the one [`Converter`], of one stream at a time: a row of another stream writes them
//! first, so the RECORDs of all streams keep the WAL's order. Reading the slot is the parent module's.

use std::io::Write;
use std::time::Instant;

use super::DELETED_AT;
use super::convert::{Converted, Converter, OwnedDatum, PENDING_BYTES, PENDING_ROWS, PendingRow, needs_conversion};
use crate::encode::{self, write_json_str};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{MessageWriter, RecordEnvelope};
use crate::pgoutput::{self, Datum, Message, OldKind};
use crate::query;
use crate::signals;
use crate::state::{Bookmark, State};
use crate::sync::Outcome;
use crate::sync::pipeline::Context;
use crate::sync::plan::{ColumnPlan, StreamPlan};
use crate::sync::sink::{RowSink, encode_column};
use crate::typemap::{Encoder, OutOfRangeDates};

/// Messages between checks for SIGINT/SIGTERM inside a transaction.
const SIGNAL_CHECK_MESSAGES: u32 = 1024;

/// What the decoder says after a message.
pub(super) enum Step {
    /// Read on.
    Continue,
    /// Stop here (the STATE is written).
    Stop(Outcome),
}

/// The table as the last Relation message described it.
struct RelationMap {
    /// For each column of the relation, its index in the plan's columns (`None`: not selected).
    columns: Vec<Option<usize>>,
    /// For each column of the relation, whether it is in the replica identity.
    key: Vec<bool>,
    /// For each column of the relation, its type's oid.
    types: Vec<u32>,
}

/// The decoder of one peek: the database's LOG_BASED streams and what they share.
pub(super) struct Decoder<'p> {
    /// One per stream, in the run's order.
    pub(super) streams: Vec<StreamDecoder<'p>>,
    /// Rows of one stream between STATEs.
    itersize: u64,
    /// `max_run_seconds`.
    deadline: Option<Instant>,
    /// Messages since the last signal check.
    messages: u32,
    /// The second session, which converts values (opened when first needed).
    converter: Converter<'p>,
}

/// One stream's decoding state: its changes of the peek in order.
pub(super) struct StreamDecoder<'p> {
    /// The table's oid.
    relid: u32,
    /// Destination stream name (for warnings).
    stream: String,
    /// This stream's RECORD envelope.
    envelope: RecordEnvelope,
    /// The plan's columns.
    columns: &'p mut [ColumnPlan],
    /// The table's columns, once its Relation message arrived.
    relation: Option<RelationMap>,
    /// The transaction under way was written by an earlier run.
    skip: bool,
    /// The commit time of the transaction under way (microseconds since 2000-01-01).
    commit_time: i64,
    /// The bookmark's `lsn` when the run began: transactions whose commit starts before it are
    /// skipped.
    start_lsn: u64,
    /// The end of the last transaction written (the bookmark's `lsn`).
    pub(super) lsn: u64,
    /// Rows written since the last STATE.
    rows_since_state: u64,
    /// Counts rows and logs progress and METRIC lines.
    pub(super) sink: RowSink,
    /// tap_stream_id.
    pub(super) id: String,
    /// The stream's bookmark.
    pub(super) bookmark: Bookmark,
    /// A TRUNCATE of the table was warned about in this run.
    truncated: bool,
    /// Rows waiting for the server to convert some of their values, in order.
    pending: Vec<PendingRow>,
    /// Bytes of the values in `pending`.
    pending_bytes: usize,
}

impl<'p> Decoder<'p> {
    /// A decoder of the changes of `streams`, each from its own bookmark's `lsn` on.
    pub(super) fn new(cx: &Context<'p>, streams: Vec<StreamDecoder<'p>>) -> Decoder<'p> {
        Decoder {
            streams,
            itersize: u64::from(cx.config.itersize),
            deadline: cx.deadline,
            messages: 0,
            converter: Converter::new(cx.connector, cx.database),
        }
    }

    /// The stream of the table with oid `relid`, if it is one of the peek's.
    fn stream(&mut self, relid: u32) -> Option<&mut StreamDecoder<'p>> {
        self.streams.iter_mut().find(|s| s.relid == relid)
    }

    /// Handles one pgoutput message.
    pub(super) fn message<W: Write>(&mut self, data: &[u8], state: &mut State, writer: &mut MessageWriter<W>) -> Result<Step> {
        let message = pgoutput::parse(data).map_err(|e| {
            Error::new(ErrorKind::Query, "decoding a pgoutput message")
                .with_source(e)
                .with_hint("Please report this with the server's version.")
        })?;
        self.messages += 1;
        if self.messages >= SIGNAL_CHECK_MESSAGES {
            self.messages = 0;
            if let Some(signum) = signals::received() {
                // The transaction under way is sent again by the next run.
                self.write_state(state, writer)?;
                return Ok(Step::Stop(Outcome::Signalled(signum)));
            }
            for stream in &mut self.streams {
                stream.sink.report(false);
            }
        }
        match message {
            Message::Begin { final_lsn, commit_time, .. } => {
                for stream in &mut self.streams {
                    stream.skip = final_lsn < stream.start_lsn;
                    stream.commit_time = commit_time;
                }
            }
            Message::Commit { end_lsn, .. } => {
                let mut progress = false;
                for stream in &mut self.streams {
                    stream.flush(&mut self.converter, writer)?;
                    if !stream.skip {
                        stream.lsn = stream.lsn.max(end_lsn);
                        progress = true;
                    }
                }
                if self.streams.iter().any(|s| s.rows_since_state >= self.itersize) {
                    self.write_state(state, writer)?;
                }
                // Only after progress: a run always gets at least one transaction further.
                if progress && self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.write_state(state, writer)?;
                    return Ok(Step::Stop(Outcome::OutOfTime));
                }
            }
            Message::Relation(relation) => {
                if let Some(stream) = self.stream(relation.relid) {
                    stream.relation = Some(stream.map_relation(&relation)?);
                }
            }
            Message::Insert { relid, new } => {
                if let Some((stream, converter)) = self.writing(relid, writer)? {
                    stream.write_row(&new, None, converter, writer)?;
                }
            }
            Message::Update { relid, old, new } => {
                if let Some((stream, converter)) = self.writing(relid, writer)? {
                    // A changed key deletes the row under the old key.
                    if let Some((OldKind::Key, old)) = old {
                        stream.write_row(&old, Some(OldKind::Key), converter, writer)?;
                    }
                    stream.write_row(&new, None, converter, writer)?;
                }
            }
            Message::Delete { relid, old_kind, old } => {
                if let Some((stream, converter)) = self.writing(relid, writer)? {
                    stream.write_row(&old, Some(old_kind), converter, writer)?;
                }
            }
            Message::Truncate { relids, .. } => {
                for stream in self.streams.iter_mut().filter(|s| relids.contains(&s.relid) && !s.skip && !s.truncated) {
                    stream.truncated = true;
                    log::warn!(
                        "stream {}: the table was truncated; the rows TRUNCATE deleted are not sent as deletes (a FULL_TABLE run, or removing the stream's bookmark for a new snapshot, brings the target in line)",
                        stream.stream
                    );
                }
            }
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// The stream of the table with oid `relid` when it writes the transaction under way, and the
    /// converter; the rows other streams hold for conversion are written first, so the RECORDs of
    /// all streams keep the WAL's order.
    fn writing<W: Write>(
        &mut self,
        relid: u32,
        writer: &mut MessageWriter<W>,
    ) -> Result<Option<(&mut StreamDecoder<'p>, &mut Converter<'p>)>> {
        let Some(i) = self.streams.iter().position(|s| s.relid == relid && !s.skip) else {
            return Ok(None);
        };
        for (j, stream) in self.streams.iter_mut().enumerate() {
            if j != i {
                stream.flush(&mut self.converter, writer)?;
            }
        }
        Ok(Some((&mut self.streams[i], &mut self.converter)))
    }

    /// Writes one STATE with every stream's bookmark at its last transaction written.
    pub(super) fn write_state<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) -> Result<()> {
        for stream in &mut self.streams {
            stream.bookmark.lsn = Some(stream.lsn);
            state.set_bookmark(&stream.id, &stream.bookmark);
        }
        writer.write_state(&state.to_value())?;
        for stream in &mut self.streams {
            stream.rows_since_state = 0;
            stream.sink.stated_row_count = stream.sink.row_count;
        }
        Ok(())
    }

    /// The end of the last transaction written, of the stream furthest behind.
    pub(super) fn lsn(&self) -> u64 {
        self.streams.iter().map(|s| s.lsn).min().unwrap_or(0)
    }

    /// After a reconnect, before the next peek: each stream starts after its last transaction
    /// written (one cut short is sent again) and waits for its table to be described again.
    pub(super) fn restart(&mut self) {
        for stream in &mut self.streams {
            stream.start_lsn = stream.lsn;
            stream.skip = false;
            stream.relation = None;
            stream.pending.clear();
            stream.pending_bytes = 0;
        }
        self.converter.close();
    }

    /// After a failure: a STATE for the transactions written, when it says more than the last.
    pub(super) fn fail<W: Write>(&mut self, state: &mut State, writer: &mut MessageWriter<W>) {
        if self.streams.iter().any(|s| s.bookmark.lsn != Some(s.lsn))
            && let Err(e) = self.write_state(state, writer)
        {
            log::warn!("could not write a STATE after the failure: {}", e.chain());
        }
        for stream in &mut self.streams {
            stream.sink.finish(false);
        }
    }
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
    fn map_relation(&self, relation: &pgoutput::Relation) -> Result<RelationMap> {
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
    fn write_row<W: Write>(
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
    fn flush<W: Write>(&mut self, converter: &mut Converter<'_>, writer: &mut MessageWriter<W>) -> Result<()> {
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
