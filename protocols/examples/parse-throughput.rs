//! Benchmark: how long the parsers take per request/response exchange, on one core, without the
//! agent around them. Prints ns per exchange for each workload.
//!
//! `cargo run --release -p sonde-protocols --example parse-throughput [-- --exchanges N]`
//!
//! The HTTP workload is what `sonde-bench-protocols` sends through nginx (wrk's request, nginx's
//! `return 200 "hello\n"` answer, byte for byte), plus a browser-like request with more headers;
//! each exchange is one request syscall and one response syscall on a keep-alive connection.
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

fn exchanges_arg() -> u64 {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--exchanges" {
            return args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("--exchanges takes a number, e.g. --exchanges 1000000");
                std::process::exit(2);
            });
        }
    }
    1_000_000
}

/// ns per exchange of `request` then `response` through one server-side HTTP parser.
fn run(request: &[u8], response: &[u8], exchanges: u64) -> (f64, u64) {
    let mut parser = Kind::Http.parser(Role::Server, Transport::Tcp, &ParseConfig::default());
    let mut out: Vec<Record> = Vec::new();
    let mut records = 0;
    let start = Instant::now();
    for i in 0..exchanges {
        let ts = i * 1000;
        let _ = parser.feed(Direction::Ingress, ts, black_box(request), &mut out);
        let _ = parser.feed(Direction::Egress, ts + 500, black_box(response), &mut out);
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
    let exchanges = exchanges_arg();
    for (name, request, response) in [
        ("http wrk → nginx", WRK_REQUEST, NGINX_RESPONSE),
        ("http browser-like → json", BROWSER_REQUEST, JSON_RESPONSE),
    ] {
        // A warm-up pass, then five measured ones: the median, and the range (a shared VM's noise).
        run(request, response, exchanges / 10 + 1);
        let mut passes = Vec::new();
        for _ in 0..PASSES {
            let (ns, records) = run(request, response, exchanges);
            if records != exchanges {
                eprintln!(
                    "{name}: {records} records for {exchanges} exchanges: the parser lost some"
                );
                std::process::exit(1);
            }
            passes.push(ns);
        }
        passes.sort_by(f64::total_cmp);
        println!(
            "{name}: {:.0} ns per exchange (median of {PASSES} passes of {exchanges}; {:.0}–{:.0})",
            passes[PASSES / 2],
            passes[0],
            passes[PASSES - 1]
        );
    }
}
