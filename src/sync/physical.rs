//! FULL_TABLE in storage order: a table (or materialized view) read in ranges of blocks,
//! `where ctid >= '(a,0)' and ctid < '(b,0)'`, which PostgreSQL 14+ answers with a TID range
//! scan: the cost of a plain sequential scan, without the ordered index scan (or sort) that
//! resuming by primary key needs, and also for tables without a primary key.
//!
//! Each range is one batch, sized from the rows per block seen so far to hold about `itersize`
//! rows; after it the bookmark's `block_resume` says: every row visible to this run's snapshot
//! in the blocks before `next_block` has been sent. An interrupted sync resumes with the same
//! table version: it first sends the rows in those earlier blocks that are newer than the
//! interrupted run's snapshot (`age(xmin)` no older than its `snapshot_xmin`: rows inserted or
//! updated since, which may have moved into earlier blocks), then reads on from `next_block`.
//! So no row that exists when a sync ends is missed; rows changed in the gap may be sent twice.
//! A rewritten table (`VACUUM FULL`, `CLUSTER`, `TRUNCATE`, a rewriting `ALTER TABLE`: a new
//! relfilenode) or a resume point too old for 32-bit transaction ids starts over with a new
//! version.

use postgres::{Client, Transaction};
use serde_json::{Value, json};

use super::{FetchTarget, Fetched, pump};
use crate::connect::classify;
use crate::error::Result;

/// The upper bound of the last range: past every block a table can have.
const END_BLOCK: u64 = u32::MAX as u64;
/// Most blocks in one range (8 GiB of 8 kB blocks), whatever the rows per block.
const MAX_RANGE_BLOCKS: u64 = 1 << 20;
/// Rows per block assumed when `pg_class` has no statistics yet.
const DEFAULT_ROWS_PER_BLOCK: f64 = 50.0;
/// How many transaction ids may pass before a resume point is too old to compare 32-bit xmins
/// with (half of the 2^31 that `age()` can tell apart).
const MAX_RESUME_XID_AGE: u64 = 1 << 30;

/// Where a block-range read stands: rows visible to the snapshot whose xmin horizon is
/// `snapshot_xmin` in blocks before `next_block` have been sent; the table's storage is
/// `relfilenode`. Kept in the bookmark as `block_resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMark {
    /// First block not yet read.
    pub next_block: u64,
    /// `pg_relation_filenode` of the table when it was read.
    pub relfilenode: u64,
    /// `txid_snapshot_xmin` (epoch-qualified) of that run's snapshot.
    pub snapshot_xmin: u64,
}

impl BlockMark {
    /// The bookmark form.
    pub fn to_value(self) -> Value {
        json!({"next_block": self.next_block, "relfilenode": self.relfilenode, "snapshot_xmin": self.snapshot_xmin})
    }

    /// Reads the bookmark form; `None` when it is not one.
    pub fn from_value(value: &Value) -> Option<BlockMark> {
        let field = |name: &str| value.get(name).and_then(Value::as_u64);
        // Block numbers are 32-bit; END_BLOCK is the mark after the last range.
        let next_block = field("next_block").filter(|&b| b <= END_BLOCK)?;
        Some(BlockMark { next_block, relfilenode: field("relfilenode")?, snapshot_xmin: field("snapshot_xmin")? })
    }
}

/// One block-range read of a table.
pub struct BlockRead<'a> {
    /// The stream's `tap_stream_id`, for log lines.
    pub stream_id: &'a str,
    /// `pg_class.oid` of the table.
    pub oid: u32,
    /// The table's qualified, quoted name, to lock it.
    pub table: &'a str,
    /// A table (`LOCK TABLE` works), not a materialized view.
    pub lockable: bool,
    /// `select <items> from <table> where ctid >= $1 and ctid < $2` (see `query::full_table_blocks`).
    pub range_sql: &'a str,
    /// `select <items> from <table> where ctid < $1 and <xmin newer than $2>` (see `query::full_table_catch_up`).
    pub catch_up_sql: &'a str,
    /// Where an interrupted sync stopped, already checked by [`resumable`].
    pub resume: Option<BlockMark>,
    /// Rows wanted per range.
    pub itersize: u32,
}

