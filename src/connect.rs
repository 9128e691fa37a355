//! Turns a [`Config`] into live, read-only sessions: libpq's `sslmode` mapped onto an openssl
//! connector, the client certificate and key of mutual TLS (`sslcert`, `sslkey`, `sslpassword`,
//! loaded and checked as libpq does), `application_name=tap-heroku`, a connect timeout, and
//! session settings that make output independent of the server's and the role's TimeZone,
//! DateStyle and IntervalStyle.
//!
//! Also owns the classification of errors, the one place a `tokio_postgres::Error` becomes an
//! [`Error`] with a hint: [`classify_connection`] for opening a session (it needs the session's
//! TLS facts), [`classify_query`] for a statement on an open one.
//! Never prints the password or `sslpassword`: errors name `user@host:port/dbname` and file paths only.
//!
//! Known gaps against libpq: no OpenSSL engine keys (`sslkey=engine:id`), no encrypted DER keys
//! (libpq reads DER only unencrypted too), no implicit `~/.postgresql/postgresql.{crt,key}`.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslContext, SslContextBuilder, SslMethod, SslMode as OpensslMode, SslOptions, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::{Config, SslMode, SslNegotiation};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::tls::MakeTls;

/// Idle time before the first TCP keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between unanswered keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection counts as lost.
const KEEPALIVE_RETRIES: u32 = 3;
/// Settings every session runs with, sent as the startup packet's `options` so they cost no
/// round trip. Read-only by default; output formats pinned so records do not depend on the
/// role's or the server's settings (`search_path` too: regclass and regtype values, and
/// `format_type` names, are qualified relative to it); all are allowed on a hot standby.
/// PgBouncer refuses a startup `options` parameter: [`classify_connection`] then points at the direct URL.
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c search_path=public -c timezone=UTC \
     -c datestyle=ISO,MDY -c intervalstyle=iso_8601 -c extra_float_digits=3 -c bytea_output=hex -c client_min_messages=warning";

/// What to connect with: the base `tokio_postgres::Config` and the TLS connector, built once and
/// reused for every database discovery or sync visits.
pub struct Connector {
    /// Host, port, user, password, timeout, application name, sslmode (for the wire protocol).
    base: tokio_postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<MakeTls>,
    /// `user@host:port` for messages.
    endpoint: String,
    /// As configured, for hints.
    sslmode: SslMode,
    /// Whether `tls` presents a client certificate, for [`Connector::probe_client_certificate`].
    client_cert: bool,
    /// `sslnegotiation=direct`: a failed handshake may be a server that predates it.
    direct_tls: bool,
    /// Server host, for the probe.
    host: String,
    /// Server port.
    port: u16,
    /// Connection attempt limit.
    connect_timeout: Duration,
}

impl Connector {
    /// Builds the connector; fails only when the CA file, the client certificate or its key
    /// cannot be loaded (see [`load_client_identity`]).
    pub fn new(config: &Config) -> Result<Connector> {
        let mut base = tokio_postgres::Config::new();
        base.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .application_name("tap-heroku")
            .options(SESSION_OPTIONS)
            // A dead network path (a NAT that forgot the flow, a failover that left no host) is
            // noticed within about a minute instead of the kernel's two hours, so the stream
            // reconnects (`reconnect_attempts`).
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES)
            .connect_timeout(config.connect_timeout);
        if let Some(password) = &config.password {
            base.password(password);
        }
        base.ssl_mode(match config.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        base.ssl_negotiation(match config.sslnegotiation {
            SslNegotiation::Postgres => tokio_postgres::config::SslNegotiation::Postgres,
            SslNegotiation::Direct => tokio_postgres::config::SslNegotiation::Direct,
        });
        let tls = match config.sslmode {
            SslMode::Disable => None,
            mode => Some(MakeTls::new(tls_context(config, mode)?, mode == SslMode::VerifyFull)),
        };
        if config.sslmode == SslMode::Disable {
            log::warn!("sslmode=disable: the connection is not encrypted (Heroku rejects such connections)");
        }
        let client_cert = tls.is_some() && config.sslcert.is_some();
        Ok(Connector {
            base,
            tls,
            endpoint: format!("{}@{}:{}", config.user, config.host, config.port),
            sslmode: config.sslmode,
            client_cert,
            direct_tls: config.sslnegotiation == SslNegotiation::Direct,
            host: config.host.clone(),
            port: config.port,
            connect_timeout: config.connect_timeout,
        })
    }

