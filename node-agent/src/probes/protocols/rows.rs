//! Records and connections → table rows: `<protocol>_events` (connection columns, then the protocol's
//! own) and `conn_stats`.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sonde_protocols::{Field, FieldType, Kind, Record, Role};

use super::conn::Conn;
use super::routes::Route;
use crate::tables::{
    Column, ColumnType, RowBatch, RowEncoder, RowPrefix, Store, TableWriter, TablesError,
};

/// Table of per-connection statistics.
pub const CONN_STATS_TABLE: &str = "conn_stats";

/// The connection columns [`base_row`] starts with, first in every protocol table and in `conn_stats`
/// (after the target columns).
fn connection_columns() -> Vec<Column> {
    vec![
        Column::new("local_addr", ColumnType::String),
        Column::new("local_port", ColumnType::Int64),
        Column::new("remote_addr", ColumnType::String),
        Column::new("remote_port", ColumnType::Int64),
        Column::new("trace_role", ColumnType::String),
    ]
}

pub fn protocol_columns(kind: Kind) -> Vec<Column> {
    let mut columns = connection_columns();
    columns.push(Column::new("latency", ColumnType::Int64));
    columns.extend(kind.columns().iter().map(|c| {
        let ty = match c.ty {
            FieldType::Int64 => ColumnType::Int64,
            FieldType::UInt64 => ColumnType::UInt64,
            FieldType::Float64 => ColumnType::Float64,
            FieldType::Boolean => ColumnType::Boolean,
            FieldType::String => ColumnType::String,
        };
        Column {
            render: c.render,
            ..Column::new(c.name, ty)
        }
    }));
    columns
}

pub fn conn_stats_columns() -> Vec<Column> {
    let mut columns = connection_columns();
    columns.extend([
        Column::new("protocol", ColumnType::String),
        Column::new("conn_open", ColumnType::Int64),
        Column::new("conn_close", ColumnType::Int64),
        Column::new("bytes_sent", ColumnType::Int64),
        Column::new("bytes_recv", ColumnType::Int64),
        Column::new("duration", ColumnType::Int64),
    ]);
    columns
}

/// Monotonic (kernel timestamps) → wall clock (table rows).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i64,
}

