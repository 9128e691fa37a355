//! pgoutput's logical replication messages (protocol version 1), parsed from the bytes one row of
//! `pg_logical_slot_peek_binary_changes` carries: Begin, Commit, Origin, Relation, Type, Insert,
//! Update, Delete and Truncate, with their tuple data (`n` null, `u` unchanged TOAST, `t` text,
//! `b` binary column values).
//!
//! Pure: no connection, no output. Values are borrowed from the message bytes. Every read is
//! bounds-checked: truncated, overlong or unknown input is a [`ParseError`], never a panic.
//! Owns the wire format only; what a message means for a stream is `sync::log_based`'s.
//! Streaming (`S`, `E`, `c`, `A`) and two-phase messages are not parsed: they are sent only when
//! asked for (`streaming`, `two_phase`), which the tap never does; logical decoding messages
//! (`M`) only with `messages`, also never asked for.

use std::fmt;

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that the change did not touch and pgoutput did not send.
    UnchangedToast,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary (send) output.
    Binary(&'a [u8]),
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key a Delete's old tuple holds).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type oid.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// A table as a Relation message describes it; sent before its first change in a decoding
/// session and again after it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's oid.
    pub relid: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in the order tuples carry them.
    pub columns: Vec<RelationColumn>,
}

/// Which old tuple an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the replica identity's key columns (others are null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A transaction's first message.
    Begin {
        /// LSN of the commit record.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction's last message.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End LSN of the transaction (after its commit record).
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_time: i64,
    },
    /// Replication origin of the transaction.
    Origin {
        /// Commit LSN on the origin server.
        commit_lsn: u64,
        /// Origin name.
        name: &'a [u8],
    },
    /// A table's description.
    Relation(Relation),
    /// A non-builtin type's name.
    Type {
        /// Type oid.
        type_oid: u32,
        /// Schema name.
        namespace: &'a [u8],
        /// Type name.
        name: &'a [u8],
    },
    /// A new row.
    Insert {
        /// Table oid.
        relid: u32,
        /// The row.
        new: Vec<Datum<'a>>,
    },
    /// A changed row.
    Update {
        /// Table oid.
        relid: u32,
        /// The old key or row, when the key changed or the identity is FULL.
        old: Option<(OldKind, Vec<Datum<'a>>)>,
        /// The new row.
        new: Vec<Datum<'a>>,
    },
    /// A deleted row.
    Delete {
        /// Table oid.
        relid: u32,
        /// What identifies the row.
        old_kind: OldKind,
        /// The old key columns or the old row.
        old: Vec<Datum<'a>>,
    },
    /// TRUNCATE of one or more tables.
    Truncate {
        /// Option bits: 1 CASCADE, 2 RESTART IDENTITY.
        options: u8,
        /// The tables' oids.
        relids: Vec<u32>,
    },
}

/// A bounds-checked reader over one message.
struct Reader<'a> {
    /// The message.
    bytes: &'a [u8],
    /// Next byte to read.
    at: usize,
}

impl<'a> Reader<'a> {
    /// `n` bytes, or an error naming what was read.
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ParseError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(ParseError(format!("message ends inside {what} (at byte {} of {})", self.at, self.bytes.len())));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// One byte.
    fn u8(&mut self, what: &str) -> Result<u8, ParseError> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian 16-bit integer.
    fn i16(&mut self, what: &str) -> Result<i16, ParseError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian 32-bit integer.
    fn i32(&mut self, what: &str) -> Result<i32, ParseError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian 32-bit unsigned integer (oids, xids).
    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        Ok(self.i32(what)? as u32)
    }

    /// A big-endian 64-bit integer.
    fn i64(&mut self, what: &str) -> Result<i64, ParseError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A big-endian 64-bit unsigned integer (LSNs).
    fn u64(&mut self, what: &str) -> Result<u64, ParseError> {
        Ok(self.i64(what)? as u64)
    }

    /// A NUL-terminated string, without its NUL.
    fn cstr(&mut self, what: &str) -> Result<&'a [u8], ParseError> {
        let rest = &self.bytes[self.at..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(ParseError(format!("{what} is not NUL-terminated")));
        };
        self.at += len + 1;
        Ok(&rest[..len])
    }

    /// A NUL-terminated string as UTF-8 text.
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let bytes = self.cstr(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ParseError(format!("{what} is not UTF-8")))
    }

    /// TupleData: a column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Vec<Datum<'a>>, ParseError> {
        let count = self.i16("a tuple's column count")?;
        let count = usize::try_from(count).map_err(|_| ParseError(format!("a tuple has a negative column count {count}")))?;
        // Each column takes at least one byte: a count beyond the bytes left is malformed, and
        // must not reserve memory for it.
        if count > self.bytes.len() - self.at {
            return Err(ParseError(format!("a tuple claims {count} columns in {} bytes", self.bytes.len() - self.at)));
        }
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = self.u8("a column's kind")?;
            let datum = match kind {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("a column value's length")?;
                    let len = usize::try_from(len).map_err(|_| ParseError(format!("a column value has a negative length {len}")))?;
                    let bytes = self.take(len, "a column value")?;
                    if kind == b't' { Datum::Text(bytes) } else { Datum::Binary(bytes) }
                }
                other => return Err(ParseError(format!("unknown column kind {:?}", char::from(other)))),
            };
            values.push(datum);
        }
        Ok(values)
    }

    /// An error unless every byte was read.
    fn end(&self, what: &str) -> Result<(), ParseError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(ParseError(format!("{} bytes left after a {what} message", self.bytes.len() - self.at)))
        }
    }
}

