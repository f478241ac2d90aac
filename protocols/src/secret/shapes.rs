//! Secrets recognised by the shape of the value itself, whatever names it (`{"data": "eyJ…"}`, a
//! key pasted into a log line, a token in a SQL literal or a Redis value), on top of the names in
//! [`super`]. Only shapes that are defined well enough to rarely match anything else:
//!
//! - **JWT**: three base64url segments joined by `.`, the first two starting `eyJ` (a JSON object,
//!   `{"`, encodes so); the third may be empty (`alg: none`). An encrypted one (JWE, RFC 7516):
//!   five segments, the first starting `eyJ`, the second (the encrypted key) possibly empty, the
//!   initialization vector and the tag of at least 16 characters (96 bits), a ciphertext between.
//!   One `eyJ…` segment alone is left: a base64 JSON pagination cursor has that shape.
//! - **AWS access key id**: `AKIA` (long-term) or `ASIA` (temporary) and 16 uppercase letters or
//!   digits, 20 in all. **AWS secret access key**: 40 characters of base64 (`A-Za-z0-9+/`) mixing
//!   upper and lower case and digits, only in a text that also holds an access key id: alone, that
//!   shape is too common (paths, hashes) to call secret.
//! - **GitHub**: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and at least 36 letters or digits;
//!   `github_pat_` and at least 82 letters, digits or `_` (GitHub's documented formats).
//! - **Slack**: `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` and at least 10 letters, digits or `-`.
//! - **Stripe** keys: `sk_live_`, `rk_live_`, `sk_test_`, `rk_test_` and at least 24 letters or
//!   digits (a test key still reads and writes the account's test data).
//! - **Google API key**: `AIza` and exactly 35 letters, digits, `_` or `-`.
//! - **PEM private key**: what follows a `-----BEGIN … PRIVATE KEY-----` line (also `… PRIVATE KEY
//!   BLOCK` of PGP) up to its `-----END`: base64, line breaks (raw or JSON-escaped), the
//!   `Proc-Type:`/`DEK-Info:` lines of an encrypted key. Without an end (a body cut by its limit),
//!   to where that stops, the text's end. The BEGIN and END lines stay: they say what was there.
//! - **`Bearer <token>`** (RFC 6750, capital B as clients send it) in text: the token, of RFC 6750's
//!   characters, when it has at least 8 with a digit or at least 20 (`Bearer tokens` in prose is
//!   left; a JWT or vendor token after it is one of the shapes above anyway).
//! - **`Basic <credentials>`** (RFC 7617) in text — a logged request, a `curl -H` in a script, a
//!   header copied into a JSON body: the credentials, at least 12 base64 characters that decode to
//!   text without control characters holding a `:` after at least one byte (`user:password`), which
//!   prose (`Basic Authentication`) does not.
//!
//! A token counts only where it starts and ends at a boundary: the byte before and the byte after
//! are not of its alphabet (so `xAKIA…` or a `ghp_` inside a longer word is nothing). A URL escape
//! (`%22AKIA…`) or a JSON escape (`\nAKIA…`) just before it is a boundary too. In a text known to be
//! cut (a body past its limit), a token whose prefix is there and whose characters run to the
//! end is redacted though shorter than its shape: its start is as secret as the whole.
//!
//! Only the token is replaced by [`crate::REDACTED`]; the text around it stays byte for byte.
//!
//! Hand-written rather than with the `regex` crate (which the agent has, this crate does not): the
//! boundary and escape rules, the key id that makes a 40-character run a secret, the PEM body that
//! stops at `-----` and the cut-text rule fit no regex, and a text usually holds no token at all, so
//! what matters is how fast that is seen, on the agent's hot path for every kept head, body,
//! statement and Redis value. In order: a text shorter than the shortest token ([`SHORTEST`]) and
//! not cut holds none (most header values, many bodies); then five anchor bytes are looked for
//! (`J` of `eyJ`, `I` of `AKIA`/`ASIA`/`AIza`, `_` of the GitHub and Stripe prefixes, `x` of `xox`,
//! `B` of `BEGIN`, `Bearer` and `Basic`), 32 bytes at a time in SIMD compares the compiler makes of a loop
//! without early exit, a shorter text eight bytes at a time by word arithmetic (about one
//! instruction per byte either way); only where one is found are its positions taken and each
//! checked against the few shapes it can be part of. (`memchr` for each prefix would be one pass per
//! prefix, and is no dependency of this crate either.) Measured on the agent's HTTP path
//! (`sonde-bench-tracker` under callgrind): +1.5% instructions, most of it the per-header checks.

