use super::*;

#[test]
fn operation_is_the_first_keyword_uppercased() {
    assert_eq!(operation("select 1"), "SELECT");
    assert_eq!(operation("  INSERT INTO t VALUES (1)"), "INSERT");
    assert_eq!(operation("-- hi\n/* x */ (SELECT 1)"), "SELECT");
}

#[test]
fn a_mariadb_set_statement_for_is_the_operation_it_runs() {
    assert_eq!(
        operation("SET STATEMENT max_statement_time=1 FOR SELECT SLEEP(2)"),
        "SELECT"
    );
    assert_eq!(
        operation("set statement sql_mode='NO_ENGINE_SUBSTITUTION', for_x=1 for update t set a=1"),
        "UPDATE"
    );
    assert_eq!(
        operation("SET STATEMENT note='for you' FOR DELETE FROM t"),
        "DELETE"
    );
    // Not a SET STATEMENT: the SET itself.
    assert_eq!(operation("SET autocommit=0"), "SET");
    assert_eq!(operation("SET STATEMENT x=1"), "SET");
}

#[test]
fn operation_outside_the_bounded_set_is_other() {
    assert_eq!(operation("frobnicate everything"), OTHER);
    assert_eq!(operation(""), OTHER);
    assert_eq!(operation("/* never closed"), OTHER);
    assert_eq!(operation("SELECTED"), OTHER);
}

fn pg(text: &str) -> String {
    shown(text.to_string(), Dialect::Postgres, true, usize::MAX)
}

fn my(text: &str) -> String {
    shown(text.to_string(), Dialect::MySql, true, usize::MAX)
}

#[test]
fn postgres_role_passwords_are_redacted() {
    assert_eq!(
        pg("CREATE ROLE bob LOGIN PASSWORD 'hunter2'"),
        "CREATE ROLE bob LOGIN PASSWORD '<redacted>'"
    );
    // What psql's \password sends: the verifier, computed by the client.
    assert_eq!(
        pg("ALTER USER bob WITH ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"),
        "ALTER USER bob WITH ENCRYPTED PASSWORD '<redacted>'"
    );
    assert_eq!(
        pg("alter role bob password 'x' valid until '2027-01-01'"),
        "alter role bob password '<redacted>' valid until '2027-01-01'"
    );
    assert_eq!(
        pg("ALTER ROLE a PASSWORD E'p\\'q' LOGIN"),
        "ALTER ROLE a PASSWORD E'<redacted>' LOGIN"
    );
    assert_eq!(
        pg("ALTER ROLE a PASSWORD 'it''s' LOGIN"),
        "ALTER ROLE a PASSWORD '<redacted>' LOGIN"
    );
    assert_eq!(
        pg("ALTER ROLE a PASSWORD /* new */ 'x'"),
        "ALTER ROLE a PASSWORD /* new */ '<redacted>'"
    );
    // Cut by the capture inside the literal: the rest is the secret.
    assert_eq!(
        pg("ALTER ROLE a PASSWORD 'abcdef"),
        "ALTER ROLE a PASSWORD '<redacted>"
    );
    assert_eq!(
        pg("ALTER ROLE a PASSWORD 'pässwörd'; SELECT 'ü'"),
        "ALTER ROLE a PASSWORD '<redacted>'; SELECT 'ü'"
    );
}

#[test]
fn postgres_connection_strings_and_options_are_redacted() {
    assert_eq!(
        pg(
            "CREATE SUBSCRIPTION s CONNECTION 'host=db port=5432 password=s3cret dbname=app' \
            PUBLICATION p"
        ),
        "CREATE SUBSCRIPTION s CONNECTION 'host=db port=5432 password=<redacted> dbname=app' \
         PUBLICATION p"
    );
    assert_eq!(
        pg("SELECT dblink_connect('postgresql://app:s3cret@db:5432/app')"),
        "SELECT dblink_connect('postgresql://app:<redacted>@db:5432/app')"
    );
    assert_eq!(
        pg("CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'x')"),
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '<redacted>')"
    );
}

#[test]
fn a_column_named_password_set_or_compared_to_a_literal_is_redacted() {
    assert_eq!(
        pg("UPDATE users SET password = 'x' WHERE id = '1'"),
        "UPDATE users SET password = '<redacted>' WHERE id = '1'"
    );
    assert_eq!(
        pg("UPDATE users SET \"password\" = 'x'"),
        "UPDATE users SET \"password\" = '<redacted>'"
    );
    assert_eq!(
        my("UPDATE mysql.user SET authentication_string = '*6BB48' WHERE User = 'u'"),
        "UPDATE mysql.user SET authentication_string = '<redacted>' WHERE User = 'u'"
    );
    assert_eq!(
        my("SELECT id FROM users WHERE `password` = \"x\""),
        "SELECT id FROM users WHERE `password` = \"<redacted>\""
    );
}

