//! Bytes of one direction → HTTP/1.x messages. Heads go through `httparse`; the body framing (RFC 9112
//! §6.3) is decided here: HEAD/204/304/1xx carry none, chunked beats Content-Length, a response with
//! neither is read until the connection closes.
use super::body::Body;
use super::detect::{find_message_start, starts_request, starts_response};
use super::stitch::Stitcher;
use crate::ParseError;

/// A head larger than this is not HTTP we can follow (servers refuse far smaller ones).
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// httparse needs a fixed header slot array; more headers than this is an error.
const MAX_HEADERS: usize = 96;
/// A chunk-size line (size plus extensions) longer than this is garbage.
const MAX_CHUNK_LINE: usize = 1024;

/// Which kind of message a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

impl Side {
    fn starts(self) -> fn(&[u8]) -> bool {
        match self {
            Side::Request => starts_request,
            Side::Response => starts_response,
        }
    }
}

/// A parsed head. Request fields are empty on responses and vice versa.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub minor_version: u8,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub reason: String,
    /// Every header name and value, one after the other (two allocations per head instead of two
    /// per header); names as sent, values decoded lossily (they are displayed, never interpreted
    /// further). See [`Head::headers`].
    header_text: String,
    /// End offsets in `header_text` of each header's name and value, in order.
    header_ends: Vec<(u32, u32)>,
}

impl Head {
    /// Every header as (name, value), in the order they came.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.header_ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let name = self.header_text.get(start..name_end).unwrap_or("");
            let value = self.header_text.get(name_end..value_end).unwrap_or("");
            start = value_end;
            (name, value)
        })
    }

    fn push_header(&mut self, name: &str, value: &[u8]) {
        self.header_text.push_str(name);
        let name_end = self.header_text.len() as u32;
        self.header_text.push_str(&String::from_utf8_lossy(value));
        self.header_ends
            .push((name_end, self.header_text.len() as u32));
    }

    /// First value of a header, by case-insensitive name; "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }

    fn is_chunked(&self) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(','))
            .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
    }

    /// Content-Length, if present. Differing repeated values make the framing unknowable.
    fn content_length(&self) -> Result<Option<u64>, &'static str> {
        let mut length = None;
        let values = self
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .flat_map(|(_, v)| v.split(','));
        for value in values {
            let parsed: u64 = value.trim().parse().map_err(|_| "bad_content_length")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("bad_content_length");
            }
            length = Some(parsed);
        }
        Ok(length)
    }
}

/// A complete (or, when `complete` is false, cut short) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub head: Head,
    pub body: Body,
    /// Timestamp of the syscall that carried the first byte.
    pub start_ns: u64,
    /// Timestamp of the syscall that carried the last byte.
    pub end_ns: u64,
    /// False when bytes were lost or the connection closed before the end.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    /// Bytes of the CRLF after a chunk still to read.
    ChunkEnd(u8),
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body(Framing),
    /// Sync lost: looking for the next message start.
    Resync,
    /// The connection switched protocols: nothing more to parse.
    Tunnel,
}

/// One direction's parser.
pub struct Reader {
    side: Side,
    max_body: usize,
    state: State,
    /// Bytes not yet consumed: a partial head, chunk-size line or trailer section.
    buf: Vec<u8>,
    /// Timestamp of `buf[0]`.
    buf_ns: u64,
    current: Option<Message>,
    last_ns: u64,
}

impl Reader {
    pub fn new(side: Side, max_body: usize) -> Reader {
        Reader {
            side,
            max_body,
            state: State::Head,
            buf: Vec::new(),
            buf_ns: 0,
            current: None,
            last_ns: 0,
        }
    }

    /// Is a message's head parsed and its body still coming?
    pub fn in_message(&self) -> bool {
        self.current.is_some()
    }

    pub fn enter_tunnel(&mut self) {
        self.state = State::Tunnel;
        self.buf = Vec::new();
        self.current = None;
    }

    /// Parses everything `data` completes. Keeps going after an error (resynchronising) and
    /// reports the first one.
    pub fn feed(&mut self, ts: u64, data: &[u8], stitch: &mut Stitcher) -> Result<(), ParseError> {
        self.last_ns = ts;
        if self.state == State::Tunnel {
            return Ok(());
        }
        let carried = self.buf.len();
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let mut first_error = None;
        while pos < self.buf.len() {
            match self.step(pos, carried, ts, stitch) {
                Ok(Some(next)) => pos = next,
                Ok(None) => break,
                Err((next, reason)) => {
                    first_error.get_or_insert(reason);
                    self.lose_sync(stitch);
                    pos = next;
                }
            }
        }
        if pos >= carried {
            self.buf_ns = ts;
        }
        self.buf.drain(..pos.min(self.buf.len()));
        match first_error {
            Some(reason) => Err(ParseError::new("http", reason)),
            None => Ok(()),
        }
    }

