//! Property tests driven by a deterministic PRNG: the config, catalog and state parsers and the
//! value encoders on random and mutated input must never panic, and what they accept must keep
//! their invariants (an encoder that returns Ok wrote exactly one valid JSON value of its kind;
//! a config error never repeats the password; a state re-reads as itself).
//!
//! Bounded and reproducible: each target runs a fixed number of iterations from a fixed seed.
//! `TAP_HEROKU_FUZZ_SEED=<n>` changes the seed and `TAP_HEROKU_FUZZ_SCALE=<k>` multiplies the
//! iterations, for longer hunts; a failure prints the target, seed, iteration and input.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, select_streams};
use crate::config::{Config, SETTINGS};
use crate::encode::encode_value;
use crate::state::State;
use crate::typemap::{Encoder, OutOfRangeDates};

// ---- the generator ---------------------------------------------------------------------------

/// xorshift64* PRNG: tiny, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped).
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `1/n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `items`.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `len` random bytes.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A length, mostly small, sometimes one of the sizes fixed-width types have.
    fn len(&mut self) -> usize {
        match self.below(4) {
            0 => *self.pick(&[0, 1, 2, 4, 8, 12, 16]),
            1 => self.below(8),
            2 => self.below(40),
            _ => self.below(200),
        }
    }

    /// A string mixing ASCII, JSON/SQL/URL metacharacters, control characters and non-ASCII.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "9", " ", "\"", "'", "\\", "/", ":", "@", "?", "&", "=", "%", "%2", "%zz", "%41", "%ff", "%c3%a9", ",", ";",
            "--", "\n", "\t", "\u{0}", "\u{1f}", "\u{7f}", "é", "Ünï", "😀", "\u{2028}", "[", "]", "{", "}", "true", "null", "-", "+", ".",
            "e", "5432",
        ];
        let n = self.below(12);
        (0..n).map(|_| *self.pick(PIECES)).collect()
    }

    /// A UTF-8 string from random bytes (invalid sequences become U+FFFD).
    fn lossy(&mut self) -> String {
        let n = self.len();
        String::from_utf8_lossy(&self.bytes(n)).into_owned()
    }
}

/// The seed of `target`: `TAP_HEROKU_FUZZ_SEED` (mixed with the target name) or a fixed one.
fn seed(target: &str) -> u64 {
    let base = std::env::var("TAP_HEROKU_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7A9_4E20_u64);
    target.bytes().fold(base, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// `n` times `TAP_HEROKU_FUZZ_SCALE` (default 1).
fn iterations(n: usize) -> usize {
    n * std::env::var("TAP_HEROKU_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// Runs `f`; a panic (or failed property) is re-raised naming target, seed, iteration and input.
fn run_case<T>(target: &str, seed: u64, iteration: usize, input: &dyn Fn() -> String, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(cause) => {
            let what =
                cause.downcast_ref::<String>().cloned().or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!(
                "fuzz target {target} failed: {what}\n  seed {seed} (set TAP_HEROKU_FUZZ_SEED to vary it), iteration {iteration}\n  input: {}",
                input()
            )
        }
    }
}

/// A random JSON number: small, at the edges of the integer types, fractional or huge.
fn random_number(rng: &mut Rng) -> Value {
    let text = match rng.below(8) {
        0 => rng.pick(&["0", "-0", "1", "-1", "65535", "65536", "70000", "4294967296", "1e3", "1.0", "1.5", "-2.5e-3"]).to_string(),
        1 => i64::MIN.to_string(),
        2 => u64::MAX.to_string(),
        3 => "123456789012345678901234567890.123456789".into(),
        4 => "1e999".into(),
        5 => format!("{}", rng.next() as i64),
        6 => format!("{}.{}", rng.below(100_000), rng.below(1000)),
        _ => format!("{}", rng.below(20_000)),
    };
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A random JSON string from a list of values that mean something to the parsers, or noise.
fn random_string(rng: &mut Rng) -> String {
    const MEANINGFUL: &[&str] = &[
        "",
        " ",
        "true",
        "false",
        "TRUE",
        "5432",
        " 5432 ",
        "-1",
        "0",
        "65536",
        "abc",
        "FULL_TABLE",
        "INCREMENTAL",
        "LOG_BASED",
        "full_table",
        "incremental",
        "require",
        "disable",
        "prefer",
        "allow",
        "verify-ca",
        "verify-full",
        "a,b",
        ",,",
        " , x ,",
        "/nonexistent/ca.pem",
        "/",
        ".",
        "public",
        "app",
        "users",
        "id",
        "updated_at",
        "properties",
        "automatic",
        "available",
        "unsupported",
        "app-public-users",
        "public-users",
        "STATE",
    ];
    match rng.below(4) {
        0 | 1 => rng.pick(MEANINGFUL).to_string(),
        2 => rng.text(),
        _ => rng.lossy(),
    }
}

/// A random JSON value up to `depth` levels of arrays and objects, with keys from `keys`.
fn random_value(rng: &mut Rng, depth: usize, keys: &[&str]) -> Value {
    match rng.below(if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth - 1, keys)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                let key = if rng.one_in(3) { random_string(rng) } else { rng.pick(keys).to_string() };
                map.insert(key, random_value(rng, depth - 1, keys));
            }
            Value::Object(map)
        }
    }
}

/// Applies one structural mutation somewhere in `value`: delete a key or element, replace a
/// node with a random value (often of another type), add a known key, duplicate an element.
fn mutate(rng: &mut Rng, value: &mut Value, keys: &[&str]) {
    // Walk down a random path, stopping at a random depth.
    let mut node = value;
    loop {
        let descend = rng.below(3) != 0;
        let next_index = match &*node {
            Value::Array(a) if descend && !a.is_empty() => Some(rng.below(a.len())),
            Value::Object(m) if descend && !m.is_empty() => Some(rng.below(m.len())),
            _ => None,
        };
        let Some(i) = next_index else { break };
        node = match node {
            Value::Array(a) => &mut a[i],
            Value::Object(m) => m.values_mut().nth(i).expect("index below len"),
            _ => unreachable!("only containers have children"),
        };
    }
    match (rng.below(6), node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned().expect("index below len");
            m.remove(&k);
        }
        (0, Value::Array(a)) if !a.is_empty() => {
            a.remove(rng.below(a.len()));
        }
        (1, Value::Object(m)) => {
            m.insert(rng.pick(keys).to_string(), random_value(rng, 2, keys));
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let copy = a[rng.below(a.len())].clone();
            a.insert(rng.below(a.len() + 1), copy);
        }
        (3, node) => {
            // A random breadcrumb, wherever we are.
            *node = match rng.below(6) {
                0 => json!([]),
                1 => json!(["properties"]),
                2 => json!(["properties", random_string(rng)]),
                3 => json!(["properties", "id", "extra"]),
                4 => json!([1, 2]),
                _ => json!("properties"),
            };
        }
        (_, node) => *node = random_value(rng, 2, keys),
    }
}

/// Applies one byte-level mutation to JSON text: cut it, drop or flip a byte, or insert noise.
fn mutate_text(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if bytes.is_empty() {
        return rng.lossy();
    }
    let at = rng.below(bytes.len());
    match rng.below(4) {
        0 => bytes.truncate(at),
        1 => {
            bytes.remove(at);
        }
        2 => bytes[at] ^= 1 << rng.below(8),
        _ => {
            let noise = rng.pick(&["\"", "{", "}", "[", "]", ",", ":", "null", "\\u0000", "1e999", "\u{0}"]).as_bytes().to_vec();
            bytes.splice(at..at, noise);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---- config ----------------------------------------------------------------------------------

/// A password no parser has a reason to print, to catch it in any error text.
const SECRET: &str = "Zq9-SecretPw";

/// A `postgres://` URL assembled from random, often malformed, parts; its password (when it has
/// one) contains [`SECRET`].
fn random_url(rng: &mut Rng) -> String {
    let scheme = *rng.pick(&["postgres://", "postgresql://", "postgres://", "mysql://", "", "postgres:/", "POSTGRES://"]);
    let user = match rng.below(4) {
        0 => String::new(),
        1 => "reader".into(),
        _ => rng.text().replace(['@', '/', '?'], ""),
    };
    let password = match rng.below(5) {
        0 => None,
        1 => Some(SECRET.to_string()),
        2 => Some(format!("{SECRET}%2F%40")),
        3 => Some(format!("{SECRET}{}", rng.pick(&["%", "%4", "%zz", "%ff", "%c3", ":", "::"]))),
        _ => Some(format!("{SECRET}{}", rng.text().replace(['@', '/', '?'], ""))),
    };
    let userinfo = match (&password, rng.below(4)) {
        (_, 0) => String::new(),
        (Some(p), _) => format!("{user}:{p}@"),
        (None, _) => format!("{user}@"),
    };
    let host = *rng.pick(&["host", "127.0.0.1", "[::1]", "[::1", "[]", "", "h.example.com", "ec2-1-2-3-4.compute-1.amazonaws.com"]);
    let port = *rng.pick(&["", ":5432", ":", ":0", ":65535", ":65536", ":99999", ":abc", ":-1", ":5432:5432"]);
    let path = match rng.below(4) {
        0 => String::new(),
        1 => "/".into(),
        2 => "/d1234abcd".into(),
        _ => format!("/{}", rng.text()),
    };
    let mut query = String::new();
    for i in 0..rng.below(4) {
        query.push(if i == 0 { '?' } else { '&' });
        let key = *rng.pick(&["sslmode", "sslrootcert", "user", "password", "dbname", "host", "port", "application_name", "", "="]);
        let value = match key {
            "sslmode" => rng.pick(&["require", "disable", "verify-full", "sometimes", ""]).to_string(),
            "port" => rng.pick(&["5432", "0", "70000", "x", ""]).to_string(),
            "password" => SECRET.to_string(),
            _ => rng.text(),
        };
        query.push_str(&format!("{key}={value}"));
        if rng.one_in(5) {
            query.push_str("&&=&a=b=c");
        }
    }
    if rng.one_in(10) {
        return String::from_utf8_lossy(&[scheme.as_bytes(), &rng.bytes(20)].concat()).into_owned();
    }
    format!("{scheme}{userinfo}{host}{port}{path}{query}")
}

