//! FULL_TABLE in storage order: a table (or materialized view) read as one statement,
//! `select ctid, <cols> from t where ctid >= $1`, which PostgreSQL 14+ answers with a TID range
//! scan (or a sequential scan with synchronized scans off): rows come in storage order at the
//! cost of a plain sequential scan, without the ordered index scan (or sort) that resuming by
//! primary key needs, and also for tables without a primary key.
//!
//! The statement streams the whole table in one request, so the number of round trips does not
//! grow with the table. Batches are cut by the pipeline at block boundaries once about
//! `itersize` rows were written: the `ctid` of the next row says that every row of the blocks
//! before it was sent, which is what the bookmark's `block_resume` records (`next_block`, the
//! table's `relfilenode`, the snapshot's `snapshot_xmin`). No statistics are involved, so a
//! batch is never much more than `itersize` rows (at most one block's rows more).
//!
//! An interrupted sync resumes with the same table version: it first sends the rows before the
//! resume point that are newer than the interrupted run's snapshot (`age(xmin)` no older than
//! its `snapshot_xmin`: rows inserted or updated since, which may have moved into earlier
//! blocks), then reads on from it. A lost connection resumes the same way inside the run, from
//! the exact `ctid` of the last row written. A rewritten table (`VACUUM FULL`, `CLUSTER`,
//! `TRUNCATE`, a rewriting `ALTER TABLE`: a new relfilenode) or a resume point too old for
//! 32-bit transaction ids starts over with a new version.
//!
//! This module knows the queries and the storage checks; the pipeline runs them.

use tokio_postgres::types::Type;

use crate::query;

/// The bookmark's form of a read's position lives with the bookmark (`block_resume`).
pub use crate::state::{BlockMark, END_BLOCK};

/// How many transaction ids may pass before a resume point is too old to compare 32-bit xmins
/// with (half of the 2^31 that `age()` can tell apart).
pub const MAX_RESUME_XID_AGE: u64 = 1 << 30;

/// A tuple's place: block and line pointer (offsets start at 1, so `(b, 0)` is before every
/// tuple of block `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tid {
    /// Block number.
    pub block: u32,
    /// Line pointer within the block.
    pub offset: u16,
}

impl Tid {
    /// The first place of block `block`.
    pub fn block_start(block: u64) -> Tid {
        Tid { block: u32::try_from(block).unwrap_or(u32::MAX), offset: 0 }
    }

    /// The place right after this one.
    pub fn next(self) -> Tid {
        match self.offset.checked_add(1) {
            Some(offset) => Tid { offset, ..self },
            None => Tid { block: self.block.saturating_add(1), offset: 0 },
        }
    }

    /// Decodes the binary `tid` (block number, then line pointer, big-endian).
    pub fn from_wire(raw: &[u8]) -> Option<Tid> {
        let block = u32::from_be_bytes(raw.get(0..4)?.try_into().ok()?);
        let offset = u16::from_be_bytes(raw.get(4..6)?.try_into().ok()?);
        Some(Tid { block, offset })
    }

    /// PostgreSQL's text form, `(block,offset)`, bound as a parameter.
    pub fn to_text(self) -> String {
        format!("({},{})", self.block, self.offset)
    }
}

/// Where a read starts again: every row visible to the snapshot with `snapshot_xmin` that lies
/// before `from` in the storage `relfilenode` has been sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// First place not yet read.
    pub from: Tid,
    /// The storage read then.
    pub relfilenode: u64,
    /// That read's snapshot xmin (epoch-qualified).
    pub snapshot_xmin: u64,
}

impl From<BlockMark> for Resume {
    fn from(mark: BlockMark) -> Resume {
        Resume { from: Tid::block_start(mark.next_block), relfilenode: mark.relfilenode, snapshot_xmin: mark.snapshot_xmin }
    }
}

/// One storage-order read of a table.
pub struct BlockRead {
    /// `pg_class.oid` of the table when planned.
    pub oid: u32,
    /// The table's qualified, quoted name.
    pub table: String,
    /// The plan's `lock table ... in access share mode`; `None` for a materialized view, which
    /// LOCK TABLE does not take.
    pub lock: Option<String>,
    /// `select ctid, <items> from <table> where ctid >= $1` (see [`query::full_table_blocks`]).
    pub select_sql: String,
    /// The same from the table's first block: `select ctid, <items> from <table>` (a plain
    /// sequential scan, in storage order under [`opening_sql`]'s settings).
    pub scan_sql: String,
    /// `select ctid, <items> from <table> where ctid < $1 and <xmin newer than $2>`.
    pub catch_up_sql: String,
    /// Where an interrupted read stopped, already checked by [`resumable`].
    pub resume: Option<Resume>,
    /// XMIN's later runs: only rows whose `xmin` is not older than this (epoch-qualified) xid.
    pub since: Option<u64>,
}

