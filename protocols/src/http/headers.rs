//! A head's headers, kept as captured and rendered as the JSON object of the `req_headers` /
//! `resp_headers` columns when rows are read ([`HEADERS_JSON`]), written with [`crate::json`].
use super::parse::MAX_HEADERS;
use crate::{REDACTED, Renderer, json};

/// The `req_headers` / `resp_headers` columns: header lines as captured → a JSON object.
pub const HEADERS_JSON: Renderer = Renderer {
    name: "http_headers_json",
    render: render_json,
};

/// A head's kept header lines ([`super::parse::Head::headers`]) as a JSON object ([`headers_json`];
/// secrets were redacted when the head was kept).
pub fn render_json(block: &str) -> String {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(block.as_bytes(), &mut slots) {
        Ok(httparse::Status::Complete((_, headers))) => headers_json(headers, false),
        // The empty block of a head without headers. A block is always what httparse accepted (or
        // lines written from its slices), so nothing else lands here.
        _ => headers_json(&[], false),
    }
}

/// Whether a header's value is secret: Authorization, Proxy-Authorization, Cookie, Set-Cookie,
/// and names such as `X-Api-Key` or `X-Auth-Token` ([`super::redact::secret_header`]).
pub(super) fn secret(name: &str) -> bool {
    known(name) == Known::Secret || super::redact::secret_header(name)
}

/// The headers a head's parsing looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    ContentType,
    ContentEncoding,
    ContentLength,
    TransferEncoding,
    /// A value that carries credentials or a session: Authorization, Proxy-Authorization, Cookie,
    /// Set-Cookie.
    Secret,
    Other,
}

/// Which header `name` is. The names have different lengths, so the length picks the one
/// candidate to compare: this runs for every header of every head.
pub(super) fn known(name: &str) -> Known {
    let is = |known: &str| eq_lowercase(name.as_bytes(), known.as_bytes());
    match name.len() {
        6 if is("cookie") => Known::Secret,
        10 if is("set-cookie") => Known::Secret,
        12 if is("content-type") => Known::ContentType,
        13 if is("authorization") => Known::Secret,
        14 if is("content-length") => Known::ContentLength,
        16 if is("content-encoding") => Known::ContentEncoding,
        17 if is("transfer-encoding") => Known::TransferEncoding,
        19 if is("proxy-authorization") => Known::Secret,
        _ => Known::Other,
    }
}

/// A header of nearly every exchange whose value's grammar leaves no room for a credential (a
/// host, a date, product names, lists of tokens or codings): its value is not searched for tokens
/// by their shape ([`crate::secret::shapes`]), which would cost every exchange. (The headers
/// [`known`] names are not either.) The length and the first four letters, read as one word, pick
/// the one candidate to compare (`host` and `date` are that word).
#[inline]
pub(super) fn plain(name: &str) -> bool {
    const fn word(four: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*four)
    }
    let bytes = name.as_bytes();
    let Some(first) = bytes.first_chunk::<4>() else {
        return false;
    };
    // Lower case (see `eq_lowercase`).
    let first = word(first) | 0x2020_2020;
    let is = |known: &str| eq_lowercase(bytes, known.as_bytes());
    match bytes.len() {
        4 => first == word(b"host") || first == word(b"date"),
        6 if first == word(b"serv") => is("server"),
        6 if first == word(b"acce") => is("accept"),
        10 if first == word(b"conn") => is("connection"),
        10 if first == word(b"keep") => is("keep-alive"),
        10 if first == word(b"user") => is("user-agent"),
        13 if first == word(b"cach") => is("cache-control"),
        13 if first == word(b"last") => is("last-modified"),
        15 if first == word(b"acce") => is("accept-encoding") || is("accept-language"),
        17 if first == word(b"if-m") => is("if-modified-since"),
        _ => false,
    }
}

/// `name` equals `lower` (lowercase letters and `-`, as long as `name`) in any case, compared a
/// word at a time: a byte ORed with 0x20 is a lowercase letter only if it is that letter in
/// either case, and `-` only if it is `-` or CR, which no header name (a token) holds.
fn eq_lowercase(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let len = name.len();
    if len != lower.len() {
        return false;
    }
    if len < 8 {
        // `host`, `date`, `server`: the first four bytes and the last four (overlapping).
        let word = |bytes: &[u8], at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|w| <[u8; 4]>::try_from(w).ok())
                .map(u32::from_le_bytes)
        };
        return match len {
            4.. => {
                word(name, 0).map(|w| w | FOLD as u32) == word(lower, 0)
                    && word(name, len - 4).map(|w| w | FOLD as u32) == word(lower, len - 4)
            }
            _ => name.eq_ignore_ascii_case(lower),
        };
    }
    let word = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    // Whole words, then the last eight bytes (overlapping the word before when `len` is no
    // multiple of eight).
    let mut at = 0;
    while at + 8 < len {
        if word(name, at).map(|w| w | FOLD) != word(lower, at) {
            return false;
        }
        at += 8;
    }
    word(name, len - 8).map(|w| w | FOLD) == word(lower, len - 8)
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
    // Names almost always differ in their first byte: compared inline before a full comparison.
    order.sort_by(|a, b| {
        let first = |h: &httparse::Header<'_>| h.name.as_bytes().first().copied();
        first(a).cmp(&first(b)).then_with(|| a.name.cmp(b.name))
    });
    let size: usize = order.iter().map(|h| h.name.len() + h.value.len() + 6).sum();
    // Bytes, not a String: clean values are copied without a UTF-8 check of their own; the one
    // check at the end covers the whole object.
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'{');
    let mut i = 0;
    while let Some(h) = order.get(i) {
        let name = h.name;
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        push_value(&mut out, name.as_bytes());
        out.extend_from_slice(b"\":\"");
        let secret = redact && secret(name);
        let mut first = true;
        while let Some(next) = order.get(i)
            && next.name == name
        {
            if !first {
                out.extend_from_slice(b", ");
            }
            first = false;
            if secret {
                out.extend_from_slice(REDACTED.as_bytes());
            } else {
                push_value(&mut out, next.value);
            }
            i += 1;
        }
        out.push(b'"');
    }
    out.push(b'}');
    json::into_string(out)
}

/// A header name or value as the inside of a JSON string: printable ASCII without quote or
/// backslash (every name httparse accepts, almost every value) as is, anything else decoded lossily
/// and escaped.
fn push_value(out: &mut Vec<u8>, value: &[u8]) {
    // One pass without early exit, which the compiler turns into vector code.
    let plain = value.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.extend_from_slice(value);
    } else {
        json::push_escaped(out, &String::from_utf8_lossy(value));
    }
}
