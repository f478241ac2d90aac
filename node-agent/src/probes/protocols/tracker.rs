//! The event loop's state: every traced connection, fed from the ring buffer, turned into rows and
//! RED metrics; periodic expiry of unanswered requests, drop-counter export and clean-up after
//! processes that exited without closing their sockets.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use prometheus_client::metrics::histogram::Histogram;
use sonde_common::conn::{
    CONN_IGNORE, CONN_PENDING, CONN_STATS_ONLY, CONN_TRACE, CloseEvent, ConnInfo, ConnKey,
    DIR_EGRESS, DROP_REASON_NAMES, DROP_REASONS, DataEventHeader, EventHeader, OPEN_DATAGRAM,
    OpenEvent, PeerAddr, PeerEvent, ROLE_CLIENT, ROLE_SERVER,
};
use sonde_protocols::{Direction, Record, Red, Role};
use tracing::{debug, warn};

use super::conn::Conn;
use super::events::{Event, decode};
use super::metrics::{
    DbLabels, DropLabels, HttpLabels, ParseErrorLabels, ProtocolMetrics, TargetLabels,
};
use super::routes::Routes;
use super::rows::{Clock, PendingRows, Tables, conn_stats_row, record_row};
use super::sockets::{self, FdKind};

/// A request without response for this long is written without one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Owner shown for the tables this runtime writes.
pub const TABLE_OWNER: &str = "Tracepoint (protocols)";
/// Rows collected before they are appended even in the middle of a batch: one table lock per this
/// many rows, while few enough rows are alive at once for the allocator's per-thread caches to
/// serve their strings.
const FLUSH_ROWS: usize = 32;
/// BPF_EXIST: update only an existing entry.
const BPF_EXIST: u64 = 2;

pub struct Tracker {
    routes: Arc<RwLock<Routes>>,
    tables: Arc<std::sync::Mutex<Tables>>,
    metrics: ProtocolMetrics,
    conns: HashMap<ConnKey, Conn>,
    kconns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    drops: PerCpuArray<MapData, u64>,
    drops_seen: [u64; DROP_REASONS as usize],
    clock: Clock,
    ticks: u64,
    output: Output,
    /// Local address of listening sockets (tgid, fd), for accepted connections gone before they
    /// could be inspected.
    listeners: HashMap<ConnKey, Option<std::net::SocketAddr>>,
}