/// A random config object: known keys (and aliases, other taps' keys, junk) with random values;
/// `database_url` and `password` are usually shaped like the real thing.
fn random_config(rng: &mut Rng) -> Map<String, Value> {
    let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    keys.extend(["database", "ssl_mode", "sqlalchemy_url", "debug_lsn", "tap_id", "use_secondary", "limit", "junk", "", "HOST"]);
    let mut map = Map::new();
    if !rng.one_in(4) {
        map.insert("host".into(), json!("localhost"));
        map.insert("user".into(), json!("reader"));
        map.insert("dbname".into(), json!("app"));
    }
    for _ in 0..rng.below(8) {
        let key = *rng.pick(&keys);
        let value = match key {
            "database_url" | "sqlalchemy_url" if !rng.one_in(4) => Value::String(random_url(rng)),
            "password" if !rng.one_in(4) => Value::String(SECRET.into()),
            "port" | "itersize" | "connect_timeout" | "max_run_seconds" if rng.one_in(2) => random_number(rng),
            _ => random_value(rng, 2, &["a", "b"]),
        };
        map.insert(key.to_string(), value);
    }
    map
}

#[test]
fn config_from_map_never_panics_nor_prints_the_password() {
    let target = "config";
    let seed = seed(target);
    let mut rng = Rng::new(seed);
    for i in 0..iterations(20_000) {
        let map = random_config(&mut rng);
        let env_url = if rng.one_in(3) { Some(random_url(&mut rng)) } else { None };
        let input = || format!("{} with DATABASE_URL {env_url:?}", Value::Object(map.clone()));
        run_case(target, seed, i, &input, || match Config::from_map(&map, env_url.as_deref()) {
            Ok(config) => {
                assert!(config.port > 0, "port 0 accepted");
                assert!(config.itersize >= 1, "itersize 0 accepted");
                assert!(!config.host.is_empty() && !config.user.is_empty() && !config.dbname.is_empty(), "a required key is empty");
                assert!(!format!("{config:?}").contains(SECRET), "Debug of Config shows the password");
                assert!(!config.endpoint().contains(SECRET), "the endpoint shows the password");
            }
            Err(e) => {
                let text = format!("{} {}", e.chain(), e.hint().unwrap_or(""));
                assert!(!text.contains(SECRET), "the error shows the password: {text}");
                assert!(!format!("{e:?}").contains(SECRET), "Debug of the error shows the password");
            }
        });
    }
}

