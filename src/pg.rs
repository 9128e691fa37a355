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
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Error, Row, Socket};

/// A query parameter with the type the server is told it has.
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The connection's message stream, boxed so the client is one type for every TLS mode.
type ConnectionStream = Pin<Box<dyn Stream<Item = Result<AsyncMessage, Error>> + Send>>;

/// One open session: its runtime, the connection (driven whenever the client runs) and the
/// request handle.
pub struct Client {
    /// A current-thread runtime entered once per [`Client::run`].
    runtime: tokio::runtime::Runtime,
    /// Socket I/O and asynchronous messages (notices), polled alongside every future.
    connection: ConnectionStream,
    /// Sends requests; `tokio-postgres` pipelines those whose futures are polled together.
    client: tokio_postgres::Client,
    /// A read-only transaction was left open by [`Client::commit_later`]: its `commit` goes out
    /// with the next request, in the same round trip.
    commit_pending: bool,
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
        Ok(Client { runtime, connection: Box::pin(stream), client, commit_pending: false })
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
        let commit = self.take_commit();
        let Client { runtime, connection, client, .. } = self;
        let future = work(client);
        flatten(drive(runtime, connection, after_commit(client, commit, future)))
    }

    /// Ends the current read-only transaction with the next request instead of now: the commit
    /// of a finished read costs no round trip of its own. Only for transactions that wrote
    /// nothing (a session dropped before its next request rolls the transaction back).
    pub fn commit_later(&mut self) {
        self.commit_pending = true;
    }

    /// Whether a `commit` must precede the next request; clears the mark.
    fn take_commit(&mut self) -> bool {
        std::mem::take(&mut self.commit_pending)
    }

    /// Runs one query (the unnamed statement, one round trip) and collects its rows: for
    /// catalog-sized results.
    ///
    /// # Errors
    /// The query failed or the connection was lost.
    pub fn query(&mut self, sql: &str, params: &[Param<'_>]) -> std::result::Result<Vec<Row>, Error> {
        let params: Vec<_> = params.iter().map(|(value, ty)| (*value, ty.clone())).collect();
        let commit = self.take_commit();
        let future = self.client.query_typed(sql, &params);
        flatten(flatten(drive(&self.runtime, &mut self.connection, after_commit(&self.client, commit, future))))
    }

    /// Runs several independent queries as one pipeline: all are sent before the first answer
    /// is read, so they cost one round trip together. Rows per query, in order.
    ///
    /// # Errors
    /// The first query that failed, or the connection.
    pub fn query_pipelined(&mut self, queries: &[(&str, &[Param<'_>])]) -> std::result::Result<Vec<Vec<Row>>, Error> {
        let params: Vec<Vec<_>> =
            queries.iter().map(|(_, params)| params.iter().map(|(value, ty)| (*value, ty.clone())).collect()).collect();
        let commit = self.take_commit();
        let client = &self.client;
        let futures = queries.iter().zip(&params).map(|((sql, _), params)| client.query_typed(sql, params));
        let future = futures_util::future::try_join_all(futures);
        flatten(flatten(drive(&self.runtime, &mut self.connection, after_commit(client, commit, future))))
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

/// `work`, preceded by a `commit` when `commit`: both are sent together (the commit first, so
/// the work runs outside the finished transaction), one round trip for the two.
async fn after_commit<T>(client: &tokio_postgres::Client, commit: bool, work: impl Future<Output = T>) -> std::result::Result<T, Error> {
    if !commit {
        return Ok(work.await);
    }
    let (committed, out) = futures_util::future::join(client.batch_execute("commit"), work).await;
    committed.map(|()| out)
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
