//! Benchmark: how long the parsers take per request/response exchange, on one core, without the
//! agent around them. Prints ns per exchange for each workload.
//!
//! `cargo run --release -p sonde-protocols --example parse-throughput [-- --exchanges N] [--only PREFIX]`
//! (`--only http` runs the workloads whose name starts with `http`, e.g. under `perf record`).
//!
//! The HTTP workload is what `sonde-bench-protocols` sends through nginx (wrk's request, nginx's
//! `return 200 "hello\n"` answer, byte for byte), plus a browser-like request with more headers;
//! each exchange is one request syscall and one response syscall on a keep-alive connection. The DNS
//! workload is one UDP query and its answer, as dig and dnsmasq exchange them; PostgreSQL a simple
//! `SELECT 1` and its four answer messages; MySQL a COM_QUERY `SELECT 1` and its text result set;
//! Redis a GET and its bulk string.
use std::hint::black_box;
use std::time::Instant;

use sonde_protocols::{Direction, Kind, ParseConfig, Record, Role, Transport};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WRK_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n";
const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 05:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";
const BROWSER_REQUEST: &[u8] = b"GET /api/v1/orders?limit=20 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: application/json\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo\r\nCookie: session=abc123; theme=dark\r\nConnection: keep-alive\r\n\r\n";
const JSON_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 05:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\nCache-Control: no-store\r\nVary: Accept-Encoding\r\n\r\n{\"orders\":[],\"next\":null}\r\n";

const PASSES: usize = 5;

struct Args {
    exchanges: u64,
    only: Option<String>,
}

fn args() -> Args {
    let mut parsed = Args {
        exchanges: 1_000_000,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exchanges" => {
                parsed.exchanges = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--exchanges takes a number, e.g. --exchanges 1000000");
                    std::process::exit(2);
                })
            }
            "--only" => parsed.only = args.next(),
            other => {
                eprintln!("unknown argument {other:?}: use --exchanges N and --only PREFIX");
                std::process::exit(2);
            }
        }
    }
    parsed
}

