//! Commands ↔ responses of one MySQL connection.
//!
//! A command is a client packet with sequence id 0; its response is the server's packets from
//! sequence id 1 on, whose shape depends on the command: one OK/ERR packet, a result set (column
//! count, column definitions, optional EOF, rows, EOF or OK; possibly several), or a prepare answer
//! (OK with counts, parameter and column definitions each with an optional EOF). COM_QUIT,
//! COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA get no response. MariaDB's Connector/J sends a
//! COM_STMT_EXECUTE or COM_STMT_BULK_EXECUTE (a batch: many rows of parameters) right after its
//! COM_STMT_PREPARE, before the answer, naming the statement -1 ("the one prepared last"): such
//! a command waits in the queue for that answer to learn its statement.
use std::collections::{HashMap, VecDeque};

use super::packet::{self, Command};
use crate::secret::shapes;
use crate::sql::{self, Dialect};
use crate::{Field, ParseConfig, REDACTED, Record, Red, Unanswered};

/// Prepared statements remembered per connection; more are forgotten.
const MAX_STATEMENTS: usize = 256;
/// Commands awaiting a response (clients rarely pipeline).
const MAX_PENDING: usize = 256;
/// The statement id MariaDB takes for "the statement prepared last on this connection".
const LAST_PREPARED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One OK, ERR (or EOF / auth switch) packet.
    Single,
    ResultSet,
    Prepare,
    /// Column definitions until EOF (COM_FIELD_LIST).
    FieldList,
    /// The handshake response: answered from sequence id 2 by OK or ERR, after any number of
    /// auth-switch and more-data packets.
    Login,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    /// Column or parameter definitions still to come.
    Definitions {
        left: u32,
        then: After,
    },
    /// Right after definitions: a legacy EOF may come.
    MaybeEof {
        then: After,
    },
    Rows,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    Rows,
    /// Prepare: then the column definitions.
    PrepareColumns(u32),
    Done,
}

struct Pending {
    cmd: u8,
    body: Option<String>,
    params: Option<String>,
    start_ns: u64,
    operation: &'static str,
    shape: Shape,
    /// Prepare: the statement, remembered under the id the OK gives.
    prepared: Option<Statement>,
    /// An execute of the statement being prepared (id -1): its payload, read once the
    /// statement's id is known.
    deferred: Option<Vec<u8>>,
}

#[derive(Default)]
struct Progress {
    started: bool,
    phase: Option<Phase>,
    rows: i64,
    status: Option<&'static str>,
    body: Option<String>,
    /// Bytes of this answer were not captured: its rows were not all seen.
    cut: bool,
    /// The server asked for a LOCAL INFILE: the client's packets are the file's content, up to
    /// an empty one; then the server's OK or ERR answers the statement.
    uploading: bool,
}

struct Statement {
    text: String,
    params: u16,
    types: Vec<(u8, bool)>,
    /// Parameters bound to a credential (`?` counted from 1), whose values are redacted.
    secret_params: Vec<u32>,
}

pub(super) struct Stitcher {
    pending: VecDeque<Pending>,
    progress: Progress,
    statements: HashMap<u32, Statement>,
    /// The id of the statement prepared last (what MariaDB's id -1 names).
    last_prepared: Option<u32>,
    orphans: Vec<Pending>,
    /// Commands sent so far, and how many had been when the server's stream was last lost.
    commands: u64,
    commands_at_loss: u64,
    /// The client asked for CLIENT_DEPRECATE_EOF (None: handshake not seen).
    deprecate_eof: Option<bool>,
    /// A result set's column count is followed by a byte saying whether its definitions follow
    /// (None: handshake not seen).
    metadata_optional: Option<bool>,
    redact: bool,
    text_cap: usize,
}

impl Stitcher {
    pub fn new(config: &ParseConfig) -> Stitcher {
        Stitcher {
            pending: VecDeque::new(),
            progress: Progress::default(),
            statements: HashMap::new(),
            last_prepared: None,
            orphans: Vec::new(),
            commands: 0,
            commands_at_loss: 0,
            deprecate_eof: None,
            metadata_optional: None,
            redact: config.redact,
            text_cap: config.max_body_bytes,
        }
    }

    pub fn set_capabilities(&mut self, caps: u32, metadata_optional: bool) {
        self.deprecate_eof = Some(caps & packet::CLIENT_DEPRECATE_EOF != 0);
        self.metadata_optional = Some(metadata_optional);
    }

