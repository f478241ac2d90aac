//! Commands ↔ replies, in order (RESP has no ids; pipelines keep order). Server pushes are not
//! replies: RESP3 push frames, and in RESP2 the `message`/`pmessage`/`smessage` arrays a subscribed
//! connection receives, become records of their own (`PUSH PUB`, `PUSH SUB`, …) without latency.
//! (UN)SUBSCRIBE is answered by one confirmation per channel; all of them make its reply. An
//! UNSUBSCRIBE without channels is answered once per channel the connection was subscribed to, as
//! followed from the confirmations seen.
//!
//! Bytes lost from the replies leave the waiting commands unanswered. Commands lost (a server
//! reading a pipeline in reads longer than what is captured) are worse: an unknown number of
//! replies then belongs to commands never seen, so the commands after the loss are paired only
//! once the connection is quiet, from the end (a close is no such moment: a client that went away
//! leaves commands unanswered); never by a guess that could give a command another one's reply.
use std::collections::{HashSet, VecDeque};

use super::commands;
use super::parse::{AggKind, Frame, Text, Value};
use crate::secret::shapes;
use crate::{Field, ParseConfig, REDACTED, Record, Red, Unanswered, json};

/// More unanswered commands than this means replies are not being seen: the oldest go first.
const MAX_QUEUED: usize = 1024;
/// Subscriptions followed per kind; past this an UNSUBSCRIBE of all takes fewer confirmations and
/// the rest become `PUSH SUB` records.
const MAX_FOLLOWED_SUBSCRIPTIONS: usize = 1024;

const SUBSCRIBE_FAMILY: [&str; 6] = [
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ssubscribe",
    "sunsubscribe",
];

struct Command {
    /// Order among the connection's commands.
    seq: u64,
    start_ns: u64,
    /// Uppercase name, with the subcommand for container commands (`CONFIG GET`).
    name: String,
    operation: &'static str,
    args: String,
    /// Replies this command gets: one, or one per channel for the subscribe family.
    expected: usize,
    /// An (P|S)UNSUBSCRIBE of every channel: its `expected` is set by its first confirmation.
    unsubscribe_all: bool,
    replies: Vec<Frame>,
}

pub struct Stitcher {
    config: ParseConfig,
    commands: VecDeque<Command>,
    /// Replies that came before their command was seen.
    replies: VecDeque<Frame>,
    subscribed: bool,
    /// Channels, patterns and shard channels subscribed to, by [`subscription_kind`].
    subscriptions: [HashSet<Vec<u8>>; 3],
    ready: Vec<Record>,
    /// Commands seen so far (the next one's `seq`).
    seen: u64,
    /// Commands were lost before the one numbered this: which replies are theirs is unknown, so
    /// from it on nothing is paired until the connection is quiet (see [`Stitcher::expire`]).
    lost_before: Option<u64>,
    quiet: crate::Quiet,
}

impl Stitcher {
    pub fn new(config: ParseConfig) -> Stitcher {
        Stitcher {
            config,
            commands: VecDeque::new(),
            replies: VecDeque::new(),
            subscribed: false,
            subscriptions: Default::default(),
            ready: Vec::new(),
            seen: 0,
            lost_before: None,
            quiet: crate::Quiet::default(),
        }
    }