use std::ops::Range;

use crate::REDACTED;

/// Which shape a token has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Jwt,
    AwsKeyId,
    AwsSecret,
    GitHub,
    Slack,
    Stripe,
    GoogleApiKey,
    PemPrivateKey,
    Bearer,
    Basic,
}

/// A token found: its bytes in the text, and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub range: Range<usize>,
    pub shape: Shape,
}

/// Appends `text` to `out`, each token replaced by [`REDACTED`]. `cut`: the text ends where the
/// capture stopped keeping it, not where its value ended. Returns whether a token was replaced.
#[inline]
pub(crate) fn push_redacted(out: &mut String, text: &str, cut: bool) -> bool {
    if !holds_token(text.as_bytes(), cut) {
        out.push_str(text);
        return false;
    }
    push_replaced(out, text, &tokens(text, cut));
    true
}

/// `text` with each token replaced by [`REDACTED`]; None when it holds none (no copy).
#[inline]
pub(crate) fn redacted(text: &str, cut: bool) -> Option<String> {
    if !holds_token(text.as_bytes(), cut) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    push_replaced(&mut out, text, &tokens(text, cut));
    Some(out)
}

/// Appends `text` with `found` (its [`tokens`]) replaced.
#[inline(never)]
fn push_replaced(out: &mut String, text: &str, found: &[Token]) {
    let mut at = 0;
    for token in found {
        // Ranges start and end on char boundaries (see `tokens`).
        out.push_str(text.get(at..token.range.start).unwrap_or_default());
        out.push_str(REDACTED);
        at = token.range.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
}

/// The length of the shortest whole token (a Slack token, or `Bearer ` and 8 characters): a
/// shorter text that was not cut holds none.
pub(crate) const SHORTEST: usize = 15;

/// Does `bytes` hold a token? Stops at the first. The length is looked at inline (most header
/// values and many bodies are shorter than any token); the rest is a call, so that the parsers
/// that call this stay small.
#[inline]
pub(crate) fn holds_token(bytes: &[u8], cut: bool) -> bool {
    (cut || bytes.len() >= SHORTEST) && scan(bytes, cut)
}

/// [`holds_token`] past the length: usually no anchor byte at all, which takes a few
/// instructions per 32 bytes to see.
#[inline(never)]
fn scan(bytes: &[u8], cut: bool) -> bool {
    any_anchor(bytes) && anchored_token(bytes, cut)
}

/// [`holds_token`] for a text with an anchor byte.
#[inline(never)]
fn anchored_token(bytes: &[u8], cut: bool) -> bool {
    if bytes.len() < BLOCK {
        return bytes
            .iter()
            .enumerate()
            .any(|(i, &b)| is_anchor(b) && at_anchor(bytes, i, cut).is_some());
    }
    let mut anchors = Anchors::new(bytes);
    while let Some(i) = anchors.next() {
        if at_anchor(bytes, i, cut).is_some() {
            return true;
        }
    }
    false
}

/// The tokens of `text`, in order, not overlapping, each starting and ending on a char boundary.
pub(crate) fn tokens(text: &str, cut: bool) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut found: Vec<Token> = Vec::new();
    let mut anchors = Anchors::new(bytes);
    let mut key_id = false;
    while let Some(i) = anchors.next() {
        let Some(mut token) = at_anchor(bytes, i, cut) else {
            continue;
        };
        // A token may start inside the one before only where their alphabets differ
        // (`xoxb-…-sk_live_…`): both are secret, the first runs on.
        token.range.start = token
            .range
            .start
            .max(found.last().map_or(0, |t| t.range.end));
        anchors.skip_to(token.range.end.max(i + 1));
        key_id |= token.shape == Shape::AwsKeyId;
        if !token.range.is_empty() {
            found.push(token);
        }
    }
    if key_id {
        aws_secrets(bytes, cut, &mut found);
    }
    // Every token starts at an ASCII byte and ends after one (or at the end), so these hold
    // for a `&str`; checked all the same, slicing must never panic on captured text.
    found.retain(|t| text.is_char_boundary(t.range.start) && text.is_char_boundary(t.range.end));
    found
}

