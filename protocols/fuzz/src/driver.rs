//! Turns fuzzer bytes into a parser session: a configuration byte, then operations (feed a chunk in
//! either direction, lose bytes, expire) so chunking, gaps and timeouts are fuzzed along with the
//! bytes. Invariants that must hold whatever the input are asserted here.
//!
//! Input: `config` byte (bits 0-1 body limit, 2 redact, 3 role, 4 UDP), then repeated
//! `op` byte (bits 0-2 kind, 3 direction, 4-7 clock step) with its operand:
//! 0-4 feed `len` (next byte) bytes, 5 gap of `next byte * 7` bytes, 6 expire, 7 feed the rest.
use sonde_protocols::{Direction, Kind, ParseConfig, Role, Transport};

pub fn drive(kind: Kind, data: &[u8]) {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    for k in Kind::ALL {
        k.detect(Direction::Egress, rest, u16::from(config) * 257);
    }
    let parse_config = ParseConfig {
        max_body_bytes: [0, 1, 16, 512][usize::from(config & 3)],
        redact: config & 4 != 0,
    };
    let role = if config & 8 != 0 {
        Role::Server
    } else {
        Role::Client
    };
    let transport = if config & 16 != 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let mut parser = kind.parser(role, transport, &parse_config);
    let mut out = Vec::new();
    let mut ts: u64 = 1_000;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let dir = if op & 8 != 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        ts += u64::from(op >> 4);
        match op & 7 {
            0..=4 => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
                rest = tail;
                let _ = parser.feed(dir, ts, chunk, &mut out);
            }
            5 => {
                let Some((&lost, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                parser.gap(dir, u64::from(lost) * 7);
            }
            6 => parser.expire(ts.saturating_sub(8), &mut out),
            _ => {
                let _ = parser.feed(dir, ts, rest, &mut out);
                rest = &[];
            }
        }
    }
    parser.expire(u64::MAX, &mut out);
    for record in &out {
        assert_eq!(
            record.fields.len(),
            kind.columns().len(),
            "{kind:?}: a record must fill every column"
        );
        let error = record.red.error();
        assert!(
            record.latency_ns.is_none()
                || (error != sonde_protocols::error_type::TIMEOUT
                    && error != sonde_protocols::error_type::CONNECTION_CLOSED),
            "{kind:?}: an answered record says it went unanswered ({error})"
        );
        // Columns rendered when read (HTTP headers → a JSON object) must render whatever was kept.
        for (column, field) in kind.columns().iter().zip(&record.fields) {
            if let (Some(_), Some(kept)) = (column.render, record.str_of(field)) {
                let shown = column.shown(kept);
                assert!(
                    shown.starts_with('{') && shown.ends_with('}'),
                    "{kind:?} {}: {kept:?} rendered as {shown:?}",
                    column.name
                );
            }
        }
    }
}
