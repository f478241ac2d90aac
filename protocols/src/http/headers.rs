//! A head's headers as the JSON object of the `req_headers` / `resp_headers` columns, written by
//! hand: serde_json would need a map built per head, and this runs for every head parsed.
use crate::REDACTED;

/// Header values that carry credentials or sessions.
fn is_secret(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// A JSON object `{name: value}` (keys sorted, repeated names joined with `, `, values decoded
/// lossily), secrets redacted. Written directly, byte for byte what serializing a
/// `serde_json::Map` gives (sorted keys, same escapes), without building the map: this runs for
/// every head.
pub fn headers_json(headers: &[httparse::Header<'_>], redact: bool) -> String {
    // Sorted on the stack for usual heads.
    const ON_STACK: usize = 32;
    let mut stack = [&httparse::EMPTY_HEADER; ON_STACK];
    let mut heap = Vec::new();
    let order: &mut [&httparse::Header<'_>] = if headers.len() <= ON_STACK {
        for (slot, h) in stack.iter_mut().zip(headers) {
            *slot = h;
        }
        &mut stack[..headers.len()]
    } else {
        heap.extend(headers);
        &mut heap
    };
    // Stable: values of a repeated name stay in the order they came.
    order.sort_by(|a, b| a.name.cmp(b.name));
    let size: usize = order.iter().map(|h| h.name.len() + h.value.len() + 6).sum();
    let mut out = String::with_capacity(size + 2);
    out.push('{');
    let mut i = 0;
    while let Some(h) = order.get(i) {
        let name = h.name;
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        push_json_escaped(&mut out, name);
        out.push_str("\":\"");
        let mut first = true;
        while let Some(next) = order.get(i)
            && next.name == name
        {
            if !first {
                out.push_str(", ");
            }
            first = false;
            if redact && is_secret(name) {
                push_json_escaped(&mut out, REDACTED);
            } else {
                push_json_escaped(&mut out, &String::from_utf8_lossy(next.value));
            }
            i += 1;
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// JSON string escapes as serde_json writes them: `\"`, `\\`, the short forms of \b \f \n \r \t,
/// `\u00xx` (lowercase hex) for other control characters; everything else as is.
fn push_json_escaped(out: &mut String, s: &str) {
    // Almost every header needs no escape: one pass without early exit (which the compiler turns
    // into vector code) tells, and the string is copied whole.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}