// Byte classes, as bits of `CLASS`.
/// `A-Z a-z 0-9`.
const ALNUM: u8 = 1;
/// `-`.
const DASH: u8 = 2;
/// `_`.
const UNDERSCORE: u8 = 4;
/// `+ /`: base64's two beyond letters and digits.
const B64: u8 = 8;
/// `. ~`: RFC 6750's b64token beyond base64url and base64.
const TOKEN68: u8 = 16;
/// `A-Z 0-9`.
const UPPER_DIGIT: u8 = 32;
/// `= \ : ,` and whitespace: what a PEM body holds beyond base64 (padding, line breaks raw or
/// JSON-escaped, the headers of an encrypted key).
const PEM_EXTRA: u8 = 64;

const BASE64URL: u8 = ALNUM | DASH | UNDERSCORE;
const PEM_BODY: u8 = ALNUM | B64 | DASH | PEM_EXTRA;

static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if c.is_ascii_alphanumeric() {
            class |= ALNUM;
        }
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            class |= UPPER_DIGIT;
        }
        class |= match c {
            b'-' => DASH,
            b'_' => UNDERSCORE,
            b'+' | b'/' => B64,
            b'.' | b'~' => TOKEN68,
            b'=' | b'\\' | b':' | b',' | b' ' | b'\t' | b'\r' | b'\n' => PEM_EXTRA,
            _ => 0,
        };
        t[b] = class;
        b += 1;
    }
    t
}

fn is(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// End of the run of `class` bytes from `from`.
fn run(bytes: &[u8], from: usize, class: u8) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    from + rest.iter().take_while(|&&b| is(b, class)).count()
}

/// Does `bytes` hold `prefix` at `at`?
fn has(bytes: &[u8], at: usize, prefix: &[u8]) -> bool {
    bytes.get(at..at + prefix.len()) == Some(prefix)
}

/// Can a token of alphabet `class` start at `start`: the text starts there, or the byte before is
/// not of it, or it follows a URL escape (`%22`) or a JSON one (`\n`)?
fn boundary_before(bytes: &[u8], start: usize, class: u8) -> bool {
    let Some(before) = start.checked_sub(1).and_then(|i| bytes.get(i)) else {
        return true;
    };
    let url_escape = start >= 3
        && bytes[start - 3] == b'%'
        && bytes[start - 2].is_ascii_hexdigit()
        && before.is_ascii_hexdigit();
    let json_escape =
        start >= 2 && bytes[start - 2] == b'\\' && matches!(before, b'n' | b'r' | b't');
    !is(*before, class) || url_escape || json_escape
}

/// Does nothing of `class` follow `end`?
fn boundary_after(bytes: &[u8], end: usize, class: u8) -> bool {
    bytes.get(end).is_none_or(|&b| !is(b, class))
}

/// Which anchor bytes start a look: see the module doc.
#[inline(always)]
fn is_anchor(b: u8) -> bool {
    (b == b'J') | (b == b'I') | (b == b'_') | (b == b'x') | (b == b'B')
}

