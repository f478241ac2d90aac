//! One traced connection in user space: its identity and addresses, the two byte streams put back in
//! order (gaps from lost or truncated events reported to the parser), protocol detection on the first
//! bytes and the parser that follows.
use std::net::SocketAddr;
use std::sync::Arc;

use sonde_protocols::{ConnParser, Direction, Kind, ParseError, Record, Role, Transport};

use super::routes::Route;
use super::rows::AddrText;

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

/// Expected position of the next byte of one direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stream {
    pub next: u64,
}

impl Stream {
    /// Places a chunk at stream position `pos`: returns the bytes lost before it and the part of
    /// `data` not seen yet (events arrive in syscall order; an overlap only follows a duplicate).
    pub fn place<'a>(&mut self, pos: u64, data: &'a [u8]) -> (u64, &'a [u8]) {
        let end = pos + data.len() as u64;
        if end <= self.next {
            return (0, &[]);
        }
        let (gap, fresh) = if pos >= self.next {
            (pos - self.next, data)
        } else {
            (0, &data[(self.next - pos) as usize..])
        };
        self.next = end;
        (gap, fresh)
    }
}

/// What a fed chunk produced.
#[derive(Default)]
pub struct Fed {
    pub records: Vec<Record>,
    pub error: Option<ParseError>,
    /// The protocol was just detected.
    pub detected: Option<Kind>,
    /// Detection just gave up.
    pub undetected: bool,
}

pub struct Conn {
    pub tgid: u32,
    pub fd: u32,
    pub generation: u64,
    pub route: Option<Arc<Route>>,
    pub role: Option<Role>,
    pub transport: Transport,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub egress: Stream,
    pub ingress: Stream,
    pub protocol: Protocol,
    pub opened_ns: u64,
    pub last_ns: u64,
    /// Bytes seen in data events (the kernel's exact counts come with the close event).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// The address columns of its rows, formatted once.
    pub addr_text: AddrText,
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
            local: None,
            remote: None,
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
            addr_text: AddrText::default(),
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match &self.protocol {
            Protocol::Parsing { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Feeds one data chunk at stream position `pos`.
    /// `first_chunk`: this chunk starts its syscall (whose length is `syscall_len`).
    pub fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        pos: u64,
        data: &[u8],
        first_chunk: bool,
        syscall_len: u64,
    ) -> Fed {
        let mut fed = Fed::default();
        self.last_ns = ts_ns;
        let stream = match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        if first_chunk {
            match dir {
                Direction::Egress => self.bytes_sent += syscall_len,
                Direction::Ingress => self.bytes_recv += syscall_len,
            }
        }
        let (gap, fresh) = stream.place(pos, data);
        if fresh.is_empty() {
            // A data event without data (sendfile): its bytes are a gap of known length.
            if gap > 0
                && let Protocol::Parsing { parser, .. } = &mut self.protocol
            {
                parser.gap(dir, gap);
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
                    let role = *self.role.get_or_insert(match dir {
                        Direction::Egress => Role::Client,
                        Direction::Ingress => Role::Server,
                    });
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
                }
                None => {
                    *attempts += 1;
                    if *attempts >= DETECT_ATTEMPTS {
                        self.protocol = Protocol::Unknown;
                        fed.undetected = true;
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
        }
        fed
    }

    /// Requests older than `deadline_ns` become records without response.
    pub fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        if let Protocol::Parsing { parser, .. } = &mut self.protocol {
            parser.expire(deadline_ns, out);
        }
    }
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
    fn stream_drops_bytes_it_has_already_seen() {
        let mut s = Stream::default();
        s.place(0, b"abcdef");
        assert_eq!(s.place(4, b"efgh"), (0, &b"gh"[..]));
        assert_eq!(s.place(2, b"cd"), (0, &b""[..]));
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
        let fed = conn.feed(Direction::Ingress, 1, 0, &prefix, true, 2);
        assert!(fed.detected.is_none());
        let fed = conn.feed(Direction::Ingress, 2, 2, query, true, query.len() as u64);
        assert_eq!(fed.detected, Some(Kind::Dns));
        assert!(fed.error.is_none(), "{:?}", fed.error.map(|e| e.reason));
        assert_eq!(conn.role, Some(Role::Server));
    }

    #[test]
    fn connection_without_an_enabled_protocol_gives_up_after_a_few_chunks() {
        let mut conn = Conn::new(1, 3, 0, None);
        for i in 0..DETECT_ATTEMPTS {
            let fed = conn.feed(Direction::Egress, 1, u64::from(i) * 4, b"????", true, 4);
            assert_eq!(fed.undetected, i + 1 == DETECT_ATTEMPTS);
        }
        assert!(matches!(conn.protocol, Protocol::Unknown));
        assert_eq!(conn.bytes_sent, 12);
    }
}