impl Tracker {
    pub fn new(
        routes: Arc<RwLock<Routes>>,
        tables: Arc<std::sync::Mutex<Tables>>,
        metrics: ProtocolMetrics,
        kconns: BpfHashMap<MapData, ConnKey, ConnInfo>,
        drops: PerCpuArray<MapData, u64>,
    ) -> Tracker {
        Tracker {
            routes,
            tables,
            metrics: metrics.clone(),
            conns: HashMap::new(),
            kconns,
            drops,
            drops_seen: [0; DROP_REASONS as usize],
            clock: Clock::new(),
            ticks: 0,
            output: Output::new(metrics),
            listeners: HashMap::new(),
        }
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn handle(&mut self, record: &[u8]) {
        match decode(record) {
            Ok(Event::Open(ev)) => self.on_open(ev),
            Ok(Event::Classify(h)) => self.on_classify(h),
            Ok(Event::Peer(ev)) => self.on_peer(ev),
            Ok(Event::Data(h, data)) => self.on_data(h, data),
            Ok(Event::Close(ev)) => self.on_close(ev),
            Err(e) => {
                warn!("{e}");
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: "decode_error",
                    })
                    .inc();
            }
        }
    }

    fn route_of(&self, h: &EventHeader) -> Option<Arc<super::routes::Route>> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup(h.tgid, h.cgroup_id)
    }

    fn new_conn(&mut self, h: &EventHeader) -> Conn {
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        // A new connection on an fd we still track: the old one ended without a close we saw.
        if let Some(old) = self.conns.remove(&key) {
            self.finish(old, h.ts_ns, None);
        }
        Conn::new(h.tgid, h.fd, h.generation, self.route_of(h))
    }

    /// Sets the kernel state of a connection, if the fd still holds that connection.
    fn set_kernel_state(&mut self, key: ConnKey, generation: u64, from: &[u32], state: u32) {
        if let Ok(mut info) = self.kconns.get(&key, 0)
            && info.generation == generation
            && from.contains(&info.state)
        {
            info.state = state;
            // Gone meanwhile (closed) is fine: nothing left to set.
            let _ = self.kconns.insert(key, info, BPF_EXIST);
        }
    }

    fn on_open(&mut self, ev: OpenEvent) {
        let h = ev.header;
        let mut conn = self.new_conn(&h);
        conn.role = match ev.role {
            ROLE_CLIENT => Some(Role::Client),
            ROLE_SERVER => Some(Role::Server),
            _ => None,
        };
        conn.remote = remote_of(&ev);
        // Opened by a datagram that named its peer: an unconnected socket, whose own peer is none.
        let datagram = ev.flags & OPEN_DATAGRAM != 0;
        if datagram {
            conn.transport = sonde_protocols::Transport::Udp;
        }
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        // The fd is looked at after the fact: it may have been closed and reused meanwhile, so the
        // answer only counts if it matches what the kernel saw at connect/accept.
        let known_family = ev.family != 0;
        match sockets::inspect(h.tgid, h.fd) {
            Ok(FdKind::Inet {
                transport,
                local,
                remote,
            }) if !known_family || datagram || remote == conn.remote => {
                conn.transport = transport;
                conn.local = local;
                conn.remote = remote.or(conn.remote);
            }
            Ok(FdKind::Other) if !known_family => {
                self.set_kernel_state(key, h.generation, &[CONN_TRACE], CONN_IGNORE);
                return;
            }
            Ok(_) => {}
            Err(e) => debug!("{e}"),
        }
        if conn.local.is_none() && ev.listen_fd != u32::MAX {
            let listener = ConnKey {
                tgid: h.tgid,
                fd: ev.listen_fd,
            };
            conn.local = *self
                .listeners
                .entry(listener)
                .or_insert_with(|| match sockets::inspect(listener.tgid, listener.fd) {
                    Ok(FdKind::Inet { local, .. }) => local,
                    _ => None,
                });
        }
        self.conns.insert(key, conn);
    }

    fn on_classify(&mut self, h: EventHeader) {
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        match sockets::inspect(h.tgid, h.fd) {
            Ok(FdKind::Inet {
                transport,
                local,
                remote,
            }) => {
                let mut conn = self.new_conn(&h);
                conn.transport = transport;
                conn.local = local;
                conn.remote = remote;
                self.conns.insert(key, conn);
                self.set_kernel_state(key, h.generation, &[CONN_PENDING], CONN_TRACE);
            }
            Ok(FdKind::Other) => {
                // Its bytes captured while pending follow: a connection without route and
                // protocol swallows them and never becomes a row.
                let mut tombstone = Conn::new(h.tgid, h.fd, h.generation, None);
                tombstone.protocol = super::conn::Protocol::Unknown;
                if let Some(old) = self.conns.insert(key, tombstone) {
                    self.finish(old, h.ts_ns, None);
                }
                self.set_kernel_state(key, h.generation, &[CONN_PENDING], CONN_IGNORE)
            }
            Err(e) if e.is_gone() => {}
            Err(e) => {
                debug!("{e}");
                self.set_kernel_state(key, h.generation, &[CONN_PENDING], CONN_IGNORE);
            }
        }
    }

    /// The next datagrams of a connection-less socket come from / go to another peer.
    fn on_peer(&mut self, ev: PeerEvent) {
        let key = ConnKey {
            tgid: ev.header.tgid,
            fd: ev.header.fd,
        };
        if let Some(conn) = self.conns.get_mut(&key)
            && conn.generation == ev.header.generation
        {
            conn.transport = sonde_protocols::Transport::Udp;
            conn.remote = peer_of(&ev.peer).or(conn.remote);
        }
    }

    fn on_data(&mut self, h: DataEventHeader, data: &[u8]) {
        let key = ConnKey {
            tgid: h.header.tgid,
            fd: h.header.fd,
        };
        if self
            .conns
            .get(&key)
            .is_none_or(|c| c.generation != h.header.generation)
        {
            // Its open event was lost (ring full, counted): track it from here.
            let conn = self.new_conn(&h.header);
            self.conns.insert(key, conn);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let dir = if h.direction == DIR_EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let fed = conn.feed(
            dir,
            h.header.ts_ns,
            h.stream_pos,
            data,
            h.chunk == 0,
            h.syscall_len,
        );
        if let Some(e) = fed.error {
            self.metrics
                .parse_errors
                .get_or_create(&ParseErrorLabels {
                    protocol: e.protocol,
                    reason: e.reason,
                })
                .inc();
        }
        if fed.undetected {
            self.metrics
                .parse_errors
                .get_or_create(&ParseErrorLabels {
                    protocol: "unknown",
                    reason: "no_protocol_detected",
                })
                .inc();
            let generation = h.header.generation;
            self.set_kernel_state(key, generation, &[CONN_TRACE], CONN_STATS_ONLY);
        }
        if !fed.records.is_empty() {
            self.write_records(key, fed.records);
            if self.output.pending.len() >= FLUSH_ROWS {
                self.flush();
            }
        }
    }

    fn on_close(&mut self, ev: CloseEvent) {
        let h = ev.header;
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        let conn = match self.conns.remove(&key) {
            Some(conn) if conn.generation == h.generation => conn,
            other => {
                if let Some(old) = other {
                    self.finish(old, h.ts_ns, None);
                }
                // Never seen open (lost event or traced before a restart): still account for it.
                Conn::new(h.tgid, h.fd, h.generation, self.route_of(&h))
            }
        };
        self.finish(conn, h.ts_ns, Some((ev.bytes_sent, ev.bytes_recv)));
    }

    /// Ends a connection: pending requests become records, then its conn_stats row.
    fn finish(&mut self, mut conn: Conn, now_ns: u64, exact_bytes: Option<(u64, u64)>) {
        let mut records = Vec::new();
        conn.expire(u64::MAX, &mut records);
        if let Some((sent, recv)) = exact_bytes {
            conn.bytes_sent = sent;
            conn.bytes_recv = recv;
        }
        if conn.route.is_none() {
            return;
        }
        self.output.emit(&mut conn, records);
        let row = conn_stats_row(&mut conn, now_ns, true, &self.clock);
        self.output.pending.push(None, row);
    }

    fn write_records(&mut self, key: ConnKey, records: Vec<Record>) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.output.emit(conn, records);
        }
    }

    /// Appends the rows collected since the last call to their tables (one lock per table); the
    /// event loop calls it after each batch of ring-buffer records.
    pub fn flush(&mut self) {
        if self.output.pending.is_empty() {
            return;
        }
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = self.output.pending.flush(&mut tables, TABLE_OWNER) {
            warn!("{e}");
        }
    }

    /// Once a second: expire unanswered requests, export drop counters; every 10 s, forget
    /// connections of processes that exited.
    pub fn tick(&mut self) {
        let now = Clock::monotonic_now();
        let deadline = now.saturating_sub(REQUEST_TIMEOUT.as_nanos() as u64);
        let mut expired: Vec<(ConnKey, Vec<Record>)> = Vec::new();
        for (key, conn) in &mut self.conns {
            let mut records = Vec::new();
            conn.expire(deadline, &mut records);
            if !records.is_empty() {
                expired.push((*key, records));
            }
        }
        for (key, records) in expired {
            self.write_records(key, records);
        }
        self.export_drops();
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.sweep_exited(now);
        }
        self.output.forget_histograms();
        self.flush();
    }

    fn export_drops(&mut self) {
        for (reason, name) in DROP_REASON_NAMES.iter().enumerate() {
            let Ok(values) = self.drops.get(&(reason as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            let seen = &mut self.drops_seen[reason];
            if total > *seen {
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels { reason: name })
                    .inc_by(total - *seen);
                *seen = total;
            }
        }
    }

    fn sweep_exited(&mut self, now: u64) {
        let alive = |tgid: u32| std::path::Path::new(&format!("/proc/{tgid}")).exists();
        let dead: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| !alive(k.tgid))
            .copied()
            .collect();
        self.listeners.retain(|k, _| alive(k.tgid));
        for key in dead {
            if let Some(conn) = self.conns.remove(&key) {
                self.finish(conn, now, None);
            }
        }
        let stale: Vec<ConnKey> = self
            .kconns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !alive(k.tgid))
            .collect();
        for key in stale {
            let _ = self.kconns.remove(&key);
        }
    }
}

