//! The event loop's state: every traced connection, fed from the ring buffer, turned into rows and
//! RED metrics; periodic expiry of unanswered requests, drop-counter export and clean-up after
//! processes that exited without closing their sockets.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use prometheus_client::metrics::histogram::Histogram;
use rustc_hash::FxHashMap;
use sonde_common::conn::{
    CLASSIFY_INET, CLASSIFY_UDP, CONN_IGNORE, CONN_PENDING, CONN_STATS_ONLY, CONN_TRACE,
    ClassifyEvent, CloseEvent, ConnInfo, ConnKey, DIR_EGRESS, DROP_REASON_NAMES, DROP_REASONS,
    DataEventHeader, EventHeader, ExecEvent, ForkEvent, LocalEvent, OPEN_DATAGRAM,
    OPEN_LOCAL_REPORTED, OPEN_SOCKET_READ, OPEN_UDP, OpenEvent, PeerAddr, PeerEvent, ROLE_CLIENT,
    ROLE_SERVER, shed_slot, until_zero,
};
use sonde_protocols::{Direction, Record, Red, Role, Transport};
use tracing::{debug, warn};

use super::conn::{Conn, Evidence, Protocol};
use super::events::{Event, decode};
use super::governor::Governor;
use super::metrics::{
    ADDRESSES_UNKNOWN, DECODE_ERROR, DbLabels, DnsLabels, DropLabels, FD_GONE, HttpLabels,
    ParseErrorLabels, ProtocolMetrics, RedLabels, TargetLabels, UNROUTED,
};
use super::routes::Routes;
use super::rows::{Clock, PendingRows, Tables};
use super::sockets::{self, FdKind};

/// Owner shown for the tables this runtime writes.
pub const TABLE_OWNER: &str = "Tracepoint (protocols)";
/// Encoded rows collected before they are appended even in the middle of a batch (one table lock
/// per this many bytes; rows become visible at the latest when the batch ends).
const FLUSH_BYTES: usize = 256 << 10;
/// BPF_EXIST: update only an existing entry.
const BPF_EXIST: u64 = 2;
/// `sonde_protocol_parse_errors_total` reason of a connection whose detected protocol's parser
/// made neither a record nor an error from all its bytes.
const NOTHING_PARSED: &str = "nothing_parsed";
/// `sonde_events_dropped_total` reason of syscalls moving more than their events carry.
const TRUNCATED: &str = "truncated";

/// What a forked child knows of an fd it inherited: the parent's connection on that fd number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inherited {
    pub role: Option<Role>,
    pub transport: Transport,
    pub local: Option<std::net::SocketAddr>,
    pub remote: Option<std::net::SocketAddr>,
}

impl Inherited {
    fn of(conn: &Conn) -> Inherited {
        Inherited {
            role: conn.role,
            transport: conn.transport,
            local: conn.local,
            remote: conn.remote,
        }
    }
}

/// What the fd of a classify event turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An inet socket, looked at while the fd was still the one the kernel asked about.
    Socket {
        transport: Transport,
        local: Option<std::net::SocketAddr>,
        remote: Option<std::net::SocketAddr>,
        /// From the parent, if the child inherited this very socket.
        role: Option<Role>,
    },
    /// Gone (or replaced) before it could be looked at, and inherited from a parent that had a
    /// socket on that fd number.
    Inherited(Inherited),
    /// Not an inet socket: its bytes are dropped.
    NotASocket,
    /// Gone (or replaced) before it could be looked at, without any sign of what it was: its
    /// bytes are dropped and counted.
    Gone,
}

/// Decides a classify event. `inspected`: the fd looked at now; `still_open`: the kernel still
/// has the fd's entry of that generation after the look (else it was closed, maybe reused, and
/// the look saw another file); `inherited`: the parent's connection on that fd number.
pub fn verdict(
    inspected: Result<FdKind, sockets::SocketError>,
    still_open: bool,
    inherited: Option<Inherited>,
) -> Verdict {
    match inspected {
        Ok(FdKind::Inet {
            transport,
            local,
            remote,
        }) if still_open => Verdict::Socket {
            transport,
            local,
            remote,
            role: inherited
                .filter(|i| i.remote.is_some() && i.remote == remote)
                .and_then(|i| i.role),
        },
        Ok(FdKind::Other) if still_open => Verdict::NotASocket,
        Ok(_) => inherited.map_or(Verdict::Gone, Verdict::Inherited),
        Err(e) => {
            if !e.is_gone() {
                debug!("{e}");
            }
            inherited.map_or(Verdict::Gone, Verdict::Inherited)
        }
    }
}

pub struct Tracker {
    routes: Arc<RwLock<Routes>>,
    tables: Arc<std::sync::Mutex<Tables>>,
    metrics: ProtocolMetrics,
    conns: FxHashMap<ConnKey, Conn>,
    kconns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    drops: PerCpuArray<MapData, u64>,
    drops_seen: [u64; DROP_REASONS as usize],
    clock: Clock,
    ticks: u64,
    output: Output,
    /// The records vector handed to each data event's parsing, kept between events.
    spare_records: Vec<Record>,
    /// Local address of listening sockets (tgid, fd), for accepted connections gone before they
    /// could be inspected.
    listeners: HashMap<ConnKey, Option<std::net::SocketAddr>>,
    /// Child tgid → fd → the parent's connection on it when the child was forked; an entry is
    /// taken when the child's fd is classified, the rest go when the child exits.
    inherited: HashMap<u32, HashMap<u32, Inherited>>,
    /// How often open connections get a conn_stats row (see [`Tracker::report_open`]).
    conn_stats_every: Duration,
    /// Monotonic ns of the last periodic conn_stats pass.
    last_stats_ns: u64,
    /// An fd to look at through its process came since [`Tracker::take_look_due`] last asked.
    look_due: bool,
    /// Local addresses the kernel reported for TCP connects whose open event is still to come
    /// (a blocking connect is established before it returns).
    locals: HashMap<ConnKey, std::net::SocketAddr>,
    /// Routes of processes the kernel selected before the agent's process scan has seen them: a
    /// child of a process selected by tgid takes its parent's route, from its first syscall; a
    /// process that started a program a selector names, that name's route. Entries go when the
    /// process exits.
    kernel_routes: HashMap<u32, Arc<super::routes::Route>>,
    /// Processes the last sweep found gone: the next one forgets them (see
    /// [`Tracker::sweep_exited`]).
    gone_before: HashSet<u32>,
    /// Sheds connections while the node is saturated (None: every connection is captured).
    governor: Option<Governor>,
}

