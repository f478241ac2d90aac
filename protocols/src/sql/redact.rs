//! Credentials in SQL text: the literal after a PASSWORD keyword or option (PostgreSQL's
//! `CREATE ROLE … PASSWORD '…'` and what psql's `\password` sends, MySQL's `SET PASSWORD = '…'`,
//! `SOURCE_PASSWORD = '…'`, `OPTIONS (password '…')`), after `IDENTIFIED … BY`/`AS` and `REPLACE`
//! (MySQL's `CREATE/ALTER USER`), the password of a connection string or URL inside any literal
//! (`CREATE SUBSCRIPTION … CONNECTION 'host=… password=…'`, dblink, `mysql://user:pass@host`), and
//! the value of a column whose name marks a secret (the names HTTP bodies are redacted by:
//! `password`, `api_key`, `token`, `session_id`, …, and MySQL's `authentication_string`) where the
//! statement sets, compares or inserts it — a literal, or a placeholder (`$2`, MySQL's `?`) whose
//! bound value the parsers then redact: ORMs send `UPDATE users SET password = $1` and
//! `INSERT INTO users (email, password) VALUES (?, ?)`, never the literal.
//!
//! Hand-written: a SQL parser refuses the cut, dialect-specific or malformed text captured from the
//! wire, and only the few tokens before a value matter here.

use crate::REDACTED;
use crate::secret::secret_name;

/// Where the dialects differ for finding literals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `"…"` quotes identifiers; backslashes escape only in `E'…'`; placeholders are `$n`.
    Postgres,
    /// `"…"` quotes strings (without ANSI_QUOTES); backslashes escape; `#` starts a comment;
    /// placeholders are `?`.
    MySql,
}

/// What a statement's text holds of credentials.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Secrets {
    /// The text with the credentials in its literals replaced by [`REDACTED`]; None when it has
    /// none (no copy).
    pub text: Option<String>,
    /// Placeholders bound to a credential, by number (`$2` is 2; MySQL's `?` counted from 1),
    /// ascending.
    pub params: Vec<u32>,
}

