//! Requests ↔ responses. HTTP/1 has no ids: the n-th final response answers the n-th request. Loss
//! breaks that count, so two safeguards keep a lost message from shifting every later pair: a response
//! that began before the front request cannot answer it (it is dropped as an orphan), and when the
//! response direction loses sync, the requests waiting for an answer are emitted unanswered.
//! Requests lost from a pipeline (a server reading more at once than is captured, as Node.js does)
//! are worse: the responses to them come before those of the requests seen next, so those are
//! paired only once the connection is quiet, from the end — never by a guess that could give a
//! request another one's response.
use std::collections::VecDeque;

use super::detect::known_method;
use super::parse::{Message, Side};
use crate::{Field, Record, Red, Unanswered};

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
    /// After requests were lost: how many of the waiting ones (from the front) came before the
    /// loss and may still be paired by order. None: no loss in the way.
    pairable: Option<usize>,
    /// Start of the syscall whose bytes were lost: requests after the loss starting then (a
    /// pipeline's tail) wait; later ones are paired by time (see [`Stitcher::front_blocked`]).
    loss_ns: u64,
    quiet: crate::Quiet,
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
        self.quiet.message();
        // The usual response answers the request waiting in front: paired at once, without a
        // round trip through the queue (what `pair` would do with it, minus two moves).
        // A response that began before it answers a request that was lost or expired: dropped.
        if side == Side::Response
            && self.responses.is_empty()
            && !self.front_blocked()
            && let Some(front) = self.requests.front()
        {
            if message.start_ns >= front.start_ns
                && let Some(req) = self.requests.pop_front()
            {
                self.paired_front();
                let record = self.record(req, Some(message));
                self.ready.push(record);
            }
            return;
        }
        match side {
            Side::Request if self.requests.len() >= MAX_QUEUED => {
                if let Some(old) = self.requests.pop_front() {
                    self.paired_front();
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
        // A request alone (the usual case: its response has not come) has nothing to pair.
        if !self.responses.is_empty() {
            self.pair();
        }
    }

    /// The front request left the queue: one fewer from before a loss.
    fn paired_front(&mut self) {
        if let Some(n) = &mut self.pairable {
            *n = n.saturating_sub(1);
        }
    }

    /// Is the front request one that came after lost requests in the same syscall (a pipeline's
    /// tail)? Responses to the lost ones come first; how many is unknown. A request sent later
    /// is paired as without a loss: a response that began before it was sent is not its (the
    /// lost requests' responses, with a client that waits for each, are dropped that way).
    fn front_blocked(&mut self) -> bool {
        if self.pairable != Some(0) {
            return false;
        }
        match self.requests.front() {
            Some(req) if req.start_ns <= self.loss_ns => true,
            Some(_) => {
                self.pairable = None;
                false
            }
            None => false,
        }
    }

    fn pair(&mut self) {
        while !self.front_blocked()
            && let (Some(req), Some(resp)) = (self.requests.front(), self.responses.front())
        {
            if resp.start_ns < req.start_ns {
                // Answers a request that was lost or already expired.
                self.responses.pop_front();
                continue;
            }
            if let (Some(req), Some(resp)) = (self.requests.pop_front(), self.responses.pop_front())
            {
                self.paired_front();
                let record = self.record(req, Some(resp));
                self.ready.push(record);
            }
        }
    }

    /// The response direction lost bytes that may have held whole responses: the requests still
    /// waiting can no longer be paired by order.
    ///
    /// The request direction lost bytes (in the syscall starting at `ts`) that may have held whole
    /// requests (not understood ones count too: a server answers those as well): the ones waiting
    /// are still answered first, in order; the ones after the loss in that syscall wait for a
    /// quiet connection (see [`Stitcher::front_blocked`]). Those waiting since an earlier such
    /// loss can no longer be told their response: they are emitted unanswered.
    pub fn lost_sync(&mut self, side: Side, ts: u64) {
        match side {
            Side::Response => {
                self.heads.clear();
                self.pairable = None;
                while let Some(req) = self.requests.pop_front() {
                    let record = self.record(req, None);
                    self.ready.push(record);
                }
            }
            Side::Request => {
                if let Some(before) = self.pairable {
                    let before = before.min(self.requests.len());
                    let later: Vec<Message> = self.requests.drain(before..).collect();
                    for req in later {
                        let record = self.record(req, None);
                        self.ready.push(record);
                    }
                }
                self.pairable = Some(self.requests.len());
                self.loss_ns = ts;
                self.quiet.restart();
            }
        }
    }

    /// The connection is quiet after requests were lost: every request has its response, the
    /// last responses being those of the requests still waiting, in order (none of which can
    /// have been answered before it was sent).
    fn realign(&mut self) {
        self.pairable = None;
        if crate::align_from_end(
            &self.requests,
            &mut self.responses,
            |req| req.start_ns,
            |resp| resp.start_ns,
        ) {
            self.pair();
        }
        while let Some(req) = self.requests.pop_front() {
            let record = self.record(req, None);
            self.ready.push(record);
        }
        self.responses.clear();
    }

    /// Requests older than `deadline_ns` are emitted unanswered, unless a response is being read
    /// (it answers the oldest one; the connection's close settles it). Their wait ended then if
    /// the responses are followed (`in_sync`) and no requests were lost before them (their
    /// responses may be among those waiting to be paired from the end, which a close never does).
    pub fn expire(&mut self, deadline_ns: u64, answering: bool, in_sync: bool) {
        if self
            .quiet
            .tick(self.pairable.is_some(), answering, deadline_ns)
        {
            self.realign();
        }
        if answering && deadline_ns != u64::MAX {
            return;
        }
        let ended = (in_sync && self.pairable.is_none()).then(|| Unanswered::at(deadline_ns));
        while self
            .requests
            .front()
            .is_some_and(|r| r.start_ns < deadline_ns)
        {
            if let Some(req) = self.requests.pop_front() {
                self.paired_front();
                self.heads.retain(|(start, _)| *start > req.start_ns);
                let mut record = self.record(req, None);
                record.set_unanswered(ended);
                self.ready.push(record);
            }
        }
        self.responses.retain(|r| r.start_ns >= deadline_ns);
    }

    pub fn drain(&mut self, out: &mut Vec<Record>) {
        out.append(&mut self.ready);
    }

    /// The record of a request and its response: the request head's text becomes the record's
    /// text, the response head's text and both bodies are appended to it.
    fn record(&self, req: Message, resp: Option<Message>) -> Record {
        let req_head = req.head;
        let method = known_method(req_head.str(req_head.method)).unwrap_or("_OTHER");
        let mut text = req_head.text;
        let req_body_size = req.body.size;
        let req_body =
            req.body
                .render_into(&mut text, req_head.content_type, req_head.content_encoding);
        let (content_type, resp_fields, status, latency_ns) = match resp {
            Some(resp) => {
                let head = resp.head;
                let base = text.len();
                text.push_str(&head.text);
                let at = |span: crate::Span| span.shifted(base);
                let body_size = resp.body.size;
                let body = resp.body.render_into(
                    &mut text,
                    at(head.content_type),
                    at(head.content_encoding),
                );
                let content_type = if head.content_type.is_empty() {
                    req_head.content_type
                } else {
                    at(head.content_type)
                };
                (
                    content_type,
                    [
                        Field::Text(at(head.headers)),
                        Field::Int64(i64::from(head.status)),
                        Field::Text(at(head.reason)),
                        Field::Text(body),
                        Field::Int64(clamp(body_size)),
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
            Field::Text(content_type),
            Field::Text(req_head.headers),
            Field::Text(req_head.method),
            Field::Text(req_head.path),
            Field::Text(req_body),
            Field::Int64(clamp(req_body_size)),
        ]);
        fields.extend(resp_fields);
        Record {
            request_ns: req.start_ns,
            latency_ns,
            fields,
            text,
            red: Red::Http {
                method,
                status,
                error: "",
            },
        }
    }
}

fn clamp(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}