// ---- catalog ---------------------------------------------------------------------------------

/// Keys a mutation adds to catalog objects.
const CATALOG_KEYS: &[&str] = &[
    "streams",
    "tap_stream_id",
    "table_name",
    "stream",
    "metadata",
    "schema",
    "breadcrumb",
    "selected",
    "replication-method",
    "replication-key",
    "schema-name",
    "database-name",
    "table-key-properties",
    "view-key-properties",
    "is-view",
    "inclusion",
    "selected-by-default",
    "sql-datatype",
    "properties",
    "type",
    "row-count",
];

/// A small valid catalog: an INCREMENTAL table, a FULL_TABLE view, an unselected table.
fn base_catalog() -> Value {
    let column =
        |inclusion: &str, ty: &str| json!({"inclusion": inclusion, "selected-by-default": inclusion != "unsupported", "sql-datatype": ty});
    json!({"streams": [
        {"tap_stream_id": "app-public-users", "table_name": "users", "stream": "users",
         "schema": {"type": "object", "properties": {"id": {"type": ["integer"]}, "name": {"type": ["null", "string"]}, "updated_at": {"type": ["null", "string"]}}},
         "metadata": [
            {"breadcrumb": [], "metadata": {"selected": true, "replication-method": "INCREMENTAL", "replication-key": "updated_at",
                                            "schema-name": "public", "database-name": "app", "table-key-properties": ["id"], "is-view": false}},
            {"breadcrumb": ["properties", "id"], "metadata": column("automatic", "integer")},
            {"breadcrumb": ["properties", "name"], "metadata": column("available", "text")},
            {"breadcrumb": ["properties", "updated_at"], "metadata": column("available", "timestamp with time zone")},
            {"breadcrumb": ["properties", "blob"], "metadata": column("unsupported", "pair")}]},
        {"tap_stream_id": "app-public-v", "table_name": "v", "stream": "v", "schema": {"type": "object", "properties": {}},
         "metadata": [
            {"breadcrumb": [], "metadata": {"selected": "true", "replication-method": "FULL_TABLE", "schema-name": "public",
                                            "is-view": true, "view-key-properties": ["k"]}},
            {"breadcrumb": ["properties", "k"], "metadata": column("available", "bigint")},
            {"breadcrumb": ["properties", "x"], "metadata": {"selected": false}}]},
        {"tap_stream_id": "app-other-users", "table_name": "users", "stream": "users",
         "metadata": [{"breadcrumb": [], "metadata": {"schema-name": "other", "table-key-properties": []}}]}
    ]})
}

