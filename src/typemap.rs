//! PostgreSQL type -> JSON Schema, `sql-datatype` and [`Encoder`], decided once per column.
//!
//! Pure: works on the `pg_type` rows discovery loaded ([`TypeInfo`]), holds no client.

/// How one column's wire value (binary format, as the server sends it for the column's
/// SELECT expression) is turned into JSON text. Chosen once per column at plan time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoder {
    /// `bool`: one byte -> `true`/`false`.
    Bool,
    /// `int2` -> JSON integer.
    Int2,
    /// `int4` -> JSON integer.
    Int4,
    /// `int8` -> JSON integer.
    Int8,
    /// `oid` (unsigned 32-bit) -> JSON integer.
    Oid,
    /// `float4` -> shortest round-trip JSON number; NaN/±Infinity as strings.
    Float4,
    /// `float8` -> shortest round-trip JSON number; NaN/±Infinity as strings.
    Float8,
    /// `numeric` (also `money::numeric`) -> JSON number with exactly PostgreSQL's digits;
    /// NaN/±Infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    Numeric,
    /// Any UTF-8 text on the wire (text, varchar, bpchar, name, citext, enum labels, `"char"`,
    /// and every column the SELECT casts `::text`) -> JSON string.
    Text,
    /// `json`: its text -> JSON string holding that text (singer-io's form).
    Json,
    /// `jsonb`: version byte 1 then text -> JSON string holding that text.
    Jsonb,
    /// `json` with `json_as_object`: the document itself (object, array or scalar).
    JsonDocument,
    /// `jsonb` with `json_as_object`: the document itself (object, array or scalar).
    JsonbDocument,
    /// `bytea` -> JSON string of lowercase hex digits, no `\x` prefix.
    Bytea,
    /// `uuid` -> `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"` lowercase.
    Uuid,
    /// `date` -> `"YYYY-MM-DDT00:00:00+00:00"`; years outside 1..=9999 as the value says.
    Date(OutOfRangeDates),
    /// `time` -> `"HH:MM:SS[.ffffff]"`.
    Time,
    /// `timetz` -> `"HH:MM:SS[.ffffff]+HH:MM"`.
    TimeTz,
    /// `timestamp` -> `"YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00"`; years outside 1..=9999 as the value says.
    Timestamp(OutOfRangeDates),
    /// `timestamptz` -> `"YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00"` (UTC); years outside 1..=9999 as the value says.
    TimestampTz(OutOfRangeDates),
    /// `interval` -> ISO 8601 duration exactly as PostgreSQL's `IntervalStyle = iso_8601` prints it.
    Interval,
    /// `bit(1)` -> `true`/`false` (singer-io's mapping).
    BitBool,
    /// `bit(n)`, `varbit` -> JSON string of `0`/`1` characters.
    BitString,
    /// `hstore` -> JSON object of string keys to string or null values.
    Hstore,
    /// `inet` and `cidr` -> their output function's text, as psql shows them: `"10.0.0.1"`,
    /// `"192.168.0.1/24"`, `"::ffff:1.2.3.4"`; cidr always with its netmask (`"10.0.0.0/8"`).
    Inet,
    /// Any array: nested JSON lists (one level per dimension), NULL elements as `null`,
    /// each element encoded by the inner encoder.
    Array(Box<Encoder>),
}

use std::collections::HashMap;

/// How dates and timestamps whose year lies outside 1..=9999 are written (`out_of_range_dates`).
/// RFC 3339, and so JSON Schema's `date-time`, only has four-digit years 0000..=9999, and
/// Python's `datetime` (what singer-python and most targets parse with) only 1..=9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutOfRangeDates {
    /// As the nearest end of the range, the sentinels infinity is written as: `0001-01-01…` for
    /// years before 1, `9999-12-31…` after 9999. The record stays valid under `date-time`; the
    /// exact value is kept in bookmarks, and a warning names the column.
    Clamp,
    /// Exactly, in ISO 8601 expanded form (`-0043-03-15…` is 44 BC, `+10000-01-01…`); the
    /// column's schema then has no `date-time` format, which such years would fail.
    Expanded,
}

impl OutOfRangeDates {
    /// The config's spelling (`out_of_range_dates`).
    pub const fn as_str(self) -> &'static str {
        match self {
            OutOfRangeDates::Clamp => "clamp",
            OutOfRangeDates::Expanded => "expanded",
        }
    }
}

