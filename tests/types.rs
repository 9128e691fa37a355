//! Values, exact, for every type: each value of each supported column type comes out of a real
//! FULL_TABLE sync exactly as the database holds it, in the form its `Encoder` documents
//! (`src/typemap.rs`), and independently of the server's and the role's session settings.
//!
//! The tests are table-driven in the style of rust-postgres's `test_type`: a list of
//! `(SQL literal, expected JSON text)` cases per column type. [`assert_encodes_all`] gives every
//! type its own table `t<i> (id serial primary key, v <type>)` in one fresh database, inserts
//! the cases in order (plus a trailing NULL, so every type is checked with NULL), runs
//! `--discover` and one sync of all tables, and compares each record's `v`, in id order:
//!
//! - its raw bytes on stdout, byte for byte (so escapes, digits and UTF-8 are checked as
//!   written, not as re-serialized), and
//! - the parsed `serde_json::Value` (arbitrary precision, so digits are kept) with the parsed
//!   expectation.
//!
//! Where PostgreSQL's own text output is the documented form (numeric digits, intervals under
//! `IntervalStyle = iso_8601`, jsonb, and the types read as `::text`), the server is also used as
//! an oracle: `select v::text` under the tap's session settings (TimeZone UTC, DateStyle ISO,
//! IntervalStyle iso_8601, extra_float_digits 3). inet and cidr print as their output function
//! does, which `v::text` (`text(inet)`, always with the netmask) does not: their oracle is
//! `concat(v)`, and `array_to_json(v)` for arrays of them.
//!
//! The test server itself runs with TimeZone America/New_York, DateStyle 'SQL, DMY' and
//! IntervalStyle postgres_verbose, so literals here that need a zone carry an explicit offset.
//! Each test uses its own [`TestDb`] and may run in parallel with every other test.

use serde_json::{Value, json};

use crate::support::{self, TapOutput, TestDb};

/// The cases of one column type: `(SQL literal as inserted, expected JSON text of the value)`.
type Cases<'a> = &'a [(&'a str, &'a str)];

/// The session settings tap-heroku pins (src/connect.rs), for server-side oracles.
const TAP_SESSION_SETTINGS: &str =
    "set timezone = 'UTC'; set datestyle = 'ISO, MDY'; set intervalstyle = 'iso_8601'; set extra_float_digits = 3";

/// A database whose tables `t0..tn` (one per column type) were synced once.
struct Synced {
    /// The database; kept alive for oracle queries.
    db: TestDb,
    /// Column type of table `t<i>`.
    types: Vec<String>,
    /// What the sync printed.
    out: TapOutput,
}

/// Table name of the `i`th column type.
fn table(i: usize) -> String {
    format!("t{i}")
}

/// The raw JSON text of every column of each RECORD of `stream`, in output order, as
/// `(parsed record, raw record body)`; the body is the text between `"record":{` and
/// `},"version":` exactly as tap-heroku wrote it.
fn raw_records(out: &TapOutput, stream: &str) -> Vec<(Value, String)> {
    let mut records = Vec::new();
    for line in out.stdout.lines() {
        let message: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        if message["type"] != "RECORD" || message["stream"] != stream {
            continue;
        }
        let start = line.find(",\"record\":{").unwrap_or_else(|| panic!("no record in RECORD line: {line}")) + ",\"record\":{".len();
        let end = line.rfind("},\"version\":").unwrap_or_else(|| panic!("no version after the record: {line}"));
        records.push((message["record"].clone(), line[start..end].to_string()));
    }
    records
}

/// Discovers `db`, selects every stream FULL_TABLE, syncs, and checks that it succeeded and
/// that every record matches its SCHEMA.
fn sync_everything(db: &TestDb) -> TapOutput {
    sync_everything_with(db, json!({}))
}

/// [`sync_everything`] with `extra` config keys.
fn sync_everything_with(db: &TestDb, extra: Value) -> TapOutput {
    let config = db.config_file(extra);
    let mut catalog = support::discover(&config);
    let tables: Vec<String> =
        catalog["streams"].as_array().unwrap().iter().map(|s| s["table_name"].as_str().unwrap().to_string()).collect();
    for t in &tables {
        support::select(&mut catalog, t, "FULL_TABLE", None);
    }
    let out = support::sync(&config, &catalog, None).success();
    support::assert_records_match_schemas(&out.messages());
    out
}

