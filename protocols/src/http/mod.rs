//! HTTP/1.x: request/response heads parsed by [`httparse`] (the parser hyper uses: fast, strict,
//! zero-copy, fuzzed upstream), chunk-size lines by `httparse::parse_chunk_size`; the framing around
//! them (Content-Length, chunked, read-until-close, 1xx, HEAD, upgrades) and the stitching are ours,
//! because a tracer must survive what a client library never sees: bytes lost in the capture, streams
//! joined mid-message, responses whose request was never seen.
//!
//! - [`detect`](mod@detect): a known method and a space, or `HTTP/1.`, at the start of a connection.
//! - [`parse`]: one [`parse::Reader`] per direction turns bytes into [`parse::Message`]s; a gap inside a
//!   body of known length is skipped without losing sync; a gap inside a chunked body (a client's
//!   large reads are captured in part) counts bytes until the last chunk shows or a later syscall
//!   starts a message; any other loss resynchronises at the next request line (or status line).
//! - [`stitch`]: requests and responses are paired in order (HTTP/1 has no ids), then rendered into
//!   Pixie's `http_events` columns.
use crate::{ColumnDef, ConnParser, Direction, FieldType, ParseConfig, ParseError, Record, Role};

mod body;
pub mod detect;
pub mod headers;
pub mod parse;
mod redact;
pub mod stitch;
#[cfg(test)]
mod tests;

pub use detect::detect;

/// Pixie's `http_events` protocol columns. `content_type` is the media type of the response (of the
/// request when no response came), not Pixie's enum: it is readable and filterable as text.
pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef::new("major_version", FieldType::Int64),
    ColumnDef::new("minor_version", FieldType::Int64),
    ColumnDef::new("content_type", FieldType::String),
    ColumnDef::rendered("req_headers", headers::HEADERS_JSON),
    ColumnDef::new("req_method", FieldType::String),
    ColumnDef::new("req_path", FieldType::String),
    ColumnDef::new("req_body", FieldType::String),
    ColumnDef::new("req_body_size", FieldType::Int64),
    ColumnDef::rendered("resp_headers", headers::HEADERS_JSON),
    ColumnDef::new("resp_status", FieldType::Int64),
    ColumnDef::new("resp_message", FieldType::String),
    ColumnDef::new("resp_body", FieldType::String),
    ColumnDef::new("resp_body_size", FieldType::Int64),
];

/// Per-connection HTTP/1.x parser: one reader per direction plus the stitcher pairing them.
pub struct Parser {
    role: Role,
    requests: parse::Reader,
    responses: parse::Reader,
    stitch: stitch::Stitcher,
}

impl Parser {
    pub fn new(role: Role, config: &ParseConfig) -> Parser {
        Parser {
            role,
            requests: parse::Reader::new(
                parse::Side::Request,
                config.max_body_bytes,
                config.redact,
            ),
            responses: parse::Reader::new(
                parse::Side::Response,
                config.max_body_bytes,
                config.redact,
            ),
            stitch: stitch::Stitcher::default(),
        }
    }

    fn carries_requests(&self, dir: Direction) -> bool {
        matches!(
            (self.role, dir),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        )
    }

    /// After a successful upgrade (101) or CONNECT, the bytes are another protocol: stop parsing.
    fn follow_tunnel(&mut self) {
        if self.stitch.tunnel_started() {
            self.requests.enter_tunnel();
            self.responses.enter_tunnel();
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
        let result = if self.carries_requests(dir) {
            self.requests.feed(ts_ns, data, &mut self.stitch)
        } else {
            self.responses.feed(ts_ns, data, &mut self.stitch)
        };
        self.follow_tunnel();
        self.stitch.drain(out);
        result
    }

    fn gap(&mut self, dir: Direction, lost_bytes: u64) {
        if self.carries_requests(dir) {
            self.requests.gap(lost_bytes, &mut self.stitch);
        } else {
            self.responses.gap(lost_bytes, &mut self.stitch);
        }
    }

    fn gap_at(&mut self, dir: Direction, lost_bytes: u64, ts_ns: u64) {
        // A static file's answer sent by sendfile ends at its last sendfile, not its head's write.
        if self.carries_requests(dir) {
            self.requests.seen_at(ts_ns);
        } else {
            self.responses.seen_at(ts_ns);
        }
        self.gap(dir, lost_bytes);
    }

    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        let in_sync = self.responses.in_sync();
        if deadline_ns == u64::MAX {
            // Connection closed: a message cut short, or a response read until close, is now complete.
            self.requests.close(&mut self.stitch);
            self.responses.close(&mut self.stitch);
        }
        let answering = self.responses.in_message();
        self.stitch.expire(deadline_ns, answering, in_sync);
        self.stitch.drain(out);
    }
}
