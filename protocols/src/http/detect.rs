//! Cheap recognition of an HTTP/1.x message start, used both to classify a new connection and to
//! find the next message after lost bytes.
use crate::{Direction, Role};

/// Methods with a bounded metric label (OpenTelemetry's known HTTP methods); any other method is
/// reported as `_OTHER`.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The canonical name of a known method, for metric labels.
pub fn known_method(method: &str) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|m| *m == method)
}

/// Does `data` start like an HTTP/1.x request line or status line? Ports are no hint: HTTP runs
/// anywhere.
pub fn detect(_dir: Direction, data: &[u8], _remote_port: u16) -> bool {
    starts_request(data) || starts_response(data) || other_request_line(data)
}

/// Shortest and longest method of a request line with another method than the known ones.
const OTHER_METHOD_LEN: std::ops::RangeInclusive<usize> = 3..=32;
/// Longest first line looked at for one.
const MAX_OTHER_LINE: usize = 1024;

/// A whole request line with another method than the known ones (WebDAV's `PROPFIND`, a cache's
/// `PURGE`): a method, one space, a target without spaces, one space, `HTTP/1.0` or `HTTP/1.1`,
/// and the line's end. Only at a connection's first bytes: unlike a known method, a word alone
/// says nothing, so the whole line must be there. The method is written as registered methods are
/// (upper-case letters, digits, `-`, `_`; three bytes at least) and is no known method's tail:
/// bytes resuming after a loss in the middle of `POST /a HTTP/1.1` are no request `ST` or `OST`.
fn other_request_line(data: &[u8]) -> bool {
    let window = &data[..data.len().min(MAX_OTHER_LINE)];
    let Some(line) = window
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| window[..end].strip_suffix(b"\r"))
    else {
        return false;
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    OTHER_METHOD_LEN.contains(&method.len())
        && method
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !KNOWN_METHODS
            .iter()
            .any(|m| m.len() > method.len() && m.as_bytes().ends_with(method))
        && !target.is_empty()
        && target.iter().all(u8::is_ascii_graphic)
        && matches!(version, b"HTTP/1.0" | b"HTTP/1.1")
}

/// A known method, one space, then the first byte of a request target (`/`, `*`, an absolute URI or,
/// for CONNECT, an authority).
pub fn starts_request(data: &[u8]) -> bool {
    KNOWN_METHODS.iter().any(|m| {
        let m = m.as_bytes();
        data.len() > m.len() + 1
            && data.starts_with(m)
            && data[m.len()] == b' '
            && data[m.len() + 1].is_ascii_graphic()
    })
}

/// `HTTP/1.` followed by a minor version digit.
pub fn starts_response(data: &[u8]) -> bool {
    data.len() > 7 && data.starts_with(b"HTTP/1.") && data[7].is_ascii_digit()
}

/// The traced process's side of a connection whose first bytes seen are `data`, going `dir`: a
/// request is written by a client and read by a server, a response the other way round. What a
/// connection traced from the middle of an exchange needs (the process was selected, or the agent
/// started, while a request was in flight): its first bytes may be a response. None when `data`
/// starts neither.
pub fn role(dir: Direction, data: &[u8]) -> Option<Role> {
    let request = if starts_request(data) || other_request_line(data) {
        true
    } else if starts_response(data) {
        false
    } else {
        return None;
    };
    Some(match (dir, request) {
        (Direction::Egress, true) | (Direction::Ingress, false) => Role::Client,
        (Direction::Ingress, true) | (Direction::Egress, false) => Role::Server,
    })
}

/// Offset of the first plausible message start in `data`: at its beginning (a new syscall often starts
/// a new message) or right after a line feed.
pub fn find_message_start(data: &[u8], starts: fn(&[u8]) -> bool) -> Option<usize> {
    if starts(data) {
        return Some(0);
    }
    data.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .find(|&i| starts(&data[i..]))
}
