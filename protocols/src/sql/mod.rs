//! SQL text as the PostgreSQL and MySQL parsers show it: what a statement does, as a bounded
//! metric label (`db_operation_name`), and its text with credentials redacted. Hand-written: only
//! the first keyword matters for the label, no SQL parser needed.

mod redact;

use crate::secret::shapes;

pub(crate) use redact::Dialect;

/// A statement's text as records show it: credentials redacted when `redact` (by the names around
/// them, and tokens in it by their shape: [`crate::secret::shapes`]), then cut to `cap` bytes (so
/// a cut cannot split a secret and leave part of it).
pub(crate) fn shown(text: String, dialect: Dialect, redact: bool, cap: usize) -> String {
    shown_with_params(text, dialect, redact, cap).0
}

/// [`shown`], and the placeholders bound to a credential (`$n`, or MySQL's `?` counted from 1),
/// whose values a prepared statement's executions redact.
pub(crate) fn shown_with_params(
    text: String,
    dialect: Dialect,
    redact: bool,
    cap: usize,
) -> (String, Vec<u32>) {
    if !redact {
        return (crate::cut(text, cap), Vec::new());
    }
    // The parsers keep more of a statement than `cap`: a text longer than that may have been cut
    // by the capture, inside a token that is then redacted all the same.
    let cut = text.len() > cap;
    let found = redact::secrets(&text, dialect);
    let text = found.text.unwrap_or(text);
    let text = shapes::redacted(&text, cut).unwrap_or(text);
    (crate::cut(text, cap), found.params)
}

/// Statement verbs reported as they are; anything else is `_OTHER`.
const VERBS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "REPLACE",
    "UPSERT",
    "WITH",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "SHOW",
    "USE",
    "EXPLAIN",
    "ANALYZE",
    "VACUUM",
    "COPY",
    "CALL",
    "DO",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "GRANT",
    "REVOKE",
    "LOCK",
    "LISTEN",
    "NOTIFY",
    "DECLARE",
    "FETCH",
    "CLOSE",
    "DESCRIBE",
    "DESC",
    "LOAD",
    "HANDLER",
];

/// Label for anything outside the bounded set.
pub(crate) const OTHER: &str = "_OTHER";

/// The statement's verb (`SELECT`, `INSERT`, …) from a bounded list, else `_OTHER`.
/// Leading blanks, comments and parentheses are skipped.
/// MariaDB's `SET STATEMENT var=value[, …] FOR <statement>` is the inner statement's operation.
pub(crate) fn operation(mut text: &str) -> &'static str {
    loop {
        text = skip_noise(text);
        let verb = first_word(text);
        let inner = (verb == "SET")
            .then(|| set_statement_target(&text[verb.len()..]))
            .flatten();
        match inner {
            Some(inner) => text = inner,
            None => return VERBS.iter().find(|v| **v == verb).copied().unwrap_or(OTHER),
        }
    }
}

/// The first word of `text`, uppercased, at most 12 letters.
fn first_word(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(12)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// After `SET`: the statement a `STATEMENT … FOR` clause runs, if that is what follows.
fn set_statement_target(after_set: &str) -> Option<&str> {
    let rest = skip_noise(after_set);
    if first_word(rest) != "STATEMENT" {
        return None;
    }
    let rest = &rest["STATEMENT".len()..];
    let bytes = rest.as_bytes();
    // The first whole word FOR outside quotes ends the settings.
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if matches!(b, b'\'' | b'"' | b'`') => quote = Some(b),
            None if b.eq_ignore_ascii_case(&b'f')
                && bytes
                    .get(i..i + 3)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"for"))
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric() && bytes[i - 1] != b'_')
                && bytes
                    .get(i + 3)
                    .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_') =>
            {
                return Some(&rest[i + 3..]);
            }
            None => {}
        }
    }
    None
}

fn skip_noise(mut s: &str) -> &str {
    loop {
        let t = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(' || c == ';');
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = t.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return t;
        }
    }
}

#[cfg(test)]
mod tests;
