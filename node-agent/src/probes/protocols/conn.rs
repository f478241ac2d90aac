//! One traced connection in user space: its identity and addresses, the two byte streams put back in
//! order (gaps from lost or truncated events reported to the parser), protocol detection on the first
//! bytes and the parser that follows.
use std::net::SocketAddr;
use std::sync::Arc;

use sonde_common::conn::{SYS_RECVMMSG, SYS_SENDMMSG};
use sonde_protocols::{ConnParser, Direction, Kind, ParseError, Record, Role, Transport};

use super::routes::Route;
use super::rows::ConnPrefix;

/// Data events looked at before a connection is declared of no enabled protocol.
pub const DETECT_ATTEMPTS: u32 = 3;
/// Bytes of one direction kept while detecting: a message read in pieces (dnsmasq reads a TCP DNS
/// query's 2-byte length, then the rest) is detected on its pieces together.
const DETECT_HEAD_BYTES: usize = 1024;

/// What the connection speaks, as far as we know.
pub enum Protocol {
    Detecting {
        attempts: u32,
        /// The bytes seen so far in direction `head_dir`, without a gap.
        head: Vec<u8>,
        head_dir: Direction,
    },
    Parsing {
        kind: Kind,
        parser: Box<dyn ConnParser>,
    },
    /// No enabled protocol recognised it; only its byte counts are kept.
    Unknown,
}

/// What says the fd is a connection at all. The kernel side captures the bytes of fds still being
/// classified, so user space must be able to throw them away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// An inet socket: from connect/accept, a datagram with a peer, or the fd looked at.
    Socket,
    /// The fd was gone before it could be looked at, but the parent it was forked from had an inet
    /// socket open on that fd number: it counts once an enabled protocol is detected in its bytes
    /// (the child may have closed the socket and reused the number for a file).
    Inherited,
    /// A file, pipe or unix socket: its bytes are dropped without rows, parse errors or drop
    /// counts.
    NotASocket,
    /// Gone before it could be looked at, with no sign of what it was (only where the kernel
    /// could not tell: no BTF, a failed walk): its bytes are dropped, each event counted as
    /// `fd_gone`, since it may have been a connection.
    Unknown,
}

/// Expected position of the next byte of one direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stream {
    pub next: u64,
}

impl Stream {
    /// Places a chunk at stream position `pos`: returns the bytes lost before it and the chunk.
    ///
    /// Events arrive in syscall order and the kernel's positions only grow, except when user space
    /// writes a verdict over a connection's kernel entry while a syscall of it runs: the count
    /// that syscall added is undone, and every later position falls short by its length. A chunk
    /// behind the expected position is therefore the next one all the same (taking it for a
    /// repeat dropped a PostgreSQL backend's queries after its startup message).
    pub fn place<'a>(&mut self, pos: u64, data: &'a [u8]) -> (u64, &'a [u8]) {
        let gap = pos.saturating_sub(self.next);
        self.next = pos + data.len() as u64;
        (gap, data)
    }
}

/// What a fed chunk produced.
#[derive(Default)]
pub struct Fed {
    pub records: Vec<Record>,
    pub error: Option<ParseError>,
    /// The protocol was just detected.
    pub detected: Option<Kind>,
    /// Detection just gave up (on a connection known to be a socket).
    pub undetected: bool,
    /// Detection gave up on an [`Evidence::Inherited`] fd: it is [`Evidence::NotASocket`] now.
    pub discarded: bool,
}

