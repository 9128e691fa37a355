//! Faults made to happen for real: identifiers (and catalog and state text) built to break SQL
//! never reach a statement unquoted or unbound, and no secret shows at trace level, in failures
//! or successes.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::live::{EXIT_LIMIT, Live, sync_args};
use crate::support::output::{assert_failure, log_lines, record_ids, records, schema_streams};
use crate::support::{TapOutput, TestDb, assert_records_match_schemas, fixture, id, root, select, server, stream_mut, sync, write_json};

// ---- 6. identifiers made to break SQL --------------------------------------------------------

/// Reads the statements the server logged for a role with `log_statement = 'all'`
/// (tests/server.sh writes the primary's log next to its sockets).
struct StatementLog {
    /// The log file.
    path: PathBuf,
    /// Its length when logging was switched on.
    start: u64,
}

impl StatementLog {
    /// Logs every statement of `db`'s role from now on.
    fn start(db: &TestDb) -> StatementLog {
        let path = PathBuf::from(&server().socket_dir).join("primary.log");
        let start =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("the server log {} ({e}): tests/server.sh writes it", path.display())).len();
        db.exec(&format!("alter role {} set log_statement = 'all'", db.role));
        StatementLog { path, start }
    }

    /// The SQL text of every statement logged since [`StatementLog::start`] (log entries
    /// `LOG:  execute ...`, `LOG:  statement: ...` and the `STATEMENT:` of an error), with
    /// continuation lines (identifiers with newlines) joined back.
    fn statements(&self) -> Vec<String> {
        let bytes = std::fs::read(&self.path).expect("reading the server log");
        let text = String::from_utf8_lossy(&bytes[self.start as usize..]).into_owned();
        let starts_entry = |l: &str| {
            let b = l.as_bytes();
            b.len() > 24 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b' ' && b[13] == b':'
        };
        let mut entries: Vec<String> = Vec::new();
        for line in text.split('\n') {
            if starts_entry(line) || entries.is_empty() {
                entries.push(line.to_string());
            } else {
                let last = entries.last_mut().unwrap();
                last.push('\n');
                last.push_str(line);
            }
        }
        entries
            .into_iter()
            .filter_map(|e| {
                ["] LOG:  execute ", "] LOG:  statement: ", "] STATEMENT:  "]
                    .iter()
                    .find_map(|tag| e.find(tag).map(|at| e[at + tag.len()..].to_string()))
            })
            .collect()
    }
}

/// Asserts that `payload` (which contains `marker` and a `"`) reached the server only inside
/// quoted identifiers: in every logged statement, once each `""`-doubled copy of it is taken out,
/// `marker` is gone. Also asserts that some statement did name it (the check is not vacuous).
fn assert_only_quoted(log: &StatementLog, payload: &str, marker: &str) {
    let quoted = payload.replace('"', "\"\"");
    let statements = log.statements();
    assert!(statements.iter().any(|s| s.contains(&quoted)), "no logged statement names the payload; is log_statement working?");
    for s in &statements {
        let rest = s.replace(&quoted, "");
        assert!(!rest.contains(marker), "the payload reached SQL text unquoted:\n{s}");
    }
}

