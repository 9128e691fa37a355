//! One wire value (PostgreSQL binary format) -> its JSON text, appended to a buffer the caller owns.
//!
//! Owns the byte-level decoding behind every [`Encoder`] and the exact text each one writes:
//! NUMERIC digit for digit as `numeric_out` prints it, dates and timestamps as Python's
//! `isoformat` prints them (singer-io's form), intervals as `IntervalStyle = iso_8601` prints
//! them, inet/cidr as `network_out` prints them, arrays as nested lists. Every length is
//! bounds-checked: malformed bytes give a [`DecodeError`], never a panic, and output stays
//! proportional to the input.
//!
//! Not owned here: NULL cells (the caller writes `null`), choosing the encoder (`typemap`),
//! and warning text (the caller reads the `NOTE_*` bits and warns once per column).
//!
//! Known gaps:
//! - Years outside 1..=9999 are clamped to the infinity sentinels by default; with
//!   [`OutOfRangeDates::Expanded`] they are written in ISO 8601 expanded form (`+10000-01-01`,
//!   `-0001-…`), which is valid ISO 8601 but neither RFC 3339 nor parseable by Python's `datetime`.
//! - Date/timestamp infinity is clamped to the sentinels; the caller must warn.
//! - Text-like values assume `client_encoding = UTF8`; anything else is rejected as invalid UTF-8.
//! - `json` is written as a JSON string holding the document, not as embedded JSON.

use std::fmt;

use crate::typemap::{Encoder, OutOfRangeDates};

/// A date/timestamp infinity was written as a sentinel ([`DATE_TIME_MIN`], [`DATE_MAX`], [`TIMESTAMP_MAX`]).
pub const NOTE_INFINITY_CLAMPED: u8 = 1;
/// A year outside 1..=9999 was written in ISO 8601 expanded form (`+10000`, `-0001`).
pub const NOTE_YEAR_OUT_OF_RANGE: u8 = 2;
/// A year outside 1..=9999 was clamped to a sentinel ([`OutOfRangeDates::Clamp`]).
pub const NOTE_YEAR_CLAMPED: u8 = 4;

/// What `-infinity` and dates and timestamps before year 1 are written as (singer-io's
/// `datetime.min`).
pub const DATE_TIME_MIN: &str = "0001-01-01T00:00:00+00:00";
/// What a date of `infinity` or after year 9999 is written as (singer-io's `date.max`).
pub const DATE_MAX: &str = "9999-12-31T00:00:00+00:00";
/// What a timestamp of `infinity` or after year 9999 is written as. Not singer-io's
/// `datetime.max` (`…23:59:59.999999`): singer-check-tap turns each date-time into float seconds
/// since 1970, which round that one up into year 10000, and rejects the record; `.999` (what
/// pipelinewise-tap-postgres writes) survives the rounding and still sorts after every value but
/// those of the last millisecond of year 9999.
pub const TIMESTAMP_MAX: &str = "9999-12-31T23:59:59.999000+00:00";

/// Why a wire value could not be encoded. Its text names the defect, never the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Lowercase phrase naming the defect.
    reason: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Builds a [`DecodeError`]; `const` so every reason below is a constant.
const fn err(reason: &'static str) -> DecodeError {
    DecodeError { reason }
}

/// The value ended before a length or field it announced.
const TRUNCATED: DecodeError = err("truncated value");
/// Bytes were left over after a complete value.
const TRAILING: DecodeError = err("trailing bytes after value");
/// A fixed-size value had the wrong number of bytes.
const WRONG_LENGTH: DecodeError = err("wrong length for a fixed-size value");
/// Text, a hstore key/value, or a json document was not UTF-8.
const INVALID_UTF8: DecodeError = err("invalid utf-8 in text value");

/// Microseconds in one day; `time` may equal it (`24:00:00`).
const USECS_PER_DAY: i64 = 86_400_000_000;
/// Microseconds in one hour.
const USECS_PER_HOUR: i64 = 3_600_000_000;
/// Microseconds in one minute.
const USECS_PER_MINUTE: i64 = 60_000_000;
/// Microseconds in one second.
const USECS_PER_SEC: i64 = 1_000_000;
/// Days from 1970-01-01 (the civil algorithm's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS_FROM_UNIX: i64 = 10_957;

/// NUMERIC sign word: positive.
const NUMERIC_POS: u16 = 0x0000;
/// NUMERIC sign word: negative.
const NUMERIC_NEG: u16 = 0x4000;
/// NUMERIC sign word: NaN.
const NUMERIC_NAN: u16 = 0xC000;
/// NUMERIC sign word: +Infinity.
const NUMERIC_PINF: u16 = 0xD000;
/// NUMERIC sign word: -Infinity.
const NUMERIC_NINF: u16 = 0xF000;
/// Largest display scale PostgreSQL stores (`NUMERIC_DSCALE_MASK`); numeric_recv rejects more.
const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;
/// NUMERIC digits are base 10000.
const NBASE: i16 = 10_000;

/// `timetz` zones must lie strictly inside ±16 hours (PostgreSQL's `TZDISP_LIMIT`).
const TZDISP_LIMIT: i32 = 16 * 3600;
/// Most dimensions an array may have (PostgreSQL's `MAXDIM`).
const MAXDIM: usize = 6;

/// Appends the JSON text for one non-NULL wire value (binary format) to `out`.
///
/// Sets `NOTE_*` bits in `notes` when a special value was rewritten.
///
/// # Errors
///
/// A [`DecodeError`] when the bytes are truncated, oversized or malformed for `encoder`.
/// `out` may then hold partial output; the caller truncates it.
pub fn encode_value(encoder: &Encoder, raw: &[u8], out: &mut Vec<u8>, notes: &mut u8) -> Result<(), DecodeError> {
    match encoder {
        Encoder::Bool => {
            let [b] = fixed::<1>(raw)?;
            // boolrecv treats any nonzero byte as true.
            out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
        }
        Encoder::Int2 => write_i64(out, i16::from_be_bytes(fixed(raw)?).into()),
        Encoder::Int4 => write_i64(out, i32::from_be_bytes(fixed(raw)?).into()),
        Encoder::Int8 => write_i64(out, i64::from_be_bytes(fixed(raw)?)),
        Encoder::Oid => write_u64(out, u32::from_be_bytes(fixed(raw)?).into()),
        Encoder::Float4 => write_f32(out, f32::from_be_bytes(fixed(raw)?)),
        Encoder::Float8 => write_f64(out, f64::from_be_bytes(fixed(raw)?)),
        Encoder::Numeric => write_numeric(out, raw)?,
        Encoder::Text | Encoder::Json => write_json_utf8(out, raw)?,
        Encoder::Jsonb => write_json_utf8(out, jsonb_text(raw)?)?,
        Encoder::JsonDocument => write_json_document(out, raw)?,
        Encoder::JsonbDocument => write_json_document(out, jsonb_text(raw)?)?,
        Encoder::Bytea => write_hex(out, raw),
        Encoder::Uuid => write_uuid(out, &fixed::<16>(raw)?),
        Encoder::Date(dates) => write_date(out, i32::from_be_bytes(fixed(raw)?), *dates, notes),
        Encoder::Time => {
            let micros = i64::from_be_bytes(fixed(raw)?);
            check_time(micros)?;
            out.push(b'"');
            write_time_of_day(out, micros);
            out.push(b'"');
        }
        Encoder::TimeTz => write_timetz(out, &fixed::<12>(raw)?)?,
        Encoder::Timestamp(dates) | Encoder::TimestampTz(dates) => write_timestamp(out, i64::from_be_bytes(fixed(raw)?), *dates, notes),
        Encoder::Interval => write_interval(out, &fixed::<16>(raw)?),
        Encoder::BitBool => {
            let (nbits, bytes) = read_bits(raw)?;
            match bytes.first() {
                Some(b) if nbits > 0 => out.extend_from_slice(if b & 0x80 != 0 { b"true" } else { b"false" }),
                // A bit(1) column cannot be empty; there is no first bit to report.
                _ => return Err(err("empty bit string for a boolean")),
            }
        }
        Encoder::BitString => {
            let (nbits, bytes) = read_bits(raw)?;
            out.reserve(nbits + 2);
            out.push(b'"');
            for i in 0..nbits {
                let bit = bytes.get(i / 8).map_or(0, |b| (b >> (7 - i % 8)) & 1);
                out.push(b'0' + bit);
            }
            out.push(b'"');
        }
        Encoder::Hstore => write_hstore(out, raw)?,
        Encoder::Inet => write_inet(out, raw)?,
        Encoder::Array(inner) => write_array(out, inner, raw, notes)?,
    }
    Ok(())
}

/// The text of a jsonb wire value: version byte 1, then the document's text.
fn jsonb_text(raw: &[u8]) -> Result<&[u8], DecodeError> {
    match raw.split_first() {
        Some((&1, text)) => Ok(text),
        Some(_) => Err(err("unsupported jsonb version")),
        None => Err(TRUNCATED),
    }
}

/// Appends a JSON document as itself (`json_as_object`). The server only stores valid JSON, but
/// the line must stay one valid JSON object whatever arrives, so the text is checked first; raw
/// newlines, which valid JSON holds only as whitespace, become spaces to keep one line.
fn write_json_document(out: &mut Vec<u8>, text: &[u8]) -> Result<(), DecodeError> {
    // UTF-8 first: serde_json does not check it inside strings it skips.
    let text_str = std::str::from_utf8(text).map_err(|_| err("invalid utf-8 in json document"))?;
    if serde_json::from_str::<serde::de::IgnoredAny>(text_str).is_err() {
        return Err(err("invalid json document (or nested deeper than 128 levels)"));
    }
    out.extend(text.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    Ok(())
}

/// Appends `s` as a JSON string literal, quotes included.
///
/// Escapes `"`, `\` and control characters below 0x20 (`\n \r \t \b \f` in short form, the
/// rest as `\u00XX`); non-ASCII passes through as UTF-8, as serde_json writes it.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_escaped(out, s.as_bytes());
}

/// Appends bytes that must be UTF-8 as a JSON string literal, quotes included.
///
/// # Errors
///
/// A [`DecodeError`] when `bytes` is not valid UTF-8; nothing is written then.
pub fn write_json_utf8(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), DecodeError> {
    let s = std::str::from_utf8(bytes).map_err(|_| INVALID_UTF8)?;
    write_json_str(out, s);
    Ok(())
}