    /// Opens a session on `dbname` with [`SESSION_OPTIONS`].
    ///
    /// # Errors
    /// Classified by [`classify_connection`]: `Auth`, `Connect` or `Config` with a hint.
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
        .map_err(|e| {
            // A server that refuses the client certificate under TLS 1.3 sends its alert and
            // closes while our startup message is in flight: the write then often fails with
            // "connection reset" before the alert is read. Ask again, reading first.
            if self.client_cert
                && is_reset(&e)
                && let Some(reason) = self.probe_client_certificate()
            {
                return client_cert_alert(&what(), &reason, true);
            }
            // A server before PostgreSQL 17 (or a pooler) reads the TLS ClientHello as a
            // startup packet of absurd length and closes the connection without a word.
            if self.direct_tls && e.as_db_error().is_none() && (error_text(&e).contains("TLS handshake") || is_reset(&e)) {
                return Error::new(ErrorKind::Connect, what()).with_source(e).with_hint(
                    "The server did not take a direct TLS handshake: \"sslnegotiation\": \"direct\" needs PostgreSQL 17 or later, with nothing older (a pooler, a proxy) in front. Remove sslnegotiation (or set it to \"postgres\").",
                );
            }
            classify_connection(e, &what(), self.sslmode, self.client_cert)
        })
    }

    /// Makes a TLS handshake with the client certificate and reads before writing anything, so
    /// that a server refusing the certificate is heard: its TLS alert reason (`"tlsv1 alert
    /// unknown ca"`), or `None` when the server does not answer with a certificate alert within
    /// [`PROBE_TIMEOUT`] (it then waits for a startup message: the certificate was accepted).
    fn probe_client_certificate(&self) -> Option<String> {
        let tls = self.tls.as_ref().filter(|_| self.client_cert)?;
        log::debug!("connection cut after the tls handshake with a client certificate: asking the server again, reading first");
        let timeout = self.connect_timeout.min(PROBE_TIMEOUT);
        let address = (self.host.as_str(), self.port).to_socket_addrs().ok()?.next()?;
        let mut tcp = TcpStream::connect_timeout(&address, timeout).ok()?;
        tcp.set_read_timeout(Some(timeout)).ok()?;
        tcp.set_write_timeout(Some(timeout)).ok()?;
        // SSLRequest: length 8, then the code 80877103; the server answers 'S' to go on in TLS.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).ok()?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).ok()?;
        if answer[0] != b'S' {
            return None;
        }
        // The connection that failed has checked the server's name already; this asks only
        // what the server thinks of our certificate.
        let ssl = tls.ssl(&self.host, false).ok()?;
        let text = match ssl.connect(tcp) {
            Err(e) => e.to_string(),
            Ok(mut stream) => match stream.read(&mut answer) {
                Err(e) => e.to_string(),
                Ok(_) => return None,
            },
        };
        alert_reason(&text)
    }
}

