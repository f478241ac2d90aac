//! How a table keeps its rows: encoded one after the other in one byte ring, with a small index
//! entry per row. A kept row then costs no allocation of its own (a `Row` holds a vector and a
//! string per text column), appending copies bytes, and eviction only moves the ring's start:
//! freeing thousands of long-lived small strings per second was most of an agent's cost under load.
//! A runtime writing many rows encodes them straight into a [`RowBatch`], without a `Row` at all.
//! Budgets count what a row really takes: its encoding plus its index entry.
use std::collections::VecDeque;

use super::{Row, Value};

/// Index entry of one kept row.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Length of its encoding in the ring.
    len: u32,
    time_ns: i64,
}

/// Bytes a kept row of `encoded` bytes counts against the budgets.
pub fn kept_size(encoded: usize) -> usize {
    encoded + std::mem::size_of::<Entry>()
}

/// The rows of one table, oldest first.
#[derive(Debug, Default)]
pub struct StoredRows {
    ring: VecDeque<u8>,
    index: VecDeque<Entry>,
}

/// Rows encoded the way [`StoredRows`] keeps them, waiting to be appended to one table.
#[derive(Debug, Default)]
pub struct RowBatch {
    bytes: Vec<u8>,
    /// Per row: end offset in `bytes`, time, number of values.
    rows: Vec<(usize, i64, u32)>,
}

impl RowBatch {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Encoded bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of the finished rows: what keeping them all adds to a table's ring.
    fn finished_bytes(&self) -> usize {
        self.rows.last().map_or(0, |r| r.0)
    }

    /// What keeping every finished row counts against the budgets ([`kept_size`] of each).
    pub(super) fn kept_bytes(&self) -> usize {
        self.finished_bytes() + self.rows.len() * std::mem::size_of::<Entry>()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.rows.clear();
    }

    /// Starts a row with its target columns; add its values in column order, then
    /// [`RowEncoder::finish`] it (a row never finished is discarded by the next one).
    pub fn row(
        &mut self,
        time_ns: i64,
        pid: i64,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> RowEncoder<'_> {
        let out = self.start(time_ns);
        out.extend_from_slice(&pid.to_le_bytes());
        put_str(out, namespace);
        put_str(out, pod);
        put_str(out, container);
        RowEncoder {
            batch: self,
            time_ns,
            count: 0,
        }
    }

    /// Starts a row with `prefix` (its target columns and first values); add the rest as for
    /// [`RowBatch::row`].
    pub fn row_after(&mut self, time_ns: i64, prefix: &RowPrefix) -> RowEncoder<'_> {
        self.start(time_ns).extend_from_slice(&prefix.bytes);
        RowEncoder {
            batch: self,
            time_ns,
            count: prefix.values,
        }
    }

    /// Drops an unfinished row and writes the start of the next: its time and a value count
    /// that [`RowEncoder::finish`] fills in.
    fn start(&mut self, time_ns: i64) -> &mut Vec<u8> {
        let start = self.rows.last().map_or(0, |r| r.0);
        self.bytes.truncate(start);
        self.bytes.extend_from_slice(&time_ns.to_le_bytes());
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        &mut self.bytes
    }

    /// Every finished row: (encoding, time, number of values).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], i64, u32)> {
        let mut start = 0;
        self.rows.iter().map(move |&(end, time_ns, count)| {
            let bytes = &self.bytes[start..end];
            start = end;
            (bytes, time_ns, count)
        })
    }
}

/// One row being encoded into a [`RowBatch`].
pub struct RowEncoder<'a> {
    batch: &'a mut RowBatch,
    time_ns: i64,
    count: u32,
}