impl BlockRead {
    /// A read of `items` of `schema`.`table` from the start, or from `resume`.
    pub fn new(oid: u32, (schema, table): (&str, &str), lock: Option<String>, items: &[String], resume: Option<Resume>) -> BlockRead {
        BlockRead::since(oid, (schema, table), lock, items, resume, None)
    }

    /// [`BlockRead::new`] reading only the rows whose `xmin` is not older than `since` (XMIN).
    pub fn since(
        oid: u32,
        (schema, table): (&str, &str),
        lock: Option<String>,
        items: &[String],
        resume: Option<Resume>,
        since: Option<u64>,
    ) -> BlockRead {
        let mut with_ctid = Vec::with_capacity(items.len() + 1);
        with_ctid.push("ctid".to_string());
        with_ctid.extend_from_slice(items);
        BlockRead {
            oid,
            table: query::qualified_name(schema, table),
            lock,
            select_sql: match since {
                None => query::full_table_blocks(&with_ctid, schema, table),
                Some(_) => query::xmin_blocks(&with_ctid, schema, table),
            },
            scan_sql: match since {
                None => query::full_table(&with_ctid, schema, table, &[], query::KeyStart::First),
                Some(_) => query::xmin_query(&with_ctid, schema, table),
            },
            catch_up_sql: query::full_table_catch_up(&with_ctid, schema, table),
            resume,
            since,
        }
    }

    /// The main statement reading from `from`, and its parameters. From the table's first block
    /// it is a plain sequential scan ([`BlockRead::scan_sql`]): the TID range scan compares
    /// every tuple's place with the range, about 25 ms per 2,000,000 rows here (144 against
    /// 117 ms for XMIN's scan that finds nothing). (The catch-up needs no `since`: its own rule,
    /// rows newer than the interrupted snapshot, is the stricter one.)
    pub fn select(&self, from: Tid) -> (&str, Vec<String>) {
        let since = self.since.map(xid32);
        if from == Tid::block_start(0) {
            return (&self.scan_sql, since.into_iter().collect());
        }
        let mut params = vec![from.to_text()];
        params.extend(since);
        (&self.select_sql, params)
    }
}

/// The 32-bit xid text of an epoch-qualified one, as `age()` compares them.
pub fn xid32(xid: u64) -> String {
    (xid % (1 << 32)).to_string()
}

/// What the start of a read found: the storage and snapshot it reads, and whether it first
/// catches up on rows changed before the resume point.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// `pg_relation_filenode` now.
    pub relfilenode: u64,
    /// This transaction's snapshot xmin (epoch-qualified).
    pub snapshot_xmin: u64,
    /// The resume point when it is still valid for this storage (a catch-up comes first).
    pub resume: Option<Resume>,
}

impl Start {
    /// The bookmark mark for "blocks before `next_block` are sent" in this read.
    pub fn mark(&self, next_block: u64) -> BlockMark {
        BlockMark { next_block, relfilenode: self.relfilenode, snapshot_xmin: self.snapshot_xmin }
    }
}

/// Whether `mark` can still be resumed from: the table has the same storage (`relfilenode`,
/// `pg_relation_filenode` as read with the catalog) and not too many transactions passed for
/// 32-bit xmin comparisons (`next_xid`, the next transaction id read with the catalog).
///
/// Both were read with the catalog at the start of the run, which costs no query here, and is
/// no less safe than asking now: the read's own [`begin`] checks the storage again inside its
/// transaction, after its lock, and starts over with a new version when the table was
/// rewritten in between; and the few transaction ids that pass between the catalog read and
/// this read are nothing against the margin `MAX_RESUME_XID_AGE` keeps (half of the 2^31 that
/// `age()` tells apart).
pub fn resumable(mark: &BlockMark, relfilenode: Option<u64>, next_xid: u64) -> bool {
    let same_storage = relfilenode == Some(mark.relfilenode);
    let recent = next_xid.checked_sub(mark.snapshot_xmin).is_some_and(|age| age < MAX_RESUME_XID_AGE);
    same_storage && recent
}

/// The statements that open a read, in the stream's REPEATABLE READ transaction, before its
/// snapshot is taken: a table is locked (ACCESS SHARE, held to the end of the transaction) so
/// that a rewrite under way (VACUUM FULL, CLUSTER, TRUNCATE, a rewriting ALTER TABLE) is waited
/// for and then seen, and one that commits later waits for this read. A materialized view cannot
/// be locked by LOCK TABLE: reading it takes the snapshot first and the lock after, so a REFRESH
/// can commit in between, which [`begin`]'s check then sees. (`pg_relation_size` locks only while
/// it runs, and is no lock for this.) Synchronized and parallel scans are off so that rows come
/// in storage order whatever plan the server picks.
pub fn opening_sql(read: &BlockRead) -> String {
    let lock = read.lock.clone().unwrap_or_else(|| format!("select from {} limit 0", read.table));
    format!("set local synchronize_seqscans = off; set local max_parallel_workers_per_gather = 0; {lock}")
}