pub struct Conn {
    pub tgid: u32,
    pub fd: u32,
    pub generation: u64,
    pub route: Option<Arc<Route>>,
    pub role: Option<Role>,
    /// TCP until something says otherwise; see [`Conn::transport_verified`].
    pub transport: Transport,
    /// The transport was seen (the fd's SO_TYPE, a datagram naming its peer, the parent's socket,
    /// or datagram-only syscalls), not assumed: a process that exits before its fd is looked at
    /// leaves a connected UDP socket looking like TCP.
    pub transport_verified: bool,
    /// The parser made a record or reported an error: a detected protocol whose bytes made
    /// neither is counted as a parse failure when the connection ends.
    pub produced: bool,
    pub local: Option<SocketAddr>,
    /// The peer; for a connection-less socket, that of its latest datagram.
    pub remote: Option<SocketAddr>,
    /// A connection-less socket spoke with more than one peer (a UDP server): its conn_stats
    /// rows name none.
    pub peers_changed: bool,
    pub egress: Stream,
    pub ingress: Stream,
    pub protocol: Protocol,
    pub opened_ns: u64,
    pub last_ns: u64,
    /// Bytes seen in data events (the kernel's exact counts come with the close event).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// The start of its rows (target and connection columns), encoded once.
    pub prefix: ConnPrefix,
    pub evidence: Evidence,
    /// Opened by connect/accept (or a datagram naming its peer) in this process.
    pub opened: bool,
    /// A child process inherited it at fork (the child's own connection carries its traffic).
    pub forked: bool,
    /// A TCP connect the kernel has not reported established (with its local address) yet: one
    /// that ends so without a byte was refused or timed out, and was never a connection.
    pub connecting: bool,
    /// (sent, received) in its last periodic conn_stats row: a new one only after more traffic.
    pub stats_reported: (u64, u64),
    /// When bytes of the direction that carries answers were last found lost (0: never): a
    /// request sent before then may have had its answer in them, so its going unanswered is no
    /// error of the peer's (see [`sonde_protocols::Record::unanswered`]).
    pub answers_lost_ns: u64,
}

impl Conn {
    pub fn new(tgid: u32, fd: u32, generation: u64, route: Option<Arc<Route>>) -> Conn {
        Conn {
            tgid,
            fd,
            generation,
            route,
            role: None,
            transport: Transport::Tcp,
            transport_verified: false,
            produced: false,
            local: None,
            remote: None,
            peers_changed: false,
            egress: Stream::default(),
            ingress: Stream::default(),
            protocol: Protocol::Detecting {
                attempts: 0,
                head: Vec::new(),
                head_dir: Direction::Egress,
            },
            opened_ns: generation,
            last_ns: generation,
            bytes_sent: 0,
            bytes_recv: 0,
            prefix: ConnPrefix::default(),
            evidence: Evidence::Socket,
            opened: false,
            forked: false,
            connecting: false,
            stats_reported: (0, 0),
            answers_lost_ns: 0,
        }
    }

    /// A connection whose bytes are dropped (see [`Evidence::NotASocket`]).
    pub fn not_a_socket(tgid: u32, fd: u32, generation: u64) -> Conn {
        let mut conn = Conn::new(tgid, fd, generation, None);
        conn.evidence = Evidence::NotASocket;
        conn.protocol = Protocol::Unknown;
        conn
    }

    /// A connection whose bytes are dropped and counted (see [`Evidence::Unknown`]).
    pub fn unknown(tgid: u32, fd: u32, generation: u64) -> Conn {
        let mut conn = Conn::not_a_socket(tgid, fd, generation);
        conn.evidence = Evidence::Unknown;
        conn
    }

    /// Whether its end deserves a conn_stats row: a socket that carried bytes, or one this process
    /// opened itself and did not hand to a child (a 0-byte copy of a socket a forked child serves,
    /// or an fd that was only closed, is noise).
    pub fn wants_stats_row(&self) -> bool {
        let moved = self.bytes_sent + self.bytes_recv > 0;
        self.evidence == Evidence::Socket
            && (moved || (self.opened && !self.forked && !self.connecting))
    }

    /// Whether its rows carry the addresses: the local one, and the peer for a stream.
    pub fn addresses_known(&self) -> bool {
        self.local.is_some() && (self.transport == Transport::Udp || self.remote.is_some())
    }

    /// The transport as seen. A change before the parser produced anything re-creates it for the
    /// new framing (the bytes it was fed are lost to it); after that, the parser keeps its own.
    pub fn set_transport(&mut self, transport: Transport) {
        self.transport_verified = true;
        if transport == self.transport {
            return;
        }
        self.transport = transport;
        if let Protocol::Parsing { kind, parser } = &mut self.protocol
            && !self.produced
        {
            let role = self.role.unwrap_or(Role::Client);
            let config = self
                .route
                .as_ref()
                .map(|r| r.config.clone())
                .unwrap_or_default();
            *parser = kind.parser(role, transport, &config);
        }
    }

