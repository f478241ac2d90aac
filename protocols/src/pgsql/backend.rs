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
        b'E' | b'N' | b'C' | b'R' => KEEP_SMALL,
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

/// Decodes a frame cut to its kept prefix. None when it is malformed.
pub(super) fn decode(frame: &[u8]) -> Option<Backend> {
    let tag = *frame.first()?;
    Some(match tag {
        b'D' => Backend::DataRow,
        b'1' => Backend::Named("ParseComplete"),
        b'2' => Backend::Named("BindComplete"),
        b'3' => Backend::Named("CloseComplete"),
        b'n' => Backend::Named("NoData"),
        b't' => Backend::Named("ParameterDescription"),
        b'T' => Backend::Named("RowDescription"),
        b's' => Backend::Named("PortalSuspended"),
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
