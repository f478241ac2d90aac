//! Messages the server sends, decoded with `postgres-protocol` (rust-postgres's wire layer, the
//! reference implementation in Rust) from the prefix the frame reader kept; only what the
//! records need survives: command tags, errors, row counts, message names.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;

use crate::frames::Header;

/// Tags of backend messages.
const TAGS: &[u8] = b"RKSZTDCEINntsvc123AGHWdfV";

/// Bytes kept of messages whose content we read (errors and notices can be long).
const KEEP_SMALL: usize = 512;

#[derive(Debug, PartialEq)]
pub(super) enum Backend {
    AuthenticationOk,
    /// Any other authentication request (password, SASL, …) or step.
    AuthenticationStep,
    ReadyForQuery,
    CommandComplete(String),
    /// `ERROR 42P01: relation "x" does not exist`, and whether the session ends (FATAL/PANIC).
    Error {
        text: String,
        fatal: bool,
    },
    DataRow,
    EmptyQuery,
    /// An Execute's row limit was reached: its answer ends here.
    PortalSuspended,
    /// The types of a described statement's parameters, by OID (as many as were kept).
    ParameterDescription(Vec<u32>),
    /// Messages only named in the response summary (ParseComplete, RowDescription, …).
    Named(&'static str),
    /// Status and notices that are not part of any request's answer.
    Ignored,
}

pub(super) fn header(buf: &[u8]) -> Result<Header, &'static str> {
    let (Some(&tag), Some(len)) = (buf.first(), be_u32(buf, 1)) else {
        return Ok(Header::Incomplete);
    };
    if !TAGS.contains(&tag) {
        return Err("unknown_backend_tag");
    }
    if len < 4 {
        return Err("bad_length");
    }
    let keep = match tag {
        b'E' | b'N' | b'C' | b'R' | b't' => KEEP_SMALL,
        b'Z' => 6,
        _ => 5,
    };
    Ok(Header::Frame {
        len: u64::from(len) + 1,
        keep,
    })
}

/// Could a chunk starting with these bytes be the start of a server message?
pub(super) fn starts_message(data: &[u8]) -> bool {
    data.first().is_some_and(|t| TAGS.contains(t))
        && be_u32(data, 1).is_some_and(|l| (4..1 << 30).contains(&l))
}

/// Where a chunk taken from the middle of the stream (after lost bytes) starts whole messages:
/// the first message's tag, if every message's tag and length are plausible up to the chunk's end
/// or a message running past it. A chunk that starts inside a message rarely passes.
pub(super) fn message_chain(data: &[u8]) -> Option<u8> {
    let first = *data.first()?;
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < 5 {
            // A header cut by the chunk's end: its tag is all there is to check.
            return TAGS.contains(&rest[0]).then_some(first);
        }
        let len = be_u32(rest, 1)?;
        if !starts_message(rest) || fixed_len(rest[0]).is_some_and(|l| l != len) {
            return None;
        }
        let end = at + 1 + len as usize;
        // Nothing in a first message running past the chunk could be checked.
        if at == 0 && end > data.len() {
            return None;
        }
        at = end;
    }
    Some(first)
}

/// The length field of messages that have only one.
fn fixed_len(tag: u8) -> Option<u32> {
    match tag {
        b'1' | b'2' | b'3' | b'n' | b'I' | b's' | b'c' => Some(4),
        b'Z' => Some(5),
        b'K' => Some(12),
        _ => None,
    }
}

/// Does an answer continue with this message (rather than start with it)? Rows and COPY data
/// only come after the answer's first message.
pub(super) fn continues_answer(tag: u8) -> bool {
    matches!(tag, b'D' | b'd')
}

/// An answer's end in a chunk taken from the middle of the stream: the offset just past the first
/// ReadyForQuery, and the CommandComplete, ErrorResponse or EmptyQueryResponse ending where it
/// starts, if the chunk holds one.
pub(super) fn answer_end(data: &[u8]) -> Option<(usize, Option<Backend>)> {
    let ready = data
        .windows(READY_LEN)
        .position(|w| w[..5] == *b"Z\0\0\0\x05" && matches!(w[5], b'I' | b'T' | b'E'))?;
    let last = (ready.saturating_sub(KEEP_SMALL)..ready.saturating_sub(4))
        .rev()
        .filter(|&i| matches!(data[i], b'C' | b'E' | b'I'))
        .find(|&i| be_u32(data, i + 1).is_some_and(|len| i + 1 + len as usize == ready))
        .and_then(|i| decode(&data[i..ready]));
    Some((ready + READY_LEN, last))
}

/// Bytes of a ReadyForQuery message.
const READY_LEN: usize = 6;

/// Decodes a frame cut to its kept prefix. None when it is malformed.
pub(super) fn decode(frame: &[u8]) -> Option<Backend> {
    let tag = *frame.first()?;
    Some(match tag {
        // COPY … TO STDOUT sends a CopyData per row.
        b'D' | b'd' => Backend::DataRow,
        b'1' => Backend::Named("ParseComplete"),
        b'2' => Backend::Named("BindComplete"),
        b'3' => Backend::Named("CloseComplete"),
        b'n' => Backend::Named("NoData"),
        b't' => Backend::ParameterDescription(
            frame
                .get(7..)?
                .as_chunks::<4>()
                .0
                .iter()
                .map(|oid| u32::from_be_bytes(*oid))
                .collect(),
        ),
        b'T' => Backend::Named("RowDescription"),
        b's' => Backend::PortalSuspended,
        b'G' | b'H' | b'W' => Backend::Named("CopyResponse"),
        b'I' => Backend::EmptyQuery,
        b'Z' => Backend::ReadyForQuery,
        b'R' => decode_with_crate(frame).unwrap_or(Backend::AuthenticationStep),
        b'C' | b'E' => decode_with_crate(frame)?,
        _ => Backend::Ignored,
    })
}

fn decode_with_crate(frame: &[u8]) -> Option<Backend> {
    let mut buf = BytesMut::from(frame);
    // A message cut at the kept length: make its length field say so, the crate wants it whole.
    let kept_len = u32::try_from(frame.len().checked_sub(1)?).ok()?;
    buf.get_mut(1..5)?.copy_from_slice(&kept_len.to_be_bytes());
    Some(match Message::parse(&mut buf).ok()?? {
        Message::AuthenticationOk => Backend::AuthenticationOk,
        Message::CommandComplete(body) => {
            Backend::CommandComplete(body.tag().unwrap_or_default().to_string())
        }
        Message::ErrorResponse(body) => {
            let (mut severity, mut code, mut message) =
                (String::new(), String::new(), String::new());
            let mut fields = body.fields();
            while let Ok(Some(field)) = fields.next() {
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    b'V' => severity = value,
                    b'S' if severity.is_empty() => severity = value,
                    b'C' => code = value,
                    b'M' => message = value,
                    _ => {}
                }
            }
            let fatal = matches!(severity.as_str(), "FATAL" | "PANIC");
            Backend::Error {
                text: format!("{severity} {code}: {message}"),
                fatal,
            }
        }
        _ if frame[0] == b'R' => Backend::AuthenticationStep,
        _ => Backend::Ignored,
    })
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