#[test]
fn statements_without_credentials_are_kept_as_they_are() {
    for text in [
        "SELECT 1",
        "SELECT password FROM users WHERE id = '1'",
        "SELECT * FROM t WHERE note = 'password'",
        "SELECT * FROM t WHERE note = 'password reset'",
        "-- password 'x'\nSELECT 'y'",
        "ALTER ROLE bob PASSWORD NULL",
        "SELECT 'https://example.com/a?b=c'",
        "SELECT 'password' || ':' || 'x'",
    ] {
        assert_eq!(pg(text), text);
        assert_eq!(
            super::redact::secrets(text, Dialect::Postgres),
            super::redact::Secrets::default(),
            "{text}"
        );
    }
    assert_eq!(my("# password 'x'\nSELECT 1"), "# password 'x'\nSELECT 1");
}

#[test]
fn mysql_account_passwords_are_redacted() {
    assert_eq!(
        my("CREATE USER 'bob'@'%' IDENTIFIED BY 'hunter2'"),
        "CREATE USER 'bob'@'%' IDENTIFIED BY '<redacted>'"
    );
    assert_eq!(
        my(
            "ALTER USER 'bob'@'localhost' IDENTIFIED WITH caching_sha2_password BY 'n3w' \
            REPLACE 'old' RETAIN CURRENT PASSWORD"
        ),
        "ALTER USER 'bob'@'localhost' IDENTIFIED WITH caching_sha2_password BY '<redacted>' \
         REPLACE '<redacted>' RETAIN CURRENT PASSWORD"
    );
    assert_eq!(
        my("CREATE USER u IDENTIFIED WITH mysql_native_password AS '*6BB4837EB7432910'"),
        "CREATE USER u IDENTIFIED WITH mysql_native_password AS '<redacted>'"
    );
    assert_eq!(
        my("SET PASSWORD FOR 'bob'@'%' = 'x'"),
        "SET PASSWORD FOR 'bob'@'%' = '<redacted>'"
    );
    assert_eq!(
        my("SET PASSWORD = PASSWORD(\"x\")"),
        "SET PASSWORD = PASSWORD(\"<redacted>\")"
    );
    assert_eq!(
        my("GRANT ALL ON *.* TO 'u'@'%' IDENTIFIED BY 'a\\'b'"),
        "GRANT ALL ON *.* TO 'u'@'%' IDENTIFIED BY '<redacted>'"
    );
    assert_eq!(
        my(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='db', SOURCE_USER='repl', \
            SOURCE_PASSWORD='x', SOURCE_PORT=3306"
        ),
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST='db', SOURCE_USER='repl', \
         SOURCE_PASSWORD='<redacted>', SOURCE_PORT=3306"
    );
    assert_eq!(
        my("INSERT INTO hooks VALUES (_utf8mb4'https://user:tok@example.com/x')"),
        "INSERT INTO hooks VALUES (_utf8mb4'https://user:<redacted>@example.com/x')"
    );
}

#[test]
fn redaction_comes_before_the_cut_and_can_be_switched_off() {
    let text = "ALTER ROLE a PASSWORD 'a-long-secret'".to_string();
    assert_eq!(
        shown(text.clone(), Dialect::Postgres, true, 25),
        "ALTER ROLE a PASSWORD '<r"
    );
    assert_eq!(shown(text.clone(), Dialect::Postgres, false, 1000), text);
}

fn params(text: &str, dialect: Dialect) -> Vec<u32> {
    shown_with_params(text.to_string(), dialect, true, usize::MAX).1
}

#[test]
fn values_inserted_under_a_secret_column_are_redacted_row_by_row() {
    assert_eq!(
        pg(
            "INSERT INTO users (email, password, api_token) VALUES ('a@x', 'p1', 't1'), \
            ('b@x', crypt('p2', gen_salt('bf')), 't2') RETURNING id"
        ),
        "INSERT INTO users (email, password, api_token) VALUES ('a@x', '<redacted>', \
         '<redacted>'), ('b@x', crypt('<redacted>', gen_salt('<redacted>')), '<redacted>') \
         RETURNING id"
    );
    assert_eq!(
        my("REPLACE INTO `keys` (`owner`, `secret`) VALUE ('ann', \"s3\")"),
        "REPLACE INTO `keys` (`owner`, `secret`) VALUE ('ann', \"<redacted>\")"
    );
    // A literal after the INSERT's values is no value of a secret column.
    assert_eq!(
        pg("INSERT INTO t (id, token) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET n = 'y'"),
        "INSERT INTO t (id, token) VALUES (1, '<redacted>') ON CONFLICT (id) DO UPDATE SET n = 'y'"
    );
}

#[test]
fn columns_named_as_http_bodies_secrets_are_redacted_too() {
    assert_eq!(
        pg("UPDATE clients SET client_secret = 'cs', name = 'n' WHERE api_key = 'k'"),
        "UPDATE clients SET client_secret = '<redacted>', name = 'n' WHERE api_key = '<redacted>'"
    );
    assert_eq!(
        pg("SELECT * FROM users WHERE password = crypt('p', password)"),
        "SELECT * FROM users WHERE password = crypt('<redacted>', password)"
    );
}