/// The token, if any, that anchor byte `i` is part of.
fn at_anchor(bytes: &[u8], i: usize, cut: bool) -> Option<Token> {
    let token = |range: Option<Range<usize>>, shape| range.map(|range| Token { range, shape });
    match bytes[i] {
        b'J' => token(jwt(bytes, i.checked_sub(2)?, cut), Shape::Jwt),
        b'I' => {
            let key_id = i.checked_sub(2).and_then(|start| {
                let prefix: &[u8] = if has(bytes, start, b"AKIA") {
                    b"AKIA"
                } else {
                    b"ASIA"
                };
                // Exactly 16: a longer run of capitals is a word, not a key id.
                let shape = Prefixed::new(prefix, ALNUM, UPPER_DIGIT, 16).at_most(16);
                shape.after(ALNUM).find(bytes, start, cut)
            });
            token(key_id, Shape::AwsKeyId).or_else(|| {
                let shape = Prefixed::new(b"AIza", BASE64URL, BASE64URL, 35).at_most(35);
                token(
                    shape.find(bytes, i.checked_sub(1)?, cut),
                    Shape::GoogleApiKey,
                )
            })
        }
        b'_' => {
            let before = |n: usize| i.checked_sub(n).and_then(|s| bytes.get(s..i));
            match (before(3), before(2), before(6)) {
                (Some([b'g', b'h', b'p' | b'o' | b'u' | b's' | b'r']), ..) => {
                    let prefix = bytes.get(i - 3..=i)?;
                    let shape = Prefixed::new(prefix, ALNUM | UNDERSCORE, ALNUM, 36);
                    token(shape.find(bytes, i - 3, cut), Shape::GitHub)
                }
                (_, Some(b"sk" | b"rk"), _) => {
                    let prefix = [b"sk_live_", b"sk_test_", b"rk_live_", b"rk_test_"]
                        .into_iter()
                        .find(|prefix| has(bytes, i - 2, *prefix))?;
                    let shape = Prefixed::new(prefix, ALNUM | UNDERSCORE, ALNUM, 24);
                    token(shape.find(bytes, i - 2, cut), Shape::Stripe)
                }
                (.., Some(b"github")) => {
                    let class = ALNUM | UNDERSCORE;
                    let shape = Prefixed::new(b"github_pat_", class, class, 82);
                    token(shape.find(bytes, i - 6, cut), Shape::GitHub)
                }
                _ => None,
            }
        }
        b'x' => {
            let kind = bytes.get(i + 3).copied()?;
            if !(has(bytes, i, b"xox") && matches!(kind, b'b' | b'a' | b'p' | b'r' | b's')) {
                return None;
            }
            let prefix = [b'x', b'o', b'x', kind, b'-'];
            let shape = Prefixed::new(&prefix, ALNUM, ALNUM | DASH, 10);
            token(shape.find(bytes, i, cut), Shape::Slack)
        }
        b'B' => token(
            i.checked_sub(5).and_then(|s| pem(bytes, s)),
            Shape::PemPrivateKey,
        )
        .or_else(|| token(bearer(bytes, i, cut), Shape::Bearer))
        .or_else(|| token(basic(bytes, i, cut), Shape::Basic)),
        _ => None,
    }
}

/// A fixed prefix, then a run of one alphabet.
struct Prefixed<'p> {
    prefix: &'p [u8],
    /// What may not come just before the prefix.
    before: u8,
    /// The run's alphabet.
    class: u8,
    /// The run's length at least and at most.
    min: usize,
    max: usize,
    /// What may not come just after the run (its own alphabet, unless said otherwise).
    after: u8,
}

