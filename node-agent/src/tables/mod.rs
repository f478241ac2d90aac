//! The in-memory table store every probe writes rows to.
//!
//! Contract used by the runtimes (the types below are fixed):
//! - `Store::create(&self, name: &str, owner: &str, columns: Vec<Column>) -> Result<TableWriter, TablesError>`:
//!   `columns` are the probe's own columns; the store prepends [`TARGET_COLUMNS`]. Creating an existing
//!   table with the same columns returns a writer to it; different columns is an error naming both.
//! - `TableWriter::append(&self, row: Row)`: never blocks for long, never fails loudly (a row with the
//!   wrong width is counted as rejected), evicts the oldest rows past the budget and counts them.
//!
//! Tables outlive the probes that created them: their rows stay queryable until evicted, or until the
//! table is retired after no probe wrote to it for a while ([`Store::retire_orphans`], the agent's
//! `--orphan-table-ttl`), so that a node's tables and their series do not grow with every probe it
//! ever ran. Memory is
//! bounded twice: per table (oldest rows of that table go first) and in total (oldest rows of the
//! largest table go first). Budgets count what a kept row takes: its encoding in the table's byte
//! ring plus an index entry (see `stored`).
//!
//! A string column may carry a [`Renderer`]: its values are kept as written (e.g. HTTP header lines)
//! and rendered (a JSON object) by [`Store::query`], so the work is paid per row read, not per row
//! written — most rows are evicted unread.
mod format;
mod query;
mod stored;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub use format::{Format, encode};
pub use query::{MAX_LIMIT, Query, QueryError, parse_since};
use stored::StoredRows;
pub use stored::{RowBatch, RowEncoder, RowPrefix};

pub use sonde_protocols::Renderer;

use crate::telemetry::{TableLabels, TableMetrics};

/// Columns every table starts with, in this order.
pub const TARGET_COLUMNS: [(&str, ColumnType); 6] = [
    ("time_", ColumnType::Time),
    ("node", ColumnType::String),
    ("namespace", ColumnType::String),
    ("pod", ColumnType::String),
    ("container", ColumnType::String),
    ("pid", ColumnType::Int64),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Nanoseconds since the Unix epoch.
    Time,
    Int64,
    UInt64,
    Float64,
    Boolean,
    String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// A string column kept in its captured form and rendered when rows are read (e.g. HTTP header
    /// lines → a JSON object): the work is paid per row read, not per row written.
    #[serde(skip)]
    pub render: Option<Renderer>,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            render: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Time(i64),
    Int64(i64),
    UInt64(u64),
    Float64(f64),
    Boolean(bool),
    String(String),
}

/// One row as a runtime produces it: the target columns, then the probe's own values in column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Nanoseconds since the Unix epoch.
    pub time_ns: i64,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: i64,
    pub values: Vec<Value>,
}

/// Memory budgets of the store, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub per_table: usize,
    pub total: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_table: 16 << 20,
            total: 128 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error(
        "table {table} already exists with other columns (created by {existing_owner}: {existing}; \
         {owner} wants: {wanted}); choose another tableName for {owner}"
    )]
    SchemaConflict {
        table: String,
        existing_owner: String,
        existing: String,
        owner: String,
        wanted: String,
    },
    #[error("column {column} of table {table} is declared twice; give every column its own name")]
    DuplicateColumn { table: String, column: String },
    #[error("no table named {table}; GET /v1/tables lists the tables of this agent")]
    NotFound { table: String },
}

/// Summary of one table, as listed by `/v1/tables`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableInfo {
    pub name: String,
    pub owner: String,
    pub columns: Vec<Column>,
    pub rows: usize,
    pub bytes: usize,
    pub evicted_rows: u64,
    pub rejected_rows: u64,
}

/// The rows a query selected, oldest first, with what is needed to encode them.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryResult {
    pub node: String,
    /// Every column, target columns first.
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// Every table of this agent. Cheap to clone; clones share the tables.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    node: String,
    budget: Budget,
    metrics: TableMetrics,
    total_bytes: AtomicUsize,
    tables: RwLock<BTreeMap<String, Arc<Table>>>,
}

