//! Bookmark values against their key columns: the checks planning makes before any output (a
//! `block_resume` that is a block mark; a `last_pk_fetched` or `replication_key_value` of a JSON
//! kind the column takes and text the server casts to its type; an INCREMENTAL key the server
//! can compare and order, and whether an index leads with it), and the text a bookmark value is
//! bound as in the sync's queries ([`bookmark_param`]).
//!
//! A bookmark that does not fit is a `State` error; a key of a type that cannot be compared or
//! bookmarked is a `Catalog` error.

use serde_json::Value;
use tokio_postgres::types::Type;

use crate::catalog::SelectedStream;
use crate::connect::classify_query;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::query::{self, KeyColumn};
use crate::state::Bookmark;
use crate::typemap::Encoder;

/// Refuses, before any output, a `block_resume` that is not a block mark.
pub(super) fn check_block_resume(bookmark: &Bookmark) -> Result<()> {
    if bookmark.misfit("block_resume") {
        return Err(Error::new(
            ErrorKind::State,
            "the state's bookmark block_resume is not an object of next_block, relfilenode and snapshot_xmin",
        )
        .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning)."));
    }
    Ok(())
}

/// Whether values of this encoder can serve as a bookmark that the server reads back.
pub(super) fn bookmarkable(encoder: &Encoder) -> bool {
    !matches!(encoder, Encoder::Array(_) | Encoder::Hstore | Encoder::Json | Encoder::JsonDocument)
}

/// An INCREMENTAL key's checks, before any output, in one round trip: the server can compare and
/// order it (the query's comparison and ordering are prepared: json, xml, point, ... fail), the
/// state's bookmark is a value of its type ([`check_bookmark_values`]'s rule), and whether some
/// index of the table starts with it (the answer).
pub(super) fn check_replication_key(
    client: &mut Client,
    (selected, relid): (&SelectedStream, u32),
    key: &KeyColumn<'_>,
    encoder: &Encoder,
    bookmark: Option<&Value>,
) -> Result<bool> {
    let column = query::quote_ident(key.name);
    let ordered_sql = format!(
        "select 1 from {} where {column} >= cast($1::text as {}) order by {column}",
        query::qualified_name(&selected.schema_name, &selected.table_name),
        key.cast_type
    );
    let param = bookmark_text(bookmark, encoder, key, "replication_key_value")?;
    let cast_sql = format!("select cast($1::text as {}) is not null", key.cast_type);
    let index_sql = "select exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0] \
                     where i.indrelid = $1 and a.attname = $2)";
    let (ordered, cast, index) = client
        .run(|c| async move {
            let cast = async {
                match &param {
                    Some(p) => c.query_typed(&cast_sql, &[(p, Type::TEXT)]).await.map(Some),
                    None => Ok(None),
                }
            };
            let index_params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 2] = [(&relid, Type::OID), (&key.name, Type::TEXT)];
            let index = c.query_typed(index_sql, &index_params);
            Ok::<_, std::convert::Infallible>(futures_util::future::join3(c.prepare_typed(&ordered_sql, &[Type::TEXT]), cast, index).await)
        })
        .map_err(|e| classify_query(e, "checking the replication key"))?
        .unwrap_or_else(|never| match never {});
    match ordered {
        Ok(_) => {}
        Err(e) if e.as_db_error().is_some() => {
            return Err(Error::new(ErrorKind::Catalog, format!("replication-key {column} cannot be compared or ordered"))
                .with_source(e)
                .with_hint(
                    "Choose a replication key of an ordered type (timestamp, date, integer, numeric, text, uuid, ...), or use FULL_TABLE.",
                ));
        }
        Err(e) => return Err(classify_query(e, "checking the replication key")),
    }
    cast_answer(cast.map(|_| ()), key, "replication_key_value")?;
    let rows = index.map_err(|e| classify_query(e, "reading pg_index"))?;
    match rows.first() {
        Some(row) => row.try_get(0).map_err(|e| Error::new(ErrorKind::Internal, "reading pg_index").with_source(e)),
        None => Ok(false),
    }
}

/// The JSON kinds a column's values take, to check a bookmark before it is sent to the server.
fn accepts_bookmark(encoder: &Encoder, value: &Value) -> bool {
    match encoder {
        Encoder::Int2 | Encoder::Int4 | Encoder::Int8 | Encoder::Oid => value.is_i64() || value.is_u64(),
        Encoder::Float4 | Encoder::Float8 | Encoder::Numeric => value.is_number() || value.is_string(),
        Encoder::Bool | Encoder::BitBool => value.is_boolean(),
        Encoder::Array(_) | Encoder::Hstore => false,
        Encoder::JsonDocument | Encoder::JsonbDocument => true,
        _ => value.is_string(),
    }
}

/// The refusal of a bookmark that does not fit its key column.
fn bookmark_refused(key: &KeyColumn<'_>, field: &str) -> Error {
    Error::new(ErrorKind::State, format!("the state's bookmark {field} does not fit the type of column {}", query::quote_ident(key.name)))
        .with_hint("Remove this stream's bookmark from the state file (it will sync from the beginning), or fix the value to one the column can hold.")
}