impl<'p> Prefixed<'p> {
    fn new(prefix: &'p [u8], before: u8, class: u8, min: usize) -> Prefixed<'p> {
        Prefixed {
            prefix,
            before,
            class,
            min,
            max: usize::MAX,
            after: class,
        }
    }

    fn at_most(self, max: usize) -> Prefixed<'p> {
        Prefixed { max, ..self }
    }

    fn after(self, after: u8) -> Prefixed<'p> {
        Prefixed { after, ..self }
    }

    /// The token starting at `start`, prefix included; in a `cut` text, one shorter than `min`
    /// that runs to the end.
    fn find(&self, bytes: &[u8], start: usize, cut: bool) -> Option<Range<usize>> {
        if !has(bytes, start, self.prefix) || !boundary_before(bytes, start, self.before) {
            return None;
        }
        let from = start + self.prefix.len();
        let end = run(bytes, from, self.class);
        let len = end - from;
        let whole = (self.min..=self.max).contains(&len) && boundary_after(bytes, end, self.after);
        let cut_short = cut && end == bytes.len() && len < self.min;
        (whole || cut_short).then_some(start..end)
    }
}

/// A JWT starting at `start`: `eyJ…` `.` `eyJ…` `.` `…` (base64url segments, the first two of
/// at least [`SEGMENT`] characters); in a `cut` text,
/// what there is of one from its `eyJ` to the end.
fn jwt(bytes: &[u8], start: usize, cut: bool) -> Option<Range<usize>> {
    if !has(bytes, start, b"eyJ") || !boundary_before(bytes, start, BASE64URL) {
        return None;
    }
    let to_end = cut.then_some(start..bytes.len());
    let header_end = run(bytes, start + 3, BASE64URL);
    match bytes.get(header_end) {
        None => return to_end,
        Some(b'.') if header_end - start >= SEGMENT => {}
        Some(_) => return None,
    }
    let payload = header_end + 1;
    let payload_end = run(bytes, payload, BASE64URL);
    if let Some(end) = jwe_end(bytes, payload) {
        return Some(start..end);
    }
    if !has(bytes, payload, b"eyJ") {
        // What there is of an `eyJ` that the end cut.
        let kept = bytes.get(payload..).unwrap_or_default();
        return (kept.len() < 3 && b"eyJ".starts_with(kept))
            .then_some(to_end)
            .flatten();
    }
    match bytes.get(payload_end) {
        None => return to_end,
        Some(b'.') if payload_end - payload >= SEGMENT => {}
        Some(_) => return None,
    }
    Some(start..run(bytes, payload_end + 1, BASE64URL))
}

/// The end of an encrypted JWT's last four segments starting at `from` (after its header and
/// `.`): key `.` IV `.` ciphertext `.` tag.
fn jwe_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    for min in [0, JWE_NONCE, 1] {
        let end = run(bytes, at, BASE64URL);
        if end - at < min || bytes.get(end) != Some(&b'.') {
            return None;
        }
        at = end + 1;
    }
    let end = run(bytes, at, BASE64URL);
    (end - at >= JWE_NONCE && boundary_after(bytes, end, BASE64URL | TOKEN68)).then_some(end)
}

/// The shortest initialization vector and tag of a JWE: 96 bits (A*GCM's IV) in base64url.
const JWE_NONCE: usize = 16;

/// The shortest first or second segment of a JWT: the JSON of a header names its `alg` at least
/// (`{"alg":"none"}`, 19 characters), of a payload one claim (`{"a":1}`, 10).
const SEGMENT: usize = 8;

