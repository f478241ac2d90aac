//! Requests ↔ responses of one PostgreSQL connection.
//!
//! A request unit is a simple Query, an extended-protocol batch closed by Sync, a FunctionCall, or
//! the startup exchange (StartupMessage plus password messages). The server answers each unit
//! with messages ending in ReadyForQuery, in order; SSLRequest is answered by one byte.
//!
//! A batch that executes statements (a pipeline: pgx's `SendBatch`, JDBC batches, psycopg's
//! pipeline mode) makes one record per Execute, each with its own statement, parameters and
//! result, answered by the CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse
//! that ends it; after an error the server skips the rest up to the Sync, and so do the records.
//! A batch is a unit from its first message on, so a server that answers a long pipeline while
//! reading it (PostgreSQL reads 8 KiB at a time) pairs those answers before the Sync is seen; a
//! client's write cut by the capture keeps the statements seen before the cut, answered first.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::backend::Backend;
use super::frontend::Frontend;
use super::values::render_params;
use crate::secret::shapes;
use crate::sql::{self, Dialect};
use crate::{Field, ParseConfig, REDACTED, Record, Red, Unanswered};

/// Prepared statements (and portals) remembered per connection; more are forgotten.
const MAX_STATEMENTS: usize = 256;
/// Request units awaiting an answer; beyond this the oldest are given up.
const MAX_PENDING: usize = 1024;
/// Executes of one batch given records of their own; the answers to more are passed over.
const MAX_STEPS: usize = 16_384;
/// The answer of a batch's Execute that the server skipped after an earlier error.
const NOT_EXECUTED: &str = "not executed: an earlier message of the batch failed";

/// What a batch's Execute ran, as shown: statement text, parameters, operation label.
#[derive(Clone, Debug)]
struct Step {
    text: Option<Arc<str>>,
    params: Option<String>,
    operation: &'static str,
}

/// A prepared statement: its text as shown and its parameter types (0: unspecified, until the
/// server's ParameterDescription names it).
#[derive(Debug)]
struct Prepared {
    text: Arc<str>,
    operation: &'static str,
    types: Vec<u32>,
    /// Parameters bound to a credential (`$n`), whose values are redacted.
    secret_params: Vec<u32>,
}

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
    /// A batch that executes statements: their records, in the order they are answered.
    steps: Option<Steps>,
    /// Statements described in this unit, whose ParameterDescriptions come in this order.
    described: VecDeque<String>,
    /// An extended-protocol batch whose Sync has not come yet: the server answers its messages as
    /// they come (a pipeline longer than its input buffer is answered in part before the Sync).
    open: bool,
}

#[derive(Debug, Default)]
struct Steps {
    waiting: VecDeque<Step>,
    /// Executes beyond [`MAX_STEPS`]: their answers are passed over.
    passed_over: usize,
    /// An ErrorResponse ended a step: the server skips the rest.
    failed: bool,
    /// Answers were lost inside this batch: those seen since are matched from its end, once its
    /// ReadyForQuery says where that is.
    late: Option<VecDeque<(u64, Answered)>>,
    /// The client's bytes were lost after these steps: how many more it sent is unknown, and so
    /// are the answers after theirs.
    requests_cut: bool,
}

/// What the server said so far for the unit (or step) at the head of the queue.
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
    text: Option<Arc<str>>,
    operation: Option<&'static str>,
    params: Option<String>,
    parse: bool,
    bind: bool,
    describe: bool,
    close: bool,
}

impl Batch {
    fn statement(&mut self, prepared: Option<&Prepared>) {
        if self.text.is_none()
            && let Some(p) = prepared
        {
            self.text = Some(p.text.clone());
            self.operation = Some(p.operation);
        }
    }
}

pub(super) struct Stitcher {
    pending: VecDeque<Unit>,
    answered: Answered,
    batch: Option<Batch>,
    statements: HashMap<String, Prepared>,
    /// Bound portals by name: what an Execute of each runs.
    portals: HashMap<String, Step>,
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
            portals: HashMap::new(),
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

