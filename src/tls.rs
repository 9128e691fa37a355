//! TLS under tokio-postgres: an openssl [`SslContext`] built by `connect` turned into the
//! handshake and the encrypted stream tokio-postgres drives.
//!
//! Why not `postgres-openssl`: its connector takes an openssl `SslConnector`, whose builder
//! always loads the system's CA certificates (`/etc/ssl/certs/ca-certificates.crt`): about 50 ms
//! per process with OpenSSL 3, spent even for `sslmode=require`, which verifies nothing (Heroku's
//! default). Here the context holds exactly what the sslmode needs, and host name checking
//! (verify-full) and SNI are set per connection as libpq sets them.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{self, Ssl, SslContext, SslRef};
use openssl::x509::X509VerifyResult;
use openssl::x509::verify::X509CheckFlags;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio_openssl::SslStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Bytes read from the socket at a time under TLS: openssl asks for a record header, then its
/// body; buffering turns those small reads into one system call.
const READ_BUFFER_BYTES: usize = 8192;

/// Makes one TLS handshake per connection from a shared context.
#[derive(Clone)]
pub struct MakeTls {
    context: SslContext,
    /// verify-full: the certificate must name the host connected to.
    check_host: bool,
}

impl MakeTls {
    pub fn new(context: SslContext, check_host: bool) -> MakeTls {
        MakeTls { context, check_host }
    }

    /// One connection's TLS state for `host`: SNI for a host name (not for an address, as libpq
    /// does), and, with `check_host`, the name or address the certificate must carry (no partial
    /// wildcards such as `db*.example.com`).
    pub fn ssl(&self, host: &str, check_host: bool) -> Result<Ssl, ErrorStack> {
        let mut ssl = Ssl::new(&self.context)?;
        let address = host.parse::<IpAddr>().ok();
        if address.is_none() {
            ssl.set_hostname(host)?;
        }
        if check_host {
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match address {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(host)?,
            }
        }
        Ok(ssl)
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = ErrorStack;

    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, ErrorStack> {
        Ok(Handshake { ssl: self.ssl(host, self.check_host)? })
    }
}

/// The client side of one TLS handshake.
pub struct Handshake {
    ssl: Ssl,
}

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = Box<dyn Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, Self::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut stream = SslStream::new(self.ssl, BufReader::with_capacity(READ_BUFFER_BYTES, stream))?;
            match Pin::new(&mut stream).connect().await {
                Ok(()) => Ok(TlsStream(stream)),
                Err(error) => {
                    let verify_result = stream.ssl().verify_result();
                    Err(Box::new(HandshakeError { error, verify_result }) as _)
                }
            }
        })
    }
}

/// A failed handshake: openssl's error, and why the certificate was refused when it was
/// (`"certificate verify failed: self-signed certificate in certificate chain"`); `connect`
/// classifies by this text.
#[derive(Debug)]
struct HandshakeError {
    error: ssl::Error,
    verify_result: X509VerifyResult,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if self.verify_result != X509VerifyResult::OK {
            write!(f, ": {}", self.verify_result)?;
        }
        Ok(())
    }
}

impl Error for HandshakeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

/// An established TLS connection.
pub struct TlsStream<S>(SslStream<BufReader<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// SCRAM-SHA-256-PLUS binds the login to this TLS connection with `tls-server-end-point`.
    fn channel_binding(&self) -> ChannelBinding {
        match server_end_point(self.0.ssl()) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with the hash of its
/// signature algorithm, SHA-256 where that is MD5 or SHA-1; `None` when the certificate or its
/// algorithm's hash is unknown (then no channel binding is offered).
fn server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let certificate = ssl.peer_certificate()?;
    let algorithms = certificate.signature_algorithm().object().nid().signature_algorithms()?;
    let digest = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    certificate.digest(digest).ok().map(|hash| hash.to_vec())
}