fn now_ns(id: nix::time::ClockId) -> i64 {
    nix::time::clock_gettime(id)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

impl Clock {
    pub fn new() -> Clock {
        let mono = now_ns(nix::time::ClockId::CLOCK_MONOTONIC);
        let wall = now_ns(nix::time::ClockId::CLOCK_REALTIME);
        Clock {
            offset_ns: wall - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> i64 {
        mono_ns as i64 + self.offset_ns
    }

    pub fn monotonic_now() -> u64 {
        now_ns(nix::time::ClockId::CLOCK_MONOTONIC) as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Table writers, created on first use.
#[derive(Debug)]
pub struct Tables {
    store: Store,
    writers: HashMap<&'static str, TableWriter>,
}

impl Tables {
    pub fn new(store: Store) -> Tables {
        Tables {
            store,
            writers: HashMap::new(),
        }
    }

    /// Creates (or reuses) the table of `kind`, or `conn_stats` for None.
    pub fn ensure(&mut self, kind: Option<Kind>, owner: &str) -> Result<&TableWriter, TablesError> {
        let name = kind.map_or(CONN_STATS_TABLE, Kind::table);
        // The column list is only built for a table not created yet: this runs for every batch.
        if !self.writers.contains_key(name) {
            let columns = match kind {
                Some(kind) => protocol_columns(kind),
                None => conn_stats_columns(),
            };
            let writer = self.store.create(name, owner, columns)?;
            self.writers.insert(name, writer);
        }
        self.writers.get(name).ok_or_else(|| TablesError::NotFound {
            table: name.to_owned(),
        })
    }
}

/// Rows waiting to be appended, per table, already encoded: the event loop collects them while it
/// drains the ring buffer and appends each table's rows under one lock.
#[derive(Debug, Default)]
pub struct PendingRows {
    /// Index: 0 for `conn_stats`, then one per [`Kind::ALL`].
    tables: [RowBatch; 1 + Kind::ALL.len()],
}

fn slot(kind: Option<Kind>) -> usize {
    kind.map_or(0, |k| {
        1 + Kind::ALL.iter().position(|a| *a == k).unwrap_or(0)
    })
}

impl PendingRows {
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(RowBatch::is_empty)
    }

    /// Encoded bytes waiting.
    pub fn bytes(&self) -> usize {
        self.tables.iter().map(RowBatch::bytes).sum()
    }

    /// Appends every waiting row to its table; `owner` names the creator of a table made here.
    pub fn flush(&mut self, tables: &mut Tables, owner: &str) -> Result<(), TablesError> {
        let kinds = [None].into_iter().chain(Kind::ALL.map(Some));
        let mut result = Ok(());
        for (rows, kind) in self.tables.iter_mut().zip(kinds) {
            if rows.is_empty() {
                continue;
            }
            match tables.ensure(kind, owner) {
                Ok(writer) => writer.append_batch(rows),
                Err(e) => {
                    rows.clear();
                    result = Err(e);
                }
            }
        }
        result
    }

    /// A `<protocol>_events` row of `record`.
    pub fn record(&mut self, kind: Kind, conn: &mut Conn, record: Record, clock: &Clock) {
        let mut row = base_row(
            &mut self.tables[slot(Some(kind))],
            conn,
            clock.wall(record.request_ns),
        );
        match record.latency_ns {
            Some(l) => row.int64(l.min(i64::MAX as u64) as i64),
            None => row.null(),
        };
        for field in &record.fields {
            match field {
                Field::Null => row.null(),
                Field::Int64(v) => row.int64(*v),
                Field::UInt64(v) => row.uint64(*v),
                Field::Float64(v) => row.float64(*v),
                Field::Boolean(v) => row.boolean(*v),
                Field::String(v) => row.string(v),
                Field::Text(span) => row.string(span.of(&record.text)),
            };
        }
        row.finish();
    }

    /// One `conn_stats` row; `closed` with the kernel's exact byte counts when the connection
    /// ended.
    pub fn conn_stats(&mut self, conn: &mut Conn, now_ns: u64, closed: bool, clock: &Clock) {
        // Its bytes were exchanged with several peers, not with the latest one.
        let remote = conn.remote;
        if conn.peers_changed {
            conn.remote = None;
        }
        let mut row = base_row(&mut self.tables[slot(None)], conn, clock.wall(now_ns));
        row.string(conn.kind().map_or("unknown", |k| k.name()))
            .int64(1)
            .int64(i64::from(closed))
            .int64(conn.bytes_sent as i64)
            .int64(conn.bytes_recv as i64)
            .int64(now_ns.saturating_sub(conn.opened_ns) as i64)
            .finish();
        conn.remote = remote;
    }
}

/// A connection's target and connection columns, encoded once and kept while they stay the same:
/// formatting its addresses costs more than the rest of a row, and every row of the connection
/// starts with the same bytes.
#[derive(Debug, Default)]
pub struct ConnPrefix(Option<(PrefixKey, RowPrefix)>);

/// What a [`ConnPrefix`] was encoded from (the route held, so that its address is not reused).
#[derive(Debug)]
struct PrefixKey {
    route: Option<Arc<Route>>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    role: Option<Role>,
}

impl PrefixKey {
    fn of(conn: &Conn) -> PrefixKey {
        PrefixKey {
            route: conn.route.clone(),
            local: conn.local,
            remote: conn.remote,
            role: conn.role,
        }
    }

    fn matches(&self, conn: &Conn) -> bool {
        let same_route = match (&self.route, &conn.route) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_route
            && self.local == conn.local
            && self.remote == conn.remote
            && self.role == conn.role
    }
}

fn ip_text(a: Option<SocketAddr>) -> String {
    a.map_or_else(String::new, |a| a.ip().to_canonical().to_string())
}

fn port(a: Option<SocketAddr>) -> i64 {
    a.map_or(0, |a| i64::from(a.port()))
}

/// Starts a row of `conn` with its target and connection columns.
fn base_row<'a>(batch: &'a mut RowBatch, conn: &mut Conn, time_ns: i64) -> RowEncoder<'a> {
    let cached = match conn.prefix.0.take() {
        Some(cached) if cached.0.matches(conn) => cached,
        _ => (PrefixKey::of(conn), encode_prefix(conn)),
    };
    let (_, prefix) = conn.prefix.0.insert(cached);
    batch.row_after(time_ns, prefix)
}

/// The target and connection columns of `conn`'s rows.
fn encode_prefix(conn: &Conn) -> RowPrefix {
    let (namespace, pod, container) = conn.route.as_ref().map_or(("", "", ""), |r| {
        (r.namespace.as_str(), r.pod.as_str(), r.container.as_str())
    });
    let (local, remote) = (conn.local, conn.remote);
    RowPrefix::new(i64::from(conn.tgid), namespace, pod, container, |row| {
        row.string(&ip_text(local))
            .int64(port(local))
            .string(&ip_text(remote))
            .int64(port(remote))
            .string(conn.role.map_or("unknown", |r| r.as_str()));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Query, Value};

    fn route(pod: &str) -> Option<Arc<Route>> {
        Some(Arc::new(Route {
            kinds: vec![Kind::Dns],
            config: sonde_protocols::ParseConfig::default(),
            namespace: "ns".into(),
            pod: pod.into(),
            container: "c".into(),
        }))
    }

    /// The encoded start of a connection's rows follows every change of what it is made of.
    #[test]
    fn rows_after_a_change_of_peer_role_or_route_carry_the_new_values() {
        let store = Store::default();
        let mut tables = Tables::new(store.clone());
        let mut pending = PendingRows::default();
        let clock = Clock::new();
        let mut conn = Conn::new(7, 3, 1, route("web-0"));
        conn.local = Some("10.0.0.1:53".parse().unwrap());
        conn.remote = Some("10.0.0.2:4000".parse().unwrap());
        conn.role = Some(Role::Server);
        pending.conn_stats(&mut conn, 1, false, &clock);
        pending.conn_stats(&mut conn, 2, false, &clock);
        conn.remote = Some("[fd00::3]:4001".parse().unwrap());
        pending.conn_stats(&mut conn, 3, false, &clock);
        conn.role = Some(Role::Client);
        pending.conn_stats(&mut conn, 4, false, &clock);
        conn.route = route("web-1");
        pending.conn_stats(&mut conn, 5, true, &clock);
        pending.flush(&mut tables, "test").unwrap();
        let rows = store
            .query(CONN_STATS_TABLE, &Query::default())
            .unwrap()
            .rows;
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Int64(i) => i.to_string(),
            other => format!("{other:?}"),
        };
        let seen: Vec<String> = rows
            .iter()
            .map(|r| {
                let v: Vec<String> = r.values[..5].iter().map(text).collect();
                format!(
                    "{} {} {}:{} {}:{} {}",
                    r.pid, r.pod, v[0], v[1], v[2], v[3], v[4]
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                "7 web-0 10.0.0.1:53 10.0.0.2:4000 server",
                "7 web-0 10.0.0.1:53 10.0.0.2:4000 server",
                "7 web-0 10.0.0.1:53 fd00::3:4001 server",
                "7 web-0 10.0.0.1:53 fd00::3:4001 client",
                "7 web-1 10.0.0.1:53 fd00::3:4001 client",
            ]
        );
    }
}