    /// A statement's text as records show it (redacted, cut), its operation label, and the
    /// parameters bound to a credential.
    fn shown(&self, text: String) -> (String, &'static str, Vec<u32>) {
        let operation = sql::operation(&text);
        let (text, secret_params) =
            sql::shown_with_params(text, Dialect::Postgres, self.redact, self.text_cap);
        (text, operation, secret_params)
    }

    /// `text` (no statement: a startup's parameters, an error message) with its tokens redacted
    /// when configured.
    fn without_tokens(&self, text: String) -> String {
        if self.redact {
            shapes::redacted(&text, false).unwrap_or(text)
        } else {
            text
        }
    }

    fn unit(&self, cmd: &'static str, text: Option<String>, start_ns: u64) -> Unit {
        let (text, operation) = match text {
            Some(t) if cmd == "Query" => {
                let (shown, operation, _) = self.shown(t);
                (Some(shown), operation)
            }
            t => (t, sql::OTHER),
        };
        Unit {
            cmd,
            text,
            params: None,
            password: None,
            start_ns,
            answer: Answer::ReadyForQuery,
            operation,
            steps: None,
            described: VecDeque::new(),
            open: false,
        }
    }

    /// The batch under way, and its unit, open until its Sync.
    fn batch(&mut self, start_ns: u64) -> &mut Batch {
        let start_ns = self.batch.as_ref().map_or(start_ns, |b| b.start_ns);
        if !self.pending.back().is_some_and(|u| u.open) {
            let mut unit = self.unit("Sync", None, start_ns);
            unit.open = true;
            self.push(unit);
        }
        self.batch.get_or_insert_with(|| Batch {
            start_ns,
            ..Batch::default()
        })
    }

    /// The unit of the batch under way (see [`Stitcher::batch`]).
    fn open_unit(&mut self) -> Option<&mut Unit> {
        self.pending.back_mut().filter(|u| u.open)
    }