/// Histogram series of one (target, role, method/operation, status) label set: looked up once, then
/// observed through its handle. The route is kept so its address cannot be reused meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    route: usize,
    family: u8,
    name: &'static str,
    detail: &'static str,
    status: u16,
}

/// Series handles kept at most; past it they are looked up again (label sets are bounded anyway).
const MAX_CACHED_SERIES: usize = 4096;

/// Where records go: RED histograms (through cached series handles) and rows waiting for a flush.
struct Output {
    metrics: ProtocolMetrics,
    clock: Clock,
    pending: PendingRows,
    series: HashMap<SeriesKey, (Arc<super::routes::Route>, Histogram)>,
}

impl Output {
    fn new(metrics: ProtocolMetrics) -> Output {
        Output {
            metrics,
            clock: Clock::new(),
            pending: PendingRows::default(),
            series: HashMap::new(),
        }
    }

    /// Drops cached handles when there are too many, or when routes changed (an old route is only
    /// held by the cache then).
    fn forget_histograms(&mut self) {
        if self.series.len() > MAX_CACHED_SERIES
            || self.series.values().any(|(r, _)| Arc::strong_count(r) == 1)
        {
            self.series.clear();
        }
    }

    fn histogram(&mut self, route: &Arc<super::routes::Route>, key: SeriesKey) -> &Histogram {
        let metrics = &self.metrics;
        let (_, histogram) = self.series.entry(key).or_insert_with(|| {
            let target = TargetLabels {
                namespace: route.namespace.clone(),
                pod: route.pod.clone(),
                container: route.container.clone(),
            };
            let histogram = match key.family {
                FAMILY_HTTP_CLIENT | FAMILY_HTTP_SERVER => {
                    let family = if key.family == FAMILY_HTTP_CLIENT {
                        &metrics.http_client
                    } else {
                        &metrics.http_server
                    };
                    family
                        .get_or_create(&HttpLabels {
                            target,
                            http_request_method: key.name,
                            http_response_status_code: key.status,
                        })
                        .clone()
                }
                FAMILY_DNS => metrics.dns.get_or_create(&target).clone(),
                _ => metrics
                    .db
                    .get_or_create(&DbLabels {
                        target,
                        db_system_name: key.name,
                        db_operation_name: key.detail,
                    })
                    .clone(),
            };
            (route.clone(), histogram)
        });
        histogram
    }

