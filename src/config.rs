//! Reads the config JSON (plus a `postgres://` URL or Heroku's `DATABASE_URL`) into a validated
//! [`Config`].
//!
//! Accepts the keys of singer-io's tap-postgres and pipelinewise-tap-postgres with the value forms
//! they accept (`"5432"`, `"true"`, comma-separated lists), a few MeltanoLabs aliases, and what
//! Heroku users have in hand (`database_url`, `DATABASE_URL`, split by [`crate::url`]). Unknown
//! keys are warnings. Each default is written once, as a `DEFAULT_*` constant that both
//! [`Config::from_map`] and [`SETTINGS`] (`--about`, docs/configuration.md) use.
//! Owns no connection; `connect` turns a [`Config`] into one. Never puts a password in an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::catalog::ReplicationMethod;
use crate::error::{Error, ErrorKind, Result, ResultExt};
use crate::typemap::OutOfRangeDates;
use crate::url::ConnUrl;

// The defaults, each written once: `from_map` uses these values and [`SETTINGS`] renders them
// for `--about` (and so docs/configuration.md, which must equal its Markdown).

/// Server port when neither the config nor its URL names one.
const DEFAULT_PORT: u16 = 5432;
/// `sslmode` when neither `sslmode`, `ssl` nor the URL names one: Heroku requires TLS.
const DEFAULT_SSLMODE: SslMode = SslMode::Require;
/// How long a connection attempt may take (singer-io's `connect_timeout`).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 30;
/// Rows per batch when the config does not say (singer-io's `itersize`).
pub const DEFAULT_ITERSIZE_ROWS: u32 = 20_000;
/// Destination streams are named `{table}` unless the config says `{schema}_{table}`.
const DEFAULT_INCLUDE_SCHEMAS_IN_DESTINATION_STREAM_NAME: bool = false;
/// json and jsonb columns are strings holding the document (singer-io's form).
const DEFAULT_JSON_AS_OBJECT: bool = false;
/// How FULL_TABLE reads a table when the config does not say.
const DEFAULT_FULL_TABLE_ORDER: FullTableOrder = FullTableOrder::Physical;
/// Reconnects of a stream whose connection was lost, when the config does not say.
const DEFAULT_RECONNECT_ATTEMPTS: u32 = 3;
/// What dates beyond year 1..9999 become when the config does not say.
const DEFAULT_OUT_OF_RANGE_DATES: OutOfRangeDates = OutOfRangeDates::Clamp;

/// libpq's `sslmode` values, with libpq's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; no certificate checks.
    Prefer,
    /// TLS always; the certificate is checked only when `sslrootcert` is given (as libpq does).
    Require,
    /// TLS, certificate chain checked against `sslrootcert` (or the system store).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's `sslnegotiation` (PostgreSQL 17): how a TLS connection starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslNegotiation {
    /// An SSLRequest first, answered before the TLS handshake: every server, one round trip more.
    Postgres,
    /// The TLS handshake at once (ALPN `postgresql`): PostgreSQL 17 and later only.
    Direct,
}

impl SslNegotiation {
    /// Parses libpq's spelling.
    pub fn parse(text: &str) -> Option<SslNegotiation> {
        match text {
            "postgres" => Some(SslNegotiation::Postgres),
            "direct" => Some(SslNegotiation::Direct),
            _ => None,
        }
    }

    /// libpq's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SslNegotiation::Postgres => "postgres",
            SslNegotiation::Direct => "direct",
        }
    }
}

/// How FULL_TABLE reads a table (`full_table_order`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullTableOrder {
    /// In storage order, in ranges of blocks (`where ctid >= .. and ctid < ..`); the resume point
    /// is the next block. Needs PostgreSQL 14 (TID range scans); other servers use the key.
    Physical,
    /// `order by` the primary key; the resume point is the last key sent.
    PrimaryKey,
}

impl FullTableOrder {
    /// The config's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            FullTableOrder::Physical => "physical",
            FullTableOrder::PrimaryKey => "primary_key",
        }
    }
}