impl Tracker {
    pub fn new(
        routes: Arc<RwLock<Routes>>,
        tables: Arc<std::sync::Mutex<Tables>>,
        metrics: ProtocolMetrics,
        kconns: BpfHashMap<MapData, ConnKey, ConnInfo>,
        drops: PerCpuArray<MapData, u64>,
        conn_stats_every: Duration,
    ) -> Tracker {
        Tracker {
            routes,
            tables,
            metrics: metrics.clone(),
            conns: FxHashMap::default(),
            kconns,
            drops,
            drops_seen: [0; DROP_REASONS as usize],
            clock: Clock::new(),
            ticks: 0,
            output: Output::new(metrics),
            spare_records: Vec::new(),
            listeners: HashMap::new(),
            inherited: HashMap::new(),
            conn_stats_every,
            last_stats_ns: Clock::monotonic_now(),
            look_due: false,
            locals: HashMap::new(),
            kernel_routes: HashMap::new(),
            gone_before: HashSet::new(),
            governor: None,
        }
    }

    /// Lets `governor` shed connections while the node's CPUs are saturated.
    pub fn with_governor(mut self, governor: Governor) -> Tracker {
        self.governor = Some(governor);
        self
    }

    /// Called by the event loop on the thread that parses: decides the share of connections
    /// captured once per [`super::governor::WINDOW`].
    pub fn govern(&mut self) {
        let Some(governor) = &mut self.governor else {
            return;
        };
        let before = governor.shed();
        governor.step();
        self.output.weight = governor.weight();
        if governor.shed() > before {
            mark_shed(&mut self.conns, governor.shed(), Clock::monotonic_now());
        }
    }

