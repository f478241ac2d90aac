//! Application-protocol parsers over the bytes Sonde captures from syscalls.
//!
//! One module per protocol, each with `detect` (a cheap check on a connection's first bytes), a
//! per-connection [`ConnParser`] (bytes → frames → request/response [`Record`]s, never panicking), its
//! [`Columns`](ColumnDef) and its tests. [`Kind`] registers them all. This crate knows nothing about eBPF,
//! tables or metrics: the agent's protocol runtime feeds it bytes and turns records into rows and
//! RED metrics, so the parsers can be unit-tested on captured bytes and fuzzed on their own.
#![forbid(unsafe_code)]

#[cfg(test)]
mod captured;
pub mod dns;
pub mod error_type;
mod frames;
pub mod http;
mod json;
pub mod mysql;
pub mod pgsql;
pub mod redis;
mod secret;
mod sql;

/// Which way bytes went, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Written by the traced process (write, send*, sendfile, …).
    Egress,
    /// Read by the traced process (read, recv*, …).
    Ingress,
}

/// The traced process's side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It connected (or sent the first request): its egress bytes are requests.
    Client,
    /// It accepted (or received the first request): its ingress bytes are requests.
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Transport under the protocol: TCP is a byte stream per direction; UDP delivers whole datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Settings of one Tracepoint that every parser honours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseConfig {
    /// Bytes of each body (HTTP body, query text beyond the statement, …) kept in records.
    pub max_body_bytes: usize,
    /// Replace secrets (Authorization, Cookie, Set-Cookie, Proxy-Authorization and credential
    /// header values such as `X-Api-Key`,
    /// PostgreSQL/MySQL password messages and passwords in SQL text, Redis AUTH arguments, secret
    /// query parameters and form or JSON fields; and, under any name, tokens recognised by their
    /// shape — JWTs, vendor API keys, PEM private keys: `secret::shapes`) with `<redacted>`.
    pub redact: bool,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            max_body_bytes: 512,
            redact: true,
        }
    }
}

/// `s` cut to at most `cap` bytes, at a char boundary.
pub(crate) fn cut(mut s: String, cap: usize) -> String {
    if s.len() > cap {
        let mut end = cap;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// A server's stream is followed again after lost bytes, with `pending` requests waiting. A client
/// that waits for each answer before its next request has at most one waiting then, whose answer
/// was cut; more mean whole answers were lost, and the newest request is the one being answered
/// (with a client that pipelines, no guess is sure). Moves the older ones to `orphans` (written
/// unanswered); true when there were any.
pub(crate) fn keep_newest<T>(
    pending: &mut std::collections::VecDeque<T>,
    orphans: &mut Vec<T>,
) -> bool {
    let older = pending.len().saturating_sub(1);
    orphans.extend(pending.drain(..older));
    older > 0
}

/// At a quiet moment after lost requests every request has its answer, so the last ones answer
/// the `waiting` requests, in order — unless one of them began before its request was sent (the
/// alignment is then wrong). When they fit, drops the `answers` before them and returns true.
pub(crate) fn align_from_end<Q, A>(
    waiting: &std::collections::VecDeque<Q>,
    answers: &mut std::collections::VecDeque<A>,
    sent_ns: impl Fn(&Q) -> u64,
    began_ns: impl Fn(&A) -> u64,
) -> bool {
    let Some(lost) = answers.len().checked_sub(waiting.len()) else {
        return false;
    };
    let in_time = waiting
        .iter()
        .zip(answers.iter().skip(lost))
        .all(|(q, a)| began_ns(a) >= sent_ns(q));
    if in_time {
        answers.drain(..lost);
    }
    in_time
}

/// Expiry ticks (a second apart) without a message either way that make a connection quiet: every
/// request sent has been answered.
const QUIET_TICKS: u32 = 2;

/// Whether a connection went quiet, for a stitcher that lost requests and can pair the ones seen
/// after them only once every request has its answer (HTTP's and Redis's, from the end).
#[derive(Debug, Default)]
pub(crate) struct Quiet {
    /// A message came since the last expiry tick.
    active: bool,
    /// Expiry ticks without one since.
    ticks: u32,
}

impl Quiet {
    pub fn message(&mut self) {
        self.active = true;
    }

    /// Requests were lost: quiet counts from now.
    pub fn restart(&mut self) {
        self.ticks = 0;
    }

    /// An expiry tick (`deadline_ns` u64::MAX: the close). `waiting`: requests wait for the
    /// connection to go quiet; `answering`: a message is being read. True when it went quiet, but
    /// never at the close: a client that went away may leave requests unanswered.
    pub fn tick(&mut self, waiting: bool, answering: bool, deadline_ns: u64) -> bool {
        let active = std::mem::take(&mut self.active) || answering;
        if !waiting {
            return false;
        }
        self.ticks = if active { 0 } else { self.ticks + 1 };
        self.ticks >= QUIET_TICKS && deadline_ns != u64::MAX
    }
}

/// Type of a protocol column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Int64,
    UInt64,
    Float64,
    Boolean,
    String,
}

/// A protocol column of a table (after the common connection columns the runtime adds:
/// local/remote address and port, trace_role, latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: &'static str,
    pub ty: FieldType,
    /// Set for a string column whose records hold the captured form (see [`Renderer`]).
    pub render: Option<Renderer>,
}