/// Every encoder without an inner encoder, for tests that must cover them all.
#[cfg(test)]
pub const SCALAR_ENCODERS: &[Encoder] = &[
    Encoder::Bool,
    Encoder::Int2,
    Encoder::Int4,
    Encoder::Int8,
    Encoder::Oid,
    Encoder::Float4,
    Encoder::Float8,
    Encoder::Numeric,
    Encoder::Text,
    Encoder::Json,
    Encoder::Jsonb,
    Encoder::JsonDocument,
    Encoder::JsonbDocument,
    Encoder::Bytea,
    Encoder::Uuid,
    Encoder::Date(OutOfRangeDates::Clamp),
    Encoder::Date(OutOfRangeDates::Expanded),
    Encoder::Time,
    Encoder::TimeTz,
    Encoder::Timestamp(OutOfRangeDates::Clamp),
    Encoder::Timestamp(OutOfRangeDates::Expanded),
    Encoder::TimestampTz(OutOfRangeDates::Clamp),
    Encoder::TimestampTz(OutOfRangeDates::Expanded),
    Encoder::Interval,
    Encoder::BitBool,
    Encoder::BitString,
    Encoder::Hstore,
    Encoder::Inet,
];

use serde_json::{Map, Value, json};

/// One row of `pg_type`, as discovery loads it.
#[derive(Clone, Debug)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// `typname`.
    pub typname: String,
    /// `typtype`: `b` base, `c` composite, `d` domain, `e` enum, `p` pseudo, `r` range, `m` multirange.
    pub typtype: u8,
    /// `typcategory` (`A` for arrays).
    pub typcategory: u8,
    /// `typelem`: element type of an array type.
    pub typelem: u32,
    /// `typbasetype`: base type of a domain.
    pub typbasetype: u32,
    /// `typtypmod`: the typmod a domain applies to its base type.
    pub typtypmod: i32,
}

/// All `pg_type` rows of one database, by oid.
#[derive(Clone, Debug, Default)]
pub struct TypeMap {
    /// Rows by oid.
    by_oid: HashMap<u32, TypeInfo>,
}

/// How the SELECT list reads a column, so that the server sends a wire format we decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cast {
    /// The column as it is (binary format of its own type).
    None,
    /// `col::text`: types whose text form is their faithful value (xml, ranges, macaddr, ...).
    Text,
    /// `col::text[]`: arrays of such types.
    TextArray,
    /// `col::numeric`: money, so output does not carry lc_monetary's symbols and separators.
    Numeric,
    /// `col::numeric[]`: money arrays.
    NumericArray,
}

/// What tap-heroku does with one column: its JSON Schema (without `null`), how the SELECT reads
/// it and how its value is encoded. `None` from [`map_column`] means unsupported.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnType {
    /// JSON Schema of a non-null value, e.g. `{"type": ["integer"], "minimum": ..}`.
    pub schema: Map<String, Value>,
    /// Cast in the SELECT list.
    pub cast: Cast,
    /// Encoder of the (cast) wire value.
    pub encoder: Encoder,
}