    /// While the transport is only assumed: bytes moved by sendmmsg/recvmmsg (datagram syscalls in
    /// practice; glibc's resolver sends its A and AAAA queries with one sendmmsg) make it UDP.
    pub fn infer_transport(&mut self, syscall: u32) {
        if !self.transport_verified && (syscall == SYS_SENDMMSG || syscall == SYS_RECVMMSG) {
            self.set_transport(Transport::Udp);
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match &self.protocol {
            Protocol::Parsing { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Feeds one data chunk at stream position `pos`. `syscall_len`: on the first chunk of its
    /// syscall, the bytes the whole syscall moved (None on the others: counted once).
    /// `records`: an empty vector for the records made (the caller's, reused from chunk to chunk
    /// rather than allocated per request).
    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        pos: u64,
        data: &[u8],
        syscall_len: Option<u64>,
        records: Vec<Record>,
    ) -> Fed {
        let mut fed = Fed {
            records,
            ..Fed::default()
        };
        if matches!(self.evidence, Evidence::NotASocket | Evidence::Unknown) {
            return fed;
        }
        self.last_ns = ts_ns;
        let stream = match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        if let Some(syscall_len) = syscall_len {
            match dir {
                Direction::Egress => self.bytes_sent += syscall_len,
                Direction::Ingress => self.bytes_recv += syscall_len,
            }
        }
        let (gap, fresh) = stream.place(pos, data);
        // A loss the parser hears of (one before the protocol was detected is history).
        let answers_lost = gap > 0
            && matches!(self.protocol, Protocol::Parsing { .. })
            && self.carries_answers(dir);
        if answers_lost {
            self.answers_lost_ns = ts_ns;
        }
        if fresh.is_empty() {
            // A data event without data (sendfile, or a syscall's bytes beyond the capture): its
            // bytes are a gap of known length.
            if gap > 0 {
                match &mut self.protocol {
                    Protocol::Parsing { parser, .. } => parser.gap_at(dir, gap, ts_ns),
                    // What came before the gap does not continue after it.
                    Protocol::Detecting { head, .. } => head.clear(),
                    Protocol::Unknown => {}
                }
            }
            return fed;
        }
        let mut detected_head = Vec::new();
        if let Protocol::Detecting {
            attempts,
            head,
            head_dir,
        } = &mut self.protocol
        {
            if *head_dir != dir || gap > 0 {
                head.clear();
                *head_dir = dir;
            }
            let earlier = head.len();
            let room = DETECT_HEAD_BYTES.saturating_sub(earlier);
            head.extend_from_slice(&fresh[..fresh.len().min(room)]);
            let remote_port = self.remote.map_or(0, |a| a.port());
            let kinds = self.route.as_ref().map_or(&[][..], |r| &r.kinds[..]);
            // Datagrams stand alone; a stream is looked at from its first byte seen.
            let probe: &[u8] = if self.transport == Transport::Udp {
                fresh
            } else {
                head
            };
            match Kind::detect_any(kinds, dir, probe, remote_port) {
                Some(kind) => {
                    // Fallback, after the kernel's and the syscalls' evidence: a DNS message on an
                    // assumed-TCP connection whose first bytes are no length prefix is a datagram
                    // (UDP DNS starts with the 16-bit id). Only on a first piece standing alone.
                    if kind == Kind::Dns
                        && !self.transport_verified
                        && self.transport == Transport::Tcp
                        && earlier == 0
                        && !dns_length_prefixed(fresh)
                    {
                        self.transport = Transport::Udp;
                    }
                    let role = *self
                        .role
                        .get_or_insert_with(|| first_role(kind, dir, probe));
                    let config = self
                        .route
                        .as_ref()
                        .map(|r| r.config.clone())
                        .unwrap_or_default();
                    let parser = kind.parser(role, self.transport, &config);
                    if self.transport != Transport::Udp && earlier > 0 {
                        head.truncate(earlier);
                        head.extend_from_slice(fresh);
                        detected_head = std::mem::take(head);
                    }
                    self.protocol = Protocol::Parsing { kind, parser };
                    fed.detected = Some(kind);
                    // A protocol speaks from these bytes: the inherited fd is that socket.
                    self.evidence = Evidence::Socket;
                }
                None => {
                    *attempts += 1;
                    if *attempts >= DETECT_ATTEMPTS {
                        self.protocol = Protocol::Unknown;
                        if self.evidence == Evidence::Inherited {
                            self.evidence = Evidence::NotASocket;
                            fed.discarded = true;
                        } else {
                            fed.undetected = true;
                        }
                    }
                    return fed;
                }
            }
        }
        if let Protocol::Parsing { parser, .. } = &mut self.protocol {
            // A gap before the first detected bytes is history, not a loss inside the protocol.
            if gap > 0 && fed.detected.is_none() {
                parser.gap(dir, gap);
            }
            // Detected on earlier pieces too: the parser gets them all.
            let fresh = if detected_head.is_empty() {
                fresh
            } else {
                &detected_head[..]
            };
            if let Err(e) = parser.feed(dir, ts_ns, fresh, &mut fed.records) {
                fed.error = Some(e);
            }
            self.produced |= !fed.records.is_empty() || fed.error.is_some();
        }
        fed
    }

    /// Whether bytes going `dir` are answers (either way while the role is unknown).
    fn carries_answers(&self, dir: Direction) -> bool {
        !matches!(
            (self.role, dir),
            (Some(Role::Client), Direction::Egress) | (Some(Role::Server), Direction::Ingress)
        )
    }

    /// The connection closed at `ts_ns` having moved `sent` and `recv` bytes by the kernel's
    /// count: bytes beyond the streams' ends were lost after the last events seen (a full ring
    /// dropped them), and the parser hears of them before the close expires what waits — an
    /// answer among them is not the peer's silence.
    pub fn lost_at_close(&mut self, sent: u64, recv: u64, ts_ns: u64) {
        for (dir, total) in [(Direction::Egress, sent), (Direction::Ingress, recv)] {
            let stream = match dir {
                Direction::Egress => &mut self.egress,
                Direction::Ingress => &mut self.ingress,
            };
            let lost = total.saturating_sub(stream.next);
            if lost == 0 {
                continue;
            }
            stream.next = total;
            if self.carries_answers(dir) {
                self.answers_lost_ns = ts_ns;
            }
            if let Protocol::Parsing { parser, .. } = &mut self.protocol {
                parser.gap(dir, lost);
            }
        }
    }

    /// Requests older than `deadline_ns` become records without response.
    pub fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        if let Protocol::Parsing { parser, .. } = &mut self.protocol {
            let before = out.len();
            parser.expire(deadline_ns, out);
            self.produced |= out.len() > before;
        }
    }

    /// The detected protocol of a connection whose bytes produced no record and no error: its
    /// bytes were not understood (call once its last records were expired).
    pub fn silent_protocol(&self) -> Option<Kind> {
        self.kind().filter(|_| !self.produced)
    }
}

/// The traced process's side of a connection not seen opened, from its first bytes seen, going
/// `dir`. HTTP tells a request from a response: a connection traced from the middle of an
/// exchange (the process selected, or the agent started, while a request was in flight) is first
/// seen at the response, and taken by its direction alone, a server writing it became a client
/// whose every later request failed to parse as a response. Other protocols: whoever spoke first
/// is the client.
fn first_role(kind: Kind, dir: Direction, head: &[u8]) -> Role {
    let by_content = match kind {
        Kind::Http => sonde_protocols::http::detect::role(dir, head),
        _ => None,
    };
    by_content.unwrap_or(match dir {
        Direction::Egress => Role::Client,
        Direction::Ingress => Role::Server,
    })
}

/// Whether `msg` starts with a DNS-over-TCP length prefix covering one or more whole messages
/// (a UDP message's first two bytes are its random id, rarely that small).
fn dns_length_prefixed(msg: &[u8]) -> bool {
    const DNS_HEADER_LEN: usize = 12;
    let Some(prefix) = msg.first_chunk::<2>() else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    len >= DNS_HEADER_LEN && len + 2 <= msg.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_reports_the_gap_before_a_chunk_after_a_loss() {
        let mut s = Stream::default();
        assert_eq!(s.place(0, b"abc"), (0, &b"abc"[..]));
        assert_eq!(s.place(10, b"xyz"), (7, &b"xyz"[..]));
        assert_eq!(s.next, 13);
    }

    #[test]
    fn a_chunk_behind_the_expected_position_follows_the_last_one() {
        // A startup message of 66 bytes at 8 whose count was undone: the next query comes at 8.
        let mut s = Stream::default();
        s.place(0, b"12345678");
        assert_eq!(s.place(8, &[b's'; 66]), (0, &[b's'; 66][..]));
        assert_eq!(s.place(8, b"Q...BEGIN;"), (0, &b"Q...BEGIN;"[..]));
        assert_eq!(s.place(18, b"Q...END;"), (0, &b"Q...END;"[..]));
        assert_eq!(s.place(30, b"x"), (4, &b"x"[..]));
    }

    #[test]
    fn a_message_read_in_pieces_is_detected_and_parsed_from_its_first_piece() {
        let route = Route {
            kinds: vec![Kind::Dns],
            config: Default::default(),
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
        };
        let mut conn = Conn::new(1, 3, 0, Some(Arc::new(route)));
        // A DNS query over TCP as dnsmasq reads it: the length prefix, then the message.
        let query: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x05sonde\x04test\x00\x00\x01\x00\x01";
        let prefix = (query.len() as u16).to_be_bytes();
        let fed = conn.feed(Direction::Ingress, 1, 0, &prefix, Some(2), Vec::new());
        assert!(fed.detected.is_none());
        let fed = conn.feed(
            Direction::Ingress,
            2,
            2,
            query,
            Some(query.len() as u64),
            Vec::new(),
        );
        assert_eq!(fed.detected, Some(Kind::Dns));
        assert!(fed.error.is_none(), "{:?}", fed.error.map(|e| e.reason));
        assert_eq!(conn.role, Some(Role::Server));
    }

    fn dns_route() -> Option<Arc<Route>> {
        route_of(Kind::Dns)
    }

    fn route_of(kind: Kind) -> Option<Arc<Route>> {
        Some(Arc::new(Route {
            kinds: vec![kind],
            config: Default::default(),
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
        }))
    }

    #[test]
    fn bytes_before_a_syscall_s_uncaptured_rest_are_not_joined_to_bytes_after_it() {
        let mut conn = Conn::new(1, 3, 0, route_of(Kind::Http));
        // A syscall of 5 bytes of which 2 were captured, then the event for its rest.
        let fed = conn.feed(Direction::Ingress, 1, 0, b"GE", Some(5), Vec::new());
        assert!(fed.detected.is_none());
        conn.feed(Direction::Ingress, 1, 5, b"", None, Vec::new());
        // "GE" + "T / HTTP/1.1" would read as a request: they are not one.
        let fed = conn.feed(
            Direction::Ingress,
            2,
            5,
            b"T / HTTP/1.1\r\n\r\n",
            Some(16),
            Vec::new(),
        );
        assert!(fed.detected.is_none());
        assert!(matches!(conn.protocol, Protocol::Detecting { .. }));
    }

    #[test]
    fn bytes_of_an_fd_that_is_no_socket_are_dropped_without_records_errors_or_a_stats_row() {
        let mut conn = Conn::not_a_socket(1, 3, 0);
        for i in 0..DETECT_ATTEMPTS + 2 {
            let fed = conn.feed(
                Direction::Ingress,
                1,
                u64::from(i) * 8,
                b"datafile",
                Some(8),
                Vec::new(),
            );
            assert!(fed.records.is_empty() && fed.error.is_none());
            assert!(!fed.undetected && !fed.discarded && fed.detected.is_none());
        }
        assert_eq!((conn.bytes_sent, conn.bytes_recv), (0, 0));
        assert!(!conn.wants_stats_row());
    }

    #[test]
    fn an_inherited_fd_whose_bytes_speak_no_enabled_protocol_is_discarded_not_counted_as_unknown() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.evidence = Evidence::Inherited;
        let mut last = Fed::default();
        for i in 0..DETECT_ATTEMPTS {
            last = conn.feed(
                Direction::Ingress,
                1,
                u64::from(i) * 4,
                b"????",
                Some(4),
                Vec::new(),
            );
        }
        assert!(last.discarded && !last.undetected);
        assert_eq!(conn.evidence, Evidence::NotASocket);
        assert!(!conn.wants_stats_row());
    }

    #[test]
    fn an_inherited_fd_whose_bytes_speak_an_enabled_protocol_is_that_socket() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.evidence = Evidence::Inherited;
        let query: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x05sonde\x04test\x00\x00\x01\x00\x01";
        conn.transport = Transport::Udp;
        let fed = conn.feed(
            Direction::Ingress,
            1,
            0,
            query,
            Some(query.len() as u64),
            Vec::new(),
        );
        assert_eq!(fed.detected, Some(Kind::Dns));
        assert_eq!(conn.evidence, Evidence::Socket);
        assert!(conn.wants_stats_row());
    }

