//! The data path of one stream: a reader thread streams the stream's statement from the server
//! while this thread encodes the rows into RECORD lines, cuts batches (a STATE after each) and
//! stops on time, signals and failures; a connection lost mid-stream is opened again and the
//! read resumes inside the run from the last row written. This file holds the reconnect loop and
//! one transaction's pair of threads; the reader thread is [`super::reader`], the encoder's side
//! [`super::batches`].
//!
//! Round trips: each statement is sent once and its rows arrive as the server produces them
//! (one `Execute` without a row limit), so a stream costs one round trip whatever its size: the
//! opening of the transaction, its checks and the statement go out together and are answered
//! in order, and the commit goes out with the session's next request (the run's first XMIN pass
//! may even have sent its opening with the catalog: [`super::xmin::send_ahead`]). The server is kept
//! from running ahead by TCP flow control: the reader stops reading the socket while
//! [`CHANNEL_CHUNKS`] chunks of [`reader::CHUNK_ROWS`] rows wait for the encoder, which bounds memory.
//! Batches are counted here, not fetched: `itersize` rows of a query, or the first block
//! boundary after `itersize` rows of a storage-order read ([`super::blocks`]).
//!
//! Stopping early (time, a signal, an encoding or output failure) cancels the running statement
//! on the server; the session is not used again in this run.

use std::io::Write;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use super::batches::Encoder;
use super::blocks::{BlockMark, BlockRead, Resume, Tid};
use super::plan::ColumnPlan;
use super::reader::{self, CHANNEL_CHUNKS, Fetched, ReadFailure, Target};
use super::sink::RowSink;
use super::{Outcome, Session};
use crate::config::Config;
use crate::connect::Connector;
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;

/// Wait before the first reconnect after a failure; each further one without progress waits
/// four times as long (1, 4, 16 s).
const FIRST_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What every replication method is handed: the stream's session and how to open it again,
/// the config, and the run's deadline.
pub struct Context<'a> {
    /// The session of the stream's database.
    pub session: &'a mut Session,
    /// Opens sessions (again) and cancels queries.
    pub connector: &'a Connector,
    /// The stream's database.
    pub database: &'a str,
    /// The validated config.
    pub config: &'a Config,
    /// When to stop between batches (`max_run_seconds`).
    pub deadline: Option<Instant>,
}

/// What a stream reads.
pub enum Source {
    /// One statement with its text parameters, streamed whole; a batch is `itersize` rows.
    Query {
        /// The statement.
        sql: String,
        /// Its `$n` parameters, sent as text and cast by the server.
        params: Vec<String>,
        /// Run first, before the snapshot is taken: `lock table ... in access share mode`, so
        /// that a rewrite (TRUNCATE + reload, VACUUM FULL, a rewriting ALTER TABLE) under way is
        /// waited for and then seen, instead of read with a snapshot older than its rows.
        lock: Option<String>,
    },
    /// A table in storage order ([`super::blocks`]); a batch ends at a block boundary.
    Blocks(BlockRead),
}

/// What `on_batch` is told.
pub enum Event {
    /// A batch ended (a STATE is due), with the block mark of a storage-order read.
    Batch(Option<BlockMark>),
    /// A resumed storage-order read found the table rewritten since the resume point and reads
    /// it from the start: a new table version is due, and a STATE saying so.
    StartOver,
}

/// Where a read had got to when its connection was lost: what [`run`]'s `resume` is given to
/// build the source that continues it.
pub enum Reached<'a> {
    /// A query: the sink knows the last key written.
    Rows(&'a RowSink),
    /// A storage-order read: every row before `Resume::from` was written.
    Blocks(Resume),
}