#[test]
fn catalog_parse_and_select_streams_never_panic() {
    let target = "catalog";
    let seed = seed(target);
    let mut rng = Rng::new(seed);
    let fixture: Value = serde_json::from_str(include_str!("../catalogs/fixture.json")).expect("catalogs/fixture.json is JSON");
    let configs: Vec<Config> = [(None, false), (Some("FULL_TABLE"), false), (Some("INCREMENTAL"), true), (Some("LOG_BASED"), false)]
        .iter()
        .map(|(method, include)| {
            let mut map = json!({"host": "h", "user": "u", "dbname": "app", "include_schemas_in_destination_stream_name": include});
            if let Some(m) = method {
                map["default_replication_method"] = json!(m);
            }
            Config::from_map(map.as_object().unwrap(), None).expect("a valid config")
        })
        .collect();
    for i in 0..iterations(20_000) {
        let mut value = if rng.one_in(100) { fixture.clone() } else { base_catalog() };
        if rng.one_in(50) {
            value = random_value(&mut rng, 4, CATALOG_KEYS);
        }
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut value, CATALOG_KEYS);
        }
        let mut text = value.to_string();
        if rng.one_in(8) {
            text = mutate_text(&mut rng, &text);
        }
        let config = rng.pick(&configs);
        let current = rng.pick(&[None, Some("app-public-v"), Some("app-public-users"), Some("nope")]).map(str::to_string);
        let input = || text.clone();
        run_case(target, seed, i, &input, || {
            let Ok(catalog) = Catalog::parse(&text) else { return };
            let _ = catalog.to_json();
            let Ok(streams) = select_streams(&catalog, config, current.as_deref()) else { return };
            let mut names = std::collections::HashSet::new();
            for s in &streams {
                assert!(names.insert(s.stream.clone()), "two selected streams share the destination {}", s.stream);
                if let Some(key) = &s.replication_key {
                    assert!(s.columns.contains(key), "replication key {key} is not emitted");
                }
                for k in &s.key_properties {
                    assert!(s.columns.contains(k), "key property {k} is not emitted");
                }
            }
            if let Some(first) = streams.first()
                && let Some(current) = &current
                && streams.iter().any(|s| &s.tap_stream_id == current)
            {
                assert_eq!(&first.tap_stream_id, current, "currently_syncing goes first");
            }
        });
    }
}

