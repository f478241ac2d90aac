//! Requests ↔ responses of one PostgreSQL connection.
//!
//! A request unit is a simple Query, an extended-protocol batch closed by Sync, a FunctionCall, or
//! the startup exchange (StartupMessage plus password messages). The server answers each unit
//! with messages ending in ReadyForQuery, in order; SSLRequest is answered by one byte.
use std::collections::{HashMap, VecDeque};

use super::backend::Backend;
use super::frontend::Frontend;
use crate::sql::{self, Dialect};
use crate::{Field, ParseConfig, REDACTED, Record, Red};

/// Prepared statements remembered per connection (name → text); more are forgotten.
const MAX_STATEMENTS: usize = 256;
/// Request units awaiting an answer; beyond this the oldest are given up.
const MAX_PENDING: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Messages up to ReadyForQuery.
    ReadyForQuery,
    /// One byte ('S', 'N' or 'G').
    EncryptionByte,
}

#[derive(Debug)]
struct Unit {
    cmd: &'static str,
    text: Option<String>,
    params: Option<String>,
    password: Option<String>,
    start_ns: u64,
    answer: Answer,
    operation: &'static str,
}

/// What the server said so far for the unit at the head of the queue.
#[derive(Debug, Default)]
struct Answered {
    tags: Vec<String>,
    error: Option<String>,
    names: Vec<&'static str>,
    rows: i64,
    authenticated: bool,
    /// Bytes of this answer were not captured: its rows were not all seen.
    cut: bool,
}

/// An extended-protocol batch being assembled until its Sync.
#[derive(Debug, Default)]
struct Batch {
    start_ns: u64,
    text: Option<String>,
    params: Option<String>,
    parse: bool,
    bind: bool,
    describe: bool,
    execute: bool,
    close: bool,
}

pub(super) struct Stitcher {
    pending: VecDeque<Unit>,
    answered: Answered,
    batch: Option<Batch>,
    statements: HashMap<String, (String, Vec<u32>)>,
    /// Units whose answers can no longer be matched (bytes were lost); emitted without response.
    orphans: Vec<Unit>,
    redact: bool,
    text_cap: usize,
}

impl Stitcher {
    pub fn new(config: &ParseConfig) -> Stitcher {
        Stitcher {
            pending: VecDeque::new(),
            answered: Answered::default(),
            batch: None,
            statements: HashMap::new(),
            orphans: Vec::new(),
            redact: config.redact,
            text_cap: config.max_body_bytes,
        }
    }

    fn push(&mut self, unit: Unit) {
        if self.pending.len() >= MAX_PENDING
            && let Some(old) = self.pending.pop_front()
        {
            self.orphans.push(old);
            self.answered = Answered::default();
        }
        self.pending.push_back(unit);
    }

    fn unit(&self, cmd: &'static str, text: Option<String>, start_ns: u64) -> Unit {
        let operation = match (cmd, &text) {
            ("Query" | "Execute", Some(t)) => sql::operation(t),
            ("Parse" | "Describe", _) => "PREPARE",
            _ => sql::OTHER,
        };
        Unit {
            cmd,
            text: text.map(|t| sql::shown(t, Dialect::Postgres, self.redact, self.text_cap)),
            params: None,
            password: None,
            start_ns,
            answer: Answer::ReadyForQuery,
            operation,
        }
    }