    /// The client's handshake response (payload; not an SSLRequest), answered like a command:
    /// its record shows who logged in to which database, and whether the server let them.
    pub fn login(&mut self, payload: &[u8], caps: u32, start_ns: u64) {
        let Some(login) = packet::login(payload, caps) else {
            return;
        };
        let mut body = format!("user={}", String::from_utf8_lossy(login.user));
        if let Some(db) = login.database {
            body.push_str(&format!(" database={}", String::from_utf8_lossy(db)));
        }
        if login.auth {
            let secret = if self.redact {
                REDACTED
            } else {
                "<not decoded>"
            };
            body.push_str(&format!(" password={secret}"));
        }
        self.pending.push_back(Pending {
            cmd: Command::CONNECT,
            body: Some(crate::cut(body, self.text_cap)),
            params: None,
            start_ns,
            operation: sql::OTHER,
            shape: Shape::Login,
            prepared: None,
            deferred: None,
        });
        self.commands += 1;
    }

    /// A command packet (sequence id 0), payload cut to what was kept.
    pub fn command(&mut self, payload: &[u8], start_ns: u64, out: &mut Vec<Record>) {
        let Some((&cmd, body)) = payload.split_first() else {
            return;
        };
        // A client sends commands only once logged in: the login's answer was lost.
        if self
            .pending
            .front()
            .is_some_and(|p| p.shape == Shape::Login)
            && let Some(login) = self.pending.pop_front()
        {
            self.progress = Progress::default();
            out.push(record(login, None, None));
        }
        let text = || {
            let raw = String::from_utf8_lossy(body).into_owned();
            sql::shown(raw, Dialect::MySql, self.redact, self.text_cap)
        };
        let mut p = Pending {
            cmd,
            body: None,
            params: None,
            start_ns,
            operation: sql::OTHER,
            shape: Shape::Single,
            prepared: None,
            deferred: None,
        };
        match cmd {
            Command::QUERY => {
                let t = text();
                p.operation = sql::operation(&t);
                p.body = Some(t);
                p.shape = Shape::ResultSet;
            }
            Command::STMT_PREPARE => {
                let raw = String::from_utf8_lossy(body).into_owned();
                let (t, secret_params) =
                    sql::shown_with_params(raw, Dialect::MySql, self.redact, self.text_cap);
                p.operation = "PREPARE";
                p.prepared = Some(Statement {
                    text: t.clone(),
                    params: 0,
                    types: Vec::new(),
                    secret_params,
                });
                p.body = Some(t);
                p.shape = Shape::Prepare;
            }
            Command::STMT_EXECUTE | Command::STMT_FETCH | Command::STMT_BULK_EXECUTE => {
                p.shape = Shape::ResultSet;
                let id = match packet::le_u32(body, 0) {
                    // Sent before the answer to its prepare: read when that comes.
                    Some(LAST_PREPARED) if self.pending.iter().any(|q| q.prepared.is_some()) => {
                        p.body = Some("the statement prepared last".into());
                        p.deferred = Some(payload.to_vec());
                        None
                    }
                    Some(LAST_PREPARED) => self.last_prepared,
                    id => id,
                };
                match id.and_then(|id| self.statements.get_mut(&id)) {
                    Some(st) => executed(&mut p, payload, st, self.redact, self.text_cap),
                    None if p.deferred.is_none() => {
                        p.body = id.map(|id| format!("statement {id}"));
                    }
                    None => {}
                }
            }
            Command::INIT_DB => p.body = Some(text()),
            Command::FIELD_LIST => {
                p.body = Some(text());
                p.shape = Shape::FieldList;
            }
            Command::CHANGE_USER => {
                let user = body.split(|b| *b == 0).next().unwrap_or_default();
                let secret = if self.redact {
                    REDACTED
                } else {
                    "<not decoded>"
                };
                p.body = Some(format!(
                    "user={} password={secret}",
                    String::from_utf8_lossy(user)
                ));
            }
            Command::STMT_CLOSE => {
                if let Some(id) = packet::le_u32(body, 0) {
                    self.statements.remove(&id);
                }
                return;
            }
            Command::STMT_SEND_LONG_DATA => return,
            Command::QUIT => {
                out.push(record(p, None, Some("NONE")));
                return;
            }
            Command::STATISTICS => {}
            _ if Command::name(cmd).is_none() => return,
            _ => {}
        }
        if self.pending.len() >= MAX_PENDING
            && let Some(old) = self.pending.pop_front()
        {
            self.orphans.push(old);
            self.progress = Progress::default();
        }
        self.pending.push_back(p);
        self.commands += 1;
    }

