//! Records and connections → table rows: `<protocol>_events` (connection columns, then the protocol's
//! own) and `conn_stats`.
use std::collections::HashMap;
use std::net::SocketAddr;

use sonde_protocols::{Field, FieldType, Kind, Record};

use super::conn::Conn;
use crate::tables::{Column, ColumnType, Row, Store, TableWriter, TablesError, Value};

/// Table of per-connection statistics.
pub const CONN_STATS_TABLE: &str = "conn_stats";

fn column(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.to_owned(),
        ty,
    }
}

/// The connection columns [`base_row`] fills, first in every protocol table and in `conn_stats`
/// (after the target columns).
fn connection_columns() -> Vec<Column> {
    vec![
        column("local_addr", ColumnType::String),
        column("local_port", ColumnType::Int64),
        column("remote_addr", ColumnType::String),
        column("remote_port", ColumnType::Int64),
        column("trace_role", ColumnType::String),
    ]
}

pub fn protocol_columns(kind: Kind) -> Vec<Column> {
    let mut columns = connection_columns();
    columns.push(column("latency", ColumnType::Int64));
    columns.extend(kind.columns().iter().map(|c| {
        column(
            c.name,
            match c.ty {
                FieldType::Int64 => ColumnType::Int64,
                FieldType::UInt64 => ColumnType::UInt64,
                FieldType::Float64 => ColumnType::Float64,
                FieldType::Boolean => ColumnType::Boolean,
                FieldType::String => ColumnType::String,
            },
        )
    }));
    columns
}

pub fn conn_stats_columns() -> Vec<Column> {
    let mut columns = connection_columns();
    columns.extend([
        column("protocol", ColumnType::String),
        column("conn_open", ColumnType::Int64),
        column("conn_close", ColumnType::Int64),
        column("bytes_sent", ColumnType::Int64),
        column("bytes_recv", ColumnType::Int64),
        column("duration", ColumnType::Int64),
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
        let (name, columns) = match kind {
            Some(kind) => (kind.table(), protocol_columns(kind)),
            None => (CONN_STATS_TABLE, conn_stats_columns()),
        };
        if !self.writers.contains_key(name) {
            let writer = self.store.create(name, owner, columns)?;
            self.writers.insert(name, writer);
        }
        self.writers.get(name).ok_or_else(|| TablesError::NotFound {
            table: name.to_owned(),
        })
    }
}

fn addr(a: Option<SocketAddr>) -> (Value, Value) {
    match a {
        Some(a) => (
            Value::String(a.ip().to_canonical().to_string()),
            Value::Int64(i64::from(a.port())),
        ),
        None => (Value::String(String::new()), Value::Int64(0)),
    }
}

fn base_row(conn: &Conn, time_ns: i64, capacity: usize) -> Row {
    let (namespace, pod, container) = conn.route.as_ref().map_or_else(Default::default, |r| {
        (r.namespace.clone(), r.pod.clone(), r.container.clone())
    });
    Row {
        time_ns,
        namespace,
        pod,
        container,
        pid: i64::from(conn.tgid),
        values: Vec::with_capacity(capacity),
    }
}

fn connection_values(conn: &Conn, values: &mut Vec<Value>) {
    let (local_addr, local_port) = addr(conn.local);
    let (remote_addr, remote_port) = addr(conn.remote);
    values.extend([
        local_addr,
        local_port,
        remote_addr,
        remote_port,
        Value::String(conn.role.map_or("unknown", |r| r.as_str()).to_owned()),
    ]);
}

pub fn record_row(conn: &Conn, record: Record, clock: &Clock) -> Row {
    let mut row = base_row(conn, clock.wall(record.request_ns), 6 + record.fields.len());
    connection_values(conn, &mut row.values);
    row.values.push(
        record
            .latency_ns
            .map_or(Value::Null, |l| Value::Int64(l.min(i64::MAX as u64) as i64)),
    );
    row.values
        .extend(record.fields.into_iter().map(|f| match f {
            Field::Null => Value::Null,
            Field::Int64(v) => Value::Int64(v),
            Field::UInt64(v) => Value::UInt64(v),
            Field::Float64(v) => Value::Float64(v),
            Field::Boolean(v) => Value::Boolean(v),
            Field::String(v) => Value::String(v),
        }));
    row
}

/// One `conn_stats` row; `closed` with the kernel's exact byte counts when the connection ended.
pub fn conn_stats_row(conn: &Conn, now_ns: u64, closed: bool, clock: &Clock) -> Row {
    let mut row = base_row(conn, clock.wall(now_ns), 11);
    connection_values(conn, &mut row.values);
    row.values.extend([
        Value::String(conn.kind().map_or("unknown", |k| k.name()).to_owned()),
        Value::Int64(1),
        Value::Int64(i64::from(closed)),
        Value::Int64(conn.bytes_sent as i64),
        Value::Int64(conn.bytes_recv as i64),
        Value::Int64(now_ns.saturating_sub(conn.opened_ns) as i64),
    ]);
    row
}