    #[test]
    fn a_socket_without_bytes_gets_a_stats_row_only_if_opened_here_and_not_handed_to_a_child() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        assert!(!conn.wants_stats_row(), "an fd that was only closed");
        conn.opened = true;
        assert!(conn.wants_stats_row(), "accepted and closed without a byte");
        conn.forked = true;
        assert!(
            !conn.wants_stats_row(),
            "the parent's copy of a child's socket"
        );
        conn.bytes_recv = 1;
        assert!(conn.wants_stats_row());
    }

    const UDP_QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x05sonde\x04test\x00\x00\x01\x00\x01";

    #[test]
    fn a_connect_never_established_and_without_bytes_gets_no_stats_row() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.opened = true;
        conn.connecting = true;
        assert!(!conn.wants_stats_row(), "refused: no connection");
        conn.connecting = false;
        assert!(
            conn.wants_stats_row(),
            "established, then closed without a byte"
        );
    }

    #[test]
    fn bytes_sent_by_sendmmsg_make_an_assumed_tcp_connection_udp_before_detection() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.infer_transport(SYS_SENDMMSG);
        assert_eq!(conn.transport, Transport::Udp);
        assert!(conn.transport_verified);
        let fed = conn.feed(Direction::Egress, 1, 0, UDP_QUERY, Some(32), Vec::new());
        assert_eq!(fed.detected, Some(Kind::Dns));
    }

    #[test]
    fn sendmmsg_does_not_override_a_transport_seen_on_the_fd() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.set_transport(Transport::Tcp);
        conn.infer_transport(SYS_RECVMMSG);
        assert_eq!(conn.transport, Transport::Tcp);
    }

    #[test]
    fn a_dns_message_without_length_prefix_on_an_assumed_tcp_connection_is_a_datagram() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        let fed = conn.feed(Direction::Egress, 1, 0, UDP_QUERY, Some(32), Vec::new());
        assert_eq!(fed.detected, Some(Kind::Dns));
        assert_eq!(conn.transport, Transport::Udp);

        let mut framed = (UDP_QUERY.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(UDP_QUERY);
        let mut conn = Conn::new(1, 3, 0, dns_route());
        let fed = conn.feed(Direction::Egress, 1, 0, &framed, Some(34), Vec::new());
        assert_eq!(fed.detected, Some(Kind::Dns));
        assert_eq!(conn.transport, Transport::Tcp);
    }

    #[test]
    fn a_detected_protocol_that_produced_nothing_is_reported_silent() {
        let mut conn = Conn::new(1, 3, 0, dns_route());
        conn.set_transport(Transport::Udp);
        conn.feed(Direction::Egress, 1, 0, UDP_QUERY, Some(32), Vec::new());
        assert_eq!(conn.silent_protocol(), Some(Kind::Dns));
        // The unanswered query expires into a record: the bytes were understood.
        conn.expire(u64::MAX, &mut Vec::new());
        assert_eq!(conn.silent_protocol(), None);
    }

    /// A Go net/http server's answer to `GET /slow` (2 s), as it wrote it.
    const GO_SLOW_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 08:35:01 GMT\r\nContent-Length: 5\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nslow\n";
    const GO_HI_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 08:35:02 GMT\r\nContent-Length: 11\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ngo says hi\n";
    const AFTER_REQUEST: &[u8] =
        b"GET /after/0 HTTP/1.1\r\nHost: 127.0.0.1:8201\r\nAccept-Encoding: identity\r\n\r\n";

    /// Feeds `(direction, bytes)` in turn as one syscall each, then closes: the records made and
    /// the parse errors reported.
    fn exchange(conn: &mut Conn, steps: &[(Direction, &[u8])]) -> (Vec<Record>, Vec<&'static str>) {
        let (mut records, mut errors) = (Vec::new(), Vec::new());
        let (mut sent, mut received) = (0u64, 0u64);
        for (i, (dir, bytes)) in steps.iter().enumerate() {
            let pos = match dir {
                Direction::Egress => &mut sent,
                Direction::Ingress => &mut received,
            };
            let len = bytes.len() as u64;
            let fed = conn.feed(*dir, i as u64 + 1, *pos, bytes, Some(len), Vec::new());
            *pos += len;
            records.extend(fed.records);
            errors.extend(fed.error.map(|e| e.reason));
        }
        conn.expire(u64::MAX, &mut records);
        (records, errors)
    }

    #[test]
    fn a_keep_alive_connection_first_seen_at_the_response_a_server_writes_is_the_server_s() {
        // Selected while `GET /slow` was in flight: the first bytes seen are the server's answer.
        let mut conn = Conn::new(1, 4, 0, route_of(Kind::Http));
        let (records, errors) = exchange(
            &mut conn,
            &[
                (Direction::Egress, GO_SLOW_RESPONSE),
                (Direction::Ingress, AFTER_REQUEST),
                (Direction::Egress, GO_HI_RESPONSE),
            ],
        );
        assert_eq!(conn.role, Some(Role::Server));
        assert_eq!(errors, Vec::<&str>::new());
        assert_eq!(records.len(), 1, "GET /after/0 and its answer");
        assert_eq!(records[0].latency_ns, Some(1));
    }

    #[test]
    fn a_keep_alive_connection_first_seen_at_the_response_a_client_reads_is_the_client_s() {
        let mut conn = Conn::new(1, 4, 0, route_of(Kind::Http));
        let (records, errors) = exchange(
            &mut conn,
            &[
                (Direction::Ingress, GO_SLOW_RESPONSE),
                (Direction::Egress, AFTER_REQUEST),
                (Direction::Ingress, GO_HI_RESPONSE),
            ],
        );
        assert_eq!(conn.role, Some(Role::Client));
        assert_eq!(errors, Vec::<&str>::new());
        assert_eq!(records.len(), 1, "GET /after/0 and its answer");
    }

    #[test]
    fn an_answer_whose_body_goes_by_sendfile_ends_with_its_last_sendfile() {
        // nginx with `sendfile on`: the head by writev, the file by sendfile calls, whose bytes
        // come as data events without data.
        let mut conn = Conn::new(1, 4, 0, route_of(Kind::Http));
        let request: &[u8] = b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 5242880\r\n\r\n";
        let fed = conn.feed(
            Direction::Ingress,
            1_000,
            0,
            request,
            Some(request.len() as u64),
            Vec::new(),
        );
        assert_eq!(fed.detected, Some(Kind::Http));
        conn.feed(
            Direction::Egress,
            2_000,
            0,
            head,
            Some(head.len() as u64),
            Vec::new(),
        );
        let mut pos = head.len() as u64;
        let mut records = Vec::new();
        for (ts, sent) in [
            (50_000, 2_097_152),
            (90_000, 2_097_152),
            (170_000, 1_048_576),
        ] {
            pos += sent;
            let fed = conn.feed(Direction::Egress, ts, pos, b"", Some(sent), Vec::new());
            assert!(fed.error.is_none());
            records.extend(fed.records);
        }
        conn.expire(0, &mut records);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].latency_ns, Some(170_000 - 1_000));
    }

    #[test]
    fn connection_without_an_enabled_protocol_gives_up_after_a_few_chunks() {
        let mut conn = Conn::new(1, 3, 0, None);
        for i in 0..DETECT_ATTEMPTS {
            let fed = conn.feed(
                Direction::Egress,
                1,
                u64::from(i) * 4,
                b"????",
                Some(4),
                Vec::new(),
            );
            assert_eq!(fed.undetected, i + 1 == DETECT_ATTEMPTS);
        }
        assert!(matches!(conn.protocol, Protocol::Unknown));
        assert_eq!(conn.bytes_sent, 12);
    }
}