    /// Whether an fd that has to be looked at through its process came since the last call (a
    /// client connection whose local address the kernel did not report, an fd not seen opened):
    /// the kernel wakes the agent for one at most every 10 ms, so the drain loop looks again that
    /// soon for the ones it let wait.
    pub fn take_look_due(&mut self) -> bool {
        std::mem::take(&mut self.look_due)
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn handle(&mut self, record: &[u8]) {
        match decode(record) {
            Ok(Event::Open(ev)) => self.on_open(ev),
            Ok(Event::Classify(ev)) => self.on_classify(ev),
            Ok(Event::Peer(ev)) => self.on_peer(ev),
            Ok(Event::Fork(ev)) => self.on_fork(ev),
            Ok(Event::Exec(ev)) => self.on_exec(ev),
            Ok(Event::Local(ev)) => self.on_local(ev),
            Ok(Event::Data(h, data)) => self.on_data(h, data),
            Ok(Event::Close(ev)) => self.on_close(ev),
            Err(e) => {
                warn!("{e}");
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels {
                        reason: DECODE_ERROR,
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
            .or_else(|| self.kernel_routes.get(&h.tgid).cloned())
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

    /// Sets the kernel state of a connection, if the fd still holds that connection; returns what
    /// the kernel had before (its pending truncations are handed over and reset).
    fn set_kernel_state(
        &mut self,
        key: ConnKey,
        generation: u64,
        from: &[u32],
        state: u32,
    ) -> Option<ConnInfo> {
        let before = self.kconns.get(&key, 0).ok()?;
        if before.generation != generation || !from.contains(&before.state) {
            return None;
        }
        let mut info = before;
        info.state = state;
        info.pending_truncated = 0;
        // Gone meanwhile (closed) is fine: nothing left to set.
        let _ = self.kconns.insert(key, info, BPF_EXIST);
        Some(before)
    }

    /// Syscalls of a socket truncated while it was pending are losses after all.
    fn count_pending_truncated(&self, n: u32) {
        if n > 0 {
            self.metrics
                .dropped
                .get_or_create(&DropLabels { reason: TRUNCATED })
                .inc_by(u64::from(n));
        }
    }

    /// A selected process forked: the child shares every fd, so each socket connection of the
    /// parent is remembered for the child's fd of that number. (One pass over the connections per
    /// fork of a selected process.)
    fn on_fork(&mut self, ev: ForkEvent) {
        let parent = ev.header.tgid;
        // A reused pid starts clean.
        self.inherited.remove(&ev.child);
        match self.route_of(&ev.header) {
            Some(route) if self.kernel_routes.len() < MAX_KERNEL_ROUTES => {
                self.kernel_routes.insert(ev.child, route);
            }
            _ => {
                self.kernel_routes.remove(&ev.child);
            }
        }
        let mut fds = HashMap::new();
        for (key, conn) in &mut self.conns {
            if key.tgid == parent && conn.evidence == Evidence::Socket {
                conn.forked = true;
                fds.insert(key.fd, Inherited::of(conn));
            }
        }
        if !fds.is_empty() {
            self.inherited.insert(ev.child, fds);
        }
    }

    /// A process started a program a selector names, and the kernel selected it: until the
    /// process scan routes it, its events take the route of what it started, labelled as the scan
    /// would label it — by the file name of the program it runs, which may be a symlink's target
    /// (`python3` runs `python3.11`).
    fn on_exec(&mut self, ev: ExecEvent) {
        let tgid = ev.header.tgid;
        let (path, comm) = (ev.path.as_bytes(), until_zero(&ev.comm));
        let route = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .exec_route(path, comm);
        match route {
            Some(route)
                if self.kernel_routes.len() < MAX_KERNEL_ROUTES
                    || self.kernel_routes.contains_key(&tgid) =>
            {
                let label = program_name(tgid, path, comm);
                let route = if label == route.container {
                    route
                } else {
                    Arc::new(super::routes::Route {
                        container: label,
                        ..(*route).clone()
                    })
                };
                self.kernel_routes.insert(tgid, route);
            }
            _ => {
                self.kernel_routes.remove(&tgid);
            }
        }
    }

    fn on_open(&mut self, ev: OpenEvent) {
        let h = ev.header;
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        let mut conn = self.new_conn(&h);
        let local_reported = ev.flags & OPEN_LOCAL_REPORTED != 0;
        let socket_read = ev.flags & OPEN_SOCKET_READ != 0;
        // A connection whose local address the kernel reports needs no early look at its fd.
        self.look_due |= ev.role == ROLE_CLIENT && !local_reported && !socket_read;
        conn.role = match ev.role {
            ROLE_CLIENT => Some(Role::Client),
            ROLE_SERVER => Some(Role::Server),
            _ => None,
        };
        conn.remote = remote_of(&ev);
        conn.opened = true;
        // Opened by a datagram that named its peer: an unconnected socket, whose own peer is none.
        let datagram = ev.flags & OPEN_DATAGRAM != 0;
        if datagram {
            conn.set_transport(Transport::Udp);
        }
        if local_reported {
            // A TCP connect: its local address came before this event or comes after it
            // (`on_local`), so the fd needs no look.
            conn.set_transport(Transport::Tcp);
            conn.local = self.locals.remove(&key);
            conn.connecting = conn.local.is_none();
        } else if socket_read {
            // The kernel read the socket when it opened: no look at the fd, which a short-lived
            // connection (a DNS lookup's) has often closed by now.
            conn.set_transport(if ev.flags & OPEN_UDP != 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            });
            conn.local = peer_of(&ev.local);
        } else {
            // The fd is looked at after the fact: it may have been closed and reused meanwhile, so
            // the answer only counts if it matches what the kernel saw at connect/accept.
            let known_family = ev.family != 0;
            match sockets::inspect(h.tgid, h.fd) {
                Ok(FdKind::Inet {
                    transport,
                    local,
                    remote,
                }) if !known_family || datagram || remote == conn.remote => {
                    conn.set_transport(transport);
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

    fn on_classify(&mut self, ev: ClassifyEvent) {
        let h = ev.header;
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        let inherited = self
            .inherited
            .get_mut(&h.tgid)
            .and_then(|fds| fds.remove(&h.fd));
        let (inspected, still_open) = if ev.flags & CLASSIFY_INET != 0 {
            // What the kernel read of the socket when the fd was used: no look.
            let transport = if ev.flags & CLASSIFY_UDP != 0 {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            let found = FdKind::Inet {
                transport,
                local: peer_of(&ev.local),
                // An unconnected datagram socket's peer is all zero.
                remote: peer_of(&ev.remote).filter(|a| a.port() != 0),
            };
            (Ok(found), true)
        } else {
            self.metrics.fd_lookups.inc();
            self.look_due = true;
            let inspected = sockets::inspect(h.tgid, h.fd);
            // Checked after the look: the kernel drops the entry when the fd is closed, so an
            // entry of this generation means the look saw the fd the kernel asked about.
            let still_open = self
                .kconns
                .get(&key, 0)
                .is_ok_and(|info| info.generation == h.generation);
            (inspected, still_open)
        };
        match verdict(inspected, still_open, inherited) {
            Verdict::Socket {
                transport,
                local,
                remote,
                role,
            } => {
                let mut conn = self.new_conn(&h);
                conn.set_transport(transport);
                conn.local = local;
                conn.remote = remote;
                conn.role = role;
                self.conns.insert(key, conn);
                if let Some(before) =
                    self.set_kernel_state(key, h.generation, &[CONN_PENDING], CONN_TRACE)
                {
                    self.count_pending_truncated(before.pending_truncated);
                }
            }
            Verdict::Inherited(parent) => {
                // Its process exited (or closed it) first; the bytes captured meanwhile follow.
                let mut conn = self.new_conn(&h);
                conn.set_transport(parent.transport);
                conn.local = parent.local;
                conn.remote = parent.remote;
                conn.role = parent.role;
                conn.evidence = Evidence::Inherited;
                self.conns.insert(key, conn);
            }
            verdict @ (Verdict::NotASocket | Verdict::Gone) => {
                // Its bytes captured while pending follow: this connection swallows them (counted
                // if it may have been a connection) and never becomes a row.
                let tombstone = if verdict == Verdict::Gone {
                    Conn::unknown(h.tgid, h.fd, h.generation)
                } else {
                    Conn::not_a_socket(h.tgid, h.fd, h.generation)
                };
                if let Some(old) = self.conns.insert(key, tombstone) {
                    self.finish(old, h.ts_ns, None);
                }
                if still_open {
                    // (Traced already when the kernel took it for an inet socket, and the fd was
                    // replaced since: dup2 closes without a close syscall.)
                    self.set_kernel_state(
                        key,
                        h.generation,
                        &[CONN_PENDING, CONN_TRACE],
                        CONN_IGNORE,
                    );
                }
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
            conn.set_transport(Transport::Udp);
            let peer = peer_of(&ev.peer);
            conn.peers_changed |= conn.remote.is_some() && peer.is_some() && peer != conn.remote;
            conn.remote = peer.or(conn.remote);
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
        match conn.evidence {
            Evidence::NotASocket => return,
            Evidence::Unknown => {
                self.metrics
                    .dropped
                    .get_or_create(&DropLabels { reason: FD_GONE })
                    .inc();
                return;
            }
            Evidence::Socket | Evidence::Inherited => {}
        }
        if conn.route.is_none() {
            self.metrics
                .dropped
                .get_or_create(&DropLabels { reason: UNROUTED })
                .inc();
            return;
        }
        let dir = if h.direction == DIR_EGRESS {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        conn.infer_transport(h.syscall);
        let mut fed = conn.feed(
            dir,
            h.header.ts_ns,
            h.stream_pos,
            data,
            (h.chunk == 0).then_some(h.syscall_len),
            std::mem::take(&mut self.spare_records),
        );
        if let Some(e) = fed.error {
            debug!(
                pid = key.tgid,
                fd = key.fd,
                ?dir,
                stream_pos = h.stream_pos,
                syscall = h.syscall,
                "{} parse error: {}; data starts {:02x?}",
                e.protocol,
                e.reason,
                &data[..data.len().min(24)]
            );
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
            // (Records written while feeding were not expired: no wait of theirs ended now.)
            self.write_records(key, &mut fed.records, None);
            if self.output.pending.bytes() >= FLUSH_BYTES {
                self.flush();
            }
        }
        fed.records.clear();
        self.spare_records = fed.records;
    }

    /// The kernel's word on a TCP client connection's local address: the connection's if it is
    /// open already (a non-blocking connect), else kept for its open event.
    fn on_local(&mut self, ev: LocalEvent) {
        let key = ConnKey {
            tgid: ev.header.tgid,
            fd: ev.header.fd,
        };
        let Some(local) = peer_of(&ev.local) else {
            return;
        };
        match self.conns.get_mut(&key) {
            Some(conn) if conn.role == Some(Role::Client) => {
                conn.local = Some(local);
                conn.connecting = false;
            }
            _ => {
                // Bounded: an entry stays only if its connect never reported success.
                if self.locals.len() >= MAX_PENDING_LOCALS {
                    self.locals.clear();
                }
                self.locals.insert(key, local);
            }
        }
    }

    fn on_close(&mut self, ev: CloseEvent) {
        let h = ev.header;
        let key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        self.locals.remove(&key);
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
        if conn.evidence == Evidence::Socket {
            self.count_pending_truncated(ev.pending_truncated);
        }
        self.finish(conn, h.ts_ns, Some((ev.bytes_sent, ev.bytes_recv)));
    }

    /// Ends a connection: pending requests become records, then its conn_stats row.
    /// `exact_bytes`: the kernel's counts, when it was closed at `now_ns` (rather than found gone
    /// with its process, or replaced without a close seen).
    fn finish(&mut self, mut conn: Conn, now_ns: u64, exact_bytes: Option<(u64, u64)>) {
        let mut records = Vec::new();
        if let Some((sent, recv)) = exact_bytes {
            conn.lost_at_close(sent, recv, now_ns);
        }
        conn.expire(u64::MAX, &mut records);
        if let Some((sent, recv)) = exact_bytes {
            conn.bytes_sent = sent;
            conn.bytes_recv = recv;
        }
        if conn.route.is_none() {
            return;
        }
        // Requests still waiting ended with the close, when it was seen.
        let closed_ns = exact_bytes.map(|_| now_ns);
        self.output.emit(&mut conn, &mut records, closed_ns);
        if let Some(kind) = conn.silent_protocol() {
            self.metrics
                .parse_errors
                .get_or_create(&ParseErrorLabels {
                    protocol: kind.name(),
                    reason: NOTHING_PARSED,
                })
                .inc();
        }
        if !conn.wants_stats_row() {
            return;
        }
        if !conn.addresses_known() {
            self.metrics
                .dropped
                .get_or_create(&DropLabels {
                    reason: ADDRESSES_UNKNOWN,
                })
                .inc();
        }
        self.output
            .pending
            .conn_stats(&mut conn, now_ns, true, &self.clock);
    }

    fn write_records(&mut self, key: ConnKey, records: &mut Vec<Record>, ended_ns: Option<u64>) {
        if let Some(conn) = self.conns.get_mut(&key) {
            self.output.emit(conn, records, ended_ns);
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

    /// Once a second: expire unanswered requests, export drop counters; every `conn_stats_every`,
    /// a conn_stats row per open connection with new traffic; every 10 s, forget connections of
    /// processes that exited.
    pub fn tick(&mut self) {
        let now = Clock::monotonic_now();
        let mut expired: Vec<(ConnKey, Vec<Record>)> = Vec::new();
        for (key, conn) in &mut self.conns {
            let Some(kind) = conn.kind() else { continue };
            let deadline = now.saturating_sub(kind.answer_timeout().as_nanos() as u64);
            let mut records = Vec::new();
            conn.expire(deadline, &mut records);
            if !records.is_empty() {
                expired.push((*key, records));
            }
        }
        for (key, mut records) in expired {
            self.write_records(key, &mut records, Some(now));
        }
        self.export_drops();
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.sweep_exited(now);
        }
        if now.saturating_sub(self.last_stats_ns) >= self.conn_stats_every.as_nanos() as u64 {
            self.last_stats_ns = now;
            self.report_open(now);
        }
        self.output.forget_histograms();
        self.flush();
    }

    /// Periodic conn_stats: long-lived connections (keep-alive, pools) show their cumulative bytes
    /// while open, with `conn_close` 0. One pass over the connections, one kernel map lookup per
    /// connection that may report.
    fn report_open(&mut self, now_ns: u64) {
        for (key, conn) in &mut self.conns {
            if !reports_stats(conn) {
                continue;
            }
            let kernel = self
                .kconns
                .get(key, 0)
                .ok()
                .filter(|info| info.generation == conn.generation)
                .map(|info| (info.bytes_sent, info.bytes_recv));
            if let Some(bytes) = periodic_bytes(conn, kernel) {
                conn.stats_reported = bytes;
                periodic_row(&mut self.output.pending, conn, bytes, now_ns, &self.clock);
            }
        }
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

    /// Forgets the connections, routes and fds of processes that exited, once two sweeps in a row
    /// found them gone: what a process did just before it exited may still wait in the ring
    /// (drained every 250 ms, swept every 10 s), and forgotten at once, a short-lived forked
    /// server's last answers lost their route and their connection (PostgreSQL backends of
    /// clients connecting per transaction: 259 unrouted events in 36,000 connections).
    fn sweep_exited(&mut self, now: u64) {
        let alive = |tgid: u32| std::path::Path::new(&format!("/proc/{tgid}")).exists();
        let mut tracked: HashSet<u32> = self.conns.keys().map(|k| k.tgid).collect();
        tracked.extend(self.listeners.keys().map(|k| k.tgid));
        tracked.extend(self.inherited.keys());
        tracked.extend(self.kernel_routes.keys());
        let gone_now: HashSet<u32> = tracked.into_iter().filter(|&t| !alive(t)).collect();
        let (gone, waiting): (HashSet<u32>, HashSet<u32>) = gone_now
            .into_iter()
            .partition(|tgid| self.gone_before.contains(tgid));
        self.gone_before = waiting;
        self.listeners.retain(|k, _| !gone.contains(&k.tgid));
        self.inherited.retain(|tgid, _| !gone.contains(tgid));
        self.kernel_routes.retain(|tgid, _| !gone.contains(tgid));
        let dead: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| gone.contains(&k.tgid))
            .copied()
            .collect();
        for key in dead {
            if let Some(conn) = self.conns.remove(&key) {
                // Exited without closing: the kernel entry still holds its pending truncations.
                if conn.evidence == Evidence::Socket
                    && let Ok(info) = self.kconns.get(&key, 0)
                    && info.generation == conn.generation
                {
                    self.count_pending_truncated(info.pending_truncated);
                }
                self.finish(conn, now, None);
            }
        }
        self.prune_series();
        // Kernel entries of processes gone (those still tracked here go with their connections).
        let stale: Vec<ConnKey> = self
            .kconns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.gone_before.contains(&k.tgid) && !alive(k.tgid))
            .collect();
        for key in stale {
            let _ = self.kconns.remove(&key);
        }
    }

    /// Removes the RED series of targets no longer traced for a while: neither selected (by tgid
    /// or cgroup), nor a selected process's child, nor the owner of an open connection.
    fn prune_series(&mut self) {
        let mut traced: HashSet<TargetLabels> = HashSet::new();
        {
            let routes = self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            traced.extend(
                routes
                    .tgids
                    .values()
                    .chain(routes.cgroups.values())
                    .map(|r| target_labels(r)),
            );
        }
        traced.extend(self.kernel_routes.values().map(|r| target_labels(r)));
        traced.extend(
            self.conns
                .values()
                .filter_map(|c| c.route.as_deref())
                .map(target_labels),
        );
        self.output.prune(&traced, std::time::Instant::now());
    }
}

/// The connections in the lowest `shed` slots are shed from `now_ns`: answers to their requests
/// may come unseen, so a request left waiting is no timeout of the peer's (as after bytes lost to
/// a full ring); the rest of the connection's bytes the kernel counts, and its close reports.
fn mark_shed(conns: &mut FxHashMap<ConnKey, Conn>, shed: u32, now_ns: u64) {
    for (key, conn) in conns {
        if shed_slot(key.tgid, key.fd, conn.generation) < shed {
            conn.answers_lost_ns = now_ns;
        }
    }
}

/// Whether `conn` gets periodic conn_stats rows: a traced socket (files, and fds whose bytes may
/// still turn out to be a file's, get none).
fn reports_stats(conn: &Conn) -> bool {
    conn.route.is_some() && conn.evidence == Evidence::Socket
}

/// The cumulative (sent, received) bytes of a periodic conn_stats row of `conn`, or None: no
/// traffic since its last row (or none at all), or its protocol is still being detected from bytes
/// not handled yet (next pass). `kernel`: the kernel's exact counts, while its entry of this
/// connection exists; they also cover connections whose bytes are no longer captured (no protocol
/// detected), which the user-side counts miss.
pub fn periodic_bytes(conn: &Conn, kernel: Option<(u64, u64)>) -> Option<(u64, u64)> {
    if !reports_stats(conn) {
        return None;
    }
    let seen = (conn.bytes_sent, conn.bytes_recv);
    if matches!(conn.protocol, Protocol::Detecting { .. }) && kernel.is_some_and(|k| k != seen) {
        return None;
    }
    let (sent, recv) = kernel.unwrap_or(seen);
    let (last_sent, last_recv) = conn.stats_reported;
    (sent > last_sent || recv > last_recv).then_some((sent, recv))
}

/// A conn_stats row of an open connection showing `bytes`. The user-side counts are kept: the
/// events still in the ring buffer add to them.
fn periodic_row(
    pending: &mut PendingRows,
    conn: &mut Conn,
    bytes: (u64, u64),
    now_ns: u64,
    clock: &Clock,
) {
    let seen = (conn.bytes_sent, conn.bytes_recv);
    (conn.bytes_sent, conn.bytes_recv) = bytes;
    pending.conn_stats(conn, now_ns, false, clock);
    (conn.bytes_sent, conn.bytes_recv) = seen;
}

/// Histogram series of one (target, role, method/operation, status) label set: looked up once, then
/// observed through its handle. The route is kept so its address cannot be reused meanwhile.
/// `name` and `detail` are compared and hashed by address: they come from the parsers' static
/// tables, so each has a few addresses at most, and a label set cached under two keys still
/// resolves to one series — while comparing their bytes was a `memcmp` call per record.
#[derive(Clone, Copy, Debug)]
struct SeriesKey {
    route: usize,
    family: u8,
    name: &'static str,
    detail: &'static str,
    status: u16,
    /// `error_type`.
    error: &'static str,
}

impl SeriesKey {
    #[allow(clippy::type_complexity)]
    fn identity(&self) -> (usize, u8, [(usize, usize); 3], u16) {
        let at = |s: &'static str| (s.as_ptr() as usize, s.len());
        (
            self.route,
            self.family,
            [at(self.name), at(self.detail), at(self.error)],
            self.status,
        )
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for SeriesKey {}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// Series handles kept at most; past it they are looked up again (label sets are bounded anyway).
const MAX_CACHED_SERIES: usize = 4096;

/// Where records go: RED histograms (through cached series handles) and rows waiting for a flush.
struct Output {
    metrics: ProtocolMetrics,
    clock: Clock,
    pending: PendingRows,
    series: FxHashMap<SeriesKey, (Arc<super::routes::Route>, Histogram)>,
    /// How many requests each record stands for: more than 1 while connections are shed.
    weight: u32,
}

impl Output {
    fn new(metrics: ProtocolMetrics) -> Output {
        Output {
            metrics,
            clock: Clock::new(),
            pending: PendingRows::default(),
            series: FxHashMap::default(),
            weight: 1,
        }
    }

    /// Removes the series of targets `traced` has not held for a while (see
    /// [`ProtocolMetrics::prune`]), and the handles cached for them.
    fn prune(&mut self, traced: &HashSet<TargetLabels>, now: std::time::Instant) {
        if self.metrics.prune(traced, now) {
            self.series.clear();
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
        // Keyed by the route's address: the cached entry holds the route, so the address is not
        // reused while the entry lives.
        let (_, histogram) = self.series.entry(key).or_insert_with(|| {
            let target = target_labels(route);
            let labels = match key.family {
                FAMILY_HTTP_CLIENT | FAMILY_HTTP_SERVER => {
                    let labels = HttpLabels {
                        target,
                        http_request_method: key.name,
                        http_response_status_code: (key.status != 0).then_some(key.status),
                        error_type: key.error,
                    };
                    if key.family == FAMILY_HTTP_CLIENT {
                        RedLabels::HttpClient(labels)
                    } else {
                        RedLabels::HttpServer(labels)
                    }
                }
                FAMILY_DNS => RedLabels::Dns(DnsLabels {
                    target,
                    error_type: key.error,
                }),
                _ => RedLabels::Db(DbLabels {
                    target,
                    db_system_name: key.name,
                    db_operation_name: key.detail,
                    error_type: key.error,
                }),
            };
            (route.clone(), metrics.histogram(labels))
        });
        histogram
    }

    /// Takes every record out of `records`. `ended_ns`: when the expiry that wrote them ran (a
    /// tick's time, or the close's), if it did: the end of the wait of the requests without
    /// response that it ended (see [`Record::unanswered`]); they are observed as errors that
    /// took that long, unless bytes of their answers' direction were lost while they waited.
    fn emit(&mut self, conn: &mut Conn, records: &mut Vec<Record>, ended_ns: Option<u64>) {
        let Some(kind) = conn.kind().filter(|_| conn.route.is_some()) else {
            records.clear();
            return;
        };
        for record in records.drain(..) {
            let latency = match record.latency_ns {
                Some(latency) => Some(latency),
                None => unanswered_wait(
                    record.request_ns,
                    record.red.error(),
                    conn.answers_lost_ns,
                    ended_ns,
                ),
            };
            // The route is borrowed per record: `conn` is lent mutably to the row below.
            if let (Some(latency), Some(route)) = (latency, &conn.route) {
                let seconds = latency as f64 / 1e9;
                let (family, name, detail, status, error) = match &record.red {
                    Red::Http {
                        method,
                        status,
                        error,
                    } => {
                        let client = conn.role == Some(Role::Client);
                        let family = if client {
                            FAMILY_HTTP_CLIENT
                        } else {
                            FAMILY_HTTP_SERVER
                        };
                        // An answer "considered an error" is typed by its status code.
                        let error = if error.is_empty() {
                            sonde_protocols::error_type::http_status(*status, client)
                        } else {
                            *error
                        };
                        (family, *method, "", *status, error)
                    }
                    Red::Dns { error } => (FAMILY_DNS, "", "", 0, *error),
                    Red::Db {
                        system,
                        operation,
                        error,
                    } => (FAMILY_DB, *system, *operation, 0, *error),
                };
                let key = SeriesKey {
                    route: Arc::as_ptr(route) as usize,
                    family,
                    name,
                    detail,
                    status,
                    error,
                };
                let weight = self.weight;
                let histogram = self.histogram(route, key);
                // prometheus-client has no weighted observation; weights are at most
                // SHED_SLOTS and only while most records are shed.
                for _ in 0..weight {
                    histogram.observe(seconds);
                }
            }
            self.pending.record(kind, conn, record, &self.clock);
        }
    }
}

/// How long a request without response waited, if its wait had a known end: the expiry that
/// wrote it ended it at `ended_ns`, its error type says how ([`Record::unanswered`]), and no
/// bytes of its answers' direction were lost since it was sent (`answers_lost_ns`). Apart, and
/// from the record's fields only, so that answered records pay nothing for it.
#[cold]
fn unanswered_wait(
    request_ns: u64,
    error: &'static str,
    answers_lost_ns: u64,
    ended_ns: Option<u64>,
) -> Option<u64> {
    let ended = sonde_protocols::Unanswered::of_error_type(error).is_some();
    ended_ns
        .filter(|_| ended && request_ns > answers_lost_ns)
        .map(|at| at.saturating_sub(request_ns))
}

/// The file name of the program process `tgid` runs, as the process scan reads it (its `exe`
/// link's), having started it by `path` (empty if unknown) under the thread name `comm`: once the
/// process is gone, where `path`'s symlinks lead (a standalone process's paths are the host's),
/// else `comm`.
fn program_name(tgid: u32, path: &[u8], comm: &[u8]) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    crate::targets::process::executable(std::path::Path::new(&format!("/proc/{tgid}")))
        .or_else(|| std::fs::canonicalize(path).ok())
        .and_then(|runs| Some(runs.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| String::from_utf8_lossy(comm).into_owned())
}

/// Routes of processes the kernel selected kept at most (see `Tracker::kernel_routes`); beyond, a
/// process waits for the process scan to route it.
const MAX_KERNEL_ROUTES: usize = 16384;

/// Local addresses kept for open events still to come (see `Tracker::locals`).
const MAX_PENDING_LOCALS: usize = 4096;

const FAMILY_HTTP_SERVER: u8 = 0;
const FAMILY_HTTP_CLIENT: u8 = 1;
const FAMILY_DNS: u8 = 2;
const FAMILY_DB: u8 = 3;

/// The labels naming a route's target in the RED series.
fn target_labels(route: &super::routes::Route) -> TargetLabels {
    TargetLabels {
        namespace: route.namespace.clone(),
        pod: route.pod.clone(),
        container: route.container.clone(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::protocols::metrics::GONE_TARGET_TTL;

    fn addr(s: &str) -> Option<std::net::SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn parent() -> Inherited {
        Inherited {
            role: Some(Role::Server),
            transport: Transport::Tcp,
            local: addr("127.0.0.1:5432"),
            remote: addr("127.0.0.1:40000"),
        }
    }

    fn gone() -> Result<FdKind, sockets::SocketError> {
        Err(sockets::SocketError::PidFd {
            pid: 1,
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        })
    }

    fn inet(remote: &str) -> Result<FdKind, sockets::SocketError> {
        Ok(FdKind::Inet {
            transport: Transport::Tcp,
            local: addr("127.0.0.1:5432"),
            remote: addr(remote),
        })
    }

    fn traced_conn() -> Conn {
        let route = super::super::routes::Route {
            kinds: vec![sonde_protocols::Kind::Redis],
            config: Default::default(),
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
        };
        Conn::new(1, 3, 7, Some(Arc::new(route)))
    }

    #[test]
    fn connections_shed_lose_their_answers_from_then_and_the_others_keep_theirs() {
        use sonde_common::conn::SHED_SLOTS;
        let mut conns: FxHashMap<ConnKey, Conn> = FxHashMap::default();
        for fd in 3..40 {
            let mut conn = traced_conn();
            conn.fd = fd;
            conns.insert(ConnKey { tgid: 1, fd }, conn);
        }
        let shed = SHED_SLOTS / 2;
        mark_shed(&mut conns, shed, 5_000);
        let (mut lost, mut kept) = (0, 0);
        for (key, conn) in &conns {
            if shed_slot(key.tgid, key.fd, conn.generation) < shed {
                assert_eq!(conn.answers_lost_ns, 5_000);
                lost += 1;
            } else {
                assert_eq!(conn.answers_lost_ns, 0);
                kept += 1;
            }
        }
        assert!(lost > 0 && kept > 0, "{lost} shed, {kept} kept");
    }

    #[test]
    fn an_open_connection_reports_its_cumulative_bytes_only_after_new_traffic() {
        let mut conn = traced_conn();
        // Stats only (no protocol detected): no data events, the kernel's counts are the truth.
        conn.protocol = Protocol::Unknown;
        assert_eq!(periodic_bytes(&conn, Some((0, 0))), None, "no traffic yet");
        assert_eq!(periodic_bytes(&conn, Some((14, 7))), Some((14, 7)));
        conn.stats_reported = (14, 7);
        assert_eq!(periodic_bytes(&conn, Some((14, 7))), None, "nothing new");
        assert_eq!(periodic_bytes(&conn, Some((14, 21))), Some((14, 21)));
        assert_eq!(periodic_bytes(&conn, Some((30, 7))), Some((30, 7)));
    }

    #[test]
    fn a_connection_still_detecting_waits_until_its_events_caught_up_with_the_kernel() {
        let mut conn = traced_conn();
        (conn.bytes_sent, conn.bytes_recv) = (0, 9);
        assert_eq!(
            periodic_bytes(&conn, Some((4, 9))),
            None,
            "4 bytes not parsed yet"
        );
        conn.bytes_sent = 4;
        assert_eq!(periodic_bytes(&conn, Some((4, 9))), Some((4, 9)));
    }

    #[test]
    fn without_its_kernel_entry_a_connection_reports_the_bytes_its_events_carried() {
        let mut conn = traced_conn();
        (conn.bytes_sent, conn.bytes_recv) = (5, 9);
        assert_eq!(periodic_bytes(&conn, None), Some((5, 9)));
        conn.stats_reported = (5, 9);
        assert_eq!(periodic_bytes(&conn, None), None);
    }

    #[test]
    fn files_untraced_and_unconfirmed_fds_get_no_periodic_rows() {
        let mut untraced = traced_conn();
        untraced.route = None;
        assert_eq!(periodic_bytes(&untraced, Some((1, 1))), None);
        let file = Conn::not_a_socket(1, 3, 7);
        assert_eq!(periodic_bytes(&file, Some((1, 1))), None);
        let mut inherited = traced_conn();
        inherited.evidence = Evidence::Inherited;
        assert_eq!(periodic_bytes(&inherited, Some((1, 1))), None);
    }

    #[test]
    fn a_periodic_row_shows_the_given_bytes_open_and_keeps_the_counts_of_the_events() {
        let mut conn = traced_conn();
        (conn.bytes_sent, conn.bytes_recv) = (5, 9);
        let store = crate::tables::Store::default();
        let mut tables = Tables::new(store.clone());
        let mut pending = PendingRows::default();
        periodic_row(&mut pending, &mut conn, (14, 21), 107, &Clock::new());
        pending.flush(&mut tables, "test").unwrap();
        let result = store
            .query(super::super::rows::CONN_STATS_TABLE, &Default::default())
            .unwrap();
        let [row] = &result.rows[..] else {
            panic!("not one row: {:?}", result.rows)
        };
        use crate::tables::Value;
        // conn_stats columns: 5 connection columns, protocol, conn_open, conn_close, bytes_sent,
        // bytes_recv, duration.
        assert_eq!(
            row.values[5..],
            [
                Value::String("unknown".into()),
                Value::Int64(1),
                Value::Int64(0),
                Value::Int64(14),
                Value::Int64(21),
                Value::Int64(100),
            ]
        );
        assert_eq!((conn.bytes_sent, conn.bytes_recv), (5, 9));
    }

    #[test]
    fn an_fd_closed_before_it_was_looked_at_is_gone_not_taken_for_a_file() {
        assert_eq!(verdict(gone(), true, None), Verdict::Gone);
        assert_eq!(verdict(gone(), false, None), Verdict::Gone);
    }

    #[test]
    fn a_forked_child_gone_before_its_fd_was_looked_at_gets_the_parents_addresses() {
        assert_eq!(
            verdict(gone(), true, Some(parent())),
            Verdict::Inherited(parent())
        );
    }

    #[test]
    fn a_look_at_an_fd_closed_and_reused_meanwhile_is_not_believed() {
        assert_eq!(verdict(inet("127.0.0.1:1"), false, None), Verdict::Gone);
        assert_eq!(
            verdict(Ok(FdKind::Other), false, Some(parent())),
            Verdict::Inherited(parent())
        );
    }

    #[test]
    fn a_live_socket_is_taken_as_seen_with_the_parents_role_if_it_is_the_same_peer() {
        let seen = verdict(inet("127.0.0.1:40000"), true, Some(parent()));
        assert_eq!(
            seen,
            Verdict::Socket {
                transport: Transport::Tcp,
                local: addr("127.0.0.1:5432"),
                remote: addr("127.0.0.1:40000"),
                role: Some(Role::Server),
            }
        );
        let other = verdict(inet("127.0.0.1:1"), true, Some(parent()));
        assert!(matches!(other, Verdict::Socket { role: None, .. }));
        assert_eq!(
            verdict(Ok(FdKind::Other), true, Some(parent())),
            Verdict::NotASocket
        );
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

    /// A connection of pod `pod` (container `web` of namespace `shop`).
    fn web_conn(pod: &str) -> Conn {
        let route = super::super::routes::Route {
            kinds: vec![sonde_protocols::Kind::Http],
            config: Default::default(),
            namespace: "shop".into(),
            pod: pod.into(),
            container: "web".into(),
        };
        Conn::new(1, 3, 7, Some(Arc::new(route)))
    }

    /// The `n`-th (from 0) `GET /` answered 200 on `conn`, handed to `output`.
    fn serve(output: &mut Output, conn: &mut Conn, n: u64) {
        let (req, resp) = (GET.len() as u64, OK.len() as u64);
        conn.feed(
            Direction::Ingress,
            10 + n,
            n * req,
            GET,
            Some(req),
            Vec::new(),
        );
        let mut fed = conn.feed(
            Direction::Egress,
            20 + n,
            n * resp,
            OK,
            Some(resp),
            Vec::new(),
        );
        assert_eq!(fed.records.len(), 1);
        output.emit(conn, &mut fed.records, None);
    }

    /// The `http_server_request_duration_seconds_count` lines of `/metrics`.
    fn server_counts(registry: &prometheus_client::registry::Registry) -> Vec<String> {
        metric_lines(registry, "http_server_request_duration_seconds_count{")
    }

    /// The lines of `/metrics` that start with `prefix`.
    fn metric_lines(registry: &prometheus_client::registry::Registry, prefix: &str) -> Vec<String> {
        crate::telemetry::scrape(registry)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    const WEB_1: &str =
        "namespace=\"shop\",pod=\"web-1\",container=\"web\",http_request_method=\"GET\"";

    /// A second `GET /` on `conn` (after one [`serve`]d), still waiting.
    fn wait_for_answer(conn: &mut Conn) {
        let req = GET.len() as u64;
        let fed = conn.feed(Direction::Ingress, 1_000, req, GET, Some(req), Vec::new());
        assert!(fed.records.is_empty());
    }

    #[test]
    fn a_5xx_answer_is_an_error_typed_by_its_code_at_the_server_and_a_4xx_only_at_the_client() {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut output = Output::new(ProtocolMetrics::register(&mut registry));
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            OK,
        ];
        for role in [Role::Server, Role::Client] {
            let mut conn = web_conn("web-1");
            let (req, resp) = match role {
                Role::Server => (Direction::Ingress, Direction::Egress),
                Role::Client => (Direction::Egress, Direction::Ingress),
            };
            let (mut sent, mut received) = (0u64, 0u64);
            for (n, answer) in answers.iter().enumerate() {
                let ts = 10 * n as u64;
                let mut pos = |dir: Direction, len: usize| {
                    let at = match dir {
                        Direction::Egress => &mut sent,
                        Direction::Ingress => &mut received,
                    };
                    let pos = *at;
                    *at += len as u64;
                    pos
                };
                let at = pos(req, GET.len());
                conn.feed(req, ts, at, GET, Some(GET.len() as u64), Vec::new());
                let at = pos(resp, answer.len());
                let mut fed = conn.feed(
                    resp,
                    ts + 1,
                    at,
                    answer,
                    Some(answer.len() as u64),
                    Vec::new(),
                );
                assert_eq!(fed.records.len(), 1, "{role:?} {n}");
                output.emit(&mut conn, &mut fed.records, None);
            }
        }
        let mut server = metric_lines(&registry, "http_server_request_duration_seconds_count{");
        server.sort();
        assert_eq!(
            server,
            [200, 404, 503].map(|code| {
                let error = if code == 503 { "503" } else { "" };
                format!(
                    "http_server_request_duration_seconds_count{{{WEB_1},http_response_status_code=\"{code}\",error_type=\"{error}\"}} 1"
                )
            })
        );
        let mut client = metric_lines(&registry, "http_client_request_duration_seconds_count{");
        client.sort();
        assert_eq!(
            client,
            [200, 404, 503].map(|code| {
                let error = if code == 200 { String::new() } else { code.to_string() };
                format!(
                    "http_client_request_duration_seconds_count{{{WEB_1},http_response_status_code=\"{code}\",error_type=\"{error}\"}} 1"
                )
            })
        );
    }

    #[test]
    fn a_request_whose_connection_closed_before_an_answer_is_an_error_without_status_code() {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut output = Output::new(ProtocolMetrics::register(&mut registry));
        let mut conn = web_conn("web-1");
        serve(&mut output, &mut conn, 0);
        wait_for_answer(&mut conn);
        // The client gave up after 0.25 s and closed (nginx would log a 499).
        let mut records = Vec::new();
        conn.lost_at_close(OK.len() as u64, 2 * GET.len() as u64, 250_001_000);
        conn.expire(u64::MAX, &mut records);
        assert_eq!(records.len(), 1);
        output.emit(&mut conn, &mut records, Some(250_001_000));
        let mut counts = metric_lines(&registry, "http_server_request_duration_seconds_count{");
        counts.sort();
        assert_eq!(
            counts,
            [
                format!(
                    "http_server_request_duration_seconds_count{{{WEB_1},http_response_status_code=\"\",error_type=\"connection_closed\"}} 1"
                ),
                format!(
                    "http_server_request_duration_seconds_count{{{WEB_1},http_response_status_code=\"200\",error_type=\"\"}} 1"
                ),
            ]
        );
        let sums = metric_lines(&registry, "http_server_request_duration_seconds_sum{");
        assert!(
            sums.iter()
                .any(|l| l.contains("connection_closed") && l.ends_with(" 0.25")),
            "{sums:?}"
        );
    }

    #[test]
    fn a_request_that_waited_past_its_timeout_is_an_error_of_that_duration() {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut output = Output::new(ProtocolMetrics::register(&mut registry));
        let mut conn = web_conn("web-1");
        serve(&mut output, &mut conn, 0);
        wait_for_answer(&mut conn);
        let mut records = Vec::new();
        conn.expire(2_000, &mut records);
        output.emit(&mut conn, &mut records, Some(300_000_001_000));
        let sums = metric_lines(&registry, "http_server_request_duration_seconds_sum{");
        assert!(
            sums.iter().any(|l| l
                == &format!("http_server_request_duration_seconds_sum{{{WEB_1},http_response_status_code=\"\",error_type=\"timeout\"}} 300.0")),
            "{sums:?}"
        );
    }

    #[test]
    fn requests_without_a_known_end_of_their_wait_are_not_observed() {
        let unanswered = |registry: &prometheus_client::registry::Registry| {
            let mut lines = metric_lines(registry, "http_server_request_duration_seconds_count{");
            lines.extend(metric_lines(registry, "dns_lookup_duration_seconds_count{"));
            lines.retain(|l| l.contains("error_type=\"connection_closed\""));
            lines
        };
        // The process went away without a close seen: when its requests stopped waiting is
        // unknown.
        let mut registry = prometheus_client::registry::Registry::default();
        let mut output = Output::new(ProtocolMetrics::register(&mut registry));
        let mut conn = web_conn("web-1");
        serve(&mut output, &mut conn, 0);
        wait_for_answer(&mut conn);
        let mut records = Vec::new();
        conn.expire(u64::MAX, &mut records);
        assert_eq!(records.len(), 1);
        output.emit(&mut conn, &mut records, None);
        assert_eq!(unanswered(&registry), Vec::<String>::new());

        // The close says more was answered than was seen: the answer was lost by the capture.
        let mut conn = web_conn("web-1");
        serve(&mut output, &mut conn, 0);
        wait_for_answer(&mut conn);
        let mut records = Vec::new();
        conn.lost_at_close(2 * OK.len() as u64, 2 * GET.len() as u64, 5_000);
        conn.expire(u64::MAX, &mut records);
        assert_eq!(records.len(), 1);
        output.emit(&mut conn, &mut records, Some(5_000));
        assert_eq!(unanswered(&registry), Vec::<String>::new());

        // A DNS query over TCP whose answer went in lost bytes, the stream followed again after
        // them: the parser cannot tell, the loss while it waited does.
        let route = super::super::routes::Route {
            kinds: vec![sonde_protocols::Kind::Dns],
            config: Default::default(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            container: "web".into(),
        };
        let mut conn = Conn::new(1, 4, 7, Some(Arc::new(route)));
        let framed = |msg: &[u8]| {
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(msg);
            framed
        };
        let query = framed(
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01",
        );
        // The answer to another query (id 0x4321).
        let other_answer = framed(
            b"\x43\x21\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01b\x04test\x00\x00\x01\x00\x01",
        );
        let n = query.len() as u64;
        let fed = conn.feed(Direction::Egress, 100, 0, &query, Some(n), Vec::new());
        assert_eq!(fed.detected, Some(sonde_protocols::Kind::Dns));
        let m = other_answer.len() as u64;
        conn.feed(
            Direction::Ingress,
            200,
            40,
            &other_answer,
            Some(m),
            Vec::new(),
        );
        let mut records = Vec::new();
        conn.expire(u64::MAX, &mut records);
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].unanswered(),
            Some(sonde_protocols::Unanswered::Closed),
            "the parser saw no loss in the way"
        );
        output.emit(&mut conn, &mut records, Some(300));
        assert_eq!(unanswered(&registry), Vec::<String>::new());
    }

    #[test]
    fn the_red_series_of_a_pod_gone_for_a_while_are_removed_and_come_back_with_its_traffic() {
        let mut registry = prometheus_client::registry::Registry::default();
        let mut output = Output::new(ProtocolMetrics::register(&mut registry));
        let (mut web_1, mut web_2) = (web_conn("web-1"), web_conn("web-2"));
        serve(&mut output, &mut web_1, 0);
        serve(&mut output, &mut web_2, 0);
        let series_of = |counts: &[String], pod: &str| {
            counts
                .iter()
                .filter(|l| l.contains(&format!("pod=\"{pod}\"")))
                .count()
        };
        let counts = server_counts(&registry);
        assert_eq!(
            (series_of(&counts, "web-1"), series_of(&counts, "web-2")),
            (1, 1)
        );

        // web-1 is no longer traced: its series stay long enough to be scraped, then go.
        let web_2_target = TargetLabels {
            namespace: "shop".into(),
            pod: "web-2".into(),
            container: "web".into(),
        };
        let traced = HashSet::from([web_2_target]);
        let t0 = std::time::Instant::now();
        output.prune(&traced, t0);
        output.prune(&traced, t0 + GONE_TARGET_TTL / 2);
        assert_eq!(series_of(&server_counts(&registry), "web-1"), 1);
        output.prune(&traced, t0 + GONE_TARGET_TTL);
        let counts = server_counts(&registry);
        assert_eq!(
            (series_of(&counts, "web-1"), series_of(&counts, "web-2")),
            (0, 1),
            "{counts:?}"
        );

        // Traced again: its series is made anew, not observed through a handle of the removed one.
        serve(&mut output, &mut web_1, 1);
        let counts = server_counts(&registry);
        assert!(
            counts
                .iter()
                .any(|l| l.contains("pod=\"web-1\"") && l.ends_with(" 1")),
            "{counts:?}"
        );
    }
}
