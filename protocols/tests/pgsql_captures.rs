//! PostgreSQL parser on conversations captured from psql and pg8000 against PostgreSQL 15
//! (tests/fixtures/pgsql/capture.sh).
mod replay;

use sonde_protocols::{Field, Kind, ParseConfig, Role, Transport};

fn column<'a>(rec: &'a sonde_protocols::Record, name: &str) -> &'a Field {
    let i = Kind::Pgsql
        .columns()
        .iter()
        .position(|c| c.name == name)
        .unwrap();
    &rec.fields[i]
}

fn text<'a>(rec: &'a sonde_protocols::Record, name: &str) -> &'a str {
    match column(rec, name) {
        Field::String(s) => s,
        other => panic!("{name} is {other:?}"),
    }
}

#[test]
fn psql_simple_queries_errors_and_startup_become_records() {
    let r = replay::check_case(Kind::Pgsql, Transport::Tcp, "pgsql", "psql_simple");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let cmds: Vec<&str> = r.records.iter().map(|rec| text(rec, "req_cmd")).collect();
    assert_eq!(cmds[0], "StartupMessage");
    assert!(cmds[1..].iter().all(|c| *c == "Query"), "{cmds:?}");
    assert_eq!(r.records.len(), 10);
    let select = &r.records[4];
    assert_eq!(text(select, "req"), "SELECT id, name FROM t ORDER BY id;");
    assert_eq!(text(select, "resp"), "SELECT 2");
    assert_eq!(column(select, "rows"), &Field::Int64(2));
    assert!(text(&r.records[5], "resp").contains("42P01"));
    assert!(r.records.iter().all(|rec| rec.latency_ns.is_some()));
}

#[test]
fn pg8000_extended_protocol_shows_statement_text_and_bound_params() {
    let r = replay::check_case(Kind::Pgsql, Transport::Tcp, "pgsql", "pg8000_extended");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let executes: Vec<_> = r
        .records
        .iter()
        .filter(|rec| text(rec, "req_cmd") == "Execute")
        .collect();
    assert!(executes.len() >= 4, "{}", replay::render(Kind::Pgsql, &r));
    assert_eq!(text(executes[0], "req"), "INSERT INTO u VALUES ($1, $2)");
    assert_eq!(text(executes[0], "params"), "$1='7', $2='seven'");
    assert_eq!(text(executes[0], "resp"), "INSERT 0 1");
}

#[test]
fn passwords_are_redacted_by_default_and_shown_when_asked() {
    let dir = replay::fixture_dir("pgsql", "psql_simple");
    let chunks = replay::load(&dir);
    let redacted = replay::replay(
        Kind::Pgsql,
        Transport::Tcp,
        Role::Client,
        &ParseConfig::default(),
        &chunks,
        replay::Chunking::AsCaptured,
    );
    let all = replay::render(Kind::Pgsql, &redacted);
    assert!(!all.contains("sonde-secret"));
    assert!(all.contains("password=<redacted>"));
    let config = ParseConfig {
        redact: false,
        ..ParseConfig::default()
    };
    let shown = replay::replay(
        Kind::Pgsql,
        Transport::Tcp,
        Role::Client,
        &config,
        &chunks,
        replay::Chunking::AsCaptured,
    );
    assert!(replay::render(Kind::Pgsql, &shown).contains("password=sonde-secret"));
}