/// How long [`Connector::probe_client_certificate`] waits for the server's verdict: it comes one
/// round trip after the handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// True when `e` is the connection being reset or cut (what a write after the server's TLS
/// alert gets).
fn is_reset(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && matches!(io.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        cause = c.source();
    }
    false
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

/// TLS key exchange groups in order of preference: the first one's key share is sent.
const TLS_GROUPS: &str = "P-256:X25519:P-384:P-521";

/// The openssl context for `mode`: no verification for prefer/require (libpq's meaning) unless
/// a root certificate is given, chain verification for verify-ca, chain and host name for
/// verify-full (the host is set per connection, [`MakeTls::ssl`]). The system's CA certificates
/// are loaded only when something is verified against them.
fn tls_context(config: &Config, mode: SslMode) -> Result<SslContext> {
    let tls_error = |e: openssl::error::ErrorStack| Error::new(ErrorKind::Config, "setting up TLS").with_source(e);
    let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(tls_error)?;
    builder.set_options(SslOptions::ALL | SslOptions::NO_COMPRESSION);
    // What an async stream needs (a write retried from another buffer, partial writes) and
    // openssl's own client defaults; TLS 1.2 at least, as libpq asks by default.
    builder.set_mode(
        OpensslMode::AUTO_RETRY
            | OpensslMode::ACCEPT_MOVING_WRITE_BUFFER
            | OpensslMode::ENABLE_PARTIAL_WRITE
            | OpensslMode::RELEASE_BUFFERS,
    );
    builder.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(tls_error)?;
    builder.set_cipher_list("DEFAULT:!aNULL:!eNULL:!MD5:!3DES:!DES:!RC4:!IDEA:!SEED:!aDSS:!SRP:!PSK").map_err(tls_error)?;
    // PostgreSQL up to 17 accepts only the P-256 curve by default (`ssl_ecdh_curve`); a client
    // whose TLS 1.3 key share is X25519 (OpenSSL's default) is sent back to try again, one more
    // round trip per connection. Offering P-256 first avoids it; the others stay acceptable.
    if let Err(e) = builder.set_groups_list(TLS_GROUPS) {
        log::debug!("could not set the TLS key exchange groups {TLS_GROUPS}: {e}");
    }
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
            None => {
                builder.set_default_verify_paths().map_err(tls_error)?;
                #[cfg(feature = "vendored-openssl")]
                add_system_ca_locations(&mut builder);
            }
        }
        builder.set_verify(SslVerifyMode::PEER);
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    if let (Some(cert), Some(key)) = (&config.sslcert, &config.sslkey) {
        load_client_identity(&mut builder, cert, key, config.sslpassword.as_deref())?;
    }
    // A direct TLS handshake must name the protocol (ALPN), or PostgreSQL 17 refuses it.
    if config.sslnegotiation == SslNegotiation::Direct {
        builder.set_alpn_protos(b"\x0apostgresql").map_err(tls_error)?;
    }
    Ok(builder.build())
}

/// Adds the system's CA certificate file and directories to a vendored OpenSSL's trust store:
/// it looks for them where it was built to (`/usr/local/ssl`), not where this system keeps them
/// (`/etc/ssl/certs`, `/etc/pki/tls`, ...). `SSL_CERT_FILE` and `SSL_CERT_DIR` still come first.
#[cfg(feature = "vendored-openssl")]
fn add_system_ca_locations(builder: &mut SslContextBuilder) {
    let found = openssl_probe::probe();
    // load_verify_locations needs UTF-8 paths; the candidates are ASCII, the variables may not be.
    let file = found.cert_file.filter(|p| p.to_str().is_some());
    for (file, dir) in file
        .iter()
        .map(|f| (Some(f.as_path()), None))
        .chain(found.cert_dir.iter().filter(|d| d.to_str().is_some()).map(|d| (None, Some(d.as_path()))))
    {
        if let Err(e) = builder.load_verify_locations(file, dir) {
            log::debug!("could not load CA certificates from {:?}: {e}", file.or(dir));
        }
    }
}

/// Longest `sslpassword` OpenSSL's passphrase callback can take (its `PEM_BUFSIZE` buffer).
const MAX_SSLPASSWORD_BYTES: usize = 1024;

/// Loads the client certificate chain `cert` and its private key `key` (decrypted with
/// `password` when encrypted) onto `builder`, with libpq's checks: a key group or others may
/// read is refused, and the key must belong to the certificate.
///
/// # Errors
/// `Config` for a missing, unreadable or malformed file, a key others may read, or a key of
/// another certificate; `Auth` for an encrypted key without `sslpassword` or with a wrong one.
/// No error holds the passphrase or the key.
fn load_client_identity(builder: &mut SslContextBuilder, cert: &Path, key: &Path, password: Option<&str>) -> Result<()> {
    let bytes = std::fs::read(cert).map_err(|e| file_error("sslcert", cert, e))?;
    let chain = X509::stack_from_pem(&bytes).unwrap_or_default();
    let mut chain = chain.into_iter();
    let Some(leaf) = chain.next() else {
        return Err(Error::new(ErrorKind::Config, format!("sslcert {} holds no PEM certificate", cert.display())).with_hint(
            "sslcert must be a PEM file starting with -----BEGIN CERTIFICATE-----, the client certificate first, then any intermediates.",
        ));
    };
    let tls_error = |e: openssl::error::ErrorStack| {
        Error::new(ErrorKind::Config, format!("using sslcert {}", cert.display()))
            .with_source(e)
            .with_hint("Check that sslcert holds the client certificate issued for this database, in PEM form.")
    };
    builder.set_certificate(&leaf).map_err(tls_error)?;
    for intermediate in chain {
        builder.add_extra_chain_cert(intermediate).map_err(tls_error)?;
    }

    let private_key = read_private_key(key, password)?;
    let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&private_key));
    if !matches || builder.set_private_key(&private_key).is_err() || builder.check_private_key().is_err() {
        return Err(Error::new(ErrorKind::Config, format!("sslkey {} is not the key of sslcert {}", key.display(), cert.display()))
            .with_hint("Set sslkey to the private key issued together with the certificate in sslcert."));
    }
    Ok(())
}

