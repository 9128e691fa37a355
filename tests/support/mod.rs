//! Shared fixtures of the integration tests: the Heroku-like servers of `tests/server.sh` (SSL,
//! scram passwords, read-only roles), a fresh database and role per test, and `tap()`, which
//! runs the real binary and parses what it printed.
//!
//! The servers are those `tests/run.sh` started (its `TAP_HEROKU_TEST_*` variables), or, under a
//! plain `cargo test`, servers this test process starts on first use and a watchdog stops once
//! the process has exited. Servers that cannot start are a failure naming the cause, never a
//! silent pass.

#![allow(dead_code)]

pub mod activity;
pub mod link;
pub mod live;
pub mod output;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use postgres::{Client, NoTls};
use serde_json::{Value, json};

/// Password of every per-test reader role.
pub const READER_PASSWORD: &str = "reader-Secret-9";

/// The servers `tests/server.sh` started, from the `TAP_HEROKU_TEST_*` variables.
pub struct Server {
    /// 127.0.0.1
    pub host: String,
    /// Primary (SSL required) port.
    pub port: u16,
    /// Hot standby port.
    pub standby_port: u16,
    /// Port of the server without SSL.
    pub plain_port: u16,
    /// Unix socket directory (admin setup without SSL).
    pub socket_dir: String,
    /// Superuser.
    pub admin_user: String,
    /// Its password.
    pub admin_password: String,
    /// CA that signed the server certificate.
    pub ca: String,
    /// An unrelated CA.
    pub other_ca: String,
    /// Every `TAP_HEROKU_TEST_*` variable of the servers (client certificates, ...).
    vars: Vec<(String, String)>,
}

impl Server {
    /// The value of the servers' variable `name` (`TAP_HEROKU_TEST_CERT_USER`, ...).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The servers, found or started by the first test that needs them.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// Whether a test has already reported that the servers are missing (the others say less).
static SERVER_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// The test servers: those of `tests/run.sh`, or servers started for this test process.
pub fn server() -> &'static Server {
    match SERVER.get_or_init(|| if std::env::var_os("TAP_HEROKU_TEST_PORT").is_some() { server_from_env() } else { start_servers() }) {
        Ok(s) => s,
        // Every test fails, but only the first one repeats the whole reason.
        Err(e) if !SERVER_FAILURE_REPORTED.swap(true, Ordering::SeqCst) => panic!("{e}"),
        Err(_) => panic!("no test servers (see the first failing test for why)"),
    }
}

/// The servers `tests/run.sh` started, from its `TAP_HEROKU_TEST_*` variables.
fn server_from_env() -> Result<Server, String> {
    let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("TAP_HEROKU_TEST_")).collect();
    server_from_vars(&vars)
}

/// A `Server` from `TAP_HEROKU_TEST_*` name/value pairs.
fn server_from_vars(vars: &[(String, String)]) -> Result<Server, String> {
    let var = |name: &str| -> Result<String, String> {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{name} is not set: run the tests with `cargo test` or tests/run.sh, which start the servers they need"))
    };
    let port = |name: &str| -> Result<u16, String> { var(name)?.parse().map_err(|e| format!("{name} is not a port number: {e}")) };
    Ok(Server {
        host: var("TAP_HEROKU_TEST_HOST")?,
        port: port("TAP_HEROKU_TEST_PORT")?,
        standby_port: port("TAP_HEROKU_TEST_STANDBY_PORT")?,
        plain_port: port("TAP_HEROKU_TEST_PLAIN_PORT")?,
        socket_dir: var("TAP_HEROKU_TEST_SOCKET_DIR")?,
        admin_user: var("TAP_HEROKU_TEST_ADMIN_USER")?,
        admin_password: var("TAP_HEROKU_TEST_ADMIN_PASSWORD")?,
        ca: var("TAP_HEROKU_TEST_CA")?,
        other_ca: var("TAP_HEROKU_TEST_OTHER_CA")?,
        vars: vars.to_vec(),
    })
}