/// The body of a PEM private key whose `-----BEGIN` starts at `start`: from after its BEGIN line
/// to its `-----END`, or to where PEM's characters stop (the text's end, when cut).
fn pem(bytes: &[u8], start: usize) -> Option<Range<usize>> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const DASHES: &[u8] = b"-----";
    if !has(bytes, start, BEGIN) {
        return None;
    }
    let label_start = start + BEGIN.len();
    // `ENCRYPTED PRIVATE KEY`, `OPENSSH PRIVATE KEY`, `PGP PRIVATE KEY BLOCK`, …
    let label_len = bytes
        .get(label_start..)?
        .iter()
        .take(48)
        .take_while(|&&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
        .count();
    let label = &bytes[label_start..label_start + label_len];
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK"))
        || !has(bytes, label_start + label_len, DASHES)
    {
        return None;
    }
    let body = label_start + label_len + DASHES.len();
    let mut end = body;
    while let Some(&b) = bytes.get(end) {
        if !is(b, PEM_BODY) || (b == b'-' && has(bytes, end, DASHES)) {
            break;
        }
        end += 1;
    }
    (end > body).then_some(body..end)
}

/// The token after a `Bearer` starting at `start` (see the module doc for which count).
fn bearer(bytes: &[u8], start: usize, cut: bool) -> Option<Range<usize>> {
    const B64TOKEN: u8 = ALNUM | DASH | UNDERSCORE | B64 | TOKEN68;
    let (from, token_end, end) = after_scheme(bytes, start, b"Bearer", B64TOKEN)?;
    let token = &bytes[from..token_end];
    let shaped = token.len() >= 20 || (token.len() >= 8 && token.iter().any(u8::is_ascii_digit));
    let cut_short = cut && end == bytes.len() && !token.is_empty();
    ((shaped && boundary_after(bytes, end, ALNUM)) || cut_short).then_some(from..end)
}

/// The credentials after an authentication scheme's name (`Bearer`, `Basic`) starting at `start`
/// and one or more spaces: where they start, where their run of `class` ends, and where they end
/// with their `=` padding.
fn after_scheme(
    bytes: &[u8],
    start: usize,
    scheme: &[u8],
    class: u8,
) -> Option<(usize, usize, usize)> {
    let name_end = start + scheme.len();
    if !has(bytes, start, scheme)
        || bytes.get(name_end) != Some(&b' ')
        || !boundary_before(bytes, start, ALNUM)
    {
        return None;
    }
    let count = |from: usize, byte: u8| {
        let rest = bytes.get(from..).unwrap_or_default();
        rest.iter().take_while(|&&b| b == byte).count()
    };
    let from = name_end + count(name_end, b' ');
    let token_end = run(bytes, from, class);
    Some((from, token_end, token_end + count(token_end, b'=')))
}

/// The credentials after a `Basic` starting at `start` (see the module doc for which count); in a
/// `cut` text, what there is of them when they run to the end.
fn basic(bytes: &[u8], start: usize, cut: bool) -> Option<Range<usize>> {
    let (from, encoded_end, end) = after_scheme(bytes, start, b"Basic", ALNUM | B64)?;
    let encoded = &bytes[from..encoded_end];
    let cut_short = cut && end == bytes.len() && !encoded.is_empty();
    let whole =
        encoded.len() >= 12 && boundary_after(bytes, end, ALNUM) && decodes_to_credentials(encoded);
    (whole || cut_short).then_some(from..end)
}

/// Does base64 `encoded` (without padding) decode to `user:password`: no control characters, a
/// `:` after the first byte? (Hand-written: this crate has no base64 decoder, and this one stops
/// at the first byte that says no.)
fn decodes_to_credentials(encoded: &[u8]) -> bool {
    if encoded.len() % 4 == 1 {
        return false;
    }
    let (mut bits, mut held, mut decoded) = (0u32, 0u32, 0usize);
    let mut colon = false;
    for &c in encoded {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        bits = (bits << 6 | u32::from(value)) & 0xffff;
        held += 6;
        if held >= 8 {
            held -= 8;
            let byte = (bits >> held) as u8;
            if byte < 0x20 || byte == 0x7f {
                return false;
            }
            colon |= byte == b':' && decoded > 0;
            decoded += 1;
        }
    }
    colon
}

