//! DNS over UDP (one datagram per message) and TCP (2-byte length prefix, any chunking), stitched
//! by transaction id into `dns_events` rows (Pixie's columns: JSON headers and bodies).
//!
//! Message bodies (questions, answers) are decoded with `simple-dns`: small (its only dependency is
//! bitflags), zero-copy, and it only follows compression pointers backwards, so hostile input cannot
//! make it loop. The fixed 12-byte header is read here ([`message::Header`]) so that stitching and
//! the header columns still work for bodies the crate rejects (e.g. a malformed name). A question of
//! a type the crate has no name for (SSHFP, TLSA, private types), which it rejects too, is decoded
//! as ANY and then named by its own code.
mod message;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::frames::{FrameReader, Header as FrameHeader};
use crate::{
    ColumnDef, ConnParser, Direction, Field, FieldType, ParseConfig, ParseError, Record, Red, Role,
    Transport, Unanswered,
};
use message::{Header, Message};

pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef::rendered("req_header", message::HEADER_JSON),
    ColumnDef::new("req_body", FieldType::String),
    ColumnDef::rendered("resp_header", message::HEADER_JSON),
    ColumnDef::new("resp_body", FieldType::String),
    ColumnDef::new("query_name", FieldType::String),
    ColumnDef::new("query_type", FieldType::String),
    ColumnDef::new("rcode", FieldType::String),
];

/// Queries awaiting an answer on one connection (a resolver's UDP socket may have many in flight).
const MAX_PENDING: usize = 256;

const PROTOCOL: &str = "dns";

/// Do these first bytes look like DNS? With the port hint (53, or 5353 for mDNS) any sane header
/// will do; without it only a well-formed standard query, so that other protocols are not taken
/// for DNS. Works for both a UDP datagram and a TCP stream (length prefix first).
pub fn detect(_dir: Direction, data: &[u8], remote_port: u16) -> bool {
    let hinted = matches!(remote_port, 53 | 5353);
    let looks = |msg: &[u8]| {
        if hinted {
            Header::parse(msg).is_some_and(|h| h.is_sane())
        } else {
            message::is_plain_query(msg)
        }
    };
    if looks(data) {
        return true;
    }
    // TCP: a length prefix that matches the rest (or at least covers a header).
    if data.len() >= 2 + message::HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        return len >= message::HEADER_LEN && len + 2 >= data.len() && looks(&data[2..]);
    }
    false
}

struct Pending {
    txid: u16,
    ts_ns: u64,
    query: Message,
}

/// One connection (TCP) or socket (UDP) carrying DNS.
pub struct Parser {
    transport: Transport,
    streams: [FrameReader; 2],
    pending: VecDeque<Pending>,
}

impl Parser {
    pub fn new(_role: Role, transport: Transport, _config: &ParseConfig) -> Parser {
        Parser {
            transport,
            streams: Default::default(),
            pending: VecDeque::new(),
        }
    }

    fn message(
        &mut self,
        start_ns: u64,
        end_ns: u64,
        bytes: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        let msg = Message::parse(bytes).ok_or(ParseError::new(PROTOCOL, "short_message"))?;
        if !msg.header.is_response() {
            if self.pending.len() >= MAX_PENDING
                && let Some(old) = self.pending.pop_front()
            {
                out.push(record(old, None));
            }
            self.pending.push_back(Pending {
                txid: msg.header.id,
                ts_ns: start_ns,
                query: msg,
            });
            return Ok(());
        }
        let Some(i) = self.pending.iter().position(|p| p.txid == msg.header.id) else {
            return Err(ParseError::new(PROTOCOL, "response_without_query"));
        };
        if let Some(query) = self.pending.remove(i) {
            let latency = end_ns.saturating_sub(query.ts_ns);
            out.push(record(query, Some((latency, msg))));
        }
        Ok(())
    }
}

fn record(query: Pending, response: Option<(u64, Message)>) -> Record {
    let (q_name, q_type) = query.query.first_question();
    let (latency_ns, resp_header, resp_body, rcode, error) = match response {
        Some((latency, resp)) => (
            Some(latency),
            Field::String(resp.header.to_hex()),
            resp.answers_json().map_or(Field::Null, Field::String),
            Field::String(resp.header.rcode_name().to_string()),
            if resp.header.rcode() == 0 {
                ""
            } else {
                resp.header.rcode_name()
            },
        ),
        None => (None, Field::Null, Field::Null, Field::Null, ""),
    };
    Record {
        request_ns: query.ts_ns,
        latency_ns,
        fields: vec![
            Field::String(query.query.header.to_hex()),
            query
                .query
                .queries_json()
                .map_or(Field::Null, Field::String),
            resp_header,
            resp_body,
            q_name.map_or(Field::Null, Field::String),
            q_type.map_or(Field::Null, |t| Field::String(t.to_string())),
            rcode,
        ],
        text: String::new(),
        red: Red::Dns { error },
    }
}

fn tcp_frame(buf: &[u8]) -> Result<FrameHeader, &'static str> {
    match buf {
        [hi, lo, ..] => {
            let len = u16::from_be_bytes([*hi, *lo]);
            if usize::from(len) < message::HEADER_LEN {
                return Err("short_message");
            }
            let total = u64::from(len) + 2;
            Ok(FrameHeader::Frame {
                len: total,
                keep: usize::from(len) + 2,
            })
        }
        _ => Ok(FrameHeader::Incomplete),
    }
}

fn index(dir: Direction) -> usize {
    match dir {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

impl ConnParser for Parser {
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        if self.transport == Transport::Udp {
            return self.message(ts_ns, ts_ns, data, out);
        }
        let d = index(dir);
        if self.streams[d].is_desynced() {
            // Lost bytes: resume only where a chunk starts with a plausible length + header.
            if data.len() >= 2 + message::HEADER_LEN
                && Header::parse(&data[2..]).is_some_and(|h| h.is_sane())
            {
                self.streams[d].resync();
            } else {
                return Ok(());
            }
        }
        let mut rest = data;
        let mut first_error = None;
        loop {
            match self.streams[d].next(&mut rest, ts_ns, tcp_frame) {
                Ok(Some(frame)) => {
                    let body = frame.bytes.get(2..).unwrap_or_default();
                    if let Err(e) = self.message(frame.start_ns, frame.end_ns, body, out) {
                        first_error.get_or_insert(e);
                    }
                    self.streams[d].recycle(frame.bytes);
                }
                Ok(None) => break,
                Err(reason) => {
                    first_error.get_or_insert(ParseError::new(PROTOCOL, reason));
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn gap(&mut self, dir: Direction, lost_bytes: u64) {
        if self.transport == Transport::Tcp {
            self.streams[index(dir)].gap(lost_bytes);
        }
    }

    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        // Over TCP, answers in bytes after a loss are not read until a message starts a chunk.
        let in_sync =
            self.transport == Transport::Udp || !self.streams.iter().any(|s| s.is_desynced());
        let ended = in_sync.then(|| Unanswered::at(deadline_ns));
        while self.pending.front().is_some_and(|p| p.ts_ns < deadline_ns) {
            if let Some(p) = self.pending.pop_front() {
                let mut record = record(p, None);
                record.set_unanswered(ended);
                out.push(record);
            }
        }
    }
}