/// Appends a timestamp (microseconds since 2000-01-01 00:00:00) as the quoted JSON string
/// [`Encoder::Timestamp`] writes: `"YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00"`.
///
/// Infinities become the sentinels and set [`NOTE_INFINITY_CLAMPED`]; years outside 1..=9999
/// become the sentinels too and set [`NOTE_YEAR_CLAMPED`] ([`OutOfRangeDates::Clamp`]), or use
/// ISO 8601 expanded form and set [`NOTE_YEAR_OUT_OF_RANGE`] ([`OutOfRangeDates::Expanded`]).
pub fn write_timestamp(out: &mut Vec<u8>, micros: i64, dates: OutOfRangeDates, notes: &mut u8) {
    match micros {
        i64::MAX => {
            *notes |= NOTE_INFINITY_CLAMPED;
            write_quoted(out, TIMESTAMP_MAX);
        }
        i64::MIN => {
            *notes |= NOTE_INFINITY_CLAMPED;
            write_quoted(out, DATE_TIME_MIN);
        }
        _ => {
            // Euclidean division floors, so 1999-12-31 23:59:59.999999 is day -1 plus a
            // positive time of day rather than day 0 minus one microsecond.
            let days = micros.div_euclid(USECS_PER_DAY);
            let time = micros.rem_euclid(USECS_PER_DAY);
            let ymd = civil_from_days(days + PG_EPOCH_DAYS_FROM_UNIX);
            if let Some(sentinel) = clamped(ymd.0, dates, DATE_TIME_MIN, TIMESTAMP_MAX) {
                *notes |= NOTE_YEAR_CLAMPED;
                write_quoted(out, sentinel);
                return;
            }
            out.push(b'"');
            write_ymd(out, ymd, notes);
            out.push(b'T');
            write_time_of_day(out, time);
            out.extend_from_slice(b"+00:00\"");
        }
    }
}

/// The sentinel a value of astronomical `year` is written as under `dates`: `min` before year 1,
/// `max` after 9999, `None` when the value is written as it is.
fn clamped(year: i64, dates: OutOfRangeDates, min: &'static str, max: &'static str) -> Option<&'static str> {
    match dates {
        OutOfRangeDates::Clamp if year < 1 => Some(min),
        OutOfRangeDates::Clamp if year > 9999 => Some(max),
        _ => None,
    }
}

/// Appends `text` (no characters that need escaping) as a JSON string.
fn write_quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Reads a fixed-size value, rejecting any other length.
fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], DecodeError> {
    raw.try_into().map_err(|_| WRONG_LENGTH)
}

/// A bounds-checked cursor over one wire value.
struct Reader<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `raw`.
    fn new(raw: &'a [u8]) -> Reader<'a> {
        Reader { rest: raw }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(TRUNCATED);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        fixed(self.take(N)?)
    }

    /// The next big-endian `u16`.
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// The next big-endian `i16`.
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// The next big-endian `i32`.
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A length-prefixed field: `None` for length -1 (NULL), an error for other negatives.
    fn field(&mut self, negative: DecodeError) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.i32()? {
            -1 => Ok(None),
            len => Ok(Some(self.take(usize::try_from(len).map_err(|_| negative)?)?)),
        }
    }

    /// How many bytes are left.
    fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Succeeds only if every byte was read.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(TRAILING) }
    }
}

/// Two ASCII digits for every value 0..=99, for the fixed-width fields of dates and times
/// ([`write_2`], [`write_padded`]): hand-written for speed on the hot path, where a `write!`
/// per field would go through `fmt`; free-standing integers go through `itoa`.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `v` in decimal (itoa: two digits per division, in a stack buffer).
fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `v` in decimal with a leading `-` when negative.
fn write_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `v` in decimal, zero-padded on the left to at least `width` digits.
fn write_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut digits = 1;
    let mut rest = v / 10;
    while rest > 0 {
        digits += 1;
        rest /= 10;
    }
    for _ in digits..width {
        out.push(b'0');
    }
    write_u64(out, v);
}

/// Appends `v` (0..=99) as exactly two digits.
fn write_2(out: &mut Vec<u8>, v: u64) {
    let pair = (v % 100) as usize * 2;
    out.extend_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
}

/// Appends a float8; non-finite values as the strings singer-io uses, since JSON has no NaN.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"\"Infinity\"" as &[u8] } else { b"\"-Infinity\"" });
    } else {
        let start = out.len();
        // serde_json prints the shortest round-trip digits. Writing into a Vec cannot fail,
        // so the io result carries nothing.
        let _ = serde_json::to_writer(&mut *out, &v);
        drop_exponent_plus(out, start);
    }
}

/// Appends a float4 at its own precision (`1.1`, not `1.100000023841858`).
fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"\"Infinity\"" as &[u8] } else { b"\"-Infinity\"" });
    } else {
        let start = out.len();
        // As in write_f64: a Vec writer cannot fail.
        let _ = serde_json::to_writer(&mut *out, &v);
        drop_exponent_plus(out, start);
    }
}

/// Turns `1e+300` into `1e300` in the float written from `start`.
///
/// Older serde_json printed floats with ryu (`1e300`); 1.0.154 prints them with zmij
/// (`1e+300`). Both are valid JSON; we keep ryu's form so output does not change with
/// the serde_json version.
fn drop_exponent_plus(out: &mut Vec<u8>, start: usize) {
    if let Some(i) = out[start..].iter().position(|&b| b == b'+') {
        out.remove(start + i);
    }
}

/// Appends a NUMERIC exactly as PostgreSQL's `numeric_out` (`get_str_from_var`) prints it.
///
/// Wire: u16 ndigits, i16 weight, u16 sign, u16 dscale, then ndigits base-10000 digits; the
/// value is `sum(digit[i] * 10000^(weight - i))`, printed with exactly dscale decimals.
///
/// Hand-written for exactness: `rust_decimal` rounds past scale 28 and refuses NaN, ±Infinity
/// and values over 96 bits, which NUMERIC holds.
fn write_numeric(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(raw);
    // numeric_send writes ndigits as int16 but numeric_recv reads it as uint16: the largest
    // numerics have up to 36864 digits, which a signed read would take as negative.
    let ndigits = usize::from(r.u16()?);
    let weight = i32::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = r.u16()?;
    let digits = r.take(ndigits * 2)?;
    r.finish()?;
    match sign {
        NUMERIC_POS | NUMERIC_NEG => {}
        NUMERIC_NAN => {
            out.extend_from_slice(b"\"NaN\"");
            return Ok(());
        }
        NUMERIC_PINF => {
            out.extend_from_slice(b"\"Infinity\"");
            return Ok(());
        }
        NUMERIC_NINF => {
            out.extend_from_slice(b"\"-Infinity\"");
            return Ok(());
        }
        _ => return Err(err("invalid numeric sign")),
    }
    // dscale bounds the fraction and the i16 weight bounds the integer part (131072 digits),
    // so even a hostile header cannot make the output large.
    if dscale > NUMERIC_DSCALE_MAX {
        return Err(err("numeric scale out of range"));
    }
    if digits.chunks_exact(2).any(|d| !(0..NBASE).contains(&i16::from_be_bytes([d[0], d[1]]))) {
        return Err(err("numeric digit out of range"));
    }
    // Digits past ndigits (trailing zero groups the server omits) and before 0 read as 0.
    let digit = |d: i32| -> u64 {
        usize::try_from(d).ok().and_then(|d| digits.get(d * 2..d * 2 + 2)).map_or(0, |b| u64::from(u16::from_be_bytes([b[0], b[1]])))
    };

    let start = out.len();
    if sign == NUMERIC_NEG {
        out.push(b'-');
    }
    let mut d;
    if weight < 0 {
        out.push(b'0');
        d = weight + 1;
    } else {
        // PostgreSQL suppresses leading zeros only within the first group because its
        // stored digits never start with a zero group; skipping whole zero groups too keeps
        // a hostile unnormalized input valid JSON and changes nothing for real values.
        let mut started = false;
        for g in 0..=weight {
            let dig = digit(g);
            if started {
                write_padded(out, dig, 4);
            } else if dig != 0 || g == weight {
                write_u64(out, dig);
                started = true;
            }
        }
        d = weight + 1;
    }
    if dscale > 0 {
        out.push(b'.');
        // Write whole groups, then cut back to dscale digits, as get_str_from_var does:
        // numeric_out truncates (the server already rounded to dscale).
        let end = out.len() + usize::from(dscale);
        let mut written = 0;
        while written < dscale {
            write_padded(out, digit(d), 4);
            d += 1;
            written += 4;
        }
        out.truncate(end);
    }
    // numeric_recv normalizes a value whose visible digits are all zero to positive, so
    // `-0.000` can never be printed; match it for hostile inputs with sign NEG.
    if sign == NUMERIC_NEG && !out[start..].iter().any(|b| matches!(b, b'1'..=b'9')) {
        out.remove(start);
    }
    Ok(())
}

/// What follows each byte in an escape, or 0 when the byte is written as is.
/// `u` means the `\u00XX` form.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Lowercase hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` (already known to be UTF-8) as a JSON string, copying unescaped runs whole.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if esc == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.push(b'\\');
            out.push(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends `bytes` as a JSON string of lowercase hex, no `\x` prefix.
fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xF)]);
    }
    out.push(b'"');
}

/// Appends a uuid as `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"`.
fn write_uuid(out: &mut Vec<u8>, bytes: &[u8; 16]) {
    out.push(b'"');
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xF)]);
    }
    out.push(b'"');
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), with
/// astronomical years (1 BC = 0). Howard Hinnant's `civil_from_days`; exact for any i64 days
/// a PostgreSQL date or timestamp can hold.
///
/// Hand-written because PostgreSQL's dates go beyond chrono's: a date reaches year 5874897,
/// `chrono::NaiveDate` stops near year 262,000.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based month
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe as i64 + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `YYYY-MM-DD` for an astronomical (year, month, day); years outside 1..=9999 in
/// expanded form.
fn write_ymd(out: &mut Vec<u8>, (year, month, day): (i64, u64, u64), notes: &mut u8) {
    if (1..=9999).contains(&year) {
        // The common case, two digit pairs without a division loop.
        write_2(out, year as u64 / 100);
        write_2(out, year as u64 % 100);
    } else {
        // ISO 8601 expanded years need an explicit sign; year 0 is 1 BC, hence `+0000`.
        *notes |= NOTE_YEAR_OUT_OF_RANGE;
        out.push(if year < 0 { b'-' } else { b'+' });
        write_padded(out, year.unsigned_abs(), 4);
    }
    out.push(b'-');
    write_2(out, month);
    out.push(b'-');
    write_2(out, day);
}

