//! PostgreSQL wire protocol 3.0 → `pgsql_events` rows (Pixie's `req_cmd`, `req`, `resp`, plus
//! bound `params` and the `rows` count).
//!
//! - [`frontend`]: client messages, hand-written (`postgres-protocol` only encodes them).
//! - [`backend`]: server messages, decoded with `postgres-protocol`.
//! - [`stitch`]: requests ↔ responses. Each request unit (a simple Query, an extended-protocol
//!   batch up to Sync, or the startup exchange) is answered by everything up to its ReadyForQuery,
//!   in order, which also covers pipelining; a batch's Executes get a record each.
//! - [`values`]: bound parameters as shown, binary ones decoded by type.
//!
//! Framing goes through [`crate::frames`], so big DataRows and COPY data are skipped, not buffered.
mod backend;
mod frontend;
mod stitch;
#[cfg(test)]
mod tests;
mod values;

use crate::frames::FrameReader;
use crate::{ColumnDef, ConnParser, Direction, FieldType, ParseConfig, ParseError, Record, Role};
use backend::Backend;
use stitch::Stitcher;

pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef::new("req_cmd", FieldType::String),
    ColumnDef::new("req", FieldType::String),
    ColumnDef::new("params", FieldType::String),
    ColumnDef::new("resp", FieldType::String),
    ColumnDef::new("rows", FieldType::Int64),
];

const PROTOCOL: &str = "pgsql";

/// A startup message (protocol 3.0, SSLRequest, GSSENCRequest, CancelRequest) is recognised on
/// any port; with the 5432 hint, so is the start of any client or server message.
pub fn detect(_dir: Direction, data: &[u8], remote_port: u16) -> bool {
    if frontend::startup_code(data).is_some() {
        return true;
    }
    remote_port == 5432
        && ((frontend::starts_message(data) && data.len() >= 5)
            || (backend::starts_message(data) && data.len() >= 5))
}

/// One PostgreSQL connection.
pub struct Parser {
    role: Role,
    client: FrameReader,
    server: FrameReader,
    stitch: Stitcher,
    /// TLS was accepted: the rest is ciphertext.
    encrypted: bool,
    text_cap: usize,
    /// When the client's last bytes came, and when those of a syscall it lost bytes of: the rest
    /// of that syscall (its captured tail) starts anywhere in a message and is not followed.
    client_ts: u64,
    client_cut_ts: Option<u64>,
}

impl Parser {
    pub fn new(role: Role, config: &ParseConfig) -> Parser {
        Parser {
            role,
            client: FrameReader::default(),
            server: FrameReader::default(),
            stitch: Stitcher::new(config),
            encrypted: false,
            text_cap: config.max_body_bytes,
            client_ts: 0,
            client_cut_ts: None,
        }
    }

    fn carries_requests(&self, dir: Direction) -> bool {
        matches!(
            (self.role, dir),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        )
    }

    fn feed_client(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        self.client_ts = ts_ns;
        if self.client.is_desynced() {
            // A client message has no mark to be recognised by in the middle of the stream: its
            // stream is followed again where a later syscall starts.
            if self.client_cut_ts == Some(ts_ns) || !frontend::starts_message(data) {
                return Ok(());
            }
            self.client.resync();
        }
        let cap = self.text_cap;
        let mut rest = data;
        let mut first_error = None;
        loop {
            match self
                .client
                .next(&mut rest, ts_ns, |b| frontend::header(b, cap))
            {
                Ok(Some(frame)) => {
                    match frontend::decode(&frame.bytes) {
                        Some(msg) => self.stitch.request(msg, frame.start_ns, out),
                        None => {
                            first_error.get_or_insert(ParseError::new(
                                PROTOCOL,
                                "malformed_frontend_message",
                            ));
                        }
                    }
                    self.client.recycle(frame.bytes);
                }
                Ok(None) => break,
                Err(reason) => {
                    self.stitch.lost();
                    first_error.get_or_insert(ParseError::new(PROTOCOL, reason));
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn feed_server(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        let mut rest = data;
        if self.server.is_desynced() {
            if let Some(first) = backend::message_chain(rest) {
                self.server.resync();
                self.stitch.resumed(!backend::continues_answer(first));
            } else if let Some((end, last)) = backend::answer_end(rest) {
                self.server.resync();
                self.stitch.resumed(false);
                if let Some(msg) = last {
                    self.stitch.response(msg, ts_ns, out);
                }
                self.stitch.response(Backend::ReadyForQuery, ts_ns, out);
                rest = &rest[end..];
            } else {
                return Ok(());
            }
        }
        // The one-byte answer to SSLRequest/GSSENCRequest has no frame.
        if self.server.at_boundary()
            && self.stitch.awaits_encryption_answer()
            && let Some((&answer, after)) = rest.split_first()
        {
            self.stitch.encryption_answered();
            if answer != b'N' {
                self.encrypted = true;
                return Ok(());
            }
            rest = after;
        }
        let mut first_error = None;
        loop {
            match self.server.next(&mut rest, ts_ns, backend::header) {
                Ok(Some(frame)) => {
                    match backend::decode(&frame.bytes) {
                        Some(msg) => self.stitch.response(msg, frame.end_ns, out),
                        None => {
                            first_error.get_or_insert(ParseError::new(
                                PROTOCOL,
                                "malformed_backend_message",
                            ));
                        }
                    }
                    self.server.recycle(frame.bytes);
                }
                Ok(None) => break,
                Err(reason) => {
                    self.stitch.lost();
                    first_error.get_or_insert(ParseError::new(PROTOCOL, reason));
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
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
        if self.carries_requests(dir) {
            self.feed_client(ts_ns, data, out)
        } else {
            self.feed_server(ts_ns, data, out)
        }
    }

    fn gap(&mut self, dir: Direction, lost_bytes: u64) {
        if self.carries_requests(dir) {
            if !self.client.gap(lost_bytes) {
                self.client_cut_ts = Some(self.client_ts);
                self.stitch.requests_cut();
            }
        } else if !self.server.gap(lost_bytes) {
            self.stitch.answer_cut();
        }
    }

    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        let in_sync = !self.server.is_desynced();
        self.stitch.expire(deadline_ns, in_sync, out);
    }
}