#[test]
fn duplicate_column_breadcrumbs_select_the_column_once() {
    let mut catalog = base_catalog();
    let entry = catalog["streams"][0]["metadata"][2].clone();
    catalog["streams"][0]["metadata"].as_array_mut().unwrap().push(entry);
    let config = Config::from_map(json!({"host": "h", "user": "u", "dbname": "app"}).as_object().unwrap(), None).unwrap();
    let streams = select_streams(&Catalog::parse(&catalog.to_string()).unwrap(), &config, None).unwrap();
    // Today: ["id", "name", "updated_at", "name"].
    assert_eq!(streams[0].columns, ["id", "name", "updated_at"]);
}

// ---- state -----------------------------------------------------------------------------------

/// Keys a mutation adds to state objects.
const STATE_KEYS: &[&str] = &[
    "bookmarks",
    "currently_syncing",
    "type",
    "value",
    "version",
    "last_replication_method",
    "replication_key",
    "replication_key_value",
    "last_pk_fetched",
    "xmin",
    "app-public-users",
];

/// A valid state in tap-postgres's shape, with our FULL_TABLE resume point.
fn base_state() -> Value {
    json!({"currently_syncing": "app-public-users", "bookmarks": {
        "app-public-users": {"last_replication_method": "FULL_TABLE", "version": 1_717_243_200_123_i64, "last_pk_fetched": {"id": 1042}, "xmin": null},
        "app-public-orders": {"last_replication_method": "INCREMENTAL", "replication_key": "updated_at", "version": 1,
                              "replication_key_value": "2024-06-01T11:59:58.123456+00:00"},
        "public-legacy": {"replication_key_value": 5}}})
}

#[test]
fn state_parse_never_panics_and_round_trips() {
    let target = "state";
    let seed = seed(target);
    let mut rng = Rng::new(seed);
    for i in 0..iterations(20_000) {
        let text = match rng.below(10) {
            0 => rng.lossy(),
            1 => mutate_text(&mut rng, &base_state().to_string()),
            2 => json!({"type": "STATE", "value": base_state()}).to_string(),
            _ => {
                let mut value = base_state();
                for _ in 0..=rng.below(4) {
                    mutate(&mut rng, &mut value, STATE_KEYS);
                }
                value.to_string()
            }
        };
        let id = rng.pick(&["app-public-users", "app-public-orders", "app-public-legacy", "x"]).to_string();
        let input = || text.clone();
        run_case(target, seed, i, &input, || {
            let Ok(mut state) = State::parse(&text) else { return };
            let value = state.to_value();
            // `{"bookmarks": null}` is kept as it is (until a bookmark is set).
            assert!(value["bookmarks"].is_object() || value["bookmarks"].is_null(), "bookmarks is not an object: {value}");
            // What we write, we read back as the same state (a document that is itself a
            // STATE message wrapped twice would be unwrapped again; nobody writes that).
            if value.get("type").and_then(Value::as_str) != Some("STATE") {
                let again = State::parse(&value.to_string()).unwrap_or_else(|e| panic!("our own state does not parse: {e}: {value}"));
                assert_eq!(again.to_value(), value, "the state changes when read back");
            }
            let _ = state.currently_syncing();
            let alias = id.split_once('-').map_or("", |(_, rest)| rest).to_string();
            let bookmark = state.take_bookmark(&id, &alias);
            state.set_bookmark(&id, &bookmark);
            state.set_currently_syncing(Some(&id));
            let _ = State::parse(&state.to_value().to_string()).expect("an updated state parses");
        });
    }
}

// ---- value encoding --------------------------------------------------------------------------