/// The text a bookmark is bound as, or `None` without a bookmark; refuses a JSON kind the
/// column's values never take.
fn bookmark_text(value: Option<&Value>, encoder: &Encoder, key: &KeyColumn<'_>, field: &str) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) if accepts_bookmark(encoder, v) => Ok(Some(bookmark_param(v, encoder))),
        Some(_) => Err(bookmark_refused(key, field)),
    }
}

/// The server's answer to `select cast($1::text as <type>)`: a data exception (class 22: invalid
/// syntax, out of range, bad datetime format) means the bookmark does not fit the column.
fn cast_answer(answer: std::result::Result<(), tokio_postgres::Error>, key: &KeyColumn<'_>, field: &str) -> Result<()> {
    match answer {
        Ok(()) => Ok(()),
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Err(bookmark_refused(key, field).with_source(e)),
        Err(e) => Err(classify_query(e, "checking the state's bookmark")),
    }
}

/// Refuses, before anything is written, a bookmark value of a key (`field`'s value of each
/// column of a composite key) that cannot be a value of its key column: a JSON type the
/// column's values never take, or text the server cannot cast to the column's type (the cast
/// the sync query will make). The casts go out together, one round trip for every column; the
/// refusal names the first column, in key order, whose value does not fit.
pub(super) fn check_bookmark_values(client: &mut Client, keys: &[(Option<&Value>, &Encoder, KeyColumn<'_>)], field: &str) -> Result<()> {
    // The values of a JSON kind their column takes, up to the first that is not (whose refusal
    // comes after those of the columns before it).
    let mut casts: Vec<(usize, String, String)> = Vec::with_capacity(keys.len());
    let mut refused = None;
    for (i, (value, encoder, key)) in keys.iter().enumerate() {
        match bookmark_text(*value, encoder, key, field) {
            Ok(Some(param)) => casts.push((i, format!("select cast($1::text as {}) is not null", key.cast_type), param)),
            Ok(None) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    if !casts.is_empty() {
        let answers = client
            .run(|c| {
                let queries =
                    casts.iter().map(move |(_, sql, param)| async move { c.query_typed(sql, &[(param, Type::TEXT)]).await.map(|_| ()) });
                async move { Ok::<_, std::convert::Infallible>(futures_util::future::join_all(queries).await) }
            })
            .map_err(|e| classify_query(e, "checking the state's bookmark"))?
            .unwrap_or_else(|never| match never {});
        for ((i, _, _), answer) in casts.iter().zip(answers) {
            cast_answer(answer, &keys[*i].2, field)?;
        }
    }
    refused.map_or(Ok(()), Err)
}

/// The text a bookmark value is bound as; the server casts it to the key's type, so it must be
/// in that type's input syntax: bytea as `\x` hex, bit(1) as `1`/`0`, and ISO 8601 expanded years
/// (`+20000-...`, `-0043-...`) in PostgreSQL's form (`20000-...`, `0044-... BC`).
pub fn bookmark_param(value: &Value, encoder: &Encoder) -> String {
    match (value, encoder) {
        (Value::String(s), Encoder::Bytea) => format!("\\x{s}"),
        (Value::Bool(b), Encoder::BitBool) => if *b { "1" } else { "0" }.to_string(),
        (Value::String(s), Encoder::Date(_) | Encoder::Timestamp(_) | Encoder::TimestampTz(_)) => postgres_year_syntax(s),
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

/// Rewrites an ISO 8601 expanded year (`+YYYYY` or a signed astronomical year) into PostgreSQL's
/// input syntax; other text is returned unchanged.
fn postgres_year_syntax(text: &str) -> String {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return text.to_string(),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Ok(year) = rest[..digits].parse::<i64>() else { return text.to_string() };
    let astronomical = sign * year;
    if astronomical >= 1 {
        format!("{}{}", &rest[..digits], &rest[digits..])
    } else {
        format!("{:04}{} BC", 1 - astronomical, &rest[digits..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bookmark_params_use_postgres_input_syntax() {
        assert_eq!(bookmark_param(&json!("00ff"), &Encoder::Bytea), "\\x00ff");
        assert_eq!(bookmark_param(&json!(true), &Encoder::BitBool), "1");
        assert_eq!(bookmark_param(&json!(false), &Encoder::BitBool), "0");
        assert_eq!(bookmark_param(&json!(12), &Encoder::Int4), "12");
        assert_eq!(bookmark_param(&json!("abc"), &Encoder::Text), "abc");
        let ts = |s: &str| bookmark_param(&json!(s), &Encoder::TimestampTz(crate::typemap::OutOfRangeDates::Clamp));
        assert_eq!(ts("2024-01-01T00:00:00+00:00"), "2024-01-01T00:00:00+00:00");
        assert_eq!(ts("+20000-01-01T00:00:00+00:00"), "20000-01-01T00:00:00+00:00");
        assert_eq!(ts("-0043-03-15T12:00:00+00:00"), "0044-03-15T12:00:00+00:00 BC");
        assert_eq!(ts("+0000-01-01T00:00:00+00:00"), "0001-01-01T00:00:00+00:00 BC");
        assert_eq!(ts("infinity"), "infinity");
        assert_eq!(ts("-infinity"), "-infinity");
    }
}