/// Starts the servers of `tests/server.sh` in a fresh directory under the temp directory, and a
/// watchdog that stops them and removes the directory once this process has exited.
///
/// The test harness runs tests in threads and has no hook at exit, so the stop is left to a
/// separate process that polls this one's pid; it runs in its own process group, so a Ctrl-C
/// that ends `cargo test` does not end the watchdog before it has stopped the servers.
/// `TAP_HEROKU_TEST_KEEP=1` leaves them running and says how to stop them.
fn start_servers() -> Result<Server, String> {
    use std::os::unix::process::CommandExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/server.sh");
    // A short path: unix socket paths are length-limited (tests/run.sh does the same).
    let base = std::env::var_os("TAP_HEROKU_TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("tap-heroku-cargo-test.{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // The servers run as the "postgres" OS user when we are root: the directory must be theirs to enter.
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let stop = |dir: &Path| {
        let _ = Command::new("bash").arg(script).arg("stop").arg(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(dir);
    };
    // Straight to stderr: the harness captures `eprintln!` of a passing test, and these lines
    // must be seen (where the servers are; with KEEP, how to stop them).
    let say = |line: String| {
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    say(format!("tests: starting throw-away PostgreSQL servers in {} (tests/server.sh)", dir.display()));
    let out = Command::new("bash").arg(script).arg("start").arg(&dir).stdin(Stdio::null()).process_group(0).output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            stop(&dir);
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The reason, not server.sh's closing "start failed ...; stopping" line.
            let last = stderr.lines().rfind(|l| !l.trim().is_empty() && !l.contains("start failed")).unwrap_or("(no output)");
            return Err(format!("the test servers did not start: {last}\n(tests/server.sh start output:\n{stderr})"));
        }
        Err(e) => {
            stop(&dir);
            return Err(format!("the test servers did not start: running bash {script}: {e}"));
        }
    };
    drop(out);
    let server = read_env_file(&dir.join("env")).and_then(|vars| server_from_vars(&vars));
    if std::env::var("TAP_HEROKU_TEST_KEEP").as_deref() == Ok("1") {
        say(format!(
            "tests: TAP_HEROKU_TEST_KEEP=1: leaving the servers running; stop with: tests/server.sh stop {0} && rm -rf {0}",
            dir.display()
        ));
        return server;
    }
    let watchdog = Command::new("bash")
        .arg("-c")
        .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; bash "$4" stop "$3"; bash "$2" stop "$3"; rm -rf "$3""#)
        .arg("tap-heroku-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(script)
        .arg(&dir)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pgbouncer.sh"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = watchdog {
        stop(&dir);
        return Err(format!("starting the watchdog that stops the test servers: {e}"));
    }
    server
}

/// The variables of the env file `tests/server.sh start` writes (`export NAME=value` lines with
/// `printf %q` values), read by the shell that wrote them so that any quoting is undone.
fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#". "$1" && for v in ${!TAP_HEROKU_TEST_@}; do printf '%s=%s\0' "$v" "${!v}"; done"#)
        .arg("read-env")
        .arg(path)
        .output()
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!("reading {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.split('\0').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// A superuser connection over the unix socket of the server on `port`.
pub fn admin_client(port: u16, dbname: &str) -> Client {
    let s = server();
    postgres::Config::new()
        .host(&s.socket_dir)
        .port(port)
        .user(&s.admin_user)
        .dbname(dbname)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connecting as admin to {dbname} on port {port}: {e}"))
}

/// Makes sure no test database is reachable through PUBLIC's CONNECT on `postgres`.
fn lock_down_postgres_db() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        admin_client(server().port, "postgres")
            .batch_execute("revoke connect on database postgres from public")
            .map_err(|e| format!("revoking connect on postgres: {e}"))
    });
    // A failure here is reported by every test that needs it, without poisoning a `Once`.
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// A fresh database with its own read-only login role (same name), dropped on `Drop`.
/// The role may CONNECT to its databases only, so discovery "of every database the role may
/// connect to" sees exactly this test's databases even while other tests run.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Reader role name.
    pub role: String,
    /// Databases created with [`TestDb::sibling`] to drop along with this one.
    owns_role: bool,
}

