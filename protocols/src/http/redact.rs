//! Secret values outside headers: in query strings, form bodies and JSON bodies (`?token=…`,
//! `password=…`, `{"client_secret": "…"}`), replaced by [`REDACTED`] when the Tracepoint redacts.
//! Hand-written: the text is a kept prefix of a body (often cut mid-value), which no JSON or form
//! crate takes, and only the values of a few keys are rewritten, the rest left byte for byte.

use crate::REDACTED;
use crate::secret::secret_name;

/// Header names without the `X-` prefix that services send credentials under; each starts with
/// `a`, `p` or `t`, which [`secret_header`] looks at first.
const UNPREFIXED: [&str; 7] = [
    "token",
    "apikey",
    "api-key",
    "api-token",
    "auth-token",
    "access-token",
    "private-token",
];

/// A header beyond Authorization, Cookie and the like whose value is secret: an `X-` header named
/// so (`X-Api-Key`, `X-Auth-Token`, `X-Amz-Security-Token`, `X-Vault-Token`, `X-Session-Id`), or
/// one of [`UNPREFIXED`] (`Api-Key`, `Private-Token`, …). Looked at for every header of every
/// head: inlined, most names are ruled out by their first byte without a call.
#[inline]
pub(super) fn secret_header(name: &str) -> bool {
    matches!(
        name.as_bytes().first().map(|b| b | 0x20),
        Some(b'x' | b'a' | b'p' | b't')
    ) && secret_header_named(name.as_bytes())
}

#[inline(never)]
fn secret_header_named(name: &[u8]) -> bool {
    match name {
        [b'x' | b'X', b'-', rest @ ..] => secret_name(rest),
        b => UNPREFIXED
            .iter()
            .any(|known| known.len() == b.len() && b.eq_ignore_ascii_case(known.as_bytes())),
    }
}

/// Does a value under the key `key` hold a secret? The names every protocol redacts, and the
/// signatures of pre-signed URLs (`X-Amz-Signature` of S3 and MinIO, `X-Goog-Signature`, Azure
/// SAS's `sig`): whoever holds one may fetch or upload the object until it expires, while the
/// `X-Amz-Credential` beside it only names the key that signed.
fn secret_key(key: &str) -> bool {
    let key = key.as_bytes();
    secret_name(key)
        || key.eq_ignore_ascii_case(b"sig")
        || key
            .windows(SIGNATURE.len())
            .any(|w| w.eq_ignore_ascii_case(SIGNATURE))
}

const SIGNATURE: &[u8] = b"signature";

