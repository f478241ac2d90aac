//! Credentials written into SQL text: the literal after a PASSWORD keyword or option
//! (PostgreSQL's `CREATE ROLE … PASSWORD '…'` and what psql's `\password` sends, MySQL's
//! `SET PASSWORD = '…'`, `SOURCE_PASSWORD = '…'`, `OPTIONS (password '…')`, a column named
//! `password` or `authentication_string` compared with or set to a literal), after
//! `IDENTIFIED … BY`/`AS` and `REPLACE`
//! (MySQL's `CREATE/ALTER USER`), and the password of a connection string or URL inside any literal
//! (`CREATE SUBSCRIPTION … CONNECTION 'host=… password=…'`, dblink, `mysql://user:pass@host`).
//!
//! Hand-written: a SQL parser refuses the cut, dialect-specific or malformed text captured from the
//! wire, and only the few tokens before a literal matter here. Secrets that reach the server in
//! bound parameters (a prepared `UPDATE … SET password = ?`) are application data and stay as sent.

use crate::REDACTED;

/// Where the dialects differ for finding literals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `"…"` quotes identifiers; backslashes escape only in `E'…'`.
    Postgres,
    /// `"…"` quotes strings (without ANSI_QUOTES); backslashes escape; `#` starts a comment.
    MySql,
}

