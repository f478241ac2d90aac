//! MySQL / MariaDB client/server protocol → `mysql_events` rows (Pixie's `req_cmd`, `req_body`,
//! `resp_status`, `resp_body`, plus bound `params` and the `rows` count).
//!
//! - [`packet`]: framing and the few fields we read, hand-written (see there why).
//! - [`stitch`]: commands ↔ responses by sequence id and response shape.
//!
//! Of the handshake, the client's capability flags are read (TLS, DEPRECATE_EOF, whether result
//! sets may come without their column definitions), and its response becomes a `COM_CONNECT`
//! record: the user and database, and the server's OK or ERR (a failed login is what one looks
//! for). Its auth response (a password's hash, or the password itself with
//! `mysql_clear_password`) never reaches a record.
mod packet;
mod stitch;
#[cfg(test)]
mod tests;

use crate::frames::FrameReader;
use crate::{ColumnDef, ConnParser, Direction, FieldType, ParseConfig, ParseError, Record, Role};
use stitch::Stitcher;

pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef::new("req_cmd", FieldType::String),
    ColumnDef::new("req_body", FieldType::String),
    ColumnDef::new("params", FieldType::String),
    ColumnDef::new("resp_status", FieldType::String),
    ColumnDef::new("resp_body", FieldType::String),
    ColumnDef::new("rows", FieldType::Int64),
];

const PROTOCOL: &str = "mysql";

/// The server's greeting (protocol 10, a version string) is recognised on any port; with the 3306
/// hint, so is a client command packet.
pub fn detect(_dir: Direction, data: &[u8], remote_port: u16) -> bool {
    if is_greeting(data) {
        return true;
    }
    remote_port == 3306
        && packet::starts_packet(data, true)
        && packet::payload_len(data).is_some_and(|l| l as usize + 4 >= data.len())
}

fn is_greeting(data: &[u8]) -> bool {
    let (Some(len), Some(&seq), Some(&protocol)) =
        (packet::payload_len(data), data.get(3), data.get(4))
    else {
        return false;
    };
    let version = data.get(5..data.len().min(5 + 64)).unwrap_or_default();
    seq == 0
        && protocol == 10
        && (40..1024).contains(&len)
        && version
            .iter()
            .position(|b| *b == 0)
            .is_some_and(|n| n > 0 && version[..n].iter().all(|b| b.is_ascii_graphic()))
}

/// One direction's framing plus "the next packet continues this one".
#[derive(Default)]
struct Stream {
    frames: FrameReader,
    continued: bool,
}

/// One MySQL connection.
pub struct Parser {
    role: Role,
    client: Stream,
    server: Stream,
    stitch: Stitcher,
    handshake_seen: bool,
    encrypted: bool,
    text_cap: usize,
}

impl Parser {
    pub fn new(role: Role, config: &ParseConfig) -> Parser {
        Parser {
            role,
            client: Stream::default(),
            server: Stream::default(),
            stitch: Stitcher::new(config),
            handshake_seen: false,
            encrypted: false,
            text_cap: config.max_body_bytes,
        }
    }

    fn carries_requests(&self, dir: Direction) -> bool {
        matches!(
            (self.role, dir),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        )
    }

    fn packet(
        &mut self,
        from_client: bool,
        bytes: &[u8],
        start_ns: u64,
        end_ns: u64,
        out: &mut Vec<Record>,
    ) {
        let (Some(len), Some(&seq)) = (packet::payload_len(bytes), bytes.get(3)) else {
            return;
        };
        let payload = bytes.get(4..).unwrap_or_default();
        let stream = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        let continuation = std::mem::replace(&mut stream.continued, len == packet::CONTINUED);
        if continuation {
            return;
        }
        if from_client {
            if self.stitch.uploading() {
                self.stitch.upload_packet(len == 0);
            } else if seq == 0 {
                self.stitch.command(payload, start_ns, out);
            } else if seq == 1 && !self.handshake_seen && payload.len() >= 32 {
                // HandshakeResponse41 (or the SSLRequest that precedes TLS).
                self.handshake_seen = true;
                if let Some(caps) = packet::le_u32(payload, 0) {
                    let metadata_optional = packet::metadata_optional(payload, caps);
                    self.stitch.set_capabilities(caps, metadata_optional);
                    if caps & packet::CLIENT_SSL != 0 && len == 32 {
                        self.encrypted = true;
                    } else {
                        self.stitch.login(payload, caps, start_ns);
                    }
                }
            }
        } else {
            self.stitch.response(seq, payload, len, end_ns, out);
        }
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
        if self.encrypted {
            return Ok(());
        }
        let from_client = self.carries_requests(dir);
        let cap = self.text_cap;
        let stream = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        if stream.frames.is_desynced() {
            if from_client {
                if !packet::starts_packet(data, true) {
                    return Ok(());
                }
            } else if packet::starts_packet(data, false) && self.stitch.newer_command_waits() {
                // The answer to a command sent since starts here. (Without one, a first-packet
                // look-alike inside rows would pair them with the wrong answer.)
                self.stitch.resumed(true);
            } else if let Some(end) = packet::answer_end(data) {
                // Whatever came before it in this chunk belongs to the answer it ends.
                stream.frames.resync();
                stream.continued = false;
                self.stitch.answer_ended(end, ts_ns, out);
                return Ok(());
            } else {
                return Ok(());
            }
            stream.frames.resync();
            stream.continued = false;
        }
        let mut rest = data;
        loop {
            let stream = if from_client {
                &mut self.client
            } else {
                &mut self.server
            };
            match stream
                .frames
                .next(&mut rest, ts_ns, |b| packet::header(b, from_client, cap))
            {
                Ok(Some(frame)) => {
                    self.packet(from_client, &frame.bytes, frame.start_ns, frame.end_ns, out);
                    let stream = if from_client {
                        &mut self.client
                    } else {
                        &mut self.server
                    };
                    stream.frames.recycle(frame.bytes);
                }
                Ok(None) => return Ok(()),
                Err(reason) => {
                    self.stitch.lost();
                    return Err(ParseError::new(PROTOCOL, reason));
                }
            }
        }
    }

    fn gap(&mut self, dir: Direction, lost_bytes: u64) {
        let stream = if self.carries_requests(dir) {
            &mut self.client
        } else {
            &mut self.server
        };
        if stream.frames.gap(lost_bytes) {
            return;
        }
        if self.carries_requests(dir) {
            self.stitch.lost();
        } else {
            self.stitch.answer_cut();
        }
    }

    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        let in_sync = !self.server.frames.is_desynced();
        self.stitch.expire(deadline_ns, in_sync, out);
    }
}