/// Well-known oids of built-in types (stable across PostgreSQL versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const CIDR: u32 = 650;
    pub const MONEY: u32 = 790;
    pub const INET: u32 = 869;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Built-in types by the name `format_type` gives them (the catalog's `sql-datatype`).
const BUILTIN_NAMES: [(&str, u32); 21] = [
    ("boolean", oid::BOOL),
    ("smallint", oid::INT2),
    ("integer", oid::INT4),
    ("bigint", oid::INT8),
    ("real", oid::FLOAT4),
    ("double precision", oid::FLOAT8),
    ("numeric", oid::NUMERIC),
    ("money", oid::MONEY),
    ("text", oid::TEXT),
    ("character varying", oid::VARCHAR),
    ("character", oid::BPCHAR),
    ("uuid", oid::UUID),
    ("inet", oid::INET),
    ("cidr", oid::CIDR),
    ("json", oid::JSON),
    ("jsonb", oid::JSONB),
    ("bytea", oid::BYTEA),
    ("date", oid::DATE),
    ("timestamp without time zone", oid::TIMESTAMP),
    ("timestamp with time zone", oid::TIMESTAMPTZ),
    ("interval", oid::INTERVAL),
];

/// Whether a column whose catalog `sql-datatype` is `sql_datatype` is read as it is
/// ([`Cast::None`]), known without pg_type: a built-in scalar type of [`BUILTIN_NAMES`] (or an
/// array of one) that [`map_column`] reads without a cast. For guessing a SELECT list before the
/// live catalog is read (XMIN's opening sent ahead); any other name (a domain, an enum, an
/// extension's type) is not guessed.
pub fn reads_as_is(sql_datatype: &str) -> bool {
    let name = sql_datatype.strip_suffix("[]").unwrap_or(sql_datatype);
    let Some(&(_, oid)) = BUILTIN_NAMES.iter().find(|(n, _)| *n == name) else { return false };
    let t = TypeInfo { oid, typname: String::new(), typtype: b'b', typcategory: 0, typelem: 0, typbasetype: 0, typtypmod: -1 };
    map_scalar(&TypeMap::new([]), &t, -1).is_some_and(|c| c.cast == Cast::None)
}

/// Names of the recursive array definitions every stream schema carries (singer-io's).
pub const ARRAY_DEFINITIONS: [(&str, &str, bool); 6] = [
    ("sdc_recursive_integer_array", "integer", false),
    ("sdc_recursive_number_array", "number", false),
    ("sdc_recursive_string_array", "string", false),
    ("sdc_recursive_boolean_array", "boolean", false),
    ("sdc_recursive_timestamp_array", "string", true),
    ("sdc_recursive_object_array", "object", false),
];

/// The `definitions` block of every stream schema: singer-io's six recursive array schemas.
/// `sdc_recursive_number_array` also admits strings, for the elements NaN and ±Infinity.
pub fn array_definitions() -> Value {
    let mut defs = Map::new();
    for (name, base, is_timestamp) in ARRAY_DEFINITIONS {
        let types = if base == "number" { json!(["null", "number", "string", "array"]) } else { json!(["null", base, "array"]) };
        let mut def = Map::new();
        def.insert("type".into(), types);
        if is_timestamp {
            def.insert("format".into(), json!("date-time"));
        }
        def.insert("items".into(), json!({"$ref": format!("#/definitions/{name}")}));
        defs.insert(name.into(), Value::Object(def));
    }
    Value::Object(defs)
}

impl TypeMap {
    /// Builds the map from loaded rows.
    pub fn new(rows: impl IntoIterator<Item = TypeInfo>) -> TypeMap {
        TypeMap { by_oid: rows.into_iter().map(|t| (t.oid, t)).collect() }
    }

    /// The row for `oid`.
    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.by_oid.get(&oid)
    }

    /// The type a value of `oid` is compared as: domains resolved to their base type.
    pub fn base_type(&self, oid: u32) -> u32 {
        self.resolve_domain(oid, -1).map_or(oid, |(t, _)| t.oid)
    }

    /// Follows domains down to their base type, carrying the innermost declared typmod.
    fn resolve_domain(&self, mut oid: u32, mut typmod: i32) -> Option<(&TypeInfo, i32)> {
        for _ in 0..32 {
            let t = self.get(oid)?;
            if t.typtype != b'd' {
                return Some((t, typmod));
            }
            if typmod < 0 {
                typmod = t.typtypmod;
            }
            oid = t.typbasetype;
        }
        None
    }
}

/// Maps one column type (`atttypid`, `atttypmod`) to what we emit, or `None` when we cannot
/// encode it faithfully (composite and pseudo types, arrays of those).
pub fn map_column(types: &TypeMap, typid: u32, typmod: i32) -> Option<ColumnType> {
    let (t, typmod) = types.resolve_domain(typid, typmod)?;
    if t.typcategory == b'A' && t.typelem != 0 {
        let (elem, elem_typmod) = types.resolve_domain(t.typelem, typmod)?;
        let inner = map_scalar(types, elem, elem_typmod)?;
        let definition = array_definition_for(&inner);
        let cast = match inner.cast {
            Cast::None => Cast::None,
            Cast::Text => Cast::TextArray,
            Cast::Numeric => Cast::NumericArray,
            Cast::TextArray | Cast::NumericArray => return None,
        };
        let mut schema = Map::new();
        schema.insert("type".into(), json!(["array"]));
        schema.insert("items".into(), json!({"$ref": format!("#/definitions/{definition}")}));
        return Some(ColumnType { schema, cast, encoder: Encoder::Array(Box::new(inner.encoder)) });
    }
    map_scalar(types, t, typmod)
}

