//! Mutual TLS end to end: `sslcert`, `sslkey` and `sslpassword` (as config keys and as
//! `database_url` / `DATABASE_URL` parameters) against the primary of `tests/server.sh`, whose
//! pg_hba.conf demands `clientcert=verify-full` of the role `tap_cert_user`, as Heroku Private and
//! Shield databases demand a client certificate.
//!
//! Every accepted key form connects and syncs; every refusal (a missing half, a missing or
//! unreadable file, a key others may read, an encrypted key without or with a wrong passphrase, a
//! key of another certificate, a certificate of an unknown CA or for another role, no certificate
//! at all) gives its exit code, one error line, a hint sentence and an empty stdout, and the
//! passphrase never appears in output, not even at trace level.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::errors::{assert_hidden, assert_refused};
use crate::support::{TapOutput, TestDb, server, tap_env, write_json};

/// The client certificates and keys `tests/server.sh` made, from its `TAP_HEROKU_TEST_*` variables.
pub(crate) struct Certs {
    /// The role pg_hba.conf demands a certificate of (`clientcert=verify-full`).
    pub(crate) user: String,
    /// Its password.
    pub(crate) password: String,
    /// Certificate of the test CA with CN = `user`.
    pub(crate) cert: String,
    /// Its key, unencrypted PEM, mode 0600.
    pub(crate) key: String,
    /// The same key as encrypted PKCS#8 PEM.
    pub(crate) key_encrypted: String,
    /// The same key encrypted in OpenSSL's traditional PEM form (`Proc-Type: 4,ENCRYPTED`).
    pub(crate) key_encrypted_traditional: String,
    /// The same key as unencrypted DER.
    pub(crate) key_der: String,
    /// Passphrase of both encrypted keys.
    pub(crate) passphrase: String,
    /// Certificate of the test CA whose CN is another role, and its key.
    pub(crate) wrong_cn: (String, String),
    /// Certificate of the unrelated CA with CN = `user`, and its key.
    pub(crate) other_ca: (String, String),
}

/// Reads one required variable.
fn var(name: &str) -> String {
    crate::support::server()
        .var(name)
        .unwrap_or_else(|| panic!("{name} is not set: the test servers (tests/server.sh) did not make client certificates"))
        .to_string()
}

/// The certificates of the running test servers.
pub(crate) fn certs() -> Certs {
    Certs {
        user: var("TAP_HEROKU_TEST_CERT_USER"),
        password: var("TAP_HEROKU_TEST_CERT_PASSWORD"),
        cert: var("TAP_HEROKU_TEST_CLIENT_CERT"),
        key: var("TAP_HEROKU_TEST_CLIENT_KEY"),
        key_encrypted: var("TAP_HEROKU_TEST_CLIENT_KEY_ENCRYPTED"),
        key_encrypted_traditional: var("TAP_HEROKU_TEST_CLIENT_KEY_ENCRYPTED_TRADITIONAL"),
        key_der: var("TAP_HEROKU_TEST_CLIENT_KEY_DER"),
        passphrase: var("TAP_HEROKU_TEST_CLIENT_KEY_PASSPHRASE"),
        wrong_cn: (var("TAP_HEROKU_TEST_WRONG_CN_CERT"), var("TAP_HEROKU_TEST_WRONG_CN_KEY")),
        other_ca: (var("TAP_HEROKU_TEST_OTHER_CA_CLIENT_CERT"), var("TAP_HEROKU_TEST_OTHER_CA_CLIENT_KEY")),
    }
}

/// A fresh database with `public.certified` (three rows) that the certificate role may read.
fn cert_db(certs: &Certs) -> TestDb {
    let db = TestDb::new();
    db.exec(&format!(
        "create table certified (id int primary key, note text); \
         insert into certified select g, 'row ' || g from generate_series(1, 3) g; \
         grant connect on database {db} to {user}; \
         grant usage on schema public to {user}; \
         grant select on all tables in schema public to {user}",
        db = db.name,
        user = certs.user
    ));
    db
}