impl RowEncoder<'_> {
    fn tag(&mut self, tag: u8) -> &mut Vec<u8> {
        self.count += 1;
        self.batch.bytes.push(tag);
        &mut self.batch.bytes
    }

    /// A value of 8 bytes after its tag, written in one piece: rows are encoded for every
    /// request, and one capacity check and copy per value is measurably cheaper than two.
    #[inline]
    fn fixed(&mut self, tag: u8, v: [u8; 8]) -> &mut Self {
        self.count += 1;
        let mut encoded = [tag; 9];
        encoded[1..].copy_from_slice(&v);
        self.batch.bytes.extend_from_slice(&encoded);
        self
    }

    pub fn time(&mut self, v: i64) -> &mut Self {
        self.fixed(TIME, v.to_le_bytes())
    }

    #[inline]
    pub fn null(&mut self) -> &mut Self {
        self.tag(NULL);
        self
    }

    #[inline]
    pub fn int64(&mut self, v: i64) -> &mut Self {
        self.fixed(INT64, v.to_le_bytes())
    }

    pub fn uint64(&mut self, v: u64) -> &mut Self {
        self.fixed(UINT64, v.to_le_bytes())
    }

    pub fn float64(&mut self, v: f64) -> &mut Self {
        self.fixed(FLOAT64, v.to_bits().to_le_bytes())
    }

    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.tag(BOOLEAN).push(u8::from(v));
        self
    }

    #[inline]
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.count += 1;
        let kept = kept(v);
        let mut head = [STRING; 5];
        head[1..].copy_from_slice(&(kept.len() as u32).to_le_bytes());
        self.batch.bytes.extend_from_slice(&head);
        self.batch.bytes.extend_from_slice(kept);
        self
    }

    /// Ends the row.
    pub fn finish(&mut self) {
        let bytes = &mut self.batch.bytes;
        let count_at = self.batch.rows.last().map_or(0, |r| r.0) + COUNT_OFFSET;
        bytes[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.batch
            .rows
            .push((bytes.len(), self.time_ns, self.count));
    }
}

/// The leading part of the rows of one source (a connection's target and address columns),
/// encoded once and copied into each of its rows by [`RowBatch::row_after`].
#[derive(Clone, Debug, Default)]
pub struct RowPrefix {
    /// The row's encoding after its time and value count.
    bytes: Vec<u8>,
    /// Values it holds.
    values: u32,
}

impl RowPrefix {
    /// The target columns and the values `values` adds.
    pub fn new(
        pid: i64,
        namespace: &str,
        pod: &str,
        container: &str,
        values: impl FnOnce(&mut RowEncoder<'_>),
    ) -> RowPrefix {
        let mut batch = RowBatch::default();
        let mut row = batch.row(0, pid, namespace, pod, container);
        values(&mut row);
        let count = row.count;
        let mut bytes = batch.bytes;
        bytes.drain(..COUNT_OFFSET + 4);
        RowPrefix {
            bytes,
            values: count,
        }
    }
}

/// Where a row's value count is: after its time.
const COUNT_OFFSET: usize = 8;

const NULL: u8 = 0;
const TIME: u8 = 1;
const INT64: u8 = 2;
const UINT64: u8 = 3;
const FLOAT64: u8 = 4;
const BOOLEAN: u8 = 5;
const STRING: u8 = 6;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let kept = kept(s);
    out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
    out.extend_from_slice(kept);
}

/// The bytes of `s` a row keeps: longer strings are cut at a character boundary, no value of a row
/// comes near 4 GiB.
#[inline]
fn kept(s: &str) -> &[u8] {
    let mut end = s.len().min(u32::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// Adds `row` to `batch`.
pub(super) fn encode(row: &Row, batch: &mut RowBatch) {
    let mut e = batch.row(
        row.time_ns,
        row.pid,
        &row.namespace,
        &row.pod,
        &row.container,
    );
    for value in &row.values {
        match value {
            Value::Null => e.null(),
            Value::Time(v) => e.time(*v),
            Value::Int64(v) => e.int64(*v),
            Value::UInt64(v) => e.uint64(*v),
            Value::Float64(v) => e.float64(*v),
            Value::Boolean(v) => e.boolean(*v),
            Value::String(v) => e.string(v),
        };
    }
    e.finish();
}

/// Reads what [`encode`] wrote.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        let bytes = self.bytes.get(..len)?;
        self.bytes = &self.bytes[len..];
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn value(&mut self) -> Option<Value> {
        let [tag] = self.take::<1>()?;
        Some(match tag {
            NULL => Value::Null,
            TIME => Value::Time(self.i64()?),
            INT64 => Value::Int64(self.i64()?),
            UINT64 => Value::UInt64(self.u64()?),
            FLOAT64 => Value::Float64(f64::from_bits(self.u64()?)),
            BOOLEAN => Value::Boolean(self.take::<1>()? != [0]),
            STRING => Value::String(self.string()?),
            _ => return None,
        })
    }
}

fn decode(bytes: &[u8]) -> Option<Row> {
    let mut r = Reader { bytes };
    let time_ns = r.i64()?;
    let count = r.u32()? as usize;
    let pid = r.i64()?;
    let namespace = r.string()?;
    let pod = r.string()?;
    let container = r.string()?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(r.value()?);
    }
    Some(Row {
        time_ns,
        namespace,
        pod,
        container,
        pid,
        values,
    })
}