#[test]
fn placeholders_bound_to_secret_columns_are_named() {
    let pgp = |t| params(t, Dialect::Postgres);
    let myp = |t| params(t, Dialect::MySql);
    assert_eq!(pgp("UPDATE users SET password = $1 WHERE id = $2"), [1]);
    assert_eq!(
        pgp("UPDATE users SET name = $2, \"password\" = $1 WHERE id = $3"),
        [1]
    );
    assert_eq!(
        pgp("INSERT INTO users (email, password, api_token) VALUES ($1, $2, $3), ($4, $5, $6)"),
        [2, 3, 5, 6]
    );
    assert_eq!(
        pgp("SELECT id FROM users WHERE email = $1 AND password = crypt($2, password)"),
        [2]
    );
    assert_eq!(pgp("SELECT * FROM sessions WHERE session_id = $1"), [1]);
    // `?` is a jsonb operator in PostgreSQL, no placeholder.
    assert_eq!(pgp("SELECT doc ? 'token' FROM t WHERE token = $1"), [1]);
    assert_eq!(
        myp("INSERT INTO users (email, password) VALUES (?, ?)"),
        [2]
    );
    assert_eq!(
        myp("SELECT id FROM users WHERE note = '?' AND name = ? AND `password` = SHA2(?, 256)"),
        [2]
    );
    assert_eq!(myp("UPDATE t SET a = ?, api_key = ? WHERE id = ?"), [2]);
}

#[test]
fn statements_binding_nothing_secret_name_no_placeholder() {
    for (text, dialect) in [
        ("SELECT * FROM users WHERE id = $1", Dialect::Postgres),
        (
            "SELECT password FROM users WHERE id = $1",
            Dialect::Postgres,
        ),
        (
            "INSERT INTO tokens (user_id, n) VALUES ($1, $2)",
            Dialect::Postgres,
        ),
        ("INSERT INTO t VALUES ($1, $2)", Dialect::Postgres),
        ("SELECT replace(token, $1, $2) FROM t", Dialect::Postgres),
        (
            "INSERT INTO t (a, b) SELECT ?, ? FROM secrets",
            Dialect::MySql,
        ),
        (
            "SELECT * FROM t WHERE a = ? -- password = ?",
            Dialect::MySql,
        ),
    ] {
        assert_eq!(params(text, dialect), Vec::<u32>::new(), "{text}");
    }
    assert_eq!(
        pg("INSERT INTO tokens (user_id, n) VALUES (1, 'x')"),
        "INSERT INTO tokens (user_id, n) VALUES (1, 'x')"
    );
    assert_eq!(
        my("SELECT REPLACE(name, 'a', 'b') FROM t"),
        "SELECT REPLACE(name, 'a', 'b') FROM t"
    );
}

#[test]
fn every_row_of_a_long_multi_row_insert_has_its_secret_placeholder_named() {
    let rows: Vec<String> = (0..2000)
        .map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2))
        .collect();
    let text = format!(
        "INSERT INTO users (email, password) VALUES {}",
        rows.join(", ")
    );
    let want: Vec<u32> = (0..2000).map(|r| 2 * r + 2).collect();
    assert_eq!(params(&text, Dialect::Postgres), want);
}

#[test]
fn tokens_in_literals_are_redacted_whatever_column_holds_them() {
    use crate::secret::tests::{AWS_KEY_ID, JWT, github_token};
    let token = github_token();
    assert_eq!(
        pg(&format!(
            "INSERT INTO events (kind, payload) VALUES ('login', '{{\"jwt\": \"{JWT}\"}}')"
        )),
        r#"INSERT INTO events (kind, payload) VALUES ('login', '{"jwt": "<redacted>"}')"#
    );
    assert_eq!(
        my(&format!(
            "UPDATE integrations SET config = \"{token}\", key_id = '{AWS_KEY_ID}' WHERE id = 3"
        )),
        "UPDATE integrations SET config = \"<redacted>\", key_id = '<redacted>' WHERE id = 3"
    );
    assert_eq!(
        shown(
            "SELECT 'AKIA and sk_ are prefixes'".into(),
            Dialect::MySql,
            true,
            512
        ),
        "SELECT 'AKIA and sk_ are prefixes'"
    );
    // Off: kept as sent.
    let plain = format!("SELECT '{token}'");
    assert_eq!(shown(plain.clone(), Dialect::Postgres, false, 512), plain);
}

#[test]
fn a_statement_cut_by_the_capture_inside_a_token_has_it_redacted() {
    // The parsers keep more of a statement than they show: text beyond the cap was kept, and
    // text that ends there may have been cut.
    let token = crate::secret::tests::github_token();
    let kept = format!("INSERT INTO t VALUES ('{}", &token[..12]);
    assert_eq!(
        shown(kept.clone(), Dialect::Postgres, true, 33),
        "INSERT INTO t VALUES ('<redacted>"
    );
    // Shorter than the cap, it ended there: what looks like the start of a token is left.
    assert_eq!(shown(kept.clone(), Dialect::Postgres, true, 512), kept);
}