/// The certificate role's config for `db` (no certificate yet) merged with `extra`; a `null`
/// in `extra` removes the key. `filter_dbs` keeps discovery to this test's database (the role
/// may connect to the databases of concurrent tests too).
fn config(certs: &Certs, db: &TestDb, extra: Value) -> Value {
    let s = server();
    let mut config = json!({"host": s.host, "port": s.port, "user": certs.user, "password": certs.password,
                            "dbname": db.name, "filter_dbs": db.name});
    for (k, v) in extra.as_object().expect("extra is an object") {
        if v.is_null() {
            config.as_object_mut().unwrap().remove(k);
        } else {
            config[k] = v.clone();
        }
    }
    config
}

/// A `postgres://` URL of the certificate role for `db` with the query `query` (already encoded).
fn url(certs: &Certs, db: &TestDb, query: &str) -> String {
    let s = server();
    format!("postgres://{}:{}@{}:{}/{}?{query}", certs.user, certs.password, s.host, s.port, db.name)
}

/// Percent-encodes everything but unreserved characters (a URL query value).
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Runs `--discover` with `config`, and `env` in the environment.
fn discover(config: &Value, env: &[(&str, &str)]) -> TapOutput {
    tap_env(&["--config", write_json(config).to_str().expect("UTF-8 path"), "--discover"], env)
}

/// Asserts exit 0 and a catalog listing `certified` of `db`.
fn assert_discovered(out: &TapOutput, label: &str, db: &TestDb) {
    assert_eq!(out.code, 0, "[{label}] discovery failed:\n{}", out.stderr);
    let catalog: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("[{label}] not a catalog ({e}):\n{}", out.stdout));
    let id = format!("{}-public-certified", db.name);
    assert!(
        catalog["streams"].as_array().expect("streams").iter().any(|s| s["tap_stream_id"] == json!(id)),
        "[{label}] catalog lacks {id}:\n{}",
        out.stdout
    );
}

/// A copy of a file in the servers' directory (removed with it, and on `Drop`) with `mode`.
struct FileCopy {
    /// Where the copy is.
    path: PathBuf,
}

impl FileCopy {
    /// Copies `source` and sets `mode` on the copy.
    fn new(source: &str, mode: u32) -> FileCopy {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(&server().socket_dir).join(format!("copy-{}.key", uuid::Uuid::new_v4().simple()));
        std::fs::copy(source, &path).expect("copying a key file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod of the copy");
        FileCopy { path }
    }

    /// The path as a config value.
    fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }
}

impl Drop for FileCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn client_certificates_connect_in_every_accepted_form() {
    let c = certs();
    let db = cert_db(&c);
    let s = server();
    let pass = c.passphrase.as_str();
    // (label, extra config keys)
    let cases: Vec<(&str, Value)> = vec![
        ("PEM key", json!({"sslcert": c.cert, "sslkey": c.key})),
        ("encrypted PKCS#8 key", json!({"sslcert": c.cert, "sslkey": c.key_encrypted, "sslpassword": pass})),
        ("encrypted traditional key", json!({"sslcert": c.cert, "sslkey": c.key_encrypted_traditional, "sslpassword": pass})),
        ("DER key", json!({"sslcert": c.cert, "sslkey": c.key_der})),
        (
            "sslpassword with a key that is not encrypted (ignored, as in libpq)",
            json!({"sslcert": c.cert, "sslkey": c.key, "sslpassword": pass}),
        ),
        (
            "verify-full with the server's CA",
            json!({"sslcert": c.cert, "sslkey": c.key_encrypted, "sslpassword": pass, "sslmode": "verify-full", "sslrootcert": s.ca, "host": "localhost"}),
        ),
        (
            "database_url parameters",
            json!({"database_url": url(&c, &db, &format!("sslmode=require&sslcert={}&sslkey={}", encode(&c.cert), encode(&c.key)))}),
        ),
        (
            "database_url parameters, encrypted key",
            json!({"database_url": url(&c, &db, &format!("sslcert={}&sslkey={}&sslpassword={}", encode(&c.cert), encode(&c.key_encrypted), encode(pass)))}),
        ),
    ];
    for (label, extra) in cases {
        let extra_has_url = extra.get("database_url").is_some();
        let config = if extra_has_url { extra } else { config(&c, &db, extra) };
        let out = discover(&config, &[("RUST_LOG", "trace")]);
        assert_discovered(&out, label, &db);
        assert_hidden(&out, label, &[pass, &c.password]);
    }

