//! Values the server converts to FULL_TABLE's wire form: a value of a column FULL_TABLE reads
//! through a cast, or sent as text by pgoutput for a column that is not text, waits with its row
//! ([`PendingRow`]) and is converted, a batch at a time, by one statement per column and form on
//! a second session ([`Converter`]). Which rows wait, and in what order they are written, is the
//! decoder's.

use tokio_postgres::types::{ToSql, Type};

use crate::connect::{Connector, classify_query};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Client;
use crate::pgoutput::{Datum, OldKind};
use crate::query;
use crate::sync::plan::ColumnPlan;
use crate::sync::sink::Raw;
use crate::typemap::{Cast, Encoder};

/// Rows that may wait for their values to be converted by the server.
pub(super) const PENDING_ROWS: usize = 1024;
/// Bytes of values that may wait for the server's conversion.
pub(super) const PENDING_BYTES: usize = 16 << 20;

/// A column value owned by a row that waits for the server's conversion.
pub(super) enum OwnedDatum {
    /// See [`Datum::Null`].
    Null,
    /// See [`Datum::UnchangedToast`].
    UnchangedToast,
    /// See [`Datum::Text`].
    Text(Vec<u8>),
    /// See [`Datum::Binary`].
    Binary(Vec<u8>),
}

impl OwnedDatum {
    /// A copy of `datum`.
    pub(super) fn of(datum: &Datum<'_>) -> OwnedDatum {
        match datum {
            Datum::Null => OwnedDatum::Null,
            Datum::UnchangedToast => OwnedDatum::UnchangedToast,
            Datum::Text(t) => OwnedDatum::Text(t.to_vec()),
            Datum::Binary(b) => OwnedDatum::Binary(b.to_vec()),
        }
    }

    /// The value borrowed again.
    pub(super) fn datum(&self) -> Datum<'_> {
        match self {
            OwnedDatum::Null => Datum::Null,
            OwnedDatum::UnchangedToast => Datum::UnchangedToast,
            OwnedDatum::Text(t) => Datum::Text(t),
            OwnedDatum::Binary(b) => Datum::Binary(b),
        }
    }

    /// Bytes held.
    pub(super) fn len(&self) -> usize {
        match self {
            OwnedDatum::Text(b) | OwnedDatum::Binary(b) => b.len(),
            OwnedDatum::Null | OwnedDatum::UnchangedToast => 0,
        }
    }
}

/// A row waiting for some of its values to be converted by the server.
pub(super) struct PendingRow {
    /// Its values, in the relation's column order.
    pub(super) values: Vec<OwnedDatum>,
    /// An old key or row (a delete) or `None` (a new row).
    pub(super) old: Option<OldKind>,
    /// Its transaction's commit time.
    pub(super) commit_time: i64,
}

/// Per relation column of a row: `Some(value)` when the server converted it (`None` inside:
/// NULL), `None` when it is written as it arrived.
pub(super) type Converted = Vec<Option<Option<Vec<u8>>>>;

/// A conversion statement: its text, its parameters, and the (row, relation column) each of its
/// result columns is for.
type Conversion<'a> = (String, Vec<(Box<dyn ToSql + Sync + 'a>, Type)>, Vec<(usize, usize)>);

/// A value bound in binary as the type the statement was prepared with.
#[derive(Debug)]
struct RawParam<'a>(&'a [u8]);

impl ToSql for RawParam<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Whether a value of `column` must be converted by the server before it is encoded.
pub(super) fn needs_conversion(column: &ColumnPlan, datum: &Datum<'_>) -> bool {
    match datum {
        Datum::Binary(_) => column.cast != Cast::None,
        Datum::Text(_) => column.cast != Cast::None || column.encoder != Encoder::Text,
        Datum::Null | Datum::UnchangedToast => false,
    }
}

/// The SQL suffix that turns a value of the column's type into FULL_TABLE's wire form.
fn cast_suffix(cast: Cast) -> &'static str {
    match cast {
        Cast::None => "",
        Cast::Text => "::text",
        Cast::TextArray => "::text[]",
        Cast::Numeric => "::numeric",
        Cast::NumericArray => "::numeric[]",
    }
}

/// The second session, which converts values: opened when first needed.
pub(super) struct Converter<'p> {
    /// The session, once opened.
    client: Option<Client>,
    /// Opens it.
    connector: &'p Connector,
    /// The stream's database.
    database: &'p str,
}

