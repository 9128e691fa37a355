//! tap-heroku: a Singer tap for Heroku Postgres and any PostgreSQL.
//!
//! `main` parses the command line, sets up logging on stderr, runs the chosen mode and turns the
//! outcome into one exit code. Only this file prints the final error (one line plus a hint) and
//! chooses the code; everything else returns [`error::Error`].

mod about;
mod catalog;
mod check;
mod cli;
mod config;
mod connect;
mod discover;
mod encode;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod message;
mod pg;
mod pgoutput;
mod query;
mod signals;
mod state;
mod sync;
mod tls;
mod typemap;
mod url;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Args, LogLevel};
use crate::error::{Error, ErrorKind, Result, ResultExt};

fn main() -> ExitCode {
    // A panic is a bug: report it in our own format with the Internal exit code, never a
    // backtrace dump in the middle of a target's input.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "tap-heroku: internal error: {info}");
        let _ = writeln!(std::io::stderr(), "This is a bug in tap-heroku; please report it with the command you ran.");
        std::process::exit(i32::from(ErrorKind::Internal.exit_code()));
    }));
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind as Clap;
            if matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's own block is several lines; keep our one-line error and one-line hint.
            let detail = e.to_string();
            let message: Vec<&str> = detail
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(|l| l.trim().trim_start_matches("error: "))
                .collect();
            report(&Error::new(ErrorKind::Usage, message.join(" ")).with_hint("Run `tap-heroku --help` to see the flags."));
            return ExitCode::from(ErrorKind::Usage.exit_code());
        }
    };
    init_logging(args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::from(e.kind().exit_code())
        }
    }
}

/// Prints the final error: one line, then the hint on the next.
fn report(e: &Error) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "tap-heroku: error: {}", e.chain());
    if let Some(hint) = e.hint() {
        let _ = writeln!(err, "{hint}");
    }
}

/// env_logger on stderr with singer-python's `LEVEL message` format; `RUST_LOG` wins over `--log-level`.
fn init_logging(level: Option<LogLevel>) {
    let default = match level {
        Some(LogLevel::Debug) => "debug",
        Some(LogLevel::Warn) => "warn",
        Some(LogLevel::Error) => "error",
        Some(LogLevel::Info) | None => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|buf, record| writeln!(buf, "{} {}", record.level(), record.args()))
        .target(env_logger::Target::Stderr)
        .init();
}

/// Runs the mode the flags ask for.
fn run(args: &Args) -> Result<()> {
    if args.about {
        return about::print(args.format);
    }
    let catalog_path = match (&args.catalog, &args.properties) {
        (Some(c), Some(_)) => {
            log::warn!("both --catalog and --properties were given; using --catalog");
            Some(c)
        }
        (c, p) => c.as_ref().or(p.as_ref()),
    };
    let Some(config_path) = &args.config else {
        return Err(Error::new(ErrorKind::Usage, "--config is required")
            .with_hint("Run `tap-heroku --config config.json --discover`, then `--config config.json --catalog catalog.json`."));
    };
    let config = config::Config::load(config_path)?;
    if args.discover {
        let connector = connect::Connector::new(&config)?;
        let catalog = discover::discover(&config, &connector)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", catalog.to_json()).and_then(|()| out.flush()).context(ErrorKind::Output, || "writing the catalog to stdout")?;
        return Ok(());
    }
    if args.test {
        let catalog = catalog_path.map(|path| load_catalog(path)).transpose()?;
        return check::run(&config, catalog.as_ref());
    }
    let Some(catalog_path) = catalog_path else {
        return Err(Error::new(ErrorKind::Usage, "nothing to do: neither --discover nor --catalog was given")
            .with_hint("Run with --discover to write a catalog, then with --catalog catalog.json to sync the selected streams."));
    };
    let catalog = load_catalog(catalog_path)?;
    let state = match &args.state {
        Some(path) => state::State::parse(&read_file(path, "state")?).map_err(|e| e.within(format!("state {}", path.display())))?,
        None => state::State::default(),
    };
    sync::run(&config, &catalog, state)
}

/// Reads and parses the catalog file.
fn load_catalog(path: &Path) -> Result<catalog::Catalog> {
    catalog::Catalog::parse(&read_file(path, "catalog")?).map_err(|e| e.within(format!("catalog {}", path.display())))
}

/// Reads a whole file named on the command line.
fn read_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .context(ErrorKind::Input, || format!("reading {what} {}", path.display()))
        .map_err(|e| e.with_hint(format!("Pass the path of an existing, readable {what} JSON file.")))
}
