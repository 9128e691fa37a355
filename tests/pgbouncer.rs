//! Heroku's connection pooling is PgBouncer in transaction mode, which refuses the startup
//! options the tap's session settings travel in and loses session state between transactions.
//! The tap refuses it at connection start (src/connect.rs, "unsupported startup parameter"):
//! exit 69, before any output, with a hint that names the direct URL (DATABASE_URL).
//!
//! The pooler is `tests/pgbouncer.sh` (TLS, scram, transaction mode) in front of the test
//! primary. Where pgbouncer is not installed this test does not run: it writes "SKIPPED" on
//! stderr and the harness counts it as passed, which checks nothing (docs/testing.md says so).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::output::assert_failure;
use crate::support::{READER_PASSWORD, TestDb, fixture, select, server, sync, tap, write_json};

/// tests/pgbouncer.sh.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgbouncer.sh");
/// Most a pgbouncer.sh command may take; it has connect timeouts, so this is a backstop.
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// A PgBouncer of tests/pgbouncer.sh in front of the test primary, stopped on `Drop`.
struct Bouncer {
    /// The servers' directory (DIR of `tests/server.sh start DIR`).
    dir: PathBuf,
    /// Where pgbouncer listens (127.0.0.1).
    port: u16,
}

impl Bouncer {
    /// Starts it; `None` (after a loud SKIPPED line) where pgbouncer is not installed.
    fn start() -> Option<Bouncer> {
        let installed = Command::new("bash").arg("-c").arg("PATH=$PATH:/usr/sbin command -v pgbouncer").stdout(Stdio::null()).status();
        if !installed.is_ok_and(|s| s.success()) {
            // Straight to stderr: the harness swallows eprintln! of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED pgbouncer::pgbouncer_in_transaction_mode_is_refused_naming_the_direct_url: pgbouncer is not installed \
                 (apt-get install pgbouncer); this test did NOT run"
            );
            return None;
        }
        let dir = PathBuf::from(&server().socket_dir);
        run_script(&["start", dir.to_str().unwrap()]);
        let env = std::fs::read_to_string(dir.join("pgbouncer/env")).expect("reading pgbouncer/env");
        let port = env
            .trim()
            .strip_prefix("export TAP_HEROKU_TEST_PGBOUNCER_PORT=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in pgbouncer/env: {env:?}"));
        Some(Bouncer { dir, port })
    }

    /// Opens the two server connections of the pool of `db`'s database and role, which also
    /// shows that the pooler lets this role in (without the tap's startup options).
    fn warm(&self, db: &TestDb) {
        run_script(&["warm", self.dir.to_str().unwrap(), &db.name, &db.role, READER_PASSWORD]);
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

/// Stops the pgbouncer of the servers in `dir`, if one runs.
fn stop(dir: &Path) {
    let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(dir).stdin(Stdio::null()).stderr(Stdio::null()).status();
}

/// Runs tests/pgbouncer.sh with `args` (stdin closed), failing the test with its stderr when it
/// fails or takes longer than [`SCRIPT_LIMIT`].
fn run_script(args: &[&str]) {
    let mut child = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tests/pgbouncer.sh");
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for tests/pgbouncer.sh") {
            break status;
        }
        if start.elapsed() > SCRIPT_LIMIT {
            // The whole group (its psql too), then the pooler it may have started.
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.wait();
            stop(Path::new(&server().socket_dir));
            panic!("tests/pgbouncer.sh {args:?} still ran after {SCRIPT_LIMIT:?}; killed:\n{}", stderr.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        stop(Path::new(&server().socket_dir));
    }
    assert!(status.success(), "tests/pgbouncer.sh {args:?} failed ({status}):\n{stderr}");
}

/// The config file `config` with its port replaced by `port`.
fn through(config: &Path, port: u16) -> PathBuf {
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).expect("reading the config")).unwrap();
    value["port"] = json!(port);
    write_json(&value)
}

#[test]
fn pgbouncer_in_transaction_mode_is_refused_naming_the_direct_url() {
    // The database first: it revokes CONNECT on "postgres" from PUBLIC, as in a full run, where
    // other tests have done so before this one starts the pooler.
    let (db, direct, mut catalog) = fixture("create table t (id int primary key); insert into t values (1), (2)", json!({}));
    let Some(bouncer) = Bouncer::start() else { return };
    select(&mut catalog, "t", "FULL_TABLE", None);
    bouncer.warm(&db);
    let pooled = through(&direct, bouncer.port);
    let pooled_arg = pooled.to_str().unwrap();

    let runs = [
        ("--discover", tap(&["--config", pooled_arg, "--discover"])),
        ("--test", tap(&["--config", pooled_arg, "--test"])),
        ("sync", sync(&pooled, &catalog, None)),
    ];
    for (label, out) in runs {
        assert_failure(&out, &format!("{label} through pgbouncer"), 69, &["unsupported startup parameter"], true);
        assert!(out.stdout.is_empty(), "[{label}] nothing on stdout:\n{}", out.stdout);
        let hint = out.stderr.lines().last().unwrap_or("");
        assert!(hint.contains("DATABASE_URL") && hint.contains("directly"), "[{label}] the hint names the direct URL: {hint}");
    }
    // The same catalog syncs when connected directly: what was refused is the pooler.
    let out = sync(&direct, &catalog, None).success();
    assert_eq!(out.records("t").len(), 2, "{}", out.stderr);
}
