//! Requests ↔ responses. HTTP/1 has no ids: the n-th final response answers the n-th request. Loss
//! breaks that count, so two safeguards keep a lost message from shifting every later pair: a response
//! that began before the front request cannot answer it (it is dropped as an orphan), and when the
//! response direction loses sync, the requests waiting for an answer are emitted unanswered.
use std::collections::VecDeque;

use super::detect::known_method;
use super::parse::{Message, Side};
use crate::{Field, ParseConfig, REDACTED, Record, Red};

/// More waiting messages than this means one direction is not being answered: the oldest go first.
const MAX_QUEUED: usize = 1024;

/// What a response's framing needs to know about its request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestKind {
    pub head: bool,
    pub connect: bool,
}

pub struct Stitcher {
    config: ParseConfig,
    /// Request heads seen, waiting for their response's head (start time, kind).
    heads: VecDeque<(u64, RequestKind)>,
    requests: VecDeque<Message>,
    responses: VecDeque<Message>,
    ready: Vec<crate::Record>,
    tunnel: bool,
}

impl Stitcher {
    pub fn new(config: ParseConfig) -> Stitcher {
        Stitcher {
            config,
            heads: VecDeque::new(),
            requests: VecDeque::new(),
            responses: VecDeque::new(),
            ready: Vec::new(),
            tunnel: false,
        }
    }

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
        let redact = self.config.redact;
        let req_type = req.head.header("content-type");
        let req_body = req
            .body
            .render(req_type, req.head.header("content-encoding"));
        let method = known_method(&req.head.method).unwrap_or("_OTHER");
        let (content_type, resp_fields, status, latency_ns) = match &resp {
            Some(resp) => {
                let resp_type = resp.head.header("content-type");
                let body = resp
                    .body
                    .render(resp_type, resp.head.header("content-encoding"));
                let content_type = if resp_type.is_empty() {
                    req_type
                } else {
                    resp_type
                };
                (
                    content_type,
                    [
                        Field::String(headers_json(resp.head.headers(), redact)),
                        Field::Int64(i64::from(resp.head.status)),
                        Field::String(resp.head.reason.clone()),
                        Field::String(body),
                        Field::Int64(clamp(resp.body.size)),
                    ],
                    resp.head.status,
                    Some(resp.end_ns.saturating_sub(req.start_ns)),
                )
            }
            None => (
                req_type,
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
            Field::Int64(i64::from(req.head.minor_version)),
            Field::String(content_type.to_string()),
            Field::String(headers_json(req.head.headers(), redact)),
            Field::String(req.head.method),
            Field::String(req.head.path),
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

/// A JSON object `{name: value}` (keys sorted, repeated names joined with `, `), secrets redacted.
/// Written directly, byte for byte what serializing a `serde_json::Map` gives (sorted keys, same
/// escapes), without building the map: this runs twice per HTTP record.
pub fn headers_json<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>, redact: bool) -> String {
    // Sorted on the stack for usual heads.
    const ON_STACK: usize = 32;
    let mut stack = [("", ""); ON_STACK];
    let mut heap = Vec::new();
    let mut n = 0;
    for header in headers {
        if n < ON_STACK {
            stack[n] = header;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&stack);
            }
            heap.push(header);
        }
        n += 1;
    }
    let order: &mut [(&str, &str)] = if n <= ON_STACK {
        &mut stack[..n]
    } else {
        &mut heap
    };
    // Stable: values of a repeated name stay in the order they came.
    order.sort_by(|a, b| a.0.cmp(b.0));
    let size: usize = order.iter().map(|(n, v)| n.len() + v.len() + 6).sum();
    let mut out = String::with_capacity(size + 2);
    out.push('{');
    let mut i = 0;
    while let Some((name, _)) = order.get(i) {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        push_json_escaped(&mut out, name);
        out.push_str("\":\"");
        let mut first = true;
        while let Some((next, value)) = order.get(i).copied()
            && next == *name
        {
            if !first {
                out.push_str(", ");
            }
            first = false;
            let value = if redact && is_secret(next) {
                REDACTED
            } else {
                value
            };
            push_json_escaped(&mut out, value);
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