impl ColumnDef {
    pub const fn new(name: &'static str, ty: FieldType) -> ColumnDef {
        ColumnDef {
            name,
            ty,
            render: None,
        }
    }

    /// A string column whose values are rendered when read.
    pub const fn rendered(name: &'static str, render: Renderer) -> ColumnDef {
        ColumnDef {
            name,
            ty: FieldType::String,
            render: Some(render),
        }
    }

    /// A stored value of this column as readers see it.
    pub fn shown<'a>(&self, stored: &'a str) -> std::borrow::Cow<'a, str> {
        match self.render {
            Some(r) => std::borrow::Cow::Owned((r.render)(stored)),
            None => std::borrow::Cow::Borrowed(stored),
        }
    }
}

/// How a string column's stored value becomes the value readers see. Records carry what was
/// captured (e.g. an HTTP head's header lines, secrets already redacted) and the table store applies
/// this when rows are read: rows are written for every request but most are evicted unread, so
/// formatting (sorting and JSON-escaping headers) is paid per row read, not per row written.
#[derive(Clone, Copy, Debug)]
pub struct Renderer {
    /// What the value becomes, e.g. "http_headers_json".
    pub name: &'static str,
    pub render: fn(&str) -> String,
}

/// By name: function addresses are not stable identities.
impl PartialEq for Renderer {
    fn eq(&self, other: &Renderer) -> bool {
        self.name == other.name
    }
}

impl Eq for Renderer {}

/// One value of a record, in the order of its protocol's columns.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    Null,
    Int64(i64),
    UInt64(u64),
    Float64(f64),
    Boolean(bool),
    String(String),
    /// A string kept in its record's [`Record::text`]: a protocol that fills several string
    /// columns from one capture (an HTTP head) keeps them in one allocation.
    Text(Span),
}

/// Bytes `start..end` of a record's [`Record::text`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The span of `len` bytes at `start`.
    pub fn at(start: usize, len: usize) -> Span {
        let start = u32::try_from(start).unwrap_or(u32::MAX);
        Span {
            start,
            end: start.saturating_add(u32::try_from(len).unwrap_or(u32::MAX)),
        }
    }

    /// This span moved `by` bytes further (its text was appended after `by` others).
    pub fn shifted(self, by: usize) -> Span {
        let by = u32::try_from(by).unwrap_or(u32::MAX);
        Span {
            start: self.start.saturating_add(by),
            end: self.end.saturating_add(by),
        }
    }

    /// Its byte range (check it against the text first, as [`Span::of`] does).
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// No bytes.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// Its bytes of `text` ("" when it is not a span of `text`: never a panic).
    pub fn of(self, text: &str) -> &str {
        text.get(self.range()).unwrap_or("")
    }
}

/// Labels for the RED metrics a record feeds. Every value is from a bounded set (a known method or
/// operation name, else `_OTHER`; never a path or a query text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Red {
    /// `http_{server,client}_request_duration_seconds{http_request_method, http_response_status_code,
    /// error_type}`; status 0 when no response came (the label is empty then), and the error type
    /// empty unless no response came and the wait had an end ([`Unanswered`]).
    Http {
        method: &'static str,
        status: u16,
        error: &'static str,
    },
    /// `dns_lookup_duration_seconds{error_type}`: the response code's name unless NOERROR (or
    /// [`Unanswered`]).
    Dns { error: &'static str },
    /// `db_client_operation_duration_seconds{db_system_name, db_operation_name, error_type}`:
    /// the SQLSTATE or Redis error prefix of a failed operation ([`error_type`]; or
    /// [`Unanswered`]), else empty.
    Db {
        system: &'static str,
        operation: &'static str,
        error: &'static str,
    },
}

