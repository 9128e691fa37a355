//! The command line exactly as typed: flags and their raw values, no I/O, no validation.
//!
//! The Singer convention (`--config`, `--discover`, `--catalog`/`--properties`, `--state`) plus
//! `--test`, `--about`, `--version` and `--log-level`. `config::Config` and `main.rs` give the flags meaning.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// tap-heroku: a Singer tap that replicates Heroku Postgres (or any PostgreSQL) tables.
#[derive(Debug, Parser)]
#[command(name = "tap-heroku", version, about, long_about = None)]
pub struct Args {
    /// Config JSON file (host, port, user, password, dbname, ... or database_url).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Discover streams and write the catalog JSON to stdout.
    #[arg(short = 'd', long)]
    pub discover: bool,

    /// Catalog JSON file selecting the streams and columns to sync.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,

    /// Legacy name of --catalog (singer-io taps); works the same way.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub properties: Option<PathBuf>,

    /// State JSON file from a previous run (bookmarks to resume from).
    #[arg(short = 's', long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Test the connection: read one row of each stream selected in --catalog (or, without a
    /// catalog, discover), print a summary on stderr and nothing on stdout.
    #[arg(long, conflicts_with = "discover")]
    pub test: bool,

    /// Describe the tap: name, version, capabilities and settings.
    #[arg(long)]
    pub about: bool,

    /// Output format of --about.
    #[arg(long, value_enum, default_value = "json", requires = "about")]
    pub format: AboutFormat,

    /// Least severe log level written to stderr (RUST_LOG overrides it when set).
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
}

/// The output formats of `--about`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AboutFormat {
    /// Singer SDK-shaped JSON, as Meltano reads it.
    Json,
    /// A Markdown settings table, as in docs/configuration.md.
    Markdown,
}

/// Log levels accepted by `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Everything, including per-batch details.
    Debug,
    /// Progress, row counts, metrics (the default).
    Info,
    /// Only warnings and errors.
    Warn,
    /// Only errors.
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_catalog_both_parse() {
        let a = Args::try_parse_from(["tap-heroku", "-c", "c.json", "-p", "p.json"]).unwrap();
        assert_eq!(a.properties, Some(PathBuf::from("p.json")));
        let a = Args::try_parse_from(["tap-heroku", "--config", "c.json", "--catalog", "k.json", "--state", "s.json"]).unwrap();
        assert_eq!(a.catalog, Some(PathBuf::from("k.json")));
        assert_eq!(a.state, Some(PathBuf::from("s.json")));
    }

    #[test]
    fn format_needs_about() {
        assert!(Args::try_parse_from(["tap-heroku", "--format", "markdown"]).is_err());
        let a = Args::try_parse_from(["tap-heroku", "--about", "--format", "markdown"]).unwrap();
        assert_eq!(a.format, AboutFormat::Markdown);
    }

    #[test]
    fn unknown_flag_is_an_error() {
        assert!(Args::try_parse_from(["tap-heroku", "--bogus"]).is_err());
    }
}
