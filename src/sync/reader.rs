//! The reader thread of [`super::pipeline`]: the stream's transaction and its statements, run on
//! the session's runtime, each statement sent once (one `Execute` without a row limit) and its
//! rows sent on to the encoder in chunks as they arrive. The channel is bounded
//! ([`CHANNEL_CHUNKS`] chunks of [`CHUNK_ROWS`] rows): while it is full the reader stops reading
//! the socket and TCP flow control holds the server back, which bounds memory.
//!
//! A failure is classified here ([`ReadFailure`]) and ends the channel; the pipeline decides
//! whether to connect again.

use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use futures_util::TryStreamExt;
use futures_util::future::{try_join, try_join3};
use tokio_postgres::types::Type;

use super::blocks::{self, BlockRead, Start, Tid};
use super::pipeline::Source;
use crate::connect::{classify_query, is_transient};
use crate::error::{Error, ErrorKind};
use crate::pg::{Ahead, send_now};

/// Rows per message from the reader thread to the encoder.
pub(super) const CHUNK_ROWS: usize = 1024;
/// Chunks in flight between the threads; with [`CHUNK_ROWS`] this bounds the rows held in memory.
pub(super) const CHANNEL_CHUNKS: usize = 4;
/// Transactions tried when the storage a storage-order read begins on changed under its snapshot.
const STORAGE_CHANGED_ATTEMPTS: usize = 3;

/// What the reader thread hands the encoder; a failure ends the channel and is the reader's result.
pub(super) enum Fetched {
    /// Rows, in server order.
    Rows(Vec<tokio_postgres::Row>),
    /// A storage-order read began: its storage and snapshot.
    Started(Start),
    /// One statement ended: the catch-up of a resumed storage-order read, or the read itself.
    StatementEnd,
}

/// Why the reader stopped without finishing.
pub(super) struct ReadFailure {
    /// The classified error.
    pub(super) error: Error,
    /// A lost connection or a server that ended the statement for reasons of its own
    /// (shutdown, failover, a standby's recovery conflict): worth another connection.
    pub(super) transient: bool,
}

impl ReadFailure {
    /// The failure of a statement that was reading (`what`): classified, marked transient when
    /// another connection may mend it, and with the resume hint when the connection was lost
    /// (closed, or cut in the middle of a message: "bytes remaining on stream").
    pub(super) fn of(e: tokio_postgres::Error, what: &str) -> ReadFailure {
        let transient = is_transient(&e);
        let lost = transient && e.as_db_error().is_none();
        let mut error = classify_query(e, what);
        if lost {
            error = error.with_hint(
                "The connection to the server was lost during the sync; run again with the last STATE to continue where this run stopped.",
            );
        }
        ReadFailure { error, transient }
    }
}
/// The reader thread's ends of the channels.
pub(super) struct Target {
    /// To the encoder.
    pub(super) sender: SyncSender<Fetched>,
    /// Written chunks coming back, to be freed here.
    pub(super) recycled: Receiver<Vec<tokio_postgres::Row>>,
}

impl Target {
    /// Sends `fetched` on; `false` when the encoder has stopped listening.
    fn send(&self, fetched: Fetched) -> bool {
        self.sender.send(fetched).is_ok()
    }
}

/// Text parameters as `query_typed_raw` takes them (every parameter is sent as text and cast in
/// the statement).
fn text_params(params: &[String]) -> impl ExactSizeIterator<Item = (&String, Type)> {
    params.iter().map(|p| (p, Type::TEXT))
}

/// The opening of a storage-order read from `from`, in one round trip: the transaction's
/// opening statements, the storage check ([`blocks::STORAGE_CHECK_SQL`]) and the main
/// statement. Sent by the reader, or ahead of it with the catalog ([`Opening::send_ahead`]):
/// requests sent ahead are used only when their key, every text and parameter they sent, is
/// that of the opening the reader would send.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Opening {
    /// `begin ...; set local ...; lock table ...`.
    statements: String,
    /// The storage check's parameter: the table's qualified name.
    table: String,
    /// The main statement.
    main_sql: String,
    /// Its parameters.
    main_params: Vec<String>,
}

impl Opening {
    /// The opening of `read` from `from` in a transaction with `search_path`.
    pub(super) fn new(read: &BlockRead, search_path: &str, from: Tid) -> Opening {
        let (main_sql, main_params) = read.select(from);
        Opening {
            statements: format!("{}; {}", begin_sql(search_path), blocks::opening_sql(read)),
            table: read.table.clone(),
            main_sql: main_sql.to_string(),
            main_params,
        }
    }

    /// Every text and parameter sent, as one string.
    fn key(&self) -> String {
        let mut key = format!("{}\0{}\0{}", self.statements, self.table, self.main_sql);
        for param in &self.main_params {
            key.push('\0');
            key.push_str(param);
        }
        key
    }

    /// Queues this opening to go out with the session's next request (the catalog, read right
    /// after the session opens), for the reader to take ([`read`]): the read's answers then
    /// come one round trip sooner.
    pub(super) fn send_ahead(self, client: &mut crate::pg::Client) {
        let key = self.key();
        client.send_ahead(key, move |c: Arc<tokio_postgres::Client>| -> Ahead {
            Box::pin(async move {
                let Opening { statements, table, main_sql, main_params } = self;
                let (_, check, rows) = try_join3(
                    c.batch_execute(&statements),
                    c.query_typed(blocks::STORAGE_CHECK_SQL, &[(&table, Type::TEXT)]),
                    c.query_typed_raw(&main_sql, text_params(&main_params)),
                )
                .await?;
                Ok((check, rows))
            })
        });
    }
}

