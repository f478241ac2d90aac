//! Edge cases as byte constants; captured conversations are replayed in tests/captures.rs.
use super::*;
use crate::{Field, Record, Red, Unanswered};

const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
const GET_B: &[u8] = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
const OK_2: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn parser() -> Parser {
    Parser::new(Role::Client, &ParseConfig::default())
}

fn field<'a>(record: &'a Record, column: &str) -> &'a Field {
    let i = COLUMNS.iter().position(|c| c.name == column).unwrap();
    &record.fields[i]
}

/// A string field as readers see it (header columns rendered).
fn text<'a>(record: &'a Record, column: &str) -> std::borrow::Cow<'a, str> {
    let def = COLUMNS.iter().find(|c| c.name == column).unwrap();
    let field = field(record, column);
    match record.str_of(field) {
        Some(s) => def.shown(s),
        None => panic!("{column} is {field:?}"),
    }
}

fn int(record: &Record, column: &str) -> i64 {
    match field(record, column) {
        Field::Int64(v) => *v,
        other => panic!("{column} is {other:?}"),
    }
}

fn feed(p: &mut Parser, dir: Direction, ts: u64, data: &[u8], out: &mut Vec<Record>) {
    p.feed(dir, ts, data, out).unwrap();
}

#[test]
fn detect_accepts_request_and_status_lines_only() {
    assert!(detect(Direction::Egress, GET_A, 80));
    assert!(detect(
        Direction::Ingress,
        b"HTTP/1.0 404 Not Found\r\n",
        80
    ));
    assert!(detect(Direction::Egress, b"OPTIONS * HTTP/1.1\r\n", 80));
    assert!(
        !detect(Direction::Egress, b"GETX / HTTP/1.1", 80),
        "no line end"
    );
    assert!(!detect(Direction::Egress, b"GET  /", 80));
    assert!(!detect(Direction::Egress, b"HTTP/2 200\r\n", 80));
    assert!(!detect(Direction::Egress, b"\x16\x03\x01\x02\x00", 443));
}

#[test]
fn a_request_without_response_is_emitted_by_expire_with_status_zero() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    p.expire(50, &mut out);
    assert!(
        out.is_empty(),
        "a request newer than the deadline must wait"
    );
    p.expire(101, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, None);
    assert_eq!(
        out[0].red,
        Red::Http {
            method: "GET",
            status: 0,
            error: "timeout"
        }
    );
    assert_eq!(int(&out[0], "resp_status"), 0);
    assert_eq!(text(&out[0], "req_path"), "/a");
}

#[test]
fn a_request_that_times_out_or_whose_connection_closes_says_how_its_wait_ended() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    feed(&mut p, Direction::Ingress, 150, OK_2, &mut out);
    assert_eq!(out[0].unanswered(), None, "answered");
    feed(&mut p, Direction::Egress, 200, GET_A, &mut out);
    p.expire(201, &mut out);
    assert_eq!(
        (out[1].latency_ns, out[1].unanswered()),
        (None, Some(Unanswered::Timeout))
    );
    feed(&mut p, Direction::Egress, 300, GET_B, &mut out);
    p.expire(u64::MAX, &mut out);
    assert_eq!(
        (out[2].latency_ns, out[2].unanswered()),
        (None, Some(Unanswered::Closed))
    );
    assert_eq!(text(&out[2], "req_path"), "/b");
}

#[test]
fn requests_whose_answers_may_have_been_lost_by_the_capture_have_no_known_end() {
    // Response bytes lost in a head: the waiting request is written at once, without an end.
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        150,
        b"HTTP/1.1 200 OK\r\nCont",
        &mut out,
    );
    p.gap(Direction::Ingress, 40);
    // One sent next, closed while the responses are not followed again: no end either.
    feed(&mut p, Direction::Egress, 200, GET_B, &mut out);
    assert_eq!((out.len(), out[0].unanswered()), (1, None));
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[1].latency_ns, out[1].unanswered()), (None, None));

    // Requests lost before the waiting one (a pipeline read in part): its response may be among
    // those that cannot be paired at the close.
    let mut p = Parser::new(Role::Server, &ParseConfig::default());
    let mut out = Vec::new();
    feed(&mut p, Direction::Ingress, 100, GET_A, &mut out);
    p.gap(Direction::Ingress, 500);
    feed(&mut p, Direction::Ingress, 100, GET_B, &mut out);
    p.expire(u64::MAX, &mut out);
    assert!(!out.is_empty());
    assert!(out.iter().all(|r| r.unanswered().is_none()), "{out:?}");
}