/// AWS secret access keys, in a text holding an access key id: runs of exactly 40 base64
/// characters with upper and lower case letters and digits (a hex digest has no capitals, a word
/// or path rarely all three), or in a `cut` text such a run of 16 or more reaching the end. Added
/// to `found` in order.
fn aws_secrets(bytes: &[u8], cut: bool, found: &mut Vec<Token>) {
    const SECRET: u8 = ALNUM | B64;
    let mut secrets = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is(bytes[i], SECRET) {
            i += 1;
            continue;
        }
        let end = run(bytes, i, SECRET);
        // After a JSON escape (`\n`), the run starts past its letter.
        let escaped = i > 0 && bytes[i - 1] == b'\\' && matches!(bytes[i], b'n' | b'r' | b't');
        let start = if escaped { i + 1 } else { i };
        let candidate = &bytes[start..end];
        // Not followed by base64 padding: a longer value's start.
        let whole = candidate.len() == 40 && bytes.get(end) != Some(&b'=');
        let cut_short = cut && end == bytes.len() && candidate.len() >= 16;
        let mixed = candidate.iter().any(u8::is_ascii_uppercase)
            && candidate.iter().any(u8::is_ascii_lowercase)
            && candidate.iter().any(u8::is_ascii_digit);
        if (whole || cut_short) && mixed {
            secrets.push(Token {
                range: start..end,
                shape: Shape::AwsSecret,
            });
        }
        i = end;
    }
    if secrets.is_empty() {
        return;
    }
    found.extend(secrets);
    found.sort_by_key(|t| t.range.start);
    // Drop what overlaps a token before it (a run inside a PEM body or a Bearer token).
    let mut end = 0;
    found.retain(|t| {
        let keep = t.range.start >= end;
        if keep {
            end = t.range.end;
        }
        keep
    });
}

/// Does `bytes` hold an anchor byte at all? What nearly every text costs: 32 bytes at a time (the
/// last 32 overlapping the ones before); a shorter text eight at a time in a word (the last word
/// overlapping too), each byte compared with the anchors at once by bit arithmetic.
#[inline]
pub(super) fn any_anchor(bytes: &[u8]) -> bool {
    let len = bytes.len();
    let word = |at: usize| bytes.get(at..).and_then(|b| b.first_chunk::<8>());
    let half = |at: usize| bytes.get(at..).and_then(|b| b.first_chunk::<4>());
    let anchor_in =
        |w: Option<&[u8; 8]>| w.is_some_and(|w| word_has_anchor(u64::from_le_bytes(*w)));
    match len {
        BLOCK.. => {
            let (blocks, _) = bytes.as_chunks::<BLOCK>();
            blocks.iter().any(has_anchor) || bytes.last_chunk::<BLOCK>().is_some_and(has_anchor)
        }
        16.. => {
            anchor_in(word(0))
                || anchor_in(word(8))
                || anchor_in(word(len - 16))
                || anchor_in(word(len - 8))
        }
        8.. => anchor_in(word(0)) || anchor_in(word(len - 8)),
        4.. => match (half(0), half(len - 4)) {
            (Some(low), Some(high)) => word_has_anchor(
                u64::from(u32::from_le_bytes(*low)) | u64::from(u32::from_le_bytes(*high)) << 32,
            ),
            _ => false,
        },
        _ => bytes.iter().any(|&b| is_anchor(b)),
    }
}

/// Does one of the eight bytes of `word` equal an anchor? A byte of `word ^ splat(anchor)` is
/// zero where it does, and `x - 0x01…01 & !x & 0x80…80` is nonzero exactly when `x` has a zero
/// byte.
#[inline(always)]
fn word_has_anchor(word: u64) -> bool {
    const fn splat(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    let zero_byte = |anchor: u8| {
        let x = word ^ splat(anchor);
        x.wrapping_sub(splat(0x01)) & !x & splat(0x80)
    };
    (zero_byte(b'J') | zero_byte(b'I') | zero_byte(b'_') | zero_byte(b'x') | zero_byte(b'B')) != 0
}

/// Bytes looked at together by [`Anchors`].
const BLOCK: usize = 32;

/// Positions of anchor bytes in a text, in order, found [`BLOCK`] bytes at a time.
struct Anchors<'a> {
    bytes: &'a [u8],
    /// Where the next block starts.
    next: usize,
    /// Where the block of `mask` starts.
    base: usize,
    /// Anchors of the current block not returned yet, bit `k` for byte `base + k`.
    mask: u32,
}