/// In a fresh database: runs `setup` (extensions, enums, domains), creates one table per type,
/// inserts each type's cases in order followed by a NULL, syncs once, and asserts that every
/// record's `v` is exactly the expected JSON text (NULL -> `null`). Panics listing every
/// mismatch. Returns the synced database for further (oracle) checks.
fn assert_encodes_all(setup: &str, types: &[(&str, Cases<'_>)]) -> Synced {
    assert_encodes_all_with(json!({}), setup, types)
}

/// [`assert_encodes_all`] with `extra` config keys.
fn assert_encodes_all_with(extra: Value, setup: &str, types: &[(&str, Cases<'_>)]) -> Synced {
    let db = TestDb::new();
    let mut sql = String::from(setup);
    for (i, (sql_type, cases)) in types.iter().enumerate() {
        let t = table(i);
        sql.push_str(&format!(";\ncreate table {t} (id serial primary key, v {sql_type})"));
        for (literal, _) in cases.iter() {
            sql.push_str(&format!(";\ninsert into {t} (v) values ({literal})"));
        }
        sql.push_str(&format!(";\ninsert into {t} (v) values (null)"));
    }
    db.admin().batch_execute(&sql).unwrap_or_else(|e| {
        let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
        panic!("fixture SQL failed: {detail}\n{sql}")
    });
    db.grant_reader();
    let out = sync_everything_with(&db, extra);

    let mut mismatches = Vec::new();
    for (i, (sql_type, cases)) in types.iter().enumerate() {
        let records = raw_records(&out, &table(i));
        let expected: Vec<(&str, &str)> = cases.iter().copied().chain([("null", "null")]).collect();
        if records.len() != expected.len() {
            mismatches.push(format!("{sql_type}: {} records for {} rows", records.len(), expected.len()));
            continue;
        }
        for (row, ((record, body), (literal, want))) in records.iter().zip(&expected).enumerate() {
            let id = row + 1;
            let prefix = format!("\"id\":{id},\"v\":");
            let Some(raw) = body.strip_prefix(&prefix) else {
                mismatches.push(format!("{sql_type} {literal}: record body does not start with {prefix}: {body}"));
                continue;
            };
            if raw != *want {
                mismatches.push(format!("{sql_type} {literal}:\n    expected {want}\n    got      {raw}"));
                continue;
            }
            let want_value: Value = serde_json::from_str(want).unwrap_or_else(|e| panic!("expectation {want} is not JSON: {e}"));
            if record["v"] != want_value || record["id"] != json!(id) {
                mismatches.push(format!("{sql_type} {literal}: parsed record {record} does not hold {want_value}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n  {}", mismatches.len(), mismatches.join("\n  "));
    Synced { db, types: types.iter().map(|(t, _)| t.to_string()).collect(), out }
}

/// [`assert_encodes_all`] for one column type in its own database.
fn assert_encodes(sql_type: &str, cases: Cases<'_>) -> Synced {
    assert_encodes_all("", &[(sql_type, cases)])
}

impl Synced {
    /// The index of `sql_type` among the synced types.
    fn index(&self, sql_type: &str) -> usize {
        self.types.iter().position(|t| t == sql_type).unwrap_or_else(|| panic!("{sql_type} was not synced"))
    }

    /// `select <expr> from t<i> order by id` (a text expression of `v`) under tap-heroku's
    /// session settings, as the superuser.
    fn server_text(&self, sql_type: &str, expr: &str) -> Vec<Option<String>> {
        let mut admin = self.db.admin();
        admin.batch_execute(TAP_SESSION_SETTINGS).expect("session settings");
        admin
            .query(&format!("select ({expr})::text from {} order by id", table(self.index(sql_type))), &[])
            .expect("oracle query")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Asserts that the raw `v` of every record of `sql_type` equals `to_json(v::text)` as the
    /// server prints it under tap-heroku's session settings (`null` for NULL).
    fn assert_server_oracle(&self, sql_type: &str, to_json: fn(&str) -> String) {
        self.assert_server_oracle_of(sql_type, "v::text", to_json);
    }

    /// [`Synced::assert_server_oracle`] with the server's text taken from `expr` instead of
    /// `v::text` (a NULL `expr` must mean `null`).
    fn assert_server_oracle_of(&self, sql_type: &str, expr: &str, to_json: fn(&str) -> String) {
        let texts = self.server_text(sql_type, expr);
        let records = raw_records(&self.out, &table(self.index(sql_type)));
        assert_eq!(records.len(), texts.len(), "{sql_type}: one record per row");
        let mut mismatches = Vec::new();
        for (row, ((_, body), text)) in records.iter().zip(&texts).enumerate() {
            let raw = body.strip_prefix(&format!("\"id\":{},\"v\":", row + 1)).unwrap_or(body);
            let want = text.as_deref().map_or_else(|| "null".to_string(), to_json);
            if raw != want {
                mismatches.push(format!("{sql_type} row {}: server ({expr}) says {want}, tap wrote {raw}", row + 1));
            }
        }
        assert!(mismatches.is_empty(), "tap output differs from the server's text:\n  {}", mismatches.join("\n  "));
    }
}

/// The server text as a JSON string (for types whose documented form is their text).
fn json_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// The server text of a numeric as a JSON number, or its special values as JSON strings.
fn json_numeric(text: &str) -> String {
    match text {
        "NaN" | "Infinity" | "-Infinity" => json_string(text),
        _ => text.to_string(),
    }
}

/// smallint, integer, bigint at their bounds and oid up to 2^32-1: JSON integers.
#[test]
fn integers_at_their_bounds() {
    assert_encodes_all(
        "",
        &[
            ("smallint", &[("-32768", "-32768"), ("32767", "32767"), ("0", "0"), ("-1", "-1")]),
            ("integer", &[("-2147483648", "-2147483648"), ("2147483647", "2147483647"), ("0", "0"), ("42", "42")]),
            (
                "bigint",
                &[
                    ("-9223372036854775808", "-9223372036854775808"),
                    ("9223372036854775807", "9223372036854775807"),
                    ("0", "0"),
                    ("-9007199254740993", "-9007199254740993"),
                ],
            ),
            ("oid", &[("0", "0"), ("4294967295", "4294967295"), ("2147483648", "2147483648"), ("'-1'::oid", "4294967295")]),
        ],
    );
}

/// numeric digit for digit as `numeric_out` prints it (the server is the oracle), at every
/// typmod, up to the extremes numeric accepts; NaN and the infinities as strings.
#[test]
fn numerics_keep_every_digit() {
    let big: String = "1234567890".repeat(100);
    let big_literal = format!("'{big}'");
    let negative_big = format!("-{}", "9".repeat(1000));
    let negative_big_literal = format!("'{negative_big}'");
    let one_e_100 = format!("1{}", "0".repeat(100));
    // The extremes numeric_in accepts: 16383 decimals, 131072 integer digits.
    let smallest = format!("0.{}1", "0".repeat(16382));
    let largest = format!("-1{}", "0".repeat(131071));
    let synced = assert_encodes_all(
        "create domain price as numeric(10,2)",
        &[
            (
                "numeric",
                &[
                    ("0", "0"),
                    ("'-0'", "0"),
                    ("'0.000'", "0.000"),
                    ("-0.001", "-0.001"),
                    ("'1e-50'::numeric", "0.00000000000000000000000000000000000000000000000001"),
                    ("'1e100'", &one_e_100),
                    ("'1.10'", "1.10"),
                    ("10000", "10000"),
                    ("'0.0001'", "0.0001"),
                    ("'-99999999.99999999'", "-99999999.99999999"),
                    ("'123456789012345678901234567890.123456789'", "123456789012345678901234567890.123456789"),
                    ("'1e-16383'::numeric", &smallest),
                    ("'-1e131071'::numeric", &largest),
                    ("'NaN'", "\"NaN\""),
                    ("'Infinity'", "\"Infinity\""),
                    ("'-Infinity'", "\"-Infinity\""),
                ],
            ),
            ("numeric(12,2)", &[("1234.5", "1234.50"), ("'-0.005'", "-0.01"), ("'9999999999.99'", "9999999999.99"), ("0", "0.00")]),
            ("numeric(1000,0)", &[(&big_literal, &big), (&negative_big_literal, &negative_big), ("'0.4'", "0")]),
            ("numeric(5,-2)", &[("12345", "12300"), ("'-49'", "0")]),
            ("numeric(3,5)", &[("'0.00123'", "0.00123"), ("'-0.000005'", "-0.00001")]),
            ("price", &[("'12.345'", "12.35"), ("'-0.5'", "-0.50"), ("'NaN'", "\"NaN\"")]),
        ],
    );
    for t in ["numeric", "numeric(12,2)", "numeric(1000,0)", "numeric(5,-2)", "numeric(3,5)", "price"] {
        synced.assert_server_oracle(t, json_numeric);
    }
}

/// The fixture schema (tests/fixtures/catalog_fixture.sql, every type family) with its edge
/// values (catalog_fixture_values.sql): every stream, every column, synced once by default and
/// once with `out_of_range_dates: expanded`; every RECORD matches its SCHEMA (types, bounds,
/// maxLength, RFC 3339 `date-time` with years 1..=9999). tests/e2e.sh (check e) checks the same
/// output with Python jsonschema (draft 4 and 7) and singer-check-tap.
#[test]
fn fixture_values_match_their_schemas() {
    let db = TestDb::new();
    db.exec(include_str!("fixtures/catalog_fixture.sql"));
    db.exec(include_str!("fixtures/catalog_fixture_values.sql"));
    db.grant_reader();
    for extra in [json!({}), json!({"out_of_range_dates": "expanded"})] {
        let out = sync_everything_with(&db, extra.clone());
        let records = out.messages().iter().filter(|m| m["type"] == "RECORD").count();
        // numbers 5, texts 3, times 8, misc 3, arrays 3, no_key 3, events 3 (+3 in its
        // partitions), texts_view 3, numbers_mv 5, "Weird \"Schema\"" tables 0.
        assert_eq!(records, 5 + 3 + 8 + 3 + 3 + 3 + 3 + 3 + 3 + 5, "{extra}:\n{}", out.stderr);
    }
}

/// numeric(p,s) with p > 28 and a scale: every digit, and a schema without `multipleOf` (whose
/// `value % 10^-s` needs more than the 28 digits of Python's decimal context and crashes
/// singer-python's validator); the bounds still spell out precision and scale. numeric(28,10)
/// and numeric(60,0) keep `multipleOf`.
#[test]
fn numerics_beyond_28_digits_have_bounds_but_no_multiple_of() {
    let max_60_30 = format!("{}.{}", "9".repeat(30), "9".repeat(30));
    let min_60_30 = format!("-{max_60_30}");
    let big = "123456789012345678901234567890.123456789012345678901234567890";
    let synced = assert_encodes_all(
        "",
        &[
            (
                "numeric(60,30)",
                &[
                    (&format!("'{big}'"), big),
                    ("'0.000000000000000000000000000001'", "0.000000000000000000000000000001"),
                    ("'1.5'", "1.500000000000000000000000000000"),
                    (&format!("'{min_60_30}'"), &min_60_30),
                    ("'NaN'", "\"NaN\""),
                ],
            ),
            ("numeric(28,10)", &[("'123456789012345678.0123456789'", "123456789012345678.0123456789")]),
            ("numeric(60,0)", &[(&format!("'{}'", "9".repeat(60)), &"9".repeat(60))]),
        ],
    );
    let messages = synced.out.messages();
    let schema =
        |i: usize| messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == table(i)).unwrap()["schema"]["properties"]["v"].clone();
    let numeric_60_30 = schema(0);
    assert_eq!(numeric_60_30.get("multipleOf"), None, "{numeric_60_30}");
    assert_eq!(numeric_60_30["maximum"].to_string(), max_60_30);
    assert_eq!(numeric_60_30["minimum"].to_string(), min_60_30);
    assert_eq!(schema(1)["multipleOf"].to_string(), "0.0000000001");
    assert_eq!(schema(2)["multipleOf"].to_string(), "1");
    synced.assert_server_oracle("numeric(60,30)", json_numeric);
}

/// real and double precision: shortest round-trip digits at their own precision, `-0.0`, and
/// NaN/Infinity/-Infinity as JSON strings.
#[test]
fn floats_round_trip_with_specials_as_strings() {
    assert_encodes_all(
        "",
        &[
            (
                "real",
                &[
                    ("1.1", "1.1"),
                    ("'0.1'", "0.1"),
                    ("'-0'", "-0.0"),
                    ("'3.4028235e38'", "3.4028235e38"),
                    ("'1e-45'", "1e-45"),
                    ("'16777217'", "16777216.0"),
                    ("'NaN'", "\"NaN\""),
                    ("'Infinity'", "\"Infinity\""),
                    ("'-Infinity'", "\"-Infinity\""),
                ],
            ),
            (
                "double precision",
                &[
                    ("1.1", "1.1"),
                    ("'1e300'", "1e300"),
                    ("'-1e-300'", "-1e-300"),
                    ("'-0'", "-0.0"),
                    ("'5e-324'", "5e-324"),
                    ("'1.7976931348623157e308'", "1.7976931348623157e308"),
                    ("'0.30000000000000004'", "0.30000000000000004"),
                    ("'123.456'", "123.456"),
                    ("'NaN'", "\"NaN\""),
                    ("'Infinity'", "\"Infinity\""),
                    ("'-Infinity'", "\"-Infinity\""),
                ],
            ),
        ],
    );
}

/// money as a plain JSON number (read as `::numeric`), never with lc_monetary's symbols.
#[test]
fn money_is_a_locale_free_number() {
    assert_encodes(
        "money",
        &[
            ("'1234.56'", "1234.56"),
            ("'-1234.56'", "-1234.56"),
            ("'1000.5'", "1000.50"),
            ("'0'", "0.00"),
            ("'0.01'", "0.01"),
            ("'92233720368547758.07'", "92233720368547758.07"),
            ("'-92233720368547758.08'", "-92233720368547758.08"),
        ],
    );
}

/// boolean and bit(1) as JSON booleans; other bit strings as strings of `0`/`1`.
#[test]
fn booleans_and_bit_strings() {
    let long_bits = "1011001110001111".repeat(7);
    let long_literal = format!("B'{long_bits}'");
    let long_json = format!("\"{long_bits}\"");
    assert_encodes_all(
        "",
        &[
            ("boolean", &[("true", "true"), ("false", "false"), ("'yes'", "true")]),
            ("bit(1)", &[("B'1'", "true"), ("B'0'", "false")]),
            ("bit(8)", &[("B'10101010'", "\"10101010\""), ("B'00000001'", "\"00000001\""), ("B'11111111'", "\"11111111\"")]),
            ("bit varying", &[("B''", "\"\""), ("B'1'", "\"1\""), ("B'101100111'", "\"101100111\""), (&long_literal, &long_json)]),
            ("bit varying(5)", &[("B'01'", "\"01\"")]),
        ],
    );
}

/// Every text-like type as a JSON string: padding kept, escapes exact, non-ASCII as UTF-8.
#[test]
fn text_types_are_exact_utf8_strings() {
    let long_name = "n".repeat(70);
    let long_name_literal = format!("'{long_name}'");
    let truncated_name = format!("\"{}\"", &long_name[..63]);
    let synced = assert_encodes_all(
        "create extension citext; \
         create type mood as enum ('happy', 'sad', 'so \"so\"', 'ünï 😀'); \
         create domain code as varchar(10) check (value <> 'bad')",
        &[
            ("char(5)", &[("'ab'", "\"ab   \""), ("'abcde'", "\"abcde\""), ("'é'", "\"é    \""), ("''", "\"     \"")]),
            ("varchar(20)", &[("'hello'", "\"hello\""), ("''", "\"\""), ("'ünïcødé ✓'", "\"ünïcødé ✓\"")]),
            (
                "text",
                &[
                    ("'say \"hi\"'", r#""say \"hi\"""#),
                    (r"E'back\\slash'", r#""back\\slash""#),
                    (r"E'tab\there'", r#""tab\there""#),
                    (r"E'line\nbreak\r\n'", r#""line\nbreak\r\n""#),
                    (r"E'\b\f'", r#""\b\f""#),
                    (r"E'\x01\x1f'", r#""\u0001\u001f""#),
                    (r"E'del\x7f'", "\"del\u{7f}\""),
                    ("'😀 héllo 日本語'", "\"😀 héllo 日本語\""),
                    (r"U&'\2028\2029'", "\"\u{2028}\u{2029}\""),
                    ("'</script>'", "\"</script>\""),
                    ("''", "\"\""),
                    ("'NULL'", "\"NULL\""),
                ],
            ),
            ("citext", &[("'MiXeD Case'", "\"MiXeD Case\""), ("'Ünï'", "\"Ünï\"")]),
            ("name", &[("'pg_class'", "\"pg_class\""), (&long_name_literal, &truncated_name)]),
            ("\"char\"", &[("'a'", "\"a\""), ("'xyz'", "\"x\""), ("'\"'", r#""\"""#)]),
            ("mood", &[("'happy'", "\"happy\""), ("'so \"so\"'", r#""so \"so\"""#), ("'ünï 😀'", "\"ünï 😀\"")]),
            ("code", &[("'abc'", "\"abc\""), ("'ñ'", "\"ñ\"")]),
        ],
    );
    // Non-ASCII is written as UTF-8, not as \u escapes.
    for needle in ["😀 héllo 日本語", "\u{2028}\u{2029}", "ünï 😀", "é    "] {
        assert!(synced.out.stdout.contains(needle), "{needle:?} is not written as UTF-8");
    }
    assert!(!synced.out.stdout.contains("\\ud83d"), "emoji written as surrogate escapes");
    // (char(5) has no oracle: the cast to text strips the padding the column holds.)
    for t in ["varchar(20)", "text", "citext", "name", "\"char\"", "mood", "code"] {
        synced.assert_server_oracle(t, json_string);
    }
}

/// `"char"` holds one byte; the empty string is stored as byte 0, which PostgreSQL prints as
/// the empty string.
#[test]
fn single_byte_char_empty_value() {
    let synced = assert_encodes("\"char\"", &[("''", r#""""#)]);
    synced.assert_server_oracle("\"char\"", json_string);
}

/// `"char"` keeps only the first byte of a non-ASCII character; PostgreSQL (15+) prints such a
/// byte as a backslash and three octal digits.
#[test]
fn single_byte_char_high_byte() {
    let synced = assert_encodes("\"char\"", &[("'é'", r#""\\303""#)]);
    synced.assert_server_oracle("\"char\"", json_string);
}

/// uuid lowercase; json's text byte for byte and jsonb's normalized text, both as JSON
/// strings; hstore as an object in hstore's own key order, NULL values as `null`.
#[test]
fn uuid_json_jsonb_and_hstore() {
    let synced = assert_encodes_all(
        "create extension hstore",
        &[
            (
                "uuid",
                &[
                    ("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""),
                    ("'{00000000-0000-0000-0000-000000000000}'", "\"00000000-0000-0000-0000-000000000000\""),
                    ("'ffffffffffffffffffffffffffffffff'", "\"ffffffff-ffff-ffff-ffff-ffffffffffff\""),
                ],
            ),
            (
                "json",
                &[
                    (r#"'{"a": [1, 2.50]}'"#, r#""{\"a\": [1, 2.50]}""#),
                    ("'  [1,2]  '", r#""  [1,2]  ""#),
                    (r#"'{"b":1,"a":2,"a":3}'"#, r#""{\"b\":1,\"a\":2,\"a\":3}""#),
                    (r#"'"é\u00e9"'"#, r#""\"é\\u00e9\"""#),
                    ("E'{\"x\":\\n1}'", r#""{\"x\":\n1}""#),
                    ("'null'", r#""null""#),
                    ("'1e2'", r#""1e2""#),
                ],
            ),
            (
                "jsonb",
                &[
                    (r#"'{"b": 1, "a": [1, 2.50], "aa": null}'"#, r#""{\"a\": [1, 2.50], \"b\": 1, \"aa\": null}""#),
                    ("'  [1,2]  '", r#""[1, 2]""#),
                    (r#"'"é\u00e9"'"#, r#""\"éé\"""#),
                    ("'null'", r#""null""#),
                    ("'1e2'", r#""100""#),
                    ("'[1.000000000000000000001, -0.0]'", r#""[1.000000000000000000001, 0.0]""#),
                    (r#"'{"k": "tab\tquote\"back\\slash"}'"#, r#""{\"k\": \"tab\\tquote\\\"back\\\\slash\"}""#),
                ],
            ),
            (
                "hstore",
                &[
                    (r#"'a=>1, "b c"=>NULL'"#, r#"{"a":"1","b c":null}"#),
                    ("''", "{}"),
                    ("'b=>2, a=>1, aa=>3'", r#"{"a":"1","b":"2","aa":"3"}"#),
                    (r#"'"k\"q"=>"v\\w"'"#, r#"{"k\"q":"v\\w"}"#),
                    ("'é=>😀, \"\"=>\"\"'", r#"{"":"","é":"😀"}"#),
                    ("'a=>1, a=>2'", r#"{"a":"1"}"#),
                ],
            ),
        ],
    );
    synced.assert_server_oracle("jsonb", json_string);
    synced.assert_server_oracle("json", json_string);
    synced.assert_server_oracle("uuid", json_string);
}

/// One column type's date-time cases: `(SQL literal, JSON text with clamp, JSON text when expanded)`.
type DateTimeCases<'a> = (&'a str, &'a [(&'a str, &'a str, &'a str)]);

/// Literals of date, timestamp and timestamptz values in and out of years 1..=9999, with what
/// each writes by default (out_of_range_dates: clamp) and with out_of_range_dates: expanded.
const DATE_TIME_CASES: &[DateTimeCases<'_>] = &[
    (
        "date",
        &[
            ("'2024-02-29'", "\"2024-02-29T00:00:00+00:00\"", "\"2024-02-29T00:00:00+00:00\""),
            ("'2000-01-01'", "\"2000-01-01T00:00:00+00:00\"", "\"2000-01-01T00:00:00+00:00\""),
            ("'1999-12-31'", "\"1999-12-31T00:00:00+00:00\"", "\"1999-12-31T00:00:00+00:00\""),
            ("'1970-01-01'", "\"1970-01-01T00:00:00+00:00\"", "\"1970-01-01T00:00:00+00:00\""),
            ("'1900-02-28'", "\"1900-02-28T00:00:00+00:00\"", "\"1900-02-28T00:00:00+00:00\""),
            ("'0001-01-01'", "\"0001-01-01T00:00:00+00:00\"", "\"0001-01-01T00:00:00+00:00\""),
            ("'9999-12-31'", "\"9999-12-31T00:00:00+00:00\"", "\"9999-12-31T00:00:00+00:00\""),
            ("'infinity'", "\"9999-12-31T00:00:00+00:00\"", "\"9999-12-31T00:00:00+00:00\""),
            ("'-infinity'", "\"0001-01-01T00:00:00+00:00\"", "\"0001-01-01T00:00:00+00:00\""),
            ("'0044-03-15 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-0043-03-15T00:00:00+00:00\""),
            ("'0001-12-31 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"+0000-12-31T00:00:00+00:00\""),
            ("'4713-01-01 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-4712-01-01T00:00:00+00:00\""),
            ("'4714-11-24 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-4713-11-24T00:00:00+00:00\""),
            ("'10000-01-01'", "\"9999-12-31T00:00:00+00:00\"", "\"+10000-01-01T00:00:00+00:00\""),
            ("'5874897-12-31'", "\"9999-12-31T00:00:00+00:00\"", "\"+5874897-12-31T00:00:00+00:00\""),
        ],
    ),
    (
        "timestamp",
        &[
            ("'2024-02-29 12:34:56.123456'", "\"2024-02-29T12:34:56.123456+00:00\"", "\"2024-02-29T12:34:56.123456+00:00\""),
            ("'9999-12-31 23:59:59.999999'", "\"9999-12-31T23:59:59.999999+00:00\"", "\"9999-12-31T23:59:59.999999+00:00\""),
            ("'0001-01-01 00:00:00'", "\"0001-01-01T00:00:00+00:00\"", "\"0001-01-01T00:00:00+00:00\""),
            ("'infinity'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"9999-12-31T23:59:59.999000+00:00\""),
            ("'-infinity'", "\"0001-01-01T00:00:00+00:00\"", "\"0001-01-01T00:00:00+00:00\""),
            ("'0044-03-15 12:00:00 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-0043-03-15T12:00:00+00:00\""),
            ("'0001-12-31 23:59:59.999999 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"+0000-12-31T23:59:59.999999+00:00\""),
            ("'4714-11-24 00:00:00 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-4713-11-24T00:00:00+00:00\""),
            ("'10000-01-01 00:00:00'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"+10000-01-01T00:00:00+00:00\""),
            ("'294276-12-31 23:59:59.999999'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"+294276-12-31T23:59:59.999999+00:00\""),
        ],
    ),
    (
        "timestamptz",
        &[
            ("'2024-06-01 12:00:00+02'", "\"2024-06-01T10:00:00+00:00\"", "\"2024-06-01T10:00:00+00:00\""),
            ("'infinity'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"9999-12-31T23:59:59.999000+00:00\""),
            ("'-infinity'", "\"0001-01-01T00:00:00+00:00\"", "\"0001-01-01T00:00:00+00:00\""),
            ("'0044-03-15 00:00:00+00 BC'", "\"0001-01-01T00:00:00+00:00\"", "\"-0043-03-15T00:00:00+00:00\""),
            // 0001-01-01 00:30 in +01 is still 1 BC in UTC; 9999-12-31 23:30 in -01 is year 10000.
            ("'0001-01-01 00:30:00+01'", "\"0001-01-01T00:00:00+00:00\"", "\"+0000-12-31T23:30:00+00:00\""),
            ("'9999-12-31 23:30:00-01'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"+10000-01-01T00:30:00+00:00\""),
            ("'10000-01-01 00:00:00+00'", "\"9999-12-31T23:59:59.999000+00:00\"", "\"+10000-01-01T00:00:00+00:00\""),
        ],
    ),
];

/// [`DATE_TIME_CASES`] as the cases of one config: `expanded` picks the third field.
fn date_time_cases(expanded: bool) -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    DATE_TIME_CASES
        .iter()
        .map(|(t, cases)| (*t, cases.iter().map(|&(literal, clamp, exact)| (literal, if expanded { exact } else { clamp })).collect()))
        .collect()
}

/// The lines of `stderr` that warn about out-of-range years in column `v` of table `t<i>`.
fn year_warnings(stderr: &str, i: usize) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("WARN") && l.contains(&format!("-{}: column v holds years", table(i)))).collect()
}

/// By default, years outside 1..=9999 are clamped to the sentinels infinity is written as, so
/// every record keeps `"format": "date-time"` and validates; one warning per column names the
/// column and the option.
#[test]
fn dates_and_timestamps_out_of_range_are_clamped_by_default() {
    let cases = date_time_cases(false);
    let types: Vec<(&str, Cases<'_>)> = cases.iter().map(|(t, c)| (*t, c.as_slice())).collect();
    let synced = assert_encodes_all("", &types);
    let messages = synced.out.messages();
    for (i, t) in ["date", "timestamp", "timestamptz"].iter().enumerate() {
        let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == table(i)).unwrap();
        assert_eq!(schema["schema"]["properties"]["v"], json!({"type": ["null", "string"], "format": "date-time"}), "{t}");
        let warnings = year_warnings(&synced.out.stderr, i);
        assert_eq!(warnings.len(), 1, "{t}: one warning for the column:\n{}", synced.out.stderr);
        assert!(warnings[0].contains("out_of_range_dates") && warnings[0].contains("expanded"), "{t}: {}", warnings[0]);
    }
}

/// With `out_of_range_dates: expanded` the values are exact (ISO 8601 expanded years,
/// astronomical: 1 BC is `+0000`), and the schemas, discovered and synced, have no `date-time`
/// format that such years would fail; arrays of them refer to the string array definition.
#[test]
fn dates_and_timestamps_out_of_range_are_exact_when_expanded() {
    let cases = date_time_cases(true);
    let mut types: Vec<(&str, Cases<'_>)> = cases.iter().map(|(t, c)| (*t, c.as_slice())).collect();
    let array_cases: Cases<'_> = &[(
        "'{2024-02-29,0044-03-15 BC,infinity}'",
        r#"["2024-02-29T00:00:00+00:00","-0043-03-15T00:00:00+00:00","9999-12-31T00:00:00+00:00"]"#,
    )];
    types.push(("date[]", array_cases));
    let synced = assert_encodes_all_with(json!({"out_of_range_dates": "expanded"}), "", &types);
    let messages = synced.out.messages();
    for (i, t) in ["date", "timestamp", "timestamptz", "date[]"].iter().enumerate() {
        let schema = messages.iter().find(|m| m["type"] == "SCHEMA" && m["stream"] == table(i)).unwrap();
        let want = if i < 3 {
            json!({"type": ["null", "string"]})
        } else {
            json!({"type": ["null", "array"], "items": {"$ref": "#/definitions/sdc_recursive_string_array"}})
        };
        assert_eq!(schema["schema"]["properties"]["v"], want, "{t}");
        assert_eq!(year_warnings(&synced.out.stderr, i).len(), 1, "{t}: one warning for the column:\n{}", synced.out.stderr);
    }
    // Discovery writes the same schema into the catalog, and keeps the format without the option.
    for (extra, want) in [
        (json!({"out_of_range_dates": "expanded"}), json!({"type": ["null", "string"]})),
        (json!({}), json!({"type": ["null", "string"], "format": "date-time"})),
    ] {
        let catalog = support::discover(&synced.db.config_file(extra));
        let stream = catalog["streams"].as_array().unwrap().iter().find(|s| s["table_name"] == table(0)).unwrap();
        assert_eq!(stream["schema"]["properties"]["v"], want);
    }
}

/// Bookmarks keep the exact value of a clamped key (in ISO 8601 expanded form), so neither a
/// resumed FULL_TABLE nor the next INCREMENTAL run skips or repeats rows whose key years lie
/// outside 1..=9999 (a sentinel bookmark would skip the 1 BC row after 44 BC, and resend every
/// row after year 9999).
#[test]
fn bookmarks_over_clamped_keys_keep_the_exact_value() {
    let (db, config, catalog) = support::fixture(
        "create table k (id int, k timestamptz primary key); \
         insert into k values (1, '0044-03-15 00:00:00+00 BC'), (2, '0001-06-01 00:00:00+00 BC'), (3, '2024-01-01 00:00:00+00'), \
           (4, '10000-01-01 00:00:00+00'), (5, '20000-01-01 00:00:00+00')",
        json!({"full_table_order": "primary_key", "itersize": 1}),
    );
    let sid = support::id(&db, "public", "k");
    let ids = |out: &TapOutput| out.records("k").iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();

    let mut full = catalog.clone();
    support::select(&mut full, "k", "FULL_TABLE", None);
    let whole = support::sync(&config, &full, None).success();
    let messages = whole.messages();
    support::assert_records_match_schemas(&messages);
    assert_eq!(ids(&whole), [1, 2, 3, 4, 5]);
    let keys: Vec<Value> = whole.records("k").iter().map(|r| r["k"].clone()).collect();
    let (min, max) = (json!("0001-01-01T00:00:00+00:00"), json!("9999-12-31T23:59:59.999000+00:00"));
    assert_eq!(keys, [min.clone(), min, json!("2024-01-01T00:00:00+00:00"), max.clone(), max]);
    // A STATE follows every row (itersize 1): resume after each of the first four.
    let states: Vec<&Value> = messages.iter().filter(|m| m["type"] == "STATE").map(|m| &m["value"]).collect();
    for (n, key) in ["-0043-03-15T00:00:00+00:00", "+0000-06-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00", "+10000-01-01T00:00:00+00:00"]
        .iter()
        .enumerate()
    {
        let state = states.iter().find(|s| s["bookmarks"][&sid]["last_pk_fetched"]["k"] == json!(key));
        let state = state.unwrap_or_else(|| panic!("no STATE with last_pk_fetched {key}: {states:?}"));
        let resumed = support::sync(&config, &full, Some(state)).success();
        assert_eq!(ids(&resumed), (n as i64 + 2..=5).collect::<Vec<_>>(), "resumed after {key}");
    }

    let mut incremental = catalog;
    support::select(&mut incremental, "k", "INCREMENTAL", Some("k"));
    let first = support::sync(&config, &incremental, None).success();
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    let last = first.last_state();
    assert_eq!(last["bookmarks"][&sid]["replication_key_value"], json!("+20000-01-01T00:00:00+00:00"), "{last}");
    let second = support::sync(&config, &incremental, Some(&last)).success();
    assert_eq!(ids(&second), [5], "only the row at the bookmark, again");
}

/// timestamp and timestamptz in UTC `+00:00`, six fraction digits when there is a fraction
/// (infinities and years outside 1..=9999: [`DATE_TIME_CASES`]).
#[test]
fn timestamps_in_utc_with_microseconds() {
    assert_encodes_all(
        "",
        &[
            (
                "timestamp",
                &[
                    ("'2024-02-29 12:34:56.123456'", "\"2024-02-29T12:34:56.123456+00:00\""),
                    ("'2024-02-29 12:34:56'", "\"2024-02-29T12:34:56+00:00\""),
                    ("'2024-02-29 12:34:56.5'", "\"2024-02-29T12:34:56.500000+00:00\""),
                    ("'2024-02-29 12:34:56.000001'", "\"2024-02-29T12:34:56.000001+00:00\""),
                    ("'1999-12-31 23:59:59.999999'", "\"1999-12-31T23:59:59.999999+00:00\""),
                    ("'2000-01-01 00:00:00'", "\"2000-01-01T00:00:00+00:00\""),
                    ("'1969-12-31 23:59:59.000001'", "\"1969-12-31T23:59:59.000001+00:00\""),
                ],
            ),
            (
                "timestamptz",
                &[
                    ("'2024-06-01 12:00:00+02'", "\"2024-06-01T10:00:00+00:00\""),
                    ("'2024-01-01 00:00:00-05:30'", "\"2024-01-01T05:30:00+00:00\""),
                    ("'2024-12-31 23:59:59.999999-01'", "\"2025-01-01T00:59:59.999999+00:00\""),
                    ("'2024-06-01 12:00:00.25 UTC'", "\"2024-06-01T12:00:00.250000+00:00\""),
                    ("'2024-07-04 12:00:00 America/Los_Angeles'", "\"2024-07-04T19:00:00+00:00\""),
                    ("'2024-03-10 01:59:59.999999 America/New_York'", "\"2024-03-10T06:59:59.999999+00:00\""),
                ],
            ),
        ],
    );
}

/// time and timetz, including 24:00:00 and zone offsets with seconds.
#[test]
fn times_of_day_with_and_without_zone() {
    assert_encodes_all(
        "",
        &[
            (
                "time",
                &[
                    ("'00:00:00'", "\"00:00:00\""),
                    ("'24:00:00'", "\"24:00:00\""),
                    ("'12:34:56.789'", "\"12:34:56.789000\""),
                    ("'23:59:59.999999'", "\"23:59:59.999999\""),
                    ("'00:00:00.000001'", "\"00:00:00.000001\""),
                    ("'07:08:09'", "\"07:08:09\""),
                ],
            ),
            (
                "timetz",
                &[
                    ("'12:34:56.5-05:30'", "\"12:34:56.500000-05:30\""),
                    ("'00:00:00+00'", "\"00:00:00+00:00\""),
                    ("'24:00:00-15:59'", "\"24:00:00-15:59\""),
                    ("'12:00:00+05:45'", "\"12:00:00+05:45\""),
                    ("'12:00:00+01:02:03'", "\"12:00:00+01:02:03\""),
                    ("'23:59:59.999999+15:59'", "\"23:59:59.999999+15:59\""),
                    ("'00:00:00+15:59:59'", "\"00:00:00+15:59:59\""),
                    ("'00:00:00-15:59:59'", "\"00:00:00-15:59:59\""),
                ],
            ),
        ],
    );
}

/// interval exactly as PostgreSQL prints it under `IntervalStyle = iso_8601` (the oracle).
#[test]
fn intervals_as_postgres_iso_8601() {
    let synced = assert_encodes(
        "interval",
        &[
            ("'1 year 2 mons -3 days 04:05:06.7'", "\"P1Y2M-3DT4H5M6.7S\""),
            ("'0'", "\"PT0S\""),
            ("'1 year'", "\"P1Y\""),
            ("'-1 year -1 month'", "\"P-1Y-1M\""),
            ("'1 day -1 second'", "\"P1DT-1S\""),
            ("'-0.5 seconds'", "\"PT-0.5S\""),
            ("'1.5 months'", "\"P1M15D\""),
            ("'00:00:00.000001'", "\"PT0.000001S\""),
            ("'1 min -1 sec'", "\"PT59S\""),
            ("'-1 mon 1 day -1 hour 1 min -1 sec'", "\"P-1M1DT-59M-1S\""),
            ("'5 years -0.5 sec'", "\"P5YT-0.5S\""),
            ("'12:00:00.120'", "\"PT12H0.12S\""),
            ("'178000000 years'", "\"P178000000Y\""),
            ("'-2147483648 days'", "\"P-2147483648D\""),
            ("'2562047788:00:54.775807'", "\"PT2562047788H54.775807S\""),
            ("'-2562047788:00:54.775807'::interval - '0.000001 sec'", "\"PT-2562047788H-54.775808S\""),
            ("'P1Y2M3DT4H5M6.000007S'", "\"P1Y2M3DT4H5M6.000007S\""),
            ("'-1 year -2 mons +3 days -04:05:06.7'", "\"P-1Y-2M3DT-4H-5M-6.7S\""),
            ("'1 day 25 hours'", "\"P1DT25H\""),
            ("'-0.000001 sec'", "\"PT-0.000001S\""),
            ("'1 mon -1 day'", "\"P1M-1D\""),
            ("'-178956970 years -8 months'", "\"P-178956970Y-8M\""),
            ("'178956970 years 7 months'", "\"P178956970Y7M\""),
            ("'59.999999 sec'", "\"PT59.999999S\""),
        ],
    );
    synced.assert_server_oracle("interval", json_string);
}

/// bytea as lowercase hex; every type read as `::text` (macaddr, xml, text search, ranges,
/// multiranges, geometry, pg_lsn, extension types) as the server's text (the oracle).
#[test]
fn bytea_and_types_read_as_text() {
    let big_hex = "0123456789abcdef".repeat(64);
    let big_literal = format!("'\\x{big_hex}'");
    let big_json = format!("\"{big_hex}\"");
    let synced = assert_encodes_all(
        "create extension ltree; create extension cube; create extension isn",
        &[
            ("bytea", &[(r"'\x00ff10'", "\"00ff10\""), (r"'\x'", "\"\""), (r"'\000abc'", "\"00616263\""), (&big_literal, &big_json)]),
            ("macaddr", &[("'08002B010203'", "\"08:00:2b:01:02:03\"")]),
            ("macaddr8", &[("'08:00:2b:01:02:03:04:05'", "\"08:00:2b:01:02:03:04:05\"")]),
            ("xml", &[(r#"'<a b="1">x &amp; y</a>'"#, r#""<a b=\"1\">x &amp; y</a>""#), ("'<é/>'", "\"<é/>\"")]),
            ("tsvector", &[("'a fat cat'", r#""'a' 'cat' 'fat'""#)]),
            ("int4range", &[("'[1,5)'", "\"[1,5)\""), ("'(1,5]'", "\"[2,6)\""), ("'empty'", "\"empty\""), ("'(,)'", "\"(,)\"")]),
            ("numrange", &[("'[1.50,2.5)'", "\"[1.50,2.5)\"")]),
            (
                "tstzrange",
                &[("'[2024-01-01 00:00:00+00, 2024-02-01 00:00:00+00)'", r#""[\"2024-01-01 00:00:00+00\",\"2024-02-01 00:00:00+00\")""#)],
            ),
            ("tsrange", &[("'[2024-01-01 10:00, 2024-01-02)'", r#""[\"2024-01-01 10:00:00\",\"2024-01-02 00:00:00\")""#)]),
            ("daterange", &[("'[2024-01-01, 2024-02-01]'", "\"[2024-01-01,2024-02-02)\"")]),
            ("int4multirange", &[("'{[1,3), [5,7)}'", "\"{[1,3),[5,7)}\"")]),
            ("point", &[("'(1.5,-2)'", "\"(1.5,-2)\""), ("'(0.1,1e300)'", "\"(0.1,1e+300)\"")]),
            ("box", &[("'((0,0),(1,1))'", "\"(1,1),(0,0)\"")]),
            ("pg_lsn", &[("'16/B374D848'", "\"16/B374D848\"")]),
            ("tsquery", &[("'fat & rat'", r#""'fat' & 'rat'""#)]),
            ("jsonpath", &[("'$.a[*] ? (@ > 1)'", r#""$.\"a\"[*]?(@ > 1)""#)]),
            ("circle", &[("'<(1,2),3>'", "\"<(1,2),3>\"")]),
            ("polygon", &[("'((0,0),(1,0),(1,1))'", "\"((0,0),(1,0),(1,1))\"")]),
            ("txid_snapshot", &[("'10:20:10,14,15'", "\"10:20:10,14,15\"")]),
            ("datemultirange", &[("'{[2024-01-01,2024-01-05)}'", "\"{[2024-01-01,2024-01-05)}\"")]),
            ("ltree", &[("'Top.Science.Astronomy'", "\"Top.Science.Astronomy\"")]),
            ("cube", &[("'(1,2),(3,4)'", "\"(1, 2),(3, 4)\"")]),
            ("isbn", &[("'978-0-393-04002-9'", "\"0-393-04002-X\"")]),
        ],
    );
    for t in [
        "macaddr",
        "macaddr8",
        "xml",
        "tsvector",
        "int4range",
        "numrange",
        "tstzrange",
        "tsrange",
        "daterange",
        "int4multirange",
        "point",
        "box",
        "pg_lsn",
        "tsquery",
        "jsonpath",
        "circle",
        "polygon",
        "txid_snapshot",
        "datemultirange",
        "ltree",
        "cube",
        "isbn",
    ] {
        synced.assert_server_oracle(t, json_string);
    }
}

/// The identity of a JSON text the server printed (`array_to_json`).
fn json_as_is(text: &str) -> String {
    text.to_string()
}

/// inet and cidr exactly as their output function (`network_out`) prints them, as psql shows
/// them: the netmask only when it is not the full width for inet, always for cidr; IPv6 with
/// `::` for the first longest zero run and dotted IPv4 for `::a.b.c.d`/`::ffff:a.b.c.d`. Not
/// as `v::text` prints them (`text(inet)` adds `/32` and `/128`).
#[test]
fn inet_and_cidr_as_their_output_function() {
    let synced = assert_encodes_all(
        "create domain addr as inet",
        &[
            (
                "inet",
                &[
                    ("'192.168.0.1/24'", "\"192.168.0.1/24\""),
                    ("'10.0.0.1'", "\"10.0.0.1\""),
                    ("'10.0.0.1/32'", "\"10.0.0.1\""),
                    ("'1.2.3.4/31'", "\"1.2.3.4/31\""),
                    ("'0.0.0.0/0'", "\"0.0.0.0/0\""),
                    ("'0.0.0.0'", "\"0.0.0.0\""),
                    ("'255.255.255.255'", "\"255.255.255.255\""),
                    ("'::'", "\"::\""),
                    ("'::/0'", "\"::/0\""),
                    ("'::1'", "\"::1\""),
                    ("'::1/128'", "\"::1\""),
                    ("'fe80::1/64'", "\"fe80::1/64\""),
                    ("'2001:db8::'", "\"2001:db8::\""),
                    ("'2001:db8:0:0:1:0:0:1'", "\"2001:db8::1:0:0:1\""),
                    ("'2001:0:0:1::1'", "\"2001:0:0:1::1\""),
                    ("'1:0:0:2:0:0:0:3'", "\"1:0:0:2::3\""),
                    ("'1:0:2:0:3:0:4:0'", "\"1:0:2:0:3:0:4:0\""),
                    ("'0:1:0:0:0:0:0:0'", "\"0:1::\""),
                    ("'::ffff:1.2.3.4'", "\"::ffff:1.2.3.4\""),
                    ("'::ffff:1.2.3.4/120'", "\"::ffff:1.2.3.4/120\""),
                    ("'::ffff:0.0.0.0'", "\"::ffff:0.0.0.0\""),
                    ("'::1.2.3.4'", "\"::1.2.3.4\""),
                    ("'::ffff:0'", "\"::255.255.0.0\""),
                    ("'::0.0.1.2'", "\"::102\""),
                    ("'::ffff:0:1.2.3.4'", "\"::ffff:0:102:304\""),
                    ("'::fffe:1.2.3.4'", "\"::fffe:102:304\""),
                    ("'1::'", "\"1::\""),
                    ("'1:2:3:4:5:6:7:8'", "\"1:2:3:4:5:6:7:8\""),
                    ("'1:0:0:0:0:0:0:8'", "\"1::8\""),
                    ("'ABCD:EF01:2345:6789:ABCD:EF01:2345:0089'", "\"abcd:ef01:2345:6789:abcd:ef01:2345:89\""),
                ],
            ),
            (
                "cidr",
                &[
                    ("'10.0.0.0/8'", "\"10.0.0.0/8\""),
                    ("'192.168.0.0/24'", "\"192.168.0.0/24\""),
                    ("'0.0.0.0/0'", "\"0.0.0.0/0\""),
                    ("'10.0.0.1/32'", "\"10.0.0.1/32\""),
                    ("'10.1'", "\"10.1.0.0/16\""),
                    ("'2001:db8::/32'", "\"2001:db8::/32\""),
                    ("'::1/128'", "\"::1/128\""),
                    ("'::/0'", "\"::/0\""),
                    ("'::ffff:1.2.3.0/120'", "\"::ffff:1.2.3.0/120\""),
                    ("'2001:db8:0:0:1::/80'", "\"2001:db8:0:0:1::/80\""),
                ],
            ),
            ("addr", &[("'10.0.0.1'", "\"10.0.0.1\""), ("'::1/64'", "\"::1/64\"")]),
            (
                "inet[]",
                &[
                    ("'{192.168.0.1/24,::1,NULL,10.0.0.1/32}'", r#"["192.168.0.1/24","::1",null,"10.0.0.1"]"#),
                    ("'{{10.0.0.1,::ffff:1.2.3.4},{NULL,fe80::1/64}}'", r#"[["10.0.0.1","::ffff:1.2.3.4"],[null,"fe80::1/64"]]"#),
                    ("'{}'", "[]"),
                ],
            ),
            ("cidr[]", &[("'{10.0.0.0/8,2001:db8::/32,10.0.0.1,NULL}'", r#"["10.0.0.0/8","2001:db8::/32","10.0.0.1/32",null]"#)]),
        ],
    );
    for t in ["inet", "cidr", "addr"] {
        synced.assert_server_oracle_of(t, "case when v is not null then concat(v) end", json_string);
    }
    // array_to_json prints each element with its output function, as psql would.
    for t in ["inet[]", "cidr[]"] {
        synced.assert_server_oracle_of(t, "array_to_json(v)", json_as_is);
    }
}

/// Arrays as nested lists, one level per dimension, each element by its type's encoder; the
/// trailing NULL row of every type checks that a NULL array is `null`, not `[]`.
#[test]
fn arrays_nest_and_encode_each_element() {
    let setup = "create extension hstore; create type mood as enum ('happy', 'sad'); \
                 create domain price as numeric(10,2); create domain code as varchar(5); \
                 create domain ints as int[]; create domain addr as inet; create domain addrs as inet[]";
    assert_encodes_all(
        setup,
        &[
            (
                "int[]",
                &[
                    ("'{1,NULL,3}'", "[1,null,3]"),
                    ("'{{1,2,3},{4,5,6}}'", "[[1,2,3],[4,5,6]]"),
                    ("'{{{1,2},{3,4}},{{5,6},{7,8}}}'", "[[[1,2],[3,4]],[[5,6],[7,8]]]"),
                    ("'{}'", "[]"),
                    ("'{NULL}'", "[null]"),
                    ("'[2:3]={7,8}'", "[7,8]"),
                    ("'{{1,NULL},{NULL,4}}'", "[[1,null],[null,4]]"),
                    ("'{-2147483648,2147483647}'", "[-2147483648,2147483647]"),
                ],
            ),
            ("bigint[]", &[("'{-9223372036854775808,9223372036854775807}'", "[-9223372036854775808,9223372036854775807]")]),
            (
                "text[]",
                &[
                    (r#"'{"a\"b","c,d",NULL,"NULL",""," x ","back\\slash"}'"#, r#"["a\"b","c,d",null,"NULL",""," x ","back\\slash"]"#),
                    (r"ARRAY['é😀', E'tab\there', E'\x01']", r#"["é😀","tab\there","\u0001"]"#),
                    ("'{{a,b},{c,NULL}}'", r#"[["a","b"],["c",null]]"#),
                ],
            ),
            ("varchar(3)[]", &[("'{abc,\"\"}'", r#"["abc",""]"#)]),
            ("char(3)[]", &[("'{a,bc}'", r#"["a  ","bc "]"#)]),
            (
                "numeric[]",
                &[
                    ("'{1.50,NaN,-0.001,Infinity,-Infinity,NULL}'", r#"[1.50,"NaN",-0.001,"Infinity","-Infinity",null]"#),
                    ("ARRAY['1e-50'::numeric]", "[0.00000000000000000000000000000000000000000000000001]"),
                ],
            ),
            ("double precision[]", &[("'{1.1,-0,NaN,Infinity,1e300}'", r#"[1.1,-0.0,"NaN","Infinity",1e300]"#)]),
            ("real[]", &[("'{1.1,-Infinity}'", r#"[1.1,"-Infinity"]"#)]),
            (
                "timestamptz[]",
                &[(
                    r#"'{"2024-06-01 12:00:00+02",infinity,NULL,"2024-01-01 00:00:00.5+00"}'"#,
                    r#"["2024-06-01T10:00:00+00:00","9999-12-31T23:59:59.999000+00:00",null,"2024-01-01T00:00:00.500000+00:00"]"#,
                )],
            ),
            (
                "timestamp[]",
                &[(r#"'{"2024-02-29 12:34:56.123456",-infinity}'"#, r#"["2024-02-29T12:34:56.123456+00:00","0001-01-01T00:00:00+00:00"]"#)],
            ),
            (
                "date[]",
                &[(
                    "'{2024-02-29,-infinity,infinity}'",
                    r#"["2024-02-29T00:00:00+00:00","0001-01-01T00:00:00+00:00","9999-12-31T00:00:00+00:00"]"#,
                )],
            ),
            ("time[]", &[("'{24:00:00,12:34:56.789}'", r#"["24:00:00","12:34:56.789000"]"#)]),
            ("boolean[]", &[("'{t,f,NULL}'", "[true,false,null]")]),
            ("bit(1)[]", &[("'{1,0}'", "[true,false]")]),
            ("varbit[]", &[("'{101,\"\"}'", r#"["101",""]"#)]),
            (
                "jsonb[]",
                &[(r#"ARRAY['{"b": 1, "a": [1, 2.50]}'::jsonb, 'null', NULL]"#, r#"["{\"a\": [1, 2.50], \"b\": 1}","null",null]"#)],
            ),
            ("json[]", &[(r#"ARRAY['{"b":1, "a" : 2}'::json]"#, r#"["{\"b\":1, \"a\" : 2}"]"#)]),
            ("hstore[]", &[("ARRAY['a=>1'::hstore, 'b=>NULL', NULL, '']", r#"[{"a":"1"},{"b":null},null,{}]"#)]),
            ("inet[]", &[("'{192.168.0.1/24,::1,NULL}'", r#"["192.168.0.1/24","::1",null]"#)]),
            ("int4range[]", &[(r#"'{"[1,5)",empty}'"#, r#"["[1,5)","empty"]"#)]),
            (
                "tstzrange[]",
                &[(
                    r#"ARRAY['[2024-01-01 00:00:00+00, 2024-02-01 00:00:00+00)'::tstzrange]"#,
                    r#"["[\"2024-01-01 00:00:00+00\",\"2024-02-01 00:00:00+00\")"]"#,
                )],
            ),
            ("uuid[]", &[("'{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11,NULL}'", r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",null]"#)]),
            ("mood[]", &[("'{happy,sad,NULL}'", r#"["happy","sad",null]"#)]),
            ("money[]", &[("'{1234.56,-0.01,NULL}'", "[1234.56,-0.01,null]")]),
            ("bytea[]", &[(r"ARRAY['\x00ff'::bytea, '\x'::bytea, NULL]", r#"["00ff","",null]"#)]),
            ("interval[]", &[("'{\"1 year\",\"-1 sec\",0,\"1 day -1 sec\"}'", r#"["P1Y","PT-1S","PT0S","P1DT-1S"]"#)]),
            ("price[]", &[("ARRAY[1.5, 2.345]::price[]", "[1.50,2.35]")]),
            ("code[]", &[("ARRAY['ab', 'ñ']::code[]", r#"["ab","ñ"]"#)]),
            ("ints", &[("'{{1,2},{3,NULL}}'", "[[1,2],[3,null]]")]),
            ("addr[]", &[("'{10.0.0.0/8}'", r#"["10.0.0.0/8"]"#)]),
            ("addrs", &[("'{10.0.0.0/8}'", r#"["10.0.0.0/8"]"#)]),
            ("numeric(5,2)[]", &[("'{1.5,-2}'", "[1.50,-2.00]")]),
        ],
    );
}

/// Composite columns (plain, arrays, domains over them) are `inclusion: unsupported` and are
/// never read, even when the catalog selects them.
#[test]
fn composites_are_unsupported_and_never_emitted() {
    let db = TestDb::new();
    db.exec(
        "create type pair as (a int, b text); create domain pair_d as pair; \
         create table c (id serial primary key, p pair, ps pair[], pd pair_d, n int); \
         insert into c (p, ps, pd, n) values (row(1, 'x'), array[row(2, 'y')::pair], row(3, 'z'), 7), (null, null, null, null)",
    );
    db.grant_reader();
    let config = db.config_file(json!({}));
    let mut catalog = support::discover(&config);
    let stream = support::stream_mut(&mut catalog, "c");
    let metadata = stream["metadata"].as_array().unwrap();
    let inclusion = |column: &str| {
        metadata.iter().find(|m| m["breadcrumb"] == json!(["properties", column])).unwrap_or_else(|| panic!("no metadata for {column}"))
            ["metadata"]["inclusion"]
            .clone()
    };
    for column in ["p", "ps", "pd"] {
        assert_eq!(inclusion(column), json!("unsupported"), "{column}");
        assert_eq!(stream["schema"]["properties"][column], json!({}), "{column}");
    }
    assert_eq!(inclusion("n"), json!("available"));
    support::select(&mut catalog, "c", "FULL_TABLE", None);
    // Even explicitly selected, an unsupported column is not read.
    support::select_column(&mut catalog, "c", "p", true);
    let out = support::sync(&config, &catalog, None).success();
    support::assert_records_match_schemas(&out.messages());
    let schema = out.messages().into_iter().find(|m| m["type"] == "SCHEMA").expect("a SCHEMA message");
    let mut properties: Vec<&String> = schema["schema"]["properties"].as_object().unwrap().keys().collect();
    properties.sort();
    assert_eq!(properties, ["id", "n"]);
    let bodies: Vec<String> = raw_records(&out, "c").into_iter().map(|(_, body)| body).collect();
    assert_eq!(bodies, [r#""id":1,"n":7"#, r#""id":2,"n":null"#]);
}

/// Gives the reader role its own settings (`alter role <role> set <name> = <value>`, the value
/// as SQL text), as the superuser, and checks they were recorded.
fn set_role_settings(db: &TestDb, settings: &[(&str, &str)]) {
    let sql: Vec<String> = settings.iter().map(|(name, value)| format!("alter role {} set {name} = {value}", db.role)).collect();
    db.exec(&sql.join("; "));
    let recorded: Vec<String> = db
        .admin()
        .query_one(
            "select setconfig from pg_db_role_setting where setdatabase = 0 and setrole = (select oid from pg_roles where rolname = $1)",
            &[&db.role],
        )
        .expect("the role has settings")
        .get(0);
    assert_eq!(recorded.len(), settings.len(), "every setting is recorded for the role: {recorded:?}");
}

/// The raw record bodies of stream `s`.
fn bodies(out: &TapOutput) -> Vec<String> {
    raw_records(out, "s").into_iter().map(|(_, body)| body).collect()
}

/// The reader role's own TimeZone, DateStyle, IntervalStyle, lc_monetary, extra_float_digits,
/// bytea_output and client_encoding change nothing in the records (BC years written exactly,
/// `out_of_range_dates: expanded`, so their text is checked too).
#[test]
fn output_is_independent_of_role_settings() {
    let db = TestDb::new();
    db.exec(
        "create table s (id serial primary key, ts timestamptz, d date, i interval, m money, f float8, r real, \
                         tr tstzrange, dr daterange, p point, b bytea, t text, tsa timestamptz[], ia interval[], ma money[]); \
         insert into s (ts, d, i, m, f, r, tr, dr, p, b, t, tsa, ia, ma) values \
           ('2024-06-01 12:00:00.5+02', '2024-02-29', '1 year 2 mons -3 days 04:05:06.7', '1234.56', 0.1, 1.1, \
            '[2024-01-01 00:00:00+00, 2024-02-01 00:00:00+00)', '[2024-01-01, 2024-02-01)', '(0.1,1e300)', '\\x00ff', 'é😀', \
            '{\"2024-06-01 12:00:00+02\",infinity}', '{\"-1 sec\",\"1 day\"}', '{-1234.56}'), \
           ('0044-03-15 00:00:00+00 BC', '-infinity', '-0.5 sec', '-0.01', 'NaN', '-0', \
            'empty', 'empty', '(1,2)', '\\x', '', '{}', '{}', '{}')",
    );
    db.grant_reader();
    let plain = bodies(&sync_everything_with(&db, json!({"out_of_range_dates": "expanded"})));

    set_role_settings(
        &db,
        &[
            ("timezone", "'Asia/Kathmandu'"),
            ("datestyle", "'German'"),
            ("intervalstyle", "'sql_standard'"),
            ("lc_monetary", "'C'"),
            ("extra_float_digits", "-15"),
            ("bytea_output", "'escape'"),
            ("client_encoding", "'LATIN1'"),
        ],
    );
    let with_settings = bodies(&sync_everything_with(&db, json!({"out_of_range_dates": "expanded"})));

    assert_eq!(plain, with_settings, "records differ once the role has its own session settings");
    assert_eq!(
        with_settings,
        [
            concat!(
                r#""id":1,"ts":"2024-06-01T10:00:00.500000+00:00","d":"2024-02-29T00:00:00+00:00","i":"P1Y2M-3DT4H5M6.7S","#,
                r#""m":1234.56,"f":0.1,"r":1.1,"tr":"[\"2024-01-01 00:00:00+00\",\"2024-02-01 00:00:00+00\")","#,
                r#""dr":"[2024-01-01,2024-02-01)","p":"(0.1,1e+300)","b":"00ff","t":"é😀","#,
                r#""tsa":["2024-06-01T10:00:00+00:00","9999-12-31T23:59:59.999000+00:00"],"ia":["PT-1S","P1D"],"ma":[-1234.56]"#
            ),
            concat!(
                r#""id":2,"ts":"-0043-03-15T00:00:00+00:00","d":"0001-01-01T00:00:00+00:00","i":"PT-0.5S","m":-0.01,"#,
                r#""f":"NaN","r":-0.0,"tr":"empty","dr":"empty","p":"(1,2)","b":"","t":"","tsa":[],"ia":[],"ma":[]"#
            ),
        ]
    );
}

/// Types read as `::text` whose text depends on `search_path` (the `reg*` types print names
/// schema-qualified unless the schema is on the path) must not change with the role's path.
#[test]
fn reg_types_are_independent_of_search_path() {
    let db = TestDb::new();
    db.exec(
        "create schema extra; create table extra.target (x int); create type extra.kind as enum ('a'); \
         create table s (id serial primary key, rc regclass, rt regtype); \
         insert into s (rc, rt) values ('extra.target', 'extra.kind'), ('pg_catalog.pg_class', 'integer')",
    );
    db.grant_reader();
    let plain = bodies(&sync_everything(&db));
    assert_eq!(plain, [r#""id":1,"rc":"extra.target","rt":"extra.kind""#, r#""id":2,"rc":"pg_class","rt":"integer""#]);

    set_role_settings(&db, &[("search_path", "extra, public")]);
    assert_eq!(
        db.admin()
            .query_one("select setconfig[1] from pg_db_role_setting where setrole = $1::text::regrole", &[&db.role])
            .unwrap()
            .get::<_, String>(0),
        "search_path=extra, public"
    );
    let with_path = bodies(&sync_everything(&db));
    assert_eq!(plain, with_path, "regclass/regtype text changes with the role's search_path");
}

/// `json_as_object: true`: json and jsonb columns carry their documents (any JSON type, raw
/// newlines of json's whitespace turned into spaces), arrays of them stay strings, and the
/// catalog's and SCHEMA's types admit every JSON type; records validate.
#[test]
fn json_as_object_emits_documents() {
    let db = TestDb::new();
    db.exec(
        "create table docs (id int primary key, j json, jb jsonb, ja json[]); \
         insert into docs values \
           (1, '{\"a\": [1, 2.50]}', '{\"b\": 1, \"a\": \"é\"}', array['{\"x\":1}'::json]), \
           (2, E'[1,\\n2]', '\"text\"', null), \
           (3, '12345678901234567890.5', 'null', '{}'), \
           (4, null, null, null)",
    );
    db.grant_reader();
    let config = db.config_file(json!({"json_as_object": "true"}));
    let mut catalog = support::discover(&config);
    let stream = support::stream_mut(&mut catalog, "docs");
    assert_eq!(stream["schema"]["properties"]["j"]["type"], json!(["null", "object", "array", "string", "number", "boolean"]));
    assert_eq!(stream["schema"]["properties"]["ja"]["items"]["$ref"], json!("#/definitions/sdc_recursive_string_array"));
    support::select(&mut catalog, "docs", "FULL_TABLE", None);
    let out = support::sync(&config, &catalog, None).success();
    support::assert_records_match_schemas(&out.messages());
    let bodies: Vec<String> = raw_records(&out, "docs").into_iter().map(|(_, body)| body).collect();
    assert_eq!(
        bodies,
        [
            r#""id":1,"j":{"a": [1, 2.50]},"jb":{"a": "é", "b": 1},"ja":["{\"x\":1}"]"#,
            r#""id":2,"j":[1, 2],"jb":"text","ja":null"#,
            r#""id":3,"j":12345678901234567890.5,"jb":null,"ja":[]"#,
            r#""id":4,"j":null,"jb":null,"ja":null"#,
        ]
    );
}