    /// One parsing step at `buf[pos..]`: the next position (None: wait for more bytes), or an
    /// error with the position to resynchronise from.
    fn step(
        &mut self,
        pos: usize,
        carried: usize,
        ts: u64,
        stitch: &mut Stitcher,
    ) -> Result<Option<usize>, (usize, &'static str)> {
        let len = self.buf.len();
        match self.state {
            State::Tunnel => Ok(Some(len)),
            State::Resync => match find_message_start(&self.buf[pos..], self.side.starts()) {
                Some(offset) => {
                    self.state = State::Head;
                    Ok(Some(pos + offset))
                }
                None => Ok(Some(len)),
            },
            State::Head => {
                let start = if pos < carried { self.buf_ns } else { ts };
                match parse_head(self.side, &self.buf[pos..]) {
                    Ok(httparse::Status::Complete((head, n))) => {
                        self.begin(head, start, ts, stitch)
                            .map_err(|reason| (pos + n, reason))?;
                        Ok(Some(pos + n))
                    }
                    Ok(httparse::Status::Partial) if len - pos > MAX_HEAD_BYTES => {
                        Err((pos + 1, "head_too_large"))
                    }
                    Ok(httparse::Status::Partial) => Ok(None),
                    Err(reason) => Err((pos + 1, reason)),
                }
            }
            State::Body(Framing::Length(remaining)) => {
                let take = remaining.min((len - pos) as u64);
                self.body_bytes(pos, take as usize);
                if take == remaining {
                    self.finish(ts, true, stitch);
                } else {
                    self.state = State::Body(Framing::Length(remaining - take));
                }
                Ok(Some(pos + take as usize))
            }
            State::Body(Framing::UntilClose) => {
                self.body_bytes(pos, len - pos);
                Ok(Some(len))
            }
            State::Body(Framing::ChunkData(remaining)) => {
                let take = remaining.min((len - pos) as u64);
                self.body_bytes(pos, take as usize);
                self.state = State::Body(if take == remaining {
                    Framing::ChunkEnd(2)
                } else {
                    Framing::ChunkData(remaining - take)
                });
                Ok(Some(pos + take as usize))
            }
            State::Body(Framing::ChunkEnd(left)) => {
                let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                let take = (left as usize).min(len - pos);
                if self.buf[pos..pos + take] != expected[..take] {
                    return Err((pos, "bad_chunk"));
                }
                self.state = State::Body(if take == left as usize {
                    Framing::ChunkSize
                } else {
                    Framing::ChunkEnd(left - take as u8)
                });
                Ok(Some(pos + take))
            }
            State::Body(Framing::ChunkSize) => match httparse::parse_chunk_size(&self.buf[pos..]) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    self.state = State::Body(Framing::Trailers);
                    Ok(Some(pos + n))
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    self.state = State::Body(Framing::ChunkData(size));
                    Ok(Some(pos + n))
                }
                Ok(httparse::Status::Partial) if len - pos > MAX_CHUNK_LINE => {
                    Err((pos, "bad_chunk_size"))
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(_) => Err((pos, "bad_chunk_size")),
            },
            State::Body(Framing::Trailers) => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&self.buf[pos..], &mut slots) {
                    Ok(httparse::Status::Complete((n, _))) => {
                        self.finish(ts, true, stitch);
                        Ok(Some(pos + n))
                    }
                    Ok(httparse::Status::Partial) if len - pos > MAX_HEAD_BYTES => {
                        Err((pos, "head_too_large"))
                    }
                    Ok(httparse::Status::Partial) => Ok(None),
                    Err(_) => Err((pos, "bad_trailer")),
                }
            }
        }
    }

    /// A head was parsed: decide how the body is framed.
    fn begin(
        &mut self,
        head: Head,
        start: u64,
        ts: u64,
        stitch: &mut Stitcher,
    ) -> Result<(), &'static str> {
        let mut tunnel = false;
        let framing = match self.side {
            Side::Request => {
                stitch.request_head(&head.method, start);
                if head.is_chunked() {
                    Some(Framing::ChunkSize)
                } else {
                    head.content_length()?
                        .filter(|l| *l > 0)
                        .map(Framing::Length)
                }
            }
            Side::Response if (100..200).contains(&head.status) && head.status != 101 => {
                // Interim (100 Continue, 103 Early Hints): the final response is still to come.
                return Ok(());
            }
            Side::Response => {
                let request = stitch.response_head(start);
                tunnel =
                    head.status == 101 || (request.connect && (200..300).contains(&head.status));
                if tunnel || request.head || matches!(head.status, 204 | 304) {
                    None
                } else if head.is_chunked() {
                    Some(Framing::ChunkSize)
                } else {
                    match head.content_length()? {
                        Some(0) => None,
                        Some(l) => Some(Framing::Length(l)),
                        None => Some(Framing::UntilClose),
                    }
                }
            }
        };
        self.current = Some(Message {
            head,
            body: Body::default(),
            start_ns: start,
            end_ns: ts,
            complete: false,
        });
        match framing {
            Some(f) => self.state = State::Body(f),
            None => self.finish(ts, true, stitch),
        }
        if tunnel {
            stitch.start_tunnel();
            self.enter_tunnel();
        }
        Ok(())
    }

    fn body_bytes(&mut self, pos: usize, n: usize) {
        if let Some(m) = &mut self.current {
            m.body.push(&self.buf[pos..pos + n], self.max_body);
        }
    }

    fn finish(&mut self, ts: u64, complete: bool, stitch: &mut Stitcher) {
        self.state = State::Head;
        if let Some(mut m) = self.current.take() {
            m.end_ns = ts;
            m.complete = complete;
            stitch.message(self.side, m);
        }
    }

    /// Sync is lost: a message in progress is reported as cut short, then look for the next start.
    fn lose_sync(&mut self, stitch: &mut Stitcher) {
        let ts = self.last_ns;
        self.finish(ts, false, stitch);
        self.state = State::Resync;
        stitch.lost_sync(self.side);
    }

    /// `lost` bytes of this direction were not captured.
    pub fn gap(&mut self, lost: u64, stitch: &mut Stitcher) {
        let ts = self.last_ns;
        if lost == 0 {
            return;
        }
        match self.state {
            State::Tunnel | State::Resync => {}
            State::Body(Framing::UntilClose) => self.skip_body(lost),
            State::Body(Framing::Length(remaining)) if lost <= remaining => {
                self.skip_body(lost);
                if lost == remaining {
                    self.finish(ts, false, stitch);
                } else {
                    self.state = State::Body(Framing::Length(remaining - lost));
                }
            }
            State::Body(Framing::ChunkData(remaining)) if lost <= remaining => {
                self.skip_body(lost);
                self.state = State::Body(if lost == remaining {
                    Framing::ChunkEnd(2)
                } else {
                    Framing::ChunkData(remaining - lost)
                });
            }
            _ => {
                self.buf.clear();
                self.lose_sync(stitch);
            }
        }
    }

    fn skip_body(&mut self, lost: u64) {
        if let Some(m) = &mut self.current {
            m.body.skip(lost);
        }
    }

    /// The connection closed: a body read until close is complete, anything else is cut short.
    pub fn close(&mut self, stitch: &mut Stitcher) {
        let complete = self.state == State::Body(Framing::UntilClose);
        let ts = self.last_ns;
        self.finish(ts, complete, stitch);
        self.buf = Vec::new();
    }
}

