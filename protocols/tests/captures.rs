//! Conversations captured from real peers (tests/fixtures/capture.sh: nginx + curl, redis-server +
//! redis-cli) replayed through the parsers. Each `NAME.client`/`NAME.server` pair is fed for both
//! roles and several chunkings (whole, 1 byte, 7 bytes, 1000 bytes): every variant must give the same
//! records, and they must match `NAME.expected`. After a deliberate change, rewrite the expected files
//! with `SONDE_BLESS=1 cargo test -p sonde-protocols --test captures` and review the diff.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sonde_protocols::{Direction, Field, Kind, ParseConfig, Record, Role, Transport};

const CHUNKINGS: [usize; 4] = [usize::MAX, 1, 7, 1000];

fn fixture_dir(protocol: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(protocol)
}

/// Names of the captured conversations of a protocol (each has .client and .server).
fn conversations(protocol: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir(protocol))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| f.strip_suffix(".client").map(str::to_string))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no captures for {protocol}");
    names
}

fn replay(kind: Kind, role: Role, chunk: usize, client: &[u8], server: &[u8]) -> Vec<Record> {
    let mut parser = kind.parser(role, Transport::Tcp, &ParseConfig::default());
    let (to_server, to_client) = match role {
        Role::Client => (Direction::Egress, Direction::Ingress),
        Role::Server => (Direction::Ingress, Direction::Egress),
    };
    let mut out = Vec::new();
    // Requests all precede responses in time: a response's first byte is never older than its request.
    for (dir, bytes, base) in [
        (to_server, client, 1_000),
        (to_client, server, 1_000_000_000),
    ] {
        for (i, piece) in bytes.chunks(chunk.min(bytes.len()).max(1)).enumerate() {
            parser
                .feed(dir, base + i as u64, piece, &mut out)
                .unwrap_or_else(|e| panic!("{e} at chunk {i} of size {chunk} ({role:?})"));
        }
    }
    parser.expire(u64::MAX, &mut out);
    out
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => write!(out, "\\u{{{:x}}}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out
}

/// Stable text form of records: one `column: value` line per field.
fn render(kind: Kind, records: &[Record]) -> String {
    let mut text = String::new();
    for (i, record) in records.iter().enumerate() {
        writeln!(text, "# record {}", i + 1).unwrap();
        let answered = if record.latency_ns.is_some() {
            "answered"
        } else {
            "unanswered"
        };
        writeln!(text, "request: {answered}").unwrap();
        let red = record.red.to_string();
        writeln!(text, "red: {red}").unwrap();
        assert_eq!(record.fields.len(), kind.columns().len());
        for (column, field) in kind.columns().iter().zip(&record.fields) {
            let value = match field {
                Field::Null => "<null>".to_string(),
                Field::Int64(v) => v.to_string(),
                Field::UInt64(v) => v.to_string(),
                Field::Float64(v) => v.to_string(),
                Field::Boolean(v) => v.to_string(),
                Field::String(_) | Field::Text(_) => {
                    escape(&column.shown(record.str_of(field).unwrap_or_default()))
                }
            };
            writeln!(text, "{}: {value}", column.name).unwrap();
        }
    }
    text
}

fn check_captures(kind: Kind) {
    let dir = fixture_dir(kind.name());
    for name in conversations(kind.name()) {
        let client = std::fs::read(dir.join(format!("{name}.client"))).unwrap();
        let server = std::fs::read(dir.join(format!("{name}.server"))).unwrap();
        let reference = render(
            kind,
            &replay(kind, Role::Client, usize::MAX, &client, &server),
        );
        for role in [Role::Client, Role::Server] {
            for chunk in CHUNKINGS {
                let text = render(kind, &replay(kind, role, chunk, &client, &server));
                assert_eq!(
                    text, reference,
                    "{name}: {role:?} fed in chunks of {chunk} differs from one piece"
                );
            }
        }
        let expected_path = dir.join(format!("{name}.expected"));
        if std::env::var_os("SONDE_BLESS").is_some() {
            std::fs::write(&expected_path, &reference).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (bless with SONDE_BLESS=1)",
                expected_path.display()
            )
        });
        assert_eq!(
            reference, expected,
            "{name}: records differ from {name}.expected"
        );
    }
}

#[test]
fn captured_http_conversations_give_the_expected_records() {
    check_captures(Kind::Http);
}

#[test]
fn captured_redis_conversations_give_the_expected_records() {
    check_captures(Kind::Redis);
}