/// Reads and decodes the private key file `path`: PEM (decrypted with `password` when
/// encrypted), else unencrypted DER, as libpq tries them. Refuses, as libpq does on Unix, a file
/// that is not a regular file or that group or others may access (see [`key_mode_is_too_open`]).
fn read_private_key(path: &Path, password: Option<&str>) -> Result<PKey<Private>> {
    let metadata = std::fs::metadata(path).map_err(|e| file_error("sslkey", path, e))?;
    if !metadata.is_file() {
        return Err(Error::new(ErrorKind::Config, format!("sslkey {} is not a regular file", path.display()))
            .with_hint("Point sslkey at the private key file of the client certificate."));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if key_mode_is_too_open(metadata.uid(), metadata.mode()) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("sslkey {} is accessible by group or others (mode {:04o})", path.display(), metadata.mode() & 0o7777),
            )
            .with_hint(format!(
                "Run `chmod 600 {}` (0640 is allowed when root owns it); like libpq, tap-heroku refuses a private key others can read.",
                path.display()
            )));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| file_error("sslkey", path, e))?;

    // OpenSSL asks for the passphrase only when the PEM key is encrypted: that tells a missing
    // or wrong sslpassword apart from a file that is not a key.
    let asked = Cell::new(false);
    let too_long = Cell::new(false);
    let pem = PKey::private_key_from_pem_callback(&bytes, |buf: &mut [u8]| {
        asked.set(true);
        let Some(password) = password else { return Ok(0) };
        let password = password.as_bytes();
        if password.len() > buf.len() {
            too_long.set(true);
            return Ok(0);
        }
        buf[..password.len()].copy_from_slice(password);
        Ok(password.len())
    });
    // openssl's error stack names its own source files and repeats itself; the context says
    // what failed, so it is not attached as the source.
    if let Ok(private_key) = pem {
        return Ok(private_key);
    }
    if asked.get() {
        return Err(match password {
            None => Error::new(ErrorKind::Auth, format!("sslkey {} is encrypted and sslpassword is not set", path.display()))
                .with_hint("Set sslpassword to the passphrase of the key (in the config or as a database_url parameter)."),
            Some(_) if too_long.get() => Error::new(ErrorKind::Config, format!("sslpassword is longer than {MAX_SSLPASSWORD_BYTES} bytes"))
                .with_hint(
                    "Decrypt the key with `openssl pkey` into a file only you can read, or re-encrypt it with a shorter passphrase.",
                ),
            Some(_) => Error::new(ErrorKind::Auth, format!("sslpassword does not decrypt sslkey {}", path.display()))
                .with_hint("Check sslpassword: it must be the passphrase the key file was encrypted with."),
        });
    }
    PKey::private_key_from_der(&bytes).map_err(|_| {
        Error::new(ErrorKind::Config, format!("sslkey {} is not a PEM or DER private key", path.display()))
            .with_hint("sslkey must be the private key of the client certificate, in PEM (-----BEGIN PRIVATE KEY-----) or DER form.")
    })
}

/// libpq's rule for key files (`fe-secure-openssl.c`): owned by root, at most `u=rw,g=r` (0640),
/// so that a group can share a system-wide key; otherwise at most `u=rw` (0600).
#[cfg(unix)]
fn key_mode_is_too_open(uid: u32, mode: u32) -> bool {
    let forbidden = if uid == 0 { 0o037 } else { 0o077 };
    mode & forbidden != 0
}

/// A certificate or key file named by `setting` that could not be read.
fn file_error(setting: &str, path: &Path, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::NotFound => {
            format!("Point {setting} at an existing file (a relative path is taken from the directory tap-heroku runs in).")
        }
        io::ErrorKind::PermissionDenied => format!("Make the {setting} file readable by the user tap-heroku runs as."),
        _ => format!("Point {setting} at a readable file."),
    };
    Error::new(ErrorKind::Config, format!("reading {setting} {}", path.display())).with_source(e).with_hint(hint)
}

