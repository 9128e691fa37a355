//! A blocking PostgreSQL client over `tokio-postgres`, shaped for a tap that talks to a server
//! 10 to 80 ms away.
//!
//! The `postgres` crate's blocking client enters its runtime once per call, and once per row
//! when a query is streamed, and cannot have two requests in flight. Here a whole piece of work
//! runs as one future inside one runtime entry ([`Client::run`]): a query streams every row of
//! a table in one request while the rows are handed on, and independent queries (discovery's
//! catalog reads) are sent together and answered in one round trip. Queries use the unnamed
//! statement with their parameter types given (`query_typed`): one round trip each, and no
//! named prepared statements that a transaction-mode pooler would lose.
//!
//! Owns no policy: errors are `tokio_postgres::Error`s for `connect` to classify (opening a
//! session, or a statement: `connect::classify_query`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Error, Row, RowStream, Socket};

/// A query parameter with the type the server is told it has.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The connection's message stream, boxed so the client is one type for every TLS mode.
type ConnectionStream = Pin<Box<dyn Stream<Item = Result<AsyncMessage, Error>> + Send>>;

/// Requests sent ahead of need ([`Client::send_ahead`]): the opening of a read, answered with
/// the rows of a check and the stream of the read's statement.
pub type Ahead = Pin<Box<dyn Future<Output = Result<(Vec<Row>, RowStream), Error>> + Send>>;

/// Makes the [`Ahead`] requests over the shared request handle.
type MakeAhead = Box<dyn FnOnce(Arc<tokio_postgres::Client>) -> Ahead + Send>;

/// One open session: its runtime, the connection (driven whenever the client runs) and the
/// request handle.
pub struct Client {
    /// A current-thread runtime entered once per [`Client::run`].
    runtime: tokio::runtime::Runtime,
    /// Socket I/O and asynchronous messages (notices), polled alongside every future.
    connection: ConnectionStream,
    /// Sends requests; `tokio-postgres` pipelines those whose futures are polled together.
    /// Shared with requests sent ahead, which outlive the call that sent them.
    client: Arc<tokio_postgres::Client>,
    /// A read-only transaction was left open by [`Client::commit_later`]: its `commit` goes out
    /// with the next request, in the same round trip.
    commit_pending: bool,
    /// Requests to send behind the next request's own, with their key ([`Client::send_ahead`]).
    ahead_queued: Option<(String, MakeAhead)>,
    /// Requests sent ahead, waiting to be taken by their key ([`Client::take_ahead`]).
    ahead_sent: Option<(String, Ahead)>,
}

