//! Failure modes end to end: every bad connection, config, command line, catalog and state
//! gives its documented exit code, one `tap-heroku: error: ` line followed by a hint sentence
//! naming what to fix, and (for bad input) an empty stdout; passwords never appear in output.
//! Also the TLS modes that must succeed, `database_url`/`DATABASE_URL`, and `--about`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::{self, READER_PASSWORD, TapOutput, TestDb, admin_client, files_dir, server, tap, tap_env, write_json, write_text};

/// A wrong password distinctive enough that finding it in output cannot be a coincidence.
const WRONG_PASSWORD: &str = "Wr0ng-Pa55-XYZ";

/// The path as a command-line argument.
fn arg(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A path no file exists at.
fn missing_path() -> PathBuf {
    files_dir().join(format!("missing-{}.json", uuid::Uuid::new_v4().simple()))
}

/// A TCP port on 127.0.0.1 where nothing listens (bound, read, released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding a free port").local_addr().unwrap().port()
}

/// Runs `--discover` with `config` written to a file.
fn discover_with(config: &Value) -> TapOutput {
    tap(&["--config", arg(&write_json(config)), "--discover"])
}

/// `config` with `extra`'s keys set (a `null` removes the key).
fn merged(config: &Value, extra: Value) -> Value {
    let mut out = config.clone();
    for (k, v) in extra.as_object().expect("extra is an object") {
        if v.is_null() {
            out.as_object_mut().unwrap().remove(k);
        } else {
            out[k] = v.clone();
        }
    }
    out
}

/// Asserts a failure in the documented format: exit `code`; exactly one `tap-heroku: error: `
/// line, containing every `needles`; right after it, as the last stderr line, a hint sentence
/// containing every `hint_words` (case-sensitive); stdout empty (bad input is caught before
/// anything is written). `label` names the case in panics.
pub(crate) fn assert_refused(out: &TapOutput, label: &str, code: i32, needles: &[&str], hint_words: &[&str]) {
    let ctx = || format!("[{label}] exit {}\nstderr:\n{}\nstdout:\n{}", out.code, out.stderr, out.stdout);
    assert_eq!(out.code, code, "wrong exit code, expected {code}: {}", ctx());
    let lines: Vec<&str> = out.stderr.lines().collect();
    let errors: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("tap-heroku: error: ")).collect();
    assert_eq!(errors.len(), 1, "expected exactly one error line: {}", ctx());
    let line = lines[errors[0]];
    for n in needles {
        assert!(line.contains(n), "error line does not mention {n:?}: {}", ctx());
    }
    let hint = lines.get(errors[0] + 1).copied().unwrap_or_else(|| panic!("no hint line after the error line: {}", ctx()));
    assert_eq!(errors[0] + 2, lines.len(), "the hint must be the last stderr line: {}", ctx());
    assert!(
        hint.len() > 10 && hint.trim_end().ends_with('.') && !hint.starts_with("tap-heroku:") && !hint.starts_with(char::is_whitespace),
        "hint is not a sentence: {hint:?}: {}",
        ctx()
    );
    for w in hint_words {
        assert!(hint.contains(w), "hint does not mention {w:?}: {}", ctx());
    }
    assert!(out.stdout.is_empty(), "stdout must be empty: {}", ctx());
}

/// Asserts that none of `secrets` appears in stdout or stderr.
pub(crate) fn assert_hidden(out: &TapOutput, label: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!out.stdout.contains(s), "[{label}] stdout contains the secret {s:?}:\n{}", out.stdout);
        assert!(!out.stderr.contains(s), "[{label}] stderr contains the secret {s:?}:\n{}", out.stderr);
    }
}

/// Asserts exit 0 and a catalog on stdout that lists `tap_stream_id`.
fn assert_catalog_lists(out: &TapOutput, label: &str, tap_stream_id: &str) {
    assert_eq!(out.code, 0, "[{label}] discovery failed:\n{}", out.stderr);
    let catalog: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("[{label}] stdout is not a catalog ({e}):\n{}", out.stdout));
    let ids: Vec<&str> = catalog["streams"].as_array().expect("streams array").iter().filter_map(|s| s["tap_stream_id"].as_str()).collect();
    assert!(ids.contains(&tap_stream_id), "[{label}] catalog lacks {tap_stream_id}: {ids:?}");
}

/// A database with `public.items (id int primary key, n int, note text)` holding three rows,
/// readable by its role; returns it with its config file and its discovered catalog.
fn items_db() -> (TestDb, PathBuf, Value) {
    let db = TestDb::new();
    db.exec(
        "create table items (id int primary key, n int not null, note text); \
             insert into items select g, g * 10, 'row ' || g from generate_series(1, 3) g",
    );
    db.grant_reader();
    let config = db.config_file(json!({}));
    let catalog = support::discover(&config);
    (db, config, catalog)
}