/// After [`opening_sql`]: the storage and the snapshot of the table named by `$1` (its qualified
/// name), read by [`begin`] (or sent ahead by XMIN, [`super::reader::Opening`]).
pub const STORAGE_CHECK_SQL: &str = "select pg_relation_filenode(c.oid)::bigint, txid_snapshot_xmin(txid_current_snapshot()), c.oid, \
     c.relfilenode::bigint = pg_relation_filenode(c.oid)::bigint \
     from pg_class c where c.oid = cast($1::text as regclass)";

/// Runs [`STORAGE_CHECK_SQL`] for `read`: see [`start_from`].
pub async fn begin(client: &tokio_postgres::Client, read: &BlockRead) -> std::result::Result<Option<Start>, tokio_postgres::Error> {
    let rows = client.query_typed(STORAGE_CHECK_SQL, &[(&read.table, Type::TEXT)]).await?;
    start_from(&rows, read)
}

/// What [`STORAGE_CHECK_SQL`] found for `read`: `None` when the table was rewritten after this
/// transaction's snapshot was taken (the relfilenode the snapshot sees in pg_class differs from
/// the one in use now, which `pg_relation_filenode` reads from the current catalog): the
/// snapshot may not see the new storage's rows, so the read must start over in a new
/// transaction. A resume point is kept only for the same table (oid) and storage.
pub fn start_from(rows: &[tokio_postgres::Row], read: &BlockRead) -> std::result::Result<Option<Start>, tokio_postgres::Error> {
    let Some(row) = rows.first() else { return Ok(None) };
    let relfilenode = row.try_get::<_, Option<i64>>(0)?.unwrap_or(0) as u64;
    let snapshot_xmin = row.try_get::<_, i64>(1)? as u64;
    // A table dropped and created again under the same name since the plan is a new table.
    let same_table = row.try_get::<_, u32>(2)? == read.oid;
    if !row.try_get::<_, Option<bool>>(3)?.unwrap_or(true) {
        return Ok(None);
    }
    let resume = read.resume.filter(|r| same_table && r.relfilenode == relfilenode);
    Ok(Some(Start { relfilenode, snapshot_xmin, resume }))
}

/// The parameters of the catch-up statement: the resume point and the interrupted snapshot's
/// xmin as a 32-bit xid (`age()` compares ids on the wraparound circle).
pub fn catch_up_params(resume: &Resume) -> [String; 2] {
    [resume.from.to_text(), xid32(resume.snapshot_xmin)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_order_decode_and_step() {
        assert_eq!(Tid::from_wire(&[0, 0, 1, 0, 0, 7]), Some(Tid { block: 256, offset: 7 }));
        assert_eq!(Tid::from_wire(&[0, 0, 1]), None);
        assert!(Tid { block: 1, offset: 9 } < Tid { block: 2, offset: 1 });
        assert_eq!(Tid { block: 3, offset: 5 }.next(), Tid { block: 3, offset: 6 });
        assert_eq!(Tid { block: 3, offset: u16::MAX }.next(), Tid { block: 4, offset: 0 });
        assert_eq!(Tid::block_start(7).to_text(), "(7,0)");
        assert_eq!(Tid::block_start(END_BLOCK), Tid { block: u32::MAX, offset: 0 });
        let resume = Resume::from(BlockMark { next_block: 4, relfilenode: 1, snapshot_xmin: (1 << 32) + 5 });
        assert_eq!(catch_up_params(&resume), ["(4,0)".to_string(), "5".to_string()]);
    }

    #[test]
    fn marks_resume_on_the_same_storage_within_the_xid_margin() {
        let mark = BlockMark { next_block: 9, relfilenode: 16388, snapshot_xmin: 1000 };
        assert!(resumable(&mark, Some(16388), 1000));
        assert!(resumable(&mark, Some(16388), 1000 + MAX_RESUME_XID_AGE - 1));
        assert!(!resumable(&mark, Some(16388), 1000 + MAX_RESUME_XID_AGE), "too old for 32-bit xmins");
        assert!(!resumable(&mark, Some(16388), 999), "ahead of the server");
        assert!(!resumable(&mark, Some(16389), 1000), "rewritten");
        assert!(!resumable(&mark, None, 1000), "no storage");
    }
}