impl Client {
    /// Connects with `config` over `tls`; `runtime` (a current-thread one) then serves only
    /// this session.
    ///
    /// # Errors
    /// The server's or the network's refusal, unclassified.
    pub fn connect<T>(runtime: tokio::runtime::Runtime, config: &tokio_postgres::Config, tls: T) -> std::result::Result<Client, Error>
    where
        T: MakeTlsConnect<Socket> + 'static + Send,
        T::TlsConnect: Send,
        T::Stream: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (client, mut connection) = runtime.block_on(config.connect(tls))?;
        let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        Ok(Client {
            runtime,
            connection: Box::pin(stream),
            client: Arc::new(client),
            commit_pending: false,
            ahead_queued: None,
            ahead_sent: None,
        })
    }

    /// Runs `work` on the request handle to completion, driving the connection meanwhile: the
    /// one runtime entry for everything `work` does. A lost connection ends it with the
    /// connection's error; `work`'s own error type passes through.
    ///
    /// # Errors
    /// Outer: the connection failed. Inner: `work`'s result.
    pub fn run<'a, T, E, F, Fut>(&'a mut self, work: F) -> std::result::Result<std::result::Result<T, E>, Error>
    where
        F: FnOnce(&'a tokio_postgres::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>> + 'a,
    {
        let end = self.take_end();
        let mut ahead = self.make_ahead();
        let Client { runtime, connection, client, ahead_sent, .. } = self;
        let future = work(client);
        let out = flatten(drive(runtime, connection, around(client, end, future, ahead.as_mut().map(|(_, a)| a))));
        *ahead_sent = ahead;
        out
    }

    /// Ends the current read-only transaction with the next request instead of now: the commit
    /// of a finished read costs no round trip of its own. Only for transactions that wrote
    /// nothing (a session dropped before its next request rolls the transaction back).
    pub fn commit_later(&mut self) {
        self.commit_pending = true;
    }

    /// Queues requests that `make` sends to go out behind the next request's own, in its round
    /// trip, for the call after it to take by `key` ([`Client::take_ahead`]) instead of sending
    /// them then: one round trip less when the requests can be known before the answer to the
    /// one before. `make` must open a transaction of its own (the requests leave it open).
    /// Requests sent ahead and not taken by the call after the one that sent them are dropped
    /// (their answers read and discarded) and their transaction rolled back, in that call's
    /// round trip.
    pub fn send_ahead(&mut self, key: String, make: impl FnOnce(Arc<tokio_postgres::Client>) -> Ahead + Send + 'static) {
        self.ahead_queued = Some((key, Box::new(make)));
    }

    /// The requests sent ahead under `key`, to be awaited in a [`Client::run`] (their answers
    /// arrive as that call drives the connection); `None` when none were sent or they were sent
    /// under another key (then they are dropped and rolled back with the next request).
    pub fn take_ahead(&mut self, key: &str) -> Option<Ahead> {
        match self.ahead_sent.take() {
            Some((sent, ahead)) if sent == key => Some(ahead),
            other => {
                self.ahead_sent = other;
                None
            }
        }
    }

    /// How the next request must end the open transaction first: `rollback` when requests sent
    /// ahead were not taken, `commit` after [`Client::commit_later`]. Clears both.
    fn take_end(&mut self) -> Option<&'static str> {
        let commit = std::mem::take(&mut self.commit_pending);
        if self.ahead_sent.take().is_some() {
            log::debug!("requests sent ahead were not used: their answers are dropped and their transaction rolled back");
            return Some("rollback");
        }
        commit.then_some("commit")
    }

    /// The queued requests to send ahead, made now.
    fn make_ahead(&mut self) -> Option<(String, Ahead)> {
        let (key, make) = self.ahead_queued.take()?;
        Some((key, make(Arc::clone(&self.client))))
    }

    /// Runs one query (the unnamed statement, one round trip) and collects its rows: for
    /// catalog-sized results.
    ///
    /// # Errors
    /// The query failed or the connection was lost.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>]) -> std::result::Result<Vec<Row>, Error> {
        let params: Vec<_> = params.iter().map(|(value, ty)| (*value, ty.clone())).collect();
        flatten(self.run(|c| c.query_typed(sql, &params)))
    }

    /// Runs several independent queries as one pipeline: all are sent before the first answer
    /// is read, so they cost one round trip together. Rows per query, in order.
    ///
    /// # Errors
    /// The first query that failed, or the connection.
    pub fn query_pipelined(&mut self, queries: &[(&str, &[Param<'_>])]) -> std::result::Result<Vec<Vec<Row>>, Error> {
        let params: Vec<Vec<_>> =
            queries.iter().map(|(_, params)| params.iter().map(|(value, ty)| (*value, ty.clone())).collect()).collect();
        flatten(
            self.run(|c| {
                futures_util::future::try_join_all(queries.iter().zip(&params).map(|((sql, _), params)| c.query_typed(sql, params)))
            }),
        )
    }

    /// [`Client::query`] for at most one row: the first, or `None`.
    ///
    /// # Errors
    /// As `query`.
    pub fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> std::result::Result<Option<Row>, Error> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// What [`crate::connect::Connector::cancel`] needs to cancel this session's running query.
    pub fn cancel_token(&self) -> tokio_postgres::CancelToken {
        self.client.cancel_token()
    }
}

/// `work`, preceded by `end` (`commit` or `rollback`) and followed by the requests sent `ahead`:
/// all sent together (the end first, so the work runs outside the finished transaction), one
/// round trip. `ahead` is only sent here (polled once), not awaited.
async fn around<T>(
    client: &tokio_postgres::Client,
    end: Option<&'static str>,
    work: impl Future<Output = T>,
    ahead: Option<&mut Ahead>,
) -> std::result::Result<T, Error> {
    let ended = async {
        match end {
            Some(sql) => client.batch_execute(sql).await,
            None => Ok(()),
        }
    };
    let sent = async {
        if let Some(ahead) = ahead {
            send_now(ahead.as_mut()).await;
        }
    };
    // Joined futures are first polled in order: the end, the work's requests, then those ahead.
    let (ended, out, ()) = futures_util::future::join3(ended, work, sent).await;
    ended.map(|()| out)
}

/// Polls `request` once, which sends it, and leaves it to be awaited later: a request queued
/// behind the ones in flight, answered when the server gets to it.
pub async fn send_now<F: Future + ?Sized>(request: Pin<&mut F>) {
    let mut request = Some(request);
    std::future::poll_fn(|cx| {
        if let Some(request) = request.take() {
            let _ = request.poll(cx);
        }
        Poll::Ready(())
    })
    .await;
}

/// Joins the connection's and the work's failure into one.
fn flatten<T>(result: std::result::Result<std::result::Result<T, Error>, Error>) -> std::result::Result<T, Error> {
    result.and_then(|inner| inner)
}

/// Polls `future` and the connection together until the future is done: the connection reads
/// and writes the socket, routing answers to the future's requests, and hands over notices,
/// which are logged. The connection ending first is an error.
fn drive<T, E>(
    runtime: &tokio::runtime::Runtime,
    connection: &mut ConnectionStream,
    future: impl Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<std::result::Result<T, E>, Error> {
    let mut future = pin!(future);
    runtime.block_on(std::future::poll_fn(|cx: &mut Context<'_>| {
        // Poll the work first: it queues requests that the connection then writes.
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        loop {
            match connection.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                    log::info!("server notice: {}: {}", notice.severity(), notice.message());
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        // The connection closed: the work may still finish with what it was sent.
        match future.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Ok(out)),
            Poll::Pending => Poll::Pending,
        }
    }))
}