    pub fn request(&mut self, msg: Frontend, start_ns: u64) {
        match msg {
            Frontend::Startup(params) => {
                let text = params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let unit = self.unit("StartupMessage", Some(text), start_ns);
                self.push(unit);
            }
            Frontend::EncryptionRequest => {
                let mut unit = self.unit("SSLRequest", None, start_ns);
                unit.answer = Answer::EncryptionByte;
                self.push(unit);
            }
            Frontend::Query(q) => {
                let unit = self.unit("Query", Some(q), start_ns);
                self.push(unit);
            }
            Frontend::FunctionCall => {
                let unit = self.unit("FunctionCall", None, start_ns);
                self.push(unit);
            }
            Frontend::Password(secret) => {
                let shown = if self.redact {
                    REDACTED.to_string()
                } else {
                    printable(&secret)
                };
                if let Some(unit) = self
                    .pending
                    .back_mut()
                    .filter(|u| u.cmd == "StartupMessage")
                {
                    unit.password = Some(shown);
                }
            }
            Frontend::Parse {
                name,
                query,
                param_types,
            } => {
                let batch = self.batch.get_or_insert_with(|| Batch {
                    start_ns,
                    ..Batch::default()
                });
                batch.parse = true;
                batch.text.get_or_insert_with(|| query.clone());
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.clear();
                }
                self.statements.insert(name, (query, param_types));
            }
            Frontend::Bind {
                statement,
                formats,
                params,
                truncated,
            } => {
                let known = self.statements.get(&statement);
                let rendered = render_params(
                    &params,
                    &formats,
                    known.map_or(&[][..], |(_, t)| t),
                    truncated,
                    self.text_cap,
                );
                let text = known.map(|(t, _)| t.clone());
                let batch = self.batch.get_or_insert_with(|| Batch {
                    start_ns,
                    ..Batch::default()
                });
                batch.bind = true;
                if batch.text.is_none() {
                    batch.text = text;
                }
                batch.params = Some(rendered);
            }
            Frontend::Describe { .. } | Frontend::Execute | Frontend::Close { .. } => {
                let named = match &msg {
                    Frontend::Describe { statement } | Frontend::Close { statement } => statement
                        .as_ref()
                        .and_then(|n| self.statements.get(n))
                        .map(|(t, _)| t.clone()),
                    _ => None,
                };
                let batch = self.batch.get_or_insert_with(|| Batch {
                    start_ns,
                    ..Batch::default()
                });
                if batch.text.is_none() {
                    batch.text = named;
                }
                match msg {
                    Frontend::Describe { .. } => batch.describe = true,
                    Frontend::Execute => batch.execute = true,
                    Frontend::Close { statement } => {
                        batch.close = true;
                        if let Some(name) = statement {
                            self.statements.remove(&name);
                        }
                    }
                    _ => {}
                }
            }
            Frontend::Sync => {
                let batch = self.batch.take().unwrap_or(Batch {
                    start_ns,
                    ..Batch::default()
                });
                let cmd = if batch.execute {
                    "Execute"
                } else if batch.bind {
                    "Bind"
                } else if batch.describe {
                    "Describe"
                } else if batch.parse {
                    "Parse"
                } else if batch.close {
                    "Close"
                } else {
                    "Sync"
                };
                let mut unit = self.unit(cmd, batch.text, batch.start_ns);
                unit.params = batch.params;
                self.push(unit);
            }
            Frontend::Flush | Frontend::Terminate | Frontend::Cancel | Frontend::Copy => {}
        }
    }

    pub fn awaits_encryption_answer(&self) -> bool {
        self.pending
            .front()
            .is_some_and(|u| u.answer == Answer::EncryptionByte)
    }

    /// The one-byte answer to SSLRequest came: no record, the startup follows.
    pub fn encryption_answered(&mut self) {
        self.pending.pop_front();
    }

    pub fn response(&mut self, msg: Backend, end_ns: u64, out: &mut Vec<Record>) {
        if self.pending.is_empty() {
            return;
        }
        let a = &mut self.answered;
        match msg {
            Backend::ReadyForQuery => self.complete(end_ns, out),
            Backend::Error { text, fatal } => {
                a.error.get_or_insert(text);
                if fatal {
                    self.complete(end_ns, out);
                }
            }
            Backend::CommandComplete(tag) => a.tags.push(tag),
            Backend::DataRow => a.rows += 1,
            Backend::EmptyQuery => a.tags.push("EMPTY QUERY".into()),
            Backend::AuthenticationOk => a.authenticated = true,
            Backend::Named(name) => {
                if !a.names.contains(&name) {
                    a.names.push(name);
                }
            }
            Backend::AuthenticationStep | Backend::Ignored => {}
        }
    }

    fn complete(&mut self, end_ns: u64, out: &mut Vec<Record>) {
        let answered = std::mem::take(&mut self.answered);
        if let Some(unit) = self.pending.pop_front() {
            let latency = end_ns.saturating_sub(unit.start_ns);
            out.push(record(unit, Some((latency, answered))));
        }
    }

    /// Bytes of the answer under way were not captured (a client reading more at once than is
    /// captured of a syscall): the server's stream is followed again where an answer ends or
    /// whole messages start, see [`Stitcher::resumed`].
    pub fn answer_cut(&mut self) {
        if !self.pending.is_empty() {
            self.answered.cut = true;
        }
    }

    /// The server's stream is followed again after lost bytes (see [`crate::keep_newest`]);
    /// `fresh`: at an answer's first message.
    pub fn resumed(&mut self, fresh: bool) {
        if crate::keep_newest(&mut self.pending, &mut self.orphans) {
            self.answered = Answered {
                cut: !fresh,
                ..Answered::default()
            };
        }
    }

    /// Bytes were lost: what is pending can no longer be matched reliably.
    pub fn lost(&mut self) {
        self.orphans.extend(self.pending.drain(..));
        self.answered = Answered::default();
        self.batch = None;
    }

    pub fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        for unit in self.orphans.drain(..) {
            out.push(record(unit, None));
        }
        while self
            .pending
            .front()
            .is_some_and(|u| u.start_ns < deadline_ns)
        {
            if let Some(unit) = self.pending.pop_front() {
                self.answered = Answered::default();
                out.push(record(unit, None));
            }
        }
    }
}