impl<'p> Converter<'p> {
    /// A converter for `database` that has not opened its session yet.
    pub(super) fn new(connector: &'p Connector, database: &'p str) -> Converter<'p> {
        Converter { client: None, connector, database }
    }

    /// Forgets the session (it may have been ended with the stream's session); it is opened
    /// again when needed.
    pub(super) fn close(&mut self) {
        self.client = None;
    }

    /// Has the server turn the values of `rows` that need it into FULL_TABLE's wire form: per
    /// column and form, one statement of one row with a result column per value. `relation`
    /// holds, per relation column, its index in `columns` (`None`: not selected) and its type's
    /// oid.
    ///
    /// # Errors
    /// A text value that is not UTF-8 (`Encode`); the session failing to open (`Connect`) or a
    /// statement failing.
    pub(super) fn convert(
        &mut self,
        relation: (&[Option<usize>], &[u32]),
        columns: &[ColumnPlan],
        rows: &[PendingRow],
    ) -> Result<Vec<Converted>> {
        let mut out: Vec<Converted> = rows.iter().map(|r| (0..r.values.len()).map(|_| None).collect()).collect();
        let statements = statements(relation, columns, rows)?;
        if statements.is_empty() {
            return Ok(out);
        }
        let results = self.run(&statements);
        for ((_, _, places), values) in statements.iter().zip(results?) {
            for (&(r, i), value) in places.iter().zip(values) {
                out[r][i] = Some(value);
            }
        }
        Ok(out)
    }

    /// Runs the conversion statements; per statement, its result values.
    fn run(&mut self, statements: &[Conversion<'_>]) -> Result<Vec<Vec<Option<Vec<u8>>>>> {
        // The stream's session is busy with the peek, and this thread inside its runtime: the
        // second session runs on a thread of its own.
        let (connector, database) = (self.connector, self.database);
        let mut converter = self.client.take();
        let results = std::thread::scope(|scope| {
            let work = scope.spawn(|| -> Result<Vec<Vec<Option<Vec<u8>>>>> {
                let client = match &mut converter {
                    Some(client) => client,
                    None => converter.insert(connector.connect(database)?),
                };
                let mut results = Vec::with_capacity(statements.len());
                for (sql, params, _) in statements {
                    let params: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(|(p, t)| (p.as_ref(), t.clone())).collect();
                    let row = client
                        .query_opt(sql, &params)
                        .map_err(|e| classify_query(e, "converting values to their FULL_TABLE form"))?
                        .ok_or_else(|| Error::new(ErrorKind::Internal, "converting values: no row"))?;
                    let mut values = Vec::with_capacity(params.len());
                    for k in 0..params.len() {
                        let value: Option<Raw<'_>> =
                            row.try_get(k).map_err(|e| Error::new(ErrorKind::Internal, "reading converted values").with_source(e))?;
                        values.push(value.map(|Raw(bytes)| bytes.to_vec()));
                    }
                    results.push(values);
                }
                Ok(results)
            });
            work.join().unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "the conversion thread panicked")))
        });
        self.client = converter;
        results
    }
}

/// The conversion statements for the values of `rows` that need it: per column, one for the
/// values that arrived in binary and one for those that arrived as text (when there are any).
fn statements<'r>(
    (relation_columns, types): (&[Option<usize>], &[u32]),
    columns: &[ColumnPlan],
    rows: &'r [PendingRow],
) -> Result<Vec<Conversion<'r>>> {
    let mut statements: Vec<Conversion<'_>> = Vec::new();
    for (i, planned) in relation_columns.iter().enumerate() {
        let Some(c) = *planned else { continue };
        let column = &columns[c];
        let suffix = cast_suffix(column.cast);
        // Only the oid goes to the server (as the parameter's type in Parse).
        let value_type = Type::new(column.cast_type.clone(), types[i], tokio_postgres::types::Kind::Simple, String::new());
        let mut binary: Conversion<'_> = (String::from("select "), Vec::new(), Vec::new());
        let mut text: Conversion<'_> = (String::from("select "), Vec::new(), Vec::new());
        for (r, row) in rows.iter().enumerate() {
            let datum = row.values[i].datum();
            if !needs_conversion(column, &datum) {
                continue;
            }
            match datum {
                Datum::Binary(bytes) => {
                    let n = binary.1.len() + 1;
                    let comma = if n > 1 { ", " } else { "" };
                    binary.0.push_str(&format!("{comma}${n}{suffix}"));
                    binary.1.push((Box::new(RawParam(bytes)), value_type.clone()));
                    binary.2.push((r, i));
                }
                Datum::Text(bytes) => {
                    let value = std::str::from_utf8(bytes).map_err(|e| {
                        Error::new(
                            ErrorKind::Encode,
                            format!("column {} arrived as text that is not UTF-8", query::quote_ident(&column.name)),
                        )
                        .with_source(e)
                        .with_hint("Deselect the column, or use XMIN or FULL_TABLE for this stream.")
                    })?;
                    let n = text.1.len() + 1;
                    let comma = if n > 1 { ", " } else { "" };
                    text.0.push_str(&format!("{comma}cast(${n}::text as {}){suffix}", column.cast_type));
                    text.1.push((Box::new(value), Type::TEXT));
                    text.2.push((r, i));
                }
                Datum::Null | Datum::UnchangedToast => {}
            }
        }
        statements.extend([binary, text].into_iter().filter(|s| !s.1.is_empty()));
    }
    Ok(statements)
}
