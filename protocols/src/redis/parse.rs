//! Bytes of one direction → RESP2/RESP3 values, streaming: every byte is looked at once, whatever the
//! chunking, and only bounded parts of a value are kept (`max_bytes` of each string, [`MAX_KEPT_ITEMS`]
//! elements per frame) while declared sizes are still followed to the byte. That is what lets a gap
//! inside a large bulk string be skipped without losing sync.
use crate::ParseError;

/// Open aggregates deeper than this are not Redis traffic (Redis itself nests a few levels).
const MAX_DEPTH: usize = 32;
/// A line (type byte to CRLF) longer than this is garbage: RESP lines are lengths and short strings.
const MAX_LINE: usize = 64 * 1024;
/// Elements kept per top-level frame; further ones are counted, not stored.
pub const MAX_KEPT_ITEMS: usize = 256;

/// Which kind of frames a direction carries: only commands may be written inline (`PING\r\n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Commands,
    Replies,
}

/// A string as kept: its first bytes and its full length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text {
    pub bytes: Vec<u8>,
    pub len: u64,
    /// Bytes after a hole are counted but not kept.
    frozen: bool,
}

impl Text {
    fn from_line(line: &[u8], max: usize) -> Text {
        let mut t = Text::default();
        t.push(line, max);
        t
    }

    fn push(&mut self, data: &[u8], max: usize) {
        if !self.frozen {
            let room = max.saturating_sub(self.bytes.len());
            self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
        self.len = self.len.saturating_add(data.len() as u64);
    }

    fn skip(&mut self, lost: u64) {
        self.len = self.len.saturating_add(lost);
        self.frozen = true;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    Array,
    Set,
    Map,
    Push,
    /// RESP3 attributes annotate the next value; they are dropped once parsed.
    Attribute,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Simple(Text),
    Error(Text),
    Int(i64),
    Bulk(Text),
    /// RESP3 verbatim string (`=`): a bulk string whose first 4 bytes name its format (`txt:`).
    Verbatim(Text),
    Null,
    Double(Text),
    Bool(bool),
    BigNumber(Text),
    /// `len` elements were declared (a map's len counts keys and values); `items` holds the kept ones.
    Aggregate {
        kind: AggKind,
        items: Vec<Value>,
        len: u64,
    },
}

impl Value {
    /// Text of a string value (simple, bulk or verbatim), for commands and pub/sub kinds.
    pub fn text(&self) -> Option<&Text> {
        match self {
            Value::Simple(t) | Value::Bulk(t) | Value::Verbatim(t) => Some(t),
            _ => None,
        }
    }
}

/// What a reader reports, in stream order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Frame(Frame),
    /// Bytes that could not be parsed were skipped: frames may be missing here.
    LostSync,
}

/// A complete top-level frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub value: Value,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BulkKind {
    Bulk,
    Verbatim,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Line,
    Bulk {
        kind: BulkKind,
        text: Text,
        remaining: u64,
    },
    /// Bytes of the CRLF after a bulk payload still to read.
    BulkEnd {
        kind: BulkKind,
        text: Text,
        left: u8,
    },
    Resync,
}

struct Open {
    kind: AggKind,
    items: Vec<Value>,
    len: u64,
    remaining: u64,
}

pub struct Reader {
    side: Side,
    max_bytes: usize,
    state: State,
    line: Vec<u8>,
    stack: Vec<Open>,
    frame_start: Option<u64>,
    kept_items: usize,
    last_ns: u64,
}

impl Reader {
    pub fn new(side: Side, max_bytes: usize) -> Reader {
        Reader {
            side,
            max_bytes,
            state: State::Line,
            line: Vec::new(),
            stack: Vec::new(),
            frame_start: None,
            kept_items: 0,
            last_ns: 0,
        }
    }

    /// Is a frame partly read?
    pub fn in_frame(&self) -> bool {
        self.frame_start.is_some()
    }

    /// Is the stream followed (not waiting for a frame's start after lost bytes)?
    pub fn in_sync(&self) -> bool {
        !matches!(self.state, State::Resync)
    }

    /// Parses `data`, pushing complete frames to `frames`. After an error it resynchronises and
    /// carries on; the first error is returned.
    pub fn feed(
        &mut self,
        ts: u64,
        data: &[u8],
        frames: &mut Vec<Event>,
    ) -> Result<(), ParseError> {
        self.last_ns = ts;
        let mut pos = 0;
        let mut first_error = None;
        while pos < data.len() {
            match self.step(ts, &data[pos..], frames) {
                Ok(n) => pos += n,
                Err(reason) => {
                    first_error.get_or_insert(reason);
                    self.lose_sync();
                    frames.push(Event::LostSync);
                    // The byte that failed may still start a frame after a line feed: rescan from it.
                    pos += 1;
                }
            }
        }
        match first_error {
            Some(reason) => Err(ParseError::new("redis", reason)),
            None => Ok(()),
        }
    }