fn record(unit: Unit, answer: Option<(u64, Answered)>) -> Record {
    let (latency_ns, resp, rows) = match answer {
        Some((latency, a)) => {
            let resp = if let Some(e) = a.error {
                e
            } else if !a.tags.is_empty() {
                a.tags.join("; ")
            } else if a.authenticated {
                "AuthenticationOk".into()
            } else {
                a.names.join(", ")
            };
            // The count the server gives (`SELECT 20000`) stands in for rows not all seen.
            let rows = match a.tags.last().and_then(|t| tag_rows(t)) {
                Some(n) if a.cut => Field::Int64(n),
                _ if a.cut => Field::Null,
                _ => Field::Int64(a.rows),
            };
            (Some(latency), Field::String(resp), rows)
        }
        None => (None, Field::Null, Field::Null),
    };
    let req = match (unit.text, unit.password) {
        (Some(t), Some(p)) => Some(format!("{t} password={p}")),
        (t, None) => t,
        (None, Some(p)) => Some(format!("password={p}")),
    };
    Record {
        request_ns: unit.start_ns,
        latency_ns,
        fields: vec![
            Field::String(unit.cmd.to_string()),
            req.map_or(Field::Null, Field::String),
            unit.params.map_or(Field::Null, Field::String),
            resp,
            rows,
        ],
        text: String::new(),
        red: Red::Db {
            system: "postgresql",
            operation: unit.operation,
        },
    }
}

/// Rows a command tag says were returned: `SELECT n`, `FETCH n`.
fn tag_rows(tag: &str) -> Option<i64> {
    let (command, n) = tag.split_once(' ')?;
    matches!(command, "SELECT" | "FETCH")
        .then(|| n.parse().ok())
        .flatten()
}

/// `$1='7', $2=NULL, $3=42` — text values quoted, binary integers decoded, other binary in hex.
fn render_params(
    params: &[Option<Vec<u8>>],
    formats: &[i16],
    types: &[u32],
    truncated: bool,
    cap: usize,
) -> String {
    let mut out = String::new();
    for (i, value) in params.iter().enumerate() {
        if !out.is_empty() {
            out.push_str(", ");
        }
        // One format code applies to all; otherwise one per parameter.
        let format = match formats {
            [] => 0,
            [f] => *f,
            fs => fs.get(i).copied().unwrap_or(0),
        };
        let rendered = match value {
            None => "NULL".to_string(),
            Some(v) if format == 0 => format!("'{}'", String::from_utf8_lossy(v)),
            Some(v) => binary(v, types.get(i).copied()),
        };
        out.push_str(&format!("${}={rendered}", i + 1));
        if out.len() > cap {
            break;
        }
    }
    if truncated {
        out.push_str(", …");
    }
    cut(out, cap)
}

fn binary(v: &[u8], oid: Option<u32>) -> String {
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    match (oid, v.len()) {
        (Some(INT2), 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
        (Some(INT4), 4) => i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (Some(INT8), 8) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            i64::from_be_bytes(b).to_string()
        }
        _ => {
            let hex: String = v.iter().take(32).map(|b| format!("{b:02x}")).collect();
            let more = if v.len() > 32 { "…" } else { "" };
            format!("\\x{hex}{more}")
        }
    }
}

/// A secret shown because redaction is off: text as is, anything binary summarised.
fn printable(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    match std::str::from_utf8(trimmed) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

/// At most `cap` bytes, cut on a character boundary.
fn cut(mut s: String, cap: usize) -> String {
    crate::truncate_at_char(&mut s, cap);
    s
}