    // DATABASE_URL with the parameters, the config naming only the stream filter.
    let env_url = url(&c, &db, &format!("sslcert={}&sslkey={}&sslpassword={}", encode(&c.cert), encode(&c.key_encrypted), encode(pass)));
    let out = discover(&json!({"filter_dbs": db.name}), &[("DATABASE_URL", &env_url), ("RUST_LOG", "trace")]);
    assert_discovered(&out, "DATABASE_URL parameters", &db);
    assert_hidden(&out, "DATABASE_URL parameters", &[pass, &c.password]);

    // A sync through the encrypted key sends the rows.
    let config = config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.key_encrypted, "sslpassword": pass}));
    let config_path = write_json(&config);
    let mut catalog = crate::support::discover(&config_path);
    crate::support::select(&mut catalog, "certified", "FULL_TABLE", None);
    let catalog_path = write_json(&catalog);
    let out = tap_env(&["--config", config_path.to_str().unwrap(), "--catalog", catalog_path.to_str().unwrap()], &[("RUST_LOG", "trace")])
        .success();
    let ids: Vec<Value> = out.records("certified").iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3)]);
    assert_hidden(&out, "sync", &[pass, &c.password]);
}

#[test]
fn key_file_permissions_follow_libpq() {
    use std::os::unix::fs::MetadataExt;
    let c = certs();
    let db = cert_db(&c);
    let open = FileCopy::new(&c.key, 0o644);
    let out = discover(&config(&c, &db, json!({"sslcert": c.cert, "sslkey": open.arg()})), &[]);
    assert_refused(&out, "key mode 0644", 78, &["sslkey", open.arg(), "group or others", "0644"], &["chmod 600"]);

    let private = FileCopy::new(&c.key, 0o600);
    assert_discovered(&discover(&config(&c, &db, json!({"sslcert": c.cert, "sslkey": private.arg()})), &[]), "key mode 0600", &db);

    // 0640 is accepted only when root owns the file (libpq: a group may share a system-wide key).
    let group = FileCopy::new(&c.key, 0o640);
    let out = discover(&config(&c, &db, json!({"sslcert": c.cert, "sslkey": group.arg()})), &[]);
    if std::fs::metadata(&group.path).expect("stat of the copy").uid() == 0 {
        assert_discovered(&out, "key mode 0640 owned by root", &db);
    } else {
        assert_refused(&out, "key mode 0640 not owned by root", 78, &["group or others", "0640"], &["chmod 600"]);
    }
}

