//! Requests ↔ responses. HTTP/1 has no ids: the n-th final response answers the n-th request. Loss
//! breaks that count, so two safeguards keep a lost message from shifting every later pair: a response
//! that began before the front request cannot answer it (it is dropped as an orphan), and when the
//! response direction loses sync, the requests waiting for an answer are emitted unanswered.
use std::collections::VecDeque;

use super::detect::known_method;
use super::parse::{Message, Side};
use crate::{Field, REDACTED, Record, Red};

/// More waiting messages than this means one direction is not being answered: the oldest go first.
const MAX_QUEUED: usize = 1024;

/// What a response's framing needs to know about its request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestKind {
    pub head: bool,
    pub connect: bool,
}

#[derive(Default)]
pub struct Stitcher {
    /// Request heads seen, waiting for their response's head (start time, kind).
    heads: VecDeque<(u64, RequestKind)>,
    requests: VecDeque<Message>,
    responses: VecDeque<Message>,
    ready: Vec<crate::Record>,
    tunnel: bool,
}

impl Stitcher {
    pub fn request_head(&mut self, method: &str, start_ns: u64) {
        if self.heads.len() >= MAX_QUEUED {
            self.heads.pop_front();
        }
        self.heads.push_back((
            start_ns,
            RequestKind {
                head: method == "HEAD",
                connect: method == "CONNECT",
            },
        ));
    }

    /// The kind of request a final response starting at `start_ns` answers (a plain one when its
    /// request was not seen).
    pub fn response_head(&mut self, start_ns: u64) -> RequestKind {
        match self.heads.front() {
            Some((req_start, kind)) if *req_start <= start_ns => {
                let kind = *kind;
                self.heads.pop_front();
                kind
            }
            _ => RequestKind::default(),
        }
    }

    pub fn start_tunnel(&mut self) {
        self.tunnel = true;
    }

    pub fn tunnel_started(&self) -> bool {
        self.tunnel
    }

    pub fn message(&mut self, side: Side, message: Message) {
        match side {
            Side::Request if self.requests.len() >= MAX_QUEUED => {
                if let Some(old) = self.requests.pop_front() {
                    let record = self.record(old, None);
                    self.ready.push(record);
                }
            }
            Side::Response if self.responses.len() >= MAX_QUEUED => {
                self.responses.pop_front();
            }
            _ => {}
        }
        match side {
            Side::Request => self.requests.push_back(message),
            Side::Response => self.responses.push_back(message),
        }
        self.pair();
    }

    fn pair(&mut self) {
        while let (Some(req), Some(resp)) = (self.requests.front(), self.responses.front()) {
            if resp.start_ns < req.start_ns {
                // Answers a request that was lost or already expired.
                self.responses.pop_front();
                continue;
            }
            if let (Some(req), Some(resp)) = (self.requests.pop_front(), self.responses.pop_front())
            {
                let record = self.record(req, Some(resp));
                self.ready.push(record);
            }
        }
    }

    /// The response direction lost bytes that may have held whole responses: the requests still
    /// waiting can no longer be paired by order.
    pub fn lost_sync(&mut self, side: Side) {
        if side == Side::Response {
            self.heads.clear();
            while let Some(req) = self.requests.pop_front() {
                let record = self.record(req, None);
                self.ready.push(record);
            }
        }
    }

    /// Requests older than `deadline_ns` are emitted unanswered, unless a response is being read
    /// (it answers the oldest one; the connection's close settles it).
    pub fn expire(&mut self, deadline_ns: u64, answering: bool) {
        if answering && deadline_ns != u64::MAX {
            return;
        }
        while self
            .requests
            .front()
            .is_some_and(|r| r.start_ns < deadline_ns)
        {
            if let Some(req) = self.requests.pop_front() {
                self.heads.retain(|(start, _)| *start > req.start_ns);
                let record = self.record(req, None);
                self.ready.push(record);
            }
        }
        self.responses.retain(|r| r.start_ns >= deadline_ns);
    }