/// Payload, marker and canary table name for one test.
fn payload() -> (String, String) {
    let canary = format!("canary_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    (format!("q'\"; drop table {canary}; -- \\"), canary)
}

#[test]
fn hostile_identifiers_replicate_and_never_reach_sql_unquoted() {
    let (p, canary) = payload();
    let q = |s: &str| s.replace('"', "\"\"");
    let schema = format!("Sch {p}");
    let (full, inc) = (p.clone(), format!("order {p}"));
    let (pk, key) = (format!("id {p}"), format!("updated at {p}"));
    let domain = format!("ts {p}");
    let cols = [format!("Sel{p}"), "select".to_string(), "MiXeD Case".to_string(), format!("ünï 😀 {p}"), "new\nline".to_string()];
    let sql = format!(
        r#"create table {canary} (id int);
           create schema "{s}";
           create domain "{s}"."{dom}" as timestamptz;
           create table "{s}"."{full}" ("{pk}" int primary key, "{c0}" text, "{c1}" text, "{c2}" int, "{c3}" text, "{c4}" text);
           insert into "{s}"."{full}" select g, 'sel ' || g, 'select ' || g, -g, 'ü ' || g, E'nl\n' || g from generate_series(1, 7) g;
           create table "{s}"."{inc}" (id int primary key, "{key}" "{s}"."{dom}");
           create index on "{s}"."{inc}" ("{key}");
           insert into "{s}"."{inc}" select g, timestamptz '2024-06-01 00:00:00+00' + g * interval '1 hour' from generate_series(1, 6) g"#,
        s = q(&schema),
        dom = q(&domain),
        full = q(&full),
        inc = q(&inc),
        pk = q(&pk),
        key = q(&key),
        c0 = q(&cols[0]),
        c1 = q(&cols[1]),
        c2 = q(&cols[2]),
        c3 = q(&cols[3]),
        c4 = q(&cols[4]),
    );
    let (db, config, mut catalog) = fixture(&sql, json!({"itersize": 3}));
    db.exec(&format!("alter table {canary} owner to {}", db.role));
    let log = StatementLog::start(&db);
    select(&mut catalog, &full, "FULL_TABLE", None);
    select(&mut catalog, &inc, "INCREMENTAL", Some(&key));
    let (id_full, id_inc) = (id(&db, &schema, &full), id(&db, &schema, &inc));
    let row_full = |g: i64| json!({&pk: g, &cols[0]: format!("sel {g}"), &cols[1]: format!("select {g}"), &cols[2]: -g, &cols[3]: format!("ü {g}"), &cols[4]: format!("nl\n{g}")});
    let row_inc = |g: i64| json!({"id": g, &key: format!("2024-06-01T{g:02}:00:00+00:00")});

    let first = sync(&config, &catalog, None).success();
    let messages = first.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(records(&messages, &full), (1..=7).map(row_full).collect::<Vec<_>>());
    assert_eq!(records(&messages, &inc), (1..=6).map(row_inc).collect::<Vec<_>>());
    let schema_msg = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == json!(full)).unwrap();
    assert_eq!(schema_msg["key_properties"], json!([pk]));
    let end = messages.last().unwrap()["value"].clone();
    assert_eq!(end["bookmarks"][&id_inc]["replication_key"], json!(key));
    assert_eq!(end["bookmarks"][&id_inc]["replication_key_value"], json!("2024-06-01T06:00:00+00:00"));

    // Resume both: FULL_TABLE after a hostile primary key, INCREMENTAL from a bookmark cast to
    // the hostile domain type.
    let version = end["bookmarks"][&id_full]["version"].clone();
    db.exec(&format!(r#"insert into "{}"."{}" values (7, '2024-06-01 09:00:00+00')"#, q(&schema), q(&inc)));
    let mut state = end.clone();
    state["currently_syncing"] = json!(id_full);
    state["bookmarks"][&id_full] = json!({"last_replication_method": "FULL_TABLE", "version": version, "last_pk_fetched": {&pk: 4}});
    let second = sync(&config, &catalog, Some(&state)).success();
    let messages = second.messages();
    assert_records_match_schemas(&messages);
    assert_eq!(records(&messages, &full), (5..=7).map(row_full).collect::<Vec<_>>());
    assert_eq!(records(&messages, &inc), [row_inc(6), json!({"id": 7, &key: "2024-06-01T09:00:00+00:00"})]);

    assert_only_quoted(&log, &p, &canary);
    let exists: bool = db.admin().query_one("select to_regclass($1) is not null", &[&canary]).unwrap().get(0);
    assert!(exists, "the canary table still exists");
}

#[test]
fn hostile_catalog_and_state_text_is_skipped_or_bound_never_executed() {
    let (p, canary) = payload();
    let q = |s: &str| s.replace('"', "\"\"");
    let text_table = format!("t{p}");
    let text_key = format!("k{p}");
    let sql = format!(
        r#"create table {canary} (id int);
           create table a_ok (id int primary key, n int); insert into a_ok select g, g from generate_series(1, 3) g;
           create table "{t}" ("{k}" text primary key, n int);
           insert into "{t}" select v, ord::int from unnest(array['a', 'q', 'q''', 'q''"', $x${pp}$x$, 'r', 'zz', '', ' ']) with ordinality u(v, ord)"#,
        t = q(&text_table),
        k = q(&text_key),
        pp = p,
    );
    let (db, config, catalog) = fixture(&sql, json!({}));
    db.exec(&format!("alter table {canary} owner to {}", db.role));
    let log = StatementLog::start(&db);

    // Catalog entries whose metadata carries the payload, next to a real stream.
    let mut cat = catalog.clone();
    select(&mut cat, "a_ok", "FULL_TABLE", None);
    let base = stream_mut(&mut cat, "a_ok").clone();
    let fake = |n: usize, edit: &dyn Fn(&mut Value)| {
        let mut s = base.clone();
        s["tap_stream_id"] = json!(format!("fake-{n}"));
        s["stream"] = json!(format!("fake_{n}"));
        edit(&mut s);
        s
    };
    let set_root = |s: &mut Value, k: &str, v: Value| s["metadata"][0]["metadata"][k] = v;
    let fakes = vec![
        fake(1, &|s| set_root(s, "schema-name", json!(p))),
        fake(2, &|s| s["table_name"] = json!(p)),
        fake(3, &|s| {
            s["metadata"]
                .as_array_mut()
                .unwrap()
                .push(json!({"breadcrumb": ["properties", text_key], "metadata": {"inclusion": "available"}}));
            set_root(s, "replication-method", json!("INCREMENTAL"));
            set_root(s, "replication-key", json!(text_key));
        }),
        fake(4, &|s| {
            s["metadata"]
                .as_array_mut()
                .unwrap()
                .push(json!({"breadcrumb": ["properties", format!("c{p}")], "metadata": {"selected": true}}));
        }),
    ];
    cat["streams"].as_array_mut().unwrap().extend(fakes);
    let out = sync(&config, &cat, None);
    assert_failure(&out, "hostile catalog", 65, &["fake-1", "no longer exists"], true);
    let messages = out.messages();
    assert_eq!(schema_streams(&messages), ["a_ok"], "only the real stream syncs");
    assert_eq!(record_ids(&messages, "a_ok"), [1, 2, 3]);
    for (fake_id, needle) in
        [("fake-1", "no longer exists"), ("fake-2", "no longer exists"), ("fake-3", "no longer exists"), ("fake-4", "no longer exists")]
    {
        assert_eq!(log_lines(&out, "ERROR", &[fake_id, needle]).len(), 1, "{fake_id}:\n{}", out.stderr);
    }

    // A database-name carrying the payload is a connection to a database that does not exist.
    let mut cat = catalog.clone();
    select(&mut cat, "a_ok", "FULL_TABLE", None);
    root(&mut cat, "a_ok")["database-name"] = json!(p);
    let out = sync(&config, &cat, None);
    assert_failure(&out, "hostile database-name", 78, &["does not exist"], true);
    assert!(out.stdout.is_empty());

    // State values are bound parameters: a text key's bookmark equal to the payload selects the
    // rows at or after it, exactly as the server compares them.
    let sid = id(&db, "public", &text_table);
    let want = |op: &str| -> Vec<String> {
        db.admin()
            .query(&format!(r#"select "{k}" from "{t}" where "{k}" {op} $1 order by "{k}""#, k = q(&text_key), t = q(&text_table)), &[&p])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let keys = |messages: &[Value]| -> Vec<String> {
        records(messages, &text_table).iter().map(|r| r[&text_key].as_str().unwrap().to_string()).collect()
    };
    let mut cat = catalog.clone();
    select(&mut cat, &text_table, "INCREMENTAL", Some(&text_key));
    let state = json!({"bookmarks": {&sid: {"replication_key": text_key, "replication_key_value": p, "version": 1}}});
    let messages = sync(&config, &cat, Some(&state)).success().messages();
    let got = keys(&messages);
    assert_eq!(got, want(">="), "INCREMENTAL from a hostile bookmark");
    assert_eq!(got.first(), Some(&p), "the row equal to the bookmark comes first");

    let mut cat = catalog.clone();
    select(&mut cat, &text_table, "FULL_TABLE", None);
    let state = json!({"currently_syncing": sid, "bookmarks": {&sid: {"last_replication_method": "FULL_TABLE", "version": 1, "last_pk_fetched": {&text_key: p}}}});
    let messages = sync(&config, &cat, Some(&state)).success().messages();
    let mut got = keys(&messages);
    got.sort();
    let mut after = want(">");
    after.sort();
    assert_eq!(got, after, "FULL_TABLE resumed after a hostile last_pk_fetched");

    assert_only_quoted(&log, &p, &canary);
    let exists: bool = db.admin().query_one("select to_regclass($1) is not null", &[&canary]).unwrap().get(0);
    assert!(exists, "the canary table still exists");
}

// ---- 7. no secret leaks --------------------------------------------------------------------

/// Arguments and extra environment of one run.
type Invocation = (Vec<String>, Vec<(&'static str, String)>);

/// `text` with every byte that is not alphanumeric percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn secrets_stay_hidden_at_trace_level_in_failures_and_successes() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("Pw-{}-@:/%?#&x", &tag[..16]);
    let wrong = format!("Wrong-{}-@:/", &tag[16..]);
    let (db, _, catalog) = fixture(
        "create table items (id int primary key, note text); insert into items select g, 'n' || g from generate_series(1, 5) g; \
         create table doomed (id int primary key); insert into doomed values (1)",
        json!({}),
    );
    db.exec(&format!("alter role {} password '{secret}'", db.role));
    let s = server();
    let url = |port: u16, dbname: &str| format!("postgres://{}:{}@{}:{port}/{dbname}", db.role, percent_encode(&secret), s.host);
    let good_url = url(s.port, &db.name);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config_url = |u: &str, extra: Value| {
        let mut c = json!({"database_url": u});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(&c)
    };
    let discrete = |extra: Value| {
        let mut c = db.config();
        c["password"] = json!(secret);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        write_json(&c)
    };
    let mut items = catalog.clone();
    select(&mut items, "items", "FULL_TABLE", None);
    let mut both = items.clone();
    select(&mut both, "doomed", "FULL_TABLE", None);
    let catalog_path = |c: &Value| write_json(c).display().to_string();
    let run = |config: PathBuf, catalog: Option<&Value>, env: Vec<(&'static str, String)>| -> Invocation {
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        match catalog {
            Some(c) => args.extend(["--catalog".to_string(), catalog_path(c)]),
            None => args.push("--discover".into()),
        }
        (args, env)
    };

    // (label, expected exit code, args and env); all at RUST_LOG=trace.
    let runs: Vec<(&str, i32, Invocation)> = vec![
        ("discover, database_url", 0, run(config_url(&good_url, json!({})), None, vec![])),
        ("sync, database_url", 0, run(config_url(&good_url, json!({"itersize": 2})), Some(&items), vec![])),
        ("sync, discrete keys", 0, run(discrete(json!({})), Some(&items), vec![])),
        ("sync, DATABASE_URL", 0, run(write_json(&json!({})), Some(&items), vec![("DATABASE_URL", good_url.clone())])),
        ("closed port", 69, run(config_url(&url(closed, &db.name), json!({"connect_timeout": 5})), Some(&items), vec![])),
        ("unknown database", 78, run(config_url(&url(s.port, "no_such_db_x"), json!({})), None, vec![])),
        ("sslmode disable", 69, run(config_url(&format!("{good_url}?sslmode=disable"), json!({})), Some(&items), vec![])),
        ("wrong password", 77, run(discrete(json!({"password": wrong})), Some(&items), vec![])),
        (
            "port out of range in the URL",
            78,
            run(config_url(&url(s.port, &db.name).replace(&format!(":{}/", s.port), ":99999/"), json!({})), Some(&items), vec![]),
        ),
        ("bad percent escape after the password", 78, run(config_url(&format!("{good_url}%zz"), json!({})), Some(&items), vec![])),
        ("about", 0, (vec!["--about".into(), "--config".into(), config_url(&good_url, json!({})).display().to_string()], vec![])),
    ];
    let mut failing_sync = run(config_url(&good_url, json!({})), Some(&both), vec![]);
    failing_sync.1.push(("RUST_LOG", "trace".into()));

    let secrets = [secret.clone(), percent_encode(&secret), tag[..16].to_string(), wrong.clone(), tag[16..].to_string(), good_url.clone()];
    let check = |label: &str, out: &TapOutput| {
        for sec in &secrets {
            assert!(!out.stdout.contains(sec.as_str()), "[{label}] stdout contains {sec:?}");
            assert!(!out.stderr.contains(sec.as_str()), "[{label}] stderr contains {sec:?}:\n{}", out.stderr);
        }
        assert!(!out.stderr.contains("panicked"), "[{label}] {}", out.stderr);
    };
    for (label, code, (args, mut env)) in runs {
        env.push(("RUST_LOG", "trace".into()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = crate::support::tap_env(&args, &env);
        assert_eq!(out.code, code, "[{label}] exit code; stderr:\n{}", out.stderr);
        assert!(
            code != 0 || label == "about" || out.stderr.lines().any(|l| l.starts_with("TRACE") || l.starts_with("DEBUG")),
            "[{label}] trace logging is on:\n{}",
            out.stderr
        );
        check(label, &out);
    }

    // A sync that fails after output (a selected table dropped), at trace level.
    db.exec("drop table doomed");
    let (args, env) = failing_sync;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = crate::support::tap_env(&args, &env);
    assert_failure(&out, "table gone", 65, &["doomed"], true);
    assert_eq!(record_ids(&out.messages(), "items"), [1, 2, 3, 4, 5]);
    check("table gone", &out);

    // A sync killed by SIGTERM mid-stream, at trace level.
    let mut live = Live::spawn(&sync_args(&config_url(&good_url, json!({"itersize": 1})), &items, None), &[("RUST_LOG", "trace")]);
    live.read_records(1);
    live.signal("TERM");
    let out = live.finish(EXIT_LIMIT).out;
    assert!(out.code == 143 || out.code == 0, "SIGTERM: {}\n{}", out.code, out.stderr);
    check("SIGTERM", &out);
}