/// With `json_as_object`, json and jsonb columns (not arrays of them) carry their documents as
/// JSON values instead of strings: the schema admits any JSON type.
pub fn json_as_object(mut column: ColumnType) -> ColumnType {
    let document = match column.encoder {
        Encoder::Json => Encoder::JsonDocument,
        Encoder::Jsonb => Encoder::JsonbDocument,
        _ => return column,
    };
    column.encoder = document;
    column.schema.insert("type".into(), json!(["object", "array", "string", "number", "boolean"]));
    column
}

/// With `out_of_range_dates: expanded`, date, timestamp and timestamptz columns (and arrays of
/// them) are written exactly, so their schema drops the `date-time` format (arrays of them refer
/// to the string array definition) that expanded years would fail.
pub fn expanded_dates(mut column: ColumnType) -> ColumnType {
    let expanded = column.encoder.with_out_of_range_dates(OutOfRangeDates::Expanded);
    if expanded == column.encoder {
        return column;
    }
    column.encoder = expanded;
    column.schema.remove("format");
    if column.schema.contains_key("items") {
        column.schema.insert("items".into(), json!({"$ref": "#/definitions/sdc_recursive_string_array"}));
    }
    column
}

impl Encoder {
    /// This encoder with dates and timestamps (also as array elements) written as `dates` says;
    /// other encoders unchanged.
    pub fn with_out_of_range_dates(&self, dates: OutOfRangeDates) -> Encoder {
        match self {
            Encoder::Date(_) => Encoder::Date(dates),
            Encoder::Timestamp(_) => Encoder::Timestamp(dates),
            Encoder::TimestampTz(_) => Encoder::TimestampTz(dates),
            Encoder::Array(inner) => Encoder::Array(Box::new(inner.with_out_of_range_dates(dates))),
            other => other.clone(),
        }
    }
}

/// The recursive definition an array of `inner` refers to.
fn array_definition_for(inner: &ColumnType) -> &'static str {
    match &inner.encoder {
        Encoder::Int2 | Encoder::Int4 | Encoder::Int8 | Encoder::Oid => "sdc_recursive_integer_array",
        Encoder::Float4 | Encoder::Float8 | Encoder::Numeric => "sdc_recursive_number_array",
        Encoder::Bool | Encoder::BitBool => "sdc_recursive_boolean_array",
        Encoder::Date(OutOfRangeDates::Clamp)
        | Encoder::Timestamp(OutOfRangeDates::Clamp)
        | Encoder::TimestampTz(OutOfRangeDates::Clamp) => "sdc_recursive_timestamp_array",
        Encoder::Hstore => "sdc_recursive_object_array",
        _ => "sdc_recursive_string_array",
    }
}

