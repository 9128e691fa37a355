//! The one error type of tap-heroku, its kinds and their exit codes.
//!
//! Every failure carries a [`ErrorKind`] (which picks the exit code), a context naming what we
//! were doing (file path, `tap_stream_id`, column, pg type; never a cell value or a password),
//! an optional one-sentence hint saying what to fix, and the underlying cause as `source`.
//! Only `main.rs` turns an [`Error`] into text on stderr and an exit code.

use std::fmt;

/// The result type used throughout tap-heroku.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely: it chooses the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line (unknown flag, missing `--config`).
    Usage,
    /// A config key has a wrong or missing value.
    Config,
    /// A config, catalog or state file is missing or unreadable.
    Input,
    /// The catalog is malformed or names something we cannot sync.
    Catalog,
    /// The state file is malformed or holds a bookmark we cannot use.
    State,
    /// The server could not be reached, TLS failed, or the server refused the connection.
    Connect,
    /// Wrong password, or the role lacks a privilege it needs.
    Auth,
    /// A query failed: a table or column vanished, a statement timed out.
    Query,
    /// A value from the server could not be encoded faithfully.
    Encode,
    /// stdout was closed or a write failed.
    Output,
    /// A bug in tap-heroku.
    Internal,
    /// SIGINT arrived during a sync; stopped after a resumable STATE.
    Interrupted,
    /// SIGTERM arrived during a sync; stopped after a resumable STATE.
    Terminated,
}

impl ErrorKind {
    /// The process exit code for this kind (sysexits-style, documented in docs/sync.md).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 64,
            ErrorKind::Catalog | ErrorKind::State | ErrorKind::Query | ErrorKind::Encode => 65,
            ErrorKind::Input => 66,
            ErrorKind::Connect => 69,
            ErrorKind::Internal => 70,
            ErrorKind::Output => 74,
            ErrorKind::Auth => 77,
            ErrorKind::Config => 78,
            ErrorKind::Interrupted => 130,
            ErrorKind::Terminated => 143,
        }
    }
}

/// A failure with its kind, what we were doing, a hint and the cause.
pub struct Error {
    /// Chooses the exit code.
    kind: ErrorKind,
    /// What we were doing, with the names we own; no values, no passwords.
    context: String,
    /// One full sentence saying what to fix.
    hint: Option<String>,
    /// The underlying cause, kept as a chain.
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error with a kind and a context, no hint and no cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Error {
        Error { kind, context: context.into(), hint: None, source: None }
    }

    /// Attaches the one-sentence hint that says what to fix.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        self.source = Some(source.into());
        self
    }

    /// The kind, which chooses the exit code.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What we were doing.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The hint, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Prefixes the context with what the caller was doing (`"stream app-public-users: ..."`).
    pub fn within(mut self, outer: impl fmt::Display) -> Error {
        self.context = format!("{outer}: {}", self.context);
        self
    }

    /// The context followed by the whole source chain, on one line.
    pub fn chain(&self) -> String {
        let mut line = self.context.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(c) = cause {
            let text = c.to_string();
            // rust-postgres and openssl repeat a cause inside its wrapper; print each layer once.
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        line
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("hint", &self.hint)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        }
    }
}

/// Adds a kind and a context to any error on its way up.
pub trait ResultExt<T> {
    /// Wraps the error as `kind` with the context `what()`.
    fn context<C: Into<String>>(self, kind: ErrorKind, what: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E> ResultExt<T> for std::result::Result<T, E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn context<C: Into<String>>(self, kind: ErrorKind, what: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::new(kind, what()).with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_family() {
        assert_eq!(ErrorKind::Usage.exit_code(), 64);
        assert_eq!(ErrorKind::Catalog.exit_code(), 65);
        assert_eq!(ErrorKind::Input.exit_code(), 66);
        assert_eq!(ErrorKind::Connect.exit_code(), 69);
        assert_eq!(ErrorKind::Internal.exit_code(), 70);
        assert_eq!(ErrorKind::Output.exit_code(), 74);
        assert_eq!(ErrorKind::Auth.exit_code(), 77);
        assert_eq!(ErrorKind::Config.exit_code(), 78);
    }

    #[test]
    fn chain_joins_context_and_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e: Result<()> = Err(io).context(ErrorKind::Input, || "reading config c.json");
        let e = e.unwrap_err().within("startup");
        assert_eq!(e.chain(), "startup: reading config c.json: no such file");
        assert_eq!(e.kind().exit_code(), 66);
    }
}