/// `catalog` with `table` selected as `method` (and `key`), then `edit` applied to its `[]` metadata.
fn selected(catalog: &Value, table: &str, method: &str, key: Option<&str>, edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = catalog.clone();
    support::select(&mut c, table, method, key);
    edit(&mut support::stream_mut(&mut c, table)["metadata"][0]["metadata"]);
    c
}

/// A table case of a refused run: label, file text (`None`: a missing file), exit code,
/// words of the error line, words of the hint.
type FileCase<'a> = (&'a str, Option<String>, i32, Vec<&'a str>, &'a [&'a str]);

/// A TLS case: sslmode, sslrootcert, host, and `Ok` or `Err(words of the hint)`.
type TlsCase<'a> = (&'a str, &'a str, &'a str, Result<(), &'a [&'a str]>);

/// A lost-privilege case: label, the SQL that takes SELECT away (`{role}` is the reader), exit
/// code, words of the error line, words of the hint.
type LostSelectCase<'a> = (&'a str, &'a str, i32, &'a [&'a str], &'a [&'a str]);

/// A run of the secrets test: label, expected exit code, arguments, extra environment.
type SecretRun<'a> = (&'a str, i32, Vec<String>, Vec<(&'a str, String)>);

/// A login role with [`READER_PASSWORD`] on the server without SSL (the per-test roles exist
/// only on the primary); dropped on `Drop`.
struct PlainRole {
    /// Role name.
    name: String,
}

impl PlainRole {
    /// Creates the role.
    fn new() -> PlainRole {
        let name = format!("tap_plain_{}", uuid::Uuid::new_v4().simple());
        admin_client(server().plain_port, "postgres")
            .batch_execute(&format!("create role {name} login password '{READER_PASSWORD}'"))
            .expect("creating a role on the plain server");
        PlainRole { name }
    }

    /// Its config for the plain server's `postgres` database with `sslmode`.
    fn config(&self, sslmode: &str) -> Value {
        let s = server();
        json!({"host": s.host, "port": s.plain_port, "user": self.name, "password": READER_PASSWORD,
               "dbname": "postgres", "filter_dbs": "postgres", "sslmode": sslmode})
    }
}

impl Drop for PlainRole {
    fn drop(&mut self) {
        let _ = admin_client(server().plain_port, "postgres").batch_execute(&format!("drop role if exists {}", self.name));
    }
}

// ---- connections -------------------------------------------------------------------------

#[test]
fn wrong_password_is_an_auth_error_without_echoing_passwords() {
    let db = TestDb::new();
    let out = discover_with(&merged(&db.config(), json!({"password": WRONG_PASSWORD})));
    assert_refused(&out, "wrong password", 77, &["password authentication failed", &db.role], &["password"]);
    assert_hidden(&out, "wrong password", &[WRONG_PASSWORD, READER_PASSWORD]);
}

#[test]
fn a_role_that_does_not_exist_exits_like_a_wrong_password() {
    let db = TestDb::new();
    // Over TCP with scram the server answers as for a wrong password (28P01), so that role
    // names cannot be probed.
    let out = discover_with(&merged(&db.config(), json!({"user": "no_such_role_here", "password": WRONG_PASSWORD})));
    assert_refused(&out, "missing role, scram", 77, &["no_such_role_here"], &["user", "password"]);
    assert_hidden(&out, "missing role, scram", &[WRONG_PASSWORD]);
    // Over the unix socket (trust, as on a local server) it says the role does not exist (28000).
    let s = server();
    let out =
        discover_with(&json!({"host": s.socket_dir, "port": s.port, "user": "no_such_role_here", "dbname": db.name, "sslmode": "disable"}));
    assert_refused(&out, "missing role, trust", 77, &["role \"no_such_role_here\" does not exist"], &["user"]);
}

#[test]
fn missing_password_is_reported_as_a_credentials_problem() {
    let db = TestDb::new();
    let out = discover_with(&merged(&db.config(), json!({"password": null})));
    assert!(out.code == 77 || out.code == 78, "no password must be an auth (77) or config (78) error, got {}:\n{}", out.code, out.stderr);
    assert_refused(&out, "no password", out.code, &["password"], &["password"]);
}

#[test]
fn unknown_database_is_a_config_error() {
    let db = TestDb::new();
    let missing = format!("{}_missing", db.name);
    let out = discover_with(&merged(&db.config(), json!({"dbname": missing})));
    assert_refused(&out, "unknown dbname", 78, &[&missing], &["dbname"]);
}

#[test]
fn unreachable_hosts_are_connect_errors() {
    let db = TestDb::new();
    let port = closed_port();
    let out = discover_with(&merged(&db.config(), json!({"port": port, "connect_timeout": 5})));
    assert_refused(&out, "closed port", 69, &[&format!("127.0.0.1:{port}")], &["host", "port"]);

    let out = discover_with(&merged(&db.config(), json!({"host": "no-such-host.invalid", "connect_timeout": 5})));
    assert_refused(&out, "unresolvable host", 69, &["no-such-host.invalid"], &["host"]);
}

#[test]
fn sslmode_disable_against_the_ssl_only_server() {
    let db = TestDb::new();
    let out = discover_with(&merged(&db.config(), json!({"sslmode": "disable"})));
    assert_refused(&out, "disable vs SSL-only", 69, &[&db.role], &["requires SSL", "sslmode", "require"]);
}

#[test]
fn sslmode_require_against_a_server_without_ssl() {
    let s = server();
    let out =
        discover_with(&json!({"host": s.host, "port": s.plain_port, "user": "nobody", "password": WRONG_PASSWORD, "dbname": "postgres"}));
    assert_refused(&out, "require vs plain", 69, &["TLS"], &["SSL", "sslmode"]);
    assert_hidden(&out, "require vs plain", &[WRONG_PASSWORD]);
}

/// A database with an empty table `tls_probe` its role may read, and that stream's id: what the
/// TLS tests discover.
fn tls_probe_db() -> (TestDb, String) {
    let db = TestDb::new();
    db.exec("create table tls_probe (id int primary key)");
    db.grant_reader();
    let id = format!("{}-public-tls_probe", db.name);
    (db, id)
}

#[test]
fn certificate_verification_modes() {
    let (db, id) = tls_probe_db();
    let s = server();
    let cases: [TlsCase; 6] = [
        ("verify-full", &s.ca, "127.0.0.1", Err(&["host", "sslrootcert"])),
        ("verify-full", &s.ca, "localhost", Ok(())),
        ("verify-ca", &s.other_ca, "127.0.0.1", Err(&["sslrootcert"])),
        ("verify-ca", &s.ca, "127.0.0.1", Ok(())),
        ("require", &s.ca, "127.0.0.1", Ok(())),
        ("require", &s.other_ca, "127.0.0.1", Err(&["sslrootcert"])),
    ];
    for (mode, ca, host, expect) in cases {
        let label = format!("{mode} {ca} {host}");
        let out = discover_with(&merged(&db.config(), json!({"sslmode": mode, "sslrootcert": ca, "host": host})));
        match expect {
            Ok(()) => assert_catalog_lists(&out, &label, &id),
            Err(hint) => assert_refused(&out, &label, 69, &["TLS"], hint),
        }
    }
}

/// `sslnegotiation: direct` starts TLS at once, without the SSLRequest (one round trip less):
/// PostgreSQL 17 and later take it; an older server reads the TLS ClientHello as a startup
/// packet of absurd length and closes the connection, and the tap says why. Which of the two
/// this checks follows the test server's version (15 here; 17 with `TAP_HEROKU_TEST_PGBIN`, see
/// docs/testing.md).
#[test]
fn direct_tls_negotiation_connects_to_17_and_is_explained_on_older_servers() {
    let (db, id) = tls_probe_db();
    let version: i32 = db.admin().query_one("select current_setting('server_version_num')::int", &[]).expect("version").get(0);
    let s = server();
    for (mode, host) in [("require", "127.0.0.1"), ("verify-full", "localhost")] {
        let label = format!("direct, {mode}, PostgreSQL {version}");
        let out =
            discover_with(&merged(&db.config(), json!({"sslnegotiation": "direct", "sslmode": mode, "sslrootcert": s.ca, "host": host})));
        if version >= 170_000 {
            assert_catalog_lists(&out, &label, &id);
        } else {
            assert_refused(&out, &label, 69, &["connecting to"], &["PostgreSQL 17", "sslnegotiation"]);
        }
    }
    // Never without TLS: refused before connecting.
    let out = discover_with(&merged(&db.config(), json!({"sslnegotiation": "direct", "sslmode": "prefer"})));
    assert_refused(&out, "direct with prefer", 78, &["sslnegotiation direct needs TLS"], &["sslmode"]);
}

#[test]
fn prefer_and_disable_work_against_a_server_without_ssl() {
    let role = PlainRole::new();
    let out = discover_with(&role.config("prefer"));
    assert_eq!(out.code, 0, "prefer against the plain server:\n{}", out.stderr);
    assert!(serde_json::from_str::<Value>(&out.stdout).expect("a catalog")["streams"].is_array());
    assert!(!out.stderr.contains("not encrypted"), "prefer gives no disable warning:\n{}", out.stderr);

    let out = discover_with(&role.config("disable"));
    assert_eq!(out.code, 0, "disable against the plain server:\n{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.starts_with("WARN") && l.contains("not encrypted")),
        "disable warns that the connection is not encrypted:\n{}",
        out.stderr
    );
}

#[test]
fn database_url_in_config_and_environment() {
    let db = TestDb::new();
    db.exec("create table url_probe (id int primary key)");
    db.grant_reader();
    let id = format!("{}-public-url_probe", db.name);
    let s = server();
    let url = |password: &str| format!("postgres://{}:{password}@{}:{}/{}?sslmode=require", db.role, s.host, s.port, db.name);

    let out = discover_with(&json!({"database_url": url(READER_PASSWORD)}));
    assert_catalog_lists(&out, "database_url", &id);
    assert_hidden(&out, "database_url", &[READER_PASSWORD]);

    let config = write_json(&json!({}));
    let out = tap_env(&["--config", arg(&config), "--discover"], &[("DATABASE_URL", &url(READER_PASSWORD))]);
    assert_catalog_lists(&out, "DATABASE_URL", &id);

    let out = discover_with(&json!({"database_url": url(WRONG_PASSWORD)}));
    assert_refused(&out, "database_url wrong password", 77, &["password authentication failed"], &["password"]);
    assert_hidden(&out, "database_url wrong password", &[WRONG_PASSWORD, READER_PASSWORD]);

    let out = tap_env(&["--config", arg(&config), "--discover"], &[("DATABASE_URL", &url(WRONG_PASSWORD))]);
    assert_refused(&out, "DATABASE_URL wrong password", 77, &["password authentication failed"], &["password"]);
    assert_hidden(&out, "DATABASE_URL wrong password", &[WRONG_PASSWORD, READER_PASSWORD]);
}

// ---- config file ---------------------------------------------------------------------------

#[test]
fn config_file_problems() {
    let base = json!({"host": "127.0.0.1", "port": closed_port(), "user": "u", "password": WRONG_PASSWORD, "dbname": "d"});
    let with = |extra: Value| Some(merged(&base, extra).to_string());
    // (label, file text or None for a missing file, exit code, error line needles, hint words)
    let cases: Vec<FileCase> = vec![
        ("missing file", None, 66, vec!["reading config"], &["--config"]),
        ("not JSON", Some("host = x".into()), 78, vec!["not valid JSON"], &["JSON"]),
        ("JSON array", Some("[1, 2]".into()), 78, vec!["not a JSON object"], &["object"]),
        (
            "missing keys",
            Some(r#"{"host": "x"}"#.into()),
            78,
            vec!["user", "dbname", "database_url", "DATABASE_URL"],
            &["database_url", "DATABASE_URL"],
        ),
        ("empty config", Some("{}".into()), 78, vec!["host", "user", "dbname", "database_url", "DATABASE_URL"], &["DATABASE_URL"]),
        ("port text", with(json!({"port": "abc"})), 78, vec!["port"], &["port"]),
        ("port too big", with(json!({"port": 70000})), 78, vec!["port"], &["port"]),
        ("port bool", with(json!({"port": true})), 78, vec!["port"], &["port"]),
        ("bad sslmode", with(json!({"sslmode": "sometimes"})), 78, vec!["sslmode"], &["sslmode"]),
        (
            "missing sslrootcert",
            with(json!({"sslrootcert": "/nonexistent/ca.crt"})),
            78,
            vec!["sslrootcert", "/nonexistent/ca.crt"],
            &["sslrootcert"],
        ),
        (
            "mysql url",
            Some(json!({"database_url": format!("mysql://u:{WRONG_PASSWORD}@h/d")}).to_string()),
            78,
            vec!["database_url", "postgres://"],
            &["postgres://"],
        ),
    ];
    for (label, text, code, needles, hint) in cases {
        let path = match text {
            Some(t) => write_text(&t),
            None => missing_path(),
        };
        let out = tap(&["--config", arg(&path), "--discover"]);
        assert_refused(&out, label, code, &needles, hint);
        assert_hidden(&out, label, &[WRONG_PASSWORD]);
    }
}

#[test]
fn unknown_config_key_is_a_warning() {
    let db = TestDb::new();
    let out = discover_with(&merged(&db.config(), json!({"colour": "ultramarine-7"})));
    assert_eq!(out.code, 0, "an unknown key is not fatal:\n{}", out.stderr);
    assert!(out.stderr.lines().any(|l| l.starts_with("WARN") && l.contains("colour")), "a warning names the key:\n{}", out.stderr);
    assert!(!out.stderr.contains("ultramarine-7"), "the value is not echoed:\n{}", out.stderr);

    // A typo of a known key gets the nearest one suggested.
    let mut config = merged(&db.config(), json!({"passwrod": WRONG_PASSWORD}));
    let out = discover_with(&config);
    assert_eq!(out.code, 0, "a misspelt extra key is not fatal:\n{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("WARN") && l.contains("unknown config key passwrod") && l.contains("did you mean password?")),
        "the warning suggests password:\n{}",
        out.stderr
    );
    assert_hidden(&out, "misspelt key", &[WRONG_PASSWORD]);
    // Without the real password the connection then fails as a credentials problem.
    config.as_object_mut().unwrap().remove("password");
    let out = discover_with(&config);
    assert!(out.stderr.contains("did you mean password?"), "{}", out.stderr);
    assert_eq!(out.code, 77, "{}", out.stderr);
}

// ---- command line --------------------------------------------------------------------------

#[test]
fn command_line_usage_errors() {
    let config = write_json(&json!({"host": "127.0.0.1", "port": closed_port(), "user": "u", "dbname": "d"}));
    let catalog = write_json(&json!({"streams": []}));
    // (args, error line needles, hint words)
    let cases: [(&[&str], &[&str], &[&str]); 4] = [
        (&[], &["--config is required"], &["--config"]),
        (&["--bogus"], &["--bogus"], &["--help"]),
        (&["--catalog", arg(&catalog)], &["--config is required"], &["--config"]),
        (&["--config", arg(&config)], &["nothing to do"], &["--discover", "--catalog"]),
    ];
    for (args, needles, hint) in cases {
        let out = tap(args);
        assert_refused(&out, &format!("{args:?}"), 64, needles, hint);
    }
}

#[test]
fn help_and_version_succeed_on_stdout() {
    let out = tap(&["--help"]).success();
    assert!(out.stdout.contains("--config") && out.stdout.contains("--discover") && out.stdout.contains("--catalog"), "{}", out.stdout);
    let out = tap(&["--version"]).success();
    assert!(out.stdout.starts_with("tap-heroku ") && out.stdout.trim().len() > "tap-heroku ".len(), "{}", out.stdout);
}

#[test]
fn properties_is_the_legacy_name_of_catalog() {
    let (_db, config, catalog) = items_db();
    let catalog = write_json(&selected(&catalog, "items", "FULL_TABLE", None, |_| {}));
    let by_catalog = tap(&["--config", arg(&config), "--catalog", arg(&catalog)]).success();
    let by_properties = tap(&["--config", arg(&config), "--properties", arg(&catalog)]).success();
    let records = by_catalog.records("items");
    assert_eq!(records.len(), 3, "{}", by_catalog.stdout);
    assert_eq!(by_properties.records("items"), records);
    let kinds = |o: &TapOutput| o.messages().iter().map(|m| m["type"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(kinds(&by_properties), kinds(&by_catalog));
}

// ---- catalog -------------------------------------------------------------------------------

#[test]
fn bad_catalogs_are_refused_before_any_output() {
    let (db, config, catalog) = items_db();
    let id = format!("{}-public-items", db.name);
    let catalog_with = |method: &str, key: Option<&str>| Some(selected(&catalog, "items", method, key, |_| {}).to_string());
    let without_key = selected(&catalog, "items", "INCREMENTAL", None, |root| {
        root.as_object_mut().unwrap().remove("replication-key");
    });
    // (label, catalog text or None for a missing file, exit code, error line needles, hint words)
    let cases: Vec<FileCase> = vec![
        ("missing file", None, 66, vec!["reading catalog"], &["catalog"]),
        ("not JSON", Some("{streams".into()), 65, vec!["not valid JSON"], &["catalog"]),
        ("no streams", Some("{}".into()), 65, vec!["streams"], &["catalog"]),
        ("bad method", catalog_with("SOMETIMES", None), 65, vec![&id, "SOMETIMES"], &["replication-method"]),
        ("incremental without key", Some(without_key.to_string()), 65, vec![&id, "replication-key"], &["replication-key"]),
        ("key not a column", catalog_with("INCREMENTAL", Some("no_such_col")), 65, vec![&id, "no_such_col"], &["replication-key"]),
    ];
    for (label, text, code, needles, hint) in cases {
        let path = match text {
            Some(t) => write_text(&t),
            None => missing_path(),
        };
        let out = tap(&["--config", arg(&config), "--catalog", arg(&path)]);
        assert_refused(&out, label, code, &needles, hint);
    }
}

#[test]
fn same_destination_stream_name_twice_is_refused() {
    let db = TestDb::new();
    db.exec(
        "create schema a; create schema b; \
             create table a.dup (id int primary key); create table b.dup (id int primary key); \
             insert into a.dup values (1); insert into b.dup values (2)",
    );
    db.grant_reader();
    let mut catalog = support::discover(&db.config_file(json!({})));
    for s in catalog["streams"].as_array_mut().unwrap() {
        assert_eq!(s["stream"], json!("dup"), "both tables discover as stream dup");
        s["metadata"][0]["metadata"]["selected"] = json!(true);
        s["metadata"][0]["metadata"]["replication-method"] = json!("FULL_TABLE");
    }
    let out = support::sync(&db.config_file(json!({})), &catalog, None);
    let (ida, idb) = (format!("{}-a-dup", db.name), format!("{}-b-dup", db.name));
    assert_refused(&out, "duplicate stream", 65, &[&ida, &idb, "dup"], &["\"stream\"", "include_schemas_in_destination_stream_name"]);

    // The hint's second remedy works.
    let out = support::sync(&db.config_file(json!({"include_schemas_in_destination_stream_name": true})), &catalog, None).success();
    assert_eq!((out.records("a_dup"), out.records("b_dup")), (vec![json!({"id": 1})], vec![json!({"id": 2})]));
}

#[test]
fn catalog_without_selected_stream_writes_only_state() {
    let (_db, config, catalog) = items_db();
    let out = support::sync(&config, &catalog, None).success();
    let messages = out.messages();
    assert_eq!(messages.len(), 1, "only a STATE line: {}", out.stdout);
    assert_eq!(messages[0]["type"], json!("STATE"));
    let warning = out.stderr.lines().find(|l| l.starts_with("WARN") && l.contains("no stream is selected"));
    let warning = warning.unwrap_or_else(|| panic!("no warning:\n{}", out.stderr));
    // It says how to select one.
    for words in ["\"selected\": true", "replication-method", "breadcrumb is []"] {
        assert!(warning.contains(words), "the warning does not say {words}: {warning}");
    }
}

// ---- state ---------------------------------------------------------------------------------

#[test]
fn bad_states_are_refused_before_any_output() {
    let (db, config, catalog) = items_db();
    let id = format!("{}-public-items", db.name);
    let catalog = write_json(&selected(&catalog, "items", "INCREMENTAL", Some("n"), |_| {}));
    let bookmark = |b: Value| json!({"bookmarks": {id.clone(): b}}).to_string();
    // (label, state text, error line needles, hint words)
    let cases: Vec<(&str, String, Vec<&str>, &[&str])> = vec![
        ("not JSON", "{bookmarks".into(), vec!["not valid JSON"], &["state"]),
        ("array", "[]".into(), vec!["not a JSON object"], &["state"]),
        ("version soon", bookmark(json!({"version": "soon"})), vec![&id, "version"], &["state"]),
        (
            "text bookmark for integer key",
            bookmark(json!({"last_replication_method": "INCREMENTAL", "replication_key": "n", "replication_key_value": "abc"})),
            vec![&id, "column \"n\""],
            &["bookmark"],
        ),
    ];
    for (label, text, needles, hint) in cases {
        let out = tap(&["--config", arg(&config), "--catalog", arg(&catalog), "--state", arg(&write_text(&text))]);
        assert_refused(&out, label, 65, &needles, hint);
    }
    // The same catalog with a fitting bookmark syncs the rows after it.
    let state = bookmark(json!({"last_replication_method": "INCREMENTAL", "replication_key": "n", "replication_key_value": 20}));
    let out = tap(&["--config", arg(&config), "--catalog", arg(&catalog), "--state", arg(&write_text(&state))]).success();
    assert_eq!(out.records("items").iter().map(|r| r["n"].clone()).collect::<Vec<_>>(), vec![json!(20), json!(30)]);
}

/// A composite key's `last_pk_fetched` is checked for every column before any output (the
/// server's casts go out together): the refusal names the first column, in key order, whose
/// value does not fit, whether the JSON kind or the server's cast refuses it.
#[test]
fn composite_last_pk_fetched_is_refused_at_its_first_misfit_column() {
    let db = TestDb::new();
    db.exec(
        "create table pairs (a int, b date, note text, primary key (a, b)); \
         insert into pairs select g, date '2024-01-01' + g, 'row ' || g from generate_series(1, 4) g",
    );
    db.grant_reader();
    let config = db.config_file(json!({}));
    let catalog = write_json(&selected(&support::discover(&config), "pairs", "FULL_TABLE", None, |_| {}));
    let id = format!("{}-public-pairs", db.name);
    let state = |last: Value| {
        write_text(
            &json!({"bookmarks": {id.clone(): {"last_replication_method": "FULL_TABLE", "version": 1, "last_pk_fetched": last}}})
                .to_string(),
        )
    };
    // (label, last_pk_fetched, the column named)
    let cases = [
        ("the server refuses the second column", json!({"a": 1, "b": "not a date"}), "column \"b\""),
        ("the kind of the first refuses it before the server's cast of the second", json!({"a": "one", "b": "not a date"}), "column \"a\""),
        ("the server's cast of the first comes before the kind of the second", json!({"a": 99_999_999_999_i64, "b": 5}), "column \"a\""),
    ];
    for (label, last, column) in cases {
        let out = tap(&["--config", arg(&config), "--catalog", arg(&catalog), "--state", arg(&state(last))]);
        assert_refused(&out, label, 65, &[&id, "last_pk_fetched", column], &["bookmark"]);
    }
    // A fitting key resumes after it.
    let out =
        tap(&["--config", arg(&config), "--catalog", arg(&catalog), "--state", arg(&state(json!({"a": 2, "b": "2024-01-03"})))]).success();
    assert_eq!(out.records("pairs").iter().map(|r| r["a"].clone()).collect::<Vec<_>>(), vec![json!(3), json!(4)]);
}

// ---- secrets -------------------------------------------------------------------------------

#[test]
fn password_never_appears_in_output() {
    const SECRET: &str = "Distinct-S3cret-Q7vK";
    let (db, _, catalog) = items_db();
    db.exec(&format!("alter role {} password '{SECRET}'", db.role));
    let s = server();
    let config = merged(&db.config(), json!({"password": SECRET}));
    let with = |extra: Value| write_json(&merged(&config, extra));
    let url = |port: u16, query: &str| format!("postgres://{}:{SECRET}@{}:{port}/{}{query}", db.role, s.host, db.name);
    let url_file = |url: String| write_json(&json!({"database_url": url}));
    let discover = |config: PathBuf| vec!["--config".to_string(), arg(&config).into(), "--discover".into()];
    let sync = |extra: &[&str]| {
        let catalog = write_json(&selected(&catalog, "items", "INCREMENTAL", Some("n"), |_| {}));
        let mut args = vec!["--config".to_string(), arg(&with(json!({}))).into(), "--catalog".into(), arg(&catalog).into()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let bad_state =
        write_json(&json!({"bookmarks": {format!("{}-public-items", db.name): {"replication_key": "n", "replication_key_value": "abc"}}}));
    let no_host = || with(json!({"host": null, "port": null, "user": null, "password": null, "dbname": null}));
    // A client certificate of the test CA: accepted for any role (only tap_cert_user must show one).
    let certs = crate::client_certs::certs();
    let passphrase = certs.passphrase.clone();
    let key_query = |password: &str| {
        let encode = crate::client_certs::encode;
        format!("?sslcert={}&sslkey={}&sslpassword={}", encode(&certs.cert), encode(&certs.key_encrypted), encode(password))
    };
    let trace = || vec![("RUST_LOG", "trace".to_string())];

    // (label, expected exit code, args, extra environment)
    let runs: Vec<SecretRun> = vec![
        ("discover", 0, discover(with(json!({}))), vec![]),
        ("discover at trace level", 0, discover(with(json!({}))), vec![("RUST_LOG", "trace".into())]),
        ("sync at debug level", 0, sync(&["--log-level", "debug"]), vec![]),
        ("bad state", 65, sync(&["--state", arg(&bad_state)]), vec![]),
        ("unknown dbname", 78, discover(with(json!({"dbname": "no_such_db_q7"}))), vec![]),
        ("sslmode disable", 69, discover(with(json!({"sslmode": "disable"}))), vec![]),
        ("verify-full mismatch", 69, discover(with(json!({"sslmode": "verify-full", "sslrootcert": s.ca}))), vec![]),
        ("closed port", 69, discover(with(json!({"port": closed_port()}))), vec![]),
        ("bad port", 78, discover(with(json!({"port": "abc"}))), vec![]),
        ("database_url", 0, discover(url_file(url(s.port, ""))), vec![]),
        ("database_url closed port", 69, discover(url_file(url(closed_port(), ""))), vec![]),
        ("database_url bad sslmode", 78, discover(url_file(url(s.port, "?sslmode=sometimes"))), vec![]),
        ("database_url bad scheme", 78, discover(url_file(url(s.port, "").replacen("postgres", "mysql", 1))), vec![]),
        ("DATABASE_URL", 0, discover(no_host()), vec![("DATABASE_URL", url(s.port, ""))]),
        ("DATABASE_URL no SSL", 69, discover(no_host()), vec![("DATABASE_URL", url(s.port, "?sslmode=disable"))]),
        (
            "sslpassword at trace level",
            0,
            discover(with(json!({"sslcert": certs.cert, "sslkey": certs.key_encrypted, "sslpassword": passphrase}))),
            trace(),
        ),
        (
            "sync with sslpassword at debug level",
            0,
            {
                let mut args = sync(&["--log-level", "debug"]);
                args[1] = arg(&with(json!({"sslcert": certs.cert, "sslkey": certs.key_encrypted, "sslpassword": passphrase}))).into();
                args
            },
            vec![],
        ),
        (
            "wrong sslpassword at trace level",
            77,
            discover(with(json!({"sslcert": certs.cert, "sslkey": certs.key_encrypted, "sslpassword": SECRET}))),
            trace(),
        ),
        ("sslpassword in database_url at trace level", 0, discover(url_file(url(s.port, &key_query(&passphrase)))), trace()),
        ("wrong sslpassword in database_url", 77, discover(url_file(url(s.port, &key_query(SECRET)))), trace()),
        ("sslpassword in DATABASE_URL at trace level", 0, discover(no_host()), {
            let mut env = trace();
            env.push(("DATABASE_URL", url(s.port, &key_query(&passphrase))));
            env
        }),
        ("about with config", 0, vec!["--about".into(), "--config".into(), arg(&with(json!({}))).into()], vec![]),
    ];
    for (label, code, args, env) in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = tap_env(&args, &env);
        assert_eq!(out.code, code, "[{label}] exit code; stderr:\n{}", out.stderr);
        assert_hidden(&out, label, &[SECRET, &passphrase]);
    }
}

/// SELECT lost on the table or only on selected columns is the same failure, a permission one
/// (77): the stream is skipped with an error naming it and what to grant, the others sync; a
/// dropped column stays a catalog/data error (65).
#[test]
fn lost_select_on_the_table_or_on_selected_columns_exits_77() {
    let cases: [LostSelectCase<'_>; 3] = [
        ("table", "revoke select on items from {role}", 77, &["cannot read table", "items"], &["GRANT SELECT ON"]),
        (
            "columns",
            "revoke select on items from {role}; grant select (id) on items to {role}",
            77,
            &["cannot read column \"n\"", "items"],
            &["GRANT SELECT (\"n\")"],
        ),
        ("dropped column", "alter table items drop column n", 65, &["column \"n\" no longer exists"], &["--discover"]),
    ];
    for (label, change, code, needles, hint_words) in cases {
        let (db, config, mut catalog) = support::fixture(
            "create table items (id int primary key, n int, note text); insert into items values (1, 10, 'a'); \
             create table other (id int primary key); insert into other values (1)",
            json!({}),
        );
        support::select(&mut catalog, "items", "FULL_TABLE", None);
        support::select(&mut catalog, "other", "FULL_TABLE", None);
        db.exec(&change.replace("{role}", &db.role));
        let out = support::sync(&config, &catalog, None);
        let ctx = format!("[{label}] exit {}\nstderr:\n{}", out.code, out.stderr);
        assert_eq!(out.code, code, "{ctx}");
        let error = out.stderr.lines().find(|l| l.starts_with("tap-heroku: error: ")).unwrap_or_else(|| panic!("no error line: {ctx}"));
        for n in needles {
            assert!(error.contains(n), "error line lacks {n:?}: {ctx}");
        }
        let hint = out.stderr.lines().last().unwrap();
        for w in hint_words {
            assert!(hint.contains(w), "hint lacks {w:?}: {ctx}");
        }
        assert!(out.records("items").is_empty(), "{ctx}");
        assert_eq!(out.records("other").len(), 1, "the other stream syncs: {ctx}");
    }
}

#[test]
fn about_describes_settings_and_marks_secrets() {
    let out = tap(&["--about", "--format", "json"]).success();
    assert_hidden(&out, "about json", &[READER_PASSWORD, WRONG_PASSWORD]);
    let about: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("--about is not JSON ({e}):\n{}", out.stdout));
    let props = &about["settings"]["properties"];
    assert_eq!(props["password"]["secret"], json!(true), "{about}");
    assert_eq!(props["database_url"]["secret"], json!(true), "{about}");
    assert_eq!(props["sslpassword"]["secret"], json!(true), "{about}");
    assert_ne!(props["sslkey"]["secret"], json!(true), "{about}");
    assert_ne!(props["host"]["secret"], json!(true), "{about}");
    assert_eq!(about["name"], json!("tap-heroku"));

    let out = tap(&["--about", "--format", "markdown"]).success();
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with('|')).collect();
    assert!(rows.len() >= 3 && rows[1].starts_with("|---"), "a Markdown table with header and separator:\n{}", out.stdout);
    assert!(rows.iter().any(|r| r.starts_with("| password |") && r.contains("secret")), "{}", out.stdout);

    // docs/configuration.md shows the same table (the settings reference users read).
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"))
        .expect("reading docs/configuration.md");
    let doc_rows: Vec<&str> = doc.lines().skip_while(|l| !l.starts_with("| Setting | Type |")).take_while(|l| l.starts_with('|')).collect();
    assert_eq!(doc_rows, rows, "docs/configuration.md's settings table differs from `tap-heroku --about --format markdown`");
}
