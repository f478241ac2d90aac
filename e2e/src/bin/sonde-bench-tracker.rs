//! The agent's user-space cost per HTTP request, without the kernel's noise (issue 3): prints
//! figures for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p sonde-e2e --bin sonde-bench-tracker -- [--requests 2000000] [--rounds 5]
//! ```
//!
//! Feeds the records the kernel side makes for nginx answering wrk (`GET /` with a Host header,
//! `200 OK` with a 6-byte body; one data record per syscall, 16 keep-alive connections taking
//! turns) through the agent's own [`Tracker`] — decoding, reassembly, HTTP parsing and stitching,
//! RED histograms, row encoding and appending to `http_events` at its default budget (so rows are
//! evicted: the steady state) — in batches of 4,096 records as the capture thread drains them, and
//! prints this thread's CPU time per request. What the end-to-end benchmark
//! (`sonde-bench-protocols`) adds on top is the ring-buffer reading and the wake-ups.
//!
//! `--cold` makes each batch start as a drain does in the running agent: its records written
//! beforehand (as the kernel writes them into the ring), then every cache flushed by writing over
//! a buffer twice the size of a large L3 (as the workloads do during the 250 ms between drains).
//! Only the batches' own work is timed. (Measured: the same figure as warm — a batch re-warms what
//! it needs within its first requests; BENCHMARKS.md.)
//!
//! Needs root: the tracker owns the kernel side's connection map, so Sonde's programs are loaded
//! (attached, with no process selected: every hook exits early).
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use prometheus_client::registry::Registry;
use sonde_agent::probes::protocols::events;
use sonde_agent::probes::protocols::kernel::Kernel;
use sonde_agent::probes::protocols::metrics::ProtocolMetrics;
use sonde_agent::probes::protocols::routes::{Route, Routes};
use sonde_agent::probes::protocols::rows::{Clock, Tables};
use sonde_agent::probes::protocols::tracker::Tracker;
use sonde_agent::tables::{Budget, Store, TableInfo};
use sonde_agent::telemetry::TableMetrics;
use sonde_common::conn::{
    DIR_EGRESS, DIR_INGRESS, DataEventHeader, EVENT_DATA, EVENT_OPEN, EventHeader, OpenEvent,
    ROLE_SERVER,
};
use sonde_protocols::{Kind, ParseConfig};

#[derive(Parser)]
struct Cli {
    /// Requests per round.
    #[arg(long, default_value_t = 2_000_000)]
    requests: u64,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Start every batch with cold caches, as a drain in the running agent does.
    #[arg(long)]
    cold: bool,
}

/// Bytes written between batches in `--cold` mode: twice a 32 MiB L3.
const EVICT_BYTES: usize = 64 << 20;

/// Keep-alive connections taking turns, as wrk's `-c16`.
const CONNECTIONS: u32 = 16;
/// Records per drain, as the capture thread's batch.
const BATCH: usize = 4096;
const SYS_RECVFROM: u32 = 45;
const SYS_WRITEV: u32 = 20;
/// What wrk sends and nginx (`return 200 "hello\n"`) answers, byte for byte.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:38017\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 17:10:11 GMT\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";

fn header(kind: u32, tgid: u32, fd: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        tgid,
        ts_ns,
        cgroup_id: 0,
        fd,
        tid: tgid,
        generation: 1,
    }
}

fn open_record(tgid: u32, fd: u32, ts_ns: u64) -> Vec<u8> {
    let mut remote_addr = [0u8; 16];
    remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    let mut out = Vec::new();
    events::encode_into(
        &mut out,
        &OpenEvent {
            header: header(EVENT_OPEN, tgid, fd, ts_ns),
            role: ROLE_SERVER,
            family: libc::AF_INET as u16,
            remote_port: 40_000 + fd as u16,
            remote_addr,
            listen_fd: u32::MAX,
            flags: 0,
            ..OpenEvent::default()
        },
    );
    out
}

/// One data record, appended to `out`.
fn data_record(out: &mut Vec<u8>, at: (u32, u32, u64), pos: u64, direction: u32, data: &[u8]) {
    let (tgid, fd, ts_ns) = at;
    let h = DataEventHeader {
        header: header(EVENT_DATA, tgid, fd, ts_ns),
        syscall_len: data.len() as u64,
        stream_pos: pos,
        direction,
        syscall: if direction == DIR_INGRESS {
            SYS_RECVFROM
        } else {
            SYS_WRITEV
        },
        len: data.len() as u32,
        chunk: 0,
    };
    events::encode_into(out, &h);
    out.extend_from_slice(data);
}

fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The agent's allocator, set as the agent sets it (`node-agent/src/main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> Result<()> {
    // SAFETY: sets a process-wide allocator option before any thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let cli = Cli::parse();
    let (_kernel, maps) = Kernel::load(false).context("loading Sonde's programs (needs root)")?;
    // A tgid nothing else uses: the tracker's look at its fds finds nothing, as for a process gone.
    let tgid = u32::MAX - 1;
    let mut routes = Routes::default();
    routes.tgids.insert(
        tgid,
        Arc::new(Route {
            kinds: vec![Kind::Http],
            config: ParseConfig::default(),
            namespace: "bench".into(),
            pod: "nginx".into(),
            container: "nginx".into(),
        }),
    );
    let store = Store::new("bench".into(), Budget::default(), TableMetrics::default());
    let tables = Arc::new(Mutex::new(Tables::new(store.clone())));
    let metrics = ProtocolMetrics::register(&mut Registry::default());
    let mut tracker = Tracker::new(
        Arc::new(RwLock::new(routes)),
        tables,
        metrics,
        maps.conns,
        maps.drops,
        Duration::from_secs(10),
    );
    let ts = Clock::monotonic_now();
    for fd in 0..CONNECTIONS {
        tracker.handle(&open_record(tgid, 1000 + fd, ts));
    }
    println!("# The tracker's CPU per HTTP request (nginx ↔ wrk records, 16 connections)");
    println!("| round | requests | CPU per request | rows in http_events (kept + evicted) |");
    println!("|---|---|---|---|");
    let mut traffic = Traffic {
        tgid,
        ts,
        record: Vec::with_capacity(256),
        positions: [(0, 0); CONNECTIONS as usize],
        cold: cli.cold.then(|| Cold {
            ring: Vec::new(),
            records: Vec::new(),
            evict: vec![0; EVICT_BYTES],
        }),
    };
    // The table filled to its budget first: appending then evicts, and its memory stays mapped.
    traffic.run(&mut tracker, WARM_UP);
    let mut per_request = Vec::new();
    for round in 1..=cli.rounds {
        let rows_before = rows(&store);
        let cpu = traffic.run(&mut tracker, cli.requests);
        let ns = cpu.as_nanos() as f64 / cli.requests as f64;
        per_request.push(ns);
        println!(
            "| {round} | {} | {ns:.0} ns | {} |",
            cli.requests,
            rows(&store) - rows_before
        );
    }
    per_request.sort_by(f64::total_cmp);
    println!(
        "median {:.0} ns per request (min {:.0}); http_events keeps {} bytes per row",
        per_request[per_request.len() / 2],
        per_request[0],
        bytes_per_row(&store)
    );
    Ok(())
}

/// Requests before the measured rounds: enough rows to fill `http_events` to its budget.
const WARM_UP: u64 = 200_000;

/// The records of the nginx worker's syscalls, request after request.
struct Traffic {
    tgid: u32,
    ts: u64,
    record: Vec<u8>,
    /// Stream positions (ingress, egress) per connection.
    positions: [(u64, u64); CONNECTIONS as usize],
    cold: Option<Cold>,
}

/// What `--cold` mode needs.
struct Cold {
    /// A batch's records, one after the other, as in the ring buffer.
    ring: Vec<u8>,
    /// Where each record is in `ring`.
    records: Vec<std::ops::Range<usize>>,
    /// Written over between batches.
    evict: Vec<u8>,
}

impl Traffic {
    /// Hands `requests` requests and their responses to `tracker` in batches, flushing as the
    /// capture thread does after each; returns this thread's CPU time for the batches.
    fn run(&mut self, tracker: &mut Tracker, requests: u64) -> Duration {
        let mut cpu = Duration::ZERO;
        let mut i = 0;
        while i < requests {
            let n = (BATCH as u64 / 2).min(requests - i);
            cpu += match self.cold.take() {
                None => {
                    let mut record = std::mem::take(&mut self.record);
                    let start = thread_cpu();
                    for j in i..i + n {
                        for response in [false, true] {
                            record.clear();
                            self.write(&mut record, j, response);
                            tracker.handle(&record);
                        }
                    }
                    tracker.flush();
                    self.record = record;
                    thread_cpu().saturating_sub(start)
                }
                Some(mut cold) => {
                    cold.ring.clear();
                    cold.records.clear();
                    for j in i..i + n {
                        for response in [false, true] {
                            // One after the other, 8-byte aligned, as in the ring.
                            let start = cold.ring.len();
                            self.write(&mut cold.ring, j, response);
                            cold.records.push(start..cold.ring.len());
                            cold.ring.resize(cold.ring.len().next_multiple_of(8), 0);
                        }
                    }
                    // Every cache line of the last-level cache replaced, as after 250 ms of
                    // workloads. (black_box: the writes must happen.)
                    let round = cold.evict[0].wrapping_add(1);
                    cold.evict.iter_mut().step_by(64).for_each(|b| *b = round);
                    std::hint::black_box(&cold.evict);
                    let start = thread_cpu();
                    for record in &cold.records {
                        tracker.handle(&cold.ring[record.clone()]);
                    }
                    tracker.flush();
                    let spent = thread_cpu().saturating_sub(start);
                    self.cold = Some(cold);
                    spent
                }
            };
            i += n;
        }
        cpu
    }

    /// Appends the record of request `i` (its response if `response`) to `out`.
    fn write(&mut self, out: &mut Vec<u8>, i: u64, response: bool) {
        let conn = (i % u64::from(CONNECTIONS)) as usize;
        let fd = 1000 + conn as u32;
        let (ingress, egress) = &mut self.positions[conn];
        let (pos, direction, data) = if response {
            self.ts += 30_000;
            (egress, DIR_EGRESS, RESPONSE)
        } else {
            self.ts += 20_000;
            (ingress, DIR_INGRESS, REQUEST)
        };
        data_record(out, (self.tgid, fd, self.ts), *pos, direction, data);
        *pos += data.len() as u64;
    }
}

/// `http_events` as the store lists it.
fn http_events(store: &Store) -> Option<TableInfo> {
    store.list().into_iter().find(|t| t.name == "http_events")
}

/// What a kept `http_events` row costs of the table budget.
fn bytes_per_row(store: &Store) -> usize {
    http_events(store).map_or(0, |t| t.bytes / t.rows.max(1))
}

/// Rows ever written to `http_events` (kept plus evicted).
fn rows(store: &Store) -> u64 {
    http_events(store).map_or(0, |t| t.rows as u64 + t.evicted_rows)
}