    /// A command frame. Anything but an array of strings is not a command.
    pub fn command(&mut self, frame: Frame) -> Result<(), &'static str> {
        let Value::Aggregate {
            kind: AggKind::Array,
            items,
            len,
        } = &frame.value
        else {
            return Err("bad_command");
        };
        let words: Vec<&Text> = items.iter().filter_map(Value::text).collect();
        if words.is_empty() || words.len() != items.len() {
            return Err("bad_command");
        }
        let first = String::from_utf8_lossy(&words[0].bytes).to_ascii_uppercase();
        let operation = commands::known(&first).unwrap_or("_OTHER");
        let mut name = first.chars().take(64).collect::<String>();
        let mut args = &words[1..];
        if commands::is_container(operation)
            && let Some((sub, rest)) = args.split_first()
        {
            name.push(' ');
            name.push_str(&String::from_utf8_lossy(&sub.bytes).to_ascii_uppercase());
            args = rest;
        }
        let lower = operation.to_ascii_lowercase();
        let family = SUBSCRIBE_FAMILY.contains(&lower.as_str());
        let expected = if family { args.len().max(1) } else { 1 };
        let unsubscribe_all = family && args.is_empty() && lower.contains("unsubscribe");
        let more = (*len as usize).saturating_sub(items.len());
        let args = render_args(operation, &name, args, more, &self.config);
        if self.commands.len() >= MAX_QUEUED
            && let Some(old) = self.commands.pop_front()
        {
            self.emit(old);
        }
        self.quiet.message();
        self.seen += 1;
        self.commands.push_back(Command {
            seq: self.seen - 1,
            start_ns: frame.start_ns,
            name,
            operation,
            args,
            expected,
            unsubscribe_all,
            replies: Vec::new(),
        });
        self.pair();
        Ok(())
    }

    pub fn reply(&mut self, frame: Frame) {
        self.quiet.message();
        if let Some(kind) = self.push_kind(&frame.value) {
            self.push_record(kind, frame);
            return;
        }
        if self.replies.len() >= MAX_QUEUED {
            self.replies.pop_front();
        }
        self.replies.push_back(frame);
        self.pair();
    }

    /// Is this reply-side frame a server push rather than the answer to the oldest command? Returns
    /// the push's kind (`message`, `subscribe`, `invalidate`, …).
    fn push_kind(&mut self, value: &Value) -> Option<String> {
        let Value::Aggregate { kind, items, .. } = value else {
            return None;
        };
        let first = items
            .first()
            .and_then(Value::text)
            .map(|t| String::from_utf8_lossy(&t.bytes).to_ascii_lowercase())?;
        let confirmation = SUBSCRIBE_FAMILY.contains(&first.as_str());
        if confirmation {
            // The last element is the number of channels this connection is now subscribed to.
            if let Some(Value::Int(count)) = items.get(2) {
                self.subscribed = *count > 0;
            }
            let awaited = self
                .commands
                .front()
                .is_some_and(|c| c.operation.eq_ignore_ascii_case(&first));
            self.follow_subscription(&first, items.get(1), awaited);
            return (!awaited).then_some(first);
        }
        let message = matches!(first.as_str(), "message" | "pmessage" | "smessage");
        match kind {
            AggKind::Push => Some(first),
            AggKind::Array if message && self.subscribed => Some(first),
            _ => None,
        }
    }

    /// Follows the channels subscribed to from a confirmation. The first confirmation of an
    /// UNSUBSCRIBE of all says how many it gets: one per channel subscribed to before it (or a
    /// single one, channel null, when there was none).
    fn follow_subscription(&mut self, kind: &str, channel: Option<&Value>, awaited: bool) {
        let Some(index) = subscription_kind(kind) else {
            return;
        };
        let followed = &mut self.subscriptions[index];
        if awaited
            && let Some(command) = self.commands.front_mut()
            && command.unsubscribe_all
            && command.replies.is_empty()
        {
            command.expected = followed.len().max(1);
        }
        let Some(name) = channel.and_then(Value::text) else {
            return;
        };
        if kind.contains("unsubscribe") {
            followed.remove(&name.bytes);
        } else if followed.len() < MAX_FOLLOWED_SUBSCRIPTIONS {
            followed.insert(name.bytes.clone());
        }
    }

    fn pair(&mut self) {
        while let (Some(command), Some(reply)) = (self.commands.front_mut(), self.replies.front()) {
            if self.lost_before.is_some_and(|lost| command.seq >= lost) {
                // Replies to the lost commands come first; how many is unknown.
                break;
            }
            if reply.start_ns < command.start_ns {
                // Answers a command that was lost or already expired.
                self.replies.pop_front();
                continue;
            }
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            command.replies.push(reply);
            if command.replies.len() >= command.expected
                && let Some(done) = self.commands.pop_front()
            {
                self.emit(done);
            }
        }
    }

    /// Reply bytes were lost: waiting commands can no longer be paired by order.
    pub fn lost_sync(&mut self) {
        self.lost_before = None;
        while let Some(command) = self.commands.pop_front() {
            self.emit(command);
        }
    }

    /// Command bytes were lost (a server reading a pipeline in reads larger than is captured):
    /// an unknown number of commands went by unseen, and their replies will come before those
    /// of the commands seen next. Commands seen before are still answered first, in order; the
    /// ones after wait for a quiet connection. Commands waiting since an earlier loss can no
    /// longer be told their replies: they are written unanswered.
    pub fn commands_lost(&mut self) {
        if let Some(lost) = self.lost_before {
            let mut later = Vec::new();
            while self.commands.back().is_some_and(|c| c.seq >= lost) {
                later.extend(self.commands.pop_back());
            }
            for command in later.into_iter().rev() {
                self.emit(command);
            }
        }
        self.lost_before = Some(self.seen);
        self.quiet.restart();
    }

    /// The connection is quiet after commands were lost: every command has its reply, the last
    /// replies being those of the commands still waiting, in order. Paired from the end when each
    /// waiting command takes one reply and none may block; otherwise written unanswered.
    fn realign(&mut self) {
        self.lost_before = None;
        let pairable = self
            .commands
            .iter()
            .all(|c| c.expected == 1 && !c.unsubscribe_all && !commands::may_block(c.operation));
        if pairable
            && crate::align_from_end(
                &self.commands,
                &mut self.replies,
                |c| c.start_ns,
                |r| r.start_ns,
            )
        {
            self.pair();
        }
        while let Some(command) = self.commands.pop_front() {
            self.emit(command);
        }
        self.replies.clear();
    }

    /// Commands older than `deadline_ns` are emitted (unanswered unless confirmations came), unless a
    /// reply is being read. The wait of one without reply ended then if the replies are followed
    /// (`in_sync`) and no commands were lost before it — but for a QUIT (a client may close without
    /// reading its `+OK`) and, at the timeout, a blocking command (it waits as long as it was told).
    pub fn expire(&mut self, deadline_ns: u64, answering: bool, in_sync: bool) {
        // At the close, the waiting commands are written unanswered (below).
        if self
            .quiet
            .tick(self.lost_before.is_some(), answering, deadline_ns)
        {
            self.realign();
        }
        if answering && deadline_ns != u64::MAX {
            return;
        }
        let ended = (in_sync && self.lost_before.is_none()).then(|| Unanswered::at(deadline_ns));
        while self
            .commands
            .front()
            .is_some_and(|c| c.start_ns < deadline_ns)
        {
            if let Some(command) = self.commands.pop_front() {
                let ended = ended.filter(|end| match end {
                    Unanswered::Closed => command.operation != "QUIT",
                    Unanswered::Timeout => !commands::may_block(command.operation),
                });
                self.emit(command);
                if let Some(record) = self.ready.last_mut() {
                    record.set_unanswered(ended);
                }
            }
        }
        self.replies.retain(|r| r.start_ns >= deadline_ns);
    }

    pub fn drain(&mut self, out: &mut Vec<Record>) {
        out.append(&mut self.ready);
    }

    fn emit(&mut self, command: Command) {
        let end_ns = command.replies.last().map(|r| r.end_ns);
        // EXEC answers with each queued command's reply: one that failed fails the transaction
        // for its client (redis-py, go-redis raise it), so its error counts.
        let exec = command.operation == "EXEC";
        let error = command
            .replies
            .iter()
            .find_map(|r| match &r.value {
                Value::Error(t) => Some(crate::error_type::redis(&t.bytes)),
                Value::Aggregate { items, .. } if exec => items.iter().find_map(|v| match v {
                    Value::Error(t) => Some(crate::error_type::redis(&t.bytes)),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap_or("");
        let resp = match command.replies.as_slice() {
            [] => String::new(),
            [one] => render(&one.value, &self.config),
            many => {
                let all = Value::Aggregate {
                    kind: AggKind::Array,
                    len: many.len() as u64,
                    items: many.iter().map(|r| r.value.clone()).collect(),
                };
                render(&all, &self.config)
            }
        };
        self.ready.push(Record {
            request_ns: command.start_ns,
            latency_ns: end_ns.map(|end| end.saturating_sub(command.start_ns)),
            fields: vec![
                Field::String(command.name),
                Field::String(command.args),
                Field::String(resp),
            ],
            text: String::new(),
            red: Red::Db {
                system: "redis",
                operation: command.operation,
                error,
            },
        });
    }

    fn push_record(&mut self, kind: String, frame: Frame) {
        let cmd = match kind.as_str() {
            "message" | "pmessage" | "smessage" => "PUSH PUB".to_string(),
            k if SUBSCRIBE_FAMILY.contains(&k) => "PUSH SUB".to_string(),
            k => format!(
                "PUSH {}",
                k.to_ascii_uppercase().chars().take(32).collect::<String>()
            ),
        };
        self.ready.push(Record {
            request_ns: frame.start_ns,
            latency_ns: None,
            fields: vec![
                Field::String(cmd),
                Field::String(String::new()),
                Field::String(render(&frame.value, &self.config)),
            ],
            text: String::new(),
            red: Red::Db {
                system: "redis",
                operation: "_OTHER",
                error: "",
            },
        });
    }
}

/// Which of [`Stitcher::subscriptions`] a confirmation of this kind concerns.
fn subscription_kind(kind: &str) -> Option<usize> {
    match kind {
        "subscribe" | "unsubscribe" => Some(0),
        "psubscribe" | "punsubscribe" => Some(1),
        "ssubscribe" | "sunsubscribe" => Some(2),
        _ => None,
    }
}

/// Arguments as a JSON array of strings; credentials redacted when configured.
fn render_args(
    operation: &str,
    name: &str,
    args: &[&Text],
    more: usize,
    config: &ParseConfig,
) -> String {
    let words: Vec<String> = args.iter().map(|t| text(t, config)).collect();
    let secret = |i: usize| config.redact && is_secret(operation, name, &words, i);
    let mut out = Vec::with_capacity(2 + words.iter().map(|w| w.len() + 3).sum::<usize>());
    out.push(b'[');
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::push_string(&mut out, if secret(i) { REDACTED } else { w });
    }
    if more > 0 {
        if !words.is_empty() {
            out.push(b',');
        }
        json::push_string(&mut out, &format!("<{more} more>"));
    }
    out.push(b']');
    json::into_string(out)
}

/// Is argument `i` a password? AUTH's password (its last argument: a username before it stays
/// shown), HELLO's and MIGRATE's after AUTH/AUTH2 (after the username), the value of CONFIG SET
/// requirepass/masterauth/tls-*-pass, ACL SETUSER password rules.
fn is_secret(operation: &str, name: &str, args: &[String], i: usize) -> bool {
    let at = |keyword: &str, offset: usize| {
        args.iter()
            .position(|a| a.eq_ignore_ascii_case(keyword))
            .is_some_and(|k| i == k + offset)
    };
    match operation {
        // AUTH password, or AUTH username password; more arguments than that are all hidden.
        "AUTH" => i + 1 == args.len() || args.len() > 2,
        "HELLO" => at("AUTH", 2),
        "MIGRATE" => at("AUTH", 1) || at("AUTH2", 2),
        "CONFIG" if name == "CONFIG SET" => {
            i % 2 == 1
                && matches!(
                    args[i - 1].to_ascii_lowercase().as_str(),
                    "requirepass" | "masterauth" | "tls-key-file-pass" | "tls-client-key-file-pass"
                )
        }
        "ACL" if name == "ACL SETUSER" => {
            matches!(args[i].as_bytes().first(), Some(b'>' | b'<' | b'#' | b'!'))
        }
        _ => false,
    }
}

/// A string for display: its text (tokens redacted when configured: [`shapes`]), or a summary
/// when binary.
fn text(t: &Text, config: &ParseConfig) -> String {
    let kept = &t.bytes[..t.bytes.len().min(config.max_body_bytes)];
    let valid = match std::str::from_utf8(kept) {
        Ok(s) => Some(s),
        // A character cut at the end of the kept prefix is fine.
        Err(e) if e.error_len().is_none() && t.len > kept.len() as u64 => {
            std::str::from_utf8(&kept[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match valid {
        Some(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            // A value longer than what was kept ends inside a token that is redacted all the same.
            let cut = t.len > kept.len() as u64;
            match config.redact.then(|| shapes::redacted(s, cut)).flatten() {
                Some(redacted) => redacted,
                None => s.to_string(),
            }
        }
        _ => format!("<binary {} bytes>", t.len),
    }
}

/// A reply for display: scalars as text (errors keep their `-`), aggregates as JSON, cut at the
/// body limit; tokens redacted when configured.
pub fn render(value: &Value, config: &ParseConfig) -> String {
    let max = config.max_body_bytes;
    let s = match value {
        Value::Aggregate { .. } => json(value, config).to_string(),
        Value::Error(t) => format!("-{}", text(t, config)),
        Value::Null => "<NULL>".to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Simple(t) | Value::Bulk(t) | Value::Double(t) | Value::BigNumber(t) => {
            text(t, config)
        }
        Value::Verbatim(t) => verbatim(t, config),
    };
    crate::cut(s, max)
}

fn verbatim(t: &Text, config: &ParseConfig) -> String {
    let s = text(t, config);
    match s.get(3..4) {
        Some(":") => s[4..].to_string(),
        _ => s,
    }
}

fn json(value: &Value, config: &ParseConfig) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Int(i) => J::from(*i),
        Value::Bool(b) => J::Bool(*b),
        Value::Null => J::Null,
        Value::Aggregate {
            kind: AggKind::Map,
            items,
            len,
        } => {
            let mut map = serde_json::Map::new();
            for pair in items.chunks(2) {
                let key = render(&pair[0], config);
                let value = pair.get(1).map(|v| json(v, config)).unwrap_or(J::Null);
                map.insert(key, value);
            }
            let missing = (*len as usize).saturating_sub(items.len()) / 2;
            if missing > 0 {
                map.insert("<more>".to_string(), J::from(missing));
            }
            J::Object(map)
        }
        Value::Aggregate { items, len, .. } => {
            let mut list: Vec<J> = items.iter().map(|v| json(v, config)).collect();
            let missing = (*len as usize).saturating_sub(items.len());
            if missing > 0 {
                list.push(J::String(format!("<{missing} more>")));
            }
            J::Array(list)
        }
        other => J::String(render(other, config)),
    }
}