/// A refused run: label, config, exit code, words of the error line, words of the hint.
type RefusedCase<'a> = (&'a str, Value, i32, Vec<&'a str>, &'a [&'a str]);

#[test]
fn client_certificate_problems_are_refused_with_a_hint() {
    let c = certs();
    let db = cert_db(&c);
    let s = server();
    let pass = c.passphrase.as_str();
    const WRONG_PASSPHRASE: &str = "Wr0ng-Key-Pass-Q3";
    let missing = Path::new(&s.socket_dir).join("no-such-client.crt");
    let missing = missing.to_str().unwrap();
    let not_a_key = FileCopy::new(&c.cert, 0o600);
    let url_with = |query: String| json!({"database_url": url(&c, &db, &query)});
    let cases: Vec<RefusedCase> = vec![
        ("sslcert alone", config(&c, &db, json!({"sslcert": c.cert})), 78, vec!["sslcert is set but sslkey is not"], &["sslkey"]),
        ("sslkey alone", config(&c, &db, json!({"sslkey": c.key})), 78, vec!["sslkey is set but sslcert is not"], &["sslcert"]),
        (
            "sslcert alone in database_url",
            url_with(format!("sslcert={}", encode(&c.cert))),
            78,
            vec!["sslcert is set but sslkey is not"],
            &["sslkey"],
        ),
        (
            "missing sslcert file",
            config(&c, &db, json!({"sslcert": missing, "sslkey": c.key})),
            78,
            vec!["reading sslcert", missing],
            &["sslcert"],
        ),
        (
            "missing sslkey file",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": missing})),
            78,
            vec!["reading sslkey", missing],
            &["sslkey"],
        ),
        (
            "sslcert is a directory",
            config(&c, &db, json!({"sslcert": s.socket_dir, "sslkey": c.key})),
            78,
            vec!["reading sslcert"],
            &["sslcert"],
        ),
        (
            "sslkey is a directory",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": s.socket_dir})),
            78,
            vec!["not a regular file"],
            &["sslkey"],
        ),
        (
            "sslcert holds a key",
            config(&c, &db, json!({"sslcert": c.key, "sslkey": c.key})),
            78,
            vec!["no PEM certificate"],
            &["sslcert", "PEM"],
        ),
        (
            "sslkey holds a certificate",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": not_a_key.arg()})),
            78,
            vec!["not a PEM or DER private key"],
            &["sslkey"],
        ),
        (
            "encrypted key without sslpassword",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.key_encrypted})),
            77,
            vec!["encrypted and sslpassword is not set", &c.key_encrypted],
            &["sslpassword"],
        ),
        (
            "encrypted traditional key without sslpassword",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.key_encrypted_traditional})),
            77,
            vec!["encrypted and sslpassword is not set"],
            &["sslpassword"],
        ),
        (
            "wrong sslpassword",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.key_encrypted, "sslpassword": WRONG_PASSPHRASE})),
            77,
            vec!["sslpassword does not decrypt sslkey", &c.key_encrypted],
            &["sslpassword"],
        ),
        (
            "wrong sslpassword, traditional key",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.key_encrypted_traditional, "sslpassword": WRONG_PASSPHRASE})),
            77,
            vec!["sslpassword does not decrypt sslkey"],
            &["sslpassword"],
        ),
        (
            "wrong sslpassword in database_url",
            url_with(format!("sslcert={}&sslkey={}&sslpassword={WRONG_PASSPHRASE}", encode(&c.cert), encode(&c.key_encrypted))),
            77,
            vec!["sslpassword does not decrypt sslkey"],
            &["sslpassword"],
        ),
        (
            "key of another certificate",
            config(&c, &db, json!({"sslcert": c.cert, "sslkey": c.wrong_cn.1})),
            78,
            vec!["is not the key of sslcert", &c.wrong_cn.1, &c.cert],
            &["sslkey", "sslcert"],
        ),
        (
            "certificate of an unknown CA",
            config(&c, &db, json!({"sslcert": c.other_ca.0, "sslkey": c.other_ca.1})),
            77,
            vec!["unknown ca", &c.user],
            &["rejected the client certificate", "CA"],
        ),
        (
            "certificate for another role (clientcert=verify-full)",
            config(&c, &db, json!({"sslcert": c.wrong_cn.0, "sslkey": c.wrong_cn.1})),
            77,
            vec!["password authentication failed", &c.user],
            &["CN", "sslcert"],
        ),
        (
            "no certificate where the server demands one",
            config(&c, &db, json!({})),
            77,
            vec!["requires a valid client certificate"],
            &["sslcert", "sslkey"],
        ),
    ];
    for (label, config, code, needles, hint) in cases {
        let out = discover(&config, &[]);
        assert_refused(&out, label, code, &needles, hint);
        assert_hidden(&out, label, &[pass, WRONG_PASSPHRASE, &c.password]);
    }
}
