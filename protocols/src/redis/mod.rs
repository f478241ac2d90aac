//! Redis (RESP2 and RESP3): commands with their arguments, pipelines, errors, pub/sub pushes.
//!
//! The RESP reader is hand-written. The well-kept crate, `redis-protocol`, decodes one complete frame
//! from a buffer: it re-parses from the start after every partial read (quadratic on a large value
//! arriving in many reads), has no nesting limit (recursion on `*1\r\n*1\r\n…` can overflow the
//! stack: hostile bytes reach a tracer too), needs whole values in memory, and cannot continue through
//! bytes lost inside a bulk string. RESP is small enough (one type byte, a line, maybe a payload) that
//! a streaming reader with bounded memory is shorter than the glue around the crate would be.
//!
//! - [`detect`](mod@detect): a command array naming a known command; inline commands and replies on port 6379.
//! - [`parse`]: bytes → frames, per direction.
//! - [`stitch`]: commands ↔ replies by order; pushes become their own records.
use crate::{ColumnDef, ConnParser, Direction, FieldType, ParseConfig, ParseError, Record, Role};

pub mod commands;
pub mod detect;
pub mod parse;
pub mod stitch;
#[cfg(test)]
mod tests;

pub use detect::detect;

/// Pixie's `redis_events` protocol columns: the command (with its subcommand), its arguments as a
/// JSON array, and the reply (scalars as text, aggregates as JSON, errors starting with `-`).
pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef::new("req_cmd", FieldType::String),
    ColumnDef::new("req_args", FieldType::String),
    ColumnDef::new("resp", FieldType::String),
];

/// Per-connection Redis parser.
pub struct Parser {
    role: Role,
    commands: parse::Reader,
    replies: parse::Reader,
    stitch: stitch::Stitcher,
    events: Vec<parse::Event>,
    /// A command completed by a gap that was no command: reported with the next bytes fed.
    deferred: Option<ParseError>,
}

impl Parser {
    pub fn new(role: Role, config: &ParseConfig) -> Parser {
        Parser {
            role,
            commands: parse::Reader::new(parse::Side::Commands, config.max_body_bytes),
            replies: parse::Reader::new(parse::Side::Replies, config.max_body_bytes),
            stitch: stitch::Stitcher::new(config.clone()),
            events: Vec::new(),
            deferred: None,
        }
    }

    fn carries_commands(&self, dir: Direction) -> bool {
        matches!(
            (self.role, dir),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        )
    }

    /// Hands the frames a reader made to the stitcher.
    fn dispatch(&mut self, commands: bool) -> Result<(), ParseError> {
        let mut result = Ok(());
        for event in self.events.drain(..) {
            match event {
                // Command bytes not understood were seen: no command is known to be lost.
                parse::Event::LostSync if commands => {}
                parse::Event::LostSync => self.stitch.lost_sync(),
                parse::Event::Frame(frame) if commands => {
                    if let Err(reason) = self.stitch.command(frame) {
                        result = result.and(Err(ParseError::new("redis", reason)));
                    }
                }
                parse::Event::Frame(frame) => self.stitch.reply(frame),
            }
        }
        result
    }
}

impl ConnParser for Parser {
    fn feed(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        out: &mut Vec<Record>,
    ) -> Result<(), ParseError> {
        let commands = self.carries_commands(dir);
        let reader = if commands {
            &mut self.commands
        } else {
            &mut self.replies
        };
        let result = reader.feed(ts_ns, data, &mut self.events);
        let result = match self.deferred.take() {
            Some(e) => Err(e),
            None => result,
        };
        let result = result.and(self.dispatch(commands));
        self.stitch.drain(out);
        result
    }

    fn gap(&mut self, dir: Direction, lost_bytes: u64) {
        let commands = self.carries_commands(dir);
        let reader = if commands {
            &mut self.commands
        } else {
            &mut self.replies
        };
        if !reader.gap(lost_bytes, &mut self.events) {
            if commands {
                self.stitch.commands_lost();
            } else {
                self.stitch.lost_sync();
            }
        }
        if let Err(e) = self.dispatch(commands) {
            self.deferred.get_or_insert(e);
        }
    }

    fn expire(&mut self, deadline_ns: u64, out: &mut Vec<Record>) {
        // (Before the close, which starts the replies' reader afresh.)
        let in_sync = self.replies.in_sync();
        if deadline_ns == u64::MAX {
            self.commands.close();
            self.replies.close();
        }
        self.stitch
            .expire(deadline_ns, self.replies.in_frame(), in_sync);
        self.stitch.drain(out);
    }
}