#[test]
fn a_response_without_length_is_read_until_close() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        200,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ",
        &mut out,
    );
    feed(&mut p, Direction::Ingress, 300, b"world", &mut out);
    p.expire(1_000, &mut out);
    assert!(
        out.is_empty(),
        "the response being read answers the request"
    );
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(text(&out[0], "resp_body"), "hello world");
    assert_eq!(int(&out[0], "resp_body_size"), 11);
    assert_eq!(out[0].latency_ns, Some(200));
}

#[test]
fn interim_responses_are_skipped_and_not_stitched() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        200,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(int(&out[0], "resp_status"), 200);
}

#[test]
fn a_pipelined_head_response_has_no_body_despite_its_content_length() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        100,
        b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        &mut out,
    );
    feed(
        &mut p,
        Direction::Ingress,
        200,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(int(&out[0], "resp_body_size"), 0);
    assert_eq!(text(&out[1], "resp_body"), "ok");
}

/// A client parser that sent /a and /b and got, at 200, the first piece of /a's answer.
fn answer_begun(first: &[u8]) -> (Parser, Vec<Record>) {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    feed(&mut p, Direction::Egress, 101, GET_B, &mut out);
    feed(&mut p, Direction::Ingress, 200, first, &mut out);
    (p, out)
}

#[test]
fn a_gap_inside_a_body_of_known_length_keeps_sync() {
    let (mut p, mut out) =
        answer_begun(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    p.gap(Direction::Ingress, 80);
    feed(&mut p, Direction::Ingress, 300, b"abcdefghij", &mut out);
    feed(&mut p, Direction::Ingress, 400, OK_2, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(int(&out[0], "resp_body_size"), 100);
    assert_eq!(
        text(&out[0], "resp_body"),
        "0123456789",
        "bytes after a hole are not shown"
    );
    assert_eq!(text(&out[1], "req_path"), "/b");
    assert_eq!(text(&out[1], "resp_body"), "ok");
}

/// A client's large reads of a chunked answer are captured in part: the chunk boundaries in the
/// lost bytes are unknown.
const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A client parser that sent /a and /b and got, at 200, the head of /a's chunked answer and
/// `chunks`.
fn chunked_answer_begun(chunks: &[u8]) -> (Parser, Vec<Record>) {
    answer_begun(&[CHUNKED_HEAD, chunks].concat())
}

#[test]
fn a_gap_across_chunks_counts_every_byte_until_the_last_chunk_and_keeps_sync() {
    let (mut p, mut out) = chunked_answer_begun(b"5\r\nhello\r\n10\r\n0123");
    p.gap(Direction::Ingress, 1000);
    // The last chunk split between two reads.
    feed(
        &mut p,
        Direction::Ingress,
        300,
        b"456789abcdef\r\n3\r\nend\r\n0\r",
        &mut out,
    );
    assert!(out.is_empty(), "the body goes on");
    feed(&mut p, Direction::Ingress, 310, b"\n\r\n", &mut out);
    feed(&mut p, Direction::Ingress, 400, OK_2, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(text(&out[0], "req_path"), "/a");
    // hello, 0123, the 1,000 lost bytes, then all 24 bytes of the next read (its framing too).
    assert_eq!(int(&out[0], "resp_body_size"), 5 + 4 + 1000 + 24);
    assert_eq!(text(&out[0], "resp_body"), "hello0123");
    assert_eq!(
        out[0].latency_ns,
        Some(310 - 100),
        "it ends with its last chunk"
    );
    assert_eq!(text(&out[1], "req_path"), "/b");
    assert_eq!(text(&out[1], "resp_body"), "ok");
}

#[test]
fn a_gap_that_ends_with_a_chunk_s_crlf_keeps_the_chunk_boundaries() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    // Each chunk written in one syscall of which the first bytes were captured.
    let first = [CHUNKED_HEAD, b"3e8\r\nabc"].concat();
    feed(&mut p, Direction::Ingress, 200, &first, &mut out);
    p.gap(Direction::Ingress, 997 + 2);
    feed(&mut p, Direction::Ingress, 210, b"3e8\r\ndef", &mut out);
    p.gap(Direction::Ingress, 997 + 1);
    feed(&mut p, Direction::Ingress, 220, b"\n0\r\n\r\n", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        int(&out[0], "resp_body_size"),
        2000,
        "exact: no framing counted"
    );
    assert_eq!(text(&out[0], "resp_body"), "abc");
    assert_eq!(out[0].latency_ns, Some(220 - 100));
}

#[test]
fn a_chunked_body_whose_last_chunk_was_lost_ends_where_the_next_answer_starts() {
    let (mut p, mut out) = chunked_answer_begun(b"5\r\nhello\r\n");
    p.gap(Direction::Ingress, 500);
    feed(&mut p, Direction::Ingress, 400, OK_2, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(int(&out[0], "resp_body_size"), 505);
    assert_eq!(
        out[0].latency_ns,
        Some(200 - 100),
        "ends with the last bytes seen of it"
    );
    assert_eq!(text(&out[1], "req_path"), "/b");
    assert_eq!(int(&out[1], "resp_status"), 200);
    assert_eq!(text(&out[1], "resp_body"), "ok");
}

#[test]
fn a_gap_in_a_head_resyncs_at_the_next_request_line() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, b"GET /a HTT", &mut out);
    p.gap(Direction::Egress, 50);
    feed(&mut p, Direction::Egress, 110, b"xyz\r\n\r\n", &mut out);
    // The answer to the lost request began before /b was sent: it must not be given to /b.
    feed(&mut p, Direction::Ingress, 150, OK_2, &mut out);
    feed(&mut p, Direction::Egress, 200, GET_B, &mut out);
    feed(
        &mut p,
        Direction::Ingress,
        250,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(text(&out[0], "req_path"), "/b");
    assert_eq!(int(&out[0], "resp_status"), 404);
}

#[test]
fn lost_response_bytes_emit_the_waiting_requests_unanswered() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    p.gap(Direction::Ingress, 30);
    assert!(
        p.feed(
            Direction::Ingress,
            200,
            b"garbage without a status line",
            &mut out
        )
        .is_ok()
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, None);
    feed(&mut p, Direction::Egress, 300, GET_B, &mut out);
    feed(&mut p, Direction::Ingress, 400, OK_2, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(text(&out[1], "req_path"), "/b");
}

#[test]
fn garbage_is_an_error_and_parsing_resumes_at_the_next_request() {
    let mut p = parser();
    let mut out = Vec::new();
    let err = p
        .feed(
            Direction::Egress,
            100,
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.reason, "bad_request_line");
    feed(&mut p, Direction::Egress, 110, GET_B, &mut out);
    feed(&mut p, Direction::Ingress, 200, OK_2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(text(&out[0], "req_path"), "/b");
}

#[test]
fn a_connection_whose_first_request_has_another_method_is_detected_by_its_whole_line() {
    // A WebDAV client's first request (davfs2, Nextcloud's desktop client), a cache purge.
    let propfind: &[u8] = b"PROPFIND /remote.php/dav/files/ann/ HTTP/1.1\r\nHost: cloud\r\nDepth: 1\r\nContent-Length: 0\r\n\r\n";
    assert!(detect(Direction::Ingress, propfind, 80));
    assert!(detect(
        Direction::Egress,
        b"PURGE /img/logo.png HTTP/1.1\r\n",
        80
    ));
    assert_eq!(
        detect::role(Direction::Ingress, propfind),
        Some(Role::Server)
    );
    assert_eq!(
        detect::role(Direction::Egress, propfind),
        Some(Role::Client)
    );
    // Text that is no HTTP request line.
    for other in [
        &b"PROPFIND /dav\r\n"[..],
        b"PROPFIND /dav HTTP/2\r\n",
        b"DESCRIBE rtsp://cam/1 RTSP/1.0\r\n",
        b"INVITE sip:ann@example.com SIP/2.0\r\n",
        b"+OK POP3 server ready\r\n",
        b"EHLO mail.example.com\r\n",
        b"PROP FIND /dav HTTP/1.1\r\n",
        // What is left of `POST /a HTTP/1.1` after a loss.
        b"OST /a HTTP/1.1\r\n",
        b"T /a HTTP/1.1\r\n",
        b"PROPFIND /dav HTTP/1.1",
    ] {
        assert!(
            !detect(Direction::Egress, other, 80),
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn an_unknown_method_is_other_in_metrics_but_kept_in_the_row() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        100,
        b"PROPFIND /dav HTTP/1.1\r\n\r\n",
        &mut out,
    );
    feed(
        &mut p,
        Direction::Ingress,
        200,
        b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n",
        &mut out,
    );
    assert_eq!(
        out[0].red,
        Red::Http {
            method: "_OTHER",
            status: 207,
            error: ""
        }
    );
    assert_eq!(text(&out[0], "req_method"), "PROPFIND");
}

#[test]
fn an_upgrade_stops_parsing_the_connection() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Egress,
        100,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        &mut out,
    );
    feed(
        &mut p,
        Direction::Ingress,
        200,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        &mut out,
    );
    feed(
        &mut p,
        Direction::Egress,
        300,
        b"\x81\x85\x00\x00\x00\x00hello",
        &mut out,
    );
    p.expire(u64::MAX, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(int(&out[0], "resp_status"), 101);
}

#[test]
fn bodies_are_cut_at_the_limit_and_binary_ones_summarised() {
    let config = ParseConfig {
        max_body_bytes: 4,
        redact: true,
    };
    let mut p = Parser::new(Role::Server, &config);
    let mut out = Vec::new();
    feed(
        &mut p,
        Direction::Ingress,
        100,
        b"POST /t HTTP/1.1\r\nContent-Length: 10\r\n\r\nabcdefghij",
        &mut out,
    );
    feed(
        &mut p,
        Direction::Egress,
        200,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\n\x00\x01\x02",
        &mut out,
    );
    assert_eq!(text(&out[0], "req_body"), "abcd");
    assert_eq!(int(&out[0], "req_body_size"), 10);
    assert_eq!(
        text(&out[0], "resp_body"),
        "<binary 3 bytes, application/octet-stream>"
    );
}

/// A client-side parser keeping 512 bytes of bodies, redacting if `redact`.
fn client_parser(redact: bool) -> Parser {
    Parser::new(
        Role::Client,
        &ParseConfig {
            max_body_bytes: 512,
            redact,
        },
    )
}

#[test]
fn secrets_are_redacted_only_when_configured() {
    let request = b"GET / HTTP/1.1\r\nAuthorization: Basic YTpi\r\nCookie: s=1\r\n\r\n";
    for (redact, expected) in [(true, REDACTED_HEADERS), (false, PLAIN_HEADERS)] {
        let mut p = client_parser(redact);
        let mut out = Vec::new();
        feed(&mut p, Direction::Egress, 100, request, &mut out);
        p.expire(u64::MAX, &mut out);
        assert_eq!(text(&out[0], "req_headers"), expected);
    }
}

#[test]
fn secret_query_parameters_and_body_fields_are_redacted_only_when_configured() {
    let request = b"POST /login?next=/home&access_token=abc HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\nuser=ann&password=hunter2&x=1";
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 37\r\n\r\n{\"id\":7,\"refresh_token\":\"r-9f8e7d6c\"}";
    for (redact, path, req_body, resp_body) in [
        (
            true,
            "/login?next=/home&access_token=<redacted>",
            "user=ann&password=<redacted>&x=1",
            r#"{"id":7,"refresh_token":"<redacted>"}"#,
        ),
        (
            false,
            "/login?next=/home&access_token=abc",
            "user=ann&password=hunter2&x=1",
            r#"{"id":7,"refresh_token":"r-9f8e7d6c"}"#,
        ),
    ] {
        let mut p = client_parser(redact);
        let mut out = Vec::new();
        feed(&mut p, Direction::Egress, 100, request, &mut out);
        feed(&mut p, Direction::Ingress, 200, response, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(text(&out[0], "req_path"), path);
        assert_eq!(text(&out[0], "req_body"), req_body);
        assert_eq!(text(&out[0], "resp_body"), resp_body);
        assert_eq!(
            int(&out[0], "req_body_size"),
            29,
            "the size is the body's on the wire"
        );
    }
}

#[test]
fn credentials_in_custom_headers_are_redacted_but_not_cors_flags() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: k-5e6f\r\nPRIVATE-TOKEN: glpat-1\r\nX-Amz-Security-Token: FwoG\r\nX-Request-Id: r-1\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Credentials: true\r\nX-Session-Id: s-7\r\nContent-Length: 0\r\n\r\n";
    let mut p = client_parser(true);
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, request, &mut out);
    feed(&mut p, Direction::Ingress, 200, response, &mut out);
    assert_eq!(
        text(&out[0], "req_headers"),
        r#"{"Host":"x","PRIVATE-TOKEN":"<redacted>","X-Amz-Security-Token":"<redacted>","X-Api-Key":"<redacted>","X-Request-Id":"r-1"}"#
    );
    assert_eq!(
        text(&out[0], "resp_headers"),
        r#"{"Access-Control-Allow-Credentials":"true","Content-Length":"0","X-Session-Id":"<redacted>"}"#
    );
    for (name, secret) in [
        ("X-Auth-Token", true),
        ("x-api_key", true),
        ("Api-Key", true),
        ("X-Vault-Token", true),
        ("X-Client-Secret", true),
        ("Sec-WebSocket-Key", false),
        ("Strict-Transport-Security", false),
        ("Accept-Encoding", false),
        ("Content-Security-Policy", false),
        ("WWW-Authenticate", false),
        ("access-control-allow-credentials", false),
        ("Private-Token", true),
        ("Session", false),
    ] {
        assert_eq!(super::headers::secret(name), secret, "{name}");
    }
}

#[test]
fn tokens_in_headers_the_path_and_the_query_are_redacted_by_their_shape() {
    use crate::secret::tests::{JWT, fake, github_token};
    let token = github_token();
    let google = fake("AIza", 35);
    let request = format!(
        "GET /reset/{JWT}?next=%2Fhome&t={token}&page=2 HTTP/1.1\r\nHost: x\r\nX-Trace: {JWT}\r\nReferer: https://app/cb?key={google}&q=1\r\nX-Request-Id: r-1\r\n\r\n"
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Debug: issued Bearer {token}\r\nContent-Length: 2\r\n\r\nok"
    );
    for redact in [true, false] {
        let mut p = client_parser(redact);
        let mut out = Vec::new();
        feed(&mut p, Direction::Egress, 100, request.as_bytes(), &mut out);
        feed(
            &mut p,
            Direction::Ingress,
            200,
            response.as_bytes(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let (jwt, github, google) = if redact {
            ("<redacted>", "<redacted>", "<redacted>")
        } else {
            (JWT, token.as_str(), google.as_str())
        };
        assert_eq!(
            text(&out[0], "req_path"),
            format!("/reset/{jwt}?next=%2Fhome&t={github}&page=2")
        );
        assert_eq!(
            text(&out[0], "req_headers"),
            format!(
                r#"{{"Host":"x","Referer":"https://app/cb?key={google}&q=1","X-Request-Id":"r-1","X-Trace":"{jwt}"}}"#
            )
        );
        assert_eq!(
            text(&out[0], "resp_headers"),
            format!(
                r#"{{"Content-Length":"2","Content-Type":"text/plain","X-Debug":"issued Bearer {github}"}}"#
            )
        );
        // The content type is still read from a head written anew.
        assert_eq!(text(&out[0], "content_type"), "text/plain");
    }
}

#[test]
fn tokens_are_redacted_beside_headers_secret_by_name() {
    let token = crate::secret::tests::github_token();
    let request = format!("GET / HTTP/1.1\r\nAuthorization: Basic YTpi\r\nX-Echo: {token}\r\n\r\n");
    let mut p = client_parser(true);
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 100, request.as_bytes(), &mut out);
    p.expire(u64::MAX, &mut out);
    assert_eq!(
        text(&out[0], "req_headers"),
        r#"{"Authorization":"<redacted>","X-Echo":"<redacted>"}"#
    );
}

const REDACTED_HEADERS: &str = r#"{"Authorization":"<redacted>","Cookie":"<redacted>"}"#;
const PLAIN_HEADERS: &str = r#"{"Authorization":"Basic YTpi","Cookie":"s=1"}"#;

#[test]
fn a_chunked_body_split_inside_sizes_and_crlfs_is_reassembled() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
    for split in 1..response.len() {
        let mut p = parser();
        let mut out = Vec::new();
        feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
        feed(
            &mut p,
            Direction::Ingress,
            200,
            &response[..split],
            &mut out,
        );
        feed(
            &mut p,
            Direction::Ingress,
            300,
            &response[split..],
            &mut out,
        );
        assert_eq!(out.len(), 1, "split at {split}");
        assert_eq!(
            text(&out[0], "resp_body"),
            "hello world",
            "split at {split}"
        );
    }
}

#[test]
fn pipelined_messages_cut_anywhere_in_three_pieces_give_the_same_records() {
    let requests: &[u8] =
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    let responses: &[u8] =
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let summary = |out: &[Record]| -> Vec<(String, String, i64, String)> {
        out.iter()
            .map(|r| {
                (
                    text(r, "req_method").into_owned(),
                    text(r, "req_body").into_owned(),
                    int(r, "resp_status"),
                    text(r, "resp_body").into_owned(),
                )
            })
            .collect()
    };
    let mut whole = Vec::new();
    let mut p = parser();
    feed(&mut p, Direction::Egress, 100, requests, &mut whole);
    feed(&mut p, Direction::Ingress, 200, responses, &mut whole);
    let expected = summary(&whole);
    assert_eq!(expected.len(), 2);
    for (data, dir) in [
        (requests, Direction::Egress),
        (responses, Direction::Ingress),
    ] {
        for a in 1..data.len() {
            for b in a..data.len() {
                let mut p = parser();
                let mut out = Vec::new();
                let (first, rest) = data.split_at(a);
                let (second, third) = rest.split_at(b - a);
                let other = if dir == Direction::Egress {
                    responses
                } else {
                    requests
                };
                let other_dir = if dir == Direction::Egress {
                    Direction::Ingress
                } else {
                    Direction::Egress
                };
                let ts = if dir == Direction::Egress { 100 } else { 200 };
                if dir == Direction::Ingress {
                    feed(&mut p, other_dir, 100, other, &mut out);
                }
                for piece in [first, second, third] {
                    feed(&mut p, dir, ts, piece, &mut out);
                }
                if dir == Direction::Egress {
                    feed(&mut p, other_dir, 200, other, &mut out);
                }
                assert_eq!(summary(&out), expected, "{dir:?} cut at {a} and {b}");
            }
        }
    }
}

#[test]
fn a_response_arriving_before_its_request_is_fed_is_still_paired() {
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Ingress, 200, OK_2, &mut out);
    feed(&mut p, Direction::Egress, 100, GET_A, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].latency_ns, Some(100));
}

/// What `headers_json` wrote before it wrote JSON by hand: a serde_json object.
fn headers_json_by_serde(headers: &[(String, String)], redact: bool) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let secret = [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
        ]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s));
        let value = if redact && secret {
            crate::REDACTED
        } else {
            value
        };
        match map.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(value);
            }
            _ => {
                map.insert(name.clone(), serde_json::Value::String(value.to_owned()));
            }
        }
    }
    serde_json::Value::Object(map).to_string()
}