impl StoredRows {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Makes room for the finished rows of `batch` in the ring without growing it past `limit`
    /// bytes where they fit in that. A ring grown by doubling (what `VecDeque` does) could hold up
    /// to twice its table's budget, all of it touched as the ring turns.
    pub fn reserve(&mut self, batch: &RowBatch, limit: usize) {
        let needed = self.ring.len() + batch.finished_bytes();
        let capacity = self.ring.capacity();
        if needed > capacity {
            let target = (capacity * 2).min(limit).max(needed);
            self.ring.reserve_exact(target - self.ring.len());
        }
    }

    /// Bytes the ring has room for.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Keeps `row`; returns the bytes it counts ([`kept_size`]).
    #[cfg(test)]
    pub fn push(&mut self, row: &Row) -> usize {
        let mut batch = RowBatch::default();
        encode(row, &mut batch);
        batch
            .iter()
            .map(|(bytes, time_ns, _)| self.push_encoded(bytes, time_ns))
            .sum()
    }

    /// Keeps a row encoded by [`RowBatch`]; returns the bytes it counts.
    pub fn push_encoded(&mut self, bytes: &[u8], time_ns: i64) -> usize {
        self.ring.extend(bytes);
        self.index.push_back(Entry {
            len: bytes.len() as u32,
            time_ns,
        });
        kept_size(bytes.len())
    }

    /// Forgets the oldest row; returns its counted size.
    pub fn pop_front(&mut self) -> Option<usize> {
        let entry = self.index.pop_front()?;
        self.ring.drain(..entry.len as usize);
        Some(kept_size(entry.len as usize))
    }

    /// The newest `limit` rows at or after `since_ns`, oldest first.
    #[cfg(test)]
    pub fn newest(&self, since_ns: i64, limit: usize) -> Vec<Row> {
        self.newest_where(since_ns, limit, |_| true)
    }