impl TestDb {
    /// Creates role and database.
    pub fn new() -> TestDb {
        lock_down_postgres_db();
        let name = format!("tap_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_client(server().port, "postgres");
        for sql in [
            format!("create role {name} login password '{READER_PASSWORD}'"),
            format!("create database {name}"),
            format!("revoke connect on database {name} from public"),
            format!("grant connect on database {name} to {name}"),
        ] {
            admin.batch_execute(&sql).unwrap_or_else(|e| panic!("creating test database: {e}: {sql}"));
        }
        TestDb { name: name.clone(), role: name, owns_role: true }
    }

    /// Another database the same role may connect to (for multi-database tests).
    pub fn sibling(&self, suffix: &str) -> TestDb {
        let name = format!("{}_{suffix}", self.name);
        let mut admin = admin_client(server().port, "postgres");
        for sql in [
            format!("create database {name}"),
            format!("revoke connect on database {name} from public"),
            format!("grant connect on database {name} to {}", self.role),
        ] {
            admin.batch_execute(&sql).unwrap_or_else(|e| panic!("creating sibling database: {e}: {sql}"));
        }
        TestDb { name, role: self.role.clone(), owns_role: false }
    }

    /// A superuser session on this database.
    pub fn admin(&self) -> Client {
        admin_client(server().port, &self.name)
    }

    /// Runs SQL as the superuser.
    pub fn exec(&self, sql: &str) {
        self.admin().batch_execute(sql).unwrap_or_else(|e| panic!("fixture SQL failed: {e}\n{sql}"));
    }

    /// Gives the reader role USAGE on every non-system schema and SELECT on every table in them:
    /// the GRANTs a read-only Heroku credential has.
    pub fn grant_reader(&self) {
        self.exec(&format!(
            "do $$ declare s text; begin \
               for s in select nspname from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema' loop \
                 execute format('grant usage on schema %I to {role}', s); \
                 execute format('grant select on all tables in schema %I to {role}', s); \
               end loop; end $$;",
            role = self.role
        ));
    }

    /// The reader's config for this database (sslmode require by default).
    pub fn config(&self) -> Value {
        let s = server();
        json!({"host": s.host, "port": s.port, "user": self.role, "password": READER_PASSWORD, "dbname": self.name})
    }

    /// The reader's config merged with `extra`, written to a file.
    pub fn config_file(&self, extra: Value) -> PathBuf {
        let mut config = self.config();
        for (k, v) in extra.as_object().expect("extra config is an object") {
            config[k] = v.clone();
        }
        write_json(&config)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut admin = admin_client(server().port, "postgres");
        let _ = admin.batch_execute(&format!("drop database if exists {} with (force)", self.name));
        if self.owns_role {
            for db in admin
                .query("select datname::text from pg_database where datname like $1", &[&format!("{}\\_%", self.name)])
                .unwrap_or_default()
            {
                let db: String = db.get(0);
                let _ = admin.batch_execute(&format!("drop database if exists {db} with (force)"));
            }
            let _ = admin.batch_execute(&format!("drop role if exists {}", self.role));
        }
    }
}

/// Writes JSON to a fresh temporary file and returns its path.
pub fn write_json(value: &Value) -> PathBuf {
    write_text(&value.to_string())
}

/// The directory for the tests' files: inside the servers' directory, so that it goes when they
/// are stopped (by tests/run.sh or the watchdog of [`start_servers`]).
pub fn files_dir() -> PathBuf {
    PathBuf::from(&server().socket_dir).join("files")
}

/// Writes text to a fresh temporary file and returns its path.
pub fn write_text(text: &str) -> PathBuf {
    let dir = files_dir();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).expect("writing temp file");
    path
}

/// What one run of the binary printed.
pub struct TapOutput {
    /// stdout as text.
    pub stdout: String,
    /// stderr as text.
    pub stderr: String,
    /// Exit code.
    pub code: i32,
}

impl TapOutput {
    /// stdout parsed as one JSON message per line; panics on a partial or non-JSON line.
    pub fn messages(&self) -> Vec<Value> {
        assert!(self.stdout.is_empty() || self.stdout.ends_with('\n'), "stdout does not end with a full line:\n{}", self.stdout);
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\nstderr:\n{}", self.stderr)))
            .collect()
    }

    /// The `record`s of RECORD messages of `stream`.
    pub fn records(&self, stream: &str) -> Vec<Value> {
        self.messages().into_iter().filter(|m| m["type"] == "RECORD" && m["stream"] == stream).map(|m| m["record"].clone()).collect()
    }

    /// The value of the last STATE message.
    pub fn last_state(&self) -> Value {
        self.messages().into_iter().rfind(|m| m["type"] == "STATE").expect("a STATE message")["value"].clone()
    }