/// A tid literal for block `block`, offset 0.
fn tid(block: u64) -> String {
    format!("({block},0)")
}

/// Whether `mark` can still be resumed from: the table has the same storage and not too many
/// transactions passed for 32-bit xmin comparisons.
pub fn resumable(client: &mut Client, oid: u32, mark: &BlockMark) -> Result<bool> {
    let row = client
        .query_one("select pg_relation_filenode($1::oid)::bigint, txid_snapshot_xmax(txid_current_snapshot())", &[&oid])
        .map_err(|e| classify(e, "checking the table's storage for resuming", crate::config::SslMode::Require))?;
    let relfilenode: Option<i64> = row.get(0);
    let xmax: i64 = row.get(1);
    let same_storage = relfilenode.is_some_and(|f| f as u64 == mark.relfilenode);
    let recent = (xmax as u64).checked_sub(mark.snapshot_xmin).is_some_and(|age| age < MAX_RESUME_XID_AGE);
    Ok(same_storage && recent)
}

/// Reads the table in block ranges inside `tx` (the stream's REPEATABLE READ transaction),
/// sending rows, a `CaughtUp` after the catch-up of a resumed read and a batch end after each
/// range. Returns `Some(false)` when the encoder stopped listening, and `None`, before sending
/// anything, when the table was rewritten after this transaction's snapshot was taken (read
/// again in a new transaction).
pub fn read(tx: &mut Transaction<'_>, read: &BlockRead<'_>, target: &FetchTarget<'_>) -> Result<Option<bool>> {
    let query_error = target.query_error;
    // The lock (ACCESS SHARE, held to the end of the transaction) keeps the table's storage as it
    // is while this transaction reads it. A table is locked before the first statement takes the
    // snapshot, so a rewrite under way (VACUUM FULL, CLUSTER, TRUNCATE, a rewriting ALTER TABLE)
    // is waited for and then seen. A materialized view cannot be locked by LOCK TABLE: reading it
    // takes the snapshot first and the lock after, so a REFRESH can commit in between. Either
    // way the check below compares the relfilenode this snapshot sees in pg_class with the one
    // in use now (`pg_relation_filenode` reads the current catalog): when they differ, the
    // snapshot predates the storage, whose rows it may not see, and the read starts over in a
    // new transaction. (`pg_relation_size` locks only while it runs, and is no lock for this.)
    let lock = if read.lockable {
        format!("lock table {} in access share mode", read.table)
    } else {
        format!("select from {} limit 0", read.table)
    };
    tx.batch_execute(&lock).map_err(query_error)?;
    let row = tx
        .query_one(
            "select pg_relation_filenode(c.oid)::bigint, pg_relation_size(c.oid) / current_setting('block_size')::bigint, \
             txid_snapshot_xmin(txid_current_snapshot()), c.reltuples::float8, c.relpages::bigint, c.oid = $1, \
             c.relfilenode::bigint = pg_relation_filenode(c.oid)::bigint \
             from pg_class c where c.oid = cast($2::text as regclass)",
            &[&read.oid, &read.table],
        )
        .map_err(query_error)?;
    let internal = |e| crate::error::Error::new(crate::error::ErrorKind::Internal, "reading pg_class").with_source(e);
    let relfilenode = row.try_get::<_, Option<i64>>(0).map_err(internal)?.unwrap_or(0) as u64;
    let nblocks = row.try_get::<_, i64>(1).map_err(internal)?.max(0) as u64;
    let snapshot_xmin = row.try_get::<_, i64>(2).map_err(internal)? as u64;
    let (reltuples, relpages): (f64, i64) = (row.try_get(3).map_err(internal)?, row.try_get(4).map_err(internal)?);
    // A table dropped and created again under the same name since the plan is a new table.
    let same_table: bool = row.try_get(5).map_err(internal)?;
    if !row.try_get::<_, Option<bool>>(6).map_err(internal)?.unwrap_or(true) {
        return Ok(None);
    }
    let mark = |next_block| BlockMark { next_block, relfilenode, snapshot_xmin };

    let mut start = 0;
    if let Some(resume) = read.resume {
        if same_table && resume.relfilenode == relfilenode {
            let statement = tx.prepare_typed(read.catch_up_sql, &[postgres::types::Type::TEXT; 2]).map_err(query_error)?;
            let xid = (resume.snapshot_xmin % (1 << 32)).to_string();
            let portal = tx.bind(&statement, &[&tid(resume.next_block), &xid]).map_err(query_error)?;
            let Some(rows) = pump(tx, &portal, i64::MAX, target)? else { return Ok(Some(false)) };
            log::info!("stream {}: sent {rows} rows changed before block {} since the interrupted run", read.stream_id, resume.next_block);
            if !target.send(Fetched::CaughtUp(mark(resume.next_block))) {
                return Ok(Some(false));
            }
            start = resume.next_block;
        } else {
            // Rewritten between the check before this run and this transaction: read it all
            // again (with the same version; every row is sent).
            log::info!("stream {}: the table was rewritten just now; reading it from the first block", read.stream_id);
        }
    }

    let rows_per_block = if reltuples > 0.0 && relpages > 0 { reltuples / relpages as f64 } else { DEFAULT_ROWS_PER_BLOCK };
    let mut blocks = range_blocks(f64::from(read.itersize) / rows_per_block);
    let statement = tx.prepare_typed(read.range_sql, &[postgres::types::Type::TEXT; 2]).map_err(query_error)?;
    loop {
        let last = start + blocks >= nblocks;
        let end = if last { END_BLOCK } else { start + blocks };
        let portal = tx.bind(&statement, &[&tid(start), &tid(end)]).map_err(query_error)?;
        let Some(rows) = pump(tx, &portal, i64::MAX, target)? else { return Ok(Some(false)) };
        if !target.send(Fetched::BatchEnd { full: !last, mark: Some(mark(end)) }) {
            return Ok(Some(false));
        }
        if last {
            return Ok(Some(true));
        }
        // Size the next range from the rows per block of this one; grow over empty ones.
        blocks = if rows == 0 {
            range_blocks(blocks as f64 * 2.0)
        } else {
            range_blocks(f64::from(read.itersize) * blocks as f64 / rows as f64)
        };
        start = end;
    }
}