impl Red {
    /// The `error_type` label.
    pub fn error(&self) -> &'static str {
        match self {
            Red::Http { error, .. } | Red::Dns { error } | Red::Db { error, .. } => error,
        }
    }
}

/// `http GET 200`, `dns NXDOMAIN`, `db postgresql SELECT 42P01`: the series an observation goes
/// to, in words (the error type only when there is one).
impl std::fmt::Display for Red {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = match self {
            Red::Http {
                method,
                status,
                error,
            } => {
                write!(f, "http {method} {status}")?;
                error
            }
            Red::Dns { error } => {
                f.write_str("dns")?;
                error
            }
            Red::Db {
                system,
                operation,
                error,
            } => {
                write!(f, "db {system} {operation}")?;
                error
            }
        };
        if error.is_empty() {
            Ok(())
        } else {
            write!(f, " {error}")
        }
    }
}

/// One request with its response (or without, when it timed out or the connection closed).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Monotonic timestamp (ns) of the request's first byte.
    pub request_ns: u64,
    /// Response's last byte minus `request_ns`; None without a response.
    pub latency_ns: Option<u64>,
    /// Values in the order of [`Kind::columns`].
    pub fields: Vec<Field>,
    /// The strings of the [`Field::Text`] fields (empty when there are none).
    pub text: String,
    /// Its RED labels; for a request without response whose wait had a real end, the error type
    /// says how it ended (see [`Record::unanswered`]).
    pub red: Red,
}

/// Why a request got no response, when its wait had a real end. Such a request is an error of
/// its RED series (OpenTelemetry: no status code, `error.type` says why), observed with the
/// time it waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// It waited past its protocol's [`Kind::answer_timeout`].
    Timeout,
    /// The connection closed while it waited (a client that gave up, a server that hung up).
    Closed,
}

impl Unanswered {
    /// How requests still waiting at a [`ConnParser::expire`] to `deadline_ns` ended.
    pub fn at(deadline_ns: u64) -> Unanswered {
        if deadline_ns == u64::MAX {
            Unanswered::Closed
        } else {
            Unanswered::Timeout
        }
    }

    /// The end an `error_type` label value says a request without response had, if any.
    pub fn of_error_type(error: &str) -> Option<Unanswered> {
        match error {
            error_type::TIMEOUT => Some(Unanswered::Timeout),
            error_type::CONNECTION_CLOSED => Some(Unanswered::Closed),
            _ => None,
        }
    }

    /// The `error_type` label value.
    pub fn error_type(self) -> &'static str {
        match self {
            Unanswered::Timeout => error_type::TIMEOUT,
            Unanswered::Closed => error_type::CONNECTION_CLOSED,
        }
    }
}

impl Record {
    /// How the wait of a request without response ended, when it had a real end (see
    /// [`Unanswered`]). None for an answered request, and for one whose answer may be in bytes
    /// the capture lost, or that was pushed out of a full queue: nothing is known of its end.
    /// (Kept in the error type of [`Record::red`]: a field of its own made every record larger
    /// than what is moved without a `memcpy` call.)
    pub fn unanswered(&self) -> Option<Unanswered> {
        if self.latency_ns.is_some() {
            return None;
        }
        Unanswered::of_error_type(self.red.error())
    }

    /// Says how the wait of this record, one without response, ended (nothing when `ended` is
    /// None).
    pub fn set_unanswered(&mut self, ended: Option<Unanswered>) {
        if let Some(end) = ended
            && self.latency_ns.is_none()
        {
            match &mut self.red {
                Red::Http { error, .. } | Red::Dns { error } | Red::Db { error, .. } => {
                    *error = end.error_type();
                }
            }
        }
    }

    /// The string of a string field of this record (None for a field of another type).
    pub fn str_of<'a>(&'a self, field: &'a Field) -> Option<&'a str> {
        match field {
            Field::String(s) => Some(s),
            Field::Text(span) => Some(span.of(&self.text)),
            _ => None,
        }
    }
}

/// A frame that could not be parsed. The runtime counts these per protocol and reason; they are
/// never fatal (the parser resynchronises or gives up on the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol}: {reason}")]
pub struct ParseError {
    pub protocol: &'static str,
    /// Bounded reason, usable as a metric label (e.g. "bad_request_line", "frame_too_large").
    pub reason: &'static str,
}

impl ParseError {
    pub const fn new(protocol: &'static str, reason: &'static str) -> ParseError {
        ParseError { protocol, reason }
    }
}

