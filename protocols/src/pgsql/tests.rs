//! Edge cases as byte constants; real conversations are in tests/pgsql_captures.rs.
use super::*;
use crate::{Field, Red};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

const SSL_REQUEST: &[u8] = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
const READY: &[u8] = b"Z\x00\x00\x00\x05I";

fn client() -> Parser {
    Parser::new(Role::Client, &ParseConfig::default())
}

fn feed(p: &mut Parser, dir: Direction, ts: u64, data: &[u8], out: &mut Vec<Record>) {
    p.feed(dir, ts, data, out).unwrap();
}

#[test]
fn detect_knows_startup_messages_anywhere_and_tags_on_5432() {
    assert!(detect(Direction::Egress, SSL_REQUEST, 40000));
    let q = msg(b'Q', b"SELECT 1\0");
    assert!(detect(Direction::Egress, &q, 5432));
    assert!(!detect(Direction::Egress, &q, 40000));
    assert!(!detect(Direction::Egress, b"GET / HTTP/1.1\r\n", 5432));
}

#[test]
fn an_accepted_ssl_request_stops_parsing() {
    let mut p = client();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 1, SSL_REQUEST, &mut out);
    feed(&mut p, Direction::Ingress, 2, b"S", &mut out);
    feed(
        &mut p,
        Direction::Egress,
        3,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        &mut out,
    );
    p.expire(u64::MAX, &mut out);
    assert!(out.is_empty());
}

#[test]
fn pipelined_queries_are_answered_in_order() {
    let mut p = client();
    let mut out = Vec::new();
    let mut reqs = msg(b'Q', b"SELECT 1\0");
    reqs.extend(msg(b'Q', b"DELETE FROM t\0"));
    feed(&mut p, Direction::Egress, 10, &reqs, &mut out);
    let mut resp = msg(b'C', b"SELECT 1\0");
    resp.extend_from_slice(READY);
    resp.extend(msg(b'C', b"DELETE 3\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 30, &resp, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].fields[1], Field::String("DELETE FROM t".into()));
    assert_eq!(out[1].fields[3], Field::String("DELETE 3".into()));
    assert_eq!(
        out[1].red,
        Red::Db {
            system: "postgresql",
            operation: "DELETE"
        }
    );
    assert_eq!(out[1].latency_ns, Some(20));
}

#[test]
fn a_huge_data_row_is_skipped_even_across_a_gap() {
    let mut p = client();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        1,
        &msg(b'Q', b"SELECT blob\0"),
        &mut out,
    );
    let row = msg(b'D', &vec![7u8; 100_000]);
    feed(&mut p, Direction::Ingress, 2, &row[..4000], &mut out);
    p.gap(Direction::Ingress, 90_000);
    feed(&mut p, Direction::Ingress, 3, &row[94_000..], &mut out);
    let mut end = msg(b'C', b"SELECT 1\0");
    end.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 4, &end, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[4], Field::Int64(1));
    assert_eq!(out[0].fields[3], Field::String("SELECT 1".into()));
}

#[test]
fn a_gap_inside_a_kept_message_orphans_pending_requests() {
    let mut p = client();
    let mut out = Vec::new();
    let q = msg(b'Q', b"SELECT 1\0");
    feed(&mut p, Direction::Egress, 1, &q, &mut out);
    let err = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
    feed(&mut p, Direction::Ingress, 2, &err[..6], &mut out);
    p.gap(Direction::Ingress, 4);
    p.expire(0, &mut out);
    assert_eq!(out.len(), 1, "orphans are emitted at once");
    assert_eq!(out[0].latency_ns, None);
    // Back in step at the next message start.
    feed(&mut p, Direction::Egress, 5, &q, &mut out);
    let mut ok = msg(b'C', b"SELECT 1\0");
    ok.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 6, &ok, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].fields[3], Field::String("SELECT 1".into()));
}

#[test]
fn a_fatal_error_ends_the_startup_exchange() {
    let mut p = client();
    let mut out = Vec::new();
    let startup = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00";
    feed(&mut p, Direction::Egress, 1, startup, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        2,
        &msg(b'R', &3u32.to_be_bytes()),
        &mut out,
    );
    feed(
        &mut p,
        Direction::Egress,
        3,
        &msg(b'p', b"hunter2\0"),
        &mut out,
    );
    let fatal = msg(
        b'E',
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"bob\"\0\0",
    );
    feed(&mut p, Direction::Ingress, 4, &fatal, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].fields[1],
        Field::String("user=bob password=<redacted>".into())
    );
    let Field::String(resp) = &out[0].fields[3] else {
        panic!()
    };
    assert!(
        resp.starts_with("FATAL 28P01: password authentication failed"),
        "{resp}"
    );
}

#[test]
fn binary_parameters_are_decoded_by_declared_type() {
    let mut p = client();
    let mut out = Vec::new();
    // Parse "s1" with one int4 parameter, then Bind in binary format, Execute, Sync.
    let mut reqs = msg(b'P', b"s1\0SELECT $1\0\x00\x01\x00\x00\x00\x17");
    reqs.extend(msg(
        b'B',
        b"\0s1\0\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\xff\xff\xff\xfe\x00\x00",
    ));
    reqs.extend(msg(b'E', b"\0\0\0\0\0"));
    reqs.extend(msg(b'S', b""));
    feed(&mut p, Direction::Egress, 1, &reqs, &mut out);
    let mut resp = msg(b'1', b"");
    resp.extend(msg(b'2', b""));
    resp.extend(msg(b'C', b"SELECT 1\0"));
    resp.extend_from_slice(READY);
    feed(&mut p, Direction::Ingress, 2, &resp, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].fields[0], Field::String("Execute".into()));
    assert_eq!(out[0].fields[1], Field::String("SELECT $1".into()));
    assert_eq!(out[0].fields[2], Field::String("$1=-2".into()));
}

#[test]
fn garbage_from_the_client_is_an_error_not_a_panic() {
    let mut p = client();
    let err = p
        .feed(
            Direction::Egress,
            1,
            b"\xde\xad\xbe\xef\x00\x00",
            &mut Vec::new(),
        )
        .unwrap_err();
    assert_eq!(err.reason, "unknown_frontend_tag");
}
