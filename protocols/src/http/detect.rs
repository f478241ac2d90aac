//! Cheap recognition of an HTTP/1.x message start, used both to classify a new connection and to
//! find the next message after lost bytes.
use crate::Direction;

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
    starts_request(data) || starts_response(data)
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