    pub fn request(&mut self, msg: Frontend, start_ns: u64, out: &mut Vec<Record>) {
        match msg {
            Frontend::Startup(params) => {
                let text = params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let text = self.without_tokens(text);
                let unit = self.unit(
                    "StartupMessage",
                    Some(crate::cut(text, self.text_cap)),
                    start_ns,
                );
                self.push(unit);
            }
            Frontend::Cancel { pid } => {
                // Sent on a connection of its own, which the server closes without an answer: a
                // record as it is sent, counted in no RED series (it has no duration).
                let unit = self.unit("CancelRequest", Some(format!("pid={pid}")), start_ns);
                out.push(record(unit, None, None));
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
                let (text, operation, secret_params) = self.shown(query);
                let prepared = Prepared {
                    text: text.into(),
                    operation,
                    types: param_types,
                    secret_params,
                };
                let batch = self.batch(start_ns);
                batch.parse = true;
                batch.statement(Some(&prepared));
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.clear();
                }
                self.statements.insert(name, prepared);
            }
            Frontend::Bind {
                portal,
                statement,
                formats,
                params,
                truncated,
            } => {
                self.batch(start_ns);
                let known = self.statements.get(&statement);
                let rendered = (!params.is_empty() || truncated).then(|| {
                    render_params(
                        &params,
                        &formats,
                        known.map_or(&[][..], |p| &p.types),
                        known.map_or(&[][..], |p| &p.secret_params),
                        self.redact,
                        truncated,
                        self.text_cap,
                    )
                });
                let step = Step {
                    text: known.map(|p| p.text.clone()),
                    params: rendered.clone(),
                    operation: known.map_or(sql::OTHER, |p| p.operation),
                };
                if let Some(batch) = self.batch.as_mut() {
                    batch.bind = true;
                    batch.statement(known);
                    batch.params = rendered;
                }
                if self.portals.len() >= MAX_STATEMENTS {
                    self.portals.clear();
                }
                self.portals.insert(portal, step);
            }
            Frontend::Execute { portal } => {
                let step = self.portals.get(&portal).cloned();
                let batch = self.batch(start_ns);
                let step = step.unwrap_or_else(|| Step {
                    text: batch.text.clone(),
                    params: None,
                    operation: batch.operation.unwrap_or(sql::OTHER),
                });
                if let Some(unit) = self.open_unit() {
                    let steps = unit.steps.get_or_insert_with(Steps::default);
                    // Answers come in order: once one step is passed over, so are the later ones.
                    if steps.passed_over == 0 && steps.waiting.len() < MAX_STEPS {
                        steps.waiting.push_back(step);
                    } else {
                        steps.passed_over += 1;
                    }
                }
            }
            Frontend::Describe { statement } => {
                self.batch(start_ns);
                let prepared = statement.as_ref().and_then(|n| self.statements.get(n));
                if let Some(batch) = self.batch.as_mut() {
                    batch.describe = true;
                    batch.statement(prepared);
                }
                if let Some(name) = statement
                    && let Some(unit) = self.open_unit()
                {
                    unit.described.push_back(name);
                }
            }
            Frontend::Close { statement } => {
                let prepared = statement.as_ref().and_then(|n| self.statements.get(n));
                let text = prepared.map(|p| p.text.clone());
                let batch = self.batch(start_ns);
                if batch.text.is_none() {
                    batch.text = text;
                }
                batch.close = true;
                if let Some(name) = statement {
                    self.statements.remove(&name);
                }
            }
            Frontend::Sync => {
                let batch = self.batch.take().unwrap_or(Batch {
                    start_ns,
                    ..Batch::default()
                });
                let open = self.open_unit();
                let executes = open.as_ref().is_some_and(|u| u.steps.is_some());
                let cmd = if executes {
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
                let operation = match cmd {
                    "Parse" | "Describe" => "PREPARE",
                    _ => sql::OTHER,
                };
                let text = batch.text.map(|t| t.to_string());
                match open {
                    Some(unit) => {
                        unit.cmd = cmd;
                        unit.text = text;
                        unit.operation = operation;
                        unit.params = batch.params;
                        unit.open = false;
                    }
                    None => {
                        let mut unit = self.unit(cmd, text, batch.start_ns);
                        unit.operation = operation;
                        unit.params = batch.params;
                        self.push(unit);
                    }
                }
            }
            Frontend::Flush | Frontend::Terminate | Frontend::Copy => {}
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
                if self.answered.error.is_none() {
                    // A message may quote a value (`Key (token)=(…) already exists`).
                    let text = self.without_tokens(text);
                    self.answered.error = Some(text);
                }
                if let Some(steps) = self.pending.front_mut().and_then(|u| u.steps.as_mut()) {
                    steps.failed = true;
                }
                self.step_done(end_ns, out);
                if fatal {
                    self.complete(end_ns, out);
                }
            }
            Backend::CommandComplete(tag) => {
                a.tags.push(tag);
                self.step_done(end_ns, out);
            }
            Backend::EmptyQuery => {
                a.tags.push("EMPTY QUERY".into());
                self.step_done(end_ns, out);
            }
            Backend::PortalSuspended => {
                a.tags.push("PortalSuspended".into());
                self.step_done(end_ns, out);
            }
            Backend::DataRow => a.rows += 1,
            Backend::AuthenticationOk => a.authenticated = true,
            Backend::ParameterDescription(types) => {
                a.name("ParameterDescription");
                // Drivers that leave types to the server (pgx, most) bind binary values of the
                // types it names here: decoded by them from now on.
                let described = self
                    .pending
                    .front_mut()
                    .and_then(|u| u.described.pop_front());
                if let Some(name) = described
                    && let Some(p) = self.statements.get_mut(&name)
                {
                    p.types.resize(types.len().max(p.types.len()), 0);
                    for (known, told) in p.types.iter_mut().zip(types) {
                        if *known == 0 {
                            *known = told;
                        }
                    }
                }
            }
            Backend::Named(name) => a.name(name),
            Backend::AuthenticationStep | Backend::Ignored => {}
        }
    }

    /// The answer to a batch's step under way ended: its record, unless the batch's answers are
    /// matched from its end.
    fn step_done(&mut self, end_ns: u64, out: &mut Vec<Record>) {
        let Some(unit) = self.pending.front_mut() else {
            return;
        };
        let Some(steps) = &mut unit.steps else {
            return;
        };
        if let Some(late) = &mut steps.late {
            late.push_back((end_ns, std::mem::take(&mut self.answered)));
            // Only the last ones can be placed, one per step waiting.
            if late.len() > steps.waiting.len() {
                late.pop_front();
            }
            return;
        }
        if steps.requests_cut && steps.waiting.is_empty() {
            self.answered = Answered::default();
            return;
        }
        // The last step's answer ends with the batch's ReadyForQuery, what the client waits for
        // (a batch of one Execute is timed as a whole, as every other unit).
        if !unit.open && steps.waiting.len() == 1 && steps.passed_over == 0 && !steps.requests_cut {
            return;
        }
        let answered = std::mem::take(&mut self.answered);
        if let Some(step) = steps.waiting.pop_front() {
            let latency = end_ns.saturating_sub(unit.start_ns);
            out.push(step_record(unit, step, Some(latency), Some(answered)));
        } else {
            steps.passed_over = steps.passed_over.saturating_sub(1);
        }
    }

    fn complete(&mut self, end_ns: u64, out: &mut Vec<Record>) {
        let answered = std::mem::take(&mut self.answered);
        let Some(mut unit) = self.pending.pop_front() else {
            return;
        };
        let latency = end_ns.saturating_sub(unit.start_ns);
        let Some(steps) = unit.steps.take() else {
            out.push(record(unit, Some(latency), Some(answered)));
            return;
        };
        let Steps {
            mut waiting,
            failed,
            late,
            ..
        } = steps;
        if let Some(late) = late {
            // Answers seen after the loss are those of the last steps.
            let answered_late = late.len().min(waiting.len());
            let unanswered = waiting.len() - answered_late;
            for step in waiting.drain(..unanswered) {
                out.push(step_record(&unit, step, None, None));
            }
            let skip = late.len() - answered_late;
            for (step, (end, a)) in waiting.drain(..).zip(late.into_iter().skip(skip)) {
                let latency = end.saturating_sub(unit.start_ns);
                out.push(step_record(&unit, step, Some(latency), Some(a)));
            }
            return;
        }
        // The step under way has what was answered since the last step ended; after an error the
        // server skips every message up to the Sync; otherwise the answers of the others were lost.
        let mut under_way = Some(answered).filter(|a| a.error.is_some() || !a.tags.is_empty());
        for step in waiting {
            let record = match under_way.take() {
                Some(a) => step_record(&unit, step, Some(latency), Some(a)),
                // Never run: no duration to count.
                None if failed => {
                    let skipped = Answered {
                        error: Some(NOT_EXECUTED.into()),
                        ..Answered::default()
                    };
                    step_record(&unit, step, None, Some(skipped))
                }
                None => step_record(&unit, step, None, None),
            };
            out.push(record);
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
        let older = crate::keep_newest(&mut self.pending, &mut self.orphans);
        let stepped = match self.pending.front_mut().and_then(|u| u.steps.as_mut()) {
            Some(steps) => {
                // Which of a batch's steps the answers lost belonged to is unknown: what follows is
                // placed from the batch's end, and what was placed so after an earlier loss
                // cannot be placed at all.
                steps.late = Some(VecDeque::new());
                true
            }
            None => false,
        };
        if older || stepped {
            self.answered = Answered {
                cut: !fresh,
                ..Answered::default()
            };
        }
    }

    /// Bytes the client sent were lost. What it sent before is answered first, in order, as ever;
    /// the batch under way keeps the steps seen, whose answers come first too; what follows is
    /// unknown, up to the batch's ReadyForQuery.
    pub fn requests_cut(&mut self) {
        self.batch = None;
        if let Some(unit) = self.open_unit() {
            unit.open = false;
            match &mut unit.steps {
                Some(steps) => {
                    unit.cmd = "Execute";
                    steps.requests_cut = true;
                }
                None => unit.cmd = "Sync",
            }
        }
    }

    /// Bytes were lost: what is pending can no longer be matched reliably.
    pub fn lost(&mut self) {
        self.orphans.extend(self.pending.drain(..));
        self.answered = Answered::default();
        self.batch = None;
    }

    /// Writes the orphans, and the units older than `deadline_ns` unanswered: their wait ended
    /// then if the server's stream is followed (`in_sync`) and the answer under way lost no bytes.
    pub fn expire(&mut self, deadline_ns: u64, in_sync: bool, out: &mut Vec<Record>) {
        for unit in self.orphans.drain(..) {
            unanswered(unit, None, out);
        }
        let ended = (in_sync && !self.answered.cut).then(|| Unanswered::at(deadline_ns));
        while self
            .pending
            .front()
            .is_some_and(|u| u.start_ns < deadline_ns)
        {
            if let Some(unit) = self.pending.pop_front() {
                self.answered = Answered::default();
                unanswered(unit, ended, out);
            }
        }
    }
}