#[test]
fn header_json_is_byte_for_byte_what_a_serde_json_object_gives() {
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![
            ("Host", "example"),
            ("Accept", "*/*"),
            ("User-Agent", "curl/8"),
        ],
        vec![("X-A", "1"), ("x-a", "2"), ("X-A", "3"), ("B", "")],
        vec![
            ("Cookie", "a=1"),
            ("cookie", "b=2"),
            ("Authorization", "Bearer x"),
        ],
        vec![(
            "Q",
            "quote \" back \\ ctl \u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f} é ✓ 😀",
        )],
        vec![("Z", "last"), ("A", "first"), ("M\"x", "mid")],
    ];
    let mut cases: Vec<Vec<(String, String)>> = cases
        .iter()
        .map(|case| {
            case.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        })
        .collect();
    // More headers than are sorted on the stack, some repeated.
    cases.push(
        (0..45)
            .map(|i| (format!("X-{}", 50 - i % 40), format!("v{i}")))
            .collect(),
    );
    for headers in cases {
        for redact in [true, false] {
            let slices: Vec<httparse::Header<'_>> = headers
                .iter()
                .map(|(name, value)| httparse::Header {
                    name,
                    value: value.as_bytes(),
                })
                .collect();
            assert_eq!(
                super::headers::headers_json(&slices, redact),
                headers_json_by_serde(&headers, redact),
                "{headers:?} redact={redact}"
            );
        }
    }
}