/// Appends a date as `"YYYY-MM-DDT00:00:00+00:00"`; infinities, and years outside 1..=9999
/// under [`OutOfRangeDates::Clamp`], as the sentinels (see [`write_timestamp`] for the notes).
fn write_date(out: &mut Vec<u8>, days: i32, dates: OutOfRangeDates, notes: &mut u8) {
    let sentinel = match days {
        i32::MAX => {
            *notes |= NOTE_INFINITY_CLAMPED;
            DATE_MAX
        }
        i32::MIN => {
            *notes |= NOTE_INFINITY_CLAMPED;
            DATE_TIME_MIN
        }
        _ => {
            let ymd = civil_from_days(i64::from(days) + PG_EPOCH_DAYS_FROM_UNIX);
            match clamped(ymd.0, dates, DATE_TIME_MIN, DATE_MAX) {
                Some(sentinel) => {
                    *notes |= NOTE_YEAR_CLAMPED;
                    sentinel
                }
                None => {
                    out.push(b'"');
                    write_ymd(out, ymd, notes);
                    out.extend_from_slice(b"T00:00:00+00:00\"");
                    return;
                }
            }
        }
    };
    write_quoted(out, sentinel);
}

/// The (earliest, latest) sentinels values of `encoder` (or of its array elements) are clamped
/// to: dates end at [`DATE_MAX`], timestamps at [`TIMESTAMP_MAX`].
pub fn sentinels(encoder: &Encoder) -> (&'static str, &'static str) {
    match encoder {
        Encoder::Date(_) => (DATE_TIME_MIN, DATE_MAX),
        Encoder::Array(inner) => sentinels(inner),
        _ => (DATE_TIME_MIN, TIMESTAMP_MAX),
    }
}

/// Appends the exact text of a value of a date or timestamp encoder (ISO 8601 expanded years,
/// whatever the encoder's [`OutOfRangeDates`]): what a bookmark keeps when the record got a
/// sentinel. Other encoders write as [`encode_value`] does.
///
/// # Errors
///
/// As [`encode_value`].
pub fn encode_exact(encoder: &Encoder, raw: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    encode_value(&encoder.with_out_of_range_dates(OutOfRangeDates::Expanded), raw, out, &mut 0)
}

/// Rejects a time of day outside `00:00:00..=24:00:00`, as `time_recv` does.
fn check_time(micros: i64) -> Result<(), DecodeError> {
    if (0..=USECS_PER_DAY).contains(&micros) { Ok(()) } else { Err(err("time out of range")) }
}

/// Appends `HH:MM:SS`, plus `.ffffff` when the microseconds are nonzero (Python's isoformat).
/// `micros` must be in `0..=USECS_PER_DAY`.
fn write_time_of_day(out: &mut Vec<u8>, micros: i64) {
    let micros = micros.unsigned_abs();
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    write_2(out, secs / 3600);
    out.push(b':');
    write_2(out, secs / 60 % 60);
    out.push(b':');
    write_2(out, secs % 60);
    if frac != 0 {
        out.push(b'.');
        write_2(out, frac / 10_000);
        write_2(out, frac / 100 % 100);
        write_2(out, frac % 100);
    }
}

/// Appends a timetz (i64 micros, i32 zone in seconds west of UTC) as `"HH:MM:SS[.ffffff]+HH:MM[:SS]"`.
fn write_timetz(out: &mut Vec<u8>, raw: &[u8; 12]) -> Result<(), DecodeError> {
    let mut r = Reader::new(raw);
    let micros = i64::from_be_bytes(r.array()?);
    let zone = r.i32()?;
    check_time(micros)?;
    // Bounding the zone also keeps its hours to two digits.
    if zone <= -TZDISP_LIMIT || zone >= TZDISP_LIMIT {
        return Err(err("time zone offset out of range"));
    }
    out.push(b'"');
    write_time_of_day(out, micros);
    // PostgreSQL stores the zone west-positive; ISO 8601 offsets are east-positive.
    out.push(if zone > 0 { b'-' } else { b'+' });
    let offset = u64::from(zone.unsigned_abs());
    write_2(out, offset / 3600);
    out.push(b':');
    write_2(out, offset / 60 % 60);
    if offset % 60 != 0 {
        out.push(b':');
        write_2(out, offset % 60);
    }
    out.push(b'"');
    Ok(())
}

/// Appends an interval (i64 micros, i32 days, i32 months) exactly as PostgreSQL's
/// `EncodeInterval` prints it under `IntervalStyle = iso_8601`, as a JSON string.
fn write_interval(out: &mut Vec<u8>, raw: &[u8; 16]) {
    let mut time = i64::from_be_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]);
    let days = i32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let months = i32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]);
    // PostgreSQL 17 marks infinite intervals by setting every field to its extreme.
    if time == i64::MAX && days == i32::MAX && months == i32::MAX {
        out.extend_from_slice(b"\"infinity\"");
        return;
    }
    if time == i64::MIN && days == i32::MIN && months == i32::MIN {
        out.extend_from_slice(b"\"-infinity\"");
        return;
    }
    // interval2tm: C division truncates toward zero, as Rust's does, so each part keeps the
    // sign of its field and mixed signs print part by part (`P1DT-1S`).
    let years = i64::from(months / 12);
    let months = i64::from(months % 12);
    let days = i64::from(days);
    let hours = time / USECS_PER_HOUR;
    time -= hours * USECS_PER_HOUR;
    let minutes = time / USECS_PER_MINUTE;
    time -= minutes * USECS_PER_MINUTE;
    let secs = time / USECS_PER_SEC;
    let fsec = time - secs * USECS_PER_SEC;

    out.push(b'"');
    if years == 0 && months == 0 && days == 0 && hours == 0 && minutes == 0 && secs == 0 && fsec == 0 {
        out.extend_from_slice(b"PT0S\"");
        return;
    }
    out.push(b'P');
    write_iso_part(out, years, b'Y');
    write_iso_part(out, months, b'M');
    write_iso_part(out, days, b'D');
    if hours != 0 || minutes != 0 || secs != 0 || fsec != 0 {
        out.push(b'T');
    }
    write_iso_part(out, hours, b'H');
    write_iso_part(out, minutes, b'M');
    if secs != 0 || fsec != 0 {
        // AppendSeconds prints magnitudes, so one sign covers seconds and fraction.
        if secs < 0 || fsec < 0 {
            out.push(b'-');
        }
        write_u64(out, secs.unsigned_abs());
        if fsec != 0 {
            out.push(b'.');
            let mut frac = fsec.unsigned_abs();
            let mut width = 6;
            while frac.is_multiple_of(10) {
                frac /= 10;
                width -= 1;
            }
            write_padded(out, frac, width);
        }
        out.push(b'S');
    }
    out.push(b'"');
}

/// Appends `{value}{unit}` when `value` is nonzero (`AddISO8601IntPart`).
fn write_iso_part(out: &mut Vec<u8>, value: i64, unit: u8) {
    if value != 0 {
        write_i64(out, value);
        out.push(unit);
    }
}

/// Splits a bit/varbit value into its bit count and exactly `ceil(n/8)` data bytes.
fn read_bits(raw: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    let mut r = Reader::new(raw);
    let nbits = usize::try_from(r.i32()?).map_err(|_| err("negative bit string length"))?;
    let bytes = r.take(nbits.div_ceil(8))?;
    r.finish()?;
    Ok((nbits, bytes))
}

/// Appends a hstore (i32 count, then key/value pairs with i32 lengths) as a JSON object in
/// wire order, NULL values as `null`.
fn write_hstore(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(raw);
    let count = r.i32()?;
    if count < 0 {
        return Err(err("negative hstore pair count"));
    }
    out.push(b'{');
    // Each pair reads at least 8 bytes, so a lying count runs out of input quickly.
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        let key = r.field(err("negative hstore key length"))?.ok_or(err("null hstore key"))?;
        write_json_utf8(out, key)?;
        out.push(b':');
        match r.field(err("negative hstore value length"))? {
            Some(value) => write_json_utf8(out, value)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    r.finish()?;
    out.push(b'}');
    Ok(())
}

/// `inet`/`cidr` family byte for IPv4 (`PGSQL_AF_INET`).
const PGSQL_AF_INET: u8 = 2;
/// `inet`/`cidr` family byte for IPv6 (`PGSQL_AF_INET6`).
const PGSQL_AF_INET6: u8 = 3;

/// Appends an inet or cidr exactly as PostgreSQL's `network_out` prints it, as a JSON string.
///
/// Wire (`network_send`): family, netmask bits, is_cidr (0/1), address length (4 or 16), then
/// the address bytes. `network_out` prints `pg_inet_net_ntop` (the netmask only when it is not
/// the full width) and, for cidr, appends the netmask when that left it out. A cidr with host
/// bits set (which `cidr_recv` rejects and the server never sends) prints as it is.
fn write_inet(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(raw);
    let [family, bits, is_cidr, nb] = r.array()?;
    let (size, max_bits) = match family {
        PGSQL_AF_INET => (4, 32),
        PGSQL_AF_INET6 => (16, 128),
        _ => return Err(err("invalid inet address family")),
    };
    if bits > max_bits {
        return Err(err("inet netmask length out of range"));
    }
    if is_cidr > 1 {
        return Err(err("invalid inet cidr flag"));
    }
    if usize::from(nb) != size {
        return Err(err("wrong inet address length for its family"));
    }
    let addr = r.take(size)?;
    r.finish()?;
    out.push(b'"');
    match <&[u8; 16]>::try_from(addr) {
        Ok(v6) => write_ipv6(out, v6),
        Err(_) => write_ipv4(out, addr),
    }
    if bits != max_bits || is_cidr == 1 {
        out.push(b'/');
        write_u64(out, bits.into());
    }
    out.push(b'"');
    Ok(())
}

/// Appends octets in dotted decimal, all of them (`inet_net_ntop_ipv4`, `decoct`).
fn write_ipv4(out: &mut Vec<u8>, octets: &[u8]) {
    for (i, &o) in octets.iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        write_u64(out, o.into());
    }
}