/// Per-connection parser state of one protocol.
pub trait ConnParser: Send {
    /// Bytes of one syscall, in order within each direction (TCP: any chunking; UDP: one datagram).
    /// Completed records are pushed to `out`.
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError>;
    /// Some bytes of this direction were lost (truncated capture or dropped events): resynchronise.
    fn gap(&mut self, dir: Direction, lost_bytes: u64);
    /// [`gap`](Self::gap) for the bytes of a syscall at `ts_ns` that were not captured (sendfile,
    /// a data event without data): a parser that dates a message by its last bytes (HTTP) dates
    /// one that this gap ends by this syscall.
    fn gap_at(&mut self, dir: Direction, lost_bytes: u64, ts_ns: u64) {
        let _ = ts_ns;
        self.gap(dir, lost_bytes);
    }
    /// Emits requests older than `deadline_ns` (monotonic) as records without response; on close the
    /// runtime calls it with `u64::MAX`. Those whose wait it ends get [`Record::unanswered`]
    /// ([`Unanswered::at`]), unless their answers may have been in bytes lost meanwhile (the
    /// answers' stream is out of sync, or requests were lost before them).
    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>);
}

/// Every protocol Sonde parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Http,
    Dns,
    Pgsql,
    Mysql,
    Redis,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Http, Kind::Dns, Kind::Pgsql, Kind::Mysql, Kind::Redis];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Dns => "dns",
            Kind::Pgsql => "pgsql",
            Kind::Mysql => "mysql",
            Kind::Redis => "redis",
        }
    }

    /// How long a request waits for its answer before it is written without one. A resolver
    /// gives up on a DNS query within seconds; an HTTP or database request may take minutes
    /// (long polls, reports, blocking pops) and is then the one worth seeing, with its latency.
    /// Memory stays bounded by each stitcher's queue cap, not by this.
    pub fn answer_timeout(self) -> std::time::Duration {
        match self {
            Kind::Dns => std::time::Duration::from_secs(10),
            Kind::Http | Kind::Pgsql | Kind::Mysql | Kind::Redis => {
                std::time::Duration::from_secs(300)
            }
        }
    }

    /// Table the records go to (Pixie's names).
    pub fn table(self) -> &'static str {
        match self {
            Kind::Http => "http_events",
            Kind::Dns => "dns_events",
            Kind::Pgsql => "pgsql_events",
            Kind::Mysql => "mysql_events",
            Kind::Redis => "redis_events",
        }
    }

    /// The protocol's own columns (Pixie's names where Pixie has them).
    pub fn columns(self) -> &'static [ColumnDef] {
        match self {
            Kind::Http => http::COLUMNS,
            Kind::Dns => dns::COLUMNS,
            Kind::Pgsql => pgsql::COLUMNS,
            Kind::Mysql => mysql::COLUMNS,
            Kind::Redis => redis::COLUMNS,
        }
    }

    /// Does `data`, the first bytes seen on a connection in direction `dir`, look like this protocol?
    /// `remote_port` is a hint (e.g. 53, 5432, 3306, 6379) for protocols whose first bytes are weak.
    pub fn detect(self, dir: Direction, data: &[u8], remote_port: u16) -> bool {
        match self {
            Kind::Http => http::detect(dir, data, remote_port),
            Kind::Dns => dns::detect(dir, data, remote_port),
            Kind::Pgsql => pgsql::detect(dir, data, remote_port),
            Kind::Mysql => mysql::detect(dir, data, remote_port),
            Kind::Redis => redis::detect(dir, data, remote_port),
        }
    }

    /// A parser for one connection.
    pub fn parser(
        self,
        role: Role,
        transport: Transport,
        config: &ParseConfig,
    ) -> Box<dyn ConnParser> {
        match self {
            Kind::Http => Box::new(http::Parser::new(role, config)),
            Kind::Dns => Box::new(dns::Parser::new(role, transport, config)),
            Kind::Pgsql => Box::new(pgsql::Parser::new(role, config)),
            Kind::Mysql => Box::new(mysql::Parser::new(role, config)),
            Kind::Redis => Box::new(redis::Parser::new(role, config)),
        }
    }

    /// The first of `enabled` that recognises `data`.
    pub fn detect_any(
        enabled: &[Kind],
        dir: Direction,
        data: &[u8],
        remote_port: u16,
    ) -> Option<Kind> {
        enabled
            .iter()
            .copied()
            .find(|k| k.detect(dir, data, remote_port))
    }
}