/// A validated configuration.
#[derive(Clone)]
pub struct Config {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Its password; never printed.
    pub password: Option<String>,
    /// Database used for the first connection (and the only one when `filter_dbs` names it).
    pub dbname: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// How a TLS connection starts.
    pub sslnegotiation: SslNegotiation,
    /// CA certificate file for verify-ca / verify-full (and require, as libpq does).
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS; set together with `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// Private key of `sslcert` (PEM, possibly encrypted, or DER).
    pub sslkey: Option<PathBuf>,
    /// Passphrase of an encrypted `sslkey`; never printed.
    pub sslpassword: Option<String>,
    /// Connection attempt limit.
    pub connect_timeout: Duration,
    /// Databases to discover; `None` means every database the role may connect to.
    pub filter_dbs: Option<Vec<String>>,
    /// Schemas to discover; `None` means all but system schemas.
    pub filter_schemas: Option<Vec<String>>,
    /// Rows per fetch from the server-side cursor.
    pub itersize: u32,
    /// Method for selected streams whose metadata names none.
    pub default_replication_method: Option<ReplicationMethod>,
    /// Stop cleanly between batches after this long.
    pub max_run_seconds: Option<u64>,
    /// Destination stream names become `{schema}_{table}`.
    pub include_schemas_in_destination_stream_name: bool,
    /// json and jsonb columns as JSON documents instead of strings.
    pub json_as_object: bool,
    /// Reconnects of a stream whose connection was lost.
    pub reconnect_attempts: u32,
    /// How FULL_TABLE reads tables and resumes.
    pub full_table_order: FullTableOrder,
    /// How dates and timestamps with years outside 1..=9999 are written.
    pub out_of_range_dates: OutOfRangeDates,
    /// LOG_BASED: the publication whose changes are read.
    pub logical_publication: String,
    /// LOG_BASED: the slot name, or `None` for `tap_heroku_<dbname>` per database.
    pub logical_slot: Option<String>,
    /// LOG_BASED: WAL a slot may retain before a warning, in MiB.
    pub logical_max_retained_wal_mb: u64,
}

impl std::fmt::Debug for Config {
    /// Prints the endpoint without the password (see [`Config::endpoint`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Config({}, sslmode={})", self.endpoint(), self.sslmode.as_str())
    }
}

/// One setting as `--about` and docs/configuration.md describe it.
pub struct Setting {
    /// Config key.
    pub name: &'static str,
    /// JSON Schema type of the value (`string`, `integer`, `boolean`, `array`).
    pub kind: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Default, if any (one of the `DEFAULT_*` constants).
    pub default: Option<DefaultValue>,
    /// True for the password and the URL that holds one.
    pub secret: bool,
}

/// A setting's default value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// A number.
    Integer(u64),
    /// `true` or `false`.
    Boolean(bool),
    /// A string.
    Text(&'static str),
}

impl DefaultValue {
    /// The value as JSON (`5432`, `false`, `"require"`).
    pub fn to_json(self) -> Value {
        match self {
            DefaultValue::Integer(n) => Value::from(n),
            DefaultValue::Boolean(b) => Value::Bool(b),
            DefaultValue::Text(s) => Value::from(s),
        }
    }
}

/// Every setting tap-heroku reads, in the order docs/configuration.md lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "host",
        kind: "string",
        description: "Server host name or address (Heroku: the Host of the credentials).",
        default: None,
        secret: false,
    },
    Setting {
        name: "port",
        kind: "integer",
        description: "Server port; a number or a numeric string.",
        default: Some(DefaultValue::Integer(DEFAULT_PORT as u64)),
        secret: false,
    },
    Setting {
        name: "user",
        kind: "string",
        description: "Role to log in as; a read-only credential is enough.",
        default: None,
        secret: false,
    },
    Setting { name: "password", kind: "string", description: "Password of the role.", default: None, secret: true },
    Setting {
        name: "dbname",
        kind: "string",
        description: "Database for the first connection (alias: database).",
        default: None,
        secret: false,
    },
    Setting {
        name: "database_url",
        kind: "string",
        description: "postgres://user:password@host:port/dbname?sslmode=... URL (parameters read: sslmode, sslnegotiation, sslrootcert, sslcert, sslkey, sslpassword); discrete keys override its parts. Without host and database_url, the DATABASE_URL environment variable is read.",
        default: None,
        secret: true,
    },
    Setting {
        name: "sslmode",
        kind: "string",
        description: "disable, prefer, require, verify-ca or verify-full, with libpq's meaning (alias: ssl_mode).",
        default: Some(DefaultValue::Text(DEFAULT_SSLMODE.as_str())),
        secret: false,
    },
    Setting {
        name: "sslnegotiation",
        kind: "string",
        description: "postgres (an SSLRequest, then TLS: every server) or direct (TLS at once, one round trip less per connection; PostgreSQL 17 and later, sslmode require or stricter), with libpq's meaning.",
        default: Some(DefaultValue::Text(SslNegotiation::Postgres.as_str())),
        secret: false,
    },
    Setting {
        name: "sslrootcert",
        kind: "string",
        description: "CA certificate file used to verify the server (verify-ca, verify-full; with require it enables verify-ca, as in libpq).",
        default: None,
        secret: false,
    },
    Setting {
        name: "sslcert",
        kind: "string",
        description: "Client certificate file (PEM, the certificate first, then any intermediates) for servers that require one, such as Heroku Private and Shield databases with mutual TLS; needs sslkey.",
        default: None,
        secret: false,
    },
    Setting {
        name: "sslkey",
        kind: "string",
        description: "Private key file of sslcert (PEM, encrypted or not, or unencrypted DER); like libpq, refused when group or others may read it (0600; 0640 if owned by root).",
        default: None,
        secret: false,
    },
    Setting {
        name: "sslpassword",
        kind: "string",
        description: "Passphrase of an encrypted sslkey; ignored for a key that is not encrypted.",
        default: None,
        secret: true,
    },
    Setting {
        name: "ssl",
        kind: "boolean",
        description: "singer-io compatibility: true means sslmode=require, false means sslmode=prefer; ignored when sslmode is set.",
        default: None,
        secret: false,
    },
    Setting {
        name: "connect_timeout",
        kind: "integer",
        description: "Seconds a connection attempt may take.",
        default: Some(DefaultValue::Integer(DEFAULT_CONNECT_TIMEOUT_SECS)),
        secret: false,
    },
    Setting {
        name: "filter_dbs",
        kind: "string",
        description: "Comma-separated databases to discover (default: every database the role may connect to).",
        default: None,
        secret: false,
    },
    Setting {
        name: "filter_schemas",
        kind: "string",
        description: "Comma-separated schemas (or a JSON array) to discover (default: all but system schemas).",
        default: None,
        secret: false,
    },
    Setting {
        name: "itersize",
        kind: "integer",
        description: "Rows per batch: a STATE follows every batch (rows stream from one statement; a storage-order batch ends at the next block boundary).",
        default: Some(DefaultValue::Integer(DEFAULT_ITERSIZE_ROWS as u64)),
        secret: false,
    },
    Setting {
        name: "default_replication_method",
        kind: "string",
        description: "FULL_TABLE, INCREMENTAL, XMIN or LOG_BASED, for selected streams whose metadata names no replication-method.",
        default: None,
        secret: false,
    },
    Setting {
        name: "max_run_seconds",
        kind: "integer",
        description: "Stop cleanly between batches after this many seconds, with a resumable STATE.",
        default: None,
        secret: false,
    },
    Setting {
        name: "include_schemas_in_destination_stream_name",
        kind: "boolean",
        description: "Name destination streams {schema}_{table} instead of {table}.",
        default: Some(DefaultValue::Boolean(DEFAULT_INCLUDE_SCHEMAS_IN_DESTINATION_STREAM_NAME)),
        secret: false,
    },
    Setting {
        name: "json_as_object",
        kind: "boolean",
        description: "Emit json and jsonb columns as JSON documents (objects, arrays, ...) instead of strings holding them (singer-io's form).",
        default: Some(DefaultValue::Boolean(DEFAULT_JSON_AS_OBJECT)),
        secret: false,
    },
    Setting {
        name: "full_table_order",
        kind: "string",
        description: "How FULL_TABLE reads a table: physical (storage order, resumable at the next block, also without a primary key; PostgreSQL 14+) or primary_key (ordered by the primary key, resumable after the last key sent).",
        default: Some(DefaultValue::Text(DEFAULT_FULL_TABLE_ORDER.as_str())),
        secret: false,
    },
    Setting {
        name: "reconnect_attempts",
        kind: "integer",
        description: "Times a stream whose connection is lost (reset, failover, a standby's recovery conflict) reconnects (after 1, 4, 16, ... seconds; failures in a row without progress count) and resumes from the last row written; 0 never.",
        default: Some(DefaultValue::Integer(DEFAULT_RECONNECT_ATTEMPTS as u64)),
        secret: false,
    },
    Setting {
        name: "out_of_range_dates",
        kind: "string",
        description: "Dates and timestamps before year 1 or after 9999 (which date-time and Python cannot hold): clamp (written as 0001-01-01T00:00:00+00:00 or 9999-12-31T23:59:59.999000+00:00, for dates 9999-12-31T00:00:00+00:00, as infinity is; bookmarks keep the exact value; a warning per column) or expanded (exact, in ISO 8601 expanded form such as -0043-03-15T00:00:00+00:00; such columns' schemas then have no date-time format).",
        default: Some(DefaultValue::Text(DEFAULT_OUT_OF_RANGE_DATES.as_str())),
        secret: false,
    },
    Setting {
        name: "logical_publication",
        kind: "string",
        description: "LOG_BASED: the publication whose changes are read (created by an admin: CREATE PUBLICATION tap_heroku FOR TABLE ...; the tap never creates or alters publications).",
        default: Some(DefaultValue::Text(DEFAULT_LOGICAL_PUBLICATION)),
        secret: false,
    },
    Setting {
        name: "logical_slot",
        kind: "string",
        description: "LOG_BASED: the logical replication slot (pgoutput) of each database, created by the tap when missing; default tap_heroku_<dbname> (lowercase, characters other than a-z, 0-9 and _ as _, at most 63 bytes).",
        default: None,
        secret: false,
    },
    Setting {
        name: "logical_max_retained_wal_mb",
        kind: "integer",
        description: "LOG_BASED: warn when the slot holds back more than this much WAL (MiB) on the server.",
        default: Some(DefaultValue::Integer(DEFAULT_LOGICAL_MAX_RETAINED_WAL_MB)),
        secret: false,
    },
];

/// WAL a slot may retain before a warning, when the config does not say.
pub const DEFAULT_LOGICAL_MAX_RETAINED_WAL_MB: u64 = 1024;
/// The publication LOG_BASED reads, when the config does not say.
pub const DEFAULT_LOGICAL_PUBLICATION: &str = "tap_heroku";
/// The longest replication slot name (NAMEDATALEN - 1).
const MAX_SLOT_NAME_BYTES: usize = 63;

/// The slot name for `dbname` when the config names none: `tap_heroku_<dbname>`, lowercase,
/// every character other than `a-z`, `0-9` and `_` as `_`, cut to 63 bytes.
pub fn default_slot_name(dbname: &str) -> String {
    let mut name: String = format!("tap_heroku_{dbname}")
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' })
        .collect();
    name.truncate(MAX_SLOT_NAME_BYTES);
    name
}

/// Keys other taps accept that tap-heroku reads but does not act on; a notice, not an unknown key.
const IGNORED_KEYS: &[&str] = &[
    "debug_lsn",
    "logical_poll_total_seconds",
    "wal2json_message_format",
    "break_at_end_lsn",
    "tap_id",
    "use_secondary",
    "secondary_host",
    "secondary_port",
    "limit",
    "ssl_enable",
];

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// # Errors
    /// `Input` when the file is missing or unreadable, `Config` when it is not a JSON object,
    /// a value has the wrong form, or a required key is missing.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .context(ErrorKind::Input, || format!("reading config {}", path.display()))
            .map_err(|e| e.with_hint("Pass the path of an existing JSON file with --config."))?;
        let value: Value =
            serde_json::from_str(&text).context(ErrorKind::Config, || format!("config {} is not valid JSON", path.display())).map_err(
                |e| e.with_hint("Fix the JSON syntax of the config file; it must be one object such as {\"host\": ..., \"user\": ...}."),
            )?;
        let Value::Object(map) = value else {
            return Err(Error::new(ErrorKind::Config, format!("config {} is not a JSON object", path.display()))
                .with_hint("The config file must hold one JSON object of settings."));
        };
        Config::from_map(&map, std::env::var("DATABASE_URL").ok().as_deref()).map_err(|e| e.within(format!("config {}", path.display())))
    }

    /// Validates a parsed config object; `env_url` is the `DATABASE_URL` environment variable.
    pub fn from_map(map: &Map<String, Value>, env_url: Option<&str>) -> Result<Config> {
        warn_unknown_keys(map);

        let url = connection_url(map, env_url)?;
        let host = opt_string(map, "host")?.or(url.host);
        let port = match map.get("port") {
            Some(v) if !v.is_null() => parse_port(v)?,
            _ => url.port.unwrap_or(DEFAULT_PORT),
        };
        let user = opt_string(map, "user")?.or(url.user);
        let password = opt_string(map, "password")?.or(url.password);
        let dbname = opt_string(map, "dbname")?.or(opt_string(map, "database")?).or(url.dbname);

        check_connection_keys(host.as_deref(), user.as_deref(), dbname.as_deref())?;

        let sslmode = read_sslmode(map, url.sslmode.as_deref())?;
        let sslnegotiation = read_sslnegotiation(map, url.sslnegotiation.as_deref(), sslmode)?;
        let tls = TlsFiles::read(map, (url.sslrootcert, url.sslcert, url.sslkey, url.sslpassword), sslmode)?;

        let connect_timeout = match map.get("connect_timeout") {
            Some(v) if !v.is_null() => Duration::from_secs(parse_uint(v, "connect_timeout", 1, 3600)?),
            _ => Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
        };
        let itersize = match map.get("itersize") {
            Some(v) if !v.is_null() => parse_uint(v, "itersize", 1, 10_000_000)? as u32,
            _ => DEFAULT_ITERSIZE_ROWS,
        };
        let max_run_seconds = match map.get("max_run_seconds") {
            Some(v) if !v.is_null() => Some(parse_uint(v, "max_run_seconds", 0, u64::MAX / 2)?),
            _ => None,
        };
        let default_replication_method = match opt_string(map, "default_replication_method")? {
            Some(text) if !text.is_empty() => Some(ReplicationMethod::parse(&text.to_ascii_uppercase()).ok_or_else(|| {
                Error::new(ErrorKind::Config, "default_replication_method is not FULL_TABLE, INCREMENTAL, XMIN or LOG_BASED")
                    .with_hint("Set default_replication_method to \"FULL_TABLE\", \"INCREMENTAL\", \"XMIN\" or \"LOG_BASED\".")
            })?),
            _ => None,
        };
        let logical_slot = opt_string(map, "logical_slot")?;
        if let Some(slot) = &logical_slot
            && (slot.len() > MAX_SLOT_NAME_BYTES || !slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(Error::new(ErrorKind::Config, "logical_slot is not a valid replication slot name")
                .with_hint("Use at most 63 characters of a-z, 0-9 and _ (PostgreSQL's rule for slot names), e.g. \"tap_heroku_app\"."));
        }
        let logical_publication = opt_string(map, "logical_publication")?.unwrap_or_else(|| DEFAULT_LOGICAL_PUBLICATION.to_string());
        let logical_max_retained_wal_mb = match map.get("logical_max_retained_wal_mb") {
            Some(v) if !v.is_null() => parse_uint(v, "logical_max_retained_wal_mb", 1, u64::MAX / (1 << 21))?,
            _ => DEFAULT_LOGICAL_MAX_RETAINED_WAL_MB,
        };
        let include_schemas_in_destination_stream_name = match map.get("include_schemas_in_destination_stream_name") {
            Some(v) if !v.is_null() => parse_bool(v, "include_schemas_in_destination_stream_name")?,
            _ => DEFAULT_INCLUDE_SCHEMAS_IN_DESTINATION_STREAM_NAME,
        };

        Ok(Config {
            host: host.unwrap_or_default(),
            port,
            user: user.unwrap_or_default(),
            password,
            dbname: dbname.unwrap_or_default(),
            sslmode,
            sslnegotiation,
            sslrootcert: tls.sslrootcert,
            sslcert: tls.sslcert,
            sslkey: tls.sslkey,
            sslpassword: tls.sslpassword,
            connect_timeout,
            filter_dbs: parse_list(map, "filter_dbs")?,
            filter_schemas: parse_list(map, "filter_schemas")?,
            itersize,
            default_replication_method,
            max_run_seconds,
            include_schemas_in_destination_stream_name,
            reconnect_attempts: match map.get("reconnect_attempts") {
                Some(v) if !v.is_null() => parse_uint(v, "reconnect_attempts", 0, 20)? as u32,
                _ => DEFAULT_RECONNECT_ATTEMPTS,
            },
            json_as_object: match map.get("json_as_object") {
                Some(v) if !v.is_null() => parse_bool(v, "json_as_object")?,
                _ => DEFAULT_JSON_AS_OBJECT,
            },
            full_table_order: match opt_string(map, "full_table_order")?.map(|t| t.to_ascii_lowercase()).as_deref() {
                None => DEFAULT_FULL_TABLE_ORDER,
                Some("physical") => FullTableOrder::Physical,
                Some("primary_key") => FullTableOrder::PrimaryKey,
                Some(_) => {
                    return Err(Error::new(ErrorKind::Config, "full_table_order is not physical or primary_key")
                        .with_hint("Set full_table_order to \"physical\" (the default) or \"primary_key\"."));
                }
            },
            out_of_range_dates: match opt_string(map, "out_of_range_dates")?.map(|t| t.to_ascii_lowercase()).as_deref() {
                None => DEFAULT_OUT_OF_RANGE_DATES,
                Some("clamp") => OutOfRangeDates::Clamp,
                Some("expanded") => OutOfRangeDates::Expanded,
                Some(_) => {
                    return Err(Error::new(ErrorKind::Config, "out_of_range_dates is not clamp or expanded")
                        .with_hint("Set out_of_range_dates to \"clamp\" (the default) or \"expanded\"."));
                }
            },
            logical_publication,
            logical_slot,
            logical_max_retained_wal_mb,
        })
    }

    /// `user@host:port/dbname`, without the password: safe for logs and errors.
    pub fn endpoint(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// Refuses a URL (or `user@host`) in `host`, `dbname` or `user`, and names the required keys
/// that are missing.
fn check_connection_keys(host: Option<&str>, user: Option<&str>, dbname: Option<&str>) -> Result<()> {
    // A URL pasted into host (or dbname) would put its password into every error message.
    for (key, value) in [("host", host), ("dbname", dbname), ("user", user)] {
        if value.is_some_and(|v| v.contains("://") || (key != "user" && v.contains('@'))) {
            return Err(Error::new(ErrorKind::Config, format!("{key} holds a URL or user@host, not a {key}"))
                .with_hint("Put a postgres:// URL in database_url, and only the host name in host."));
        }
    }
    let mut missing = Vec::new();
    if host.is_none() {
        missing.push("host");
    }
    if user.is_none() {
        missing.push("user");
    }
    if dbname.is_none() {
        missing.push("dbname");
    }
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("missing required keys: {} (or database_url, or the DATABASE_URL environment variable)", missing.join(", ")),
        )
        .with_hint(
            "Set database_url in the config or export DATABASE_URL (Heroku: `heroku config:get DATABASE_URL -a <app>`), or set host, port, user, password and dbname.",
        ));
    }
    Ok(())
}

/// Logs the config keys that tap-heroku ignores, with the nearest known key for a typo.
fn warn_unknown_keys(map: &Map<String, Value>) {
    for key in map.keys() {
        if IGNORED_KEYS.contains(&key.as_str()) {
            log::info!("config key {key} is accepted for compatibility and has no effect in tap-heroku");
        } else if !is_known_key(key) {
            match nearest_key(key) {
                Some(near) => log::warn!("unknown config key {key} is ignored; did you mean {near}?"),
                None => log::warn!("unknown config key {key} is ignored (`tap-heroku --about --format markdown` lists the settings)"),
            }
        }
    }
}

/// The URL in `database_url` (or `sqlalchemy_url`), or else, without `host`, in the
/// `DATABASE_URL` environment variable (`env_url`); all parts empty without one.
fn connection_url(map: &Map<String, Value>, env_url: Option<&str>) -> Result<ConnUrl> {
    let mut url = None;
    if let Some(text) = opt_string(map, "database_url")?.or(opt_string(map, "sqlalchemy_url")?) {
        url = Some(ConnUrl::parse(&text).map_err(|e| e.within("database_url"))?);
    } else if !map.contains_key("host")
        && let Some(text) = env_url
    {
        url = Some(ConnUrl::parse(text).map_err(|e| e.within("DATABASE_URL environment variable"))?);
    }
    Ok(url.unwrap_or_default())
}

/// `sslmode` (or `ssl_mode`), else singer-io's `ssl`, else the URL's `sslmode` (`url_sslmode`),
/// else [`DEFAULT_SSLMODE`].
fn read_sslmode(map: &Map<String, Value>, url_sslmode: Option<&str>) -> Result<SslMode> {
    Ok(match opt_string(map, "sslmode")?.or(opt_string(map, "ssl_mode")?) {
        Some(text) => parse_sslmode(&text)?,
        None => match map.get("ssl") {
            Some(v) if !v.is_null() => {
                if parse_bool(v, "ssl")? {
                    SslMode::Require
                } else {
                    SslMode::Prefer
                }
            }
            _ => match url_sslmode {
                Some(text) => parse_sslmode(text).map_err(|e| e.within("database_url"))?,
                None => DEFAULT_SSLMODE,
            },
        },
    })
}

/// `sslnegotiation`, else the URL's, else `postgres`; `direct` needs TLS for certain, so not with
/// `sslmode` disable or prefer (libpq refuses those too).
fn read_sslnegotiation(map: &Map<String, Value>, url_value: Option<&str>, sslmode: SslMode) -> Result<SslNegotiation> {
    let (text, within) = match opt_string(map, "sslnegotiation")? {
        Some(text) => (Some(text), None),
        None => (url_value.map(str::to_string), Some("database_url")),
    };
    let Some(text) = text else { return Ok(SslNegotiation::Postgres) };
    let negotiation = SslNegotiation::parse(&text).ok_or_else(|| {
        let e = Error::new(ErrorKind::Config, "sslnegotiation is not postgres or direct")
            .with_hint("Set \"sslnegotiation\" to \"direct\" (PostgreSQL 17 and later) or \"postgres\" (every server; the default).");
        match within {
            Some(w) => e.within(w),
            None => e,
        }
    })?;
    if negotiation == SslNegotiation::Direct && matches!(sslmode, SslMode::Disable | SslMode::Prefer) {
        return Err(Error::new(ErrorKind::Config, format!("sslnegotiation direct needs TLS, and sslmode is {}", sslmode.as_str()))
            .with_hint("Set \"sslmode\" to \"require\" (or verify-ca, verify-full), or remove sslnegotiation."));
    }
    Ok(negotiation)
}

/// The TLS files and passphrase: the config's keys, else the URL's parameters; the client
/// certificate and key come as a pair.
struct TlsFiles {
    /// `sslrootcert`, an existing file.
    sslrootcert: Option<PathBuf>,
    /// `sslcert`.
    sslcert: Option<PathBuf>,
    /// `sslkey`.
    sslkey: Option<PathBuf>,
    /// `sslpassword`.
    sslpassword: Option<String>,
}

impl TlsFiles {
    /// Reads them from `map`, the URL's values (`sslrootcert`, `sslcert`, `sslkey`,
    /// `sslpassword`) filling in; warns of those `sslmode` makes useless.
    fn read(
        map: &Map<String, Value>,
        (url_sslrootcert, url_sslcert, url_sslkey, url_sslpassword): (Option<String>, Option<String>, Option<String>, Option<String>),
        sslmode: SslMode,
    ) -> Result<TlsFiles> {
        let sslrootcert = opt_string(map, "sslrootcert")?.or(url_sslrootcert).map(PathBuf::from);
        if let Some(path) = &sslrootcert
            && !path.is_file()
        {
            return Err(Error::new(ErrorKind::Config, format!("sslrootcert {} does not exist", path.display()))
                .with_hint("Point sslrootcert at a readable PEM file with the server's CA certificate, or remove the key."));
        }

        let sslcert = opt_string(map, "sslcert")?.or(url_sslcert).map(PathBuf::from);
        let sslkey = opt_string(map, "sslkey")?.or(url_sslkey).map(PathBuf::from);
        let sslpassword = opt_string(map, "sslpassword")?.or(url_sslpassword);
        // libpq falls back to ~/.postgresql/postgresql.{crt,key} for the missing half; we read no
        // implicit files (a tap should not change behaviour with $HOME), so one half alone is an error.
        match (&sslcert, &sslkey) {
            (Some(_), None) => {
                return Err(Error::new(ErrorKind::Config, "sslcert is set but sslkey is not")
                    .with_hint("Set sslkey to the private key file of the client certificate, or remove sslcert."));
            }
            (None, Some(_)) => {
                return Err(Error::new(ErrorKind::Config, "sslkey is set but sslcert is not")
                    .with_hint("Set sslcert to the client certificate file that belongs to the key, or remove sslkey."));
            }
            _ => {}
        }
        if sslpassword.is_some() && sslkey.is_none() {
            log::warn!("sslpassword is set without sslkey and has no effect");
        }
        if sslcert.is_some() && sslmode == SslMode::Disable {
            log::warn!("sslmode=disable: sslcert and sslkey are not used");
        }
        Ok(TlsFiles { sslrootcert, sslcert, sslkey, sslpassword })
    }
}

/// True for every key tap-heroku reads, including aliases.
fn is_known_key(key: &str) -> bool {
    SETTINGS.iter().any(|s| s.name == key) || KEY_ALIASES.contains(&key)
}

/// Other names of settings (tap-postgres's and pipelinewise's spellings).
const KEY_ALIASES: &[&str] = &["database", "ssl_mode", "sqlalchemy_url"];

/// Least Jaro similarity for an unknown key to be offered as a typo of a known one: catches
/// swapped, missing and doubled letters and added suffixes (`passwrod`, `hostname`, `db_name`)
/// without pairing unrelated words, as clap does for flags.
const SUGGESTION_MIN_SIMILARITY: f64 = 0.8;

/// The known setting whose name is most like `key`, if any is alike enough.
fn nearest_key(key: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .map(|s| s.name)
        .chain(KEY_ALIASES.iter().copied())
        .map(|name| (strsim::jaro(&key.to_ascii_lowercase(), name), name))
        .filter(|(similarity, _)| *similarity >= SUGGESTION_MIN_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

/// A string setting: JSON string (numbers are accepted and turned to text); null, absent and
/// empty are `None`.
fn opt_string(map: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Error::new(ErrorKind::Config, format!("{key} must be a string"))
            .with_hint(format!("Write {key} as a JSON string, e.g. \"{key}\": \"...\"."))),
    }
}

/// A boolean setting: `true`/`false` or the strings `"true"`/`"false"` (any case).
fn parse_bool(value: &Value, key: &str) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") || s.is_empty() => Ok(false),
        _ => Err(Error::new(ErrorKind::Config, format!("{key} must be true or false"))
            .with_hint(format!("Write {key} as true, false, \"true\" or \"false\"."))),
    }
}

/// An unsigned integer setting within `min..=max`: a JSON integer or a numeric string.
fn parse_uint(value: &Value, key: &str, min: u64, max: u64) -> Result<u64> {
    let example = match key {
        "port" => 5432,
        "itersize" => 20000,
        "connect_timeout" => 30,
        "max_run_seconds" => 3600,
        _ => min.max(1),
    };
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match parsed {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::new(ErrorKind::Config, format!("{key} must be a whole number from {min} to {max}"))
            .with_hint(format!("Write {key} as a number, e.g. \"{key}\": {example}."))),
    }
}

/// `port`: 1..=65535, as a number or a numeric string.
fn parse_port(value: &Value) -> Result<u16> {
    Ok(parse_uint(value, "port", 1, 65535)? as u16)
}

/// `sslmode` text.
fn parse_sslmode(text: &str) -> Result<SslMode> {
    SslMode::parse(text).ok_or_else(|| {
        Error::new(ErrorKind::Config, "sslmode is not one of disable, prefer, require, verify-ca, verify-full")
            .with_hint("Set \"sslmode\": \"require\" (Heroku rejects unencrypted connections).")
    })
}

/// A list setting: a comma-separated string (singer-io, pipelinewise) or an array of strings
/// (MeltanoLabs). Items are trimmed; empty items dropped; an empty list means no filter.
fn parse_list(map: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    let items: Vec<String> = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
        Some(Value::Array(values)) => {
            let mut items = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    Value::String(s) => items.push(s.trim().to_string()),
                    _ => {
                        return Err(Error::new(ErrorKind::Config, format!("{key} must hold only strings"))
                            .with_hint(format!("Write {key} as \"a,b\" or [\"a\", \"b\"].")));
                    }
                }
            }
            items
        }
        Some(_) => {
            return Err(Error::new(ErrorKind::Config, format!("{key} must be a comma-separated string or an array"))
                .with_hint(format!("Write {key} as \"a,b\" or [\"a\", \"b\"].")));
        }
    };
    let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
    Ok(if items.is_empty() { None } else { Some(items) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses a config object literal.
    fn parse(v: Value, env: Option<&str>) -> Result<Config> {
        Config::from_map(v.as_object().unwrap(), env)
    }

    #[test]
    fn singer_io_forms_are_accepted() {
        let c = parse(
            json!({"host": "h", "port": "6543", "user": "u", "password": "p", "dbname": "d",
            "ssl": "true", "itersize": "500", "include_schemas_in_destination_stream_name": "true",
            "filter_dbs": "a, b", "default_replication_method": "FULL_TABLE"}),
            None,
        )
        .unwrap();
        assert_eq!(c.port, 6543);
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.itersize, 500);
        assert!(c.include_schemas_in_destination_stream_name);
        assert!(!c.json_as_object);
        assert_eq!(c.filter_dbs, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(c.default_replication_method, Some(ReplicationMethod::FullTable));
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "json_as_object": "true"}), None).unwrap();
        assert!(c.json_as_object);
        assert_eq!(c.full_table_order, FullTableOrder::Physical);
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "full_table_order": "PRIMARY_KEY"}), None).unwrap();
        assert_eq!(c.full_table_order, FullTableOrder::PrimaryKey);
        let e = parse(json!({"host": "h", "user": "u", "dbname": "d", "full_table_order": "random"}), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "out_of_range_dates": "Expanded"}), None).unwrap();
        assert_eq!(c.out_of_range_dates, OutOfRangeDates::Expanded);
        let e = parse(json!({"host": "h", "user": "u", "dbname": "d", "out_of_range_dates": "raw"}), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.hint().unwrap().contains("expanded"));
    }

    #[test]
    fn defaults() {
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d"}), None).unwrap();
        assert_eq!(c.port, 5432);
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.itersize, DEFAULT_ITERSIZE_ROWS);
        assert_eq!(c.filter_schemas, None);
        assert_eq!(c.max_run_seconds, None);
        assert_eq!(c.out_of_range_dates, OutOfRangeDates::Clamp);
        assert_eq!((c.logical_publication.as_str(), c.logical_slot.as_deref()), ("tap_heroku", None));
        assert_eq!(c.logical_max_retained_wal_mb, 1024);
    }

    #[test]
    fn slot_names_default_per_database_and_are_checked() {
        assert_eq!(default_slot_name("App-Prod.db"), "tap_heroku_app_prod_db");
        assert_eq!(default_slot_name("Ünï"), "tap_heroku__n_");
        assert_eq!(default_slot_name(&"d".repeat(100)).len(), 63);
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "logical_slot": "s_1", "logical_publication": "pub"}), None).unwrap();
        assert_eq!((c.logical_slot.as_deref(), c.logical_publication.as_str()), (Some("s_1"), "pub"));
        for bad in ["Slot", "a-b", &"s".repeat(64)] {
            let e = parse(json!({"host": "h", "user": "u", "dbname": "d", "logical_slot": bad}), None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
            assert!(e.hint().unwrap().contains("63"));
        }
    }

    #[test]
    fn ssl_false_means_prefer_and_sslmode_wins() {
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "ssl": false}), None).unwrap();
        assert_eq!(c.sslmode, SslMode::Prefer);
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "ssl": "true", "sslmode": "verify-full"}), None).unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn filter_schemas_as_array_or_string() {
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "filter_schemas": ["s1", "s2"]}), None).unwrap();
        assert_eq!(c.filter_schemas, Some(vec!["s1".into(), "s2".into()]));
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "filter_schemas": "s1,,s2 "}), None).unwrap();
        assert_eq!(c.filter_schemas, Some(vec!["s1".into(), "s2".into()]));
    }

    #[test]
    fn url_parts_and_overrides() {
        let c = parse(json!({"database_url": "postgres://us%40r:p%3Ass@db.example.com:5433/my_db?sslmode=verify-full"}), None).unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_deref(), c.host.as_str(), c.port, c.dbname.as_str()),
            ("us@r", Some("p:ss"), "db.example.com", 5433, "my_db")
        );
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        let c = parse(json!({"database_url": "postgresql://u:p@h/d", "dbname": "other", "sslmode": "disable"}), None).unwrap();
        assert_eq!((c.dbname.as_str(), c.port, c.sslmode), ("other", 5432, SslMode::Disable));
        let c = parse(json!({"database_url": "postgres://u@[::1]:6000/d"}), None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 6000));
    }

    #[test]
    fn env_database_url_used_only_without_host() {
        let env = Some("postgres://eu:ep@eh:1234/ed");
        let c = parse(json!({}), env).unwrap();
        assert_eq!((c.host.as_str(), c.user.as_str(), c.dbname.as_str()), ("eh", "eu", "ed"));
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d"}), env).unwrap();
        assert_eq!(c.host, "h");
    }

    #[test]
    fn bad_values_are_config_errors_without_secrets() {
        let cases = [
            json!({"user": "u", "dbname": "d"}),
            json!({"host": "h", "user": "u", "dbname": "d", "port": 70000}),
            json!({"host": "h", "user": "u", "dbname": "d", "port": "abc"}),
            json!({"host": "h", "user": "u", "dbname": "d", "port": true}),
            json!({"host": "h", "user": "u", "dbname": "d", "sslmode": "sometimes"}),
            json!({"host": "h", "user": "u", "dbname": "d", "itersize": 0}),
            json!({"host": "h", "user": "u", "dbname": "d", "ssl": "maybe"}),
            json!({"host": "h", "user": "u", "dbname": "d", "default_replication_method": "FAST"}),
            json!({"host": "h", "user": "u", "dbname": "d", "sslrootcert": "/nonexistent/ca.crt"}),
            json!({"database_url": "mysql://u:hunter2@h/d"}),
            json!({"database_url": "postgres://u:hunter2@h:99999/d"}),
            json!({"host": ["h"], "user": "u", "dbname": "d"}),
            json!({"host": "postgres://alice:hunter2@db.example.com:5432/d1", "user": "alice", "dbname": "d1"}),
            json!({"host": "h", "user": "u", "dbname": "postgres://alice:hunter2@h/d"}),
            json!({"database_url": "postgres://alice:12?hunter2@db.example.com/d1"}),
            json!({"host": "h", "user": "u", "dbname": "d", "sslnegotiation": "quick"}),
            json!({"host": "h", "user": "u", "dbname": "d", "sslnegotiation": "direct", "sslmode": "prefer"}),
            json!({"database_url": "postgres://u:hunter2@h/d?sslmode=disable&sslnegotiation=direct"}),
            json!({"database_url": "postgres://u:hunter2@h/d?sslnegotiation=fast"}),
        ];
        for case in cases {
            let err = parse(case.clone(), None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{case}");
            assert!(err.hint().is_some(), "{case}");
            assert!(!err.chain().contains("hunter2"), "{case}");
        }
    }

    #[test]
    fn sslnegotiation_from_the_config_or_the_url() {
        let base = json!({"host": "h", "user": "u", "dbname": "d"});
        assert_eq!(parse(base.clone(), None).unwrap().sslnegotiation, SslNegotiation::Postgres);
        let direct = parse(json!({"host": "h", "user": "u", "dbname": "d", "sslnegotiation": "direct"}), None).unwrap();
        assert_eq!((direct.sslnegotiation, direct.sslmode), (SslNegotiation::Direct, SslMode::Require));
        let url = parse(json!({"database_url": "postgres://u:p@h/d?sslmode=verify-full&sslnegotiation=direct"}), None).unwrap();
        assert_eq!(url.sslnegotiation, SslNegotiation::Direct);
        // The config's key wins over the URL's parameter.
        let both = parse(json!({"database_url": "postgres://u:p@h/d?sslnegotiation=direct", "sslnegotiation": "postgres"}), None).unwrap();
        assert_eq!(both.sslnegotiation, SslNegotiation::Postgres);
    }

    #[test]
    fn client_certificate_keys_and_url_parameters() {
        let c =
            parse(json!({"host": "h", "user": "u", "dbname": "d", "sslcert": "c.crt", "sslkey": "c.key", "sslpassword": "Pass-Q9"}), None)
                .unwrap();
        assert_eq!((c.sslcert, c.sslkey, c.sslpassword.as_deref()), (Some("c.crt".into()), Some("c.key".into()), Some("Pass-Q9")));
        let c =
            parse(json!({"database_url": "postgres://u:p@h/d?sslcert=%2Fk%2Fc.crt&sslkey=/k/c.key&sslpassword=a%26b%3Dc"}), None).unwrap();
        assert_eq!((c.sslcert, c.sslkey, c.sslpassword.as_deref()), (Some("/k/c.crt".into()), Some("/k/c.key".into()), Some("a&b=c")));
        // Discrete keys override the URL's parameters, as for every other part.
        let c = parse(json!({"database_url": "postgres://u:p@h/d?sslcert=a.crt&sslkey=a.key", "sslkey": "b.key"}), None).unwrap();
        assert_eq!((c.sslcert, c.sslkey), (Some("a.crt".into()), Some("b.key".into())));
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "sslpassword": "Pass-Q9"}), None).unwrap();
        assert_eq!((&c.sslcert, &c.sslkey), (&None, &None));
        assert!(!format!("{c:?}").contains("Pass-Q9"));
    }

    #[test]
    fn one_half_of_a_client_certificate_is_a_config_error() {
        let cases = [
            (json!({"host": "h", "user": "u", "dbname": "d", "sslcert": "c.crt"}), "sslcert is set but sslkey is not"),
            (
                json!({"host": "h", "user": "u", "dbname": "d", "sslkey": "c.key", "sslpassword": "hunter2"}),
                "sslkey is set but sslcert is not",
            ),
            (json!({"database_url": "postgres://u:hunter2@h/d?sslkey=c.key"}), "sslkey is set but sslcert is not"),
        ];
        for (case, context) in cases {
            let err = parse(case.clone(), None).unwrap_err();
            assert_eq!((err.kind(), err.context()), (ErrorKind::Config, context), "{case}");
            assert!(err.hint().is_some_and(|h| h.ends_with('.')), "{case}");
            assert!(!err.chain().contains("hunter2"), "{case}");
        }
        let err = parse(json!({"host": "h", "user": "u", "dbname": "d", "sslcert": ["c.crt"], "sslkey": "c.key"}), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn missing_keys_are_named() {
        let err = parse(json!({"host": "h"}), None).unwrap_err();
        assert_eq!(err.context(), "missing required keys: user, dbname (or database_url, or the DATABASE_URL environment variable)");
        assert!(err.hint().is_some_and(|h| h.contains("DATABASE_URL")), "{:?}", err.hint());
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_one() {
        for (typo, want) in [
            ("passwrod", Some("password")),
            ("pasword", Some("password")),
            ("Password", Some("password")),
            ("hostname", Some("host")),
            ("db_name", Some("dbname")),
            ("sslmodee", Some("sslmode")),
            ("database_uri", Some("database_url")),
            ("filter_db", Some("filter_dbs")),
            ("itersise", Some("itersize")),
            ("start_date", None),
            ("xyz", None),
        ] {
            assert_eq!(nearest_key(typo), want, "{typo}");
        }
    }

    #[test]
    fn debug_hides_password() {
        let c = parse(json!({"host": "h", "user": "u", "dbname": "d", "password": "hunter2"}), None).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.endpoint(), "u@h:5432/d");
    }
}
