//! The data path of one stream: a reader thread streams the stream's statement from the server
//! while this thread encodes the rows into RECORD lines, cuts batches (a STATE after each) and
//! stops on time, signals and failures; a connection lost mid-stream is opened again and the
//! read resumes inside the run from the last row written.
//!
//! Round trips: each statement is sent once and its rows arrive as the server produces them
//! (one `Execute` without a row limit), so a stream costs a handful of round trips whatever its
//! size: opening the transaction, preparing, the statement itself, commit. The server is kept
//! from running ahead by TCP flow control: the reader stops reading the socket while
//! [`CHANNEL_CHUNKS`] chunks of [`CHUNK_ROWS`] rows wait for the encoder, which bounds memory.
//! Batches are counted here, not fetched: `itersize` rows of a query, or the first block
//! boundary after `itersize` rows of a storage-order read ([`blocks`]).
//!
//! Stopping early (time, a signal, an encoding or output failure) cancels the running statement
//! on the server; the session is not used again in this run.

use std::io::Write;
use std::pin::pin;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use futures_util::future::{try_join, try_join3};
use tokio_postgres::types::Type;

use super::blocks::{self, BlockMark, BlockRead, Resume, Start, Tid};
use super::plan::ColumnPlan;
use super::sink::{Raw, RowSink};
use super::{Outcome, Session};
use crate::config::Config;
use crate::connect::{Connector, classify_query, is_transient};
use crate::error::{Error, ErrorKind, Result};
use crate::message::MessageWriter;
use crate::signals;

/// Rows per message from the reader thread to the encoder.
const CHUNK_ROWS: usize = 1024;
/// Chunks in flight between the threads; with [`CHUNK_ROWS`] this bounds the rows held in memory.
const CHANNEL_CHUNKS: usize = 4;
/// Transactions tried when the storage a storage-order read begins on changed under its snapshot.
const STORAGE_CHANGED_ATTEMPTS: usize = 3;
/// How often the encoder checks for SIGINT/SIGTERM while it waits for rows.
const SIGNAL_POLL_INTERVAL: Duration = Duration::from_millis(100);
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
    /// A table in storage order ([`blocks`]); a batch ends at a block boundary.
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

/// What the reader thread hands the encoder; a failure ends the channel and is the reader's result.
enum Fetched {
    /// Rows, in server order.
    Rows(Vec<tokio_postgres::Row>),
    /// A storage-order read began: its storage and snapshot.
    Started(Start),
    /// One statement ended: the catch-up of a resumed storage-order read, or the read itself.
    StatementEnd,
}

/// Why the reader stopped without finishing.
struct ReadFailure {
    /// The classified error.
    error: Error,
    /// A lost connection or a server that ended the statement for reasons of its own
    /// (shutdown, failover, a standby's recovery conflict): worth another connection.
    transient: bool,
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
    let mut attempt = 0;
    // Rows written when the last reconnect was made: attempts count failures without progress,
    // so a long sync over a link that drops now and then goes on as long as it advances.
    let mut rows_at_reconnect = sink.row_count;
    loop {
        let (result, reached) = run_once(cx, (&source, search_path), (columns, &mut *sink), writer, &mut on_batch);
        let failure = match result {
            Ok(outcome) => {
                sink.finish(outcome == Outcome::Complete);
                return Ok(outcome);
            }
            Err(failure) => failure,
        };
        if sink.row_count > rows_at_reconnect {
            attempt = 0;
        }
        let next = if failure.transient && attempt < cx.config.reconnect_attempts {
            match reached {
                Some(resume_point) => resume(Reached::Blocks(resume_point)),
                None => resume(Reached::Rows(sink)),
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
        attempt += 1;
        reconnect(cx, attempt, &failure.error)?;
        rows_at_reconnect = sink.row_count;
        source = next;
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
        Source::Blocks(read) => log::debug!("query in storage order: {}", read.select_sql),
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
            read(client, source, search_path, &target)
        });
        let reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                let error = Error::new(ErrorKind::Internal, "starting the reader thread").with_source(e);
                return (Err(ReadFailure { error, transient: false }), None);
            }
        };
        let mut encoder = Encoder {
            itersize,
            batch_rows: 0,
            start: None,
            catching_up: false,
            last_tid: None,
            blocks: matches!(source, Source::Blocks(_)),
            caught_up_rows: 0,
            expect_resume: matches!(source, Source::Blocks(read) if read.resume.is_some()),
        };
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