/// Maps a non-array, non-domain type.
fn map_scalar(types: &TypeMap, t: &TypeInfo, typmod: i32) -> Option<ColumnType> {
    let _ = types;
    let plain = |ty: &str, encoder: Encoder| {
        let mut schema = Map::new();
        schema.insert("type".into(), json!([ty]));
        Some(ColumnType { schema, cast: Cast::None, encoder })
    };
    let with_format = |encoder: Encoder| {
        let mut schema = Map::new();
        schema.insert("type".into(), json!(["string"]));
        schema.insert("format".into(), json!("date-time"));
        Some(ColumnType { schema, cast: Cast::None, encoder })
    };
    let integer = |min: &str, max: &str, encoder: Encoder| {
        let mut schema = Map::new();
        schema.insert("type".into(), json!(["integer"]));
        schema.insert("minimum".into(), number(min));
        schema.insert("maximum".into(), number(max));
        Some(ColumnType { schema, cast: Cast::None, encoder })
    };
    let as_text = || {
        let mut schema = Map::new();
        schema.insert("type".into(), json!(["string"]));
        Some(ColumnType { schema, cast: Cast::Text, encoder: Encoder::Text })
    };
    match t.typtype {
        b'e' => return plain("string", Encoder::Text),
        b'r' | b'm' => return as_text(),
        b'c' | b'p' | b'd' => return None,
        _ => {}
    }
    match t.oid {
        oid::BOOL => plain("boolean", Encoder::Bool),
        oid::INT2 => integer("-32768", "32767", Encoder::Int2),
        oid::INT4 => integer("-2147483648", "2147483647", Encoder::Int4),
        oid::INT8 => integer("-9223372036854775808", "9223372036854775807", Encoder::Int8),
        oid::OID => integer("0", "4294967295", Encoder::Oid),
        oid::FLOAT4 => number_or_special(Encoder::Float4),
        oid::FLOAT8 => number_or_special(Encoder::Float8),
        oid::NUMERIC => numeric(typmod),
        oid::MONEY => Some(ColumnType { schema: type_only("number"), cast: Cast::Numeric, encoder: Encoder::Numeric }),
        oid::VARCHAR | oid::BPCHAR => {
            let mut schema = type_only("string");
            if typmod >= 4 {
                schema.insert("maxLength".into(), json!(typmod - 4));
            }
            Some(ColumnType { schema, cast: Cast::None, encoder: Encoder::Text })
        }
        oid::TEXT | oid::NAME => plain("string", Encoder::Text),
        // `"char"` is one raw byte: 0 means empty and bytes >= 128 are not UTF-8; its text form
        // (`\303`) is what the database shows.
        oid::CHAR => as_text(),
        oid::UUID => plain("string", Encoder::Uuid),
        // Not `::text`: `text(inet)` always shows the netmask (`10.0.0.1/32`), unlike inet's
        // output function, which psql, pg_dump and other taps show.
        oid::INET | oid::CIDR => plain("string", Encoder::Inet),
        oid::JSON => plain("string", Encoder::Json),
        oid::JSONB => plain("string", Encoder::Jsonb),
        oid::BYTEA => plain("string", Encoder::Bytea),
        oid::DATE => with_format(Encoder::Date(OutOfRangeDates::Clamp)),
        oid::TIMESTAMP => with_format(Encoder::Timestamp(OutOfRangeDates::Clamp)),
        oid::TIMESTAMPTZ => with_format(Encoder::TimestampTz(OutOfRangeDates::Clamp)),
        oid::TIME => plain("string", Encoder::Time),
        oid::TIMETZ => plain("string", Encoder::TimeTz),
        oid::INTERVAL => plain("string", Encoder::Interval),
        oid::BIT if typmod == 1 => plain("boolean", Encoder::BitBool),
        oid::BIT | oid::VARBIT => plain("string", Encoder::BitString),
        _ if t.typname == "citext" => plain("string", Encoder::Text),
        _ if t.typname == "hstore" => {
            let mut schema = type_only("object");
            schema.insert("properties".into(), json!({}));
            Some(ColumnType { schema, cast: Cast::None, encoder: Encoder::Hstore })
        }
        // Every other base type (macaddr, xml, tsvector, geometric, pg_lsn,
        // extension types such as PostGIS geometry or ltree) is read as its text form, which is
        // exactly what the database holds.
        _ => as_text(),
    }
}

/// `{"type": [ty]}`.
fn type_only(ty: &str) -> Map<String, Value> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!([ty]));
    schema
}

/// A number that may also be one of the strings `NaN`, `Infinity`, `-Infinity`.
fn number_or_special(encoder: Encoder) -> Option<ColumnType> {
    let mut schema = Map::new();
    schema.insert("type".into(), json!(["number", "string"]));
    Some(ColumnType { schema, cast: Cast::None, encoder })
}

/// Significant digits of Python's default decimal context. Singer targets parse numbers as
/// `Decimal` and check `multipleOf` as `value % step`, which raises `decimal.InvalidOperation`
/// (instead of answering) once the quotient `value / step` needs more digits than this.
const PYTHON_DECIMAL_DIGITS: i32 = 28;

