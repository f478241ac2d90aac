//! Replays conversations captured from real peers (tests/fixtures/<protocol>/<case>/, written by
//! the capture.sh next to them through recording_proxy.py) through a protocol's parser, and
//! renders the records as stable text for comparison with `expected.txt`.
//! `SONDE_BLESS=1` rewrites the expected files instead of comparing.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sonde_protocols::{Direction, Field, Kind, ParseConfig, Record, Role, Transport};

/// Who sent a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

pub struct Chunk {
    pub side: Side,
    pub ts_ns: u64,
    pub bytes: Vec<u8>,
}

/// How the captured chunks are cut into `feed` calls.
#[derive(Clone, Copy, Debug)]
pub enum Chunking {
    /// As the proxy received them.
    AsCaptured,
    /// One byte per feed.
    Bytewise,
    /// Each chunk cut in three uneven pieces.
    Thirds,
}

pub fn fixture_dir(protocol: &str, case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(protocol)
        .join(case)
}

pub fn load(dir: &Path) -> Vec<Chunk> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    };
    let (client, server) = (read("client.bin"), read("server.bin"));
    let index = String::from_utf8(read("chunks.txt")).unwrap();
    let (mut c_off, mut s_off) = (0usize, 0usize);
    let mut chunks = Vec::new();
    for line in index.lines() {
        let mut it = line.split_whitespace();
        let (side, ts, len) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let (ts, len): (u64, usize) = (ts.parse().unwrap(), len.parse().unwrap());
        let (side, stream, off) = match side {
            "c" => (Side::Client, &client, &mut c_off),
            "s" => (Side::Server, &server, &mut s_off),
            other => panic!("bad side {other} in {}", dir.display()),
        };
        chunks.push(Chunk {
            side,
            ts_ns: ts,
            bytes: stream[*off..*off + len].to_vec(),
        });
        *off += len;
    }
    assert_eq!(
        (c_off, s_off),
        (client.len(), server.len()),
        "chunks.txt covers the streams"
    );
    chunks
}

/// Output of one replay: records plus the parse errors' reasons, in order.
pub struct Replay {
    pub records: Vec<Record>,
    pub errors: Vec<&'static str>,
}

pub fn replay(
    kind: Kind,
    transport: Transport,
    role: Role,
    config: &ParseConfig,
    chunks: &[Chunk],
    chunking: Chunking,
) -> Replay {
    let mut parser = kind.parser(role, transport, config);
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for chunk in chunks {
        let dir = match (chunk.side, role) {
            (Side::Client, Role::Client) | (Side::Server, Role::Server) => Direction::Egress,
            _ => Direction::Ingress,
        };
        let pieces: Vec<&[u8]> = match chunking {
            Chunking::AsCaptured => vec![&chunk.bytes[..]],
            Chunking::Bytewise => chunk.bytes.chunks(1).collect(),
            Chunking::Thirds => {
                let n = chunk.bytes.len();
                let (a, b) = (n / 5, n / 5 + n / 2);
                vec![&chunk.bytes[..a], &chunk.bytes[a..b], &chunk.bytes[b..]]
            }
        };
        for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
            if let Err(e) = parser.feed(dir, chunk.ts_ns, piece, &mut records) {
                errors.push(e.reason);
            }
        }
    }
    parser.expire(u64::MAX, &mut records);
    Replay { records, errors }
}

/// Stable text: one block per record, `column: value` lines in the protocol's column order.
pub fn render(kind: Kind, replay: &Replay) -> String {
    let mut s = String::new();
    for (i, r) in replay.records.iter().enumerate() {
        let latency = r.latency_ns.map_or("none".to_string(), |l| l.to_string());
        let red = r.red.to_string();
        writeln!(s, "# record {}", i + 1).unwrap();
        writeln!(s, "request_ns: {}", r.request_ns).unwrap();
        writeln!(s, "latency_ns: {latency}").unwrap();
        writeln!(s, "red: {red}").unwrap();
        for (col, field) in kind.columns().iter().zip(&r.fields) {
            let shown = match r.str_of(field) {
                Some(v) => Field::String(col.shown(v).into_owned()),
                None => field.clone(),
            };
            writeln!(s, "{}: {}", col.name, field_text(&shown)).unwrap();
        }
        assert_eq!(kind.columns().len(), r.fields.len(), "one field per column");
    }
    for e in &replay.errors {
        writeln!(s, "# parse error: {e}").unwrap();
    }
    s
}

fn field_text(f: &Field) -> String {
    match f {
        Field::Null => "null".into(),
        Field::Int64(v) => v.to_string(),
        Field::UInt64(v) => v.to_string(),
        Field::Float64(v) => v.to_string(),
        Field::Boolean(v) => v.to_string(),
        Field::String(v) => v
            .chars()
            .flat_map(|c| {
                let plain = !(c.is_control() || c == '\\');
                let escaped: Vec<char> = if plain {
                    vec![c]
                } else {
                    c.escape_default().collect()
                };
                escaped
            })
            .collect(),
        // Resolved to a `Field::String` by the caller.
        Field::Text(span) => format!("<unresolved {span:?}>"),
    }
}

/// Compares `actual` with the case's expected.txt (or writes it under SONDE_BLESS=1).
pub fn check_expected(dir: &Path, actual: &str) {
    let path = dir.join("expected.txt");
    if std::env::var_os("SONDE_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SONDE_BLESS=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{} differs from the parser's output:\n{actual}",
        path.display()
    );
}

/// The whole check for one captured case: the client-side replay as captured matches
/// expected.txt, and the server-side replay and other chunkings give the same records.
pub fn check_case(kind: Kind, transport: Transport, protocol: &str, case: &str) -> Replay {
    let dir = fixture_dir(protocol, case);
    let chunks = load(&dir);
    let config = ParseConfig::default();
    let client = replay(
        kind,
        transport,
        Role::Client,
        &config,
        &chunks,
        Chunking::AsCaptured,
    );
    let text = render(kind, &client);
    check_expected(&dir, &text);
    let server = replay(
        kind,
        transport,
        Role::Server,
        &config,
        &chunks,
        Chunking::AsCaptured,
    );
    assert_eq!(render(kind, &server), text, "server-side view of {case}");
    if transport == Transport::Tcp {
        for chunking in [Chunking::Bytewise, Chunking::Thirds] {
            let other = replay(kind, transport, Role::Client, &config, &chunks, chunking);
            assert_eq!(render(kind, &other), text, "{case} fed {chunking:?}");
        }
    }
    client
}
