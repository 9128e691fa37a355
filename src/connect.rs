//! Turns a [`Config`] into live, read-only sessions: libpq's `sslmode` mapped onto an openssl
//! connector, `application_name=tap-heroku`, a connect timeout, and session settings that make
//! output independent of the server's and the role's TimeZone, DateStyle and IntervalStyle.
//!
//! Also owns [`classify`], the one place a `postgres::Error` becomes an [`Error`] with a hint.
//! Never prints the password: errors name `user@host:port/dbname` only.

use std::io;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::{Config, SslMode};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;

/// Settings every session runs with, sent as the startup packet's `options` so they cost no
/// round trip. Read-only by default; output formats pinned so records do not depend on the
/// role's or the server's settings (`search_path` too: regclass and regtype values, and
/// `format_type` names, are qualified relative to it); all are allowed on a hot standby.
/// PgBouncer refuses a startup `options` parameter: [`classify`] then points at the direct URL.
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c search_path=public -c timezone=UTC \
     -c datestyle=ISO,MDY -c intervalstyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex -c client_min_messages=warning";

/// What to connect with: the base `tokio_postgres::Config` and the TLS connector, built once and
/// reused for every database discovery or sync visits.
pub struct Connector {
    /// Host, port, user, password, timeout, application name, sslmode (for the wire protocol).
    base: tokio_postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<MakeTlsConnector>,
    /// `user@host:port` for messages.
    endpoint: String,
    /// As configured, for hints.
    sslmode: SslMode,
}

impl Connector {
    /// Builds the connector; fails only when the CA file cannot be loaded.
    pub fn new(config: &Config) -> Result<Connector> {
        let mut base = tokio_postgres::Config::new();
        base.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .application_name("tap-heroku")
            .options(SESSION_OPTIONS)
            .connect_timeout(config.connect_timeout);
        if let Some(password) = &config.password {
            base.password(password);
        }
        base.ssl_mode(match config.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match config.sslmode {
            SslMode::Disable => None,
            mode => Some(tls_connector(config, mode)?),
        };
        if config.sslmode == SslMode::Disable {
            log::warn!("sslmode=disable: the connection is not encrypted (Heroku rejects such connections)");
        }
        Ok(Connector { base, tls, endpoint: format!("{}@{}:{}", config.user, config.host, config.port), sslmode: config.sslmode })
    }

    /// Opens a session on `dbname` with [`SESSION_OPTIONS`].
    ///
    /// # Errors
    /// Classified by [`classify`]: `Auth`, `Connect` or `Config` with a hint.
    pub fn connect(&self, dbname: &str) -> Result<Client> {
        let mut config = self.base.clone();
        config.dbname(dbname);
        let what = || format!("connecting to {}/{}", self.endpoint, dbname);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Internal, "starting the I/O runtime").with_source(e))?;
        match &self.tls {
            Some(tls) => Client::connect(runtime, &config, tls.clone()),
            None => Client::connect(runtime, &config, NoTls),
        }
        .map_err(|e| classify(e, &what(), self.sslmode))
    }
}

impl Connector {
    /// Asks the server to cancel the query running on the session of `token` (a new short
    /// connection, with the same TLS settings). Best effort: a failure is only logged.
    pub fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return log::warn!("could not cancel the running query: {e}"),
        };
        let result = match &self.tls {
            Some(tls) => runtime.block_on(token.cancel_query(tls.clone())),
            None => runtime.block_on(token.cancel_query(NoTls)),
        };
        if let Err(e) = result {
            log::warn!("could not cancel the running query: {e}");
        }
    }
}