/// Appends an IPv6 address as PostgreSQL's `inet_net_ntop_ipv6` prints it (without netmask):
/// lowercase hex words without leading zeros, the first longest run of two or more zero words
/// as `::`, and the last four bytes as dotted decimal for `::a.b.c.d` (six leading zero words)
/// and `::ffff:a.b.c.d` (five, then 0xffff).
///
/// Hand-written because `std::net::Ipv6Addr`'s Display differs from PostgreSQL's text (it
/// prints `::a.b.c.d` forms in hex, for one), and the server's text is the contract.
fn write_ipv6(out: &mut Vec<u8>, addr: &[u8; 16]) {
    let words: [u16; 8] = std::array::from_fn(|i| u16::from_be_bytes([addr[2 * i], addr[2 * i + 1]]));
    // A later run replaces the best only when strictly longer, so ties go to the first.
    let (mut best_base, mut best_len) = (0, 0);
    let (mut cur_base, mut cur_len) = (0, 0);
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            if cur_len == 0 {
                cur_base = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                (best_base, best_len) = (cur_base, cur_len);
            }
        } else {
            cur_len = 0;
        }
    }
    if best_len < 2 {
        best_len = 0;
    }
    let in_run = |i: usize| best_len > 0 && (best_base..best_base + best_len).contains(&i);
    for (i, &w) in words.iter().enumerate() {
        if in_run(i) {
            if i == best_base {
                out.push(b':');
            }
            continue;
        }
        if i != 0 {
            out.push(b':');
        }
        // The C code also names `best.len == 7 && words[7] != 1`, but word 6 then lies inside
        // the run, so that branch is never reached (`::2` prints as `::2`).
        if i == 6 && best_len > 0 && best_base == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            write_ipv4(out, &addr[12..]);
            break;
        }
        write_hex_word(out, w);
    }
    if best_len > 0 && best_base + best_len == words.len() {
        out.push(b':');
    }
}

/// Appends `w` in lowercase hex without leading zeros (`%x`).
fn write_hex_word(out: &mut Vec<u8>, w: u16) {
    let mut started = false;
    for shift in [12u16, 8, 4, 0] {
        let nibble = (w >> shift) & 0xF;
        if started || nibble != 0 || shift == 0 {
            out.push(HEX[usize::from(nibble)]);
            started = true;
        }
    }
}