/// Blocks in a range: `wanted` rounded up, at least 1, at most [`MAX_RANGE_BLOCKS`].
fn range_blocks(wanted: f64) -> u64 {
    if wanted.is_finite() { (wanted.ceil() as u64).clamp(1, MAX_RANGE_BLOCKS) } else { MAX_RANGE_BLOCKS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_reject_other_shapes() {
        let mark = BlockMark { next_block: 12, relfilenode: 16388, snapshot_xmin: 4_294_967_300 };
        assert_eq!(BlockMark::from_value(&mark.to_value()), Some(mark));
        assert_eq!(BlockMark::from_value(&json!({"next_block": 1, "relfilenode": 2})), None);
        assert_eq!(BlockMark::from_value(&json!({"next_block": -1, "relfilenode": 2, "snapshot_xmin": 3})), None);
        assert_eq!(BlockMark::from_value(&json!("12")), None);
        let end = BlockMark { next_block: END_BLOCK, ..mark };
        assert_eq!(BlockMark::from_value(&end.to_value()), Some(end));
        assert_eq!(BlockMark::from_value(&json!({"next_block": END_BLOCK + 1, "relfilenode": 2, "snapshot_xmin": 3})), None);
    }

    #[test]
    fn range_sizes_stay_in_bounds() {
        assert_eq!(range_blocks(0.2), 1);
        assert_eq!(range_blocks(166.6), 167);
        assert_eq!(range_blocks(1e18), MAX_RANGE_BLOCKS);
        assert_eq!(range_blocks(f64::INFINITY), MAX_RANGE_BLOCKS);
        assert_eq!(tid(7), "(7,0)");
    }
}