    fn emit(&mut self, conn: &mut Conn, records: Vec<Record>) {
        let (Some(kind), Some(route)) = (conn.kind(), conn.route.clone()) else {
            return;
        };
        for record in records {
            if let Some(latency) = record.latency_ns {
                let seconds = latency as f64 / 1e9;
                let (family, name, detail, status) = match &record.red {
                    Red::Http { method, status } => {
                        let family = match conn.role {
                            Some(Role::Client) => FAMILY_HTTP_CLIENT,
                            _ => FAMILY_HTTP_SERVER,
                        };
                        (family, *method, "", *status)
                    }
                    Red::Dns => (FAMILY_DNS, "", "", 0),
                    Red::Db { system, operation } => (FAMILY_DB, *system, *operation, 0),
                };
                let key = SeriesKey {
                    route: Arc::as_ptr(&route) as usize,
                    family,
                    name,
                    detail,
                    status,
                };
                self.histogram(&route, key).observe(seconds);
            }
            let row = record_row(conn, record, &self.clock);
            self.pending.push(Some(kind), row);
        }
    }
}

const FAMILY_HTTP_SERVER: u8 = 0;
const FAMILY_HTTP_CLIENT: u8 = 1;
const FAMILY_DNS: u8 = 2;
const FAMILY_DB: u8 = 3;

fn remote_of(ev: &OpenEvent) -> Option<std::net::SocketAddr> {
    peer_of(&PeerAddr {
        family: ev.family,
        port: ev.remote_port,
        addr: ev.remote_addr,
    })
}

fn peer_of(peer: &PeerAddr) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let a = peer.addr;
    let ip = match peer.family {
        2 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        10 => IpAddr::V6(Ipv6Addr::from(a)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, peer.port))
}
