//! What SQL statements do, as bounded metric labels (`db_operation_name`), shared by the
//! PostgreSQL and MySQL parsers. Hand-written: only the first keyword matters, no SQL parser needed.

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
pub(crate) fn operation(text: &str) -> &'static str {
    let word: String = skip_noise(text)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(12)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    VERBS.iter().find(|v| **v == word).copied().unwrap_or(OTHER)
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
mod tests {
    use super::*;

    #[test]
    fn operation_is_the_first_keyword_uppercased() {
        assert_eq!(operation("select 1"), "SELECT");
        assert_eq!(operation("  INSERT INTO t VALUES (1)"), "INSERT");
        assert_eq!(operation("-- hi\n/* x */ (SELECT 1)"), "SELECT");
    }

    #[test]
    fn operation_outside_the_bounded_set_is_other() {
        assert_eq!(operation("frobnicate everything"), OTHER);
        assert_eq!(operation(""), OTHER);
        assert_eq!(operation("/* never closed"), OTHER);
        assert_eq!(operation("SELECTED"), OTHER);
    }
}
