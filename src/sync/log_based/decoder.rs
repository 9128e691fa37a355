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

use super::convert::Converter;
use super::stream::StreamDecoder;
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::pgoutput::{self, Message, OldKind};
use crate::signals;
use crate::state::State;
use crate::sync::Outcome;
use crate::sync::pipeline::Context;

/// Messages between checks for SIGINT/SIGTERM inside a transaction.
const SIGNAL_CHECK_MESSAGES: u32 = 1024;

/// What the decoder says after a message.
pub(super) enum Step {
    /// Read on.
    Continue,
    /// Stop here (the STATE is written).
    Stop(Outcome),
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