    /// Asserts exit code 0, printing stderr otherwise.
    pub fn success(self) -> TapOutput {
        assert_eq!(self.code, 0, "tap-heroku failed:\n{}", self.stderr);
        self
    }

    /// Asserts a failure with `code`, a `tap-heroku: error:` line containing `needle`, a hint
    /// line, and nothing on stdout but whole lines.
    pub fn fails_with(self, code: i32, needle: &str) -> TapOutput {
        assert_eq!(self.code, code, "expected exit code {code}; stderr:\n{}", self.stderr);
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("tap-heroku: error: "))
            .unwrap_or_else(|| panic!("no error line in stderr:\n{}", self.stderr));
        assert!(line.contains(needle), "error line does not mention {needle:?}: {line}");
        let _ = self.messages();
        self
    }
}

/// Runs the binary with `args`, no `DATABASE_URL` in its environment.
pub fn tap(args: &[&str]) -> TapOutput {
    tap_env(args, &[])
}

/// Runs the binary with `args` and extra environment variables.
pub fn tap_env(args: &[&str], env: &[(&str, &str)]) -> TapOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-heroku"));
    cmd.args(args).env_remove("DATABASE_URL").env_remove("RUST_LOG").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running tap-heroku");
    TapOutput {
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// A fresh database holding `sql`, readable by its role, with its config (merged with `extra`)
/// and its discovered catalog.
pub fn fixture(sql: &str, extra: Value) -> (TestDb, PathBuf, Value) {
    let db = TestDb::new();
    db.exec(sql);
    db.grant_reader();
    let config = db.config_file(extra);
    let catalog = discover(&config);
    (db, config, catalog)
}

/// Runs `--discover` with `config` and returns the catalog.
pub fn discover(config: &Path) -> Value {
    let out = tap(&["--config", config.to_str().unwrap(), "--discover"]).success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("catalog is not JSON ({e}):\n{}", out.stdout))
}

/// singer-io's `tap_stream_id` of `schema.table` in `db`.
pub fn id(db: &TestDb, schema: &str, table: &str) -> String {
    format!("{}-{schema}-{table}", db.name)
}

/// The `[]` metadata of `table`'s catalog entry, for editing.
pub fn root<'a>(catalog: &'a mut Value, table: &str) -> &'a mut Value {
    let metadata = stream_mut(catalog, table)["metadata"].as_array_mut().expect("a metadata list");
    let entry = metadata.iter_mut().find(|m| m["breadcrumb"] == json!([])).expect("a [] metadata entry");
    &mut entry["metadata"]
}

/// The catalog entry whose `table_name` is `table`.
pub fn stream_mut<'a>(catalog: &'a mut Value, table: &str) -> &'a mut Value {
    catalog["streams"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["table_name"] == table)
        .unwrap_or_else(|| panic!("no stream for table {table}"))
}

/// Selects `table` in `catalog` with `method` (and `replication-key` when given).
pub fn select(catalog: &mut Value, table: &str, method: &str, key: Option<&str>) {
    let stream = stream_mut(catalog, table);
    let root = &mut stream["metadata"][0]["metadata"];
    root["selected"] = json!(true);
    root["replication-method"] = json!(method);
    if let Some(k) = key {
        root["replication-key"] = json!(k);
    }
}

/// Sets `selected` on one column of `table`.
pub fn select_column(catalog: &mut Value, table: &str, column: &str, selected: bool) {
    let stream = stream_mut(catalog, table);
    for entry in stream["metadata"].as_array_mut().unwrap() {
        if entry["breadcrumb"] == json!(["properties", column]) {
            entry["metadata"]["selected"] = json!(selected);
            return;
        }
    }
    panic!("no column {column} in {table}");
}