/// The start of every read's transaction.
fn begin_sql(search_path: &str) -> String {
    format!("begin isolation level repeatable read read only; set local search_path = {search_path}")
}

/// The reader thread: the stream's transaction and its source, as one piece of work on the
/// session's runtime. Returns early (the transaction left open: the session is not used again)
/// when the encoder has stopped listening.
pub(super) fn read(
    client: &mut crate::pg::Client,
    source: &Source,
    search_path: &str,
    target: &Target,
) -> std::result::Result<(), ReadFailure> {
    let failure = |e: tokio_postgres::Error| ReadFailure::of(e, "reading rows");
    let begin = begin_sql(search_path);
    // A fresh storage-order read whose opening was sent ahead (with the catalog) takes its
    // answers instead of sending it.
    let ahead = match source {
        Source::Blocks(read) if read.resume.is_none() => client.take_ahead(&Opening::new(read, search_path, Tid::block_start(0)).key()),
        _ => None,
    };
    let work = client.run(|c| async move {
        if let (Some(ahead), Source::Blocks(read)) = (ahead, source)
            && let Some(finished) = read_ahead(c, ahead, read, target).await?
        {
            return Ok(finished);
        }
        for _ in 0..STORAGE_CHANGED_ATTEMPTS {
            match source {
                Source::Query { sql, params, lock } => {
                    let opening = match lock {
                        Some(lock) => format!("{begin}; {lock}"),
                        None => begin.clone(),
                    };
                    // Sent together, answered in order: the lock is taken before the statement's
                    // parse takes the snapshot, and the statement's rows follow, in one round trip.
                    let (_, rows) = try_join(c.batch_execute(&opening), c.query_typed_raw(sql, text_params(params))).await?;
                    return Ok(stream(rows, target).await? && target.send(Fetched::StatementEnd));
                }
                Source::Blocks(read) => {
                    // The opening statements, the storage check and the statement that reads
                    // on from where the read is expected to resume (checked by `begin`) in one
                    // round trip, answered in that order.
                    let expected_from = read.resume.map_or(Tid::block_start(0), |r| r.from);
                    let opening = Opening::new(read, search_path, expected_from);
                    let main = c.query_typed_raw(&opening.main_sql, text_params(&opening.main_params));
                    // Boxed so that it can be dropped (its answers discarded) before another
                    // request is awaited: an undrained answer would hold up the ones behind it.
                    let mut main = Box::pin(main);
                    // A resumed read's catch-up comes first; the main statement is sent behind it
                    // (polled once so that its request goes out) and awaited after its rows.
                    let catch_up_params = read.resume.as_ref().map(blocks::catch_up_params);
                    let mut catch_up =
                        catch_up_params.as_ref().map(|params| Box::pin(c.query_typed_raw(&read.catch_up_sql, text_params(params))));
                    let (_, start, catch_up) = try_join3(c.batch_execute(&opening.statements), blocks::begin(c, read), async {
                        if let Some(catch_up) = catch_up.as_mut() {
                            send_now(catch_up.as_mut()).await;
                        }
                        send_now(main.as_mut()).await;
                        match catch_up {
                            Some(catch_up) => catch_up.await.map(Some),
                            None => Ok(None),
                        }
                    })
                    .await?;
                    let Some(start) = start else {
                        log::info!("the table was rewritten while the read began; starting the read again");
                        drop((catch_up, main));
                        c.batch_execute("rollback").await?;
                        continue;
                    };
                    if !target.send(Fetched::Started(start)) {
                        return Ok(true);
                    }
                    // The check may have dropped the resume point: then its catch-up is not read.
                    if let Some(catch_up) = catch_up.filter(|_| start.resume.is_some())
                        && (!stream(catch_up, target).await? || !target.send(Fetched::StatementEnd))
                    {
                        return Ok(true);
                    }
                    let from = start.resume.map_or(Tid::block_start(0), |r| r.from);
                    let rows = if from == expected_from {
                        main.await?
                    } else {
                        // The resume point the read expected was dropped by the check (the
                        // table's storage changed): read from the start instead.
                        drop(main);
                        let (sql, params) = read.select(from);
                        c.query_typed_raw(sql, text_params(&params)).await?
                    };
                    return Ok(stream(rows, target).await? && target.send(Fetched::StatementEnd));
                }
            }
        }
        Ok(false)
    });
    // A finished read's transaction wrote nothing: its commit goes out with the session's next
    // request (or the session ends, which rolls it back), not in a round trip of its own.
    client.commit_later();
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

/// Reads `read` with the answers of its opening sent ahead: `Some` with what [`read`]'s work
/// returns for a read, or `None` when the table was rewritten under that opening's snapshot
/// (then it is rolled back, and the read opens as usual).
async fn read_ahead(
    c: &tokio_postgres::Client,
    ahead: Ahead,
    read: &BlockRead,
    target: &Target,
) -> std::result::Result<Option<bool>, tokio_postgres::Error> {
    let (check, rows) = ahead.await?;
    let Some(start) = blocks::start_from(&check, read)? else {
        log::info!("the table was rewritten while the read began; starting the read again");
        drop(rows);
        c.batch_execute("rollback").await?;
        return Ok(None);
    };
    log::debug!("reading with the opening sent ahead with the catalog");
    if !target.send(Fetched::Started(start)) {
        return Ok(Some(true));
    }
    Ok(Some(stream(rows, target).await? && target.send(Fetched::StatementEnd)))
}

/// Sends a statement's rows on in chunks of [`CHUNK_ROWS`] as they arrive: one request, no
/// round trip per chunk. Returns `false` when the encoder stopped listening.
async fn stream(rows: tokio_postgres::RowStream, target: &Target) -> std::result::Result<bool, tokio_postgres::Error> {
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
