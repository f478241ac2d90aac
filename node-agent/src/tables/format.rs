//! Encodings of query results: JSON (one array of row objects), NDJSON (one object per line) and
//! CSV (header row, RFC 4180 quoting by the `csv` crate). Objects keep the table's column order.
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::{QueryResult, Row, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// One row with every column, in column order.
fn cells<'a>(node: &'a str, row: &'a Row) -> impl Iterator<Item = Cell<'a>> {
    [
        Cell::Int(row.time_ns),
        Cell::Str(node),
        Cell::Str(&row.namespace),
        Cell::Str(&row.pod),
        Cell::Str(&row.container),
        Cell::Int(row.pid),
    ]
    .into_iter()
    .chain(row.values.iter().map(Cell::Value))
}

enum Cell<'a> {
    Int(i64),
    Str(&'a str),
    Value(&'a Value),
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Int(i) => s.serialize_i64(*i),
            Cell::Str(v) => s.serialize_str(v),
            Cell::Value(Value::Null) => s.serialize_unit(),
            Cell::Value(Value::Time(i) | Value::Int64(i)) => s.serialize_i64(*i),
            Cell::Value(Value::UInt64(u)) => s.serialize_u64(*u),
            // JSON has no NaN or infinities.
            Cell::Value(Value::Float64(f)) if !f.is_finite() => s.serialize_unit(),
            Cell::Value(Value::Float64(f)) => s.serialize_f64(*f),
            Cell::Value(Value::Boolean(b)) => s.serialize_bool(*b),
            Cell::Value(Value::String(v)) => s.serialize_str(v),
        }
    }
}

impl Cell<'_> {
    fn text(&self) -> String {
        match self {
            Cell::Int(i) => i.to_string(),
            Cell::Str(v) => (*v).to_owned(),
            Cell::Value(Value::Null) => String::new(),
            Cell::Value(Value::Time(i) | Value::Int64(i)) => i.to_string(),
            Cell::Value(Value::UInt64(u)) => u.to_string(),
            Cell::Value(Value::Float64(f)) => f.to_string(),
            Cell::Value(Value::Boolean(b)) => b.to_string(),
            Cell::Value(Value::String(v)) => v.clone(),
        }
    }
}

struct RowObject<'a> {
    result: &'a QueryResult,
    row: &'a Row,
}

impl Serialize for RowObject<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.result.columns.len()))?;
        for (col, cell) in self
            .result
            .columns
            .iter()
            .zip(cells(&self.result.node, self.row))
        {
            map.serialize_entry(&col.name, &cell)?;
        }
        map.end()
    }
}

struct Rows<'a>(&'a QueryResult);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.rows.len()))?;
        for row in &self.0.rows {
            seq.serialize_element(&RowObject {
                result: self.0,
                row,
            })?;
        }
        seq.end()
    }
}

/// Encodes `result` in `format`.
pub fn encode(result: &QueryResult, format: Format) -> Vec<u8> {
    // Serializing our own in-memory values to a Vec cannot fail (map keys are strings).
    match format {
        Format::Json => serde_json::to_vec(&Rows(result)).unwrap_or_default(),
        Format::Ndjson => {
            let mut out = Vec::new();
            for row in &result.rows {
                if serde_json::to_writer(&mut out, &RowObject { result, row }).is_ok() {
                    out.push(b'\n');
                }
            }
            out
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(result.columns.iter().map(|c| c.name.as_str()));
            for row in &result.rows {
                let _ = w.write_record(cells(&result.node, row).map(|c| c.text()));
            }
            w.into_inner().unwrap_or_default()
        }
    }
}
