//! The encoder's side of one transaction of [`super::pipeline`]: the rows the reader thread
//! sends are written as RECORD lines, batches are cut (`itersize` rows of a query, or the first
//! block boundary after `itersize` rows of a storage-order read) with a STATE after each, the
//! storage order of a block-range read is checked, and the run stops on time and on signals.

use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::Outcome;
use super::blocks::{self, Resume, Start, Tid};
use super::pipeline::{Event, Source};
use super::plan::ColumnPlan;
use super::reader::Fetched;
use super::sink::{Raw, RowSink};
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::signals;

/// How often the encoder checks for SIGINT/SIGTERM while it waits for rows.
const SIGNAL_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The encoder's side of one transaction: batches, marks and the storage-order checks.
pub(super) struct Encoder {
    /// Rows per batch.
    itersize: u64,
    /// Rows written since the last STATE.
    batch_rows: u64,
    /// What a storage-order read found at its start.
    start: Option<Start>,
    /// The catch-up statement of a resumed storage-order read is under way.
    catching_up: bool,
    /// The place of the last row of the main storage-order statement written.
    last_tid: Option<Tid>,
    /// The source is a storage-order read (rows carry their `ctid` first).
    blocks: bool,
    /// Rows written by the catch-up statement.
    caught_up_rows: u64,
    /// The storage-order read was given a resume point.
    expect_resume: bool,
}

impl Encoder {
    /// The encoder of one transaction of `source`, with batches of `itersize` rows.
    pub(super) fn new(itersize: u64, source: &Source) -> Encoder {
        Encoder {
            itersize,
            batch_rows: 0,
            start: None,
            catching_up: false,
            last_tid: None,
            blocks: matches!(source, Source::Blocks(_)),
            caught_up_rows: 0,
            expect_resume: matches!(source, Source::Blocks(read) if read.resume.is_some()),
        }
    }