impl<'a> Anchors<'a> {
    fn new(bytes: &'a [u8]) -> Anchors<'a> {
        Anchors {
            bytes,
            next: 0,
            base: 0,
            mask: 0,
        }
    }

    /// Returns no anchor before `at` from now on.
    fn skip_to(&mut self, at: usize) {
        if at >= self.next {
            self.next = at;
            self.mask = 0;
        } else if let Some(below) = at.checked_sub(self.base) {
            self.mask &= u32::MAX.checked_shl(below as u32).unwrap_or(0);
        }
    }

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            let len = self.bytes.len();
            let mut start = self.next;
            // Blocks without an anchor, nearly all, are passed over in this loop.
            loop {
                if let Some(block) = block_at(self.bytes, start) {
                    if has_anchor(block) {
                        self.base = start;
                        self.mask = anchor_mask(block);
                        self.next = start + BLOCK;
                        break;
                    }
                    start += BLOCK;
                } else if start >= len {
                    self.next = len;
                    return None;
                } else if let Some(block) = block_at(self.bytes, len.saturating_sub(BLOCK)) {
                    // The last block overlaps the one before: its bytes before `start` were seen.
                    self.base = len - BLOCK;
                    self.mask = anchor_mask(block) & (u32::MAX << (start - self.base));
                    self.next = len;
                    break;
                } else {
                    // A text shorter than a block: byte by byte.
                    self.base = start;
                    self.mask = self.bytes[start..]
                        .iter()
                        .enumerate()
                        .fold(0, |mask, (k, &b)| mask | u32::from(is_anchor(b)) << k);
                    self.next = len;
                    break;
                }
            }
        }
        let k = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(self.base + k)
    }
}

/// The block of `bytes` starting at `at`, if it has a whole one there.
#[inline(always)]
fn block_at(bytes: &[u8], at: usize) -> Option<&[u8; BLOCK]> {
    bytes
        .get(at..at.checked_add(BLOCK)?)
        .and_then(|b| <&[u8; BLOCK]>::try_from(b).ok())
}

/// Does `block` hold an anchor? No early exit: the compiler compares all its bytes at once. `I`
/// is looked for apart: with `J` beside it, the compiler would test both as one range of bytes,
/// which SSE2 does with a dozen shuffles.
#[inline(always)]
fn has_anchor(block: &[u8; BLOCK]) -> bool {
    let others = block.iter().fold(0u8, |any, &b| {
        any | u8::from((b == b'J') | (b == b'_') | (b == b'x') | (b == b'B'))
    });
    let i = block.iter().fold(0u8, |any, &b| any | u8::from(b == b'I'));
    (others | i) != 0
}

/// The anchor bytes of `block`, bit `k` for byte `k`.
#[inline(always)]
fn anchor_mask(block: &[u8; BLOCK]) -> u32 {
    // A 0/1 byte per byte, gathered eight at a time into bits by a multiplication (the
    // constant moves byte k's low bit to bit 56 + k).
    let mut flags = [0u8; BLOCK];
    for (flag, &b) in flags.iter_mut().zip(block) {
        *flag = u8::from(is_anchor(b));
    }
    let mut mask = 0u32;
    for (k, eight) in flags.as_chunks::<8>().0.iter().enumerate() {
        let word = u64::from_le_bytes(*eight);
        mask |= ((word.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32) << (8 * k);
    }
    mask
}