#[derive(Debug)]
struct Table {
    name: String,
    owner: Mutex<String>,
    /// When [`Store::retire_orphans`] first saw no writer of it (None while one writes).
    orphaned_at: Mutex<Option<Instant>>,
    /// Every column, target columns first.
    columns: Vec<Column>,
    data: Mutex<TableData>,
    evicted: AtomicU64,
    rejected: AtomicU64,
    labels: TableLabels,
}

#[derive(Debug, Default)]
struct TableData {
    /// Each row with its estimated size.
    rows: StoredRows,
    bytes: usize,
    /// Reused encoding buffer of [`TableWriter::append_all`].
    scratch: RowBatch,
}

/// Appends rows to one table. Cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct TableWriter {
    store: Arc<StoreInner>,
    table: Arc<Table>,
}

impl Default for Store {
    /// A store with the default budgets and metrics registered nowhere (tests, tools).
    fn default() -> Self {
        Store::new(String::new(), Budget::default(), TableMetrics::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves rows that are still well-formed; keep serving them.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn describe(columns: &[Column]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .skip(TARGET_COLUMNS.len())
        .map(|c| {
            format!(
                "{}:{}",
                c.name,
                serde_json::to_value(c.ty)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!("[{}]", cols.join(", "))
}

impl Store {
    /// `node` fills the `node` column of every row.
    pub fn new(node: String, budget: Budget, metrics: TableMetrics) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                node,
                budget,
                metrics,
                total_bytes: AtomicUsize::new(0),
                tables: RwLock::new(BTreeMap::new()),
            }),
        }
    }

    /// Creates table `name` with the target columns followed by `columns`, or returns a writer to
    /// the existing table if it has exactly these columns.
    pub fn create(
        &self,
        name: &str,
        owner: &str,
        columns: Vec<Column>,
    ) -> Result<TableWriter, TablesError> {
        let mut all: Vec<Column> = TARGET_COLUMNS
            .iter()
            .map(|(n, ty)| Column::new(*n, *ty))
            .collect();
        all.extend(columns);
        for (i, c) in all.iter().enumerate() {
            if all[..i].iter().any(|earlier| earlier.name == c.name) {
                return Err(TablesError::DuplicateColumn {
                    table: name.to_owned(),
                    column: c.name.clone(),
                });
            }
        }
        let mut tables = self.inner.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(table) = tables.get(name) {
            if table.columns != all {
                return Err(TablesError::SchemaConflict {
                    table: name.to_owned(),
                    existing_owner: lock(&table.owner).clone(),
                    existing: describe(&table.columns),
                    owner: owner.to_owned(),
                    wanted: describe(&all),
                });
            }
            *lock(&table.owner) = owner.to_owned();
            return Ok(TableWriter {
                store: self.inner.clone(),
                table: table.clone(),
            });
        }
        let labels = TableLabels {
            table: name.to_owned(),
        };
        // Make the series exist from the start, so a table with no rows still shows up.
        self.inner.metrics.rows.get_or_create(&labels).set(0);
        self.inner.metrics.bytes.get_or_create(&labels).set(0);
        let _ = self.inner.metrics.evicted.get_or_create(&labels);
        let _ = self.inner.metrics.rejected.get_or_create(&labels);
        let table = Arc::new(Table {
            name: name.to_owned(),
            owner: Mutex::new(owner.to_owned()),
            orphaned_at: Mutex::new(None),
            columns: all,
            data: Mutex::new(TableData::default()),
            evicted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            labels,
        });
        tables.insert(name.to_owned(), table.clone());
        Ok(TableWriter {
            store: self.inner.clone(),
            table,
        })
    }

    /// Drops the tables no probe has written to for `ttl` — no writer of theirs left since a call
    /// at least `ttl` before `now` — with their rows and series, and returns their names. Called
    /// every so often: the first call that finds a table without a writer starts its time.
    pub fn retire_orphans(&self, now: Instant, ttl: Duration) -> Vec<String> {
        let mut tables = self.inner.tables.write().unwrap_or_else(|p| p.into_inner());
        let mut retired = Vec::new();
        tables.retain(|name, table| {
            // Writers and queries in progress hold the table too; the store's map holds it once.
            // Creating a writer takes the map's lock, which this holds.
            if Arc::strong_count(table) > 1 {
                *lock(&table.orphaned_at) = None;
                return true;
            }
            let since = *lock(&table.orphaned_at).get_or_insert(now);
            if now.saturating_duration_since(since) < ttl {
                return true;
            }
            let bytes = lock(&table.data).bytes;
            self.inner.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let metrics = &self.inner.metrics;
            metrics.rows.remove(&table.labels);
            metrics.bytes.remove(&table.labels);
            metrics.evicted.remove(&table.labels);
            metrics.rejected.remove(&table.labels);
            metrics.retired.inc();
            retired.push(name.clone());
            false
        });
        retired
    }

    /// Every table, by name.
    pub fn list(&self) -> Vec<TableInfo> {
        let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
        tables
            .values()
            .map(|t| {
                let data = lock(&t.data);
                TableInfo {
                    name: t.name.clone(),
                    owner: lock(&t.owner).clone(),
                    columns: t.columns.clone(),
                    rows: data.rows.len(),
                    bytes: data.bytes,
                    evicted_rows: t.evicted.load(Ordering::Relaxed),
                    rejected_rows: t.rejected.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The newest `query.limit` rows of `name` at or after `query.since_ns`, oldest first.
    pub fn query(&self, name: &str, query: &Query) -> Result<QueryResult, TablesError> {
        self.query_in(name, query, None)
    }

    /// [`Store::query`] of the rows of `namespace` only (all rows for None).
    pub fn query_in(
        &self,
        name: &str,
        query: &Query,
        namespace: Option<&str>,
    ) -> Result<QueryResult, TablesError> {
        let table = {
            let tables = self.inner.tables.read().unwrap_or_else(|p| p.into_inner());
            tables
                .get(name)
                .cloned()
                .ok_or_else(|| TablesError::NotFound {
                    table: name.to_owned(),
                })?
        };
        let data = lock(&table.data);
        let since = query.since_ns.unwrap_or(i64::MIN);
        let mut rows = data.rows.newest_where(since, query.limit, |row| {
            namespace.is_none_or(|ns| row.namespace == ns)
        });
        drop(data);
        render(&table.columns, &mut rows);
        Ok(QueryResult {
            node: self.inner.node.clone(),
            columns: table.columns.clone(),
            rows,
        })
    }

    /// Estimated bytes held by every table together.
    pub fn total_bytes(&self) -> usize {
        self.inner.total_bytes.load(Ordering::Relaxed)
    }
}

/// Read rows' values of columns with a [`Renderer`], as readers see them.
fn render(columns: &[Column], rows: &mut [Row]) {
    for (i, column) in columns.iter().skip(TARGET_COLUMNS.len()).enumerate() {
        let Some(renderer) = column.render else {
            continue;
        };
        for row in rows.iter_mut() {
            if let Some(Value::String(stored)) = row.values.get_mut(i) {
                *stored = (renderer.render)(stored);
            }
        }
    }
}

/// Bytes `row` counts against the budgets once kept: its encoding and index entry.
#[cfg(test)]
fn row_size(row: &Row) -> usize {
    let mut batch = RowBatch::default();
    stored::encode(row, &mut batch);
    stored::kept_size(batch.bytes())
}

impl Table {
    /// Drops the oldest rows until this table holds at most `limit` bytes; returns bytes freed.
    fn evict_to(&self, store: &StoreInner, data: &mut TableData, limit: usize) -> usize {
        let (mut freed, mut count) = (0, 0u64);
        while data.bytes > limit {
            let Some(size) = data.rows.pop_front() else {
                break;
            };
            data.bytes -= size;
            freed += size;
            count += 1;
        }
        if count > 0 {
            self.evicted.fetch_add(count, Ordering::Relaxed);
            store
                .metrics
                .evicted
                .get_or_create(&self.labels)
                .inc_by(count);
            store.total_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        freed
    }

    fn publish(&self, store: &StoreInner, data: &TableData) {
        store
            .metrics
            .rows
            .get_or_create(&self.labels)
            .set(data.rows.len() as i64);
        store
            .metrics
            .bytes
            .get_or_create(&self.labels)
            .set(data.bytes as i64);
    }
}

impl TableWriter {
    /// Appends `row`; rows of the wrong width are counted as rejected and dropped.
    pub fn append(&self, row: Row) {
        self.append_all(std::iter::once(row));
    }

    /// Appends `rows` in order under one lock, with one eviction pass and one metrics update (what a
    /// runtime writing many rows at once should use); rows of the wrong width are counted as
    /// rejected and dropped.
    pub fn append_all(&self, rows: impl IntoIterator<Item = Row>) {
        let rejected = {
            let mut data = lock(&self.table.data);
            let mut batch = std::mem::take(&mut data.scratch);
            for row in rows {
                stored::encode(&row, &mut batch);
            }
            let rejected = self.keep(&mut data, &batch);
            batch.clear();
            data.scratch = batch;
            rejected
        };
        self.after_append(rejected);
    }

    /// Appends the rows of `batch` like [`TableWriter::append_all`] and empties it: rows encoded
    /// straight from what a runtime parsed, without a `Row` each.
    pub fn append_batch(&self, batch: &mut RowBatch) {
        let rejected = self.keep(&mut lock(&self.table.data), batch);
        batch.clear();
        self.after_append(rejected);
    }

    /// Keeps the finished rows of `batch` in the table (`data`, locked), evicting the oldest first
    /// so that it never holds more than its budget, even for a moment; returns the rows rejected
    /// for their width.
    fn keep(&self, data: &mut TableData, batch: &RowBatch) -> u64 {
        let (table, store) = (&self.table, &*self.store);
        let width = table.columns.len() - TARGET_COLUMNS.len();
        let limit = store.budget.per_table;
        table.evict_to(store, data, limit.saturating_sub(batch.kept_bytes()));
        data.rows.reserve(batch, limit);
        let (mut added, mut rejected) = (0, 0u64);
        for (bytes, time_ns, values) in batch.iter() {
            if values as usize == width {
                added += data.rows.push_encoded(bytes, time_ns);
            } else {
                rejected += 1;
            }
        }
        data.bytes += added;
        store.total_bytes.fetch_add(added, Ordering::Relaxed);
        // A batch larger than the budget keeps its newest rows.
        table.evict_to(store, data, limit);
        table.publish(store, data);
        rejected
    }

    /// After an append, without the table's lock: counts rejected rows and holds the store to its
    /// total budget.
    fn after_append(&self, rejected: u64) {
        let (table, store) = (&self.table, &*self.store);
        if rejected > 0 {
            table.rejected.fetch_add(rejected, Ordering::Relaxed);
            store
                .metrics
                .rejected
                .get_or_create(&table.labels)
                .inc_by(rejected);
        }
        if store.total_bytes.load(Ordering::Relaxed) > store.budget.total {
            self.enforce_total();
        }
    }

    /// Evicts the oldest rows of the largest tables until the store is within its total budget.
    /// Holds at most one table lock at a time.
    fn enforce_total(&self) {
        let store = &*self.store;
        let tables: Vec<Arc<Table>> = store
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        while store.total_bytes.load(Ordering::Relaxed) > store.budget.total {
            let largest = tables.iter().max_by_key(|t| lock(&t.data).bytes);
            let Some(largest) = largest else { return };
            let mut data = lock(&largest.data);
            let excess = store
                .total_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(store.budget.total);
            let target = data.bytes.saturating_sub(excess);
            let freed = largest.evict_to(store, &mut data, target);
            largest.publish(store, &data);
            if freed == 0 {
                return;
            }
        }
    }

    /// Name of the table this writer appends to.
    pub fn table(&self) -> &str {
        &self.table.name
    }
}

/// A table name made of a resource's name: lower-cased, every character but letters, digits and
/// `_` turned into `_`, and `_` before a leading digit (`bash-readline` → `bash_readline`).
pub fn identifier(name: &str) -> String {
    let name: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name
    }
}