    /// Writes what the reader sends until the source is done (`Some(Complete)`), stops early
    /// (`Some(OutOfTime | Signalled)`), or the reader stops (`None`: its result says why).
    pub(super) fn run<W: Write>(
        &mut self,
        (receiver, recycler): (&Receiver<Fetched>, &SyncSender<Vec<tokio_postgres::Row>>),
        (columns, sink): (&mut [ColumnPlan], &mut RowSink),
        writer: &mut MessageWriter<W>,
        on_batch: &mut impl FnMut(&mut RowSink, &mut MessageWriter<W>, Event) -> Result<()>,
        deadline: Option<Instant>,
    ) -> Result<Option<Outcome>> {
        let mut state = |sink: &mut RowSink, writer: &mut MessageWriter<W>, event: Event| -> Result<()> {
            on_batch(sink, writer, event)?;
            sink.stated_row_count = sink.row_count;
            Ok(())
        };
        let out_of_time = || deadline.is_some_and(|d| Instant::now() >= d);
        loop {
            // Wake up now and then while the server is busy, so a signal is honoured even when no
            // row arrives (a slow sort, a long statement).
            let fetched = match receiver.recv_timeout(SIGNAL_POLL_INTERVAL) {
                Ok(fetched) => fetched,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(signum) = signals::received() {
                        state(sink, writer, Event::Batch(None))?;
                        return Ok(Some(Outcome::Signalled(signum)));
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            };
            match fetched {
                Fetched::Rows(rows) => {
                    let rows = RecycleOnDrop(Some(rows), recycler);
                    let rows = rows.0.as_deref().unwrap_or_default();
                    if let Some(stopped) = self.write_rows(rows, (columns, &mut *sink), writer, &mut state, &out_of_time)? {
                        return Ok(Some(stopped));
                    }
                }
                Fetched::Started(start) => {
                    if self.expect_resume && start.resume.is_none() {
                        log::info!(
                            "stream {}: the table was rewritten since the resume point; reading it from the start with a new version",
                            sink.stream()
                        );
                        state(sink, writer, Event::StartOver)?;
                    }
                    self.catching_up = start.resume.is_some();
                    self.last_tid =
                        start.resume.map(|r| r.from).filter(|from| from.offset > 0).map(|from| Tid { offset: from.offset - 1, ..from });
                    self.start = Some(start);
                }
                Fetched::StatementEnd if self.catching_up => {
                    // The rows changed since the interrupted snapshot are sent: a STATE, but no
                    // place to stop, so that every run advances.
                    self.catching_up = false;
                    if let Some(start) = &self.start
                        && let Some(resume) = start.resume
                    {
                        log::info!(
                            "stream {}: sent {} rows changed before block {} since the interrupted run",
                            sink.stream(),
                            self.caught_up_rows,
                            resume.from.block
                        );
                        state(sink, writer, Event::Batch(Some(start.mark(u64::from(resume.from.block)))))?;
                        self.batch_rows = 0;
                    }
                }
                Fetched::StatementEnd => {
                    let mark = self.start.as_ref().map(|s| s.mark(blocks::END_BLOCK));
                    state(sink, writer, Event::Batch(mark))?;
                    return Ok(Some(Outcome::Complete));
                }
            }
        }
    }

    /// Writes one chunk of rows, cutting batches (`state` writes the STATE after one); returns
    /// `Some` when the run stops early (a signal, or out of time after a batch).
    fn write_rows<W: Write>(
        &mut self,
        rows: &[tokio_postgres::Row],
        (columns, sink): (&mut [ColumnPlan], &mut RowSink),
        writer: &mut MessageWriter<W>,
        state: &mut impl FnMut(&mut RowSink, &mut MessageWriter<W>, Event) -> Result<()>,
        out_of_time: &impl Fn() -> bool,
    ) -> Result<Option<Outcome>> {
        for row in rows {
            if self.blocks {
                let tid = row_tid(row)?;
                if !self.catching_up {
                    if self.last_tid.is_some_and(|last| tid <= last) {
                        return Err(Error::new(ErrorKind::Internal, "rows arrived out of storage order")
                            .with_hint("Set \"full_table_order\": \"primary_key\" in the config and report this."));
                    }
                    // A batch ends before the first row of a new block once it is full.
                    if self.batch_rows >= self.itersize
                        && self.last_tid.is_some_and(|last| tid.block > last.block)
                        && let Some(start) = &self.start
                    {
                        state(sink, writer, Event::Batch(Some(start.mark(u64::from(tid.block)))))?;
                        self.batch_rows = 0;
                        sink.report(false);
                        if out_of_time() {
                            return Ok(Some(Outcome::OutOfTime));
                        }
                    }
                    self.last_tid = Some(tid);
                }
            }
            sink.write_row(row, columns, writer)?;
            self.batch_rows += 1;
            if self.catching_up {
                self.caught_up_rows += 1;
            }
            if let Some(signum) = signals::received() {
                state(sink, writer, Event::Batch(None))?;
                return Ok(Some(Outcome::Signalled(signum)));
            }
            if !self.blocks && self.batch_rows == self.itersize {
                state(sink, writer, Event::Batch(None))?;
                self.batch_rows = 0;
                sink.report(false);
                if out_of_time() {
                    return Ok(Some(Outcome::OutOfTime));
                }
            }
        }
        Ok(None)
    }

    /// For a storage-order read: where a new read continues (every row before it was written).
    pub(super) fn reached(&self) -> Option<Resume> {
        let start = self.start.as_ref()?;
        let from = match (self.catching_up, self.last_tid) {
            // A failure during the catch-up repeats it from the same point.
            (true, _) => return start.resume,
            (false, Some(last)) => last.next(),
            (false, None) => start.resume.map_or(Tid::block_start(0), |r| r.from),
        };
        Some(Resume { from, relfilenode: start.relfilenode, snapshot_xmin: start.snapshot_xmin })
    }
}

/// Hands a written chunk back to the reader thread when dropped (also on early return).
struct RecycleOnDrop<'a>(Option<Vec<tokio_postgres::Row>>, &'a SyncSender<Vec<tokio_postgres::Row>>);

impl Drop for RecycleOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(rows) = self.0.take() {
            // A full or closed channel: the rows are freed here instead.
            let _ = self.1.try_send(rows);
        }
    }
}

/// The `ctid` a storage-order read selects first.
fn row_tid(row: &tokio_postgres::Row) -> Result<Tid> {
    let raw: Option<Raw<'_>> = row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading ctid").with_source(e))?;
    raw.and_then(|Raw(bytes)| Tid::from_wire(bytes)).ok_or_else(|| Error::new(ErrorKind::Internal, "reading ctid: not a tid"))
}