    /// The newest `limit` rows at or after `since_ns` that `keep` accepts, oldest first.
    ///
    /// Read where the rows lie in the ring's two parts: making the ring contiguous first moved up
    /// to a whole table budget of bytes per query, under the lock the capture thread appends with.
    pub fn newest_where(
        &self,
        since_ns: i64,
        limit: usize,
        keep: impl Fn(&Row) -> bool,
    ) -> Vec<Row> {
        let (first, second) = self.ring.as_slices();
        // The one row that may straddle the two parts is decoded from a copy.
        let mut straddling = Vec::new();
        let mut end = self.ring.len();
        let mut rows = Vec::new();
        for entry in self.index.iter().rev() {
            if rows.len() >= limit {
                break;
            }
            let start = end - entry.len as usize;
            if entry.time_ns >= since_ns {
                let bytes = if end <= first.len() {
                    first.get(start..end)
                } else if start >= first.len() {
                    second.get(start - first.len()..end - first.len())
                } else {
                    straddling.clear();
                    straddling.extend_from_slice(&first[start..]);
                    straddling.extend_from_slice(&second[..end - first.len()]);
                    Some(&straddling[..])
                };
                if let Some(row) = bytes.and_then(decode).filter(&keep) {
                    rows.push(row);
                }
            }
            end = start;
        }
        rows.reverse();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_comes_back_as_it_went_in() {
        let row = Row {
            time_ns: -5,
            namespace: "ns".into(),
            pod: "pöd".into(),
            container: String::new(),
            pid: 1 << 40,
            values: vec![
                Value::Null,
                Value::Time(7),
                Value::Int64(-1),
                Value::UInt64(u64::MAX),
                Value::Float64(0.25),
                Value::Float64(f64::NAN),
                Value::Boolean(true),
                Value::String("héllo\n".into()),
                Value::String(String::new()),
            ],
        };
        let mut rows = StoredRows::default();
        let size = rows.push(&row);
        rows.push(&Row {
            time_ns: 9,
            ..row.clone()
        });
        let back = rows.newest(i64::MIN, 10);
        assert_eq!(back.len(), 2);
        // NaN is not equal to itself: compare its bits, the rest as rows.
        let nan = |r: &Row| match r.values[5] {
            Value::Float64(f) => f.to_bits(),
            _ => 0,
        };
        assert_eq!(nan(&back[0]), f64::NAN.to_bits());
        let without_nan = |mut r: Row| {
            r.values.remove(5);
            r
        };
        assert_eq!(without_nan(back[0].clone()), without_nan(row.clone()));
        assert_eq!(back[1].time_ns, 9);
        assert_eq!(rows.pop_front(), Some(size));
        assert_eq!(rows.newest(i64::MIN, 10).len(), 1);
    }

    #[test]
    fn rows_come_back_whole_where_the_ring_wraps_around() {
        let row = |i: i64| Row {
            time_ns: i,
            namespace: "ns".into(),
            pod: format!("pod-{i}"),
            container: "c".into(),
            pid: i,
            values: vec![Value::Int64(i), Value::String("x".repeat(i as usize % 7))],
        };
        // Does a kept row lie across the end of the ring's first part?
        let straddles = |rows: &StoredRows| {
            let first = rows.ring.as_slices().0.len();
            let mut end = 0;
            rows.index.iter().any(|e| {
                let start = end;
                end += e.len as usize;
                start < first && end > first
            })
        };
        let mut rows = StoredRows::default();
        for i in 0..40 {
            rows.push(&row(i));
        }
        // As eviction does: room freed at the front is reused by the rows pushed next.
        let mut next = 40;
        while !straddles(&rows) && next < 10_000 {
            rows.push(&row(next));
            rows.pop_front();
            next += 1;
        }
        assert!(straddles(&rows), "no row across the wrap after {next} rows");
        let expected: Vec<Row> = (next - 40..next).map(row).collect();
        assert_eq!(rows.newest(i64::MIN, 100), expected);
        assert_eq!(rows.newest(i64::MIN, 5), expected[35..]);
        assert_eq!(rows.newest(next - 10, 100), expected[30..]);
    }

    #[test]
    fn a_batch_row_is_stored_as_the_same_row_would_be() {
        let row = Row {
            time_ns: 42,
            namespace: "ns".into(),
            pod: "web-0".into(),
            container: "nginx".into(),
            pid: 7,
            values: vec![
                Value::Null,
                Value::Int64(-3),
                Value::UInt64(9),
                Value::Float64(1.5),
                Value::Boolean(false),
                Value::String("GET".into()),
            ],
        };
        let mut batch = RowBatch::default();
        // An unfinished row is discarded by the next one.
        batch.row(1, 1, "x", "y", "z").string("lost");
        batch
            .row(42, 7, "ns", "web-0", "nginx")
            .null()
            .int64(-3)
            .uint64(9)
            .float64(1.5)
            .boolean(false)
            .string("GET")
            .finish();
        assert_eq!(batch.len(), 1);
        let (bytes, time_ns, count) = batch.iter().next().unwrap();
        assert_eq!((time_ns, count), (42, 6));
        let mut rows = StoredRows::default();
        assert_eq!(rows.push_encoded(bytes, time_ns), kept_size(bytes.len()));
        assert_eq!(rows.push(&row), kept_size(bytes.len()));
        assert_eq!(rows.newest(i64::MIN, 10), vec![row.clone(), row]);
    }

    #[test]
    fn a_row_after_a_prefix_is_stored_as_the_whole_row_would_be() {
        let prefix = RowPrefix::new(7, "ns", "web-0", "nginx", |row| {
            row.string("10.0.0.1").int64(80);
        });
        let mut batch = RowBatch::default();
        for time_ns in [42, 43] {
            batch
                .row_after(time_ns, &prefix)
                .null()
                .string("GET")
                .finish();
        }
        // An unfinished row after a prefix is discarded too.
        batch.row_after(44, &prefix).string("lost");
        batch
            .row(45, 8, "other", "pod", "c")
            .string("10.0.0.2")
            .int64(81)
            .finish();
        let mut rows = StoredRows::default();
        for (bytes, time_ns, _) in batch.iter() {
            rows.push_encoded(bytes, time_ns);
        }
        let row = |time_ns, pid, namespace: &str, pod: &str, container: &str, values| Row {
            time_ns,
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
            pid,
            values,
        };
        let prefixed = |time_ns| {
            row(
                time_ns,
                7,
                "ns",
                "web-0",
                "nginx",
                vec![
                    Value::String("10.0.0.1".into()),
                    Value::Int64(80),
                    Value::Null,
                    Value::String("GET".into()),
                ],
            )
        };
        let plain = row(
            45,
            8,
            "other",
            "pod",
            "c",
            vec![Value::String("10.0.0.2".into()), Value::Int64(81)],
        );
        assert_eq!(
            rows.newest(i64::MIN, 10),
            vec![prefixed(42), prefixed(43), plain]
        );
    }
}