/// Runs `source` in read-only REPEATABLE READ transactions and writes every row; after each
/// batch calls `on_batch` (which writes STATE) with the block mark of a storage-order read.
/// When the connection is lost and `config.reconnect_attempts` allow (consecutive failures
/// without a row written in between), waits, connects again,
/// asks `resume` for the source that continues from what was written, and goes on with the same
/// sink (the same version and counts). Stops early with [`Outcome::OutOfTime`] when the deadline
/// passes between batches, and with [`Outcome::Signalled`] right after the record being written
/// when SIGINT or SIGTERM arrives (then `on_batch` gets no mark).
///
/// # Errors
/// An encoding or output failure; a failure of the server or the connection once the attempts
/// are spent (after a STATE for the records written).
pub fn run<W: Write>(
    cx: &mut Context<'_>,
    (source, search_path): (Source, &str),
    (columns, sink): (&mut [ColumnPlan], &mut RowSink),
    writer: &mut MessageWriter<W>,
    mut resume: impl FnMut(Reached<'_>) -> Option<Source>,
    mut on_batch: impl FnMut(&mut RowSink, &mut MessageWriter<W>, Event) -> Result<()>,
) -> Result<Outcome> {
    let mut source = source;
    let mut retries = Retries::new(cx.config.reconnect_attempts, sink.row_count);
    loop {
        let (result, reached) = run_once(cx, (&source, search_path), (columns, &mut *sink), writer, &mut on_batch);
        let failure = match result {
            Ok(outcome) => {
                sink.finish(outcome == Outcome::Complete);
                return Ok(outcome);
            }
            Err(failure) => failure,
        };
        // `Some(None)`: the same source again (a storage-order read lost before it began read
        // nothing, and starts as it would have).
        let next = if retries.allow(&failure, sink.row_count) {
            match (reached, &source) {
                (Some(resume_point), _) => resume(Reached::Blocks(resume_point)).map(Some),
                (None, Source::Blocks(_)) => Some(None),
                (None, Source::Query { .. }) => resume(Reached::Rows(sink)).map(Some),
            }
        } else {
            None
        };
        let Some(next) = next else {
            // A STATE for the records already written keeps them from being sent again on resume.
            if sink.row_count > sink.stated_row_count
                && let Err(state_error) = on_batch(sink, writer, Event::Batch(None))
            {
                log::warn!("could not write a STATE after the failure: {}", state_error.chain());
            }
            sink.finish(false);
            return Err(failure.error);
        };
        retries.reconnect(cx, &failure.error, sink.row_count)?;
        if let Some(next) = next {
            source = next;
        }
    }
}

/// The reconnect budget of one read (FULL_TABLE, INCREMENTAL and XMIN here, LOG_BASED's changes
/// read too): `reconnect_attempts` transient failures without progress in between. Progress is
/// what the caller counts (rows written; for LOG_BASED, transactions written), so a long sync
/// over a link that drops now and then goes on as long as it advances.
pub(super) struct Retries {
    /// `reconnect_attempts`.
    limit: u32,
    /// Reconnects since the last progress.
    attempt: u32,
    /// The progress when the last reconnect was made.
    progress_at_reconnect: u64,
}

impl Retries {
    /// A budget of `limit` attempts for a read that has got to `progress`.
    pub(super) fn new(limit: u32, progress: u64) -> Retries {
        Retries { limit, attempt: 0, progress_at_reconnect: progress }
    }

    /// Whether `failure`, met with the read at `progress`, may be retried: a transient one, with
    /// attempts left (counted afresh when the read advanced since the last reconnect).
    pub(super) fn allow(&mut self, failure: &ReadFailure, progress: u64) -> bool {
        if progress > self.progress_at_reconnect {
            self.attempt = 0;
        }
        failure.transient && self.attempt < self.limit
    }

    /// The next attempt after [`Retries::allow`]: waits and opens the session again ([`reconnect`]).
    ///
    /// # Errors
    /// As [`reconnect`].
    pub(super) fn reconnect(&mut self, cx: &mut Context<'_>, cause: &Error, progress: u64) -> Result<()> {
        self.attempt += 1;
        reconnect(cx, self.attempt, cause)?;
        self.progress_at_reconnect = progress;
        Ok(())
    }
}

/// Waits (1, 4, 16 s, ...) and opens the stream's session again, counting failed connection
/// attempts against `reconnect_attempts` too. Errors that another attempt cannot mend (a wrong
/// password, a vanished database) end the run at once.
fn reconnect(cx: &mut Context<'_>, mut attempt: u32, cause: &Error) -> Result<()> {
    loop {
        let delay = FIRST_RECONNECT_DELAY * 4u32.saturating_pow(attempt - 1);
        log::warn!(
            "lost the connection to {} ({}); reconnecting in {}s, attempt {attempt} of {}",
            cx.database,
            cause.chain(),
            delay.as_secs(),
            cx.config.reconnect_attempts
        );
        std::thread::sleep(delay);
        match cx.connector.connect(cx.database) {
            Ok(client) => {
                cx.session.client = client;
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Connect && attempt < cx.config.reconnect_attempts => {
                log::warn!("reconnecting failed: {}", e.chain());
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One transaction's worth of [`run`]: the reader thread and the encoder loop. Also returns,
/// for a storage-order read, the point reached (for a resume after a failure).
fn run_once<W: Write>(
    cx: &mut Context<'_>,
    (source, search_path): (&Source, &str),
    (columns, sink): (&mut [ColumnPlan], &mut RowSink),
    writer: &mut MessageWriter<W>,
    on_batch: &mut impl FnMut(&mut RowSink, &mut MessageWriter<W>, Event) -> Result<()>,
) -> (std::result::Result<Outcome, ReadFailure>, Option<Resume>) {
    match source {
        Source::Query { sql, .. } => log::debug!("query: {sql}"),
        Source::Blocks(read) => {
            log::debug!("query in storage order: {}", read.select(read.resume.map_or(Tid::block_start(0), |r| r.from)).0)
        }
    }
    let itersize = u64::from(cx.config.itersize);
    let cancel_token = cx.session.client.cancel_token();
    let connector = cx.connector;
    let deadline = cx.deadline;
    let client = &mut cx.session.client;
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel::<Fetched>(CHANNEL_CHUNKS);
        // Written chunks go back to the reader, which frees their rows: rows are then allocated
        // and freed by one thread, which glibc's malloc does cheaply.
        let (recycler, recycled) = sync_channel::<Vec<tokio_postgres::Row>>(CHANNEL_CHUNKS + 1);
        let reader = std::thread::Builder::new().name("reader".into()).spawn_scoped(scope, move || {
            let target = Target { sender, recycled };
            reader::read(client, source, search_path, &target)
        });
        let reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                let error = Error::new(ErrorKind::Internal, "starting the reader thread").with_source(e);
                return (Err(ReadFailure { error, transient: false }), None);
            }
        };
        let mut encoder = Encoder::new(itersize, source);
        let outcome = encoder.run((&receiver, &recycler), (columns, &mut *sink), writer, on_batch, deadline);
        let stopped_early = !matches!(outcome, Ok(Some(Outcome::Complete)) | Ok(None));
        if stopped_early {
            // The statement may still be running (or the reader waiting for its rows): end it.
            connector.cancel(&cancel_token);
        }
        // Dropping the receiver makes the reader's next send fail, so it stops.
        drop(receiver);
        drop(recycler);
        let read = reader.join().unwrap_or_else(|_| {
            Err(ReadFailure { error: Error::new(ErrorKind::Internal, "the reader thread panicked"), transient: false })
        });
        let reached = encoder.reached();
        let result = match (outcome, read) {
            (Ok(Some(outcome)), _) => Ok(outcome),
            // The encoder's own error (an encode or output failure) explains more than the
            // reader's, which then only saw a closed channel.
            (Err(error), _) => Err(ReadFailure { error, transient: false }),
            (Ok(None), Err(failure)) => Err(failure),
            (Ok(None), Ok(())) => {
                Err(ReadFailure { error: Error::new(ErrorKind::Internal, "the reader thread stopped without finishing"), transient: false })
            }
        };
        (result, reached)
    })
}
