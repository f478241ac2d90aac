//! Bytes of one direction → HTTP/1.x messages. Heads go through `httparse`; the body framing (RFC 9112
//! §6.3) is decided here: HEAD/204/304/1xx carry none, chunked beats Content-Length, a response with
//! neither is read until the connection closes.
use super::body::Body;
use super::detect::{find_message_start, starts_request, starts_response};
use super::headers::{Known, known, plain, secret};
use super::stitch::Stitcher;
use crate::secret::shapes;
use crate::{ParseError, REDACTED, Span};

/// A head larger than this is not HTTP we can follow (servers refuse far smaller ones).
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// httparse needs a fixed header slot array; more headers than this is an error.
pub(super) const MAX_HEADERS: usize = 96;
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

/// A parsed head, kept as one string: the head as captured (secret header values redacted) with
/// spans for what the record and the body framing need, taken from httparse's slices once, as the
/// head is parsed. One allocation per head; the request head's text becomes its record's text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub minor_version: u8,
    /// The status code (0 on requests).
    pub status: u16,
    /// What the spans below are spans of.
    pub text: String,
    /// Request line parts (empty spans on responses).
    pub method: Span,
    pub path: Span,
    /// Status line reason (an empty span on requests).
    pub reason: Span,
    /// The header lines, from the first header to the end of the head: what `req_headers` and
    /// `resp_headers` keep ([`super::headers::HEADERS_JSON`] renders them).
    pub headers: Span,
    /// First Content-Type value, trimmed (empty when absent).
    pub content_type: Span,
    /// First Content-Encoding value, trimmed (empty when absent).
    pub content_encoding: Span,
    /// Transfer-Encoding names `chunked`.
    chunked: bool,
    /// Content-Length, if present.
    content_length: Option<u64>,
    /// Repeated Content-Length values differ, or one is no number: the framing is unknowable.
    bad_content_length: bool,
}

/// The first line of a head, as httparse's slices into it.
#[derive(Clone, Copy)]
enum StartLine<'a> {
    Request { method: &'a str, path: &'a str },
    Response { reason: &'a str },
}

/// What one look at a head's header names found.
#[derive(Default)]
struct Seen {
    /// Index of the first Content-Type header.
    content_type: Option<usize>,
    /// Index of the first Content-Encoding header.
    content_encoding: Option<usize>,
    /// A header whose value is secret.
    secret: bool,
    /// A token in a header value ([`shapes`]).
    token: bool,
    /// Transfer-Encoding names `chunked`.
    chunked: bool,
    /// Content-Length, if present.
    content_length: Option<u64>,
    /// Content-Length values differ, or one is no number.
    bad_content_length: bool,
}

/// Appends `value`, its tokens redacted if `tokens`.
fn push_value(text: &mut String, value: &str, tokens: bool) {
    if tokens {
        shapes::push_redacted(text, value, false);
    } else {
        text.push_str(value);
    }
}

/// Room left in a request head's text for what its record appends (the response head and the
/// bodies): most records then need no second allocation.
const REQUEST_TEXT_SLACK: usize = 384;