/// Turns the failure of a statement on an open session, met while `what`, into an [`Error`] with
/// the right kind and a hint: a server error by its SQLSTATE ([`classify_db_error`]), a lost
/// connection as `Connect`, anything else as `Query`.
pub fn classify_query(e: tokio_postgres::Error, what: &str) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().clone();
        return classify_db_error(e, what, &code);
    }
    lost_connection(e, what).unwrap_or_else(|e| Error::new(ErrorKind::Query, what.to_string()).with_source(e))
}

/// Turns the failure of opening a session, met while `what`, into an [`Error`] with the right
/// kind and a hint. The facts of the session's TLS matter here: `sslmode` picks the hint of a
/// failed handshake, and a session that presents a client certificate (`client_cert`) hears a
/// certificate whose CN is not the user reported as a failed password (PostgreSQL's
/// `auth_failed` names the auth method, scram, not the certificate check that failed).
fn classify_connection(e: tokio_postgres::Error, what: &str, sslmode: SslMode, client_cert: bool) -> Error {
    // rust-postgres keeps the interesting part (TLS refusal, openssl's reason, "password
    // missing") in the source chain, not in its own Display text.
    let text = error_text(&e);
    if let Some(db) = e.as_db_error() {
        let code = db.code().clone();
        let message = db.message().to_string();
        let login_refused = is_login_refused(db);
        return if code == SqlState::INVALID_PASSWORD && client_cert {
            Error::new(kind_of(&code), what.to_string()).with_source(e).with_hint("Check password, and that the CN of the certificate in sslcert is this user: with clientcert=verify-full the server reports either mismatch as a failed password.")
        } else if code == SqlState::INVALID_PASSWORD {
            Error::new(kind_of(&code), what.to_string()).with_source(e).with_hint("Check user and password in the config (Heroku: `heroku pg:credentials:url` shows the current ones; they change when credentials rotate).")
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && message.contains("no encryption") {
            Error::new(ErrorKind::Connect, what.to_string())
                .with_source(db_error_only(message))
                .with_hint("The server requires SSL: set \"sslmode\": \"require\" in the config (Heroku rejects unencrypted connections).")
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && message.contains("certificate") {
            // "connection requires a valid client certificate" (pg_hba clientcert=...), and
            // "certificate authentication failed" (pg_hba method cert: CN is not the user).
            Error::new(ErrorKind::Auth, what.to_string()).with_source(db_error_only(message)).with_hint(if client_cert {
                "The server refused the client certificate for this user: check that sslcert is the certificate issued for this user (its CN must be the user name)."
            } else {
                "The server requires a client certificate for this user (Heroku Private and Shield databases with mutual TLS): set sslcert and sslkey."
            })
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && login_refused {
            // A role that does not exist (or may not log in) is a credentials problem like a
            // wrong password: with scram the server even reports it as one (28P01, so that
            // role names cannot be probed); with trust, peer or cert it says so (28000).
            Error::new(ErrorKind::Auth, what.to_string())
                .with_source(db_error_only(message))
                .with_hint("Check user (and password) in the config (Heroku: `heroku pg:credentials:url` shows the current ones; they change when credentials rotate).")
        } else if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            Error::new(kind_of(&code), what.to_string())
                .with_source(e)
                .with_hint("The server refused this user from this address; check user, host and the server's pg_hba.conf.")
        } else if code == SqlState::INVALID_CATALOG_NAME {
            Error::new(ErrorKind::Config, what.to_string())
                .with_source(db_error_only(message))
                .with_hint("Check dbname in the config; `\\l` in psql lists the databases.")
        } else if message.contains("unsupported startup parameter") {
            Error::new(ErrorKind::Connect, what.to_string()).with_source(db_error_only(message)).with_hint(
                "This looks like a connection pooler (PgBouncer; on Heroku the DATABASE_CONNECTION_POOL_URL): connect to the database directly (its DATABASE_URL), which a tap needs for its session settings and long transactions.",
            )
        } else if code == SqlState::TOO_MANY_CONNECTIONS {
            Error::new(kind_of(&code), what.to_string())
                .with_source(e)
                .with_hint("The server has no free connection slots; close other connections or retry later.")
        } else {
            classify_db_error(e, what, &code)
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
    if let Some(reason) = alert_reason(&text) {
        return client_cert_alert(what, &reason, client_cert);
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
    lost_connection(e, what).unwrap_or_else(|e| Error::new(ErrorKind::Query, what.to_string()).with_source(e))
}

/// A server error (SQLSTATE `code`) that any statement can meet, with its kind ([`kind_of`]) and,
/// for the codes a user can act on, a hint.
fn classify_db_error(e: tokio_postgres::Error, what: &str, code: &SqlState) -> Error {
    let base = Error::new(kind_of(code), what.to_string()).with_source(e);
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        base.with_hint(
            "Grant the role what it needs, e.g. GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO <role>, or deselect the stream.",
        )
    } else if *code == SqlState::UNDEFINED_TABLE {
        base.with_hint("The table no longer exists: run --discover again and update the catalog.")
    } else if *code == SqlState::UNDEFINED_COLUMN {
        base.with_hint("A selected column no longer exists: run --discover again and update the catalog.")
    } else if *code == SqlState::QUERY_CANCELED {
        base.with_hint("The statement was cancelled (statement_timeout?); raise the role's statement_timeout or lower itersize.")
    } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN || *code == SqlState::CANNOT_CONNECT_NOW {
        base.with_hint("The server ended the connection (administrator, restart or failover); run again with the last STATE to continue where this run stopped.")
    } else {
        base
    }
}

/// `e`'s Display text followed by its source chain.
fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A connection that could not be made or was lost (closed, an I/O error, a timeout) as a
/// `Connect` error with a hint about the network; `Err(e)` back when `e` is something else.
fn lost_connection(e: tokio_postgres::Error, what: &str) -> std::result::Result<Error, tokio_postgres::Error> {
    let text = error_text(&e);
    let io_kind = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>()).map(io::Error::kind);
    if !(e.is_closed() || io_kind.is_some() || text.contains("error connecting") || text.contains("timeout")) {
        return Err(e);
    }
    let hint = match io_kind {
        Some(io::ErrorKind::TimedOut) => "The server did not answer in time; check host and port, the network, or raise connect_timeout.",
        Some(io::ErrorKind::ConnectionRefused) => "Nothing accepts connections at that host and port; check host and port in the config.",
        _ => "Check host and port in the config and that the server is running and reachable.",
    };
    Ok(Error::new(ErrorKind::Connect, what.to_string()).with_source(e).with_hint(hint))
}

/// The ends of openssl's reason texts for TLS alerts a server sends when it refuses the client's
/// certificate, or gets none where it demands one ("tlsv1 alert unknown ca", "sslv3 alert bad
/// certificate", "tlsv13 alert certificate required", ...).
const CLIENT_CERT_ALERTS: &[&str] = &[
    "alert unknown ca",
    "alert bad certificate",
    "alert certificate unknown",
    "alert certificate expired",
    "alert certificate revoked",
    "alert unsupported certificate",
    "alert certificate required",
    "alert access denied",
];

/// The reason of a TLS alert about a client certificate in openssl's error text `text`
/// (`"tlsv1 alert unknown ca"` out of `"error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert
/// unknown ca:../ssl/record/rec_layer_s3.c:1601:SSL alert number 48"`).
fn alert_reason(text: &str) -> Option<String> {
    let alert = CLIENT_CERT_ALERTS.iter().find(|a| text.contains(*a))?;
    Some(text.split(':').find(|part| part.contains(alert)).unwrap_or(alert).trim().to_string())
}

/// The error for a server's TLS alert `reason` about the client certificate, or about its
/// absence: a TLS alert about a certificate is about ours (when we reject the server's
/// certificate, openssl reports "certificate verify failed", not an alert).
fn client_cert_alert(what: &str, reason: &str, client_cert: bool) -> Error {
    let hint = if reason.contains("certificate required") && !client_cert {
        "The server requires a client certificate (Heroku Private and Shield databases with mutual TLS): set sslcert and sslkey."
    } else {
        "The server rejected the client certificate: sslcert must be signed by a CA the server trusts (Heroku: the certificate issued for this database) and be valid today."
    };
    Error::new(ErrorKind::Auth, what.to_string())
        .with_source(io::Error::other(format!("TLS alert from the server: {reason}")))
        .with_hint(hint)
}

/// Whether a 28000 error is the server refusing the role itself (`role "x" does not exist`,
/// `role "x" is not permitted to log in`), not the address or the encryption (pg_hba.conf).
/// Both are raised in one server function; its name does not depend on `lc_messages`.
fn is_login_refused(db: &tokio_postgres::error::DbError) -> bool {
    db.routine() == Some("InitializeSessionUserId")
}

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

/// The exit-code family of a server error code.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn key_modes_follow_libpq() {
        // (owner uid, mode, refused)
        let cases = [
            (1000, 0o100600, false),
            (1000, 0o100400, false),
            (1000, 0o100640, true),
            (1000, 0o100604, true),
            (1000, 0o100610, true),
            (0, 0o100600, false),
            (0, 0o100640, false),
            (0, 0o100660, true),
            (0, 0o100650, true),
            (0, 0o100644, true),
            (0, 0o100601, true),
        ];
        for (uid, mode, refused) in cases {
            assert_eq!(key_mode_is_too_open(uid, mode), refused, "uid {uid} mode {mode:o}");
        }
    }

    /// A key file with `bytes` and mode 0600 in the temp directory, removed on `Drop`.
    #[cfg(unix)]
    struct KeyFile(std::path::PathBuf);

    #[cfg(unix)]
    impl KeyFile {
        /// Writes the file.
        fn new(name: &str, bytes: &[u8]) -> KeyFile {
            use std::os::unix::fs::OpenOptionsExt;
            let path = std::env::temp_dir().join(format!("tap-heroku-unit-{}-{name}", std::process::id()));
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
            file.write_all(bytes).unwrap();
            KeyFile(path)
        }
    }

    #[cfg(unix)]
    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    #[cfg(unix)]
    fn private_key_forms_and_passphrases() {
        let key = PKey::from_ec_key(
            openssl::ec::EcKey::generate(&openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let pass = "Unit-Pass-7z";
        let encrypted = KeyFile::new(
            "encrypted.pem",
            &key.private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), pass.as_bytes()).unwrap(),
        );
        let der = KeyFile::new("plain.der", &key.private_key_to_der().unwrap());
        let junk = KeyFile::new("junk", b"not a key");

        assert!(read_private_key(&encrypted.0, Some(pass)).unwrap().public_eq(&key));
        assert!(read_private_key(&der.0, Some(pass)).unwrap().public_eq(&key), "sslpassword is ignored for a plain key");
        let long = "x".repeat(MAX_SSLPASSWORD_BYTES + 1);
        // (password, kind, context words)
        let cases = [
            (None, ErrorKind::Auth, "is encrypted and sslpassword is not set"),
            (Some("wrong"), ErrorKind::Auth, "sslpassword does not decrypt sslkey"),
            (Some(long.as_str()), ErrorKind::Config, "sslpassword is longer than 1024 bytes"),
        ];
        for (password, kind, words) in cases {
            let e = read_private_key(&encrypted.0, password).unwrap_err();
            assert_eq!(e.kind(), kind, "{e:?}");
            assert!(e.chain().contains(words), "{e:?}");
            assert!(!e.chain().contains(pass) && !e.chain().contains(&long), "{e:?}");
            assert!(e.hint().is_some(), "{e:?}");
        }
        let e = read_private_key(&junk.0, None).unwrap_err();
        assert_eq!((e.kind(), e.context().ends_with("is not a PEM or DER private key")), (ErrorKind::Config, true), "{e:?}");
    }

    #[test]
    fn alert_reasons_are_cut_out_of_openssl_text() {
        let text = "error communicating with the server: error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:../ssl/record/rec_layer_s3.c:1601:SSL alert number 48";
        assert_eq!(alert_reason(text).as_deref(), Some("tlsv1 alert unknown ca"));
        assert_eq!(alert_reason("tlsv13 alert certificate required").as_deref(), Some("tlsv13 alert certificate required"));
        // Our own verification of the server's certificate is not an alert from the server.
        assert_eq!(alert_reason("error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed"), None);
    }

    #[test]
    fn certificate_alerts_are_auth_errors_with_hints() {
        let e = client_cert_alert("connecting", "tlsv1 alert unknown ca", true);
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(e.hint().unwrap().contains("rejected the client certificate"));
        let e = client_cert_alert("connecting", "tlsv13 alert certificate required", false);
        assert!(e.hint().unwrap().contains("set sslcert and sslkey"));
    }
}