impl Answered {
    fn name(&mut self, name: &'static str) {
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }
}

/// A unit's records without answer: one per step of a batch that executes statements; `ended`:
/// how their wait ended, if it had a real end.
fn unanswered(mut unit: Unit, ended: Option<Unanswered>, out: &mut Vec<Record>) {
    let first = out.len();
    match unit.steps.take() {
        Some(steps) => {
            for step in steps.waiting {
                out.push(step_record(&unit, step, None, None));
            }
        }
        None => out.push(record(unit, None, None)),
    }
    for record in &mut out[first..] {
        record.set_unanswered(ended);
    }
}

/// The record of one Execute of a batch.
fn step_record(
    unit: &Unit,
    step: Step,
    latency_ns: Option<u64>,
    answer: Option<Answered>,
) -> Record {
    let as_unit = Unit {
        cmd: "Execute",
        text: step.text.map(|t| t.to_string()),
        params: step.params,
        password: None,
        start_ns: unit.start_ns,
        answer: Answer::ReadyForQuery,
        operation: step.operation,
        steps: None,
        described: VecDeque::new(),
        open: false,
    };
    record(as_unit, latency_ns, answer)
}

/// A unit's record: what the server answered (None: nothing, its answer was lost), and how long
/// that took (None: unknown, or the statement never ran).
fn record(unit: Unit, latency_ns: Option<u64>, answer: Option<Answered>) -> Record {
    let mut error = "";
    let (resp, rows) = match answer {
        Some(a) => {
            let resp = if let Some(e) = a.error {
                // `ERROR 42P01: relation "x" does not exist`: the SQLSTATE after the severity.
                error = e
                    .split(' ')
                    .nth(1)
                    .and_then(|code| code.strip_suffix(':'))
                    .map_or(crate::error_type::OTHER, crate::error_type::sqlstate);
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
            (Field::String(resp), rows)
        }
        None => (Field::Null, Field::Null),
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
            error,
        },
    }
}

/// Rows a command tag says were returned: `SELECT n`, `FETCH n`, `COPY n` (when cut, a COPY's
/// answer was one to the client: a COPY from it is answered by its tag alone).
fn tag_rows(tag: &str) -> Option<i64> {
    let (command, n) = tag.split_once(' ')?;
    matches!(command, "SELECT" | "FETCH" | "COPY")
        .then(|| n.parse().ok())
        .flatten()
}

/// A secret shown because redaction is off: text as is, anything binary summarised.
fn printable(bytes: &[u8]) -> String {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    match std::str::from_utf8(trimmed) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}