impl Head {
    /// `bytes`: the whole head, `line` and `headers`: httparse's slices into it.
    fn new(
        bytes: &[u8],
        line: StartLine<'_>,
        headers: &[httparse::Header<'_>],
        redact: bool,
    ) -> Head {
        let slack = match line {
            StartLine::Request { .. } => REQUEST_TEXT_SLACK,
            StartLine::Response { .. } => 0,
        };
        // One look at each header name: what the framing needs, where the first Content-Type and
        // Content-Encoding are, whether a secret is to be redacted.
        let mut seen = Seen::default();
        for (i, h) in headers.iter().enumerate() {
            match known(h.name) {
                Known::ContentType => {
                    seen.content_type.get_or_insert(i);
                }
                Known::ContentEncoding => {
                    seen.content_encoding.get_or_insert(i);
                }
                Known::ContentLength => match add_content_length(seen.content_length, h.value) {
                    Some(length) => seen.content_length = Some(length),
                    None => seen.bad_content_length = true,
                },
                Known::TransferEncoding => {
                    seen.chunked |= h
                        .value
                        .split(|&b| b == b',')
                        .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
                Known::Secret => seen.secret = true,
                // Credentials in other headers (`X-Api-Key`, …), and tokens in their values by
                // their shape (a JWT or an API key under any name; usually none).
                Known::Other => {
                    if redact {
                        seen.secret |= super::redact::secret_header(h.name);
                        seen.token = seen.token
                            || (h.value.len() >= shapes::SHORTEST
                                && !plain(h.name)
                                && shapes::holds_token(h.value, false));
                    }
                }
            }
        }
        // A status line's reason is the server's fixed text: only a request's path is looked at.
        let tokens = redact
            && (seen.token
                || matches!(line, StartLine::Request { path, .. }
                    if shapes::holds_token(path.as_bytes(), false)));
        // Usually the head is valid UTF-8 without secrets: one copy, spans from the slices'
        // offsets. Otherwise its parts are written one by one, secrets redacted, bytes decoded
        // lossily. (`from_utf8` first: several times faster than the lossy decoder's check.)
        let mut head = match std::str::from_utf8(bytes) {
            Ok(whole) if !(redact && seen.secret) && !tokens => {
                Head::verbatim(whole, line, headers, &seen, slack)
            }
            _ => None,
        }
        .unwrap_or_else(|| Head::rewritten(line, headers, &seen, redact, tokens, slack));
        if redact
            && (tokens || matches!(line, StartLine::Request { path, .. } if path.contains('?')))
        {
            head.redact_path(tokens);
        }
        head.chunked = seen.chunked;
        head.content_length = seen.content_length;
        head.bad_content_length = seen.bad_content_length;
        head
    }

    /// Secret query parameters of the path redacted, and tokens anywhere in it if the head holds
    /// some (`tokens`): the redacted path is appended to the text and the path's span moved to it
    /// (the request line itself is no column).
    fn redact_path(&mut self, tokens: bool) {
        let path = self.path.of(&self.text);
        let named = super::redact::query(path);
        let shaped = if tokens {
            shapes::redacted(named.as_deref().unwrap_or(path), false)
        } else {
            None
        };
        if let Some(redacted) = shaped.or(named) {
            let start = self.text.len();
            self.text.push_str(&redacted);
            self.path = Span::at(start, redacted.len());
        }
    }

    /// The head copied whole; None if a slice is not within `whole` (httparse's slices always are).
    fn verbatim(
        whole: &str,
        line: StartLine<'_>,
        headers: &[httparse::Header<'_>],
        seen: &Seen,
        slack: usize,
    ) -> Option<Head> {
        let base = whole.as_ptr() as usize;
        let span = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(base)?;
            (start + part.len() <= whole.len()).then(|| Span::at(start, part.len()))
        };
        let mut head = Head::default();
        match line {
            StartLine::Request { method, path } => {
                head.method = span(method.as_bytes())?;
                head.path = span(path.as_bytes())?;
            }
            StartLine::Response { reason } => head.reason = span(reason.as_bytes())?,
        }
        if let Some(first) = headers.first() {
            let start = span(first.name.as_bytes())?.start as usize;
            head.headers = Span::at(start, whole.len() - start);
        }
        let value = |i: Option<usize>| match i.and_then(|i| headers.get(i)) {
            Some(h) => span(h.value.trim_ascii()),
            None => Some(Span::default()),
        };
        head.content_type = value(seen.content_type)?;
        head.content_encoding = value(seen.content_encoding)?;
        let mut text = String::with_capacity(whole.len() + slack);
        text.push_str(whole);
        head.text = text;
        Some(head)
    }

    /// The head's parts written anew: header lines as `name: value`, secret values redacted when
    /// `redact` (and the tokens in any value when the head holds some: `tokens`),
    /// bytes that are no UTF-8 replaced.
    fn rewritten(
        line: StartLine<'_>,
        headers: &[httparse::Header<'_>],
        seen: &Seen,
        redact: bool,
        tokens: bool,
        slack: usize,
    ) -> Head {
        let mut head = Head::default();
        let mut text = String::with_capacity(
            headers
                .iter()
                .map(|h| h.name.len() + h.value.len() + 4)
                .sum::<usize>()
                + 64
                + slack,
        );
        let push = |text: &mut String, part: &str| {
            let start = text.len();
            text.push_str(part);
            Span::at(start, part.len())
        };
        match line {
            StartLine::Request { method, path } => {
                head.method = push(&mut text, method);
                head.path = push(&mut text, path);
            }
            StartLine::Response { reason } => head.reason = push(&mut text, reason),
        }
        let start = text.len();
        for (i, h) in headers.iter().enumerate() {
            text.push_str(h.name);
            text.push_str(": ");
            if redact && secret(h.name) {
                text.push_str(REDACTED);
            } else {
                let start = text.len();
                push_value(&mut text, &String::from_utf8_lossy(h.value), tokens);
                let value = &text[start..];
                // Trimmed of ASCII whitespace only: the span stays on character boundaries.
                let lead = value.len() - value.trim_ascii_start().len();
                let trimmed = Span::at(start + lead, value.trim_ascii().len());
                if seen.content_type == Some(i) {
                    head.content_type = trimmed;
                } else if seen.content_encoding == Some(i) {
                    head.content_encoding = trimmed;
                }
            }
            text.push_str("\r\n");
        }
        if !headers.is_empty() {
            text.push_str("\r\n");
            head.headers = Span::at(start, text.len() - start);
        }
        head.text = text;
        head
    }

    /// A span of this head's text.
    pub fn str(&self, span: Span) -> &str {
        span.of(&self.text)
    }

    /// Content-Length, if present.
    fn content_length(&self) -> Result<Option<u64>, &'static str> {
        if self.bad_content_length {
            return Err("bad_content_length");
        }
        Ok(self.content_length)
    }
}

/// Content-Length so far plus one more header value (itself a comma-separated list); None when a
/// value is no number or differs from another.
fn add_content_length(length: Option<u64>, value: &[u8]) -> Option<u64> {
    let mut length = length;
    for part in value.split(|&b| b == b',') {
        let parsed: u64 = std::str::from_utf8(part.trim_ascii()).ok()?.parse().ok()?;
        if length.is_some_and(|l| l != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
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
    /// Bytes lost inside a chunked body took its chunk boundaries with them: every byte counts
    /// toward the body until the last chunk (`\n0\r\n\r\n`) shows, or a later syscall's
    /// bytes start a message. `tail`: the last bytes seen, for a last chunk split between two.
    ChunkedLost {
        tail: [u8; TAIL],
        tail_len: u8,
    },
}

/// The end of a chunked body without trailers: the line feed ending a data chunk, the last chunk,
/// the empty line.
const LAST_CHUNK: &[u8; 6] = b"\n0\r\n\r\n";

/// [`Framing::ChunkedLost`] just after a loss.
const CHUNKED_LOST: Framing = Framing::ChunkedLost {
    tail: [0; TAIL],
    tail_len: 0,
};

/// Bytes of a [`LAST_CHUNK`] that can lie in the piece before the one it ends in.
const TAIL: usize = LAST_CHUNK.len() - 1;

/// `tail` then `more` (at most [`TAIL`] bytes each) in one buffer, and its length.
fn joined(tail: &[u8], more: &[u8]) -> ([u8; 2 * TAIL], usize) {
    let mut buf = [0u8; 2 * TAIL];
    buf[..tail.len()].copy_from_slice(tail);
    buf[tail.len()..tail.len() + more.len()].copy_from_slice(more);
    (buf, tail.len() + more.len())
}

/// Where [`LAST_CHUNK`] ends in `piece` (it may start in `tail`, the bytes before `piece`).
fn last_chunk_end(tail: &[u8], piece: &[u8]) -> Option<usize> {
    let find = |bytes: &[u8]| {
        bytes
            .windows(LAST_CHUNK.len())
            .position(|w| w == LAST_CHUNK)
    };
    let (across, n) = joined(tail, &piece[..piece.len().min(TAIL)]);
    find(&across[..n])
        .map(|i| i + LAST_CHUNK.len() - tail.len())
        .or_else(|| find(piece).map(|i| i + LAST_CHUNK.len()))
}

/// The last [`TAIL`] bytes of `tail` followed by `piece`.
fn next_tail(tail: &[u8], piece: &[u8]) -> ([u8; TAIL], u8) {
    let (all, n) = joined(tail, &piece[piece.len().saturating_sub(TAIL)..]);
    let kept = &all[n.saturating_sub(TAIL)..n];
    let mut out = [0u8; TAIL];
    out[..kept.len()].copy_from_slice(kept);
    (out, kept.len() as u8)
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
    /// Redact secret header values in the heads' kept header lines.
    redact: bool,
    state: State,
    /// Bytes not yet consumed: a partial head, chunk-size line or trailer section.
    buf: Vec<u8>,
    /// Timestamp of `buf[0]`.
    buf_ns: u64,
    current: Option<Message>,
    last_ns: u64,
}

impl Reader {
    pub fn new(side: Side, max_body: usize, redact: bool) -> Reader {
        Reader {
            side,
            max_body,
            redact,
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

    /// Is the stream followed (not looking for a message's start after lost bytes)?
    pub fn in_sync(&self) -> bool {
        self.state != State::Resync
    }

    pub fn enter_tunnel(&mut self) {
        self.state = State::Tunnel;
        self.buf = Vec::new();
        self.current = None;
    }

    /// Parses everything `data` completes. Keeps going after an error (resynchronising) and
    /// reports the first one.
    pub fn feed(&mut self, ts: u64, data: &[u8], stitch: &mut Stitcher) -> Result<(), ParseError> {
        if matches!(self.state, State::Body(Framing::ChunkedLost { .. }))
            && (self.side.starts())(data)
        {
            // A later syscall starts a message: the body it follows ended in what was lost.
            let end = self.last_ns;
            self.finish(end, false, stitch);
        }
        self.last_ns = ts;
        if self.state == State::Tunnel {
            return Ok(());
        }
        // Bytes carried over from the last call are joined with these; without any (the usual
        // case: a message per syscall) `data` is parsed where it lies and only what is left of it
        // is kept.
        let carried = self.buf.len();
        let mut kept = std::mem::take(&mut self.buf);
        let input: &[u8] = if carried == 0 {
            data
        } else {
            kept.extend_from_slice(data);
            &kept
        };
        let mut pos = 0;
        let mut first_error = None;
        while pos < input.len() {
            match self.step(input, pos, carried, ts, stitch) {
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
        let pos = pos.min(input.len());
        if carried == 0 {
            kept.extend_from_slice(&data[pos..]);
        } else {
            kept.drain(..pos);
        }
        self.buf = kept;
        match first_error {
            Some(reason) => Err(ParseError::new("http", reason)),
            None => Ok(()),
        }
    }

    /// One parsing step at `buf[pos..]`: the next position (None: wait for more bytes), or an
    /// error with the position to resynchronise from.
    fn step(
        &mut self,
        buf: &[u8],
        pos: usize,
        carried: usize,
        ts: u64,
        stitch: &mut Stitcher,
    ) -> Result<Option<usize>, (usize, &'static str)> {
        let len = buf.len();
        match self.state {
            State::Tunnel => Ok(Some(len)),
            State::Resync => match find_message_start(&buf[pos..], self.side.starts()) {
                Some(offset) => {
                    self.state = State::Head;
                    Ok(Some(pos + offset))
                }
                None => Ok(Some(len)),
            },
            State::Head => {
                let start = if pos < carried { self.buf_ns } else { ts };
                match parse_head(self.side, &buf[pos..], self.redact) {
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
                self.body_bytes(buf, pos, take as usize);
                if take == remaining {
                    self.finish(ts, true, stitch);
                } else {
                    self.state = State::Body(Framing::Length(remaining - take));
                }
                Ok(Some(pos + take as usize))
            }
            State::Body(Framing::UntilClose) => {
                self.body_bytes(buf, pos, len - pos);
                Ok(Some(len))
            }
            State::Body(Framing::ChunkData(remaining)) => {
                let take = remaining.min((len - pos) as u64);
                self.body_bytes(buf, pos, take as usize);
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
                if buf[pos..pos + take] != expected[..take] {
                    return Err((pos, "bad_chunk"));
                }
                self.state = State::Body(if take == left as usize {
                    Framing::ChunkSize
                } else {
                    Framing::ChunkEnd(left - take as u8)
                });
                Ok(Some(pos + take))
            }
            State::Body(Framing::ChunkSize) => match httparse::parse_chunk_size(&buf[pos..]) {
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
            State::Body(Framing::ChunkedLost { tail, tail_len }) => {
                let piece = &buf[pos..];
                match last_chunk_end(&tail[..tail_len as usize], piece) {
                    Some(end) => {
                        let payload = end.saturating_sub(LAST_CHUNK.len());
                        self.body_bytes(buf, pos, payload);
                        self.finish(ts, true, stitch);
                        Ok(Some(pos + end))
                    }
                    None => {
                        self.body_bytes(buf, pos, piece.len());
                        let (tail, tail_len) = next_tail(&tail[..tail_len as usize], piece);
                        self.state = State::Body(Framing::ChunkedLost { tail, tail_len });
                        Ok(Some(len))
                    }
                }
            }
            State::Body(Framing::Trailers) => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&buf[pos..], &mut slots) {
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
                stitch.request_head(head.str(head.method), start);
                if head.chunked {
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
                } else if head.chunked {
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
            body: Body::new(self.redact, self.max_body),
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

    fn body_bytes(&mut self, buf: &[u8], pos: usize, n: usize) {
        if let Some(m) = &mut self.current {
            m.body.push(&buf[pos..pos + n], self.max_body);
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
        stitch.lost_sync(self.side, ts);
    }

    /// `lost` bytes of this direction were not captured.
    /// A syscall of this direction ran at `ts_ns` (its bytes not captured): what a gap ends, ends then.
    pub fn seen_at(&mut self, ts_ns: u64) {
        self.last_ns = ts_ns;
    }

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
            // A chunk's size says where it ends: a loss may reach into its CRLF (a chunk written
            // in one syscall whose tail was not captured) without losing the next chunk's start.
            State::Body(Framing::ChunkData(remaining)) if lost <= remaining + 2 => {
                self.skip_body(lost.min(remaining));
                self.state = State::Body(match lost.checked_sub(remaining) {
                    None => Framing::ChunkData(remaining - lost),
                    Some(2) => Framing::ChunkSize,
                    Some(crlf) => Framing::ChunkEnd(2 - crlf as u8),
                });
            }
            State::Body(Framing::ChunkEnd(left)) if lost <= u64::from(left) => {
                self.state = State::Body(if lost == u64::from(left) {
                    Framing::ChunkSize
                } else {
                    Framing::ChunkEnd(left - lost as u8)
                });
            }
            State::Body(
                Framing::ChunkSize
                | Framing::ChunkData(_)
                | Framing::ChunkEnd(_)
                | Framing::ChunkedLost { .. },
            ) => {
                // A partial chunk-size line, if any, is framing: it is not kept.
                self.buf.clear();
                self.skip_body(lost);
                self.state = State::Body(CHUNKED_LOST);
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

pub(super) fn parse_head(
    side: Side,
    buf: &[u8],
    redact: bool,
) -> Result<httparse::Status<(Head, usize)>, &'static str> {
    // Uninitialised slots: initialising all of them for every head cost more than parsing a usual
    // head. httparse fills what it uses and hands back only those.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let config = httparse::ParserConfig::default();
    // The head's strings are only made once it is complete.
    let complete = match side {
        Side::Request => {
            let mut req = httparse::Request::new(&mut []);
            match config
                .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
                .map_err(|e| error_reason(side, e))?
            {
                httparse::Status::Complete(n) => {
                    let line = StartLine::Request {
                        method: req.method.unwrap_or(""),
                        path: req.path.unwrap_or(""),
                    };
                    let mut head = Head::new(&buf[..n], line, req.headers, redact);
                    head.minor_version = req.version.unwrap_or(1);
                    (head, n)
                }
                httparse::Status::Partial => return Ok(httparse::Status::Partial),
            }
        }
        Side::Response => {
            let mut resp = httparse::Response::new(&mut []);
            match config
                .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
                .map_err(|e| error_reason(side, e))?
            {
                httparse::Status::Complete(n) => {
                    let line = StartLine::Response {
                        reason: resp.reason.unwrap_or(""),
                    };
                    let mut head = Head::new(&buf[..n], line, resp.headers, redact);
                    head.minor_version = resp.version.unwrap_or(1);
                    head.status = resp.code.unwrap_or(0);
                    (head, n)
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