/// `numeric(p,s)` gets inclusive bounds (the largest value it holds, `10^(p-s) - 10^-s`, whose
/// digits spell out both p and s) and, when validators can check it, `multipleOf 10^-s`;
/// unconstrained `numeric` gets none (singer-io's caps would reject values the column holds).
/// singer-io writes draft-4 `exclusiveMaximum: true` with `maximum 10^(p-s)`, which draft-6+
/// validators read as "maximum 1"; inclusive bounds mean the same under every draft.
///
/// `multipleOf` is left out when p > 28 and s > 0: `value / 10^-s` can then have more than 28
/// digits, and singer-python's (and any `Decimal`-parsing) validator crashes on such values
/// instead of checking them. With s = 0 the values are JSON integers, which Python checks as
/// `int`, exactly, at any size.
fn numeric(typmod: i32) -> Option<ColumnType> {
    let mut column = number_or_special(Encoder::Numeric)?;
    if typmod >= 4 {
        let precision = ((typmod - 4) >> 16) & 0xffff;
        // PostgreSQL 15 allows negative scales, stored in 11 bits two's complement.
        let raw_scale = (typmod - 4) & 0x7ff;
        let scale = if raw_scale & 0x400 != 0 { raw_scale - 0x800 } else { raw_scale };
        let digits = precision - scale;
        if digits >= 0 && scale >= 0 && precision > 0 {
            let integer = if digits == 0 { "0".to_string() } else { "9".repeat(digits as usize) };
            let max = if scale == 0 { integer } else { format!("{integer}.{}", "9".repeat(scale as usize)) };
            let schema = &mut column.schema;
            schema.insert("maximum".into(), number(&max));
            if precision <= PYTHON_DECIMAL_DIGITS || scale == 0 {
                let step = if scale == 0 { "1".to_string() } else { format!("0.{}1", "0".repeat(scale as usize - 1)) };
                schema.insert("multipleOf".into(), number(&step));
            }
            schema.insert("minimum".into(), number(&format!("-{max}")));
        }
    }
    Some(column)
}