/// Parses one pgoutput message (protocol version 1).
///
/// # Errors
/// Empty, truncated or overlong messages, unknown message types, tuple markers or column kinds.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, ParseError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8("the message type")?;
    let (message, what) = match tag {
        b'B' => {
            let final_lsn = r.u64("Begin's final LSN")?;
            let commit_time = r.i64("Begin's commit time")?;
            let xid = r.u32("Begin's xid")?;
            (Message::Begin { final_lsn, commit_time, xid }, "Begin")
        }
        b'C' => {
            let _flags = r.u8("Commit's flags")?;
            let commit_lsn = r.u64("Commit's LSN")?;
            let end_lsn = r.u64("Commit's end LSN")?;
            let commit_time = r.i64("Commit's time")?;
            (Message::Commit { commit_lsn, end_lsn, commit_time }, "Commit")
        }
        b'O' => {
            let commit_lsn = r.u64("Origin's LSN")?;
            let name = r.cstr("Origin's name")?;
            (Message::Origin { commit_lsn, name }, "Origin")
        }
        b'R' => {
            let relid = r.u32("Relation's oid")?;
            let namespace = r.string("Relation's namespace")?;
            let name = r.string("Relation's name")?;
            let replica_identity = r.u8("Relation's replica identity")?;
            let count = r.i16("Relation's column count")?;
            let count = usize::try_from(count).map_err(|_| ParseError(format!("a Relation has a negative column count {count}")))?;
            let mut columns = Vec::with_capacity(count.min(bytes.len()));
            for _ in 0..count {
                let flags = r.u8("a Relation column's flags")?;
                let name = r.string("a Relation column's name")?;
                let type_oid = r.u32("a Relation column's type")?;
                let type_modifier = r.i32("a Relation column's type modifier")?;
                columns.push(RelationColumn { is_key: flags & 1 != 0, name, type_oid, type_modifier });
            }
            (Message::Relation(Relation { relid, namespace, name, replica_identity, columns }), "Relation")
        }
        b'Y' => {
            let type_oid = r.u32("Type's oid")?;
            let namespace = r.cstr("Type's namespace")?;
            let name = r.cstr("Type's name")?;
            (Message::Type { type_oid, namespace, name }, "Type")
        }
        b'I' => {
            let relid = r.u32("Insert's relation")?;
            match r.u8("Insert's tuple marker")? {
                b'N' => {}
                other => return Err(ParseError(format!("Insert has tuple marker {:?}, not 'N'", char::from(other)))),
            }
            (Message::Insert { relid, new: r.tuple()? }, "Insert")
        }
        b'U' => {
            let relid = r.u32("Update's relation")?;
            let mut marker = r.u8("Update's tuple marker")?;
            let mut old = None;
            if let Some(kind) = old_kind(marker) {
                old = Some((kind, r.tuple()?));
                marker = r.u8("Update's new tuple marker")?;
            }
            if marker != b'N' {
                return Err(ParseError(format!("Update has tuple marker {:?}, not 'K', 'O' or 'N'", char::from(marker))));
            }
            (Message::Update { relid, old, new: r.tuple()? }, "Update")
        }
        b'D' => {
            let relid = r.u32("Delete's relation")?;
            let marker = r.u8("Delete's tuple marker")?;
            let Some(old_kind) = old_kind(marker) else {
                return Err(ParseError(format!("Delete has tuple marker {:?}, not 'K' or 'O'", char::from(marker))));
            };
            (Message::Delete { relid, old_kind, old: r.tuple()? }, "Delete")
        }
        b'T' => {
            let count = r.i32("Truncate's relation count")?;
            let count = usize::try_from(count).map_err(|_| ParseError(format!("a Truncate has a negative relation count {count}")))?;
            let options = r.u8("Truncate's options")?;
            if count > (bytes.len() - r.at) / 4 {
                return Err(ParseError(format!("a Truncate claims {count} relations in {} bytes", bytes.len() - r.at)));
            }
            let mut relids = Vec::with_capacity(count);
            for _ in 0..count {
                relids.push(r.u32("a truncated relation")?);
            }
            (Message::Truncate { options, relids }, "Truncate")
        }
        other => return Err(ParseError(format!("unknown message type {:?}", char::from(other)))),
    };
    r.end(what)?;
    Ok(message)
}

