//! The agents' answers made into one: rows of every node, newest `limit` of them, oldest first (as
//! one agent answers); tables listed once with their counts summed.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Why one agent's answer could not be merged (that node is then listed as failed).
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("line {line} of its NDJSON answer is no row with a numeric time_ ({source})")]
    Ndjson {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("its CSV answer cannot be read: {0}")]
    Csv(#[from] csv::Error),
    #[error("its CSV answer has no time_ in the first column of row {row}")]
    CsvTime { row: usize },
    #[error(
        "its table has other columns than the first node's ({theirs} against {ours}); query it alone with ?node="
    )]
    CsvColumns { theirs: String, ours: String },
    #[error("its table list is no JSON array of tables: {0}")]
    Tables(serde_json::Error),
}

/// Rows as an agent encoded them, each with its `time_`.
#[derive(Debug, Default)]
pub struct Rows {
    rows: Vec<(i64, Vec<u8>)>,
    /// CSV: the header line every node's answer must share.
    header: Option<csv::ByteRecord>,
}

#[derive(serde::Deserialize)]
struct Time {
    time_: i64,
}

impl Rows {
    /// Adds one agent's NDJSON answer (one row object per line).
    pub fn add_ndjson(&mut self, body: &[u8]) -> Result<(), MergeError> {
        let mut parsed = Vec::new();
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let time: Time = serde_json::from_slice(line).map_err(|source| MergeError::Ndjson {
                line: i + 1,
                source,
            })?;
            parsed.push((time.time_, line.to_vec()));
        }
        self.rows.append(&mut parsed);
        Ok(())
    }

    /// Adds one agent's CSV answer (a header row, then rows whose first column is `time_`).
    pub fn add_csv(&mut self, body: &[u8]) -> Result<(), MergeError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(body);
        let header = reader.byte_headers()?.clone();
        if header.is_empty() {
            return Ok(());
        }
        match &self.header {
            Some(ours) if ours != &header => {
                let show = |h: &csv::ByteRecord| {
                    h.iter()
                        .map(String::from_utf8_lossy)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                return Err(MergeError::CsvColumns {
                    theirs: show(&header),
                    ours: show(ours),
                });
            }
            Some(_) => {}
            None => self.header = Some(header),
        }
        let mut parsed = Vec::new();
        for (i, record) in reader.byte_records().enumerate() {
            let record = record?;
            let time = record
                .get(0)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse::<i64>().ok())
                .ok_or(MergeError::CsvTime { row: i + 1 })?;
            let mut line = csv::Writer::from_writer(Vec::new());
            line.write_byte_record(&record)?;
            let line = line
                .into_inner()
                .map_err(|e| MergeError::Csv(e.into_error().into()))?;
            parsed.push((time, line));
        }
        self.rows.append(&mut parsed);
        Ok(())
    }

    /// The newest `limit` rows, oldest first (rows of the same time in the order they came).
    fn newest(mut self, limit: usize) -> (Vec<Vec<u8>>, Option<csv::ByteRecord>) {
        self.rows.sort_by_key(|(time, _)| *time);
        let skip = self.rows.len().saturating_sub(limit);
        let rows = self.rows.drain(skip..).map(|(_, row)| row).collect();
        (rows, self.header)
    }

    /// A JSON array of the newest `limit` rows.
    pub fn json(self, limit: usize) -> Vec<u8> {
        let (rows, _) = self.newest(limit);
        let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(row);
        }
        out.push(b']');
        out
    }

    /// The newest `limit` rows, one per line.
    pub fn ndjson(self, limit: usize) -> Vec<u8> {
        let (rows, _) = self.newest(limit);
        let mut out = Vec::new();
        for row in rows {
            out.extend_from_slice(&row);
            out.push(b'\n');
        }
        out
    }

    /// A header row and the newest `limit` rows (nothing when no node had the table's columns).
    pub fn csv(self, limit: usize) -> Result<Vec<u8>, MergeError> {
        let (rows, header) = self.newest(limit);
        let Some(header) = header else {
            return Ok(Vec::new());
        };
        let mut out = csv::Writer::from_writer(Vec::new());
        out.write_byte_record(&header)?;
        let mut out = out
            .into_inner()
            .map_err(|e| MergeError::Csv(e.into_error().into()))?;
        for row in rows {
            out.extend_from_slice(&row);
        }
        Ok(out)
    }
}

/// Counts an agent lists per table, summed over the nodes.
const SUMMED: [&str; 4] = ["rows", "bytes", "evictedRows", "rejectedRows"];