    /// A server packet (payload cut to what was kept) with its sequence id and full length.
    pub fn response(
        &mut self,
        seq: u8,
        payload: &[u8],
        len: u32,
        end_ns: u64,
        out: &mut Vec<Record>,
    ) {
        let Some(head) = self.pending.front() else {
            return;
        };
        let (shape, cmd) = (head.shape, head.cmd);
        if !self.progress.started {
            let first_seq = if shape == Shape::Login { 2 } else { 1 };
            if seq != first_seq {
                return; // The tail of an earlier response (e.g. an EOF we did not wait for).
            }
            self.progress.started = true;
            self.progress.phase = Some(Phase::Start);
        }
        let first = payload.first().copied().unwrap_or(0);
        if first == 0xff {
            self.progress.status = Some("ERR");
            self.progress.body = Some(error_text(payload, self.redact));
            return self.complete(end_ns, out);
        }
        let phase = self.progress.phase.unwrap_or(Phase::Start);
        match (shape, phase) {
            (Shape::Single, _) => {
                self.progress.status = Some("OK");
                if first == 0x00 {
                    self.progress.body = packet::ok(payload).map(|o| ok_text(&o));
                } else if cmd == Command::STATISTICS {
                    self.progress.body = Some(String::from_utf8_lossy(payload).into_owned());
                }
                self.complete(end_ns, out)
            }
            (Shape::Login, _) => {
                // 0xFE (switch to another auth method) and 0x01 (more auth data) go on.
                if first == 0x00 {
                    self.progress.status = Some("OK");
                    self.progress.body = packet::ok(payload).map(|o| ok_text(&o));
                    self.complete(end_ns, out);
                }
            }
            (Shape::FieldList, _) => {
                if packet::is_eof(payload) {
                    self.progress.status = Some("OK");
                    self.complete(end_ns, out)
                }
            }
            (Shape::ResultSet, Phase::Start) => {
                if first == 0x00 {
                    let ok = packet::ok(payload);
                    let more = ok.as_ref().is_some_and(|o| o.more_results);
                    self.progress.status = Some("OK");
                    self.progress.body = ok.map(|o| ok_text(&o));
                    if !more {
                        self.complete(end_ns, out);
                    }
                } else if first == 0xfb {
                    // LOAD DATA LOCAL: what it did (`Records: 1000 …`), or why not, comes once
                    // the client has sent the file.
                    self.progress.uploading = true;
                } else {
                    let mut c = payload;
                    let n = packet::lenenc(&mut c).unwrap_or(0);
                    // A 0 after the count: the definitions were sent before and are left out
                    // (with the handshake unseen, only these clients' servers put a byte there).
                    let left_out = self.metadata_optional != Some(false) && c.first() == Some(&0);
                    if left_out {
                        self.definitions_done(After::Rows, end_ns, out);
                    } else {
                        self.progress.phase = Some(Phase::Definitions {
                            left: u32::try_from(n).unwrap_or(u32::MAX),
                            then: After::Rows,
                        });
                    }
                }
            }
            (Shape::Prepare, Phase::Start) => {
                self.progress.status = Some("OK");
                let Some(ok) = packet::prepare_ok(payload) else {
                    return self.complete(end_ns, out);
                };
                if let Some(mut statement) =
                    self.pending.front_mut().and_then(|p| p.prepared.take())
                {
                    if self.statements.len() >= MAX_STATEMENTS {
                        self.statements.clear();
                    }
                    statement.params = ok.params;
                    // The executes sent after this prepare, before its answer, run it.
                    for p in self.pending.iter_mut().skip(1) {
                        if p.cmd == Command::STMT_PREPARE {
                            break;
                        }
                        if let Some(payload) = p.deferred.take() {
                            executed(p, &payload, &mut statement, self.redact, self.text_cap);
                        }
                    }
                    self.statements.insert(ok.statement_id, statement);
                    self.last_prepared = Some(ok.statement_id);
                }
                self.progress.body = Some(format!(
                    "statement {}: {} params, {} columns",
                    ok.statement_id, ok.params, ok.columns
                ));
                let columns = After::PrepareColumns(ok.columns.into());
                let next = if ok.params > 0 {
                    Some(Phase::Definitions {
                        left: ok.params.into(),
                        then: columns,
                    })
                } else {
                    next_after(columns)
                };
                self.advance(next, end_ns, out);
            }
            (_, Phase::Definitions { left, then }) => {
                let left = left.saturating_sub(1);
                if left > 0 {
                    self.progress.phase = Some(Phase::Definitions { left, then });
                } else {
                    self.definitions_done(then, end_ns, out);
                }
            }
            (_, Phase::MaybeEof { then }) => {
                let next = next_after(then);
                if packet::is_eof(payload) {
                    self.advance(next, end_ns, out);
                } else if next.is_some() {
                    // No EOF after all: this packet already belongs to what follows.
                    self.progress.phase = next;
                    self.response(seq, payload, len, end_ns, out);
                } else {
                    self.complete(end_ns, out);
                }
            }
            (_, Phase::Rows) => {
                if first == 0xfe && len < packet::CONTINUED {
                    self.progress.status = Some("OK");
                    if packet::terminal_more_results(payload) {
                        self.progress.phase = Some(Phase::Start);
                    } else {
                        self.progress.body =
                            Some(format!("Resultset rows = {}", self.progress.rows));
                        self.complete(end_ns, out);
                    }
                } else {
                    self.progress.rows += 1;
                }
            }
        }
    }