/// `text` with its credentials replaced by [`REDACTED`], or `None` when it holds none (no copy).
pub(crate) fn secrets(text: &str, dialect: Dialect) -> Option<String> {
    // Nearly every statement has none of these words: a few passes over its bytes and done.
    let has = |word: &[u8]| find(text.as_bytes(), 0, word).is_some();
    if !(has(b"password")
        || has(b"identified")
        || has(b"authentication_string")
        || text.contains("://"))
    {
        return None;
    }
    let cuts = Scanner::new(text.as_bytes(), dialect).run();
    if cuts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in cuts {
        // Every cut starts and ends next to an ASCII byte (a quote, `=`, `:`, `@`, a blank) or at
        // the end of the text, so these are char boundaries.
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// What the words read so far expect of the next literal.
#[derive(Default)]
struct Expect {
    /// The next literal is a secret (`PASSWORD`, `IDENTIFIED BY`, …), if no other word comes first.
    secret: bool,
    /// `IDENTIFIED` was read in this statement: `BY`, `AS` and `REPLACE` introduce secrets.
    identified: bool,
    /// `PASSWORD FOR <user>` was read: the secret follows the `=`.
    after_equals: bool,
}

struct Scanner<'a> {
    bytes: &'a [u8],
    dialect: Dialect,
    at: usize,
    expect: Expect,
    /// Byte ranges of `bytes` to replace, in order, not overlapping.
    cuts: Vec<(usize, usize)>,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8], dialect: Dialect) -> Scanner<'a> {
        Scanner {
            bytes,
            dialect,
            at: 0,
            expect: Expect::default(),
            cuts: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<(usize, usize)> {
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b if b.is_ascii_whitespace() => self.at += 1,
                b'-' if self.bytes.get(self.at + 1) == Some(&b'-') => self.skip_line(),
                b'#' if self.dialect == Dialect::MySql => self.skip_line(),
                b'/' if self.bytes.get(self.at + 1) == Some(&b'*') => self.skip_block_comment(),
                b'\'' => self.literal(b'\'', self.dialect == Dialect::MySql),
                b'"' if self.dialect == Dialect::MySql => self.literal(b'"', true),
                b'"' | b'`' => self.quoted_identifier(b),
                b';' => {
                    self.expect = Expect::default();
                    self.at += 1;
                }
                b'=' => {
                    if self.expect.after_equals {
                        self.expect.after_equals = false;
                        self.expect.secret = true;
                    }
                    self.at += 1;
                }
                // `PASSWORD('…')`, `OPTIONS (password '…')`: still waiting for the literal.
                b'(' => self.at += 1,
                b if is_word_byte(b) => self.word(),
                _ => {
                    self.expect.secret = false;
                    self.at += 1;
                }
            }
        }
        self.cuts
    }

    fn skip_line(&mut self) {
        self.at = find(self.bytes, self.at, b"\n").map_or(self.bytes.len(), |n| n + 1);
    }

    fn skip_block_comment(&mut self) {
        self.at = find(self.bytes, self.at + 2, b"*/").map_or(self.bytes.len(), |n| n + 2);
    }

    /// `"password"` (PostgreSQL), `` `password` `` (MySQL): a column named so, like the bare word.
    fn quoted_identifier(&mut self, quote: u8) {
        let start = self.at + 1;
        let end = self.bytes[start..]
            .iter()
            .position(|&b| b == quote)
            .map_or(self.bytes.len(), |n| start + n);
        self.expect.secret = names_password(&self.bytes[start..end]);
        self.at = end + 1;
    }

    fn word(&mut self) {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(|&b| is_word_byte(b)) {
            self.at += 1;
        }
        let word = &self.bytes[start..self.at];
        // A prefix glued to a literal (`E'…'`, `N'…'`, `_utf8mb4'…'`) is part of the literal.
        if self.bytes.get(self.at) == Some(&b'\'')
            && (word.len() == 1 || word.first() == Some(&b'_'))
        {
            let escapes = self.dialect == Dialect::MySql || word.eq_ignore_ascii_case(b"e");
            self.literal(b'\'', escapes);
            return;
        }
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        let e = &mut self.expect;
        if names_password(word) {
            // `MASTER_PASSWORD`, `caching_sha2_password BY`, `WHERE password =`.
            e.secret = true;
        } else if is(b"identified") {
            e.identified = true;
            e.secret = false;
        } else if e.identified && (is(b"by") || is(b"as") || is(b"replace")) {
            e.secret = true;
        } else if e.secret && is(b"for") {
            // `SET PASSWORD FOR 'bob'@'%' = '…'`: the user's name is no secret.
            e.secret = false;
            e.after_equals = true;
        } else {
            e.secret = false;
        }
    }

    /// A literal opened at `self.at`; its content is cut whole when a secret is expected, else
    /// searched for connection strings' and URLs' passwords.
    fn literal(&mut self, quote: u8, escapes: bool) {
        let start = self.at + 1;
        let mut i = start;
        let end = loop {
            match self.bytes.get(i) {
                // Cut off by the capture: the rest of the text is the literal.
                None => break self.bytes.len(),
                Some(b'\\') if escapes => i += 2,
                Some(&b) if b == quote => {
                    if self.bytes.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        break i;
                    }
                }
                Some(_) => i += 1,
            }
        };
        let end = end.min(self.bytes.len());
        if self.expect.secret {
            if end > start {
                self.cuts.push((start, end));
            }
        } else {
            inner_secrets(self.bytes, start, end, &mut self.cuts);
        }
        self.expect.secret = false;
        self.at = end + 1;
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// `password`, a name ending in `_password` (`SOURCE_PASSWORD`, `caching_sha2_password`), or
/// MySQL's `authentication_string` (`mysql.user`'s password hash).
fn names_password(word: &[u8]) -> bool {
    const SUFFIX: &[u8] = b"_password";
    word.eq_ignore_ascii_case(b"password")
        || word.eq_ignore_ascii_case(b"authentication_string")
        || (word.len() >= SUFFIX.len()
            && word[word.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// Where `needle` is in `bytes` from `from` on, compared without case.
fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
        .map(|n| from + n)
}

/// Passwords inside the literal `bytes[start..end]`: `password=…` of a libpq connection string,
/// and the `:…@` of a URL's user part.
fn inner_secrets(bytes: &[u8], start: usize, end: usize, cuts: &mut Vec<(usize, usize)>) {
    let content = &bytes[start..end];
    let mut found = Vec::new();
    let key = b"password";
    let mut i = 0;
    while let Some(n) = find(content, i, key) {
        let mut v = n + key.len();
        while content.get(v).is_some_and(|b| *b == b' ') {
            v += 1;
        }
        if content.get(v) == Some(&b'=') {
            v += 1;
            while content.get(v).is_some_and(|b| *b == b' ') {
                v += 1;
            }
            let value_end = content[v..]
                .iter()
                .position(|b| b.is_ascii_whitespace())
                .map_or(content.len(), |n| v + n);
            if value_end > v {
                found.push((start + v, start + value_end));
            }
            i = value_end;
        } else {
            i = v;
        }
    }
    let mut i = 0;
    while let Some(n) = find(content, i, b"://") {
        let authority = n + 3;
        let authority_end = content[authority..]
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#') || b.is_ascii_whitespace())
            .map_or(content.len(), |m| authority + m);
        let host = &content[authority..authority_end];
        if let Some(at) = host.iter().rposition(|b| *b == b'@')
            && let Some(colon) = host[..at].iter().position(|b| *b == b':')
            && at > colon + 1
        {
            found.push((start + authority + colon + 1, start + authority + at));
        }
        i = authority_end;
    }
    found.sort_unstable();
    for (s, e) in found {
        // A URL's password may also contain `password=`: keep the ranges apart.
        match cuts.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => cuts.push((s, e)),
        }
    }
}