/// The credentials in `text`.
pub(crate) fn secrets(text: &str, dialect: Dialect) -> Secrets {
    // Nearly every statement names none of these: a few passes over its bytes and done.
    let has = |word: &[u8]| find(text.as_bytes(), 0, word).is_some();
    if !(secret_name(text.as_bytes())
        || has(b"identified")
        || has(b"authentication_string")
        || text.contains("://"))
    {
        return Secrets::default();
    }
    let Scanner { cuts, params, .. } = Scanner::new(text.as_bytes(), dialect).run();
    if cuts.is_empty() {
        return Secrets { text: None, params };
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
    Secrets {
        text: Some(out),
        params,
    }
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

/// Where an `INSERT` is, for pairing its values with its column list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Insert {
    /// Not in an INSERT, or past its values.
    No,
    /// `INSERT` read: its column list's `(` may come next.
    Target,
    /// In the column list, at the `column`-th column (from 0).
    Columns { column: u32 },
    /// The column list closed: `VALUES` may come next.
    Listed,
    /// In `VALUES`, at the `column`-th value of the row under way.
    Values { column: u32 },
}

struct Scanner<'a> {
    bytes: &'a [u8],
    dialect: Dialect,
    at: usize,
    expect: Expect,
    /// Parentheses open.
    depth: u32,
    insert: Insert,
    /// `depth` where the INSERT began: its column list and rows open there.
    insert_depth: u32,
    /// Positions in the INSERT's column list of the columns named as secrets.
    secret_columns: Vec<u32>,
    /// MySQL's `?` placeholders read so far.
    placeholders: u32,
    /// Byte ranges of `bytes` to replace, in order, not overlapping.
    cuts: Vec<(usize, usize)>,
    /// Placeholders bound to a secret, ascending.
    params: Vec<u32>,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8], dialect: Dialect) -> Scanner<'a> {
        Scanner {
            bytes,
            dialect,
            at: 0,
            expect: Expect::default(),
            depth: 0,
            insert: Insert::No,
            insert_depth: 0,
            secret_columns: Vec::new(),
            placeholders: 0,
            cuts: Vec::new(),
            params: Vec::new(),
        }
    }

    fn run(mut self) -> Self {
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
                    self.insert = Insert::No;
                    self.depth = 0;
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
                b'(' => {
                    if self.depth == self.insert_depth {
                        match self.insert {
                            Insert::Target => self.insert = Insert::Columns { column: 0 },
                            // A row of values.
                            Insert::Values { .. } => self.insert = Insert::Values { column: 0 },
                            _ => {}
                        }
                    }
                    self.depth += 1;
                    self.at += 1;
                }
                b')' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == self.insert_depth
                        && matches!(self.insert, Insert::Columns { .. })
                    {
                        self.insert = Insert::Listed;
                    }
                    self.expect.secret = false;
                    self.at += 1;
                }
                b',' => {
                    if self.depth == self.insert_depth + 1 {
                        match &mut self.insert {
                            Insert::Columns { column } | Insert::Values { column } => *column += 1,
                            _ => {}
                        }
                    }
                    self.expect.secret = false;
                    self.at += 1;
                }
                b'?' if self.dialect == Dialect::MySql => {
                    self.placeholders += 1;
                    self.placeholder(self.placeholders);
                    self.at += 1;
                }
                b if is_word_byte(b) => self.word(),
                _ => {
                    self.expect.secret = false;
                    self.at += 1;
                }
            }
        }
        self
    }

    fn skip_line(&mut self) {
        self.at = find(self.bytes, self.at, b"\n").map_or(self.bytes.len(), |n| n + 1);
    }

    fn skip_block_comment(&mut self) {
        self.at = find(self.bytes, self.at + 2, b"*/").map_or(self.bytes.len(), |n| n + 2);
    }

    /// Is the value starting here a secret: expected so by the words before it, or in an INSERT's
    /// row under a column named as a secret?
    fn secret_here(&self) -> bool {
        self.expect.secret
            || matches!(self.insert, Insert::Values { column }
                if self.depth > self.insert_depth && self.secret_columns.contains(&column))
    }

    /// A placeholder, numbered `n`.
    fn placeholder(&mut self, n: u32) {
        // `$n` may come twice, and out of order; `?`s come in order (a push).
        if self.secret_here()
            && let Err(at) = self.params.binary_search(&n)
        {
            self.params.insert(at, n);
        }
        self.expect.secret = false;
    }

    /// A column's (or keyword's) name was read, `secret` when it names one ([`names_secret`]):
    /// what follows holds a secret.
    fn name(&mut self, secret: bool) {
        if secret
            && let Insert::Columns { column } = self.insert
            && self.depth == self.insert_depth + 1
        {
            self.secret_columns.push(column);
        }
        // `MASTER_PASSWORD`, `caching_sha2_password BY`, `WHERE password =`, `SET api_key =`.
        self.expect.secret = secret;
    }

    /// `"password"` (PostgreSQL), `` `password` `` (MySQL): a column named so, like the bare word.
    fn quoted_identifier(&mut self, quote: u8) {
        let start = self.at + 1;
        let end = self.bytes[start..]
            .iter()
            .position(|&b| b == quote)
            .map_or(self.bytes.len(), |n| start + n);
        self.name(names_secret(&self.bytes[start..end]));
        self.at = end + 1;
    }

    fn word(&mut self) {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(|&b| is_word_byte(b)) {
            self.at += 1;
        }
        let bytes = self.bytes;
        let word = &bytes[start..self.at];
        // A prefix glued to a literal (`E'…'`, `N'…'`, `_utf8mb4'…'`) is part of the literal.
        if self.bytes.get(self.at) == Some(&b'\'')
            && (word.len() == 1 || word.first() == Some(&b'_'))
        {
            let escapes = self.dialect == Dialect::MySql || word.eq_ignore_ascii_case(b"e");
            self.literal(b'\'', escapes);
            return;
        }
        if self.dialect == Dialect::Postgres
            && let Some(n) = word
                .strip_prefix(b"$")
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
        {
            self.placeholder(n);
            return;
        }
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        let call = self.bytes[self.at..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            == Some(&b'(');
        self.follow_insert(word, call);
        if names_secret(word) {
            self.name(true);
            return;
        }
        let e = &mut self.expect;
        if is(b"identified") {
            e.identified = true;
            e.secret = false;
        } else if e.identified && (is(b"by") || is(b"as") || is(b"replace")) {
            e.secret = true;
        } else if e.secret && is(b"for") {
            // `SET PASSWORD FOR 'bob'@'%' = '…'`: the user's name is no secret.
            e.secret = false;
            e.after_equals = true;
        } else {
            // `password = crypt($1, …)`, `SET PASSWORD = PASSWORD('…')`: the function's arguments
            // hold the secret.
            e.secret = e.secret && call;
        }
    }

    /// Where `word` takes an INSERT (`call`: an opening parenthesis follows it).
    fn follow_insert(&mut self, word: &[u8], call: bool) {
        let is = |k: &[u8]| word.eq_ignore_ascii_case(k);
        // MySQL's `REPLACE INTO` inserts too; `REPLACE(s, 'a', 'b')` and `IDENTIFIED … REPLACE`
        // do not.
        if is(b"insert") || (is(b"replace") && !call && !self.expect.identified) {
            self.insert = Insert::Target;
            self.insert_depth = self.depth;
            self.secret_columns.clear();
            return;
        }
        if self.depth != self.insert_depth {
            return;
        }
        self.insert = match self.insert {
            Insert::Listed if is(b"values") || is(b"value") => Insert::Values { column: 0 },
            // INTO, the table's name, an alias: the column list may still come.
            Insert::Target if !(is(b"values") || is(b"value") || is(b"select") || is(b"set")) => {
                Insert::Target
            }
            // `ON CONFLICT`, `RETURNING`, `SELECT`, …: no more values.
            Insert::Values { .. } | Insert::Listed | Insert::Target => Insert::No,
            other => other,
        };
    }

    /// A literal opened at `self.at`; its content is cut whole when it is a secret, else
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
        if self.secret_here() {
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

/// A name whose values are secrets ([`secret_name`]: `password`, `db_password`, `api_key`,
/// `token`, …), or MySQL's `authentication_string` (`mysql.user`'s password hash).
fn names_secret(word: &[u8]) -> bool {
    secret_name(word) || word.eq_ignore_ascii_case(b"authentication_string")
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