    /// After a run of definitions (or where it was left out): the legacy EOF, then `then`.
    fn definitions_done(&mut self, then: After, end_ns: u64, out: &mut Vec<Record>) {
        if self.deprecate_eof == Some(true) || (self.deprecate_eof.is_none() && then != After::Rows)
        {
            // No EOF follows (or, handshake unseen, do not wait for one that may not come).
            self.advance(next_after(then), end_ns, out);
        } else {
            self.progress.phase = Some(Phase::MaybeEof { then });
        }
    }

    /// Moves to `next`, or completes the response when nothing is left.
    fn advance(&mut self, next: Option<Phase>, end_ns: u64, out: &mut Vec<Record>) {
        match next {
            Some(phase) => self.progress.phase = Some(phase),
            None => self.complete(end_ns, out),
        }
    }

    fn complete(&mut self, end_ns: u64, out: &mut Vec<Record>) {
        let progress = std::mem::take(&mut self.progress);
        if let Some(p) = self.pending.pop_front() {
            let latency = end_ns.saturating_sub(p.start_ns);
            out.push(record(p, Some((latency, progress)), None));
        }
    }

    /// Is the client sending a file the server asked for (LOAD DATA LOCAL)? Its packets are
    /// then content, not commands, whatever their sequence ids.
    pub fn uploading(&self) -> bool {
        self.progress.uploading
    }

    /// A packet of the file being uploaded; the empty one ends it.
    pub fn upload_packet(&mut self, empty: bool) {
        if empty {
            self.progress.uploading = false;
        }
    }

    /// Bytes of the answer under way were not captured (a client reading more at once than is
    /// captured of a syscall): the server's stream is followed again where an answer ends or
    /// the next one starts, see [`Stitcher::resumed`].
    pub fn answer_cut(&mut self) {
        self.commands_at_loss = self.commands;
        if !self.pending.is_empty() {
            self.progress.cut = true;
        }
    }

    /// Is a command waiting that was sent after the server's stream was lost? Its answer starts
    /// a read.
    pub fn newer_command_waits(&self) -> bool {
        !self.pending.is_empty() && self.commands > self.commands_at_loss
    }

    /// The server's stream is followed again after lost bytes (see [`crate::keep_newest`]);
    /// `fresh`: at an answer's first packet.
    pub fn resumed(&mut self, fresh: bool) {
        if crate::keep_newest(&mut self.pending, &mut self.orphans) {
            self.progress = Progress {
                cut: !fresh,
                ..Progress::default()
            };
        }
    }

    /// The packet ending the answer under way (see [`super::packet::answer_end`]) was found after
    /// lost bytes.
    pub fn answer_ended(&mut self, payload: &[u8], end_ns: u64, out: &mut Vec<Record>) {
        self.resumed(false);
        if payload.first() == Some(&0xff) {
            self.progress.status = Some("ERR");
            self.progress.body = Some(error_text(payload, self.redact));
        } else {
            self.progress.status = Some("OK");
            self.progress.body = Some("Resultset (rows not all captured)".into());
        }
        self.complete(end_ns, out);
    }