/// The encoder's side of one transaction: batches, marks and the storage-order checks.
struct Encoder {
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
    /// Writes what the reader sends until the source is done (`Some(Complete)`), stops early
    /// (`Some(OutOfTime | Signalled)`), or the reader stops (`None`: its result says why).
    fn run<W: Write>(
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
                    for row in rows.0.iter().flatten() {
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

    /// For a storage-order read: where a new read continues (every row before it was written).
    fn reached(&self) -> Option<Resume> {
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

/// The reader thread's ends of the channels.
struct Target {
    /// To the encoder.
    sender: SyncSender<Fetched>,
    /// Written chunks coming back, to be freed here.
    recycled: Receiver<Vec<tokio_postgres::Row>>,
}

impl Target {
    /// Sends `fetched` on; `false` when the encoder has stopped listening.
    fn send(&self, fetched: Fetched) -> bool {
        self.sender.send(fetched).is_ok()
    }
}

/// The reader thread: the stream's transaction and its source, as one piece of work on the
/// session's runtime. Returns early (the transaction left open: the session is not used again)
/// when the encoder has stopped listening.
fn read(client: &mut crate::pg::Client, source: &Source, search_path: &str, target: &Target) -> std::result::Result<(), ReadFailure> {
    let failure = |e: tokio_postgres::Error| {
        let transient = is_transient(&e);
        let closed = e.is_closed();
        let mut error = classify_query(e, "reading rows");
        if closed {
            error = error.with_hint(
                "The connection to the server was lost during the sync; run again with the last STATE to continue where this run stopped.",
            );
        }
        ReadFailure { error, transient }
    };
    let begin = format!("begin isolation level repeatable read read only; set local search_path = {search_path}");
    let work = client.run(|c| async move {
        for _ in 0..STORAGE_CHANGED_ATTEMPTS {
            match source {
                Source::Query { sql, params, lock } => {
                    let opening = match lock {
                        Some(lock) => format!("{begin}; {lock}"),
                        None => begin.clone(),
                    };
                    // Sent together, answered in order: the lock is taken before the statement's
                    // parse takes the snapshot, in one round trip.
                    let types = vec![Type::TEXT; params.len()];
                    let (_, statement) = try_join(c.batch_execute(&opening), c.prepare_typed(sql, &types)).await?;
                    if stream(c, &statement, params, target).await? && target.send(Fetched::StatementEnd) {
                        c.batch_execute("commit").await?;
                    }
                    return Ok(true);
                }
                Source::Blocks(read) => {
                    // The opening statements, the storage check and the main statement's prepare
                    // in one round trip, answered in that order.
                    let opening = format!("{begin}; {}", blocks::opening_sql(read));
                    let types = vec![Type::TEXT; read.select_params(Tid::block_start(0)).len()];
                    let (_, start, main) =
                        try_join3(c.batch_execute(&opening), blocks::begin(c, read), c.prepare_typed(&read.select_sql, &types)).await?;
                    let Some(start) = start else {
                        // The table was rewritten after the snapshot: a new transaction sees it.
                        log::info!("the table was rewritten while the read began; starting the read again");
                        c.batch_execute("rollback").await?;
                        continue;
                    };
                    if !target.send(Fetched::Started(start)) {
                        return Ok(true);
                    }
                    if let Some(resume) = &start.resume {
                        let params = blocks::catch_up_params(resume);
                        let catch_up = c.prepare_typed(&read.catch_up_sql, &[Type::TEXT, Type::TEXT]).await?;
                        if !stream(c, &catch_up, &params, target).await? || !target.send(Fetched::StatementEnd) {
                            return Ok(true);
                        }
                    }
                    let from = start.resume.map_or(Tid::block_start(0), |r| r.from);
                    if stream(c, &main, &read.select_params(from), target).await? && target.send(Fetched::StatementEnd) {
                        c.batch_execute("commit").await?;
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    });
    match work {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(ReadFailure {
            error: Error::new(ErrorKind::Query, "the table was rewritten each time the read began").with_hint(
                "Something rewrites the table continually (REFRESH MATERIALIZED VIEW, TRUNCATE, ...); run the sync when it does not.",
            ),
            transient: false,
        }),
        Ok(Err(e)) | Err(e) => Err(failure(e)),
    }
}

/// Runs one statement and sends its rows on in chunks of [`CHUNK_ROWS`] as they arrive: one
/// request, no round trip per chunk. The statement was prepared before (so that the types of
/// its result columns are known before rows arrive). Returns `false` when the encoder stopped
/// listening.
async fn stream(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    params: &[String],
    target: &Target,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let rows = client.query_raw(statement, params).await?;
    let mut rows = pin!(rows);
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    while let Some(row) = rows.try_next().await? {
        chunk.push(row);
        if chunk.len() == CHUNK_ROWS {
            // Free the rows the encoder has written here, where they were allocated.
            while target.recycled.try_recv().is_ok() {}
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
            if !target.send(Fetched::Rows(full)) {
                return Ok(false);
            }
        }
    }
    Ok(chunk.is_empty() || target.send(Fetched::Rows(chunk)))
}