/// A DNS query for web.sonde.test (A) and dnsmasq's answer (10.0.0.7), as dig sends and gets them.
fn dns_exchange() -> (Vec<u8>, Vec<u8>) {
    let question = b"\x03web\x05sonde\x04test\x00\x00\x01\x00\x01";
    let mut query = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
    query.extend_from_slice(question);
    // The EDNS OPT record dig adds.
    query.extend_from_slice(&[0, 0, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut response = vec![0x12, 0x34, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
    response.extend_from_slice(question);
    response.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, 7]);
    response.extend_from_slice(&[0, 0, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    (query, response)
}

/// PostgreSQL simple query `SELECT 1` and what the server answers (RowDescription, DataRow,
/// CommandComplete, ReadyForQuery).
fn pgsql_exchange() -> (Vec<u8>, Vec<u8>) {
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    let query = message(b'Q', b"SELECT 1\0");
    let mut column = b"?column?\0".to_vec();
    column.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]);
    let mut description = vec![0, 1];
    description.extend_from_slice(&column);
    let mut response = message(b'T', &description);
    response.extend(message(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
    response.extend(message(b'C', b"SELECT 1\0"));
    response.extend(message(b'Z', b"I"));
    (query, response)
}

/// MySQL COM_QUERY `SELECT 1` on a connection whose handshake was not seen (the parser then
/// expects EOF packets around the rows) and the server's text result set.
fn mysql_exchange() -> (Vec<u8>, Vec<u8>) {
    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }
    let query = packet(0, b"\x03SELECT 1");
    let mut column = b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00".to_vec();
    column.extend_from_slice(&[1, 0, 0, 0, 0x08, 0x81, 0, 0, 0, 0]);
    let eof = b"\xfe\x00\x00\x02\x00";
    let mut response = packet(1, b"\x01");
    response.extend(packet(2, &column));
    response.extend(packet(3, eof));
    response.extend(packet(4, b"\x011"));
    response.extend(packet(5, eof));
    (query, response)
}

struct Workload<'a> {
    name: &'a str,
    kind: Kind,
    /// Client: requests are egress; server: ingress.
    role: Role,
    transport: Transport,
    request: &'a [u8],
    response: &'a [u8],
}

/// ns per exchange of `request` then `response` through one parser, and the records it gave.
fn run(w: &Workload<'_>, exchanges: u64) -> (f64, u64) {
    let mut parser = w.kind.parser(w.role, w.transport, &ParseConfig::default());
    let (request_dir, response_dir) = match w.role {
        Role::Client => (Direction::Egress, Direction::Ingress),
        Role::Server => (Direction::Ingress, Direction::Egress),
    };
    let mut out: Vec<Record> = Vec::new();
    let mut records = 0;
    let start = Instant::now();
    for i in 0..exchanges {
        let ts = i * 1000;
        let _ = parser.feed(request_dir, ts, black_box(w.request), &mut out);
        let _ = parser.feed(response_dir, ts + 500, black_box(w.response), &mut out);
        records += out.len() as u64;
        // The agent encodes and drops records as they come; so does this loop.
        black_box(out.drain(..).count());
    }
    (
        start.elapsed().as_nanos() as f64 / exchanges as f64,
        records,
    )
}

fn main() {
    let Args { exchanges, only } = args();
    let (dns_query, dns_response) = dns_exchange();
    let (pg_query, pg_response) = pgsql_exchange();
    let (my_query, my_response) = mysql_exchange();
    let workloads = [
        Workload {
            name: "http wrk → nginx",
            kind: Kind::Http,
            role: Role::Server,
            transport: Transport::Tcp,
            request: WRK_REQUEST,
            response: NGINX_RESPONSE,
        },
        Workload {
            name: "http browser-like → json",
            kind: Kind::Http,
            role: Role::Server,
            transport: Transport::Tcp,
            request: BROWSER_REQUEST,
            response: JSON_RESPONSE,
        },
        Workload {
            name: "dns A query → answer (udp)",
            kind: Kind::Dns,
            role: Role::Client,
            transport: Transport::Udp,
            request: &dns_query,
            response: &dns_response,
        },
        Workload {
            name: "pgsql SELECT 1 (simple query)",
            kind: Kind::Pgsql,
            role: Role::Client,
            transport: Transport::Tcp,
            request: &pg_query,
            response: &pg_response,
        },
        Workload {
            name: "mysql SELECT 1 (COM_QUERY)",
            kind: Kind::Mysql,
            role: Role::Client,
            transport: Transport::Tcp,
            request: &my_query,
            response: &my_response,
        },
        Workload {
            name: "redis GET → bulk string",
            kind: Kind::Redis,
            role: Role::Client,
            transport: Transport::Tcp,
            request: b"*2\r\n$3\r\nGET\r\n$5\r\nuser1\r\n",
            response: b"$5\r\nalice\r\n",
        },
    ];
    for w in workloads
        .iter()
        .filter(|w| only.as_ref().is_none_or(|p| w.name.starts_with(p.as_str())))
    {
        // A warm-up pass, then five measured ones: the median, and the range (a shared VM's noise).
        run(w, exchanges / 10 + 1);
        let mut passes = Vec::new();
        for _ in 0..PASSES {
            let (ns, records) = run(w, exchanges);
            if records != exchanges {
                eprintln!(
                    "{}: {records} records for {exchanges} exchanges: the parser lost some",
                    w.name
                );
                std::process::exit(1);
            }
            passes.push(ns);
        }
        passes.sort_by(f64::total_cmp);
        println!(
            "{}: {:.0} ns per exchange (median of {PASSES} passes of {exchanges}; {:.0}–{:.0})",
            w.name,
            passes[PASSES / 2],
            passes[0],
            passes[PASSES - 1]
        );
    }
}