/// Appends an array as nested JSON lists, one level per dimension, elements in row-major
/// order encoded by `inner`. Lower bounds are dropped; any array with no elements is `[]`,
/// as PostgreSQL itself makes every zero-element array dimensionless.
fn write_array(out: &mut Vec<u8>, inner: &Encoder, raw: &[u8], notes: &mut u8) -> Result<(), DecodeError> {
    let mut r = Reader::new(raw);
    let ndim = usize::try_from(r.i32()?).map_err(|_| err("negative array dimension count"))?;
    if ndim > MAXDIM {
        return Err(err("too many array dimensions"));
    }
    let flags = r.i32()?;
    if flags != 0 && flags != 1 {
        return Err(err("invalid array flags"));
    }
    let _element_oid = r.take(4)?;
    let mut dims = [0usize; MAXDIM];
    for dim in dims.iter_mut().take(ndim) {
        *dim = usize::try_from(r.i32()?).map_err(|_| err("negative array dimension"))?;
        let _lower_bound = r.i32()?;
    }
    let dims = &dims[..ndim];
    // Saturating: any product too big for usize is far past the input size anyway.
    let nitems = if ndim == 0 || dims.contains(&0) { 0 } else { dims.iter().fold(1usize, |n, &d| n.saturating_mul(d)) };
    if nitems == 0 {
        r.finish()?;
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    // Every element has at least its 4-byte length, so this caps the work (and the brackets
    // written) by the input size before writing anything.
    if nitems > r.remaining() / 4 {
        return Err(err("array dimensions exceed its data"));
    }
    write_array_level(out, inner, dims, &mut r, notes)?;
    r.finish()
}

/// Appends one `[...]` level of an array: elements at the last dimension, sublists above it.
fn write_array_level(out: &mut Vec<u8>, inner: &Encoder, dims: &[usize], r: &mut Reader<'_>, notes: &mut u8) -> Result<(), DecodeError> {
    let Some((&len, below)) = dims.split_first() else {
        return Ok(());
    };
    out.push(b'[');
    for i in 0..len {
        if i > 0 {
            out.push(b',');
        }
        if below.is_empty() {
            match r.field(err("negative array element length"))? {
                Some(element) => encode_value(inner, element, out, notes)?,
                None => out.extend_from_slice(b"null"),
            }
        } else {
            write_array_level(out, inner, below, r, notes)?;
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Wire bytes and expected text come from a PostgreSQL 15 server (`encode(x_send(v),
    //! 'hex')` and `v::text`, `IntervalStyle = iso_8601`, `TimeZone = UTC`) unless a case
    //! says it is hand-made (hostile or unnormalized input the server never sends).

    use super::*;

    /// Decodes a hex string into bytes.
    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Encodes `raw`, returning the text (or error) and the notes it set.
    fn run(encoder: &Encoder, raw: &[u8]) -> (Result<String, DecodeError>, u8) {
        let mut out = Vec::new();
        let mut notes = 0;
        let result = encode_value(encoder, raw, &mut out, &mut notes);
        (result.map(|()| String::from_utf8(out).expect("output is UTF-8")), notes)
    }

    /// Asserts each `(hex, expected)` encodes to exactly `expected`, which must be valid JSON.
    fn check(encoder: Encoder, cases: &[(&str, &str)]) {
        for &(hex, expected) in cases {
            let (got, _) = run(&encoder, &unhex(hex));
            let got = got.unwrap_or_else(|e| panic!("{encoder:?} {hex}: {e}"));
            assert_eq!(got, expected, "{encoder:?} {hex}");
            serde_json::from_str::<serde_json::Value>(&got).unwrap_or_else(|e| panic!("{got}: {e}"));
        }
    }

    /// Asserts each `(hex, expected, notes)` encodes to `expected` and sets exactly `notes`.
    fn check_notes(encoder: Encoder, cases: &[(&str, &str, u8)]) {
        for &(hex, expected, notes) in cases {
            let (got, got_notes) = run(&encoder, &unhex(hex));
            assert_eq!(got.as_deref(), Ok(expected), "{encoder:?} {hex}");
            assert_eq!(got_notes, notes, "{encoder:?} {hex}");
        }
    }

    /// Asserts each hex input is rejected.
    fn check_rejects(encoder: Encoder, cases: &[&str]) {
        for hex in cases {
            let (got, _) = run(&encoder, &unhex(hex));
            assert!(got.is_err(), "{encoder:?} {hex} gave {got:?}");
        }
    }

    /// `numeric_send` / `::text` pairs.
    const NUMERICS: &[(&str, &str)] = &[
        ("0000000000000000", "0"),
        ("0000000000000003", "0.000"),
        ("000200000000000100011388", "1.5"),
        ("0002000040000002000c1388", "-12.50"),
        ("0001ffff00000005000c", "0.00120"),
        ("000100090000000003e8", "1000000000000000000000000000000000000000"),
        ("0001fff3000000320064", "0.00000000000000000000000000000000000000000000000001"),
        ("0001fff3400000320064", "-0.00000000000000000000000000000000000000000000000001"),
        ("0001fffe40000007000a", "-0.0000001"),
        ("0006000200000009000109291a852694153803e8", "123456789.987654321"),
        ("0002000000000004270f270f", "9999.9999"),
        ("00010001000000000001", "10000"),
        ("00010000000000000001", "1"),
        ("00010000400000000001", "-1"),
        ("00010002000000000001", "100000000"),
        ("0001ffff0000000103e8", "0.1"),
        ("0004000100000007000109291a850078", "12345.6789012"),
        ("000200000000000800011388", "1.50000000"),
        ("0001fffe0000000a03e8", "0.0000100000"),
        ("0004000100000008270f270f00000001", "99999999.00000001"),
        ("0001fffe00000008270f", "0.00009999"),
        ("00010005400000000005", "-500000000000000000000"),
        (
            "0010000940000017270f270f270f270f270f270f270f270f270f270f0000000000000000000004ce",
            "-9999999999999999999999999999999999999999.00000000000000000000123",
        ),
        ("0003fff400000038007b11d722c5", "0.00000000000000000000000000000000000000000000012345678901"),
        ("00000000c0000000", "\"NaN\""),
        // The server sends dscale 32 with infinities; it means nothing there.
        ("00000000d0000020", "\"Infinity\""),
        ("00000000f0000020", "\"-Infinity\""),
    ];

    #[test]
    fn numeric_matches_numeric_out() {
        check(Encoder::Numeric, NUMERICS);
    }

    #[test]
    fn numeric_big_values_digit_for_digit() {
        // repeat('1234567890',100)::numeric: 250 groups cycling 1234 5678 9012 3456 7890.
        let hex = format!("00fa00f900000000{}", "04d2162e23340d801ed2".repeat(50));
        let (got, _) = run(&Encoder::Numeric, &unhex(&hex));
        assert_eq!(got.unwrap(), "1234567890".repeat(100));

        // '1e131068'::numeric, the largest power of ten: weight 32767, 131069 digits.
        let (got, _) = run(&Encoder::Numeric, &unhex("00017fff000000000001"));
        assert_eq!(got.unwrap(), format!("1{}", "0".repeat(131_068)));

        // '1e-16383'::numeric, the smallest positive value at the largest scale.
        let (got, _) = run(&Encoder::Numeric, &unhex("0001f00000003fff000a"));
        assert_eq!(got.unwrap(), format!("0.{}1", "0".repeat(16_382)));

        // 131072 nines '.' 16383 nines: ndigits 36864 goes out as 0x9000, negative as int16.
        let mut raw = unhex("90007fff00003fff");
        for _ in 0..36_864 {
            raw.extend_from_slice(&[0x27, 0x0f]);
        }
        let (got, _) = run(&Encoder::Numeric, &raw);
        assert_eq!(got.unwrap(), format!("{}.{}", "9".repeat(131_072), "9".repeat(16_383)));
    }

    #[test]
    fn numeric_unnormalized_and_hostile() {
        // Hand-made: forms numeric_recv accepts but numeric_send never produces.
        check(
            Encoder::Numeric,
            &[
                // A leading zero group must not print as leading zeros.
                ("000200010000000000000005", "5"),
                ("00010003000000000000", "0"),
                // Nonzero digits hidden by dscale: numeric_recv makes it +0.
                ("0001fffe400000020005", "0.00"),
                ("0001fffe400000080005", "-0.00000005"),
                ("0000000040000002", "0.00"),
            ],
        );
        // Hostile but bounded: 131072 integer digits, 16383 fraction digits, nothing more.
        let (got, _) = run(&Encoder::Numeric, &unhex("00017fff00003fff270f"));
        assert_eq!(got.unwrap().len(), 131_072 + 1 + 16_383);
        let (got, _) = run(&Encoder::Numeric, &unhex("000080000000000a"));
        assert_eq!(got.unwrap(), "0.0000000000");
        check_rejects(
            Encoder::Numeric,
            &[
                "",
                "000100000000",
                "00010000000000000001ff",
                "00020000000000000001",
                "0000000000004000",
                "00010000000000002710",
                "0001000000000000ffff",
                "0000000080000000",
                "0000000000010000",
            ],
        );
    }

    /// `inet_send`/`cidr_send` and the plain output (`concat(v)`, which calls `network_out`).
    const INETS: &[(&str, &str)] = &[
        ("022000040a000001", "\"10.0.0.1\""),                                   // inet '10.0.0.1'
        ("02180004c0a80001", "\"192.168.0.1/24\""),                             // inet '192.168.0.1/24'
        ("0200000400000000", "\"0.0.0.0/0\""),                                  // inet '0.0.0.0/0'
        ("02200004ffffffff", "\"255.255.255.255\""),                            // inet '255.255.255.255'
        ("0220000400000000", "\"0.0.0.0\""),                                    // inet '0.0.0.0'
        ("022000040a000001", "\"10.0.0.1\""),                                   // inet '10.0.0.1/32'
        ("021f000401020304", "\"1.2.3.4/31\""),                                 // inet '1.2.3.4/31'
        ("020800047f000001", "\"127.0.0.1/8\""),                                // inet '127.0.0.1/8'
        ("020801040a000000", "\"10.0.0.0/8\""),                                 // cidr '10.0.0.0/8'
        ("02180104c0a80000", "\"192.168.0.0/24\""),                             // cidr '192.168.0.0/24'
        ("0200010400000000", "\"0.0.0.0/0\""),                                  // cidr '0.0.0.0/0'
        ("022001040a000001", "\"10.0.0.1/32\""),                                // cidr '10.0.0.1/32'
        ("021001040a010000", "\"10.1.0.0/16\""),                                // cidr '10.1'
        ("0380001000000000000000000000000000000000", "\"::\""),                 // inet '::'
        ("0380001000000000000000000000000000000001", "\"::1\""),                // inet '::1'
        ("0380001000000000000000000000000000000001", "\"::1\""),                // inet '::1/128'
        ("03400010fe800000000000000000000000000001", "\"fe80::1/64\""),         // inet 'fe80::1/64'
        ("0380001020010db8000000000000000000000000", "\"2001:db8::\""),         // inet '2001:db8::'
        ("0380001020010db8000000000001000000000001", "\"2001:db8::1:0:0:1\""),  // inet '2001:db8:0:0:1:0:0:1'
        ("0380001020010000000000010000000000000001", "\"2001:0:0:1::1\""),      // inet '2001:0:0:1::1'
        ("0380001000000000000000000000ffff01020304", "\"::ffff:1.2.3.4\""),     // inet '::ffff:1.2.3.4'
        ("0378001000000000000000000000ffff01020304", "\"::ffff:1.2.3.4/120\""), // inet '::ffff:1.2.3.4/120'
        ("0380001000000000000000000000000001020304", "\"::1.2.3.4\""),          // inet '::1.2.3.4'
        ("038000100000000000000000ffff000001020304", "\"::ffff:0:102:304\""),   // inet '::ffff:0:1.2.3.4'
        ("0380001000010000000000000000000000000000", "\"1::\""),                // inet '1::'
        ("0380001000010002000300040005000600070008", "\"1:2:3:4:5:6:7:8\""),    // inet '1:2:3:4:5:6:7:8'
        ("0380001000010000000000000000000000000008", "\"1::8\""),               // inet '1:0:0:0:0:0:0:8'
        ("0380001000000000000000000000000000000002", "\"::2\""),                // inet '::2'
        ("0380001000000000000000000000ffff00000000", "\"::ffff:0.0.0.0\""),     // inet '::ffff:0.0.0.0'
        ("0380001000000000000000000000ffff00000001", "\"::ffff:0.0.0.1\""),     // inet '::ffff:0.0.0.1'
        ("0380001000000000000000000000000000000102", "\"::102\""),              // inet '::0.0.1.2'
        ("0380001000000000000000000000000100000000", "\"::1:0:0\""),            // inet '::1:0:0'
        ("038000100000000000000000000000000000ffff", "\"::ffff\""),             // inet '::ffff'
        ("03800010000000000000000000000000ffff0000", "\"::255.255.0.0\""),      // inet '::ffff:0'
        ("0380001000000000000000000000fffe01020304", "\"::fffe:102:304\""),     // inet '::fffe:1.2.3.4'
        ("0380001000000000000000000001ffff01020304", "\"::1:ffff:102:304\""),   // inet '0:0:0:0:1:ffff:1.2.3.4'
        ("0380001000010000000200000003000000040000", "\"1:0:2:0:3:0:4:0\""),    // inet '1:0:2:0:3:0:4:0'
        ("0380001000010000000000020000000000000003", "\"1:0:0:2::3\""),         // inet '1:0:0:2:0:0:0:3'
        ("0380001000010000000000000002000000000003", "\"1::2:0:0:3\""),         // inet '1:0:0:0:2:0:0:3'
        ("0380001000000001000000000000000000000000", "\"0:1::\""),              // inet '0:1:0:0:0:0:0:0'
        ("0380001000000000000100000000000000000000", "\"0:0:1::\""),            // inet '0:0:1:0:0:0:0:0'
        ("03800010abcdef0123456789abcdef0123456789", "\"abcd:ef01:2345:6789:abcd:ef01:2345:6789\""), // inet 'ABCD:EF01:2345:6789:ABCD:EF01:2345:6789'
        ("0300001000000000000000000000000000000000", "\"::/0\""),                                    // inet '::/0'
        ("0300001000000000000000000000000000000001", "\"::1/0\""),                                   // inet '::1/0'
        ("030a0010fe800000000000000000000000000000", "\"fe80::/10\""),                               // inet 'fe80::/10'
        ("0360001000000000000000000000ffff01020304", "\"::ffff:1.2.3.4/96\""),                       // inet '::ffff:1.2.3.4/96'
        ("037f001000000000000000000000000000000000", "\"::/127\""),                                  // inet '0:0:0:0:0:0:0:0/127'
        ("0380001000010000000000000000000000000000", "\"1::\""),                                     // inet '1:0:0:0:0:0:0:0/128'
        ("0380001000000000000000000000000100000000", "\"::1:0:0\""),                                 // inet '0:0:0:0:0:1:0:0'
        ("0380001000000000000000000000000000010000", "\"::0.1.0.0\""),                               // inet '0:0:0:0:0:0:1:0'
        ("0380001000000000000000000000000000000100", "\"::100\""),                                   // inet '0:0:0:0:0:0:0:100'
        ("0320011020010db8000000000000000000000000", "\"2001:db8::/32\""),                           // cidr '2001:db8::/32'
        ("0300011000000000000000000000000000000000", "\"::/0\""),                                    // cidr '::/0'
        ("0380011000000000000000000000000000000001", "\"::1/128\""),                                 // cidr '::1/128'
        ("0378011000000000000000000000ffff01020300", "\"::ffff:1.2.3.0/120\""),                      // cidr '::ffff:1.2.3.0/120'
        ("03400110fe800000000000000000000000000000", "\"fe80::/64\""),                               // cidr 'fe80::/64'
        ("0360011000000000000000000000ffff00000000", "\"::ffff:0.0.0.0/96\""),                       // cidr '::ffff:0.0.0.0/96'
        ("0350011020010db8000000000001000000000000", "\"2001:db8:0:0:1::/80\""),                     // cidr '2001:db8:0:0:1::/80'
    ];

    #[test]
    fn inet_and_cidr_match_network_out() {
        assert!(INETS.len() >= 30);
        check(Encoder::Inet, INETS);
        check(
            Encoder::Inet,
            &[
                // The longest outputs.
                ("03000010ffffffffffffffffffffffffffffffff", "\"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/0\""),
                ("03800010000000000000000000000000ffffffff", "\"::255.255.255.255\""),
                ("0300001000000000000000000000ffffffffffff", "\"::ffff:255.255.255.255/0\""),
                // Hand-made: a cidr with host bits set (cidr_recv rejects it) prints as it is.
                ("021801040a000001", "\"10.0.0.1/24\""),
                ("03000110ffffffffffffffffffffffffffffffff", "\"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/0\""),
            ],
        );
        check_rejects(
            Encoder::Inet,
            &[
                "",
                "02",
                "022000",
                "02200004",
                "022000040a0000",
                "0380001000000000000000000000000000000000000001",
                // Trailing bytes.
                "022000040a00000100",
                "038000100000000000000000000000000000000100",
                // Address length wrong for the family.
                "0220001000000000000000000000000000000001",
                "038000040a000001",
                "022000050a00000100",
                "022000000a000001",
                // Netmask longer than the address.
                "022100040a000001",
                "02ff00040a000001",
                "0381001000000000000000000000000000000001",
                "03ff001000000000000000000000000000000001",
                // Unknown families: AF_UNSPEC, AF_INET6 of some libcs, anything else.
                "002000040a000001",
                "012000040a000001",
                "0a80001000000000000000000000000000000001",
                "ff2000040a000001",
                // is_cidr other than 0/1.
                "022002040a000001",
                "0220ff040a000001",
            ],
        );
    }

    #[test]
    fn bool_and_integers() {
        check(Encoder::Bool, &[("01", "true"), ("00", "false")]);
        check(Encoder::Int2, &[("8000", "-32768"), ("7fff", "32767"), ("0000", "0"), ("ffff", "-1")]);
        check(Encoder::Int4, &[("80000000", "-2147483648"), ("7fffffff", "2147483647"), ("0000002a", "42")]);
        check(
            Encoder::Int8,
            &[
                ("8000000000000000", "-9223372036854775808"),
                ("7fffffffffffffff", "9223372036854775807"),
                ("fffffffffffffff9", "-7"),
                ("000000000000000a", "10"),
                ("0000000000000064", "100"),
            ],
        );
        check(Encoder::Oid, &[("ffffffff", "4294967295"), ("00000000", "0"), ("00004000", "16384")]);
        check_rejects(Encoder::Bool, &["", "0100"]);
        check_rejects(Encoder::Int2, &["00", "000000"]);
        check_rejects(Encoder::Int4, &["000000", "0000000000"]);
        check_rejects(Encoder::Int8, &["00000000000000", "000000000000000000"]);
        check_rejects(Encoder::Oid, &["", "000000000000"]);
    }

    #[test]
    fn integers_agree_with_std_formatting() {
        for v in [0i64, 1, 9, 10, 99, 100, 101, 999, 1000, 12345, -12345, i64::MAX, i64::MIN, 10i64.pow(18)] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn floats_shortest_round_trip() {
        check(
            Encoder::Float8,
            &[
                ("3ff199999999999a", "1.1"),
                ("7ff8000000000000", "\"NaN\""),
                ("7ff0000000000000", "\"Infinity\""),
                ("fff0000000000000", "\"-Infinity\""),
                ("8000000000000000", "-0.0"),
                ("7e37e43c8800759c", "1e300"),
                ("0000000000000001", "5e-324"),
                ("7fefffffffffffff", "1.7976931348623157e308"),
                ("3fb999999999999a", "0.1"),
                ("4059000000000000", "100.0"),
                ("4341c37937e08000", "1e16"),
                ("3e7ad7f29abcaf48", "1e-7"),
                ("40fe240c9fbe76c9", "123456.789"),
            ],
        );
        check(
            Encoder::Float4,
            &[
                ("3f8ccccd", "1.1"),
                ("7fc00000", "\"NaN\""),
                ("7f800000", "\"Infinity\""),
                ("ff800000", "\"-Infinity\""),
                ("80000000", "-0.0"),
                ("7f7fffff", "3.4028235e38"),
                ("00000001", "1e-45"),
                ("3dcccccd", "0.1"),
                ("4b800000", "16777216.0"),
            ],
        );
        check_rejects(Encoder::Float8, &["3ff19999999999", "3ff199999999999a00"]);
        check_rejects(Encoder::Float4, &["3f8ccc", "3f8ccccd00"]);
    }

    #[test]
    fn text_json_jsonb() {
        // textsend(E'a\tb\nc\x01"\\\x7f\u00e9\U0001F600\r\b\f\x1f')
        let expected = concat!(r#""a\tb\nc\u0001\"\\"#, "\u{7f}\u{e9}\u{1F600}", r#"\r\b\f\u001f""#);
        check(Encoder::Text, &[("6109620a6301225c7fc3a9f09f98800d080c1f", expected), ("", "\"\"")]);
        // json_send(E'{"a": [1, 2],\n "b": "\\u00e9"}'): the document becomes a string.
        check(
            Encoder::Json,
            &[("7b2261223a205b312c20325d2c0a202262223a20225c7530306539227d", r#""{\"a\": [1, 2],\n \"b\": \"\\u00e9\"}""#)],
        );
        // jsonb_send('{"b": [1, "x\ty"], "a": null}'): version 1, then jsonb's own text.
        check(
            Encoder::Jsonb,
            &[
                ("017b2261223a206e756c6c2c202262223a205b312c2022785c7479225d7d", r#""{\"a\": null, \"b\": [1, \"x\\ty\"]}""#),
                ("01", "\"\""),
            ],
        );
        // Invalid UTF-8: a lone continuation byte, a truncated sequence, an overlong NUL.
        check_rejects(Encoder::Text, &["80", "61c3", "c080", "eda080"]);
        check_rejects(Encoder::Json, &["7bff7d"]);
        check_rejects(Encoder::Jsonb, &["", "027b7d", "007b7d", "01ff"]);
    }

    #[test]
    fn json_strings_escape_like_serde_json() {
        let mut all = String::new();
        for c in (0u8..0x80).map(char::from).chain(['é', '\u{2028}', '\u{FEFF}', '😀']) {
            all.push(c);
            let mut out = Vec::new();
            write_json_str(&mut out, c.encode_utf8(&mut [0; 4]));
            assert_eq!(out, serde_json::to_vec(&c.to_string()).unwrap(), "char {:?}", c);
        }
        let mut out = Vec::new();
        write_json_str(&mut out, &all);
        assert_eq!(out, serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn bytea_and_uuid() {
        check(Encoder::Bytea, &[("deadbeef00ff", "\"deadbeef00ff\""), ("", "\"\"")]);
        check(Encoder::Uuid, &[("a0eebc999c0b4ef8bb6d6bb9bd380a11", "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"")]);
        check_rejects(Encoder::Uuid, &["", "a0eebc999c0b4ef8bb6d6bb9bd380a", "a0eebc999c0b4ef8bb6d6bb9bd380a1100"]);
    }

    #[test]
    fn dates_bc_far_future_and_infinity() {
        const Y: u8 = NOTE_YEAR_OUT_OF_RANGE;
        const C: u8 = NOTE_YEAR_CLAMPED;
        const INF: u8 = NOTE_INFINITY_CLAMPED;
        // (hex, expanded text, notes under expanded, whether clamp writes the low/high sentinel)
        let cases: &[(&str, &str, u8, Option<&str>)] = &[
            ("00000000", "\"2000-01-01T00:00:00+00:00\"", 0, None),
            ("ffffffff", "\"1999-12-31T00:00:00+00:00\"", 0, None),
            ("ffffd533", "\"1970-01-01T00:00:00+00:00\"", 0, None),
            ("fff4dbf9", "\"0001-01-01T00:00:00+00:00\"", 0, None),
            // 0001-12-31 BC is astronomical year 0.
            ("fff4dbf8", "\"+0000-12-31T00:00:00+00:00\"", Y, Some(DATE_TIME_MIN)),
            ("fff4d91e", "\"-0001-01-01T00:00:00+00:00\"", Y, Some(DATE_TIME_MIN)),
            ("fff44d87", "\"-0099-03-01T00:00:00+00:00\"", Y, Some(DATE_TIME_MIN)),
            // 4713-11-24 BC, the smallest date.
            ("ffda9915", "\"-4712-11-24T00:00:00+00:00\"", Y, Some(DATE_TIME_MIN)),
            ("002c95d3", "\"9999-12-31T00:00:00+00:00\"", 0, None),
            ("002c95d4", "\"+10000-01-01T00:00:00+00:00\"", Y, Some(DATE_MAX)),
            // 5874897-12-31, the largest date.
            ("7fda970c", "\"+5874897-12-31T00:00:00+00:00\"", Y, Some(DATE_MAX)),
            ("7fffffff", "\"9999-12-31T00:00:00+00:00\"", INF, None),
            ("80000000", "\"0001-01-01T00:00:00+00:00\"", INF, None),
            ("00002279", "\"2024-02-29T00:00:00+00:00\"", 0, None),
            ("ffff718f", "\"1900-03-01T00:00:00+00:00\"", 0, None),
            ("fffdc58a", "\"1600-02-29T00:00:00+00:00\"", 0, None),
        ];
        check_both_modes(Encoder::Date, cases, C);
        for dates in [OutOfRangeDates::Clamp, OutOfRangeDates::Expanded] {
            check_rejects(Encoder::Date(dates), &["", "000000", "0000000000"]);
        }
    }

    /// Checks `cases` under both [`OutOfRangeDates`]: expanded writes the second field with its
    /// notes; clamp writes the same except where the fourth field names a sentinel, which it
    /// writes with `clamp_note` instead.
    fn check_both_modes(encoder: impl Fn(OutOfRangeDates) -> Encoder, cases: &[(&str, &str, u8, Option<&str>)], clamp_note: u8) {
        let expanded: Vec<(&str, &str, u8)> = cases.iter().map(|&(hex, text, notes, _)| (hex, text, notes)).collect();
        check_notes(encoder(OutOfRangeDates::Expanded), &expanded);
        let sentinels: Vec<String> =
            cases.iter().map(|&(_, text, _, sentinel)| sentinel.map_or(text.to_string(), |s| format!("\"{s}\""))).collect();
        let clamped: Vec<(&str, &str, u8)> = cases
            .iter()
            .zip(&sentinels)
            .map(|(&(hex, _, notes, sentinel), text)| (hex, text.as_str(), if sentinel.is_some() { clamp_note } else { notes }))
            .collect();
        check_notes(encoder(OutOfRangeDates::Clamp), &clamped);
    }

    #[test]
    fn timestamps_floor_before_2000() {
        const Y: u8 = NOTE_YEAR_OUT_OF_RANGE;
        const C: u8 = NOTE_YEAR_CLAMPED;
        const INF: u8 = NOTE_INFINITY_CLAMPED;
        let cases: &[(&str, &str, u8, Option<&str>)] = &[
            ("0000000000000000", "\"2000-01-01T00:00:00+00:00\"", 0, None),
            ("ffffffffffffffff", "\"1999-12-31T23:59:59.999999+00:00\"", 0, None),
            ("fffc96188bb60220", "\"1969-07-20T20:17:40.500000+00:00\"", 0, None),
            ("ff1fe2ffc59c6000", "\"0001-01-01T00:00:00+00:00\"", 0, None),
            // 4713-01-01 00:00:00 BC, the smallest timestamp.
            ("fd0f7fbdaf17e000", "\"-4712-01-01T00:00:00+00:00\"", Y, Some(DATE_TIME_MIN)),
            // 294276-12-31 23:59:59.999999, the largest timestamp.
            ("7fffff5bb3b29fff", "\"+294276-12-31T23:59:59.999999+00:00\"", Y, Some(TIMESTAMP_MAX)),
            ("7fffffffffffffff", "\"9999-12-31T23:59:59.999000+00:00\"", INF, None),
            ("8000000000000000", "\"0001-01-01T00:00:00+00:00\"", INF, None),
            ("0002b58341667c01", "\"2024-02-29T12:34:56.000001+00:00\"", 0, None),
            ("0380e70b913b8000", "\"+10000-01-01T00:00:00+00:00\"", Y, Some(TIMESTAMP_MAX)),
            // 0001-12-31 23:59:59.000001 BC.
            ("ff1fe2ffc58d1dc1", "\"+0000-12-31T23:59:59.000001+00:00\"", Y, Some(DATE_TIME_MIN)),
            ("fff4c9ee7c0b8001", "\"1900-01-01T00:00:00.000001+00:00\"", 0, None),
            // A real 9999-12-31 23:59:59.999999 is neither an infinity nor out of range: as it is.
            ("0380e70b913b7fff", "\"9999-12-31T23:59:59.999999+00:00\"", 0, None),
        ];
        check_both_modes(Encoder::Timestamp, cases, C);
        check_both_modes(Encoder::TimestampTz, cases, C);
        // timestamptz '2024-01-01 12:00:00+05' and '1960-06-15 08:30:15.25-07', sent as UTC.
        check_notes(
            Encoder::TimestampTz(OutOfRangeDates::Clamp),
            &[("0002b0dbb2f2bc00", "\"2024-01-01T07:00:00+00:00\"", 0), ("fffb91094afca050", "\"1960-06-15T15:30:15.250000+00:00\"", 0)],
        );
        check_rejects(Encoder::Timestamp(OutOfRangeDates::Clamp), &["", "00000000000000", "000000000000000000"]);
        let mut out = Vec::new();
        let mut notes = 0;
        write_timestamp(&mut out, -1, OutOfRangeDates::Clamp, &mut notes);
        assert_eq!(out, b"\"1999-12-31T23:59:59.999999+00:00\"");
        assert_eq!(notes, 0);
    }

    #[test]
    fn exact_text_for_bookmarks_ignores_the_clamp() {
        let exact = |encoder: Encoder, hex: &str| {
            let mut out = Vec::new();
            encode_exact(&encoder, &unhex(hex), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(exact(Encoder::Date(OutOfRangeDates::Clamp), "fff4d91e"), "\"-0001-01-01T00:00:00+00:00\"");
        assert_eq!(exact(Encoder::TimestampTz(OutOfRangeDates::Clamp), "0380e70b913b8000"), "\"+10000-01-01T00:00:00+00:00\"");
        assert_eq!(exact(Encoder::Timestamp(OutOfRangeDates::Clamp), "0000000000000000"), "\"2000-01-01T00:00:00+00:00\"");
        assert_eq!(exact(Encoder::Int4, "0000002a"), "42");
    }

    #[test]
    fn time_and_timetz() {
        check(
            Encoder::Time,
            &[
                ("0000000000000000", "\"00:00:00\""),
                ("000000141dd75fff", "\"23:59:59.999999\""),
                ("000000141dd76000", "\"24:00:00\""),
                ("0000000a8be1bd20", "\"12:34:56.500000\""),
                ("0000000000000001", "\"00:00:00.000001\""),
            ],
        );
        check_rejects(Encoder::Time, &["", "ffffffffffffffff", "000000141dd76001", "8000000000000000", "00000000000000"]);
        check(
            Encoder::TimeTz,
            &[
                ("0000000a8be1bd20ffffb2a8", "\"12:34:56.500000+05:30\""),
                ("000000000000000000007080", "\"00:00:00-08:00\""),
                ("0000000a0eebb00000000000", "\"12:00:00+00:00\""),
                ("00000000dde878c0ffffb299", "\"01:02:03+05:30:15\""),
                ("000000141dd760000000e0c4", "\"24:00:00-15:59\""),
                ("000000141dd75fffffff1f3c", "\"23:59:59.999999+15:59\""),
                ("0000000861c4680000003165", "\"10:00:00-03:30:45\""),
            ],
        );
        // Hand-made: zones of exactly ±16h and a time past 24:00 are rejected, as time_recv does.
        check_rejects(
            Encoder::TimeTz,
            &["00000000000000000000e100", "0000000000000000ffff1f00", "000000141dd7600100000000", "0000000000000000000000"],
        );
    }

    #[test]
    fn intervals_match_iso_8601_intervalstyle() {
        check(
            Encoder::Interval,
            &[
                ("00000000000000000000000000000000", "\"PT0S\""),
                ("0000000000000000000000000000000c", "\"P1Y\""),
                ("0000000000000000000000000000000e", "\"P1Y2M\""),
                // '-1 year 2 mons -3 days 04:05:06.7'
                ("000000036c966ee0fffffffdfffffff6", "\"P-10M-3DT4H5M6.7S\""),
                // '1 day -00:00:01'
                ("fffffffffff0bdc00000000100000000", "\"P1DT-1S\""),
                ("ffffffffffffffff0000000000000000", "\"PT-0.000001S\""),
                ("00000000000000010000000000000000", "\"PT0.000001S\""),
                ("000000000016e3600000000000000000", "\"PT1.5S\""),
                ("ffffffffffe91ca00000000000000000", "\"PT-1.5S\""),
                ("00000000d693a4000000000000000000", "\"PT1H\""),
                ("ffffffff221787400000000000000000", "\"PT-1H-2M-3S\""),
                ("00000000000186a00000000000000000", "\"PT0.1S\""),
                ("000000000000000000000000ffffffff", "\"P-1M\""),
                ("0000000000000000000000000000000d", "\"P1Y1M\""),
                ("000000000000000000000000fffffff3", "\"P-1Y-1M\""),
                ("0000000000000000000000000000000b", "\"P11M\""),
                ("00000000d693a400fffffffd00000000", "\"P-3DT1H\""),
                ("0000000000000000000000007f50c600", "\"P178000000Y\""),
                ("00000000000000000000000080af3a00", "\"P-178000000Y\""),
                ("7fffffffffffffff0000000000000000", "\"PT2562047788H54.775807S\""),
                ("80000000000000010000000000000000", "\"PT-2562047788H-54.775807S\""),
                ("80000000000000000000000000000000", "\"PT-2562047788H-54.775808S\""),
                ("00000000000000007fffffff00000000", "\"P2147483647D\""),
                ("00000000000000008000000000000000", "\"P-2147483648D\""),
                ("000000036c8da2c0000000030000000e", "\"P1Y2M3DT4H5M6.123456S\""),
                ("00000000009896800000000000000000", "\"PT10S\""),
                ("00000000039b28200000000000000000", "\"PT1M0.5S\""),
                ("fffffffffc64d7e00000000000000000", "\"PT-1M-0.5S\""),
                // '1 min -1 sec', '12 hours -30 sec'
                ("00000000038444c00000000000000000", "\"PT59S\""),
                ("0000000a0d21ec800000000000000000", "\"PT11H59M30S\""),
                // '-1 mon 1 day -1 hour 1 min -1 sec'
                ("ffffffff2cf0a0c000000001ffffffff", "\"P-1M1DT-59M-1S\""),
                // '5 years -0.5 sec': seconds 0 with a negative fraction still gets its sign.
                ("fffffffffff85ee0000000000000003c", "\"P5YT-0.5S\""),
                // Hand-made: PostgreSQL 17's infinite intervals (the 15 oracle has none).
                ("7fffffffffffffff7fffffff7fffffff", "\"infinity\""),
                ("80000000000000008000000080000000", "\"-infinity\""),
            ],
        );
        // Extreme fields that are not an infinity: '-178956970 years -8 months 2147483647 days'
        // plus the smallest time, built on the server.
        let (got, _) = run(&Encoder::Interval, &unhex("80000000000000007fffffff80000000"));
        assert_eq!(got.unwrap(), "\"P-178956970Y-8M2147483647DT-2562047788H-54.775808S\"");
        check_rejects(Encoder::Interval, &["", "000000000000000000000000000000", "0000000000000000000000000000000000"]);
    }

    #[test]
    fn bits() {
        let strings = [
            ("0000000180", "\"1\""),
            ("0000000100", "\"0\""),
            ("00000009b380", "\"101100111\""),
            ("00000000", "\"\""),
            ("00000008aa", "\"10101010\""),
            ("0000000a00c0", "\"0000000011\""),
            // Hand-made: pad bits past the length are ignored.
            ("00000001ff", "\"1\""),
        ];
        check(Encoder::BitString, &strings);
        check(Encoder::BitBool, &[("0000000180", "true"), ("0000000100", "false"), ("000000017f", "false")]);
        check_rejects(Encoder::BitString, &["", "000000", "ffffffff", "0000000a00", "0000000180ff", "7fffffff00"]);
        check_rejects(Encoder::BitBool, &["", "00000000", "ffffffff80", "00000001"]);
    }

    #[test]
    fn hstore_in_wire_order() {
        check(
            Encoder::Hstore,
            &[
                // '"a"=>"1", "b"=>NULL, "é"=>"x\"y"'
                ("00000003000000016100000001310000000162ffffffff00000002c3a900000003782279", r#"{"a":"1","b":null,"é":"x\"y"}"#),
                ("00000000", "{}"),
                // '"k\\\\"=>""'
                ("00000001000000036b5c5c00000000", r#"{"k\\\\":""}"#),
            ],
        );
        check_rejects(
            Encoder::Hstore,
            &[
                "",
                "ffffffff",
                "7fffffff",
                "00000001",
                "00000001ffffffff00000000",
                "0000000100000001610000000131ff",
                "000000010000000161fffffffe",
                "000000010000000180ffffffff",
                "00000001000000016100000001ff",
                "0000000000",
            ],
        );
    }

    /// `array_send` / expected JSON pairs, per element encoder.
    fn arrays() -> Vec<(Encoder, &'static str, &'static str)> {
        let array = |e: Encoder| Encoder::Array(Box::new(e));
        vec![
            (array(Encoder::Int4), "000000010000000100000017000000030000000100000004000000010000000400000002ffffffff", "[1,2,null]"),
            (
                array(Encoder::Int4),
                "00000002000000000000001700000002000000010000000300000001000000040000000100000004000000020000000400000003000000040000000400000004000000050000000400000006",
                "[[1,2,3],[4,5,6]]",
            ),
            (
                array(Encoder::Int4),
                "00000003000000000000001700000002000000010000000200000001000000020000000100000004000000010000000400000002000000040000000300000004000000040000000400000005000000040000000600000004000000070000000400000008",
                "[[[1,2],[3,4]],[[5,6],[7,8]]]",
            ),
            (array(Encoder::Int4), "000000000000000000000017", "[]"),
            // '[2:3]={7,8}': lower bounds are dropped.
            (array(Encoder::Int4), "000000010000000000000017000000020000000200000004000000070000000400000008", "[7,8]"),
            (array(Encoder::Int4), "0000000100000001000000170000000100000001ffffffff", "[null]"),
            (
                array(Encoder::Int4),
                "000000020000000100000017000000020000000100000002000000010000000400000001ffffffffffffffff0000000400000004",
                "[[1,null],[null,4]]",
            ),
            (
                array(Encoder::Numeric),
                "0000000100000000000006a400000004000000010000000c0002000000000001000113880000000800000000c00000000000000a0001ffff40000003000a000000080000000000000003",
                "[1.5,\"NaN\",-0.001,0.000]",
            ),
            (array(Encoder::Numeric), "0000000000000000000006a4", "[]"),
            (
                array(Encoder::Timestamp(OutOfRangeDates::Clamp)),
                "00000001000000010000045a000000040000000100000008000000000000000000000008fffffffffff85ee0000000087fffffffffffffffffffffff",
                "[\"2000-01-01T00:00:00+00:00\",\"1999-12-31T23:59:59.500000+00:00\",\"9999-12-31T23:59:59.999000+00:00\",null]",
            ),
            (
                array(Encoder::Text),
                "0000000100000001000000190000000500000001000000016100000003622263ffffffff00000002c3a9000000066c696e656e78",
                r#"["a","b\"c",null,"é","linenx"]"#,
            ),
            (array(Encoder::Text), "000000010000000000000019000000020000000100000008746162096865726500000000", r#"["tab\there",""]"#),
            (array(Encoder::Bool), "000000010000000100000010000000030000000100000001010000000100ffffffff", "[true,false,null]"),
            (
                array(Encoder::Interval),
                "0000000200000000000004a200000001000000010000000200000001000000100000000000000000000000000000000c00000010fffffffffff0bdc00000000000000000",
                r#"[["P1Y","PT-1S"]]"#,
            ),
            (array(Encoder::BitString), "00000001000000000000061a00000002000000010000000500000003a0000000050000000180", r#"["101","1"]"#),
            (
                array(Encoder::Inet),
                "00000001000000010000036500000004000000010000000802180004c0a80001000000140380001000000000000000000000000000000001ffffffff00000008022000040a000001",
                r#"["192.168.0.1/24","::1",null,"10.0.0.1"]"#,
            ),
            (
                array(Encoder::Inet),
                "00000001000000000000028a000000020000000100000008020801040a000000000000140320011020010db8000000000000000000000000",
                r#"["10.0.0.0/8","2001:db8::/32"]"#,
            ),
            (
                array(Encoder::Hstore),
                "00000001000000010000400500000002000000010000000e0000000100000001610000000131ffffffff",
                r#"[{"a":"1"},null]"#,
            ),
        ]
    }

    #[test]
    fn arrays_nest_per_dimension() {
        for (encoder, hex, expected) in arrays() {
            check(encoder, &[(hex, expected)]);
        }
        let timestamps = Encoder::Array(Box::new(Encoder::Timestamp(OutOfRangeDates::Clamp)));
        let (_, hex, _) = arrays().into_iter().find(|(e, ..)| *e == timestamps).unwrap();
        let (_, notes) = run(&timestamps, &unhex(hex));
        assert_eq!(notes, NOTE_INFINITY_CLAMPED);
    }

    #[test]
    fn arrays_reject_bad_shapes() {
        let int4s = Encoder::Array(Box::new(Encoder::Int4));
        // Hand-made: any zero dimension means no elements; PostgreSQL treats it as '{}'.
        check(int4s.clone(), &[("00000002000000000000001700000005000000010000000000000001", "[]")]);
        check(int4s.clone(), &[("00000002000000000000001700000000000000017fffffff00000001", "[]")]);
        check_rejects(
            int4s,
            &[
                "",
                "ffffffff0000000000000017",
                // Seven dimensions.
                "00000007000000000000001700000001000000010000000100000001000000010000000100000001000000010000000100000001000000010000000100000001",
                // Flags 2.
                "000000000000000200000017",
                // Negative length.
                "000000010000000000000017ffffffff00000001",
                // A billion elements announced in a few bytes.
                "0000000100000000000000173b9aca000000000100000004",
                // One element too few, one too many, a trailing byte.
                "00000001000000000000001700000002000000010000000400000007",
                "0000000100000000000000170000000100000001000000040000000700000004",
                "00000000000000000000001700",
                "00000001000000000000001700000001000000010000000400000007ff",
                // Element length -2, and an element the inner encoder rejects.
                "0000000100000000000000170000000100000001fffffffe",
                "00000001000000000000001700000001000000010000000200ff",
            ],
        );
    }

    /// Valid samples of every encoder whose wire form has no valid proper prefix.
    fn strict_samples() -> Vec<(Encoder, String)> {
        let mut samples: Vec<(Encoder, String)> = vec![
            (Encoder::Bool, "01".into()),
            (Encoder::Int2, "7fff".into()),
            (Encoder::Int4, "0000002a".into()),
            (Encoder::Int8, "fffffffffffffff9".into()),
            (Encoder::Oid, "00004000".into()),
            (Encoder::Float4, "3f8ccccd".into()),
            (Encoder::Float8, "3ff199999999999a".into()),
            (Encoder::Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11".into()),
            (Encoder::Date(OutOfRangeDates::Clamp), "fff4dbf8".into()),
            (Encoder::Date(OutOfRangeDates::Expanded), "fff4dbf8".into()),
            (Encoder::Time, "0000000a8be1bd20".into()),
            (Encoder::TimeTz, "0000000a8be1bd20ffffb2a8".into()),
            (Encoder::Timestamp(OutOfRangeDates::Clamp), "fffc96188bb60220".into()),
            (Encoder::TimestampTz(OutOfRangeDates::Expanded), "0002b0dbb2f2bc00".into()),
            (Encoder::Interval, "000000036c966ee0fffffffdfffffff6".into()),
            (Encoder::BitBool, "0000000180".into()),
            (Encoder::BitString, "00000009b380".into()),
            (Encoder::Hstore, "00000003000000016100000001310000000162ffffffff00000002c3a900000003782279".into()),
            (Encoder::Hstore, "00000000".into()),
        ];
        samples.extend(INETS.iter().map(|(hex, _)| (Encoder::Inet, hex.to_string())));
        samples.extend(NUMERICS.iter().map(|(hex, _)| (Encoder::Numeric, hex.to_string())));
        samples.extend(arrays().into_iter().map(|(e, hex, _)| (e, hex.to_string())));
        samples
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        for (encoder, hex) in strict_samples() {
            let raw = unhex(&hex);
            assert!(run(&encoder, &raw).0.is_ok(), "{encoder:?} {hex}");
            for cut in 0..raw.len() {
                let (got, _) = run(&encoder, &raw[..cut]);
                assert!(got.is_err(), "{encoder:?} {hex} cut at {cut} gave {got:?}");
            }
            let mut longer = raw.clone();
            longer.push(0);
            assert!(run(&encoder, &longer).0.is_err(), "{encoder:?} {hex} plus a byte");
        }
    }

    /// A deterministic xorshift generator, so garbage tests repeat exactly.
    struct Rng(u64);

    impl Rng {
        /// The next pseudo-random value.
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A byte biased toward the values headers are made of (0, 1, 0xff, small counts).
        fn byte(&mut self) -> u8 {
            match self.next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => (self.next() % 8) as u8,
                _ => self.next() as u8,
            }
        }
    }

    /// Encodes garbage: must not panic, output must stay bounded and be JSON when accepted.
    fn encode_garbage(encoder: &Encoder, raw: &[u8]) {
        let (got, _) = run(encoder, raw);
        if let Ok(text) = got {
            assert!(text.len() <= 150_000 + 16 * raw.len(), "{encoder:?} {raw:02x?} wrote {} bytes", text.len());
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{encoder:?} {raw:02x?}: {text}: {e}"));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let array = |e: Encoder| Encoder::Array(Box::new(e));
        let mut encoders = crate::typemap::SCALAR_ENCODERS.to_vec();
        encoders.extend([
            array(Encoder::Int4),
            array(Encoder::Numeric),
            array(Encoder::Text),
            array(Encoder::Hstore),
            array(Encoder::Inet),
            array(array(Encoder::Int2)),
        ]);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for encoder in &encoders {
            for _ in 0..3000 {
                let len = (rng.next() % 48) as usize;
                let raw: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                encode_garbage(encoder, &raw);
            }
        }
        // Mutate valid samples: one to three bytes changed, then try every encoder on them.
        for (_, hex) in strict_samples() {
            let raw = unhex(&hex);
            for _ in 0..30 {
                let mut bad = raw.clone();
                for _ in 0..1 + rng.next() % 3 {
                    let i = (rng.next() as usize) % bad.len();
                    bad[i] = rng.byte();
                }
                for encoder in &encoders {
                    encode_garbage(encoder, &bad);
                }
            }
        }
    }

    #[test]
    fn errors_are_lowercase_without_values() {
        let (got, _) = run(&Encoder::Text, &[0xff]);
        let e = got.unwrap_err();
        assert_eq!(e.to_string(), "invalid utf-8 in text value");
        assert_eq!(run(&Encoder::Int4, &[]).0.unwrap_err().to_string(), "wrong length for a fixed-size value");
        assert_eq!(run(&Encoder::Numeric, &[0, 1]).0.unwrap_err().to_string(), "truncated value");
    }
}