/// The old tuple kind of marker `K` or `O`.
fn old_kind(marker: u8) -> Option<OldKind> {
    match marker {
        b'K' => Some(OldKind::Key),
        b'O' => Some(OldKind::Full),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds message bytes.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn value(self, kind: u8, v: &[u8]) -> Self {
            let mut b = self.u8(kind).i32(v.len() as i32);
            b.0.extend_from_slice(v);
            b
        }
    }

    /// Every strict prefix of a valid message is an error, never a panic.
    fn truncations_fail(bytes: &[u8]) {
        for end in 0..bytes.len() {
            assert!(parse(&bytes[..end]).is_err(), "prefix of {end} bytes of {bytes:?} parsed");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(parse(&longer).is_err(), "a trailing byte was accepted");
    }

    #[test]
    fn begin_and_commit() {
        let begin = Bytes::default().u8(b'B').i64(0x0010_0000_034B_0E40).i64(818_000_000).i32(-5).0;
        assert_eq!(
            parse(&begin).unwrap(),
            Message::Begin { final_lsn: 0x0010_0000_034B_0E40, commit_time: 818_000_000, xid: u32::MAX - 4 }
        );
        truncations_fail(&begin);
        let commit = Bytes::default().u8(b'C').u8(0).i64(10).i64(20).i64(30).0;
        assert_eq!(parse(&commit).unwrap(), Message::Commit { commit_lsn: 10, end_lsn: 20, commit_time: 30 });
        truncations_fail(&commit);
        let origin = Bytes::default().u8(b'O').i64(7).s("node").0;
        assert_eq!(parse(&origin).unwrap(), Message::Origin { commit_lsn: 7, name: b"node" });
        truncations_fail(&origin);
    }

    #[test]
    fn relation_and_type() {
        let relation = Bytes::default()
            .u8(b'R')
            .i32(16634)
            .s("public")
            .s("t")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .s("id")
            .i32(23)
            .i32(-1)
            .u8(0)
            .s("name")
            .i32(1043)
            .i32(24)
            .0;
        let Message::Relation(r) = parse(&relation).unwrap() else { panic!("not a relation") };
        assert_eq!((r.relid, r.namespace.as_str(), r.name.as_str(), r.replica_identity), (16634, "public", "t", b'd'));
        assert_eq!(r.columns[0], RelationColumn { is_key: true, name: "id".into(), type_oid: 23, type_modifier: -1 });
        assert_eq!(r.columns[1], RelationColumn { is_key: false, name: "name".into(), type_oid: 1043, type_modifier: 24 });
        truncations_fail(&relation);
        let negative = Bytes::default().u8(b'R').i32(1).s("s").s("t").u8(b'd').i16(-1).0;
        assert!(parse(&negative).is_err());
        let not_utf8 = Bytes::default().u8(b'R').i32(1).u8(0xff).u8(0).s("t").u8(b'd').i16(0).0;
        assert!(parse(&not_utf8).is_err());
        let ty = Bytes::default().u8(b'Y').i32(16391).s("public").s("hstore").0;
        assert_eq!(parse(&ty).unwrap(), Message::Type { type_oid: 16391, namespace: b"public", name: b"hstore" });
        truncations_fail(&ty);
    }

    #[test]
    fn insert_update_delete_tuples() {
        let insert = Bytes::default().u8(b'I').i32(5).u8(b'N').i16(4).u8(b'n').u8(b'u').value(b't', b"hi").value(b'b', &[0, 0, 0, 7]).0;
        assert_eq!(
            parse(&insert).unwrap(),
            Message::Insert { relid: 5, new: vec![Datum::Null, Datum::UnchangedToast, Datum::Text(b"hi"), Datum::Binary(&[0, 0, 0, 7])] }
        );
        truncations_fail(&insert);
        let update = Bytes::default().u8(b'U').i32(5).u8(b'N').i16(1).value(b'b', &[1]).0;
        assert_eq!(parse(&update).unwrap(), Message::Update { relid: 5, old: None, new: vec![Datum::Binary(&[1])] });
        truncations_fail(&update);
        let keyed = Bytes::default().u8(b'U').i32(5).u8(b'K').i16(1).value(b'b', &[1]).u8(b'N').i16(1).value(b'b', &[2]).0;
        assert_eq!(
            parse(&keyed).unwrap(),
            Message::Update { relid: 5, old: Some((OldKind::Key, vec![Datum::Binary(&[1])])), new: vec![Datum::Binary(&[2])] }
        );
        truncations_fail(&keyed);
        let delete = Bytes::default().u8(b'D').i32(5).u8(b'O').i16(2).value(b'b', &[9]).u8(b'n').0;
        assert_eq!(
            parse(&delete).unwrap(),
            Message::Delete { relid: 5, old_kind: OldKind::Full, old: vec![Datum::Binary(&[9]), Datum::Null] }
        );
        truncations_fail(&delete);
    }

    #[test]
    fn truncate() {
        let t = Bytes::default().u8(b'T').i32(2).u8(1).i32(10).i32(11).0;
        assert_eq!(parse(&t).unwrap(), Message::Truncate { options: 1, relids: vec![10, 11] });
        truncations_fail(&t);
        let huge = Bytes::default().u8(b'T').i32(i32::MAX).u8(0).0;
        assert!(parse(&huge).is_err());
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"Z".to_vec(),
            Bytes::default().u8(b'I').i32(1).u8(b'K').i16(0).0,
            Bytes::default().u8(b'U').i32(1).u8(b'X').0,
            Bytes::default().u8(b'U').i32(1).u8(b'K').i16(0).u8(b'K').i16(0).0,
            Bytes::default().u8(b'D').i32(1).u8(b'N').i16(0).0,
            Bytes::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'x').0,
            Bytes::default().u8(b'I').i32(1).u8(b'N').i16(-3).0,
            Bytes::default().u8(b'I').i32(1).u8(b'N').i16(i16::MAX).u8(b'n').0,
            Bytes::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'b').i32(-1).0,
            Bytes::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'b').i32(i32::MAX).u8(1).0,
            Bytes::default().u8(b'O').i64(1).u8(b'x').0,
        ];
        for bytes in cases {
            assert!(parse(&bytes).is_err(), "{bytes:?} parsed");
        }
    }

    /// A byte string from a real PostgreSQL 15 (`binary` true): BEGIN, an Insert of
    /// (int4 1, NULL) and a Commit.
    #[test]
    fn messages_from_a_server() {
        let begin = hex("4200000000034b0e40000304ee4c4ba410000002e1");
        assert!(matches!(parse(&begin).unwrap(), Message::Begin { final_lsn: 0x34b_0e40, xid: 0x2e1, .. }));
        let commit = hex("430000000000034b0e4000000000034b0e70000304ee4c4ba410");
        assert!(matches!(parse(&commit).unwrap(), Message::Commit { commit_lsn: 0x34b_0e40, end_lsn: 0x34b_0e70, .. }));
        let mut insert = hex("49000040fa4e0002620000000400000001");
        insert.push(b'n');
        assert_eq!(parse(&insert).unwrap(), Message::Insert { relid: 0x40fa, new: vec![Datum::Binary(&[0, 0, 0, 1]), Datum::Null] });
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let valid = Bytes::default().u8(b'U').i32(5).u8(b'K').i16(1).value(b'b', &[1]).u8(b'N').i16(2).u8(b'u').value(b't', b"x").0;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..=next() % 4 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let _ = parse(&bytes);
            let random: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
            let _ = parse(&random);
        }
    }

    /// Bytes of a hex string.
    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }
}