#[test]
fn heads_with_many_headers_parse_up_to_the_limit_and_beyond_it_are_an_error() {
    let head = |count: usize| {
        let mut text = String::from("GET /many HTTP/1.1\r\n");
        for i in 0..count {
            text.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        text.push_str("\r\n");
        text
    };
    // More than are tried first, within the limit: parsed, every header kept.
    let mut p = parser();
    let mut out = Vec::new();
    feed(&mut p, Direction::Egress, 1, head(60).as_bytes(), &mut out);
    feed(&mut p, Direction::Ingress, 2, OK_2, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(text(&out[0], "req_path"), "/many");
    let headers: serde_json::Value = serde_json::from_str(&text(&out[0], "req_headers")).unwrap();
    assert_eq!(headers.as_object().unwrap().len(), 60);
    assert_eq!(headers["X-H59"], "59");
    // Past the limit: an error, never a panic.
    let mut p = parser();
    let mut records = Vec::new();
    let err = p
        .feed(Direction::Egress, 1, head(200).as_bytes(), &mut records)
        .unwrap_err();
    assert_eq!(err.reason, "too_many_headers");
}

#[test]
fn plain_header_values_are_told_from_ones_to_escape_at_every_position() {
    // Every byte value at every position of values up to 20 bytes long (word and tail paths),
    // checked against the byte-by-byte definition through the JSON it produces.
    for len in 1..20 {
        for at in 0..len {
            for b in 0..=255u8 {
                let mut value = vec![b'a'; len];
                value[at] = b;
                let header = [httparse::Header {
                    name: "X",
                    value: &value,
                }];
                let json = super::headers::headers_json(&header, false);
                let by_serde = headers_json_by_serde(
                    &[("X".to_owned(), String::from_utf8_lossy(&value).into_owned())],
                    false,
                );
                assert_eq!(json, by_serde, "byte {b:#04x} at {at} of {len}");
            }
        }
    }
}

#[test]
fn kept_header_lines_render_to_the_json_of_the_parsed_head() {
    let many: String = (0..40).map(|i| format!("X-{i}: v{i}\r\n")).collect();
    let heads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nhost: y\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\nHost: bare-lf\nX-Tab: a\tb\n\n".to_vec(),
        b"GET / HTTP/1.1\r\nCookie: a=1\r\nAuthorization: Bearer t\r\nX: \"q\" \\\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nX-Bin: \xff\xfe latin\xe9\r\nX-Empty:\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(),
    ];
    for bytes in heads {
        for redact in [true, false] {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            let Ok(httparse::Status::Complete(n)) = req.parse(&bytes) else {
                panic!(
                    "test head does not parse: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            };
            let Ok(httparse::Status::Complete((head, kept_n))) =
                parse::parse_head(parse::Side::Request, &bytes, redact)
            else {
                panic!("parse_head refused {:?}", String::from_utf8_lossy(&bytes));
            };
            assert_eq!(kept_n, n);
            let block = head.str(head.headers);
            assert_eq!(
                super::headers::render_json(block),
                super::headers::headers_json(req.headers, redact),
                "{:?} redact={redact}",
                String::from_utf8_lossy(&bytes)
            );
            assert_eq!((head.str(head.method), head.str(head.path)), ("GET", "/"));
            if redact {
                assert!(
                    !head.text.contains("Bearer t") && !head.text.contains("a=1"),
                    "{}",
                    head.text
                );
            }
        }
    }
}

/// The spans a head keeps point at the right words whether the head is copied whole or written
/// anew (secrets to redact, bytes that are no UTF-8).
#[test]
fn head_spans_name_the_request_line_status_reason_and_first_content_headers() {
    let requests: [&[u8]; 3] = [
        b"POST /api?q=1 HTTP/1.1\r\nContent-Type:  application/json \r\nContent-Type: text/x\r\nContent-Encoding: gzip\r\n\r\n",
        b"POST /api?q=1 HTTP/1.1\r\nCookie: s=1\r\nContent-Type:  application/json \r\nContent-Type: text/x\r\nContent-Encoding: gzip\r\n\r\n",
        b"POST /api?q=1 HTTP/1.1\r\nX: \xff\r\nContent-Type:  application/json \r\nContent-Type: text/x\r\nContent-Encoding: gzip\r\n\r\n",
    ];
    for bytes in requests {
        let Ok(httparse::Status::Complete((head, _))) =
            parse::parse_head(parse::Side::Request, bytes, true)
        else {
            panic!("refused {:?}", String::from_utf8_lossy(bytes));
        };
        let words = [
            head.str(head.method),
            head.str(head.path),
            head.str(head.content_type),
            head.str(head.content_encoding),
        ];
        assert_eq!(words, ["POST", "/api?q=1", "application/json", "gzip"]);
        assert!(head.str(head.headers).ends_with("gzip\r\n\r\n"));
    }
    let Ok(httparse::Status::Complete((head, _))) = parse::parse_head(
        parse::Side::Response,
        b"HTTP/1.1 404 Not Found\r\nSet-Cookie: x\r\n\r\n",
        true,
    ) else {
        panic!("response refused");
    };
    assert_eq!((head.status, head.str(head.reason)), (404, "Not Found"));
    assert_eq!(head.str(head.headers), "Set-Cookie: <redacted>\r\n\r\n");
    assert_eq!(head.str(head.content_type), "");
}

#[test]
fn header_names_are_known_in_any_case_and_only_when_exact() {
    use super::headers::{Known, known};
    let cases = [
        ("Content-Type", Known::ContentType),
        ("CONTENT-TYPE", Known::ContentType),
        ("content-typf", Known::Other),
        ("Content_Type", Known::Other),
        ("Content-TypE", Known::ContentType),
        ("COOKIE", Known::Secret),
        ("Proxy-Authorizatiom", Known::Other),
        ("Proxy-AUTHORIZATION", Known::Secret),
        ("Content-Encoding", Known::ContentEncoding),
        ("content-length", Known::ContentLength),
        ("Content-Lengths", Known::Other),
        ("Transfer-Encoding", Known::TransferEncoding),
        ("Transfer-Encodinh", Known::Other),
        ("Cookie", Known::Secret),
        ("cookies", Known::Other),
        ("Set-Cookie", Known::Secret),
        ("AUTHORIZATION", Known::Secret),
        ("Authorizatio", Known::Other),
        ("Proxy-Authorization", Known::Secret),
        ("", Known::Other),
    ];
    for (name, want) in cases {
        assert_eq!(known(name), want, "{name:?}");
    }
    for (name, want) in [
        ("HOST", true),
        ("Date", true),
        ("Server", true),
        ("Accept", true),
        ("Connection", true),
        ("Keep-Alive", true),
        ("User-Agent", true),
        ("Cache-Control", true),
        ("Last-Modified", true),
        ("Accept-Encoding", true),
        ("accept-language", true),
        ("If-Modified-Since", true),
        ("Hosts", false),
        ("Referer", false),
        ("Location", false),
        ("X-Date", false),
        ("", false),
    ] {
        assert_eq!(super::headers::plain(name), want, "{name:?}");
    }
}

/// A Node.js server reads a pipeline 64 KiB at a time: of a read longer than the capture, the
/// requests in its middle are never seen, and the responses to them come before those of the
/// requests in the read's captured tail.
#[test]
fn requests_lost_from_a_pipeline_never_get_another_request_s_response() {
    let mut p = Parser::new(Role::Server, &ParseConfig::default());
    let mut out = Vec::new();
    let request = |i: usize| format!("GET /p{i:04} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    let response = |i: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\npath /p{i:04}").into_bytes()
    };
    let requests: Vec<u8> = (0..600).flat_map(request).collect();
    crate::captured::feed_reads(&mut p, Direction::Ingress, 10, &requests, 65_536, &mut out);
    for (k, batch) in (0..600).collect::<Vec<_>>().chunks(150).enumerate() {
        let bytes: Vec<u8> = batch.iter().copied().flat_map(response).collect();
        feed(&mut p, Direction::Egress, 11 + k as u64, &bytes, &mut out);
    }
    // Two ticks after the one that saw the last messages: quiet, every request answered.
    for _ in 0..3 {
        p.expire(0, &mut out);
    }
    let mut right = 0;
    for record in &out {
        if int(record, "resp_status") == 200 {
            assert_eq!(
                text(record, "resp_body"),
                format!("path {}", text(record, "req_path"))
            );
            right += 1;
        }
    }
    // The 361 whole requests of the captured 12 KiB and the 15 of its last 512 bytes.
    let per = request(0).len();
    assert_eq!(right, 12_288 / per + 512 / per, "{out:?}");
    assert_eq!(text(out.last().unwrap(), "req_path"), "/p0599");
}