/// Tables of every node by name: each listed once, its counts summed, `nodes` naming where it
/// is. Columns are the first node's.
#[derive(Debug, Default)]
pub struct Tables(BTreeMap<String, Map<String, Value>>);

impl Tables {
    /// Adds the `/v1/tables` answer of the agent of `node` (`nodes` lists them in the order
    /// added: by name, as `ask` hands them over).
    pub fn add(&mut self, node: &str, body: &[u8]) -> Result<(), MergeError> {
        let listed: Vec<Map<String, Value>> =
            serde_json::from_slice(body).map_err(MergeError::Tables)?;
        for table in listed {
            let Some(name) = table.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let merged = self.0.entry(name).or_insert_with(|| {
                let mut first = table.clone();
                for key in SUMMED {
                    first.insert(key.to_owned(), Value::from(0u64));
                }
                first.insert("nodes".to_owned(), Value::Array(Vec::new()));
                first
            });
            for key in SUMMED {
                let add = table.get(key).and_then(Value::as_u64).unwrap_or(0);
                let sum = merged.get(key).and_then(Value::as_u64).unwrap_or(0);
                merged.insert(key.to_owned(), Value::from(sum.saturating_add(add)));
            }
            if let Some(Value::Array(nodes)) = merged.get_mut("nodes") {
                nodes.push(Value::from(node));
            }
        }
        Ok(())
    }

    pub fn into_json(self) -> Value {
        Value::Array(self.0.into_values().map(Value::Object).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_every_node_are_the_newest_oldest_first() {
        let mut rows = Rows::default();
        rows.add_ndjson(b"{\"time_\":1,\"node\":\"a\"}\n{\"time_\":5,\"node\":\"a\"}\n")
            .expect("a");
        rows.add_ndjson(b"{\"time_\":3,\"node\":\"b\"}\n{\"time_\":7,\"node\":\"b\"}\n")
            .expect("b");
        assert_eq!(
            String::from_utf8(rows.json(3)).expect("utf8"),
            "[{\"time_\":3,\"node\":\"b\"},{\"time_\":5,\"node\":\"a\"},{\"time_\":7,\"node\":\"b\"}]"
        );
        let mut rows = Rows::default();
        rows.add_ndjson(b"{\"time_\":2}\n").expect("a");
        rows.add_ndjson(b"").expect("nothing");
        assert_eq!(rows.ndjson(10), b"{\"time_\":2}\n");
        assert!(Rows::default().add_ndjson(b"{\"node\":\"a\"}\n").is_err());
    }

    #[test]
    fn csv_rows_keep_their_quoting_and_need_the_same_columns() {
        let mut rows = Rows::default();
        rows.add_csv(b"time_,node,body\n4,a,\"two\nlines\"\n")
            .expect("a");
        rows.add_csv(b"time_,node,body\n2,b,\"x,y\"\n").expect("b");
        assert_eq!(
            String::from_utf8(rows.csv(10).expect("csv")).expect("utf8"),
            "time_,node,body\n2,b,\"x,y\"\n4,a,\"two\nlines\"\n"
        );
        let mut rows = Rows::default();
        rows.add_csv(b"time_,node\n1,a\n").expect("a");
        let err = rows
            .add_csv(b"time_,pod\n1,b\n")
            .expect_err("other columns");
        assert!(err.to_string().contains("time_,pod"), "{err}");
        assert!(Rows::default().add_csv(b"time_\nsoon\n").is_err());
    }

    #[test]
    fn tables_are_listed_once_with_their_counts_summed() {
        let mut tables = Tables::default();
        tables
            .add(
                "a",
                br#"[{"name":"http_events","columns":[],"rows":2,"bytes":10,"evictedRows":1,"rejectedRows":0}]"#,
            )
            .expect("a");
        tables
            .add(
                "b",
                br#"[{"name":"http_events","columns":[],"rows":3,"bytes":5,"evictedRows":0,"rejectedRows":0},{"name":"opens","rows":1}]"#,
            )
            .expect("b");
        let json = tables.into_json();
        assert_eq!(json[0]["name"], "http_events");
        assert_eq!(json[0]["rows"], 5);
        assert_eq!(json[0]["bytes"], 15);
        assert_eq!(json[0]["nodes"], serde_json::json!(["a", "b"]));
        assert_eq!(json[1]["nodes"], serde_json::json!(["b"]));
    }
}