/// A JSON number from its exact decimal text (serde_json keeps it digit for digit).
fn number(text: &str) -> Value {
    serde_json::from_str(text).expect("number literal built from digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map with the built-in types the tests need plus a domain, an enum, hstore and arrays.
    #[test]
    fn common_builtin_types_are_read_as_they_are() {
        for name in ["bigint", "integer", "text", "numeric", "boolean", "timestamp with time zone", "character varying", "jsonb", "uuid"] {
            assert!(reads_as_is(name), "{name}");
            assert!(reads_as_is(&format!("{name}[]")), "{name}[]");
        }
        // money is cast (to numeric); unknown names (domains, enums, extensions) are not guessed.
        for name in ["money", "money[]", "macaddr", "xml", "int4range", "mood", "public.addr", "bit(3)"] {
            assert!(!reads_as_is(name), "{name}");
        }
    }

    fn types() -> TypeMap {
        let t = |oid, name: &str, typtype: u8, cat: u8, elem, base, typmod| TypeInfo {
            oid,
            typname: name.into(),
            typtype,
            typcategory: cat,
            typelem: elem,
            typbasetype: base,
            typtypmod: typmod,
        };
        TypeMap::new([
            t(16, "bool", b'b', b'B', 0, 0, -1),
            t(23, "int4", b'b', b'N', 0, 0, -1),
            t(1007, "_int4", b'b', b'A', 23, 0, -1),
            t(1700, "numeric", b'b', b'N', 0, 0, -1),
            t(1231, "_numeric", b'b', b'A', 1700, 0, -1),
            t(1043, "varchar", b'b', b'S', 0, 0, -1),
            t(790, "money", b'b', b'N', 0, 0, -1),
            t(869, "inet", b'b', b'I', 0, 0, -1),
            t(1041, "_inet", b'b', b'A', 869, 0, -1),
            t(650, "cidr", b'b', b'I', 0, 0, -1),
            t(651, "_cidr", b'b', b'A', 650, 0, -1),
            t(90007, "addr", b'd', b'I', 0, 869, -1),
            t(90008, "addrs", b'd', b'A', 0, 1041, -1),
            t(1560, "bit", b'b', b'V', 0, 0, -1),
            t(90001, "mood", b'e', b'E', 0, 0, -1),
            t(90002, "_mood", b'b', b'A', 90001, 0, -1),
            t(90003, "price", b'd', b'N', 0, 1700, (10 << 16 | 2) + 4),
            t(90004, "hstore", b'b', b'U', 0, 0, -1),
            t(90005, "pair", b'c', b'C', 0, 0, -1),
            t(90006, "_pair", b'b', b'A', 90005, 0, -1),
            t(1082, "date", b'b', b'D', 0, 0, -1),
            t(1114, "timestamp", b'b', b'D', 0, 0, -1),
            t(1184, "timestamptz", b'b', b'D', 0, 0, -1),
            t(1185, "_timestamptz", b'b', b'A', 1184, 0, -1),
            t(3904, "int4range", b'r', b'R', 0, 0, -1),
            t(3905, "_int4range", b'b', b'A', 3904, 0, -1),
        ])
    }

    #[test]
    fn integers_carry_ranges() {
        let c = map_column(&types(), 23, -1).unwrap();
        assert_eq!(Value::Object(c.schema).to_string(), r#"{"maximum":2147483647,"minimum":-2147483648,"type":["integer"]}"#);
        assert_eq!(c.encoder, Encoder::Int4);
    }

    #[test]
    fn numeric_bounds_are_inclusive() {
        let c = map_column(&types(), 1700, (12 << 16 | 2) + 4).unwrap();
        assert_eq!(
            Value::Object(c.schema).to_string(),
            r#"{"maximum":9999999999.99,"minimum":-9999999999.99,"multipleOf":0.01,"type":["number","string"]}"#
        );
        let c = map_column(&types(), 1700, -1).unwrap();
        assert_eq!(Value::Object(c.schema).to_string(), r#"{"type":["number","string"]}"#);
        let c = map_column(&types(), 1700, (1000 << 16) + 4).unwrap();
        assert_eq!(c.schema["maximum"].to_string(), "9".repeat(1000));
        assert_eq!(c.schema["multipleOf"].to_string(), "1");
    }

    #[test]
    fn multiple_of_only_where_a_28_digit_decimal_context_can_check_it() {
        let schema = |p: i32, s: i32| Value::Object(map_column(&types(), 1700, (p << 16 | s) + 4).unwrap().schema);
        // p <= 28: every value / 10^-s has at most 28 digits.
        assert_eq!(schema(28, 10)["multipleOf"].to_string(), "0.0000000001");
        assert_eq!(schema(28, 28)["multipleOf"].to_string(), format!("0.{}1", "0".repeat(27)));
        // p > 28 with a scale: bounds only, and they still carry precision and scale.
        let big = schema(60, 30);
        assert_eq!(big.get("multipleOf"), None, "{big}");
        assert_eq!(big["maximum"].to_string(), format!("{}.{}", "9".repeat(30), "9".repeat(30)));
        assert_eq!(big["minimum"].to_string(), format!("-{}.{}", "9".repeat(30), "9".repeat(30)));
        assert_eq!(schema(29, 1).get("multipleOf"), None);
        // Scale 0: integers, checked exactly at any size.
        assert_eq!(schema(60, 0)["multipleOf"].to_string(), "1");
    }

    #[test]
    fn domains_resolve_to_base_with_their_typmod() {
        let c = map_column(&types(), 90003, -1).unwrap();
        assert_eq!(c.encoder, Encoder::Numeric);
        assert_eq!(c.schema["multipleOf"].to_string(), "0.01");
    }

    #[test]
    fn varchar_length_bit_and_money() {
        let c = map_column(&types(), 1043, 255 + 4).unwrap();
        assert_eq!(c.schema["maxLength"], json!(255));
        assert_eq!(map_column(&types(), 1560, 1).unwrap().encoder, Encoder::BitBool);
        assert_eq!(map_column(&types(), 1560, 8).unwrap().encoder, Encoder::BitString);
        let m = map_column(&types(), 790, -1).unwrap();
        assert_eq!((m.cast, m.encoder), (Cast::Numeric, Encoder::Numeric));
    }

    #[test]
    fn arrays_use_recursive_definitions_and_casts() {
        let a = map_column(&types(), 1007, -1).unwrap();
        assert_eq!(
            Value::Object(a.schema).to_string(),
            r##"{"items":{"$ref":"#/definitions/sdc_recursive_integer_array"},"type":["array"]}"##
        );
        assert_eq!(a.encoder, Encoder::Array(Box::new(Encoder::Int4)));
        let a = map_column(&types(), 3905, -1).unwrap();
        assert_eq!((a.cast, a.encoder), (Cast::TextArray, Encoder::Array(Box::new(Encoder::Text))));
        let e = map_column(&types(), 90002, -1).unwrap();
        assert_eq!(e.cast, Cast::None);
        assert_eq!(map_column(&types(), 1231, -1).unwrap().schema["items"]["$ref"], json!("#/definitions/sdc_recursive_number_array"));
    }

    #[test]
    fn enums_ranges_hstore_text_casts() {
        assert_eq!(map_column(&types(), 90001, -1).unwrap().encoder, Encoder::Text);
        assert_eq!(map_column(&types(), 3904, -1).unwrap().cast, Cast::Text);
        assert_eq!(map_column(&types(), 90004, -1).unwrap().encoder, Encoder::Hstore);
    }

    #[test]
    fn inet_and_cidr_decode_their_binary_form() {
        for oid in [869, 650, 90007] {
            let c = map_column(&types(), oid, -1).unwrap();
            assert_eq!((c.cast, &c.encoder), (Cast::None, &Encoder::Inet), "{oid}");
            assert_eq!(Value::Object(c.schema).to_string(), r#"{"type":["string"]}"#, "{oid}");
        }
        for oid in [1041, 651, 90008] {
            let a = map_column(&types(), oid, -1).unwrap();
            assert_eq!((a.cast, &a.encoder), (Cast::None, &Encoder::Array(Box::new(Encoder::Inet))), "{oid}");
            assert_eq!(
                Value::Object(a.schema).to_string(),
                r##"{"items":{"$ref":"#/definitions/sdc_recursive_string_array"},"type":["array"]}"##,
                "{oid}"
            );
        }
    }

    #[test]
    fn expanded_dates_drop_the_date_time_format() {
        let clamp = OutOfRangeDates::Clamp;
        let expanded = OutOfRangeDates::Expanded;
        for (oid, by_default, exact) in [
            (1082, Encoder::Date(clamp), Encoder::Date(expanded)),
            (1114, Encoder::Timestamp(clamp), Encoder::Timestamp(expanded)),
            (1184, Encoder::TimestampTz(clamp), Encoder::TimestampTz(expanded)),
        ] {
            let c = map_column(&types(), oid, -1).unwrap();
            assert_eq!(c.encoder, by_default);
            assert_eq!(Value::Object(c.schema.clone()).to_string(), r#"{"format":"date-time","type":["string"]}"#);
            let e = expanded_dates(c);
            assert_eq!(e.encoder, exact);
            assert_eq!(Value::Object(e.schema).to_string(), r#"{"type":["string"]}"#);
        }
        let a = map_column(&types(), 1185, -1).unwrap();
        assert_eq!(a.schema["items"]["$ref"], json!("#/definitions/sdc_recursive_timestamp_array"));
        let a = expanded_dates(a);
        assert_eq!(a.encoder, Encoder::Array(Box::new(Encoder::TimestampTz(expanded))));
        assert_eq!(a.schema["items"]["$ref"], json!("#/definitions/sdc_recursive_string_array"));
        for other in [23, 1007, 1700, 1043] {
            let c = map_column(&types(), other, -1).unwrap();
            assert_eq!(expanded_dates(c.clone()), c, "{other}");
        }
    }

    #[test]
    fn json_as_object_changes_json_columns_only() {
        let mut t = types();
        t.by_oid.insert(
            114,
            TypeInfo { oid: 114, typname: "json".into(), typtype: b'b', typcategory: b'U', typelem: 0, typbasetype: 0, typtypmod: -1 },
        );
        t.by_oid.insert(
            199,
            TypeInfo { oid: 199, typname: "_json".into(), typtype: b'b', typcategory: b'A', typelem: 114, typbasetype: 0, typtypmod: -1 },
        );
        let j = json_as_object(map_column(&t, 114, -1).unwrap());
        assert_eq!(j.encoder, Encoder::JsonDocument);
        assert_eq!(j.schema["type"], json!(["object", "array", "string", "number", "boolean"]));
        let a = json_as_object(map_column(&t, 199, -1).unwrap());
        assert_eq!(a.encoder, Encoder::Array(Box::new(Encoder::Json)), "arrays of json stay strings");
        assert_eq!(json_as_object(map_column(&t, 23, -1).unwrap()).encoder, Encoder::Int4);
    }

    #[test]
    fn composites_and_unknown_oids_are_unsupported() {
        assert_eq!(map_column(&types(), 90005, -1), None);
        assert_eq!(map_column(&types(), 90006, -1), None);
        assert_eq!(map_column(&types(), 424242, -1), None);
    }

    #[test]
    fn definitions_are_singer_io_shaped() {
        let d = array_definitions();
        assert_eq!(
            d["sdc_recursive_timestamp_array"].to_string(),
            r##"{"format":"date-time","items":{"$ref":"#/definitions/sdc_recursive_timestamp_array"},"type":["null","string","array"]}"##
        );
        assert_eq!(d.as_object().unwrap().len(), 6);
    }
}