/// The openssl connector for `mode`: no verification for prefer/require (libpq's meaning) unless
/// a root certificate is given, chain verification for verify-ca, chain and host name for verify-full.
fn tls_connector(config: &Config, mode: SslMode) -> Result<MakeTlsConnector> {
    let tls_error = |e: openssl::error::ErrorStack| Error::new(ErrorKind::Config, "setting up TLS").with_source(e);
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
    let verify = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => config.sslrootcert.is_some(),
        _ => false,
    };
    if verify {
        match &config.sslrootcert {
            Some(path) => builder.set_ca_file(path).map_err(|e| {
                Error::new(ErrorKind::Config, format!("loading sslrootcert {}", path.display()))
                    .with_source(e)
                    .with_hint("Point sslrootcert at a PEM file holding the CA certificate of the server.")
            })?,
            None => builder.set_default_verify_paths().map_err(tls_error)?,
        }
        builder.set_verify(SslVerifyMode::PEER);
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    let check_host = mode == SslMode::VerifyFull;
    connector.set_callback(move |connect_config, _domain| {
        connect_config.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(connector)
}

/// Turns a `postgres::Error` met while `what` into an [`Error`] with the right kind and a hint.
pub fn classify(e: tokio_postgres::Error, what: &str, sslmode: SslMode) -> Error {
    // rust-postgres keeps the interesting part (TLS refusal, openssl's reason, "password
    // missing") in the source chain, not in its own Display text.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().clone();
        let message = db.message().to_string();
        let base = Error::new(kind_of(&code), what.to_string()).with_source(e);
        return if code == SqlState::INVALID_PASSWORD {
            base.with_hint("Check user and password in the config (Heroku: `heroku pg:credentials:url` shows the current ones; they change when credentials rotate).")
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && message.contains("no encryption") {
            Error::new(ErrorKind::Connect, what.to_string())
                .with_source(db_error_only(message))
                .with_hint("The server requires SSL: set \"sslmode\": \"require\" in the config (Heroku rejects unencrypted connections).")
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            base.with_hint("The server refused this user from this address; check user, host and the server's pg_hba.conf.")
        } else if code == SqlState::INVALID_CATALOG_NAME {
            Error::new(ErrorKind::Config, what.to_string())
                .with_source(db_error_only(message))
                .with_hint("Check dbname in the config; `\\l` in psql lists the databases.")
        } else if code == SqlState::INSUFFICIENT_PRIVILEGE {
            base.with_hint(
                "Grant the role what it needs, e.g. GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO <role>, or deselect the stream.",
            )
        } else if code == SqlState::UNDEFINED_TABLE {
            base.with_hint("The table no longer exists: run --discover again and update the catalog.")
        } else if code == SqlState::UNDEFINED_COLUMN {
            base.with_hint("A selected column no longer exists: run --discover again and update the catalog.")
        } else if code == SqlState::QUERY_CANCELED {
            base.with_hint("The statement was cancelled (statement_timeout?); raise the role's statement_timeout or lower itersize.")
        } else if code == SqlState::ADMIN_SHUTDOWN || code == SqlState::CRASH_SHUTDOWN || code == SqlState::CANNOT_CONNECT_NOW {
            base.with_hint("The server ended the connection (administrator, restart or failover); run again with the last STATE to continue where this run stopped.")
        } else if message.contains("unsupported startup parameter") {
            Error::new(ErrorKind::Connect, what.to_string()).with_source(db_error_only(message)).with_hint(
                "This looks like a connection pooler (PgBouncer; on Heroku the DATABASE_CONNECTION_POOL_URL): connect to the database directly (its DATABASE_URL), which a tap needs for its session settings and long transactions.",
            )
        } else if code == SqlState::TOO_MANY_CONNECTIONS {
            base.with_hint("The server has no free connection slots; close other connections or retry later.")
        } else {
            base
        };
    }
    if text.contains("password missing") {
        return Error::new(ErrorKind::Auth, what.to_string())
            .with_source(e)
            .with_hint("The server asks for a password: set \"password\" in the config (or put it in database_url).");
    }
    if text.contains("server does not support TLS") {
        return Error::new(ErrorKind::Connect, what.to_string())
            .with_source(e)
            .with_hint("The server does not offer SSL; set \"sslmode\": \"disable\" or \"prefer\" only if you trust the network (Heroku always offers SSL).");
    }
    if text.contains("TLS handshake") || text.contains("certificate") {
        let hint = match sslmode {
            SslMode::VerifyFull => {
                "The server certificate failed verification: check sslrootcert and that host matches the certificate's name, or use \"sslmode\": \"require\" (Heroku's default certificates are not publicly verifiable)."
            }
            SslMode::VerifyCa | SslMode::Require if text.contains("certificate verify failed") => {
                "The server certificate failed verification: check that sslrootcert holds the CA that signed it, or remove sslrootcert and use \"sslmode\": \"require\" to encrypt without verifying."
            }
            _ => "The TLS handshake failed; check sslrootcert and that the server's port speaks PostgreSQL.",
        };
        return Error::new(ErrorKind::Connect, what.to_string()).with_source(e).with_hint(hint);
    }
    let io_kind = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()).map(io::Error::kind);
    if e.is_closed() && what.starts_with("reading rows") {
        return Error::new(ErrorKind::Connect, what.to_string()).with_source(e).with_hint(
            "The connection to the server was lost during the sync; run again with the last STATE to continue where this run stopped.",
        );
    }
    if e.is_closed() || io_kind.is_some() || text.contains("error connecting") || text.contains("timeout") {
        let hint = match io_kind {
            Some(io::ErrorKind::TimedOut) => {
                "The server did not answer in time; check host and port, the network, or raise connect_timeout."
            }
            Some(io::ErrorKind::ConnectionRefused) => {
                "Nothing accepts connections at that host and port; check host and port in the config."
            }
            _ => "Check host and port in the config and that the server is running and reachable.",
        };
        return Error::new(ErrorKind::Connect, what.to_string()).with_source(e).with_hint(hint);
    }
    Error::new(ErrorKind::Query, what.to_string()).with_source(e)
}

/// The exit-code family of a server error code.
/// Whether `e` is worth another connection: the connection was lost (reset, timeout), or the
/// server ended the statement or session for reasons of its own (shutdown, restart, a failover,
/// a hot standby cancelling a long read for a recovery conflict). Authentication, permission
/// and query errors are not: another attempt would fail the same way.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::IDLE_SESSION_TIMEOUT
                || code.code().starts_with("08")
        }
        None => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<io::Error>().is_some()),
    }
}

fn kind_of(code: &SqlState) -> ErrorKind {
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INSUFFICIENT_PRIVILEGE {
        ErrorKind::Auth
    } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || code.code().starts_with("08")
    {
        ErrorKind::Connect
    } else {
        ErrorKind::Query
    }
}

/// The server's message alone, as an error source (drops rust-postgres's `db error:` wrapper).
fn db_error_only(message: String) -> io::Error {
    io::Error::other(message)
}