    /// Bytes were lost: pending commands can no longer be matched.
    pub fn lost(&mut self) {
        self.commands_at_loss = self.commands;
        self.orphans.extend(self.pending.drain(..));
        self.progress = Progress::default();
    }

    /// Writes the orphans, and the commands older than `deadline_ns` unanswered: their wait ended
    /// then if the server's stream is followed (`in_sync`) and the answer under way lost no bytes.
    pub fn expire(&mut self, deadline_ns: u64, in_sync: bool, out: &mut Vec<Record>) {
        for p in self.orphans.drain(..) {
            out.push(record(p, None, None));
        }
        let ended = (in_sync && !self.progress.cut).then(|| Unanswered::at(deadline_ns));
        while self
            .pending
            .front()
            .is_some_and(|p| p.start_ns < deadline_ns)
        {
            if let Some(p) = self.pending.pop_front() {
                self.progress = Progress::default();
                let mut record = record(p, None, None);
                record.set_unanswered(ended);
                out.push(record);
            }
        }
    }
}

fn next_after(then: After) -> Option<Phase> {
    match then {
        After::Rows => Some(Phase::Rows),
        After::PrepareColumns(0) | After::Done => None,
        After::PrepareColumns(n) => Some(Phase::Definitions {
            left: n,
            then: After::Done,
        }),
    }
}

fn ok_text(ok: &packet::Ok) -> String {
    if ok.info.is_empty() {
        format!("affected rows: {}", ok.affected_rows)
    } else {
        ok.info.clone()
    }
}

/// An ERR packet's text, its tokens redacted if `redact`: a message may quote a value (`Duplicate
/// entry '…' for key`).
fn error_text(payload: &[u8], redact: bool) -> String {
    let text = packet::err(payload);
    if redact {
        shapes::redacted(&text, false).unwrap_or(text)
    } else {
        text
    }
}

/// `p` runs `st`: its text, operation and, for an execute, its parameters (`payload`: the
/// command's, cut to what was kept), their tokens redacted if `redact` (values bound to a
/// credential's placeholder are already).
fn executed(p: &mut Pending, payload: &[u8], st: &mut Statement, redact: bool, cap: usize) {
    p.operation = sql::operation(&st.text);
    p.body = Some(st.text.clone());
    p.params = match p.cmd {
        Command::STMT_EXECUTE => {
            packet::execute_params(payload, st.params, &mut st.types, &st.secret_params)
        }
        Command::STMT_BULK_EXECUTE => {
            packet::bulk_params(payload, st.params, &mut st.types, &st.secret_params, cap)
        }
        _ => None,
    }
    .map(|s| {
        let s = if redact {
            shapes::redacted(&s, false).unwrap_or(s)
        } else {
            s
        };
        crate::cut(s, cap)
    });
}

fn record(p: Pending, response: Option<(u64, Progress)>, status: Option<&'static str>) -> Record {
    let error = match &response {
        Some((_, pr)) if pr.status == Some("ERR") => pr
            .body
            .as_deref()
            .and_then(sqlstate_of)
            .map_or(crate::error_type::OTHER, crate::error_type::sqlstate),
        _ => "",
    };
    let (latency_ns, status, body, rows) = match response {
        Some((latency, pr)) => (
            Some(latency),
            pr.status.map_or(Field::Null, |s| Field::String(s.into())),
            pr.body.map_or(Field::Null, Field::String),
            if pr.cut {
                Field::Null
            } else {
                Field::Int64(pr.rows)
            },
        ),
        None => (
            None,
            status.map_or(Field::Null, |s| Field::String(s.into())),
            Field::Null,
            Field::Null,
        ),
    };
    Record {
        request_ns: p.start_ns,
        latency_ns,
        fields: vec![
            Field::String(Command::name(p.cmd).unwrap_or("COM_UNKNOWN").to_string()),
            p.body.map_or(Field::Null, Field::String),
            p.params.map_or(Field::Null, Field::String),
            status,
            body,
            rows,
        ],
        text: String::new(),
        red: Red::Db {
            system: "mysql",
            operation: p.operation,
            error,
        },
    }
}

/// The SQLSTATE of an ERR packet's text (`1146 (42S02): Table 'x' doesn't exist`, see
/// [`packet::err`]); None when the server sent none.
fn sqlstate_of(text: &str) -> Option<&str> {
    let (code, rest) = text.split_once(' ')?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.strip_prefix('(')?.get(..5)
}