/// `path` with the values of secret query parameters redacted; None when it has none.
pub fn query(path: &str) -> Option<String> {
    let (before, query) = path.split_once('?')?;
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs = form(query)?;
    let mut out = String::with_capacity(path.len());
    out.push_str(before);
    out.push('?');
    out.push_str(&pairs);
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

/// `pairs` (`key=value&…`, as in a query string or a form body) with the values of secret keys
/// redacted; None when it has none.
pub fn form(pairs: &str) -> Option<String> {
    let secret = |pair: &str| {
        pair.split_once('=')
            .is_some_and(|(key, value)| !value.is_empty() && secret_key(key))
    };
    if !pairs.split('&').any(secret) {
        return None;
    }
    let mut out = String::with_capacity(pairs.len());
    for (i, pair) in pairs.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if secret(pair) => {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    Some(out)
}

/// `json` (possibly cut short) with the string values of secret keys redacted, at any depth; None
/// when it has none.
pub fn json(json: &str) -> Option<String> {
    let bytes = json.as_bytes();
    let mut out = String::new();
    // Bytes of `json` before `copied` are in `out` already.
    let mut copied = 0;
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'"') {
        let start = i + offset;
        let Some(end) = string_end(bytes, start + 1) else {
            break;
        };
        let after = skip_whitespace(bytes, end + 1);
        if bytes.get(after) != Some(&b':') {
            // A string value, or an array's element.
            i = end + 1;
            continue;
        }
        let value = skip_whitespace(bytes, after + 1);
        if bytes.get(value) != Some(&b'"') || !secret_key(&json[start + 1..end]) {
            i = value;
            continue;
        }
        // A value cut by the end of the kept text is redacted to its end.
        let value_end = string_end(bytes, value + 1);
        out.push_str(&json[copied..=value]);
        out.push_str(REDACTED);
        match value_end {
            Some(value_end) => {
                copied = value_end;
                i = value_end + 1;
            }
            None => {
                copied = bytes.len();
                break;
            }
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&json[copied..]);
    Some(out)
}

/// Index of the quote closing a JSON string whose contents start at `from`.
fn string_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_whitespace(bytes: &[u8], from: usize) -> usize {
    from + bytes
        .get(from..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_query_parameters_are_redacted_and_the_rest_kept() {
        assert_eq!(
            query("/cb?code=1&access_token=abc&state=x#frag").as_deref(),
            Some("/cb?code=1&access_token=<redacted>&state=x#frag")
        );
        assert_eq!(
            query("/login?user=ann&Password=hunter2").as_deref(),
            Some("/login?user=ann&Password=<redacted>")
        );
        assert_eq!(query("/items?page=2&sort=name"), None);
        assert_eq!(query("/plain"), None);
        assert_eq!(query("/t?token="), None, "nothing to hide");
    }

    #[test]
    fn the_signatures_of_pre_signed_urls_are_redacted() {
        // What boto3's generate_presigned_url hands out for a GET from S3 (or MinIO in the cluster).
        assert_eq!(
            query("/bucket/report.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261207T090000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0").as_deref(),
            Some("/bucket/report.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<redacted>&X-Amz-Date=20261207T090000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=<redacted>")
        );
        assert_eq!(
            query("/o/a.png?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=8a7b").as_deref(),
            Some("/o/a.png?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=<redacted>")
        );
        // An Azure SAS token.
        assert_eq!(
            query("/c/b.txt?sv=2022-11-02&se=2026-12-08T00%3A00%3A00Z&sr=b&sp=r&sig=AbC%2Bd%3D")
                .as_deref(),
            Some("/c/b.txt?sv=2022-11-02&se=2026-12-08T00%3A00%3A00Z&sr=b&sp=r&sig=<redacted>")
        );
        assert_eq!(query("/search?signal=1&design=x"), None);
    }

    #[test]
    fn secret_form_fields_are_redacted() {
        assert_eq!(
            form("username=ann&password=hunter2&remember=1").as_deref(),
            Some("username=ann&password=<redacted>&remember=1")
        );
        assert_eq!(
            form("user%5Bpassword%5D=x").as_deref(),
            Some("user%5Bpassword%5D=<redacted>")
        );
        assert_eq!(form("q=rust&lang=en"), None);
    }

    #[test]
    fn secret_json_string_values_are_redacted_at_any_depth() {
        assert_eq!(
            json(r#"{"user":"ann","password":"hun\"ter2","n":1}"#).as_deref(),
            Some(r#"{"user":"ann","password":"<redacted>","n":1}"#)
        );
        assert_eq!(
            json(r#"{"auth": {"client_secret" : "s3", "scopes": ["token", "x"]}}"#).as_deref(),
            Some(r#"{"auth": {"client_secret" : "<redacted>", "scopes": ["token", "x"]}}"#)
        );
        // Numbers and objects under a secret-looking key are left; a value cut short is
        // redacted to the end of the kept text.
        assert_eq!(json(r#"{"tokens_used": 42}"#), None);
        assert_eq!(
            json(r#"{"refresh_token":"eyJhbGciOi"#).as_deref(),
            Some(r#"{"refresh_token":"<redacted>"#)
        );
        assert_eq!(json(r#"{"name":"password"}"#), None, "a value is no key");
        assert_eq!(json("not json at all"), None);
    }
}