    /// Consumes a prefix of `data` (at least one byte unless erroring).
    fn step(
        &mut self,
        ts: u64,
        data: &[u8],
        frames: &mut Vec<Event>,
    ) -> Result<usize, &'static str> {
        if self.frame_start.is_none() && !matches!(self.state, State::Resync) {
            self.frame_start = Some(ts);
        }
        match std::mem::replace(&mut self.state, State::Line) {
            State::Resync => {
                self.state = State::Resync;
                match find_frame_start(self.side, data) {
                    Some(offset) if offset > 0 => Ok(offset),
                    Some(_) => {
                        self.state = State::Line;
                        self.frame_start = Some(ts);
                        self.read_line(ts, data, frames)
                    }
                    None => Ok(data.len()),
                }
            }
            State::Line => self.read_line(ts, data, frames),
            State::Bulk {
                kind,
                mut text,
                remaining,
            } => {
                let take = remaining.min(data.len() as u64);
                text.push(&data[..take as usize], self.max_bytes);
                self.state = if take == remaining {
                    State::BulkEnd {
                        kind,
                        text,
                        left: 2,
                    }
                } else {
                    State::Bulk {
                        kind,
                        text,
                        remaining: remaining - take,
                    }
                };
                Ok(take as usize)
            }
            State::BulkEnd { kind, text, left } => {
                let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                let take = (left as usize).min(data.len());
                if data[..take] != expected[..take] {
                    return Err("bad_bulk_end");
                }
                if take == left as usize {
                    let value = match kind {
                        BulkKind::Bulk => Value::Bulk(text),
                        BulkKind::Verbatim => Value::Verbatim(text),
                        BulkKind::Error => Value::Error(text),
                    };
                    self.complete(value, ts, frames);
                } else {
                    self.state = State::BulkEnd {
                        kind,
                        text,
                        left: left - take as u8,
                    };
                }
                Ok(take)
            }
        }
    }

    fn read_line(
        &mut self,
        ts: u64,
        data: &[u8],
        frames: &mut Vec<Event>,
    ) -> Result<usize, &'static str> {
        let (chunk, done) = match data.iter().position(|b| *b == b'\n') {
            Some(i) => (&data[..=i], true),
            None => (data, false),
        };
        if self.line.len() + chunk.len() > MAX_LINE {
            return Err("line_too_long");
        }
        self.line.extend_from_slice(chunk);
        if done {
            let mut line = std::mem::take(&mut self.line);
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, ts, frames)?;
            // Keep the allocation for the next line.
            line.clear();
            self.line = line;
        }
        Ok(chunk.len())
    }

    fn line_done(
        &mut self,
        line: &[u8],
        ts: u64,
        frames: &mut Vec<Event>,
    ) -> Result<(), &'static str> {
        let Some((&kind, rest)) = line.split_first() else {
            // Blank line between inline commands.
            if self.side == Side::Commands && self.stack.is_empty() {
                self.frame_start = None;
                return Ok(());
            }
            return Err("bad_type");
        };
        let max = self.max_bytes;
        let value = match kind {
            b'+' => Value::Simple(Text::from_line(rest, max)),
            b'-' => Value::Error(Text::from_line(rest, max)),
            b':' => Value::Int(parse_int(rest).ok_or("bad_integer")?),
            b'_' => Value::Null,
            b',' => Value::Double(Text::from_line(rest, max)),
            b'(' => Value::BigNumber(Text::from_line(rest, max)),
            b'#' => match rest {
                b"t" => Value::Bool(true),
                b"f" => Value::Bool(false),
                _ => return Err("bad_boolean"),
            },
            b'$' | b'=' | b'!' => {
                let len = parse_int(rest).ok_or("bad_length")?;
                if len == -1 && kind == b'$' {
                    Value::Null
                } else {
                    let remaining = u64::try_from(len).map_err(|_| "bad_length")?;
                    let kind = match kind {
                        b'$' => BulkKind::Bulk,
                        b'=' => BulkKind::Verbatim,
                        _ => BulkKind::Error,
                    };
                    let text = Text::default();
                    self.state = if remaining == 0 {
                        State::BulkEnd {
                            kind,
                            text,
                            left: 2,
                        }
                    } else {
                        State::Bulk {
                            kind,
                            text,
                            remaining,
                        }
                    };
                    return Ok(());
                }
            }
            b'*' | b'~' | b'%' | b'>' | b'|' => {
                let len = parse_int(rest).ok_or("bad_length")?;
                if len == -1 && kind == b'*' {
                    Value::Null
                } else {
                    let len = u64::try_from(len).map_err(|_| "bad_length")?;
                    let agg = match kind {
                        b'*' => AggKind::Array,
                        b'~' => AggKind::Set,
                        b'%' => AggKind::Map,
                        b'>' => AggKind::Push,
                        _ => AggKind::Attribute,
                    };
                    let remaining = if matches!(agg, AggKind::Map | AggKind::Attribute) {
                        len.checked_mul(2).ok_or("bad_length")?
                    } else {
                        len
                    };
                    if remaining > 0 {
                        if self.stack.len() >= MAX_DEPTH {
                            return Err("nesting_too_deep");
                        }
                        self.stack.push(Open {
                            kind: agg,
                            items: Vec::new(),
                            len: remaining,
                            remaining,
                        });
                        return Ok(());
                    }
                    Value::Aggregate {
                        kind: agg,
                        items: Vec::new(),
                        len: 0,
                    }
                }
            }
            _ if self.side == Side::Commands && self.stack.is_empty() => inline_command(line, max)?,
            _ => return Err("bad_type"),
        };
        self.complete(value, ts, frames);
        Ok(())
    }

    /// A value is complete: it fills its parent, possibly completing it in turn, or is a frame.
    fn complete(&mut self, mut value: Value, ts: u64, frames: &mut Vec<Event>) {
        loop {
            let is_attribute = matches!(
                value,
                Value::Aggregate {
                    kind: AggKind::Attribute,
                    ..
                }
            );
            let Some(open) = self.stack.last_mut() else {
                if !is_attribute {
                    frames.push(Event::Frame(Frame {
                        value,
                        start_ns: self.frame_start.unwrap_or(ts),
                        end_ns: ts,
                    }));
                }
                self.frame_start = None;
                self.kept_items = 0;
                return;
            };
            if is_attribute {
                return;
            }
            if self.kept_items < MAX_KEPT_ITEMS {
                self.kept_items += 1;
                open.items.push(value);
            }
            open.remaining -= 1;
            if open.remaining > 0 {
                return;
            }
            let Some(open) = self.stack.pop() else { return };
            value = Value::Aggregate {
                kind: open.kind,
                items: open.items,
                len: open.len,
            };
        }
    }

    fn lose_sync(&mut self) {
        self.state = State::Resync;
        self.line.clear();
        self.stack.clear();
        self.frame_start = None;
        self.kept_items = 0;
    }

    /// `lost` bytes were not captured. Returns false when sync was lost. A bulk string's length
    /// says where it ends, so a loss that reaches into its closing CRLF (a large value sent or
    /// read in one syscall whose tail was not captured) still completes it, into `frames`.
    pub fn gap(&mut self, lost: u64, frames: &mut Vec<Event>) -> bool {
        if lost == 0 {
            return true;
        }
        let crlf = match &mut self.state {
            State::Resync => return true,
            State::Bulk {
                kind,
                text,
                remaining,
            } if lost <= *remaining + 2 => {
                let payload = lost.min(*remaining);
                text.skip(payload);
                *remaining -= payload;
                if *remaining > 0 {
                    return true;
                }
                let (kind, text) = (*kind, std::mem::take(text));
                self.state = State::BulkEnd {
                    kind,
                    text,
                    left: 2,
                };
                lost - payload
            }
            State::BulkEnd { left, .. } if lost <= u64::from(*left) => lost,
            _ => {
                self.lose_sync();
                return false;
            }
        };
        // The CRLF's lost bytes, as they must have been.
        let left = match self.state {
            State::BulkEnd { left, .. } => usize::from(left),
            _ => 0,
        };
        let missing = &b"\r\n"[2 - left..][..crlf as usize];
        missing.is_empty() || self.step(self.last_ns, missing, frames).is_ok()
    }

    /// The connection closed: a partial frame is dropped.
    pub fn close(&mut self) {
        self.lose_sync();
        self.state = State::Line;
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// An inline command (`SET k v\r\n`, as telnet users type it): words become bulk strings.
fn inline_command(line: &[u8], max: usize) -> Result<Value, &'static str> {
    if line.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err("bad_type");
    }
    let items: Vec<Value> = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
        .take(MAX_KEPT_ITEMS)
        .map(|w| Value::Bulk(Text::from_line(w, max)))
        .collect();
    Ok(Value::Aggregate {
        kind: AggKind::Array,
        len: items.len() as u64,
        items,
    })
}

/// Where the next frame may start after lost bytes: at the start of a read or after a line feed, a
/// command array (`*<digit>`) on the command side, any RESP type byte on the reply side.
fn find_frame_start(side: Side, data: &[u8]) -> Option<usize> {
    let plausible = |d: &[u8]| match side {
        Side::Commands => d.len() >= 2 && d[0] == b'*' && d[1].is_ascii_digit(),
        Side::Replies => d.first().is_some_and(|b| b"+-:$*_,#(!=%~>".contains(b)),
    };
    if plausible(data) {
        return Some(0);
    }
    data.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .find(|&i| plausible(&data[i..]))
}