/// Runs a sync with `config`, `catalog` and optionally `state`.
pub fn sync(config: &Path, catalog: &Value, state: Option<&Value>) -> TapOutput {
    let catalog_path = write_json(catalog);
    let mut args = vec!["--config".to_string(), config.display().to_string(), "--catalog".into(), catalog_path.display().to_string()];
    if let Some(state) = state {
        args.push("--state".into());
        args.push(write_json(state).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tap(&args)
}

/// Checks every RECORD against its stream's latest SCHEMA: property names, JSON types (with
/// `$ref` into `definitions`), integer bounds, maxLength and the `date-time` format (RFC 3339
/// with a year Python can hold). Panics with the offending record.
pub fn assert_records_match_schemas(messages: &[Value]) {
    let mut schemas = std::collections::HashMap::new();
    for m in messages {
        match m["type"].as_str() {
            Some("SCHEMA") => {
                schemas.insert(m["stream"].as_str().unwrap().to_string(), m["schema"].clone());
            }
            Some("RECORD") => {
                let schema = schemas.get(m["stream"].as_str().unwrap()).expect("RECORD after its SCHEMA");
                for (k, v) in m["record"].as_object().unwrap() {
                    let prop = schema["properties"].get(k).unwrap_or_else(|| panic!("record key {k} not in schema: {m}"));
                    assert!(validates(v, prop, schema), "value of {k} does not match {prop}: {m}");
                }
            }
            _ => {}
        }
    }
}

/// A small JSON Schema check: type lists, items (with `$ref`), minimum/maximum, maxLength.
fn validates(v: &Value, schema: &Value, root: &Value) -> bool {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/definitions/");
        return validates(v, &root["definitions"][name], root);
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::Array(t)) => t.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(t)) => vec![t.as_str()],
        _ => return true,
    };
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let ok = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !ok {
        return false;
    }
    if let Value::Number(n) = v {
        let text = n.to_string();
        let value: f64 = text.parse().unwrap();
        let bound = |key: &str| schema.get(key).and_then(|m| m.to_string().parse::<f64>().ok());
        if bound("maximum").is_some_and(|max| value > max) || bound("minimum").is_some_and(|min| value < min) {
            return false;
        }
    }
    if let (Value::String(s), Some("date-time")) = (v, schema.get("format").and_then(Value::as_str))
        && !is_rfc3339_date_time(s)
    {
        return false;
    }
    if let (Value::String(s), Some(max)) = (v, schema.get("maxLength").and_then(Value::as_u64))
        && s.chars().count() as u64 > max
    {
        return false;
    }
    if let Value::Array(items) = v
        && let Some(item_schema) = schema.get("items")
    {
        return items.iter().all(|i| validates(i, item_schema, root));
    }
    true
}

/// RFC 3339 `date-time` (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, fields in range) with a year
/// in 1..=9999, the years Python's `datetime` (and so singer-python and most targets) holds.
pub fn is_rfc3339_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        if part.iter().all(u8::is_ascii_digit) { std::str::from_utf8(part).ok()?.parse().ok() } else { None }
    };
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19))
    else {
        return false;
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=9999).contains(&year) || !(1..=12).contains(&month) || day < 1 || day > days_in_month[month as usize - 1] {
        return false;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &frac[digits..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    }
}

/// The ids a resumed physical FULL_TABLE read sends again before reading on: rows of `table`
/// (with an integer `id`) in blocks before the bookmark's `block_resume.next_block` whose xmin
/// is not older than its `snapshot_xmin` (the tap's catch-up rule, evaluated here as admin).
/// Usually empty for an unchanged table, but a transaction of another test that was open when
/// the interrupted run took its snapshot makes rows inserted after it count as newer.
pub fn catch_up_ids(db: &TestDb, table: &str, bookmark: &Value) -> std::collections::BTreeSet<i64> {
    let mark = &bookmark["block_resume"];
    let next_block = mark["next_block"].as_u64().unwrap_or_else(|| panic!("no block_resume in {bookmark}"));
    let xid = (mark["snapshot_xmin"].as_u64().expect("snapshot_xmin") % (1 << 32)).to_string();
    let sql =
        format!("select id::bigint from {table} where ctid < cast($1::text as tid) and age(xmin) between 0 and age(cast($2::text as xid))");
    db.admin()
        .query(&sql, &[&format!("({next_block},0)"), &xid])
        .unwrap_or_else(|e| panic!("predicting the catch-up: {e}"))
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// The ids of `table`'s rows stored in blocks before `block`, as admin.
pub fn ids_before_block(db: &TestDb, table: &str, block: u64) -> std::collections::BTreeSet<i64> {
    db.admin()
        .query(&format!("select id::bigint from {table} where ctid < cast($1::text as tid)"), &[&format!("({block},0)")])
        .unwrap_or_else(|e| panic!("reading ctids: {e}"))
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// xorshift64* PRNG (as in src/fuzz_tests.rs): tiny, deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