/// Every encoder, arrays of each, and nested arrays.
fn all_encoders() -> Vec<Encoder> {
    let scalars = crate::typemap::SCALAR_ENCODERS.to_vec();
    let mut all = scalars.clone();
    all.extend(scalars.iter().map(|e| Encoder::Array(Box::new(e.clone()))));
    for inner in [
        Encoder::Int4,
        Encoder::Text,
        Encoder::Numeric,
        Encoder::Timestamp(OutOfRangeDates::Clamp),
        Encoder::Timestamp(OutOfRangeDates::Expanded),
        Encoder::Hstore,
    ] {
        all.push(Encoder::Array(Box::new(Encoder::Array(Box::new(inner.clone())))));
        all.push(Encoder::Array(Box::new(Encoder::Array(Box::new(Encoder::Array(Box::new(inner)))))));
    }
    all
}

/// Text for text-like wire values: UTF-8 with metacharacters and control characters.
fn wire_text(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(8) {
        let n = rng.len();
        return rng.bytes(n); // often invalid UTF-8
    }
    rng.text().into_bytes()
}

/// A 4-byte big-endian length field followed by `data`.
fn field(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            out.extend_from_slice(&(d.len() as i32).to_be_bytes());
            out.extend_from_slice(d);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// A well-formed wire value (binary format) for `encoder`, with values near the edges.
fn valid_wire(rng: &mut Rng, encoder: &Encoder, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    match encoder {
        Encoder::Bool => out.push(*rng.pick(&[0u8, 1, 2, 255])),
        Encoder::Int2 => out = rng.bytes(2),
        Encoder::Int4 | Encoder::Oid | Encoder::Float4 => out = rng.bytes(4),
        Encoder::Int8 | Encoder::Float8 => out = rng.bytes(8),
        Encoder::Numeric => {
            let ndigits = rng.below(8) as u16;
            let weight: i16 = match rng.below(20) {
                0 => i16::MAX,
                1 => i16::MIN,
                2 => rng.next() as i16,
                _ => rng.below(12) as i16 - 6,
            };
            let sign = *rng.pick(&[0x0000u16, 0x4000, 0xC000, 0xD000, 0xF000, 0x0000, 0x4000]);
            let dscale: u16 = match rng.below(10) {
                0 => 0x3FFF,
                1 => rng.next() as u16,
                _ => rng.below(24) as u16,
            };
            for v in [ndigits, weight as u16, sign, dscale] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            for _ in 0..ndigits {
                let d = if rng.one_in(6) { *rng.pick(&[0u16, 9999]) } else { rng.below(10_000) as u16 };
                out.extend_from_slice(&d.to_be_bytes());
            }
        }
        Encoder::Text | Encoder::Json => out = wire_text(rng),
        Encoder::Jsonb => {
            out.push(1);
            out.extend(wire_text(rng));
        }
        Encoder::JsonDocument | Encoder::JsonbDocument => {
            if *encoder == Encoder::JsonbDocument {
                out.push(1);
            }
            let doc = *rng.pick(&["{\"a\": [1, 2.50, null]}", "[1,\n2]", "\"x\"", "12345678901234567890.5", "null", "{}", "true"]);
            out.extend_from_slice(doc.as_bytes());
        }
        Encoder::Bytea => {
            let n = rng.len();
            out = rng.bytes(n);
        }
        Encoder::Uuid => out = rng.bytes(16),
        Encoder::Date(_) => {
            let days: i32 = match rng.below(6) {
                0 => *rng.pick(&[i32::MAX, i32::MIN, -2_451_545, 2_147_483_494, -2_451_546]),
                1 => rng.next() as i32,
                _ => rng.below(40_000) as i32 - 20_000,
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        Encoder::Time => out.extend_from_slice(&(rng.next() % 86_400_000_001).to_be_bytes()),
        Encoder::TimeTz => {
            out.extend_from_slice(&(rng.next() % 86_400_000_001).to_be_bytes());
            out.extend_from_slice(&((rng.below(115_199) as i32) - 57_599).to_be_bytes());
        }
        Encoder::Timestamp(_) | Encoder::TimestampTz(_) => {
            let micros: i64 = match rng.below(6) {
                0 => *rng.pick(&[i64::MAX, i64::MIN, -211_813_488_000_000_000, 9_223_371_331_200_000_000]),
                1 => rng.next() as i64,
                _ => (rng.next() % 2_000_000_000_000_000) as i64 - 1_000_000_000_000_000,
            };
            out.extend_from_slice(&micros.to_be_bytes());
        }
        Encoder::Interval => {
            out = rng.bytes(16);
            if rng.one_in(8) {
                out = [i64::MAX.to_be_bytes().to_vec(), i32::MAX.to_be_bytes().to_vec(), i32::MAX.to_be_bytes().to_vec()].concat();
            }
        }
        Encoder::BitBool => out.extend_from_slice(&[0, 0, 0, 1, *rng.pick(&[0x00u8, 0x80, 0xff])]),
        Encoder::BitString => {
            let nbits = rng.below(40);
            out.extend_from_slice(&(nbits as i32).to_be_bytes());
            out.extend(rng.bytes(nbits.div_ceil(8)));
        }
        Encoder::Hstore => {
            let n = rng.below(4);
            out.extend_from_slice(&(n as i32).to_be_bytes());
            for _ in 0..n {
                field(&mut out, Some(&wire_text(rng)));
                let value = if rng.one_in(3) { None } else { Some(wire_text(rng)) };
                field(&mut out, value.as_deref());
            }
        }
        Encoder::Inet => {
            let v6 = rng.one_in(2);
            let (family, max, size) = if v6 { (3u8, 128u8, 16u8) } else { (2, 32, 4) };
            let bits = if rng.one_in(2) { max } else { rng.below(usize::from(max) + 1) as u8 };
            out.extend_from_slice(&[family, bits, rng.below(2) as u8, size]);
            let mut addr = rng.bytes(usize::from(size));
            if v6 && rng.one_in(2) {
                // Long zero runs, the ::ffff: and ::a.b.c.d forms.
                let zeros = rng.below(9);
                for b in addr.iter_mut().take(zeros * 2) {
                    *b = 0;
                }
                if zeros == 5 {
                    addr[10] = 0xff;
                    addr[11] = 0xff;
                }
            }
            out.extend(addr);
        }
        Encoder::Array(inner) => {
            let ndim = if depth > 2 { 1 } else { rng.below(4) };
            let dims: Vec<usize> = (0..ndim).map(|_| rng.below(4)).collect();
            let nitems: usize = if ndim == 0 { 0 } else { dims.iter().product() };
            out.extend_from_slice(&(ndim as i32).to_be_bytes());
            out.extend_from_slice(&(rng.below(2) as i32).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 23]);
            for d in &dims {
                out.extend_from_slice(&(*d as i32).to_be_bytes());
                out.extend_from_slice(&(rng.below(5) as i32 - 2).to_be_bytes());
            }
            for _ in 0..nitems {
                let element = if rng.one_in(5) { None } else { Some(valid_wire(rng, inner, depth + 1)) };
                field(&mut out, element.as_deref());
            }
        }
    }
    out
}

/// Damages a wire value: flip bits, cut it, extend it, or overwrite 4 bytes with an edge value.
fn damage(rng: &mut Rng, raw: &mut Vec<u8>) {
    match rng.below(5) {
        0 if !raw.is_empty() => {
            let at = rng.below(raw.len());
            raw[at] ^= 1 << rng.below(8);
        }
        1 if !raw.is_empty() => {
            let at = rng.below(raw.len());
            raw.truncate(at);
        }
        2 => {
            let n = rng.below(9);
            raw.extend(rng.bytes(n));
        }
        3 if raw.len() >= 4 => {
            let at = rng.below(raw.len() - 3);
            let edge = *rng.pick(&[-1i32, 0, 1, 2, 6, 7, i32::MAX, i32::MIN, 0x7fff, 0x8000, 0xffff, 0x4000_0000]);
            raw[at..at + 4].copy_from_slice(&edge.to_be_bytes());
        }
        _ => {}
    }
}

/// True when `value` is what `encoder` may write (null only inside arrays).
fn has_kind(encoder: &Encoder, value: &Value) -> bool {
    let special = |v: &Value| matches!(v.as_str(), Some("NaN" | "Infinity" | "-Infinity"));
    match encoder {
        Encoder::Bool | Encoder::BitBool => value.is_boolean(),
        Encoder::Int2 | Encoder::Int4 | Encoder::Int8 | Encoder::Oid => value.is_i64() || value.is_u64(),
        Encoder::Float4 | Encoder::Float8 | Encoder::Numeric => value.is_number() || special(value),
        Encoder::Hstore => value.as_object().is_some_and(|m| m.values().all(|v| v.is_null() || v.is_string())),
        Encoder::Array(inner) => value.as_array().is_some_and(|items| items.iter().all(|v| v.is_null() || has_kind_or_nested(inner, v))),
        // A document may be any JSON value, `null` included.
        Encoder::JsonDocument | Encoder::JsonbDocument => true,
        _ => value.is_string(),
    }
}

/// Array elements: the inner kind, or a nested list of them (a further dimension).
fn has_kind_or_nested(inner: &Encoder, value: &Value) -> bool {
    has_kind(inner, value) || value.as_array().is_some_and(|items| items.iter().all(|v| v.is_null() || has_kind_or_nested(inner, v)))
}

/// Contains an array level (an encoder whose output may be large for a small input).
fn is_array(encoder: &Encoder) -> bool {
    matches!(encoder, Encoder::Array(_))
}

#[test]
fn encode_value_never_panics_and_its_ok_output_is_one_json_value() {
    let target = "encode";
    let seed = seed(target);
    let mut rng = Rng::new(seed);
    let encoders = all_encoders();
    const PREFIX: &[u8] = b"{\"k\":";
    for i in 0..iterations(50_000) {
        let encoder = rng.pick(&encoders).clone();
        let raw = match rng.below(3) {
            0 => {
                let n = rng.len();
                rng.bytes(n)
            }
            1 => valid_wire(&mut rng, &encoder, 0),
            _ => {
                let mut raw = valid_wire(&mut rng, &encoder, 0);
                for _ in 0..=rng.below(2) {
                    damage(&mut rng, &mut raw);
                }
                raw
            }
        };
        let input = || format!("{encoder:?} on {} bytes: {}", raw.len(), raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        run_case(target, seed, i, &input, || {
            let mut out = PREFIX.to_vec();
            let mut notes = 0u8;
            let result = encode_value(&encoder, &raw, &mut out, &mut notes);
            assert!(out.starts_with(PREFIX), "the encoder changed bytes it did not write");
            if result.is_err() {
                return;
            }
            let written = &out[PREFIX.len()..];
            let value: Value = serde_json::from_slice(written)
                .unwrap_or_else(|e| panic!("Ok output is not one JSON value ({e}): {}", String::from_utf8_lossy(written)));
            assert!(has_kind(&encoder, &value), "wrong JSON kind for {encoder:?}: {}", String::from_utf8_lossy(written));
            if !is_array(&encoder) {
                // One numeric can print 131072 + 16383 digits from 8 header bytes; nothing else grows
                // by more than \u00XX escaping (6x) or hex (2x).
                assert!(written.len() <= 150_000 + 6 * raw.len(), "{} bytes of output for {} of input", written.len(), raw.len());
            }
            let mut again = Vec::new();
            let mut notes_again = 0u8;
            encode_value(&encoder, &raw, &mut again, &mut notes_again).expect("the same input encodes again");
            assert_eq!(again, written, "encoding is not deterministic");
            assert_eq!(notes, notes_again);
        });
    }
}

#[test]
fn the_generators_reach_the_success_paths() {
    // Guards the fuzz targets against testing only their error paths: valid wire values must be
    // accepted, so the JSON checks above really run on every encoder.
    let mut rng = Rng::new(seed("coverage"));
    for encoder in all_encoders() {
        let accepted = (0..200)
            .filter(|_| {
                let raw = valid_wire(&mut rng, &encoder, 0);
                encode_value(&encoder, &raw, &mut Vec::new(), &mut 0).is_ok()
            })
            .count();
        assert!(accepted >= 100, "{encoder:?}: only {accepted} of 200 valid values were accepted");
    }
    let mut configs = 0;
    let mut catalogs = 0;
    for _ in 0..500 {
        configs += usize::from(Config::from_map(&random_config(&mut rng), None).is_ok());
        let mut c = base_catalog();
        mutate(&mut rng, &mut c, CATALOG_KEYS);
        catalogs += usize::from(Catalog::parse(&c.to_string()).is_ok());
    }
    assert!(configs >= 50, "only {configs} of 500 random configs were valid");
    assert!(catalogs >= 100, "only {catalogs} of 500 mutated catalogs parsed");
}
