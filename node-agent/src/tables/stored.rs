//! How a table keeps its rows: encoded one after the other in one byte ring, with a small index
//! entry per row. A kept row then costs no allocation of its own (a `Row` holds a vector and a
//! string per text column), appending copies bytes, and eviction only moves the ring's start:
//! freeing thousands of long-lived small strings per second was most of an agent's cost under load.
use std::collections::VecDeque;

use super::{Row, Value};

/// Index entry of one kept row.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Length of its encoding in the ring.
    len: u32,
    time_ns: i64,
    /// Estimated heap size of the row as appended ([`super::row_size`]): what budgets count.
    size: usize,
}

/// The rows of one table, oldest first.
#[derive(Debug, Default)]
pub struct StoredRows {
    ring: VecDeque<u8>,
    index: VecDeque<Entry>,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

const NULL: u8 = 0;
const TIME: u8 = 1;
const INT64: u8 = 2;
const UINT64: u8 = 3;
const FLOAT64: u8 = 4;
const BOOLEAN: u8 = 5;
const STRING: u8 = 6;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Longer strings are cut at a character boundary: no value of a row comes near 4 GiB.
    let mut end = s.len().min(u32::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn encode(row: &Row, out: &mut Vec<u8>) {
    out.extend_from_slice(&row.time_ns.to_le_bytes());
    out.extend_from_slice(&row.pid.to_le_bytes());
    put_str(out, &row.namespace);
    put_str(out, &row.pod);
    put_str(out, &row.container);
    out.extend_from_slice(&(row.values.len() as u32).to_le_bytes());
    for value in &row.values {
        match value {
            Value::Null => out.push(NULL),
            Value::Time(v) => {
                out.push(TIME);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Int64(v) => {
                out.push(INT64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::UInt64(v) => {
                out.push(UINT64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Float64(v) => {
                out.push(FLOAT64);
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            Value::Boolean(v) => {
                out.push(BOOLEAN);
                out.push(u8::from(*v));
            }
            Value::String(v) => {
                out.push(STRING);
                put_str(out, v);
            }
        }
    }
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
    let pid = r.i64()?;
    let namespace = r.string()?;
    let pod = r.string()?;
    let container = r.string()?;
    let count = r.u32()? as usize;
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

    /// Keeps `row`, counted as `size` bytes.
    pub fn push(&mut self, row: &Row, size: usize) {
        self.scratch.clear();
        encode(row, &mut self.scratch);
        self.ring.extend(self.scratch.iter());
        self.index.push_back(Entry {
            len: self.scratch.len() as u32,
            time_ns: row.time_ns,
            size,
        });
    }

    /// Forgets the oldest row; returns its counted size.
    pub fn pop_front(&mut self) -> Option<usize> {
        let entry = self.index.pop_front()?;
        self.ring.drain(..entry.len as usize);
        Some(entry.size)
    }

    /// The newest `limit` rows at or after `since_ns`, oldest first.
    pub fn newest(&mut self, since_ns: i64, limit: usize) -> Vec<Row> {
        let ring = self.ring.make_contiguous();
        let mut end = ring.len();
        let mut rows = Vec::new();
        for entry in self.index.iter().rev() {
            if rows.len() >= limit {
                break;
            }
            let start = end - entry.len as usize;
            if entry.time_ns >= since_ns
                && let Some(row) = ring.get(start..end).and_then(decode)
            {
                rows.push(row);
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
        rows.push(&row, 1);
        rows.push(
            &Row {
                time_ns: 9,
                ..row.clone()
            },
            2,
        );
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
        assert_eq!(rows.pop_front(), Some(1));
        assert_eq!(rows.newest(i64::MIN, 10).len(), 1);
    }
}