/// Header slots tried first: initialising all [`MAX_HEADERS`] slots for every head costs more than
/// parsing a usual head; one with more headers is parsed again with all of them.
const FEW_HEADERS: usize = 24;

fn parse_head(side: Side, buf: &[u8]) -> Result<httparse::Status<(Head, usize)>, &'static str> {
    match parse_head_with::<FEW_HEADERS>(side, buf) {
        Err(TOO_MANY_HEADERS) => parse_head_with::<MAX_HEADERS>(side, buf),
        other => other,
    }
}

fn head_from(headers: &[httparse::Header<'_>], mut head: Head) -> Head {
    let size: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    head.header_text.reserve_exact(size);
    head.header_ends.reserve_exact(headers.len());
    for h in headers {
        head.push_header(h.name, h.value);
    }
    head
}

fn parse_head_with<const SLOTS: usize>(
    side: Side,
    buf: &[u8],
) -> Result<httparse::Status<(Head, usize)>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; SLOTS];
    // The head's strings are only made once it is complete.
    let complete = match side {
        Side::Request => {
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(buf).map_err(|e| error_reason(side, e))? {
                httparse::Status::Complete(n) => {
                    let head = Head {
                        minor_version: req.version.unwrap_or(1),
                        method: req.method.unwrap_or("").to_string(),
                        path: req.path.unwrap_or("").to_string(),
                        ..Head::default()
                    };
                    (head_from(req.headers, head), n)
                }
                httparse::Status::Partial => return Ok(httparse::Status::Partial),
            }
        }
        Side::Response => {
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(buf).map_err(|e| error_reason(side, e))? {
                httparse::Status::Complete(n) => {
                    let head = Head {
                        minor_version: resp.version.unwrap_or(1),
                        status: resp.code.unwrap_or(0),
                        reason: resp.reason.unwrap_or("").to_string(),
                        ..Head::default()
                    };
                    (head_from(resp.headers, head), n)
                }
                httparse::Status::Partial => return Ok(httparse::Status::Partial),
            }
        }
    };
    Ok(httparse::Status::Complete(complete))
}

const TOO_MANY_HEADERS: &str = "too_many_headers";

fn error_reason(side: Side, e: httparse::Error) -> &'static str {
    match (side, e) {
        (_, httparse::Error::TooManyHeaders) => TOO_MANY_HEADERS,
        (_, httparse::Error::HeaderName | httparse::Error::HeaderValue) => "bad_header",
        (Side::Request, _) => "bad_request_line",
        (Side::Response, _) => "bad_status_line",
    }
}