    pub fn drain(&mut self, out: &mut Vec<Record>) {
        out.append(&mut self.ready);
    }

    fn record(&self, req: Message, resp: Option<Message>) -> Record {
        let req_head = req.head;
        let req_body = req
            .body
            .render(&req_head.content_type, &req_head.content_encoding);
        let method = known_method(&req_head.method).unwrap_or("_OTHER");
        let (content_type, resp_fields, status, latency_ns) = match resp {
            Some(resp) => {
                let head = resp.head;
                let body = resp.body.render(&head.content_type, &head.content_encoding);
                let content_type = if head.content_type.is_empty() {
                    req_head.content_type
                } else {
                    head.content_type
                };
                (
                    content_type,
                    [
                        Field::String(head.headers_json),
                        Field::Int64(i64::from(head.status)),
                        Field::String(head.reason),
                        Field::String(body),
                        Field::Int64(clamp(resp.body.size)),
                    ],
                    head.status,
                    Some(resp.end_ns.saturating_sub(req.start_ns)),
                )
            }
            None => (
                req_head.content_type,
                [
                    Field::String(String::new()),
                    Field::Int64(0),
                    Field::String(String::new()),
                    Field::String(String::new()),
                    Field::Int64(0),
                ],
                0,
                None,
            ),
        };
        // One allocation: the response fields are added without growing it.
        let mut fields = Vec::with_capacity(8 + resp_fields.len());
        fields.extend([
            Field::Int64(1),
            Field::Int64(i64::from(req_head.minor_version)),
            Field::String(content_type),
            Field::String(req_head.headers_json),
            Field::String(req_head.method),
            Field::String(req_head.path),
            Field::String(req_body),
            Field::Int64(clamp(req.body.size)),
        ]);
        fields.extend(resp_fields);
        Record {
            request_ns: req.start_ns,
            latency_ns,
            fields,
            red: Red::Http { method, status },
        }
    }
}

fn clamp(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Header values that carry credentials or sessions.
fn is_secret(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// A JSON object `{name: value}` (keys sorted, repeated names joined with `, `, values decoded
/// lossily), secrets redacted. Written directly, byte for byte what serializing a
/// `serde_json::Map` gives (sorted keys, same escapes), without building the map: this runs for
/// every head.
pub fn headers_json(headers: &[httparse::Header<'_>], redact: bool) -> String {
    // Sorted on the stack for usual heads.
    const ON_STACK: usize = 32;
    let mut stack = [&httparse::EMPTY_HEADER; ON_STACK];
    let mut heap = Vec::new();
    let order: &mut [&httparse::Header<'_>] = if headers.len() <= ON_STACK {
        for (slot, h) in stack.iter_mut().zip(headers) {
            *slot = h;
        }
        &mut stack[..headers.len()]
    } else {
        heap.extend(headers);
        &mut heap
    };
    // Stable: values of a repeated name stay in the order they came.
    order.sort_by(|a, b| a.name.cmp(b.name));
    let size: usize = order.iter().map(|h| h.name.len() + h.value.len() + 6).sum();
    let mut out = String::with_capacity(size + 2);
    out.push('{');
    let mut i = 0;
    while let Some(h) = order.get(i) {
        let name = h.name;
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        push_json_escaped(&mut out, name);
        out.push_str("\":\"");
        let mut first = true;
        while let Some(next) = order.get(i)
            && next.name == name
        {
            if !first {
                out.push_str(", ");
            }
            first = false;
            if redact && is_secret(name) {
                push_json_escaped(&mut out, REDACTED);
            } else {
                push_json_escaped(&mut out, &String::from_utf8_lossy(next.value));
            }
            i += 1;
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// JSON string escapes as serde_json writes them: `\"`, `\\`, the short forms of \b \f \n \r \t,
/// `\u00xx` (lowercase hex) for other control characters; everything else as is.
fn push_json_escaped(out: &mut String, s: &str) {
    // Almost every header needs no escape: one pass without early exit (which the compiler turns
    // into vector code) tells, and the string is copied whole.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}
